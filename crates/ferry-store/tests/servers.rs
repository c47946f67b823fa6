//! Several servers on one database: registration, heartbeats, the tunnels of lost
//! servers, address allocation from two store handles at once, and the notifications
//! that tell a server its tunnels changed under it. On both backends.

#[macro_use]
mod common;

use common::{key, Kind, TestDb};
use ferry_api::admin::{AddNodes, NewNode};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use ferry_store::prelude::*;
use ferry_store::{Actor, CloseReason, ServerRecord, SqlStore, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn actor() -> Actor {
    Actor("test".into())
}
fn n(s: &str) -> NodeName {
    NodeName::parse(s).unwrap()
}
fn net() -> TunnelNetwork {
    TunnelNetwork::parse("100.64.0.0/16").unwrap()
}
fn server(id: &str) -> ServerRecord {
    ServerRecord {
        id: id.into(),
        endpoint: format!("{id}.example:51820"),
        public_key: key(&format!("KEYOF{id}")),
        started_at: 0,
        heartbeat_at: 0,
        sealing_key_id: format!("SEALING-KEY-OF-{id}"),
    }
}

async fn add_nodes(s: &SqlStore, names: impl IntoIterator<Item = String>) {
    let nodes = names
        .into_iter()
        .map(|name| NewNode { name: n(&name), profiles: vec![], settings: Default::default(), asset_tag: None })
        .collect();
    s.add_nodes(AddNodes { nodes }, &actor()).await.unwrap();
}

async fn servers_register_heartbeat_and_list(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    let before = ferry_store::now_secs();
    s.register_server(&server("b")).await.unwrap();
    s.register_server(&server("a")).await.unwrap();
    add_nodes(&s, ["n1", "n2", "n3"].map(String::from)).await;
    for (node, label, srv) in [("n1", "K1", "a"), ("n2", "K2", "a"), ("n3", "K3", "b")] {
        s.open_tunnel(&n(node), &key(label), &net(), 600, None, srv, &actor()).await.unwrap();
    }
    let listed = s.list_servers().await.unwrap();
    let summary: Vec<(&str, i64)> = listed.iter().map(|x| (x.server.id.as_str(), x.active_tunnels)).collect();
    assert_eq!(summary, [("a", 2), ("b", 1)], "ordered by id, with counts");
    assert!(listed.iter().all(|x| x.server.started_at >= before && x.server.heartbeat_at >= before));
    assert_eq!(listed[0].server.endpoint, "a.example:51820");
    assert_eq!(listed[0].server.sealing_key_id, "SEALING-KEY-OF-a", "each server's sealing key id is kept");
    let json = serde_json::to_value(&listed[0]).unwrap();
    assert_eq!((json["id"].as_str(), json["active_tunnels"].as_i64()), (Some("a"), Some(2)), "flattened: {json}");

    s.heartbeat("a", before + 1000).await.unwrap();
    assert_eq!(s.list_servers().await.unwrap()[0].server.heartbeat_at, before + 1000);
    let e = s.heartbeat("ghost", before).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotFound { kind: "server", name } if name == "ghost"), "{e}");

    // Re-registration (a restart) is an upsert: new endpoint, fresh times, one row.
    let mut moved = server("a");
    moved.endpoint = "10.0.0.9:51820".into();
    s.register_server(&moved).await.unwrap();
    let listed = s.list_servers().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].server.endpoint, "10.0.0.9:51820");
    assert!(listed[0].server.heartbeat_at < before + 1000, "restart resets the heartbeat to now");
    let audit = s.audit(Some("server/a"), 10).await.unwrap();
    assert_eq!(audit.iter().filter(|e| e.action == "server.start").count(), 2, "{audit:?}");
}

