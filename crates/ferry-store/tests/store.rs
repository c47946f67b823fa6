//! The store against real databases: every test runs on SQLite (a file in a temporary
//! directory) and on PostgreSQL (a fresh database; see tests/common).

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{
    AddNodes, AddProfiles, AssetTagChange, NewNode, NewProfile, NodePatch, ProfilePatch, SecretState,
};
use ferry_api::Secret;
use ferry_core::patch::SettingsPatch;
use ferry_core::{NodeName, ProfileName, Settings};
use ferry_store::prelude::*;
use ferry_store::{Actor, Sealer, SqlStore, StoreError};
use serde_json::json;
use std::sync::Arc;

async fn store(kind: Kind) -> (TestDb, SqlStore) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    (db, s)
}

fn actor() -> Actor {
    Actor("uid:0".into())
}

fn n(name: &str) -> NodeName {
    NodeName::parse(name).unwrap()
}

fn p(name: &str) -> ProfileName {
    ProfileName::parse(name).unwrap()
}

fn new_node(name: &str, settings: serde_json::Value) -> NewNode {
    NewNode { name: n(name), profiles: vec![], settings: serde_json::from_value(settings).unwrap(), asset_tag: None }
}

fn eth0(mac: &str, ip: &str) -> serde_json::Value {
    json!({"interfaces": {"eth0": {"mac": mac, "ipv4": ip}}})
}

async fn duplicate_mac_or_ip_across_nodes_is_rejected(kind: Kind) {
    let (_d, s) = store(kind).await;
    s.add_nodes(AddNodes { nodes: vec![new_node("n1", eth0("52:54:00:00:00:01", "10.0.0.1"))] }, &actor())
        .await
        .unwrap();
    let e = s
        .add_nodes(AddNodes { nodes: vec![new_node("n2", eth0("52:54:00:00:00:01", "10.0.0.2"))] }, &actor())
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("52:54:00:00:00:01") && m.contains("n1")), "{e}");
    let e = s
        .add_nodes(AddNodes { nodes: vec![new_node("n2", eth0("52:54:00:00:00:02", "10.0.0.1"))] }, &actor())
        .await
        .unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("10.0.0.1")), "{e}");
    // The same via `set`, on an existing node.
    s.add_nodes(AddNodes { nodes: vec![new_node("n2", eth0("52:54:00:00:00:02", "10.0.0.2"))] }, &actor())
        .await
        .unwrap();
    let patch = NodePatch {
        settings: SettingsPatch {
            set: serde_json::from_value(json!({"interfaces": {"ib0": {"ipv4": "10.0.0.1"}}})).unwrap(),
            unset: vec![],
        },
        ..Default::default()
    };
    assert!(matches!(s.set_nodes(&[n("n2")], &patch, &actor()).await, Err(StoreError::Conflict(_))));
    assert!(!s.get_node(&n("n2")).await.unwrap().settings.interfaces.contains_key("ib0"), "failed set changed nothing");
    // Case and separator differences are still the same MAC.
    let e =
        s.add_nodes(AddNodes { nodes: vec![new_node("n3", eth0("52-54-00-00-00-0A", "10.0.0.3"))] }, &actor()).await;
    assert!(e.is_ok());
    let e =
        s.add_nodes(AddNodes { nodes: vec![new_node("n4", eth0("52:54:00:00:00:0a", "10.0.0.4"))] }, &actor()).await;
    assert!(matches!(e, Err(StoreError::Conflict(_))));
}

async fn a_batch_is_all_or_nothing(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut nodes: Vec<NewNode> = (1..=10)
        .map(|i| new_node(&format!("n{i}"), eth0(&format!("52:54:00:00:00:{i:02x}"), &format!("10.0.0.{i}"))))
        .collect();
    nodes.push(new_node("n11", eth0("52:54:00:00:00:01", "10.0.0.11"))); // MAC of n1
    assert!(s.add_nodes(AddNodes { nodes }, &actor()).await.is_err());
    assert!(s.list_nodes().await.unwrap().is_empty());
    let e = s
        .add_nodes(AddNodes { nodes: vec![new_node("a", json!({})), new_node("a", json!({}))] }, &actor())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::BadRequest(_)), "{e}");
}

