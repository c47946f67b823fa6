//! PostgreSQL failover: the store's pools point at the one writable host among those
//! its URL lists (`pg_hosts`), and follow a promotion without a server restart.
//!
//! sqlx's pools connect to one host. Every connection checks that its host is writable
//! (a standby, or a former primary brought back as one, is refused), and a watcher asks
//! the current host once a second whether it is still a writable primary; when it is
//! not (killed, unreachable, demoted) it walks the list and repoints both pools (sqlx
//! `set_connect_options`: new connections go to the new primary, broken ones are closed
//! as they fail) and the `LISTEN` connection. Until a writable host is found, writes
//! fail (HTTP 500, which agents retry) and `/readyz` says not ready (`ping`).

use crate::location::redact_url;
use crate::StoreError;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long one host is given to answer a connection or the check.
const HOST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the watcher checks the current host.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

const IS_STANDBY: &str = "SELECT pg_is_in_recovery()";

/// Whether the session's host is a read-only standby (or answers nothing).
pub(crate) async fn check_writable(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let (standby,): (bool,) = sqlx::query_as(IS_STANDBY).fetch_one(&mut *conn).await?;
    if standby {
        return Err(sqlx::Error::Protocol(
            "this PostgreSQL host is a read-only standby; the store needs the primary \
             (list every host in the URL: postgres://…@A,B/db?target_session_attrs=read-write)"
                .into(),
        ));
    }
    Ok(())
}

/// The hosts of the store's URL, and which one the pools use now.
pub(crate) struct PrimaryHosts {
    urls: Vec<String>,
    current: RwLock<usize>,
}

impl PrimaryHosts {
    pub(crate) fn new(urls: Vec<String>) -> Self {
        PrimaryHosts { urls, current: RwLock::new(0) }
    }

    /// The URL of the host in use (holds credentials: never log it unredacted).
    pub(crate) fn current_url(&self) -> String {
        let i = *self.current.read().unwrap_or_else(|p| p.into_inner());
        self.urls[i].clone()
    }

    /// Whether there is anywhere to fail over to.
    pub(crate) fn several(&self) -> bool {
        self.urls.len() > 1
    }

    /// The first host, in the URL's order, that accepts a connection and is writable;
    /// becomes the current one.
    pub(crate) async fn find_primary(&self) -> Result<String, StoreError> {
        let mut problems = Vec::new();
        for (i, url) in self.urls.iter().enumerate() {
            let probe = async {
                let mut conn = AnyConnection::connect(url).await?;
                let writable = check_writable(&mut conn).await;
                let _ = conn.close().await;
                writable
            };
            match tokio::time::timeout(HOST_TIMEOUT, probe).await {
                Ok(Ok(())) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = i;
                    return Ok(url.clone());
                }
                Ok(Err(e)) => problems.push(format!("{}: {e}", redact_url(url))),
                Err(_) => problems.push(format!("{}: no answer within {HOST_TIMEOUT:?}", redact_url(url))),
            }
        }
        Err(StoreError::NoPrimary(problems.join("; ")))
    }

    /// Checks the current host through the first of `pools` (the readers': less
    /// contended in a storm than the writers') once a second; when it is no longer a
    /// writable primary, finds the one that is and points `pools` at it. Ends when the
    /// pools are closed.
    pub(crate) fn watch(self: Arc<Self>, pools: Vec<AnyPool>) {
        tokio::spawn(async move {
            let Some(probe_pool) = pools.first().cloned() else { return };
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                if probe_pool.is_closed() {
                    return;
                }
                let healthy = tokio::time::timeout(HOST_TIMEOUT, async {
                    let mut conn = probe_pool.acquire().await?;
                    check_writable(&mut conn).await
                })
                .await;
                if matches!(healthy, Ok(Ok(()))) {
                    continue;
                }
                let before = self.current_url();
                match self.find_primary().await {
                    Ok(url) if url != before => match AnyConnectOptions::from_str(&url) {
                        Ok(options) => {
                            for pool in &pools {
                                pool.set_connect_options(options.clone());
                            }
                            tracing::warn!(from = %redact_url(&before), to = %redact_url(&url), "PostgreSQL failover: the store now writes to another host");
                        }
                        Err(e) => tracing::error!(error = %e, "PostgreSQL failover: cannot use the new host's URL"),
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL: the primary is gone and no other host is writable yet")
                    }
                }
            }
        });
    }
}
