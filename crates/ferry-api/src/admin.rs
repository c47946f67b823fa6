//! The admin API (unix socket `/run/ferry/admin.sock`, JSON): the body of every request
//! and response. The routes are in [`crate::routes`].
//!
//! Nodes: `GET /v1/nodes`, `GET /v1/nodes/{name}[?merged=true]`, `POST /v1/nodes` (add,
//! all or nothing), `PATCH /v1/nodes` (set/unset on many), `DELETE /v1/nodes`; the same
//! under `/v1/profiles`.

use crate::Secret;
use ferry_core::merge::MergedField;
use ferry_core::patch::SettingsPatch;
use ferry_core::{NodeName, ProfileName, Settings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether a secret is stored. The value itself is never returned by any route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretState {
    Set,
    Unset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: NodeName,
    pub profiles: Vec<ProfileName>,
    pub settings: Settings,
    pub asset_tag: SecretState,
    /// The identity policy in effect (merged with the profiles, or ferry's default).
    pub identity: IdentityView,
    pub revision: i64,
    pub updated_at: String,
}

/// A node's identity policy in effect and how strong it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    /// The factors an enrollment must prove.
    pub factors: Vec<ferry_core::IdentityFactor>,
    /// Configured with `--identity` (node or profile) rather than ferry's default.
    pub explicit: bool,
    /// No factor stronger than network: whoever takes the node's address on the
    /// provisioning network receives its configuration and secrets.
    pub weak: bool,
    /// Weak without an explicit `--identity network`: enrollment is refused.
    pub refused: bool,
}

