//! ferry's storage. The [`Store`] trait is what the server needs; [`SqlStore`] implements
//! it once for both SQLite (embedded, the default) and PostgreSQL (several servers on one
//! database), through `sqlx::Any`: the SQL is portable (plain types, `$N` placeholders, no
//! engine-only functions in queries), and the same tests run against both.
//!
//! Every write is one transaction: a batch of 128 nodes is added completely or not at all.

mod audit_buffer;
mod location;
pub mod sealing;
pub mod secrets;
pub mod servers;
mod sql;
mod sql_audit;
mod sql_images;
mod sql_sealing;
mod sql_secrets;
mod sql_servers;
mod sql_tokens;
mod sql_tpm;
mod sql_tunnels;
mod sqlite_writer;
pub mod tpm;
pub mod tunnels;

pub use audit_buffer::{AUDIT_BATCH_MAX, AUDIT_FOLD_WINDOW_SECS, AUDIT_QUEUE_CAPACITY};
/// The store returns these as the admin API sends them.
pub use ferry_api::admin::{AuditEntry, TokenInfo};
pub use location::StoreLocation;
pub use sealing::{SealError, Sealer};
pub use secrets::{SecretInfo, SecretScope, MAX_SECRET_BYTES};
pub use servers::{ServerRecord, ServerStatus};
pub use sql::{SqlStore, WRITE_LOCK_KEY};
pub use sql_sealing::SealingKeyCheck;
pub use tpm::{Discovery, TpmRecord, TpmRegistration, TpmState};
pub use tunnels::{BootInfo, BootReport, CloseReason, OpenedTunnel, TunnelRecord};

use async_trait::async_trait;
use ferry_api::admin::{AddNodes, AddProfiles, MergedNodeView, NodePatch, NodeView, ProfilePatch, ProfileView};
use ferry_api::Secret;
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::{CoreError, MacAddr, NodeName, ProfileName};
use std::net::IpAddr;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] CoreError),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the tunnel address pool {0} is exhausted")]
    PoolExhausted(String),
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, String),
    /// A part of the store itself stopped working (a writer thread or task is gone).
    #[error("the store cannot write: {0}; see the server log, and restart the server")]
    Unavailable(String),
}

/// Who made a change, for the audit log (`uid:0`, later a token name).
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Which audit entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    /// Entries at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Entries after this id, oldest first.
    pub after_id: Option<i64>,
    pub limit: i64,
}

