//! Kernel backend: the link is created over rtnetlink and configured over the
//! kernel's WireGuard generic netlink family (what `wg(8)` uses).
//!
//! A netlink attribute holds at most 64 KiB, so a large update is sent as several
//! messages on one socket, the first carrying the device settings and `replace_peers`
//! (`wg setconf` does the same): the kernel applies each message atomically, not the
//! whole batch.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use genetlink::{GenetlinkError, GenetlinkHandle};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily as Family, WireguardAllowedIp, WireguardAllowedIpAttr as IpAttr, WireguardAttribute as Attr,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute as PeerAttr,
    WireguardPeerFlags,
};

use crate::config::{DeviceStatus, DeviceUpdate, PeerConfig, PeerStatus};
use crate::error::WgError;
use crate::keys::{PrivateKey, PublicKey};
use crate::{netlink, BackendKind, InterfaceSetup, WgDevice};

/// Bytes of peer attributes per message; well below the 64 KiB attribute limit.
const CHUNK_BYTES: usize = 32 * 1024;

/// A kernel WireGuard interface.
#[derive(Debug)]
pub struct KernelDevice {
    name: String,
}

impl KernelDevice {
    /// Creates (or reuses) the kernel link in the calling thread's network namespace,
    /// then sets its key (`setup.private_key` or a new one), port, addresses, MTU, up.
    pub async fn create(name: &str, setup: &InterfaceSetup) -> Result<Self, WgError> {
        crate::validate_interface_name(name)?;
        let nl = netlink::connect(name)?;
        netlink::add_wireguard_link(&nl, name).await?;
        let device = KernelDevice { name: name.to_string() };
        let key = setup.private_key.clone().unwrap_or_else(PrivateKey::generate);
        let mut first = DeviceUpdate::new().private_key(key);
        if let Some(port) = setup.listen_port {
            first = first.listen_port(port);
        }
        let configured = async {
            device.apply(first).await?;
            netlink::configure_link(&nl, name, &setup.addresses, setup.mtu).await
        };
        if let Err(e) = configured.await {
            let _ = netlink::delete_link(&nl, name).await;
            return Err(e);
        }
        Ok(device)
    }

    fn genl(&self) -> Result<GenetlinkHandle, WgError> {
        let (conn, handle, _) = genetlink::new_connection().map_err(|e| self.err("socket", e.to_string()))?;
        tokio::spawn(conn);
        Ok(handle)
    }

    fn err(&self, op: &'static str, message: String) -> WgError {
        WgError::Netlink { op, interface: self.name.clone(), message }
    }

    fn genl_err(&self, op: &'static str, e: GenetlinkError) -> WgError {
        match e {
            GenetlinkError::NetlinkError(io) if io.kind() == std::io::ErrorKind::NotFound => {
                WgError::KernelUnavailable("the wireguard generic netlink family is not registered".into())
            }
            e => self.err(op, e.to_string()),
        }
    }

    async fn request(&self, handle: &mut GenetlinkHandle, attributes: Vec<Attr>) -> Result<(), WgError> {
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut replies = handle.request(msg).await.map_err(|e| self.genl_err("set", e))?;
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| self.err("set", e.to_string()))?;
            if let NetlinkPayload::Error(e) = reply.payload {
                if e.raw_code() != 0 {
                    return Err(WgError::rejected("set", &self.name, e.raw_code().abs()));
                }
            }
        }
        Ok(())
    }
}

fn peer_attrs(peer: &PeerConfig) -> WireguardPeer {
    let mut attrs = vec![
        PeerAttr::PublicKey(peer.public_key.0),
        PeerAttr::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        PeerAttr::PersistentKeepalive(peer.keepalive_secs()),
    ];
    if let Some(endpoint) = peer.endpoint {
        attrs.push(PeerAttr::Endpoint(endpoint));
    }
    let ips = peer.allowed_ips.iter().map(|net| {
        let net = net.trunc();
        let family = if net.addr().is_ipv4() { Family::Ipv4 } else { Family::Ipv6 };
        WireguardAllowedIp(vec![IpAttr::Family(family), IpAttr::IpAddr(net.addr()), IpAttr::Cidr(net.prefix_len())])
    });
    attrs.push(PeerAttr::AllowedIps(ips.collect()));
    WireguardPeer(attrs)
}

fn remove_attrs(key: &PublicKey) -> WireguardPeer {
    WireguardPeer(vec![PeerAttr::PublicKey(key.0), PeerAttr::Flags(WireguardPeerFlags::RemoveMe)])
}

