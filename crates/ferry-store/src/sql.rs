//! One SQL store for SQLite and PostgreSQL, through `sqlx::Any`: the same queries (plain
//! SQL, `$N` placeholders), the same semantics.
//!
//! - SQLite: WAL, one writer at a time (SQLite allows no more; a queue instead of
//!   SQLITE_BUSY retries): the boot path's write transactions run on a dedicated thread
//!   through rusqlite (`sqlite_writer`), every other write through one sqlx writer
//!   connection while that thread is paused; a small read-only pool.
//! - PostgreSQL: one pool for reads and writes, shared by several ferry servers. Every
//!   write transaction first takes one transaction-level advisory lock, so writers are
//!   serialized exactly as SQLite's single writer serializes them: check-then-insert code
//!   and the tunnel address search cannot race another server. Multi-statement reads run
//!   in a REPEATABLE READ snapshot, as a SQLite read transaction does.

use crate::audit_buffer::AuditRow;
use crate::{format_time, now_secs, Actor, AuditEntry, Sealer, Store, StoreError, StoreLocation};
use async_trait::async_trait;
use ferry_api::admin::{
    AddNodes, AddProfiles, AssetTagChange, MergedNodeView, NodePatch, NodeView, ProfilePatch, ProfileView, SecretState,
};
use ferry_api::Secret;
use ferry_core::merge::{check_profile_graph, merge_node};
use ferry_core::model::{check_asset_tag, check_node_addresses, LayerKind};
use ferry_core::{patch, CoreError, Node, NodeName, Profile, ProfileName, Settings};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL advisory lock every write transaction takes (`pg_advisory_xact_lock`):
/// "ferry" in ASCII and a 1. One key for every ferry server on the database (public so
/// that tools and tests can find or hold it: `pg_locks` shows it as an advisory lock).
pub const WRITE_LOCK_KEY: i64 = 0x6665_7272_7900_0001;

/// The PostgreSQL channel on which tunnel closures are announced (payload: the server id
/// that holds the tunnel).
pub(crate) const TUNNELS_CHANNEL: &str = "ferry_tunnels";

/// Which database engine is behind the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

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
    pub(crate) backend: Backend,
    pub(crate) read: AnyPool,
    /// SQLite: the single writer connection. PostgreSQL: a pool of its own, so writers
    /// waiting for the advisory lock never take the readers' connections.
    pub(crate) write: AnyPool,
    /// PostgreSQL: the connection URL, for LISTEN connections. Holds credentials: never
    /// logged or shown.
    pub(crate) postgres_url: Option<String>,
    pub(crate) sealer: Sealer,
    /// Where the next address search starts (an offset into the tunnel network), so
    /// allocation costs a few indexed look-ups instead of a scan of every tunnel. Only a
    /// start point: the search itself runs inside the (serialized) write transaction, so
    /// it stays correct when other servers allocate from the same database.
    pub(crate) next_address: std::sync::Mutex<u128>,
    pub(crate) audit_queue: tokio::sync::mpsc::Sender<crate::audit_buffer::Item>,
    pub(crate) audit_counters: std::sync::Arc<crate::audit_buffer::Counters>,
    /// SQLite: the hot write transactions' own thread (see `sqlite_writer`).
    pub(crate) sqlite_writer: Option<std::sync::Arc<crate::sqlite_writer::SqliteWriter>>,
}

struct StoredNode {
    node: Node,
    asset_tag: Option<Vec<u8>>,
    revision: i64,
    updated_at: i64,
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

/// Connections per server to PostgreSQL (see `SqlStore::open_postgres`).
const POSTGRES_WRITE_CONNECTIONS: u32 = 4;
const POSTGRES_READ_CONNECTIONS: u32 = 8;

/// Begins a write transaction: on PostgreSQL, serialized with every other writer of the
/// database (all ferry servers) by the advisory lock. The transaction stays READ
/// COMMITTED on purpose: each statement after the lock sees everything committed by the
/// writers before it (a REPEATABLE READ snapshot would be taken before the lock wait).
pub(crate) async fn begin_write(pool: &AnyPool, backend: Backend) -> Result<Transaction<'static, Any>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *tx).await?;
    }
    Ok(tx)
}