async fn profiles_unknown_cycles_and_in_use(kind: Kind) {
    let (_d, s) = store(kind).await;
    let mut node = new_node("n1", json!({}));
    node.profiles = vec![p("ghost")];
    let e = s.add_nodes(AddNodes { nodes: vec![node] }, &actor()).await.unwrap_err();
    assert!(e.to_string().contains("unknown profile \"ghost\""), "{e}");

    let prof = |name: &str, parents: &[&str]| NewProfile {
        name: p(name),
        profiles: parents.iter().map(|x| p(x)).collect(),
        settings: Settings::default(),
    };
    s.add_profiles(AddProfiles { profiles: vec![prof("b", &["a"]), prof("a", &[])] }, &actor()).await.unwrap();
    let e = s
        .set_profiles(&[p("a")], &ProfilePatch { profiles: Some(vec![p("b")]), ..Default::default() }, &actor())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert!(s.get_profile(&p("a")).await.unwrap().profiles.is_empty(), "failed set changed nothing");

    let mut node = new_node("n1", json!({}));
    node.profiles = vec![p("b")];
    s.add_nodes(AddNodes { nodes: vec![node] }, &actor()).await.unwrap();
    let e = s.delete_profiles(&[p("b")], &actor()).await.unwrap_err();
    assert!(e.to_string().contains("used by n1"), "{e}");
    let e = s.delete_profiles(&[p("a")], &actor()).await.unwrap_err();
    assert!(e.to_string().contains("used by b"), "{e}");
    let merged = s.merged_node(&n("n1")).await.unwrap();
    assert_eq!(merged.profiles, [p("a"), p("b")]);
}

async fn asset_tag_is_sealed_at_rest_and_never_in_views(kind: Kind) {
    let (db, s) = store(kind).await;
    let mut node = new_node("n1", json!({}));
    node.asset_tag = Some(Secret::new("ASSET-TAG-7f3a9".into()));
    s.add_nodes(AddNodes { nodes: vec![node] }, &actor()).await.unwrap();
    let view = s.get_node(&n("n1")).await.unwrap();
    assert_eq!(view.asset_tag, SecretState::Set);
    assert!(!serde_json::to_string(&view).unwrap().contains("ASSET-TAG-7f3a9"));
    assert!(!serde_json::to_string(&s.merged_node(&n("n1")).await.unwrap()).unwrap().contains("ASSET-TAG-7f3a9"));
    assert!(!format!("{:?}", s.audit(None, 100).await.unwrap()).contains("ASSET-TAG-7f3a9"));
    assert_eq!(s.node_identity(&n("n1")).await.unwrap().1.unwrap().expose(), "ASSET-TAG-7f3a9");
    drop(s);
    for bytes in db.stored_bytes().await {
        assert!(!bytes.windows(15).any(|w| w == b"ASSET-TAG-7f3a9"), "clear asset tag at rest");
    }
    let s = db.open_with(Sealer::ephemeral()).await;
    assert!(s.node_identity(&n("n1")).await.is_err(), "another key cannot open it");
    let patch = NodePatch { asset_tag: Some(AssetTagChange::Unset), ..Default::default() };
    s.set_nodes(&[n("n1")], &patch, &actor()).await.unwrap();
    assert_eq!(s.get_node(&n("n1")).await.unwrap().asset_tag, SecretState::Unset);
}

async fn concurrent_writers_lose_no_update(kind: Kind) {
    let (_d, s) = store(kind).await;
    let s = Arc::new(s);
    s.add_nodes(AddNodes { nodes: vec![new_node("n1", json!({}))] }, &actor()).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let patch = NodePatch {
                    settings: SettingsPatch {
                        set: serde_json::from_value(json!({"tags": {format!("w{i}"): "x"}})).unwrap(),
                        unset: vec![],
                    },
                    ..Default::default()
                };
                s.set_nodes(&[n("n1")], &patch, &actor()).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let view = s.get_node(&n("n1")).await.unwrap();
    assert_eq!(view.settings.tags.len(), 20);
    assert_eq!(view.revision, 21);
}

