//! Tunnel records: one per node, unique addresses, expiry, phone-home; on both backends.

#[macro_use]
mod common;

use common::{key, Kind, TestDb};
use ferry_api::admin::{AddNodes, NewNode};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use ferry_store::prelude::*;
use ferry_store::{Actor, AgentMode, BootReport, CloseReason, SqlStore, StoreError, WRITE_LOCK_KEY};

async fn store_with(kind: Kind, nodes: &[&str]) -> (TestDb, SqlStore) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    let nodes = nodes
        .iter()
        .map(|n| NewNode {
            name: NodeName::parse(n).unwrap(),
            profiles: vec![],
            settings: Default::default(),
            asset_tag: None,
        })
        .collect();
    s.add_nodes(AddNodes { nodes }, &actor()).await.unwrap();
    (db, s)
}

fn actor() -> Actor {
    Actor("test".into())
}
fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}

async fn one_tunnel_per_node_and_unique_addresses(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/16").unwrap();
    let a1 = s.open_tunnel(&n("a"), &key("KEYA1"), &net, 600, Some(AgentMode::Fetch), "local", &actor()).await.unwrap();
    assert_eq!(s.tunnel_by_address(a1.tunnel.address).await.unwrap().unwrap().mode, Some(AgentMode::Fetch));
    assert_eq!(a1.tunnel.address.to_string(), "100.64.0.2");
    assert_eq!(s.list_tunnels().await.unwrap()[0].server, "local");
    assert!(a1.replaced.is_none());
    let b = s.open_tunnel(&n("b"), &key("KEYB"), &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(b.tunnel.address.to_string(), "100.64.0.3");
    let a2 = s.open_tunnel(&n("a"), &key("KEYA2"), &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(a2.replaced.as_ref().map(|t| t.public_key), Some(key("KEYA1")));
    let tunnels = s.list_tunnels().await.unwrap();
    assert_eq!(tunnels.len(), 2);
    assert!(
        tunnels.iter().any(|t| t.public_key == key("KEYA2")) && !tunnels.iter().any(|t| t.public_key == key("KEYA1"))
    );
    // B's key cannot be enrolled for A, and the refusal names who holds it. The open
    // deletes A's tunnel and the key's in one statement: the rollback restores both.
    let before = s.list_tunnels().await.unwrap();
    match s.open_tunnel(&n("a"), &key("KEYB"), &net, 600, None, "local", &actor()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("tunnel of b"), "{m}"),
        other => panic!("B's key enrolled for A: {other:?}"),
    }
    assert_eq!(s.list_tunnels().await.unwrap(), before, "the failed attempt changed nothing");
    // A node that enrolls again with its own tunnel's key replaces that tunnel.
    let a3 = s.open_tunnel(&n("a"), &key("KEYA2"), &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(a3.replaced.map(|t| t.public_key), Some(key("KEYA2")));
    assert_eq!(s.list_tunnels().await.unwrap().len(), 2);
}

async fn exhausted_pool_allocates_nothing(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/30").unwrap();
    s.open_tunnel(&n("a"), &key("KA"), &net, 600, None, "local", &actor()).await.unwrap();
    assert!(matches!(
        s.open_tunnel(&n("b"), &key("KB"), &net, 600, None, "local", &actor()).await,
        Err(StoreError::PoolExhausted(_))
    ));
    assert_eq!(s.list_tunnels().await.unwrap().len(), 1);
}

async fn expiry_and_phone_home_close_only_their_tunnel(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b", "c"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let a = s.open_tunnel(&n("a"), &key("KA"), &net, 30, None, "local", &actor()).await.unwrap().tunnel;
    let b = s.open_tunnel(&n("b"), &key("KB"), &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    s.open_tunnel(&n("c"), &key("KC"), &net, 600, None, "local", &actor()).await.unwrap();
    let expired = s.expire_tunnels(a.expires_at).await.unwrap();
    assert_eq!(expired.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(), ["a"]);
    let report = BootReport {
        host_keys: vec![("ed25519".into(), "ssh-ed25519 AAAAC3Nza b".into())],
        fqdn: Some("b.cluster".into()),
        ..Default::default()
    };
    assert_eq!(s.phone_home(&b, &report).await.unwrap().map(|t| t.node), Some(n("b")));
    assert!(s.phone_home(&b, &report).await.unwrap().is_none(), "a closed tunnel cannot phone home twice");
    let left: Vec<_> = s.list_tunnels().await.unwrap().into_iter().map(|t| t.node).collect();
    assert_eq!(left, [n("c")]);
    let info = s.boot_info(&n("b")).await.unwrap().unwrap();
    assert_eq!((info.boot_count, info.host_keys.len()), (1, 1));
    assert_eq!(info.fqdn.as_deref(), Some("b.cluster"), "the FQDN it reported");
    let known = ferry_api::admin::KnownHost {
        node: n("b"),
        fqdn: Some("b.cluster".into()),
        addresses: vec![],
        key: "ssh-ed25519 AAAAC3Nza b".into(),
    };
    assert_eq!(s.host_keys().await.unwrap(), std::slice::from_ref(&known));
    // The next boot of b counts on and replaces the last one's facts.
    let b2 = s.open_tunnel(&n("b"), &key("KB2"), &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    let again = BootReport { hostname: Some("b.example".into()), fqdn: Some("a.cluster".into()), ..Default::default() };
    assert!(s.phone_home(&b2, &again).await.unwrap().is_some());
    let known = ferry_api::admin::KnownHost { fqdn: None, ..known };
    assert_eq!(s.host_keys().await.unwrap(), [known], "another node's name is not listed with b's key");
    let info = s.boot_info(&n("b")).await.unwrap().unwrap();
    assert_eq!((info.boot_count, info.hostname.as_deref()), (2, Some("b.example")));
    assert_eq!(info.address, b2.address.to_string());
    let closes = s.audit(Some("node/b"), 20).await.unwrap();
    let phone_home_closes =
        closes.iter().filter(|e| e.action == "tunnel.close" && e.detail.contains("reason=phone-home"));
    assert_eq!(phone_home_closes.count(), 2, "each phone-home closes its tunnel, audited: {closes:?}");
    // A replaced tunnel's record cannot close its successor.
    let c1 = s.list_tunnels().await.unwrap().remove(0);
    s.open_tunnel(&n("c"), &key("KC2"), &net, 600, None, "local", &actor()).await.unwrap();
    assert!(s.phone_home(&c1, &report).await.unwrap().is_none());
    assert_eq!(
        s.close_tunnel(&n("c"), CloseReason::Revoked, &actor()).await.unwrap().map(|t| t.public_key),
        Some(key("KC2"))
    );
    assert!(s.list_tunnels().await.unwrap().is_empty());
    let audit = s.audit(Some("node/a"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=expired")), "{audit:?}");
}

/// Deleting a node closes its tunnel in the same transaction, audited (reason
/// `deleted`), and hands the closed tunnel back so the server can drop the peer; a
/// targeted close (`close_tunnels`, the no-handshake reaper's) closes a tunnel only if
/// it is still the node's current one.
async fn deleting_a_node_and_targeted_closes_are_audited(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b", "c"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let a = s.open_tunnel(&n("a"), &key("KA"), &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    let closed = s.delete_nodes(&[n("a"), n("c")], &actor()).await.unwrap();
    assert_eq!(closed, [a], "a's tunnel closed, c had none");
    assert!(s.list_tunnels().await.unwrap().is_empty());
    let audit = s.audit(Some("node/a"), 10).await.unwrap();
    let close = audit.iter().find(|e| e.action == "tunnel.close").expect("the close is audited");
    assert!(close.detail.contains("reason=deleted") && close.detail.contains("key=KA"), "{close:?}");

    let b1 = s.open_tunnel(&n("b"), &key("KB1"), &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    let b2 = s.open_tunnel(&n("b"), &key("KB2"), &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    let none = s.close_tunnels(&[b1], CloseReason::NoHandshake, &actor()).await.unwrap();
    assert!(none.is_empty(), "a replaced tunnel's record does not close its successor");
    assert_eq!(s.list_tunnels().await.unwrap(), std::slice::from_ref(&b2));
    let closed = s.close_tunnels(std::slice::from_ref(&b2), CloseReason::NoHandshake, &actor()).await.unwrap();
    assert_eq!(closed, [b2]);
    assert!(s.list_tunnels().await.unwrap().is_empty());
    let audit = s.audit(Some("node/b"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=no-handshake")), "{audit:?}");
}

both_backends!(
    one_tunnel_per_node_and_unique_addresses,
    exhausted_pool_allocates_nothing,
    expiry_and_phone_home_close_only_their_tunnel,
    deleting_a_node_and_targeted_closes_are_audited,
    storm_writes_and_administration_take_turns,
    concurrent_opens_and_phone_homes_fail_alone,
);

/// Tunnel opens and phone-homes at once (PostgreSQL commits those that queue together in
/// one transaction): each gets its own answer. An open that fails (a key another node's
/// tunnel holds) fails alone, the others queued with it commit, and nothing is written
/// twice.
async fn concurrent_opens_and_phone_homes_fail_alone(kind: Kind) {
    use std::sync::Arc;
    const NODES: usize = 60;
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let (_d, s) = store_with(kind, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let s = Arc::new(s);
    let net = TunnelNetwork::parse("100.64.0.0/16").unwrap();
    s.open_tunnel(&n("n0"), &key("SHARED"), &net, 600, None, "local", &actor()).await.unwrap();
    // Every tenth node tries n0's key.
    let refused = |i: usize| i.is_multiple_of(10);
    let opens: Vec<_> = (1..NODES)
        .map(|i| {
            let s = s.clone();
            let k = if refused(i) { key("SHARED") } else { key(&format!("K{i}")) };
            tokio::spawn(
                async move { s.open_tunnel(&n(&format!("n{i}")), &k, &net, 600, None, "local", &actor()).await },
            )
        })
        .collect();
    let mut opened = vec![];
    for (i, open) in (1..NODES).zip(opens) {
        match (refused(i), open.await.unwrap()) {
            (true, Err(StoreError::Conflict(m))) => assert!(m.contains("tunnel of n0"), "n{i}: {m}"),
            (false, Ok(t)) => opened.push(t.tunnel),
            (_, other) => panic!("n{i}: {other:?}"),
        }
    }
    let tunnels = s.list_tunnels().await.unwrap();
    assert_eq!(tunnels.len(), NODES - NODES / 10 + 1, "n0's and every accepted open's");
    let addresses: std::collections::HashSet<_> = tunnels.iter().map(|t| t.address).collect();
    assert_eq!(addresses.len(), tunnels.len(), "no address twice");
    let phone_homes: Vec<_> = opened
        .into_iter()
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move { s.phone_home(&t, &BootReport::default()).await })
        })
        .collect();
    for p in phone_homes {
        assert!(p.await.unwrap().unwrap().is_some());
    }
    assert_eq!(s.list_tunnels().await.unwrap().len(), 1, "only n0's is left");
    let audit = s.audit_query(&ferry_store::AuditFilter { limit: 10_000, ..Default::default() }).await.unwrap();
    let count = |action: &str| audit.iter().filter(|e| e.action == action).count();
    assert_eq!((count("tunnel.open"), count("node.booted")), (NODES - NODES / 10 + 1, NODES - NODES / 10));
    let batches = s.write_batches();
    match kind {
        // The refused opens failed alone: the accepted ones around them still committed
        // in groups (54 opens and 54 phone-homes; a straggler may have run alone).
        Kind::Postgres => assert!(batches.jobs >= 100 && batches.jobs > batches.batches, "grouped: {batches:?}"),
        Kind::Sqlite => assert_eq!(batches, Default::default(), "SQLite's writer thread runs each alone"),
    }
}

/// A boot storm's writes (tunnel opens, phone-homes, audit events) interleaved with
/// administrative writes, some of them abandoned half-way: every write lands, none fails
/// on a busy database, and an abandoned write holds nothing up. (On SQLite the storm's
/// writes and the administration's go through two connections that must take turns.)
async fn storm_writes_and_administration_take_turns(kind: Kind) {
    use std::sync::Arc;
    use std::time::Duration;
    const NODES: usize = 40;
    const BOOTS: usize = 4;
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let (_d, s) = store_with(kind, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let s = Arc::new(s);
    let net = TunnelNetwork::parse("100.64.0.0/16").unwrap();
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (s, net, node) = (s.clone(), net, n(name));
        tasks.push(tokio::spawn(async move {
            for boot in 0..BOOTS {
                let t = s.open_tunnel(&node, &key(&format!("K{i}x{boot}")), &net, 600, None, "local", &actor()).await?;
                s.record_event(&actor(), "enroll.accepted", &format!("node/{node}"), "").await?;
                let report = BootReport { instance_id: Some(format!("i-{boot}")), ..Default::default() };
                assert!(s.phone_home(&t.tunnel, &report).await?.is_some(), "{node} boot {boot}");
            }
            Ok::<_, StoreError>(())
        }));
    }
    for i in 0..NODES {
        let (s, node) = (s.clone(), n(&format!("n{}", i % 4)));
        tasks.push(tokio::spawn(async move {
            let patch = ferry_api::admin::NodePatch {
                settings: ferry_core::patch::SettingsPatch {
                    set: serde_json::from_value(serde_json::json!({"tags": {format!("w{i}"): "x"}})).unwrap(),
                    unset: vec![],
                },
                ..Default::default()
            };
            // Abandoned at once (before or after it got its turn), then done for real.
            let _ =
                tokio::time::timeout(Duration::ZERO, s.set_nodes(std::slice::from_ref(&node), &patch, &actor())).await;
            s.set_nodes(&[node], &patch, &actor()).await.map(|_| ())
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all).await.expect("every write finished within 60 s");
    assert!(s.list_tunnels().await.unwrap().is_empty());
    for name in &names {
        assert_eq!(s.boot_info(&n(name)).await.unwrap().unwrap().boot_count, BOOTS as i64, "{name}");
    }
    for i in 0..4 {
        let tags = s.get_node(&n(&format!("n{i}"))).await.unwrap().settings.tags;
        assert_eq!(tags.len(), NODES / 4, "n{i}: every administrative write landed once: {tags:?}");
    }
    s.flush().await.unwrap();
    let accepted = s.audit_query(&ferry_store::AuditFilter { limit: 100_000, ..Default::default() }).await.unwrap();
    assert_eq!(accepted.iter().filter(|e| e.action == "enroll.accepted").count(), NODES * BOOTS);
    assert_eq!(accepted.iter().filter(|e| e.action == "node.booted").count(), NODES * BOOTS);
}

/// PostgreSQL: a write whose wait for the write lock fails (a `lock_timeout` an admin
/// set on the database) leaves no connection in a failed transaction behind for the
/// pool to hand out again: once the lock is free, every write succeeds.
#[tokio::test]
async fn postgres_a_failed_wait_for_the_write_lock_breaks_no_later_write() {
    let (db, s) = store_with(Kind::Postgres, &["a"]).await;
    drop(s);
    let raw = db.raw().await;
    let name: String = sqlx::query_scalar("SELECT current_database()::text").fetch_one(&raw).await.unwrap();
    sqlx::raw_sql(&format!("ALTER DATABASE {name} SET lock_timeout = '100ms'")).execute(&raw).await.unwrap();
    // Opened after the setting: its sessions have it.
    let s = db.open().await;
    let net = TunnelNetwork::parse("100.64.0.0/16").unwrap();
    let mut holder = raw.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *holder).await.unwrap();
    for i in 0..6 {
        let refused = s.open_tunnel(&n("a"), &key(&format!("KEYLOCKED{i}")), &net, 600, None, "local", &actor()).await;
        assert!(refused.is_err(), "write {i} went through while another session held the write lock");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(WRITE_LOCK_KEY).execute(&mut *holder).await.unwrap();
    drop(holder);
    for i in 0..8 {
        s.open_tunnel(&n("a"), &key(&format!("KEYFREE{i}")), &net, 600, None, "local", &actor())
            .await
            .unwrap_or_else(|e| panic!("write {i} after the lock was freed: {e}"));
    }
    assert_eq!(s.list_tunnels().await.unwrap()[0].public_key, key("KEYFREE7"));
}

/// PostgreSQL: a tunnel open whose caller stopped waiting before it ran (a node that
/// gave up, an HTTP request cut off) opens nothing — queued for a group commit or not,
/// as a transaction rolls back when its caller goes away before it commits. (SQLite's
/// writer thread runs every job it was handed.)
#[tokio::test]
async fn postgres_an_open_abandoned_before_it_ran_opens_nothing() {
    use std::future::Future;
    use std::time::Duration;
    let (_d, s) = store_with(Kind::Postgres, &["a", "b", "c"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/16").unwrap();
    for node in ["a", "b", "c"] {
        // Polled once (queued), then dropped, before the store's tasks could run.
        let (name, k, who) = (n(node), key(node), actor());
        let mut open = Box::pin(s.open_tunnel(&name, &k, &net, 600, None, "local", &who));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(open.as_mut().poll(&mut cx).is_pending(), "it waits for its turn");
        drop(open);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.list_tunnels().await.unwrap(), [], "no abandoned open ran");
    let opened = s.open_tunnel(&n("a"), &key("a"), &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(opened.tunnel.address.to_string(), "100.64.0.2", "and none took an address");
}
