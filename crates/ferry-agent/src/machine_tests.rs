//! The enrollment transitions: `Start → Challenged → Enrolled` and their failures.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::{EnrollRequest, TpmCredentialRequest};
use ferry_core::NodeName;
use ferry_wg::PrivateKey;

use crate::http::Method;
use crate::machine::State;
use crate::test_fakes::*;
use ferry_wg::BackendKind;

fn challenged() -> State {
    State::Challenged { nonce: STANDARD.encode(NONCE), nonce_bytes: NONCE.to_vec(), server_key: Some(server_key()) }
}

#[tokio::test(start_paused = true)]
async fn start_to_challenged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
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
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
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
    let (mut a, _) = agent(cfg, &server, &FakeTunnels::new(BackendKind::Userspace));
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
        let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
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
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
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
    assert!(req.proofs.asset_tag_v1.is_none(), "never the v1 proof");
    assert!(tag_proof_verifies(&a.public_key, &req.proofs.asset_tag_v2.expect("proof")));
}

#[tokio::test(start_paused = true)]
async fn a_challenge_naming_an_unpinned_key_fails_as_an_impostor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    let impostor = PrivateKey::generate().public_key();
    let body =
        format!(r#"{{"nonce":"{}","expires_in_secs":60,"server_public_key":"{impostor}"}}"#, STANDARD.encode(NONCE));
    server.on(Method::Post, CHALLENGE, reply(200, body.as_bytes()));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    let State::Failed(err) = a.step(State::Start).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains(&impostor.to_base64()), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_asset_tag_needs_a_server_that_names_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    let old_server = State::Challenged { nonce: STANDARD.encode(NONCE), nonce_bytes: NONCE.to_vec(), server_key: None };
    let State::Failed(err) = a.step(old_server).await else { panic!("expected failure") };
    assert!(err.to_string().contains("update the ferry server"), "{err}");
    assert!(server.requests(Method::Post, ENROLL).is_empty(), "no proof, no request");
}

#[tokio::test(start_paused = true)]
async fn challenged_without_node_name_sends_no_proof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.node = None;
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    let (mut a, _) = agent(cfg, &server, &FakeTunnels::new(BackendKind::Userspace));
    assert!(matches!(a.step(challenged()).await, State::Enrolled { .. }));
    let req: EnrollRequest =
        serde_json::from_slice(&server.requests(Method::Post, ENROLL)[0].json.clone().expect("body")).expect("json");
    assert!(req.proofs.asset_tag_v2.is_none());
}

#[tokio::test(start_paused = true)]
async fn challenged_refused_is_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(401, br#"{"error":"refused","kind":"refused"}"#));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
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
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    assert!(matches!(a.step(challenged()).await, State::Start));
}

