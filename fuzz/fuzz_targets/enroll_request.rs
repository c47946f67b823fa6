//! `POST /v1/enroll` on the provisioning network (anyone there may send it): the JSON
//! body into `ferry_api::enroll::EnrollRequest`, then the field parsing the server's
//! `enroll` and `check_identity` do, in their order: the WireGuard key
//! (`ferry_wg::PublicKey` from base64), the 32-byte nonce (base64), `MacAddr::parse`, the
//! mode, the asset-tag proof v2 (base64, the X25519 secret with a stand-in server key,
//! then the constant-time HMAC check; a v1 proof is only refused), and the TPM
//! proof as `tpm::check` reads it (secret, quote and signature in base64, PCR values in
//! hex, then `verify_quote` with the swtpm AK and `check_pcr_policy`).
#![no_main]

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::enroll::EnrollRequest;
use ferry_attest::quote::parse_quote;
use ferry_attest::{check_pcr_policy, verify_quote};
use ferry_core::enroll::{tpm_qualifying_data, verify_asset_tag_proof, ProofContext};
use ferry_core::{MacAddr, NodeName};
use ferry_fuzz::ak;
use ferry_wg::{PrivateKey, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<EnrollRequest>(data) else { return };
    let key = req.public_key.trim().parse::<PublicKey>();
    if let Ok(k) = &key {
        assert_eq!(k.to_base64().parse::<PublicKey>().expect("own form parses"), *k);
    }
    let nonce: Option<[u8; 32]> = B64.decode(req.nonce.trim()).ok().and_then(|v| v.try_into().ok());
    if let Err(e) = MacAddr::parse(&req.mac) {
        drop(e.to_string());
    }
    let _mode = match req.mode.as_deref() {
        None | Some("cloud-init") => Some("cloud-init"),
        Some("fetch") => Some("fetch"),
        Some(_) => None,
    };

    // The rest runs only for a request that got this far on the server; here it runs
    // whatever the key and nonce, with stand-ins for what failed.
    let key = key.map(|k| k.0).unwrap_or([0; 32]);
    let nonce = nonce.unwrap_or([0; 32]);
    let node = NodeName::parse("n001").expect("literal");
    if let Some(proof) = &req.proofs.asset_tag_v2 {
        let server = PrivateKey::from_bytes([7; 32]);
        let server_key = server.public_key();
        // A low-order node key gives no secret: the server treats the proof as invalid.
        if let (Ok(p), Some(shared)) = (B64.decode(proof.trim()), server.shared_secret(&PublicKey(key))) {
            let ctx =
                ProofContext { nonce: &nonce, wg_public_key: &key, node: &node, server_public_key: &server_key.0 };
            let _ = verify_asset_tag_proof(b"ASSET-TAG-0001", &shared, &ctx, &p);
        }
    }
    if let Some(tpm) = &req.proofs.tpm {
        let _secret = B64.decode(tpm.secret.trim()).unwrap_or_default();
        let attest = B64.decode(tpm.attest.trim());
        let signature = B64.decode(tpm.signature.trim());
        let mut values = BTreeMap::new();
        let mut bad_value = false;
        for (index, hex) in &tpm.pcr_values {
            match ferry_core::model::decode_hex(hex).filter(|v| v.len() == 32) {
                Some(v) => {
                    values.insert(*index, v);
                }
                None => bad_value = true,
            }
        }
        if let (Ok(attest), Ok(signature), false) = (attest, signature, bad_value) {
            let _ = parse_quote(&attest);
            let expected = tpm_qualifying_data(&nonce, &key, &node);
            let wanted: Vec<u8> = values.keys().copied().collect();
            if let Err(e) = verify_quote(ak(), &attest, &signature, &expected, &wanted, &values) {
                drop(e.to_string());
            }
            let policy: BTreeMap<u8, Vec<u8>> = [(7u8, vec![0u8; 32])].into();
            let _ = check_pcr_policy(&policy, &values);
        }
    }
});
