//! SQLite's hot write transactions — opening a tunnel, phone-home, audit batches — run
//! whole on one dedicated thread through rusqlite, instead of statement by statement
//! through sqlx.
//!
//! Why: SQLite has one writer, so every write transaction of a boot storm queues behind
//! the one before it, and the queue moves as fast as one transaction completes. sqlx
//! hands every statement to its connection's thread and the answer back (two thread
//! switches per statement, ~20 statements per booting node on the writer, each waiting
//! for a busy async runtime to pick the answer up); here the thread runs transaction
//! after transaction from its queue, each one hand-off, its statements cached prepared
//! statements run back to back.
//!
//! The rest of the store (administration, the reaper) still writes through sqlx's single
//! writer connection. Both connections write one file and must never overlap (a deferred
//! sqlx transaction could fail to upgrade to a write with SQLITE_BUSY), so such a write
//! first [`pause`](SqliteWriter::pause)s this thread, which waits in its queue like any
//! job until that write is over.

use crate::audit_buffer::AuditRow;
use crate::sql_tunnels::{
    address_candidates, audit_detail_booted, audit_detail_close, audit_detail_open, key_in_use, tunnel, TunnelRow,
    BOOT_UPSERT, HOST_KEYS_DELETE, HOST_KEY_INSERT, TUNNEL_ADDRESS_TAKEN, TUNNEL_DELETE_OF_NODE, TUNNEL_INSERT,
    TUNNEL_KEY_OWNER, TUNNEL_PHONE_HOME_DELETE,
};
use crate::{now_secs, Actor, BootReport, CloseReason, OpenedTunnel, StoreError, TunnelRecord};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::net::IpAddr;
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
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
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

fn in_transaction<T>(
    conn: &mut Connection,
    work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = work(&tx)?;
    tx.commit()?;
    Ok(value)
}

fn insert_audit(
    tx: &Transaction<'_>,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(crate::sql::AUDIT_INSERT)?.execute(params![at, actor, action, subject, detail])?;
    Ok(())
}

fn read_tunnel(row: &rusqlite::Row<'_>) -> rusqlite::Result<TunnelRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?))
}

/// Audit entries queued outside other changes, in one transaction.
pub(crate) fn write_audit_batch(tx: &Transaction<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    for row in rows {
        insert_audit(tx, row.at, &row.actor, &row.action, &row.subject, &row.detail)?;
    }
    Ok(())
}

/// What an enrollment asks of the store (owned: it crosses to the writer thread).
pub(crate) struct OpenRequest {
    pub node: NodeName,
    pub public_key: String,
    pub network: TunnelNetwork,
    pub ttl_secs: u64,
    pub mode: Option<String>,
    pub server: String,
    pub actor: Actor,
    /// Where the address search starts (see `SqlStore::next_address`).
    pub hint: u128,
}

/// `SqlStore::open_tunnel_impl`'s transaction, for this thread; returns the tunnel and
/// where the next address search should start.
pub(crate) fn open_tunnel(tx: &Transaction<'_>, req: OpenRequest) -> Result<(OpenedTunnel, u128), StoreError> {
    let now = now_secs();
    let replaced = tx
        .prepare_cached(TUNNEL_DELETE_OF_NODE)?
        .query_row(params![req.node.as_str()], read_tunnel)
        .optional()?
        .map(tunnel)
        .transpose()?;
    if let Some(old) = &replaced {
        let (action, subject, detail) = audit_detail_close(old, CloseReason::Replaced);
        insert_audit(tx, now, &req.actor.0, action, &subject, &detail)?;
    }
    let key_owner: Option<String> =
        tx.prepare_cached(TUNNEL_KEY_OWNER)?.query_row(params![req.public_key], |r| r.get(0)).optional()?;
    if let Some(owner) = key_owner {
        return Err(key_in_use(&owner));
    }
    let (address, next) = free_address(tx, &req.network, req.hint)?;
    let t = TunnelRecord {
        node: req.node,
        public_key: req.public_key,
        address,
        created_at: now,
        expires_at: now + req.ttl_secs as i64,
        mode: req.mode,
        server: req.server,
    };
    tx.prepare_cached(TUNNEL_INSERT)?.execute(params![
        t.node.as_str(),
        t.public_key,
        address.to_string(),
        t.created_at,
        t.expires_at,
        t.mode,
        t.server
    ])?;
    let (action, subject, detail) = audit_detail_open(&t, req.ttl_secs);
    insert_audit(tx, now, &req.actor.0, action, &subject, &detail)?;
    Ok((OpenedTunnel { tunnel: t, replaced }, next))
}

/// The next free address (see [`address_candidates`]) and where the next search starts.
fn free_address(tx: &Transaction<'_>, network: &TunnelNetwork, hint: u128) -> Result<(IpAddr, u128), StoreError> {
    let mut taken = tx.prepare_cached(TUNNEL_ADDRESS_TAKEN)?;
    for (candidate, next) in address_candidates(*network, hint) {
        if !taken.exists(params![candidate.to_string()])? {
            return Ok((candidate, next));
        }
    }
    Err(StoreError::PoolExhausted(network.to_string()))
}

/// `SqlStore::phone_home_impl`'s transaction, for this thread. `None`: the tunnel is no
/// longer the node's current one, and nothing was written (the caller rolls back).
pub(crate) fn phone_home(
    tx: &Transaction<'_>,
    t: &TunnelRecord,
    report: &BootReport,
) -> Result<Option<TunnelRecord>, StoreError> {
    let node = t.node.as_str();
    let Some(row) = tx
        .prepare_cached(TUNNEL_PHONE_HOME_DELETE)?
        .query_row(params![node, t.address.to_string(), t.public_key], read_tunnel)
        .optional()?
    else {
        return Ok(None);
    };
    let closed = tunnel(row)?;
    let now = now_secs();
    tx.prepare_cached(BOOT_UPSERT)?.execute(params![
        node,
        now,
        t.address.to_string(),
        report.instance_id,
        report.hostname,
        report.fqdn
    ])?;
    if !report.host_keys.is_empty() {
        tx.prepare_cached(HOST_KEYS_DELETE)?.execute(params![node])?;
        let mut insert = tx.prepare_cached(HOST_KEY_INSERT)?;
        for (kind, key) in &report.host_keys {
            insert.execute(params![node, kind, key])?;
        }
    }
    let actor = format!("node:{node}");
    let (action, subject, detail) = audit_detail_booted(&closed, report);
    insert_audit(tx, now, &actor, action, &subject, &detail)?;
    let (action, subject, detail) = audit_detail_close(&closed, CloseReason::PhoneHome);
    insert_audit(tx, now, &actor, action, &subject, &detail)?;
    Ok(Some(closed))
}
