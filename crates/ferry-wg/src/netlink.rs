//! Interface setup over rtnetlink: addresses, MTU, link up, link creation and deletion.
//!
//! Every function works in the network namespace of the calling thread (the netlink
//! socket is opened there).

use std::time::Duration;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{Handle, LinkUnspec};

use crate::error::WgError;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// Opens an rtnetlink connection whose task runs on the current tokio runtime.
pub(crate) fn connect(interface: &str) -> Result<Handle, WgError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| WgError::Netlink {
        op: "socket",
        interface: interface.to_string(),
        message: e.to_string(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn err(op: &'static str, interface: &str, e: rtnetlink::Error) -> WgError {
    WgError::Netlink { op, interface: interface.to_string(), message: e.to_string() }
}

/// The errno of a netlink error reply, as a positive number.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// The index of `name`, or `None` if no such link exists.
pub(crate) async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, WgError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(err("link get", name, e)),
    }
}

/// Sets the MTU, adds the addresses (existing ones are kept) and sets the link up.
pub(crate) async fn configure_link(handle: &Handle, name: &str, addresses: &[IpNet], mtu: u16) -> Result<(), WgError> {
    let index = link_index(handle, name).await?.ok_or_else(|| WgError::Netlink {
        op: "link get",
        interface: name.to_string(),
        message: "interface vanished right after creation".into(),
    })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(u32::from(mtu)).build())
        .execute()
        .await
        .map_err(|e| err("set mtu", name, e))?;
    for net in addresses {
        match handle.address().add(index, net.addr(), net.prefix_len()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(err("address add", name, e)),
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| err("link up", name, e))
}

/// Deletes the link if it exists.
pub(crate) async fn delete_link(handle: &Handle, name: &str) -> Result<(), WgError> {
    let Some(index) = link_index(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(err("link del", name, e)),
    }
}

/// Waits until the link has disappeared.
pub(crate) async fn wait_link_gone(handle: &Handle, name: &str, limit: Duration) -> Result<(), WgError> {
    let deadline = tokio::time::Instant::now() + limit;
    while link_index(handle, name).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            return Err(WgError::Timeout { what: format!("interface {name} to disappear"), secs: limit.as_secs() });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Creates a kernel WireGuard link; an existing link of that name is kept.
#[cfg(feature = "kernel")]
pub(crate) async fn add_wireguard_link(handle: &Handle, name: &str) -> Result<(), WgError> {
    const EOPNOTSUPP: i32 = 95;
    match handle.link().add(rtnetlink::LinkWireguard::new(name).build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) if errno(&e) == Some(EOPNOTSUPP) => Err(WgError::KernelUnavailable(format!(
            "creating a link of type wireguard is not supported by this kernel ({e})"
        ))),
        Err(e) => Err(err("link add type wireguard", name, e)),
    }
}
