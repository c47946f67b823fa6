//! PEM input an administrator supplies: the `[tpm] ek_ca_bundle` file
//! (`CaBundle::from_pem`, then verifying the fixture EK certificate against whatever
//! bundle parsed, so fuzzed CA certificates and keys reach signature verification) and
//! an EK public key (`EkIdentity::from_pem`, `ferry node set --tpm-ek ek.pem`).
#![no_main]

use ferry_attest::{CaBundle, EkIdentity};
use ferry_fuzz::fixtures::EK_DER;
use ferry_fuzz::NOW;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match CaBundle::from_pem(data) {
        Ok(bundle) => {
            assert!(!bundle.is_empty());
            let _ = bundle.verify_ek_certificate(EK_DER, NOW);
        }
        Err(e) => drop(e.to_string()),
    }
    // The CLI reads the file as text.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ek) = EkIdentity::from_pem(text) {
            assert_eq!(EkIdentity::from_spki_der(ek.spki_der()).expect("own SPKI parses"), ek);
        }
    }
});
