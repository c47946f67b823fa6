//! The admin API of `ferry node tpm learn` through the real router: the recorded quote
//! as shown, the approval pinning exactly it, and the refusals.

use crate::testing::{get, request, TestServer};
use axum::http::StatusCode;
use ferry_core::NodeName;
use ferry_store::{PcrQuote, TpmRegistration, PCR_BANK};
use std::collections::BTreeMap;

fn n1() -> NodeName {
    NodeName::parse("n1").unwrap()
}

async fn server_with_a_quote() -> (TestServer, PcrQuote) {
    let s = TestServer::start().await;
    s.add_node("n1", "52:54:00:00:00:01", "10.0.0.1", serde_json::json!({"tpm_pcrs": {"7": "learn"}}), None).await;
    let reg = TpmRegistration { ek_spki: vec![1], ek_certificate: None, fingerprint: "sha256:e1".into() };
    s.store.set_node_tpm(&n1(), Some(&reg), &ferry_store::Actor("test".into())).await.unwrap();
    let quote = PcrQuote {
        ek_fingerprint: "sha256:e1".into(),
        bank: PCR_BANK.into(),
        values: BTreeMap::from([(7, vec![0xa7; 32])]),
        policy: BTreeMap::from([("7".into(), "learn".into())]),
        reset_count: 3,
        restart_count: 0,
        client: "10.0.0.1".into(),
        recorded_at: ferry_store::now_secs(),
    };
    (s, quote)
}

#[tokio::test]
async fn the_admin_sees_the_recorded_quote_and_pins_exactly_it() {
    let (s, quote) = server_with_a_quote().await;
    let none = s.admin(Some(0), get("/v1/nodes/n1/tpm/quote")).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.text());
    assert!(none.text().contains("no verified TPM quote recorded"), "{}", none.text());
    s.store.record_pcr_quote(&n1(), &quote).await.unwrap();

    let shown = s.admin(Some(0), get("/v1/nodes/n1/tpm/quote")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
    let view = shown.json();
    assert_eq!(view["pcrs"]["7"], "a7".repeat(32));
    assert_eq!((view["reset_count"].as_u64(), view["bank"].as_str()), (Some(3), Some("sha256")));

    let approve = serde_json::json!({"recorded_at_secs": view["recorded_at_secs"], "pcrs": view["pcrs"]});
    let learned = s.admin(Some(0), request("POST", "/v1/nodes/n1/tpm/learn", approve.to_string())).await;
    assert_eq!(learned.status, StatusCode::OK, "{}", learned.text());
    assert_eq!(learned.json()["pinned_on"], "node/n1");
    let merged = s.store.merged_node(&n1()).await.unwrap();
    assert_eq!(merged.settings.pcr_policy(), BTreeMap::from([(7, vec![0xa7; 32])]));
    assert!(merged.settings.unlearned_pcrs().is_empty());
    let audit = s.audit("node/n1").await;
    assert!(audit.contains("tpm.pcrs-learned") && audit.contains("uid:0"), "{audit}");
}

#[tokio::test]
async fn learning_refuses_a_quote_other_than_the_one_shown_and_unknown_nodes() {
    let (s, quote) = server_with_a_quote().await;
    s.store.record_pcr_quote(&n1(), &quote).await.unwrap();
    let other = serde_json::json!({"recorded_at_secs": quote.recorded_at, "pcrs": {"7": "00".repeat(32)}});
    let refused = s.admin(Some(0), request("POST", "/v1/nodes/n1/tpm/learn", other.to_string())).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    let bad = serde_json::json!({"recorded_at_secs": quote.recorded_at, "pcrs": {"7": "zz"}});
    let refused = s.admin(Some(0), request("POST", "/v1/nodes/n1/tpm/learn", bad.to_string())).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text());
    let unknown = s.admin(Some(0), get("/v1/nodes/n9/tpm/quote")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    assert!(s.store.merged_node(&n1()).await.unwrap().settings.pcr_policy().is_empty(), "nothing pinned");
}
