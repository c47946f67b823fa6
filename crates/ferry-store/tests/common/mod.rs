//! Test databases for both backends: every store test runs once against SQLite (a file
//! in a temporary directory) and once against PostgreSQL (a fresh database on the server
//! named by `FERRY_TEST_POSTGRES`, dropped at the end).

#![allow(dead_code)]

use ferry_store::{PublicKey, Sealer, SqlStore, StoreLocation};
use sqlx::AnyPool;
use sqlx::Row;

pub const POSTGRES_ENV: &str = "FERRY_TEST_POSTGRES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// One test's database; dropping it removes it (PostgreSQL: `DROP DATABASE ... FORCE`).
pub struct TestDb {
    location: StoreLocation,
    /// SQLite: the directory holding the file.
    dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server's base URL and the database made for this test.
    postgres: Option<(String, String)>,
}

/// The database's name in a PostgreSQL URL replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).expect("a postgres:// URL");
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn postgres_base() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_ENV} is not set, so the PostgreSQL variant of this test cannot run. \
             Give it a server: run scripts/test.sh, or: eval \"$(scripts/postgres.sh start)\""
        )
    })
}

async fn admin_execute(base: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_ENV} (is the server running?): {e}"));
    sqlx::raw_sql(sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let location = StoreLocation::Sqlite(dir.path().join("ferry.db"));
                TestDb { location, dir: Some(dir), postgres: None }
            }
            Kind::Postgres => {
                let base = postgres_base();
                let name = format!("ferry_test_{:016x}", rand::random::<u64>());
                admin_execute(&base, &format!("CREATE DATABASE {name}")).await;
                let location = StoreLocation::Postgres(with_database(&base, &name));
                TestDb { location, dir: None, postgres: Some((base, name)) }
            }
        }
    }

    pub fn kind(&self) -> Kind {
        if self.postgres.is_some() {
            Kind::Postgres
        } else {
            Kind::Sqlite
        }
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// A store handle (a "server") on this database, with a fresh sealing key.
    pub async fn open(&self) -> SqlStore {
        self.open_with(Sealer::ephemeral()).await
    }

    pub async fn open_with(&self, sealer: Sealer) -> SqlStore {
        SqlStore::open(&self.location, sealer).await.unwrap_or_else(|e| panic!("open {}: {e}", self.location))
    }

    /// A plain connection pool to the database, bypassing the store (what an intruder
    /// with sqlite3 or psql would have).
    pub async fn raw(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = match &self.location {
            StoreLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => url.clone(),
        };
        sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap()
    }

    /// Everything the database holds at rest, as bytes: SQLite, the files; PostgreSQL,
    /// every row as text and every BYTEA value raw.
    pub async fn stored_bytes(&self) -> Vec<Vec<u8>> {
        if let Some(dir) = &self.dir {
            return std::fs::read_dir(dir.path()).unwrap().map(|f| std::fs::read(f.unwrap().path()).unwrap()).collect();
        }
        let pool = self.raw().await;
        let mut out = Vec::new();
        let tables: Vec<String> = sqlx::query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
        assert!(tables.iter().any(|t| t == "nodes"), "{tables:?}");
        for t in &tables {
            for r in sqlx::query(&format!("SELECT row_to_json(t)::text FROM {t} t")).fetch_all(&pool).await.unwrap() {
                out.push(r.get::<String, _>(0).into_bytes());
            }
        }
        let blobs = sqlx::query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND data_type = 'bytea'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for b in blobs {
            let (t, c): (String, String) = (b.get(0), b.get(1));
            for r in sqlx::query(&format!("SELECT {c} FROM {t} WHERE {c} IS NOT NULL")).fetch_all(&pool).await.unwrap()
            {
                out.push(r.get::<Vec<u8>, _>(0));
            }
        }
        pool.close().await;
        out
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(admin_execute(&base, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
        })
        .join();
        if done.is_err() && !std::thread::panicking() {
            panic!("cannot drop the test database");
        }
    }
}

/// A WireGuard public key whose base64 text starts with `label` (base64 letters and
/// digits only), so audit text and assertions can name it.
pub fn key(label: &str) -> PublicKey {
    format!("{label:A<43}=").parse().unwrap_or_else(|e| panic!("key label {label:?}: {e}"))
}

/// Generates `NAME::sqlite` and `NAME::postgres` tests from `async fn NAME(kind: Kind)`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::common::Kind::Sqlite).await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::common::Kind::Postgres).await
                }
            }
        )*
    };
}
