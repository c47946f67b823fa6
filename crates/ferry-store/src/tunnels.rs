//! Tunnel, boot and host-key records: the types the `Store` trait speaks.

use ferry_core::NodeName;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    pub node: NodeName,
    /// The node's WireGuard public key, base64.
    pub public_key: String,
    pub address: IpAddr,
    pub created_at: i64,
    pub expires_at: i64,
    /// `fetch` or `cloud-init` (None: not declared).
    #[serde(default)]
    pub mode: Option<String>,
    /// Which server's WireGuard device holds the peer (`local` on a single server).
    #[serde(default)]
    pub server: String,
}

/// Why a tunnel ended (audit log and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    PhoneHome,
    Expired,
    Replaced,
    Revoked,
    /// The server holding the tunnel stopped beating its heartbeat.
    ServerLost,
    /// The node was deleted from the inventory.
    Deleted,
    /// The node never completed a WireGuard handshake within the deadline: an unused
    /// grant (an agent that refused the server's key, crashed, or never came up).
    NoHandshake,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PhoneHome => "phone-home",
            CloseReason::Expired => "expired",
            CloseReason::Replaced => "replaced",
            CloseReason::Revoked => "revoked",
            CloseReason::ServerLost => "server-lost",
            CloseReason::Deleted => "deleted",
            CloseReason::NoHandshake => "no-handshake",
        }
    }
}

/// A new tunnel and the one it replaced, if the node had one.
#[derive(Debug, Clone)]
pub struct OpenedTunnel {
    pub tunnel: TunnelRecord,
    pub replaced: Option<TunnelRecord>,
}

/// What a node reported when it phoned home.
#[derive(Debug, Clone, Default)]
pub struct BootReport {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    /// `(type, "ssh-ed25519 AAAA...")` pairs.
    pub host_keys: Vec<(String, String)>,
}

/// What `ferry node show` says of a node's last boot: the admin API's shape.
pub use ferry_api::admin::BootInfo;
