//! Enrollment proofs: pure functions shared by the server (verify) and the agent (prove).
//!
//! The asset-tag factor (proof v2) is an HMAC-SHA256 over a domain-separation label, the
//! server's single-use nonce, the WireGuard public key being enrolled, the node's name
//! and the server's WireGuard public key. Its key is derived (HKDF-SHA256) from the
//! asset tag **and** the X25519 shared secret of the node's fresh WireGuard private key
//! and the server's static WireGuard key (which the node pins). The tag never crosses the
//! network; a captured proof is useless with another nonce (replay) or another WireGuard
//! key (hijack); and since a passive observer cannot compute the shared secret, a
//! captured exchange gives no way to test guesses of the tag offline.
//!
//! (Proof v1, an HMAC keyed by the tag alone, let anyone who sniffed one enrollment run
//! a dictionary against it. The server refuses it; see `ferry-server`'s enrollment.)

use crate::NodeName;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Domain-separation label of the asset-tag proof (v2); also the HKDF salt.
pub const ASSET_TAG_LABEL: &[u8] = b"ferry enrollment asset-tag proof v2";
/// Domain-separation label of a TPM quote's qualifying data.
pub const TPM_QUOTE_LABEL: &[u8] = b"ferry enrollment tpm quote v1";
/// Length of server nonces, bytes.
pub const NONCE_LEN: usize = 32;
/// Length of an X25519 shared secret and of WireGuard keys, bytes.
pub const KEY_LEN: usize = 32;

/// What both sides know of one enrollment's asset-tag proof, besides the tag and the
/// shared secret.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    pub nonce: &'a [u8],
    /// The node's WireGuard public key being enrolled.
    pub wg_public_key: &'a [u8; KEY_LEN],
    pub node: &'a NodeName,
    /// The server's static WireGuard public key (the one the challenge named).
    pub server_public_key: &'a [u8; KEY_LEN],
}

