//! An EK certificate (DER) as a node sends it in `POST /v1/enroll/tpm` (and as an
//! administrator registers it with `--tpm-ek-cert`): `CaBundle::verify_ek_certificate`
//! against the swtpm fixture CAs at a fixed time, and `ek::certificate_key` (display).
#![no_main]

use ferry_attest::ek::certificate_key;
use ferry_fuzz::{ca_bundle, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = certificate_key(data);
    match ca_bundle().verify_ek_certificate(data, NOW) {
        Ok(ek) => {
            assert_eq!(Some(&ek), key.as_ref().ok(), "verified key differs from the certificate's");
            assert!(ek.fingerprint().starts_with("sha256:"));
        }
        Err(e) => drop(e.to_string()),
    }
});
