//! The sealing key check (finding 15 of the outside review): a server proves at start-up
//! that its key opens the store's key check value; a server with another key is
//! refused before it could join; a store made before keys were recorded is adopted only
//! by the key that sealed (most of) it. On both backends.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{AddNodes, NewNode};
use ferry_api::Secret;
use ferry_core::NodeName;
use ferry_store::prelude::*;
use ferry_store::{Actor, SealError, Sealer, SealingKeyCheck, SecretScope, SqlStore, StoreError};
use sqlx::Row;
use std::path::{Path, PathBuf};

fn actor() -> Actor {
    Actor("server:test".into())
}

/// A key file: every `Sealer::load_or_create` of it is the same key (the same
/// `secrets.key` copied to several servers).
fn key_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    Sealer::load_or_create(&path).unwrap();
    path
}

async fn open(db: &TestDb, key: &Path) -> SqlStore {
    db.open_with(Sealer::load_or_create(key).unwrap()).await
}

/// Seals an asset tag (node `node`) and a global secret `secret` with the handle's key,
/// as a ferry from before key checks did (no check at all).
async fn seal_some(s: &SqlStore, node: &str, secret: &str) {
    let node = NewNode {
        name: NodeName::parse(node).unwrap(),
        profiles: vec![],
        settings: Default::default(),
        asset_tag: Some(Secret::new(format!("TAG-OF-{node}"))),
    };
    s.add_nodes(AddNodes { nodes: vec![node] }, &actor()).await.unwrap();
    s.set_secret(secret, &SecretScope::Global, b"value", &actor()).await.unwrap();
}

async fn recorded_keys(db: &TestDb) -> Vec<(String, String)> {
    let pool = db.raw().await;
    let rows = sqlx::query("SELECT key_id, origin FROM sealing_keys ORDER BY key_id").fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn seal_error(e: StoreError) -> SealError {
    match e {
        StoreError::Seal(e) => e,
        other => panic!("expected a sealing key refusal, got: {other}"),
    }
}

async fn a_new_store_records_its_key_and_refuses_another(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let (cluster, own) = (key_file(keys.path(), "cluster.key"), key_file(keys.path(), "own.key"));
    let db = TestDb::new(kind).await;
    let first = open(&db, &cluster).await;
    assert_eq!(first.check_sealing_key(&actor()).await.unwrap(), SealingKeyCheck::Recorded);
    let cluster_id = first.sealing_key_id().to_owned();
    assert_eq!(recorded_keys(&db).await, [(cluster_id.clone(), "new".to_owned())]);
    // A second server with a copy of the key, and the first one restarting: verified.
    let second = open(&db, &cluster).await;
    assert_eq!(second.check_sealing_key(&actor()).await.unwrap(), SealingKeyCheck::Verified);
    assert_eq!(first.check_sealing_key(&actor()).await.unwrap(), SealingKeyCheck::Verified);

    // A server that made its own key (no shared secrets_key): refused, and it says why.
    let stranger = open(&db, &own).await;
    let e = seal_error(stranger.check_sealing_key(&actor()).await.unwrap_err());
    let own_id = stranger.sealing_key_id().to_owned();
    assert_ne!(own_id, cluster_id);
    assert!(matches!(&e, SealError::WrongKey { ours, store } if *ours == own_id && *store == cluster_id), "{e}");
    let text = e.to_string();
    for needed in [own_id.as_str(), cluster_id.as_str(), "copy the cluster's secrets.key", "restore it from backup"] {
        assert!(text.contains(needed), "{needed:?} missing from: {text}");
    }
    assert_eq!(recorded_keys(&db).await.len(), 1, "a refused key records nothing");

    let audit = first.audit(Some(&format!("sealing-key/{cluster_id}")), 10).await.unwrap();
    assert_eq!(
        audit.iter().map(|e| (e.action.as_str(), e.detail.as_str())).collect::<Vec<_>>(),
        [("store.sealing-key", "origin=new opened=0")]
    );
    // The check value is sealed: the key is nowhere in the database.
    let key = std::fs::read(&cluster).unwrap();
    drop((first, second, stranger));
    for bytes in db.stored_bytes().await {
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_slice()), "the sealing key is stored");
    }
}

