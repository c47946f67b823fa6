//! The write path: which connection a write transaction runs on, and how writers take
//! turns. SQLite admits one writer: the boot path's transactions ([`Transact`] jobs)
//! run on the writer thread (`sqlite_writer`), and every other write goes through sqlx's
//! single writer connection after pausing that thread. PostgreSQL: every write
//! transaction first takes one transaction-level advisory lock, so the writers of every
//! server on the database are serialized exactly as SQLite's single writer serializes
//! them (check-then-insert code and the tunnel address search cannot race).

use crate::pg_batch::{BatchQueue, Batchable};
use crate::pg_writer::{PgWritePath, WRITE_LOCK_KEY};
use crate::sqlite_writer::{Paused, SqliteWriter};
use crate::write_conn::Transact;
use crate::StoreError;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};

/// Which database engine is behind the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A write transaction through sqlx; used as its connection (`&mut *tx`). Dropped
/// without [`commit`](Self::commit), it rolls back.
pub(crate) struct WriteTx {
    // Declared first, dropped first: the transaction ends before the writer resumes.
    tx: Transaction<'static, Any>,
    _paused: Option<Paused>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        let WriteTx { tx, _paused } = self;
        tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// Where write transactions run (shared by the store and its audit writer).
pub(crate) struct Writer {
    backend: Backend,
    /// SQLite: the single sqlx writer connection. PostgreSQL: a pool of its own, so
    /// writers waiting for the advisory lock never take the readers' connections.
    pool: AnyPool,
    /// SQLite: the boot path's own thread.
    sqlite: Option<SqliteWriter>,
    /// PostgreSQL: the boot path's transactions, on connections of `pool`.
    postgres: Option<PgWritePath>,
    /// PostgreSQL: tunnel opens and phone-homes, committed in groups (`pg_batch`).
    batches: Option<BatchQueue>,
}

impl Writer {
    pub(crate) fn new(
        backend: Backend,
        pool: AnyPool,
        sqlite: Option<SqliteWriter>,
        postgres: Option<(PgWritePath, BatchQueue)>,
    ) -> Self {
        let (postgres, batches) = postgres.unzip();
        Writer { backend, pool, sqlite, postgres, batches }
    }

    /// Runs a transaction written for both connections: on SQLite whole on the writer
    /// thread, on PostgreSQL through sqlx after the advisory lock (`pg_writer`).
    pub(crate) async fn run<J: Transact>(&self, job: J) -> Result<J::Output, StoreError> {
        if let Some(thread) = &self.sqlite {
            return thread.run(job).await;
        }
        match &self.postgres {
            Some(path) => path.run(job).await,
            None => Err(StoreError::Unavailable("no write path for this store (a bug)".into())),
        }
    }

    /// Runs one of the boot path's two transactions (tunnel open, phone-home): on SQLite
    /// as [`run`](Self::run) does, on PostgreSQL in a group commit with others queued
    /// at the same time (`pg_batch`).
    pub(crate) async fn run_batchable<J: Batchable>(&self, job: J) -> Result<J::Output, StoreError> {
        match &self.batches {
            Some(batches) => batches.run(job).await,
            None => self.run(job).await,
        }
    }

    /// Group commits so far (PostgreSQL; zero on SQLite).
    pub(crate) fn write_batches(&self) -> crate::WriteBatchCounts {
        self.batches.as_ref().map(BatchQueue::counts).unwrap_or_default()
    }

    /// Begins a sqlx write transaction. SQLite: the writer thread is paused until it
    /// ends. PostgreSQL: serialized with every other writer of the database (all ferry
    /// servers) by the advisory lock. The transaction stays READ COMMITTED on purpose:
    /// each statement after the lock sees everything committed by the writers before it
    /// (a REPEATABLE READ snapshot would be taken before the lock wait).
    pub(crate) async fn begin(&self) -> Result<WriteTx, StoreError> {
        let paused = match &self.sqlite {
            Some(thread) => Some(thread.pause().await?),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *tx).await?;
        }
        Ok(WriteTx { tx, _paused: paused })
    }
}
