//! Audit entries that are not part of another change (enrollment verdicts, document
//! deliveries) are queued and written in batches: one transaction for everything that
//! arrived while the previous batch was being written. Under a boot storm this turns
//! thousands of one-row transactions through the single writer into a few.
//! Readers of the log flush first, so `ferry audit` always sees every event that
//! happened before it asked.

use crate::now_secs;
use crate::sql::{begin_write, Backend};
use crate::sqlite_writer::SqliteWriter;
use crate::StoreError;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub(crate) enum Item {
    Entry(AuditRow),
    Flush(oneshot::Sender<()>),
}

/// One audit entry as it is written.
pub(crate) struct AuditRow {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

pub(crate) fn entry(actor: &str, action: &str, subject: &str, detail: &str) -> Item {
    Item::Entry(AuditRow {
        at: now_secs(),
        actor: actor.into(),
        action: action.into(),
        subject: subject.into(),
        detail: detail.into(),
    })
}

/// Starts the writer; it ends when every sender is gone, after writing what it holds.
pub(crate) fn spawn(
    write: AnyPool,
    backend: Backend,
    sqlite_writer: Option<Arc<SqliteWriter>>,
) -> mpsc::UnboundedSender<Item> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
    tokio::spawn(async move {
        while let Some(mut item) = rx.recv().await {
            // Everything queued meanwhile (up to 10,000 entries) goes in one transaction.
            let (mut rows, mut flushes) = (Vec::new(), Vec::new());
            loop {
                match item {
                    Item::Entry(row) => rows.push(row),
                    Item::Flush(done) => flushes.push(done),
                }
                if rows.len() >= 10_000 {
                    break;
                }
                match rx.try_recv() {
                    Ok(more) => item = more,
                    Err(_) => break,
                }
            }
            let count = rows.len();
            let written = match &sqlite_writer {
                _ if rows.is_empty() => Ok(()),
                Some(writer) => writer.run(move |tx| crate::sqlite_writer::write_audit_batch(tx, &rows)).await,
                None => write_batch(&write, backend, &rows).await.map_err(StoreError::from),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, entries = count, "cannot write audit entries");
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    tx
}

async fn write_batch(write: &AnyPool, backend: Backend, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
    // The write path like every other writer (on PostgreSQL: the advisory lock).
    let mut tx = begin_write(write, backend).await?;
    for AuditRow { at, actor, action, subject, detail } in rows {
        sqlx::query(crate::sql::AUDIT_INSERT)
            .bind(at)
            .bind(actor)
            .bind(action)
            .bind(subject)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
