//! The TPM factor's verdicts (`tpm.rs`).

use super::*;

#[test]
fn fingerprints_are_normalized_or_refused() {
    let hex = "AB".repeat(32);
    assert_eq!(normalize_fingerprint(&format!(" sha256:{hex}\n")), Some(format!("sha256:{}", "ab".repeat(32))));
    for bad in [hex.clone(), format!("sha1:{hex}"), format!("sha256:{}", &hex[2..]), format!("sha256:{}zz", &hex[4..])]
    {
        assert_eq!(normalize_fingerprint(&bad), None, "{bad}");
    }
}

/// A software attestation key: signs quotes the way a TPM's AK would, so the verdict on
/// a proof is tested without a TPM (swtpm proves the real thing in tests/tpm.rs).
struct SoftAk {
    key: rsa::RsaPrivateKey,
    public: TpmPublic,
}

impl SoftAk {
    fn new() -> SoftAk {
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).expect("an RSA key");
        let modulus = key.n().to_bytes_be();
        let mut b = Vec::new();
        b.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
        b.extend_from_slice(&0x000bu16.to_be_bytes()); // name: SHA-256
        b.extend_from_slice(&0x0005_0072u32.to_be_bytes()); // restricted signing key
        b.extend_from_slice(&0u16.to_be_bytes()); // no auth policy
        b.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: NULL
        b.extend_from_slice(&0x0014u16.to_be_bytes()); // RSASSA
        b.extend_from_slice(&0x000bu16.to_be_bytes()); // with SHA-256
        b.extend_from_slice(&1024u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes()); // default exponent
        b.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
        b.extend_from_slice(&modulus);
        SoftAk { key, public: TpmPublic::parse(&b).expect("the AK's public area") }
    }

    /// A signed TPMS_ATTEST quoting `values` (SHA-256 bank) over `qualifying`.
    fn quote(&self, qualifying: &[u8], values: &BTreeMap<u8, Vec<u8>>, reset_count: u32) -> (Vec<u8>, Vec<u8>) {
        use rsa::signature::{SignatureEncoding, Signer};
        use sha2::Digest;
        let mut a = Vec::new();
        a.extend_from_slice(&0xff54_4347u32.to_be_bytes());
        a.extend_from_slice(&0x8018u16.to_be_bytes());
        a.extend_from_slice(&0u16.to_be_bytes()); // qualified signer
        a.extend_from_slice(&(qualifying.len() as u16).to_be_bytes());
        a.extend_from_slice(qualifying);
        a.extend_from_slice(&0u64.to_be_bytes()); // clock
        a.extend_from_slice(&reset_count.to_be_bytes());
        a.extend_from_slice(&0u32.to_be_bytes()); // restart count
        a.push(1); // safe
        a.extend_from_slice(&0u64.to_be_bytes()); // firmware
        a.extend_from_slice(&1u32.to_be_bytes()); // one bank
        a.extend_from_slice(&0x000bu16.to_be_bytes());
        a.push(3);
        let mut bitmap = [0u8; 3];
        for i in values.keys() {
            bitmap[usize::from(*i / 8)] |= 1 << (i % 8);
        }
        a.extend_from_slice(&bitmap);
        let mut h = sha2::Sha256::new();
        values.values().for_each(|v| h.update(v));
        let digest = h.finalize();
        a.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        a.extend_from_slice(&digest);
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone());
        let signature = signer.sign(&a).to_vec();
        (a, signature)
    }
}

const FP: &str = "sha256:e1";

fn node() -> NodeName {
    NodeName::parse("n1").unwrap()
}

fn pending(ak: &SoftAk, pcrs: &[u8]) -> PendingTpm {
    PendingTpm {
        node: node(),
        wg_key: [2; 32],
        ak: ak.public.clone(),
        secret: Zeroizing::new([5; 32]),
        pcrs: pcrs.to_vec(),
        fingerprint: FP.into(),
        registered: true,
        discovered: None,
    }
}