#[tokio::test(start_paused = true)]
async fn challenged_key_mismatch_brings_nothing_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let impostor = PrivateKey::from_bytes([8; 32]).public_key();
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&impostor))));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
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
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    let State::Failed(err) = a.step(challenged()).await else { panic!("expected failure") };
    assert!(err.to_string().contains("not inside the tunnel"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_impostor_echoing_the_key_cannot_point_the_agent_at_a_local_address() {
    // The pinned key echoed (anyone can copy a public key), with tunnel parameters that
    // send the agent's fetches (and cloud-init's) to a listener on the node itself or
    // out of another interface: refused as an impostor, exit 4, nothing brought up.
    let dir = tempfile::tempdir().expect("tempdir");
    let lies: [(&str, &str, u8, &str, &str); 5] = [
        ("100.64.0.2", "127.0.0.1", 16, "http://127.0.0.1:8081/", "loopback"),
        ("127.0.0.2", "127.0.0.1", 8, "http://127.0.0.1:8081/", "loopback"),
        ("100.64.0.2", "198.18.0.11", 16, "http://198.18.0.11:8081/", "not the server's address"),
        ("198.18.0.50", "198.18.0.11", 24, "http://198.18.0.11:8081/", "not the server's address"),
        ("100.64.0.2", "100.64.0.2", 16, "http://100.64.0.2:8081/", "not the server's address"),
    ];
    for (node, server_address, prefix, ds, says) in lies {
        let mut lie = answer(&server_key());
        lie.node_address = node.into();
        lie.server_address = server_address.into();
        lie.prefix_len = prefix;
        lie.datasource_url = ds.into();
        lie.phone_home_url = format!("{ds}phone-home");
        let server = FakeServer::default();
        server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
        server.on(Method::Post, ENROLL, reply(200, &answer_body(&lie)));
        let tunnels = FakeTunnels::new(BackendKind::Userspace);
        let (a, out) = agent(test_config(dir.path()), &server, &tunnels);
        let err = a.run().await.expect_err("impostor");
        assert_eq!(err.exit_code(), 4, "{server_address}: {err}");
        let text = err.to_string();
        assert!(text.starts_with("refusing the enrollment answer as an impostor's: "), "{text}");
        assert!(text.contains(says), "{server_address}/{prefix}: {text}");
        assert_eq!(tunnels.counts(), (0, 0, 0), "no tunnel, no route to {server_address}");
        assert!(server.urls().iter().all(|u| !u.contains(server_address)), "nothing fetched: {:?}", server.urls());
        assert_eq!(out.text(), "");
    }
}

#[tokio::test(start_paused = true)]
async fn requests_into_the_tunnel_leave_only_through_its_interface() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(test_config(dir.path()), &server, &tunnels);
    a.run().await.expect("fetch mode");
    let log = server.log();
    assert!(log.len() >= 6, "{log:?}");
    for req in log {
        let into_tunnel = req.url.starts_with("http://100.64.0.1:");
        let expected = into_tunnel.then(|| "ferry-test0".to_string());
        assert_eq!(req.interface, expected, "{}", req.url);
    }
}

#[tokio::test(start_paused = true)]
async fn unspecified_endpoint_means_the_enrollment_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a0 = answer(&server_key());
    a0.endpoint = "0.0.0.0:51999".into();
    let server = FakeServer::default();
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&a0)));
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    let State::Enrolled { lease } = a.step(challenged()).await else { panic!("expected enrolled") };
    assert_eq!(lease.endpoint, "192.0.2.1:51999".parse().expect("addr"));
}

fn tpm_server() -> FakeServer {
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, TPM, reply(200, &tpm_challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    server
}

#[tokio::test(start_paused = true)]
async fn with_a_tpm_the_credential_round_trip_comes_before_enrolling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.node = None; // the node name comes from the TPM challenge
    let server = tpm_server();
    let tpm = FakeTpm::default();
    let (a, _) = agent(cfg, &server, &FakeTunnels::new(BackendKind::Userspace));
    let mut a = a.with_tpm(Box::new(tpm.clone()));

    let State::Attested { nonce, nonce_bytes, server_key, evidence } = a.step(challenged()).await else {
        panic!("expected attested")
    };
    assert_eq!((nonce.as_str(), nonce_bytes.as_slice()), (STANDARD.encode(NONCE).as_str(), &NONCE[..]));
    let sent = server.requests(Method::Post, TPM);
    assert_eq!(sent.len(), 1);
    let req: TpmCredentialRequest = serde_json::from_slice(sent[0].json.as_deref().expect("body")).expect("json");
    assert_eq!(req.mac, "52:54:00:12:34:56");
    assert_eq!(req.public_key, a.public_key.to_base64());
    assert_eq!(req.nonce, STANDARD.encode(NONCE));
    assert_eq!(STANDARD.decode(&req.ek_public).expect("b64"), b"EK-PUBLIC");
    assert_eq!(STANDARD.decode(req.ek_certificate.expect("cert")).expect("b64"), b"EK-CERT");
    assert_eq!(STANDARD.decode(&req.ak_public).expect("b64"), b"AK-PUBLIC");
    let n1 = NodeName::parse("n1").expect("name");
    let qualifying = ferry_core::enroll::tpm_qualifying_data(&NONCE, &a.public_key.0, &n1);
    {
        let log = tpm.log.lock().expect("lock");
        assert_eq!(log.challenges.len(), 1);
        let c = &log.challenges[0];
        assert_eq!((c.credential_blob.as_slice(), c.encrypted_secret.as_slice()), (&b"BLOB"[..], &b"ENCRYPTED"[..]));
        assert_eq!(c.qualifying, qualifying, "bound to the nonce, the WireGuard key and the challenge's node");
        assert_eq!(c.pcrs, vec![7, 0]);
    }
    assert!(server.requests(Method::Post, ENROLL).is_empty(), "not enrolled yet");

    let State::Enrolled { lease: l } = a.step(State::Attested { nonce, nonce_bytes, server_key, evidence }).await
    else {
        panic!("expected enrolled")
    };
    assert_eq!(l, lease());
    let req: EnrollRequest =
        serde_json::from_slice(server.requests(Method::Post, ENROLL)[0].json.as_deref().expect("body")).expect("json");
    assert_eq!(req.nonce, STANDARD.encode(NONCE), "the same nonce as the credential request");
    let proof = req.proofs.tpm.expect("tpm proof");
    assert_eq!(STANDARD.decode(&proof.secret).expect("b64"), b"BOLB", "the activated secret");
    assert_eq!(STANDARD.decode(&proof.attest).expect("b64"), qualifying.to_vec());
    assert_eq!(STANDARD.decode(&proof.signature).expect("b64"), b"SIGNATURE");
    assert_eq!(
        proof.pcr_values,
        BTreeMap::from([(0, "00".repeat(32)), (7, "07".repeat(32))]),
        "PCR index → lowercase hex"
    );
    // The asset tag is proven too, for the node the TPM challenge named.
    assert!(tag_proof_verifies(&a.public_key, &req.proofs.asset_tag_v2.expect("asset-tag proof")));
    assert!(a.tpm.is_none(), "the TPM is released once enrolled");
}

