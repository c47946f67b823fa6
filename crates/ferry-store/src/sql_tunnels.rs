//! Tunnel, boot and host-key queries of the SQL store (the `Store` trait methods
//! delegate here to keep each file about one subject).

use crate::sql::{audit, parse_name, Backend, SqlStore, TUNNELS_CHANNEL};
use crate::{format_time, now_secs, Actor, BootInfo, BootReport, CloseReason, OpenedTunnel, StoreError, TunnelRecord};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::{MacAddr, NodeName};
use sqlx::AnyConnection;
use std::collections::BTreeSet;
use std::net::IpAddr;

pub(crate) type TunnelRow = (String, String, String, i64, i64, Option<String>, String);
/// booted_at, address, instance_id, hostname, boot_count
type BootRow = (i64, String, Option<String>, Option<String>, i64);
pub(crate) const TUNNEL_COLUMNS: &str = "node, public_key, address, created_at, expires_at, mode, server";
// The boot path's statements, shared by the sqlx code (PostgreSQL, and SQLite off the
// boot path) and the SQLite writer thread (`sqlite_writer`).
/// The node's tunnel, closed (a re-enrollment replaces it, a revocation ends it).
pub(crate) const TUNNEL_DELETE_OF_NODE: &str = "DELETE FROM tunnels WHERE node = $1 \
     RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// The node's tunnel, closed only if it is still the one with this key.
const TUNNEL_DELETE_IF_CURRENT: &str = "DELETE FROM tunnels WHERE node = $1 AND public_key = $2 \
     RETURNING node, public_key, address, created_at, expires_at, mode, server";
pub(crate) const TUNNEL_KEY_OWNER: &str = "SELECT node FROM tunnels WHERE public_key = $1";
pub(crate) const TUNNEL_ADDRESS_TAKEN: &str = "SELECT 1 FROM tunnels WHERE address = $1";
pub(crate) const HOST_KEYS_DELETE: &str = "DELETE FROM host_keys WHERE node = $1";
pub(crate) const HOST_KEY_INSERT: &str = "INSERT INTO host_keys (node, key_type, key_text) VALUES ($1, $2, $3)";
pub(crate) const TUNNEL_INSERT: &str =
    "INSERT INTO tunnels (node, public_key, address, created_at, expires_at, mode, server) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// Only the tunnel a phone-home came through, and only while it is still the node's
/// current one (a replaced tunnel cannot close its successor).
pub(crate) const TUNNEL_PHONE_HOME_DELETE: &str = "DELETE FROM tunnels WHERE node = $1 AND address = $2 \
     AND public_key = $3 RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// The node's boot record: the last boot's facts and how many boots so far.
pub(crate) const BOOT_UPSERT: &str =
    "INSERT INTO boots (node, booted_at, address, instance_id, hostname, fqdn, boot_count) \
     VALUES ($1, $2, $3, $4, $5, $6, 1) \
     ON CONFLICT (node) DO UPDATE SET booted_at = excluded.booted_at, address = excluded.address, \
     instance_id = excluded.instance_id, hostname = excluded.hostname, fqdn = excluded.fqdn, \
     boot_count = boots.boot_count + 1";

/// A key already bound to another node's tunnel is never moved silently.
pub(crate) fn key_in_use(owner: &str) -> StoreError {
    StoreError::Conflict(format!("WireGuard key already in use by the tunnel of {owner}"))
}

/// The addresses an allocation tries, in order: from the hint on, wrapping around once
/// (at most 2^20: a pool that full is exhausted for any practical purpose), each with
/// where the next search should start if this one is taken. The unique index on
/// `tunnels.address` backs the search up against any other writer.
pub(crate) fn address_candidates(network: TunnelNetwork, hint: u128) -> impl Iterator<Item = (IpAddr, u128)> {
    let range = network.node_offsets();
    let (first, last) = (*range.start(), *range.end());
    let size = last - first + 1;
    let start = hint.clamp(first, last) - first;
    (0..size.min(1 << 20)).map(move |i| {
        let offset = first + (start + i) % size;
        (network.address_at(offset), if offset == last { first } else { offset + 1 })
    })
}

