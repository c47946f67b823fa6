//! TunnelManager with a device fake that keeps its peers.

use super::*;
use crate::testing::RecordingDevice;
use ferry_api::admin::{AddNodes, NewNode, NodePatch};
use ferry_core::model::Settings;
use ferry_core::patch::SettingsPatch;
use ferry_store::{Sealer, SqlStore};
use ferry_wg::PrivateKey;

/// A phoned-home node's peer stays for the grace period even when a reconcile runs
/// in it (the store no longer lists the tunnel), and goes after it.
#[tokio::test]
async fn a_phoned_home_peer_outlives_a_reconcile_during_its_grace() {
    let (_dir, store, node, actor) = store_with_node("x").await;
    let device = RecordingDevice::default();
    let network = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let tunnels = Arc::new(TunnelManager::new(store.clone(), Box::new(device.clone()), network, "s1".into()));

    let key = PrivateKey::generate().public_key();
    let settings = store.merged_node(&node).await.unwrap();
    let opened = tunnels.open(&node, &key, 600, None, settings, &actor).await.unwrap();
    assert!(device.has(&key));
    assert!(tunnels.phone_home(&opened, &BootReport::default()).await.unwrap());
    let report = tunnels.reconcile().await.unwrap();
    assert_eq!(report, ReconcileReport::default(), "nothing to repair");
    assert!(device.has(&key), "the peer stays for the grace period");
    tokio::time::sleep(PHONE_HOME_GRACE + Duration::from_millis(500)).await;
    assert!(!device.has(&key), "and goes after it");
    assert!(tunnels.lingering.lock().unwrap().is_empty());
}

fn comment(text: &str) -> Settings {
    Settings { comment: Some(text.into()), ..Default::default() }
}

/// A SQLite store in a temporary directory with one node, n1, commented `text`.
async fn store_with_node(text: &str) -> (tempfile::TempDir, Arc<dyn Store>, NodeName, Actor) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqlStore::open_sqlite(&dir.path().join("ferry.db"), Sealer::ephemeral()).await.unwrap());
    let (node, actor) = (NodeName::parse("n1").unwrap(), Actor("test".into()));
    let new = NewNode { name: node.clone(), profiles: vec![], settings: comment(text), asset_tag: None };
    store.add_nodes(AddNodes { nodes: vec![new] }, &actor).await.unwrap();
    (dir, store, node, actor)
}

/// The documents of a boot render from the settings its enrollment was decided on
/// (read once, at enrollment); a tunnel known only from the store reads them fresh.
#[tokio::test]
async fn a_tunnel_renders_from_the_settings_its_enrollment_read() {
    let (_dir, store, node, actor) = store_with_node("before").await;
    let network = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let tunnels = TunnelManager::new(store.clone(), Box::new(RecordingDevice::default()), network, "s1".into());

    let admitted = store.merged_node(&node).await.unwrap();
    let key = PrivateKey::generate().public_key();
    let opened = tunnels.open(&node, &key, 600, None, admitted, &actor).await.unwrap();
    let patch =
        NodePatch { profiles: None, settings: SettingsPatch { set: comment("after"), unset: vec![] }, asset_tag: None };
    store.set_nodes(std::slice::from_ref(&node), &patch, &actor).await.unwrap();
    let seen = tunnels.active(opened.address).unwrap().merged(store.as_ref()).await.unwrap();
    assert_eq!(seen.settings.comment.as_deref(), Some("before"), "the admission snapshot");

    // After a restart the tunnel comes from the store: its first document reads them.
    let restarted = TunnelManager::new(store.clone(), Box::new(RecordingDevice::default()), network, "s1".into());
    restarted.reconcile().await.unwrap();
    let seen = restarted.active(opened.address).unwrap().merged(store.as_ref()).await.unwrap();
    assert_eq!(seen.settings.comment.as_deref(), Some("after"));
}

fn manager(store: &Arc<dyn Store>, device: &RecordingDevice) -> Arc<TunnelManager> {
    let network = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    Arc::new(TunnelManager::new(store.clone(), Box::new(device.clone()), network, "s1".into()))
}

