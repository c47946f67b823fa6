//! ferry's storage. The [`Store`] trait is what the server needs: one subject trait per
//! part of it ([`NodeStore`], [`ProfileStore`], [`TunnelStore`], [`ServerStore`],
//! [`TpmStore`], [`SecretStore`], [`SealingStore`], [`TokenStore`], [`ImageStore`],
//! [`AuditStore`], [`SshCaStore`]), each implemented by [`SqlStore`] in its own module. [`SqlStore`]
//! implements them once for both SQLite (embedded, the default) and PostgreSQL (several
//! servers on one database), through `sqlx::Any`: the SQL is portable (plain types, `$N`
//! placeholders, no engine-only functions in queries), and the same tests run against
//! both. The boot path's write transactions are written once against a connection
//! trait (`write_conn`) that both sqlx and SQLite's rusqlite writer thread implement.
//!
//! Every write is one transaction: a batch of 128 nodes is added completely or not at all.

mod audit;
mod audit_buffer;
mod audit_rows;
mod codec;
mod error;
mod images;
mod kept_conns;
mod location;
mod nodes;
pub mod pcr_quotes;
mod pg_batch;
mod pg_failover;
mod pg_hosts;
mod pg_writer;
pub mod sealing;
pub mod secrets;
pub mod servers;
mod sql;
mod sql_audit;
mod sql_images;
mod sql_inventory;
mod sql_nodes;
mod sql_pcr_quotes;
mod sql_profiles;
mod sql_sealing;
mod sql_secrets;
mod sql_servers;
mod sql_ssh_ca;
mod sql_tokens;
mod sql_tpm;
mod sql_tunnels;
mod sqlite_writer;
pub mod ssh_ca;
mod time;
mod tokens;
pub mod tpm;
mod tunnel_tx;
pub mod tunnels;
mod write_conn;
mod writer;

pub use audit::{Actor, AuditCounts, AuditEntry, AuditFilter, AuditStore};
pub use audit_buffer::{AUDIT_BATCH_MAX, AUDIT_FOLD_WINDOW_SECS, AUDIT_QUEUE_CAPACITY};
pub use error::StoreError;
pub use ferry_core::tunnel::AgentMode;
pub use ferry_core::wgkey::PublicKey;
pub use images::ImageStore;
pub use location::StoreLocation;
pub use nodes::{EnrollmentIdentity, InventoryStore, NodeStore, ProfileStore};
pub use pcr_quotes::{LearnTarget, PcrApproval, PcrQuote, PcrQuoteStore, PCR_BANK};
pub use pg_batch::WriteBatchCounts;
pub use pg_writer::WRITE_LOCK_KEY;
pub use sealing::{SealError, Sealer};
pub use secrets::{SealingKeyCheck, SealingStore, SecretInfo, SecretScope, SecretStore, MAX_SECRET_BYTES};
pub use servers::{ServerRecord, ServerStatus, ServerStore};
pub use sql::SqlStore;
pub use sql_pcr_quotes::describe_pcrs;
pub use ssh_ca::{NewSshCertificate, SigningCa, SshCaRecord, SshCaStore, SshIssueRefusal};
pub use time::{format_time, now_secs};
pub use tokens::{Role, TokenInfo, TokenStore};
pub use tpm::{Discovery, TpmRecord, TpmRegistration, TpmState, TpmStore};
pub use tunnels::{BootInfo, BootReport, CloseReason, OpenedTunnel, TunnelRecord, TunnelStore};

/// The private parsers the fuzz targets call (`fuzz/`, docs/fuzzing.md); not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::pg_hosts::split_hosts;
}

use async_trait::async_trait;

/// Everything the server needs of its store. `Arc<dyn Store>` reaches every subject
/// trait's methods.
#[async_trait]
pub trait Store:
    NodeStore
    + ProfileStore
    + InventoryStore
    + TunnelStore
    + ServerStore
    + TpmStore
    + PcrQuoteStore
    + SecretStore
    + SealingStore
    + TokenStore
    + ImageStore
    + AuditStore
    + SshCaStore
    + Send
    + Sync
    + 'static
{
    /// A trivial query: does the database answer (readiness checks)?
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many tunnel opens and phone-homes were committed in groups so far
    /// (PostgreSQL's group commit; zero on SQLite, whose writer thread runs each alone).
    fn write_batches(&self) -> WriteBatchCounts;
}

/// The store's traits, for callers that hold a concrete store (`SqlStore`) rather than
/// `dyn Store` (whose methods need no import): `use ferry_store::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AuditStore, ImageStore, InventoryStore, NodeStore, PcrQuoteStore, ProfileStore, SealingStore, SecretStore,
        ServerStore, SshCaStore, Store, TokenStore, TpmStore, TunnelStore,
    };
}