#[tokio::test(start_paused = true)]
async fn a_whole_run_with_a_tpm_and_retries_reuse_the_attestation_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, TPM, busy(1));
    server.on(Method::Post, TPM, reply(200, &tpm_challenge_body()));
    server.on(Method::Post, ENROLL, busy(1));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    serve_documents(&server);
    let tpm = FakeTpm::default();
    let (a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    let outcome = a.with_tpm(Box::new(tpm.clone())).run().await.expect("enrolled");
    assert_eq!(outcome.node, "n1");
    let enrollment: Vec<String> = server.urls().into_iter().filter(|u| u.contains("/v1/enroll")).collect();
    assert_eq!(enrollment, [CHALLENGE, TPM, CHALLENGE, TPM, ENROLL, CHALLENGE, TPM, ENROLL], "a fresh nonce each time");
    let log = tpm.log.lock().expect("lock");
    assert_eq!(log.identities, 3, "asked each round (the real TPM keeps its EK and AK)");
    assert_eq!(log.challenges.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn tpm_refusal_tpm_failure_and_bad_challenges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |server: FakeServer, tpm: FakeTpm| {
        let (a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
        let mut a = a.with_tpm(Box::new(tpm));
        async move { a.step(challenged()).await }
    };
    let server = FakeServer::default();
    server.on(Method::Post, TPM, reply(401, br#"{"error":"refused","kind":"refused"}"#));
    let State::Failed(err) = run(server.clone(), FakeTpm::default()).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 3, "refused: {err}");
    assert!(server.requests(Method::Post, ENROLL).is_empty());

    let server = FakeServer::default();
    server.on(Method::Post, TPM, busy(1));
    assert!(matches!(run(server, FakeTpm::default()).await, State::Start), "busy: a fresh nonce");

    let failing = FakeTpm { fail: Some("TPM: cannot activate the credential".into()), ..Default::default() };
    let State::Failed(err) = run(tpm_server(), failing).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("activate the credential"), "{err}");

    let server = FakeServer::default();
    server.on(Method::Post, TPM, reply(200, br#"{"node":"n1","credential_blob":"%","encrypted_secret":"","pcrs":[]}"#));
    let State::Failed(err) = run(server, FakeTpm::default()).await else { panic!("expected failure") };
    assert!(err.to_string().contains("credential_blob is not base64"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn without_a_tpm_there_is_no_credential_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = tpm_server();
    let (mut a, _) = agent(test_config(dir.path()), &server, &FakeTunnels::new(BackendKind::Userspace));
    assert!(matches!(a.step(challenged()).await, State::Enrolled { .. }));
    assert!(server.requests(Method::Post, TPM).is_empty());
    let req: EnrollRequest =
        serde_json::from_slice(server.requests(Method::Post, ENROLL)[0].json.as_deref().expect("body")).expect("json");
    assert!(req.proofs.tpm.is_none());
}