/// The audit entry (action, subject, detail) of an opened tunnel.
pub(crate) fn audit_detail_open(t: &TunnelRecord, ttl_secs: u64) -> (&'static str, String, String) {
    let detail = format!("address={} key={} ttl={ttl_secs}s", t.address, t.public_key);
    ("tunnel.open", format!("node/{}", t.node), detail)
}

/// The audit entry (action, subject, detail) of a closed tunnel.
pub(crate) fn audit_detail_close(t: &TunnelRecord, reason: CloseReason) -> (&'static str, String, String) {
    let detail = format!("reason={} address={} key={}", reason.as_str(), t.address, t.public_key);
    ("tunnel.close", format!("node/{}", t.node), detail)
}

/// The audit entry (action, subject, detail) of a node's phone-home.
pub(crate) fn audit_detail_booted(t: &TunnelRecord, report: &BootReport) -> (&'static str, String, String) {
    let detail =
        format!("host_keys={} instance_id={}", report.host_keys.len(), report.instance_id.as_deref().unwrap_or("-"));
    ("node.booted", format!("node/{}", t.node), detail)
}

pub(crate) fn tunnel(row: TunnelRow) -> Result<TunnelRecord, StoreError> {
    let (node, public_key, address, created_at, expires_at, mode, server) = row;
    Ok(TunnelRecord {
        node: parse_name("tunnel node", &node)?,
        public_key,
        address: address.parse().map_err(|_| StoreError::Corrupt(format!("tunnel of {node}"), "bad address".into()))?,
        created_at,
        expires_at,
        mode,
        server,
    })
}

pub(crate) async fn delete_tunnel(
    conn: &mut AnyConnection,
    node: &NodeName,
    reason: CloseReason,
    actor: &Actor,
) -> Result<Option<TunnelRecord>, StoreError> {
    let row: Option<TunnelRow> =
        sqlx::query_as(TUNNEL_DELETE_OF_NODE).bind(node.as_str()).fetch_optional(&mut *conn).await?;
    let Some(row) = row else { return Ok(None) };
    let t = tunnel(row)?;
    audit_close(conn, actor, &t, reason).await?;
    Ok(Some(t))
}

async fn audit_close(
    conn: &mut AnyConnection,
    actor: &Actor,
    t: &TunnelRecord,
    reason: CloseReason,
) -> Result<(), StoreError> {
    let (action, subject, detail) = audit_detail_close(t, reason);
    audit(conn, actor, action, &subject, &detail).await
}

/// Tells the servers holding these tunnels that their tunnels changed under them
/// (PostgreSQL `NOTIFY`, delivered at commit; one per server). SQLite: one server, no-op.
pub(crate) async fn announce<'a>(
    conn: &mut AnyConnection,
    backend: Backend,
    closed: impl IntoIterator<Item = &'a TunnelRecord>,
) -> Result<(), StoreError> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    let servers: BTreeSet<&str> = closed.into_iter().map(|t| t.server.as_str()).collect();
    for server in servers {
        sqlx::query("SELECT pg_notify($1, $2)").bind(TUNNELS_CHANNEL).bind(server).execute(&mut *conn).await?;
    }
    Ok(())
}

