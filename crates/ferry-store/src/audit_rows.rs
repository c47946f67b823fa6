//! Writing audit entries: one statement, used by every write transaction on either
//! connection ([`WriteConn`]), and the batches of entries queued outside other changes.
//! Several entries go in as multi-row inserts of a few fixed sizes, so that a batch
//! costs a handful of statements (on PostgreSQL, round trips) instead of one per entry,
//! and each size stays one cached prepared statement.

use crate::write_conn::{Param, SqlxConn, Transact, WriteConn};
use crate::{now_secs, Actor, StoreError};
use sqlx::AnyConnection;
use std::sync::Arc;

const AUDIT_INSERT: &str = "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)";

/// The sizes of the multi-row inserts a run of entries is cut into, largest first (at
/// most 64 × 5 = 320 parameters: far below either backend's limit).
const AUDIT_INSERT_SIZES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Each of [`AUDIT_INSERT_SIZES`] with its multi-row insert.
fn audit_inserts() -> &'static [(usize, String)] {
    static STATEMENTS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let rows = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| 5 * i)
                .map(|p| format!("(${}, ${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4, p + 5))
                .collect()
        };
        AUDIT_INSERT_SIZES
            .iter()
            .map(|&n| {
                (n, format!("INSERT INTO audit (at, actor, action, subject, detail) VALUES {}", rows(n).join(", ")))
            })
            .collect()
    })
}

/// One audit entry as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditRow {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

impl AuditRow {
    pub(crate) fn new(actor: &str, action: &str, subject: &str, detail: &str) -> AuditRow {
        AuditRow {
            at: now_secs(),
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

/// Appends an entry inside the caller's transaction.
pub(crate) async fn insert_audit<C: WriteConn>(
    conn: &mut C,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.execute(AUDIT_INSERT, &[at.into(), actor.into(), action.into(), subject.into(), detail.into()]).await?;
    Ok(())
}

/// Appends entries inside the caller's transaction, in order, in as few statements as
/// [`AUDIT_INSERT_SIZES`] allow.
pub(crate) async fn insert_audit_rows<C: WriteConn>(conn: &mut C, rows: &[AuditRow]) -> Result<(), StoreError> {
    let mut rest = rows;
    // The last size is 1: every entry is written.
    for (size, sql) in audit_inserts() {
        while rest.len() >= *size {
            let (chunk, after) = rest.split_at(*size);
            let mut params = Vec::with_capacity(5 * size);
            for AuditRow { at, actor, action, subject, detail } in chunk {
                params.extend([Param::Int(*at), actor.into(), action.into(), subject.into(), detail.into()]);
            }
            conn.execute(sql, &params).await?;
            rest = after;
        }
    }
    Ok(())
}

/// [`insert_audit`], now, for the sqlx transactions of administration.
pub(crate) async fn audit(
    conn: &mut AnyConnection,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    insert_audit(&mut SqlxConn::new(conn), now_secs(), &actor.0, action, subject, detail).await
}

/// Audit entries queued outside other changes, written in one transaction.
pub(crate) struct AuditBatch(pub Arc<Vec<AuditRow>>);

impl Transact for AuditBatch {
    type Output = ();
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<(), StoreError> {
        insert_audit_rows(conn, &self.0).await
    }
}
