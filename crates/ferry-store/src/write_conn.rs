//! What a write transaction needs of its connection — one optional row, every row,
//! execute — with typed parameters, over both connections that
//! write: a rusqlite transaction (SQLite's writer thread, `sqlite_writer`) and a sqlx
//! connection inside a transaction (PostgreSQL, and SQLite's other writes). A
//! transaction written once against [`WriteConn`] (a [`Transact`]) runs on either, so
//! the store suite tests the same logic on both backends.
//!
//! The trait is async because sqlx is. rusqlite's implementation never waits (a call is
//! done when it returns), so on the writer thread a job's future completes in its first
//! poll ([`run_ready`]): no runtime and no thread hand-off inside a transaction, which
//! is what the writer thread exists for.

use crate::StoreError;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection};
use std::future::Future;

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Int(i64),
    Text(&'a str),
    OptText(Option<&'a str>),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::OptText(v)
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{Null, ToSqlOutput};
        Ok(match *self {
            Param::Int(v) => ToSqlOutput::from(v),
            Param::Text(v) | Param::OptText(Some(v)) => ToSqlOutput::from(v),
            Param::OptText(None) => ToSqlOutput::from(Null),
        })
    }
}

/// A row as a tuple, decodable from either connection.
pub(crate) trait FromRow: Sized {
    fn from_sqlx(row: &AnyRow) -> Result<Self, sqlx::Error>;
    fn from_rusqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

macro_rules! tuple_rows {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> FromRow for ($($t,)+)
        where
            $($t: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + rusqlite::types::FromSql),+
        {
            fn from_sqlx(row: &AnyRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(($(row.try_get::<$t, _>($i)?,)+))
            }
            fn from_rusqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }
        }
    };
}

tuple_rows!(A 0);
tuple_rows!(A 0, B 1);
tuple_rows!(A 0, B 1, C 2);
tuple_rows!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);

/// The statements of a write transaction. Placeholders are `$1`…`$N`, each first used
/// in that order: SQLite numbers `$N` parameters by first appearance, PostgreSQL by N.
pub(crate) trait WriteConn {
    /// Whether changes to tunnels are announced to other servers (PostgreSQL `NOTIFY`;
    /// SQLite has one server).
    fn announces(&self) -> bool;
    async fn optional<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Option<R>, StoreError>;
    async fn all<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Vec<R>, StoreError>;
    /// Returns the number of rows changed.
    async fn execute<'a>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<u64, StoreError>;
}

/// A write transaction written once for both connections: committed if `run` returns
/// `Ok`, rolled back otherwise. Owned, so it can cross to the writer thread.
pub(crate) trait Transact: Send + 'static {
    type Output: Send + 'static;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Self::Output, StoreError>;
}

/// A future that never waits (one built on [`RusqliteConn`]), run to its end in one
/// poll; `None` if it did wait (a job awaited something other than its connection).
pub(crate) fn run_ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(value) => Some(value),
        std::task::Poll::Pending => None,
    }
}

/// A rusqlite transaction's connection (cached prepared statements).
pub(crate) struct RusqliteConn<'c>(pub &'c rusqlite::Connection);

impl WriteConn for RusqliteConn<'_> {
    fn announces(&self) -> bool {
        false
    }

    async fn optional<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Option<R>, StoreError> {
        use rusqlite::OptionalExtension;
        let mut statement = self.0.prepare_cached(sql)?;
        Ok(statement.query_row(rusqlite::params_from_iter(params), R::from_rusqlite).optional()?)
    }

    async fn all<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Vec<R>, StoreError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(params), R::from_rusqlite)?;
        Ok(rows.collect::<rusqlite::Result<Vec<R>>>()?)
    }

    async fn execute<'a>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<u64, StoreError> {
        Ok(self.0.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))? as u64)
    }
}

/// A sqlx connection inside a write transaction.
pub(crate) struct SqlxConn<'c> {
    conn: &'c mut AnyConnection,
    announces: bool,
}

