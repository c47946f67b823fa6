//! Identity policy: which factors a node must prove (its configured policy, or ferry's
//! default), whether that is stronger than network position, and does the evidence a
//! node presented satisfy every factor? A refusal names the deciding reason and every
//! factor's verdict for the audit log; the client is only ever told "refused".

use crate::IdentityFactor;
use serde::{Deserialize, Serialize};

/// The identity factors in effect for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Every factor an enrollment must prove, sorted.
    pub factors: Vec<IdentityFactor>,
    /// Configured (`--identity`, on the node or a profile) rather than ferry's default.
    pub explicit: bool,
}

impl Policy {
    /// `identity` is the node's merged `identity` setting. When it names no factor,
    /// ferry's default applies: `network`, plus `asset-tag` when the node has a tag,
    /// plus `tpm` when a TPM is registered for it.
    pub fn new(identity: &[String], has_asset_tag: bool, has_registered_tpm: bool) -> Policy {
        let mut factors: Vec<IdentityFactor> = identity.iter().filter_map(|f| f.parse().ok()).collect();
        let explicit = !factors.is_empty();
        if !explicit {
            factors.push(IdentityFactor::Network);
            if has_asset_tag {
                factors.push(IdentityFactor::AssetTag);
            }
            if has_registered_tpm {
                factors.push(IdentityFactor::Tpm);
            }
        }
        factors.sort();
        factors.dedup();
        Policy { factors, explicit }
    }

    pub fn requires(&self, factor: IdentityFactor) -> bool {
        self.factors.contains(&factor)
    }

    /// No factor stronger than network: whoever takes the node's address on the
    /// provisioning network enrolls as the node.
    pub fn is_weak(&self) -> bool {
        self.factors.iter().all(|f| *f == IdentityFactor::Network)
    }

    /// Weak without the admin having said so (`--identity network`): refused.
    pub fn lacks_opt_in(&self) -> bool {
        self.is_weak() && !self.explicit
    }
}

/// What the server established about one enrollment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The request came from one of the node's inventory addresses.
    pub network: bool,
    pub asset_tag: AssetTagEvidence,
    pub tpm: TpmEvidence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmEvidence {
    /// No TPM proof with the request.
    NotPresented,
    /// A proof that verified, from a TPM not registered for the node.
    Unregistered(String),
    /// A proof that did not verify; says why (EK fingerprint, failed check).
    Invalid(String),
    /// The node's registered TPM attested: credential activated, quote and PCRs good.
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetTagEvidence {
    /// The node has no asset tag in the inventory.
    NotConfigured,
    /// The node has one but the request carried no proof.
    Missing,
    /// The proof did not verify (wrong tag, nonce, key or node).
    Invalid,
    Valid,
}

/// Why an enrollment was refused (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "identity: the node has no asset tag, no registered TPM and no identity policy, so only its network \
         address would identify it; give it an asset tag or a TPM, or accept network position explicitly \
         with: ferry node set NODE --identity network"
    )]
    NetworkOnlyWithoutOptIn,
    #[error("network factor: request did not come from one of the node's inventory addresses (came from {0})")]
    WrongAddress(String),
    #[error("asset-tag factor: policy requires it but the node has no asset tag in the inventory")]
    AssetTagNotConfigured,
    #[error("asset-tag factor: no proof sent")]
    AssetTagMissing,
    #[error("asset-tag factor: proof did not verify")]
    AssetTagInvalid,
    #[error("tpm factor: no TPM proof sent (boot the node with ferry.tpm on its kernel command line)")]
    TpmMissing,
    #[error("tpm factor: {0}")]
    TpmUnregistered(String),
    #[error("tpm factor: {0}")]
    TpmInvalid(String),
}

/// What one factor's evidence showed, whether or not the policy required it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Evidence that did not hold, and why.
    Failed(String),
    /// Nothing to judge (no proof sent, nothing in the inventory), and which.
    Absent(&'static str),
}

