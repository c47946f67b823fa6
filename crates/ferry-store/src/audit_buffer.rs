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
    Entry { at: i64, actor: String, action: String, subject: String, detail: String },
    Flush(oneshot::Sender<()>),
}

pub(crate) fn entry(actor: &str, action: &str, subject: &str, detail: &str) -> Item {
    Item::Entry {
        at: now_secs(),
        actor: actor.into(),
        action: action.into(),
        subject: subject.into(),
        detail: detail.into(),
    }
}

/// Starts the writer; it ends when every sender is gone, after writing what it holds.
pub(crate) fn spawn(
    write: AnyPool,
    backend: Backend,
    sqlite_writer: Option<Arc<SqliteWriter>>,
) -> mpsc::UnboundedSender<Item> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 10_000 {
                match rx.try_recv() {
                    Ok(i) => batch.push(i),
                    Err(_) => break,
                }
            }
            let written = match &sqlite_writer {
                Some(writer) => write_batch_sqlite(writer, &batch).await,
                None => write_batch(&write, backend, &batch).await.map_err(StoreError::from),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, entries = batch.len(), "cannot write audit entries");
            }
            for item in batch {
                if let Item::Flush(done) = item {
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

async fn write_batch_sqlite(writer: &SqliteWriter, batch: &[Item]) -> Result<(), StoreError> {
    let entries: Vec<_> = batch
        .iter()
        .filter_map(|item| match item {
            Item::Entry { at, actor, action, subject, detail } => {
                Some((*at, actor.clone(), action.clone(), subject.clone(), detail.clone()))
            }
            Item::Flush(_) => None,
        })
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    writer.run(move |tx| crate::sqlite_writer::write_audit_batch(tx, &entries)).await
}

async fn write_batch(write: &AnyPool, backend: Backend, batch: &[Item]) -> Result<(), sqlx::Error> {
    // The write path like every other writer (on PostgreSQL: the advisory lock).
    let mut tx = begin_write(write, backend).await?;
    for item in batch {
        if let Item::Entry { at, actor, action, subject, detail } = item {
            sqlx::query(crate::sql::AUDIT_INSERT)
                .bind(at)
                .bind(actor)
                .bind(action)
                .bind(subject)
                .bind(detail)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}
