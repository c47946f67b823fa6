//! The SSH host certificate exchange (issue 18), both ends of outside input. Byte 0
//! picks the side, the rest is the body:
//!
//! 0. the body a node posts to `/ssh/host-certificates` →
//!    `ferry_server::fuzzing::parse_host_keys`. Asserts 1 to 8 keys of a type ferry
//!    certifies (ed25519, ECDSA, RSA), each once, without a comment, and that each
//!    key's OpenSSH text parses back to the same key;
//! 1. the server's answer the agent reads → `ferry_agent::fuzzing::check_certificates`
//!    for a fixed ed25519 host key. Asserts an accepted answer is exactly one host
//!    certificate, of that key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssh_key::certificate::CertType;
use ssh_key::{Algorithm, PublicKey};

/// A fixed host key (the answer must certify it).
const HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM4lMPCWZXzG0eHRDgP8PTRKFJz2nK4R1pI+6VKufZvy root@n1";

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(body) else { return };
    match which % 2 {
        0 => host_keys(text),
        _ => answer(text),
    }
});

fn host_keys(text: &str) {
    let Ok(keys) = ferry_server::fuzzing::parse_host_keys(text) else { return };
    assert!((1..=8).contains(&keys.len()), "{} keys", keys.len());
    for (i, k) in keys.iter().enumerate() {
        assert!(
            matches!(k.algorithm(), Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. }),
            "{:?}",
            k.algorithm()
        );
        assert_eq!(k.comment(), "");
        let again = PublicKey::from_openssh(&k.to_openssh().expect("openssh text")).expect("parses back");
        assert_eq!(again.key_data(), k.key_data());
        assert!(keys[..i].iter().all(|o| o.key_data() != k.key_data()), "a key twice");
    }
}

fn answer(text: &str) {
    let key = PublicKey::from_openssh(HOST_KEY).expect("fixture");
    let keys = [("ed25519", key.clone())];
    let Ok(certs) = ferry_agent::fuzzing::check_certificates(&keys, text) else { return };
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].cert_type(), CertType::Host);
    assert_eq!(certs[0].public_key(), key.key_data());
}
