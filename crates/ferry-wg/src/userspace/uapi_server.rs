//! The standard UAPI socket (`/var/run/wireguard/NAME.sock`, text protocol of
//! <https://www.wireguard.com/xplatform/>) of the userspace device, answered from the
//! device's own state: `wg show NAME` and `wg set NAME ...` work on it as on
//! wireguard-go.
//!
//! The socket is served on plain threads, not on the caller's async runtime: a caller
//! that blocks its runtime while `wg show` talks to the socket must not deadlock. It is
//! 0600 (root), as `get` replies carry the private key (the protocol's rule).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use nix::libc;
use zeroize::Zeroizing;

use super::patch::{DevicePatch, PeerPatch};
use super::Shared;
use crate::config::PeerStatus;
use crate::error::WgError;
use crate::keys::{PrivateKey, PublicKey};
use ferry_core::wgkey::{decode_hex_key, hex_encode};

/// Largest request accepted (about 300,000 peers with one allowed IP each).
const MAX_REQUEST: usize = 64 << 20;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the socket until dropped.
pub(crate) struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag, then remove the socket.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket: the caller checked nothing answers on it).
pub(crate) fn serve(path: &Path, shared: Arc<Shared>) -> Result<ApiServer, WgError> {
    let io = |what: &str, e| WgError::io(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("restricting", e))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name(format!("wg-uapi-{}", shared.name))
        .spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let _ = std::thread::Builder::new().name("wg-uapi-conn".into()).spawn(move || {
                    if let Err(e) = handle(conn, &shared) {
                        tracing::debug!(error = %e, "UAPI client connection ended with an error");
                    }
                });
            }
        })
        .map_err(|e| io("starting the UAPI server for", e))?;
    Ok(ApiServer { path: path.to_path_buf(), stop })
}

/// Reads lines up to and including the first empty line; false at end of stream.
fn read_message(r: &mut impl BufRead, out: &mut Zeroizing<String>) -> std::io::Result<bool> {
    loop {
        let before = out.len();
        if r.read_line(out)? == 0 {
            return Ok(false);
        }
        if &out[before..] == "\n" {
            return Ok(true);
        }
        if out.len() > MAX_REQUEST {
            return Err(std::io::Error::other("UAPI request too large"));
        }
    }
}

fn handle(conn: UnixStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut request = Zeroizing::new(String::new());
        if !read_message(&mut r, &mut request)? {
            return Ok(());
        }
        let reply = answer(&request, shared);
        w.write_all(reply.as_bytes())?;
    }
}

/// The reply to one request (a blank-line-terminated text).
pub(crate) fn answer(request: &str, shared: &Shared) -> Zeroizing<String> {
    let (first, body) = request.split_once('\n').unwrap_or((request, ""));
    let errno = match first {
        "get=1" => return get_reply(shared),
        "set=1" => match parse_set(body).map(|patch| shared.apply(patch)) {
            Ok(Ok(())) => 0,
            Ok(Err(WgError::Rejected { errno, .. })) => errno.abs(),
            Ok(Err(_)) => libc::EIO,
            Err(errno) => errno,
        },
        _ => libc::EINVAL,
    };
    // Negative, as wireguard-go answers and wg(8) expects.
    Zeroizing::new(format!("errno={}\n\n", -errno))
}

/// The device as a `get=1` reply.
fn get_reply(shared: &Shared) -> Zeroizing<String> {
    let table = shared.peers();
    let peers: Vec<(PeerStatus, Option<Zeroizing<[u8; 32]>>)> =
        table.iter().map(|p| (p.status(), p.lock().preshared_key.clone())).collect();
    drop(table);
    let secret = shared.keys().map(|k| Zeroizing::new(k.private.to_bytes()));
    let device = Device {
        private_key: secret.as_deref(),
        listen_port: shared.udp().port(),
        fwmark: shared.fwmark.load(Ordering::Relaxed),
    };
    format_get(&device, &peers)
}

/// What a `get=1` reply says about the device itself.
pub(crate) struct Device<'a> {
    pub(crate) private_key: Option<&'a [u8; 32]>,
    pub(crate) listen_port: u16,
    pub(crate) fwmark: u32,
}

