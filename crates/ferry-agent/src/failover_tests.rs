//! Several servers: enrollment fails over to the next one, and a server lost after
//! enrolling (its tunnel stops answering) means enrolling again elsewhere.

use std::time::Duration;

use ferry_wg::{PrivateKey, PublicKey};

use crate::config::{Config, ServerUrl};
use crate::http::Method;
use crate::test_fakes::*;
use ferry_wg::BackendKind;

const B_CHALLENGE: &str = "http://192.0.2.2:8080/v1/enroll/challenge";
const B_ENROLL: &str = "http://192.0.2.2:8080/v1/enroll";
/// Server B's tunnel network differs from A's, so the fake can tell their datasources apart.
const B_DS: &str = "http://100.65.0.1:8081/";
const B_PHONE: &str = "http://100.65.0.1:8081/phone-home";

fn key_b() -> PublicKey {
    PrivateKey::from_bytes([8; 32]).public_key()
}

/// Servers A (192.0.2.1) and B (192.0.2.2), both keys pinned.
fn two_servers(dir: &std::path::Path) -> Config {
    let mut cfg = test_config(dir);
    cfg.servers.push(ServerUrl::parse("http://192.0.2.2:8080").expect("url"));
    cfg.pinned.push(key_b());
    cfg.tunnel_timeout = Duration::from_secs(5);
    cfg.timeout = Duration::from_secs(120);
    cfg
}

