//! Template secrets: what the store keeps about them (never the value, outside sealing).

use ferry_core::{NodeName, ProfileName};

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
