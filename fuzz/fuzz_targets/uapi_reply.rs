//! WireGuard UAPI replies (`ferry_wg::uapi::proto`): what wireguard-go (or any other
//! implementation) answers on `/var/run/wireguard/NAME.sock` to `get=1`
//! (`parse_get_reply`) and to `set=1` (`parse_set_reply`). The server
//! trusts that process less than itself; the parser must never panic.
//!
//! `UapiClient::exchange` refuses a reply that is not UTF-8 before parsing, so only
//! UTF-8 input reaches the parser here too.
#![no_main]

use ferry_wg::uapi::proto::{parse_get_reply, parse_set_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = std::str::from_utf8(data) else { return };
    if let Ok(status) = parse_get_reply(reply) {
        assert!(status.peers.len() <= reply.matches("public_key=").count());
        for p in &status.peers {
            assert!(status.peer(&p.public_key).is_some());
        }
    }
    let _ = parse_set_reply(reply);
});