fn proof(ak: &SoftAk, nonce: &[u8; 32], values: &BTreeMap<u8, Vec<u8>>) -> TpmProof {
    let (attest, signature) = ak.quote(&tpm_qualifying_data(nonce, &[2; 32], &node()), values, 42);
    TpmProof {
        secret: B64.encode([5u8; 32]),
        attest: B64.encode(attest),
        signature: B64.encode(signature),
        pcr_values: values.iter().map(|(i, v)| (*i, ferry_core::wgkey::hex_encode(v))).collect(),
    }
}

fn held() -> TpmRecord {
    let registration = TpmRegistration { ek_spki: vec![1], ek_certificate: None, fingerprint: FP.into() };
    TpmRecord { state: TpmState::Registered, registration, updated_at: 0, conflict: None }
}

fn policy(pcrs: &[(u8, &str)]) -> Settings {
    Settings { tpm_pcrs: pcrs.iter().map(|(i, v)| (i.to_string(), v.to_string())).collect(), ..Default::default() }
}

fn booted() -> BTreeMap<u8, Vec<u8>> {
    BTreeMap::from([(7, vec![0x77; 32]), (8, vec![0x88; 32])])
}

#[test]
fn a_verified_quote_is_kept_even_when_the_pcr_policy_refuses_it() {
    let ak = SoftAk::new();
    let nonce = [1u8; 32];
    let pinned = "00".repeat(32);
    let settings = policy(&[(7, &pinned), (8, &"88".repeat(32))]);
    let v = evidence(
        Some(pending(&ak, &[7, 8])),
        Some(&proof(&ak, &nonce, &booted())),
        &nonce,
        &[2; 32],
        &node(),
        &settings,
        Some(&held()),
    );
    let TpmEvidence::Invalid(why) = &v.evidence else { panic!("refused: {:?}", v.evidence) };
    assert!(why.contains("PCR 7 differs from the policy"), "{why}");
    let quoted = v.quoted.expect("the verified values are kept for learning");
    assert_eq!((quoted.values, quoted.reset_count, quoted.ek_fingerprint.as_str()), (booted(), 42, FP));
    // The same boot, the policy matching: accepted, and kept as the latest quote too.
    let good = policy(&[(7, &"77".repeat(32)), (8, &"88".repeat(32))]);
    let v = evidence(
        Some(pending(&ak, &[7, 8])),
        Some(&proof(&ak, &nonce, &booted())),
        &nonce,
        &[2; 32],
        &node(),
        &good,
        Some(&held()),
    );
    assert_eq!(v.evidence, TpmEvidence::Valid);
    assert!(v.quoted.is_some());
}

#[test]
fn an_unlearned_policy_refuses_and_keeps_the_quote_to_learn() {
    let ak = SoftAk::new();
    let nonce = [1u8; 32];
    let settings = policy(&[(7, PCR_TO_LEARN_VALUE), (8, PCR_TO_LEARN_VALUE)]);
    let v = evidence(
        Some(pending(&ak, &[7, 8])),
        Some(&proof(&ak, &nonce, &booted())),
        &nonce,
        &[2; 32],
        &node(),
        &settings,
        Some(&held()),
    );
    let TpmEvidence::Invalid(why) = &v.evidence else { panic!("refused: {:?}", v.evidence) };
    assert!(why.contains("PCR policy not learned yet: run ferry node tpm learn n1"), "{why}");
    assert_eq!(v.quoted.map(|q| q.values), Some(booted()));
}

