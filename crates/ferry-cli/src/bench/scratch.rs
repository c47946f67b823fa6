//! A scratch PostgreSQL database for one storm run: created next to the database the
//! `--store` URL names (same server, same credentials), dropped at the end, so a run
//! never touches existing data.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use std::str::FromStr;

pub struct ScratchDatabase {
    pub name: String,
    /// The scratch database's URL (the `--store` URL with another database name).
    pub url: String,
    admin: PgConnectOptions,
}

impl ScratchDatabase {
    pub async fn create(url: &str) -> anyhow::Result<ScratchDatabase> {
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--store takes a postgres:// URL (the bench makes its own scratch database there)"
        );
        let admin = PgConnectOptions::from_str(url).context("invalid --store URL")?;
        let name = format!("ferry_storm_{}", std::process::id());
        let mut conn = PgConnection::connect_with(&admin).await.context("cannot connect to the --store PostgreSQL")?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("cannot create the scratch database {name}"))?;
        conn.close().await?;
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        Ok(ScratchDatabase { name, url, admin })
    }

    /// The server processes of the connections to the scratch database.
    pub async fn backend_pids(&self) -> anyhow::Result<Vec<i32>> {
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        let pids: Vec<(i32,)> = sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .fetch_all(&mut conn)
            .await?;
        conn.close().await?;
        Ok(pids.into_iter().map(|(p,)| p).collect())
    }

    pub async fn remove(self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        conn.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str()).await?;
        Ok(())
    }
}
