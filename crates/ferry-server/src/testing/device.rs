//! A WireGuard device fake for unit tests: it keeps its peers as a device does.

use ferry_wg::{BackendKind, DeviceStatus, DeviceUpdate, IpNet, PublicKey, WgDevice, WgError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Keeps its peers like a device does, so reconcile has something to compare; peers
/// in `handshaken` report a handshake.
#[derive(Debug, Default, Clone)]
pub struct RecordingDevice {
    peers: Arc<std::sync::Mutex<HashMap<PublicKey, Vec<IpNet>>>>,
    handshaken: Arc<std::sync::Mutex<HashSet<PublicKey>>>,
}

impl RecordingDevice {
    pub fn has(&self, key: &PublicKey) -> bool {
        self.peers.lock().unwrap().contains_key(key)
    }

    pub fn keys(&self) -> Vec<PublicKey> {
        self.peers.lock().unwrap().keys().copied().collect()
    }

    /// The peer's allowed IPs (none if it is not there).
    pub fn allowed_ips(&self, key: &PublicKey) -> Vec<IpNet> {
        self.peers.lock().unwrap().get(key).cloned().unwrap_or_default()
    }

    /// From now on, the peer reports a handshake.
    pub fn handshook(&self, key: PublicKey) {
        self.handshaken.lock().unwrap().insert(key);
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
        let mut peers = self.peers.lock().unwrap();
        for key in update.removed() {
            peers.remove(key);
        }
        for p in update.peers() {
            peers.insert(p.public_key, p.allowed_ips.clone());
        }
        Ok(())
    }
    async fn status(&self) -> Result<DeviceStatus, WgError> {
        let (peers, handshaken) = (self.peers.lock().unwrap(), self.handshaken.lock().unwrap());
        let peers = peers
            .iter()
            .map(|(k, ips)| ferry_wg::PeerStatus {
                public_key: *k,
                allowed_ips: ips.clone(),
                endpoint: None,
                last_handshake: handshaken.contains(k).then(std::time::SystemTime::now),
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
