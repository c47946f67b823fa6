//! The one place that changes the WireGuard device. Every change is made in the store
//! first (one transaction) and applied to the device after the commit; a reconcile pass
//! (at start-up and periodically) makes the device equal to the store's active tunnels,
//! so a missed or failed device update is repaired rather than trusted. A node's
//! changes (enrollment, revocation, deletion) take its lock across both steps, so they
//! reach the device in the order they committed.

use ferry_api::admin::MergedNodeView;
use ferry_core::tunnel::{AgentMode, TunnelNetwork};
use ferry_core::NodeName;
use ferry_store::{Actor, BootReport, CloseReason, Store, StoreError, TunnelRecord};
use ferry_wg::{DeviceUpdate, IpNet, PeerConfig, PublicKey, WgDevice};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex, RwLock};

use crate::conns::TunnelConnections;
use crate::listen::{ConnectionWatcher, TcpConn};
use crate::metrics::{Metrics, ReasonLabel};
use crate::node_locks::NodeLocks;
use tokio_util::sync::CancellationToken;

/// How long a phoned-home node's peer stays on the device after the store closed its
/// tunnel, so the "200 OK" can still travel back through it.
pub const PHONE_HOME_GRACE: Duration = Duration::from_millis(1500);

/// Default deadline for a new tunnel's first WireGuard handshake.
pub const DEFAULT_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(30);

pub struct TunnelManager {
    /// Only for this manager's own store-then-device sequences: handlers hold the store
    /// themselves (their audience's state), and come here for tunnel operations only.
    store: Arc<dyn Store>,
    network: TunnelNetwork,
    /// This server's id: its tunnels are the store's tunnels with this server.
    server_id: String,
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
    /// Peers this process added at enrollment that have not completed a WireGuard
    /// handshake yet, with when they were added. Reconcile closes those older than
    /// `handshake_deadline` (`no-handshake`): a grant nobody uses must not stay for its
    /// whole TTL. Tunnels restored from the store at start-up are not in it (their
    /// node may be idle and silent until it next speaks; they keep their TTL).
    awaiting_handshake: std::sync::Mutex<HashMap<PublicKey, Instant>>,
    /// `None`: unused grants stay until their TTL.
    handshake_deadline: Option<Duration>,
    node_locks: NodeLocks,
    /// The datasource's connections by tunnel, closed when their tunnel ends.
    connections: Arc<TunnelConnections>,
    /// The server's metrics (tunnel lifetimes, phone-home latency); shared with the
    /// handlers through their own states.
    metrics: Arc<Metrics>,
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
    /// Closed for want of a handshake within the deadline.
    pub unused: usize,
    pub added: usize,
    pub removed: usize,
}

fn host_net(t: &TunnelRecord) -> IpNet {
    IpNet::from(t.address)
}

