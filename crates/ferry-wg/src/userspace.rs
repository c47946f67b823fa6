//! In-process userspace backend: boringtun's `DeviceHandle` creates the TUN interface;
//! it runs in file-descriptor mode and [`crate::userspace_api`] serves the standard UAPI
//! socket (so `wg show NAME` works); we drive it through that socket like any other
//! UAPI implementation.
//!
//! boringtun facts this module works around (boringtun 0.7.1, `src/device`):
//! - When boringtun serves its own UAPI socket it also turns SIGINT and SIGTERM into
//!   "exit the device" events on a signalfd, which races the host program's handlers:
//!   fd mode avoids that. The device is still created in a dedicated short-lived thread;
//!   its worker threads inherit that thread's network namespace.
//! - Adding a peer before the private key is set, or receiving a handshake before it is
//!   set, panics a worker thread: the key is set in the first request, right after creation.
//! - Modifying an existing peer panics, and `remove`, `endpoint` and keepalive leak from
//!   one peer section into the next: updates are sent in a boringtun-safe form (each
//!   peer removed and re-added, endpoint-less peers first), which resets the session
//!   of an updated peer.
//! - It reports the handshake *age* where the protocol wants a UNIX time (so `wg show`
//!   prints "56 years ago") and its key as `own_public_key` (which `wg show` ignores);
//!   [`WgDevice::status`] corrects the former and reads the latter.
//! - Dropping the handle only signals the workers; the TUN interface disappears when the
//!   last worker has exited, so `close` waits for that.
//! - It opens its UDP sockets with the system's default receive buffer (208 KiB on
//!   Debian), which a boot storm's bursts overflow (each lost packet costs the node a
//!   TCP retransmission, ~1 s for a lost SYN): [`raise_receive_buffers`] enlarges them.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use boringtun::device::{DeviceConfig, DeviceHandle};

use crate::config::{DeviceStatus, DeviceUpdate};
use crate::error::WgError;
use crate::keys::PrivateKey;
use crate::uapi::{Dialect, UapiClient};
use crate::{netlink, BackendKind, InterfaceSetup, WgDevice};

/// An in-process WireGuard interface run by boringtun.
pub struct UserspaceDevice {
    name: String,
    client: UapiClient,
    handle: Mutex<Option<DeviceHandle>>,
    proxy: Mutex<Option<crate::userspace_api::ApiProxy>>,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice").field("name", &self.name).finish_non_exhaustive()
    }
}

impl UserspaceDevice {
    /// Creates the interface in the calling thread's network namespace, sets its key
    /// (`setup.private_key`, or a new random one), listen port, addresses, MTU, and up.
    pub async fn create(name: &str, setup: &InterfaceSetup) -> Result<Self, WgError> {
        crate::validate_interface_name(name)?;
        let client = UapiClient::new(name, Dialect::Boringtun);
        // boringtun deletes an existing socket file before binding its own: refuse to
        // steal the socket of a live implementation (maybe in another namespace).
        match client.connect().await {
            Ok(_) => return Err(WgError::InUse { interface: name.to_string(), path: client.path().to_path_buf() }),
            Err(WgError::SocketNotFound { .. }) => {}
            Err(_) => {} // stale socket: boringtun replaces it
        }

        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| WgError::io("creating the UAPI socket pair", e))?;
        let handle = spawn_device(name, std::os::fd::IntoRawFd::into_raw_fd(theirs)).await?;
        let proxy = crate::userspace_api::serve(client.path(), ours);
        let device = UserspaceDevice {
            name: name.to_string(),
            client,
            handle: Mutex::new(Some(handle)),
            proxy: Mutex::new(None),
        };
        // On error `device` is dropped, which tears the interface down.
        *device.proxy.lock().unwrap_or_else(|p| p.into_inner()) = Some(proxy?);
        // On error `device` is dropped, which tears the interface down.
        let key = setup.private_key.clone().unwrap_or_else(PrivateKey::generate);
        let mut first = DeviceUpdate::new().private_key(key);
        if let Some(port) = setup.listen_port {
            first = first.listen_port(port);
        }
        device.client.set(&first).await?;
        let port = match setup.listen_port {
            Some(port) => Some(port),
            None => device.client.get().await?.listen_port,
        };
        if let Some(port) = port {
            let raised = raise_receive_buffers(port);
            tracing::debug!(interface = name, port, sockets = raised, "raised the device's UDP receive buffers");
        }
        let nl = netlink::connect(name)?;
        netlink::configure_link(&nl, name, &setup.addresses, setup.mtu).await?;
        Ok(device)
    }

    fn take_handle(&self) -> Option<DeviceHandle> {
        match self.handle.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn is_open(&self) -> bool {
        match self.handle.lock() {
            Ok(guard) => guard.is_some(),
            Err(poisoned) => poisoned.into_inner().is_some(),
        }
    }
}

