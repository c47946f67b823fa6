//! The one place that changes the WireGuard device. Every change is made in the store
//! first (one transaction) and applied to the device after the commit; a reconcile pass
//! (at start-up and periodically) makes the device equal to the store's active tunnels,
//! so a missed or failed device update is repaired rather than trusted.

use ferry_api::admin::MergedNodeView;
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use ferry_store::{Actor, BootReport, CloseReason, Store, StoreError, TunnelRecord};
use ferry_wg::{DeviceUpdate, IpNet, PeerConfig, PublicKey, WgDevice};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, RwLock};

/// How long a phoned-home node's peer stays on the device after the store closed its
/// tunnel, so the "200 OK" can still travel back through it.
pub const PHONE_HOME_GRACE: Duration = Duration::from_millis(1500);

pub struct TunnelManager {
    pub store: Arc<dyn Store>,
    pub network: TunnelNetwork,
    /// This server's id: its tunnels are the store's tunnels with this server.
    pub server_id: String,
    /// Store-then-device sequences hold it shared (many at once); reconcile holds it
    /// exclusively, so it never sees a committed tunnel whose peer is still on its way
    /// to the device (or the reverse) and undoes it.
    order: RwLock<()>,
    /// The device; `None` once shut down.
    device: Arc<Mutex<Option<Box<dyn WgDevice>>>>,
    batches: mpsc::UnboundedSender<Change>,
    /// This server's active tunnels by address: who is calling the datasource. Changed
    /// only right after the store (under `order`), and replaced by the store's list at
    /// every reconcile, so it never outlives a closed tunnel by more than that.
    active: std::sync::RwLock<HashMap<IpAddr, Arc<ActiveTunnel>>>,
    /// Peers of phoned-home tunnels, kept on the device for [`PHONE_HOME_GRACE`]: the
    /// store no longer lists them, and reconcile must leave them alone (removing them
    /// early would cut the node's answer off, and in a boot storm it made one reconcile
    /// remove thousands of peers at once — ~1 s under the exclusive lock with boringtun).
    lingering: std::sync::Mutex<HashSet<PublicKey>>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// An active tunnel as the datasource sees it, with the node's merged settings read
/// once per tunnel: the four documents of one boot render from one snapshot (and a boot
/// storm does not merge profiles four times per node). A tunnel opened by enrollment
/// starts with the settings its node was admitted on; one found in the store (after a
/// restart, or opened by another server) reads them at its first document.
pub struct ActiveTunnel {
    pub record: TunnelRecord,
    merged: tokio::sync::OnceCell<Arc<MergedNodeView>>,
}

impl ActiveTunnel {
    fn new(record: TunnelRecord, settings: Option<MergedNodeView>) -> Arc<Self> {
        let merged = tokio::sync::OnceCell::new_with(settings.map(Arc::new));
        Arc::new(ActiveTunnel { record, merged })
    }

