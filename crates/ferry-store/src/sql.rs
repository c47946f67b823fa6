//! One SQL store for SQLite and PostgreSQL, through `sqlx::Any`: the same queries (plain
//! SQL, `$N` placeholders), the same semantics. This module opens it; each subject's
//! queries live in their own module (`sql_nodes`, `sql_tunnels`, ...), the write path
//! in `writer`.
//!
//! - SQLite: WAL, one writer at a time (SQLite allows no more; a queue instead of
//!   SQLITE_BUSY retries): the boot path's write transactions run on a dedicated thread
//!   through rusqlite (`sqlite_writer`), every other write through one sqlx writer
//!   connection while that thread is paused; a small read-only pool.
//! - PostgreSQL: separate pools for reads and writes, shared by several ferry servers.
//!   Every write transaction first takes one transaction-level advisory lock, so writers
//!   are serialized exactly as SQLite's single writer serializes them: check-then-insert
//!   code and the tunnel address search cannot race another server. Multi-statement
//!   reads run in a REPEATABLE READ snapshot, as a SQLite read transaction does.

use crate::audit_buffer::{Counters, Item};
use crate::kept_conns::{KeptConnections, ReadTx};
use crate::pg_batch::BatchQueue;
use crate::pg_failover::{check_writable, PrimaryHosts};
use crate::pg_writer::PgWritePath;
use crate::sqlite_writer::SqliteWriter;
use crate::tunnel_tx::AddressHint;
use crate::writer::{Backend, WriteTx, Writer};
use crate::{Sealer, Store, StoreError, StoreLocation};
use async_trait::async_trait;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};
use std::path::Path;
use std::sync::Arc;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// SQLite connection settings, run on every new connection.
const SQLITE_PRAGMAS: [&str; 3] =
    ["PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON", "PRAGMA busy_timeout = 10000"];

