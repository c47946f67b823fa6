//! A node's TPM identity as the inventory records it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TpmState {
    /// An admin registered or approved this EK: it identifies the node.
    Registered,
    /// Discovered at an enrollment attempt; identifies nothing until approved.
    Pending,
}

impl TpmState {
    pub fn as_str(self) -> &'static str {
        match self {
            TpmState::Registered => "registered",
            TpmState::Pending => "pending",
        }
    }
}

/// An endorsement key, already normalised and checked by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmRegistration {
    /// SubjectPublicKeyInfo DER of the EK.
    pub ek_spki: Vec<u8>,
    /// The EK certificate (DER), if one vouched for the key.
    pub ek_certificate: Option<Vec<u8>>,
    /// `sha256:<hex>` of `ek_spki`.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmRecord {
    pub state: TpmState,
    pub registration: TpmRegistration,
    pub updated_at: i64,
    /// The fingerprint of the last other TPM refused as a conflict with this one.
    pub conflict: Option<String>,
}

/// What trust-on-first-use did with a TPM that proved itself for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Held as pending for the node (audited `tpm.pending`).
    Held,
    /// This very EK is already pending for the node.
    AlreadyPending,
    /// This very EK is registered for the node (approved meanwhile).
    AlreadyRegistered,
    /// The node holds another EK: nothing replaced; recorded as the node's conflict and
    /// audited `tpm.conflict` with both fingerprints.
    Conflict { held: String, state: TpmState },
    /// Another node holds this EK.
    OtherNode(String),
}
