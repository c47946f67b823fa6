//! Server records of the SQL store: registration, heartbeats, the tunnels of lost
//! servers, and (PostgreSQL) the notifications that tell a server its tunnels changed.

use crate::sql::{audit, SqlStore, TUNNELS_CHANNEL};
use crate::sql_tunnels::{announce, delete_tunnel, tunnel, TunnelRow, TUNNEL_COLUMNS};
use crate::{now_secs, Actor, CloseReason, ServerRecord, ServerStatus, StoreError, TunnelRecord};
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;

/// A listener on the tunnels channel.
async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(TUNNELS_CHANNEL).await?;
    Ok(listener)
}

impl SqlStore {
    pub(crate) async fn register_server_impl(&self, server: &ServerRecord) -> Result<(), StoreError> {
        if server.id.is_empty() {
            return Err(StoreError::BadRequest("a server needs a non-empty id".into()));
        }
        let now = now_secs();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO servers (id, endpoint, public_key, started_at, heartbeat_at, sealing_key_id) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET endpoint = excluded.endpoint, public_key = excluded.public_key, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             sealing_key_id = excluded.sealing_key_id",
        )
        .bind(&server.id)
        .bind(&server.endpoint)
        .bind(&server.public_key)
        .bind(now)
        .bind(now)
        .bind(&server.sealing_key_id)
        .execute(&mut *tx)
        .await?;
        let detail =
            format!("endpoint={} key={} sealing_key_id={}", server.endpoint, server.public_key, server.sealing_key_id);
        let actor = Actor(format!("server:{}", server.id));
        audit(&mut tx, &actor, "server.start", &format!("server/{}", server.id), &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn heartbeat_impl(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE servers SET heartbeat_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done == 0 {
            return Err(StoreError::NotFound { kind: "server", name: id.to_owned() });
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_servers_impl(&self) -> Result<Vec<ServerStatus>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT s.id, s.endpoint, s.public_key, s.started_at, s.heartbeat_at, s.sealing_key_id, COUNT(t.node) \
             FROM servers s LEFT JOIN tunnels t ON t.server = s.id \
             GROUP BY s.id, s.endpoint, s.public_key, s.started_at, s.heartbeat_at, s.sealing_key_id ORDER BY s.id",
        )
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, endpoint, public_key, started_at, heartbeat_at, sealing_key_id, active_tunnels)| ServerStatus {
                server: ServerRecord { id, endpoint, public_key, started_at, heartbeat_at, sealing_key_id },
                active_tunnels,
            })
            .collect())
    }

    pub(crate) async fn close_tunnels_of_lost_servers_impl(
        &self,
        now: i64,
        grace_secs: i64,
        except: &str,
    ) -> Result<Vec<TunnelRecord>, StoreError> {
        let cutoff = now.saturating_sub(grace_secs.max(0));
        let mut tx = self.begin_write().await?;
        // Lost: no server row with a heartbeat at or after the cutoff.
        let rows: Vec<TunnelRow> = sqlx::query_as(&format!(
            "SELECT {TUNNEL_COLUMNS} FROM tunnels t WHERE t.server <> $1 AND NOT EXISTS \
             (SELECT 1 FROM servers s WHERE s.id = t.server AND s.heartbeat_at >= $2) ORDER BY t.node"
        ))
        .bind(except)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let reaper = Actor(format!("server:{except}"));
        let mut closed = Vec::with_capacity(rows.len());
        for row in rows {
            let t = tunnel(row)?;
            if let Some(t) = delete_tunnel(&mut tx, &t.node, CloseReason::ServerLost, &reaper).await? {
                closed.push(t);
            }
        }
        // Should a lost server come back, it learns its peers are gone.
        announce(&mut tx, self.backend, &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    pub(crate) async fn watch_tunnels_impl(
        &self,
        server: &str,
    ) -> Result<Option<mpsc::UnboundedReceiver<()>>, StoreError> {
        let Some(url) = self.postgres_url.clone() else { return Ok(None) };
        // The first connection fails the call; later ones are retried in the background.
        let first = listen(&url).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let server = server.to_owned();
        tokio::spawn(async move {
            const FIRST_BACKOFF: Duration = Duration::from_millis(250);
            let mut listener = Some(first);
            let mut backoff = FIRST_BACKOFF;
            loop {
                let Some(l) = listener.as_mut() else {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    let result = tokio::select! {
                        _ = tx.closed() => return,
                        r = listen(&url) => r,
                    };
                    match result {
                        Ok(l) => {
                            tracing::info!("tunnel notifications: listening again");
                            listener = Some(l);
                            backoff = FIRST_BACKOFF;
                            // Whatever was announced while we were away is lost.
                            if tx.send(()).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "tunnel notifications: cannot listen");
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                    continue;
                };
                let received = tokio::select! {
                    _ = tx.closed() => return,
                    r = l.try_recv() => r,
                };
                match received {
                    Ok(Some(n)) if n.payload() == server => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    // The connection dropped and was re-established (listening again):
                    // notifications in between may be lost.
                    Ok(None) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tunnel notifications: connection lost");
                        listener = None;
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}