/// Receive buffer for the device's UDP sockets: room for a few thousand datagrams, so a
/// storm's burst waits in the queue instead of being dropped. Memory is used only while
/// datagrams wait.
const DEVICE_RECEIVE_BUFFER: usize = 4 << 20;

/// Raises the receive buffer of this process's UDP sockets bound to `port` (boringtun's,
/// which offers no setting for it; they are this process's own descriptors) to
/// [`DEVICE_RECEIVE_BUFFER`]: beyond `net.core.rmem_max` when the process may
/// (`SO_RCVBUFFORCE`, CAP_NET_ADMIN), else up to it. Returns how many sockets it raised.
fn raise_receive_buffers(port: u16) -> usize {
    use nix::sys::socket::{getsockname, getsockopt, setsockopt, sockopt, SockType, SockaddrStorage};
    use std::os::fd::BorrowedFd;
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut raised = 0;
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")) {
            continue;
        }
        // SAFETY: `fd` was open a moment ago and is only borrowed here: a descriptor
        // closed in between fails the calls below with EBADF, nothing else.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if getsockopt(&fd, sockopt::SockType) != Ok(SockType::Datagram) {
            continue;
        }
        let Ok(local) = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd)) else { continue };
        let bound = local.as_sockaddr_in().map(|a| a.port()).or_else(|| local.as_sockaddr_in6().map(|a| a.port()));
        if bound != Some(port) {
            continue;
        }
        if setsockopt(&fd, sockopt::RcvBufForce, &DEVICE_RECEIVE_BUFFER).is_ok()
            || setsockopt(&fd, sockopt::RcvBuf, &DEVICE_RECEIVE_BUFFER).is_ok()
        {
            raised += 1;
        }
    }
    raised
}

/// Creates the boringtun device in a dedicated thread (see the module docs).
async fn spawn_device(name: &str, uapi_fd: i32) -> Result<DeviceHandle, WgError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let config = DeviceConfig {
        n_threads: threads,
        // One connected UDP socket per peer costs a file descriptor per node and breaks
        // when a node's address changes; the shared listen socket is enough for a server.
        use_connected_socket: false,
        use_multi_queue: true,
        uapi_fd, // boringtun owns this end of the pair; the proxy serves the socket
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = name.to_string();
    std::thread::Builder::new()
        .name(format!("wg-create-{name}"))
        .spawn(move || {
            let _ = tx.send(DeviceHandle::new(&owned, config));
        })
        .map_err(|e| WgError::io("spawning the boringtun creation thread", e))?;
    let created = rx.await.map_err(|_| WgError::Userspace {
        interface: name.to_string(),
        message: "the creation thread panicked".into(),
    })?;
    created.map_err(|e| WgError::Userspace { interface: name.to_string(), message: e.to_string() })
}

#[async_trait]
impl WgDevice for UserspaceDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Userspace
    }

    async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        if !self.is_open() {
            return Err(WgError::Closed(self.name.clone()));
        }
        self.client.set(&update).await
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        if !self.is_open() {
            return Err(WgError::Closed(self.name.clone()));
        }
        self.client.get().await
    }

    async fn close(self: Box<Self>) -> Result<(), WgError> {
        let Some(handle) = self.take_handle() else {
            return Err(WgError::Closed(self.name.clone()));
        };
        // Signals the workers to exit; the proxy goes with its socket file.
        drop(handle);
        drop(self.proxy.lock().unwrap_or_else(|p| p.into_inner()).take());
        let nl = netlink::connect(&self.name)?;
        netlink::wait_link_gone(&nl, &self.name, Duration::from_secs(5)).await
    }
}