async fn an_old_store_is_adopted_only_by_the_key_that_sealed_it(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let (cluster, own) = (key_file(keys.path(), "cluster.key"), key_file(keys.path(), "own.key"));
    let db = TestDb::new(kind).await;
    // A store of the previous release: sealed values, no key recorded.
    seal_some(&open(&db, &cluster).await, "n1", "munge.key").await;

    let stranger = open(&db, &own).await;
    let e = seal_error(stranger.check_sealing_key(&actor()).await.unwrap_err());
    assert!(matches!(&e, SealError::NotTheStoresKey { opened: 0, total: 2, .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("the asset tag of node n1") && text.contains("secret munge.key (global)"), "{text}");
    assert!(recorded_keys(&db).await.is_empty(), "refused: nothing recorded");

    let owner = open(&db, &cluster).await;
    let adopted = owner.check_sealing_key(&actor()).await.unwrap();
    assert_eq!(adopted, SealingKeyCheck::Adopted { opened: 2, unreadable: vec![] });
    assert_eq!(recorded_keys(&db).await, [(owner.sealing_key_id().to_owned(), "adopted".to_owned())]);
    assert_eq!(owner.check_sealing_key(&actor()).await.unwrap(), SealingKeyCheck::Verified);
    // From now on the stranger is refused by the recorded key, values or not.
    let e = seal_error(stranger.check_sealing_key(&actor()).await.unwrap_err());
    assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
}

/// The very bug: servers without a shared key sealed values under two keys. The key
/// that sealed most of them is adopted and the others are named; a tie is refused.
async fn values_sealed_under_two_keys_go_to_the_majority(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let (cluster, own) = (key_file(keys.path(), "cluster.key"), key_file(keys.path(), "own.key"));
    let db = TestDb::new(kind).await;
    seal_some(&open(&db, &cluster).await, "n1", "munge.key").await;
    open(&db, &own).await.set_secret("site.token", &SecretScope::Global, b"v", &actor()).await.unwrap();

    let stranger = open(&db, &own).await;
    let e = seal_error(stranger.check_sealing_key(&actor()).await.unwrap_err());
    assert!(matches!(&e, SealError::NotTheStoresKey { opened: 1, total: 3, .. }), "{e}");
    let owner = open(&db, &cluster).await;
    assert_eq!(
        owner.check_sealing_key(&actor()).await.unwrap(),
        SealingKeyCheck::Adopted { opened: 2, unreadable: vec!["secret site.token (global)".to_owned()] }
    );
    let audit = owner.audit(Some(&format!("sealing-key/{}", owner.sealing_key_id())), 10).await.unwrap();
    assert_eq!(audit.last().map(|e| e.detail.as_str()), Some("origin=adopted opened=2 unreadable=1"));

    // One value each: neither key is the store's.
    let tie = TestDb::new(kind).await;
    open(&tie, &cluster).await.set_secret("a", &SecretScope::Global, b"v", &actor()).await.unwrap();
    open(&tie, &own).await.set_secret("b", &SecretScope::Global, b"v", &actor()).await.unwrap();
    for key in [&cluster, &own] {
        let e = seal_error(open(&tie, key).await.check_sealing_key(&actor()).await.unwrap_err());
        assert!(matches!(&e, SealError::NotTheStoresKey { opened: 1, total: 2, .. }), "{e}");
    }
}

async fn an_altered_check_value_is_refused(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let cluster = key_file(keys.path(), "cluster.key");
    let db = TestDb::new(kind).await;
    let s = open(&db, &cluster).await;
    s.check_sealing_key(&actor()).await.unwrap();
    // Another value, sealed under another key, put in its place by someone with
    // write access to the database.
    let forged = Sealer::ephemeral().seal(b"ferry sealing key check v1", b"");
    let pool = db.raw().await;
    sqlx::query("UPDATE sealing_keys SET check_value = $1").bind(forged).execute(&pool).await.unwrap();
    pool.close().await;
    let e = seal_error(s.check_sealing_key(&actor()).await.unwrap_err());
    assert!(matches!(&e, SealError::CheckValueAltered { key_id } if key_id == s.sealing_key_id()), "{e}");
}

both_backends!(
    a_new_store_records_its_key_and_refuses_another,
    an_old_store_is_adopted_only_by_the_key_that_sealed_it,
    values_sealed_under_two_keys_go_to_the_majority,
    an_altered_check_value_is_refused,
);