    /// The node's merged settings for this tunnel's documents.
    pub async fn merged(&self, store: &dyn Store) -> Result<Arc<MergedNodeView>, StoreError> {
        self.merged
            .get_or_try_init(|| async { store.merged_node(&self.record.node).await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// Peer changes waiting for the device; concurrent changes are applied as one update.
struct Change {
    add: Vec<PeerConfig>,
    remove: Vec<PublicKey>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Applies queued changes: whatever accumulated while the previous update was being
/// applied goes to the device as one UAPI request (a boot storm's enrollments coalesce;
/// an idle server adds no delay).
async fn batch_loop(device: Arc<Mutex<Option<Box<dyn WgDevice>>>>, mut rx: mpsc::UnboundedReceiver<Change>) {
    while let Some(first) = rx.recv().await {
        let mut changes = vec![first];
        while changes.len() < 8192 {
            match rx.try_recv() {
                Ok(c) => changes.push(c),
                Err(_) => break,
            }
        }
        // The last change for a key wins (an add then a remove in one batch is a remove).
        let mut last: HashMap<PublicKey, Option<PeerConfig>> = HashMap::new();
        for c in &changes {
            for k in &c.remove {
                last.insert(*k, None);
            }
            for p in &c.add {
                last.insert(p.public_key, Some(p.clone()));
            }
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (k, p) in last {
            match p {
                Some(p) => add.push(p),
                None => remove.push(k),
            }
        }
        let result = match device.lock().await.as_ref() {
            Some(d) => {
                d.apply(DeviceUpdate::new().remove_peers(remove).add_peers(add)).await.map_err(|e| e.to_string())
            }
            None => Err("the WireGuard device is shut down".into()),
        };
        for c in changes {
            let _ = c.done.send(result.clone());
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub expired: usize,
    pub added: usize,
    pub removed: usize,
}

fn host_net(t: &TunnelRecord) -> IpNet {
    IpNet::from(t.address)
}

fn peer_of(t: &TunnelRecord) -> Option<PeerConfig> {
    let key: PublicKey = t.public_key.parse().ok()?;
    Some(PeerConfig::new(key).allowed_ip(host_net(t)))
}

impl TunnelManager {
    /// Takes the device over; must be called inside a tokio runtime.
    pub fn new(store: Arc<dyn Store>, device: Box<dyn WgDevice>, network: TunnelNetwork, server_id: String) -> Self {
        let device = Arc::new(Mutex::new(Some(device)));
        let (batches, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(device.clone(), rx));
        TunnelManager {
            store,
            network,
            server_id,
            order: RwLock::new(()),
            device,
            batches,
            active: Default::default(),
            lingering: Default::default(),
            metrics: Default::default(),
        }
    }

    /// The active tunnel that owns `address`, if any.
    pub fn active(&self, address: IpAddr) -> Option<Arc<ActiveTunnel>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).get(&address).cloned()
    }

    /// Whether the device is up (not shut down).
    pub async fn device_up(&self) -> bool {
        self.device.lock().await.is_some()
    }

    /// How many tunnels are active.
    pub fn active_count(&self) -> usize {
        self.active.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forgets closed tunnels (only if the address still belongs to that tunnel) and
    /// records how long they lived.
    fn forget(&self, closed: &[TunnelRecord], reason: CloseReason) {
        let now = ferry_store::now_secs();
        for t in closed {
            let lived = (now - t.created_at).max(0) as f64;
            let label = crate::metrics::ReasonLabel { reason: reason.as_str() };
            self.metrics.tunnel_lifetime.get_or_create(&label).observe(lived);
        }
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        for t in closed {
            if active.get(&t.address).is_some_and(|a| a.record.public_key == t.public_key) {
                active.remove(&t.address);
            }
        }
    }

    async fn submit(&self, add: Vec<PeerConfig>, remove: Vec<PublicKey>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.batches.send(Change { add, remove, done }).map_err(|_| "the device writer stopped".to_string())?;
        wait.await.map_err(|_| "the device writer stopped".to_string())?
    }

    /// Removes the interface (userspace, kernel) or detaches (uapi). Peers come back
    /// from the store at the next start.
    pub async fn shutdown(&self) {
        let _order = self.order.write().await;
        if let Some(d) = self.device.lock().await.take() {
            if let Err(e) = d.close().await {
                tracing::warn!(error = %e, "closing the WireGuard device failed");
            }
        }
    }

    /// Opens (or replaces) a node's tunnel and adds its peer. `settings`: the node's
    /// merged settings its enrollment was decided on (its documents render from them).
    pub async fn open(
        &self,
        node: &NodeName,
        key: &PublicKey,
        ttl_secs: u64,
        mode: Option<&str>,
        settings: MergedNodeView,
        actor: &Actor,
    ) -> Result<TunnelRecord, StoreError> {
        let _order = self.order.read().await;
        let opened = self
            .store
            .open_tunnel(node, &key.to_base64(), &self.network, ttl_secs, mode, &self.server_id, actor)
            .await?;
        self.forget(opened.replaced.as_slice(), CloseReason::Replaced);
        self.active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(opened.tunnel.address, ActiveTunnel::new(opened.tunnel.clone(), Some(settings)));
        let remove: Vec<PublicKey> = opened.replaced.iter().filter_map(|t| t.public_key.parse().ok()).collect();
        let add = vec![PeerConfig::new(*key).allowed_ip(host_net(&opened.tunnel))];
        if let Err(e) = self.submit(add, remove).await {
            tracing::error!(node = %node, error = %e, "could not add the peer; closing the tunnel again");
            self.forget(std::slice::from_ref(&opened.tunnel), CloseReason::Revoked);
            self.store.close_tunnel(node, CloseReason::Revoked, &Actor("ferry:device-error".into())).await?;
            return Err(StoreError::BadRequest(format!("the WireGuard device refused the peer: {e}")));
        }
        Ok(opened.tunnel)
    }

    /// Closes a node's tunnel (revocation) and removes its peer at once.
    pub async fn close(
        &self,
        node: &NodeName,
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Option<TunnelRecord>, StoreError> {
        let _order = self.order.read().await;
        let closed = self.store.close_tunnel(node, reason, actor).await?;
        if let Some(t) = &closed {
            self.forget(std::slice::from_ref(t), reason);
            self.remove_peers(std::slice::from_ref(t)).await;
        }
        Ok(closed)
    }

    /// Records the boot and closes the tunnel in the store now; the peer goes after
    /// [`PHONE_HOME_GRACE`] so the answer reaches the node.
    pub async fn phone_home(self: &Arc<Self>, tunnel: &TunnelRecord, report: &BootReport) -> Result<bool, StoreError> {
        let closed = {
            let _order = self.order.read().await;
            let closed = self.store.phone_home(tunnel, report).await?;
            self.forget(closed.as_slice(), CloseReason::PhoneHome);
            if let Some(t) = &closed {
                self.metrics.phone_home_latency.observe((ferry_store::now_secs() - t.created_at).max(0) as f64);
                if let Ok(key) = t.public_key.parse() {
                    self.lingering.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                }
            }
            closed
        };
        let Some(closed) = closed else { return Ok(false) };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PHONE_HOME_GRACE).await;
            let _order = this.order.read().await;
            // Only if the node has not re-enrolled with the same key meanwhile.
            let current = this.active(closed.address).map(|t| t.record.public_key.clone());
            if current != Some(closed.public_key.clone()) {
                this.remove_peers(std::slice::from_ref(&closed)).await;
            }
            if let Ok(key) = closed.public_key.parse::<PublicKey>() {
                this.lingering.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            }
        });
        Ok(true)
    }

    async fn remove_peers(&self, tunnels: &[TunnelRecord]) {
        let keys: Vec<PublicKey> = tunnels.iter().filter_map(|t| t.public_key.parse().ok()).collect();
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.submit(Vec::new(), keys).await {
            tracing::error!(error = %e, "could not remove peers; the next reconcile retries");
        }
    }

    /// Closes the tunnels of servers whose heartbeat is older than `lost_after_secs`
    /// (their nodes enroll again elsewhere; a lost server that comes back drops the
    /// peers at its next reconcile).
    pub async fn reap_lost_servers(&self, lost_after_secs: u64) -> Result<usize, StoreError> {
        let now = ferry_store::now_secs();
        let closed = self.store.close_tunnels_of_lost_servers(now, lost_after_secs as i64, &self.server_id).await?;
        for t in &closed {
            tracing::warn!(node = %t.node, server = %t.server, address = %t.address, "closed the tunnel of a lost server");
            let label = crate::metrics::ReasonLabel { reason: CloseReason::ServerLost.as_str() };
            self.metrics.tunnel_lifetime.get_or_create(&label).observe((now - t.created_at).max(0) as f64);
        }
        Ok(closed.len())
    }

    /// Reaps expired tunnels, then makes the device's peers equal to this server's
    /// active tunnels.
    pub async fn reconcile(&self) -> Result<ReconcileReport, anyhow::Error> {
        let _order = self.order.write().await;
        let device = self.device.lock().await;
        let Some(dev) = device.as_ref() else { anyhow::bail!("the WireGuard device is shut down") };
        let expired = self.store.expire_tunnels(ferry_store::now_secs()).await?;
        for t in &expired {
            tracing::info!(node = %t.node, address = %t.address, "tunnel expired");
        }
        self.forget(&expired, CloseReason::Expired);
        let wanted: HashMap<PublicKey, TunnelRecord> = self
            .store
            .list_tunnels()
            .await?
            .into_iter()
            .filter(|t| t.server == self.server_id)
            .filter_map(|t| Some((t.public_key.parse().ok()?, t)))
            .collect();
        let status = dev.status().await?;
        let present: HashMap<PublicKey, Vec<IpNet>> =
            status.peers.into_iter().map(|p| (p.public_key, p.allowed_ips)).collect();
        let remove: Vec<PublicKey> = {
            let lingering = self.lingering.lock().unwrap_or_else(|p| p.into_inner());
            present.keys().filter(|k| !wanted.contains_key(k) && !lingering.contains(k)).copied().collect()
        };
        let add: Vec<PeerConfig> = wanted
            .iter()
            .filter(|(k, t)| {
                present.get(k).map(|ips| ips.iter().copied().collect::<HashSet<_>>())
                    != Some(HashSet::from([host_net(t)]))
            })
            .filter_map(|(_, t)| peer_of(t))
            .collect();
        {
            // The store's list is the truth; entries that did not change keep their snapshot.
            let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
            let mut next = HashMap::with_capacity(wanted.len());
            for t in wanted.values() {
                let entry = match active.remove(&t.address) {
                    Some(a) if a.record == *t => a,
                    _ => ActiveTunnel::new(t.clone(), None),
                };
                next.insert(t.address, entry);
            }
            *active = next;
        }
        let report = ReconcileReport { expired: expired.len(), added: add.len(), removed: remove.len() };
        if !remove.is_empty() || !add.is_empty() {
            dev.apply(DeviceUpdate::new().remove_peers(remove).add_peers(add)).await?;
            tracing::info!(?report, "device reconciled with the store");
        }
        Ok(report)
    }

    /// The device's view of each peer (last handshake), by public key.
    pub async fn handshakes(&self) -> HashMap<String, Option<std::time::SystemTime>> {
        let device = self.device.lock().await;
        let Some(dev) = device.as_ref() else { return HashMap::new() };
        match dev.status().await {
            Ok(s) => s.peers.into_iter().map(|p| (p.public_key.to_base64(), p.last_handshake)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the WireGuard device");
                HashMap::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::admin::{AddNodes, NewNode, NodePatch};
    use ferry_core::model::Settings;
    use ferry_core::patch::SettingsPatch;
    use ferry_store::{Sealer, SqlStore};
    use ferry_wg::{BackendKind, DeviceStatus, PrivateKey, WgError};

    /// Keeps its peers like a device does, so reconcile has something to compare.
    #[derive(Debug, Default, Clone)]
    struct RecordingDevice(Arc<std::sync::Mutex<HashMap<PublicKey, Vec<IpNet>>>>);

    impl RecordingDevice {
        fn has(&self, key: &PublicKey) -> bool {
            self.0.lock().unwrap().contains_key(key)
        }
    }

    #[async_trait::async_trait]
    impl WgDevice for RecordingDevice {
        fn name(&self) -> &str {
            "test0"
        }
        fn backend(&self) -> BackendKind {
            BackendKind::Userspace
        }
        async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
            let mut peers = self.0.lock().unwrap();
            for key in update.removed() {
                peers.remove(key);
            }
            for p in update.peers() {
                peers.insert(p.public_key, p.allowed_ips.clone());
            }
            Ok(())
        }
        async fn status(&self) -> Result<DeviceStatus, WgError> {
            let peers = self.0.lock().unwrap();
            let peers = peers
                .iter()
                .map(|(k, ips)| ferry_wg::PeerStatus {
                    public_key: *k,
                    allowed_ips: ips.clone(),
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                })
                .collect();
            Ok(DeviceStatus { peers, ..Default::default() })
        }
        async fn close(self: Box<Self>) -> Result<(), WgError> {
            Ok(())
        }
    }

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
        let patch = NodePatch {
            profiles: None,
            settings: SettingsPatch { set: comment("after"), unset: vec![] },
            asset_tag: None,
        };
        store.set_nodes(std::slice::from_ref(&node), &patch, &actor).await.unwrap();
        let seen = tunnels.active(opened.address).unwrap().merged(store.as_ref()).await.unwrap();
        assert_eq!(seen.settings.comment.as_deref(), Some("before"), "the admission snapshot");

        // After a restart the tunnel comes from the store: its first document reads them.
        let restarted = TunnelManager::new(store.clone(), Box::new(RecordingDevice::default()), network, "s1".into());
        restarted.reconcile().await.unwrap();
        let seen = restarted.active(opened.address).unwrap().merged(store.as_ref()).await.unwrap();
        assert_eq!(seen.settings.comment.as_deref(), Some("after"));
    }
}
