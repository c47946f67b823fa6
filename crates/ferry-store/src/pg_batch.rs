//! Group commit of the boot path's two transactions on PostgreSQL: tunnel opens and
//! phone-homes that queue up while the write lock is busy run together, in one
//! transaction that takes the lock once.
//!
//! Why: every PostgreSQL write transaction holds the one write lock (`pg_writer`) for
//! all its round trips, so in a boot storm the writes queue for the lock, one at a
//! time; a storm's pace was the lock's, and the server's CPU went to waking up for each
//! answer (docs/performance.md). A batch pays BEGIN, the lock and COMMIT once, and its
//! transactions follow each other without a lock hand-over in between. Serialization is
//! unchanged: a batch holds the lock throughout, its jobs run in queue order, each
//! seeing the ones before it.
//!
//! A job that fails fails alone: the batch rolls back, that job runs again in a
//! transaction of its own and answers its caller, and the rest of the group runs again
//! as a group (so a node that keeps sending a key another node holds costs the others
//! one retry of their group, not a transaction each). A batch whose COMMIT fails
//! answers each caller with that error (whether it committed is unknown, so nothing
//! runs again). A group whose connection broke before that (the
//! database went away, a failover) tries once more on a new connection, which waits for
//! the database as any write waits for a connection, and then answers with the error.
//! A job whose caller stopped waiting before its transaction began (checked again
//! after any wait for a connection and for the lock) is dropped, not run — as a
//! transaction is rolled back when its caller goes away before it commits.

use crate::kept_conns::{simple_query, KeptConnections};
use crate::pg_writer::{PgWritePath, BEGIN_AND_LOCK};
use crate::tunnel_tx::{OpenTunnel, PhoneHome};
use crate::write_conn::{SqlxConn, Transact};
use crate::StoreError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// At most this many jobs per transaction (a bound on how long one holds the lock).
const BATCH_MAX: usize = 64;

/// A job and the caller waiting for its result (kept until the batch commits).
pub(crate) struct Waiting<J: Transact> {
    job: J,
    output: Option<J::Output>,
    reply: oneshot::Sender<Result<J::Output, StoreError>>,
}

impl<J: Transact + Clone> Waiting<J> {
    /// Runs the job's statements inside the batch's transaction.
    async fn attempt(&mut self, conn: &mut SqlxConn<'_>) -> Result<(), StoreError> {
        self.output = Some(self.job.clone().run(conn).await?);
        Ok(())
    }

    /// The caller stopped waiting before the job ran: it is not run (as a transaction
    /// whose caller goes away before it commits is rolled back).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn answer(self, result: Result<J::Output, StoreError>) {
        // A caller that stopped waiting no longer listens.
        let _ = self.reply.send(result);
    }

    fn deliver(mut self) {
        match self.output.take() {
            Some(output) => self.answer(Ok(output)),
            None => self.answer(Err(StoreError::Unavailable("a batched write kept no result (a bug)".into()))),
        }
    }

    async fn run_alone(self, path: &PgWritePath) {
        if self.abandoned() {
            return;
        }
        let result = path.run_if_wanted(self.job.clone(), || !self.abandoned()).await;
        self.answer(result);
    }
}

/// The jobs a batch can hold.
pub(crate) enum Queued {
    Open(Waiting<OpenTunnel>),
    PhoneHome(Waiting<PhoneHome>),
}

impl Queued {
    fn abandoned(&self) -> bool {
        match self {
            Queued::Open(w) => w.abandoned(),
            Queued::PhoneHome(w) => w.abandoned(),
        }
    }

    async fn attempt(&mut self, conn: &mut SqlxConn<'_>) -> Result<(), StoreError> {
        match self {
            Queued::Open(w) => w.attempt(conn).await,
            Queued::PhoneHome(w) => w.attempt(conn).await,
        }
    }

    fn deliver(self) {
        match self {
            Queued::Open(w) => w.deliver(),
            Queued::PhoneHome(w) => w.deliver(),
        }
    }

    fn fail(self, e: &StoreError) {
        let e = StoreError::Database(sqlx::Error::Protocol(format!("the write's transaction did not commit: {e}")));
        match self {
            Queued::Open(w) => w.answer(Err(e)),
            Queued::PhoneHome(w) => w.answer(Err(e)),
        }
    }

    async fn run_alone(self, path: &PgWritePath) {
        match self {
            Queued::Open(w) => w.run_alone(path).await,
            Queued::PhoneHome(w) => w.run_alone(path).await,
        }
    }
}

/// A transaction that can join a batch.
pub(crate) trait Batchable: Transact + Clone {
    fn queued(waiting: Waiting<Self>) -> Queued;
}

impl Batchable for OpenTunnel {
    fn queued(waiting: Waiting<Self>) -> Queued {
        Queued::Open(waiting)
    }
}

impl Batchable for PhoneHome {
    fn queued(waiting: Waiting<Self>) -> Queued {
        Queued::PhoneHome(waiting)
    }
}

/// Where batchable jobs queue; one task per server takes whatever has queued and runs it
/// as one batch, then the next. One: while another server's group holds the lock, this
/// server's queue grows into a larger group (a second task per server made the groups
/// smaller and was no faster, docs/performance.md). The task ends when this is dropped
/// (with the store).
pub(crate) struct BatchQueue {
    jobs: mpsc::UnboundedSender<Queued>,
    counts: Arc<Counts>,
}

/// Group commits so far: transactions of more than one job, and the jobs in them.
#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    jobs: AtomicU64,
}

