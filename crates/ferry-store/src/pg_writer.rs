//! PostgreSQL's write path for the boot path's transactions ([`Transact`] jobs): each
//! one a transaction that takes the write lock in the same round trip as its BEGIN, on
//! a connection the write path keeps between transactions.
//!
//! Why: on PostgreSQL every statement is a round trip, and sqlx adds some of its own
//! to each transaction — a ping when the pool hands a connection out, another (in a
//! spawned task) when it takes it back, a BEGIN before the lock. Per booting node that
//! was about a third of the database round trips (docs/performance.md).

use crate::kept_conns::{simple_query, KeptConnections};
use crate::write_conn::{SqlxConn, Transact};
use crate::StoreError;
use std::sync::{Arc, LazyLock};

/// The PostgreSQL advisory lock every write transaction takes (`pg_advisory_xact_lock`):
/// "ferry" in ASCII and a 1. One key for every ferry server on the database (public so
/// that tools and tests can find or hold it: `pg_locks` shows it as an advisory lock).
pub const WRITE_LOCK_KEY: i64 = 0x6665_7272_7900_0001;

/// Begins a transaction and takes [`WRITE_LOCK_KEY`] in one round trip (two statements
/// in one simple query) instead of two.
pub(crate) static BEGIN_AND_LOCK: LazyLock<String> =
    LazyLock::new(|| format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"));

/// Runs [`Transact`] jobs on PostgreSQL, on connections kept between transactions
/// (`kept_conns`: no pool pings; one from before the failover watch's last trouble is
/// never reused).
///
/// Not sqlx's `Transaction`: begun with two statements, a lock that fails (a
/// `lock_timeout` or `statement_timeout` set for the role) would leave its connection in
/// an aborted transaction that `Transaction` does not roll back, and the pool would hand
/// it out again. Here the transaction is ended by this code, and a connection left in
/// any other state (an error in BEGIN, COMMIT or ROLLBACK, a caller that stopped
/// waiting) is closed instead of kept: PostgreSQL rolls back the transaction of a closed
/// connection.
pub(crate) struct PgWritePath {
    conns: Arc<KeptConnections>,
}

impl PgWritePath {
    pub(crate) fn new(conns: Arc<KeptConnections>) -> Self {
        PgWritePath { conns }
    }

    pub(crate) async fn run<J: Transact>(&self, job: J) -> Result<J::Output, StoreError> {
        self.run_if_wanted(job, || true).await
    }

    /// Runs `job` unless, once its transaction has begun (after any wait for a
    /// connection and for the lock), `wanted` says nobody waits for it any more: then it
    /// rolls back unrun (a group commit's job, whose caller may have gone meanwhile).
    pub(crate) async fn run_if_wanted<J: Transact>(
        &self,
        job: J,
        wanted: impl Fn() -> bool,
    ) -> Result<J::Output, StoreError> {
        let mut lent = self.conns.lend().await?;
        simple_query(lent.conn(), BEGIN_AND_LOCK.as_str()).await?;
        if !wanted() {
            if simple_query(lent.conn(), "ROLLBACK").await.is_ok() {
                lent.give_back();
            }
            return Err(StoreError::Unavailable("nobody waits for this write any more".into()));
        }
        match job.run(&mut SqlxConn::new(lent.conn())).await {
            Ok(value) => {
                simple_query(lent.conn(), "COMMIT").await?;
                lent.give_back();
                Ok(value)
            }
            Err(e) => {
                // Should the ROLLBACK fail too, the connection is closed (which rolls
                // back); the job's error is the one to report.
                if simple_query(lent.conn(), "ROLLBACK").await.is_ok() {
                    lent.give_back();
                }
                Err(e)
            }
        }
    }
}