fn tpm(fingerprint: &str) -> ferry_store::TpmRegistration {
    ferry_store::TpmRegistration {
        ek_spki: fingerprint.as_bytes().to_vec(),
        ek_certificate: None,
        fingerprint: fingerprint.into(),
    }
}

async fn tpm_identity_register_discover_approve(kind: Kind) {
    use ferry_store::{Discovery, TpmState};
    let (_d, s) = store(kind).await;
    let nodes = vec![new_node("n1", json!({})), new_node("n2", json!({}))];
    s.add_nodes(AddNodes { nodes }, &actor()).await.unwrap();
    assert!(s.get_node(&n("n1")).await.unwrap().identity.refused, "no tag, no TPM, no policy");

    s.set_node_tpm(&n("n1"), Some(&tpm("sha256:aa")), &actor()).await.unwrap();
    // A registered TPM is part of the default policy: n1 is no longer weak.
    let identity = s.get_node(&n("n1")).await.unwrap().identity;
    assert_eq!(identity.factors, [ferry_core::IdentityFactor::Network, ferry_core::IdentityFactor::Tpm]);
    assert!(!identity.weak && !identity.refused);
    // One TPM identifies one node, whatever state it is in.
    let err = s.set_node_tpm(&n("n2"), Some(&tpm("sha256:aa")), &actor()).await.unwrap_err();
    assert!(err.to_string().contains("already registered for node n1"), "{err}");
    let found = s.record_pending_tpm(&n("n2"), &tpm("sha256:aa"), &actor()).await.unwrap();
    assert_eq!(found, Discovery::OtherNode("n1".into()));
    assert!(s.node_tpms(Some(&n("n2"))).await.unwrap().is_empty(), "nothing changed");
    // Discovery never replaces a registered EK: a conflict, with both fingerprints.
    let found = s.record_pending_tpm(&n("n1"), &tpm("sha256:bb"), &actor()).await.unwrap();
    assert_eq!(found, Discovery::Conflict { held: "sha256:aa".into(), state: TpmState::Registered });
    let rec = &s.node_tpms(Some(&n("n1"))).await.unwrap()[0].1;
    assert_eq!((rec.registration.fingerprint.as_str(), rec.conflict.as_deref()), ("sha256:aa", Some("sha256:bb")));
    assert_eq!(
        s.record_pending_tpm(&n("n1"), &tpm("sha256:aa"), &actor()).await.unwrap(),
        Discovery::AlreadyRegistered
    );

    assert!(s.approve_tpm(&n("n2"), "sha256:cc", &actor()).await.is_err(), "nothing pending");
    assert_eq!(s.record_pending_tpm(&n("n2"), &tpm("sha256:cc"), &actor()).await.unwrap(), Discovery::Held);
    assert_eq!(s.record_pending_tpm(&n("n2"), &tpm("sha256:cc"), &actor()).await.unwrap(), Discovery::AlreadyPending);
    assert_eq!(s.node_tpms(Some(&n("n2"))).await.unwrap()[0].1.state, TpmState::Pending);
    assert!(s.get_node(&n("n2")).await.unwrap().identity.refused, "a pending TPM is no identity");
    // A pending EK is never replaced either: the attacker's EK is only the conflict.
    let found = s.record_pending_tpm(&n("n2"), &tpm("sha256:dd"), &actor()).await.unwrap();
    assert_eq!(found, Discovery::Conflict { held: "sha256:cc".into(), state: TpmState::Pending });
    // Approval names the fingerprint: the conflicting one (or any other) is refused.
    let err = s.approve_tpm(&n("n2"), "sha256:dd", &actor()).await.unwrap_err();
    assert!(err.to_string().contains("is sha256:cc, not sha256:dd"), "{err}");
    assert_eq!(s.node_tpms(Some(&n("n2"))).await.unwrap()[0].1.state, TpmState::Pending, "nothing approved");
    let approved = s.approve_tpm(&n("n2"), "sha256:cc", &actor()).await.unwrap();
    assert_eq!((approved.state, approved.registration.fingerprint.as_str()), (TpmState::Registered, "sha256:cc"));
    assert_eq!(approved.conflict, None, "approval clears the conflict");
    assert!(matches!(s.approve_tpm(&n("nope"), "sha256:cc", &actor()).await, Err(StoreError::NotFound { .. })));
    let log = s.audit(Some("node/n2"), 100).await.unwrap();
    let conflict = log.iter().find(|e| e.action == "tpm.conflict").expect("conflict audited");
    assert!(conflict.detail.contains("held=sha256:cc") && conflict.detail.contains("presented=sha256:dd"));

    s.set_node_tpm(&n("n1"), None, &actor()).await.unwrap();
    assert_eq!(s.node_tpms(None).await.unwrap().len(), 1);
    s.delete_nodes(&[n("n2")], &actor()).await.unwrap();
    assert!(s.node_tpms(None).await.unwrap().is_empty(), "deleting the node deletes its TPM");
    let actions: Vec<String> = s.audit(None, 100).await.unwrap().into_iter().map(|e| e.action).collect();
    for a in ["tpm.register", "tpm.pending", "tpm.approve", "tpm.clear"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}

async fn secrets_are_sealed_scoped_and_listed_without_values(kind: Kind) {
    use ferry_store::SecretScope;
    let (db, s) = store(kind).await;
    s.add_profiles(
        AddProfiles {
            profiles: vec![
                NewProfile { name: p("base"), profiles: vec![], settings: Settings::default() },
                NewProfile { name: p("gpu"), profiles: vec![], settings: Settings::default() },
            ],
        },
        &actor(),
    )
    .await
    .unwrap();
    let mut n1 = new_node("n1", json!({}));
    n1.profiles = vec![p("base"), p("gpu")];
    s.add_nodes(AddNodes { nodes: vec![n1, new_node("n2", json!({}))] }, &actor()).await.unwrap();

    let set = |name: &'static str, scope: SecretScope, value: &'static str| {
        let s = &s;
        async move { s.set_secret(name, &scope, value.as_bytes(), &actor()).await }
    };
    set("munge.key", SecretScope::Global, "GLOBAL-MUNGE-9a1").await.unwrap();
    set("munge.key", SecretScope::Profile(p("base")), "BASE-MUNGE-4c2").await.unwrap();
    set("munge.key", SecretScope::Profile(p("gpu")), "GPU-MUNGE-77e").await.unwrap();
    set("token", SecretScope::Global, "GLOBAL-TOKEN-0f0").await.unwrap();
    set("token", SecretScope::Node(n("n1")), "N1-TOKEN-5b5").await.unwrap();

    let open = |m: &std::collections::BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>, k: &str| {
        String::from_utf8(m[k].to_vec()).unwrap()
    };
    let n1 = s.secrets_for(&n("n1"), &[p("base"), p("gpu")]).await.unwrap();
    assert_eq!(open(&n1, "munge.key"), "GPU-MUNGE-77e", "the later profile wins");
    assert_eq!(open(&n1, "token"), "N1-TOKEN-5b5", "the node's own wins");
    let n2 = s.secrets_for(&n("n2"), &[]).await.unwrap();
    assert_eq!((open(&n2, "munge.key"), open(&n2, "token")), ("GLOBAL-MUNGE-9a1".into(), "GLOBAL-TOKEN-0f0".into()));

    // Bad input: clear errors, nothing changed.
    assert!(set("bad name", SecretScope::Global, "x").await.is_err());
    assert!(set("ok", SecretScope::Global, "").await.is_err(), "empty");
    let big = vec![b'x'; ferry_store::MAX_SECRET_BYTES + 1];
    assert!(s.set_secret("ok", &SecretScope::Global, &big, &actor()).await.is_err(), "too big");
    assert!(matches!(set("ok", SecretScope::Node(n("n9")), "x").await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.delete_secret("nope", &SecretScope::Global, &actor()).await, Err(StoreError::NotFound { .. })));
    let listed = s.list_secrets().await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        listed.iter().map(|i| i.scope.as_str()).collect::<Vec<_>>(),
        ["global", "profile/base", "profile/gpu", "global", "node/n1"]
    );

    // Values appear in no listing, audit entry or file.
    let values = ["GLOBAL-MUNGE-9a1", "BASE-MUNGE-4c2", "GPU-MUNGE-77e", "GLOBAL-TOKEN-0f0", "N1-TOKEN-5b5"];
    let shown = format!("{listed:?} {:?}", s.audit(None, 100).await.unwrap());
    assert!(values.iter().all(|v| !shown.contains(v)), "{shown}");
    s.delete_nodes(&[n("n1")], &actor()).await.unwrap();
    assert_eq!(s.list_secrets().await.unwrap().len(), 4, "the node's secrets go with it");
    s.delete_secret("token", &SecretScope::Global, &actor()).await.unwrap();
    drop(s);
    let stored = db.stored_bytes().await;
    assert!(!stored.is_empty());
    for bytes in stored {
        for v in values {
            assert!(!bytes.windows(v.len()).any(|w| w == v.as_bytes()), "{v} in clear at rest");
        }
    }
}