/// Many enrollments of one node at once: each commits, then changes the device; without
/// the node's lock a later commit's device change could overtake an earlier one's and
/// leave a replaced peer behind. Afterwards the device holds exactly the store's tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_re_enrollments_of_one_node_leave_only_the_current_peer() {
    let (_dir, store, node, actor) = store_with_node("x").await;
    let device = RecordingDevice::default();
    let tunnels = manager(&store, &device);
    let settings = store.merged_node(&node).await.unwrap();
    for round in 0..5 {
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let (tunnels, node, actor, settings) = (tunnels.clone(), node.clone(), actor.clone(), settings.clone());
                tokio::spawn(async move {
                    let key = PrivateKey::generate().public_key();
                    tunnels.open(&node, &key, 600, None, settings, &actor).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let current: PublicKey = store.list_tunnels().await.unwrap()[0].public_key;
        assert_eq!(device.keys(), [current], "round {round}: only the current tunnel's peer, before any reconcile");
    }
}

/// Deleting a node closes its tunnel (audited `deleted`) and removes its peer at once.
#[tokio::test]
async fn deleting_a_node_closes_its_tunnel_and_removes_its_peer_at_once() {
    let (_dir, store, node, actor) = store_with_node("x").await;
    let device = RecordingDevice::default();
    let tunnels = manager(&store, &device);
    let key = PrivateKey::generate().public_key();
    let settings = store.merged_node(&node).await.unwrap();
    let opened = tunnels.open(&node, &key, 600, None, settings, &actor).await.unwrap();
    assert_eq!(tunnels.delete_nodes(std::slice::from_ref(&node), &actor).await.unwrap(), 1);
    assert!(!device.has(&key), "the peer is gone without a reconcile");
    assert!(tunnels.active(opened.address).is_none());
    assert!(store.list_tunnels().await.unwrap().is_empty());
    store.flush().await.unwrap();
    let audit = store.audit(Some("node/n1"), 20).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=deleted")), "{audit:?}");
}

/// A tunnel whose peer never handshakes is closed at the first reconcile after the
/// deadline (audited `no-handshake`); one that handshook stays; one restored from the
/// store by a restarted server is left to its TTL.
#[tokio::test]
async fn an_unused_grant_is_closed_after_the_handshake_deadline() {
    let (_dir, store, node, actor) = store_with_node("x").await;
    let other = NodeName::parse("n2").unwrap();
    let new = NewNode { name: other.clone(), profiles: vec![], settings: comment("y"), asset_tag: None };
    store.add_nodes(AddNodes { nodes: vec![new] }, &actor).await.unwrap();
    let device = RecordingDevice::default();
    let network = TunnelNetwork::parse("100.64.0.0/24").unwrap();
    let deadline = Duration::from_millis(300);
    let tunnels = Arc::new(
        TunnelManager::new(store.clone(), Box::new(device.clone()), network, "s1".into())
            .with_handshake_deadline(Some(deadline)),
    );
    let (unused, used) = (PrivateKey::generate().public_key(), PrivateKey::generate().public_key());
    let settings = store.merged_node(&node).await.unwrap();
    tunnels.open(&node, &unused, 600, None, settings, &actor).await.unwrap();
    let settings = store.merged_node(&other).await.unwrap();
    tunnels.open(&other, &used, 600, None, settings, &actor).await.unwrap();
    device.handshook(used);

    assert_eq!(tunnels.reconcile().await.unwrap(), ReconcileReport::default(), "within the deadline");
    tokio::time::sleep(deadline).await;
    let report = tunnels.reconcile().await.unwrap();
    assert_eq!(report, ReconcileReport { unused: 1, removed: 1, ..Default::default() });
    assert_eq!(device.keys(), [used], "the unused grant's peer went in the same pass");
    let left: Vec<String> = store.list_tunnels().await.unwrap().into_iter().map(|t| t.node.to_string()).collect();
    assert_eq!(left, ["n2"]);
    store.flush().await.unwrap();
    let audit = store.audit(Some("node/n1"), 20).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "tunnel.close" && e.detail.contains("reason=no-handshake")), "{audit:?}");

    // A restarted server restores n2's tunnel on a fresh device (no handshake there
    // yet): the node may be silent for a while, so it keeps its TTL.
    let fresh = RecordingDevice::default();
    let restarted = Arc::new(
        TunnelManager::new(store.clone(), Box::new(fresh.clone()), network, "s1".into())
            .with_handshake_deadline(Some(deadline)),
    );
    restarted.reconcile().await.unwrap();
    tokio::time::sleep(deadline).await;
    assert_eq!(restarted.reconcile().await.unwrap(), ReconcileReport::default());
    assert_eq!(fresh.keys(), [used]);
}
