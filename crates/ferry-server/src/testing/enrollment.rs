//! Enrollment in process (PRODUCT.md invariants 3, 4, 11): a node that proves every
//! factor of its policy gets one tunnel; every other attempt gets a bare refusal (or a
//! clear 4xx for malformed input), the audit log says why, and nothing is granted. The
//! root-only twins with the real agent and WireGuard: `crates/ferry/tests/bootstrap.rs`
//! (enrollment_refusals_grant_nothing), `threats.rs`, `tpm.rs`.

use super::*;
use ferry_api::enroll::{TpmCredentialRequest, TpmProof, TPM_CREDENTIAL_PATH};

const MAC1: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";
const TAG: &str = "RIGHT-TAG-5e1f";

/// n1 (asset tag: network + asset-tag), n2 (opted in to network alone) and n3 (nothing
/// but an address, no opt-in), each at its own address.
async fn server() -> TestServer {
    let s = TestServer::start().await;
    s.add_node("n1", MAC1, "192.0.2.11", serde_json::json!({}), Some(TAG)).await;
    s.add_node("n2", MAC2, "192.0.2.12", serde_json::json!({"identity": ["network"]}), None).await;
    s.add_node("n3", "52:54:00:00:00:03", "192.0.2.13", serde_json::json!({}), None).await;
    s
}

/// A refusal as the caller sees it: 401, kind `refused`, and not a word of why.
fn assert_refused(a: &Answer, what: &str) {
    assert_eq!((a.status, a.kind().as_str()), (StatusCode::UNAUTHORIZED, "refused"), "{what}: {a:?}");
    assert_eq!(a.json()["error"], "refused", "{what}: the reason is for the audit log only");
}

