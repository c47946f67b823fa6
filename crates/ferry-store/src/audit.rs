//! The audit log: who changed what, append-only in the database ([`AuditStore`]).

use crate::StoreError;
use async_trait::async_trait;

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an audit entry outside any other change (enrollment verdicts, deliveries).
    /// Such entries are written in batches shortly after; [`AuditStore::audit`] sees them.
    /// When the queue is full ([`crate::AUDIT_QUEUE_CAPACITY`]) this waits for room.
    async fn record_event(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<(), StoreError>;
    /// [`AuditStore::record_event`] for an event a caller may repeat at will (a
    /// boot-script fetch, a document delivery): the first is written; identical ones
    /// (same actor, action, subject, detail) in the [`crate::AUDIT_FOLD_WINDOW_SECS`]
    /// after it are counted and written as one entry with `repeated=N` when that window
    /// ends, or at [`AuditStore::flush`].
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
    /// Writes every queued audit entry and the counts of folded ones (at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;
    /// The newest `limit` audit entries (optionally about one subject), oldest first.
    async fn audit(&self, subject: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_query(&AuditFilter { subject: subject.map(str::to_owned), limit, ..Default::default() }).await
    }
    /// Audit entries: the newest `limit` matching ones (oldest first), or with
    /// `after_id` the next `limit` after it (for following the log).
    async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Who made a change, for the audit log (`uid:0`, `token:NAME`, `node:NAME`, ...).
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

/// See [`AuditStore::audit_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    pub folded: u64,
    pub lost: u64,
}

/// One audit log entry: the admin API's shape.
pub use ferry_api::admin::AuditEntry;
