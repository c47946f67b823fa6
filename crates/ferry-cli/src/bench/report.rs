//! Latency statistics and the report.

use super::StormArgs;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Challenge,
    Enroll,
    Document,
    PhoneHome,
    Node,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Challenge => "challenge",
            Step::Enroll => "enroll",
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &StormArgs,
        stats: &Stats,
        elapsed: Duration,
        cpu_secs: f64,
        rss_kib: u64,
        peak_tunnels: usize,
        leaks: Leaks,
        churn: Option<Churn>,
    ) -> Report {
        let completed = stats.completed.load(Ordering::Relaxed);
        let mut steps = serde_json::Map::new();
        if let Ok(mut l) = stats.latencies.lock() {
            for (step, v) in l.iter_mut() {
                v.sort();
                steps.insert(
                    step.name().into(),
                    serde_json::json!({"count": v.len(), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "p99_ms": pct(v, 0.99), "max_ms": pct(v, 1.0)}),
                );
            }
        }
        let errors: BTreeMap<String, usize> = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
        let ok = errors.is_empty() && completed == args.nodes && leaks.active_tunnels == 0 && leaks.device_peers == 0;
        let json = serde_json::json!({
            "nodes": args.nodes,
            "concurrency": args.concurrency,
            "hold": args.hold,
            "backend": args.backend,
            "servers": args.servers,
            "store": if args.store.is_some() { "postgres" } else { "sqlite" },
            "completed": completed,
            "elapsed_s": elapsed.as_secs_f64(),
            "nodes_per_s": completed as f64 / elapsed.as_secs_f64().max(1e-9),
            "steps": steps,
            "errors": errors,
            "server": {"peak_rss_mib": rss_kib as f64 / 1024.0, "cpu_s": cpu_secs, "peak_active_tunnels": peak_tunnels},
            "leaks": leaks,
            "churn": churn,
            "method": "simulated nodes bind their tunnel addresses; the namespace routes 100.64.0.0/16 to lo",
            "ok": ok,
        });
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
        let mut s = format!(
            "storm: {} of {} nodes completed in {:.2} s = {:.0} nodes/s (concurrency {}, {} server(s), {}, {}{})\n",
            j["completed"],
            j["nodes"],
            j["elapsed_s"].as_f64().unwrap_or(0.0),
            j["nodes_per_s"].as_f64().unwrap_or(0.0),
            j["concurrency"],
            j["servers"],
            j["store"].as_str().unwrap_or(""),
            j["backend"].as_str().unwrap_or(""),
            if j["hold"].as_bool() == Some(true) { ", hold" } else { "" }
        );
        s += "step            count     p50 ms    p95 ms    p99 ms    max ms\n";
        if let Some(steps) = j["steps"].as_object() {
            for (name, v) in steps {
                let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
                s += &format!(
                    "{name:<12} {:>8} {:>10.2} {:>9.2} {:>9.2} {:>9.2}\n",
                    v["count"],
                    f("p50_ms"),
                    f("p95_ms"),
                    f("p99_ms"),
                    f("max_ms")
                );
            }
        }
        let errors = j["errors"].as_object().map(|e| e.len()).unwrap_or(0);
        s += &format!("errors: {}\n", if errors == 0 { "none".to_string() } else { j["errors"].to_string() });
        s += &format!(
            "server(s): peak RSS {:.1} MiB (largest), CPU {:.2} s (all), peak active tunnels {}\n",
            j["server"]["peak_rss_mib"].as_f64().unwrap_or(0.0),
            j["server"]["cpu_s"].as_f64().unwrap_or(0.0),
            j["server"]["peak_active_tunnels"]
        );
        s += &format!(
            "after: {} active tunnels, {} device peers (must be 0 and 0)\n",
            j["leaks"]["active_tunnels"], j["leaks"]["device_peers"]
        );
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
