//! Connections taken out of a sqlx pool and kept between uses by the store's hot paths
//! (PostgreSQL's write transactions, read snapshots on both backends).
//!
//! Why: sqlx 0.8 pings every connection its pool takes back (unconditionally, a round
//! trip on PostgreSQL, a hand-off to the connection's thread on SQLite). A connection
//! kept here goes back to a short list instead; it returns to the pool only when it is
//! too old. One taken before the failover watch last found PostgreSQL in trouble is
//! closed instead of reused (it may be broken, or to a host that is no longer the
//! primary), and one whose use did not end cleanly (an error, a caller that stopped
//! waiting) is closed, never kept: its session state is unknown.

use crate::pg_failover::TroubleClock;
use crate::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a kept connection is reused before it goes back to the pool (which then
/// applies its own lifetime limits).
const KEEP_AT_MOST: Duration = Duration::from_secs(300);

/// A connection of the pool, and when it was taken from the pool.
struct Kept {
    conn: PoolConnection<Any>,
    since: Instant,
}

/// At most `turns` connections of `pool` out at once (the rest stay in the pool for
/// everything else that uses it), each reused between uses.
pub(crate) struct KeptConnections {
    pool: AnyPool,
    kept: Mutex<Vec<Kept>>,
    turns: Arc<tokio::sync::Semaphore>,
    /// PostgreSQL: when the failover watch last found the database in trouble.
    trouble: Option<Arc<TroubleClock>>,
}

impl KeptConnections {
    pub(crate) fn new(pool: AnyPool, turns: usize, trouble: Option<Arc<TroubleClock>>) -> Arc<Self> {
        let turns = Arc::new(tokio::sync::Semaphore::new(turns.max(1)));
        Arc::new(KeptConnections { pool, kept: Mutex::default(), turns, trouble })
    }

    /// A connection for one use: a kept one if there is a usable one, else one from the
    /// pool. Waits for a turn first.
    pub(crate) async fn lend(self: &Arc<Self>) -> Result<Lent, StoreError> {
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store's connections are closed".into()))?;
        let kept = match self.take_kept() {
            Some(kept) => kept,
            None => Kept { conn: self.pool.acquire().await?, since: Instant::now() },
        };
        Ok(Lent { owner: self.clone(), kept: Some(kept), _turn: turn })
    }

    /// One connection broke: every connection opened before may have too. Closes the
    /// kept ones, and (PostgreSQL) tells the pools to close their older ones instead of
    /// handing them out, as the failover watch does when it finds trouble.
    pub(crate) fn connections_broke(&self) {
        if let Some(trouble) = &self.trouble {
            trouble.note();
        }
        for mut k in self.kept.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            k.conn.close_on_drop();
        }
    }

    fn take_kept(&self) -> Option<Kept> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut k) = kept.pop() {
            if self.trouble.as_ref().is_some_and(|t| t.predates_trouble(k.since.elapsed())) {
                k.conn.close_on_drop();
            } else if k.since.elapsed() < KEEP_AT_MOST {
                return Some(k);
            }
        }
        None
    }
}

/// A connection out for one use. [`give_back`](Lent::give_back) keeps it for the next
/// use; dropped without that, it is closed (PostgreSQL then rolls back whatever
/// transaction it was in).
pub(crate) struct Lent {
    owner: Arc<KeptConnections>,
    kept: Option<Kept>,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl Lent {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.kept.as_mut().expect("a lent connection is there until given back").conn
    }

    /// For the next use: its use ended cleanly (no transaction left open).
    pub(crate) fn give_back(mut self) {
        if let Some(k) = self.kept.take() {
            self.owner.kept.lock().unwrap_or_else(|p| p.into_inner()).push(k);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(k) = &mut self.kept {
            k.conn.close_on_drop();
        }
    }
}

/// Runs `sql` (one or more statements, no parameters) in one simple-query round trip.
pub(crate) async fn simple_query(conn: &mut AnyConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(drop)
}

/// A read snapshot on a kept connection: PostgreSQL's REPEATABLE READ, READ ONLY
/// transaction, or a SQLite read transaction. Used as its connection (`&mut *tx`);
/// [`commit`](Self::commit) ends it and keeps the connection, dropping it closes it.
pub(crate) struct ReadTx {
    lent: Lent,
}

impl ReadTx {
    /// Begins with `begin` (the backend's BEGIN statement) on a connection of `conns`.
    pub(crate) async fn begin(conns: &Arc<KeptConnections>, begin: &str) -> Result<ReadTx, StoreError> {
        let mut lent = conns.lend().await?;
        simple_query(lent.conn(), begin).await?;
        Ok(ReadTx { lent })
    }

    /// Ends the snapshot (it wrote nothing: COMMIT and ROLLBACK are alike).
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        simple_query(self.lent.conn(), "COMMIT").await?;
        self.lent.give_back();
        Ok(())
    }
}

impl std::ops::Deref for ReadTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.lent.kept.as_ref().expect("a lent connection is there until given back").conn
    }
}

impl std::ops::DerefMut for ReadTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.lent.conn()
    }
}
