//! Several ferry servers on one PostgreSQL database: each registers itself and beats a
//! heartbeat; a tunnel records which server's WireGuard device holds its peer.

use serde::{Deserialize, Serialize};

/// A ferry server as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: String,
    /// `host:port` of its WireGuard listener.
    pub endpoint: String,
    /// Its WireGuard public key, base64.
    pub public_key: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub heartbeat_at: i64,
    /// The id of its sealing key (`Sealer::key_id`); empty for a server that registered
    /// before key ids were recorded.
    #[serde(default)]
    pub sealing_key_id: String,
}

/// A server and how many active tunnels it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    #[serde(flatten)]
    pub server: ServerRecord,
    pub active_tunnels: i64,
}