/// One factor's verdict on an enrollment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorVerdict {
    pub factor: IdentityFactor,
    pub required: bool,
    pub outcome: Outcome,
}

impl std::fmt::Display for FactorVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let required = if self.required { "required" } else { "not required" };
        match &self.outcome {
            Outcome::Passed => write!(f, "{} ({required}): passed", self.factor),
            Outcome::Failed(why) => write!(f, "{} ({required}): FAILED, {why}", self.factor),
            Outcome::Absent(what) => write!(f, "{} ({required}): {what}", self.factor),
        }
    }
}

/// Every factor's verdict, in the order network, asset-tag, tpm.
pub fn verdicts(policy: &Policy, evidence: &Evidence, source: &str) -> Vec<FactorVerdict> {
    let network = match evidence.network {
        true => Outcome::Passed,
        false => Outcome::Failed(format!("came from {source}, not one of the node's inventory addresses")),
    };
    let asset_tag = match evidence.asset_tag {
        AssetTagEvidence::Valid => Outcome::Passed,
        AssetTagEvidence::Invalid => Outcome::Failed("the proof did not verify".into()),
        AssetTagEvidence::Missing => Outcome::Absent("no proof sent"),
        AssetTagEvidence::NotConfigured => Outcome::Absent("no asset tag in the inventory"),
    };
    let tpm = match &evidence.tpm {
        TpmEvidence::Valid => Outcome::Passed,
        TpmEvidence::Invalid(why) | TpmEvidence::Unregistered(why) => Outcome::Failed(why.clone()),
        TpmEvidence::NotPresented => Outcome::Absent("no proof sent"),
    };
    [(IdentityFactor::Network, network), (IdentityFactor::AssetTag, asset_tag), (IdentityFactor::Tpm, tpm)]
        .into_iter()
        .map(|(factor, outcome)| FactorVerdict { factor, required: policy.requires(factor), outcome })
        .collect()
}

/// A refused enrollment: the deciding reason, and every factor's verdict (a wrong tag
/// from a wrong address is recorded as both, not only as the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; factors: {}", verdicts.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Refused {
    pub reason: Refusal,
    pub verdicts: Vec<FactorVerdict>,
}

/// Checks every required factor; `source` is the caller's address, for the audit.
/// A refusal carries the deciding reason and every factor's verdict.
///
/// The `tpm` factor is decided last, so [`Refusal::TpmUnregistered`] means every other
/// factor held (discovery relies on this: it records a TPM only then).
pub fn evaluate(policy: &Policy, evidence: &Evidence, source: &str) -> Result<(), Refused> {
    decide(policy, evidence, source).map_err(|reason| Refused { reason, verdicts: verdicts(policy, evidence, source) })
}

/// The deciding reason of a refusal: the first failing factor in the order below.
fn decide(policy: &Policy, evidence: &Evidence, source: &str) -> Result<(), Refusal> {
    if policy.lacks_opt_in() {
        return Err(Refusal::NetworkOnlyWithoutOptIn);
    }
    for factor in &policy.factors {
        match factor {
            IdentityFactor::Network if !evidence.network => return Err(Refusal::WrongAddress(source.to_owned())),
            IdentityFactor::AssetTag => match evidence.asset_tag {
                AssetTagEvidence::Valid => {}
                AssetTagEvidence::NotConfigured => return Err(Refusal::AssetTagNotConfigured),
                AssetTagEvidence::Missing => return Err(Refusal::AssetTagMissing),
                AssetTagEvidence::Invalid => return Err(Refusal::AssetTagInvalid),
            },
            IdentityFactor::Network | IdentityFactor::Tpm => {}
        }
    }
    // A proof that was sent but is wrong is refused even if the policy did not ask for
    // it: it signals an impostor, not a misconfiguration.
    if evidence.asset_tag == AssetTagEvidence::Invalid {
        return Err(Refusal::AssetTagInvalid);
    }
    match &evidence.tpm {
        TpmEvidence::Invalid(why) => Err(Refusal::TpmInvalid(why.clone())),
        _ if !policy.requires(IdentityFactor::Tpm) => Ok(()),
        TpmEvidence::Valid => Ok(()),
        TpmEvidence::NotPresented => Err(Refusal::TpmMissing),
        TpmEvidence::Unregistered(why) => Err(Refusal::TpmUnregistered(why.clone())),
    }
}

