//! What an operator watches: Prometheus metrics, health and readiness on the admin
//! listener, after a real enrollment, phone-home and refusal.

mod common;

use common::cluster::Cluster;
use common::eventually;

fn get(c: &Cluster, path: &str) -> (u16, String) {
    c.server.admin_get(path)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn metrics_health_and_readiness() {
    common::require_root();
    let c = Cluster::new(2);
    c.add_nodes(&["--identity", "network"]);
    assert_eq!(get(&c, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&c, "/readyz"), (200, "ready\n".into()));

    // n1 boots; n2 claims n1's MAC from the wrong address (refused).
    let out = c.agent(0, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    c.server.ok(&["node", "set", "n2", "--identity", "asset-tag"]);
    let out = c.agent(1, "fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "refused: {}", String::from_utf8_lossy(&out.stderr));
    eventually(10, "the tunnel to close", || c.server.wg_peers().is_empty());

    let (status, text) = get(&c, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "ferry_enrollments_total{result=\"accepted\"}"), 1.0);
    assert_eq!(metric(&text, "ferry_enrollments_total{result=\"refused\"}"), 1.0);
    assert_eq!(metric(&text, "ferry_active_tunnels"), 0.0);
    assert_eq!(metric(&text, "ferry_tunnel_lifetime_seconds_count{reason=\"phone-home\"}"), 1.0);
    assert_eq!(metric(&text, "ferry_phone_home_latency_seconds_count"), 1.0);
    // (The agent reads meta-data twice: once to see the tunnel answers, once for the seed.)
    for doc in ["meta-data", "user-data", "vendor-data"] {
        assert!(metric(&text, &format!("ferry_document_serve_seconds_count{{document=\"{doc}\"}}")) >= 1.0, "{doc}");
    }
    assert!(!text.contains("n1") && !text.contains("52:54:00"), "no node names or MACs in labels:\n{text}");
}
