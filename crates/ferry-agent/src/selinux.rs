//! Loading the image's SELinux policy while its root is unpacked.
//!
//! On a tmpfs the kernel labels files by type transition (`fs_use_trans`), not from their
//! `security.selinux` attributes: a label written before a policy is loaded is ignored,
//! and one written after becomes the file's label at once. So the agent loads the
//! image's own policy as soon as `etc/selinux` is unpacked (the image archive holds it
//! first), and the unpacker writes every label after that: the node boots labelled as
//! the image was built, with no relabelling (no `restorecon`, no `/.autorelabel`).
//!
//! What `load_policy` would do, for the image rather than for the initramfs: mount
//! selinuxfs, read `etc/selinux/config` (`SELINUX=`, `SELINUXTYPE=`), write the highest
//! `policy.N` the kernel takes to `/sys/fs/selinux/load`. The unpack runs permissive;
//! the mode the kernel command line (`enforcing=`) or the config asks for is set once
//! the whole root is in place. Nothing happens when the kernel runs without SELinux
//! (`security=selinux selinux=1` not given), or when the image has no policy or
//! disables it.

use std::path::{Path, PathBuf};

/// Where the kernel offers selinuxfs (present when SELinux is enabled).
const SELINUXFS: &str = "/sys/fs/selinux";

/// A policy this agent loaded, and the mode to set once the root is unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub policy: PathBuf,
    pub enforcing: bool,
}

/// The image's SELinux configuration (`etc/selinux/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// `enforcing`, `permissive` or `disabled`.
    pub mode: String,
    pub policy_type: String,
}

pub fn parse_config(text: &str) -> Option<ImageConfig> {
    let mut mode = None;
    let mut policy_type = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        match line.split_once('=') {
            Some(("SELINUX", v)) => mode = Some(v.trim().to_ascii_lowercase()),
            Some(("SELINUXTYPE", v)) => policy_type = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    Some(ImageConfig { mode: mode?, policy_type: policy_type? })
}

/// `enforcing=0|1` on the kernel command line, which wins over the image's config.
pub fn cmdline_enforcing(cmdline: &str) -> Option<bool> {
    cmdline.split_whitespace().find_map(|a| a.strip_prefix("enforcing=")).map(|v| v != "0")
}

/// The highest `policy.N` in `dir` that the kernel (policy version `max`) takes.
pub fn pick_policy(dir: &Path, max: u32) -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some(v) = name.to_str().and_then(|n| n.strip_prefix("policy.")).and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        if v <= max && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

fn write(path: &str, value: &[u8]) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {path}: {e}"))
}

/// Loads the policy of the image being unpacked at `root`, leaving the kernel
/// permissive until [`finish`]. `None`: nothing to load (see the module's documentation).
pub fn load(root: &Path) -> Result<Option<Loaded>, String> {
    if !Path::new(SELINUXFS).is_dir() {
        return Ok(None);
    }
    let config_path = root.join("etc/selinux/config");
    let Ok(text) = std::fs::read_to_string(&config_path) else {
        tracing::warn!("the kernel runs SELinux but the image has no /etc/selinux/config: no policy loaded");
        return Ok(None);
    };
    let config = parse_config(&text).ok_or("the image's /etc/selinux/config names no SELINUX= or SELINUXTYPE=")?;
    if config.mode == "disabled" {
        tracing::info!("the image disables SELinux (SELINUX=disabled): no policy loaded");
        return Ok(None);
    }
    if !Path::new(SELINUXFS).join("enforce").exists() {
        nix::mount::mount(Some("selinuxfs"), SELINUXFS, Some("selinuxfs"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| format!("cannot mount selinuxfs on {SELINUXFS}: {e}"))?;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let enforcing = cmdline_enforcing(&cmdline).unwrap_or(config.mode == "enforcing");
    let max: u32 = std::fs::read_to_string(format!("{SELINUXFS}/policyvers"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or("cannot read the kernel's SELinux policy version")?;
    let dir = root.join("etc/selinux").join(&config.policy_type).join("policy");
    let policy = pick_policy(&dir, max).ok_or_else(|| {
        format!("the image has no SELinux policy for this kernel (policy.N, N <= {max}) in {}", dir.display())
    })?;
    // Permissive while the root is unpacked (allowed before any policy is loaded).
    write(&format!("{SELINUXFS}/enforce"), b"0")?;
    let bytes = std::fs::read(&policy).map_err(|e| format!("cannot read {}: {e}", policy.display()))?;
    write(&format!("{SELINUXFS}/load"), &bytes)?;
    let shown = PathBuf::from("/").join(policy.strip_prefix(root).unwrap_or(&policy));
    tracing::info!(policy = %shown.display(), enforcing, "SELinux policy of the image loaded");
    Ok(Some(Loaded { policy: shown, enforcing }))
}

/// Sets the mode the node boots in, once the whole root carries its labels.
pub fn finish(loaded: &Loaded) -> Result<(), String> {
    write(&format!("{SELINUXFS}/enforce"), if loaded.enforcing { b"1" } else { b"0" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_cmdline_and_policy_choice() {
        let c = parse_config("# comment\nSELINUX=enforcing\nSELINUXTYPE=default\nSETLOCALDEFS=0\n").unwrap();
        assert_eq!(c, ImageConfig { mode: "enforcing".into(), policy_type: "default".into() });
        assert!(parse_config("SELINUX=permissive\n").is_none());
        assert_eq!(cmdline_enforcing("quiet security=selinux selinux=1 enforcing=1"), Some(true));
        assert_eq!(cmdline_enforcing("enforcing=0"), Some(false));
        assert_eq!(cmdline_enforcing("selinux=1"), None);
        let dir = tempfile::tempdir().unwrap();
        for v in ["31", "33", "35", "x"] {
            std::fs::write(dir.path().join(format!("policy.{v}")), b"").unwrap();
        }
        assert_eq!(pick_policy(dir.path(), 33), Some(dir.path().join("policy.33")));
        assert_eq!(pick_policy(dir.path(), 32), Some(dir.path().join("policy.31")));
        assert_eq!(pick_policy(dir.path(), 30), None);
    }
}
