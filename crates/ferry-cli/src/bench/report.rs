//! Latency statistics and the report.

use super::StormArgs;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Challenge,
    Enroll,
    /// The WireGuard handshake (wire mode).
    Handshake,
    Document,
    PhoneHome,
    Node,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Challenge => "challenge",
            Step::Enroll => "enroll",
            Step::Handshake => "handshake",
            Step::Document => "document",
            Step::PhoneHome => "phone-home",
            Step::Node => "node total",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    latencies: Mutex<BTreeMap<Step, Vec<Duration>>>,
    errors: Mutex<BTreeMap<String, usize>>,
    completed: AtomicUsize,
    /// Nodes enrolled and not yet phoned home (their tunnels are active), and the most
    /// there ever were at once.
    open_tunnels: AtomicUsize,
    peak_tunnels: AtomicUsize,
    /// WireGuard cookie replies the nodes received (the server's device under load).
    cookie_replies: AtomicUsize,
    /// WireGuard handshake initiations the nodes sent, retransmissions included.
    initiations: AtomicUsize,
    /// Enrollments by server (index into the lab's servers).
    by_server: Mutex<BTreeMap<usize, usize>>,
    /// Boots started again after a failure (`--retry-for`), and the nodes that needed one.
    retries: AtomicUsize,
    retried_nodes: AtomicUsize,
    /// `--failover`: when the primary was killed, and the first enrollment after that.
    pub killed_at: std::sync::OnceLock<Instant>,
    first_enroll_after_kill: std::sync::OnceLock<Instant>,
    /// When each node's phone-home was answered (`--watch-status` measures its lag).
    phoned_home: Mutex<std::collections::HashMap<usize, Instant>>,
}

