//! ferry as the cluster's SSH host certificate authority: the CA key (ed25519, made on
//! first start and sealed in the store, so every server on a shared store signs with the
//! same CA), and host certificates for a node's own keys. The principals come from the
//! node's merged inventory settings ([`ferry_core::ssh::host_principals`]), never from
//! the request; the key ID names the node and its boot; the serial is random. Formats
//! and signatures are RustCrypto's `ssh-key` (no SSH wire format of our own).

use crate::error::HttpError;
use axum::http::StatusCode;
use ferry_api::admin::MergedNodeView;
use ferry_api::ErrorKind;
use ferry_store::ssh_ca::SshCaPurpose;
use ferry_store::{format_time, now_secs, Actor, NewSshCertificate, SshCaRecord, SshIssueRefusal, Store, TunnelRecord};
use rand::RngCore;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Certificates are valid from a little before they are issued, for nodes whose clock
/// is behind (the node's clock is not set until it booted).
const BACKDATE_SECS: u64 = 300;

/// A fresh CA key pair: the OpenSSH public key line and private key (PEM).
pub fn new_ca_key(purpose: SshCaPurpose) -> Result<(String, Zeroizing<String>), anyhow::Error> {
    let mut key = PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)?;
    key.set_comment(format!("ferry-{purpose}-ca-{}", now_secs()));
    let public = key.public_key().to_openssh()?;
    let private = key.to_openssh(LineEnding::LF)?;
    Ok((public, private))
}

/// Makes sure the store has a host CA (the first server to start makes it; the others
/// find it). Logs its fingerprint.
pub async fn ensure_host_ca(store: &dyn Store, server_id: &str) -> anyhow::Result<SshCaRecord> {
    let (public, private) = new_ca_key(SshCaPurpose::Host)?;
    let actor = Actor(format!("server:{server_id}"));
    let (ca, made) = store.ensure_ssh_ca(SshCaPurpose::Host, &public, private.as_bytes(), &actor).await?;
    let fingerprint = PublicKey::from_openssh(&ca.public_key).map(|k| k.fingerprint(HashAlg::Sha256).to_string());
    let fingerprint = fingerprint.unwrap_or_else(|e| format!("unreadable: {e}"));
    match made {
        true => {
            tracing::info!(ca = ca.id, %fingerprint, "made the SSH host CA (`ferry ssh known-hosts` prints its lines)")
        }
        false => tracing::debug!(ca = ca.id, %fingerprint, "SSH host CA"),
    }
    Ok(ca)
}

/// The host key types ferry certifies, by their `/etc/ssh/ssh_host_<TYPE>_key` name.
fn key_type(algorithm: &Algorithm) -> Option<&'static str> {
    match algorithm {
        Algorithm::Ed25519 => Some("ed25519"),
        Algorithm::Ecdsa { .. } => Some("ecdsa"),
        Algorithm::Rsa { .. } => Some("rsa"),
        _ => None,
    }
}

/// The host public keys of a request: one OpenSSH public key per line (as in
/// `ssh_host_*_key.pub`; comments ignored), at most
/// [`ferry_core::ssh::MAX_HOST_KEYS_PER_REQUEST`], each once, of a type ferry certifies.
pub fn parse_host_keys(body: &str) -> Result<Vec<PublicKey>, String> {
    let lines: Vec<&str> = body.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let max = ferry_core::ssh::MAX_HOST_KEYS_PER_REQUEST;
    if lines.is_empty() || lines.len() > max {
        return Err(format!(
            "send 1 to {max} SSH host public keys, one per line (the contents of /etc/ssh/ssh_host_*_key.pub)"
        ));
    }
    let mut keys: Vec<PublicKey> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut key =
            PublicKey::from_openssh(line).map_err(|e| format!("line {}: not an OpenSSH public key ({e})", i + 1))?;
        if key_type(&key.algorithm()).is_none() {
            return Err(format!(
                "line {}: {} host keys are not certified; use ed25519, ecdsa or rsa",
                i + 1,
                key.algorithm()
            ));
        }
        key.set_comment("");
        if keys.iter().any(|k| k.key_data() == key.key_data()) {
            return Err(format!("line {}: the same key twice", i + 1));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Why a node got no certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    Refused(SshIssueRefusal),
    #[error("the store has no SSH host CA: restart the server (it makes one at start)")]
    NoCa,
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("signing failed: {0}")]
    Sign(#[from] ssh_key::Error),
}

impl From<IssueError> for HttpError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Refused(r) => HttpError::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, r.to_string()),
            IssueError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "SSH host certificate not issued");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Internal,
                    "internal error; see the server log",
                )
            }
        }
    }
}

