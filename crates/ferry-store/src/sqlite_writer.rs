//! SQLite's hot write transactions — opening a tunnel, phone-home, audit batches, and
//! with them every other tunnel close — run whole on one dedicated thread through
//! rusqlite, instead of statement by statement through sqlx.
//!
//! Why: SQLite has one writer, so every write transaction of a boot storm queues behind
//! the one before it, and the queue moves as fast as one transaction completes. sqlx
//! hands every statement to its connection's thread and the answer back (two thread
//! switches per statement, ~20 statements per booting node on the writer, each waiting
//! for a busy async runtime to pick the answer up); here the thread runs transaction
//! after transaction from its queue, each one hand-off, its statements cached prepared
//! statements run back to back. The transactions themselves are written once, for
//! both backends, against `write_conn::WriteConn` (`tunnel_tx`, `audit_rows`); here they
//! run on a rusqlite transaction, each in one poll.
//!
//! The rest of the store (administration, heartbeats) still writes through sqlx's single
//! writer connection. Both connections write one file and must never overlap (a deferred
//! sqlx transaction could fail to upgrade to a write with SQLITE_BUSY), so such a write
//! first [`pause`](SqliteWriter::pause)s this thread, which waits in its queue like any
//! job until that write is over.

use crate::write_conn::{run_ready, RusqliteConn, Transact};
use crate::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::sync::mpsc;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub(crate) struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
}

/// While held, the writer thread runs nothing (see [`SqliteWriter::pause`]).
pub(crate) struct Paused {
    _resume: mpsc::Sender<()>,
}

impl SqliteWriter {
    /// Opens a second writer connection to the (already migrated, WAL) database and
    /// starts its thread; the thread ends when the writer is dropped.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")?;
        conn.set_prepared_statement_cache_capacity(32);
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ferry-sqlite-writer".into())
            .spawn(move || {
                for job in queue {
                    // A bug in one job must not stop every later write: its transaction
                    // rolls back as the panic unwinds, its caller sees the writer's
                    // answer channel closed, and the thread goes on.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() {
                        tracing::error!("a SQLite write job panicked; its transaction was rolled back");
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `work` in one IMMEDIATE transaction on the writer thread, committed if it
    /// returns `Ok`, rolled back otherwise. A caller that stops waiting does not stop the
    /// job: it runs to its commit or rollback, like any transaction already begun.
    pub(crate) async fn run<J: Transact>(&self, work: J) -> Result<J::Output, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(in_transaction(conn, work));
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        result.await.map_err(|_| abandoned())?
    }

    /// Waits until the thread has finished every job queued before, and keeps it idle
    /// until the returned guard is dropped (or this future is).
    pub(crate) async fn pause(&self) -> Result<Paused, StoreError> {
        let (paused, wait_paused) = tokio::sync::oneshot::channel();
        let (resume, wait_resume) = mpsc::channel::<()>();
        let job: Job = Box::new(move |_| {
            if paused.send(()).is_ok() {
                // Returns when the guard is dropped.
                let _ = wait_resume.recv();
            }
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        wait_paused.await.map_err(|_| stopped())?;
        Ok(Paused { _resume: resume })
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread stopped".into())
}

fn abandoned() -> StoreError {
    StoreError::Unavailable("a SQLite write job ended without an answer (it panicked)".into())
}

fn in_transaction<J: Transact>(conn: &mut Connection, work: J) -> Result<J::Output, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Dropped without a commit (an error), the transaction rolls back.
    let value = run_ready(work.run(&mut RusqliteConn(&tx))).ok_or_else(|| {
        StoreError::Unavailable("a SQLite write job waited for something other than its connection (a bug)".into())
    })??;
    tx.commit()?;
    Ok(value)
}
