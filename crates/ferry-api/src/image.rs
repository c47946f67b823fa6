//! Boot images as the admin API speaks of them.

use serde::{Deserialize, Serialize};

/// One content-addressed artifact: its SHA-256 (hex) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
}

impl Artifact {
    /// Checks the digest is 64 lowercase hex characters (it becomes a file name).
    pub fn valid(&self) -> bool {
        self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub name: String,
    pub kernel: Artifact,
    pub initrd: Artifact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_zst: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_gz: Option<Artifact>,
    #[serde(default)]
    pub created_at: String,
}
