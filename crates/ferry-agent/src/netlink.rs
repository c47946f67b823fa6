//! The rtnetlink operations ferry-wg does not offer: a host route to the server's tunnel
//! address (the node's own address is a /32 or /128, which brings no route), moving the
//! node's tunnel address (failover), listing the node's own addresses (an answer that
//! points at one is an impostor's), and deleting a kernel WireGuard link left behind by
//! an earlier run or a detached agent.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, RouteMessageBuilder};

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

fn connect() -> Result<Handle, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("cannot open a netlink socket: {e} (run as root)"))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The index of `name` and whether it is a (kernel) WireGuard link, if it exists.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<(u32, bool)>, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let wireguard = link.attributes.iter().any(|a| match a {
                LinkAttribute::LinkInfo(infos) => {
                    infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Wireguard)))
                }
                _ => false,
            });
            Ok(Some((link.header.index, wireguard)))
        }
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(format!("cannot look up interface {name}: {e}")),
    }
}

/// Routes `dest`/32 (or /128) through `interface`, with `src` as the source address.
pub async fn add_host_route(interface: &str, dest: IpAddr, src: IpAddr) -> Result<(), String> {
    let handle = connect()?;
    let (index, _) = find_link(&handle, interface).await?.ok_or_else(|| format!("interface {interface} vanished"))?;
    let prefix = if dest.is_ipv4() { 32 } else { 128 };
    let route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, prefix)
        .map_err(|e| format!("invalid route to {dest}: {e}"))?
        .pref_source(src)
        .map_err(|e| format!("invalid source {src} for the route to {dest}: {e}"))?
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| format!("cannot add a route to {dest} via {interface}: {e} (run as root)"))
}

/// Every address configured on any interface of this node (this network namespace).
pub async fn local_addresses() -> Result<Vec<IpAddr>, String> {
    let handle = connect()?;
    let mut dump = handle.address().get().execute();
    let mut found = Vec::new();
    while let Some(msg) = dump.try_next().await.map_err(|e| format!("cannot list the node's addresses: {e}"))? {
        for attr in msg.attributes {
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr {
                found.push(ip);
            }
        }
    }
    Ok(found)
}

/// Adds the host address `ip` (/32, /128) to `interface`; an existing one is fine.
pub async fn add_address(interface: &str, ip: IpAddr) -> Result<(), String> {
    let handle = connect()?;
    let (index, _) = find_link(&handle, interface).await?.ok_or_else(|| format!("interface {interface} vanished"))?;
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    match handle.address().add(index, ip, prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(format!("cannot add address {ip} to {interface}: {e}")),
    }
}

/// Removes address `ip` from `interface`; a missing one is fine.
pub async fn remove_address(interface: &str, ip: IpAddr) -> Result<(), String> {
    let handle = connect()?;
    let (index, _) = find_link(&handle, interface).await?.ok_or_else(|| format!("interface {interface} vanished"))?;
    let mut dump = handle.address().get().set_link_index_filter(index).set_address_filter(ip).execute();
    while let Some(msg) = dump.try_next().await.map_err(|e| format!("cannot list the addresses of {interface}: {e}"))? {
        match handle.address().del(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
            Err(e) => return Err(format!("cannot remove address {ip} from {interface}: {e}")),
        }
    }
    Ok(())
}

/// Deletes `interface` if it is a kernel WireGuard link. Returns whether it existed as
/// one; another kind of link of that name is left alone (and reported).
pub async fn delete_wireguard_link(interface: &str) -> Result<bool, String> {
    let handle = connect()?;
    match find_link(&handle, interface).await? {
        None => Ok(false),
        Some((_, false)) => Err(format!(
            "interface {interface} exists but is not a kernel WireGuard link: not removing it \
             (pick another --interface, or remove it with `ip link del {interface}`)"
        )),
        Some((index, true)) => match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(format!("cannot remove interface {interface}: {e} (run as root)")),
        },
    }
}
