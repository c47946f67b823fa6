//! Holding with several servers: `Holding → ServerLost → Holding` (the tunnel moves to
//! the next server that takes the node), and the cases where it must not move or fails.

use std::future::pending;
use std::time::Duration;

use ferry_wg::{PrivateKey, PublicKey};

use crate::args::Mode;
use crate::config::{Config, ServerUrl};
use crate::http::Method;
use crate::machine::{Agent, State};
use crate::state::{state_path, AgentState};
use crate::test_fakes::*;
use ferry_wg::BackendKind;

const B_CHALLENGE: &str = "http://192.0.2.2:8080/v1/enroll/challenge";
const B_ENROLL: &str = "http://192.0.2.2:8080/v1/enroll";
const C_ENROLL: &str = "http://192.0.2.3:8080/v1/enroll";
const A_PROVISIONING: &str = "http://192.0.2.1:8080/";

fn key(n: u8) -> PublicKey {
    PrivateKey::from_bytes([n; 32]).public_key()
}

/// Cloud-init mode with servers A (192.0.2.1), B, C... all keys pinned.
fn servers(dir: &std::path::Path, count: u8) -> Config {
    let mut cfg = test_config(dir);
    cfg.mode = Mode::CloudInit;
    for i in 2..=count {
        cfg.servers.push(ServerUrl::parse(&format!("http://192.0.2.{i}:8080")).expect("url"));
        cfg.pinned.push(key(10 + i));
    }
    cfg.tunnel_timeout = Duration::from_secs(5);
    cfg.timeout = Duration::from_secs(60);
    cfg
}

/// A enrolls the node once (then answers no more: it is the one that dies) and serves
/// its datasource (the fake cannot tell whose it is).
fn serve_a(server: &FakeServer) {
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, CHALLENGE, unreachable_reply(CHALLENGE));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    serve_documents(server);
}

/// Server `i` (2 = B, 3 = C) takes the node: same tunnel network and datasource URL
/// (unless `datasource` says otherwise), another endpoint, key and node address.
fn serve(server: &FakeServer, i: u8, datasource: Option<&str>) {
    server.on(Method::Post, &format!("http://192.0.2.{i}:8080/v1/enroll/challenge"), reply(200, &challenge_body()));
    let mut a = answer(&key(10 + i));
    a.endpoint = format!("192.0.2.{i}:51820");
    a.node_address = format!("100.64.0.{}", 10 + i);
    a.expires_at = format!("2030-01-01T00:1{i}:00Z");
    if let Some(ds) = datasource {
        a.server_address = "100.65.0.1".into();
        a.node_address = "100.65.0.7".into();
        a.datasource_url = ds.into();
        a.phone_home_url = format!("{ds}phone-home");
    }
    server.on(Method::Post, &format!("http://192.0.2.{i}:8080/v1/enroll"), reply(200, &answer_body(&a)));
}

/// Steps from `Start` to `Holding`.
async fn held(a: &mut Agent<FakeServer, FakeTunnels>) -> State {
    let mut state = State::Start;
    while !matches!(state, State::Holding { .. }) {
        assert!(!matches!(state, State::Failed(_) | State::Detached { .. }), "{state:?}");
        state = a.step(state).await;
    }
    state
}

fn state_file(dir: &std::path::Path) -> AgentState {
    let path = state_path(&dir.join("run/ferry"));
    serde_json::from_slice(&std::fs::read(path).expect("state file")).expect("json")
}

#[tokio::test(start_paused = true)]
async fn a_lost_server_is_left_for_the_next_with_the_same_interface_and_datasource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server);
    serve(&server, 2, None);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, out) = agent(servers(dir.path(), 2), &server, &tunnels);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    a = a.with_stop(Box::pin(async move {
        let _ = stop_rx.await;
    }));
    let holding = held(&mut a).await;
    let first_key = tunnels.log.lock().expect("lock").opened[0].1;
    assert_eq!(state_file(dir.path()).expires_at, "2030-01-01T00:10:00Z");

    // A dies: its datasource stops answering through the tunnel, its provisioning URL too.
    tunnels.kill(server_key());
    let began = tokio::time::Instant::now();
    let lost = a.step(holding).await;
    let State::ServerLost { ref why, .. } = lost else { panic!("expected server-lost, got {lost:?}") };
    assert!(why.to_string().contains("does not answer on the provisioning network"), "{why}");
    let waited = began.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(8), "the watcher's patience: {waited:?}");
    assert!(!server.requests(Method::Get, A_PROVISIONING).is_empty(), "A was asked before being given up");

    let moved = a.step(lost).await;
    let State::Holding { lease, .. } = &moved else { panic!("expected holding at B, got {moved:?}") };
    assert_eq!((lease.server_key, lease.datasource_url.as_str()), (key(12), DS));
    {
        let log = tunnels.log.lock().expect("lock");
        assert_eq!((log.opened.len(), log.closed, log.detached), (1, 0, 0), "the same tunnel, never removed");
        assert_eq!(log.reconfigured.len(), 1);
        let (spec, new_key) = &log.reconfigured[0];
        assert_eq!(spec.interface, "ferry-test0");
        assert_eq!((spec.server_key, spec.endpoint.to_string()), (key(12), "192.0.2.2:51820".into()));
        assert_eq!(spec.node_address.to_string(), "100.64.0.12", "B's address for the node");
        assert_ne!(*new_key, first_key, "a fresh WireGuard key for B");
        assert!(log.probes.iter().all(|(_, t)| t.to_string() == "100.64.0.1:8081"), "probes hit the datasource port");
    }
    let sent: serde_json::Value =
        serde_json::from_slice(server.requests(Method::Post, B_ENROLL)[0].json.as_deref().expect("body"))
            .expect("json");
    assert_ne!(sent["public_key"], first_key.to_base64());
    assert_eq!(out.text().lines().count(), 1, "the datasource line is printed once: {}", out.text());
    assert_eq!(state_file(dir.path()).expires_at, "2030-01-01T00:12:00Z", "the state file follows the tunnel");

    // B is watched in turn, and a stop request still ends it all.
    stop_tx.send(()).expect("stop");
    assert!(matches!(a.step(moved).await, State::TornDown { .. }));
    assert_eq!(tunnels.counts(), (1, 1, 0));
    assert!(!state_path(&dir.path().join("run/ferry")).exists());
}

