//! PostgreSQL's write path for the boot path's transactions ([`Transact`] jobs): each
//! one a transaction that takes the write lock in the same round trip as its BEGIN, on
//! a connection the write path keeps between transactions.
//!
//! Why: on PostgreSQL every statement is a round trip, and sqlx adds some of its own
//! to each transaction — a ping when the pool hands a connection out, another (in a
//! spawned task) when it takes it back, a BEGIN before the lock. Per booting node that
//! was about a third of the database round trips (docs/performance.md).

use crate::pg_failover::TroubleClock;
use crate::write_conn::{SqlxConn, Transact};
use crate::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The PostgreSQL advisory lock every write transaction takes (`pg_advisory_xact_lock`):
/// "ferry" in ASCII and a 1. One key for every ferry server on the database (public so
/// that tools and tests can find or hold it: `pg_locks` shows it as an advisory lock).
pub const WRITE_LOCK_KEY: i64 = 0x6665_7272_7900_0001;

/// Begins a transaction and takes [`WRITE_LOCK_KEY`] in one round trip (two statements
/// in one simple query) instead of two.
static BEGIN_AND_LOCK: LazyLock<String> =
    LazyLock::new(|| format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"));

/// How long a kept connection is reused before it goes back to the pool (which then
/// applies its own lifetime limits).
const KEEP_AT_MOST: Duration = Duration::from_secs(300);

/// A connection of the write pool, and when the write path took it from the pool.
struct Kept {
    conn: PoolConnection<Any>,
    since: Instant,
}

/// Runs [`Transact`] jobs on PostgreSQL. Connections go back to a short list of its own
/// between transactions, not to the pool. At most `turns` connections are out of the
/// pool at once (the pool keeps at least one for the administration's writes, which
/// begin through sqlx), and one taken before the failover watch last found the
/// database in trouble is never reused.
pub(crate) struct PgWritePath {
    pool: AnyPool,
    kept: Mutex<Vec<Kept>>,
    turns: tokio::sync::Semaphore,
    trouble: Arc<TroubleClock>,
}

impl PgWritePath {
    pub(crate) fn new(pool: AnyPool, turns: usize, trouble: Arc<TroubleClock>) -> Self {
        PgWritePath { pool, kept: Mutex::default(), turns: tokio::sync::Semaphore::new(turns), trouble }
    }

    pub(crate) async fn run<J: Transact>(&self, job: J) -> Result<J::Output, StoreError> {
        let _turn =
            self.turns.acquire().await.map_err(|_| StoreError::Unavailable("the write path is closed".into()))?;
        let kept = match self.take_kept() {
            Some(kept) => kept,
            None => Kept { conn: self.pool.acquire().await?, since: Instant::now() },
        };
        let mut tx = LockedTx::begin(kept).await?;
        match job.run(&mut SqlxConn::new(tx.conn())).await {
            Ok(value) => {
                self.keep(tx.end("COMMIT").await?);
                Ok(value)
            }
            Err(e) => {
                // Should the ROLLBACK fail too, the connection is closed (which rolls
                // back); the job's error is the one to report.
                if let Ok(kept) = tx.end("ROLLBACK").await {
                    self.keep(kept);
                }
                Err(e)
            }
        }
    }

    fn take_kept(&self) -> Option<Kept> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut k) = kept.pop() {
            if self.trouble.predates_trouble(k.since.elapsed()) {
                // Maybe broken, or to a host that is no longer the primary.
                k.conn.close_on_drop();
            } else if k.since.elapsed() < KEEP_AT_MOST {
                return Some(k);
            }
        }
        None
    }

    fn keep(&self, k: Kept) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).push(k);
    }
}

/// A write transaction begun with the advisory lock in one round trip. Not sqlx's
/// `Transaction`: begun with two statements, a lock that fails (a `lock_timeout` or
/// `statement_timeout` set for the role) would leave its connection in an aborted
/// transaction that `Transaction` does not roll back, and the pool would hand it out
/// again. So this guard ends the transaction itself, and a connection left in any other
/// state (an error in BEGIN, COMMIT or ROLLBACK, a caller that stopped waiting) is
/// closed instead of reused: PostgreSQL rolls back the transaction of a closed
/// connection.
struct LockedTx {
    /// Until the transaction ends.
    kept: Option<Kept>,
}

impl LockedTx {
    async fn begin(kept: Kept) -> Result<LockedTx, StoreError> {
        let mut tx = LockedTx { kept: Some(kept) };
        simple_query(tx.conn(), BEGIN_AND_LOCK.as_str()).await?;
        Ok(tx)
    }

    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.kept.as_mut().expect("a transaction holds its connection until it ends").conn
    }

    /// Ends the transaction with `statement` (COMMIT or ROLLBACK); gives the connection
    /// back.
    async fn end(mut self, statement: &'static str) -> Result<Kept, StoreError> {
        simple_query(self.conn(), statement).await?;
        Ok(self.kept.take().expect("a transaction holds its connection until it ends"))
    }
}

impl Drop for LockedTx {
    fn drop(&mut self) {
        if let Some(k) = &mut self.kept {
            k.conn.close_on_drop();
        }
    }
}

/// Runs `sql` (one or more statements, no parameters) in one simple-query round trip.
async fn simple_query(conn: &mut AnyConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(drop)
}
