//! A WireGuard (Curve25519) public key: 32 bytes, written in base64 as `wg(8)` does and
//! sent to a UAPI socket in hex. Pure (no key agreement): the store, the API and the
//! device code all speak this one type; `ferry-wg` adds the private key and re-exports it.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Length of a WireGuard key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// Not valid base64.
    #[error("WireGuard key is not valid base64 (expected 44 characters like the output of `wg genkey`)")]
    Base64,
    /// Not valid hex.
    #[error("WireGuard key is not valid hex (expected 64 hex digits)")]
    Hex,
    /// Decoded to the wrong number of bytes.
    #[error("WireGuard key has {0} bytes, expected 32 (44 base64 characters ending in '=')")]
    Length(usize),
}

/// A WireGuard public key. Serialized as its base64 text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key in base64, as `wg(8)` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The key in lowercase hex, as the UAPI protocol wants it.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses 64 hex digits (UAPI form).
    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        let mut out = [0u8; KEY_LEN];
        decode_hex_key(s, &mut out)?;
        Ok(PublicKey(out))
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; KEY_LEN];
        decode_base64_key(s, &mut out)?;
        Ok(PublicKey(out))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Decodes a 32-byte key from base64 into `out` (the decoded bytes are wiped after the
/// copy: private keys come through here too).
pub fn decode_base64_key(s: &str, out: &mut [u8; KEY_LEN]) -> Result<(), KeyParseError> {
    // 32 bytes are 44 base64 characters; anything longer cannot be a key, so do not
    // decode unbounded input.
    if s.len() > 64 {
        return Err(KeyParseError::Length(s.len() * 3 / 4));
    }
    let bytes = Zeroizing::new(STANDARD.decode(s).map_err(|_| KeyParseError::Base64)?);
    if bytes.len() != KEY_LEN {
        return Err(KeyParseError::Length(bytes.len()));
    }
    out.copy_from_slice(&bytes);
    Ok(())
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes a 32-byte key from 64 hex digits into `out`.
pub fn decode_hex_key(s: &str, out: &mut [u8; KEY_LEN]) -> Result<(), KeyParseError> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return Err(KeyParseError::Length(s.len() / 2));
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(KeyParseError::Hex)?;
        let lo = hex_val(pair[1]).ok_or(KeyParseError::Hex)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The public key of the all-0x01 private key, as `wg pubkey` prints it.
    const PUB_B64: &str = "pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=";

    #[test]
    fn public_keys_round_trip_through_base64_hex_and_serde() {
        let pk: PublicKey = PUB_B64.parse().expect("valid key");
        assert_eq!(pk.to_string(), PUB_B64);
        assert_eq!(PublicKey::from_hex(&pk.to_hex()), Ok(pk));
        let json = serde_json::to_string(&pk).unwrap();
        assert_eq!(json, format!("\"{PUB_B64}\""), "JSON carries the base64 text");
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), pk);
        let e = serde_json::from_str::<PublicKey>("\"AQID\"").unwrap_err().to_string();
        assert!(e.contains("expected 32"), "{e}");
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyParseError::Base64));
        assert_eq!("AQID".parse::<PublicKey>(), Err(KeyParseError::Length(3)));
        let long = "A".repeat(400);
        assert!(matches!(long.parse::<PublicKey>(), Err(KeyParseError::Length(_))));
        assert_eq!(PublicKey::from_hex(&"zz".repeat(32)), Err(KeyParseError::Hex));
        assert_eq!(PublicKey::from_hex("abcd"), Err(KeyParseError::Length(2)));
        // multi-byte UTF-8 must not panic the hex parser
        assert!(PublicKey::from_hex(&"é".repeat(32)).is_err());
        let msg = KeyParseError::Length(3).to_string();
        assert!(msg.contains("expected 32"), "{msg}");
    }
}
