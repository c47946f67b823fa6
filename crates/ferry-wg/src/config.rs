//! What can be changed on a device ([`DeviceUpdate`]) and what it reports ([`DeviceStatus`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::error::WgError;
use crate::keys::{PrivateKey, PublicKey};

/// The wanted configuration of one peer.
///
/// Applying it replaces the peer's allowed IPs and keepalive with these values
/// (`replace_allowed_ips` semantics). `endpoint: None` leaves the endpoint as it is
/// (it is learnt from the peer's first handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Addresses the peer may send from and that are routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// Where to send packets before the peer has been heard from.
    pub endpoint: Option<SocketAddr>,
    /// Keepalive interval in seconds; `None` or `Some(0)` disables it.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    /// A peer with no allowed IPs, no endpoint and no keepalive.
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig { public_key, allowed_ips: Vec::new(), endpoint: None, persistent_keepalive: None }
    }

    /// Adds an allowed IP network (host bits are cleared when sent).
    pub fn allowed_ip(mut self, net: IpNet) -> Self {
        self.allowed_ips.push(net);
        self
    }

    /// Sets the endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Sets the persistent keepalive interval in seconds.
    pub fn persistent_keepalive(mut self, secs: u16) -> Self {
        self.persistent_keepalive = Some(secs);
        self
    }

    /// The keepalive as sent on the wire (0 = off).
    pub(crate) fn keepalive_secs(&self) -> u16 {
        self.persistent_keepalive.unwrap_or(0)
    }
}

/// A batch of changes, applied to the device as one request.
///
/// Removals are applied before additions; a key may not be both added and removed,
/// nor added twice, in one update.
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    pub(crate) private_key: Option<PrivateKey>,
    pub(crate) listen_port: Option<u16>,
    pub(crate) replace_peers: bool,
    pub(crate) peers: Vec<PeerConfig>,
    pub(crate) remove: Vec<PublicKey>,
}

impl DeviceUpdate {
    /// An empty update.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the device's private key.
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(key);
        self
    }

    /// Sets the UDP listen port (0 = pick a free one).
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    /// When true, every peer not in this update is removed.
    pub fn replace_peers(mut self, replace: bool) -> Self {
        self.replace_peers = replace;
        self
    }

    /// Adds a peer, or replaces the configuration of an existing one.
    pub fn add_peer(mut self, peer: PeerConfig) -> Self {
        self.peers.push(peer);
        self
    }

    /// Adds many peers.
    pub fn add_peers(mut self, peers: impl IntoIterator<Item = PeerConfig>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Removes a peer (no error if it does not exist).
    pub fn remove_peer(mut self, key: PublicKey) -> Self {
        self.remove.push(key);
        self
    }

    /// Removes many peers.
    pub fn remove_peers(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.remove.extend(keys);
        self
    }

    /// Peers to add or update.
    pub fn peers(&self) -> &[PeerConfig] {
        &self.peers
    }

    /// Keys of peers to remove.
    pub fn removed(&self) -> &[PublicKey] {
        &self.remove
    }

    /// True when applying the update would change nothing.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && !self.replace_peers
            && self.peers.is_empty()
            && self.remove.is_empty()
    }

    /// Rejects updates that name a key twice.
    pub(crate) fn validate(&self) -> Result<(), WgError> {
        let mut seen = HashSet::with_capacity(self.peers.len() + self.remove.len());
        for key in self.peers.iter().map(|p| &p.public_key).chain(&self.remove) {
            if !seen.insert(key) {
                return Err(WgError::InvalidUpdate(format!(
                    "peer {key} appears more than once (added twice, or both added and removed)"
                )));
            }
        }
        Ok(())
    }
}

/// What a device reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// Its current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed; `None` if never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Keepalive interval in seconds, if enabled.
    pub persistent_keepalive: Option<u16>,
}

/// What a device reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceStatus {
    /// The device's public key, if it has a private key.
    pub public_key: Option<PublicKey>,
    /// The UDP listen port, if listening.
    pub listen_port: Option<u16>,
    /// All peers.
    pub peers: Vec<PeerStatus>,
}

impl PeerStatus {
    /// A peer with this key and nothing known about it yet.
    pub fn new(public_key: PublicKey) -> Self {
        PeerStatus {
            public_key,
            allowed_ips: Vec::new(),
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: None,
        }
    }
}

impl DeviceStatus {
    /// The peer with this key, if present.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| &p.public_key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_rejected() {
        let k = PrivateKey::generate().public_key();
        let ok = DeviceUpdate::new().add_peer(PeerConfig::new(k));
        assert!(ok.validate().is_ok());
        let twice = ok.clone().add_peer(PeerConfig::new(k));
        assert!(matches!(twice.validate(), Err(WgError::InvalidUpdate(_))));
        let both = ok.remove_peer(k);
        let err = both.validate().expect_err("add+remove");
        assert!(err.to_string().contains(&k.to_base64()), "{err}");
        assert!(DeviceUpdate::new().is_empty());
        assert!(!DeviceUpdate::new().replace_peers(true).is_empty());
    }
}
