//! The audit log in the SQL store ([`AuditStore`]): its queue, its reading and its
//! retention.
//!
//! Retention: the database records how many days of audit entries it keeps
//! (`audit_retention`, migration 0011), and its triggers let a DELETE remove only
//! entries older than that — whoever runs it, ferry or an operator with sqlite3 or psql.
//! Younger entries, every UPDATE and (PostgreSQL) TRUNCATE stay refused, and a change of
//! the retention is written to the log by the database itself.

use crate::audit_buffer::Item;
use crate::audit_rows::{audit, AuditRow};
use crate::sql::SqlStore;
use crate::{format_time, now_secs, Actor, AuditCounts, AuditEntry, AuditFilter, AuditStore, StoreError};
use async_trait::async_trait;
use std::sync::atomic::Ordering::Relaxed;

/// Entries deleted per transaction when pruning: the single writer is held briefly.
const PRUNE_BATCH: i64 = 5_000;
/// Pruning spares an hour more than the retention, so a server clock a little ahead of
/// the database's never asks for a delete the triggers refuse.
const PRUNE_SLACK_SECS: i64 = 3_600;
const DAY_SECS: i64 = 86_400;

impl SqlStore {
    async fn queue_audit(&self, item: Item) -> Result<(), StoreError> {
        // A full queue makes the caller wait: back-pressure, never a dropped entry.
        self.audit_queue.send(item).await.map_err(|_| StoreError::Unavailable("the audit writer stopped".into()))
    }

    /// Waits until everything queued so far is written; with `folds`, also the counts
    /// of folded entries whose window is still open.
    async fn flush_audit(&self, folds: bool) -> Result<(), StoreError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let item = if folds { Item::FlushFolds(done) } else { Item::Flush(done) };
        if self.queue_audit(item).await.is_ok() {
            let _ = wait.await;
        }
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn record_event(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<(), StoreError> {
        self.queue_audit(Item::Entry(AuditRow::new(&actor.0, action, subject, detail))).await
    }

    async fn record_repeatable_event(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.queue_audit(Item::Repeatable(AuditRow::new(&actor.0, action, subject, detail))).await
    }

    fn audit_counts(&self) -> AuditCounts {
        AuditCounts { folded: self.audit_counters.folded.load(Relaxed), lost: self.audit_counters.lost.load(Relaxed) }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flush_audit(true).await
    }

    async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        // Read your writes: queued events land first (folds keep counting).
        self.flush_audit(false).await?;
        let mut conditions = Vec::new();
        if filter.subject.is_some() {
            conditions.push(format!("subject = ${}", conditions.len() + 1));
        }
        if filter.since.is_some() {
            conditions.push(format!("at >= ${}", conditions.len() + 1));
        }
        if filter.after_id.is_some() {
            conditions.push(format!("id > ${}", conditions.len() + 1));
        }
        let filter_sql =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        // Following (after an id): the oldest new entries first; otherwise the newest.
        let order = if filter.after_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT id, at, actor, action, subject, detail FROM audit {filter_sql} ORDER BY id {order} LIMIT ${}",
            conditions.len() + 1
        );
        let mut q = sqlx::query_as::<_, (i64, i64, String, String, String, String)>(&sql);
        if let Some(s) = &filter.subject {
            q = q.bind(s);
        }
        if let Some(t) = filter.since {
            q = q.bind(t);
        }
        if let Some(id) = filter.after_id {
            q = q.bind(id);
        }
        let mut rows = q.bind(filter.limit.clamp(1, 100_000)).fetch_all(&self.read).await?;
        if filter.after_id.is_none() {
            rows.reverse();
        }
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, action, subject, detail)| AuditEntry {
                id,
                at: format_time(at),
                actor,
                action,
                subject,
                detail,
            })
            .collect())
    }

    async fn set_audit_retention(&self, days: u32) -> Result<Option<u32>, StoreError> {
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

    async fn prune_audit(&self) -> Result<u64, StoreError> {
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
                let detail = format!("deleted={total} older_than={} retention_days={days}", format_time(cutoff));
                audit(&mut tx, &Actor("ferry:retention".into()), "audit.pruned", "audit", &detail).await?;
            }
            tx.commit().await?;
            if last {
                return Ok(total);
            }
        }
    }
}
