//! TPM2_MakeCredential done in software (TPM 2.0 Part 1, "Credential Protection"): a
//! secret sealed to an EK so that only TPM2_ActivateCredential in the TPM holding
//! that EK, with an object of the given name loaded beside it, can open it.

use crate::public::TpmPublic;
use crate::wire::put_sized;
use crate::AttestError;
use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use rsa::Oaep;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The two halves TPM2_ActivateCredential takes, without their size prefixes.
#[derive(Debug, Clone)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT` contents: integrity HMAC, then the encrypted secret.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` contents: the seed, RSA-OAEP-encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// SP 800-108 counter-mode KDF with HMAC-SHA-256, as the TPM's KDFa.
fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter += 1;
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        m.update(&counter.to_be_bytes());
        m.update(label.as_bytes());
        m.update(&[0]); // the label is a NUL-terminated string
        m.update(context_u);
        m.update(context_v);
        m.update(&bits.to_be_bytes());
        out.extend_from_slice(&m.finalize().into_bytes());
    }
    out.truncate(bytes);
    out
}

/// Seals `secret` (at most 32 bytes) to `ek` for the object named `object_name`.
pub fn make_credential<R: RngCore + CryptoRng>(
    ek: &TpmPublic,
    object_name: &[u8],
    secret: &[u8],
    rng: &mut R,
) -> Result<Credential, AttestError> {
    ek.check_endorsement_key()?;
    if secret.is_empty() || secret.len() > 32 {
        return Err(AttestError::Invalid("a credential secret is 1 to 32 bytes".into()));
    }
    // The seed is as long as the EK's name digest (SHA-256).
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let encrypted_secret = ek
        .rsa_key()?
        .encrypt(rng, Oaep::new_with_label::<Sha256, _>("IDENTITY\0"), &seed)
        .map_err(|e| AttestError::Invalid(format!("cannot encrypt to the EK: {e}")))?;

    let sym_key = kdfa(&seed, "STORAGE", object_name, &[], 128);
    let mut enc_identity = Vec::with_capacity(2 + secret.len());
    put_sized(&mut enc_identity, secret);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .expect("AES-128 key and IV sizes")
        .encrypt(&mut enc_identity);

    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut m = HmacSha256::new_from_slice(&hmac_key).expect("HMAC takes any key length");
    m.update(&enc_identity);
    m.update(object_name);
    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    put_sized(&mut id_object, &m.finalize().into_bytes());
    id_object.extend_from_slice(&enc_identity);
    Ok(Credential { id_object, encrypted_secret })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::strip_tpm2b;

    fn ek() -> TpmPublic {
        let raw = crate::testdata("ek.pub");
        TpmPublic::parse(strip_tpm2b(&raw).unwrap()).unwrap()
    }

    #[test]
    fn kdfa_matches_its_definition() {
        // One block: HMAC(key, 00000001 || "STORAGE" || 00 || u || v || 00000080).
        let mut m = HmacSha256::new_from_slice(b"seed").unwrap();
        m.update(b"\x00\x00\x00\x01STORAGE\x00uv\x00\x00\x00\x80");
        assert_eq!(kdfa(b"seed", "STORAGE", b"u", b"v", 128), m.finalize().into_bytes()[..16].to_vec());
        assert_eq!(kdfa(b"seed", "INTEGRITY", &[], &[], 512).len(), 64);
    }

    #[test]
    fn credential_has_the_tpm_layout() {
        let name = [0x00, 0x0b].iter().chain([7u8; 32].iter()).copied().collect::<Vec<_>>();
        let c = make_credential(&ek(), &name, &[9u8; 32], &mut rand::thread_rng()).unwrap();
        assert_eq!(c.encrypted_secret.len(), 256, "RSA 2048 ciphertext");
        assert_eq!(&c.id_object[..2], &[0, 32], "HMAC-SHA256 size prefix");
        assert_eq!(c.id_object.len(), 2 + 32 + 2 + 32);
        let other = make_credential(&ek(), &name, &[9u8; 32], &mut rand::thread_rng()).unwrap();
        assert_ne!(c.id_object, other.id_object, "a fresh seed each time");
    }

    #[test]
    fn refuses_what_it_cannot_seal() {
        let mut rng = rand::thread_rng();
        assert!(make_credential(&ek(), b"n", &[], &mut rng).is_err());
        assert!(make_credential(&ek(), b"n", &[0; 33], &mut rng).is_err());
        let ak = crate::testdata("ak.pub");
        let ak = TpmPublic::parse(strip_tpm2b(&ak).unwrap()).unwrap();
        assert!(make_credential(&ak, b"n", &[1], &mut rng).is_err(), "an AK is no EK");
    }
}