impl SqlStore {
    pub(crate) async fn node_by_mac_impl(&self, mac: &MacAddr) -> Result<Option<NodeName>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT node FROM node_addresses WHERE kind = 'mac' AND value = $1")
                .bind(mac.to_string())
                .fetch_optional(&self.read)
                .await?;
        row.map(|(n,)| parse_name("node", &n)).transpose()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn open_tunnel_impl(
        &self,
        node: &NodeName,
        public_key: &str,
        network: &TunnelNetwork,
        ttl_secs: u64,
        mode: Option<&str>,
        server: &str,
        actor: &Actor,
    ) -> Result<OpenedTunnel, StoreError> {
        if let Some(writer) = &self.sqlite_writer {
            let req = crate::sqlite_writer::OpenRequest {
                node: node.clone(),
                public_key: public_key.to_owned(),
                network: *network,
                ttl_secs,
                mode: mode.map(str::to_owned),
                server: server.to_owned(),
                actor: actor.clone(),
                hint: *self.next_address.lock().unwrap_or_else(|p| p.into_inner()),
            };
            let (opened, next) = writer.run(move |tx| crate::sqlite_writer::open_tunnel(tx, req)).await?;
            *self.next_address.lock().unwrap_or_else(|p| p.into_inner()) = next;
            return Ok(opened);
        }
        let mut tx = self.begin_write().await?;
        let replaced = delete_tunnel(&mut tx, node, CloseReason::Replaced, actor).await?;
        // The node re-enrolled through another server: the old one must drop its peer.
        let moved = replaced.iter().filter(|r| r.server != server);
        announce(&mut tx, self.backend, moved).await?;
        let key_owner: Option<(String,)> =
            sqlx::query_as(TUNNEL_KEY_OWNER).bind(public_key).fetch_optional(&mut *tx).await?;
        if let Some((owner,)) = key_owner {
            return Err(key_in_use(&owner));
        }
        let address = self.free_address(&mut tx, network).await?;
        let now = now_secs();
        let t = TunnelRecord {
            node: node.clone(),
            public_key: public_key.to_owned(),
            address,
            created_at: now,
            expires_at: now + ttl_secs as i64,
            mode: mode.map(str::to_owned),
            server: server.to_owned(),
        };
        sqlx::query(TUNNEL_INSERT)
            .bind(node.as_str())
            .bind(public_key)
            .bind(address.to_string())
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(&t.mode)
            .bind(server)
            .execute(&mut *tx)
            .await?;
        let (action, subject, detail) = audit_detail_open(&t, ttl_secs);
        audit(&mut tx, actor, action, &subject, &detail).await?;
        tx.commit().await?;
        Ok(OpenedTunnel { tunnel: t, replaced })
    }

    /// The next free address (see [`address_candidates`]).
    async fn free_address(&self, conn: &mut AnyConnection, network: &TunnelNetwork) -> Result<IpAddr, StoreError> {
        let hint = *self.next_address.lock().unwrap_or_else(|p| p.into_inner());
        for (candidate, next) in address_candidates(*network, hint) {
            let taken =
                sqlx::query(TUNNEL_ADDRESS_TAKEN).bind(candidate.to_string()).fetch_optional(&mut *conn).await?;
            if taken.is_none() {
                *self.next_address.lock().unwrap_or_else(|p| p.into_inner()) = next;
                return Ok(candidate);
            }
        }
        Err(StoreError::PoolExhausted(network.to_string()))
    }

