//! Which MAC the node presents: the one of the interface that routes to the server.
//!
//! A UDP socket connected to the server's address (connecting a UDP socket sends no
//! packet) gets the source address the kernel would use; the interface holding that
//! address (getifaddrs) gives the name, and `/sys/class/net/NAME/address` the MAC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;

use ferry_core::MacAddr;

use crate::config::ServerUrl;
use crate::error::AgentError;

/// Why discovery failed.
#[derive(Debug)]
pub enum MacError {
    /// The network is not ready yet (no route, name does not resolve): worth retrying.
    NotYet(String),
    /// Discovery cannot work on this machine: the user must pass `--mac`.
    Fatal(AgentError),
}

fn fatal(why: String) -> MacError {
    MacError::Fatal(AgentError::Config(format!("cannot find this node's MAC address: {why}; pass --mac MAC")))
}

/// Finds the MAC of the interface that routes to `server`.
pub async fn discover(server: &ServerUrl, sys_class_net: &Path) -> Result<MacAddr, MacError> {
    let target = resolve(server).await?;
    let local = local_ip_towards(target).map_err(|e| MacError::NotYet(format!("no route to {target}: {e}")))?;
    if local.is_loopback() {
        return Err(fatal(format!("the server {target} is reached over the loopback interface")));
    }
    let entries: Vec<_> = nix::ifaddrs::getifaddrs().map_err(|e| fatal(format!("getifaddrs failed: {e}")))?.collect();
    let addrs = entries.iter().filter_map(|a| {
        let s = a.address.as_ref()?;
        let ip = s
            .as_sockaddr_in()
            .map(|v4| IpAddr::V4(v4.ip()))
            .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))?;
        Some((a.interface_name.clone(), ip))
    });
    let name = interface_for_ip(local, addrs)
        .ok_or_else(|| fatal(format!("no interface holds the source address {local}")))?;
    // sysfs first; if it belongs to another network namespace (an agent started in a
    // namespace without remounting /sys), the link-layer address from getifaddrs.
    let mac = match read_mac(sys_class_net, &name) {
        Ok(mac) => mac,
        Err(why) => entries
            .iter()
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
            .filter(|octets| *octets != [0; 6])
            .and_then(mac_from_octets)
            .ok_or_else(|| fatal(why))?,
    };
    tracing::debug!(interface = %name, %mac, %local, "found the interface that routes to the server");
    Ok(mac)
}

async fn resolve(server: &ServerUrl) -> Result<SocketAddr, MacError> {
    let mut addrs = tokio::net::lookup_host((server.host.as_str(), server.port))
        .await
        .map_err(|e| MacError::NotYet(format!("cannot resolve {}: {e}", server.host)))?;
    addrs.next().ok_or_else(|| MacError::NotYet(format!("{} resolves to no address", server.host)))
}

/// The source address the kernel picks to reach `target`. Sends nothing.
pub fn local_ip_towards(target: SocketAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(target)?;
    Ok(sock.local_addr()?.ip())
}

/// The interface holding `ip`, from (interface name, address) pairs.
pub fn interface_for_ip(ip: IpAddr, addrs: impl IntoIterator<Item = (String, IpAddr)>) -> Option<String> {
    addrs.into_iter().find(|(_, a)| *a == ip).map(|(name, _)| name)
}

fn mac_from_octets(o: [u8; 6]) -> Option<MacAddr> {
    MacAddr::parse(&format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3], o[4], o[5])).ok()
}

/// Reads `DIR/NAME/address`; an all-zero MAC (loopback, some tunnels) is an error.
pub fn read_mac(sys_class_net: &Path, interface: &str) -> Result<MacAddr, String> {
    if interface.contains('/') || interface == "." || interface == ".." {
        return Err(format!("odd interface name {interface:?}"));
    }
    let path = sys_class_net.join(interface).join("address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mac = MacAddr::parse(text.trim())
        .map_err(|_| format!("interface {interface} has no Ethernet MAC address ({:?})", text.trim()))?;
    if mac.octets() == [0; 6] {
        return Err(format!("interface {interface} has the MAC 00:00:00:00:00:00"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_interface_holding_the_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let addrs = vec![
            ("lo".to_string(), ip("127.0.0.1")),
            ("eth0".to_string(), ip("192.168.1.10")),
            ("eth1".to_string(), ip("10.0.0.5")),
            ("eth1".to_string(), ip("fd00::5")),
        ];
        assert_eq!(interface_for_ip(ip("10.0.0.5"), addrs.clone()).as_deref(), Some("eth1"));
        assert_eq!(interface_for_ip(ip("fd00::5"), addrs.clone()).as_deref(), Some("eth1"));
        assert_eq!(interface_for_ip(ip("10.0.0.6"), addrs), None);
    }

    #[test]
    fn reads_mac_from_sysfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(name)).expect("mkdir");
            std::fs::write(dir.path().join(name).join("address"), text).expect("write");
        };
        write("eth0", "52:54:00:AB:cd:01\n");
        write("lo", "00:00:00:00:00:00\n");
        write("wg0", "\n");
        assert_eq!(read_mac(dir.path(), "eth0").map(|m| m.to_string()), Ok("52:54:00:ab:cd:01".into()));
        assert!(read_mac(dir.path(), "lo").expect_err("zero").contains("00:00:00:00:00:00"));
        assert!(read_mac(dir.path(), "wg0").expect_err("none").contains("no Ethernet MAC"));
        assert!(read_mac(dir.path(), "missing").is_err());
        assert!(read_mac(dir.path(), "../etc").is_err());
    }

    #[test]
    fn octets_round_trip() {
        let mac = mac_from_octets([0x52, 0x54, 0, 0xab, 0xcd, 1]).expect("valid");
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(mac.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 1]);
    }

    #[test]
    fn source_address_towards_loopback() {
        let ip = local_ip_towards("127.0.0.1:9".parse().expect("addr")).expect("loopback routes");
        assert!(ip.is_loopback());
    }

    #[tokio::test]
    async fn loopback_server_needs_an_explicit_mac() {
        let server = ServerUrl::parse("http://127.0.0.1:9").expect("url");
        match discover(&server, Path::new("/sys/class/net")).await {
            Err(MacError::Fatal(e)) => assert!(e.to_string().contains("--mac"), "{e}"),
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }
}
