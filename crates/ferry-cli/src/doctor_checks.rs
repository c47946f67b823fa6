//! The checks of `ferry doctor`, as functions of what was gathered (so each verdict is
//! unit-tested without a broken host): one line per check, with the fix.

use ferry_api::admin::{NodeView, ProfileView, ServerSetup, ServerView};
use ferry_api::image::ImageRecord;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not checked: what it needs is missing (the server did not answer).
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Check {
        Check { check, status: Status::Ok, detail: detail.into(), fix: None }
    }
    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// At most `n` names, then "and N more".
fn some(names: &[String], n: usize) -> String {
    let mut s = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > n {
        s += &format!(" and {} more", names.len() - n);
    }
    s
}

/// The server's WireGuard device on this host, and the kernel module.
pub fn wireguard(setup: &ServerSetup, interface_present: bool, module_loaded: bool) -> Check {
    let (name, backend) = (&setup.wireguard_interface, &setup.wireguard_backend);
    if !interface_present {
        return Check::fail(
            "wireguard",
            format!("the server's WireGuard interface {name} is not on this host"),
            "run ferry doctor on the server's host (in its network namespace); if it is there, \
             the device is gone: systemctl restart ferry",
        );
    }
    // Userspace by choice is no finding; by fallback (`auto`), a missing module is.
    if backend == "userspace" && setup.wireguard_backend_configured == "auto" && !module_loaded {
        return Check::warn(
            "wireguard",
            format!("{name} up on userspace WireGuard: the kernel module is not loaded"),
            "modprobe wireguard && systemctl restart ferry (kernel WireGuard is faster); or set \
             [wireguard] backend = \"userspace\" to say so",
        );
    }
    Check::ok("wireguard", format!("{name} up, {backend} backend, UDP port {}", setup.wireguard_listen_port))
}

/// Each listener answers a TCP connect; provisioning is not on loopback only.
/// `answers`: (what, address, error if the connect failed).
pub fn listeners(setup: &ServerSetup, answers: &[(&'static str, String, Option<String>)]) -> Check {
    let dead: Vec<String> =
        answers.iter().filter_map(|(what, addr, err)| err.as_ref().map(|e| format!("{what} {addr}: {e}"))).collect();
    if !dead.is_empty() {
        return Check::fail(
            "listeners",
            format!("nothing answers on {}", dead.join("; ")),
            "run ferry doctor on the server's host; check `ss -ltnp` for another program on the port \
             and the server's log: journalctl -u ferry",
        );
    }
    let loopback = setup.provisioning_listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if loopback {
        return Check::warn(
            "listeners",
            format!("provisioning listens on {} only: nodes cannot reach it", setup.provisioning_listen),
            "set [provisioning] listen to the provisioning network's address (or 0.0.0.0:8470)",
        );
    }
    let all: Vec<String> = answers.iter().map(|(what, addr, _)| format!("{what} {addr}")).collect();
    Check::ok("listeners", all.join(", "))
}

/// This host's clock against the server's, and every other server's heartbeat (a
/// heartbeat from the future is a clock ahead).
pub fn clock(server_now: i64, local_now: i64, servers: &[ServerView]) -> Check {
    // 2024-01-01: no clock that is set shows an earlier date.
    if local_now < 1_704_067_200 {
        return Check::fail("clock", "this host's clock is before 2024", "enable NTP: timedatectl set-ntp true");
    }
    let skew = (server_now - local_now).abs();
    if skew > 5 {
        return Check::fail(
            "clock",
            format!("this host's clock and the server's differ by {skew} s"),
            "enable NTP on both (timedatectl set-ntp true, or chronyd): tunnels and nonces expire by the clock",
        );
    }
    let ahead: Vec<String> = servers
        .iter()
        .filter(|s| s.heartbeat_age_secs < -5)
        .map(|s| format!("{} ({} s)", s.id, -s.heartbeat_age_secs))
        .collect();
    if !ahead.is_empty() {
        return Check::fail(
            "clock",
            format!("servers whose clocks are ahead of this one: {}", some(&ahead, 5)),
            "enable NTP on every server (timedatectl set-ntp true, or chronyd)",
        );
    }
    Check::ok("clock", format!("within {skew} s of the server"))
}

/// An IPv4 route of this host: destination, prefix length, device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub device: String,
}

/// The routes of `/proc/net/route` (little-endian hex destinations and masks).
pub fn parse_proc_routes(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some(Route {
                // The kernel prints the address as a number in its own byte order.
                destination: Ipv4Addr::from(dest.to_ne_bytes()),
                prefix: mask.count_ones() as u8,
                device: f[0].to_owned(),
            })
        })
        .collect()
}