/// The control: the right node with the right proof from its own address gets exactly
/// one tunnel, its peer (that address only) on the device, and the datasource knows it.
#[tokio::test]
async fn a_node_proving_every_factor_gets_one_tunnel_and_its_peer() {
    let s = server().await;
    let n1 = ip("192.0.2.11");
    let a = Attempt::new(&s, n1).await;
    let answer = s.enroll(n1, &a.with_tag(&s, MAC1, TAG, "n1")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let body = answer.json();
    assert_eq!(body["node"], "n1");
    assert_eq!(body["server_public_key"], s.server_public_key.to_base64());
    assert_eq!(body["datasource_url"], "http://100.64.0.1:8471/");
    assert_eq!(body["endpoint"], "192.0.2.1:51820", "the address the node reached us on");
    let address: IpAddr = body["node_address"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.active_tunnels().await, 1);
    assert_eq!(s.device.keys(), [a.key.public_key()]);
    assert_eq!(s.device.allowed_ips(&a.key.public_key()), [ferry_wg::IpNet::from(address)], "its address alone");
    assert_eq!(s.tunnels.active(address).map(|t| t.record.node.to_string()), Some("n1".into()));
    assert!(s.audit("node/n1").await.contains("enroll.accepted from=192.0.2.11 factors="), "audited");
}

/// Every factor of the policy is needed: each attempt that misses one is refused,
/// audited with its reason, and grants nothing.
#[tokio::test]
async fn each_missing_or_wrong_factor_is_refused_and_grants_nothing() {
    let s = server().await;
    let (n1, attacker) = (ip("192.0.2.11"), ip("192.0.2.66"));

    let a = Attempt::new(&s, n1).await;
    assert_refused(&s.enroll(n1, &a.with_tag(&s, MAC1, "WRONG-TAG", "n1")).await, "wrong tag");
    let a = Attempt::new(&s, n1).await;
    assert_refused(&s.enroll(n1, &a.request(MAC1, Proofs::default())).await, "no proof");
    let a = Attempt::new(&s, n1).await;
    assert_refused(&s.enroll(n1, &a.with_tag(&s, MAC1, TAG, "n2")).await, "a proof made for another node");
    let a = Attempt::new(&s, attacker).await;
    assert_refused(&s.enroll(attacker, &a.with_tag(&s, MAC1, TAG, "n1")).await, "the right proof, elsewhere");
    let n1_log = s.audit("node/n1").await;
    for reason in [
        "asset-tag factor: proof did not verify",
        "asset-tag factor: no proof sent",
        "network factor: request did not come from one of the node's inventory addresses (came from 192.0.2.66)",
    ] {
        assert!(n1_log.contains(&format!("reason={reason}")), "{reason} in:\n{n1_log}");
    }
    assert_eq!(n1_log.matches("enroll.refused").count(), 4, "{n1_log}");

    let n3 = ip("192.0.2.13");
    let a = Attempt::new(&s, n3).await;
    assert_refused(&s.enroll(n3, &a.request("52:54:00:00:00:03", Proofs::default())).await, "no opt-in");
    let n3_log = s.audit("node/n3").await;
    assert!(n3_log.contains("only its network address would identify it"), "{n3_log}");

    let a = Attempt::new(&s, attacker).await;
    assert_refused(&s.enroll(attacker, &a.request("52:54:00:99:99:99", Proofs::default())).await, "unknown MAC");
    assert!(s.audit("mac/52:54:00:99:99:99").await.contains("no node has this MAC"));
    let never_issued = Attempt { key: PrivateKey::generate(), nonce: B64.encode([7u8; 32]) };
    assert_refused(&s.enroll(n1, &never_issued.with_tag(&s, MAC1, TAG, "n1")).await, "a nonce never issued");
    assert!(s.audit("mac/52:54:00:00:00:01").await.contains("unknown, used or expired nonce"));
    s.assert_nothing_granted().await;
}

/// A nonce is single-use: a valid request replayed, and a refused attempt retried with
/// its nonce, are refused. A captured proof is useless with another WireGuard key.
#[tokio::test]
async fn nonces_are_single_use_and_proofs_are_bound_to_their_key() {
    let s = server().await;
    let n1 = ip("192.0.2.11");
    let a = Attempt::new(&s, n1).await;
    assert_refused(&s.enroll(n1, &a.with_tag(&s, MAC1, "WRONG-TAG", "n1")).await, "wrong tag");
    assert_refused(&s.enroll(n1, &a.with_tag(&s, MAC1, TAG, "n1")).await, "the refused attempt's nonce again");

    let victim = Attempt::new(&s, n1).await;
    let mut stolen = victim.with_tag(&s, MAC1, TAG, "n1");
    stolen.public_key = PrivateKey::generate().public_key().to_base64();
    assert_refused(&s.enroll(n1, &stolen).await, "the victim's proof with the attacker's key");
    assert!(s.audit("node/n1").await.contains("asset-tag factor: proof did not verify"));
    s.assert_nothing_granted().await;

    let good = Attempt::new(&s, n1).await;
    let request = good.with_tag(&s, MAC1, TAG, "n1");
    assert_eq!(s.enroll(n1, &request).await.status, StatusCode::OK);
    assert_refused(&s.enroll(n1, &request).await, "replayed");
    assert_eq!(s.device.keys(), [good.key.public_key()], "only the first one's peer");
}

/// An agent older than proof v2 is told to update (400, audited), and gets nothing.
#[tokio::test]
async fn an_asset_tag_proof_v1_is_a_clear_400_that_says_to_update_the_agent() {
    let s = server().await;
    let n1 = ip("192.0.2.11");
    let a = Attempt::new(&s, n1).await;
    let v1 = a.request(MAC1, Proofs { asset_tag_v1: Some(B64.encode([1u8; 32])), ..Default::default() });
    let answer = s.enroll(n1, &v1).await;
    assert_eq!((answer.status, answer.kind().as_str()), (StatusCode::BAD_REQUEST, "invalid"), "{answer:?}");
    assert_eq!(answer.json()["error"], crate::enroll::OUTDATED_AGENT);
    assert!(s.audit("node/n1").await.contains("reason=asset-tag factor: this agent sent an asset-tag proof v1"));
    s.assert_nothing_granted().await;
}

/// Malformed and oversized bodies on both enrollment endpoints: a clear 4xx (never a
/// refusal), no audit row, and the nonce they name is untouched.
#[tokio::test]
async fn malformed_and_oversized_requests_are_clear_errors_and_change_nothing() {
    let s = server().await;
    let n2 = ip("192.0.2.12");
    let nonce = s.challenge(n2).await;
    let rows = s.audit_rows().await;
    let body = |mac: &str, key: &str, nonce: &str| {
        serde_json::json!({"mac": mac, "public_key": key, "nonce": nonce}).to_string().into_bytes()
    };
    let key = PrivateKey::generate().public_key().to_base64();
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad base64 key", body(MAC2, "not*base64", &nonce)),
        ("31-byte key", body(MAC2, &B64.encode([7u8; 31]), &nonce)),
        ("bad MAC", body("52:54:00:zz:00:02", &key, &nonce)),
        ("bad nonce", body(MAC2, &key, "AAAA")),
        ("invalid UTF-8", b"{\"mac\": \"\xff\xfe\", \"public_key\": \"x\", \"nonce\": \"y\"}".to_vec()),
        ("deep JSON", deep.into_bytes()),
        ("unknown field", br#"{"mac":"52:54:00:00:00:02","public_key":"x","nonce":"y","admin":true}"#.to_vec()),
        ("not JSON", b"mac=52:54:00:00:00:02".to_vec()),
        ("empty", Vec::new()),
        ("oversized", vec![b' '; crate::limits::ENROLL_BODY_LIMIT + 1]),
    ];
    for (what, bytes) in cases {
        for path in [ferry_api::enroll::ENROLL_PATH, TPM_CREDENTIAL_PATH] {
            let a = s.provisioning(n2, request("POST", path, bytes.clone())).await;
            let expected = if what == "oversized" { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
            assert_eq!((a.status, a.kind().as_str()), (expected, "invalid"), "{what} on {path}: {a:?}");
            assert!(!a.json()["error"].as_str().unwrap_or_default().is_empty(), "{what}: says what is wrong");
        }
    }
    assert_eq!(s.audit_rows().await, rows, "malformed requests write no audit row");
    s.assert_nothing_granted().await;
    let good = Attempt { key: PrivateKey::generate(), nonce };
    assert_eq!(s.enroll(n2, &good.request(MAC2, Proofs::default())).await.status, StatusCode::OK, "nonce untouched");
}

/// The TPM factor, as far as it goes without a TPM: a node with a registered EK is
/// refused without a TPM proof, with a proof but no credential challenge, and with a
/// proof whose activated secret is wrong; the credential challenge is one try per nonce.
#[tokio::test]
async fn a_tpm_node_is_refused_without_a_proof_the_tpm_really_made() {
    let s = server().await;
    let testdata = |f: &str| std::fs::read(format!("{}/../ferry-attest/testdata/{f}", env!("CARGO_MANIFEST_DIR")));
    let pem = String::from_utf8(testdata("ek.pem").unwrap()).unwrap();
    let registration =
        s.admin(Some(0), request("PUT", "/v1/nodes/n2/tpm", serde_json::json!({"ek_pem": pem}).to_string())).await;
    assert_eq!(registration.status, StatusCode::OK, "{registration:?}");
    s.admin(
        Some(0),
        request("PATCH", "/v1/nodes", r#"{"names":["n2"],"patch":{"settings":{"set":{"identity":["tpm"]}}}}"#),
    )
    .await;
    let n2 = ip("192.0.2.12");
    let forged = TpmProof {
        secret: B64.encode([0u8; 32]),
        attest: B64.encode(b"not a quote"),
        signature: B64.encode(b"no"),
        pcr_values: Default::default(),
    };

    let a = Attempt::new(&s, n2).await;
    assert_refused(&s.enroll(n2, &a.request(MAC2, Proofs::default())).await, "no TPM proof");
    let a = Attempt::new(&s, n2).await;
    let without_challenge = a.request(MAC2, Proofs { tpm: Some(forged.clone()), ..Default::default() });
    assert_refused(&s.enroll(n2, &without_challenge).await, "a proof without a challenge");

    let credential = |a: &Attempt| {
        let body = TpmCredentialRequest {
            mac: MAC2.into(),
            public_key: a.key.public_key().to_base64(),
            nonce: a.nonce.clone(),
            // The files are TPM2B_PUBLIC: a 2-byte size, then the TPMT_PUBLIC sent.
            ek_public: B64.encode(&testdata("ek.pub").unwrap()[2..]),
            ek_certificate: None,
            ak_public: B64.encode(&testdata("ak.pub").unwrap()[2..]),
        };
        request("POST", TPM_CREDENTIAL_PATH, serde_json::to_vec(&body).unwrap())
    };
    let a = Attempt::new(&s, n2).await;
    let issued = s.provisioning(n2, credential(&a)).await;
    assert_eq!(issued.status, StatusCode::OK, "the registered EK gets a challenge: {issued:?}");
    let wrong_secret = a.request(MAC2, Proofs { tpm: Some(forged), ..Default::default() });
    assert_refused(&s.enroll(n2, &wrong_secret).await, "a secret the TPM did not activate");

    let a = Attempt::new(&s, n2).await;
    assert_eq!(s.provisioning(n2, credential(&a)).await.status, StatusCode::OK);
    assert_refused(&s.provisioning(n2, credential(&a)).await, "a second challenge for one nonce");
    assert_refused(&s.enroll(n2, &a.request(MAC2, Proofs::default())).await, "the nonce is used up");

    let log = s.audit("node/n2").await;
    for reason in [
        "tpm factor: no TPM proof sent",
        "a TPM proof without a TPM challenge for this nonce",
        "credential activation failed: wrong secret",
        "tpm challenge: one was already issued for this nonce",
    ] {
        assert!(log.contains(reason), "{reason} in:\n{log}");
    }
    assert!(s.audit("mac/52:54:00:00:00:02").await.contains("unknown, used or expired nonce"));
    s.assert_nothing_granted().await;
}
