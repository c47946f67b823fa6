//! TPM2_Quote verification: the AK's signature over a `TPMS_ATTEST`, its qualifying
//! data (freshness and binding), its PCR selection and the PCR values it covers.

use crate::public::TpmPublic;
use crate::wire::Reader;
use crate::{alg, AttestError};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// The largest `sizeofSelect` a quote may carry: a real TPM refuses a selection larger
/// than its `PCR_SELECT_MAX` (3 bytes for the 24 PCRs of the PC Client profile, 4 on
/// TPMs with 32), so anything longer was not made by a TPM.
pub const PCR_SELECT_MAX: u8 = 4;

/// What a verified quote says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    pub extra_data: Vec<u8>,
    /// `(hash algorithm, PCR indexes)` per bank, in the quote's order.
    pub selection: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
    pub reset_count: u32,
    pub restart_count: u32,
    pub firmware_version: u64,
}

/// Why a quote does not verify; the text goes to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("the quote's signature does not verify with the AK")]
    BadSignature,
    #[error("malformed quote: {0}")]
    Malformed(String),
    #[error("the quote's qualifying data is not bound to this nonce, WireGuard key and node (replayed or hijacked)")]
    WrongQualifyingData,
    #[error("the quote covers PCRs {got:?} of the SHA-256 bank; {wanted:?} were asked for")]
    WrongSelection { wanted: Vec<u8>, got: Vec<u8> },
    #[error("the PCR values sent do not hash to the quoted PCR digest")]
    PcrDigestMismatch,
}

impl From<AttestError> for QuoteError {
    fn from(e: AttestError) -> Self {
        QuoteError::Malformed(e.to_string())
    }
}

/// Parses a marshalled `TPMS_ATTEST` of a quote. It does not verify anything.
pub fn parse_quote(attest: &[u8]) -> Result<QuoteInfo, AttestError> {
    let mut r = Reader::new(attest, "TPMS_ATTEST");
    if r.u32()? != TPM_GENERATED_VALUE {
        return Err(AttestError::malformed("TPMS_ATTEST", "not TPM-generated (bad magic)"));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(AttestError::malformed("TPMS_ATTEST", "not a quote"));
    }
    let _qualified_signer = r.sized()?;
    let extra_data = r.sized()?.to_vec();
    let _clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let _safe = r.u8()?;
    let firmware_version = r.u64()?;
    let banks = r.u32()?;
    if banks > 16 {
        return Err(AttestError::malformed("TPMS_ATTEST", format!("{banks} PCR banks")));
    }
    let mut selection = Vec::new();
    for _ in 0..banks {
        let hash = r.u16()?;
        let size = r.u8()?;
        if size > PCR_SELECT_MAX {
            return Err(AttestError::malformed(
                "TPMS_ATTEST",
                format!("a {size}-byte PCR selection (a TPM selects with at most {PCR_SELECT_MAX})"),
            ));
        }
        let bitmap = r.bytes(usize::from(size))?;
        let indexes = (0..bitmap.len() * 8)
            .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
            .map(|i| i as u8) // at most 32 bits: indexes 0..=31
            .collect();
        selection.push((hash, indexes));
    }
    let pcr_digest = r.sized()?.to_vec();
    r.finish()?;
    Ok(QuoteInfo { extra_data, selection, pcr_digest, reset_count, restart_count, firmware_version })
}

/// Verifies a quote made by `ak` (already checked to be an AK of the right TPM):
/// signature, qualifying data, that it covers exactly the `wanted` SHA-256 PCRs, and
/// that `pcr_values` (index → SHA-256 value) are the values it covers.
pub fn verify_quote(
    ak: &TpmPublic,
    attest: &[u8],
    signature: &[u8],
    expected_qualifying_data: &[u8],
    wanted: &[u8],
    pcr_values: &BTreeMap<u8, Vec<u8>>,
) -> Result<QuoteInfo, QuoteError> {
    // The signature first: nothing in an unsigned structure is worth reading.
    let key = VerifyingKey::<Sha256>::new(ak.rsa_key()?);
    let sig = Signature::try_from(signature).map_err(|_| QuoteError::BadSignature)?;
    key.verify(attest, &sig).map_err(|_| QuoteError::BadSignature)?;
    let info = parse_quote(attest)?;
    if !bool::from(info.extra_data.ct_eq(expected_qualifying_data)) {
        return Err(QuoteError::WrongQualifyingData);
    }
    let mut wanted: Vec<u8> = wanted.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let got: Vec<u8> = info
        .selection
        .iter()
        .flat_map(|(hash, idx)| idx.iter().map(move |i| if *hash == alg::SHA256 { *i } else { u8::MAX }))
        .collect();
    let sent: Vec<u8> = pcr_values.keys().copied().collect();
    if got != wanted || sent != wanted {
        return Err(QuoteError::WrongSelection { wanted, got });
    }
    let mut h = Sha256::new();
    for value in pcr_values.values() {
        h.update(value);
    }
    if h.finalize().as_slice() != info.pcr_digest.as_slice() {
        return Err(QuoteError::PcrDigestMismatch);
    }
    Ok(info)
}