fn overlaps(a: Ipv4Addr, a_len: u8, b: Ipv4Addr, b_len: u8) -> bool {
    let len = a_len.min(b_len);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// The tunnel network must not overlap a route of this host (other than the tunnel
/// device's own, and the default route).
pub fn tunnel_network(network: &str, interface: &str, routes: &[Route]) -> Check {
    let Some((addr, len)) =
        network.split_once('/').and_then(|(a, l)| Some((a.parse::<Ipv4Addr>().ok()?, l.parse().ok()?)))
    else {
        return Check::ok("tunnel-network", format!("{network} (IPv6: not checked against routes)"));
    };
    let clashes: Vec<String> = routes
        .iter()
        .filter(|r| r.device != interface && r.prefix > 0 && overlaps(addr, len, r.destination, r.prefix))
        .map(|r| format!("{}/{} dev {}", r.destination, r.prefix, r.device))
        .collect();
    if clashes.is_empty() {
        return Check::ok("tunnel-network", format!("{network} overlaps no local route"));
    }
    Check::fail(
        "tunnel-network",
        format!("{network} overlaps local routes: {}", some(&clashes, 5)),
        "choose another [wireguard] network (nodes would be unreachable or misrouted), then restart ferry",
    )
}

/// The `dhcp-host=` lines of a dnsmasq configuration, without comments.
fn dhcp_hosts(conf: &str) -> BTreeSet<String> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("dhcp-host="))
        .map(|v| v.split('#').next().unwrap_or("").trim().to_lowercase())
        .collect()
}

/// The MACs a dnsmasq configuration (with its hosts dir's leases) gives a lease to.
pub fn configured_macs(conf: &str) -> Vec<String> {
    dhcp_hosts(conf).iter().filter_map(|h| h.split(',').next()).map(str::to_owned).collect()
}

/// The dnsmasq check for a configuration that hands out shim (`--secure-boot`): also
/// the TFTP tree in `root` must be what a re-run would export (`stale`: what differs),
/// since GRUB boots those copies, not what the server would answer now.
pub fn secure_boot_export(leases: Check, root: &str, stale: Result<Vec<String>, String>) -> Check {
    if leases.status != Status::Ok {
        return leases;
    }
    let rerun = format!(
        "re-run ferry configure dnsmasq --secure-boot with the options it was written with (--tftp-root {root}), \
         after every change of nodes, profiles or images"
    );
    match stale {
        Ok(stale) if stale.is_empty() => {
            Check::ok("dnsmasq", format!("{}; the Secure Boot TFTP tree in {root} is current", leases.detail))
        }
        Ok(stale) => Check::fail(
            "dnsmasq",
            format!("{}; but the Secure Boot TFTP tree in {root} is out of date: {}", leases.detail, some(&stale, 5)),
            rerun,
        ),
        Err(e) => Check::fail(
            "dnsmasq",
            format!("{}; the Secure Boot TFTP tree in {root} cannot be compared: {e}", leases.detail),
            "check that the server's provisioning.public_url answers from this host",
        ),
    }
}

/// The dnsmasq configuration in `path` against what `ferry configure dnsmasq` makes from
/// the inventory now (`expected`). `found`: the file's text, or why it is not there.
pub fn dnsmasq(path: &str, found: Result<String, String>, expected: &str) -> Check {
    let conf = match found {
        Ok(c) => c,
        Err(e) => {
            return Check::warn(
                "dnsmasq",
                format!("no dnsmasq configuration at {path} ({e})"),
                format!(
                    "ferry configure dnsmasq --interface IF --range NET/PREFIX > {path} && systemctl restart dnsmasq \
                     (or --dnsmasq-conf PATH; ignore if DHCP is served elsewhere)"
                ),
            )
        }
    };
    let (have, want) = (dhcp_hosts(&conf), dhcp_hosts(expected));
    let stale: Vec<String> = have.difference(&want).cloned().collect();
    let missing: Vec<String> = want.difference(&have).cloned().collect();
    if stale.is_empty() && missing.is_empty() {
        return Check::ok("dnsmasq", format!("{path}: {} static leases, as in the inventory", have.len()));
    }
    let mut detail = format!("{path} differs from the inventory:");
    if !missing.is_empty() {
        detail += &format!(" missing {}", some(&missing, 5));
    }
    if !stale.is_empty() {
        detail += &format!("{} not in the inventory {}", if missing.is_empty() { "" } else { ";" }, some(&stale, 5));
    }
    Check::fail(
        "dnsmasq",
        detail,
        format!(
            "ferry configure dnsmasq --interface IF --range NET/PREFIX > {path} && systemctl restart dnsmasq \
         (with --hosts-dir, rerunning it is enough: dnsmasq re-reads the hosts dir)"
        ),
    )
}

