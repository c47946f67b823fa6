//! Who is calling, on the provisioning network. The TCP peer address is the truth;
//! `X-Forwarded-For` is consulted only when the peer is a configured trusted proxy, and
//! then the right-most address that is not itself a trusted proxy is the client.

use axum::http::HeaderMap;
use std::net::IpAddr;

pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .map(|s| s.parse::<IpAddr>().ok())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    hops.into_iter().rev().find(|hop| !trusted_proxies.contains(hop)).unwrap_or(peer)
}

/// The key a caller is limited by (rate limits, outstanding nonces): an IPv4 address, or
/// an IPv6 /64 — one host usually holds a whole /64 and could otherwise be 2^64 callers.
/// An IPv4 address seen on a dual-stack socket (`::ffff:a.b.c.d`) is that IPv4 address.
pub fn source_group(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_callers_are_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let g = |s: &str| source_group(s.parse().unwrap()).to_string();
        assert_eq!(g("10.0.0.9"), "10.0.0.9");
        assert_eq!(g("::ffff:10.0.0.9"), "10.0.0.9");
        assert_eq!(g("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:2::1"), g("2001:db8:1:2:ffff::ffff"), "one /64, one source");
        assert_ne!(g("2001:db8:1:2::1"), g("2001:db8:1:3::1"));
    }

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("x-forwarded-for", xff.parse().unwrap());
        m
    }

    #[test]
    fn headers_only_count_behind_trusted_proxies() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_address(peer, &h("10.0.0.5"), &[]), peer, "no trusted proxies: header ignored");
        assert_eq!(client_address(peer, &h("10.0.0.5"), &[proxy]), peer, "peer is not a proxy: header ignored");
        assert_eq!(
            client_address(proxy, &h("1.2.3.4, 10.0.0.5"), &[proxy]).to_string(),
            "10.0.0.5",
            "right-most untrusted hop"
        );
        assert_eq!(client_address(proxy, &h("10.0.0.5, 10.0.0.1"), &[proxy]).to_string(), "10.0.0.5");
        assert_eq!(
            client_address(proxy, &h("garbage, 10.0.0.5"), &[proxy]),
            proxy,
            "malformed header: the proxy itself"
        );
        assert_eq!(client_address(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }
}
