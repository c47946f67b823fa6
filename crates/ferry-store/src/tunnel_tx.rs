//! The tunnel write transactions — open (replacing the node's tunnel), phone-home, and
//! every close — written once against [`WriteConn`]: on SQLite they run on the writer
//! thread through rusqlite, on PostgreSQL through sqlx (`Writer::run`), and the node
//! deletion runs [`delete_tunnel`] inside its own sqlx transaction. The `NOTIFY` that
//! tells another server its tunnel changed and the address hint are part of this one
//! copy, so both backends do the same.

use crate::audit_rows::{insert_audit, insert_audit_rows, AuditRow};
use crate::codec::parse_name;
use crate::write_conn::{Param, Transact, WriteConn};
use crate::{now_secs, Actor, BootReport, CloseReason, OpenedTunnel, StoreError, TunnelRecord};
use ferry_core::tunnel::{AgentMode, TunnelNetwork};
use ferry_core::wgkey::PublicKey;
use ferry_core::NodeName;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The PostgreSQL channel on which tunnel closures are announced (payload: the server id
/// that holds the tunnel).
pub(crate) const TUNNELS_CHANNEL: &str = "ferry_tunnels";

/// node, public_key, address, created_at, expires_at, mode, server
pub(crate) type TunnelRow = (String, String, String, i64, i64, Option<String>, String);
pub(crate) const TUNNEL_COLUMNS: &str = "node, public_key, address, created_at, expires_at, mode, server";
/// The node's tunnel, closed (a re-enrollment replaces it, a revocation ends it).
const TUNNEL_DELETE_OF_NODE: &str = "DELETE FROM tunnels WHERE node = $1 \
     RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// The node's tunnel, closed only if it is still the one with this key.
const TUNNEL_DELETE_IF_CURRENT: &str = "DELETE FROM tunnels WHERE node = $1 AND public_key = $2 \
     RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// The node's own tunnel (which an enrollment replaces) and the tunnel holding the new
/// key, deleted in one statement: the replacement and the key check in one round trip.
/// A row of another node means the key is taken, and the open fails: its rollback puts
/// that row back.
const TUNNEL_DELETE_OF_NODE_OR_KEY: &str = "DELETE FROM tunnels WHERE node = $1 OR public_key = $2 \
     RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// Inserts nothing when the address is taken: each try of the address search is the
/// insert itself (one statement, not a look-up and then an insert). Only the address:
/// the node's old tunnel is deleted and the key checked before, so any other conflict
/// is an error, never a reason to try the next address.
const TUNNEL_INSERT_UNLESS_ADDRESS_TAKEN: &str =
    "INSERT INTO tunnels (node, public_key, address, created_at, expires_at, mode, server) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (address) DO NOTHING";
/// Where the address goes among its parameters.
const TUNNEL_INSERT_ADDRESS: usize = 2;
const TUNNELS_EXPIRED: &str =
    "SELECT node, public_key, address, created_at, expires_at, mode, server FROM tunnels WHERE expires_at <= $1";
/// Lost: no server row with a heartbeat at or after the cutoff.
const TUNNELS_OF_LOST_SERVERS: &str = "SELECT node, public_key, address, created_at, expires_at, mode, server \
     FROM tunnels t WHERE t.server <> $1 AND NOT EXISTS \
     (SELECT 1 FROM servers s WHERE s.id = t.server AND s.heartbeat_at >= $2) ORDER BY t.node";
/// Only the tunnel a phone-home came through, and only while it is still the node's
/// current one (a replaced tunnel cannot close its successor).
const TUNNEL_PHONE_HOME_DELETE: &str = "DELETE FROM tunnels WHERE node = $1 AND address = $2 \
     AND public_key = $3 RETURNING node, public_key, address, created_at, expires_at, mode, server";
/// The node's boot record: the last boot's facts and how many boots so far.
const BOOT_UPSERT: &str = "INSERT INTO boots (node, booted_at, address, instance_id, hostname, fqdn, boot_count) \
     VALUES ($1, $2, $3, $4, $5, $6, 1) \
     ON CONFLICT (node) DO UPDATE SET booted_at = excluded.booted_at, address = excluded.address, \
     instance_id = excluded.instance_id, hostname = excluded.hostname, fqdn = excluded.fqdn, \
     boot_count = boots.boot_count + 1";
const HOST_KEYS_DELETE: &str = "DELETE FROM host_keys WHERE node = $1";
const HOST_KEY_INSERT: &str = "INSERT INTO host_keys (node, key_type, key_text) VALUES ($1, $2, $3)";

pub(crate) fn tunnel(row: TunnelRow) -> Result<TunnelRecord, StoreError> {
    let (node, public_key, address, created_at, expires_at, mode, server) = row;
    let what = format!("tunnel of {node}");
    Ok(TunnelRecord {
        public_key: parse_name(&what, &public_key)?,
        address: address.parse().map_err(|_| StoreError::Corrupt(what.clone(), "bad address".into()))?,
        mode: mode.map(|m| parse_name::<AgentMode>(&what, &m)).transpose()?,
        node: parse_name("tunnel node", &node)?,
        created_at,
        expires_at,
        server,
    })
}

/// A key already bound to another node's tunnel is never moved silently.
fn key_in_use(owner: &str) -> StoreError {
    StoreError::Conflict(format!("WireGuard key already in use by the tunnel of {owner}"))
}

/// Where the next address search starts (an offset into the tunnel network), so
/// allocation costs a few indexed look-ups instead of a scan of every tunnel. Only a
/// start point: the search itself runs inside the (serialized) write transaction, so it
/// stays correct when other servers allocate from the same database. Read when the
/// transaction runs and moved past the address it took (a rollback after that leaves a
/// free address behind the hint, found again when the search wraps around).
#[derive(Debug, Default)]
pub(crate) struct AddressHint(Mutex<u128>);

impl AddressHint {
    fn get(&self) -> u128 {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set(&self, next: u128) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

/// The addresses an allocation tries, in order: from the hint on, wrapping around once
/// (at most 2^20: a pool that full is exhausted for any practical purpose), each with
/// where the next search should start if this one is taken. The unique index on
/// `tunnels.address` backs the search up against any other writer.
fn address_candidates(network: TunnelNetwork, hint: u128) -> impl Iterator<Item = (IpAddr, u128)> {
    let range = network.node_offsets();
    let (first, last) = (*range.start(), *range.end());
    let size = last - first + 1;
    let start = hint.clamp(first, last) - first;
    (0..size.min(1 << 20)).map(move |i| {
        let offset = first + (start + i) % size;
        (network.address_at(offset), if offset == last { first } else { offset + 1 })
    })
}

/// Inserts the tunnel row `row` (the parameters of the insert, the address left out)
/// at the next free address (see [`address_candidates`]), which it returns; moves the
/// hint past it.
async fn insert_at_free_address<C: WriteConn>(
    conn: &mut C,
    row: [Param<'_>; 7],
    network: &TunnelNetwork,
    hint: &AddressHint,
) -> Result<IpAddr, StoreError> {
    for (candidate, next) in address_candidates(*network, hint.get()) {
        let address = candidate.to_string();
        let mut params = row;
        params[TUNNEL_INSERT_ADDRESS] = Param::Text(&address);
        if conn.execute(TUNNEL_INSERT_UNLESS_ADDRESS_TAKEN, &params).await? == 1 {
            hint.set(next);
            return Ok(candidate);
        }
    }
    Err(StoreError::PoolExhausted(network.to_string()))
}

/// The audit entry of a tunnel's close.
fn close_entry(at: i64, actor: &Actor, t: &TunnelRecord, reason: CloseReason) -> AuditRow {
    let detail = format!("reason={} address={} key={}", reason.as_str(), t.address, t.public_key);
    AuditRow { at, actor: actor.0.clone(), action: "tunnel.close".into(), subject: format!("node/{}", t.node), detail }
}

async fn audit_close<C: WriteConn>(
    conn: &mut C,
    at: i64,
    actor: &Actor,
    t: &TunnelRecord,
    reason: CloseReason,
) -> Result<(), StoreError> {
    insert_audit_rows(conn, &[close_entry(at, actor, t, reason)]).await
}

/// Closes the node's tunnel, audited with `reason`; None if it had none.
pub(crate) async fn delete_tunnel<C: WriteConn>(
    conn: &mut C,
    node: &NodeName,
    reason: CloseReason,
    actor: &Actor,
) -> Result<Option<TunnelRecord>, StoreError> {
    let Some(row) = conn.optional(TUNNEL_DELETE_OF_NODE, &[node.as_str().into()]).await? else { return Ok(None) };
    let t = tunnel(row)?;
    audit_close(conn, now_secs(), actor, &t, reason).await?;
    Ok(Some(t))
}

/// Tells the servers holding these tunnels that their tunnels changed under them
/// (PostgreSQL `NOTIFY`, delivered at commit; one per server). SQLite: one server, no-op.
pub(crate) async fn announce<'a, C: WriteConn>(
    conn: &mut C,
    closed: impl IntoIterator<Item = &'a TunnelRecord>,
) -> Result<(), StoreError> {
    if !conn.announces() {
        return Ok(());
    }
    let servers: BTreeSet<&str> = closed.into_iter().map(|t| t.server.as_str()).collect();
    for server in servers {
        conn.execute("SELECT pg_notify($1, $2)", &[TUNNELS_CHANNEL.into(), server.into()]).await?;
    }
    Ok(())
}

/// Closes each of `tunnels` with `reason` and announces them.
async fn delete_each<C: WriteConn>(
    conn: &mut C,
    tunnels: Vec<TunnelRow>,
    reason: CloseReason,
    actor: &Actor,
) -> Result<Vec<TunnelRecord>, StoreError> {
    let mut closed = Vec::with_capacity(tunnels.len());
    for row in tunnels {
        let t = tunnel(row)?;
        closed.extend(delete_tunnel(conn, &t.node, reason, actor).await?);
    }
    announce(conn, &closed).await?;
    Ok(closed)
}

/// `TunnelStore::open_tunnel`.
#[derive(Clone)]
pub(crate) struct OpenTunnel {
    pub node: NodeName,
    pub public_key: PublicKey,
    pub network: TunnelNetwork,
    pub ttl_secs: u64,
    pub mode: Option<AgentMode>,
    pub server: String,
    pub actor: Actor,
    pub hint: Arc<AddressHint>,
}

impl Transact for OpenTunnel {
    type Output = OpenedTunnel;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<OpenedTunnel, StoreError> {
        let key = self.public_key.to_base64();
        let mut replaced = None;
        for row in conn.all(TUNNEL_DELETE_OF_NODE_OR_KEY, &[self.node.as_str().into(), key.as_str().into()]).await? {
            let t = tunnel(row)?;
            if t.node != self.node {
                return Err(key_in_use(t.node.as_str()));
            }
            replaced = Some(t);
        }
        let now = now_secs();
        if let Some(t) = &replaced {
            audit_close(conn, now, &self.actor, t, CloseReason::Replaced).await?;
        }
        // The node re-enrolled through another server: the old one must drop its peer.
        announce(conn, replaced.iter().filter(|r| r.server != self.server)).await?;
        let expires_at = now + self.ttl_secs as i64;
        let row = [
            self.node.as_str().into(),
            key.as_str().into(),
            Param::Text(""), // TUNNEL_INSERT_ADDRESS
            now.into(),
            expires_at.into(),
            self.mode.map(AgentMode::as_str).into(),
            self.server.as_str().into(),
        ];
        let address = insert_at_free_address(conn, row, &self.network, &self.hint).await?;
        let t = TunnelRecord {
            node: self.node,
            public_key: self.public_key,
            address,
            created_at: now,
            expires_at,
            mode: self.mode,
            server: self.server,
        };
        let detail = format!("address={} key={} ttl={}s", t.address, t.public_key, self.ttl_secs);
        insert_audit(conn, now, &self.actor.0, "tunnel.open", &format!("node/{}", t.node), &detail).await?;
        Ok(OpenedTunnel { tunnel: t, replaced })
    }
}

/// `TunnelStore::phone_home`: `None` when the tunnel is no longer the node's current
/// one, and then nothing is written.
#[derive(Clone)]
pub(crate) struct PhoneHome {
    pub tunnel: TunnelRecord,
    pub report: BootReport,
}

impl Transact for PhoneHome {
    type Output = Option<TunnelRecord>;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Option<TunnelRecord>, StoreError> {
        let (t, report) = (&self.tunnel, &self.report);
        let (node, address, key) = (t.node.as_str(), t.address.to_string(), t.public_key.to_base64());
        let deleted = conn.optional(TUNNEL_PHONE_HOME_DELETE, &[node.into(), (&address).into(), (&key).into()]).await?;
        let Some(row) = deleted else { return Ok(None) };
        let closed = tunnel(row)?;
        let now = now_secs();
        let boot = [
            node.into(),
            now.into(),
            (&address).into(),
            report.instance_id.as_deref().into(),
            report.hostname.as_deref().into(),
            report.fqdn.as_deref().into(),
        ];
        conn.execute(BOOT_UPSERT, &boot).await?;
        if !report.host_keys.is_empty() {
            conn.execute(HOST_KEYS_DELETE, &[node.into()]).await?;
            for (kind, text) in &report.host_keys {
                conn.execute(HOST_KEY_INSERT, &[node.into(), kind.into(), text.into()]).await?;
            }
        }
        let actor = Actor(format!("node:{node}"));
        let instance = report.instance_id.as_deref().unwrap_or("-");
        let booted = AuditRow {
            at: now,
            actor: actor.0.clone(),
            action: "node.booted".into(),
            subject: format!("node/{node}"),
            detail: format!("host_keys={} instance_id={instance}", report.host_keys.len()),
        };
        let entries = [booted, close_entry(now, &actor, &closed, CloseReason::PhoneHome)];
        insert_audit_rows(conn, &entries).await?;
        Ok(Some(closed))
    }
}

/// `TunnelStore::close_tunnel`.
pub(crate) struct CloseTunnel {
    pub node: NodeName,
    pub reason: CloseReason,
    pub actor: Actor,
}

impl Transact for CloseTunnel {
    type Output = Option<TunnelRecord>;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Option<TunnelRecord>, StoreError> {
        let closed = delete_tunnel(conn, &self.node, self.reason, &self.actor).await?;
        announce(conn, &closed).await?;
        Ok(closed)
    }
}

/// `TunnelStore::close_tunnels`: each only while it is still its node's current one.
pub(crate) struct CloseTunnels {
    pub tunnels: Vec<TunnelRecord>,
    pub reason: CloseReason,
    pub actor: Actor,
}

impl Transact for CloseTunnels {
    type Output = Vec<TunnelRecord>;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Vec<TunnelRecord>, StoreError> {
        let mut closed = Vec::with_capacity(self.tunnels.len());
        for t in &self.tunnels {
            let key = t.public_key.to_base64();
            let params = [t.node.as_str().into(), key.as_str().into()];
            if let Some(row) = conn.optional(TUNNEL_DELETE_IF_CURRENT, &params).await? {
                let t = tunnel(row)?;
                audit_close(conn, now_secs(), &self.actor, &t, self.reason).await?;
                closed.push(t);
            }
        }
        announce(conn, &closed).await?;
        Ok(closed)
    }
}

/// `TunnelStore::expire_tunnels`.
pub(crate) struct ExpireTunnels {
    pub now: i64,
}

impl Transact for ExpireTunnels {
    type Output = Vec<TunnelRecord>;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Vec<TunnelRecord>, StoreError> {
        let expired = conn.all(TUNNELS_EXPIRED, &[self.now.into()]).await?;
        delete_each(conn, expired, CloseReason::Expired, &Actor("ferry:reaper".into())).await
    }
}

/// `ServerStore::close_tunnels_of_lost_servers`.
pub(crate) struct CloseTunnelsOfLostServers {
    pub now: i64,
    pub grace_secs: i64,
    /// The server asking (never lost to itself).
    pub except: String,
}

impl Transact for CloseTunnelsOfLostServers {
    type Output = Vec<TunnelRecord>;
    async fn run<C: WriteConn>(self, conn: &mut C) -> Result<Vec<TunnelRecord>, StoreError> {
        let cutoff = self.now.saturating_sub(self.grace_secs.max(0));
        let lost = conn.all(TUNNELS_OF_LOST_SERVERS, &[self.except.as_str().into(), cutoff.into()]).await?;
        // Should a lost server come back, it learns its peers are gone (the announce).
        delete_each(conn, lost, CloseReason::ServerLost, &Actor(format!("server:{}", self.except))).await
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
