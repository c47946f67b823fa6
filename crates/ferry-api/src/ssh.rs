//! ferry as the cluster's SSH host certificate authority: the admin API's bodies
//! (`/v1/ssh/...`, see [`crate::routes`]). Nodes ask for certificates inside their
//! tunnel on the datasource (`POST /ssh/host-certificates`, plain text: one OpenSSH
//! public key per line in, one certificate per line out, in the same order).

use ferry_core::NodeName;
use serde::{Deserialize, Serialize};

/// The datasource path where a node submits its host public keys.
pub const HOST_CERTIFICATES_PATH: &str = "/ssh/host-certificates";
/// The datasource path of the `@cert-authority` lines for the node's own SSH client.
pub const NODE_KNOWN_HOSTS_PATH: &str = "/ssh/known-hosts";
/// The datasource path of the revoked host keys (`RevokedHostKeys`).
pub const NODE_REVOKED_KEYS_PATH: &str = "/ssh/revoked-keys";
/// The datasource path of the user CAs the node's sshd trusts (`TrustedUserCAKeys`):
/// one public key per line, none until an admin makes a user CA.
pub const NODE_USER_CA_KEYS_PATH: &str = "/ssh/user-ca-keys";

/// What a CA signs: host certificates (nodes) or user certificates (admins' logins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SshCaPurpose {
    #[default]
    Host,
    User,
}

impl SshCaPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            SshCaPurpose::Host => "host",
            SshCaPurpose::User => "user",
        }
    }
}

impl std::fmt::Display for SshCaPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SshCaPurpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(SshCaPurpose::Host),
            "user" => Ok(SshCaPurpose::User),
            other => Err(format!("unknown SSH CA purpose {other:?}: expected host or user")),
        }
    }
}

/// Where a CA is in its life: it signs; it no longer signs but clients still trust it
/// (the overlap after a rotation); or its overlap is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshCaState {
    Signing,
    Trusted,
    Expired,
}

/// One CA as `ferry ssh ca list` shows it (`GET /v1/ssh/cas`). Never its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCaView {
    pub id: i64,
    pub purpose: SshCaPurpose,
    pub state: SshCaState,
    /// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    pub created_at: String,
    /// When it stopped signing (rotated out).
    pub retired_at: Option<String>,
    /// Rotated out: clients trust it until then.
    pub trusted_until: Option<String>,
}

/// `POST /v1/ssh/cas`: a new CA signs from now on; the one it replaces stays trusted
/// for `overlap_secs` (certificates it signed stay valid that long at most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCaRotate {
    #[serde(default)]
    pub purpose: SshCaPurpose,
    pub overlap_secs: u64,
}

/// Whether an issued certificate still vouches for its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshCertificateState {
    Valid,
    Expired,
    Revoked,
}

/// One issued host certificate (`GET /v1/ssh/certificates[?node=N]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCertificateView {
    pub serial: u64,
    pub node: NodeName,
    pub ca_id: i64,
    pub key_id: String,
    /// `ed25519`, `ecdsa`, `rsa`.
    pub key_type: String,
    /// `SHA256:…` of the certified host key, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub principals: Vec<String>,
    pub issued_at: String,
    pub valid_before: String,
    pub state: SshCertificateState,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCertificateQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
}

/// What a client needs to trust the cluster's hosts (`GET /v1/ssh/known-hosts`): the
/// host CAs still trusted, the host patterns of the inventory (names, `*.DOMAIN`,
/// addresses), and the host keys ferry revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKnownHosts {
    pub cas: Vec<SshCaView>,
    pub patterns: Vec<String>,
    /// OpenSSH public key lines of revoked certificates' host keys (still within their
    /// validity, or of nodes no longer in the inventory).
    pub revoked_keys: Vec<String>,
}

/// `PUT /v1/ssh/revocations/{node}`: how many certificates were revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRevoked {
    pub node: NodeName,
    pub certificates: usize,
}

/// `POST /v1/ssh/user-certificates`: a user certificate for an admin's public key, to
/// log in to nodes as one of `principals` (login names) for `validity_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshUserCertificateRequest {
    /// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    pub principals: Vec<String>,
    pub validity_secs: u64,
}

/// The signed user certificate (`…-cert.pub` contents) and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshUserCertificate {
    pub certificate: String,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_before: String,
}