/// B answers the challenge and enrollment and serves every document through its tunnel.
fn serve_b(server: &FakeServer) {
    server.on(Method::Post, B_CHALLENGE, reply(200, &challenge_body()));
    let mut a = answer(&key_b());
    a.endpoint = "192.0.2.2:51820".into();
    a.server_address = "100.65.0.1".into();
    a.node_address = "100.65.0.3".into();
    a.datasource_url = B_DS.into();
    a.phone_home_url = B_PHONE.into();
    server.on(Method::Post, B_ENROLL, reply(200, &answer_body(&a)));
    for doc in ["meta-data", "user-data", "vendor-data"] {
        server.on(Method::Get, &format!("{B_DS}{doc}"), reply(200, b"instance-id: i-n1\n"));
    }
    server.on(Method::Get, &format!("{B_DS}network-config"), reply(404, b"{}"));
    server.on(Method::Post, B_PHONE, reply(200, b"{}"));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_server_is_skipped_for_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default(); // A answers nothing
    serve_b(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(two_servers(dir.path()), &server, &tunnels);
    let outcome = a.run().await.expect("enrolled at B");
    assert!(outcome.phoned_home);
    assert_eq!(server.requests(Method::Post, CHALLENGE).len(), 1, "A tried once, then B");
    assert_eq!(server.requests(Method::Post, B_ENROLL).len(), 1);
    let log = tunnels.log.lock().expect("lock");
    assert_eq!(log.opened.len(), 1);
    assert_eq!(log.opened[0].0.server_key, key_b(), "the peer is B's key, not A's");
    assert_eq!(log.opened[0].0.endpoint.to_string(), "192.0.2.2:51820");
}

#[tokio::test(start_paused = true)]
async fn a_server_lost_after_enrolling_means_enrolling_again_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    // A enrolls the node, then its tunnel never answers (A was killed).
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    serve_b(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(two_servers(dir.path()), &server, &tunnels);
    let began = tokio::time::Instant::now();
    let outcome = a.run().await.expect("completed at B");
    assert!(outcome.phoned_home);
    assert_eq!(server.requests(Method::Post, B_PHONE).len(), 1);
    let waited = began.elapsed();
    // Probes back off with jitter up to 2 s, and none may cross the limit.
    assert!(waited >= Duration::from_secs(2), "A's tunnel was given time (--tunnel-timeout 5 s): {waited:?}");
    assert!(waited < Duration::from_secs(15), "then B took over promptly: {waited:?}");
    let log = tunnels.log.lock().expect("lock");
    assert_eq!(log.opened.len(), 2, "one tunnel to A, one to B");
    assert_eq!(log.closed, 2, "A's dead tunnel was removed before enrolling at B");
    assert_eq!((log.opened[0].0.server_key, log.opened[1].0.server_key), (server_key(), key_b()));
    assert_ne!(log.opened[0].1, log.opened[1].1, "a fresh WireGuard key for the second enrollment");
    let sent: Vec<serde_json::Value> = server
        .requests(Method::Post, ENROLL)
        .iter()
        .chain(server.requests(Method::Post, B_ENROLL).iter())
        .map(|r| serde_json::from_slice(r.json.as_deref().expect("body")).expect("json"))
        .collect();
    assert_ne!(sent[0]["public_key"], sent[1]["public_key"], "each server saw its own key");
}

#[tokio::test(start_paused = true)]
async fn a_server_lost_before_phone_home_means_booting_again_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    // A serves the documents, then dies before the phone-home (no route answers it).
    for doc in ["meta-data", "user-data", "vendor-data"] {
        server.on(Method::Get, &format!("{DS}{doc}"), reply(200, b"instance-id: i-n1\n"));
    }
    server.on(Method::Get, &format!("{DS}network-config"), reply(404, b"{}"));
    serve_b(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(two_servers(dir.path()), &server, &tunnels);
    let outcome = a.run().await.expect("completed at B");
    assert!(outcome.phoned_home, "B recorded the boot");
    assert!(!server.requests(Method::Post, PHONE).is_empty());
    assert_eq!(server.requests(Method::Post, B_PHONE).len(), 1);
    assert_eq!(tunnels.counts(), (2, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn one_server_keeps_the_old_behaviour() {
    // With a single server, a silent datasource still fails the run (exit 6) instead of
    // looping: there is nowhere to fail over to.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.tunnel_timeout = Duration::from_secs(5);
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(cfg, &server, &tunnels);
    let err = a.run().await.expect_err("no datasource");
    assert_eq!(err.exit_code(), 6, "{err}");
    assert_eq!(server.requests(Method::Post, ENROLL).len(), 1, "no second enrollment");
    assert_eq!(tunnels.counts(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_key_pinned_for_another_server_is_still_accepted_but_an_unpinned_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    let rogue = PrivateKey::from_bytes([9; 32]).public_key();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&rogue))));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(two_servers(dir.path()), &server, &tunnels);
    let err = a.run().await.expect_err("impostor");
    assert_eq!(err.exit_code(), 4, "{err}");
    assert_eq!(tunnels.counts(), (0, 0, 0), "no tunnel to an unpinned key");
}

/// With the default (hashed) order, the node's MAC picks the server it tries first, so
/// nodes that all list the same servers spread over them instead of all hitting A.
#[tokio::test(start_paused = true)]
async fn the_hashed_order_starts_at_the_server_the_mac_picks() {
    for (mac, expected_b) in [("52:54:00:12:34:57", false), ("52:54:00:12:34:56", true)] {
        let mac = ferry_core::MacAddr::parse(mac).expect("mac");
        assert_eq!(mac.first_server(2) == 1, expected_b, "the MACs cover both servers");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::default();
        server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
        server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
        serve_documents(&server);
        serve_b(&server);
        let mut cfg = two_servers(dir.path());
        cfg.server_order = crate::args::ServerOrder::Hashed;
        let tunnels = FakeTunnels::new(BackendKind::Userspace);
        let a = crate::machine::Agent::new(cfg, mac, server.clone(), tunnels.clone(), Box::new(Out::default()));
        let outcome = a.run().await.expect("enrolled");
        assert!(outcome.phoned_home);
        let (at_a, at_b) = (server.requests(Method::Post, ENROLL).len(), server.requests(Method::Post, B_ENROLL).len());
        assert_eq!((at_a, at_b), if expected_b { (0, 1) } else { (1, 0) }, "{mac}: enrolled at the hashed server only");
    }
}
