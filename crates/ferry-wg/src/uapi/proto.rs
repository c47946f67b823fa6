//! The cross-platform UAPI text protocol (<https://www.wireguard.com/xplatform/>):
//! building `set=1` requests and parsing `get=1` replies.
//!
//! The parser reads outside input: it never panics, bounds nothing by trust, and
//! reports malformed input as [`ReplyError`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::config::{DeviceStatus, DeviceUpdate, PeerStatus};
use crate::keys::{PrivateKey, PublicKey};

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The reply ended before its `errno=` line.
    Truncated,
    /// A line is not valid protocol.
    Malformed(String),
    /// The implementation reported an error.
    Errno(i32),
}

/// Serialises `update` as one `set=1` request, terminated by a blank line.
/// The text contains the private key if one is set: it is zeroized on drop.
pub(crate) fn set_request(update: &DeviceUpdate) -> Zeroizing<String> {
    // about 200 bytes per peer with one allowed IP
    let mut out = Zeroizing::new(String::with_capacity(64 + 200 * update.peers.len()));
    let s: &mut String = &mut out;
    s.push_str("set=1\n");
    if let Some(key) = &update.private_key {
        s.push_str("private_key=");
        s.push_str(&key.to_hex());
        s.push('\n');
    }
    if let Some(port) = update.listen_port {
        let _ = writeln!(s, "listen_port={port}");
    }
    if update.replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for key in &update.remove {
        let _ = writeln!(s, "public_key={}\nremove=true", key.to_hex());
    }
    for peer in &update.peers {
        let _ = writeln!(s, "public_key={}", peer.public_key.to_hex());
        s.push_str("replace_allowed_ips=true\n");
        let _ = writeln!(s, "persistent_keepalive_interval={}", peer.keepalive_secs());
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(s, "endpoint={endpoint}");
        }
        for net in &peer.allowed_ips {
            let _ = writeln!(s, "allowed_ip={}", net.trunc());
        }
    }
    s.push('\n');
    out
}

/// Finds the `errno=` value of a `set=1` reply.
pub fn parse_set_reply(reply: &str) -> Result<(), ReplyError> {
    for line in reply.lines() {
        if let Some(v) = line.strip_prefix("errno=") {
            return match v.trim().parse::<i32>() {
                Ok(0) => Ok(()),
                Ok(n) => Err(ReplyError::Errno(n)),
                Err(_) => Err(malformed("errno", v)),
            };
        }
        if !line.is_empty() {
            return Err(ReplyError::Malformed(format!("unexpected line {:?} in set reply", clip(line))));
        }
    }
    Err(ReplyError::Truncated)
}

/// Parses a `get=1` reply (everything up to and including the `errno=` line).
pub fn parse_get_reply(reply: &str) -> Result<DeviceStatus, ReplyError> {
    let mut status = DeviceStatus::default();
    let mut peer: Option<PeerBuilder> = None;
    for line in reply.lines() {
        if line.is_empty() {
            return Err(ReplyError::Malformed("blank line before the errno line".into()));
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ReplyError::Malformed(format!("line {:?} is not key=value", clip(line))));
        };
        if key == "errno" {
            return match value.parse::<i32>() {
                Ok(0) => {
                    if let Some(p) = peer.take() {
                        status.peers.push(p.finish());
                    }
                    Ok(status)
                }
                Ok(n) => Err(ReplyError::Errno(n)),
                Err(_) => Err(malformed("errno", value)),
            };
        }
        if key == "public_key" {
            let public_key = PublicKey::from_hex(value).map_err(|_| malformed(key, value))?;
            if let Some(p) = peer.replace(PeerBuilder::new(public_key)) {
                status.peers.push(p.finish());
            }
            continue;
        }
        match peer.as_mut() {
            None => device_line(&mut status, key, value)?,
            Some(p) => p.line(key, value)?,
        }
    }
    Err(ReplyError::Truncated)
}

fn device_line(status: &mut DeviceStatus, key: &str, value: &str) -> Result<(), ReplyError> {
    match key {
        "private_key" => {
            let private = PrivateKey::from_hex(value).map_err(|_| malformed(key, "<redacted>"))?;
            status.public_key = Some(private.public_key());
        }
        "listen_port" => {
            let port: u16 = number(key, value)?;
            status.listen_port = (port != 0).then_some(port);
        }
        // fwmark, protocol extensions: not needed, ignored for forward compatibility
        _ => {}
    }
    Ok(())
}

struct PeerBuilder {
    status: PeerStatus,
    handshake_sec: u64,
    handshake_nsec: u32,
}

impl PeerBuilder {
    fn new(public_key: PublicKey) -> Self {
        PeerBuilder { status: PeerStatus::new(public_key), handshake_sec: 0, handshake_nsec: 0 }
    }

    fn line(&mut self, key: &str, value: &str) -> Result<(), ReplyError> {
        let s = &mut self.status;
        match key {
            "allowed_ip" => s.allowed_ips.push(value.parse::<IpNet>().map_err(|_| malformed(key, value))?),
            // An endpoint with an IPv6 zone (`[fe80::1%eth0]:51820`) has no SocketAddr
            // form; report it as unknown rather than failing the whole status.
            "endpoint" => s.endpoint = value.parse::<SocketAddr>().ok(),
            "rx_bytes" => s.rx_bytes = number(key, value)?,
            "tx_bytes" => s.tx_bytes = number(key, value)?,
            "persistent_keepalive_interval" => {
                let secs: u16 = number(key, value)?;
                s.persistent_keepalive = (secs != 0).then_some(secs);
            }
            "last_handshake_time_sec" => self.handshake_sec = number(key, value)?,
            "last_handshake_time_nsec" => {
                let nsec: u32 = number(key, value)?;
                if nsec >= 1_000_000_000 {
                    return Err(malformed(key, value));
                }
                self.handshake_nsec = nsec;
            }
            // preshared_key, protocol_version, extensions
            _ => {}
        }
        Ok(())
    }

    fn finish(mut self) -> PeerStatus {
        if self.handshake_sec != 0 || self.handshake_nsec != 0 {
            let d = Duration::new(self.handshake_sec, self.handshake_nsec);
            self.status.last_handshake = UNIX_EPOCH.checked_add(d);
        }
        self.status
    }
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ReplyError> {
    value.parse::<T>().map_err(|_| malformed(key, value))
}

fn malformed(key: &str, value: &str) -> ReplyError {
    ReplyError::Malformed(format!("bad value {:?} for {key}", clip(value)))
}

/// At most 64 characters of outside input in an error message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
