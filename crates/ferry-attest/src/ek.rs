//! Endorsement key identity: one normal form (the SubjectPublicKeyInfo DER) whether the
//! key came from the TPM, from a PEM file or from an EK certificate, and verification
//! of EK certificates against the TPM manufacturers' CAs an admin configured.

use crate::public::TpmPublic;
use crate::AttestError;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::RsaPublicKey;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{ASN1Time, FromDer};

/// An EK public key in normal form; equal keys compare equal whatever their source.
#[derive(Clone, PartialEq, Eq)]
pub struct EkIdentity {
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for EkIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EkIdentity({})", self.fingerprint())
    }
}

impl EkIdentity {
    fn from_rsa(key: &RsaPublicKey) -> Result<Self, AttestError> {
        let der = key.to_public_key_der().map_err(|e| AttestError::Invalid(format!("cannot encode the EK: {e}")))?;
        Ok(EkIdentity { spki_der: der.as_bytes().to_vec() })
    }

    pub fn from_tpm_public(ek: &TpmPublic) -> Result<Self, AttestError> {
        Self::from_rsa(&ek.rsa_key()?)
    }

    /// A `-----BEGIN PUBLIC KEY-----` file (`tpm2_createek -f pem`, `tpm2_readpublic -f pem`);
    /// line breaks inside the base64 do not matter (a pasted one-line key works).
    pub fn from_pem(pem: &str) -> Result<Self, AttestError> {
        let malformed = |why: String| {
            AttestError::malformed(
                "EK public key",
                format!("{why}; expected an RSA public key in PEM (tpm2_createek -f pem)"),
            )
        };
        let body = pem
            .trim()
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|rest| rest.strip_suffix("-----END PUBLIC KEY-----"))
            .ok_or_else(|| malformed("no PUBLIC KEY block".into()))?;
        let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
            .map_err(|e| malformed(format!("bad base64: {e}")))?;
        Self::from_spki_der(&der)
    }

    /// SubjectPublicKeyInfo DER, as stored.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, AttestError> {
        Self::from_rsa(&rsa_from_spki(der)?)
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// `sha256:` and the hex SHA-256 of the SubjectPublicKeyInfo DER, the same as
    /// `openssl pkey -pubin -in ek.pem -outform der | sha256sum`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.spki_der);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

/// What ferry says about an ECC EK or AK: it is not refused as a malformed RSA key.
pub(crate) const ONLY_RSA: &str = "ferry supports RSA 2048 EKs and AKs only (the default RSA EK template): \
    register the node's RSA EK (tpm2_createek -G rsa -f pem -u ek.pem, or its RSA EK certificate: \
    tpm2_nvread 0x01c00002 -C o) and give the agent an RSA AK";

/// The RSA key of a SubjectPublicKeyInfo; another key type is named as what it is.
fn rsa_from_spki(der: &[u8]) -> Result<RsaPublicKey, AttestError> {
    use x509_parser::x509::SubjectPublicKeyInfo;
    const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    let spki = match SubjectPublicKeyInfo::from_der(der) {
        Ok(([], spki)) => spki,
        Ok(_) => return Err(AttestError::malformed("EK public key", "trailing bytes after the DER")),
        Err(e) => return Err(AttestError::malformed("EK public key", e.to_string())),
    };
    match spki.algorithm.algorithm.to_id_string().as_str() {
        RSA_ENCRYPTION => RsaPublicKey::from_public_key_der(der)
            .map_err(|e| AttestError::malformed("EK public key", format!("{e}; expected an RSA key"))),
        EC_PUBLIC_KEY => Err(AttestError::Unsupported(format!("EK: an ECC key; {ONLY_RSA}"))),
        other => Err(AttestError::Unsupported(format!("EK: a key of algorithm {other}; {ONLY_RSA}"))),
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, AttestError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(AttestError::malformed("certificate", "trailing bytes after the DER")),
        Err(e) => Err(AttestError::malformed("certificate", e.to_string())),
    }
}

/// The CA certificates EK certificates must chain to (manufacturers' roots and
/// intermediates; every certificate in the bundle is trusted as an issuer).
#[derive(Clone, Default)]
pub struct CaBundle {
    certs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} certificates)", self.certs.len())
    }
}

