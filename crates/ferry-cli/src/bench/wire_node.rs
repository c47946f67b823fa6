//! A simulated node after enrollment, through its real WireGuard tunnel: the
//! handshake, the four documents and phone-home over TCP inside the tunnel.

use super::client::{Plan, Session};
use super::report::{Stats, Step};
use super::wire::Tunnel;
use super::wire_http;
use std::time::{Duration, Instant};

/// The longest a node may take from its handshake to phone-home: a real WireGuard peer
/// retries its handshake every 5 s, so this allows several retries.
const NODE_LIMIT: Duration = Duration::from_secs(60);
/// How long a node waits for its connections to close cleanly after phone-home.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Whether the node completed (phoned home).
pub async fn finish(s: Session, plan: &Plan, stats: &Stats) -> bool {
    let Some(params) = &s.tunnel else { return false };
    let deadline = Instant::now() + NODE_LIMIT;
    let mut tunnel = match Tunnel::open(params).await {
        Ok(t) => t,
        Err(kind) => return fail(stats, format!("tunnel {kind}")),
    };
    let t = Instant::now();
    let shook = tunnel.handshake(deadline).await;
    stats.handshakes(tunnel.initiations(), tunnel.cookies());
    if let Err(kind) = shook {
        return fail(stats, format!("handshake {kind}"));
    }
    stats.record(Step::Handshake, t.elapsed());
    let host = s.server.to_string();
    let report = ferry_api::enroll::PhoneHome { instance_id: Some("storm".into()), ..Default::default() };
    let report = serde_json::to_vec(&report).unwrap_or_default();
    let requests = ["meta-data", "user-data", "vendor-data", "network-config"]
        .map(|doc| (Step::Document, wire_http::request("GET", &host, &format!("/{doc}"), None)))
        .into_iter()
        .chain([(Step::PhoneHome, wire_http::request("POST", &host, "/phone-home", Some(&report)))]);
    let mut kept = None;
    for (step, request) in requests {
        let t = Instant::now();
        let conn = match kept.take() {
            Some(c) => c,
            None => match tunnel.connect(deadline).await {
                Ok(c) => c,
                Err(kind) => return fail(stats, format!("{} {kind}", step.name())),
            },
        };
        match tunnel.exchange(conn, &request, deadline).await {
            Ok((status, _)) if (200..300).contains(&status) => {}
            Ok((status, _)) => return fail(stats, format!("{} HTTP {status}", step.name())),
            Err(kind) => return fail(stats, format!("{} {kind}", step.name())),
        }
        stats.record(step, t.elapsed());
        if plan.keep_alive {
            kept = Some(conn);
        } else {
            tunnel.close(conn);
        }
    }
    stats.record(Step::Node, s.started.elapsed());
    stats.phoned_home(s.node);
    stats.completed();
    stats.tunnel_closed();
    if let Some(conn) = kept {
        tunnel.close(conn);
    }
    tunnel.finish(Instant::now() + CLOSE_LIMIT).await;
    true
}

fn fail(stats: &Stats, kind: String) -> bool {
    stats.error(kind);
    false
}
