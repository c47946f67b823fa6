//! A server's Retry-After in the retry loops once enrolled (the datasource probe, the
//! document fetches, phone-home): honoured, and never waited for past the loop's
//! deadline. (Enrollment's own: `machine_tests`.) The test config probes from 10 ms
//! up to 2 s apart, so a wait of 5 s can only be the server's.

use std::time::Duration;

use ferry_wg::BackendKind;
use tokio::time::Instant;

use crate::http::Method;
use crate::machine::State;
use crate::test_fakes::*;
use crate::tunnel::{Tunnel, TunnelFactory, TunnelSpec};

/// Longer than every deadline of the test config (`--timeout` 60 s).
const AN_HOUR: u64 = 3600;

fn doc(name: &str) -> String {
    format!("{DS}{name}")
}

async fn open(tunnels: &FakeTunnels) -> Box<dyn Tunnel> {
    let spec = TunnelSpec {
        interface: "ferry-test0".into(),
        backend: ferry_wg::BackendChoice::Userspace,
        private_key: ferry_wg::PrivateKey::generate(),
        node_address: "100.64.0.2".parse().expect("ip"),
        server_address: "100.64.0.1".parse().expect("ip"),
        server_key: server_key(),
        endpoint: "192.0.2.1:51820".parse().expect("addr"),
        keepalive: 5,
        guard: crate::tunnel::GuardPolicy::Required,
    };
    tunnels.open(spec).await.expect("fake open")
}

#[tokio::test(start_paused = true)]
async fn the_datasource_probe_honours_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Get, &doc("meta-data"), busy(5));
    server.on(Method::Get, &doc("meta-data"), reply(200, b"instance-id: x\n"));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let began = Instant::now();
    let next = a.step(State::Enrolled { lease: lease() }).await;
    assert!(matches!(next, State::TunnelUp { .. }), "{next:?}");
    assert!(began.elapsed() >= Duration::from_secs(5), "waited {:?}", began.elapsed());
    assert_eq!(server.requests(Method::Get, &doc("meta-data")).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_datasource_probe_gives_up_at_once_on_a_retry_after_past_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Get, &doc("meta-data"), busy(AN_HOUR));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let began = Instant::now();
    let State::Failed(err) = a.step(State::Enrolled { lease: lease() }).await else { panic!("expected failure") };
    assert!(began.elapsed() < Duration::from_secs(1), "waited {:?} for nothing", began.elapsed());
    assert!(err.to_string().contains("Retry-After 3600 s"), "{err}");
    assert_eq!(server.requests(Method::Get, &doc("meta-data")).len(), 1);
    assert_eq!(tunnels.counts(), (1, 1, 0), "the tunnel is removed");
}

#[tokio::test(start_paused = true)]
async fn a_document_fetch_honours_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    // Replies queue up per URL: the 503 comes before the documents.
    server.on(Method::Get, &doc("user-data"), busy(5));
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let began = Instant::now();
    let next = a.step(State::TunnelUp { lease: lease(), tunnel }).await;
    assert!(matches!(next, State::Fetched { .. }), "{next:?}");
    assert!(began.elapsed() >= Duration::from_secs(5), "waited {:?}", began.elapsed());
    assert_eq!(server.requests(Method::Get, &doc("user-data")).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_document_fetch_gives_up_at_once_on_a_retry_after_past_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Get, &doc("user-data"), busy(AN_HOUR));
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let began = Instant::now();
    let State::Failed(err) = a.step(State::TunnelUp { lease: lease(), tunnel }).await else {
        panic!("expected failure")
    };
    assert!(began.elapsed() < Duration::from_secs(1), "waited {:?} for nothing", began.elapsed());
    assert!(err.to_string().contains("user-data") && err.to_string().contains("Retry-After 3600 s"), "{err}");
    assert_eq!(server.requests(Method::Get, &doc("user-data")).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn phone_home_honours_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, PHONE, busy(5));
    server.on(Method::Post, PHONE, reply(200, b"{}"));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let began = Instant::now();
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: Vec::new() }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "{next:?}");
    assert!(a.phoned_home);
    assert!(began.elapsed() >= Duration::from_secs(5), "waited {:?}", began.elapsed());
    assert_eq!(server.requests(Method::Post, PHONE).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn phone_home_gives_up_at_once_on_a_retry_after_past_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, PHONE, busy(AN_HOUR));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let began = Instant::now();
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: Vec::new() }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "not fatal: {next:?}");
    assert!(!a.phoned_home);
    assert!(began.elapsed() < Duration::from_secs(1), "waited {:?} for nothing", began.elapsed());
    assert_eq!(server.requests(Method::Post, PHONE).len(), 1);
}