/// Every PCR whose verified value differs from the policy's (in index order), if any.
pub fn check_pcr_policy(expected: &BTreeMap<u8, Vec<u8>>, actual: &BTreeMap<u8, Vec<u8>>) -> Result<(), Vec<u8>> {
    let differ: Vec<u8> = expected.iter().filter(|(i, v)| actual.get(i) != Some(v)).map(|(i, _)| *i).collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(differ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::strip_tpm2b;

    fn fixture(name: &str) -> Vec<u8> {
        crate::testdata(name)
    }

    type Parts = (TpmPublic, Vec<u8>, Vec<u8>, Vec<u8>, BTreeMap<u8, Vec<u8>>);

    /// The fixture: `tpm2_quote -l sha256:0,7 -q 00112233…` on a fresh swtpm.
    fn parts() -> Parts {
        let ak = TpmPublic::parse(strip_tpm2b(&fixture("ak.pub")).unwrap()).unwrap();
        let attest = fixture("quote.msg");
        // TPMT_SIGNATURE: scheme, hash, then the TPM2B signature.
        let signature = fixture("quote.sig")[6..].to_vec();
        let qualifying =
            (0..32).map(|i| [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99][i % 10]).collect::<Vec<_>>();
        let pcrs = BTreeMap::from([(0, vec![0u8; 32]), (7, vec![0u8; 32])]);
        (ak, attest, signature, qualifying, pcrs)
    }

    #[test]
    fn verifies_a_real_quote() {
        let (ak, attest, sig, q, pcrs) = parts();
        let info = verify_quote(&ak, &attest, &sig, &q, &[7, 0], &pcrs).unwrap();
        assert_eq!(info.selection, vec![(alg::SHA256, vec![0, 7])]);
        assert!(check_pcr_policy(&BTreeMap::from([(7, vec![0u8; 32])]), &pcrs).is_ok());
        assert_eq!(check_pcr_policy(&BTreeMap::from([(7, vec![1u8; 32])]), &pcrs), Err(vec![7]));
        assert_eq!(check_pcr_policy(&BTreeMap::from([(9, vec![0u8; 32])]), &pcrs), Err(vec![9]));
        let both = BTreeMap::from([(7, vec![1u8; 32]), (9, vec![0u8; 32])]);
        assert_eq!(check_pcr_policy(&both, &pcrs), Err(vec![7, 9]));
    }

    #[test]
    fn refuses_every_tampering() {
        let (ak, attest, sig, q, pcrs) = parts();
        let mut other_q = q.clone();
        other_q[0] ^= 1;
        assert_eq!(verify_quote(&ak, &attest, &sig, &other_q, &[0, 7], &pcrs), Err(QuoteError::WrongQualifyingData));
        let mut bad_attest = attest.clone();
        let last = bad_attest.len() - 1;
        bad_attest[last] ^= 1;
        assert_eq!(verify_quote(&ak, &bad_attest, &sig, &q, &[0, 7], &pcrs), Err(QuoteError::BadSignature));
        assert_eq!(verify_quote(&ak, &attest, &sig[1..], &q, &[0, 7], &pcrs), Err(QuoteError::BadSignature));
        assert!(matches!(verify_quote(&ak, &attest, &sig, &q, &[7], &pcrs), Err(QuoteError::WrongSelection { .. })));
        let lying = BTreeMap::from([(0, vec![0u8; 32]), (7, vec![1u8; 32])]);
        assert_eq!(verify_quote(&ak, &attest, &sig, &q, &[0, 7], &lying), Err(QuoteError::PcrDigestMismatch));
        let short = BTreeMap::from([(0, vec![0u8; 32])]);
        assert!(matches!(
            verify_quote(&ak, &attest, &sig, &q, &[0, 7], &short),
            Err(QuoteError::WrongSelection { .. })
        ));
    }

    #[test]
    fn an_oversized_pcr_selection_is_malformed() {
        // The fixture's selection: count 1, bank SHA-256, 3 bytes (PCRs 0 and 7).
        let fixture = fixture("quote.msg");
        let at = fixture.windows(3).position(|w| w == [0x00, 0x0b, 0x03]).unwrap();
        let resized = |size: u8| {
            let mut attest = fixture.clone();
            attest[at + 2] = size;
            attest.splice(at + 6..at + 6, vec![0u8; usize::from(size) - 3]);
            attest
        };
        // Up to PCR_SELECT_MAX bytes is what a TPM with 32 PCRs sends.
        assert_eq!(parse_quote(&resized(4)).unwrap().selection, vec![(alg::SHA256, vec![0, 7])]);
        // One byte more (PCRs 32-39) and the 33 bytes that once wrapped bit 256 to PCR 0.
        for size in [5, 33] {
            let e = parse_quote(&resized(size)).unwrap_err().to_string();
            assert!(e.contains(&format!("a {size}-byte PCR selection")), "{e}");
        }
    }

    #[test]
    fn truncated_attest_is_an_error_not_a_panic() {
        let attest = fixture("quote.msg");
        parse_quote(&attest).unwrap();
        for n in 0..attest.len() {
            assert!(parse_quote(&attest[..n]).is_err());
        }
    }
}
