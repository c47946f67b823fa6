//! What the agent reads from a server's answers, before it trusts anything: the server
//! may be an impostor (its key is checked only once the answer is read), and plain HTTP
//! lets anyone on the path write the answer. Byte 0 picks the answer, the rest is it:
//!
//! 0. `POST /v1/enroll/challenge` → `Challenge` JSON, its nonce decoded as `challenge()`
//!    does (standard base64, `NONCE_LEN` bytes);
//! 1. `POST /v1/enroll` → `EnrollResponse` JSON, then what `validate` does before its
//!    DNS look-up of the endpoint: the offered key (`PublicKey`), the two addresses,
//!    and `check_inside_tunnel` on the datasource and phone-home URLs. Asserts an
//!    accepted URL is `http://` to exactly the server's tunnel address, as the agent's
//!    transport reads it;
//! 2. `POST /v1/enroll/tpm` → `TpmCredentialChallenge` JSON through
//!    `decode_credential_challenge` with a fixed nonce and key. Asserts the node name is
//!    valid, every PCR exists, and the qualifying data binds nonce, key and node;
//! 3. an error answer: `Response::error_text` (a ferry `ApiError` body or any body).
//!    Asserts one line of at most `MAX_ERROR_TEXT` characters without control
//!    characters (it goes onto the node's console);
//! 4. a `Retry-After` header: `parse_retry_after` at a fixed time. Asserts at most
//!    `MAX_RETRY_AFTER`, and a number of seconds read exactly.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_agent::fuzzing::{
    check_inside_tunnel, decode_credential_challenge, parse_retry_after, Response, MAX_ERROR_TEXT, MAX_RETRY_AFTER,
    PCR_COUNT,
};
use ferry_api::enroll::{Challenge, EnrollResponse, TpmCredentialChallenge};
use ferry_core::enroll::{tpm_qualifying_data, NONCE_LEN};
use ferry_core::NodeName;
use http::Uri;
use libfuzzer_sys::fuzz_target;

const NONCE: [u8; 32] = [7; 32];
const WG_KEY: [u8; 32] = [9; 32];

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else { return };
    match which % 5 {
        0 => challenge(body),
        1 => enroll_response(body),
        2 => credential_challenge(body),
        3 => error_text(body),
        _ => retry_after(body),
    }
});

fn challenge(body: &[u8]) {
    let Ok(c) = serde_json::from_slice::<Challenge>(body) else { return };
    if let Ok(nonce) = STANDARD.decode(c.nonce.as_bytes()) {
        if nonce.len() == NONCE_LEN {
            assert_eq!(STANDARD.encode(&nonce), c.nonce, "the nonce goes back as it came");
        }
    }
}

fn enroll_response(body: &[u8]) {
    let Ok(a) = serde_json::from_slice::<EnrollResponse>(body) else { return };
    if let Ok(key) = a.server_public_key.parse::<ferry_wg::PublicKey>() {
        assert_eq!(key.to_base64().parse::<ferry_wg::PublicKey>().ok(), Some(key));
    }
    let (Ok(_node), Ok(server)) = (a.node_address.parse::<IpAddr>(), a.server_address.parse::<IpAddr>()) else {
        return;
    };
    for url in [&a.datasource_url, &a.phone_home_url] {
        if check_inside_tunnel("datasource_url", url, server).is_ok() {
            // What the transport does with it (`send`): parse, scheme, host, port.
            let uri: Uri = url.parse().unwrap_or_else(|e| panic!("{url:?} accepted but unreadable: {e}"));
            assert_eq!(uri.scheme_str(), Some("http"), "{url:?}");
            let host = uri.authority().expect("a host").host();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            assert_eq!(host.parse::<IpAddr>().ok(), Some(server), "{url:?} leaves the tunnel");
        }
    }
}

fn credential_challenge(body: &[u8]) {
    let Ok(c) = serde_json::from_slice::<TpmCredentialChallenge>(body) else { return };
    let Ok((node, decoded)) = decode_credential_challenge(c.clone(), &NONCE, &WG_KEY) else { return };
    assert_eq!(NodeName::parse(&c.node).ok().as_ref(), Some(&node));
    assert!(decoded.pcrs.iter().all(|p| *p < PCR_COUNT), "{:?}", decoded.pcrs);
    assert_eq!(decoded.qualifying, tpm_qualifying_data(&NONCE, &WG_KEY, &node));
    assert_eq!(STANDARD.encode(&decoded.credential_blob), c.credential_blob);
    assert_eq!(STANDARD.encode(&decoded.encrypted_secret), c.encrypted_secret);
}

fn error_text(body: &[u8]) {
    let text = Response { status: 500, retry_after: None, body: body.to_vec() }.error_text();
    assert!(text.chars().count() <= MAX_ERROR_TEXT, "{} characters", text.chars().count());
    assert!(!text.chars().any(char::is_control), "{text:?}");
}

fn retry_after(body: &[u8]) {
    // A header value the agent reads (`to_str`): visible ASCII.
    let Ok(value) = std::str::from_utf8(body) else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let Some(delay) = parse_retry_after(value, now) else { return };
    assert!(delay <= MAX_RETRY_AFTER, "{value:?}: {delay:?}");
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX).min(MAX_RETRY_AFTER.as_secs());
        assert_eq!(delay, Duration::from_secs(secs), "{value:?}");
    }
}
