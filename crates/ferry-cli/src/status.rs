//! `ferry node status [HOSTLIST] [--watch] [--json]`: each node's boot phase as ferry
//! sees it, read from the audit log the server writes anyway (boot script, the kernel
//! fetched, enrollment accepted or refused, tunnel open and closed, phone-home): nothing
//! is added to the boot path, so a boot storm costs nothing more with this view open.

use crate::client::AdminClient;
use crate::output;
use ferry_api::admin::{AuditEntry, AuditQuery};
use ferry_core::NodeName;
use serde::Serialize;
use std::collections::BTreeMap;

/// How many audit entries one poll reads at most (a storm of thousands of nodes writes
/// a few per node).
const PAGE: i64 = 10_000;

/// One node's current boot as the audit log tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// script-fetched, artifacts (it asked for its kernel), enrolled, tunnel-open,
    /// documents-served, phoned-home, refused, tunnel-closed, or unknown (nothing since
    /// --since).
    pub phase: String,
    /// The refusal's or the tunnel closing's reason, or the last document served.
    pub reason: Option<String>,
    pub script_at: Option<String>,
    /// When the node asked for its kernel (iPXE boots).
    pub artifacts_at: Option<String>,
    pub enrolled_at: Option<String>,
    pub phoned_home_at: Option<String>,
    /// The last phone-home (a completed boot), even of an earlier boot.
    pub last_boot_at: Option<String>,
    pub updated_at: Option<String>,
}

/// `reason=...` (or the whole detail) of an audit entry.
fn reason(detail: &str) -> String {
    detail
        .split_whitespace()
        .find_map(|w| w.strip_prefix("reason="))
        .map(str::to_owned)
        .unwrap_or_else(|| detail.to_owned())
}

impl NodeStatus {
    pub(crate) fn new(node: &str) -> NodeStatus {
        NodeStatus { node: node.to_owned(), phase: "unknown".into(), ..NodeStatus::default() }
    }

    /// Moves the node on by one audit entry (entries come oldest first).
    pub fn apply(&mut self, e: &AuditEntry) {
        // `… repeated=N` counts repeats of an entry already applied, and is written when
        // its minute ends: by then the node has moved on (a second meta-data fetch
        // must not take a node that phoned home back to documents-served).
        if e.detail.split_whitespace().any(|w| w.starts_with("repeated=")) {
            return;
        }
        let at = Some(e.at.clone());
        match e.action.as_str() {
            // A boot script starts a new boot: what came before is an earlier boot.
            "boot.script" => {
                *self = NodeStatus {
                    node: self.node.clone(),
                    last_boot_at: self.last_boot_at.take(),
                    ..NodeStatus::default()
                };
                self.phase = "script-fetched".into();
                self.script_at = at.clone();
            }
            // Only right after the script: never back from a later phase.
            "boot.artifacts" if matches!(self.phase.as_str(), "script-fetched" | "unknown") => {
                self.phase = "artifacts".into();
                self.artifacts_at = at.clone();
            }
            "enroll.accepted" => {
                self.phase = "enrolled".into();
                self.reason = None;
                self.enrolled_at = at.clone();
            }
            "enroll.refused" | "boot.gate-refused" => {
                self.phase = "refused".into();
                self.reason = Some(e.detail.clone());
            }
            "tunnel.open" => self.phase = "tunnel-open".into(),
            "document.served" => {
                // Once per document and boot: the phase says which came last.
                self.phase = "documents-served".into();
                self.reason = Some(e.detail.clone());
            }
            "node.booted" => {
                self.phase = "phoned-home".into();
                self.reason = None;
                self.phoned_home_at = at.clone();
                self.last_boot_at = at.clone();
            }
            "tunnel.close" => {
                let why = reason(&e.detail);
                // Closing after phone-home is the normal end: nothing changes.
                if self.phase == "phoned-home" && why == "phone-home" {
                    return;
                }
                self.phase = "tunnel-closed".into();
                self.reason = Some(why);
            }
            _ => return,
        }
        self.updated_at = at;
    }
}

/// Applies audit entries (oldest first) to the nodes in `states`; returns each change
/// as it happened (a node's state after each entry that moved it), so a watcher sees
/// every phase even when several fall between two polls.
pub fn fold(states: &mut BTreeMap<String, NodeStatus>, entries: &[AuditEntry]) -> Vec<NodeStatus> {
    let mut changes = Vec::new();
    for e in entries {
        let Some(node) = e.subject.strip_prefix("node/") else { continue };
        let Some(state) = states.get_mut(node) else { continue };
        let before = state.clone();
        state.apply(e);
        if *state != before {
            changes.push(state.clone());
        }
    }
    changes
}

fn table(states: &BTreeMap<String, NodeStatus>) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows = states
        .values()
        .map(|s| {
            vec![
                s.node.clone(),
                s.phase.clone(),
                opt(&s.script_at),
                opt(&s.enrolled_at),
                opt(&s.phoned_home_at),
                opt(&s.last_boot_at),
                opt(&s.reason),
            ]
        })
        .collect();
    output::table(&["node", "phase", "script", "enrolled", "phoned home", "last boot", "reason"], rows)
}

