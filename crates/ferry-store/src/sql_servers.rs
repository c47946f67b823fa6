//! Server records of the SQL store: registration, heartbeats, the tunnels of lost
//! servers, and (PostgreSQL) the notifications that tell a server its tunnels changed.

use crate::audit_rows::audit;
use crate::codec::parse_name;
use crate::sql::SqlStore;
use crate::tunnel_tx::{CloseTunnelsOfLostServers, TUNNELS_CHANNEL};
use crate::{now_secs, Actor, ServerRecord, ServerStatus, ServerStore, StoreError, TunnelRecord};
use async_trait::async_trait;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::mpsc;

/// A listener on the tunnels channel.
async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(TUNNELS_CHANNEL).await?;
    Ok(listener)
}

#[async_trait]
impl ServerStore for SqlStore {
    async fn register_server(&self, server: &ServerRecord) -> Result<(), StoreError> {
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
        .bind(server.public_key.to_base64())
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

    async fn heartbeat(&self, id: &str, now: i64) -> Result<(), StoreError> {
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

    async fn list_servers(&self) -> Result<Vec<ServerStatus>, StoreError> {
        let rows: Vec<(String, String, String, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT s.id, s.endpoint, s.public_key, s.started_at, s.heartbeat_at, s.sealing_key_id, COUNT(t.node) \
             FROM servers s LEFT JOIN tunnels t ON t.server = s.id \
             GROUP BY s.id, s.endpoint, s.public_key, s.started_at, s.heartbeat_at, s.sealing_key_id ORDER BY s.id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(id, endpoint, public_key, started_at, heartbeat_at, sealing_key_id, active_tunnels)| {
                let public_key = parse_name(&format!("server {id}"), &public_key)?;
                let server = ServerRecord { id, endpoint, public_key, started_at, heartbeat_at, sealing_key_id };
                Ok(ServerStatus { server, active_tunnels })
            })
            .collect()
    }

    async fn remove_server(&self, id: &str, now: i64, lost_after_secs: i64, actor: &Actor) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT heartbeat_at FROM servers WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        let Some((heartbeat_at,)) = row else {
            return Err(StoreError::NotFound { kind: "server", name: id.to_owned() });
        };
        let silent = now - heartbeat_at;
        if silent <= lost_after_secs {
            return Err(StoreError::Conflict(format!(
                "server {id} is alive (last heartbeat {silent} s ago): stop it first; a server is removed only \
                 after it has been silent for lost_after_secs ({lost_after_secs} s)"
            )));
        }
        let (tunnels,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM tunnels WHERE server = $1").bind(id).fetch_one(&mut *tx).await?;
        if tunnels > 0 {
            return Err(StoreError::Conflict(format!(
                "server {id} still holds {tunnels} tunnel(s): the running servers close them within a reconcile \
                 interval of its loss; retry then"
            )));
        }
        sqlx::query("DELETE FROM servers WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let detail = format!("silent for {silent} s");
        audit(&mut tx, actor, "server.remove", &format!("server/{id}"), &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close_tunnels_of_lost_servers(
        &self,
        now: i64,
        grace_secs: i64,
        except: &str,
    ) -> Result<Vec<TunnelRecord>, StoreError> {
        let except = except.to_owned();
        self.writer.run(CloseTunnelsOfLostServers { now, grace_secs, except }).await
    }

    async fn watch_tunnels(&self, server: &str) -> Result<Option<mpsc::UnboundedReceiver<()>>, StoreError> {
        let Some(hosts) = self.postgres_hosts.clone() else { return Ok(None) };
        // The first connection fails the call; later ones are retried in the background,
        // at whichever host is the primary by then.
        let first = listen(&hosts.current_url()).await?;
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
                    let url = hosts.current_url();
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
