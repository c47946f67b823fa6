//! Golden PCR values without hand-copying hex ([`PcrQuoteStore`]): the server keeps the
//! PCR values of each node's latest quote that verified cryptographically, and an admin
//! who approves them pins them as the node's (or a profile's) PCR policy.

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_core::{NodeName, ProfileName};
use std::collections::BTreeMap;

/// The only PCR bank ferry quotes (and so records).
pub const PCR_BANK: &str = "sha256";

/// What a node's TPM quoted at its latest verified enrollment attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrQuote {
    /// The registered EK whose credential the quoting AK activated.
    pub ek_fingerprint: String,
    /// The bank the values are of ([`PCR_BANK`]).
    pub bank: String,
    /// Every PCR the quote covered (the selection) with its value.
    pub values: BTreeMap<u8, Vec<u8>>,
    /// The node's merged `tpm_pcrs` when it quoted: a later policy change makes the
    /// quote stale (it was taken for another policy).
    pub policy: BTreeMap<String, String>,
    /// The TPM's reset count (boots since the TPM was cleared) and restart count: which boot.
    pub reset_count: u32,
    pub restart_count: u32,
    /// The address the enrollment came from.
    pub client: String,
    /// When the server verified it (Unix seconds).
    pub recorded_at: i64,
}

/// Where approved values are pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnTarget {
    /// The quoting node's own settings: every PCR its policy selects.
    Node,
    /// A profile the quoting node uses: every PCR the profile itself selects.
    Profile(ProfileName),
}

/// An admin's approval of exactly the quote they were shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrApproval {
    /// The node whose recorded quote is approved.
    pub from: NodeName,
    pub target: LearnTarget,
    /// The quote as shown: its time and values. A newer quote since is not approved.
    pub recorded_at: i64,
    pub values: BTreeMap<u8, Vec<u8>>,
}

#[async_trait]
pub trait PcrQuoteStore: Send + Sync {
    /// Replaces the node's recorded quote. Only for a quote that verified.
    async fn record_pcr_quote(&self, node: &NodeName, quote: &PcrQuote) -> Result<(), StoreError>;
    /// The node's recorded quote, if any (`NotFound` for an unknown node).
    async fn pcr_quote(&self, node: &NodeName) -> Result<Option<PcrQuote>, StoreError>;
    /// Pins the approved values (those the target selects) in one transaction,
    /// audited `tpm.pcrs-learned`; refuses when the quote is missing, not the one
    /// approved, made by a TPM no longer registered for the node, or older than the
    /// node's last PCR policy change. Returns what was pinned.
    async fn learn_pcrs(&self, approval: &PcrApproval, actor: &Actor) -> Result<BTreeMap<u8, Vec<u8>>, StoreError>;
}