/// How many of the boot path's writes were committed in groups (PostgreSQL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteBatchCounts {
    /// Transactions that committed more than one job.
    pub batches: u64,
    /// The jobs they committed.
    pub jobs: u64,
}

impl BatchQueue {
    pub(crate) fn start(conns: Arc<KeptConnections>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let counts = Arc::<Counts>::default();
        tokio::spawn(commit_loop(queue, conns, counts.clone()));
        BatchQueue { jobs, counts }
    }

    pub(crate) fn counts(&self) -> WriteBatchCounts {
        WriteBatchCounts { batches: self.counts.batches.load(Relaxed), jobs: self.counts.jobs.load(Relaxed) }
    }

    pub(crate) async fn run<J: Batchable>(&self, job: J) -> Result<J::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queued = J::queued(Waiting { job, output: None, reply });
        self.jobs.send(queued).map_err(|_| StoreError::Unavailable("the store's write path has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the store's write path stopped before answering".into()))?
    }
}

async fn commit_loop(mut queue: mpsc::UnboundedReceiver<Queued>, conns: Arc<KeptConnections>, counts: Arc<Counts>) {
    let alone = PgWritePath::new(conns.clone());
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut retried = false;
        loop {
            batch.retain(|job| !job.abandoned());
            match run_batch(batch, &conns, &alone, &counts).await {
                Outcome::Done => break,
                // One job's own error: it answers alone, the rest commit as a group
                // (a node that keeps sending a taken key costs the others one retry of
                // their group each time, not a transaction each).
                Outcome::Refused { culprit, rest } => {
                    culprit.run_alone(&alone).await;
                    batch = rest;
                }
                // The connection broke before anything committed (the database went
                // away, a failover): every connection opened before may be broken too.
                // The group tries once more on a new connection, which waits for the
                // database as long as any write waits for a connection (the pool's
                // limit), so a failover's short gap costs no error.
                Outcome::Lost { batch: lost, error } if !retried => {
                    tracing::debug!(%error, jobs = lost.len(), "a group of writes lost its connection; trying again");
                    conns.connections_broke();
                    retried = true;
                    batch = lost;
                }
                Outcome::Lost { batch: lost, error } => {
                    lost.into_iter().for_each(|job| job.fail(&error));
                    break;
                }
            }
        }
    }
}

/// How a group ended.
enum Outcome {
    /// Committed, or every job answered.
    Done,
    /// The connection broke before anything committed: nothing of it is kept.
    Lost { batch: Vec<Queued>, error: StoreError },
    /// `culprit` failed on its own statements (a key in use, a constraint): the group
    /// rolled back, and `rest` has not been answered.
    Refused { culprit: Box<Queued>, rest: Vec<Queued> },
}

/// Runs `batch` in one transaction.
async fn run_batch(
    mut batch: Vec<Queued>,
    conns: &Arc<KeptConnections>,
    alone: &PgWritePath,
    counts: &Counts,
) -> Outcome {
    if batch.len() <= 1 {
        if let Some(job) = batch.pop() {
            job.run_alone(alone).await;
        }
        return Outcome::Done;
    }
    let mut lent = match conns.lend().await {
        Ok(lent) => lent,
        // Already waited the pool's limit for a connection.
        Err(e) => {
            batch.into_iter().for_each(|job| job.fail(&e));
            return Outcome::Done;
        }
    };
    if let Err(e) = simple_query(lent.conn(), BEGIN_AND_LOCK.as_str()).await {
        drop(lent); // closed: its state is unknown
        let error = StoreError::from(e);
        if is_connection_trouble(&error) {
            return Outcome::Lost { batch, error };
        }
        // The wait for the lock failed (a `lock_timeout`): each alone, as without groups.
        for job in batch {
            job.run_alone(alone).await;
        }
        return Outcome::Done;
    }
    // Callers may have gone while the group waited for a connection and the lock.
    batch.retain(|job| !job.abandoned());
    let mut failed = None;
    for (i, job) in batch.iter_mut().enumerate() {
        if let Err(e) = job.attempt(&mut SqlxConn::new(lent.conn())).await {
            failed = Some((i, e));
            break;
        }
    }
    let Some((culprit, error)) = failed else {
        match simple_query(lent.conn(), "COMMIT").await {
            Ok(()) => {
                lent.give_back();
                if batch.len() > 1 {
                    counts.batches.fetch_add(1, Relaxed);
                    counts.jobs.fetch_add(batch.len() as u64, Relaxed);
                }
                batch.into_iter().for_each(Queued::deliver);
            }
            // Whether it committed is unknown: nothing runs again.
            Err(e) => {
                let e = StoreError::from(e);
                batch.into_iter().for_each(|job| job.fail(&e));
            }
        }
        return Outcome::Done;
    };
    match simple_query(lent.conn(), "ROLLBACK").await {
        Ok(()) => lent.give_back(),
        Err(_) => drop(lent), // closed: PostgreSQL rolls back
    }
    if is_connection_trouble(&error) {
        return Outcome::Lost { batch, error };
    }
    let culprit = Box::new(batch.remove(culprit));
    Outcome::Refused { culprit, rest: batch }
}

/// Whether `e` is about reaching the database rather than about one job's statements
/// (which PostgreSQL reports as an error of its own: a constraint, a lock timeout).
fn is_connection_trouble(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(_)) => false,
        StoreError::Database(_) | StoreError::NoPrimary(_) | StoreError::Unavailable(_) => true,
        _ => false,
    }
}