#[tokio::test(start_paused = true)]
async fn a_server_that_closed_the_tunnel_itself_is_not_left() {
    // cloud-init phoned home (or the tunnel expired): the datasource stops answering
    // through the tunnel, but the server answers on the provisioning network.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server);
    server.on(Method::Get, A_PROVISIONING, reply(404, b"not found"));
    serve(&server, 2, None);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(servers(dir.path(), 2), &server, &tunnels);
    a = a.with_stop(Box::pin(tokio::time::sleep(Duration::from_secs(60))));
    let holding = held(&mut a).await;
    tunnels.kill(server_key());
    assert!(matches!(a.step(holding).await, State::TornDown { .. }), "held until stopped");
    assert!(!server.requests(Method::Get, A_PROVISIONING).is_empty());
    assert!(server.requests(Method::Post, B_CHALLENGE).is_empty(), "no enrollment elsewhere");
    let log = tunnels.log.lock().expect("lock");
    assert!(log.reconfigured.is_empty());
    assert!(log.probes.len() < 20, "watching stopped once the server was found alive: {}", log.probes.len());
}

#[tokio::test(start_paused = true)]
async fn with_one_server_nothing_is_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(servers(dir.path(), 1), &server, &tunnels);
    a = a.with_stop(Box::pin(tokio::time::sleep(Duration::from_secs(60))));
    let holding = held(&mut a).await;
    tunnels.kill(server_key());
    assert!(matches!(a.step(holding).await, State::TornDown { .. }));
    assert!(tunnels.log.lock().expect("lock").probes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_server_serving_another_datasource_url_is_passed_over() {
    // B would take the node, but at a datasource URL cloud-init was never given; C
    // serves the same one.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server);
    serve(&server, 2, Some("http://100.65.0.1:8081/"));
    serve(&server, 3, None);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(servers(dir.path(), 3), &server, &tunnels);
    a = a.with_stop(Box::pin(pending()));
    let holding = held(&mut a).await;
    tunnels.kill(server_key());
    let lost = a.step(holding).await;
    let State::Holding { lease, .. } = a.step(lost).await else { panic!("expected holding at C") };
    assert_eq!(lease.server_key, key(13));
    assert_eq!(server.requests(Method::Post, B_ENROLL).len(), 1, "B was asked");
    assert_eq!(server.requests(Method::Post, C_ENROLL).len(), 1);
    let log = tunnels.log.lock().expect("lock");
    assert_eq!(log.reconfigured.len(), 1, "the tunnel went to C only");
    assert_eq!(log.reconfigured[0].0.server_key, key(13));
}

#[tokio::test(start_paused = true)]
async fn when_no_server_takes_the_node_the_tunnel_is_removed_and_the_agent_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server); // B answers nothing
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let mut cfg = servers(dir.path(), 2);
    cfg.timeout = Duration::from_secs(20);
    let (mut a, out) = agent(cfg, &server, &tunnels);
    a = a.with_stop(Box::pin(pending()));
    let holding = held(&mut a).await;
    tunnels.kill(server_key());
    let lost = a.step(holding).await;
    let began = tokio::time::Instant::now();
    let State::Failed(err) = a.step(lost).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(began.elapsed() <= Duration::from_secs(20), "a fresh --timeout bounds the move");
    assert!(!server.requests(Method::Post, B_CHALLENGE).is_empty());
    assert_eq!(tunnels.counts(), (1, 1, 0), "the dead tunnel was removed");
    assert!(!state_path(&dir.path().join("run/ferry")).exists());
    assert_eq!(out.text().lines().count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stop_request_while_moving_removes_the_tunnel_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server); // B answers nothing: the move goes on retrying
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(servers(dir.path(), 2), &server, &tunnels);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    a = a.with_stop(Box::pin(async move {
        let _ = stop_rx.await;
    }));
    let holding = held(&mut a).await;
    tunnels.kill(server_key());
    let lost = a.step(holding).await;
    assert!(matches!(lost, State::ServerLost { .. }), "{lost:?}");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(());
    });
    let began = tokio::time::Instant::now();
    assert!(matches!(a.step(lost).await, State::TornDown { .. }));
    assert!(began.elapsed() < Duration::from_secs(4), "{:?}", began.elapsed());
    assert_eq!(tunnels.counts(), (1, 1, 0));
    assert!(!state_path(&dir.path().join("run/ferry")).exists());
}

#[tokio::test(start_paused = true)]
async fn with_several_servers_a_kernel_tunnel_is_held_not_detached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_a(&server);
    let tunnels = FakeTunnels::new(BackendKind::Kernel);
    let (mut a, _) = agent(servers(dir.path(), 2), &server, &tunnels);
    a = a.with_stop(Box::pin(pending()));
    held(&mut a).await;
    assert!(state_file(dir.path()).held, "the agent stays to watch the server");
    assert_eq!(state_file(dir.path()).guard.as_deref(), Some("ferry_agent_fake"), "teardown knows the guard");
    assert_eq!(tunnels.counts(), (1, 0, 0));
}
