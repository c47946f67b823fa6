//! Tunnels, boots and host keys in the SQL store ([`TunnelStore`]): the write
//! transactions are `tunnel_tx`'s, run on the write path (`Writer::run`); the reads are
//! here.

use crate::codec::parse_name;
use crate::sql::SqlStore;
use crate::tunnel_tx::{
    tunnel, CloseTunnel, CloseTunnels, ExpireTunnels, OpenTunnel, PhoneHome, TunnelRow, TUNNEL_COLUMNS,
};
use crate::{
    format_time, Actor, BootInfo, BootReport, CloseReason, OpenedTunnel, StoreError, TunnelRecord, TunnelStore,
};
use async_trait::async_trait;
use ferry_api::admin::KnownHost;
use ferry_core::tunnel::{AgentMode, TunnelNetwork};
use ferry_core::wgkey::PublicKey;
use ferry_core::NodeName;
use std::net::IpAddr;

/// booted_at, address, instance_id, hostname, fqdn, boot_count
type BootRow = (i64, String, Option<String>, Option<String>, Option<String>, i64);

#[async_trait]
impl TunnelStore for SqlStore {
    #[allow(clippy::too_many_arguments)]
    async fn open_tunnel(
        &self,
        node: &NodeName,
        public_key: &PublicKey,
        network: &TunnelNetwork,
        ttl_secs: u64,
        mode: Option<AgentMode>,
        server: &str,
        actor: &Actor,
    ) -> Result<OpenedTunnel, StoreError> {
        let open = OpenTunnel {
            node: node.clone(),
            public_key: *public_key,
            network: *network,
            ttl_secs,
            mode,
            server: server.to_owned(),
            actor: actor.clone(),
            hint: self.address_hint.clone(),
        };
        self.writer.run_batchable(open).await
    }

    async fn close_tunnel(
        &self,
        node: &NodeName,
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Option<TunnelRecord>, StoreError> {
        self.writer.run(CloseTunnel { node: node.clone(), reason, actor: actor.clone() }).await
    }

    async fn close_tunnels(
        &self,
        tunnels: &[TunnelRecord],
        reason: CloseReason,
        actor: &Actor,
    ) -> Result<Vec<TunnelRecord>, StoreError> {
        if tunnels.is_empty() {
            return Ok(Vec::new());
        }
        self.writer.run(CloseTunnels { tunnels: tunnels.to_vec(), reason, actor: actor.clone() }).await
    }

    async fn expire_tunnels(&self, now: i64) -> Result<Vec<TunnelRecord>, StoreError> {
        self.writer.run(ExpireTunnels { now }).await
    }

    async fn list_tunnels(&self) -> Result<Vec<TunnelRecord>, StoreError> {
        let rows: Vec<TunnelRow> = sqlx::query_as(&format!("SELECT {TUNNEL_COLUMNS} FROM tunnels ORDER BY node"))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(tunnel).collect()
    }

    async fn tunnel_by_address(&self, address: IpAddr) -> Result<Option<TunnelRecord>, StoreError> {
        let row: Option<TunnelRow> =
            sqlx::query_as(&format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE address = $1"))
                .bind(address.to_string())
                .fetch_optional(&self.read)
                .await?;
        row.map(tunnel).transpose()
    }

    async fn phone_home(&self, t: &TunnelRecord, report: &BootReport) -> Result<Option<TunnelRecord>, StoreError> {
        self.writer.run_batchable(PhoneHome { tunnel: t.clone(), report: report.clone() }).await
    }

    async fn boot_info(&self, node: &NodeName) -> Result<Option<BootInfo>, StoreError> {
        let mut tx = self.begin_read().await?;
        let row: Option<BootRow> = sqlx::query_as(
            "SELECT booted_at, address, instance_id, hostname, fqdn, boot_count FROM boots WHERE node = $1",
        )
        .bind(node.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((at, address, instance_id, hostname, fqdn, boot_count)) = row else { return Ok(None) };
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
            fqdn,
            boot_count,
            host_keys: keys.into_iter().map(|(k,)| k).collect(),
        }))
    }

    async fn host_keys(&self) -> Result<Vec<KnownHost>, StoreError> {
        let mut tx = self.begin_read().await?;
        let keys: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT h.node, h.key_text, b.fqdn FROM host_keys h LEFT JOIN boots b ON b.node = h.node \
             ORDER BY h.node, h.key_type",
        )
        .fetch_all(&mut *tx)
        .await?;
        let ips: Vec<(String, String)> =
            sqlx::query_as("SELECT node, value FROM node_addresses WHERE kind = 'ip' ORDER BY node, value")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut addresses: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (node, ip) in ips {
            addresses.entry(node).or_default().push(ip);
        }
        keys.into_iter()
            .map(|(n, key, fqdn)| {
                let node: NodeName = parse_name("node", &n)?;
                let fqdn = fqdn.filter(|f| node.owns_fqdn(f));
                Ok(KnownHost { addresses: addresses.get(&n).cloned().unwrap_or_default(), node, fqdn, key })
            })
            .collect()
    }
}