#[test]
fn nothing_is_kept_from_a_quote_that_did_not_verify_or_a_stranger_tpm() {
    let ak = SoftAk::new();
    let nonce = [1u8; 32];
    let settings = policy(&[(7, PCR_TO_LEARN_VALUE), (8, PCR_TO_LEARN_VALUE)]);
    let check = |pending: PendingTpm, proof: TpmProof, nonce: [u8; 32], held: Option<TpmRecord>| {
        evidence(Some(pending), Some(&proof), &nonce, &[2; 32], &node(), &settings, held.as_ref())
    };
    // A bad signature: one bit of the signature flipped.
    let mut bad_signature = proof(&ak, &nonce, &booted());
    let mut sig = B64.decode(&bad_signature.signature).unwrap();
    sig[10] ^= 1;
    bad_signature.signature = B64.encode(sig);
    // The wrong nonce: a quote over another challenge (replayed).
    let replayed = proof(&ak, &[9u8; 32], &booted());
    // Another AK signed it (not the one whose credential the TPM activated).
    let other_ak = proof(&SoftAk::new(), &nonce, &booted());
    // Lying values: not what the quote's digest covers.
    let mut lying = proof(&ak, &nonce, &booted());
    lying.pcr_values.insert(7, "00".repeat(32));
    // The wrong credential secret: the AK is not in the registered EK's TPM.
    let mut wrong_secret = proof(&ak, &nonce, &booted());
    wrong_secret.secret = B64.encode([6u8; 32]);
    for (what, p) in [
        ("bad signature", bad_signature),
        ("wrong nonce", replayed),
        ("other AK", other_ak),
        ("lying values", lying),
        ("wrong secret", wrong_secret),
    ] {
        let v = check(pending(&ak, &[7, 8]), p, nonce, Some(held()));
        assert!(matches!(v.evidence, TpmEvidence::Invalid(_)), "{what}: {:?}", v.evidence);
        assert!(v.quoted.is_none(), "{what}: nothing from an unverified quote is kept");
    }
    // A verified quote from a TPM not registered for the node: nothing to learn from it.
    let stranger = PendingTpm { registered: false, ..pending(&ak, &[7, 8]) };
    let v = check(stranger, proof(&ak, &nonce, &booted()), nonce, None);
    assert!(v.quoted.is_none());
    // Registered at the challenge, cleared since.
    let v = check(pending(&ak, &[7, 8]), proof(&ak, &nonce, &booted()), nonce, None);
    assert!(v.quoted.is_none());
    // The control: the same quote, good, is kept.
    let v = check(pending(&ak, &[7, 8]), proof(&ak, &nonce, &booted()), nonce, Some(held()));
    assert!(v.quoted.is_some());
}

const PCR_TO_LEARN_VALUE: &str = ferry_core::model::PCR_TO_LEARN;

#[test]
fn an_unregistered_tpm_is_still_discovered_while_pcrs_wait_to_be_learned() {
    let ak = SoftAk::new();
    let nonce = [1u8; 32];
    let registration = TpmRegistration { ek_spki: vec![1], ek_certificate: None, fingerprint: FP.into() };
    let stranger = || PendingTpm { registered: false, discovered: Some(registration.clone()), ..pending(&ak, &[7, 8]) };
    let check = |settings: &Settings| {
        evidence(Some(stranger()), Some(&proof(&ak, &nonce, &booted())), &nonce, &[2; 32], &node(), settings, None)
    };
    // PCR 8 still to learn: a discovery candidate (its values are learned once it is registered).
    let v = check(&policy(&[(7, &"77".repeat(32)), (8, PCR_TO_LEARN_VALUE)]));
    assert!(matches!(v.evidence, TpmEvidence::Unregistered(_)), "{:?}", v.evidence);
    assert!(v.candidate.is_some() && v.quoted.is_none());
    // A pinned value it does not meet: refused, not discovered.
    let v = check(&policy(&[(7, &"00".repeat(32)), (8, PCR_TO_LEARN_VALUE)]));
    let TpmEvidence::Invalid(why) = &v.evidence else { panic!("refused: {:?}", v.evidence) };
    assert!(why.contains("PCR 7 differs"), "{why}");
    assert!(v.candidate.is_none());
}
