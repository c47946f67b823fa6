//! Tunnels, boots and host keys: what the store records of them ([`TunnelStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_core::tunnel::{AgentMode, TunnelNetwork};
use ferry_core::wgkey::PublicKey;
use ferry_core::NodeName;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[async_trait]
pub trait TunnelStore: Send + Sync {
    /// Opens a tunnel for a node, held by `server`'s WireGuard device, replacing the
    /// node's current one (which may belong to another server), in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn open_tunnel(
        &self,
        node: &NodeName,
        public_key: &PublicKey,
        network: &TunnelNetwork,
        ttl_secs: u64,
        mode: Option<AgentMode>,
        server: &str,
        actor: &Actor,
    ) -> Result<OpenedTunnel, StoreError>;
    /// Closes a node's tunnel; None if it had none.
    async fn close_tunnel(
        &self,
        node: &NodeName,
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Option<TunnelRecord>, StoreError>;
    /// Closes each of these tunnels that is still its node's current one (same key), in
    /// one transaction; a tunnel replaced meanwhile is left alone. Returns those closed.
    async fn close_tunnels(
        &self,
        tunnels: &[TunnelRecord],
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Vec<TunnelRecord>, StoreError>;
    /// Closes every tunnel whose expiry is at or before `now` (unix seconds).
    async fn expire_tunnels(&self, now: i64) -> Result<Vec<TunnelRecord>, StoreError>;
    async fn list_tunnels(&self) -> Result<Vec<TunnelRecord>, StoreError>;
    async fn tunnel_by_address(&self, address: IpAddr) -> Result<Option<TunnelRecord>, StoreError>;
    /// Records a completed boot and closes the tunnel it came through, atomically.
    /// Returns the closed tunnel, or None if `tunnel` is no longer active.
    async fn phone_home(&self, tunnel: &TunnelRecord, report: &BootReport) -> Result<Option<TunnelRecord>, StoreError>;
    async fn boot_info(&self, node: &NodeName) -> Result<Option<BootInfo>, StoreError>;
    /// Every reported SSH host key with the node's own FQDN (see
    /// `NodeName::owns_fqdn`) and inventory addresses.
    async fn host_keys(&self) -> Result<Vec<ferry_api::admin::KnownHost>, StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    pub node: NodeName,
    /// The node's WireGuard public key (base64 in JSON and in the database).
    pub public_key: PublicKey,
    pub address: IpAddr,
    pub created_at: i64,
    pub expires_at: i64,
    /// How the node's agent uses the tunnel (None: not declared).
    #[serde(default)]
    pub mode: Option<AgentMode>,
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
