//! The crate's error type. Every message says what went wrong and what to do.

use std::io;
use std::path::PathBuf;

/// Errors returned by WireGuard device operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgError {
    /// The interface name cannot be used.
    #[error("invalid interface name {name:?}: {reason} ({hint})", hint = ferry_core::net::INTERFACE_NAME_HINT)]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// No UAPI socket exists for the interface.
    #[error(
        "UAPI socket {} not found: is wireguard-go (or another userspace WireGuard) running \
         for interface {interface}? Start it with `wireguard-go {interface}`, or use the \
         userspace backend",
        path.display()
    )]
    SocketNotFound {
        /// The socket path that was looked for.
        path: PathBuf,
        /// The interface name.
        interface: String,
    },

    /// A UAPI socket exists but nobody answers on it (stale socket) or it cannot be opened.
    #[error(
        "cannot connect to UAPI socket {}: {source} (a stale socket means its WireGuard \
         process has died: remove the file and restart it; permission denied means run as root)",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Another live WireGuard implementation already serves this interface name.
    #[error(
        "interface {interface} is already served by a running WireGuard implementation \
         ({} answers): pick another name, or attach with BackendChoice::Uapi",
        path.display()
    )]
    InUse {
        /// The interface name.
        interface: String,
        /// The live UAPI socket.
        path: PathBuf,
    },

    /// An I/O error while talking to the device.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },

    /// The device did not answer in time.
    #[error("timed out after {secs} s waiting for {what}: is the WireGuard process hung?")]
    Timeout {
        /// What we waited for.
        what: String,
        /// The time limit in seconds.
        secs: u64,
    },

    /// The device's reply does not follow the UAPI protocol.
    #[error("malformed UAPI reply: {0} (is the socket served by a WireGuard implementation?)")]
    Protocol(String),

    /// The device rejected a request (`errno=N` in the reply, or a netlink error code).
    #[error("{op} on interface {interface} was rejected with errno {errno} ({}): {hint}", errno_name(*errno))]
    Rejected {
        /// The operation (`set`, `get`, ...).
        op: &'static str,
        /// The interface name.
        interface: String,
        /// The errno value reported.
        errno: i32,
        /// What it usually means and what to do.
        hint: &'static str,
    },

    /// The update is inconsistent and was not sent.
    #[error("invalid device update: {0}")]
    InvalidUpdate(String),

    /// Netlink (interface creation, addresses, kernel WireGuard) failed.
    #[error("netlink {op} failed for interface {interface}: {message} (needs root or CAP_NET_ADMIN)")]
    Netlink {
        /// The operation.
        op: &'static str,
        /// The interface name.
        interface: String,
        /// The error text.
        message: String,
    },

    /// The in-process userspace device could not be created.
    #[error(
        "cannot create userspace WireGuard interface {interface}: {message} (needs root or \
         CAP_NET_ADMIN and /dev/net/tun; `modprobe tun` if it is missing)"
    )]
    Userspace {
        /// The interface name.
        interface: String,
        /// The error text.
        message: String,
    },

    /// The kernel backend was requested but cannot be used.
    #[error(
        "kernel WireGuard is not available: {0} (run `modprobe wireguard`, or use \
         BackendChoice::Userspace / Auto)"
    )]
    KernelUnavailable(String),

    /// The device was already closed.
    #[error("interface {0} was already closed")]
    Closed(String),
}

impl WgError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        WgError::Io { context: context.into(), source }
    }

    pub(crate) fn rejected(op: &'static str, interface: &str, errno: i32) -> Self {
        let hint = match errno.abs() {
            22 => "an argument was invalid (bad key, address or port)",
            98 => "the listen port is already in use: choose another port",
            71 => "the request was not understood: the implementation speaks another UAPI dialect",
            1 | 13 => "permission denied: run as root or with CAP_NET_ADMIN",
            19 => "no such device: the interface does not exist (any more)",
            _ => "see the WireGuard implementation's log",
        };
        WgError::Rejected { op, interface: interface.to_string(), errno, hint }
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno.abs() {
        1 => "EPERM",
        5 => "EIO",
        13 => "EACCES",
        19 => "ENODEV",
        22 => "EINVAL",
        71 => "EPROTO",
        98 => "EADDRINUSE",
        _ => "unknown",
    }
}
