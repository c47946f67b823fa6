//! The userspace device's peers: found by public key (handshake initiations), by
//! receiver index (every other message) and by allowed IP (packets to send).
//!
//! A peer costs a few hundred bytes until it is used: its Noise state (boringtun's
//! `Tunn`, a few KiB, and one Diffie-Hellman with the peer's key to create) is made on
//! its first handshake or first packet, not when the peer is added, so adding thousands
//! of peers is a matter of hash-map inserts.
//!
//! Locking: the table is behind one `RwLock` (written by configuration changes only),
//! each peer's state behind its own `Mutex`. Nobody takes the table lock while holding
//! a peer's lock; a change that moves an allowed IP from one peer to another holds the
//! table's write lock and then two peer locks, which no packet path ever holds together.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use boringtun::noise::Tunn;
use boringtun::x25519;
use ipnet::IpNet;
use zeroize::Zeroizing;

use super::load::Keys;
use super::patch::PeerPatch;
use crate::config::PeerStatus;
use crate::keys::PublicKey;

/// Receiver indexes are 24 bits (boringtun keeps the low 8 bits for its sessions).
const INDEX_MASK: u32 = 0x00ff_ffff;

/// One peer.
pub(crate) struct Peer {
    pub(crate) public_key: PublicKey,
    /// Its receiver index (random, unique among the device's peers).
    pub(crate) index: u32,
    state: Mutex<PeerState>,
}

/// What changes about a peer.
pub(crate) struct PeerState {
    tunn: Option<Box<Tunn>>,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) allowed_ips: Vec<IpNet>,
    pub(crate) keepalive: u16,
    pub(crate) preshared_key: Option<Zeroizing<[u8; 32]>>,
    /// Taken out of the table: its packets are dropped from now on.
    removed: bool,
    /// Traffic of Noise states dropped since (key changes), so counters only grow.
    rx_before: u64,
    tx_before: u64,
}

impl Peer {
    fn new(public_key: PublicKey, index: u32) -> Peer {
        let state = PeerState {
            tunn: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            keepalive: 0,
            preshared_key: None,
            removed: false,
            rx_before: 0,
            tx_before: 0,
        };
        Peer { public_key, index, state: Mutex::new(state) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `wg show` and [`crate::WgDevice::status`] report.
    pub(crate) fn status(&self) -> PeerStatus {
        let st = self.lock();
        let (since, tx, rx) = match st.tunn.as_deref() {
            Some(t) => {
                let (since, tx, rx, _, _) = t.stats();
                (since, tx as u64, rx as u64)
            }
            None => (None, 0, 0),
        };
        PeerStatus {
            public_key: self.public_key,
            allowed_ips: st.allowed_ips.clone(),
            endpoint: st.endpoint,
            last_handshake: since.and_then(|d: Duration| SystemTime::now().checked_sub(d)),
            rx_bytes: st.rx_before + rx,
            tx_bytes: st.tx_before + tx,
            persistent_keepalive: (st.keepalive != 0).then_some(st.keepalive),
        }
    }
}

impl PeerState {
    /// The peer's Noise state, created on first use with the device's current keys;
    /// `None` for a removed peer or a device without a key.
    pub(crate) fn tunn(
        &mut self,
        peer: &Peer,
        keys: Option<&Keys>,
        created: &std::sync::atomic::AtomicU64,
    ) -> Option<&mut Tunn> {
        if self.removed {
            return None;
        }
        if self.tunn.is_none() {
            let keys = keys?;
            let tunn = Tunn::new(
                keys.private.clone(),
                x25519::PublicKey::from(peer.public_key.0),
                self.preshared_key.as_deref().copied(),
                (self.keepalive != 0).then_some(self.keepalive),
                peer.index,
                Some(keys.lenient.clone()),
            );
            self.tunn = Some(Box::new(tunn));
            super::load::Counters::bump(created);
        }
        self.tunn.as_deref_mut()
    }

    /// The existing Noise state, if any (never creates one).
    pub(crate) fn existing_tunn(&mut self) -> Option<&mut Tunn> {
        self.tunn.as_deref_mut()
    }

    /// Drops the Noise state (the session ends; the next handshake makes a new one).
    pub(crate) fn reset_session(&mut self) {
        if let Some(t) = self.tunn.take() {
            let (_, tx, rx, _, _) = t.stats();
            self.tx_before += tx as u64;
            self.rx_before += rx as u64;
        }
    }

    /// Whether the peer may send from `source` (WireGuard's cryptokey routing: a peer's
    /// packets are accepted only from its allowed IPs).
    pub(crate) fn allows(&self, source: IpAddr) -> bool {
        self.allowed_ips.iter().any(|net| net.contains(&source))
    }
}

/// Every peer, by key, index and allowed IP.
#[derive(Default)]
pub(crate) struct PeerTable {
    by_key: HashMap<PublicKey, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    routes: Routes,
}

impl PeerTable {
    pub(crate) fn by_key(&self, key: &PublicKey) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    /// The peer a message's receiver index names.
    pub(crate) fn by_receiver(&self, receiver_index: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_index >> 8))
    }