/// Every image a profile or node names exists.
pub fn images(profiles: &[ProfileView], nodes: &[NodeView], images: &[ImageRecord]) -> Check {
    let known: BTreeSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let users = profiles
        .iter()
        .map(|p| (format!("profile {}", p.name), &p.settings.image))
        .chain(nodes.iter().map(|n| (format!("node {}", n.name), &n.settings.image)));
    let missing: Vec<String> = users
        .filter_map(|(who, image)| image.as_deref().filter(|i| !known.contains(i)).map(|i| format!("{who} → {i}")))
        .collect();
    if missing.is_empty() {
        return Check::ok("images", format!("{} images; every one named exists", images.len()));
    }
    Check::fail(
        "images",
        format!("images named but not imported: {}", some(&missing, 5)),
        "ferry image import NAME --kernel … --initrd … (or correct --image on the profile or node)",
    )
}

/// Nodes that enroll on network position alone, and nodes refused for lack of any factor.
pub fn identity(nodes: &[NodeView]) -> Check {
    let names =
        |f: fn(&NodeView) -> bool| nodes.iter().filter(|n| f(n)).map(|n| n.name.to_string()).collect::<Vec<_>>();
    let weak = names(|n| n.identity.weak && !n.identity.refused);
    let refused = names(|n| n.identity.refused);
    if weak.is_empty() && refused.is_empty() {
        return Check::ok("identity", format!("{} nodes, each proves more than its network position", nodes.len()));
    }
    let mut detail = Vec::new();
    if !weak.is_empty() {
        detail.push(format!("{} enroll on network position alone (weak): {}", weak.len(), some(&weak, 5)));
    }
    if !refused.is_empty() {
        detail.push(format!("{} have no identity and are refused: {}", refused.len(), some(&refused, 5)));
    }
    Check::warn(
        "identity",
        detail.join("; "),
        "give them an asset tag or a TPM (ferry node set NODES --asset-tag …, ferry node tpm …); \
         accept network position only knowingly: ferry node set NODES --identity network",
    )
}

/// The provisioning certificate file as this user finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertFile {
    /// Its pin (`sha256:…`).
    Pin(String),
    /// Missing or not a certificate: why.
    Broken(String),
    /// This user may not read it (the data directory is the service's, 0700).
    NotAllowed,
}

/// The provisioning certificate file is the one the server serves (it reads it at start).
/// `file`: the file on disk, when TLS is on.
pub fn tls(setup: &ServerSetup, served_pin: Option<&str>, file: Option<CertFile>) -> Check {
    let (Some(cert), Some(file)) = (&setup.provisioning_tls_cert, file) else {
        return Check::ok("tls", "the provisioning TLS listener is off ([provisioning] tls_listen)");
    };
    let file_pin = match file {
        CertFile::Pin(pin) => Ok(pin),
        CertFile::Broken(why) => Err(why),
        CertFile::NotAllowed => {
            return Check {
                check: "tls",
                status: Status::Skipped,
                detail: format!("this user may not read {cert}"),
                fix: Some("run ferry doctor as root".into()),
            }
        }
    };
    match (file_pin, served_pin) {
        (Err(e), _) => Check::fail("tls", e, format!("restore {cert}, or set [provisioning] tls_cert")),
        (Ok(file), Some(served)) if file != served => Check::fail(
            "tls",
            format!("{cert} ({file}) is not the certificate the server serves ({served})"),
            "systemctl restart ferry, then give nodes the new pin: ferry server-cert",
        ),
        (Ok(file), _) => Check::ok("tls", format!("{cert} served, pin {file}")),
    }
}

/// The store answers (the server listed the servers from it); no server is lost; every
/// server holds the same sealing key.
pub fn servers(setup: &ServerSetup, servers: &[ServerView]) -> Check {
    let keys: BTreeSet<&str> = servers.iter().map(|s| s.sealing_key_id.as_str()).filter(|k| !k.is_empty()).collect();
    if keys.len() > 1 {
        return Check::fail(
            "servers",
            format!(
                "the servers hold {} different sealing keys: secrets sealed by one cannot be read by another",
                keys.len()
            ),
            "copy one secrets.key to every server's data directory (see docs/operations.md, several servers)",
        );
    }
    let lost: Vec<String> = servers
        .iter()
        .filter(|s| !s.alive && !s.this)
        .map(|s| format!("{} (silent {} s, {} tunnels)", s.id, s.heartbeat_age_secs, s.active_tunnels))
        .collect();
    if !lost.is_empty() {
        return Check::warn(
            "servers",
            format!("lost: {}", some(&lost, 5)),
            "start it again; if it is gone for good: ferry server remove ID",
        );
    }
    Check::ok("servers", format!("{} store reachable, {} server(s) alive", setup.store, servers.len()))
}

#[cfg(test)]
#[path = "doctor_tests.rs"]
mod tests;
