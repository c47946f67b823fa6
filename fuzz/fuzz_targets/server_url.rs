//! The agent's `ferry.server=` and `ferry.tls=` (kernel command line, or the flags):
//! `ferry_agent::fuzzing::ServerUrl::parse` and `parse_pin` on each comma-separated entry,
//! as `Config::build` does. The command line comes from the boot channel (an iPXE script
//! over plain HTTP), so it is outside input.
//!
//! Asserts for a URL that parses: its normal form (`base`) is `http://` or `https://`
//! as `https` says, has no trailing slash, query, user name or empty port, and parses
//! again to the same value; the enrollment URL built from it is one the agent's HTTP
//! transport reads with the same scheme, host and port (the host the agent also uses to
//! find its interface).
//! For a pin: 32 bytes, exactly the hex digits written (after `sha256:` and colons).
#![no_main]

use ferry_agent::cmdline::split_list;
use ferry_agent::fuzzing::{parse_pin, ServerUrl};
use http::Uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // FerryParams::read decodes the command line lossily.
    let line = String::from_utf8_lossy(data);
    for entry in split_list(&line) {
        if let Ok(url) = ServerUrl::parse(&entry) {
            let scheme = if url.https { "https://" } else { "http://" };
            assert!(url.base.starts_with(scheme), "{url:?}");
            assert!(!url.base.ends_with('/') && !url.base.contains('?'), "{url:?}");
            assert!(!url.host.is_empty() && !url.host.contains(['[', ']']), "{url:?}");
            assert_eq!(ServerUrl::parse(&url.base).as_ref().ok(), Some(&url), "normal form of {entry:?}");
            let enroll: Uri = url.url("/v1/enroll").parse().unwrap_or_else(|e| panic!("{url:?}: {e}"));
            assert_eq!(enroll.scheme_str(), Some(&scheme[..scheme.len() - 3]));
            let authority = enroll.authority().expect("authority");
            assert!(!authority.as_str().contains('@') && !authority.as_str().ends_with(':'), "{url:?}");
            assert_eq!(authority.host().trim_start_matches('[').trim_end_matches(']'), url.host);
            assert_eq!(authority.port_u16().unwrap_or(if url.https { 443 } else { 80 }), url.port);
        }
        if let Ok(pin) = parse_pin(&entry) {
            let written: String = entry.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
            let hex: String = pin.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, written.to_ascii_lowercase(), "{entry:?}");
        }
    }
});
