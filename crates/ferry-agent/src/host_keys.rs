//! Fetch mode: the node's SSH host keys certified through the tunnel before phone-home
//! (issue 18). The agent (optionally) makes an ed25519 host key in `--ssh-dir` — the
//! initramfs uses `/run/ferry/ssh`, copied into the new root's /etc/ssh before
//! switch_root — sends the public keys (never a private key) to the datasource, and
//! writes the certificates it gets, an sshd drop-in that presents them, and what the
//! node's own ssh needs to trust the cluster's host CA (the CA lines, the revoked keys,
//! an ssh_config drop-in). The server decides the names; the agent only checks that
//! each answer is a host certificate of the key it sent.
//!
//! A failure here is a warning, not a failed boot: the node then has no certificate,
//! and clients that trust only the CA refuse its host key (they fail closed).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::ssh::{HOST_CERTIFICATES_PATH, NODE_KNOWN_HOSTS_PATH, NODE_REVOKED_KEYS_PATH, NODE_USER_CA_KEYS_PATH};
use ferry_core::ssh::{self as rules, HOST_KEY_TYPES};
use ssh_key::certificate::CertType;
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};

use crate::http::{join, Request, Transport};
use crate::machine::{Agent, Lease};
use crate::retry::RetryPolicy;
use crate::tunnel::TunnelFactory;

/// What the agent does with the node's SSH host keys in fetch mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HostKeys {
    /// Have the host keys found in --ssh-dir certified.
    #[default]
    Certify,
    /// Make an ed25519 host key in --ssh-dir if there is none, then certify.
    Generate,
    /// Leave SSH alone.
    Off,
}

/// Where sshd finds the files on the booted node (the drop-in names them).
const NODE_SSH_DIR: &str = "/etc/ssh";

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Writes a file (replacing it) with `mode`, through a temporary name.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("ferry-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io("cannot write", path, e))
}

fn make_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|e| io("cannot create", dir, e))
}

/// Makes `ssh_host_ed25519_key` (0600) and its `.pub` in `dir` unless it exists.
pub fn generate_ed25519(dir: &Path, node: &str) -> Result<bool, String> {
    let private = dir.join("ssh_host_ed25519_key");
    if private.exists() {
        return Ok(false);
    }
    make_dir(dir)?;
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).map_err(|e| e.to_string())?;
    key.set_comment(format!("root@{node}"));
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| e.to_string())?;
    let public = key.public_key().to_openssh().map_err(|e| e.to_string())?;
    write_file(&private, pem.as_bytes(), 0o600)?;
    write_file(&dir.join("ssh_host_ed25519_key.pub"), format!("{public}\n").as_bytes(), 0o644)?;
    Ok(true)
}

/// The host public keys in `dir`, by type: `(type, public key)`.
pub fn read_host_keys(dir: &Path) -> Vec<(&'static str, PublicKey)> {
    let mut out = Vec::new();
    for kind in HOST_KEY_TYPES {
        let path = dir.join(format!("ssh_host_{kind}_key.pub"));
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        match PublicKey::from_openssh(text.trim()) {
            Ok(key) => out.push((kind, key)),
            Err(e) => tracing::warn!("{}: not an SSH public key ({e}); not certified", path.display()),
        }
    }
    out
}