impl Stats {
    pub fn record(&self, step: Step, d: Duration) {
        if let Ok(mut l) = self.latencies.lock() {
            l.entry(step).or_default().push(d);
        }
    }
    pub fn error(&self, kind: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }
    pub fn phoned_home(&self, node: usize) {
        if let Ok(mut m) = self.phoned_home.lock() {
            m.insert(node, Instant::now());
        }
    }
    pub fn phoned_home_at(&self) -> std::collections::HashMap<usize, Instant> {
        self.phoned_home.lock().map(|m| m.clone()).unwrap_or_default()
    }
    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn tunnel_opened(&self) {
        let now = self.open_tunnels.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_tunnels.fetch_max(now, Ordering::Relaxed);
    }
    pub fn tunnel_closed(&self) {
        self.open_tunnels.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn handshakes(&self, initiations: u32, cookie_replies: u32) {
        self.initiations.fetch_add(initiations as usize, Ordering::Relaxed);
        self.cookie_replies.fetch_add(cookie_replies as usize, Ordering::Relaxed);
    }
    /// An enrollment at `server`, whose request was sent at `sent`.
    pub fn enrolled_at(&self, server: usize, sent: Instant) {
        if let Ok(mut m) = self.by_server.lock() {
            *m.entry(server).or_default() += 1;
        }
        // Only a request sent after the kill: one the old primary committed before it
        // may still be answered just after.
        if self.killed_at.get().is_some_and(|killed| sent > *killed) {
            let _ = self.first_enroll_after_kill.set(Instant::now());
        }
    }
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn node_retried(&self) {
        self.retried_nodes.fetch_add(1, Ordering::Relaxed);
    }
    /// Kill of the primary → first enrollment after it, seconds.
    pub fn failover_gap_s(&self) -> Option<f64> {
        Some(self.first_enroll_after_kill.get()?.duration_since(*self.killed_at.get()?).as_secs_f64())
    }
    pub fn completed_count(&self) -> usize {
        self.completed.load(Ordering::Relaxed)
    }
    pub fn peak_tunnels(&self) -> usize {
        self.peak_tunnels.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Leaks {
    pub active_tunnels: usize,
    pub device_peers: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Churn {
    pub peers: usize,
    pub ferry_batched_ms: f64,
    pub wg_set_per_peer_ms: f64,
    pub ratio: f64,
}

/// CPU seconds of the servers so far, by kind of thread (see `Lab::cpu`).
#[derive(Debug, Clone, Default)]
pub struct Cpu {
    pub total: f64,
    pub by_thread: BTreeMap<&'static str, f64>,
}

impl Cpu {
    /// What was spent between `before` and `self`; threads that ended in between are
    /// counted under "other".
    pub fn since(&self, before: &Cpu) -> Cpu {
        let mut by_thread = BTreeMap::new();
        for (k, v) in &self.by_thread {
            by_thread.insert(*k, (v - before.by_thread.get(k).copied().unwrap_or(0.0)).max(0.0));
        }
        let total = self.total - before.total;
        let named: f64 = by_thread.iter().filter(|(k, _)| **k != "other").map(|(_, v)| v).sum();
        by_thread.insert("other", (total - named).max(0.0));
        Cpu { total, by_thread }
    }
}

/// One storm: every node through the protocol in one mode.
pub struct Run {
    pub wire: bool,
    pub stats: Stats,
    pub elapsed: Duration,
    pub server_cpu: Cpu,
    pub server_peak_rss_kib: u64,
    pub client_cpu_s: f64,
    pub client_peak_rss_kib: u64,
    /// Datagrams dropped for a full UDP receive buffer in the lab's namespace.
    pub udp_receive_drops: u64,
    pub leaks: Leaks,
    /// CPU seconds of the PostgreSQL backends serving the run's database (when local).
    pub postgres_cpu_s: Option<f64>,
    /// Seconds the servers' CPU budgets (`--server-cpu`) throttled them, summed.
    pub throttled_s: Option<f64>,
    /// Whether errors were retried (`--retry-for`): then only nodes that never
    /// completed fail the run.
    pub retrying: bool,
    pub failover: Option<Failover>,
    /// `--watch-status`: what `ferry node status --watch`'s fold saw during the storm.
    pub status_watch: Option<super::status_watch::Outcome>,
}

/// What a `--failover` drill saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Failover {
    /// Nodes completed when the primary was killed.
    pub killed_after_nodes: usize,
    pub promote_after_s: f64,
    /// Every server's `/readyz` answered 503 at some point after the kill…
    pub not_ready_seen: bool,
    /// …and 200 again after the promotion, this long after the kill.
    pub ready_again_after_s: Option<f64>,
    /// Tunnels opened, from the audit log, and whether an address was ever handed out
    /// while another tunnel held it (must be false).
    pub tunnels_opened: usize,
    pub address_held_twice: bool,
}

impl Run {
    fn ok(&self, nodes: usize) -> bool {
        let errors = self.retrying || self.stats.errors.lock().map(|e| e.is_empty()).unwrap_or(false);
        let failover = self.failover.as_ref().is_none_or(|f| {
            f.not_ready_seen && f.ready_again_after_s.is_some() && !f.address_held_twice && f.tunnels_opened >= nodes
        });
        let watched = self.status_watch.as_ref().is_none_or(|w| w.error.is_none() && w.seen_phoned_home == nodes);
        errors
            && failover
            && watched
            && self.stats.completed.load(Ordering::Relaxed) == nodes
            && self.leaks.active_tunnels == 0
            && self.leaks.device_peers == 0
    }

    fn to_json(&self, nodes: usize) -> serde_json::Value {
        let completed = self.stats.completed.load(Ordering::Relaxed);
        let mut steps = serde_json::Map::new();
        if let Ok(mut l) = self.stats.latencies.lock() {
            for (step, v) in l.iter_mut() {
                v.sort();
                steps.insert(
                    step.name().into(),
                    serde_json::json!({"count": v.len(), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "p99_ms": pct(v, 0.99), "max_ms": pct(v, 1.0)}),
                );
            }
        }
        let errors: BTreeMap<String, usize> = self.stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
        let per_node = |s: f64| s * 1000.0 / completed.max(1) as f64;
        let threads: serde_json::Map<String, serde_json::Value> = self
            .server_cpu
            .by_thread
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!({"cpu_s": v, "ms_per_node": per_node(*v)})))
            .collect();
        serde_json::json!({
            "mode": if self.wire { "wire" } else { "no-wire" },
            "completed": completed,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "nodes_per_s": completed as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "steps": steps,
            "errors": errors,
            "handshake_initiations": self.stats.initiations.load(Ordering::Relaxed),
            "cookie_replies": self.stats.cookie_replies.load(Ordering::Relaxed),
            "udp_receive_drops": self.udp_receive_drops,
            "server": {
                "peak_rss_mib": self.server_peak_rss_kib as f64 / 1024.0,
                "cpu_s": self.server_cpu.total,
                "cpu_ms_per_node": per_node(self.server_cpu.total),
                "cpu_by_thread": threads,
                "peak_active_tunnels": self.stats.peak_tunnels(),
            },
            "client": {
                "cpu_s": self.client_cpu_s,
                "cpu_ms_per_node": per_node(self.client_cpu_s),
                "peak_rss_mib": self.client_peak_rss_kib as f64 / 1024.0,
            },
            "leaks": self.leaks,
            "spread": self.stats.by_server.lock().map(|m| m.values().copied().collect::<Vec<_>>()).unwrap_or_default(),
            "retries": self.stats.retries.load(Ordering::Relaxed),
            "retried_nodes": self.stats.retried_nodes.load(Ordering::Relaxed),
            "postgres": self.postgres_cpu_s.map(|s| serde_json::json!({"cpu_s": s, "cpu_ms_per_node": per_node(s)})),
            "server_cpu_throttled_s": self.throttled_s,
            "failover": self.failover.as_ref().map(|f| {
                let mut v = serde_json::to_value(f).unwrap_or_default();
                v["gap_s"] = serde_json::json!(self.stats.failover_gap_s());
                v
            }),
            "status_watch": self.status_watch,
            "method": if self.wire {
                "each simulated node is a WireGuard peer (boringtun noise + smoltcp) sending UDP to the server's device"
            } else {
                "simulated nodes bind their tunnel addresses; the namespace routes 100.64.0.0/16 to lo (no WireGuard)"
            },
            "ok": self.ok(nodes),
        })
    }
}

pub struct Report {
    json: serde_json::Value,
    ok: bool,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

impl Report {
    /// The first run's figures at the top level; with `--compare`, every run under
    /// `runs` and the first against the second under `ratio`.
    pub fn new(args: &StormArgs, runs: &[Run], churn: Option<Churn>) -> Report {
        let ok = runs.iter().all(|r| r.ok(args.nodes));
        let all: Vec<serde_json::Value> = runs.iter().map(|r| r.to_json(args.nodes)).collect();
        let mut json = all.first().cloned().unwrap_or_default();
        let fields = serde_json::json!({
            "nodes": args.nodes,
            "concurrency": args.concurrency,
            "hold": args.hold,
            "keep_alive": args.keep_alive,
            "backend": args.backend,
            "servers": args.servers,
            "server_cpu": args.server_cpu,
            "retry_for_s": args.retry_for,
            "store": if args.store.is_some() || args.failover { "postgres" } else { "sqlite" },
            "churn": churn,
            "ok": ok,
        });
        if let (Some(j), Some(f)) = (json.as_object_mut(), fields.as_object()) {
            j.extend(f.clone());
            if let [a, b] = &all[..] {
                let ratio = |path: &[&str]| {
                    let get = |v: &serde_json::Value| path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(0.0);
                    get(a) / get(b).max(1e-9)
                };
                j.insert(
                    "ratio".into(),
                    serde_json::json!({
                        "of": format!("{} / {}", a["mode"].as_str().unwrap_or(""), b["mode"].as_str().unwrap_or("")),
                        "nodes_per_s": ratio(&["nodes_per_s"]),
                        "server_cpu_per_node": ratio(&["server", "cpu_ms_per_node"]),
                        "client_cpu_per_node": ratio(&["client", "cpu_ms_per_node"]),
                        "p99_enroll": ratio(&["steps", "enroll", "p99_ms"]),
                        "p99_document": ratio(&["steps", "document", "p99_ms"]),
                    }),
                );
            }
            j.insert("runs".into(), serde_json::Value::Array(all));
        }
        Report { json, ok }
    }

