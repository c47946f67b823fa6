//! The provisioning API (enrollment) and the tunnel datasource's phone-home.
//!
//! Flow: `POST /v1/enroll/challenge` → nonce; `POST /v1/enroll` with the node hint,
//! WireGuard public key, nonce and proofs → tunnel parameters, or 401 "refused".
//! Keys and nonces are standard base64; proofs are base64 too.
//!
//! With the `tpm` factor there is one more round trip between the two: `POST
//! /v1/enroll/tpm` with the EK and a fresh AK → a MakeCredential challenge bound to the
//! AK's name, and the PCRs to quote. The agent activates the credential (proving the AK
//! lives in the EK's TPM) and sends the secret and a quote in `proofs.tpm`.

use serde::{Deserialize, Serialize};

pub const CHALLENGE_PATH: &str = "/v1/enroll/challenge";
pub const ENROLL_PATH: &str = "/v1/enroll";
pub const TPM_CREDENTIAL_PATH: &str = "/v1/enroll/tpm";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: String,
    pub expires_in_secs: u64,
    /// The answering server's static WireGuard public key (base64): the asset-tag proof
    /// is keyed with the X25519 secret shared with it, so the agent checks it is one of
    /// its pinned keys first. Absent from servers older than proof v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The MAC of the node's interface that routes to the server (a hint, not proof).
    pub mac: String,
    /// The node's freshly generated WireGuard public key.
    pub public_key: String,
    pub nonce: String,
    #[serde(default)]
    pub proofs: Proofs,
    /// What the node does with its tunnel: `fetch` (the agent fetches the seed and
    /// phones home itself) or `cloud-init` (cloud-init fetches and phones home). Absent:
    /// `cloud-init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proofs {
    /// Proof v2 of the asset tag (see `ferry_core::enroll`): bound to the nonce, the
    /// WireGuard key, the node and the secret shared with the server's pinned key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag_v2: Option<String>,
    /// Proof v1, sent by agents older than v2: a sniffed one allowed an offline
    /// dictionary attack on the tag, so servers refuse it (400: update the agent).
    #[serde(default, rename = "asset_tag", skip_serializing_if = "Option::is_none")]
    pub asset_tag_v1: Option<String>,
    /// The answer to the TPM credential challenge issued for the same nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmProof>,
}

/// `POST /v1/enroll/tpm`: the TPM's identity and a fresh attestation key. TPM
/// structures travel marshalled (TPM 2.0 Part 2 wire form), base64-encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmCredentialRequest {
    /// Same MAC hint as the enrollment that follows.
    pub mac: String,
    /// The WireGuard public key the enrollment will carry.
    pub public_key: String,
    /// The nonce from the challenge; the enrollment must use the same one.
    pub nonce: String,
    /// The endorsement key: a marshalled `TPMT_PUBLIC` (RSA 2048, default EK template).
    pub ek_public: String,
    /// The EK certificate (DER) from the TPM's NV index, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
    /// The attestation key: a marshalled `TPMT_PUBLIC` of a restricted signing key.
    pub ak_public: String,
}

/// The answer: a credential only the TPM holding both the EK and the AK can open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmCredentialChallenge {
    /// The node the server recognised; the quote's qualifying data binds to it.
    pub node: String,
    /// `TPM2B_ID_OBJECT` contents (without the size prefix), for TPM2_ActivateCredential.
    pub credential_blob: String,
    /// `TPM2B_ENCRYPTED_SECRET` contents (without the size prefix).
    pub encrypted_secret: String,
    /// The SHA-256 bank PCRs the quote must cover (empty: quote none, identity only).
    pub pcrs: Vec<u8>,
}

/// The second half of the TPM factor, sent inside the enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmProof {
    /// The secret recovered by TPM2_ActivateCredential.
    pub secret: String,
    /// The marshalled `TPMS_ATTEST` of TPM2_Quote, exactly as signed; its qualifying
    /// data is `ferry_core::enroll::tpm_qualifying_data(nonce, public_key, node)`.
    pub attest: String,
    /// The AK's RSASSA-PKCS1-v1_5 SHA-256 signature over `attest` (raw bytes).
    pub signature: String,
    /// PCR index → SHA-256 bank value (hex) for every PCR the challenge named.
    #[serde(default)]
    pub pcr_values: std::collections::BTreeMap<u8, String>,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node: String,
    pub server_public_key: String,
    /// `host:port` of the server's WireGuard device.
    pub endpoint: String,
    /// The node's tunnel address and the tunnel network's prefix length.
    pub node_address: String,
    pub prefix_len: u8,
    pub server_address: String,
    pub expires_in_secs: u64,
    pub expires_at: String,
    /// cloud-init NoCloud seed base (`ds=nocloud;s=<this>`), inside the tunnel.
    pub datasource_url: String,
    pub phone_home_url: String,
}

/// The JSON form of phone-home (cloud-init's module posts a form with these names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PhoneHome {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub pub_key_dsa: Option<String>,
    pub pub_key_rsa: Option<String>,
    pub pub_key_ecdsa: Option<String>,
    pub pub_key_ed25519: Option<String>,
}
