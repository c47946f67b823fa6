//! `Fetched → Unpacked` (fetch mode with `--image-root`): the node's image root, after
//! the seed and before phone-home.
//!
//! 1. Through the tunnel, `GET /image-key`: the image the node boots, its root
//!    archive's size and SHA-256, and — for a sealed root — its key. Only this node's
//!    tunnel gets them.
//! 2. From the provisioning listener, the archive (`image_download`: resumed with
//!    `Range`, hashed on the way) into `--image-cache`.
//! 3. Refused (exit 7) unless size and digest are the tunnel's — before anything is
//!    unpacked; for a sealed root, also unless the key opens it.
//! 4. Decrypted (every chunk authenticated first), decompressed and unpacked into
//!    `--image-root` with every extended attribute (`ferry_image::root::unpack_file`),
//!    the image's SELinux policy loaded as soon as its files are there (`selinux`). The
//!    cache gives its space back as the unpacking goes (holes punched behind the
//!    reader), so the download costs no memory beyond the unpacked root.

use std::path::{Path, PathBuf};

use base64::Engine;
use ferry_api::image::ImageRootKey;
use ferry_image::root::RootError;
use ferry_image::seal::ImageKey;
use ferry_image::unpack::{UnpackOptions, UnpackReport, XattrPolicy};

use crate::error::AgentError;
use crate::http::Transport;
use crate::image_download::{download, Download};
use crate::machine::{abort, Agent, Lease, State};
use crate::retry::RetryPolicy;
use crate::session::{FetchFailure, Fetched};
use crate::tunnel::{Tunnel, TunnelFactory};

/// Where the image goes (`--image-root`) and where its archive waits (`--image-cache`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTarget {
    pub root: PathBuf,
    pub cache: PathBuf,
}

impl ImageTarget {
    /// `--image-root` and `--image-cache`; an image is unpacked in fetch mode only.
    pub fn from_args(args: &crate::args::AgentArgs) -> Result<Option<ImageTarget>, AgentError> {
        let Some(root) = &args.image_root else { return Ok(None) };
        if args.mode != crate::args::Mode::Fetch {
            return Err(AgentError::Config("--image-root works in fetch mode (--mode fetch) only".into()));
        }
        Ok(Some(ImageTarget { root: root.clone(), cache: args.image_cache.clone() }))
    }
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    pub(crate) async fn unpack_image(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>, meta_data: Vec<u8>) -> State {
        let Some(target) = self.cfg.image.clone() else {
            return State::Unpacked { lease, tunnel, meta_data };
        };
        let body = match self.fetch(&lease, "image-key", true).await {
            Ok(Fetched::Body(body)) => body,
            Ok(Fetched::Absent) => {
                return abort(tunnel, AgentError::Image("the server sent no image key".into())).await
            }
            Err(FetchFailure::ServerLost(e)) => return self.fail_over(tunnel, e).await,
            Err(FetchFailure::Fatal(e)) => return abort(tunnel, AgentError::Image(e.to_string())).await,
        };
        match self.fetch_and_unpack(&target, &body).await {
            Ok(()) => State::Unpacked { lease, tunnel, meta_data },
            Err(e) => {
                let _ = std::fs::remove_file(&target.cache);
                abort(tunnel, e).await
            }
        }
    }