async fn lost_servers_lose_their_tunnels(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    for id in ["alive", "stale", "me"] {
        s.register_server(&server(id)).await.unwrap();
    }
    add_nodes(&s, (1..=5).map(|i| format!("n{i}"))).await;
    let holders = [("n1", "alive"), ("n2", "stale"), ("n3", "stale"), ("n4", "me"), ("n5", "never-registered")];
    for (i, (node, srv)) in holders.iter().enumerate() {
        s.open_tunnel(&n(node), &key(&format!("K{i}")), &net(), 600, None, srv, &actor()).await.unwrap();
    }
    let now = ferry_store::now_secs() + 100;
    s.heartbeat("alive", now - 10).await.unwrap();
    s.heartbeat("stale", now - 31).await.unwrap();
    // `me` is stale too, but it is the caller: never closed.
    s.heartbeat("me", now - 1000).await.unwrap();
    let closed = s.close_tunnels_of_lost_servers(now, 30, "me").await.unwrap();
    let mut closed: Vec<(String, String)> = closed.into_iter().map(|t| (t.node.to_string(), t.server)).collect();
    closed.sort();
    assert_eq!(
        closed,
        [("n2".into(), "stale".into()), ("n3".into(), "stale".into()), ("n5".into(), "never-registered".into())]
    );
    let left: Vec<(String, String)> =
        s.list_tunnels().await.unwrap().into_iter().map(|t| (t.node.to_string(), t.server)).collect();
    assert_eq!(left, [("n1".into(), "alive".into()), ("n4".into(), "me".into())]);
    let audit = s.audit(Some("node/n2"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=server-lost")), "{audit:?}");
    assert!(s.close_tunnels_of_lost_servers(now, 30, "me").await.unwrap().is_empty(), "nothing left to close");
    // Exactly at the grace limit is still alive.
    assert!(s.close_tunnels_of_lost_servers(now + 20, 30, "me").await.unwrap().is_empty());
    assert_eq!(s.close_tunnels_of_lost_servers(now + 21, 30, "me").await.unwrap().len(), 1);
}

/// `ferry server remove`: a server gone for good is forgotten, never one that is alive
/// or still holds tunnels; the removal is audited.
async fn only_lost_servers_without_tunnels_are_removed(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = db.open().await;
    for id in ["alive", "gone"] {
        s.register_server(&server(id)).await.unwrap();
    }
    add_nodes(&s, ["n1".to_string()]).await;
    s.open_tunnel(&n("n1"), &key("K1"), &net(), 600, None, "gone", &actor()).await.unwrap();
    let now = ferry_store::now_secs() + 100;
    s.heartbeat("alive", now - 15).await.unwrap();
    s.heartbeat("gone", now - 16).await.unwrap();
    let ids = |s: Vec<ferry_store::ServerStatus>| s.into_iter().map(|x| x.server.id).collect::<Vec<_>>();

    let e = s.remove_server("alive", now, 15, &actor()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("is alive") && m.contains("stop it first")), "{e}");
    let e = s.remove_server("gone", now, 15, &actor()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("still holds 1 tunnel")), "{e}");
    let e = s.remove_server("ghost", now, 15, &actor()).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotFound { kind: "server", .. }), "{e}");
    assert_eq!(ids(s.list_servers().await.unwrap()), ["alive", "gone"], "nothing removed");

    s.close_tunnels_of_lost_servers(now, 15, "alive").await.unwrap();
    s.remove_server("gone", now, 15, &actor()).await.unwrap();
    assert_eq!(ids(s.list_servers().await.unwrap()), ["alive"]);
    let audit = s.audit(Some("server/gone"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "server.remove" && e.detail == "silent for 16 s"), "{audit:?}");
}

/// Two servers (two store handles; on SQLite, where one server owns the file, one handle
/// used twice) allocate 200 tunnels at once from the same network: no address twice.
async fn two_servers_never_share_an_address(kind: Kind) {
    let db = TestDb::new(kind).await;
    let a = Arc::new(db.open().await);
    let b = if kind == Kind::Postgres { Arc::new(db.open().await) } else { a.clone() };
    add_nodes(&a, (0..200).map(|i| format!("n{i}"))).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (store, srv) = if i % 2 == 0 { (a.clone(), "A") } else { (b.clone(), "B") };
            tokio::spawn(async move {
                store
                    .open_tunnel(&n(&format!("n{i}")), &key(&format!("KEY{i}")), &net(), 600, None, srv, &actor())
                    .await
                    .unwrap()
                    .tunnel
            })
        })
        .collect();
    let mut addresses = HashSet::new();
    for t in tasks {
        let t = t.await.unwrap();
        assert!(addresses.insert(t.address), "{} allocated twice", t.address);
    }
    assert_eq!(addresses.len(), 200);
    let listed = a.list_tunnels().await.unwrap();
    assert_eq!(listed.len(), 200);
    assert_eq!(listed.iter().filter(|t| t.server == "A").count(), 100);
    // Each handle's hint started at the beginning: the second search skipped the first's.
    let mut offsets: Vec<u32> = addresses
        .iter()
        .map(|a| {
            u32::from(match a {
                std::net::IpAddr::V4(v) => *v,
                _ => unreachable!(),
            })
        })
        .collect();
    offsets.sort();
    assert_eq!(offsets.last().unwrap() - offsets.first().unwrap(), 199, "dense from the start of the network");
}

