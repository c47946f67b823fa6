//! MAC and IP parsing: `MacAddr::parse` (enrollment bodies, `/boot/ipxe?mac=`, the CLI),
//! `net::ip_sequence` (`ferry node add 'n[1-N]' --ip A`) with a parsed address and a small
//! count, `net::check_netmask` and `net::check_interface_name`.
//!
//! Input: UTF-8 lines `MAC`, `IP`, `COUNT`, `NETMASK`, `IFNAME` (missing lines are
//! skipped); the first four raw bytes are also checked as a netmask.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use ferry_core::net::{check_interface_name, check_netmask, ip_sequence};
use ferry_core::MacAddr;
use libfuzzer_sys::fuzz_target;

/// A contiguous netmask, by a different route than ferry's check: one of the 33 masks.
fn is_contiguous(mask: Ipv4Addr) -> bool {
    let bits = u32::from(mask);
    (0..=32u32).any(|ones| bits == u32::MAX.checked_shl(32 - ones).unwrap_or(0))
}

fn netmask(mask: Ipv4Addr) {
    assert_eq!(check_netmask(mask).is_ok(), is_contiguous(mask), "netmask {mask}");
}

fuzz_target!(|data: &[u8]| {
    if let [a, b, c, d, ..] = *data {
        netmask(Ipv4Addr::new(a, b, c, d));
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');

    let mac = lines.next().unwrap_or_default();
    match MacAddr::parse(mac) {
        Ok(m) => {
            let shown = m.to_string();
            assert_eq!(shown.len(), 17, "{shown}");
            assert_eq!(MacAddr::parse(&shown).expect("normal form parses"), m);
            assert_eq!(shown.to_ascii_lowercase().replace('-', ":"), shown);
            let json = serde_json::to_string(&m).expect("serialise");
            assert_eq!(serde_json::from_str::<MacAddr>(&json).expect("read back"), m);
        }
        Err(e) => drop(e.to_string()),
    }

    if let Some(Ok(start)) = lines.next().map(|s| s.trim().parse::<IpAddr>()) {
        let count = lines.next().and_then(|c| c.trim().parse::<usize>().ok()).unwrap_or(1) % 1025;
        let (base, max) = match start {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), u128::from(u32::MAX)),
            IpAddr::V6(v6) => (u128::from(v6), u128::MAX),
        };
        let fits = count == 0 || base.checked_add(count as u128 - 1).is_some_and(|last| last <= max);
        match ip_sequence(start, count) {
            Ok(seq) => {
                assert!(fits, "{start} + {count} accepted");
                assert_eq!(seq.len(), count);
                for (i, ip) in seq.iter().enumerate() {
                    let n = match ip {
                        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
                        IpAddr::V6(v6) => u128::from(*v6),
                    };
                    assert_eq!(n, base + i as u128);
                    assert_eq!(ip.is_ipv4(), start.is_ipv4());
                }
            }
            Err(e) => {
                assert!(!fits, "{start} + {count} refused: {e}");
            }
        }
    }

    if let Some(Ok(mask)) = lines.next().map(|s| s.trim().parse::<Ipv4Addr>()) {
        netmask(mask);
    }
    if let Some(name) = lines.next() {
        if check_interface_name(name).is_ok() {
            assert!((1..=15).contains(&name.len()) && !name.contains('/'), "{name:?}");
        }
    }
});
