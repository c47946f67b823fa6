//! Every way a store call fails.

use crate::SealError;
use ferry_core::CoreError;

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
    /// PostgreSQL: none of the URL's hosts is a writable primary that answers (a
    /// failover in progress, or the database is down).
    #[error("no writable database: {0}; check PostgreSQL (is the primary up, or a standby promoted?)")]
    NoPrimary(String),
    /// A part of the store itself stopped working (a writer thread or task is gone).
    #[error("the store cannot write: {0}; see the server log, and restart the server")]
    Unavailable(String),
}
