//! UAPI backend: drives any WireGuard implementation that serves
//! `/var/run/wireguard/NAME.sock` (wireguard-go, ferry's own userspace device, ...).

pub mod proto;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

use crate::config::{DeviceStatus, DeviceUpdate};
use crate::error::WgError;
use crate::{BackendKind, WgDevice};
use proto::ReplyError;

/// Directory where userspace implementations put their UAPI sockets.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Largest reply accepted from a socket (about 150,000 peers).
const MAX_REPLY: usize = 64 << 20;
/// Time limit for one request/reply exchange.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The UAPI socket path of an interface.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{interface}.sock"))
}

/// A client for one interface's UAPI socket. Each request opens its own connection.
#[derive(Debug, Clone)]
pub(crate) struct UapiClient {
    interface: String,
    path: PathBuf,
}

impl UapiClient {
    pub(crate) fn new(interface: &str) -> Self {
        UapiClient { interface: interface.to_string(), path: socket_path(interface) }
    }

    /// Connects, mapping a missing socket to [`WgError::SocketNotFound`].
    pub(crate) async fn connect(&self) -> Result<UnixStream, WgError> {
        match UnixStream::connect(&self.path).await {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(WgError::SocketNotFound { path: self.path.clone(), interface: self.interface.clone() })
            }
            Err(source) => Err(WgError::Connect { path: self.path.clone(), source }),
        }
    }

    /// Applies `update` with exactly one `set=1` request.
    pub(crate) async fn set(&self, update: &DeviceUpdate) -> Result<(), WgError> {
        update.validate()?;
        let request = proto::set_request(update);
        let reply = self.exchange(request.as_bytes(), "set").await?;
        proto::parse_set_reply(&reply).map_err(|e| self.reply_error("set", e))
    }

    /// Reads the device's state with one `get=1` request.
    pub(crate) async fn get(&self) -> Result<DeviceStatus, WgError> {
        let reply = self.exchange(b"get=1\n\n", "get").await?;
        proto::parse_get_reply(&reply).map_err(|e| self.reply_error("get", e))
    }

    /// Sends one request and reads its reply up to the terminating blank line.
    /// The reply may hold the private key, so it is zeroized after use.
    async fn exchange(&self, request: &[u8], op: &'static str) -> Result<Zeroizing<String>, WgError> {
        let work = async {
            let mut stream = self.connect().await?;
            let ctx = || format!("{op} request on UAPI socket {}", self.path.display());
            stream.write_all(request).await.map_err(|e| WgError::io(ctx(), e))?;
            let mut buf = Zeroizing::new(Vec::with_capacity(4096));
            let mut chunk = Zeroizing::new([0u8; 8192]);
            loop {
                let n = stream.read(&mut chunk[..]).await.map_err(|e| WgError::io(ctx(), e))?;
                if n == 0 {
                    break; // EOF: the parser reports a truncated reply
                }
                let search_from = buf.len().saturating_sub(1);
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find_blank_line(&buf[search_from..]) {
                    buf.truncate(search_from + end);
                    break;
                }
                if buf.len() > MAX_REPLY {
                    return Err(WgError::Protocol(format!("reply larger than {MAX_REPLY} bytes")));
                }
            }
            let text = std::str::from_utf8(&buf).map_err(|_| WgError::Protocol("reply is not UTF-8".into()))?;
            Ok(Zeroizing::new(text.to_string()))
        };
        tokio::time::timeout(TIMEOUT, work).await.map_err(|_| WgError::Timeout {
            what: format!("the {op} reply on {}", self.path.display()),
            secs: TIMEOUT.as_secs(),
        })?
    }

    fn reply_error(&self, op: &'static str, e: ReplyError) -> WgError {
        match e {
            ReplyError::Errno(n) => WgError::rejected(op, &self.interface, n),
            ReplyError::Truncated => WgError::Protocol(format!("{op} reply ended before its errno line")),
            ReplyError::Malformed(m) => WgError::Protocol(m),
        }
    }
}

/// Position just past the first "\n\n" in `buf`.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

/// A device run by another process (e.g. wireguard-go), driven over its UAPI socket.
/// Closing it only disconnects: the interface stays.
#[derive(Debug)]
pub struct UapiDevice {
    client: UapiClient,
}

impl UapiDevice {
    /// Attaches to the running interface `name`; fails if nothing answers on its socket.
    pub async fn attach(name: &str) -> Result<Self, WgError> {
        crate::validate_interface_name(name)?;
        let device = UapiDevice { client: UapiClient::new(name) };
        device.client.get().await?;
        Ok(device)
    }
}

#[async_trait]
impl WgDevice for UapiDevice {
    fn name(&self) -> &str {
        &self.client.interface
    }

    fn backend(&self) -> BackendKind {
        BackendKind::Uapi
    }

    async fn apply(&self, update: DeviceUpdate) -> Result<(), WgError> {
        self.client.set(&update).await
    }

    async fn status(&self) -> Result<DeviceStatus, WgError> {
        self.client.get().await
    }

    async fn close(self: Box<Self>) -> Result<(), WgError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_line_search() {
        assert_eq!(find_blank_line(b"errno=0\n\n"), Some(9));
        assert_eq!(find_blank_line(b"errno=0\n"), None);
        assert_eq!(find_blank_line(b""), None);
    }

    #[tokio::test]
    async fn missing_socket_says_what_to_do() {
        let client = UapiClient::new("fwnosuch0");
        let err = client.get().await.expect_err("no socket");
        let msg = err.to_string();
        assert!(matches!(err, WgError::SocketNotFound { .. }), "{msg}");
        assert!(msg.contains("/var/run/wireguard/fwnosuch0.sock"), "{msg}");
        assert!(msg.contains("wireguard-go"), "{msg}");
    }
}