/// Signs a host certificate for each key, for the node's inventory names, records them
/// (refused for a node whose certificates are revoked, or a key certified for another
/// node), and returns the certificate lines in the keys' order.
pub async fn issue_host_certificates(
    store: &Arc<dyn Store>,
    tunnel: &TunnelRecord,
    node: &MergedNodeView,
    keys: &[PublicKey],
    validity_secs: u64,
) -> Result<Vec<String>, IssueError> {
    let ca = store.ssh_signing_ca(SshCaPurpose::Host).await?.ok_or(IssueError::NoCa)?;
    let ca_key = PrivateKey::from_openssh(&ca.private_key[..])?;
    let principals = ferry_core::ssh::host_principals(&node.name, &node.settings);
    let now = now_secs().max(0) as u64;
    let (valid_after, valid_before) = (now.saturating_sub(BACKDATE_SECS), now + validity_secs);
    let boot = format_time(tunnel.created_at);
    let mut lines = Vec::with_capacity(keys.len());
    let mut records = Vec::with_capacity(keys.len());
    for key in keys {
        let kind = key_type(&key.algorithm()).unwrap_or("unknown");
        // Random 63-bit serials: unique without a counter shared by the servers.
        let serial = rand::rngs::OsRng.next_u64() >> 1;
        let key_id = ferry_core::ssh::host_certificate_key_id(&node.name, &boot, kind);
        let mut builder =
            Builder::new_with_random_nonce(&mut rand::rngs::OsRng, key.key_data().clone(), valid_after, valid_before)?;
        builder.serial(serial)?.cert_type(CertType::Host)?.key_id(key_id.clone())?.comment(node.name.as_str())?;
        for p in &principals {
            builder.valid_principal(p.clone())?;
        }
        let cert = builder.sign(&ca_key)?;
        lines.push(cert.to_openssh()?);
        records.push(NewSshCertificate {
            serial,
            ca_id: ca.ca.id,
            key_id,
            key_type: kind.to_owned(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            public_key: key.to_openssh()?,
            principals: principals.clone(),
            issued_at: now as i64,
            valid_before: valid_before as i64,
        });
    }
    let actor = Actor(format!("node:{}", node.name));
    if let Err(refusal) = store.record_ssh_certificates(&node.name, tunnel.created_at, &records, &actor).await? {
        refused(store.as_ref(), &node.name, &refusal.to_string()).await?;
        return Err(IssueError::Refused(refusal));
    }
    Ok(lines)
}

/// Why an admin got no user certificate.
#[derive(Debug, thiserror::Error)]
pub enum UserCertificateError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the cluster has no SSH user CA: make one with `ferry ssh ca rotate --purpose user`")]
    NoCa,
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("signing failed: {0}")]
    Sign(#[from] ssh_key::Error),
}

impl From<UserCertificateError> for HttpError {
    fn from(e: UserCertificateError) -> Self {
        match e {
            UserCertificateError::BadRequest(why) => HttpError::bad_request(why),
            UserCertificateError::NoCa => HttpError::new(StatusCode::CONFLICT, ErrorKind::Conflict, e.to_string()),
            UserCertificateError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "SSH user certificate not issued");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Internal,
                    "internal error; see the server log",
                )
            }
        }
    }
}

/// Signs a user certificate with the signing user CA: the admin's key may log in as
/// `principals` on nodes that trust the CA, for `validity_secs` (at most
/// [`ferry_core::ssh::MAX_USER_CERTIFICATE_SECS`]). Audited `ssh.user-certificate-issued`.
pub async fn sign_user_certificate(
    store: &dyn Store,
    req: &ferry_api::ssh::SshUserCertificateRequest,
    actor: &Actor,
) -> Result<ferry_api::ssh::SshUserCertificate, UserCertificateError> {
    let bad = |why: String| UserCertificateError::BadRequest(why);
    let max = ferry_core::ssh::MAX_USER_CERTIFICATE_SECS;
    if req.validity_secs == 0 || req.validity_secs > max {
        return Err(bad(format!("a user certificate's validity is 1 s to {max} s (7 days); ask for a shorter one")));
    }
    if req.principals.is_empty() || req.principals.len() > 16 {
        return Err(bad("name 1 to 16 login names (--principal) the certificate may log in as".into()));
    }
    for p in &req.principals {
        ferry_core::ssh::check_login_name(p).map_err(|e| bad(e.to_string()))?;
    }
    let mut key = PublicKey::from_openssh(req.public_key.trim())
        .map_err(|e| bad(format!("not an OpenSSH public key ({e}); give the contents of ~/.ssh/id_ed25519.pub")))?;
    if key_type(&key.algorithm()).is_none() {
        return Err(bad(format!("{} keys are not certified; use ed25519, ecdsa or rsa", key.algorithm())));
    }
    key.set_comment("");
    let ca = store.ssh_signing_ca(SshCaPurpose::User).await?.ok_or(UserCertificateError::NoCa)?;
    let ca_key = PrivateKey::from_openssh(&ca.private_key[..])?;
    let now = now_secs().max(0) as u64;
    let (valid_after, valid_before) = (now.saturating_sub(BACKDATE_SECS), now + req.validity_secs);
    let serial = rand::rngs::OsRng.next_u64() >> 1;
    let key_id = ferry_core::ssh::user_certificate_key_id(&actor.0, &format_time(now as i64));
    let mut builder =
        Builder::new_with_random_nonce(&mut rand::rngs::OsRng, key.key_data().clone(), valid_after, valid_before)?;
    builder.serial(serial)?.cert_type(CertType::User)?.key_id(key_id.clone())?;
    for p in &req.principals {
        builder.valid_principal(p.clone())?;
    }
    // What OpenSSH's own `ssh-keygen -s` grants by default: a usable login session.
    for ext in
        ["permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty", "permit-user-rc"]
    {
        builder.extension(ext, "")?;
    }
    let cert = builder.sign(&ca_key)?;
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    let detail = format!(
        "serial={serial} fingerprint={fingerprint} principals={} valid_before={}",
        req.principals.join(","),
        format_time(valid_before as i64)
    );
    store.record_event(actor, "ssh.user-certificate-issued", &format!("ssh-ca/{}", ca.ca.id), &detail).await?;
    tracing::info!(serial, %fingerprint, principals = %req.principals.join(","), "SSH user certificate issued");
    Ok(ferry_api::ssh::SshUserCertificate {
        certificate: cert.to_openssh()?,
        serial,
        key_id,
        principals: req.principals.clone(),
        valid_before: format_time(valid_before as i64),
    })
}

