//! Tables for people, JSON for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use ferry_api::admin::{BootInfo, IdentityView, KnownHost, MergedNodeView, NodeView, ProfileView, SecretState};
use serde::Serialize;
use serde_json::Value;

/// Writing to standard output failed; [`StdoutError::is_closed_pipe`] when its reader
/// went away (`ferry audit | head -1`), which is no error for the user.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct StdoutError(#[source] pub std::io::Error);

impl StdoutError {
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// What `outln!`/`out!` print through: the error comes back instead of a panic.
pub fn write_stdout(text: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(text).and_then(|()| stdout.flush()).map_err(StdoutError)
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the last column; trailing spaces only get in the way of grep.
    t.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

pub fn json(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// [`json`] with every object's keys in alphabetical order: how `audit`, `tunnel list`,
/// `token list` and `node show` have always printed (they printed the server's answer
/// as a generic JSON value, whose keys are sorted), so a script diffing them sees no change.
pub fn json_sorted(v: &impl Serialize) -> String {
    serde_json::to_value(v).map(|v| json(&v)).unwrap_or_default()
}

/// [`json_sorted`] on one line (`audit --follow --json`).
pub fn json_line_sorted(v: &impl Serialize) -> String {
    serde_json::to_value(v).map(|v| v.to_string()).unwrap_or_default()
}

pub(crate) fn secret_state(s: SecretState) -> String {
    match s {
        SecretState::Set => "set".into(),
        SecretState::Unset => "unset".into(),
    }
}

pub(crate) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// The identity policy in effect, marked when it is weak (network position alone) or
/// refused (weak without an explicit `--identity network`).
pub(crate) fn identity(i: &IdentityView) -> String {
    let factors = join(&i.factors);
    match (i.weak, i.refused) {
        (_, true) => format!("{factors} (REFUSED: no opt-in)"),
        (true, false) => format!("{factors} (WEAK)"),
        _ => factors,
    }
}

/// After a table: how many nodes rely on network position alone, and what to do.
pub fn weak_identity_note(nodes: &[NodeView]) {
    let weak = nodes.iter().filter(|n| n.identity.weak && !n.identity.refused).count();
    let refused = nodes.iter().filter(|n| n.identity.refused).count();
    if weak > 0 {
        eprintln!(
            "note: {weak} node(s) enroll on network position alone (WEAK): anyone on the provisioning network \
             who takes such an address receives the node's secrets; add an asset tag or a TPM"
        );
    }
    if refused > 0 {
        eprintln!(
            "note: {refused} node(s) have no asset tag, TPM or identity policy and are REFUSED at enrollment; \
             give them one, or accept network position: ferry node set NODES --identity network"
        );
    }
}

/// Flattens a JSON document into `a.b.c = value` rows; list elements get one row each.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| flatten(prefix, i, out)),
        other => out.push((prefix.to_owned(), scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => text(s),
        other => other.to_string(),
    }
}

/// A text value on one table row: several lines are counted, not shown.
pub(crate) fn text(s: &str) -> String {
    if s.contains('\n') {
        format!("<{} lines>", s.lines().count())
    } else {
        s.to_owned()
    }
}

/// `node show --json`: the node and, under `boot`, its last boot (`null`: never).
pub fn node_show_json(n: &NodeView, boot: Option<&BootInfo>) -> String {
    #[derive(Serialize)]
    struct Shown<'a> {
        #[serde(flatten)]
        node: &'a NodeView,
        boot: Option<&'a BootInfo>,
    }
    json_sorted(&Shown { node: n, boot })
}

/// One `known_hosts` line: the node's name, its own FQDN and its addresses, then the key
/// (`n1,n1.cluster,10.0.1.1 ssh-ed25519 AAAA…`), so `ssh n1`, `ssh n1.cluster` and
/// `ssh 10.0.1.1` all match it.
pub fn known_hosts_line(host: &KnownHost) -> String {
    let mut names = vec![host.node.to_string()];
    names.extend(host.fqdn.iter().map(|f| f.to_ascii_lowercase()));
    names.extend(host.addresses.iter().cloned());
    names.dedup();
    format!("{} {}", names.join(","), host.key)
}

pub fn node_show(n: &NodeView, boot: Option<&BootInfo>) -> String {
    let mut rows = vec![
        ("name".to_string(), n.name.to_string()),
        ("profiles".into(), join(&n.profiles)),
        ("asset_tag".into(), secret_state(n.asset_tag)),
        ("identity (in effect)".into(), identity(&n.identity)),
    ];
    flatten("", &serde_json::to_value(&n.settings).unwrap_or(Value::Null), &mut rows);
    rows.push(("revision".into(), n.revision.to_string()));
    rows.push(("updated_at".into(), n.updated_at.clone()));
    match boot {
        Some(b) => {
            rows.push(("boot.booted_at".into(), text(&b.booted_at)));
            rows.push(("boot.boot_count".into(), b.boot_count.to_string()));
            rows.push(("boot.address".into(), text(&b.address)));
            // As JSON spells an absent one, which this row has always shown.
            rows.push(("boot.hostname".into(), b.hostname.as_deref().map_or_else(|| "null".into(), text)));
            rows.push(("boot.fqdn".into(), b.fqdn.as_deref().map_or_else(|| "null".into(), text)));
            rows.extend(b.host_keys.iter().map(|key| ("boot.host_key".into(), text(key))));
        }
        None => rows.push(("boot".into(), "never".into())),
    }
    table(&["field", "value"], rows.into_iter().map(|(a, b)| vec![a, b]).collect())
}

pub fn node_merged(m: &MergedNodeView) -> String {
    let mut rows = vec![
        vec!["name".to_string(), m.name.to_string(), "node".into()],
        vec!["profiles".into(), join(&m.profiles), "node".into()],
        vec!["asset_tag".into(), secret_state(m.asset_tag), "node".into()],
    ];
    rows.extend(m.fields.iter().map(|f| vec![f.field.clone(), scalar(&f.value), f.source.to_string()]));
    table(&["field", "value", "source"], rows)
}

pub fn profile_show(p: &ProfileView) -> String {
    let mut rows = vec![
        ("name".to_string(), p.name.to_string()),
        ("parents".into(), join(&p.profiles)),
        ("nodes".into(), p.nodes.to_string()),
    ];
    flatten("", &serde_json::to_value(&p.settings).unwrap_or(Value::Null), &mut rows);
    rows.push(("revision".into(), p.revision.to_string()));
    table(&["field", "value"], rows.into_iter().map(|(a, b)| vec![a, b]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node show --json`: the node's fields and `boot` (null: never booted), keys sorted.
    #[test]
    fn node_show_json_adds_the_boot() {
        let node: NodeView = serde_json::from_str(
            r#"{"name":"n1","profiles":[],"asset_tag":"unset","revision":1,"updated_at":"t","settings":{},
                "identity":{"factors":["network"],"explicit":true,"weak":true,"refused":false}}"#,
        )
        .unwrap();
        let shown = node_show_json(&node, None);
        assert!(shown.starts_with("{\n  \"asset_tag\": \"unset\",\n  \"boot\": null,\n  \"identity\""), "{shown}");
        let boot = BootInfo {
            node: node.name.clone(),
            booted_at: "t".into(),
            address: "100.64.0.2".into(),
            instance_id: None,
            hostname: None,
            fqdn: Some("n1.cluster".into()),
            boot_count: 2,
            host_keys: vec!["ssh-ed25519 AAAA".into()],
        };
        let shown: serde_json::Value = serde_json::from_str(&node_show_json(&node, Some(&boot))).unwrap();
        assert_eq!(shown["boot"]["boot_count"], 2);
        assert_eq!(shown["boot"]["fqdn"], "n1.cluster", "the FQDN phone-home reported");
        assert_eq!(shown["name"], "n1");
        let table = node_show(&node, Some(&boot));
        let hostname = table.lines().find(|l| l.trim_start().starts_with("boot.hostname")).unwrap();
        assert_eq!(hostname.split_whitespace().nth(1), Some("null"), "an absent hostname shows as it always has");
        assert!(table.lines().any(|l| l.split_whitespace().eq(["boot.fqdn", "n1.cluster"])), "{table}");
    }

    #[test]
    fn known_hosts_lines_name_the_node_every_way_ssh_may_reach_it() {
        let mut host = KnownHost {
            node: ferry_core::NodeName::parse("n1").unwrap(),
            fqdn: Some("N1.Cluster".into()),
            addresses: vec!["10.0.1.1".into(), "fd00::1".into()],
            key: "ssh-ed25519 AAAA root@n1".into(),
        };
        assert_eq!(known_hosts_line(&host), "n1,n1.cluster,10.0.1.1,fd00::1 ssh-ed25519 AAAA root@n1");
        (host.fqdn, host.addresses) = (None, vec![]);
        assert_eq!(known_hosts_line(&host), "n1 ssh-ed25519 AAAA root@n1");
    }
}
