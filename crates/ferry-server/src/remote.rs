//! The remote admin listener: the admin API over TLS (rustls) for callers that are not on
//! the server, authenticated by bearer tokens with roles. Tokens are random 256-bit
//! values shown once; the store keeps their SHA-256, so a stolen database grants
//! nothing. Roles: `viewer` reads; `operator` also revokes tunnels; `admin` changes
//! everything, approving a TPM included (it makes a machine a node's identity). Token
//! management stays on the unix socket.

use crate::config::{tls_files, Config};
use crate::error::HttpError;
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ferry_api::routes::{self, Access};
use ferry_api::ErrorKind;
use ferry_store::{Actor, Role, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

/// A new token: `ferry_` and 32 random bytes, base64url.
pub fn new_token() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(format!("ferry_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())))
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `role` may call `method path`: what the route's entry in [`routes::ROUTES`]
/// says. A request no remote route matches is answered 404 after this check; it counts
/// as a read for GET and HEAD and as administering otherwise, as it always has.
pub fn allowed(role: Role, method: &Method, path: &str) -> bool {
    let access = match routes::find(method.as_str(), path) {
        Some(route) if route.access != Access::LocalOnly => route.access,
        _ if method == Method::GET || method == Method::HEAD => Access::Read,
        _ => Access::Administer,
    };
    match role {
        Role::Admin => true,
        Role::Operator => matches!(access, Access::Read | Access::Operate),
        Role::Viewer => access == Access::Read,
    }
}

fn unauthorized() -> Response {
    let mut r = HttpError::new(
        StatusCode::UNAUTHORIZED,
        ErrorKind::Unauthorized,
        "a valid bearer token is required (ferry token create)",
    )
    .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

/// Authenticates the bearer token and enforces its role; the token's name becomes the
/// audit actor.
pub async fn require_token(State(store): State<Arc<dyn Store>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_owned()));
    let Some(token) = presented else { return unauthorized() };
    // The look-up is by hash: equal hashes, not a byte-by-byte comparison of secrets.
    let info = match store.token_by_hash(&token_hash(&token)).await {
        Ok(Some(info)) if info.state == "active" => info,
        Ok(_) => {
            tracing::warn!(path = %req.uri().path(), "remote admin: unknown, expired or revoked token");
            return unauthorized();
        }
        Err(e) => return HttpError::from(e).into_response(),
    };
    if !allowed(info.role, req.method(), req.uri().path()) {
        tracing::warn!(token = %info.name, role = %info.role, method = %req.method(), path = %req.uri().path(), "remote admin: role does not allow this");
        return HttpError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::Forbidden,
            format!("token {} has role {}, which may not {} {}", info.name, info.role, req.method(), req.uri().path()),
        )
        .into_response();
    }
    req.extensions_mut().insert(Actor(format!("token:{}", info.name)));
    next.run(req).await
}

/// A TLS listener: where it listens and where its TLS material comes from.
pub struct TlsFiles<'a> {
    /// `[remote_admin]` or `[provisioning]`, for messages.
    pub section: &'static str,
    /// The address, and the key that sets it (for messages).
    pub listen: (SocketAddr, &'static str),
    /// The configured certificate and key ([`crate::config::tls_files`]); none: self-signed.
    pub configured: Option<(&'a Path, &'a Path)>,
    /// Names for a self-signed certificate.
    pub names: Vec<String>,
    /// `data_dir/<stem>.crt` and `.key` when self-signed.
    pub stem: &'static str,
}

impl<'a> TlsFiles<'a> {
    /// The remote admin listener, when `[remote_admin] listen` is set.
    pub fn remote_admin(c: &'a Config) -> Option<Self> {
        let ra = &c.remote_admin;
        let addr = ra.listen?;
        let mut names = ra.tls_names.clone();
        names.push(addr.ip().to_string());
        let configured = tls_files(&ra.tls_cert, &ra.tls_key);
        Some(TlsFiles { section: "[remote_admin]", listen: (addr, "listen"), configured, names, stem: "remote-admin" })
    }

    /// The provisioning API's TLS listener, when `[provisioning] tls_listen` is set.
    pub fn provisioning(c: &'a Config) -> Option<Self> {
        let p = &c.provisioning;
        let addr = p.tls_listen?;
        let mut names = vec![addr.ip().to_string(), p.listen.ip().to_string()];
        if let Some(host) = p.public_url.as_deref().and_then(|u| u.parse::<axum::http::Uri>().ok()) {
            names.extend(host.host().map(str::to_owned));
        }
        let configured = tls_files(&p.tls_cert, &p.tls_key);
        Some(TlsFiles {
            section: "[provisioning]",
            listen: (addr, "tls_listen"),
            configured,
            names,
            stem: "provisioning",
        })
    }
}

/// SHA-256 (hex) of a DER certificate: what agents pin (`ferry.tls=sha256:…`).
pub fn certificate_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// The pin of the first certificate in a PEM file (`ferry doctor` compares it with the
/// one the server serves).
pub fn certificate_file_pin(path: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|mut i| i.next().transpose())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {}: {e}", path.display()))?
        .with_context(|| format!("{} holds no certificate", path.display()))?;
    Ok(format!("sha256:{}", certificate_fingerprint(first.as_ref())))
}

