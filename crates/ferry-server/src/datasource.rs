//! The tunnel-only datasource. It listens on the server's tunnel address alone, and the
//! caller is the node whose active tunnel owns the packet's source address — which
//! WireGuard's cryptokey routing binds to that node's key. No header is ever read.

use crate::error::HttpError;
use crate::listen::TcpConn;
use crate::metrics::{DocumentLabel, Metrics};
use crate::render::{mentions_secrets, render, Document, FerryContext, TemplateSecrets};
use crate::tunnel_caller::{not_a_tunnel, tunnel_caller};
use crate::tunnels::{ActiveTunnel, TunnelManager};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferry_api::enroll::PhoneHome;
use ferry_api::ErrorKind;
use ferry_core::net::url_host;
use ferry_store::{Actor, BootReport, Store};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub const PHONE_HOME_BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct DatasourceState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Who is calling (the active tunnel of an address), and phone-home's teardown.
    pub tunnels: Arc<TunnelManager>,
    pub port: u16,
}

/// The datasource's URL (the NoCloud seed) and its phone-home URL, on the server's
/// tunnel address: what enrollment answers, boot scripts and documents name.
pub fn urls(server_address: IpAddr, port: u16) -> (String, String) {
    let base = format!("http://{}:{port}", url_host(server_address));
    (format!("{base}/"), format!("{base}/phone-home"))
}

pub fn router(state: DatasourceState) -> Router {
    Router::new()
        .route("/{*path}", get(document).post(phone_home))
        .layer(DefaultBodyLimit::max(PHONE_HOME_BODY_LIMIT))
        .with_state(state)
}

/// The caller's active tunnel, from the source address alone.
fn caller(s: &DatasourceState, peer: SocketAddr) -> Result<Arc<ActiveTunnel>, HttpError> {
    tunnel_caller(&s.tunnels, peer)
}

async fn document(
    State(s): State<DatasourceState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    Path(path): Path<String>,
) -> Result<Response, HttpError> {
    let started = std::time::Instant::now();
    let active = caller(&s, conn.remote)?;
    let tunnel = &active.record;
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some(doc) = Document::from_name(name) else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "no such document (meta-data, user-data, vendor-data, network-config)",
        ));
    };
    let node = active.merged(s.store.as_ref()).await?;
    let server_address = s.tunnels.network().server_address();
    let (datasource_url, phone_home_url) = urls(server_address, s.port);
    let ctx = FerryContext {
        tunnel_address: tunnel.address.to_string(),
        server_address: server_address.to_string(),
        datasource_url: &datasource_url,
        phone_home_url: &phone_home_url,
        fetch_mode: tunnel.mode == Some(ferry_store::AgentMode::Fetch),
    };
    let actor = Actor(format!("node:{}", tunnel.node));
    let subject = format!("node/{}", tunnel.node);
    let secrets = if mentions_secrets(&node) {
        TemplateSecrets::new(s.store.secrets_for(&node.name, &node.profiles).await?)
    } else {
        TemplateSecrets::new(Default::default())
    };
    match render(doc, &node, ctx, &secrets) {
        Ok(Some(text)) => {
            for name in secrets.used() {
                let detail = format!("name={name} document={}", doc.name());
                s.store.record_repeatable_event(&actor, "secret.delivered", &subject, &detail).await?;
                s.metrics.secrets_delivered.inc();
            }
            // A node may fetch again and again: repeats within a minute become one count.
            s.store.record_repeatable_event(&actor, "document.served", &subject, doc.name()).await?;
            let label = DocumentLabel { document: doc.name() };
            s.metrics.document_latency.get_or_create(&label).observe(started.elapsed().as_secs_f64());
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        Ok(None) => {
            Err(HttpError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, format!("node has no {}", doc.name())))
        }
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            s.store.record_repeatable_event(&actor, "document.failed", &subject, &e.to_string()).await?;
            Err(HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::Internal,
                "the document does not render; see the server's audit log",
            ))
        }
    }
}

/// cloud-init sends `N/A` for what it does not have.
fn present(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty() && s != "N/A")
}

/// An SSH public key line as `ssh-keygen` prints it, or nothing.
fn host_key(v: Option<String>) -> Option<String> {
    let k = present(v)?;
    let ok =
        k.len() <= 16 * 1024 && !k.chars().any(char::is_control) && (k.starts_with("ssh-") || k.starts_with("ecdsa-"));
    ok.then_some(k)
}

pub fn boot_report(form: PhoneHome) -> BootReport {
    let mut host_keys = Vec::new();
    for (kind, key) in [
        ("dsa", form.pub_key_dsa),
        ("rsa", form.pub_key_rsa),
        ("ecdsa", form.pub_key_ecdsa),
        ("ed25519", form.pub_key_ed25519),
    ] {
        if let Some(k) = host_key(key) {
            host_keys.push((kind.to_owned(), k));
        }
    }
    let short = |v: Option<String>| present(v).filter(|s| s.len() <= 255 && !s.chars().any(char::is_control));
    BootReport {
        instance_id: short(form.instance_id),
        hostname: short(form.hostname),
        fqdn: short(form.fqdn),
        host_keys,
    }
}

async fn phone_home(
    State(s): State<DatasourceState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let active = caller(&s, conn.remote)?;
    let tunnel = &active.record;
    if path.split('/').next() != Some("phone-home") {
        return Err(HttpError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "POST goes to /phone-home"));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let form: PhoneHome = if is_json {
        serde_json::from_slice(&body).map_err(|e| HttpError::bad_request(format!("invalid phone-home JSON: {e}")))?
    } else {
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| HttpError::bad_request(format!("invalid phone-home form: {e}")))?
    };
    let report = boot_report(form);
    if !s.tunnels.phone_home(tunnel, &report).await? {
        return Err(not_a_tunnel());
    }
    tracing::info!(node = %tunnel.node, host_keys = report.host_keys.len(), "node phoned home; tunnel closed");
    Ok((StatusCode::OK, "ok\n").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_form_fields() {
        let form: PhoneHome = serde_urlencoded::from_str(
            "instance_id=n001&hostname=n001&fqdn=N%2FA&pub_key_rsa=N%2FA&pub_key_ed25519=ssh-ed25519+AAAAC3Nz+root%40n001%0A&pub_key_ecdsa=evil%0Aline",
        )
        .unwrap();
        let r = boot_report(form);
        assert_eq!(r.instance_id.as_deref(), Some("n001"));
        assert_eq!(r.fqdn, None, "N/A means absent");
        assert_eq!(r.host_keys, [("ed25519".to_string(), "ssh-ed25519 AAAAC3Nz root@n001".to_string())]);
    }
}
