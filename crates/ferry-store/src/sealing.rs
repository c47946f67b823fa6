//! Encryption at rest for secrets kept in the store (asset tags, template secrets).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("secret key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
    #[error("secret key file {path} must be exactly 32 bytes; restore it from backup (sealed secrets cannot be read without it)")]
    KeyLength { path: String },
    #[error("secret key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyMode { path: String, mode: u32 },
    #[error("a sealed secret could not be opened: wrong key file, or the database was altered")]
    Open,
    #[error(
        "this server's sealing key (key id {ours}) is not the key this store's asset tags and secrets are \
         sealed with (key id {store}). Every server on one store needs the same key: copy the cluster's \
         secrets.key from a running server (or point `secrets_key` / --secrets-key at a copy of it) and \
         start again. A single server whose key file was lost must restore it from backup: a new key \
         opens nothing already sealed"
    )]
    WrongKey { ours: String, store: String },
    #[error(
        "this server's sealing key (key id {ours}) opens {opened} of the {total} sealed values in this store \
         (made before sealing keys were recorded), so it is not the key they were sealed with: start with \
         the key that sealed them (restore secrets.key from backup, or copy it from the server that has it). \
         Values it cannot open: {unreadable}"
    )]
    NotTheStoresKey { ours: String, opened: usize, total: usize, unreadable: String },
    #[error(
        "the store's check value for sealing key id {key_id} does not open with the key of that id: the \
         database was altered; restore it from backup"
    )]
    CheckValueAltered { key_id: String },
}

/// What a key id is derived from: `HMAC-SHA256(key, KEY_ID_LABEL)`, a one-way function of
/// the key, so the id names the key without revealing anything about it.
const KEY_ID_LABEL: &[u8] = b"ferry/sealing-key-id/v1";
/// Bytes of that HMAC shown as the key id (16 hex digits).
const KEY_ID_BYTES: usize = 8;

fn key_id(key: &[u8]) -> String {
    // HMAC takes keys of any length; 32 bytes here.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(KEY_ID_LABEL);
    mac.finalize().into_bytes()[..KEY_ID_BYTES].iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals values with XChaCha20-Poly1305 under a 32-byte key kept in a 0600 file. The
/// associated data binds a sealed value to its row (e.g. the node name), so a sealed
/// tag copied onto another node does not open.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    key_id: String,
}

impl Sealer {
    /// Loads the key, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let io = |source| SealError::KeyFile { path: shown.clone(), source };
        let key = match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SealError::KeyMode { path: shown, mode });
                }
                Zeroizing::new(std::fs::read(path).map_err(io)?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new(vec![0u8; 32]);
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(io)?;
                key
            }
            Err(e) => return Err(io(e)),
        };
        if key.len() != 32 {
            return Err(SealError::KeyLength { path: shown });
        }
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| SealError::KeyLength { path: shown })?;
        Ok(Sealer { cipher, key_id: key_id(&key) })
    }

    /// A sealer with a random key, for tests.
    pub fn ephemeral() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        Sealer { cipher: XChaCha20Poly1305::new(key.as_ref().into()), key_id: key_id(key.as_ref()) }
    }

    /// The key's public name (16 hex digits): equal ids mean the same key. Shown by
    /// `ferry server list`, recorded in the store with the key's check value.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption only fails for inputs over ~256 GiB; our values are bounded far below.
        let ct = self.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad }).unwrap_or_default();
        [nonce.as_slice(), &ct].concat()
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 24 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::ephemeral();
        let sealed = s.seal(b"tag-123", b"node:n1");
        assert!(!sealed.windows(7).any(|w| w == b"tag-123"));
        assert_eq!(&s.open(&sealed, b"node:n1").unwrap()[..], b"tag-123");
        assert!(s.open(&sealed, b"node:n2").is_err(), "bound to its row");
        assert!(Sealer::ephemeral().open(&sealed, b"node:n1").is_err(), "bound to its key");
        assert!(s.open(&sealed[..10], b"node:n1").is_err());
    }

    #[test]
    fn key_ids_name_keys_without_revealing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = Sealer::load_or_create(&path).unwrap();
        assert_eq!(a.key_id().len(), 16);
        assert!(a.key_id().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Sealer::load_or_create(&path).unwrap().key_id(), a.key_id(), "same key, same id");
        assert_ne!(Sealer::ephemeral().key_id(), a.key_id(), "another key, another id");
        let key = std::fs::read(&path).unwrap();
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!hex.contains(a.key_id()), "the id is not a piece of the key");
    }

    #[test]
    fn key_file_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = Sealer::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Sealer::load_or_create(&path).unwrap();
        assert_eq!(&b.open(&a.seal(b"x", b""), b"").unwrap()[..], b"x");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Sealer::load_or_create(&path), Err(SealError::KeyMode { .. })));
    }
}
