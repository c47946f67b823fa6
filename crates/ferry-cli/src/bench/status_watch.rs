//! `ferry bench storm --watch-status`: the admin's view during the storm. A watcher
//! follows the audit log exactly as `ferry node status --watch` does (the same fold,
//! one poll a second, through the admin socket) and notes when it first sees each node
//! phoned home; the report says whether it saw every node, and how far it lagged behind
//! the phone-homes (each node's answer on the client side → the watcher's poll that
//! showed it).

use crate::client::AdminClient;
use crate::status::{fold, NodeStatus};
use ferry_api::admin::AuditQuery;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// As `ferry node status --watch`.
const POLL: Duration = Duration::from_secs(1);
/// Entries read per request (as `ferry node status`).
const PAGE: i64 = 10_000;
/// How long the watcher keeps polling after the storm for nodes it has not seen yet.
const GRACE: Duration = Duration::from_secs(15);

/// What the watcher saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub nodes: usize,
    /// Nodes the watcher saw reach `phoned-home`.
    pub seen_phoned_home: usize,
    /// From a node's phone-home answer to the poll that showed it: the largest, the
    /// median, seconds (the poll interval is one second).
    pub max_lag_s: f64,
    pub p50_lag_s: f64,
    pub polls: usize,
    /// Audit entries read.
    pub entries: usize,
    /// The watcher's own errors (the admin API refused or failed).
    pub error: Option<String>,
}

/// The watcher task's result: when it first saw each node phoned home, its polls, the
/// entries it read, and its error if it had to stop.
struct Seen(HashMap<String, Instant>, usize, usize, Option<String>);

pub struct Watcher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Seen>,
    nodes: Vec<String>,
}

impl Watcher {
    /// Starts following the log from its current end, for `nodes` (their names).
    pub async fn start(socket: std::path::PathBuf, nodes: Vec<String>) -> anyhow::Result<Watcher> {
        let client = AdminClient::new(socket);
        // Start after the newest entry: the storm's boots are what is watched.
        let newest = client.audit(&AuditQuery { subject: None, limit: Some(1), since: None, after: None }).await?;
        let after = newest.last().map_or(0, |e| e.id);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let names = nodes.clone();
        let task = tokio::spawn(async move {
            let mut states: BTreeMap<String, NodeStatus> =
                names.iter().map(|n| (n.clone(), NodeStatus::new(n))).collect();
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let mut query = AuditQuery { subject: None, limit: Some(PAGE), since: None, after: Some(after) };
            let (mut polls, mut entries, mut grace_ends) = (0, 0, None::<Instant>);
            loop {
                loop {
                    let page = match client.audit(&query).await {
                        Ok(p) => p,
                        Err(e) => return Seen(seen, polls, entries, Some(e.to_string())),
                    };
                    entries += page.len();
                    let now = Instant::now();
                    for change in fold(&mut states, &page) {
                        if change.phase == "phoned-home" {
                            seen.entry(change.node.clone()).or_insert(now);
                        }
                    }
                    match page.last() {
                        Some(last) => query.after = Some(last.id),
                        None => break,
                    }
                    if page.len() < PAGE as usize {
                        break;
                    }
                }
                polls += 1;
                if seen.len() == names.len() {
                    return Seen(seen, polls, entries, None);
                }
                if *stopped.borrow() {
                    let ends = *grace_ends.get_or_insert_with(|| Instant::now() + GRACE);
                    if Instant::now() > ends {
                        return Seen(seen, polls, entries, None);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Ok(Watcher { stop, task, nodes })
    }

    /// After the storm: waits for the watcher (at most its grace period) and compares
    /// what it saw with `phoned_home` (node index → when its phone-home was answered).
    pub async fn finish(self, phoned_home: &HashMap<usize, Instant>) -> Outcome {
        let _ = self.stop.send(true);
        let Seen(seen, polls, entries, error) = match self.task.await {
            Ok(r) => r,
            Err(e) => Seen(HashMap::new(), 0, 0, Some(format!("the watcher failed: {e}"))),
        };
        let mut lags: Vec<f64> = phoned_home
            .iter()
            .filter_map(|(i, at)| {
                let shown = seen.get(self.nodes.get(*i)?)?;
                Some(shown.saturating_duration_since(*at).as_secs_f64())
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        Outcome {
            nodes: self.nodes.len(),
            seen_phoned_home: seen.len(),
            max_lag_s: lags.last().copied().unwrap_or(0.0),
            p50_lag_s: lags.get(lags.len() / 2).copied().unwrap_or(0.0),
            polls,
            entries,
            error,
        }
    }
}
