//! Several servers on one store: registration, heartbeats, and prompt reconciles when
//! another server closes or replaces one of this server's tunnels.
//!
//! Each server has its own WireGuard device and key; the store is shared. A tunnel row
//! names the server whose device holds its peer, so each server reconciles only its
//! own. A server that stops heartbeating for `[cluster] lost_after_secs` is lost: the
//! others close its tunnels (its nodes fail over and enroll elsewhere), and if it comes
//! back, its start-up reconcile removes the stale peers.

use crate::config::Config;
use crate::tunnels::TunnelManager;
use anyhow::Context;
use ferry_store::{PublicKey, ServerRecord, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Proves this server's sealing key is the store's (see [`ferry_store::SealingStore::check_sealing_key`]),
/// before it registers: a server with another key must not join, as healthy, a cluster
/// whose secrets it cannot open.
pub async fn check_sealing_key(
    store: &Arc<dyn Store>,
    id: &str,
    key_file: &std::path::Path,
    key_was_made: bool,
) -> anyhow::Result<()> {
    let actor = ferry_store::Actor(format!("server:{id}"));
    let made = if key_was_made { " (made at this start: the file did not exist)" } else { "" };
    let outcome = store
        .check_sealing_key(&actor)
        .await
        .with_context(|| format!("the sealing key {}{made} does not fit this store", key_file.display()))?;
    let key_id = store.sealing_key_id();
    match outcome {
        ferry_store::SealingKeyCheck::Verified => tracing::info!(key_id, "sealing key verified against the store"),
        ferry_store::SealingKeyCheck::Recorded => tracing::info!(key_id, "sealing key recorded in the new store"),
        ferry_store::SealingKeyCheck::Adopted { opened, unreadable } => {
            tracing::info!(key_id, opened, "sealing key adopted: it opens the store's sealed values");
            if !unreadable.is_empty() {
                tracing::warn!(
                    key_id,
                    unreadable = %unreadable.join(", "),
                    "these sealed values were sealed under another key and no server can open them: set them again \
                     (ferry secret set, ferry node set --asset-tag-file)"
                );
            }
        }
    }
    Ok(())
}

/// Records this server in the store, refusing an id that a live server with another
/// WireGuard key holds (two servers with one id would undo each other's peers).
pub async fn register(store: &Arc<dyn Store>, config: &Config, id: &str, public_key: &PublicKey) -> anyhow::Result<()> {
    let now = ferry_store::now_secs();
    let lost_after = config.cluster.lost_after_secs as i64;
    let servers = store.list_servers().await.context("cannot read the servers from the store")?;
    if let Some(other) = servers.iter().find(|s| s.server.id == id) {
        let age = now - other.server.heartbeat_at;
        if other.server.public_key != *public_key && age < lost_after {
            anyhow::bail!(
                "server id {id:?} is in use by another live server (WireGuard key {}, heartbeat {age} s ago): \
                 give each server its own [cluster] server_id",
                other.server.public_key
            );
        }
    }
    let wg = &config.wireguard;
    let endpoint =
        wg.endpoint.clone().unwrap_or_else(|| format!("{}:{}", config.provisioning.listen.ip(), wg.listen_port));
    let record = ServerRecord {
        id: id.to_owned(),
        endpoint,
        public_key: *public_key,
        started_at: now,
        heartbeat_at: now,
        sealing_key_id: store.sealing_key_id().to_owned(),
    };
    store.register_server(&record).await.context("cannot register this server in the store")?;
    tracing::info!(
        server_id = id,
        others = servers.iter().filter(|s| s.server.id != id).count(),
        "registered in the store"
    );
    Ok(())
}

/// Records that this server is alive every `[cluster] heartbeat_secs`.
pub async fn heartbeat_loop(
    store: Arc<dyn Store>,
    config: Arc<Config>,
    id: String,
    public_key: PublicKey,
    stopped: impl Future<Output = ()>,
) {
    crate::periodic::every(Duration::from_secs(config.cluster.heartbeat_secs), stopped, || async {
        match store.heartbeat(&id, ferry_store::now_secs()).await {
            Ok(()) => {}
            // Someone removed this server's row: register again.
            Err(StoreError::NotFound { .. }) => {
                if let Err(e) = register(&store, &config, &id, &public_key).await {
                    tracing::error!(error = %e, "could not register this server again");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "could not record the heartbeat; other servers will close this server's tunnels if it stays silent"
            ),
        }
    })
    .await
}

/// Reconciles at once when the store says another server closed or replaced one of
/// this server's tunnels (PostgreSQL LISTEN/NOTIFY); the periodic reconcile stays the
/// safety net. With SQLite there is one server and nothing to watch.
pub async fn watch_loop(store: Arc<dyn Store>, tunnels: Arc<TunnelManager>, stopped: impl Future<Output = ()>) {
    let mut changes = match store.watch_tunnels(tunnels.server_id()).await {
        Ok(Some(rx)) => rx,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the store for tunnel changes; relying on the periodic reconcile");
            return;
        }
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            change = changes.recv() => {
                if change.is_none() {
                    tracing::warn!("the store's tunnel notifications ended; relying on the periodic reconcile");
                    return;
                }
                // Everything that arrived meanwhile is covered by one reconcile.
                while changes.try_recv().is_ok() {}
                match tunnels.reconcile().await {
                    Ok(report) => tracing::debug!(?report, "reconciled after a change made by another server"),
                    Err(e) => tracing::error!(error = %e, "reconcile failed"),
                }
            }
        }
    }
}
