//! Identity policy: does the evidence a node presented satisfy every factor its policy
//! requires? The answer names the first missing factor for the audit log; the client is
//! only ever told "refused".

use crate::IdentityFactor;

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

/// Checks every required factor; `source` is the caller's address, for the audit.
pub fn evaluate(policy: &[IdentityFactor], evidence: &Evidence, source: &str) -> Result<(), Refusal> {
    for factor in policy {
        match factor {
            IdentityFactor::Network if !evidence.network => return Err(Refusal::WrongAddress(source.to_owned())),
            IdentityFactor::AssetTag => match evidence.asset_tag {
                AssetTagEvidence::Valid => {}
                AssetTagEvidence::NotConfigured => return Err(Refusal::AssetTagNotConfigured),
                AssetTagEvidence::Missing => return Err(Refusal::AssetTagMissing),
                AssetTagEvidence::Invalid => return Err(Refusal::AssetTagInvalid),
            },
            IdentityFactor::Tpm => match &evidence.tpm {
                TpmEvidence::Valid => {}
                TpmEvidence::NotPresented => return Err(Refusal::TpmMissing),
                TpmEvidence::Unregistered(why) => return Err(Refusal::TpmUnregistered(why.clone())),
                TpmEvidence::Invalid(why) => return Err(Refusal::TpmInvalid(why.clone())),
            },
            IdentityFactor::Network => {}
        }
    }
    // A proof that was sent but is wrong is refused even if the policy did not ask for
    // it: it signals an impostor, not a misconfiguration.
    if evidence.asset_tag == AssetTagEvidence::Invalid {
        return Err(Refusal::AssetTagInvalid);
    }
    if let TpmEvidence::Invalid(why) = &evidence.tpm {
        return Err(Refusal::TpmInvalid(why.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentityFactor::*;

    fn ev(network: bool, asset_tag: AssetTagEvidence) -> Evidence {
        Evidence { network, asset_tag, tpm: TpmEvidence::NotPresented }
    }

    fn tpm(evidence: TpmEvidence) -> Evidence {
        Evidence { network: true, asset_tag: AssetTagEvidence::NotConfigured, tpm: evidence }
    }

    #[test]
    fn tpm_factor_alone_and_combined() {
        assert!(evaluate(&[Tpm], &tpm(TpmEvidence::Valid), "x").is_ok());
        assert_eq!(evaluate(&[Tpm], &tpm(TpmEvidence::NotPresented), "x"), Err(Refusal::TpmMissing));
        let why = "PCR 7 differs from policy".to_string();
        assert_eq!(
            evaluate(&[Tpm], &tpm(TpmEvidence::Invalid(why.clone())), "x"),
            Err(Refusal::TpmInvalid(why.clone()))
        );
        assert!(matches!(
            evaluate(&[Tpm], &tpm(TpmEvidence::Unregistered("k".into())), "x"),
            Err(Refusal::TpmUnregistered(_))
        ));
        // Not required: a good or unregistered TPM adds nothing, a bad one is an impostor.
        assert!(evaluate(&[Network], &tpm(TpmEvidence::Unregistered("k".into())), "x").is_ok());
        assert_eq!(evaluate(&[Network], &tpm(TpmEvidence::Invalid(why.clone())), "x"), Err(Refusal::TpmInvalid(why)));
        // tpm + network: both must hold.
        let mut e = tpm(TpmEvidence::Valid);
        e.network = false;
        assert!(matches!(evaluate(&[Network, Tpm], &e, "10.0.0.9"), Err(Refusal::WrongAddress(_))));
        // tpm + asset-tag.
        e.asset_tag = AssetTagEvidence::Missing;
        assert_eq!(evaluate(&[AssetTag, Tpm], &e, "x"), Err(Refusal::AssetTagMissing));
        e.asset_tag = AssetTagEvidence::Valid;
        assert!(evaluate(&[AssetTag, Tpm], &e, "x").is_ok());
    }

    #[test]
    fn every_required_factor_must_hold() {
        assert!(evaluate(&[Network], &ev(true, AssetTagEvidence::NotConfigured), "x").is_ok());
        assert_eq!(
            evaluate(&[Network], &ev(false, AssetTagEvidence::Valid), "10.0.0.9"),
            Err(Refusal::WrongAddress("10.0.0.9".into()))
        );
        assert!(evaluate(&[Network, AssetTag], &ev(true, AssetTagEvidence::Valid), "x").is_ok());
        assert_eq!(
            evaluate(&[Network, AssetTag], &ev(true, AssetTagEvidence::Missing), "x"),
            Err(Refusal::AssetTagMissing)
        );
        assert_eq!(evaluate(&[AssetTag], &ev(false, AssetTagEvidence::Invalid), "x"), Err(Refusal::AssetTagInvalid));
        assert!(
            evaluate(&[AssetTag], &ev(false, AssetTagEvidence::Valid), "x").is_ok(),
            "asset-tag alone ignores the address"
        );
        assert_eq!(
            evaluate(&[AssetTag], &ev(true, AssetTagEvidence::NotConfigured), "x"),
            Err(Refusal::AssetTagNotConfigured)
        );
        assert_eq!(evaluate(&[Tpm], &ev(true, AssetTagEvidence::Valid), "x"), Err(Refusal::TpmMissing));
        assert_eq!(evaluate(&[Network], &ev(true, AssetTagEvidence::Invalid), "x"), Err(Refusal::AssetTagInvalid));
    }
}
