//! `TPMT_PUBLIC` of RSA keys: parsing, the key's TPM name, and the attribute checks
//! that make an endorsement key and an attestation key what they claim to be.

use crate::alg;
use crate::wire::Reader;
use crate::AttestError;
use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};

/// `TPMA_OBJECT` bits (TPM 2.0 Part 2, table 31).
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// A symmetric algorithm of a storage (parent) key, e.g. AES-128-CFB for the EK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// An RSA key's public area, as the TPM marshalled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// The marshalled `TPMT_PUBLIC`: the name is a digest of exactly these bytes.
    pub bytes: Vec<u8>,
    pub name_alg: u16,
    pub attributes: u32,
    pub auth_policy: Vec<u8>,
    pub symmetric: Option<SymmetricDef>,
    /// `(scheme, hash)`; `None` for TPM_ALG_NULL.
    pub scheme: Option<(u16, u16)>,
    pub key_bits: u16,
    pub exponent: u32,
    pub modulus: Vec<u8>,
}

impl TpmPublic {
    /// Parses a marshalled `TPMT_PUBLIC` (not the size-prefixed `TPM2B_PUBLIC`).
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let key_type = r.u16()?;
        if key_type == alg::ECC {
            return Err(AttestError::Unsupported(format!("key type ECC (TPM_ALG_ECC); {}", crate::ek::ONLY_RSA)));
        }
        if key_type != alg::RSA {
            return Err(AttestError::Unsupported(format!("key type 0x{key_type:04x}; only RSA keys are supported")));
        }
        let name_alg = r.u16()?;
        let attributes = r.u32()?;
        let auth_policy = r.sized()?.to_vec();
        let symmetric = match r.u16()? {
            alg::NULL => None,
            algorithm => Some(SymmetricDef { algorithm, key_bits: r.u16()?, mode: r.u16()? }),
        };
        let scheme = match r.u16()? {
            alg::NULL => None,
            scheme => Some((scheme, r.u16()?)),
        };
        let key_bits = r.u16()?;
        let exponent = r.u32()?;
        let modulus = r.sized()?.to_vec();
        r.finish()?;
        if modulus.len() * 8 != usize::from(key_bits) {
            return Err(AttestError::malformed(
                "TPMT_PUBLIC",
                format!("{}-bit modulus for a {key_bits}-bit key", modulus.len() * 8),
            ));
        }
        Ok(TpmPublic {
            bytes: bytes.to_vec(),
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key_bits,
            exponent,
            modulus,
        })
    }

    /// The TPM name: the name algorithm's id followed by its digest of the public area.
    pub fn name(&self) -> Result<Vec<u8>, AttestError> {
        if self.name_alg != alg::SHA256 {
            return Err(AttestError::Unsupported(format!("name algorithm 0x{:04x}; only SHA-256", self.name_alg)));
        }
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(&self.bytes));
        Ok(name)
    }

    pub fn rsa_key(&self) -> Result<RsaPublicKey, AttestError> {
        // An exponent of 0 means the default, 2^16 + 1.
        let e = if self.exponent == 0 { 65537 } else { self.exponent };
        RsaPublicKey::new(BigUint::from_bytes_be(&self.modulus), BigUint::from(e))
            .map_err(|e| AttestError::Invalid(format!("not a usable RSA key: {e}")))
    }

    fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// An endorsement key of the default RSA template: a restricted decryption key
    /// bound to its TPM, whose parameters MakeCredential depends on.
    pub fn check_endorsement_key(&self) -> Result<(), AttestError> {
        let required = attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::DECRYPT;
        if !self.has(required) || self.has(attr::SIGN) {
            return Err(AttestError::Invalid(format!(
                "the EK's attributes 0x{:08x} are not those of a restricted decryption key fixed to its TPM",
                self.attributes
            )));
        }
        let aes128cfb = SymmetricDef { algorithm: alg::AES, key_bits: 128, mode: alg::CFB };
        if self.name_alg != alg::SHA256 || self.symmetric != Some(aes128cfb) || self.key_bits != 2048 {
            return Err(AttestError::Unsupported(
                "EK template; expected the default RSA 2048 EK (SHA-256 names, AES-128-CFB)".into(),
            ));
        }
        Ok(())
    }

    /// An attestation key: a restricted signing key created inside the TPM and unable
    /// to leave it, so it signs only TPM-generated structures such as quotes.
    pub fn check_attestation_key(&self) -> Result<(), AttestError> {
        let required =
            attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::RESTRICTED | attr::SIGN;
        if !self.has(required) || self.has(attr::DECRYPT) {
            return Err(AttestError::Invalid(format!(
                "the AK's attributes 0x{:08x} are not those of a restricted signing key made in and fixed to its TPM",
                self.attributes
            )));
        }
        if self.name_alg != alg::SHA256 || !matches!(self.scheme, None | Some((alg::RSASSA, alg::SHA256))) {
            return Err(AttestError::Unsupported("AK; expected RSASSA with SHA-256 and SHA-256 names".into()));
        }
        if self.key_bits < 2048 {
            return Err(AttestError::Invalid(format!("the AK is only {} bits", self.key_bits)));
        }
        Ok(())
    }
}

/// Strips the size prefix of a `TPM2B_PUBLIC` file (tpm2-tools' `-f tss` output).
pub fn strip_tpm2b(bytes: &[u8]) -> Result<&[u8], AttestError> {
    let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
    let inner = r.sized()?;
    r.finish()?;
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        crate::testdata(name)
    }

    #[test]
    fn parses_swtpm_keys_and_checks_their_roles() {
        let ek = TpmPublic::parse(strip_tpm2b(&fixture("ek.pub")).unwrap()).unwrap();
        ek.check_endorsement_key().unwrap();
        assert!(ek.check_attestation_key().is_err(), "an EK is no AK");
        let ak = TpmPublic::parse(strip_tpm2b(&fixture("ak.pub")).unwrap()).unwrap();
        ak.check_attestation_key().unwrap();
        assert!(ak.check_endorsement_key().is_err(), "an AK is no EK");
        assert_eq!(ak.scheme, Some((alg::RSASSA, alg::SHA256)));
        assert_eq!(ak.modulus.len(), 256);
        ak.rsa_key().unwrap();
    }

    #[test]
    fn name_matches_tpm2_tools() {
        // ak.name was written by tpm2_createak -n for the same key.
        let ak = TpmPublic::parse(strip_tpm2b(&fixture("ak.pub")).unwrap()).unwrap();
        let expected = "000bd750543202 68b819f5165b70456fe4daaf005b2b195c0366a929c774ebeacf33".replace(' ', "");
        let name: String = ak.name().unwrap().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(name, expected);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let ak = fixture("ak.pub");
        let inner = strip_tpm2b(&ak).unwrap();
        for n in 0..inner.len() {
            assert!(TpmPublic::parse(&inner[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut longer = inner.to_vec();
        longer.push(0);
        assert!(TpmPublic::parse(&longer).is_err());
        let mut ecc = inner.to_vec();
        ecc[1] = 0x23;
        assert!(matches!(TpmPublic::parse(&ecc), Err(AttestError::Unsupported(_))));
        // An unrestricted signing key could sign a forged quote: no AK.
        let mut weak = TpmPublic::parse(inner).unwrap();
        weak.attributes &= !attr::RESTRICTED;
        assert!(weak.check_attestation_key().is_err());
    }
}