async fn the_audit_log_is_append_only_in_the_database(kind: Kind) {
    let (db, s) = store(kind).await;
    s.add_nodes(AddNodes { nodes: vec![new_node("n1", json!({}))] }, &actor()).await.unwrap();
    let before = s.audit(None, 100).await.unwrap();
    drop(s);
    // Straight to the database, as an intruder with sqlite3 or psql would: refused.
    let pool = db.raw().await;
    let update = sqlx::query("UPDATE audit SET actor = 'nobody'").execute(&pool).await.unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = sqlx::query("DELETE FROM audit").execute(&pool).await.unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    if kind == Kind::Postgres {
        let truncate = sqlx::query("TRUNCATE audit").execute(&pool).await.unwrap_err();
        assert!(truncate.to_string().contains("append-only"), "{truncate}");
    }
    pool.close().await;
    let s = db.open().await;
    assert_eq!(s.audit(None, 100).await.unwrap().len(), before.len());
}

/// The enrollment's reads (MAC, node with its profiles in order, the profiles with their
/// parents in order, the tag, the TPM) from one snapshot say what the separate reads say.
async fn enrollment_identity_reads_what_the_separate_reads_read(kind: Kind) {
    let (_d, s) = store(kind).await;
    let prof = |name: &str, parents: &[&str], tag: &str| NewProfile {
        name: p(name),
        profiles: parents.iter().map(|x| p(x)).collect(),
        settings: serde_json::from_value(json!({"tags": {tag: name}})).unwrap(),
    };
    let profiles = vec![prof("a", &[], "x"), prof("c", &[], "y"), prof("b", &["c", "a"], "x")];
    s.add_profiles(AddProfiles { profiles }, &actor()).await.unwrap();
    let mut n1 = new_node("n1", eth0("52:54:00:00:00:01", "10.0.0.1"));
    n1.profiles = vec![p("b"), p("a")];
    n1.asset_tag = Some(Secret::new("TAG-n1".into()));
    let mut n2 = new_node("n2", eth0("52:54:00:00:00:02", "10.0.0.2"));
    n2.profiles = vec![p("c")];
    let n3 = new_node("n3", eth0("52:54:00:00:00:03", "10.0.0.3"));
    s.add_nodes(AddNodes { nodes: vec![n1, n2, n3] }, &actor()).await.unwrap();
    s.set_node_tpm(&n("n1"), Some(&tpm("sha256:aa")), &actor()).await.unwrap();
    assert_eq!(s.get_profile(&p("b")).await.unwrap().profiles, [p("c"), p("a")], "parents in order");
    let listed: Vec<_> = s.list_nodes().await.unwrap().into_iter().map(|v| (v.name, v.profiles)).collect();
    assert_eq!(listed, [(n("n1"), vec![p("b"), p("a")]), (n("n2"), vec![p("c")]), (n("n3"), vec![])]);

    let mac = |m: &str| ferry_core::MacAddr::parse(m).unwrap();
    let id = s.enrollment_identity(&mac("52:54:00:00:00:01")).await.unwrap().expect("n1 has this MAC");
    assert_eq!(id.node, n("n1"));
    let merged = s.merged_node(&n("n1")).await.unwrap();
    assert_eq!(serde_json::to_value(&id.merged).unwrap(), serde_json::to_value(&merged).unwrap());
    assert_eq!(id.merged.profiles, [p("c"), p("a"), p("b")], "the profiles' own parents first, in order");
    assert_eq!(id.merged.settings.tags.get("x").map(String::as_str), Some("b"), "the later layer wins");
    assert_eq!(id.asset_tag.as_ref().map(|t| t.expose().to_string()), Some("TAG-n1".into()));
    assert_eq!(id.tpm.map(|t| t.registration.fingerprint), Some("sha256:aa".into()));
    let id = s.enrollment_identity(&mac("52:54:00:00:00:03")).await.unwrap().expect("n3 has this MAC");
    assert_eq!((id.node, id.merged.profiles, id.asset_tag.is_none(), id.tpm.is_none()), (n("n3"), vec![], true, true));
    assert!(s.enrollment_identity(&mac("52:54:00:00:00:09")).await.unwrap().is_none(), "no node has this MAC");
}