/// Binds a TLS listener; with its TLS and the certificate's SHA-256 (hex).
pub async fn bind_tls(
    files: &TlsFiles<'_>,
    data_dir: &Path,
) -> anyhow::Result<(TcpListener, tokio_rustls::TlsAcceptor, String)> {
    let (tls, fingerprint) = tls_config(files, data_dir)?;
    let ((addr, key), section) = (files.listen, files.section);
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (set {section} {key})"))?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(tls), fingerprint))
}

/// The TLS configuration: the configured certificate and key, or a self-signed pair made
/// on first start in the data directory (key 0600). Returns it with the certificate's
/// SHA-256 (hex), which is logged and is what agents pin.
pub fn tls_config(files: &TlsFiles<'_>, data_dir: &Path) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_path, key_path) = match files.configured {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => {
            let (c, k) = (data_dir.join(format!("{}.crt", files.stem)), data_dir.join(format!("{}.key", files.stem)));
            if !c.exists() || !k.exists() {
                let mut names = files.names.clone();
                names.push("localhost".to_owned());
                names.retain(|n| !n.is_empty() && n != "0.0.0.0" && n != "::");
                let made =
                    rcgen::generate_simple_self_signed(names).context("cannot make a self-signed certificate")?;
                std::fs::write(&c, made.cert.pem()).with_context(|| format!("cannot write {}", c.display()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&k)
                    .with_context(|| format!("cannot write {}", k.display()))?;
                std::io::Write::write_all(&mut f, made.signing_key.serialize_pem().as_bytes())?;
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("cannot read the private key {}: {e}", key_path.display()))?;
    let first = certs.first().context("the certificate file holds no certificate")?;
    let fingerprint = certificate_fingerprint(first.as_ref());
    tracing::info!(section = files.section, certificate = %cert_path.display(), sha256 = %fingerprint, "TLS certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    Ok((Arc::new(tls), fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(allowed(Role::Viewer, &Method::GET, "/v1/nodes"));
        assert!(!allowed(Role::Viewer, &Method::PATCH, "/v1/nodes"));
        assert!(!allowed(Role::Viewer, &Method::DELETE, "/v1/tunnels/n1"));
        assert!(allowed(Role::Operator, &Method::DELETE, "/v1/tunnels/n1"));
        assert!(!allowed(Role::Operator, &Method::POST, "/v1/nodes/n1/tpm/approve"), "approving a TPM is admin's");
        assert!(allowed(Role::Admin, &Method::POST, "/v1/nodes/n1/tpm/approve"));
        assert!(!allowed(Role::Operator, &Method::PUT, "/v1/secrets/munge.key"));
        assert!(!allowed(Role::Operator, &Method::DELETE, "/v1/nodes"));
        assert!(allowed(Role::Admin, &Method::PUT, "/v1/secrets/munge.key"));
        // No other role exists: a token's role is parsed once, when it is created.
        assert!("root".parse::<Role>().is_err());
    }

    /// The role table covers every route, and says what the documentation does: a
    /// viewer reads (GET, HEAD), an operator also revokes tunnels and nodes' SSH host
    /// certificates, an admin does everything; token management is not served remotely
    /// (a read of it is a 404).
    #[test]
    fn every_route_is_in_the_role_table() {
        let documented = |role: Role, method: &str, path: &str| {
            let read = method == "GET" || method == "HEAD";
            let revoke = (method == "DELETE" && routes::matches(routes::TUNNEL, path))
                || (method == "PUT" && routes::matches(routes::SSH_REVOCATION, path));
            match role {
                Role::Admin => true,
                Role::Operator => read || revoke,
                Role::Viewer => read,
            }
        };
        for route in routes::ROUTES {
            let path = route.path.replace("{name}", "n1").replace("{node}", "n1");
            let tokens = route.path == routes::TOKENS || route.path == routes::TOKEN;
            assert_eq!(route.access == Access::LocalOnly, tokens, "{route:?}");
            let mut methods = vec![route.method.as_str()];
            if route.method == routes::Method::Get {
                methods.push("HEAD");
            }
            for method in methods {
                let m = Method::from_bytes(method.as_bytes()).unwrap();
                for role in Role::ALL.iter().copied() {
                    let expected = documented(role, method, &path);
                    assert_eq!(allowed(role, &m, &path), expected, "{role} {method} {path}");
                }
            }
        }
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(*a, *b);
        assert!(a.starts_with("ferry_") && a.len() > 40);
        assert_eq!(token_hash(&a).len(), 64);
        assert!(!token_hash(&a).contains(a.trim_start_matches("ferry_")));
    }
}
