//! Golden PCR values (issue 19): each node's latest verified quote is kept, and learning
//! pins exactly its values on the node or a profile, in one audited transaction, or
//! refuses clearly; on both backends.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{AddNodes, AddProfiles, NewNode, NewProfile};
use ferry_core::model::PCR_TO_LEARN;
use ferry_core::{NodeName, ProfileName, Settings};
use ferry_store::prelude::*;
use ferry_store::{
    now_secs, Actor, LearnTarget, PcrApproval, PcrQuote, SqlStore, StoreError, TpmRegistration, PCR_BANK,
};
use std::collections::BTreeMap;

const EK: &str = "sha256:e1";

fn actor() -> Actor {
    Actor("admin:alice".into())
}
fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}
fn p(s: &str) -> ProfileName {
    ProfileName::parse(s).unwrap()
}
fn to_learn(indexes: &[u8]) -> BTreeMap<String, String> {
    indexes.iter().map(|i| (i.to_string(), PCR_TO_LEARN.to_owned())).collect()
}

/// Profile `compute` selects PCRs 7 and 8 to learn; n1 and n2 use it; both have a TPM.
async fn store(db: &TestDb) -> SqlStore {
    let s = db.open().await;
    let settings = Settings { tpm_pcrs: to_learn(&[7, 8]), ..Default::default() };
    let profiles = vec![
        NewProfile { name: p("compute"), profiles: vec![], settings },
        NewProfile { name: p("other"), profiles: vec![], settings: Default::default() },
    ];
    s.add_profiles(AddProfiles { profiles }, &actor()).await.unwrap();
    let nodes = ["n1", "n2"]
        .iter()
        .map(|name| NewNode {
            name: n(name),
            profiles: vec![p("compute")],
            settings: Default::default(),
            asset_tag: None,
        })
        .collect();
    s.add_nodes(AddNodes { nodes }, &actor()).await.unwrap();
    for (node, ek) in [("n1", EK), ("n2", "sha256:e2")] {
        let reg = TpmRegistration { ek_spki: ek.as_bytes().to_vec(), ek_certificate: None, fingerprint: ek.into() };
        s.set_node_tpm(&n(node), Some(&reg), &actor()).await.unwrap();
    }
    s
}

fn quote(policy: BTreeMap<String, String>, at: i64) -> PcrQuote {
    PcrQuote {
        ek_fingerprint: EK.into(),
        bank: PCR_BANK.into(),
        values: BTreeMap::from([(7, vec![0x77; 32]), (8, vec![0x88; 32])]),
        policy,
        reset_count: 12,
        restart_count: 0,
        client: "10.0.0.1".into(),
        recorded_at: at,
    }
}

fn approve(q: &PcrQuote, target: LearnTarget) -> PcrApproval {
    PcrApproval { from: n("n1"), target, recorded_at: q.recorded_at, values: q.values.clone() }
}

async fn merged_pcrs(s: &SqlStore, node: &str) -> BTreeMap<String, String> {
    s.merged_node(&n(node)).await.unwrap().settings.tpm_pcrs
}

async fn learn_pins_exactly_the_recorded_values(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store(&db).await;
    let q = quote(to_learn(&[7, 8]), now_secs());
    s.record_pcr_quote(&n("n1"), &q).await.unwrap();
    assert_eq!(s.pcr_quote(&n("n1")).await.unwrap(), Some(q.clone()), "read back as recorded");
    // A newer quote replaces it.
    let newer = PcrQuote { recorded_at: now_secs() + 1, reset_count: 13, ..q.clone() };
    s.record_pcr_quote(&n("n1"), &newer).await.unwrap();
    assert_eq!(s.pcr_quote(&n("n1")).await.unwrap(), Some(newer.clone()));

    let pinned = s.learn_pcrs(&approve(&newer, LearnTarget::Node), &actor()).await.unwrap();
    assert_eq!(pinned, newer.values);
    let want: BTreeMap<String, String> =
        [("7", "77".repeat(32)), ("8", "88".repeat(32))].into_iter().map(|(k, v)| (k.into(), v)).collect();
    assert_eq!(merged_pcrs(&s, "n1").await, want, "pinned on the node");
    assert_eq!(merged_pcrs(&s, "n2").await, to_learn(&[7, 8]), "the other node is untouched");
    let audit = s.audit(Some("node/n1"), 5).await.unwrap();
    let learned = audit.iter().find(|e| e.action == "tpm.pcrs-learned").expect("audited");
    assert_eq!(learned.actor, "admin:alice");
    assert!(learned.detail.contains(&format!("7={}", "77".repeat(32))), "{}", learned.detail);
    assert!(learned.detail.contains("boot=reset:13/restart:0"), "{}", learned.detail);
    // The policy changed since the quote: the same quote is not learned again.
    let err = s.learn_pcrs(&approve(&newer, LearnTarget::Node), &actor()).await.unwrap_err();
    assert!(err.to_string().contains("changed after its quote"), "{err}");
}

