//! Tunnel records: one per node, unique addresses, expiry, phone-home; on both backends.

#[macro_use]
mod common;

use common::{Kind, TestDb};
use ferry_api::admin::{AddNodes, NewNode};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use ferry_store::{Actor, BootReport, CloseReason, SqlStore, Store, StoreError};

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
    let a1 = s.open_tunnel(&n("a"), "KEYA1", &net, 600, Some("fetch"), "local", &actor()).await.unwrap();
    assert_eq!(s.tunnel_by_address(a1.tunnel.address).await.unwrap().unwrap().mode.as_deref(), Some("fetch"));
    assert_eq!(a1.tunnel.address.to_string(), "100.64.0.2");
    assert_eq!(s.list_tunnels().await.unwrap()[0].server, "local");
    assert!(a1.replaced.is_none());
    let b = s.open_tunnel(&n("b"), "KEYB", &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(b.tunnel.address.to_string(), "100.64.0.3");
    let a2 = s.open_tunnel(&n("a"), "KEYA2", &net, 600, None, "local", &actor()).await.unwrap();
    assert_eq!(a2.replaced.as_ref().map(|t| t.public_key.as_str()), Some("KEYA1"));
    let tunnels = s.list_tunnels().await.unwrap();
    assert_eq!(tunnels.len(), 2);
    assert!(tunnels.iter().any(|t| t.public_key == "KEYA2") && !tunnels.iter().any(|t| t.public_key == "KEYA1"));
    // B's key cannot be enrolled for A.
    assert!(matches!(
        s.open_tunnel(&n("a"), "KEYB", &net, 600, None, "local", &actor()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.list_tunnels().await.unwrap().len(), 2, "the failed attempt changed nothing (A keeps KEYA2)");
    assert!(s.list_tunnels().await.unwrap().iter().any(|t| t.public_key == "KEYA2"));
}

async fn exhausted_pool_allocates_nothing(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/30").unwrap();
    s.open_tunnel(&n("a"), "KA", &net, 600, None, "local", &actor()).await.unwrap();
    assert!(matches!(
        s.open_tunnel(&n("b"), "KB", &net, 600, None, "local", &actor()).await,
        Err(StoreError::PoolExhausted(_))
    ));
    assert_eq!(s.list_tunnels().await.unwrap().len(), 1);
}

async fn expiry_and_phone_home_close_only_their_tunnel(kind: Kind) {
    let (_d, s) = store_with(kind, &["a", "b", "c"]).await;
    let net = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let a = s.open_tunnel(&n("a"), "KA", &net, 30, None, "local", &actor()).await.unwrap().tunnel;
    let b = s.open_tunnel(&n("b"), "KB", &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    s.open_tunnel(&n("c"), "KC", &net, 600, None, "local", &actor()).await.unwrap();
    let expired = s.expire_tunnels(a.expires_at).await.unwrap();
    assert_eq!(expired.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(), ["a"]);
    let report =
        BootReport { host_keys: vec![("ed25519".into(), "ssh-ed25519 AAAAC3Nza b".into())], ..Default::default() };
    assert_eq!(s.phone_home(&b, &report).await.unwrap().map(|t| t.node), Some(n("b")));
    assert!(s.phone_home(&b, &report).await.unwrap().is_none(), "a closed tunnel cannot phone home twice");
    let left: Vec<_> = s.list_tunnels().await.unwrap().into_iter().map(|t| t.node).collect();
    assert_eq!(left, [n("c")]);
    let info = s.boot_info(&n("b")).await.unwrap().unwrap();
    assert_eq!((info.boot_count, info.host_keys.len()), (1, 1));
    assert_eq!(s.host_keys().await.unwrap(), [(n("b"), "ssh-ed25519 AAAAC3Nza b".to_string())]);
    // The next boot of b counts on and replaces the last one's facts.
    let b2 = s.open_tunnel(&n("b"), "KB2", &net, 600, None, "local", &actor()).await.unwrap().tunnel;
    let again = BootReport { hostname: Some("b.example".into()), ..Default::default() };
    assert!(s.phone_home(&b2, &again).await.unwrap().is_some());
    let info = s.boot_info(&n("b")).await.unwrap().unwrap();
    assert_eq!((info.boot_count, info.hostname.as_deref()), (2, Some("b.example")));
    assert_eq!(info.address, b2.address.to_string());
    let closes = s.audit(Some("node/b"), 20).await.unwrap();
    let phone_home_closes =
        closes.iter().filter(|e| e.action == "tunnel.close" && e.detail.contains("reason=phone-home"));
    assert_eq!(phone_home_closes.count(), 2, "each phone-home closes its tunnel, audited: {closes:?}");
    // A replaced tunnel's record cannot close its successor.
    let c1 = s.list_tunnels().await.unwrap().remove(0);
    s.open_tunnel(&n("c"), "KC2", &net, 600, None, "local", &actor()).await.unwrap();
    assert!(s.phone_home(&c1, &report).await.unwrap().is_none());
    assert_eq!(
        s.close_tunnel(&n("c"), CloseReason::Revoked, &actor()).await.unwrap().map(|t| t.public_key),
        Some("KC2".into())
    );
    assert!(s.list_tunnels().await.unwrap().is_empty());
    let audit = s.audit(Some("node/a"), 10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=expired")), "{audit:?}");
}

both_backends!(
    one_tunnel_per_node_and_unique_addresses,
    exhausted_pool_allocates_nothing,
    expiry_and_phone_home_close_only_their_tunnel,
);
