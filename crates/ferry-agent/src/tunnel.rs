//! The node's end of the tunnel, behind traits so the state machine can be tested
//! without root. The real implementation uses ferry-wg (kernel or its in-process userspace device).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use ferry_wg::{open_device, BackendChoice, BackendKind, DeviceUpdate, InterfaceSetup, IpNet, PeerConfig};
use ferry_wg::{PrivateKey, PublicKey, WgDevice};

use crate::error::AgentError;
use crate::{guard, netlink};

/// What a tunnel is made of.
#[derive(Debug)]
pub struct TunnelSpec {
    pub interface: String,
    pub backend: BackendChoice,
    /// The node's key, moved into the device and dropped (zeroized) here.
    pub private_key: PrivateKey,
    /// The node's tunnel address, set as a /32 (/128).
    pub node_address: IpAddr,
    /// The server's tunnel address: the only allowed IP, routed through the interface.
    pub server_address: IpAddr,
    /// The PINNED server key (never the one from the response).
    pub server_key: PublicKey,
    pub endpoint: SocketAddr,
    pub keepalive: u16,
    /// Whether the tunnel may come up when the guard (only root may use it) cannot be
    /// installed: cloud-init mode never; fetch mode with a warning, since it runs from
    /// the initramfs where no unprivileged process exists (and whose kernel may lack
    /// nf_tables).
    pub guard: GuardPolicy,
}

/// See [`TunnelSpec::guard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardPolicy {
    Required,
    BestEffort,
}

/// An open tunnel.
#[async_trait]
pub trait Tunnel: Send + Sync {
    fn interface(&self) -> &str;
    /// What carries the tunnel: a kernel interface outlives the agent unless removed; a
    /// userspace one (ferry-wg's device in the agent's process) ends with the process.
    fn backend(&self) -> BackendKind;
    /// The nftables table that keeps the tunnel to root, if one is installed.
    fn guard(&self) -> Option<&str>;
    /// Whether a TCP connection to `target` through the tunnel (bound to its interface)
    /// is accepted within `timeout`: only the peer can answer through the tunnel.
    async fn probe(&self, target: SocketAddr, timeout: Duration) -> Result<(), String>;
    /// Moves the tunnel to another server in place (new key, peer, endpoint and maybe
    /// address; same interface, route and guard), so connections to the server's
    /// address never leave through another interface meanwhile.
    async fn reconfigure(&mut self, spec: TunnelSpec) -> Result<(), AgentError>;
    /// Removes the interface and the guard.
    async fn close(self: Box<Self>) -> Result<(), AgentError>;
    /// Leaves a kernel interface (and its guard) in place after the agent exits (for
    /// `teardown`).
    fn detach(self: Box<Self>);
}

/// Opens tunnels.
#[async_trait]
pub trait TunnelFactory: Send + Sync {
    async fn open(&self, spec: TunnelSpec) -> Result<Box<dyn Tunnel>, AgentError>;
}

fn host_net(ip: IpAddr) -> IpNet {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    // A host prefix is always valid for its address family.
    IpNet::new(ip, prefix).unwrap_or_else(|_| IpNet::from(ip))
}

/// Refuses a server tunnel address that is one of this node's own: traffic to it would
/// stay on the node (a local listener would answer as the datasource).
async fn refuse_local_server_address(server_address: IpAddr) -> Result<(), AgentError> {
    let local = netlink::local_addresses().await.map_err(AgentError::Tunnel)?;
    if local.contains(&server_address) {
        return Err(AgentError::Impostor(format!(
            "the server's tunnel address {server_address} is an address of this node: its datasource would \
             be whatever listens here"
        )));
    }
    Ok(())
}

/// Tunnels made with ferry-wg.
#[derive(Debug, Default, Clone)]
pub struct WgTunnels;

#[async_trait]
impl TunnelFactory for WgTunnels {
    async fn open(&self, spec: TunnelSpec) -> Result<Box<dyn Tunnel>, AgentError> {
        let TunnelSpec {
            interface,
            backend,
            private_key,
            node_address,
            server_address,
            server_key,
            endpoint,
            keepalive,
            guard: policy,
        } = spec;
        refuse_local_server_address(server_address).await?;
        // A kernel interface of ours left by a killed or detached agent would keep its old
        // key and address: start from scratch. A live userspace one is refused by ferry-wg.
        match netlink::delete_wireguard_link(&interface).await {
            Ok(true) => tracing::info!(%interface, "removed a WireGuard interface left by an earlier run"),
            Ok(false) => {}
            Err(e) if matches!(backend, BackendChoice::Kernel) => return Err(AgentError::Tunnel(e)),
            Err(e) => tracing::debug!("{e}"),
        }
        // Before the interface exists, so no packet ever leaves through it unguarded.
        let guard = match (guard::install(&interface).await, policy) {
            (Ok(table), _) => Some(table),
            (Err(e), GuardPolicy::Required) => return Err(AgentError::Tunnel(e)),
            (Err(e), GuardPolicy::BestEffort) => {
                tracing::warn!("{e}; going on without it (fetch mode: no unprivileged process should run yet)");
                None
            }
        };
        let setup = InterfaceSetup {
            addresses: vec![host_net(node_address)],
            private_key: Some(private_key),
            ..InterfaceSetup::default()
        };
        let opened = open_device(&interface, backend, &setup).await;
        drop(setup); // the last copy of the private key outside the device
        let dev = match opened {
            Ok(dev) => dev,
            Err(e) => {
                remove_guard(guard.as_deref()).await;
                return Err(AgentError::Tunnel(format!("cannot create interface {interface}: {e}")));
            }
        };
        let peer = PeerConfig::new(server_key)
            .allowed_ip(host_net(server_address))
            .endpoint(endpoint)
            .persistent_keepalive(keepalive);
        let configured = async {
            dev.apply(DeviceUpdate::new().add_peer(peer))
                .await
                .map_err(|e| format!("cannot add the server as a peer of {interface}: {e}"))?;
            netlink::add_host_route(&interface, server_address, node_address).await
        };
        if let Err(e) = configured.await {
            if let Err(close) = dev.close().await {
                tracing::warn!("could not remove interface {interface} after a failed setup: {close}");
            }
            remove_guard(guard.as_deref()).await;
            return Err(AgentError::Tunnel(e));
        }
        let kind = dev.backend();
        tracing::info!(%interface, backend = ?kind, %node_address, %server_address, %endpoint, "tunnel interface up");
        Ok(Box::new(WgTunnel { dev, kind, guard, node_address }))
    }
}

