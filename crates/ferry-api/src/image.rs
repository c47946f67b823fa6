//! Boot images as the admin API and the tunnel datasource speak of them.

use crate::Secret;
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

/// An image's root file system: a tar stream with every extended attribute,
/// zstd-compressed, and — when sealed — encrypted with the image's own key (which only
/// the node's tunnel delivers). The node's agent downloads it after enrolling and
/// unpacks it into its tmpfs root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootArchive {
    /// The stored archive (sealed or not) as it is served: its SHA-256 and size.
    pub sha256: String,
    pub size: u64,
    pub sealed: bool,
    /// Files, directories, links and devices.
    pub entries: u64,
    /// Extended attributes (SELinux labels, file capabilities, ACLs, ...).
    pub xattrs: u64,
    /// Bytes of file content once unpacked.
    pub unpacked_bytes: u64,
}

impl RootArchive {
    /// The stored archive as an artifact.
    pub fn artifact(&self) -> Artifact {
        Artifact { sha256: self.sha256.clone(), size: self.size }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub name: String,
    pub kernel: Artifact,
    pub initrd: Artifact,
    /// The root file system archive (images imported since sealed images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootArchive>,
    /// A root file system as a cpio archive loaded as a second initrd (images imported
    /// before sealed images; no extended attributes). Still booted, no longer made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_zst: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_gz: Option<Artifact>,
    #[serde(default)]
    pub created_at: String,
}

/// `POST /v1/images`: registers an image whose artifacts are in the object store. The
/// root's key (base64, 32 bytes), for a sealed root, is write-only: the server seals it
/// at rest and hands it only to nodes booting the image, inside their tunnels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddImage {
    pub name: String,
    pub kernel: Artifact,
    pub initrd: Artifact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootArchive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key: Option<Secret>,
}

/// `GET /v1/images/{name}/verify`: what the server checked of the image it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVerified {
    /// For a sealed root: the key the store holds opens the stored archive (its header
    /// and first chunk authenticate). `None` for an image without a sealed root.
    pub key_opens_root: Option<bool>,
}

/// The datasource's `GET /image-key`, inside a node's tunnel: how the node gets its
/// image's root and checks it. Only for the image the node boots; never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRootKey {
    pub image: String,
    pub root: RootArchive,
    /// Where the provisioning listener serves the archive (`/boot/images/NAME/root`).
    pub path: String,
    /// The root's key (base64), for a sealed root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// The archive is unsealed and asset-gated: the download must name the node's MAC
    /// and asset tag, as iPXE does.
    #[serde(default)]
    pub asset_gate: bool,
}

impl std::fmt::Debug for ImageRootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRootKey")
            .field("image", &self.image)
            .field("root", &self.root)
            .field("path", &self.path)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("asset_gate", &self.asset_gate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print_and_records_round_trip() {
        let root =
            RootArchive { sha256: "a".repeat(64), size: 7, sealed: true, entries: 3, xattrs: 2, unpacked_bytes: 10 };
        let answer = ImageRootKey {
            image: "rocky9".into(),
            root: root.clone(),
            path: "/boot/images/rocky9/root".into(),
            key: Some(Secret::new("c2VjcmV0".into())),
            asset_gate: false,
        };
        assert!(!format!("{answer:?}").contains("c2VjcmV0"));
        let json = serde_json::to_value(&root).unwrap();
        assert_eq!(json["sha256"], "a".repeat(64), "{json}");
        assert_eq!(serde_json::from_value::<RootArchive>(json).unwrap(), root);
    }
}
