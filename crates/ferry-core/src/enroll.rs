//! Enrollment proofs: pure functions shared by the server (verify) and the agent (prove).
//!
//! The asset-tag factor is an HMAC-SHA256 keyed by the asset tag over a domain-separation
//! label, the server's single-use nonce, the WireGuard public key being enrolled and the
//! node's name. The tag never crosses the network; a captured proof is useless with
//! another nonce (replay) or another WireGuard key (hijack).

use crate::NodeName;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Domain-separation label: a proof for anything else never verifies here.
pub const ASSET_TAG_LABEL: &[u8] = b"ferry enrollment asset-tag proof v1";
/// Domain-separation label of a TPM quote's qualifying data.
pub const TPM_QUOTE_LABEL: &[u8] = b"ferry enrollment tpm quote v1";
/// Length of server nonces, bytes.
pub const NONCE_LEN: usize = 32;

fn mac(asset_tag: &[u8], nonce: &[u8], wg_public_key: &[u8; 32], node: &NodeName) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(asset_tag).expect("HMAC takes any key length");
    // Length-prefix every variable field so no two inputs share an encoding.
    for part in [ASSET_TAG_LABEL, nonce, wg_public_key.as_slice(), node.as_str().as_bytes()] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m
}

/// The agent's proof.
pub fn asset_tag_proof(asset_tag: &[u8], nonce: &[u8], wg_public_key: &[u8; 32], node: &NodeName) -> [u8; 32] {
    mac(asset_tag, nonce, wg_public_key, node).finalize().into_bytes().into()
}

/// The server's check, in constant time.
pub fn verify_asset_tag_proof(
    asset_tag: &[u8],
    nonce: &[u8],
    wg_public_key: &[u8; 32],
    node: &NodeName,
    proof: &[u8],
) -> bool {
    mac(asset_tag, nonce, wg_public_key, node).verify_slice(proof).is_ok()
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
        let (nonce, other_nonce, key, other_key) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
        let p = asset_tag_proof(b"TAG", &nonce, &key, &n1);
        assert!(verify_asset_tag_proof(b"TAG", &nonce, &key, &n1, &p));
        assert!(!verify_asset_tag_proof(b"TAG2", &nonce, &key, &n1, &p), "wrong tag");
        assert!(!verify_asset_tag_proof(b"TAG", &other_nonce, &key, &n1, &p), "replay with another nonce");
        assert!(!verify_asset_tag_proof(b"TAG", &nonce, &other_key, &n1, &p), "another WireGuard key");
        assert!(!verify_asset_tag_proof(b"TAG", &nonce, &key, &n2, &p), "another node");
        assert!(!verify_asset_tag_proof(b"TAG", &nonce, &key, &n1, &p[..31]), "truncated");
    }
}
