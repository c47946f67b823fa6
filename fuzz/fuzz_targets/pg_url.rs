//! `ferry_store::fuzzing::split_hosts`: a PostgreSQL URL from `--store` or the
//! configuration file, libpq's multi-host forms (`postgres://u@A:1,B:2/db`,
//! `?host=/a,/b&port=1,2`) split into one URL per host for the store's failover.
//! An admin types it, and a mistake must be an error, never a panic or a URL that
//! connects somewhere else.
//!
//! Asserts for an accepted URL: at least one host URL; each keeps the scheme and the
//! user information (password included) exactly; none still carries
//! `target_session_attrs`; each is a single-host URL (it splits into itself); the count is
//! the number of hosts listed.
#![no_main]

use ferry_store::fuzzing::split_hosts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let Ok(hosts) = split_hosts(url) else { return };
    assert!(!hosts.is_empty(), "{url:?}: no host URL");
    let (scheme, rest) = url.split_once("://").expect("accepted URLs have a scheme");
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    let prefix = format!("{scheme}://{userinfo}");
    for host in &hosts {
        assert!(host.starts_with(&prefix), "{url:?} -> {host:?} lost its scheme or user information");
        let query = host.split_once('?').map_or("", |(_, q)| q);
        assert!(
            !query.split('&').any(|pair| pair.split('=').next() == Some("target_session_attrs")),
            "{url:?} -> {host:?} still has target_session_attrs"
        );
        assert_eq!(split_hosts(host).ok().as_deref(), Some(std::slice::from_ref(host)), "{url:?} -> {host:?}");
    }
    let listed = authority[userinfo.len()..].split(',').count();
    if listed > 1 {
        assert_eq!(hosts.len(), listed, "{url:?} -> {hosts:?}");
    }
});