/// A read snapshot that ends in an error (an unknown node) leaves no transaction open on
/// a connection that a later read reuses (snapshots run on connections kept between
/// reads): every read after a change sees the change.
async fn a_failed_snapshot_leaves_no_stale_snapshot_behind(kind: Kind) {
    let (_d, s) = store(kind).await;
    for i in 0..12usize {
        assert!(matches!(s.get_node(&n("missing")).await, Err(StoreError::NotFound { .. })));
        let node = new_node(&format!("n{i}"), eth0(&format!("52:54:00:00:01:{i:02x}"), &format!("10.0.1.{}", i + 1)));
        s.add_nodes(AddNodes { nodes: vec![node] }, &actor()).await.unwrap();
        assert_eq!(s.list_nodes().await.unwrap().len(), i + 1, "a snapshot after the failed one sees every node");
        assert_eq!(s.get_node(&n(&format!("n{i}"))).await.unwrap().name, n(&format!("n{i}")));
    }
}

both_backends!(
    a_failed_snapshot_leaves_no_stale_snapshot_behind,
    duplicate_mac_or_ip_across_nodes_is_rejected,
    a_batch_is_all_or_nothing,
    profiles_unknown_cycles_and_in_use,
    asset_tag_is_sealed_at_rest_and_never_in_views,
    concurrent_writers_lose_no_update,
    tpm_identity_register_discover_approve,
    enrollment_identity_reads_what_the_separate_reads_read,
    secrets_are_sealed_scoped_and_listed_without_values,
    the_audit_log_is_append_only_in_the_database,
);