/// See [`Store::audit_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    pub folded: u64,
    pub lost: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn add_nodes(&self, req: AddNodes, actor: &Actor) -> Result<usize, StoreError>;
    async fn set_nodes(&self, names: &[NodeName], patch: &NodePatch, actor: &Actor) -> Result<usize, StoreError>;
    /// Deletes nodes (all or none), closing their tunnels in the same transaction
    /// (audited `tunnel.close`, reason `deleted`). Returns the closed tunnels.
    async fn delete_nodes(&self, names: &[NodeName], actor: &Actor) -> Result<Vec<TunnelRecord>, StoreError>;
    async fn list_nodes(&self) -> Result<Vec<NodeView>, StoreError>;
    async fn get_node(&self, name: &NodeName) -> Result<NodeView, StoreError>;
    async fn merged_node(&self, name: &NodeName) -> Result<MergedNodeView, StoreError>;
    /// The node's merged settings and its asset tag in clear, from one snapshot, for
    /// identity checks only (enrollment, boot gating). Never return the tag to an API
    /// caller.
    async fn node_identity(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Secret>), StoreError>;

    async fn add_profiles(&self, req: AddProfiles, actor: &Actor) -> Result<usize, StoreError>;
    async fn set_profiles(
        &self,
        names: &[ProfileName],
        patch: &ProfilePatch,
        actor: &Actor,
    ) -> Result<usize, StoreError>;
    async fn delete_profiles(&self, names: &[ProfileName], actor: &Actor) -> Result<usize, StoreError>;
    async fn list_profiles(&self) -> Result<Vec<ProfileView>, StoreError>;
    async fn get_profile(&self, name: &ProfileName) -> Result<ProfileView, StoreError>;

    /// The node whose interface has this MAC.
    async fn node_by_mac(&self, mac: &MacAddr) -> Result<Option<NodeName>, StoreError>;
    /// Opens a tunnel for a node, held by `server`'s WireGuard device, replacing the
    /// node's current one (which may belong to another server), in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn open_tunnel(
        &self,
        node: &NodeName,
        public_key: &str,
        network: &TunnelNetwork,
        ttl_secs: u64,
        mode: Option<&str>,
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
    /// Every node's recorded SSH host keys: `(node, "type key")`.
    async fn host_keys(&self) -> Result<Vec<(NodeName, String)>, StoreError>;
    /// The id of the sealing key this store handle seals with ([`Sealer::key_id`]).
    fn sealing_key_id(&self) -> &str;
    /// Proves at start-up, before the server registers, that this handle's sealing key is
    /// the store's: it opens the check value recorded for its key id. With no key
    /// recorded yet, records it — on an empty store, or on a store made before keys
    /// were recorded if the key opens most of its sealed values (audited as
    /// `store.sealing-key`). Refused (SealError) when the store records only other keys,
    /// or when the key does not open most of the sealed values.
    async fn check_sealing_key(&self, actor: &Actor) -> Result<SealingKeyCheck, StoreError>;
    /// Registers a server, or re-registers it at a restart (upsert by id; `started_at`
    /// and `heartbeat_at` become now). Audited as `server.start`.
    async fn register_server(&self, server: &ServerRecord) -> Result<(), StoreError>;
    /// Sets `heartbeat_at = now` for `id`; NotFound (kind `server`) if not registered.
    async fn heartbeat(&self, id: &str, now: i64) -> Result<(), StoreError>;
    /// Every server with its count of active tunnels, ordered by id.
    async fn list_servers(&self) -> Result<Vec<ServerStatus>, StoreError>;
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

    /// Appends an audit entry outside any other change (enrollment verdicts, deliveries).
    /// Such entries are written in batches shortly after; [`Store::audit`] sees them.
    /// When the queue is full ([`AUDIT_QUEUE_CAPACITY`]) this waits for room.
    async fn record_event(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<(), StoreError>;
    /// [`Store::record_event`] for an event a caller may repeat at will (a boot-script
    /// fetch, a document delivery): the first is written; identical ones (same actor,
    /// action, subject, detail) in the [`AUDIT_FOLD_WINDOW_SECS`] after it are counted
    /// and written as one entry with `repeated=N` when that window ends, or at
    /// [`Store::flush`].
    async fn record_repeatable_event(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    /// Events folded into counts, and entries lost (the database refused them even after
    /// retries), since the store was opened.
    fn audit_counts(&self) -> AuditCounts;
    /// Records the audit retention in the database, whose triggers let only entries
    /// older than it be deleted (0: keep every entry). A change is audited by the
    /// database itself (`audit.retention`). Returns the previous value if it changed.
    async fn set_audit_retention(&self, days: u32) -> Result<Option<u32>, StoreError>;
    /// Deletes the audit entries older than the retention the database records, in
    /// batches; audited (`audit.pruned`) when it deleted any. Returns how many.
    async fn prune_audit(&self) -> Result<u64, StoreError>;

    /// Registers an image whose artifacts are already in the object store.
    async fn add_image(&self, image: &ferry_api::image::ImageRecord, actor: &Actor) -> Result<(), StoreError>;
    async fn list_images(&self) -> Result<Vec<ferry_api::image::ImageRecord>, StoreError>;
    async fn get_image(&self, name: &str) -> Result<Option<ferry_api::image::ImageRecord>, StoreError>;
    /// Deletes an image; refused while a node or profile names it.
    async fn delete_image(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;

    /// Writes every queued audit entry and the counts of folded ones (at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;
    /// A trivial query: does the database answer (readiness checks)?
    async fn ping(&self) -> Result<(), StoreError>;

    /// Registers (`Some`) or clears (`None`) a node's TPM; the EK must not identify
    /// another node.
    async fn set_node_tpm(
        &self,
        node: &NodeName,
        tpm: Option<&TpmRegistration>,
        actor: &Actor,
    ) -> Result<(), StoreError>;
    /// TPM records, of one node or all.
    async fn node_tpms(&self, only: Option<&NodeName>) -> Result<Vec<(NodeName, TpmRecord)>, StoreError>;
    /// Trust on first use: records an EK that proved itself at enrollment as pending if
    /// the node holds none and no other node holds it. A held EK (pending or
    /// registered) is never replaced: a different one is recorded as its conflict.
    async fn record_pending_tpm(
        &self,
        node: &NodeName,
        tpm: &TpmRegistration,
        actor: &Actor,
    ) -> Result<Discovery, StoreError>;
    /// Pending → registered, only if the pending EK has exactly this fingerprint.
    async fn approve_tpm(&self, node: &NodeName, fingerprint: &str, actor: &Actor) -> Result<TpmRecord, StoreError>;

    /// Sets (replaces) a template secret; sealed at rest, audited without its value.
    async fn set_secret(&self, name: &str, scope: &SecretScope, value: &[u8], actor: &Actor) -> Result<(), StoreError>;
    async fn delete_secret(&self, name: &str, scope: &SecretScope, actor: &Actor) -> Result<(), StoreError>;
    /// Records a token by the SHA-256 (hex) of its value.
    async fn create_token(
        &self,
        name: &str,
        role: &str,
        hash: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<(), StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
    async fn revoke_token(&self, name: &str, actor: &Actor) -> Result<(), StoreError>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError>;
    /// Names, scopes, sizes and times; never values.
    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, StoreError>;
    /// The secrets a node's templates see (node over profiles over global), opened.
    async fn secrets_for(
        &self,
        node: &NodeName,
        profiles: &[ProfileName],
    ) -> Result<std::collections::BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>, StoreError>;

    /// The newest `limit` audit entries (optionally about one subject), oldest first.
    async fn audit(&self, subject: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_query(&AuditFilter { subject: subject.map(str::to_owned), limit, ..Default::default() }).await
    }
    /// Audit entries: the newest `limit` matching ones (oldest first), or with
    /// `after_id` the next `limit` after it (for following the log).
    async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Now, in unix seconds (the store's unit of time).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn format_time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
