//! The enrollment transitions: `Start → Challenged → Enrolled` and their failures.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::EnrollRequest;
use ferry_core::NodeName;
use ferry_wg::PrivateKey;

use crate::http::Method;
use crate::machine::State;
use crate::test_fakes::*;
use crate::tunnel::Backend;

fn challenged() -> State {
    State::Challenged { nonce: STANDARD.encode(NONCE), nonce_bytes: NONCE.to_vec() }
}

#[tokio::test(start_paused = true)]
async fn start_to_challenged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    match a.step(State::Start).await {
        State::Challenged { nonce_bytes, .. } => assert_eq!(nonce_bytes, NONCE),
        other => panic!("expected challenged, got {other:?}"),
    }
    let sent = server.requests(Method::Post, CHALLENGE);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].json.is_none(), "the challenge request has an empty body");
}

#[tokio::test(start_paused = true)]
async fn start_retries_then_succeeds_honouring_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, unreachable_reply(CHALLENGE));
    server.on(Method::Post, CHALLENGE, busy(20));
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    assert!(matches!(a.step(State::Start).await, State::Start), "unreachable: retry");
    let before = tokio::time::Instant::now();
    assert!(matches!(a.step(State::Start).await, State::Start), "503: retry");
    assert!(before.elapsed() >= Duration::from_secs(20), "Retry-After honoured: {:?}", before.elapsed());
    assert!(matches!(a.step(State::Start).await, State::Challenged { .. }));
}

#[tokio::test(start_paused = true)]
async fn start_unreachable_until_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.timeout = Duration::from_secs(3);
    let server = FakeServer::default(); // nothing answers
    let (mut a, _) = agent(cfg, &server, &FakeTunnels::new(Backend::Userspace));
    let began = tokio::time::Instant::now();
    let mut state = State::Start;
    while matches!(state, State::Start) {
        state = a.step(state).await;
    }
    let State::Failed(err) = state else { panic!("expected failure, got {state:?}") };
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("Connection refused"), "names the last error: {err}");
    assert!(began.elapsed() <= Duration::from_secs(3), "bounded by --timeout");
    assert!(server.requests(Method::Post, CHALLENGE).len() >= 3, "retried with back-off");
}

#[tokio::test(start_paused = true)]
async fn start_fails_at_once_on_refusal_or_a_bad_nonce() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (r, code) in [
        (reply(401, br#"{"error":"refused","kind":"refused"}"#), 3),
        (reply(200, br#"{"nonce":"AAAA","expires_in_secs":60}"#), 1),
        (reply(200, b"<html>"), 1),
        (reply(404, b"not found"), 1),
    ] {
        let server = FakeServer::default();
        server.on(Method::Post, CHALLENGE, r);
        let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
        match a.step(State::Start).await {
            State::Failed(e) => assert_eq!(e.exit_code(), code, "{e}"),
            other => panic!("expected failure, got {other:?}"),
        }
        assert_eq!(server.requests(Method::Post, CHALLENGE).len(), 1, "no retry");
    }
}

#[tokio::test(start_paused = true)]
async fn challenged_to_enrolled_with_a_bound_proof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    match a.step(challenged()).await {
        State::Enrolled { lease: l } => assert_eq!(l, lease()),
        other => panic!("expected enrolled, got {other:?}"),
    }
    let sent = server.requests(Method::Post, ENROLL);
    let body = sent[0].json.clone().expect("json body");
    assert!(!String::from_utf8_lossy(&body).contains(TAG), "the asset tag itself never crosses the network");
    let req: EnrollRequest = serde_json::from_slice(&body).expect("request");
    assert_eq!(req.mac, "52:54:00:12:34:56");
    assert_eq!(req.public_key, a.public_key.to_base64());
    assert_eq!(req.nonce, STANDARD.encode(NONCE));
    let proof = STANDARD.decode(req.proofs.asset_tag.expect("proof")).expect("base64");
    let n1 = NodeName::parse("n1").expect("name");
    assert!(ferry_core::enroll::verify_asset_tag_proof(TAG.as_bytes(), &NONCE, &a.public_key.0, &n1, &proof));
}

#[tokio::test(start_paused = true)]
async fn challenged_without_node_name_sends_no_proof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.node = None;
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    let (mut a, _) = agent(cfg, &server, &FakeTunnels::new(Backend::Userspace));
    assert!(matches!(a.step(challenged()).await, State::Enrolled { .. }));
    let req: EnrollRequest =
        serde_json::from_slice(&server.requests(Method::Post, ENROLL)[0].json.clone().expect("body")).expect("json");
    assert!(req.proofs.asset_tag.is_none());
}

#[tokio::test(start_paused = true)]
async fn challenged_refused_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(401, br#"{"error":"refused","kind":"refused"}"#));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    let State::Failed(err) = a.step(challenged()).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("ferry audit"), "says what to do: {err}");
    assert_eq!(server.requests(Method::Post, ENROLL).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn challenged_busy_goes_back_for_a_fresh_nonce() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, busy(1));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    assert!(matches!(a.step(challenged()).await, State::Start));
}

#[tokio::test(start_paused = true)]
async fn challenged_key_mismatch_brings_nothing_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let impostor = PrivateKey::from_bytes([8; 32]).public_key();
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&impostor))));
    let tunnels = FakeTunnels::new(Backend::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let State::Failed(err) = a.step(challenged()).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains(&impostor.to_base64()), "{err}");
    // The whole run: nothing is brought up, nothing is fetched.
    let (a, out) = agent(test_config(dir.path()), &server, &tunnels);
    let err = a.run().await.expect_err("impostor");
    assert_eq!(err.exit_code(), 4);
    assert_eq!(tunnels.counts(), (0, 0, 0));
    assert!(server.requests(Method::Get, &format!("{DS}meta-data")).is_empty());
    assert_eq!(out.text(), "");
}

#[tokio::test(start_paused = true)]
async fn challenged_answer_pointing_outside_the_tunnel_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bad = answer(&server_key());
    bad.datasource_url = "http://192.0.2.1:8081/".into();
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&bad)));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    let State::Failed(err) = a.step(challenged()).await else { panic!("expected failure") };
    assert!(err.to_string().contains("not inside the tunnel"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn unspecified_endpoint_means_the_enrollment_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a0 = answer(&server_key());
    a0.endpoint = "0.0.0.0:51999".into();
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&a0)));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(Backend::Userspace));
    let State::Enrolled { lease } = a.step(challenged()).await else { panic!("expected enrolled") };
    assert_eq!(lease.endpoint, "192.0.2.1:51999".parse().expect("addr"));
}