/// A write transaction through sqlx; used as its connection (`&mut *tx`). Dropped
/// without [`commit`](Self::commit), it rolls back.
pub(crate) struct WriteTx {
    // Declared first, dropped first: the transaction ends before the writer resumes.
    tx: Transaction<'static, Any>,
    _paused: Option<crate::sqlite_writer::Paused>,
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
            .max_connections(4)
            .after_connect(|conn, _| Box::pin(sqlite_pragmas(conn, false)))
            .connect(&sqlite_url(path, "ro")?)
            .await?;
        let writer = crate::sqlite_writer::SqliteWriter::open(path)?;
        Ok(Self::with_pools(Backend::Sqlite, read, write, Some(std::sync::Arc::new(writer)), None, sealer))
    }

    /// Connects to a PostgreSQL database (which must exist) shared with other servers.
    ///
    /// Reads and writes get separate pools: writes are serialized by an advisory lock,
    /// and in a storm every write connection sits waiting for it; with one pool those
    /// waiters would hold every connection and the datasource's reads would queue behind
    /// them. Writers beyond the write pool wait in the pool instead (in order, without
    /// a PostgreSQL backend each). At most 12 connections per server, plus one listening.
    async fn open_postgres(url: &str, sealer: Sealer) -> Result<Self, StoreError> {
        let write = AnyPoolOptions::new().max_connections(POSTGRES_WRITE_CONNECTIONS).connect(url).await?;
        POSTGRES_MIGRATOR.run(&write).await?;
        let read = AnyPoolOptions::new().max_connections(POSTGRES_READ_CONNECTIONS).connect(url).await?;
        Ok(Self::with_pools(Backend::Postgres, read, write, None, Some(url.to_owned()), sealer))
    }

    fn with_pools(
        backend: Backend,
        read: AnyPool,
        write: AnyPool,
        sqlite_writer: Option<std::sync::Arc<crate::sqlite_writer::SqliteWriter>>,
        postgres_url: Option<String>,
        sealer: Sealer,
    ) -> Self {
        let audit_counters = std::sync::Arc::<crate::audit_buffer::Counters>::default();
        let audit_queue =
            crate::audit_buffer::spawn(write.clone(), backend, sqlite_writer.clone(), audit_counters.clone());
        SqlStore {
            backend,
            read,
            write,
            postgres_url,
            sealer,
            next_address: std::sync::Mutex::new(0),
            audit_queue,
            audit_counters,
            sqlite_writer,
        }
    }

    /// Begins a write transaction (see [`begin_write`]). SQLite: the hot-path writer
    /// thread is paused until it ends.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let paused = match &self.sqlite_writer {
            Some(writer) => Some(writer.pause().await?),
            None => None,
        };
        Ok(WriteTx { tx: begin_write(&self.write, self.backend).await?, _paused: paused })
    }

    /// Begins a read transaction: one consistent snapshot for several statements
    /// (PostgreSQL: REPEATABLE READ, READ ONLY; SQLite: a read transaction on a reader).
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        let mut tx = self.read.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// A node merged with its profiles, and its sealed tag, from one read snapshot.
    async fn merged_and_sealed(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Vec<u8>>), StoreError> {
        let mut tx = self.begin_read().await?;
        let stored = load_node(&mut tx, name).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        tx.commit().await?;
        let merged = merge_node(&stored.node, &profiles)?;
        let view = MergedNodeView {
            name: stored.node.name,
            profiles: merged.profiles,
            settings: merged.settings,
            fields: merged.fields,
            asset_tag: if stored.asset_tag.is_some() { SecretState::Set } else { SecretState::Unset },
        };
        Ok((view, stored.asset_tag))
    }

    fn seal_tag(&self, node: &NodeName, tag: &Secret) -> Result<Vec<u8>, StoreError> {
        check_asset_tag(tag.expose())?;
        Ok(self.sealer.seal(tag.expose().as_bytes(), asset_tag_aad(node).as_bytes()))
    }
}