async fn remove_guard(table: Option<&str>) {
    if let Some(table) = table {
        if let Err(e) = guard::remove(table).await {
            tracing::warn!("{e}");
        }
    }
}

struct WgTunnel {
    dev: Box<dyn WgDevice>,
    kind: BackendKind,
    guard: Option<String>,
    node_address: IpAddr,
}

#[async_trait]
impl Tunnel for WgTunnel {
    fn interface(&self) -> &str {
        self.dev.name()
    }
    fn backend(&self) -> BackendKind {
        self.kind
    }
    fn guard(&self) -> Option<&str> {
        self.guard.as_deref()
    }
    async fn probe(&self, target: SocketAddr, timeout: Duration) -> Result<(), String> {
        let stream = crate::http::connect_via(target, Some(self.dev.name()));
        match tokio::time::timeout(timeout, stream).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer from {target} within {} ms", timeout.as_millis())),
        }
    }
    async fn reconfigure(&mut self, spec: TunnelSpec) -> Result<(), AgentError> {
        refuse_local_server_address(spec.server_address).await?;
        let interface = self.dev.name().to_string();
        let peer = PeerConfig::new(spec.server_key)
            .allowed_ip(host_net(spec.server_address))
            .endpoint(spec.endpoint)
            .persistent_keepalive(spec.keepalive);
        let update = DeviceUpdate::new().private_key(spec.private_key).replace_peers(true).add_peer(peer);
        self.dev
            .apply(update)
            .await
            .map_err(|e| AgentError::Tunnel(format!("cannot move {interface} to the new server: {e}")))?;
        // New address, then the route with it as source, then the old address goes (with
        // the route still there): the server's address is never routed elsewhere meanwhile.
        let moved = async {
            netlink::add_address(&interface, spec.node_address).await?;
            netlink::add_host_route(&interface, spec.server_address, spec.node_address).await?;
            if spec.node_address != self.node_address {
                netlink::remove_address(&interface, self.node_address).await?;
            }
            Ok::<_, String>(())
        };
        moved.await.map_err(AgentError::Tunnel)?;
        self.node_address = spec.node_address;
        tracing::info!(
            %interface,
            node_address = %spec.node_address,
            server_address = %spec.server_address,
            endpoint = %spec.endpoint,
            "tunnel moved to another server"
        );
        Ok(())
    }
    async fn close(self: Box<Self>) -> Result<(), AgentError> {
        let name = self.dev.name().to_string();
        let closed = self.dev.close().await.map_err(|e| {
            AgentError::Tunnel(format!("cannot remove interface {name}: {e} (remove it with `ip link del {name}`)"))
        });
        if closed.is_ok() {
            tracing::info!(interface = %name, "tunnel interface removed");
        }
        // The guard goes last: the interface it keeps to root is gone by now.
        if let Some(table) = &self.guard {
            guard::remove(table).await.map_err(AgentError::Tunnel)?;
        }
        closed
    }
    fn detach(self: Box<Self>) {
        // A kernel device has no Drop: the link stays, and so does its guard (removed by
        // `teardown`). (Userspace devices are never detached.)
        tracing::info!(interface = %self.dev.name(), "leaving the kernel interface up for cloud-init");
    }
}

/// Removes a kernel interface left by a detached agent.
pub async fn remove_kernel_interface(interface: &str) -> Result<bool, AgentError> {
    netlink::delete_wireguard_link(interface).await.map_err(AgentError::Teardown)
}

/// Removes the guard a detached (or killed) agent left.
pub async fn remove_guard_table(table: &str) -> Result<(), AgentError> {
    guard::remove(table).await.map_err(AgentError::Teardown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_prefixes() {
        assert_eq!(host_net("10.1.0.7".parse().expect("ip")).to_string(), "10.1.0.7/32");
        assert_eq!(host_net("fd00::7".parse().expect("ip")).to_string(), "fd00::7/128");
    }
}
