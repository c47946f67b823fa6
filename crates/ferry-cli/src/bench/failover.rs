//! `--failover`: during the storm, a third of the way in, the PostgreSQL primary is
//! killed and the standby promoted `--promote-after` seconds later; meanwhile every
//! server's `/readyz` is watched (not ready while no writable database, ready after).
//! Afterwards the audit log is replayed: no address may ever have been handed out while
//! another tunnel held it.

use super::lab::Lab;
use super::pg_pair::PgPair;
use super::report::{Failover, Stats};
use crate::client::AdminClient;
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the servers get to become ready again after the promotion.
const READY_LIMIT: Duration = Duration::from_secs(60);

pub struct Drill {
    task: tokio::task::JoinHandle<anyhow::Result<Failover>>,
}

impl Drill {
    pub fn start(lab: &Lab, stats: Arc<Stats>, nodes: usize, promote_after: f64) -> anyhow::Result<Drill> {
        let pair = lab.pg_pair.clone().context("--failover without its PostgreSQL pair")?;
        let admins: Vec<AdminClient> = lab.servers.iter().map(|s| AdminClient::new(s.admin_socket.clone())).collect();
        let task = tokio::spawn(drill(pair, admins, stats, nodes, promote_after));
        Ok(Drill { task })
    }

    /// The drill's findings, with the audit replay.
    pub async fn finish(self, lab: &Lab) -> anyhow::Result<Failover> {
        let mut found = self.task.await.context("the failover drill panicked")??;
        let entries: Vec<serde_json::Value> =
            lab.servers[0].client.get("/v1/audit?after=0&limit=100000").await.context("reading the audit log")?;
        let (opened, shared) = replay_addresses(&entries);
        found.tunnels_opened = opened;
        if let Some(why) = &shared {
            eprintln!("storm: {why}");
        }
        found.address_held_twice = shared.is_some();
        Ok(found)
    }
}

async fn ready(admin: &AdminClient) -> bool {
    let check = admin.status(ferry_api::routes::READYZ);
    matches!(tokio::time::timeout(Duration::from_secs(5), check).await, Ok(Ok(s)) if s.is_success())
}

async fn drill(
    pair: Arc<PgPair>,
    admins: Vec<AdminClient>,
    stats: Arc<Stats>,
    nodes: usize,
    promote_after: f64,
) -> anyhow::Result<Failover> {
    while stats.completed_count() < nodes / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut found =
        Failover { killed_after_nodes: stats.completed_count(), promote_after_s: promote_after, ..Default::default() };
    pair.kill_primary()?;
    let killed = Instant::now();
    let _ = stats.killed_at.set(killed);
    eprintln!("storm: killed the PostgreSQL primary after {} nodes", found.killed_after_nodes);
    // Every server must say "not ready" before the promotion (no writable database).
    // The checks run beside the timer: a server's /readyz may wait up to 3 s for the
    // database before it answers, and that must not put the promotion off.
    let admins: Vec<Arc<AdminClient>> = admins.into_iter().map(Arc::new).collect();
    let promote_at = killed + Duration::from_secs_f64(promote_after);
    let watchers: Vec<_> = admins
        .iter()
        .map(|admin| {
            let admin = admin.clone();
            tokio::spawn(async move {
                while Instant::now() < promote_at {
                    if !ready(&admin).await {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            })
        })
        .collect();
    tokio::time::sleep_until(promote_at.into()).await;
    let promoting = pair.clone();
    tokio::task::spawn_blocking(move || promoting.promote_standby()).await.context("pg_ctl promote")??;
    eprintln!("storm: promoted the standby {:.1} s after the kill", killed.elapsed().as_secs_f64());
    let limit = Instant::now() + READY_LIMIT;
    while Instant::now() < limit {
        let mut all = true;
        for admin in &admins {
            all &= ready(admin).await;
        }
        if all {
            found.ready_again_after_s = Some(killed.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut all_not_ready = true;
    for watcher in watchers {
        all_not_ready &= watcher.await.unwrap_or(false);
    }
    found.not_ready_seen = all_not_ready;
    Ok(found)
}

/// Replays the audit log in commit order (one database, writes serialized): tunnels
/// opened, and the first address handed out while another tunnel still held it.
fn replay_addresses(entries: &[serde_json::Value]) -> (usize, Option<String>) {
    let mut holder: HashMap<&str, &str> = HashMap::new();
    let mut opened = 0;
    let mut entries: Vec<&serde_json::Value> = entries.iter().collect();
    entries.sort_by_key(|e| e["id"].as_i64().unwrap_or(0));
    for e in entries {
        let (action, subject) = (e["action"].as_str().unwrap_or(""), e["subject"].as_str().unwrap_or(""));
        let detail = e["detail"].as_str().unwrap_or("");
        let Some(address) = detail.split_whitespace().find_map(|kv| kv.strip_prefix("address=")) else { continue };
        match action {
            "tunnel.open" => {
                opened += 1;
                if let Some(other) = holder.insert(address, subject) {
                    return (opened, Some(format!("{address} handed to {subject} while {other} held it ({e})")));
                }
            }
            "tunnel.close" => {
                holder.remove(address);
            }
            _ => {}
        }
    }
    (opened, None)
}

#[cfg(test)]
mod tests {
    use super::replay_addresses;
    use serde_json::json;

    #[test]
    fn an_address_opened_twice_without_a_close_is_found() {
        let e = |id: i64, action: &str, node: &str, address: &str| json!({"id": id, "action": action, "subject": format!("node/{node}"), "detail": format!("address={address} key=k")});
        let fine = [
            e(1, "tunnel.open", "a", "10.0.0.2"),
            e(2, "tunnel.close", "a", "10.0.0.2"),
            e(3, "tunnel.open", "b", "10.0.0.2"),
        ];
        assert_eq!(replay_addresses(&fine), (2, None));
        let twice = [e(1, "tunnel.open", "a", "10.0.0.2"), e(2, "tunnel.open", "b", "10.0.0.2")];
        assert!(replay_addresses(&twice).1.is_some_and(|w| w.contains("while node/a held it")));
        let out_of_order = [
            e(3, "tunnel.open", "b", "10.0.0.2"),
            e(2, "tunnel.close", "a", "10.0.0.2"),
            e(1, "tunnel.open", "a", "10.0.0.2"),
        ];
        assert_eq!(replay_addresses(&out_of_order), (2, None), "replayed by id");
    }
}
