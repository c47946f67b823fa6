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
//!
//! The pools do not ping a connection before handing it out (sqlx's default, one round
//! trip per use: a fifth of a booting node's round trips). Instead, when the watcher
//! finds the host in trouble (with one host too: a restart), every connection older than
//! that is closed rather than handed out ([`TroubleClock`]); one that
//! breaks between two checks fails the request using it, which the agent retries.

use crate::location::redact_url;
use crate::StoreError;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
    /// When the watcher last found the host in use unreachable or not writable (shared
    /// with the pools' check of each connection they hand out).
    pub(crate) trouble: Arc<TroubleClock>,
}

/// When the failover watch (or a write that lost its connection) last found the
/// database in trouble, and whether it still is: from then until the watch finds a
/// writable host, `/readyz` answers "not ready" at once instead of waiting for a
/// connection.
#[derive(Debug, Default)]
pub(crate) struct TroubleClock(Mutex<Option<Instant>>, AtomicBool);

impl TroubleClock {
    /// Whether a connection `age` old was opened before the watch last found the host
    /// in trouble (and may be broken, or to a host that is no longer the primary).
    pub(crate) fn predates_trouble(&self, age: Duration) -> bool {
        let troubled_at = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        troubled_at.is_some_and(|at| age >= at.elapsed())
    }

    pub(crate) fn note(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.1.store(true, Ordering::Relaxed);
    }

    /// The watch found a writable host.
    fn over(&self) {
        self.1.store(false, Ordering::Relaxed);
    }

    /// Trouble noted and no writable host found since.
    pub(crate) fn ongoing(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }
}

impl PrimaryHosts {
    pub(crate) fn new(urls: Vec<String>) -> Self {
        PrimaryHosts { urls, current: RwLock::new(0), trouble: Arc::default() }
    }

    /// The URL of the host in use (holds credentials: never log it unredacted).
    pub(crate) fn current_url(&self) -> String {
        let i = *self.current.read().unwrap_or_else(|p| p.into_inner());
        self.urls[i].clone()
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

    /// Checks the current host on a connection of its own once a second; when it is no longer a
    /// writable primary, notes the trouble (the pools then close every older connection
    /// instead of handing it out), finds the writable host and points `pools` at it.
    /// Ends when the pools are closed or the store is gone.
    pub(crate) fn watch(self: Arc<Self>, pools: Vec<AnyPool>) {
        tokio::spawn(async move {
            let Some(first_pool) = pools.first().cloned() else { return };
            // A connection of the watch's own: a pool busy with a storm is no sign of
            // trouble, and a broken connection fails its probe at once.
            let mut probe: Option<AnyConnection> = None;
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                // Ends with the store (nothing else holds the hosts any more).
                if first_pool.is_closed() || Arc::strong_count(&self) == 1 {
                    return;
                }
                let healthy = tokio::time::timeout(HOST_TIMEOUT, async {
                    let conn = match &mut probe {
                        Some(conn) => conn,
                        None => probe.insert(AnyConnection::connect(&self.current_url()).await?),
                    };
                    check_writable(conn).await
                })
                .await;
                if matches!(healthy, Ok(Ok(()))) {
                    self.trouble.over();
                    continue;
                }
                probe = None;
                self.trouble.note();
                let before = self.current_url();
                let found = self.find_primary().await;
                if found.is_ok() {
                    self.trouble.over();
                }
                match found {
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

#[cfg(test)]
mod tests {
    use super::TroubleClock;
    use std::time::Duration;

    #[test]
    fn only_connections_opened_before_the_last_trouble_are_distrusted() {
        let clock = TroubleClock::default();
        assert!(!clock.predates_trouble(Duration::from_secs(86_400)), "no trouble seen yet");
        clock.note();
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.predates_trouble(Duration::from_secs(1)), "opened before the trouble");
        assert!(!clock.predates_trouble(Duration::from_millis(5)), "opened after it");
    }

    #[test]
    fn trouble_is_ongoing_from_its_note_until_a_writable_host_is_found() {
        let clock = TroubleClock::default();
        assert!(!clock.ongoing());
        clock.note();
        assert!(clock.ongoing(), "/readyz answers not ready from here");
        clock.over();
        assert!(!clock.ongoing());
        assert!(clock.predates_trouble(Duration::from_secs(1)), "older connections stay distrusted");
    }
}
