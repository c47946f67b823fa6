//! Template secrets and the key that seals them: what the store keeps about them (never
//! the value, outside sealing) ([`SecretStore`], [`SealingStore`]).

use crate::{Actor, StoreError};
use async_trait::async_trait;
use ferry_core::{NodeName, ProfileName};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Sets (replaces) a template secret; sealed at rest, audited without its value.
    async fn set_secret(&self, name: &str, scope: &SecretScope, value: &[u8], actor: &Actor) -> Result<(), StoreError>;
    async fn delete_secret(&self, name: &str, scope: &SecretScope, actor: &Actor) -> Result<(), StoreError>;
    /// Names, scopes, sizes and times; never values.
    async fn list_secrets(&self) -> Result<Vec<SecretInfo>, StoreError>;
    /// The secrets a node's templates see (node over profiles over global), opened.
    async fn secrets_for(
        &self,
        node: &NodeName,
        profiles: &[ProfileName],
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, StoreError>;
}

#[async_trait]
pub trait SealingStore: Send + Sync {
    /// The id of the sealing key this store handle seals with ([`crate::Sealer::key_id`]).
    fn sealing_key_id(&self) -> &str;
    /// Proves at start-up, before the server registers, that this handle's sealing key is
    /// the store's: it opens the check value recorded for its key id. With no key
    /// recorded yet, records it — on an empty store, or on a store made before keys
    /// were recorded if the key opens most of its sealed values (audited as
    /// `store.sealing-key`). Refused (SealError) when the store records only other keys,
    /// or when the key does not open most of the sealed values.
    async fn check_sealing_key(&self, actor: &Actor) -> Result<SealingKeyCheck, StoreError>;
}

/// How a server's sealing key was found to fit the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealingKeyCheck {
    /// The store's check value for this key id opened with this key.
    Verified,
    /// Nothing was sealed and no key recorded: this key is now the store's.
    Recorded,
    /// A store made before keys were recorded: this key opened most of its sealed values
    /// (`opened`) and is now the store's. `unreadable` names the others, sealed under
    /// another key (no server can deliver them): they must be set again.
    Adopted { opened: usize, unreadable: Vec<String> },
}

/// Binds a sealed asset tag to its node.
pub(crate) fn asset_tag_aad(node: &NodeName) -> String {
    format!("ferry/asset-tag/{node}")
}

pub use ferry_core::model::MAX_SECRET_BYTES;

/// Where a secret applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretScope {
    Global,
    Profile(ProfileName),
    Node(NodeName),
}

impl SecretScope {
    pub fn kind(&self) -> &'static str {
        match self {
            SecretScope::Global => "global",
            SecretScope::Profile(_) => "profile",
            SecretScope::Node(_) => "node",
        }
    }

    pub fn target(&self) -> &str {
        match self {
            SecretScope::Global => "",
            SecretScope::Profile(p) => p.as_str(),
            SecretScope::Node(n) => n.as_str(),
        }
    }

    /// Binds a sealed value to its row: copied elsewhere, it does not open.
    pub(crate) fn aad(&self, name: &str) -> String {
        format!("ferry/secret/{}/{}/{name}", self.kind(), self.target())
    }
}

impl std::fmt::Display for SecretScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretScope::Global => f.write_str("global"),
            other => write!(f, "{}/{}", other.kind(), other.target()),
        }
    }
}

/// A secret as listings show it: name, scope, size, time — no value (the admin API's
/// shape).
pub use ferry_api::admin::SecretView as SecretInfo;
