//! Writing audit entries: one statement, used by every write transaction on either
//! connection ([`WriteConn`]), and the batches of entries queued outside other changes.

use crate::write_conn::{SqlxConn, Transact, WriteConn};
use crate::{now_secs, Actor, StoreError};
use sqlx::AnyConnection;
use std::sync::Arc;

const AUDIT_INSERT: &str = "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)";

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
        for AuditRow { at, actor, action, subject, detail } in self.0.iter() {
            insert_audit(conn, *at, actor, action, subject, detail).await?;
        }
        Ok(())
    }
}