impl CaBundle {
    /// Every `CERTIFICATE` block of a PEM file.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AttestError> {
        let mut certs = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| AttestError::malformed("CA bundle", e.to_string()))?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            parse_cert(&block.contents)?;
            certs.push(block.contents);
        }
        if certs.is_empty() {
            return Err(AttestError::malformed("CA bundle", "no CERTIFICATE in it"));
        }
        Ok(CaBundle { certs })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Verifies that `der` is signed by a CA of the bundle (following intermediates
    /// within the bundle is not needed: each is trusted itself) and valid at `now`
    /// (Unix seconds). Returns the certified EK.
    pub fn verify_ek_certificate(&self, der: &[u8], now: i64) -> Result<EkIdentity, AttestError> {
        let cert = parse_cert(der)?;
        let at = ASN1Time::from_timestamp(now).map_err(|e| AttestError::Invalid(format!("bad time: {e}")))?;
        if !cert.validity().is_valid_at(at) {
            return Err(AttestError::Invalid("the EK certificate is expired or not yet valid".into()));
        }
        let issuer_found = self.certs.iter().filter_map(|c| parse_cert(c).ok()).any(|ca| {
            ca.subject().as_raw() == cert.issuer().as_raw()
                && is_ca(&ca)
                && ca.validity().is_valid_at(at)
                && cert.verify_signature(Some(ca.public_key())).is_ok()
        });
        if !issuer_found {
            return Err(AttestError::Invalid(format!(
                "the EK certificate (issuer \"{}\") is not signed by a CA of the configured bundle",
                cert.issuer()
            )));
        }
        EkIdentity::from_spki_der(cert.public_key().raw)
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// The certified key of an EK certificate, without verifying it (for display).
pub fn certificate_key(der: &[u8]) -> Result<EkIdentity, AttestError> {
    EkIdentity::from_spki_der(parse_cert(der)?.public_key().raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg;
    use crate::public::strip_tpm2b;

    fn fixture(name: &str) -> Vec<u8> {
        crate::testdata(name)
    }

    const NOW: i64 = 1_900_000_000; // 2030, after the fixtures were made

    #[test]
    fn one_identity_from_every_source() {
        let tpm = TpmPublic::parse(strip_tpm2b(&fixture("ek.pub")).unwrap()).unwrap();
        let from_tpm = EkIdentity::from_tpm_public(&tpm).unwrap();
        let from_pem = EkIdentity::from_pem(std::str::from_utf8(&fixture("ek.pem")).unwrap()).unwrap();
        let from_cert = certificate_key(&fixture("ek.der")).unwrap();
        assert_eq!(from_tpm, from_pem);
        assert_eq!(from_tpm, from_cert);
        assert!(from_tpm.fingerprint().starts_with("sha256:") && from_tpm.fingerprint().len() == 71);
        assert!(EkIdentity::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
        assert!(EkIdentity::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err());
        let pem = String::from_utf8(fixture("ek.pem")).unwrap();
        let mut lines: Vec<&str> = pem.lines().collect();
        let one_line =
            format!("{}\n{}\n{}", lines.remove(0), lines[..lines.len() - 1].concat(), lines[lines.len() - 1]);
        assert_eq!(EkIdentity::from_pem(&one_line).unwrap(), from_tpm, "line breaks do not matter");
    }

    /// An ECC EK (the other EK template TPMs ship) is refused as what it is, with
    /// what to register instead; no message names the RSA OID it is not.
    #[test]
    fn an_ecc_ek_is_refused_as_ecc() {
        let pem = String::from_utf8(fixture("ek-ecc.pem")).unwrap();
        let mut ecc_public = alg::ECC.to_be_bytes().to_vec();
        ecc_public.extend_from_slice(&[0; 16]);
        for err in [
            EkIdentity::from_pem(&pem).unwrap_err(),
            certificate_key(&fixture("ek-ecc.der")).unwrap_err(),
            TpmPublic::parse(&ecc_public).unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(text.contains("ECC") && text.contains("tpm2_createek -G rsa"), "{text}");
            assert!(!text.contains("1.2.840.113549"), "names the RSA OID: {text}");
        }
    }

    #[test]
    fn ek_certificate_chains_to_the_bundle() {
        let issuer = CaBundle::from_pem(&fixture("ca-issuer.pem")).unwrap();
        let ek = issuer.verify_ek_certificate(&fixture("ek.der"), NOW).unwrap();
        assert_eq!(ek, certificate_key(&fixture("ek.der")).unwrap());
        // The root alone did not sign the EK certificate (its intermediate did).
        let root = CaBundle::from_pem(&fixture("ca-root.pem")).unwrap();
        let err = root.verify_ek_certificate(&fixture("ek.der"), NOW).unwrap_err();
        assert!(err.to_string().contains("not signed by a CA of the configured bundle"), "{err}");
        let both = [fixture("ca-root.pem"), fixture("ca-issuer.pem")].concat();
        assert_eq!(CaBundle::from_pem(&both).unwrap().len(), 2);
        // Before the certificate's notBefore.
        assert!(issuer.verify_ek_certificate(&fixture("ek.der"), 1_000_000_000).is_err());
    }

    #[test]
    fn tampered_or_garbage_certificates_are_refused() {
        let issuer = CaBundle::from_pem(&fixture("ca-issuer.pem")).unwrap();
        let mut der = fixture("ek.der");
        let mid = der.len() / 2;
        der[mid] ^= 1;
        assert!(issuer.verify_ek_certificate(&der, NOW).is_err());
        assert!(issuer.verify_ek_certificate(b"not a certificate", NOW).is_err());
        assert!(CaBundle::from_pem(b"nothing here").is_err());
    }
}