    /// The peer whose allowed IPs hold `destination` (longest prefix).
    pub(crate) fn route(&self, destination: IpAddr) -> Option<&Arc<Peer>> {
        self.routes.lookup(destination)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_key.values()
    }

    /// Removes every peer whose key is not in `keep`.
    pub(crate) fn retain(&mut self, keep: impl Fn(&PublicKey) -> bool) {
        let gone: Vec<PublicKey> = self.by_key.keys().filter(|k| !keep(k)).copied().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Ends every peer's session (the device key changed).
    pub(crate) fn reset_sessions(&self) {
        for peer in self.by_key.values() {
            peer.lock().reset_session();
        }
    }

    pub(crate) fn remove(&mut self, key: &PublicKey) {
        let Some(peer) = self.by_key.remove(key) else { return };
        self.by_index.remove(&peer.index);
        let mut st = peer.lock();
        for net in std::mem::take(&mut st.allowed_ips) {
            self.routes.remove(&net, &peer);
        }
        st.removed = true;
        st.reset_session();
    }

    /// Applies one peer section.
    pub(crate) fn apply(&mut self, patch: &PeerPatch) {
        if patch.remove {
            self.remove(&patch.public_key);
            return;
        }
        let peer = match self.by_key.get(&patch.public_key) {
            Some(peer) => peer.clone(),
            None if patch.update_only => return,
            None => {
                let peer = Arc::new(Peer::new(patch.public_key, self.free_index()));
                self.by_key.insert(patch.public_key, peer.clone());
                self.by_index.insert(peer.index, peer.clone());
                peer
            }
        };
        let mut st = peer.lock();
        if let Some(endpoint) = patch.endpoint {
            st.endpoint = Some(endpoint);
        }
        // boringtun's Noise state takes both at creation only: a change starts a new session.
        if let Some(keepalive) = patch.keepalive {
            if keepalive != st.keepalive {
                st.keepalive = keepalive;
                st.reset_session();
            }
        }
        if let Some(psk) = &patch.preshared_key {
            if psk.as_deref() != st.preshared_key.as_deref() {
                st.preshared_key = psk.clone();
                st.reset_session();
            }
        }
        if patch.replace_allowed_ips {
            for net in std::mem::take(&mut st.allowed_ips) {
                self.routes.remove(&net, &peer);
            }
        }
        for net in patch.allowed_ips.iter().map(IpNet::trunc) {
            if let Some(previous) = self.routes.insert(net, &peer) {
                // An allowed IP belongs to one peer: it moves (as in every WireGuard).
                previous.lock().allowed_ips.retain(|n| *n != net);
            }
            if !st.allowed_ips.contains(&net) {
                st.allowed_ips.push(net);
            }
        }
    }

    /// A random receiver index no peer has (random: it tells nothing of the peer count).
    fn free_index(&self) -> u32 {
        loop {
            let index = rand::random::<u32>() & INDEX_MASK;
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }
}

/// Allowed IPs: host routes (what a ferry server's peers have) in a hash map, shorter
/// prefixes in a list searched longest first (a node's one route to its server, or an
/// administrator's `wg set`).
#[derive(Default)]
struct Routes {
    hosts: HashMap<IpAddr, Arc<Peer>>,
    nets: Vec<(IpNet, Arc<Peer>)>,
}

impl Routes {
    fn lookup(&self, ip: IpAddr) -> Option<&Arc<Peer>> {
        self.hosts.get(&ip).or_else(|| self.nets.iter().find(|(net, _)| net.contains(&ip)).map(|(_, p)| p))
    }

    /// Routes `net` (host bits cleared) to `peer`; returns the other peer that had it.
    fn insert(&mut self, net: IpNet, peer: &Arc<Peer>) -> Option<Arc<Peer>> {
        let previous = if net.prefix_len() == net.max_prefix_len() {
            self.hosts.insert(net.addr(), peer.clone())
        } else if let Some(slot) = self.nets.iter_mut().find(|(n, _)| *n == net) {
            Some(std::mem::replace(&mut slot.1, peer.clone()))
        } else {
            self.nets.push((net, peer.clone()));
            // Longest prefix first; IPv4 and IPv6 never both contain one address.
            self.nets.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
            None
        };
        previous.filter(|p| !Arc::ptr_eq(p, peer))
    }

    /// Removes `net` if it is routed to `peer`.
    fn remove(&mut self, net: &IpNet, peer: &Arc<Peer>) {
        if net.prefix_len() == net.max_prefix_len() {
            if self.hosts.get(&net.addr()).is_some_and(|p| Arc::ptr_eq(p, peer)) {
                self.hosts.remove(&net.addr());
            }
        } else {
            self.nets.retain(|(n, p)| !(n == net && Arc::ptr_eq(p, peer)));
        }
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
