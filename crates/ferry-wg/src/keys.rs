//! WireGuard (Curve25519) keys.
//!
//! Keys are written in base64 (as `wg(8)` does) and sent to a UAPI socket in hex.
//! A [`PrivateKey`] is zeroized when dropped, prints as `PrivateKey(<redacted>)`
//! and has no `Display`: exporting it needs an explicit [`PrivateKey::to_base64`].

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_core::wgkey::{decode_base64_key, decode_hex_key, hex_encode};
pub use ferry_core::wgkey::{KeyParseError, PublicKey, KEY_LEN};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

/// A WireGuard private key. Zeroized on drop; `Debug` is redacted; no `Display`.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// Generates a new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        PrivateKey(StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// Builds a key from raw bytes (clamped as X25519 requires when used).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        PrivateKey(StaticSecret::from(*bytes))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*x25519_dalek::PublicKey::from(&self.0).as_bytes())
    }

    /// The key in base64 (the `wg genkey` format). Handle the result as a secret.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }

    /// The key in hex, as the UAPI protocol wants it. Handle the result as a secret.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex_encode(self.0.as_bytes()))
    }

    /// Parses 64 hex digits (UAPI form).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        decode_hex_key(s, &mut out)?;
        Ok(PrivateKey::from_bytes(*out))
    }

    /// The raw key bytes. Handle them as a secret.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// X25519 with a peer's public key (the same secret on both sides). `None` when the
    /// peer's key is a low-order point: the result would not depend on this key.
    pub fn shared_secret(&self, peer: &PublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self.0.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        shared.was_contributory().then(|| Zeroizing::new(*shared.as_bytes()))
    }
}

impl FromStr for PrivateKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        decode_base64_key(s.trim_end_matches('\n'), &mut out)?;
        Ok(PrivateKey::from_bytes(*out))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vectors: private key of all 0x01 bytes and its public key as printed by
    // `echo AQEB...AQE= | wg pubkey` (wireguard-tools 1.0.20210914).
    const PRIV_B64: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const PUB_B64: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";
    // A random `wg genkey` / `wg pubkey` pair.
    const GEN_PRIV: &str = "cDCvSTMd22eKne9uQd1m1pHpVQJ4ByICIxhad6qhFHI=";
    const GEN_PUB: &str = "FzeJOnf4t3aCrzheo5yu5abP2nAoAH0thpfeYI8U/UA=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let k: PrivateKey = PRIV_B64.parse().expect("valid key");
        assert_eq!(k.public_key().to_base64(), PUB_B64);
        let k: PrivateKey = GEN_PRIV.parse().expect("valid key");
        assert_eq!(k.public_key().to_string(), GEN_PUB);
    }

    #[test]
    fn parse_and_roundtrip() {
        let k: PrivateKey = PRIV_B64.parse().expect("valid key");
        assert_eq!(k.to_base64().as_str(), PRIV_B64);
        assert_eq!(k.to_hex().as_str(), "01".repeat(32));
        let pk = k.public_key();
        let back: PublicKey = pk.to_base64().parse().expect("roundtrip");
        assert_eq!(pk, back);
        assert_eq!(PublicKey::from_hex(&pk.to_hex()), Ok(pk));
        // a trailing newline (as in a key file) is accepted for private keys
        let k2: PrivateKey = format!("{PRIV_B64}\n").parse().expect("newline");
        assert_eq!(k2.public_key(), pk);
    }

    #[test]
    fn shared_secrets_agree_and_low_order_keys_give_none() {
        let (node, server) = (PrivateKey::generate(), PrivateKey::generate());
        let a = node.shared_secret(&server.public_key()).expect("contributory");
        let b = server.shared_secret(&node.public_key()).expect("contributory");
        assert_eq!(*a, *b);
        let third = PrivateKey::generate();
        assert_ne!(*a, *third.shared_secret(&server.public_key()).expect("contributory"));
        // The all-zero point (low order) would make the "secret" known to everyone.
        assert!(server.shared_secret(&PublicKey([0u8; KEY_LEN])).is_none());
    }

    #[test]
    fn generated_keys_differ_and_derive() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a.public_key(), b.public_key());
        let a2: PrivateKey = a.to_base64().parse().expect("roundtrip");
        assert_eq!(a.public_key(), a2.public_key());
    }

    #[test]
    fn bad_private_keys_are_rejected() {
        // Public keys: ferry_core::wgkey's tests (the parser is shared).
        assert!(matches!("".parse::<PrivateKey>(), Err(KeyParseError::Length(0))));
        assert!(matches!("not base64!".parse::<PrivateKey>(), Err(KeyParseError::Base64)));
    }

    #[test]
    fn private_key_debug_is_redacted() {
        let k: PrivateKey = PRIV_B64.parse().expect("valid key");
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "PrivateKey(<redacted>)");
        assert!(!dbg.contains("AQEB"));
    }
}