async fn sqlite_pragmas(conn: &mut AnyConnection, writer: bool) -> Result<(), sqlx::Error> {
    if writer {
        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
    }
    for pragma in SQLITE_PRAGMAS {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

pub struct SqlStore {
    backend: Backend,
    pub(crate) read: AnyPool,
    /// Read snapshots' connections, kept out of `read` between snapshots.
    snapshots: Arc<KeptConnections>,
    pub(crate) writer: Arc<Writer>,
    /// PostgreSQL: the hosts of the connection URL and the one in use (for LISTEN
    /// connections and failover). Holds credentials: never logged or shown.
    pub(crate) postgres_hosts: Option<Arc<PrimaryHosts>>,
    pub(crate) sealer: Sealer,
    /// Where the next tunnel address search starts.
    pub(crate) address_hint: Arc<AddressHint>,
    pub(crate) audit_queue: tokio::sync::mpsc::Sender<Item>,
    pub(crate) audit_counters: Arc<Counters>,
}

/// `sqlx::Any` needs its drivers registered once per process.
fn install_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// A path as it goes into a `sqlite://` URL: absolute, every byte outside a safe set
/// percent-encoded (sqlx decodes it again; `?` and `#` would otherwise end the path).
fn sqlite_url(path: &Path, mode: &str) -> Result<String, StoreError> {
    let path = std::path::absolute(path)
        .map_err(|e| StoreError::BadRequest(format!("database path {}: {e}", path.display())))?;
    let text = path
        .to_str()
        .ok_or_else(|| StoreError::BadRequest(format!("database path {} is not UTF-8", path.display())))?;
    let mut url = String::from("sqlite://");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=");
    url.push_str(mode);
    Ok(url)
}

/// How long a PostgreSQL request waits for a connection.
const POSTGRES_ACQUIRE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `ping` (`/readyz`) waits for the database.
const PING_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Connections per server to PostgreSQL (see `SqlStore::open_postgres`).
const POSTGRES_WRITE_CONNECTIONS: u32 = 4;
const POSTGRES_READ_CONNECTIONS: u32 = 8;
const SQLITE_READ_CONNECTIONS: u32 = 4;

impl SqlStore {
    /// Opens the store at `location` (creating a SQLite file if needed) and applies
    /// pending migrations.
    pub async fn open(location: &StoreLocation, sealer: Sealer) -> Result<Self, StoreError> {
        install_drivers();
        match location {
            StoreLocation::Sqlite(path) => Self::open_sqlite(path, sealer).await,
            StoreLocation::Postgres(url) => Self::open_postgres(url, sealer).await,
        }
    }

    /// Opens (creating if needed) a SQLite database file.
    pub async fn open_sqlite(path: &Path, sealer: Sealer) -> Result<Self, StoreError> {
        install_drivers();
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn, true)))
            .connect(&sqlite_url(path, "rwc")?)
            .await?;
        SQLITE_MIGRATOR.run(&write).await?;
        let read = AnyPoolOptions::new()
            .max_connections(SQLITE_READ_CONNECTIONS)
            .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn, false)))
            .connect(&sqlite_url(path, "ro")?)
            .await?;
        let writer = SqliteWriter::open(path)?;
        Ok(Self::with_pools(Backend::Sqlite, read, write, Some(writer), None, sealer))
    }

    /// Connects to a PostgreSQL database (which must exist) shared with other servers.
    ///
    /// Reads and writes get separate pools: writes are serialized by an advisory lock,
    /// and in a storm every write connection sits waiting for it; with one pool those
    /// waiters would hold every connection and the datasource's reads would queue behind
    /// them. Writers beyond the write pool wait in the pool instead (in order, without
    /// a PostgreSQL backend each). At most 12 connections per server, plus one listening.
    ///
    /// A URL may list several hosts (a primary and its standbys, libpq's way): the pools
    /// use the first writable one and follow a promotion (`pg_failover`). Every new
    /// connection checks that its host is writable, so a standby is never written to.
    async fn open_postgres(url: &str, sealer: Sealer) -> Result<Self, StoreError> {
        let hosts = Arc::new(PrimaryHosts::new(crate::pg_hosts::split_hosts(url)?));
        let url = hosts.find_primary().await?;
        let pool = |size: u32| {
            let trouble = hosts.trouble.clone();
            AnyPoolOptions::new()
                .max_connections(size)
                // sqlx retries a failed connect with a back-off of up to a fifth of this:
                // bounded, so that after a promotion pending connects reach the new
                // primary within about 2 s (and a request waits at most 10 s for one).
                .acquire_timeout(POSTGRES_ACQUIRE_LIMIT)
                .after_connect(|conn, _| Box::pin(async move { check_writable(conn).await }))
                // No ping per use (a round trip each): the failover watch tells which
                // connections may be broken (`pg_failover`).
                .test_before_acquire(false)
                .before_acquire(move |_, meta| {
                    let keep = !trouble.predates_trouble(meta.age);
                    Box::pin(async move { Ok(keep) })
                })
        };
        let write = pool(POSTGRES_WRITE_CONNECTIONS).connect(&url).await?;
        POSTGRES_MIGRATOR.run(&write).await?;
        let read = pool(POSTGRES_READ_CONNECTIONS).connect(&url).await?;
        // With one host too: it tells the pools when their connections may be broken.
        hosts.clone().watch(vec![read.clone(), write.clone()]);
        Ok(Self::with_pools(Backend::Postgres, read, write, None, Some(hosts), sealer))
    }

    fn with_pools(
        backend: Backend,
        read: AnyPool,
        write: AnyPool,
        sqlite_writer: Option<SqliteWriter>,
        postgres_hosts: Option<Arc<PrimaryHosts>>,
        sealer: Sealer,
    ) -> Self {
        let trouble = postgres_hosts.as_ref().map(|hosts| hosts.trouble.clone());
        // All but one of the write pool's connections: the administration's writes
        // (sqlx transactions) always find one.
        let postgres_writer = trouble.as_ref().map(|trouble| {
            let turns = POSTGRES_WRITE_CONNECTIONS as usize - 1;
            let conns = KeptConnections::new(write.clone(), turns, Some(trouble.clone()));
            (PgWritePath::new(conns.clone()), BatchQueue::start(conns))
        });
        // All but one or two of the read pool's connections: single-statement reads,
        // `/readyz` and the failover watch's probe always find one.
        let snapshot_turns = match backend {
            Backend::Postgres => POSTGRES_READ_CONNECTIONS as usize - 2,
            Backend::Sqlite => SQLITE_READ_CONNECTIONS as usize - 1,
        };
        let snapshots = KeptConnections::new(read.clone(), snapshot_turns, trouble);
        let writer = Arc::new(Writer::new(backend, write, sqlite_writer, postgres_writer));
        let audit_counters = Arc::<Counters>::default();
        let audit_queue = crate::audit_buffer::spawn(writer.clone(), audit_counters.clone());
        SqlStore {
            backend,
            read,
            snapshots,
            writer,
            postgres_hosts,
            sealer,
            address_hint: Arc::default(),
            audit_queue,
            audit_counters,
        }
    }

    /// Begins a sqlx write transaction (see `Writer::begin`).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        self.writer.begin().await
    }

    /// Begins a read transaction: one consistent snapshot for several statements
    /// (PostgreSQL: REPEATABLE READ, READ ONLY; SQLite: a read transaction on a reader).
    /// On a connection kept between snapshots (`kept_conns`: no pool ping per use).
    pub(crate) async fn begin_read(&self) -> Result<ReadTx, StoreError> {
        let begin = match self.backend {
            // One round trip, not a BEGIN and then a SET TRANSACTION.
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Backend::Sqlite => "BEGIN",
        };
        ReadTx::begin(&self.snapshots, begin).await
    }
}

#[async_trait]
impl Store for SqlStore {
    fn write_batches(&self) -> crate::WriteBatchCounts {
        self.writer.write_batches()
    }

    /// PostgreSQL: also that the host is a writable primary (a promoted standby is;
    /// a standby or a demoted primary is not ready to provision).
    /// Bounded: with no database to reach, the pool would keep trying to connect.
    async fn ping(&self) -> Result<(), StoreError> {
        let lost = || StoreError::NoPrimary("a connection broke and no writable host is found yet".into());
        let in_trouble = || self.postgres_hosts.as_ref().is_some_and(|hosts| hosts.trouble.ongoing());
        if in_trouble() {
            return Err(lost());
        }
        let check = async {
            let mut conn = self.read.acquire().await?;
            match self.backend {
                Backend::Postgres => check_writable(&mut conn).await,
                Backend::Sqlite => sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| ()),
            }
        };
        // Not ready as soon as trouble is known, rather than once a connection to a
        // promoted standby comes through.
        let trouble_found = async {
            while !in_trouble() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            result = tokio::time::timeout(PING_LIMIT, check) => match result {
                Ok(result) => Ok(result?),
                Err(_) => Err(StoreError::NoPrimary(format!("the database did not answer within {PING_LIMIT:?}"))),
            },
            () = trouble_found => Err(lost()),
        }
    }
}
