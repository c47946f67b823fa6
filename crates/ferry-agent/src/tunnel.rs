//! The node's end of the tunnel, behind traits so the state machine can be tested
//! without root. The real implementation uses ferry-wg (kernel or boringtun).

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use ferry_wg::{open_device, BackendChoice, BackendKind, DeviceUpdate, InterfaceSetup, IpNet, PeerConfig};
use ferry_wg::{PrivateKey, PublicKey, WgDevice};
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::netlink;

/// Which implementation carries a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The kernel module: the interface outlives the agent unless removed.
    Kernel,
    /// boringtun in the agent's process: the interface ends with the process.
    Userspace,
}

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
}

/// An open tunnel.
#[async_trait]
pub trait Tunnel: Send + Sync {
    fn interface(&self) -> &str;
    fn backend(&self) -> Backend;
    /// Removes the interface.
    async fn close(self: Box<Self>) -> Result<(), AgentError>;
    /// Leaves a kernel interface in place after the agent exits (for `teardown`).
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
        } = spec;
        // A kernel interface of ours left by a killed or detached agent would keep its old
        // key and address: start from scratch. A live userspace one is refused by ferry-wg.
        match netlink::delete_wireguard_link(&interface).await {
            Ok(true) => tracing::info!(%interface, "removed a WireGuard interface left by an earlier run"),
            Ok(false) => {}
            Err(e) if matches!(backend, BackendChoice::Kernel) => return Err(AgentError::Tunnel(e)),
            Err(e) => tracing::debug!("{e}"),
        }
        let setup = InterfaceSetup {
            addresses: vec![host_net(node_address)],
            private_key: Some(private_key),
            ..InterfaceSetup::default()
        };
        let opened = open_device(&interface, backend, &setup).await;
        drop(setup); // the last copy of the private key outside the device
        let dev = opened.map_err(|e| AgentError::Tunnel(format!("cannot create interface {interface}: {e}")))?;
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
            return Err(AgentError::Tunnel(e));
        }
        let kind = match dev.backend() {
            BackendKind::Kernel => Backend::Kernel,
            _ => Backend::Userspace,
        };
        tracing::info!(%interface, backend = ?kind, %node_address, %server_address, %endpoint, "tunnel interface up");
        Ok(Box::new(WgTunnel { dev, kind }))
    }
}

struct WgTunnel {
    dev: Box<dyn WgDevice>,
    kind: Backend,
}

#[async_trait]
impl Tunnel for WgTunnel {
    fn interface(&self) -> &str {
        self.dev.name()
    }
    fn backend(&self) -> Backend {
        self.kind
    }
    async fn close(self: Box<Self>) -> Result<(), AgentError> {
        let name = self.dev.name().to_string();
        self.dev.close().await.map_err(|e| {
            AgentError::Tunnel(format!("cannot remove interface {name}: {e} (remove it with `ip link del {name}`)"))
        })?;
        tracing::info!(interface = %name, "tunnel interface removed");
        Ok(())
    }
    fn detach(self: Box<Self>) {
        // A kernel device has no Drop: the link stays. (Userspace devices are never detached.)
        tracing::info!(interface = %self.dev.name(), "leaving the kernel interface up for cloud-init");
    }
}

/// Removes a kernel interface left by a detached agent.
pub async fn remove_kernel_interface(interface: &str) -> Result<bool, AgentError> {
    netlink::delete_wireguard_link(interface).await.map_err(AgentError::Teardown)
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