/// Below these an asset tag is easy to guess (see [`asset_tag_weakness`]).
pub const MIN_ASSET_TAG_BYTES: usize = 16;
pub const MIN_ASSET_TAG_DISTINCT_CHARS: usize = 8;
pub const MIN_ASSET_TAG_BITS: f64 = 64.0;

/// Why an asset tag is easy to guess, if it is: shorter than 16 bytes, fewer than 8
/// distinct characters, or under 64 bits by a character-class estimate (length ×
/// log2 of the alphabet its classes span: digits 10, lower case 26, upper case 26,
/// anything else 33). A vendor serial such as `CZ1234567X` fails all three. The text
/// never contains the tag.
pub fn asset_tag_weakness(tag: &str) -> Option<String> {
    let chars: Vec<char> = tag.chars().collect();
    let distinct = chars.iter().collect::<std::collections::BTreeSet<_>>().len();
    let class_size = |c: &char| match c {
        '0'..='9' => 10,
        'a'..='z' | 'A'..='Z' => 26,
        _ => 33,
    };
    // The alphabet spans every class the tag uses (lower and upper case counted apart).
    let mut classes: Vec<(bool, bool, u32)> =
        chars.iter().map(|c| (c.is_ascii_lowercase(), c.is_ascii_uppercase(), class_size(c))).collect();
    classes.sort_unstable();
    classes.dedup();
    let alphabet: f64 = classes.iter().map(|(_, _, size)| f64::from(*size)).sum();
    let bits = chars.len() as f64 * alphabet.max(1.0).log2();
    let mut why = Vec::new();
    if tag.len() < MIN_ASSET_TAG_BYTES {
        why.push(format!("{} bytes (fewer than {MIN_ASSET_TAG_BYTES})", tag.len()));
    }
    if distinct < MIN_ASSET_TAG_DISTINCT_CHARS {
        why.push(format!("{distinct} distinct characters"));
    }
    if bits < MIN_ASSET_TAG_BITS {
        why.push(format!("about {bits:.0} bits"));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentityFactor::*;

    /// The deciding reason only (the verdicts are checked in their own test).
    fn evaluate(policy: &Policy, evidence: &Evidence, source: &str) -> Result<(), Refusal> {
        super::evaluate(policy, evidence, source).map_err(|r| r.reason)
    }

    /// A wrong tag from a wrong address: the audit hears of both, and of the factor
    /// that was not asked for.
    #[test]
    fn a_refusal_records_every_factors_verdict() {
        let evidence = Evidence {
            network: false,
            asset_tag: AssetTagEvidence::Invalid,
            tpm: TpmEvidence::Unregistered("TPM sha256:ab attested but is not registered".into()),
        };
        let refused = super::evaluate(&p(&[Network, AssetTag]), &evidence, "10.0.0.9").unwrap_err();
        assert_eq!(refused.reason, Refusal::WrongAddress("10.0.0.9".into()));
        let text = refused.to_string();
        for part in [
            "network (required): FAILED, came from 10.0.0.9",
            "asset-tag (required): FAILED, the proof did not verify",
            "tpm (not required): FAILED, TPM sha256:ab attested but is not registered",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        let good = Evidence { network: true, asset_tag: AssetTagEvidence::Missing, tpm: TpmEvidence::Valid };
        let refused = super::evaluate(&p(&[Network, AssetTag, Tpm]), &good, "x").unwrap_err();
        assert_eq!(refused.reason, Refusal::AssetTagMissing);
        let outcomes: Vec<_> = refused.verdicts.iter().map(|v| (v.factor, v.outcome.clone())).collect();
        assert_eq!(
            outcomes,
            [(Network, Outcome::Passed), (AssetTag, Outcome::Absent("no proof sent")), (Tpm, Outcome::Passed)]
        );
    }

    fn ev(network: bool, asset_tag: AssetTagEvidence) -> Evidence {
        Evidence { network, asset_tag, tpm: TpmEvidence::NotPresented }
    }

    /// An explicit policy.
    fn p(factors: &[IdentityFactor]) -> Policy {
        Policy::new(&factors.iter().map(|f| f.to_string()).collect::<Vec<_>>(), false, false)
    }

    fn tpm(evidence: TpmEvidence) -> Evidence {
        Evidence { network: true, asset_tag: AssetTagEvidence::NotConfigured, tpm: evidence }
    }

    #[test]
    fn tpm_factor_alone_and_combined() {
        assert!(evaluate(&p(&[Tpm]), &tpm(TpmEvidence::Valid), "x").is_ok());
        assert_eq!(evaluate(&p(&[Tpm]), &tpm(TpmEvidence::NotPresented), "x"), Err(Refusal::TpmMissing));
        let why = "PCR 7 differs from policy".to_string();
        assert_eq!(
            evaluate(&p(&[Tpm]), &tpm(TpmEvidence::Invalid(why.clone())), "x"),
            Err(Refusal::TpmInvalid(why.clone()))
        );
        assert!(matches!(
            evaluate(&p(&[Tpm]), &tpm(TpmEvidence::Unregistered("k".into())), "x"),
            Err(Refusal::TpmUnregistered(_))
        ));
        // Not required: a good or unregistered TPM adds nothing, a bad one is an impostor.
        assert!(evaluate(&p(&[Network]), &tpm(TpmEvidence::Unregistered("k".into())), "x").is_ok());
        assert_eq!(
            evaluate(&p(&[Network]), &tpm(TpmEvidence::Invalid(why.clone())), "x"),
            Err(Refusal::TpmInvalid(why))
        );
        // tpm + network: both must hold.
        let mut e = tpm(TpmEvidence::Valid);
        e.network = false;
        assert!(matches!(evaluate(&p(&[Network, Tpm]), &e, "10.0.0.9"), Err(Refusal::WrongAddress(_))));
        // tpm + asset-tag.
        e.asset_tag = AssetTagEvidence::Missing;
        assert_eq!(evaluate(&p(&[AssetTag, Tpm]), &e, "x"), Err(Refusal::AssetTagMissing));
        e.asset_tag = AssetTagEvidence::Valid;
        assert!(evaluate(&p(&[AssetTag, Tpm]), &e, "x").is_ok());
    }

    #[test]
    fn every_required_factor_must_hold() {
        assert!(evaluate(&p(&[Network]), &ev(true, AssetTagEvidence::NotConfigured), "x").is_ok());
        assert_eq!(
            evaluate(&p(&[Network]), &ev(false, AssetTagEvidence::Valid), "10.0.0.9"),
            Err(Refusal::WrongAddress("10.0.0.9".into()))
        );
        assert!(evaluate(&p(&[Network, AssetTag]), &ev(true, AssetTagEvidence::Valid), "x").is_ok());
        assert_eq!(
            evaluate(&p(&[Network, AssetTag]), &ev(true, AssetTagEvidence::Missing), "x"),
            Err(Refusal::AssetTagMissing)
        );
        assert_eq!(
            evaluate(&p(&[AssetTag]), &ev(false, AssetTagEvidence::Invalid), "x"),
            Err(Refusal::AssetTagInvalid)
        );
        assert!(
            evaluate(&p(&[AssetTag]), &ev(false, AssetTagEvidence::Valid), "x").is_ok(),
            "asset-tag alone ignores the address"
        );
        assert_eq!(
            evaluate(&p(&[AssetTag]), &ev(true, AssetTagEvidence::NotConfigured), "x"),
            Err(Refusal::AssetTagNotConfigured)
        );
        assert_eq!(evaluate(&p(&[Tpm]), &ev(true, AssetTagEvidence::Valid), "x"), Err(Refusal::TpmMissing));
        assert_eq!(evaluate(&p(&[Network]), &ev(true, AssetTagEvidence::Invalid), "x"), Err(Refusal::AssetTagInvalid));
    }

    #[test]
    fn default_policy_and_network_only_needs_an_opt_in() {
        let default = |tag, tpm| Policy::new(&[], tag, tpm);
        assert_eq!(default(false, false).factors, [Network]);
        assert_eq!(default(true, false).factors, [Network, AssetTag]);
        assert_eq!(default(false, true).factors, [Network, Tpm]);
        assert_eq!(default(true, true).factors, [Network, AssetTag, Tpm]);
        assert!(!default(true, false).explicit);
        let configured = Policy::new(&["tpm".into(), "tpm".into()], true, false);
        assert_eq!((configured.factors.as_slice(), configured.explicit), ([Tpm].as_slice(), true));

        // Nothing but network, by default: refused, whatever the evidence; the reason
        // says how to opt in.
        let weak = default(false, false);
        assert!(weak.is_weak() && weak.lacks_opt_in());
        let refusal = evaluate(&weak, &ev(true, AssetTagEvidence::NotConfigured), "x").unwrap_err();
        assert_eq!(refusal, Refusal::NetworkOnlyWithoutOptIn);
        assert!(refusal.to_string().contains("--identity network"), "{refusal}");
        // Said explicitly: admitted, and still weak.
        let opted_in = p(&[Network]);
        assert!(opted_in.is_weak() && !opted_in.lacks_opt_in());
        assert!(evaluate(&opted_in, &ev(true, AssetTagEvidence::NotConfigured), "x").is_ok());
        // Anything stronger is not weak.
        for strong in [default(true, false), default(false, true), p(&[AssetTag]), p(&[Tpm, Network])] {
            assert!(!strong.is_weak(), "{strong:?}");
        }
    }

    #[test]
    fn an_unregistered_tpm_is_reported_only_after_every_other_factor_held() {
        let unregistered =
            |network, asset_tag| Evidence { network, asset_tag, tpm: TpmEvidence::Unregistered("k".into()) };
        let policy = p(&[Tpm, AssetTag, Network]);
        assert!(matches!(
            evaluate(&policy, &unregistered(false, AssetTagEvidence::Valid), "10.0.0.9"),
            Err(Refusal::WrongAddress(_))
        ));
        assert_eq!(
            evaluate(&policy, &unregistered(true, AssetTagEvidence::Invalid), "x"),
            Err(Refusal::AssetTagInvalid)
        );
        assert!(matches!(
            evaluate(&policy, &unregistered(true, AssetTagEvidence::Valid), "x"),
            Err(Refusal::TpmUnregistered(_))
        ));
        // An asset-tag proof that fails, though not required, still comes first.
        assert_eq!(
            evaluate(&p(&[Tpm]), &unregistered(true, AssetTagEvidence::Invalid), "x"),
            Err(Refusal::AssetTagInvalid)
        );
    }

    #[test]
    fn short_or_low_entropy_asset_tags_are_flagged() {
        for weak in ["CZ1234567X", "1234567890123456", "aaaaaaaaaaaaaaaaaaaaaaaa", "abababababababababab", "Rack 7"] {
            assert!(asset_tag_weakness(weak).is_some(), "{weak}");
        }
        for strong in ["3f9c2a7b1e6d4c8f0a5b9e2d7c1f4a6b", "Xk9#mQ2$vL7pR4tZ", "kq7vz3mx9wb2nf5hgt"] {
            assert_eq!(asset_tag_weakness(strong), None, "{strong}");
        }
        let why = asset_tag_weakness("SECRET12").unwrap();
        assert!(!why.contains("SECRET12") && why.contains("8 bytes"), "{why}");
    }
}