/// Binds a sealed asset tag to its node.
pub(crate) fn asset_tag_aad(node: &NodeName) -> String {
    format!("ferry/asset-tag/{node}")
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(what.to_owned(), e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn parse_name<T: std::str::FromStr<Err = CoreError>>(what: &str, s: &str) -> Result<T, StoreError> {
    s.parse().map_err(|e: CoreError| StoreError::Corrupt(what.to_owned(), e.to_string()))
}

async fn load_profiles(conn: &mut AnyConnection) -> Result<BTreeMap<ProfileName, (Profile, i64, i64)>, StoreError> {
    let mut out = BTreeMap::new();
    for row in sqlx::query("SELECT name, settings, revision, updated_at FROM profiles").fetch_all(&mut *conn).await? {
        let name: ProfileName = parse_name("profile", row.get::<&str, _>(0))?;
        let settings: Settings = parse_json(&format!("profile {name}"), row.get(1))?;
        let profile = Profile { name: name.clone(), profiles: vec![], settings };
        out.insert(name, (profile, row.get(2), row.get(3)));
    }
    for row in sqlx::query("SELECT profile, parent FROM profile_parents ORDER BY profile, position")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: ProfileName = parse_name("profile", row.get::<&str, _>(0))?;
        let parent: ProfileName = parse_name("profile", row.get::<&str, _>(1))?;
        if let Some((p, _, _)) = out.get_mut(&name) {
            p.profiles.push(parent);
        }
    }
    Ok(out)
}

fn profile_map(loaded: &BTreeMap<ProfileName, (Profile, i64, i64)>) -> BTreeMap<ProfileName, Profile> {
    loaded.iter().map(|(k, (p, _, _))| (k.clone(), p.clone())).collect()
}

async fn load_nodes(conn: &mut AnyConnection, only: Option<&NodeName>) -> Result<Vec<StoredNode>, StoreError> {
    let (filter, name) = match only {
        Some(n) => (" WHERE name = $1", n.as_str()),
        None => ("", ""),
    };
    let sql = format!("SELECT name, settings, asset_tag, revision, updated_at FROM nodes{filter} ORDER BY name");
    let mut q = sqlx::query_as::<_, (String, String, Option<Vec<u8>>, i64, i64)>(&sql);
    if only.is_some() {
        q = q.bind(name);
    }
    let mut nodes = Vec::new();
    for (n, settings, asset_tag, revision, updated_at) in q.fetch_all(&mut *conn).await? {
        let name: NodeName = parse_name("node", &n)?;
        let settings = parse_json(&format!("node {name}"), &settings)?;
        nodes.push(StoredNode { node: Node { name, profiles: vec![], settings }, asset_tag, revision, updated_at });
    }
    let sql =
        format!("SELECT node, profile FROM node_profiles{} ORDER BY node, position", filter.replace("name", "node"));
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    if only.is_some() {
        q = q.bind(name);
    }
    let mut by_name: BTreeMap<String, Vec<ProfileName>> = BTreeMap::new();
    for (node, profile) in q.fetch_all(&mut *conn).await? {
        by_name.entry(node).or_default().push(parse_name("profile", &profile)?);
    }
    for n in &mut nodes {
        n.node.profiles = by_name.remove(n.node.name.as_str()).unwrap_or_default();
    }
    Ok(nodes)
}

async fn load_node(conn: &mut AnyConnection, name: &NodeName) -> Result<StoredNode, StoreError> {
    load_nodes(conn, Some(name))
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound { kind: "node", name: name.to_string() })
}

/// A node as listings show it, with the identity policy its merged settings give.
fn node_view(
    s: StoredNode,
    profiles: &BTreeMap<ProfileName, Profile>,
    registered_tpms: &HashSet<String>,
) -> Result<NodeView, StoreError> {
    let merged = merge_node(&s.node, profiles)?;
    let policy = merged.settings.identity_policy(s.asset_tag.is_some(), registered_tpms.contains(s.node.name.as_str()));
    Ok(NodeView {
        name: s.node.name,
        profiles: s.node.profiles,
        settings: s.node.settings,
        asset_tag: if s.asset_tag.is_some() { SecretState::Set } else { SecretState::Unset },
        identity: (&policy).into(),
        revision: s.revision,
        updated_at: format_time(s.updated_at),
    })
}

