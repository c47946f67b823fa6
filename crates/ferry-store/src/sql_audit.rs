//! The audit log's queue and its retention.
//!
//! Retention: the database records how many days of audit entries it keeps
//! (`audit_retention`, migration 0011), and its triggers let a DELETE remove only
//! entries older than that — whoever runs it, ferry or an operator with sqlite3 or psql.
//! Younger entries, every UPDATE and (PostgreSQL) TRUNCATE stay refused, and a change of
//! the retention is written to the log by the database itself.

use crate::audit_buffer::Item;
use crate::sql::{audit, SqlStore};
use crate::{now_secs, Actor, StoreError};

/// Entries deleted per transaction when pruning: the single writer is held briefly.
const PRUNE_BATCH: i64 = 5_000;
/// Pruning spares an hour more than the retention, so a server clock a little ahead of
/// the database's never asks for a delete the triggers refuse.
const PRUNE_SLACK_SECS: i64 = 3_600;
const DAY_SECS: i64 = 86_400;

impl SqlStore {
    pub(crate) async fn queue_audit(&self, item: Item) -> Result<(), StoreError> {
        // A full queue makes the caller wait: back-pressure, never a dropped entry.
        self.audit_queue.send(item).await.map_err(|_| StoreError::Unavailable("the audit writer stopped".into()))
    }

    /// Waits until everything queued so far is written; with `folds`, also the counts
    /// of folded entries whose window is still open.
    pub(crate) async fn flush_audit(&self, folds: bool) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let item = if folds { Item::FlushFolds(done) } else { Item::Flush(done) };
        if self.queue_audit(item).await.is_ok() {
            let _ = wait.await;
        }
        Ok(())
    }

    pub(crate) async fn set_audit_retention_impl(&self, days: u32) -> Result<Option<u32>, StoreError> {
        let mut tx = self.begin_write().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT days FROM audit_retention WHERE id = 1").fetch_optional(&mut *tx).await?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(
                "audit_retention".into(),
                "the retention row is missing; no audit entry can be deleted until it is restored".into(),
            ));
        };
        if current == i64::from(days) {
            return Ok(None);
        }
        // The database's trigger writes the `audit.retention` entry.
        sqlx::query("UPDATE audit_retention SET days = $1 WHERE id = 1")
            .bind(i64::from(days))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(u32::try_from(current).unwrap_or(u32::MAX)))
    }

    pub(crate) async fn prune_audit_impl(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let mut tx = self.begin_write().await?;
            let days: Option<i64> =
                sqlx::query_scalar("SELECT days FROM audit_retention WHERE id = 1").fetch_optional(&mut *tx).await?;
            let days = days.unwrap_or(0);
            if days <= 0 {
                return Ok(total);
            }
            let cutoff = now_secs() - days * DAY_SECS - PRUNE_SLACK_SECS;
            let deleted = sqlx::query("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 LIMIT $2)")
                .bind(cutoff)
                .bind(PRUNE_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            total += deleted;
            let last = deleted < PRUNE_BATCH as u64;
            if last && total > 0 {
                let detail = format!("deleted={total} older_than={} retention_days={days}", crate::format_time(cutoff));
                audit(&mut tx, &Actor("ferry:retention".into()), "audit.pruned", "audit", &detail).await?;
            }
            tx.commit().await?;
            if last {
                return Ok(total);
            }
        }
    }
}
