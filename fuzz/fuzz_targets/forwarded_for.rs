//! `ferry_server::fuzzing::client_address`: who is calling on the provisioning network,
//! from the TCP peer and, only behind a configured trusted proxy, `X-Forwarded-For`.
//! Enrollment's network factor, its rate limits and the TPM round trip all use it, so a
//! forged header must never make the server see an address it should not.
//!
//! Input: byte 0 picks the peer and byte 1 the trusted proxies (a bit per address) from
//! a fixed table, the rest is header lines `name: value` (one per line; names other
//! than X-Forwarded-For are the forgeries ferry must ignore). Asserts:
//! - a peer that is not a trusted proxy is always the client, whatever the headers;
//! - otherwise the client is the peer, or an address written in X-Forwarded-For that is
//!   not itself a trusted proxy;
//! - `Forwarded`, `X-Real-IP` and other headers change nothing.
#![no_main]

use std::net::IpAddr;

use ferry_server::fuzzing::client_address;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const ADDRESSES: [&str; 8] =
    ["198.18.0.1", "198.18.0.10", "10.0.0.1", "10.0.0.9", "127.0.0.1", "::1", "fd00::1", "2001:db8::5"];

fuzz_target!(|data: &[u8]| {
    let [peer, trusted, rest @ ..] = data else { return };
    let table: Vec<IpAddr> = ADDRESSES.iter().map(|a| a.parse().expect("valid")).collect();
    let peer = table[usize::from(*peer) % table.len()];
    let trusted: Vec<IpAddr> = (0..8).filter(|i| trusted & (1 << i) != 0).map(|i| table[i]).collect();
    let mut headers = HeaderMap::new();
    let mut forwarded_only = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        if name == "x-forwarded-for" {
            forwarded_only.append(name.clone(), value.clone());
        }
        headers.append(name, value);
    }
    let client = client_address(peer, &headers, &trusted);
    if !trusted.contains(&peer) {
        assert_eq!(client, peer, "a header moved an untrusted peer");
    } else if client != peer {
        assert!(!trusted.contains(&client), "{client} is a trusted proxy");
        let written = forwarded_only
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|hop| hop.trim().parse::<IpAddr>().ok() == Some(client));
        assert!(written, "{client} is not in X-Forwarded-For");
    }
    assert_eq!(client, client_address(peer, &forwarded_only, &trusted), "another header changed the client");
});