impl<'c> SqlxConn<'c> {
    pub(crate) fn new(conn: &'c mut AnyConnection) -> Self {
        let announces = conn.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME;
        SqlxConn { conn, announces }
    }
}

fn query<'a>(sql: &'a str, params: &[Param<'a>]) -> sqlx::query::Query<'a, Any, AnyArguments<'a>> {
    params.iter().fold(sqlx::query(sql), |q, p| match *p {
        Param::Int(v) => q.bind(v),
        Param::Text(v) => q.bind(v),
        Param::OptText(v) => q.bind(v),
    })
}

impl WriteConn for SqlxConn<'_> {
    fn announces(&self) -> bool {
        self.announces
    }

    async fn optional<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Option<R>, StoreError> {
        let row = query(sql, params).fetch_optional(&mut *self.conn).await?;
        Ok(row.as_ref().map(R::from_sqlx).transpose()?)
    }

    async fn all<'a, R: FromRow>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<Vec<R>, StoreError> {
        let rows = query(sql, params).fetch_all(&mut *self.conn).await?;
        Ok(rows.iter().map(R::from_sqlx).collect::<Result<Vec<R>, _>>()?)
    }

    async fn execute<'a>(&mut self, sql: &'a str, params: &[Param<'a>]) -> Result<u64, StoreError> {
        Ok(query(sql, params).execute(&mut *self.conn).await?.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every primitive, NULL, a repeated placeholder and an insert that conflicts included.
    struct Probe;

    type Seen = (u64, Option<(String, Option<String>, i64)>, Option<(String,)>, Vec<(String, i64)>, u64, u64);

    impl Transact for Probe {
        type Output = Seen;
        async fn run<C: WriteConn>(self, c: &mut C) -> Result<Seen, StoreError> {
            c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT, n INTEGER NOT NULL)", &[]).await?;
            let insert = "INSERT INTO t (k, v, n) VALUES ($1, $2, $3)";
            let mut added = c.execute(insert, &["a".into(), Param::OptText(None), 1.into()]).await?;
            added += c.execute(insert, &["b".into(), Some("x").into(), 2.into()]).await?;
            let a = c.optional("SELECT k, v, n FROM t WHERE k = $1", &["a".into()]).await?;
            let same = c.optional("SELECT k FROM t WHERE k = $1 OR v = $1", &["x".into()]).await?;
            let all = c.all("SELECT k, n FROM t WHERE n >= $1 ORDER BY k", &[1.into()]).await?;
            // A conflict that inserts nothing changes no row (the address search's insert).
            let kept = c
                .execute(
                    "INSERT INTO t (k, v, n) VALUES ($1, $2, $3) ON CONFLICT (k) DO NOTHING",
                    &["a".into(), Param::OptText(None), 9.into()],
                )
                .await?;
            let changed = c.execute("UPDATE t SET n = n + $1 WHERE n < $2", &[10.into(), 5.into()]).await?;
            Ok((added, a, same, all, kept, changed))
        }
    }

    #[tokio::test]
    async fn a_transaction_runs_alike_on_both_connections() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let on_rusqlite = run_ready(Probe.run(&mut RusqliteConn(&conn))).expect("never waits").unwrap();
        sqlx::any::install_default_drivers();
        let mut sqlx_conn = <AnyConnection as sqlx::Connection>::connect("sqlite::memory:").await.unwrap();
        let mut on_sqlx = SqlxConn::new(&mut sqlx_conn);
        assert!(!on_sqlx.announces(), "SQLite has one server: nothing to announce");
        let on_sqlx = Probe.run(&mut on_sqlx).await.unwrap();
        assert_eq!(on_rusqlite, on_sqlx);
        let expected: Seen =
            (2, Some(("a".into(), None, 1)), Some(("b".into(),)), vec![("a".into(), 1), ("b".into(), 2)], 0, 2);
        assert_eq!(on_rusqlite, expected);
    }

    #[test]
    fn a_job_that_waits_is_reported_not_run_on() {
        assert_eq!(run_ready(async { 7 }), Some(7));
        assert_eq!(run_ready(std::future::pending::<()>()), None);
    }
}
