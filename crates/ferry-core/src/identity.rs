//! Identity policy: does the evidence a node presented satisfy every factor its policy
//! requires? The answer names the first missing factor for the audit log; the client is
//! only ever told "refused".

use crate::IdentityFactor;

/// What the server established about one enrollment attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The request came from one of the node's inventory addresses.
    pub network: bool,
    pub asset_tag: AssetTagEvidence,
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
    #[error("tpm factor: required, but TPM attestation is not supported by this server yet")]
    TpmUnsupported,
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
            IdentityFactor::Tpm => return Err(Refusal::TpmUnsupported),
            IdentityFactor::Network => {}
        }
    }
    // A proof that was sent but is wrong is refused even if the policy did not ask for
    // it: it signals an impostor, not a misconfiguration.
    if evidence.asset_tag == AssetTagEvidence::Invalid {
        return Err(Refusal::AssetTagInvalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdentityFactor::*;

    fn ev(network: bool, asset_tag: AssetTagEvidence) -> Evidence {
        Evidence { network, asset_tag }
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
        assert_eq!(evaluate(&[Tpm], &ev(true, AssetTagEvidence::Valid), "x"), Err(Refusal::TpmUnsupported));
        assert_eq!(evaluate(&[Network], &ev(true, AssetTagEvidence::Invalid), "x"), Err(Refusal::AssetTagInvalid));
    }
}