/// A SQLite database written by an earlier release (migrations 0001-0008, applied by
/// sqlx's own SQLite driver) opens through `Any`: 0009 on makes its tunnels the `local`
/// server's, its TPM rows readable without a conflict; and its node without asset tag,
/// TPM or identity policy shows as refused until an admin opts in (`--identity network`).
#[tokio::test]
async fn a_sqlite_database_of_the_previous_release_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    // At run time: a test binary reused from a shared target directory may have been
    // built in another checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let src = std::path::Path::new(&manifest_dir).join("migrations/sqlite");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_str().unwrap() < "0009" {
            std::fs::copy(f.path(), old.join(f.file_name())).unwrap();
        }
    }
    let file = dir.path().join("ferry.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&file).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&pool).await.unwrap();
    sqlx::query("INSERT INTO nodes (name, settings, revision, updated_at) VALUES ('n1', '{}', 1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO tunnels (node, public_key, address, created_at, expires_at) VALUES ('n1', 'KAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '100.64.0.2', 0, 9999999999)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO nodes (name, settings, revision, updated_at) VALUES ('n2', '{}', 1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO node_tpm (node, state, fingerprint, ek_spki, updated_at) VALUES ('n2', 'pending', 'sha256:ee', x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let s = SqlStore::open_sqlite(&file, Sealer::ephemeral()).await.unwrap();
    let tunnels = s.list_tunnels().await.unwrap();
    assert_eq!((tunnels.len(), tunnels[0].server.as_str()), (1, "local"));
    let n1 = s.get_node(&n("n1")).await.unwrap();
    assert_eq!(n1.revision, 1);
    assert!(n1.identity.weak && n1.identity.refused, "{:?}", n1.identity);
    let tpms = s.node_tpms(None).await.unwrap();
    assert_eq!((tpms[0].1.state, tpms[0].1.conflict.as_ref()), (ferry_store::TpmState::Pending, None));
    assert!(s.list_servers().await.unwrap().is_empty());
}