fn length_prefixed(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// The HMAC key: HKDF-SHA256(salt = label, ikm = len‖shared ‖ len‖tag,
/// info = server key ‖ node key).
fn proof_key(asset_tag: &[u8], shared_secret: &[u8; KEY_LEN], ctx: &ProofContext<'_>) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(8 + KEY_LEN + asset_tag.len()));
    length_prefixed(&mut ikm, shared_secret);
    length_prefixed(&mut ikm, asset_tag);
    let mut info = [0u8; 2 * KEY_LEN];
    info[..KEY_LEN].copy_from_slice(ctx.server_public_key);
    info[KEY_LEN..].copy_from_slice(ctx.wg_public_key);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    Hkdf::<Sha256>::new(Some(ASSET_TAG_LABEL), &ikm).expand(&info, key.as_mut()).expect("32 bytes of HKDF output");
    key
}

fn mac(asset_tag: &[u8], shared_secret: &[u8; KEY_LEN], ctx: &ProofContext<'_>) -> Hmac<Sha256> {
    let key = proof_key(asset_tag, shared_secret, ctx);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    // Length-prefix every variable field so no two inputs share an encoding.
    for part in [
        ASSET_TAG_LABEL,
        ctx.nonce,
        ctx.wg_public_key.as_slice(),
        ctx.node.as_str().as_bytes(),
        ctx.server_public_key.as_slice(),
    ] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m
}

/// The agent's proof; `shared_secret` is X25519(node private key, server public key).
pub fn asset_tag_proof(asset_tag: &[u8], shared_secret: &[u8; KEY_LEN], ctx: &ProofContext<'_>) -> [u8; 32] {
    mac(asset_tag, shared_secret, ctx).finalize().into_bytes().into()
}

/// The server's check, in constant time; `shared_secret` is X25519(server private key,
/// node public key).
pub fn verify_asset_tag_proof(
    asset_tag: &[u8],
    shared_secret: &[u8; KEY_LEN],
    ctx: &ProofContext<'_>,
    proof: &[u8],
) -> bool {
    mac(asset_tag, shared_secret, ctx).verify_slice(proof).is_ok()
}

/// The qualifying data of the TPM quote an enrollment carries: it binds the quote to
/// this nonce (no replay), this WireGuard key (no hijack) and this node.
pub fn tpm_qualifying_data(nonce: &[u8], wg_public_key: &[u8; 32], node: &NodeName) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    for part in [TPM_QUOTE_LABEL, nonce, wg_public_key.as_slice(), node.as_str().as_bytes()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_qualifying_data_binds_every_input() {
        let n1 = NodeName::parse("n1").unwrap();
        let n2 = NodeName::parse("n2").unwrap();
        let base = tpm_qualifying_data(&[1; 32], &[2; 32], &n1);
        assert_eq!(base, tpm_qualifying_data(&[1; 32], &[2; 32], &n1));
        assert_ne!(base, tpm_qualifying_data(&[9; 32], &[2; 32], &n1));
        assert_ne!(base, tpm_qualifying_data(&[1; 32], &[9; 32], &n1));
        assert_ne!(base, tpm_qualifying_data(&[1; 32], &[2; 32], &n2));
    }

    #[test]
    fn proof_binds_every_input() {
        let n1 = NodeName::parse("n1").unwrap();
        let n2 = NodeName::parse("n2").unwrap();
        let (nonce, other_nonce, key, other_key, server, other_server) =
            ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32], [5u8; 32], [6u8; 32]);
        let shared = [7u8; 32];
        let ctx = ProofContext { nonce: &nonce, wg_public_key: &key, node: &n1, server_public_key: &server };
        let p = asset_tag_proof(b"TAG", &shared, &ctx);
        assert!(verify_asset_tag_proof(b"TAG", &shared, &ctx, &p));
        assert!(!verify_asset_tag_proof(b"TAG2", &shared, &ctx, &p), "wrong tag");
        assert!(!verify_asset_tag_proof(b"TAG", &[8u8; 32], &ctx, &p), "another shared secret");
        let replay = ProofContext { nonce: &other_nonce, ..ctx };
        assert!(!verify_asset_tag_proof(b"TAG", &shared, &replay, &p), "replay with another nonce");
        let hijack = ProofContext { wg_public_key: &other_key, ..ctx };
        assert!(!verify_asset_tag_proof(b"TAG", &shared, &hijack, &p), "another WireGuard key");
        let other_node = ProofContext { node: &n2, ..ctx };
        assert!(!verify_asset_tag_proof(b"TAG", &shared, &other_node, &p), "another node");
        let relayed = ProofContext { server_public_key: &other_server, ..ctx };
        assert!(!verify_asset_tag_proof(b"TAG", &shared, &relayed, &p), "another server");
        assert!(!verify_asset_tag_proof(b"TAG", &shared, &ctx, &p[..31]), "truncated");
    }

    /// Finding 6 of the outside review: everything an observer captures (nonce, both
    /// public keys, node name, proof) does not let it test a dictionary of tags; with
    /// the shared secret (the server's private key) the same dictionary finds the tag.
    #[test]
    fn a_captured_proof_cannot_be_checked_against_a_dictionary_without_the_shared_secret() {
        let node = NodeName::parse("n1").unwrap();
        let (nonce, node_key, server_key) = ([11u8; 32], [12u8; 32], [13u8; 32]);
        let shared = [14u8; 32];
        let ctx = ProofContext { nonce: &nonce, wg_public_key: &node_key, node: &node, server_public_key: &server_key };
        let captured = asset_tag_proof(b"ASSET-0042", &shared, &ctx);
        let dictionary: Vec<String> = (0..100).map(|i| format!("ASSET-{i:04}")).collect();
        // The observer's stand-ins for the shared secret: every 32-byte value on the wire.
        for stand_in in [[0u8; 32], nonce, node_key, server_key] {
            let hits = dictionary.iter().filter(|t| verify_asset_tag_proof(t.as_bytes(), &stand_in, &ctx, &captured));
            assert_eq!(hits.count(), 0, "a guess confirmed without the shared secret");
        }
        // With the shared secret (what the server derives with its private key) the
        // same dictionary finds the tag: the proof's secrecy rests on that secret.
        let hits: Vec<&String> =
            dictionary.iter().filter(|t| verify_asset_tag_proof(t.as_bytes(), &shared, &ctx, &captured)).collect();
        assert_eq!(hits, ["ASSET-0042"], "with the shared secret the dictionary finds the tag");
    }
}