/// Audits a refused certificate request, folded: a node repeating it adds a count, not
/// a row per request.
pub async fn refused(store: &dyn Store, node: &ferry_core::NodeName, why: &str) -> Result<(), ferry_store::StoreError> {
    tracing::warn!(%node, "SSH host certificate refused: {why}");
    let actor = Actor(format!("node:{node}"));
    store.record_repeatable_event(&actor, "ssh.certificate-refused", &format!("node/{node}"), why).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM4lMPCWZXzG0eHRDgP8PTRKFJz2nK4R1pI+6VKufZvy root@n1";

    #[test]
    fn host_keys_are_parsed_checked_and_stripped_of_comments() {
        let keys = parse_host_keys(&format!("\n{ED25519}\n\n")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].comment(), "");
        for (bad, why) in [
            ("", "send 1 to 8"),
            ("ssh-ed25519 AAAAnot-base64", "line 1: not an OpenSSH public key"),
            (&format!("{ED25519}\n{ED25519}"), "line 2: the same key twice"),
            (&format!("{ED25519}\n").repeat(9), "send 1 to 8"),
        ] {
            let e = parse_host_keys(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // A certificate, or a DSA key, is not a host key ferry certifies.
        let (ca, _) = new_ca_key(SshCaPurpose::Host).unwrap();
        assert!(parse_host_keys(&ca).is_ok());
        let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBANwHrg5of8H3HB5zmdCfk0dSqZ6FM5M8LqTKqJ+SJX19A3KcoDBbzFlK2YYa8OuhbOIU4iqCd/m+CisBElp9eNlpwaA9BwIf02O0Fu8s/VzRuhJYMkbP2KexioZA7/65lSE0s3e41fHwB63bh5D29M4HZnreWKCJe+6tusF/nHvDAAAAFQC95358Dhw7Gs44gq4dqM6U54mONwAAAIAyi7pk0MrYEOHbV/xPpNF18LeAhyoiiW7fU2izFoDPvMrAqowJtM/Kcix8VlV8yz5jjB3iyHCCTfX2xQXHV0d2WFFaFZKGHbj2rjmdIHRggtL7mnEUfRoEWO1MdQeYpG2vhgoYVpeKvBl2AKob+t+8auPOu5sQ6qc3clZndFOw2wAAAIBEYMeqMO3v3hzmCRuLXGVJ1ldhXojywnMCgFKsnCJ/ofPKsp/4XAU0RS66cQLF0zXVFlTnv1sBGtli5bTBtcXyNsCVg19L5djgJq51rZbmq8hBH67g+hYObZFcHklG3wy5FvjsIk2V9IboesPQusUjXsAEWbc02MrETxsnYXzuJA== root@n1";
        assert!(parse_host_keys(dsa).unwrap_err().contains("are not certified"));
    }

    #[test]
    fn a_new_ca_key_round_trips_through_openssh_text() {
        let (public, private) = new_ca_key(SshCaPurpose::User).unwrap();
        let key = PrivateKey::from_openssh(private.as_bytes()).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
        assert_eq!(key.public_key().to_openssh().unwrap(), public);
        assert!(public.starts_with("ssh-ed25519 ") && public.contains(" ferry-user-ca-"), "{public}");
    }
}
