//! Network newtypes and address arithmetic.

use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An Ethernet MAC address, normalised to lowercase colon form. Accepts `:` or `-`
/// separators, as printed by `ip link` and by Windows/BMC tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let err = |why: &str| {
            CoreError::invalid("MAC address", s, format!("{why} (expected six hex pairs like 52:54:00:12:34:56)"))
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err("wrong number of parts"));
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("each part must be two hexadecimal digits"));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err("not hexadecimal"))?;
        }
        Ok(MacAddr(out))
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Which of `servers` equally listed servers this node tries first: FNV-1a of the
    /// six bytes, modulo the count. Every node boots the same kernel command line, so
    /// "the first listed" would send a whole boot storm to one server; a hash of the MAC
    /// spreads the nodes evenly, and each node always starts at the same server (its
    /// logs and tunnels stay in one place from boot to boot). Fixed here, not std's
    /// hasher, so the choice never changes with the Rust version. 0 for `servers <= 1`.
    pub fn first_server(&self, servers: usize) -> usize {
        if servers <= 1 {
            return 0;
        }
        let hash =
            self.0.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        (hash % servers as u64) as usize
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}
impl TryFrom<String> for MacAddr {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self, CoreError> {
        Self::parse(&s)
    }
}
impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}
impl std::str::FromStr for MacAddr {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, CoreError> {
        Self::parse(s)
    }
}

/// Why `s` cannot be an interface name, or `None` if it can: 1 to 15 (IFNAMSIZ - 1)
/// characters from `A-Z a-z 0-9 _ . -`, not starting with `.` (so never the path
/// components `.` and `..`: the name becomes a file name under `/sys/class/net` and
/// `/var/run/wireguard`). The one rule for every interface name ferry takes: node
/// interfaces in the inventory, the server's WireGuard device, the agent's.
pub fn interface_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s.len() > 15 {
        Some("it is longer than 15 characters")
    } else if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        Some("it contains a character outside A-Z a-z 0-9 _ . -")
    } else if s.starts_with('.') {
        Some("it starts with '.'")
    } else {
        None
    }
}

/// What to type instead of a name [`interface_name_problem`] refuses.
pub const INTERFACE_NAME_HINT: &str = "use 1 to 15 characters from A-Z a-z 0-9 _ . -, not starting with '.'";

/// Checks an interface name ([`interface_name_problem`]).
pub fn check_interface_name(s: &str) -> Result<(), CoreError> {
    match interface_name_problem(s) {
        Some(problem) => Err(CoreError::invalid("interface name", s, format!("{problem} ({INTERFACE_NAME_HINT})"))),
        None => Ok(()),
    }
}

/// An address as the host part of a URL: IPv6 in brackets.
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Checks that a netmask is a contiguous run of ones (255.255.252.0, not 255.0.255.0).
pub fn check_netmask(mask: Ipv4Addr) -> Result<(), CoreError> {
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(CoreError::invalid("netmask", mask.to_string(), "ones must be contiguous, like 255.255.255.0"));
    }
    Ok(())
}

/// `count` consecutive addresses from `start`, for `--ip` over a hostlist. Fails rather
/// than wrapping past the end of the address space.
pub fn ip_sequence(start: IpAddr, count: usize) -> Result<Vec<IpAddr>, CoreError> {
    let overflow = || {
        CoreError::invalid(
            "IP address",
            start.to_string(),
            format!("{count} consecutive addresses run past the end of the address space"),
        )
    };
    let n = u128::try_from(count).map_err(|_| overflow())?;
    match start {
        IpAddr::V4(v4) => {
            let base = u32::from(v4) as u128;
            if n > 0 && base + n - 1 > u32::MAX as u128 {
                return Err(overflow());
            }
            Ok((0..n).map(|i| IpAddr::V4(Ipv4Addr::from((base + i) as u32))).collect())
        }
        IpAddr::V6(v6) => {
            let base = u128::from(v6);
            if n > 0 && base.checked_add(n - 1).is_none() {
                return Err(overflow());
            }
            Ok((0..n).map(|i| IpAddr::V6(Ipv6Addr::from(base + i))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_normalise() {
        let m = MacAddr::parse("52-54-00-AB-cd-01").unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "525400abcd01",
            "52:54:00:ab:cd:+1",
        ] {
            assert!(MacAddr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A rack's MACs are mostly consecutive: they still spread evenly over 2 to 4
    /// servers (first-listed would put all 3,000 on one), and the choice is fixed.
    #[test]
    fn consecutive_macs_spread_evenly_over_the_servers() {
        let macs: Vec<MacAddr> = (0..3000u32)
            .map(|i| {
                let b = i.to_be_bytes();
                MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
            })
            .collect();
        for servers in 2..=4 {
            let mut count = vec![0usize; servers];
            for m in &macs {
                count[m.first_server(servers)] += 1;
            }
            let fair = macs.len() / servers;
            assert!(count.iter().all(|c| c.abs_diff(fair) * 10 <= fair), "{servers} servers: {count:?}");
        }
        assert_eq!(macs[0].first_server(1), 0);
        assert_eq!(macs[0].first_server(0), 0);
        let fixed: Vec<usize> = macs[..6].iter().map(|m| m.first_server(3)).collect();
        assert_eq!(fixed, [1, 0, 0, 2, 2, 1], "the choice must not change between versions");
    }

    #[test]
    fn ip_sequences() {
        let s = ip_sequence("10.0.0.254".parse().unwrap(), 3).unwrap();
        assert_eq!(s.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["10.0.0.254", "10.0.0.255", "10.0.1.0"]);
        assert!(ip_sequence("255.255.255.254".parse().unwrap(), 3).is_err());
        assert_eq!(ip_sequence("fd00::ffff".parse().unwrap(), 2).unwrap()[1].to_string(), "fd00::1:0");
        assert!(ip_sequence("10.0.0.1".parse().unwrap(), 0).unwrap().is_empty());
    }

    #[test]
    fn url_hosts_bracket_ipv6() {
        assert_eq!(url_host("100.64.0.1".parse().unwrap()), "100.64.0.1");
        assert_eq!(url_host("fd00::1".parse().unwrap()), "[fd00::1]");
    }

    #[test]
    fn netmasks_and_ifnames() {
        assert!(check_netmask("255.255.252.0".parse().unwrap()).is_ok());
        assert!(check_netmask("255.0.255.0".parse().unwrap()).is_err());
        assert!(check_interface_name("eth0.100").is_ok());
        assert!(check_interface_name("this-name-is-too-long").is_err());
        assert!(check_interface_name("eth/0").is_err());
        for ok in ["ferry0", "wg-a.b_c", "a", "123456789012345"] {
            assert_eq!(interface_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "1234567890123456", "wg 0", "wg/0", "wg:0", "wé", ".", "..", ".hidden", "a\n"] {
            let e = check_interface_name(bad).expect_err(bad).to_string();
            assert!(e.starts_with("invalid interface name") && e.contains(INTERFACE_NAME_HINT), "{e}");
        }
    }
}