    pub fn ok(&self) -> bool {
        self.ok
    }

    pub fn to_json(&self) -> serde_json::Value {
        self.json.clone()
    }

    pub fn to_text(&self) -> String {
        let j = &self.json;
        let mut s = String::new();
        for run in j["runs"].as_array().into_iter().flatten() {
            s += &run_text(j, run);
        }
        if let Some(r) = j["ratio"].as_object() {
            let f = |k: &str| r.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
            s += &format!(
                "ratio {}: nodes/s {:.2}x, server CPU per node {:.2}x, client CPU per node {:.2}x, p99 enroll {:.2}x, p99 document {:.2}x\n",
                r.get("of").and_then(|v| v.as_str()).unwrap_or(""),
                f("nodes_per_s"),
                f("server_cpu_per_node"),
                f("client_cpu_per_node"),
                f("p99_enroll"),
                f("p99_document")
            );
        }
        if let Some(c) = j["churn"].as_object() {
            s += &format!(
                "peer churn ({} peers added then removed, same device): ferry batched {:.1} ms, one `wg set` per peer {:.1} ms: {:.1}x\n",
                c["peers"], c["ferry_batched_ms"].as_f64().unwrap_or(0.0), c["wg_set_per_peer_ms"].as_f64().unwrap_or(0.0), c["ratio"].as_f64().unwrap_or(0.0)
            );
        }
        s += &format!("result: {}\n", if self.ok { "OK" } else { "FAILED" });
        s
    }
}

fn run_text(j: &serde_json::Value, run: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let mut s = format!(
        "storm ({}): {} of {} nodes completed in {:.2} s = {:.0} nodes/s (concurrency {}, {} server(s), {}, {}{}{})\n",
        run["mode"].as_str().unwrap_or(""),
        run["completed"],
        j["nodes"],
        f(&run["elapsed_s"]),
        f(&run["nodes_per_s"]),
        j["concurrency"],
        j["servers"],
        j["store"].as_str().unwrap_or(""),
        j["backend"].as_str().unwrap_or(""),
        if j["hold"].as_bool() == Some(true) { ", hold" } else { "" },
        if j["keep_alive"].as_bool() == Some(true) && run["mode"] == "wire" { ", keep-alive" } else { "" },
    );
    s += "step            count     p50 ms    p95 ms    p99 ms    max ms\n";
    if let Some(steps) = run["steps"].as_object() {
        for (name, v) in steps {
            s += &format!(
                "{name:<12} {:>8} {:>10.2} {:>9.2} {:>9.2} {:>9.2}\n",
                v["count"],
                f(&v["p50_ms"]),
                f(&v["p95_ms"]),
                f(&v["p99_ms"]),
                f(&v["max_ms"])
            );
        }
    }
    let errors = run["errors"].as_object().map(|e| e.len()).unwrap_or(0);
    s += &format!("errors: {}\n", if errors == 0 { "none".to_string() } else { run["errors"].to_string() });
    if j["retry_for_s"].as_u64().unwrap_or(0) > 0 {
        s += &format!("retries: {} boots started again, {} nodes needed one\n", run["retries"], run["retried_nodes"]);
    }
    if j["servers"].as_u64().unwrap_or(1) > 1 {
        s += &format!("enrollments by server: {}\n", run["spread"]);
    }
    if let Some(pg) = run["postgres"].as_object() {
        s += &format!(
            "PostgreSQL backends of the run's database: CPU {:.2} s = {:.3} ms per node\n",
            pg["cpu_s"].as_f64().unwrap_or(0.0),
            pg["cpu_ms_per_node"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(t) = run["server_cpu_throttled_s"].as_f64() {
        s += &format!("CPU budgets (--server-cpu {}): servers throttled {t:.1} s in all\n", j["server_cpu"]);
    }
    if !run["failover"].is_null() {
        s += &format!("failover: {}\n", run["failover"]);
    }
    if let Some(w) = run["status_watch"].as_object() {
        s += &format!(
            "ferry node status --watch during the storm: saw {}/{} nodes phoned home; lag behind their phone-home \
             max {:.1} s, median {:.1} s ({} polls, one a second, {} audit entries){}\n",
            w["seen_phoned_home"],
            w["nodes"],
            w["max_lag_s"].as_f64().unwrap_or(0.0),
            w["p50_lag_s"].as_f64().unwrap_or(0.0),
            w["polls"],
            w["entries"],
            w["error"].as_str().map(|e| format!("; error: {e}")).unwrap_or_default()
        );
    }
    if run["mode"] == "wire" {
        s += &format!(
            "WireGuard: {} handshake initiations sent (retransmissions included), {} cookie replies (server under load), {} datagrams dropped by full UDP receive buffers\n",
            run["handshake_initiations"], run["cookie_replies"], run["udp_receive_drops"]
        );
    }
    let server = &run["server"];
    let threads: Vec<String> = server["cpu_by_thread"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {:.3}", f(&v["ms_per_node"])))
        .collect();
    s += &format!(
        "server(s): peak RSS {:.1} MiB (largest), CPU {:.2} s = {:.3} ms per node ({}), peak active tunnels {}\n",
        f(&server["peak_rss_mib"]),
        f(&server["cpu_s"]),
        f(&server["cpu_ms_per_node"]),
        threads.join(", "),
        server["peak_active_tunnels"]
    );
    s += &format!(
        "client (this process): CPU {:.2} s = {:.3} ms per node, peak RSS {:.1} MiB\n",
        f(&run["client"]["cpu_s"]),
        f(&run["client"]["cpu_ms_per_node"]),
        f(&run["client"]["peak_rss_mib"])
    );
    s += &format!(
        "after: {} active tunnels, {} device peers (must be 0 and 0)\n",
        run["leaks"]["active_tunnels"], run["leaks"]["device_peers"]
    );
    s
}
