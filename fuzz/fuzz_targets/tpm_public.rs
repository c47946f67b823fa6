//! `ferry_attest::TpmPublic::parse`: the marshalled `TPMT_PUBLIC` of a node's EK and AK
//! (base64-decoded from `POST /v1/enroll/tpm`), then everything the server derives from
//! one: the TPM name, the RSA key, the EK and AK attribute checks, the EK's normal form
//! and fingerprint, and MakeCredential. Also `strip_tpm2b` (tpm2-tools' `TPM2B_PUBLIC`
//! files) on the same bytes.
#![no_main]

use ferry_attest::public::strip_tpm2b;
use ferry_attest::{make_credential, EkIdentity, TpmPublic};
use ferry_fuzz::{ak, rng};
use libfuzzer_sys::fuzz_target;

fn public(bytes: &[u8]) {
    let Ok(p) = TpmPublic::parse(bytes) else { return };
    assert_eq!(p.bytes, bytes);
    assert_eq!(p.modulus.len() * 8, usize::from(p.key_bits));
    if let Ok(name) = p.name() {
        assert_eq!(name.len(), 34);
    }
    let _ = p.rsa_key();
    if p.check_endorsement_key().is_ok() {
        if let Ok(id) = EkIdentity::from_tpm_public(&p) {
            let again = EkIdentity::from_spki_der(id.spki_der()).expect("own SPKI parses");
            assert_eq!(again, id);
            assert_eq!(again.fingerprint(), id.fingerprint());
        }
        let name = ak().name().expect("AK fixture");
        let _ = make_credential(&p, &name, &[0x5a; 32], &mut rng());
    }
    if p.check_attestation_key().is_ok() {
        assert!(p.key_bits >= 2048);
    }
}

fuzz_target!(|data: &[u8]| {
    public(data);
    if let Ok(inner) = strip_tpm2b(data) {
        assert_eq!(inner.len() + 2, data.len());
        public(inner);
    }
});