async fn a_profile_learns_once_for_every_node(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store(&db).await;
    let q = quote(to_learn(&[7, 8]), now_secs());
    s.record_pcr_quote(&n("n1"), &q).await.unwrap();
    // Not a profile of n1: refused, nothing pinned.
    let err = s.learn_pcrs(&approve(&q, LearnTarget::Profile(p("other"))), &actor()).await.unwrap_err();
    assert!(err.to_string().contains("does not use profile other"), "{err}");
    s.learn_pcrs(&approve(&q, LearnTarget::Profile(p("compute"))), &actor()).await.unwrap();
    let want: BTreeMap<String, String> =
        [("7", "77".repeat(32)), ("8", "88".repeat(32))].into_iter().map(|(k, v)| (k.into(), v)).collect();
    assert_eq!(merged_pcrs(&s, "n2").await, want, "every node of the profile");
    let audit = s.audit(Some("profile/compute"), 5).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tpm.pcrs-learned" && e.detail.contains("from=node/n1")));
    // The profile pins them now: a node learn would copy them onto the node (hiding the
    // profile's next learn), so it refuses and says where to learn.
    let later = quote(merged_pcrs(&s, "n1").await, now_secs() + 1);
    s.record_pcr_quote(&n("n1"), &later).await.unwrap();
    let err = s.learn_pcrs(&approve(&later, LearnTarget::Node), &actor()).await.unwrap_err();
    assert!(err.to_string().contains("its profiles pin them"), "{err}");
}

async fn learn_refuses_without_the_approved_verified_quote(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = store(&db).await;
    let q = quote(to_learn(&[7, 8]), now_secs());
    let refused = |e: StoreError| e.to_string();
    // No verified quote recorded.
    let err = refused(s.learn_pcrs(&approve(&q, LearnTarget::Node), &actor()).await.unwrap_err());
    assert!(err.contains("no verified TPM quote recorded"), "{err}");
    // An unknown node.
    let unknown = PcrApproval { from: n("n9"), ..approve(&q, LearnTarget::Node) };
    assert!(matches!(s.learn_pcrs(&unknown, &actor()).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.pcr_quote(&n("n9")).await, Err(StoreError::NotFound { .. })));
    // Not the quote the admin was shown (a newer one arrived, or other values).
    s.record_pcr_quote(&n("n1"), &q).await.unwrap();
    let other =
        PcrApproval { values: BTreeMap::from([(7, vec![0; 32]), (8, vec![0; 32])]), ..approve(&q, LearnTarget::Node) };
    let err = refused(s.learn_pcrs(&other, &actor()).await.unwrap_err());
    assert!(err.contains("quoted again"), "{err}");
    // Older than the node's last PCR policy change.
    let stale = quote(to_learn(&[7]), now_secs() + 1);
    s.record_pcr_quote(&n("n1"), &stale).await.unwrap();
    let err = refused(s.learn_pcrs(&approve(&stale, LearnTarget::Node), &actor()).await.unwrap_err());
    assert!(err.contains("changed after its quote"), "{err}");
    // The same policy as when it quoted, but changed and restored since: still older.
    let before = quote(to_learn(&[7, 8]), now_secs() - 5);
    s.record_pcr_quote(&n("n1"), &before).await.unwrap();
    let err = refused(s.learn_pcrs(&approve(&before, LearnTarget::Node), &actor()).await.unwrap_err());
    assert!(err.contains("changed after its quote"), "{err}");
    // Made by a TPM no longer registered for the node.
    let foreign = PcrQuote { ek_fingerprint: "sha256:e2".into(), ..quote(to_learn(&[7, 8]), now_secs() + 2) };
    s.record_pcr_quote(&n("n1"), &foreign).await.unwrap();
    let err = refused(s.learn_pcrs(&approve(&foreign, LearnTarget::Node), &actor()).await.unwrap_err());
    assert!(err.contains("no longer the TPM registered"), "{err}");
    assert_eq!(merged_pcrs(&s, "n1").await, to_learn(&[7, 8]), "nothing pinned by any refusal");
    assert!(s.audit(Some("node/n1"), 20).await.unwrap().iter().all(|e| e.action != "tpm.pcrs-learned"));
}

both_backends!(
    learn_pins_exactly_the_recorded_values,
    a_profile_learns_once_for_every_node,
    learn_refuses_without_the_approved_verified_quote,
);
