//! The provisioning API (enrollment) and the tunnel datasource's phone-home.
//!
//! Flow: `POST /v1/enroll/challenge` → nonce; `POST /v1/enroll` with the node hint,
//! WireGuard public key, nonce and proofs → tunnel parameters, or 401 "refused".
//! Keys and nonces are standard base64; proofs are base64 too.

use serde::{Deserialize, Serialize};

pub const CHALLENGE_PATH: &str = "/v1/enroll/challenge";
pub const ENROLL_PATH: &str = "/v1/enroll";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub nonce: String,
    pub expires_in_secs: u64,
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
    /// HMAC-SHA256 proof of the asset tag (see `ferry_core::enroll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
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
