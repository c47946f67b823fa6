//! The datasource's SSH routes, inside the tunnel only (the caller is the node whose
//! active tunnel owns the source address, as for the documents):
//!
//! - `POST /ssh/host-certificates[?node=NAME]`: the node's host public keys, one per
//!   line (`cat /etc/ssh/ssh_host_*_key.pub`); the answer is one host certificate per
//!   line, in the same order, for the names the inventory gives the node. `node=` is the
//!   name the node believes it has: another node's name is refused and audited.
//! - `GET /ssh/known-hosts`: `@cert-authority` lines for the node's own SSH client.
//! - `GET /ssh/revoked-keys`: the revoked host keys (`RevokedHostKeys`).

use crate::error::HttpError;
use crate::listen::TcpConn;
use crate::ssh_ca::{issue_host_certificates, parse_host_keys};
use crate::tunnel_caller::tunnel_caller;
use crate::tunnels::TunnelManager;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ferry_api::ssh::{HOST_CERTIFICATES_PATH, NODE_KNOWN_HOSTS_PATH, NODE_REVOKED_KEYS_PATH, NODE_USER_CA_KEYS_PATH};
use ferry_store::ssh_ca::SshCaPurpose;
use ferry_store::{now_secs, Store};
use serde::Deserialize;
use std::sync::Arc;

/// A few host public keys (RSA 16384 is ~2.8 KiB a line).
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct SshIssueState {
    /// The caller's tunnel (by source address).
    pub tunnels: Arc<TunnelManager>,
    pub store: Arc<dyn Store>,
    /// `[ssh] host_certificate_validity_secs`.
    pub validity_secs: u64,
    /// `[ssh] host_patterns`, or `*`.
    pub node_patterns: Vec<String>,
}

pub fn router(state: SshIssueState) -> Router {
    Router::new()
        .route(HOST_CERTIFICATES_PATH, post(host_certificates))
        .route(NODE_KNOWN_HOSTS_PATH, get(known_hosts))
        .route(NODE_REVOKED_KEYS_PATH, get(revoked_keys))
        .route(NODE_USER_CA_KEYS_PATH, get(user_ca_keys))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

#[derive(Deserialize)]
struct IssueQuery {
    node: Option<String>,
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn lines(lines: impl IntoIterator<Item = String>) -> String {
    lines.into_iter().map(|l| l + "\n").collect()
}

async fn host_certificates(
    State(s): State<SshIssueState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    query: Result<Query<IssueQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let active = tunnel_caller(&s.tunnels, conn.remote)?;
    let tunnel = &active.record;
    let store = s.store.clone();
    if let Some(asked) = query?.0.node.filter(|n| n != tunnel.node.as_str()) {
        let asked: String = asked.chars().filter(|c| !c.is_control()).take(64).collect();
        let why = format!("the tunnel of node {} asked for the names of node {asked:?}", tunnel.node);
        crate::ssh_ca::refused(store.as_ref(), &tunnel.node, &why).await?;
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            ferry_api::ErrorKind::Forbidden,
            "refused: a node gets certificates for its own names only",
        ));
    }
    let body = std::str::from_utf8(&body).map_err(|_| HttpError::bad_request("the body is not UTF-8 text"))?;
    let keys = parse_host_keys(body).map_err(HttpError::bad_request)?;
    let node = active.merged(store.as_ref()).await?;
    let certificates = issue_host_certificates(&store, tunnel, &node, &keys, s.validity_secs).await?;
    tracing::info!(node = %tunnel.node, certificates = certificates.len(), "issued SSH host certificates");
    Ok(text(lines(certificates)))
}

async fn known_hosts(
    State(s): State<SshIssueState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
) -> Result<Response, HttpError> {
    tunnel_caller(&s.tunnels, conn.remote)?;
    let now = now_secs();
    let cas = s.store.list_ssh_cas().await?;
    let trusted = cas.iter().filter(|c| c.purpose == SshCaPurpose::Host && c.trusted(now));
    Ok(text(lines(trusted.map(|c| ferry_core::ssh::cert_authority_line(&s.node_patterns, &c.public_key)))))
}

/// The user CAs still trusted (signing, or within a rotation's overlap), one public key
/// per line; empty until an admin makes a user CA.
async fn user_ca_keys(
    State(s): State<SshIssueState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
) -> Result<Response, HttpError> {
    tunnel_caller(&s.tunnels, conn.remote)?;
    let now = now_secs();
    let cas = s.store.list_ssh_cas().await?;
    let trusted = cas.iter().filter(|c| c.purpose == SshCaPurpose::User && c.trusted(now));
    Ok(text(lines(trusted.map(|c| c.public_key.trim().to_owned()))))
}

async fn revoked_keys(
    State(s): State<SshIssueState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
) -> Result<Response, HttpError> {
    tunnel_caller(&s.tunnels, conn.remote)?;
    Ok(text(lines(s.store.ssh_revoked_keys().await?)))
}

/// The script cloud-init mode's default vendor-data runs (`ssh_vendor.py`, cloud-init's
/// own Python, as root, before `phone_home`): certify the host keys, install the
/// certificates and the drop-ins. The datasource's paths and the files' names and
/// contents come from here and `ferry_core::ssh`, the same the fetch-mode agent uses.
pub fn vendor_script(datasource_url: &str, node: &ferry_core::NodeName) -> String {
    use ferry_core::ssh;
    let config = serde_json::json!({
        "datasource": datasource_url.trim_end_matches('/'),
        "certify": format!("{HOST_CERTIFICATES_PATH}?node={node}"),
        "known_hosts": NODE_KNOWN_HOSTS_PATH,
        "revoked_keys": NODE_REVOKED_KEYS_PATH,
        "user_ca_keys": NODE_USER_CA_KEYS_PATH,
        "user_ca_keys_file": ssh::NODE_USER_CA_KEYS_FILE,
        "sshd_user_ca": ssh::sshd_user_ca_line(),
        "types": ssh::HOST_KEY_TYPES,
        "sshd_drop_in_name": ssh::SSHD_DROP_IN_NAME,
        "sshd_drop_in_header": ssh::sshd_drop_in(&[], false),
        "ssh_drop_in_name": ssh::SSH_DROP_IN_NAME,
        "ssh_drop_in": ssh::SSH_CONFIG_DROP_IN,
        "known_hosts_file": ssh::NODE_KNOWN_HOSTS_FILE,
        "revoked_keys_file": ssh::NODE_REVOKED_KEYS_FILE,
    });
    // A JSON string is a Python string literal too.
    let literal = serde_json::to_string(&config.to_string()).unwrap_or_default();
    include_str!("ssh_vendor.py").replace("@CONFIG@", &literal)
}
