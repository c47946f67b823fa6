//! Several ferry servers on one PostgreSQL database: each registers itself and beats a
//! heartbeat; a tunnel records which server's WireGuard device holds its peer
//! ([`ServerStore`]).

use crate::{Actor, StoreError, TunnelRecord};
use async_trait::async_trait;
use ferry_core::wgkey::PublicKey;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

#[async_trait]
pub trait ServerStore: Send + Sync {
    /// Registers a server, or re-registers it at a restart (upsert by id; `started_at`
    /// and `heartbeat_at` become now). Audited as `server.start`.
    async fn register_server(&self, server: &ServerRecord) -> Result<(), StoreError>;
    /// Sets `heartbeat_at = now` for `id`; NotFound (kind `server`) if not registered.
    async fn heartbeat(&self, id: &str, now: i64) -> Result<(), StoreError>;
    /// Every server with its count of active tunnels, ordered by id.
    async fn list_servers(&self) -> Result<Vec<ServerStatus>, StoreError>;
    /// Forgets a server that is gone for good: refused (Conflict) while its heartbeat is
    /// at most `lost_after_secs` old at `now`, or while it still holds tunnels (the
    /// others close those once it is lost). Audited as `server.remove`.
    async fn remove_server(&self, id: &str, now: i64, lost_after_secs: i64, actor: &Actor) -> Result<(), StoreError>;
    /// Closes (audited `tunnel.close`, reason `server-lost`) every tunnel held by a server
    /// other than `except` whose heartbeat is older than `now - grace_secs`, or that has
    /// no server row at all. Returns the closed tunnels.
    async fn close_tunnels_of_lost_servers(
        &self,
        now: i64,
        grace_secs: i64,
        except: &str,
    ) -> Result<Vec<TunnelRecord>, StoreError>;
    /// Yields `()` whenever another server closed or replaced a tunnel held by `server`
    /// (and once after the listener reconnects, since notifications may have been lost
    /// meanwhile), so that server can reconcile its device. PostgreSQL only: SQLite has
    /// one server, and gives `None`. The watch ends when the receiver is dropped.
    async fn watch_tunnels(&self, server: &str) -> Result<Option<UnboundedReceiver<()>>, StoreError>;
}

/// A ferry server as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: String,
    /// `host:port` of its WireGuard listener.
    pub endpoint: String,
    /// Its WireGuard public key (base64 in JSON and in the database).
    pub public_key: PublicKey,
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
