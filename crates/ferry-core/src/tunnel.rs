//! The tunnel network: the server takes its first host address, nodes the rest.

use crate::words::word_enum;
use crate::CoreError;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

word_enum! {
    /// How a node's agent uses its tunnel: it fetches the seed itself, phones home and
    /// removes the tunnel (`fetch`), or keeps the tunnel up for cloud-init to fetch
    /// through (`cloud-init`).
    pub enum AgentMode ("agent mode") {
        Fetch = "fetch",
        CloudInit = "cloud-init",
    }
}

/// A tunnel network such as `100.64.0.0/16` or `fd42:ferry::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TunnelNetwork {
    base: IpAddr,
    prefix: u8,
}

impl TunnelNetwork {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let err = |why: &str| CoreError::invalid("tunnel network", s, why.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("expected ADDRESS/PREFIX, like 100.64.0.0/16"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("prefix is not a number"))?;
        let (bits, min_hosts_prefix) = if addr.is_ipv4() { (32u8, 30u8) } else { (128, 126) };
        if prefix > min_hosts_prefix || prefix < bits.saturating_sub(64) && addr.is_ipv6() || prefix < 8 {
            return Err(err("prefix must leave room for hosts (IPv4 /8 to /30, IPv6 /64 to /126)"));
        }
        let net = TunnelNetwork { base: addr, prefix };
        if net.offset(addr) != Some(0) {
            return Err(err("host bits are set; use the network address (e.g. 100.64.0.0/16)"));
        }
        Ok(net)
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    fn bits(&self) -> u32 {
        if self.base.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn to_u128(a: IpAddr) -> u128 {
        match a {
            IpAddr::V4(v) => u32::from(v) as u128,
            IpAddr::V6(v) => u128::from(v),
        }
    }

    fn at_offset(&self, off: u128) -> IpAddr {
        let v = Self::to_u128(self.base) + off;
        match self.base {
            IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(v.into()),
        }
    }

    /// Number of addresses in the network (capped: IPv6 /64 is effectively unbounded).
    fn size(&self) -> u128 {
        1u128.checked_shl(self.bits() - self.prefix as u32).unwrap_or(u128::MAX)
    }

    /// The offset of `a` inside this network, if it is inside.
    fn offset(&self, a: IpAddr) -> Option<u128> {
        if a.is_ipv4() != self.base.is_ipv4() {
            return None;
        }
        let host_bits = self.bits() - self.prefix as u32;
        let mask = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        let v = Self::to_u128(a);
        let b = Self::to_u128(self.base);
        ((v & !mask) == (b & !mask)).then_some(v & mask)
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        self.offset(a).is_some()
    }

    /// The server's own tunnel address: the first host.
    pub fn server_address(&self) -> IpAddr {
        self.at_offset(1)
    }

    /// The offsets of node addresses: the server has offset 1, nodes 2 to the last
    /// (IPv4 excludes broadcast; IPv6 is capped at 2^24 addresses).
    pub fn node_offsets(&self) -> std::ops::RangeInclusive<u128> {
        let last = if self.base.is_ipv4() { self.size() - 2 } else { self.size().min(1 << 24) - 1 };
        2..=last
    }

    /// The address at `offset` from the network address.
    pub fn address_at(&self, offset: u128) -> IpAddr {
        self.at_offset(offset)
    }
}

impl std::fmt::Display for TunnelNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}
impl TryFrom<String> for TunnelNetwork {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self, CoreError> {
        Self::parse(&s)
    }
}
impl From<TunnelNetwork> for String {
    fn from(n: TunnelNetwork) -> String {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation() {
        let n = TunnelNetwork::parse("100.64.0.0/30").unwrap();
        assert_eq!(n.server_address().to_string(), "100.64.0.1");
        assert_eq!(n.node_offsets(), 2..=2, "/30 has one node address (no broadcast)");
        assert_eq!(n.address_at(2).to_string(), "100.64.0.2");
        let n = TunnelNetwork::parse("100.64.0.0/16").unwrap();
        assert!(n.contains("100.64.255.1".parse().unwrap()) && !n.contains("100.65.0.1".parse().unwrap()));
        let v6 = TunnelNetwork::parse("fd42::/64").unwrap();
        assert_eq!(v6.server_address().to_string(), "fd42::1");
        assert_eq!(v6.address_at(*v6.node_offsets().start()).to_string(), "fd42::2");
        assert_eq!(*TunnelNetwork::parse("100.64.0.0/16").unwrap().node_offsets().end(), 65_534);
        assert!(!v6.contains("100.64.0.1".parse().unwrap()));
    }

    #[test]
    fn agent_modes_are_words() {
        assert_eq!("cloud-init".parse::<AgentMode>(), Ok(AgentMode::CloudInit));
        assert_eq!(AgentMode::Fetch.to_string(), "fetch");
        let e = "pull".parse::<AgentMode>().unwrap_err().to_string();
        assert_eq!(e, "invalid agent mode \"pull\": fetch or cloud-init");
    }

    #[test]
    fn bad_networks() {
        for bad in [
            "100.64.0.0",
            "100.64.0.1/16",
            "100.64.0.0/31",
            "100.64.0.0/4",
            "fd42::/127",
            "fd42::/32",
            "x/16",
            "100.64.0.0/x",
        ] {
            assert!(TunnelNetwork::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