fn peer_of(t: &TunnelRecord) -> PeerConfig {
    PeerConfig::new(t.public_key).allowed_ip(host_net(t))
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
            awaiting_handshake: Default::default(),
            handshake_deadline: Some(DEFAULT_HANDSHAKE_DEADLINE),
            node_locks: NodeLocks::default(),
            connections: Default::default(),
            metrics: Default::default(),
        }
    }

    /// How long a new tunnel may wait for its first handshake; `None`: until its TTL.
    pub fn with_handshake_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.handshake_deadline = deadline;
        self
    }

    /// Records into the server's metrics (instead of a registry of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tunnel network this server allocates addresses from.
    pub fn network(&self) -> TunnelNetwork {
        self.network
    }

    /// This server's id (`[cluster] server_id`): its tunnels are the store's tunnels
    /// with this server.
    pub fn server_id(&self) -> &str {
        &self.server_id
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

    /// Forgets closed tunnels (only if the address still belongs to that tunnel),
    /// records how long they lived, and closes their datasource connections (a
    /// phoned-home tunnel's after [`PHONE_HOME_GRACE`]: one of them carries the answer).
    fn forget(&self, closed: &[TunnelRecord], reason: CloseReason) {
        let now = ferry_store::now_secs();
        for t in closed {
            let lived = (now - t.created_at).max(0) as f64;
            let label = ReasonLabel { reason: reason.as_str() };
            self.metrics.tunnel_lifetime.get_or_create(&label).observe(lived);
        }
        {
            let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
            for t in closed {
                if active.get(&t.address).is_some_and(|a| a.record.public_key == t.public_key) {
                    active.remove(&t.address);
                }
            }
        }
        if reason != CloseReason::PhoneHome {
            for t in closed {
                self.close_connections(t);
            }
        }
    }

    /// Closes the datasource connections of an ended tunnel (after it left `active`, so a
    /// connection accepted meanwhile sees that and closes itself).
    fn close_connections(&self, t: &TunnelRecord) {
        let n = self.connections.close_tunnel(t.address, &t.public_key);
        if n > 0 {
            tracing::debug!(node = %t.node, address = %t.address, connections = n, "closed the ended tunnel's connections");
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
        mode: Option<AgentMode>,
        settings: MergedNodeView,
        actor: &Actor,
    ) -> Result<TunnelRecord, StoreError> {
        // The node's lock first, then `order` (always in this order: reconcile waits for
        // `order` alone, so no cycle).
        let _node = self.node_locks.lock(node).await;
        let _order = self.order.read().await;
        let opened = self.store.open_tunnel(node, key, &self.network, ttl_secs, mode, &self.server_id, actor).await?;
        self.forget(opened.replaced.as_slice(), CloseReason::Replaced);
        self.active
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(opened.tunnel.address, ActiveTunnel::new(opened.tunnel.clone(), Some(settings)));
        let remove: Vec<PublicKey> = opened.replaced.iter().map(|t| t.public_key).collect();
        let add = vec![PeerConfig::new(*key).allowed_ip(host_net(&opened.tunnel))];
        if let Err(e) = self.submit(add, remove).await {
            tracing::error!(node = %node, error = %e, "could not add the peer; closing the tunnel again");
            self.forget(std::slice::from_ref(&opened.tunnel), CloseReason::Revoked);
            self.store.close_tunnel(node, CloseReason::Revoked, &Actor("ferry:device-error".into())).await?;
            return Err(StoreError::BadRequest(format!("the WireGuard device refused the peer: {e}")));
        }
        if self.handshake_deadline.is_some() {
            self.awaiting_handshake.lock().unwrap_or_else(|p| p.into_inner()).insert(*key, Instant::now());
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
        let _node = self.node_locks.lock(node).await;
        let _order = self.order.read().await;
        let closed = self.store.close_tunnel(node, reason, actor).await?;
        if let Some(t) = &closed {
            self.forget(std::slice::from_ref(t), reason);
            self.remove_peers(std::slice::from_ref(t)).await;
        }
        Ok(closed)
    }

    /// Deletes nodes from the inventory; their tunnels close in the same transaction
    /// (audited, reason `deleted`) and their peers go at once. Returns how many nodes.
    pub async fn delete_nodes(&self, names: &[NodeName], actor: &Actor) -> Result<usize, StoreError> {
        let _nodes = self.node_locks.lock_all(names).await;
        let _order = self.order.read().await;
        let closed = self.store.delete_nodes(names, actor).await?;
        self.forget(&closed, CloseReason::Deleted);
        // Another server's peer is that server's to remove (it hears of it and reconciles).
        let mine: Vec<TunnelRecord> = closed.into_iter().filter(|t| t.server == self.server_id).collect();
        self.remove_peers(&mine).await;
        Ok(names.len())
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
                self.lingering.lock().unwrap_or_else(|p| p.into_inner()).insert(t.public_key);
            }
            closed
        };
        let Some(closed) = closed else { return Ok(false) };
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PHONE_HOME_GRACE).await;
            let _order = this.order.read().await;
            // Only if the node has not re-enrolled with the same key meanwhile.
            let current = this.active(closed.address).map(|t| t.record.public_key);
            if current != Some(closed.public_key) {
                this.remove_peers(std::slice::from_ref(&closed)).await;
                this.close_connections(&closed);
            }
            this.lingering.lock().unwrap_or_else(|p| p.into_inner()).remove(&closed.public_key);
        });
        Ok(true)
    }

    async fn remove_peers(&self, tunnels: &[TunnelRecord]) {
        let keys: Vec<PublicKey> = tunnels.iter().map(|t| t.public_key).collect();
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
            let label = ReasonLabel { reason: CloseReason::ServerLost.as_str() };
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
        let mut wanted: HashMap<PublicKey, TunnelRecord> = self
            .store
            .list_tunnels()
            .await?
            .into_iter()
            .filter(|t| t.server == self.server_id)
            .map(|t| (t.public_key, t))
            .collect();
        let status = dev.status().await?;
        let handshaken: HashSet<PublicKey> =
            status.peers.iter().filter(|p| p.last_handshake.is_some()).map(|p| p.public_key).collect();
        let unused = self.close_unused(&mut wanted, &handshaken).await?;
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
            .map(|(_, t)| peer_of(t))
            .collect();
        {
            // The store's list is the truth; entries that did not change keep their snapshot.
            let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
            let mut next = HashMap::with_capacity(wanted.len());
            let mut ended = Vec::new();
            for t in wanted.values() {
                let entry = match active.remove(&t.address) {
                    Some(a) if a.record == *t => a,
                    other => {
                        ended.extend(other.filter(|a| a.record.public_key != t.public_key));
                        ActiveTunnel::new(t.clone(), None)
                    }
                };
                next.insert(t.address, entry);
            }
            ended.extend(std::mem::replace(&mut *active, next).into_values());
            drop(active);
            // Tunnels closed elsewhere (another server, a lost server's reaper).
            for a in ended {
                self.close_connections(&a.record);
            }
        }
        let report = ReconcileReport { expired: expired.len(), unused, added: add.len(), removed: remove.len() };
        if !remove.is_empty() || !add.is_empty() {
            dev.apply(DeviceUpdate::new().remove_peers(remove).add_peers(add)).await?;
            tracing::info!(?report, "device reconciled with the store");
        }
        Ok(report)
    }

    /// Closes (reason `no-handshake`) this process's new tunnels whose peer has not
    /// completed a handshake within the deadline, and takes them out of `wanted` so the
    /// same device update removes their peers. Called by reconcile, which holds `order`
    /// exclusively: no enrollment is between its store and its device step.
    async fn close_unused(
        &self,
        wanted: &mut HashMap<PublicKey, TunnelRecord>,
        handshaken: &HashSet<PublicKey>,
    ) -> Result<usize, StoreError> {
        let Some(deadline) = self.handshake_deadline else { return Ok(0) };
        let overdue: Vec<TunnelRecord> = {
            let mut awaiting = self.awaiting_handshake.lock().unwrap_or_else(|p| p.into_inner());
            // Done waiting: it handshook, or its tunnel is gone (phoned home, replaced, ...).
            awaiting.retain(|k, _| wanted.contains_key(k) && !handshaken.contains(k));
            awaiting.iter().filter(|(_, added)| added.elapsed() >= deadline).map(|(k, _)| wanted[k].clone()).collect()
        };
        if overdue.is_empty() {
            return Ok(0);
        }
        let reaper = Actor("ferry:reaper".into());
        let closed = self.store.close_tunnels(&overdue, CloseReason::NoHandshake, &reaper).await?;
        let mut awaiting = self.awaiting_handshake.lock().unwrap_or_else(|p| p.into_inner());
        for t in &overdue {
            awaiting.remove(&t.public_key);
        }
        drop(awaiting);
        for t in &closed {
            tracing::warn!(
                node = %t.node,
                address = %t.address,
                deadline_secs = deadline.as_secs(),
                "closed a tunnel whose node never completed a WireGuard handshake (a wrong server key pinned, \
                 or the agent stopped)"
            );
            wanted.remove(&t.public_key);
        }
        self.forget(&closed, CloseReason::NoHandshake);
        Ok(closed.len())
    }

    /// The device's view of each peer (last handshake), by public key.
    pub async fn handshakes(&self) -> HashMap<PublicKey, Option<std::time::SystemTime>> {
        let device = self.device.lock().await;
        let Some(dev) = device.as_ref() else { return HashMap::new() };
        match dev.status().await {
            Ok(s) => s.peers.into_iter().map(|p| (p.public_key, p.last_handshake)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the WireGuard device");
                HashMap::new()
            }
        }
    }
}

/// The datasource's watcher: tags each connection with its caller's tunnel, so the
/// connection ends with the tunnel.
impl ConnectionWatcher<TcpConn> for TunnelManager {
    fn connected(&self, info: &TcpConn, close: CancellationToken) -> Box<dyn Send + Sync> {
        let address = info.remote.ip().to_canonical();
        let key = |m: &TunnelManager| m.active(address).map(|t| t.record.public_key);
        let tagged = key(self);
        let registration = self.connections.register(address, tagged, close.clone());
        // The tunnel may have ended between the look-up and the registration, missing
        // the close: check again now that the connection can be found.
        if tagged.is_some() && key(self) != tagged {
            close.cancel();
        }
        Box::new(registration)
    }
}

#[cfg(test)]
#[path = "tunnels_tests.rs"]
pub(crate) mod tests;