/// Rough encoded size of a peer, to split big updates.
fn peer_size(peer: &WireguardPeer) -> usize {
    peer.0
        .iter()
        .map(|a| match a {
            PeerAttr::AllowedIps(ips) => 8 + 40 * ips.len(),
            _ => 40,
        })
        .sum()
}

#[async_trait]
impl WgDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Kernel
    }

    async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        update.validate()?;
        let mut device = vec![Attr::IfName(self.name.clone())];
        if let Some(key) = &update.private_key {
            device.push(Attr::PrivateKey(*key.as_bytes()));
        }
        if let Some(port) = update.listen_port {
            device.push(Attr::ListenPort(port));
        }
        if update.replace_peers {
            device.push(Attr::Flags(WireguardDeviceFlags::ReplacePeers));
        }
        let peers = update.remove.iter().map(remove_attrs).chain(update.peers.iter().map(peer_attrs));
        let mut handle = self.genl()?;
        let mut chunk: Vec<WireguardPeer> = Vec::new();
        let mut size = 0;
        for peer in peers {
            let n = peer_size(&peer);
            if size + n > CHUNK_BYTES && !chunk.is_empty() {
                let mut attrs = std::mem::replace(&mut device, vec![Attr::IfName(self.name.clone())]);
                attrs.push(Attr::Peers(std::mem::take(&mut chunk)));
                self.request(&mut handle, attrs).await?;
                size = 0;
            }
            size += n;
            chunk.push(peer);
        }
        if !chunk.is_empty() {
            device.push(Attr::Peers(chunk));
        }
        self.request(&mut handle, device).await
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![Attr::IfName(self.name.clone())],
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.genl()?;
        let mut replies = handle.request(msg).await.map_err(|e| self.genl_err("get", e))?;
        let mut status = DeviceStatus::default();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| self.err("get", e.to_string()))?;
            match reply.payload {
                NetlinkPayload::InnerMessage(genl) => merge(&mut status, genl.payload.attributes),
                NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                    return Err(WgError::rejected("get", &self.name, e.raw_code().abs()))
                }
                _ => {}
            }
        }
        Ok(status)
    }

    async fn close(self: Box<Self>) -> Result<(), WgError> {
        let nl = netlink::connect(&self.name)?;
        netlink::delete_link(&nl, &self.name).await?;
        netlink::wait_link_gone(&nl, &self.name, Duration::from_secs(5)).await
    }
}

/// Adds one dump message to `status`. A peer whose allowed IPs do not fit one message
/// continues in the next with the same key first.
fn merge(status: &mut DeviceStatus, attrs: Vec<Attr>) {
    for attr in attrs {
        match attr {
            Attr::PublicKey(k) => status.public_key = Some(PublicKey(k)),
            Attr::ListenPort(p) => status.listen_port = (p != 0).then_some(p),
            Attr::Peers(peers) => {
                for peer in peers {
                    let p = peer_status(peer.0);
                    match status.peers.last_mut() {
                        Some(last) if last.public_key == p.public_key => last.allowed_ips.extend(p.allowed_ips),
                        _ => status.peers.push(p),
                    }
                }
            }
            _ => {}
        }
    }
}

fn peer_status(attrs: Vec<PeerAttr>) -> PeerStatus {
    let mut p = PeerStatus::new(PublicKey([0; 32]));
    for attr in attrs {
        match attr {
            PeerAttr::PublicKey(k) => p.public_key = PublicKey(k),
            PeerAttr::Endpoint(e) => p.endpoint = Some(e),
            PeerAttr::PersistentKeepalive(k) => p.persistent_keepalive = (k != 0).then_some(k),
            PeerAttr::RxBytes(n) => p.rx_bytes = n,
            PeerAttr::TxBytes(n) => p.tx_bytes = n,
            PeerAttr::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                let secs = u64::try_from(t.seconds).unwrap_or(0);
                let nanos = u32::try_from(t.nano_seconds).unwrap_or(0).min(999_999_999);
                p.last_handshake = UNIX_EPOCH.checked_add(Duration::new(secs, nanos));
            }
            PeerAttr::AllowedIps(ips) => {
                for ip in ips {
                    let addr = ip.0.iter().find_map(|a| match a {
                        IpAttr::IpAddr(a) => Some(*a),
                        _ => None,
                    });
                    let cidr = ip.0.iter().find_map(|a| match a {
                        IpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    });
                    if let Some(net) = addr.zip(cidr).and_then(|(a, c)| IpNet::new(a, c).ok()) {
                        p.allowed_ips.push(net);
                    }
                }
            }
            _ => {}
        }
    }
    p
}
