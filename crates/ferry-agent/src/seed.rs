//! Writing the NoCloud seed and other private files.
//!
//! The seed directory is replaced as a whole: the documents are written into a fresh
//! sibling directory (0700, files 0600) which is then renamed into place, so a reader
//! never sees a half-written seed, and a document absent this time (say network-config)
//! cannot survive from an earlier run.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The NoCloud documents, and whether the seed is useless without them. A 404 for an
/// optional one means "absent": it is not written.
pub const DOCUMENTS: [(&str, bool); 4] =
    [("meta-data", true), ("user-data", true), ("vendor-data", false), ("network-config", false)];

/// The `ds=` line for a seed directory.
pub fn file_ds_line(seed_dir: &Path) -> String {
    let dir = std::path::absolute(seed_dir).unwrap_or_else(|_| seed_dir.to_path_buf());
    let dir = dir.to_string_lossy();
    format!("ds=nocloud;s=file://{}/", dir.trim_end_matches('/'))
}

/// The `ds=` line for a datasource URL (with the trailing slash cloud-init needs).
/// `nocloud-net`: cloud-init 22.4 (Debian 12) reads plain `ds=nocloud` as local mode and
/// then applies nothing it fetched over the network; later versions accept both.
pub fn url_ds_line(url: &str) -> String {
    let slash = if url.ends_with('/') { "" } else { "/" };
    format!("ds=nocloud-net;s={url}{slash}")
}

/// Creates `dir` and missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), AgentError> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| AgentError::io_path("create", dir, e))
}

fn sibling(dir: &Path, tag: &str) -> Result<PathBuf, AgentError> {
    let name = dir
        .file_name()
        .ok_or_else(|| AgentError::Config(format!("{} is not a usable directory name", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.{tag}-{}", name.to_string_lossy(), std::process::id())))
}

/// Writes `docs` as the new content of `dir` (0700), each file 0600, atomically.
pub fn write_seed(dir: &Path, docs: &[(&str, Vec<u8>)]) -> Result<(), AgentError> {
    let staging = sibling(dir, "new")?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| AgentError::io_path("remove", &staging, e))?;
    }
    DirBuilder::new().mode(0o700).create(&staging).map_err(|e| AgentError::io_path("create", &staging, e))?;
    let written = (|| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io_path("set the mode of", &staging, e))?;
        for (name, body) in docs {
            write_new_file(&staging.join(name), body)?;
        }
        if dir.exists() {
            let old = sibling(dir, "old")?;
            std::fs::rename(dir, &old).map_err(|e| AgentError::io_path("move aside the old seed", dir, e))?;
            std::fs::rename(&staging, dir).map_err(|e| AgentError::io_path("move the new seed to", dir, e))?;
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!("could not remove the previous seed {}: {e}", old.display());
            }
        } else {
            std::fs::rename(&staging, dir).map_err(|e| AgentError::io_path("move the new seed to", dir, e))?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_new_file(path: &Path, body: &[u8]) -> Result<(), AgentError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AgentError::io_path("create", path, e))?;
    f.write_all(body).and_then(|()| f.sync_all()).map_err(|e| AgentError::io_path("write", path, e))
}

/// Replaces `path` atomically with a 0600 file holding `body`.
pub fn write_private_file(path: &Path, body: &[u8]) -> Result<(), AgentError> {
    let tmp = sibling(path, "tmp")?;
    let _ = std::fs::remove_file(&tmp);
    write_new_file(&tmp, body)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        AgentError::io_path("write", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn seed_has_private_modes_and_replaces_the_old_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("run/ferry/seed");
        write_seed(&dir, &[("meta-data", b"instance-id: a\n".to_vec()), ("network-config", b"v: 2".to_vec())])
            .expect("first");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("run/ferry")), 0o700);
        assert_eq!(mode(&dir.join("meta-data")), 0o600);
        assert_eq!(mode(&dir.join("network-config")), 0o600);
        write_seed(&dir, &[("meta-data", b"instance-id: b\n".to_vec()), ("user-data", b"#cloud-config\n".to_vec())])
            .expect("second");
        assert_eq!(std::fs::read(dir.join("meta-data")).expect("read"), b"instance-id: b\n");
        assert!(!dir.join("network-config").exists(), "a stale document survived");
        assert_eq!(mode(&dir.join("user-data")), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("run/ferry"))
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "seed")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn private_file_is_0600_and_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("agent.json");
        write_private_file(&path, b"1").expect("write");
        write_private_file(&path, b"2").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"2");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn ds_lines() {
        assert_eq!(file_ds_line(Path::new("/run/ferry/seed")), "ds=nocloud;s=file:///run/ferry/seed/");
        assert_eq!(file_ds_line(Path::new("/run/ferry/seed/")), "ds=nocloud;s=file:///run/ferry/seed/");
        assert_eq!(url_ds_line("http://10.1.0.1:8081/"), "ds=nocloud-net;s=http://10.1.0.1:8081/");
        assert_eq!(url_ds_line("http://10.1.0.1:8081"), "ds=nocloud-net;s=http://10.1.0.1:8081/");
    }
}
