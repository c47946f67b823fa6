//! One change to the userspace device, whether it came from [`DeviceUpdate`] (ferry
//! itself) or from a UAPI `set=1` request (`wg set`, `wg setconf`): both are applied by
//! the same code ([`super::Shared::apply`]), all or nothing.

use std::net::SocketAddr;

use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::config::DeviceUpdate;
use crate::keys::{PrivateKey, PublicKey};

/// Changes to the device and its peers.
#[derive(Debug, Default)]
pub(crate) struct DevicePatch {
    pub(crate) private_key: Option<PrivateKey>,
    pub(crate) listen_port: Option<u16>,
    pub(crate) fwmark: Option<u32>,
    /// Remove every peer this patch does not name (named ones keep their session).
    pub(crate) replace_peers: bool,
    /// In order; a key may appear in several sections (the UAPI allows it).
    pub(crate) peers: Vec<PeerPatch>,
}

/// Changes to one peer (created unless `update_only`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerPatch {
    pub(crate) public_key: PublicKey,
    pub(crate) remove: bool,
    pub(crate) update_only: bool,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) keepalive: Option<u16>,
    /// `Some(None)` removes the preshared key.
    pub(crate) preshared_key: Option<Option<Zeroizing<[u8; 32]>>>,
    pub(crate) replace_allowed_ips: bool,
    pub(crate) allowed_ips: Vec<IpNet>,
}

impl PeerPatch {
    pub(crate) fn new(public_key: PublicKey) -> PeerPatch {
        PeerPatch {
            public_key,
            remove: false,
            update_only: false,
            endpoint: None,
            keepalive: None,
            preshared_key: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

impl From<DeviceUpdate> for DevicePatch {
    /// Removals first, then the peers, each with exactly the allowed IPs and keepalive
    /// it names ([`crate::PeerConfig`]'s documented semantics).
    fn from(update: DeviceUpdate) -> DevicePatch {
        let removed = update.remove.into_iter().map(|key| PeerPatch { remove: true, ..PeerPatch::new(key) });
        let added = update.peers.into_iter().map(|p| PeerPatch {
            endpoint: p.endpoint,
            keepalive: Some(p.keepalive_secs()),
            replace_allowed_ips: true,
            allowed_ips: p.allowed_ips,
            ..PeerPatch::new(p.public_key)
        });
        DevicePatch {
            private_key: update.private_key,
            listen_port: update.listen_port,
            fwmark: None,
            replace_peers: update.replace_peers,
            peers: removed.chain(added).collect(),
        }
    }
}
