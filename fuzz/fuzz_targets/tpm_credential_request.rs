//! `POST /v1/enroll/tpm` on the provisioning network: the JSON body into
//! `ferry_api::enroll::TpmCredentialRequest`, then what the server's `tpm::credential`
//! does with it: the WireGuard key, the nonce and the MAC, the EK and AK
//! (`TPMT_PUBLIC` in base64) through `TpmPublic::parse` and the EK/AK checks, the EK's
//! identity and fingerprint, the EK certificate (base64 DER) against a CA bundle, and
//! MakeCredential for an EK and AK that pass.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::enroll::TpmCredentialRequest;
use ferry_attest::{make_credential, EkIdentity, TpmPublic};
use ferry_core::MacAddr;
use ferry_fuzz::{ca_bundle, rng, NOW};
use ferry_wg::PublicKey;
use libfuzzer_sys::fuzz_target;

fn decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<TpmCredentialRequest>(data) else { return };
    let _key = req.public_key.trim().parse::<PublicKey>();
    let _nonce: Option<[u8; 32]> = decode(&req.nonce).and_then(|v| v.try_into().ok());
    let _mac = MacAddr::parse(&req.mac);
    let ek = decode(&req.ek_public).map(|b| TpmPublic::parse(&b));
    let ak = decode(&req.ak_public).map(|b| TpmPublic::parse(&b));
    let certificate = req.ek_certificate.as_deref().map(decode);

    let ek_id = match &ek {
        Some(Ok(ek)) => match ek.check_endorsement_key().and_then(|()| EkIdentity::from_tpm_public(ek)) {
            Ok(id) => {
                let fp = id.fingerprint();
                assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
                Some(id)
            }
            Err(e) => {
                drop(e.to_string());
                None
            }
        },
        Some(Err(e)) => {
            drop(e.to_string());
            None
        }
        None => None,
    };
    let ak_name = match &ak {
        Some(Ok(ak)) => ak.check_attestation_key().and_then(|()| ak.name()).ok(),
        _ => None,
    };
    if let Some(Some(der)) = &certificate {
        match ca_bundle().verify_ek_certificate(der, NOW) {
            Ok(certified) => {
                let _same = Some(&certified) == ek_id.as_ref();
            }
            Err(e) => drop(e.to_string()),
        }
    }
    if let (Some(Ok(ek)), Some(_), Some(name)) = (&ek, &ek_id, &ak_name) {
        // The server answers 400 when this fails (e.g. an RSA key too small for OAEP).
        match make_credential(ek, name, &[0x5a; 32], &mut rng()) {
            Ok(made) => assert!(!made.id_object.is_empty() && !made.encrypted_secret.is_empty()),
            Err(e) => drop(e.to_string()),
        }
    }
});