/// Checks the server's answer: one host certificate per key, each of that key.
pub fn check_certificates(keys: &[(&'static str, PublicKey)], answer: &str) -> Result<Vec<Certificate>, String> {
    let lines: Vec<&str> = answer.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.len() != keys.len() {
        return Err(format!("asked for {} certificates, got {}", keys.len(), lines.len()));
    }
    let mut out = Vec::new();
    for ((kind, key), line) in keys.iter().zip(lines) {
        let cert = Certificate::from_openssh(line).map_err(|e| format!("the {kind} answer is no certificate: {e}"))?;
        if cert.cert_type() != CertType::Host || cert.public_key() != key.key_data() {
            return Err(format!("the {kind} answer is not a host certificate of the {kind} key sent"));
        }
        out.push(cert);
    }
    Ok(out)
}

/// The user CAs the server sent (one public key per line, none when the cluster has
/// none), checked: sshd would refuse a malformed file and no certificate would log in.
pub fn check_user_cas(answer: &str) -> Result<Vec<String>, String> {
    let lines: Vec<String> = answer.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    for line in &lines {
        PublicKey::from_openssh(line).map_err(|e| format!("a user CA line is no public key: {e}"))?;
    }
    Ok(lines)
}

/// Writes the certificates, the sshd drop-in, the CA lines, the revoked keys, the user
/// CAs (when there are any) and the ssh_config drop-in into `dir` (paths in the
/// drop-ins are the node's /etc/ssh).
pub fn install(
    dir: &Path,
    certificates: &[(&'static str, Certificate)],
    known_hosts: &str,
    revoked: &str,
    user_cas: &[String],
) -> Result<Vec<PathBuf>, String> {
    make_dir(dir)?;
    let mut written = Vec::new();
    let mut node_paths = Vec::new();
    for (kind, cert) in certificates {
        let name = format!("ssh_host_{kind}_key-cert.pub");
        let line = cert.to_openssh().map_err(|e| e.to_string())?;
        write_file(&dir.join(&name), format!("{line}\n").as_bytes(), 0o644)?;
        written.push(dir.join(&name));
        node_paths.push(format!("{NODE_SSH_DIR}/{name}"));
    }
    let file = |absolute: &str| dir.join(Path::new(absolute).file_name().unwrap_or_default());
    let mut files = vec![
        (dir.join(rules::SSHD_DROP_IN_NAME), rules::sshd_drop_in(&node_paths, !user_cas.is_empty())),
        (file(rules::NODE_KNOWN_HOSTS_FILE), known_hosts.to_owned()),
        (file(rules::NODE_REVOKED_KEYS_FILE), revoked.to_owned()),
        (dir.join(rules::SSH_DROP_IN_NAME), rules::SSH_CONFIG_DROP_IN.to_owned()),
    ];
    if !user_cas.is_empty() {
        files.push((file(rules::NODE_USER_CA_KEYS_FILE), user_cas.iter().map(|l| format!("{l}\n")).collect()));
    }
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            make_dir(parent)?;
        }
        write_file(&path, text.as_bytes(), 0o644)?;
        written.push(path);
    }
    Ok(written)
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// Fetch mode, before phone-home (the tunnel closes with it): have the host keys
    /// certified and install what sshd and ssh need. Never fails the boot.
    pub(crate) async fn certify_host_keys(&self, lease: &Lease) {
        if self.cfg.host_keys == HostKeys::Off {
            return;
        }
        match self.try_certify(lease).await {
            Ok(0) => tracing::info!(dir = %self.cfg.ssh_dir.display(), "no SSH host keys to certify"),
            Ok(n) => tracing::info!(certificates = n, dir = %self.cfg.ssh_dir.display(), "SSH host keys certified"),
            Err(why) => tracing::warn!(
                "SSH host keys not certified: {why}; clients that trust only ferry's host CA will refuse this \
                 node until it boots with a certificate"
            ),
        }
    }

    async fn try_certify(&self, lease: &Lease) -> Result<usize, String> {
        let dir = &self.cfg.ssh_dir;
        if self.cfg.host_keys == HostKeys::Generate && generate_ed25519(dir, &lease.node)? {
            tracing::info!(dir = %dir.display(), "made an ed25519 SSH host key");
        }
        let keys = read_host_keys(dir);
        if keys.is_empty() {
            return Ok(0);
        }
        let body: String = keys.iter().map(|(_, k)| k.to_openssh().unwrap_or_default() + "\n").collect();
        let url = format!(
            "{}?node={}",
            join(&lease.datasource_url, HOST_CERTIFICATES_PATH.trim_start_matches('/')),
            lease.node
        );
        let answer = self.tunnel_text(Request::post_text(url, body, self.request_timeout())).await?;
        let certs = check_certificates(&keys, &answer)?;
        let known_hosts = self.tunnel_text(self.tunnel_get(lease, NODE_KNOWN_HOSTS_PATH)).await?;
        let revoked = self.tunnel_text(self.tunnel_get(lease, NODE_REVOKED_KEYS_PATH)).await?;
        let user_cas = check_user_cas(&self.tunnel_text(self.tunnel_get(lease, NODE_USER_CA_KEYS_PATH)).await?)?;
        let kinds = keys.iter().map(|(kind, _)| *kind).zip(certs).collect::<Vec<_>>();
        install(dir, &kinds, &known_hosts, &revoked, &user_cas)?;
        Ok(kinds.len())
    }

    fn request_timeout(&self) -> Duration {
        self.deadline.cap(self.cfg.tuning.request_timeout)
    }

    fn tunnel_get(&self, lease: &Lease, path: &str) -> Request {
        Request::get(join(&lease.datasource_url, path.trim_start_matches('/')), self.request_timeout())
    }

    /// One request through the tunnel, retried on 429/5xx and unanswered requests until
    /// `--timeout`; the answer's text.
    async fn tunnel_text(&self, req: Request) -> Result<String, String> {
        let req = req.via(&self.cfg.interface);
        let mut retry = RetryPolicy::new(self.cfg.tuning.probe_initial, Duration::from_secs(2));
        loop {
            let (last, retry_after) = match self.transport.send(req.clone()).await {
                Ok(r) if r.is_success() => {
                    return String::from_utf8(r.body).map_err(|_| format!("{}: the answer is not text", req.url))
                }
                Ok(r) if r.status == 429 || r.status >= 500 => (format!("HTTP {}", r.status), r.retry_after),
                Ok(r) => return Err(format!("{}: HTTP {}: {}", req.url, r.status, r.error_text())),
                Err(e) => (e.0, None),
            };
            if !retry.wait(retry_after, &self.deadline).await {
                return Err(format!("{}: {last}", req.url));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_and_certificates_must_match_the_keys_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        assert!(generate_ed25519(&ssh, "n1").unwrap());
        assert!(!generate_ed25519(&ssh, "n1").unwrap(), "an existing key is kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ssh.join("ssh_host_ed25519_key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let keys = read_host_keys(&ssh);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].1.comment(), "root@n1");

        // A certificate of the key, signed by some CA.
        let ca = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        let sign = |key: &PublicKey, kind: CertType| {
            let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
                &mut rand::rngs::OsRng,
                key.key_data().clone(),
                0,
                u64::MAX >> 2,
            )
            .unwrap();
            b.cert_type(kind).unwrap().valid_principal("n1").unwrap();
            b.sign(&ca).unwrap().to_openssh().unwrap()
        };
        let good = sign(&keys[0].1, CertType::Host);
        assert_eq!(check_certificates(&keys, &format!("{good}\n")).unwrap().len(), 1);
        let other = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        for (answer, why) in [
            (sign(other.public_key(), CertType::Host), "not a host certificate of the ed25519 key"),
            (sign(&keys[0].1, CertType::User), "not a host certificate"),
            ("garbage".to_owned(), "is no certificate"),
            (format!("{good}\n{good}"), "asked for 1 certificates, got 2"),
        ] {
            let e = check_certificates(&keys, &answer).unwrap_err();
            assert!(e.contains(why), "{e}");
        }

        let certs = vec![("ed25519", Certificate::from_openssh(&good).unwrap())];
        install(&ssh, &certs, "@cert-authority * ssh-ed25519 AAAACA\n", "", &[]).unwrap();
        let drop_in = std::fs::read_to_string(ssh.join("sshd_config.d/ferry-host-certificates.conf")).unwrap();
        assert!(drop_in.contains("HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n"), "{drop_in}");
        assert!(!drop_in.contains("TrustedUserCAKeys") && !ssh.join("ferry_user_ca_keys").exists(), "no user CA");
        assert_eq!(std::fs::read_to_string(ssh.join("ssh_host_ed25519_key-cert.pub")).unwrap(), format!("{good}\n"));
        assert_eq!(
            std::fs::read_to_string(ssh.join("ferry_known_hosts")).unwrap(),
            "@cert-authority * ssh-ed25519 AAAACA\n"
        );
        assert_eq!(std::fs::read_to_string(ssh.join("ferry_revoked_keys")).unwrap(), "");
        let ssh_conf = std::fs::read_to_string(ssh.join("ssh_config.d/ferry-known-hosts.conf")).unwrap();
        assert!(ssh_conf.contains("RevokedHostKeys /etc/ssh/ferry_revoked_keys"), "{ssh_conf}");
    }

    #[test]
    fn user_ca_lines_must_be_public_keys() {
        let ca = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519).unwrap();
        let line = ca.public_key().to_openssh().unwrap();
        assert_eq!(check_user_cas(&format!("\n{line}\n\n")).unwrap(), [line]);
        assert!(check_user_cas("").unwrap().is_empty());
        assert!(check_user_cas("<html>not found</html>").unwrap_err().contains("no public key"));
    }
}