impl From<&ferry_core::identity::Policy> for IdentityView {
    fn from(p: &ferry_core::identity::Policy) -> Self {
        IdentityView { factors: p.factors.clone(), explicit: p.explicit, weak: p.is_weak(), refused: p.lacks_opt_in() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergedNodeView {
    pub name: NodeName,
    /// Every profile that applies, in application order (parents first).
    pub profiles: Vec<ProfileName>,
    pub settings: Settings,
    pub fields: Vec<MergedField>,
    pub asset_tag: SecretState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileView {
    pub name: ProfileName,
    pub profiles: Vec<ProfileName>,
    pub settings: Settings,
    pub revision: i64,
    pub updated_at: String,
    /// How many nodes list this profile directly.
    pub nodes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub name: NodeName,
    #[serde(default)]
    pub profiles: Vec<ProfileName>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodes {
    pub nodes: Vec<NewNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetTagChange {
    Set(Secret),
    Unset,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodePatch {
    /// Replaces the node's profile list when present.
    pub profiles: Option<Vec<ProfileName>>,
    pub settings: SettingsPatch,
    pub asset_tag: Option<AssetTagChange>,
}

impl NodePatch {
    pub fn is_empty(&self) -> bool {
        self.profiles.is_none() && self.settings.is_empty() && self.asset_tag.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNodes {
    pub names: Vec<NodeName>,
    pub patch: NodePatch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProfile {
    pub name: ProfileName,
    #[serde(default)]
    pub profiles: Vec<ProfileName>,
    #[serde(default)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProfiles {
    pub profiles: Vec<NewProfile>,
}

/// `POST /v1/inventory`: profiles and nodes added in one transaction (`ferry import`):
/// all of them or, on the first refusal, none. With `dry_run` the same transaction is
/// checked and rolled back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddInventory {
    pub profiles: Vec<NewProfile>,
    pub nodes: Vec<NewNode>,
    /// Where the inventory comes from, for the audit (`warewulf:/etc/warewulf/nodes.conf`).
    pub source: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// What `POST /v1/inventory` added (or, with `dry_run`, would add).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryAdded {
    pub profiles: usize,
    pub nodes: usize,
    /// False for a dry run: nothing was written.
    pub committed: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilePatch {
    pub profiles: Option<Vec<ProfileName>>,
    pub settings: SettingsPatch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetProfiles {
    pub names: Vec<ProfileName>,
    pub patch: ProfilePatch,
}

/// Names to delete (nodes or profiles, by route).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Names {
    pub names: Vec<String>,
}

/// How many records a write changed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Changed {
    pub changed: usize,
}

/// A node's TPM identity (`GET /v1/tpm`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmView {
    pub node: NodeName,
    /// `registered` or `pending` (discovered, awaiting `ferry node approve`).
    pub state: String,
    /// `sha256:` + hex of the EK's SubjectPublicKeyInfo DER.
    pub fingerprint: String,
    /// Whether an EK certificate vouched for the key.
    pub certified: bool,
    pub updated_at: String,
    /// The last *other* TPM that proved itself for this node (passing every other
    /// factor) while this one was held: refused, kept here for the admin to compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// `POST /v1/nodes/{name}/tpm/approve`: approves exactly this pending EK.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmApprove {
    /// `sha256:<hex>` as `ferry node tpm` shows it, compared with the node's own TPM.
    pub fingerprint: String,
}

/// `GET /v1/nodes/{name}/tpm/quote`: the node's latest quote that verified
/// cryptographically (its registered TPM; signature and nonce good), even if its PCR
/// policy refused it. PCR values are not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuoteView {
    pub node: NodeName,
    /// The registered EK whose credential the quoting AK activated.
    pub ek_fingerprint: String,
    /// The PCR bank (`sha256`).
    pub bank: String,
    /// Every PCR quoted (the selection): index → value, lower-case hex.
    pub pcrs: BTreeMap<u8, String>,
    /// When the server verified it (RFC 3339) and the same as Unix seconds, which an
    /// approval names so that only this very quote is pinned.
    pub recorded_at: String,
    pub recorded_at_secs: i64,
    /// Which boot: the TPM's reset count (boots since it was cleared) and restart count.
    pub reset_count: u32,
    pub restart_count: u32,
    /// The address the enrollment came from.
    pub client: String,
}

/// `POST /v1/nodes/{name}/tpm/learn`: the admin approves exactly the quote they were
/// shown (its time and values); it is pinned on the node, or on `profile` (which the
/// node must use) for every node of that profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmLearn {
    pub recorded_at_secs: i64,
    pub pcrs: BTreeMap<u8, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileName>,
}

/// What `learn` pinned, and where (`node/NAME` or `profile/NAME`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpmLearned {
    pub pinned_on: String,
    pub pcrs: BTreeMap<u8, String>,
}

/// `PUT /v1/nodes/{name}/tpm`: exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmRegister {
    /// The EK public key, PEM (`tpm2_createek -f pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_pem: Option<String>,
    /// The EK certificate, DER in standard base64; verified against the CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
}

/// `PUT /v1/secrets/{name}`: the value (standard base64, any bytes) and its scope
/// (neither: global; at most one of node and profile).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSet {
    pub value: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileName>,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    /// `global`, `profile/NAME` or `node/NAME`.
    pub scope: String,
    pub size: u64,
    pub updated_at: String,
}

/// A ferry server sharing the store (`ferry server list`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerView {
    pub id: String,
    /// Its WireGuard listener, `host:port`.
    pub endpoint: String,
    pub public_key: String,
    /// The id of its sealing key (16 hex digits, derived from the key, not the key):
    /// every server of a store shows the same one. Empty: registered by an older ferry.
    #[serde(default)]
    pub sealing_key_id: String,
    pub started_at: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: i64,
    /// Heartbeat within `[cluster] lost_after_secs` of the server answering.
    pub alive: bool,
    /// Tunnels whose peers are on its device.
    pub active_tunnels: i64,
    /// The server that answered the listing.
    pub this: bool,
}

/// `GET /v1/status`. The fields are in alphabetical order, as the server has always
/// sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub nodes: usize,
    pub profiles: usize,
    /// The answering server's ferry version.
    pub version: String,
}

/// `GET /v1/server`: the server answering. Alphabetical order, as always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its data directory, where `ferry image import` puts artifacts.
    pub data_dir: String,
    /// `sha256:` + hex of the provisioning TLS certificate (what agents pin), when that
    /// listener is on.
    pub provisioning_tls_pin: Option<String>,
    /// Its static WireGuard public key (base64), what nodes pin.
    pub public_key: String,
    /// `[provisioning] public_url`, when set.
    pub public_url: Option<String>,
    /// Its address in the tunnel network.
    pub server_address: String,
    pub server_id: String,
    /// The tunnel network (CIDR).
    pub tunnel_network: String,
    /// How it runs (`ferry doctor` checks the host against it); absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<ServerSetup>,
}

