//! Tables for people, JSON for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use ferry_api::admin::{IdentityView, MergedNodeView, NodeView, ProfileView, SecretState, TpmView};
use serde_json::Value;

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.iter().map(|h| Cell::new(h.to_uppercase())));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the last column; trailing spaces only get in the way of grep.
    t.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

pub fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn secret_state(s: SecretState) -> String {
    match s {
        SecretState::Set => "set".into(),
        SecretState::Unset => "unset".into(),
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// The identity policy in effect, marked when it is weak (network position alone) or
/// refused (weak without an explicit `--identity network`).
fn identity(i: &IdentityView) -> String {
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

pub fn node_list(nodes: &[NodeView]) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            let primary = n.settings.primary_interface();
            let mac = primary.and_then(|(_, i)| i.mac).map(|m| m.to_string()).unwrap_or_else(|| "-".into());
            let ip = primary.and_then(|(_, i)| i.ipv4).map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            vec![
                n.name.to_string(),
                join(&n.profiles),
                mac,
                ip,
                secret_state(n.asset_tag),
                identity(&n.identity),
                n.settings.comment.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["name", "profiles", "mac", "ipv4", "asset tag", "identity", "comment"], rows)
}

pub fn profile_list(profiles: &[ProfileView]) -> String {
    let rows = profiles
        .iter()
        .map(|p| {
            vec![
                p.name.to_string(),
                join(&p.profiles),
                p.nodes.to_string(),
                p.settings.comment.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["name", "parents", "nodes", "comment"], rows)
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
        Value::String(s) if s.contains('\n') => format!("<{} lines>", s.lines().count()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn node_show(n: &NodeView, boot: Option<&Value>) -> String {
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
            for k in ["booted_at", "boot_count", "address", "hostname"] {
                rows.push((format!("boot.{k}"), scalar(&b[k])));
            }
            for key in b["host_keys"].as_array().into_iter().flatten() {
                rows.push(("boot.host_key".into(), scalar(key)));
            }
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

pub fn tunnel_list(tunnels: &[Value]) -> String {
    let secs = |v: &Value| v.as_i64().map(|s| format!("{s}s")).unwrap_or_default();
    let rows = tunnels
        .iter()
        .map(|t| {
            vec![
                scalar(&t["node"]),
                scalar(&t["address"]),
                secs(&t["age_secs"]),
                match t["mine"].as_bool() {
                    Some(false) => "(other server)".to_owned(),
                    _ => t["last_handshake"].as_str().unwrap_or("never").to_owned(),
                },
                secs(&t["expires_in_secs"]),
                scalar(&t["server"]),
            ]
        })
        .collect();
    table(&["node", "address", "age", "last handshake", "expires in", "server"], rows)
}

pub fn server_list(servers: &[ferry_api::admin::ServerView]) -> String {
    let rows = servers
        .iter()
        .map(|s| {
            let liveness = match (s.alive, s.this) {
                (true, true) => "alive (this)".to_owned(),
                (true, false) => "alive".to_owned(),
                (false, _) => format!("LOST ({} s silent)", s.heartbeat_age_secs),
            };
            vec![
                s.id.clone(),
                liveness,
                format!("{}s", s.heartbeat_age_secs),
                s.active_tunnels.to_string(),
                s.endpoint.clone(),
                s.public_key.clone(),
                if s.sealing_key_id.is_empty() { "-".to_owned() } else { s.sealing_key_id.clone() },
                s.started_at.clone(),
            ]
        })
        .collect();
    table(&["server", "liveness", "heartbeat", "tunnels", "endpoint", "public key", "sealing key", "started"], rows)
}

pub fn tpm_list(tpms: &[TpmView]) -> String {
    let rows = tpms
        .iter()
        .map(|t| {
            let certified = if t.certified { "yes" } else { "no" };
            vec![
                t.node.to_string(),
                t.state.clone(),
                t.fingerprint.clone(),
                certified.into(),
                t.updated_at.clone(),
                t.conflict.clone().map_or_else(|| "-".into(), |fp| format!("CONFLICT: {fp} refused")),
            ]
        })
        .collect();
    table(&["node", "state", "ek fingerprint", "certificate", "updated", "conflict"], rows)
}