pub async fn node_status(
    client: &AdminClient,
    hostlist: Option<String>,
    since: i64,
    watch: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut nodes: Vec<NodeName> = client.list_nodes().await?.into_iter().map(|n| n.name).collect();
    if let Some(list) = hostlist {
        let wanted: std::collections::HashSet<NodeName> = crate::node_names(&list)?.into_iter().collect();
        nodes.retain(|n| wanted.contains(n));
    }
    let mut states: BTreeMap<String, NodeStatus> =
        nodes.iter().map(|n| (n.to_string(), NodeStatus::new(n.as_str()))).collect();
    // Everything since --since, page by page (oldest first).
    let mut query = AuditQuery { subject: None, limit: Some(PAGE), since: Some(since), after: Some(0) };
    loop {
        let entries = client.audit(&query).await?;
        fold(&mut states, &entries);
        match entries.last() {
            Some(last) if entries.len() as i64 == PAGE => query.after = Some(last.id),
            Some(last) => {
                query.after = Some(last.id);
                break;
            }
            None => break,
        }
    }
    let print_all = |states: &BTreeMap<String, NodeStatus>| match json {
        true => outln!("{}", output::json(&states.values().collect::<Vec<_>>())),
        false => outln!("{}", table(states)),
    };
    if !watch {
        print_all(&states)?;
        return Ok(());
    }
    // --watch: a table redrawn on change, or (--json) one line per node change.
    if !json {
        out!("\x1b[H\x1b[2J")?;
        print_all(&states)?;
    } else {
        for s in states.values() {
            outln!("{}", serde_json::to_string(s)?)?;
        }
    }
    loop {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let entries = client.audit(&query).await?;
        if let Some(last) = entries.last() {
            query.after = Some(last.id);
        }
        let changes = fold(&mut states, &entries);
        if changes.is_empty() {
            continue;
        }
        if json {
            for change in changes {
                outln!("{}", serde_json::to_string(&change)?)?;
            }
        } else {
            out!("\x1b[H\x1b[2J")?;
            print_all(&states)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, action: &str, node: &str, detail: &str) -> AuditEntry {
        AuditEntry {
            id,
            at: format!("t{id}"),
            actor: "server".into(),
            action: action.into(),
            subject: format!("node/{node}"),
            detail: detail.into(),
        }
    }

    #[test]
    fn a_boot_goes_through_its_phases() {
        let mut states =
            BTreeMap::from([("n1".to_string(), NodeStatus::new("n1")), ("n2".into(), NodeStatus::new("n2"))]);
        assert_eq!(states["n1"].phase, "unknown");
        let changed = fold(
            &mut states,
            &[
                e(1, "boot.script", "n1", "mac=52:54:00:00:00:01"),
                e(12, "boot.artifacts", "n1", "image=os artifact=kernel"),
                e(2, "enroll.accepted", "n1", "factors=network"),
                e(21, "boot.artifacts", "n1", "image=os artifact=kernel repeated=3"),
                e(3, "tunnel.open", "n1", ""),
                e(31, "document.served", "n1", "meta-data"),
                e(4, "node.booted", "n1", "host_keys=1"),
                e(5, "tunnel.close", "n1", "reason=phone-home"),
                // Counts of repeats, written when their minute ends: no phase of their own.
                e(51, "document.served", "n1", "meta-data repeated=1"),
                e(52, "boot.script", "n1", "image=os repeated=2"),
                e(6, "node.set", "n2", "image"),
                e(7, "boot.script", "n9", "not asked for"),
            ],
        );
        let phases: Vec<&str> = changed.iter().map(|c| c.phase.as_str()).collect();
        assert_eq!(
            phases,
            ["script-fetched", "artifacts", "enrolled", "tunnel-open", "documents-served", "phoned-home"],
            "in order; counts of repeated entries move nothing back"
        );
        assert_eq!(states["n1"].artifacts_at.as_deref(), Some("t12"));
        assert!(changed.iter().all(|c| c.node == "n1"));
        let n1 = &states["n1"];
        assert_eq!((n1.phase.as_str(), n1.reason.as_deref()), ("phoned-home", None));
        assert_eq!(
            (n1.script_at.as_deref(), n1.enrolled_at.as_deref(), n1.phoned_home_at.as_deref()),
            (Some("t1"), Some("t2"), Some("t4"))
        );
        assert_eq!(states["n2"].phase, "unknown", "admin changes are no boot phase");

        // The next boot: refused, with the reason; the last completed boot stays.
        fold(&mut states, &[e(8, "boot.script", "n1", ""), e(9, "enroll.refused", "n1", "asset tag mismatch")]);
        let n1 = &states["n1"];
        assert_eq!((n1.phase.as_str(), n1.reason.as_deref()), ("refused", Some("asset tag mismatch")));
        assert_eq!((n1.enrolled_at.as_deref(), n1.last_boot_at.as_deref()), (None, Some("t4")));

        // A tunnel that ends without phone-home says why.
        fold(
            &mut states,
            &[e(10, "enroll.accepted", "n1", ""), e(11, "tunnel.close", "n1", "reason=expired by=server")],
        );
        assert_eq!((states["n1"].phase.as_str(), states["n1"].reason.as_deref()), ("tunnel-closed", Some("expired")));
        let t = table(&states);
        assert!(
            t.lines().nth(1).is_some_and(|l| l.trim_start().starts_with("n1") && l.contains("tunnel-closed")),
            "{t}"
        );
    }
}