    pub(crate) async fn close_tunnel_impl(
        &self,
        node: &NodeName,
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Option<TunnelRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let closed = delete_tunnel(&mut tx, node, reason, actor).await?;
        announce(&mut tx, self.backend, &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    pub(crate) async fn close_tunnels_impl(
        &self,
        tunnels: &[TunnelRecord],
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Vec<TunnelRecord>, StoreError> {
        if tunnels.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut closed = Vec::with_capacity(tunnels.len());
        for t in tunnels {
            let row: Option<TunnelRow> = sqlx::query_as(TUNNEL_DELETE_IF_CURRENT)
                .bind(t.node.as_str())
                .bind(&t.public_key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                let t = tunnel(row)?;
                audit_close(&mut tx, actor, &t, reason).await?;
                closed.push(t);
            }
        }
        announce(&mut tx, self.backend, &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    pub(crate) async fn expire_tunnels_impl(&self, now: i64) -> Result<Vec<TunnelRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows: Vec<TunnelRow> =
            sqlx::query_as(&format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE expires_at <= $1"))
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
        let mut closed = Vec::with_capacity(rows.len());
        let reaper = Actor("ferry:reaper".into());
        for row in rows {
            let t = tunnel(row)?;
            if let Some(t) = delete_tunnel(&mut tx, &t.node, CloseReason::Expired, &reaper).await? {
                closed.push(t);
            }
        }
        announce(&mut tx, self.backend, &closed).await?;
        tx.commit().await?;
        Ok(closed)
    }

    pub(crate) async fn list_tunnels_impl(&self) -> Result<Vec<TunnelRecord>, StoreError> {
        let rows: Vec<TunnelRow> = sqlx::query_as(&format!("SELECT {TUNNEL_COLUMNS} FROM tunnels ORDER BY node"))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(tunnel).collect()
    }

    pub(crate) async fn tunnel_by_address_impl(&self, address: IpAddr) -> Result<Option<TunnelRecord>, StoreError> {
        let row: Option<TunnelRow> =
            sqlx::query_as(&format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE address = $1"))
                .bind(address.to_string())
                .fetch_optional(&self.read)
                .await?;
        row.map(tunnel).transpose()
    }

    pub(crate) async fn phone_home_impl(
        &self,
        t: &TunnelRecord,
        report: &BootReport,
    ) -> Result<Option<TunnelRecord>, StoreError> {
        if let Some(writer) = &self.sqlite_writer {
            let (t, report) = (t.clone(), report.clone());
            return writer.run(move |tx| crate::sqlite_writer::phone_home(tx, &t, &report)).await;
        }
        let mut tx = self.begin_write().await?;
        // Nothing matched: the transaction is dropped, so nothing is written.
        let row: Option<TunnelRow> = sqlx::query_as(TUNNEL_PHONE_HOME_DELETE)
            .bind(t.node.as_str())
            .bind(t.address.to_string())
            .bind(&t.public_key)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let closed = tunnel(row)?;
        sqlx::query(BOOT_UPSERT)
            .bind(t.node.as_str())
            .bind(now_secs())
            .bind(t.address.to_string())
            .bind(&report.instance_id)
            .bind(&report.hostname)
            .bind(&report.fqdn)
            .execute(&mut *tx)
            .await?;
        if !report.host_keys.is_empty() {
            sqlx::query(HOST_KEYS_DELETE).bind(t.node.as_str()).execute(&mut *tx).await?;
            for (kind, key) in &report.host_keys {
                sqlx::query(HOST_KEY_INSERT).bind(t.node.as_str()).bind(kind).bind(key).execute(&mut *tx).await?;
            }
        }
        let node_actor = Actor(format!("node:{}", t.node));
        let (action, subject, detail) = audit_detail_booted(&closed, report);
        audit(&mut tx, &node_actor, action, &subject, &detail).await?;
        audit_close(&mut tx, &node_actor, &closed, CloseReason::PhoneHome).await?;
        tx.commit().await?;
        Ok(Some(closed))
    }

    pub(crate) async fn boot_info_impl(&self, node: &NodeName) -> Result<Option<BootInfo>, StoreError> {
        let mut tx = self.begin_read().await?;
        let row: Option<BootRow> =
            sqlx::query_as("SELECT booted_at, address, instance_id, hostname, boot_count FROM boots WHERE node = $1")
                .bind(node.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((at, address, instance_id, hostname, boot_count)) = row else { return Ok(None) };
        let keys: Vec<(String,)> = sqlx::query_as("SELECT key_text FROM host_keys WHERE node = $1 ORDER BY key_type")
            .bind(node.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(BootInfo {
            node: node.clone(),
            booted_at: format_time(at),
            address,
            instance_id,
            hostname,
            boot_count,
            host_keys: keys.into_iter().map(|(k,)| k).collect(),
        }))
    }

    pub(crate) async fn host_keys_impl(&self) -> Result<Vec<(NodeName, String)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT node, key_text FROM host_keys ORDER BY node, key_type")
                .fetch_all(&self.read)
                .await?;
        rows.into_iter().map(|(n, k)| Ok((parse_name("node", &n)?, k))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::address_candidates;
    use ferry_core::tunnel::TunnelNetwork;

    #[test]
    fn the_address_search_starts_at_the_hint_and_wraps_around_once() {
        let net = TunnelNetwork::parse("10.9.0.0/29").unwrap(); // nodes: .2 to .6
        let tried: Vec<(String, u128)> = address_candidates(net, 5).map(|(a, next)| (a.to_string(), next)).collect();
        let expected = [("10.9.0.5", 6), ("10.9.0.6", 2), ("10.9.0.2", 3), ("10.9.0.3", 4), ("10.9.0.4", 5)];
        assert_eq!(tried, expected.map(|(a, n)| (a.to_string(), n)));
        let first = address_candidates(net, 0).next().map(|(a, _)| a.to_string());
        assert_eq!(first.as_deref(), Some("10.9.0.2"), "a hint outside the range starts at its start");
    }
}