/// How the answering server runs: what it listens on, its WireGuard device, its store,
/// its clock. `ferry doctor` compares the host with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSetup {
    pub version: String,
    /// Unix seconds on the server's clock when it answered.
    pub now: i64,
    /// `sqlite` or `postgres`.
    pub store: String,
    pub wireguard_interface: String,
    /// `kernel`, `userspace` or `uapi`: the backend the device runs on.
    pub wireguard_backend: String,
    /// `[wireguard] backend` as configured: `auto` or one of the above.
    pub wireguard_backend_configured: String,
    pub wireguard_listen_port: u16,
    /// `host:port` of each listener.
    pub provisioning_listen: String,
    pub provisioning_tls_listen: Option<String>,
    /// The provisioning TLS certificate file (configured, or the self-signed one).
    pub provisioning_tls_cert: Option<String>,
    pub datasource_listen: String,
    pub remote_admin_listen: Option<String>,
    pub remote_admin_tls_cert: Option<String>,
    /// `[cluster] lost_after_secs`.
    pub lost_after_secs: u64,
}

/// One active tunnel as `ferry tunnel list` shows it (`GET /v1/tunnels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelView {
    pub node: NodeName,
    /// The node's tunnel address.
    pub address: String,
    /// The node's WireGuard public key (base64).
    pub public_key: String,
    pub age_secs: i64,
    pub expires_in_secs: i64,
    /// RFC 3339; `None` before the first handshake, and for other servers' peers.
    pub last_handshake: Option<String>,
    /// Whether the peer is on the answering server's device (only that one is visible).
    pub on_device: bool,
    /// Which server's device holds the peer.
    pub server: String,
    /// Whether that is the server answering.
    pub mine: bool,
}

/// What a node reported when it last phoned home (`GET /v1/nodes/{name}/boot`; `null`
/// for a node that never did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootInfo {
    pub node: NodeName,
    pub booted_at: String,
    /// Its tunnel address during that boot.
    pub address: String,
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    /// The fully qualified name it reported (cloud-init's `fqdn`).
    #[serde(default)]
    pub fqdn: Option<String>,
    pub boot_count: i64,
    /// Its SSH host keys, one `known_hosts` key each (`ssh-ed25519 AAAA… root@host`).
    pub host_keys: Vec<String>,
}

/// One SSH host key a node reported at phone-home (`GET /v1/known-hosts`), with the
/// names and addresses ssh may reach the node by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownHost {
    pub node: NodeName,
    /// The FQDN it reported, only when that is one of its own names (its first label is
    /// the node's name): a node cannot have its key vouched for another host's name.
    pub fqdn: Option<String>,
    /// Its inventory IP addresses.
    pub addresses: Vec<String>,
    /// `ssh-ed25519 AAAA… root@host`.
    pub key: String,
}

/// One audit log entry (`GET /v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

/// `GET /v1/audit?subject=node/n001&limit=N&since=T&after=ID`. In these queries an
/// absent field is no parameter at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// `node/NAME`, `profile/NAME`, `token/NAME`, ...
    pub subject: Option<String>,
    /// At most this many entries; absent: 100.
    pub limit: Option<i64>,
    /// Entries at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Entries after this id, oldest first (following the log).
    pub after: Option<i64>,
}

/// `GET /v1/nodes/{name}?merged=true`: the effective values with their sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeQuery {
    #[serde(default)]
    pub merged: bool,
}

/// `GET /v1/tpm?node=NAME`: one node's TPM only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuery {
    pub node: Option<String>,
}

/// `DELETE /v1/secrets/{name}?node=NAME` (or `?profile=NAME`; neither: global).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretScopeQuery {
    pub node: Option<String>,
    pub profile: Option<String>,
}

/// `POST /v1/tokens` (unix socket only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreate {
    pub name: String,
    /// `viewer`, `operator` or `admin` (checked by the server, which says which).
    pub role: String,
    /// Seconds from now; absent: never.
    pub expires_in_secs: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the token, shown this once (the store keeps its
/// SHA-256 only). Alphabetical order, as always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub name: String,
    pub role: ferry_core::access::Role,
    pub token: Secret,
}

/// An admin token as listings show it (`GET /v1/tokens`): never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: ferry_core::access::Role,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// active, expired or revoked.
    pub state: String,
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