/// Validates a node against the current profiles and writes it with its relations.
async fn write_node(
    conn: &mut AnyConnection,
    node: &Node,
    asset_tag: Option<&[u8]>,
    profiles: &BTreeMap<ProfileName, Profile>,
    existing_revision: Option<i64>,
) -> Result<(), StoreError> {
    node.settings.validate(LayerKind::Node)?;
    check_node_addresses(node)?;
    merge_node(node, profiles)?;
    let now = now_secs();
    let settings = to_json(&node.settings);
    match existing_revision {
        None => {
            let taken = sqlx::query("SELECT 1 FROM nodes WHERE name = $1")
                .bind(node.name.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "node {} already exists; use `ferry node set` to change it",
                    node.name
                )));
            }
            sqlx::query(
                "INSERT INTO nodes (name, settings, asset_tag, revision, updated_at) VALUES ($1, $2, $3, 1, $4)",
            )
            .bind(node.name.as_str())
            .bind(&settings)
            .bind(asset_tag)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Some(rev) => {
            sqlx::query(
                "UPDATE nodes SET settings = $1, asset_tag = $2, revision = $3, updated_at = $4 WHERE name = $5",
            )
            .bind(&settings)
            .bind(asset_tag)
            .bind(rev + 1)
            .bind(now)
            .bind(node.name.as_str())
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM node_profiles WHERE node = $1")
                .bind(node.name.as_str())
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM node_addresses WHERE node = $1")
                .bind(node.name.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    for (pos, p) in node.profiles.iter().enumerate() {
        sqlx::query("INSERT INTO node_profiles (node, position, profile) VALUES ($1, $2, $3)")
            .bind(node.name.as_str())
            .bind(pos as i64)
            .bind(p.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for (kind, value) in node.settings.unique_addresses() {
        let owner: Option<(String,)> = sqlx::query_as("SELECT node FROM node_addresses WHERE kind = $1 AND value = $2")
            .bind(kind.as_str())
            .bind(&value)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((owner,)) = owner {
            let what = if kind == ferry_core::model::AddressKind::Mac { "MAC address" } else { "IP address" };
            return Err(StoreError::Conflict(format!(
                "{what} {value} of node {} is already used by node {owner}; each node needs its own",
                node.name
            )));
        }
        sqlx::query("INSERT INTO node_addresses (kind, value, node) VALUES ($1, $2, $3)")
            .bind(kind.as_str())
            .bind(&value)
            .bind(node.name.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(crate) const AUDIT_INSERT: &str =
    "INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)";

pub(crate) async fn audit(
    conn: &mut AnyConnection,
    actor: &Actor,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(AUDIT_INSERT)
        .bind(now_secs())
        .bind(&actor.0)
        .bind(action)
        .bind(subject)
        .bind(detail)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn check_unique<T: std::hash::Hash + Eq + std::fmt::Display>(
    names: impl IntoIterator<Item = T>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for n in names {
        if seen.contains(&n) {
            return Err(StoreError::BadRequest(format!("{n} is listed twice in one request")));
        }
        seen.insert(n);
    }
    Ok(())
}

/// What an audit entry says about a patch: the fields touched, never their values
/// (a template may embed credentials).
fn describe_patch(patch: &patch::SettingsPatch, profiles_changed: bool, asset: Option<&AssetTagChange>) -> String {
    let mut parts: Vec<String> = serde_json::to_value(&patch.set)
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().map(|k| format!("set {k}")).collect()))
        .unwrap_or_default();
    parts.extend(patch.unset.iter().map(|p| format!("unset {}", p.join("."))));
    if profiles_changed {
        parts.push("set profiles".into());
    }
    match asset {
        Some(AssetTagChange::Set(_)) => parts.push("set asset_tag".into()),
        Some(AssetTagChange::Unset) => parts.push("unset asset_tag".into()),
        None => {}
    }
    parts.join(", ")
}

#[async_trait]
impl Store for SqlStore {
    async fn add_nodes(&self, req: AddNodes, actor: &Actor) -> Result<usize, StoreError> {
        check_unique(req.nodes.iter().map(|n| n.name.clone()))?;
        let mut tx = self.begin_write().await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        for new in &req.nodes {
            let node = Node { name: new.name.clone(), profiles: new.profiles.clone(), settings: new.settings.clone() };
            let sealed = new.asset_tag.as_ref().map(|t| self.seal_tag(&node.name, t)).transpose()?;
            write_node(&mut tx, &node, sealed.as_deref(), &profiles, None).await?;
            let detail = if new.asset_tag.is_some() { "with asset tag" } else { "" };
            audit(&mut tx, actor, "node.add", &format!("node/{}", node.name), detail).await?;
        }
        tx.commit().await?;
        Ok(req.nodes.len())
    }

    async fn set_nodes(&self, names: &[NodeName], patch: &NodePatch, actor: &Actor) -> Result<usize, StoreError> {
        if patch.is_empty() {
            return Err(StoreError::BadRequest("nothing to change: give at least one field to set or unset".into()));
        }
        check_unique(names.iter())?;
        let detail = describe_patch(&patch.settings, patch.profiles.is_some(), patch.asset_tag.as_ref());
        let mut tx = self.begin_write().await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        for name in names {
            let mut stored = load_node(&mut tx, name).await?;
            stored.node.settings = patch::apply(&stored.node.settings, &patch.settings, LayerKind::Node)?;
            if let Some(p) = &patch.profiles {
                stored.node.profiles = p.clone();
            }
            let asset = match &patch.asset_tag {
                None => stored.asset_tag.take(),
                Some(AssetTagChange::Unset) => None,
                Some(AssetTagChange::Set(t)) => Some(self.seal_tag(name, t)?),
            };
            write_node(&mut tx, &stored.node, asset.as_deref(), &profiles, Some(stored.revision)).await?;
            audit(&mut tx, actor, "node.set", &format!("node/{name}"), &detail).await?;
        }
        tx.commit().await?;
        Ok(names.len())
    }

    async fn delete_nodes(&self, names: &[NodeName], actor: &Actor) -> Result<Vec<crate::TunnelRecord>, StoreError> {
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        let mut closed = Vec::new();
        for name in names {
            // Closed here, audited, rather than dropped by the foreign key unseen.
            let tunnel = crate::sql_tunnels::delete_tunnel(&mut tx, name, crate::CloseReason::Deleted, actor).await?;
            closed.extend(tunnel);
            let done = sqlx::query("DELETE FROM nodes WHERE name = $1").bind(name.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "node", name: name.to_string() });
            }
            audit(&mut tx, actor, "node.delete", &format!("node/{name}"), "").await?;
        }
        crate::sql_tunnels::announce(&mut tx, self.backend, &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    async fn list_nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let mut tx = self.begin_read().await?;
        let nodes = load_nodes(&mut tx, None).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        let tpms = crate::sql_tpm::registered_tpm_nodes(&mut tx, None).await?;
        tx.commit().await?;
        nodes.into_iter().map(|n| node_view(n, &profiles, &tpms)).collect()
    }

    async fn get_node(&self, name: &NodeName) -> Result<NodeView, StoreError> {
        let mut tx = self.begin_read().await?;
        let node = load_node(&mut tx, name).await?;
        let profiles = profile_map(&load_profiles(&mut tx).await?);
        let tpms = crate::sql_tpm::registered_tpm_nodes(&mut tx, Some(name)).await?;
        tx.commit().await?;
        node_view(node, &profiles, &tpms)
    }

    async fn merged_node(&self, name: &NodeName) -> Result<MergedNodeView, StoreError> {
        Ok(self.merged_and_sealed(name).await?.0)
    }

    async fn node_identity(&self, name: &NodeName) -> Result<(MergedNodeView, Option<Secret>), StoreError> {
        let (merged, sealed) = self.merged_and_sealed(name).await?;
        let Some(sealed) = sealed else { return Ok((merged, None)) };
        let clear = self.sealer.open(&sealed, asset_tag_aad(name).as_bytes())?;
        let text = String::from_utf8(clear.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("node {name} asset tag"), "not UTF-8".into()))?;
        Ok((merged, Some(Secret::new(text))))
    }

    async fn add_profiles(&self, req: AddProfiles, actor: &Actor) -> Result<usize, StoreError> {
        check_unique(req.profiles.iter().map(|p| p.name.clone()))?;
        let mut tx = self.begin_write().await?;
        let mut all = profile_map(&load_profiles(&mut tx).await?);
        let now = now_secs();
        for new in &req.profiles {
            new.settings.validate(LayerKind::Profile)?;
            if all.contains_key(&new.name) {
                return Err(StoreError::Conflict(format!(
                    "profile {} already exists; use `ferry profile set` to change it",
                    new.name
                )));
            }
            all.insert(
                new.name.clone(),
                Profile { name: new.name.clone(), profiles: new.profiles.clone(), settings: new.settings.clone() },
            );
            sqlx::query("INSERT INTO profiles (name, settings, revision, updated_at) VALUES ($1, $2, 1, $3)")
                .bind(new.name.as_str())
                .bind(to_json(&new.settings))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        // Parents may be added in the same batch, so links go in after all profiles.
        check_profile_graph(&all)?;
        for new in &req.profiles {
            write_parents(&mut tx, &new.name, &new.profiles).await?;
            audit(&mut tx, actor, "profile.add", &format!("profile/{}", new.name), "").await?;
        }
        tx.commit().await?;
        Ok(req.profiles.len())
    }

    async fn set_profiles(
        &self,
        names: &[ProfileName],
        patch: &ProfilePatch,
        actor: &Actor,
    ) -> Result<usize, StoreError> {
        if patch.profiles.is_none() && patch.settings.is_empty() {
            return Err(StoreError::BadRequest("nothing to change: give at least one field to set or unset".into()));
        }
        check_unique(names.iter())?;
        let detail = describe_patch(&patch.settings, patch.profiles.is_some(), None);
        let mut tx = self.begin_write().await?;
        let loaded = load_profiles(&mut tx).await?;
        let mut all = profile_map(&loaded);
        let now = now_secs();
        for name in names {
            let (_, revision, _) =
                loaded.get(name).ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })?;
            let p =
                all.get_mut(name).ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })?;
            p.settings = patch::apply(&p.settings, &patch.settings, LayerKind::Profile)?;
            if let Some(parents) = &patch.profiles {
                p.profiles = parents.clone();
            }
            sqlx::query("UPDATE profiles SET settings = $1, revision = $2, updated_at = $3 WHERE name = $4")
                .bind(to_json(&p.settings))
                .bind(revision + 1)
                .bind(now)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
            if patch.profiles.is_some() {
                let parents = p.profiles.clone();
                write_parents(&mut tx, name, &parents).await?;
            }
            audit(&mut tx, actor, "profile.set", &format!("profile/{name}"), &detail).await?;
        }
        check_profile_graph(&all)?;
        tx.commit().await?;
        Ok(names.len())
    }

    async fn delete_profiles(&self, names: &[ProfileName], actor: &Actor) -> Result<usize, StoreError> {
        check_unique(names.iter())?;
        let mut tx = self.begin_write().await?;
        for name in names {
            let users: Vec<(String,)> = sqlx::query_as(
                "SELECT node FROM node_profiles WHERE profile = $1 UNION SELECT profile FROM profile_parents WHERE parent = $2 ORDER BY 1 LIMIT 6",
            )
            .bind(name.as_str())
            .bind(name.as_str())
            .fetch_all(&mut *tx)
            .await?;
            if !users.is_empty() {
                let mut list: Vec<String> = users.into_iter().map(|(u,)| u).collect();
                if list.len() > 5 {
                    list.truncate(5);
                    list.push("...".into());
                }
                return Err(StoreError::Conflict(format!(
                    "profile {name} is still used by {}; remove it from them first",
                    list.join(", ")
                )));
            }
            let done =
                sqlx::query("DELETE FROM profiles WHERE name = $1").bind(name.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "profile", name: name.to_string() });
            }
            audit(&mut tx, actor, "profile.delete", &format!("profile/{name}"), "").await?;
        }
        tx.commit().await?;
        Ok(names.len())
    }

    async fn list_profiles(&self) -> Result<Vec<ProfileView>, StoreError> {
        let mut tx = self.begin_read().await?;
        let loaded = load_profiles(&mut tx).await?;
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT profile, COUNT(*) FROM node_profiles GROUP BY profile").fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let counts: BTreeMap<String, i64> = counts.into_iter().collect();
        Ok(loaded
            .into_values()
            .map(|(p, revision, updated_at)| ProfileView {
                nodes: counts.get(p.name.as_str()).copied().unwrap_or(0),
                name: p.name,
                profiles: p.profiles,
                settings: p.settings,
                revision,
                updated_at: format_time(updated_at),
            })
            .collect())
    }

    async fn get_profile(&self, name: &ProfileName) -> Result<ProfileView, StoreError> {
        self.list_profiles()
            .await?
            .into_iter()
            .find(|p| &p.name == name)
            .ok_or_else(|| StoreError::NotFound { kind: "profile", name: name.to_string() })
    }

    async fn node_by_mac(&self, mac: &ferry_core::MacAddr) -> Result<Option<NodeName>, StoreError> {
        self.node_by_mac_impl(mac).await
    }
    #[allow(clippy::too_many_arguments)]
    async fn open_tunnel(
        &self,
        node: &NodeName,
        public_key: &str,
        network: &ferry_core::tunnel::TunnelNetwork,
        ttl_secs: u64,
        mode: Option<&str>,
        server: &str,
        actor: &Actor,
    ) -> Result<crate::OpenedTunnel, StoreError> {
        self.open_tunnel_impl(node, public_key, network, ttl_secs, mode, server, actor).await
    }
    async fn close_tunnel(
        &self,
        node: &NodeName,
        reason: crate::CloseReason,
        actor: &Actor,
    ) -> Result<Option<crate::TunnelRecord>, StoreError> {
        self.close_tunnel_impl(node, reason, actor).await
    }
    async fn close_tunnels(
        &self,
        tunnels: &[crate::TunnelRecord],
        reason: crate::CloseReason,
        actor: &Actor,
    ) -> Result<Vec<crate::TunnelRecord>, StoreError> {
        self.close_tunnels_impl(tunnels, reason, actor).await
    }
    async fn expire_tunnels(&self, now: i64) -> Result<Vec<crate::TunnelRecord>, StoreError> {
        self.expire_tunnels_impl(now).await
    }
    async fn list_tunnels(&self) -> Result<Vec<crate::TunnelRecord>, StoreError> {
        self.list_tunnels_impl().await
    }
    async fn tunnel_by_address(&self, address: std::net::IpAddr) -> Result<Option<crate::TunnelRecord>, StoreError> {
        self.tunnel_by_address_impl(address).await
    }
    async fn phone_home(
        &self,
        tunnel: &crate::TunnelRecord,
        report: &crate::BootReport,
    ) -> Result<Option<crate::TunnelRecord>, StoreError> {
        self.phone_home_impl(tunnel, report).await
    }
    async fn boot_info(&self, node: &NodeName) -> Result<Option<crate::BootInfo>, StoreError> {
        self.boot_info_impl(node).await
    }
    async fn host_keys(&self) -> Result<Vec<(NodeName, String)>, StoreError> {
        self.host_keys_impl().await
    }
    fn sealing_key_id(&self) -> &str {
        self.sealer.key_id()
    }
    async fn check_sealing_key(&self, actor: &Actor) -> Result<crate::SealingKeyCheck, StoreError> {
        self.check_sealing_key_impl(actor).await
    }
    async fn register_server(&self, server: &crate::ServerRecord) -> Result<(), StoreError> {
        self.register_server_impl(server).await
    }
    async fn heartbeat(&self, id: &str, now: i64) -> Result<(), StoreError> {
        self.heartbeat_impl(id, now).await
    }
    async fn list_servers(&self) -> Result<Vec<crate::ServerStatus>, StoreError> {
        self.list_servers_impl().await
    }
    async fn close_tunnels_of_lost_servers(
        &self,
        now: i64,
        grace_secs: i64,
        except: &str,
    ) -> Result<Vec<crate::TunnelRecord>, StoreError> {
        self.close_tunnels_of_lost_servers_impl(now, grace_secs, except).await
    }
    async fn watch_tunnels(
        &self,
        server: &str,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<()>>, StoreError> {
        self.watch_tunnels_impl(server).await
    }
    async fn record_event(&self, actor: &Actor, action: &str, subject: &str, detail: &str) -> Result<(), StoreError> {
        self.queue_audit(crate::audit_buffer::Item::Entry(AuditRow::new(&actor.0, action, subject, detail))).await
    }
    async fn record_repeatable_event(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.queue_audit(crate::audit_buffer::Item::Repeatable(AuditRow::new(&actor.0, action, subject, detail))).await
    }
    fn audit_counts(&self) -> crate::AuditCounts {
        use std::sync::atomic::Ordering::Relaxed;
        crate::AuditCounts {
            folded: self.audit_counters.folded.load(Relaxed),
            lost: self.audit_counters.lost.load(Relaxed),
        }
    }
    async fn set_audit_retention(&self, days: u32) -> Result<Option<u32>, StoreError> {
        self.set_audit_retention_impl(days).await
    }
    async fn prune_audit(&self) -> Result<u64, StoreError> {
        self.prune_audit_impl().await
    }

    async fn add_image(&self, image: &ferry_api::image::ImageRecord, actor: &Actor) -> Result<(), StoreError> {
        self.add_image_impl(image, actor).await
    }
    async fn list_images(&self) -> Result<Vec<ferry_api::image::ImageRecord>, StoreError> {
        self.list_images_impl(None).await
    }
    async fn get_image(&self, name: &str) -> Result<Option<ferry_api::image::ImageRecord>, StoreError> {
        Ok(self.list_images_impl(Some(name)).await?.pop())
    }
    async fn delete_image(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
        self.delete_image_impl(name, actor).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.flush_audit(true).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn set_node_tpm(
        &self,
        node: &NodeName,
        tpm: Option<&crate::TpmRegistration>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        self.set_node_tpm_impl(node, tpm, actor).await
    }

    async fn node_tpms(&self, only: Option<&NodeName>) -> Result<Vec<(NodeName, crate::TpmRecord)>, StoreError> {
        self.node_tpms_impl(only).await
    }

    async fn record_pending_tpm(
        &self,
        node: &NodeName,
        tpm: &crate::TpmRegistration,
        actor: &Actor,
    ) -> Result<crate::Discovery, StoreError> {
        self.record_pending_tpm_impl(node, tpm, actor).await
    }

    async fn approve_tpm(
        &self,
        node: &NodeName,
        fingerprint: &str,
        actor: &Actor,
    ) -> Result<crate::TpmRecord, StoreError> {
        self.approve_tpm_impl(node, fingerprint, actor).await
    }

    async fn set_secret(
        &self,
        name: &str,
        scope: &crate::SecretScope,
        value: &[u8],
        actor: &Actor,
    ) -> Result<(), StoreError> {
        self.set_secret_impl(name, scope, value, actor).await
    }

    async fn delete_secret(&self, name: &str, scope: &crate::SecretScope, actor: &Actor) -> Result<(), StoreError> {
        self.delete_secret_impl(name, scope, actor).await
    }

    async fn create_token(
        &self,
        name: &str,
        role: &str,
        hash: &str,
        expires_at: Option<i64>,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        self.create_token_impl(name, role, hash, expires_at, actor).await
    }

    async fn list_tokens(&self) -> Result<Vec<crate::TokenInfo>, StoreError> {
        self.list_tokens_impl().await
    }

    async fn revoke_token(&self, name: &str, actor: &Actor) -> Result<(), StoreError> {
        self.revoke_token_impl(name, actor).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<crate::TokenInfo>, StoreError> {
        self.token_by_hash_impl(hash).await
    }

    async fn list_secrets(&self) -> Result<Vec<crate::SecretInfo>, StoreError> {
        self.list_secrets_impl().await
    }

    async fn secrets_for(
        &self,
        node: &NodeName,
        profiles: &[ProfileName],
    ) -> Result<std::collections::BTreeMap<String, zeroize::Zeroizing<Vec<u8>>>, StoreError> {
        self.secrets_for_impl(node, profiles).await
    }

    async fn audit_query(&self, filter: &crate::AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        // Read your writes: queued events land first (folds keep counting).
        self.flush_audit(false).await?;
        let mut conditions = Vec::new();
        if filter.subject.is_some() {
            conditions.push(format!("subject = ${}", conditions.len() + 1));
        }
        if filter.since.is_some() {
            conditions.push(format!("at >= ${}", conditions.len() + 1));
        }
        if filter.after_id.is_some() {
            conditions.push(format!("id > ${}", conditions.len() + 1));
        }
        let filter_sql =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        // Following (after an id): the oldest new entries first; otherwise the newest.
        let order = if filter.after_id.is_some() { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT id, at, actor, action, subject, detail FROM audit {filter_sql} ORDER BY id {order} LIMIT ${}",
            conditions.len() + 1
        );
        let mut q = sqlx::query_as::<_, (i64, i64, String, String, String, String)>(&sql);
        if let Some(s) = &filter.subject {
            q = q.bind(s);
        }
        if let Some(t) = filter.since {
            q = q.bind(t);
        }
        if let Some(id) = filter.after_id {
            q = q.bind(id);
        }
        let mut rows = q.bind(filter.limit.clamp(1, 100_000)).fetch_all(&self.read).await?;
        if filter.after_id.is_none() {
            rows.reverse();
        }
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, action, subject, detail)| AuditEntry {
                id,
                at: format_time(at),
                actor,
                action,
                subject,
                detail,
            })
            .collect())
    }
}

async fn write_parents(
    conn: &mut AnyConnection,
    name: &ProfileName,
    parents: &[ProfileName],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM profile_parents WHERE profile = $1").bind(name.as_str()).execute(&mut *conn).await?;
    for (pos, parent) in parents.iter().enumerate() {
        sqlx::query("INSERT INTO profile_parents (profile, position, parent) VALUES ($1, $2, $3)")
            .bind(name.as_str())
            .bind(pos as i64)
            .bind(parent.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