    async fn fetch_and_unpack(&mut self, target: &ImageTarget, body: &[u8]) -> Result<(), AgentError> {
        let answer: ImageRootKey = serde_json::from_slice(body)
            .map_err(|e| AgentError::Protocol(format!("the image key answer is not what a ferry server sends: {e}")))?;
        let key = match (&answer.key, answer.root.sealed) {
            (Some(k), true) => {
                let bytes = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(k.expose())
                        .map_err(|_| AgentError::Protocol("the image key is not base64".into()))?,
                );
                Some(ImageKey::from_slice(&bytes).map_err(|e| AgentError::Protocol(e.to_string()))?)
            }
            (None, false) => None,
            _ => return Err(AgentError::Protocol("the image key answer's key does not match its sealing".into())),
        };
        let mut url = format!("{}{}", self.server().base, answer.path);
        if answer.asset_gate {
            let tag = self.cfg.asset_tag.as_ref().map(|t| t.as_str()).unwrap_or_default();
            url += &format!("?mac={}&asset={}", self.mac, percent(tag));
        }
        tracing::info!(
            image = %answer.image,
            sealed = answer.root.sealed,
            bytes = answer.root.size,
            "downloading the image root from the provisioning listener"
        );
        let d = Download {
            url: url.clone(),
            tls_pins: &self.cfg.tls_pins,
            size: answer.root.size,
            sha256: &answer.root.sha256,
            file: &target.cache,
        };
        let mut retry = RetryPolicy::new(self.cfg.tuning.retry_initial, self.cfg.tuning.retry_max);
        let secs = download(&d, &self.deadline, &mut retry).await?;
        tracing::info!(
            image = %answer.image,
            secs = format!("{secs:.2}"),
            mib_per_s = format!("{:.1}", answer.root.size as f64 / 1048576.0 / secs.max(0.001)),
            "image root downloaded; its size and sha256 are the ones the tunnel gave"
        );
        let target = target.clone();
        let image = answer.image.clone();
        let started = std::time::Instant::now();
        let report = tokio::task::spawn_blocking(move || unpack_root(&target, key))
            .await
            .map_err(|e| AgentError::Image(format!("the unpacking stopped: {e}")))??;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            image = %image,
            entries = report.entries,
            files = report.files,
            bytes = report.file_bytes,
            xattrs = report.xattrs,
            secs = format!("{secs:.2}"),
            mib_per_s = format!("{:.1}", report.file_bytes as f64 / 1048576.0 / secs.max(0.001)),
            "image root unpacked"
        );
        Ok(())
    }
}

/// The file system under `root`: tmpfs keeps every attribute (`user.*` from Linux 6.6),
/// ramfs none.
fn policy_for(root: &Path) -> (XattrPolicy, &'static str) {
    /// `RAMFS_MAGIC` of linux/magic.h (nix names tmpfs's, not ramfs's).
    const RAMFS: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x8584_58f6);
    match nix::sys::statfs::statfs(root).map(|s| s.filesystem_type()) {
        Ok(t) if t == RAMFS => (XattrPolicy::Lenient, "ramfs"),
        Ok(t) if t == nix::sys::statfs::TMPFS_MAGIC => (XattrPolicy::Strict, "tmpfs"),
        _ => (XattrPolicy::Strict, "other"),
    }
}

/// Checks the key, then unpacks the downloaded archive into the root (blocking).
fn unpack_root(target: &ImageTarget, key: Option<ImageKey>) -> Result<UnpackReport, AgentError> {
    let (policy, fs) = policy_for(&target.root);
    let mut loaded = None;
    let mut hook = |root: &Path| -> Result<(), String> {
        if fs == "tmpfs" {
            loaded = crate::selinux::load(root)?;
        } else if Path::new("/sys/fs/selinux").is_dir() {
            tracing::warn!("SELinux needs root=tmpfs (a {fs} keeps no labels): the image's policy is not loaded");
        }
        Ok(())
    };
    let mut opts = UnpackOptions { xattrs: policy, after_first: Some(&mut hook) };
    let report =
        ferry_image::root::unpack_file(&target.cache, &target.root, key.as_ref(), &mut opts).map_err(|e| match e {
            RootError::Key(e) => AgentError::ImageRefused(format!(
                "the key the server delivered does not open the image root ({e}): refused, nothing unpacked"
            )),
            other => AgentError::Image(format!("unpacking into {}: {other}", target.root.display())),
        })?;
    if let Some(l) = &loaded {
        crate::selinux::finish(l).map_err(AgentError::Image)?;
        tracing::info!(enforcing = l.enforcing, "SELinux: every file carries the image's label; mode set");
    }
    let _ = std::fs::remove_file(&target.cache);
    for (namespace, count) in &report.dropped {
        match (namespace.as_str(), fs) {
            ("user", "tmpfs") => tracing::warn!(
                "{count} user.* extended attribute(s) not kept: this kernel's tmpfs takes user.* only from Linux 6.6 on"
            ),
            _ => tracing::warn!(
                "{count} {namespace}.* extended attribute(s) not kept: a {fs} root keeps none (SELinux labels and \
                 file capabilities need root=tmpfs)"
            ),
        }
    }
    Ok(report)
}

/// Percent-encodes a query value (the asset tag iPXE would send).
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_tags_are_percent_encoded() {
        assert_eq!(percent("FERRY-QEMU 1/2&x"), "FERRY-QEMU%201%2F2%26x");
    }
}