async fn recv_within(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, secs: u64) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(secs), rx.recv()).await, Ok(Some(())))
}

/// A node re-enrolling through server B replaces server A's tunnel: A hears of it.
async fn a_tunnel_taken_over_by_another_server_wakes_its_old_server(kind: Kind) {
    let db = TestDb::new(kind).await;
    let a = db.open().await;
    add_nodes(&a, ["n1".to_string()]).await;
    let watch = a.watch_tunnels("A").await.unwrap();
    let Some(mut rx) = watch else {
        assert_eq!(kind, Kind::Sqlite, "only SQLite (one server) has nothing to watch");
        return;
    };
    assert_eq!(kind, Kind::Postgres);
    let b = db.open().await;
    a.open_tunnel(&n("n1"), &key("K1"), &net(), 600, None, "A", &actor()).await.unwrap();
    let opened = b.open_tunnel(&n("n1"), &key("K2"), &net(), 600, None, "B", &actor()).await.unwrap();
    assert_eq!(opened.replaced.as_ref().map(|t| t.server.as_str()), Some("A"), "A's tunnel was replaced");
    assert_eq!(opened.tunnel.server, "B");
    assert!(recv_within(&mut rx, 2).await, "watch_tunnels(A) yields within 2 s");

    // B's own changes are B's business: A hears nothing.
    b.open_tunnel(&n("n1"), &key("K3"), &net(), 600, None, "B", &actor()).await.unwrap();
    b.close_tunnel(&n("n1"), CloseReason::Revoked, &actor()).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(), "nothing for A");

    // Revocation, expiry and phone-home of A's tunnel.
    a.open_tunnel(&n("n1"), &key("K4"), &net(), 600, None, "A", &actor()).await.unwrap();
    b.close_tunnel(&n("n1"), CloseReason::Revoked, &actor()).await.unwrap();
    assert!(recv_within(&mut rx, 2).await, "a revocation wakes A");
    let t = a.open_tunnel(&n("n1"), &key("K5"), &net(), 10, None, "A", &actor()).await.unwrap().tunnel;
    assert_eq!(b.expire_tunnels(t.expires_at).await.unwrap().len(), 1);
    assert!(recv_within(&mut rx, 2).await, "an expiry wakes A");
    let t = a.open_tunnel(&n("n1"), &key("K6"), &net(), 600, None, "A", &actor()).await.unwrap().tunnel;
    a.phone_home(&t, &Default::default()).await.unwrap().unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(), "phone-home: A's own");

    // The listener's connection dies: it reconnects and yields once (news may be lost).
    let raw = db.raw().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&raw)
    .await
    .unwrap();
    assert!(recv_within(&mut rx, 5).await, "a reconnect yields");
    a.open_tunnel(&n("n1"), &key("K7"), &net(), 600, None, "A", &actor()).await.unwrap();
    b.open_tunnel(&n("n1"), &key("K8"), &net(), 600, None, "B", &actor()).await.unwrap();
    assert!(recv_within(&mut rx, 2).await, "listening again after the reconnect");
    raw.close().await;
}

both_backends!(
    servers_register_heartbeat_and_list,
    lost_servers_lose_their_tunnels,
    only_lost_servers_without_tunnels_are_removed,
    two_servers_never_share_an_address,
    a_tunnel_taken_over_by_another_server_wakes_its_old_server,
);

/// PostgreSQL only (SQLite's readers never wait for its writer): while more writers than
/// any pool has connections queue for the write lock, reads still answer at once. With
/// one pool for both, the waiting writers would hold every connection.
#[tokio::test]
async fn postgres_reads_do_not_queue_behind_writers_waiting_for_the_lock() {
    let db = TestDb::new(Kind::Postgres).await;
    let s = Arc::new(db.open().await);
    add_nodes(&s, ["n1".to_string()]).await;
    let raw = db.raw().await;
    let mut holder = raw.begin().await.unwrap();
    // The store's write lock, held by another session.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ferry_store::WRITE_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .unwrap();
    let writers: Vec<_> = (0..24)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.register_server(&server(&format!("s{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(writers.iter().all(|w| !w.is_finished()), "the writers wait for the lock");
    let read = tokio::time::timeout(Duration::from_secs(2), s.get_node(&n("n1"))).await;
    assert!(matches!(read, Ok(Ok(_))), "a read answers while writers wait: {read:?}");
    holder.rollback().await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(s.list_servers().await.unwrap().len(), 24, "every writer went through afterwards");
}
