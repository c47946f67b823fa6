//! A node's TPM identity as the inventory records it ([`TpmStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_core::NodeName;
use serde::{Deserialize, Serialize};

#[async_trait]
pub trait TpmStore: Send + Sync {
    /// Registers (`Some`) or clears (`None`) a node's TPM; the EK must not identify
    /// another node.
    async fn set_node_tpm(
        &self,
        node: &NodeName,
        tpm: Option<&TpmRegistration>,
        actor: &Actor,
    ) -> Result<(), StoreError>;
    /// TPM records, of one node or all.
    async fn node_tpms(&self, only: Option<&NodeName>) -> Result<Vec<(NodeName, TpmRecord)>, StoreError>;
    /// Trust on first use: records an EK that proved itself at enrollment as pending if
    /// the node holds none and no other node holds it. A held EK (pending or
    /// registered) is never replaced: a different one is recorded as its conflict.
    async fn record_pending_tpm(
        &self,
        node: &NodeName,
        tpm: &TpmRegistration,
        actor: &Actor,
    ) -> Result<Discovery, StoreError>;
    /// Pending → registered, only if the pending EK has exactly this fingerprint.
    async fn approve_tpm(&self, node: &NodeName, fingerprint: &str, actor: &Actor) -> Result<TpmRecord, StoreError>;
}

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
