//! The SSH certificate authority's state ([`SshCaStore`]): CA keys (private halves
//! sealed), the host certificates issued, and the nodes whose certificates are revoked.
//! The store knows nothing of the SSH formats: the server makes keys and signs; the
//! store keeps, checks and audits.

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_core::NodeName;
use zeroize::Zeroizing;

pub use ferry_api::ssh::{SshCaPurpose, SshCaState, SshCaView, SshCertificateState, SshCertificateView};

/// Issued certificates are kept this long after they expire (the audit log keeps the
/// issuance itself for its own retention).
pub const SSH_CERTIFICATE_KEEP_SECS: i64 = 30 * 86_400;

/// Most certificates one boot (one tunnel) may get: a node asks once per key type; a
/// node asking again and again would only fill the store.
pub const MAX_CERTIFICATES_PER_BOOT: i64 = 16;

/// A CA as the store holds it (the private key stays sealed unless asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCaRecord {
    pub id: i64,
    pub purpose: SshCaPurpose,
    /// The OpenSSH public key line.
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub trusted_until: Option<i64>,
}

impl SshCaRecord {
    /// Signing, trusted (rotated out, within its overlap) or expired, at `now`.
    pub fn state(&self, now: i64) -> SshCaState {
        match (self.retired_at, self.trusted_until) {
            (None, _) => SshCaState::Signing,
            (Some(_), Some(until)) if until > now => SshCaState::Trusted,
            _ => SshCaState::Expired,
        }
    }

    /// Whether clients should still trust it at `now`.
    pub fn trusted(&self, now: i64) -> bool {
        self.state(now) != SshCaState::Expired
    }
}

/// The signing CA with its private key (OpenSSH format), opened.
pub struct SigningCa {
    pub ca: SshCaRecord,
    pub private_key: Zeroizing<Vec<u8>>,
}

/// A certificate the server signed, to be recorded before it is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSshCertificate {
    pub serial: u64,
    pub ca_id: i64,
    pub key_id: String,
    pub key_type: String,
    /// `SHA256:…` of the host key.
    pub fingerprint: String,
    /// The host key's OpenSSH line (no comment).
    pub public_key: String,
    pub principals: Vec<String>,
    pub issued_at: i64,
    pub valid_before: i64,
}

/// Why a node gets no certificate although its tunnel is its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshIssueRefusal {
    #[error("the SSH host certificates of node {0} are revoked (`ferry ssh revoke`); `ferry ssh reinstate {0}` allows new ones")]
    NodeRevoked(NodeName),
    #[error(
        "host key {fingerprint} was certified for node {other}: a host key shared between nodes lets one \
         impersonate the other; give each node its own host keys"
    )]
    KeyOfAnotherNode { fingerprint: String, other: NodeName },
    #[error("this boot of node {node} had {issued} host certificates already (at most {max} per boot)")]
    TooMany { node: NodeName, issued: i64, max: i64 },
}

#[async_trait]
pub trait SshCaStore: Send + Sync {
    /// Records this key pair as the `purpose` CA unless one signs already (another
    /// server was first); either way returns the signing CA, and whether it is the new one
    /// (audited `ssh.ca-created`). The private key is sealed.
    async fn ensure_ssh_ca(
        &self,
        purpose: SshCaPurpose,
        public_key: &str,
        private_key: &[u8],
        actor: &Actor,
    ) -> Result<(SshCaRecord, bool), StoreError>;
    /// The CA that signs for `purpose`, its private key opened.
    async fn ssh_signing_ca(&self, purpose: SshCaPurpose) -> Result<Option<SigningCa>, StoreError>;
    /// Every CA recorded (newest first), expired ones included.
    async fn list_ssh_cas(&self) -> Result<Vec<SshCaRecord>, StoreError>;
    /// Makes this key pair the signing CA of `purpose`; the one it replaces stays trusted
    /// for `overlap_secs`. Audited `ssh.ca-rotated`.
    async fn rotate_ssh_ca(
        &self,
        purpose: SshCaPurpose,
        public_key: &str,
        private_key: &[u8],
        overlap_secs: u64,
        actor: &Actor,
    ) -> Result<SshCaRecord, StoreError>;
    /// Records certificates signed for `node` in its boot that began at `boot_started` —
    /// unless the node's certificates are revoked, a key was certified for another node,
    /// or the boot would exceed [`MAX_CERTIFICATES_PER_BOOT`]: then nothing is written
    /// (the caller audits the refusal, folded, so that repeating it fills nothing) and
    /// the certificates must not be handed out. Each issue is audited
    /// `ssh.certificate-issued`; certificates long expired are pruned.
    async fn record_ssh_certificates(
        &self,
        node: &NodeName,
        boot_started: i64,
        certificates: &[NewSshCertificate],
        actor: &Actor,
    ) -> Result<Result<(), SshIssueRefusal>, StoreError>;
    /// Issued certificates, of one node or all, newest first.
    async fn list_ssh_certificates(&self, node: Option<&NodeName>) -> Result<Vec<SshCertificateView>, StoreError>;
    /// Revokes every certificate issued to `node` and holds new ones until
    /// [`reinstate_ssh_node`](Self::reinstate_ssh_node). Returns how many were revoked.
    async fn revoke_ssh_node(&self, node: &NodeName, actor: &Actor) -> Result<usize, StoreError>;
    async fn reinstate_ssh_node(&self, node: &NodeName, actor: &Actor) -> Result<(), StoreError>;
    /// The host keys clients must refuse: those of revoked certificates, and of
    /// certificates of nodes no longer in the inventory, while the certificates are valid.
    async fn ssh_revoked_keys(&self) -> Result<Vec<String>, StoreError>;
}

/// Binds a sealed CA key to its row.
pub(crate) fn ca_aad(purpose: SshCaPurpose, id: i64) -> String {
    format!("ferry/ssh-ca/{purpose}/{id}")
}