/// A `get=1` reply in the order wireguard-go writes it.
pub(crate) fn format_get(
    device: &Device<'_>,
    peers: &[(PeerStatus, Option<Zeroizing<[u8; 32]>>)],
) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(256 + 300 * peers.len()));
    let s: &mut String = &mut out;
    if let Some(secret) = device.private_key {
        s.push_str("private_key=");
        s.push_str(&Zeroizing::new(hex_encode(secret)));
        s.push('\n');
    }
    let _ = writeln!(s, "listen_port={}", device.listen_port);
    if device.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", device.fwmark);
    }
    for (status, psk) in peers {
        let _ = writeln!(s, "public_key={}", status.public_key.to_hex());
        if let Some(psk) = psk {
            s.push_str("preshared_key=");
            s.push_str(&Zeroizing::new(hex_encode(&psk[..])));
            s.push('\n');
        }
        s.push_str("protocol_version=1\n");
        if let Some(endpoint) = status.endpoint {
            let _ = writeln!(s, "endpoint={endpoint}");
        }
        let since = status.last_handshake.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={}\nrx_bytes={}", status.tx_bytes, status.rx_bytes);
        let _ = writeln!(s, "persistent_keepalive_interval={}", status.persistent_keepalive.unwrap_or(0));
        for net in &status.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push_str("errno=0\n\n");
    out
}

/// Parses the lines of a `set=1` request after its first line. Nothing is applied
/// unless all of it is valid; the error is the errno to answer.
pub(crate) fn parse_set(body: &str) -> Result<DevicePatch, i32> {
    let mut patch = DevicePatch::default();
    let mut peer: Option<PeerPatch> = None;
    for line in body.lines() {
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once('=').ok_or(libc::EINVAL)?;
        if key == "public_key" {
            patch.peers.extend(peer.take());
            peer = Some(PeerPatch::new(PublicKey::from_hex(value).map_err(|_| libc::EINVAL)?));
            continue;
        }
        match peer.as_mut() {
            None => device_line(&mut patch, key, value)?,
            Some(p) => peer_line(p, key, value)?,
        }
    }
    patch.peers.extend(peer);
    Ok(patch)
}

fn device_line(patch: &mut DevicePatch, key: &str, value: &str) -> Result<(), i32> {
    match key {
        "private_key" => {
            let private = PrivateKey::from_hex(value).map_err(|_| libc::EINVAL)?;
            // An all-zero key would mean "no key": the device always has one.
            if private.as_bytes() == &[0u8; 32] {
                return Err(libc::EINVAL);
            }
            patch.private_key = Some(private);
        }
        "listen_port" => patch.listen_port = Some(value.parse().map_err(|_| libc::EINVAL)?),
        "fwmark" => patch.fwmark = Some(value.parse().map_err(|_| libc::EINVAL)?),
        "replace_peers" => patch.replace_peers = flag(value)?,
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

fn peer_line(p: &mut PeerPatch, key: &str, value: &str) -> Result<(), i32> {
    match key {
        "remove" => p.remove = flag(value)?,
        "update_only" => p.update_only = flag(value)?,
        "endpoint" => p.endpoint = Some(value.parse().map_err(|_| libc::EINVAL)?),
        "persistent_keepalive_interval" => p.keepalive = Some(value.parse().map_err(|_| libc::EINVAL)?),
        "replace_allowed_ips" => p.replace_allowed_ips = flag(value)?,
        "allowed_ip" => p.allowed_ips.push(value.parse::<IpNet>().map_err(|_| libc::EINVAL)?),
        "preshared_key" => {
            let mut psk = Zeroizing::new([0u8; 32]);
            decode_hex_key(value, &mut psk).map_err(|_| libc::EINVAL)?;
            p.preshared_key = Some((*psk != [0u8; 32]).then_some(psk));
        }
        "protocol_version" if value == "1" => {}
        "protocol_version" => return Err(libc::EPROTO),
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

fn flag(value: &str) -> Result<bool, i32> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(libc::EINVAL),
    }
}

#[cfg(test)]
#[path = "uapi_server_tests.rs"]
mod tests;
