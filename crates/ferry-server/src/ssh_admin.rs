//! The admin API's SSH routes (`/v1/ssh/...`): the CAs and their rotation, what clients
//! need to trust the cluster's hosts, issued certificates, and revocation.

use crate::admin_state::AdminState;
use crate::error::{ApiJson, HttpError};
use crate::ssh_ca::new_ca_key;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use ferry_api::admin::Changed;
use ferry_api::routes;
use ferry_api::ssh::{
    SshCaPurpose, SshCaRotate, SshCaView, SshCertificateQuery, SshCertificateView, SshKnownHosts, SshRevoked,
    SshUserCertificate, SshUserCertificateRequest,
};
use ferry_core::{NodeName, Profile};
use ferry_store::{format_time, now_secs, Actor, SshCaRecord};
use std::collections::BTreeMap;

/// Longest overlap a rotation may give the old CA.
const MAX_OVERLAP_SECS: u64 = 365 * 86_400;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new()
        .route(routes::SSH_KNOWN_HOSTS, get(known_hosts))
        .route(routes::SSH_CAS, get(list_cas).post(rotate_ca))
        .route(routes::SSH_CERTIFICATES, get(list_certificates))
        .route(routes::SSH_REVOCATION, put(revoke).delete(reinstate))
        .route(routes::SSH_USER_CERTIFICATES, post(sign_user))
}

async fn sign_user(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<SshUserCertificateRequest>,
) -> Result<ApiJson<SshUserCertificate>, HttpError> {
    Ok(ApiJson(crate::ssh_ca::sign_user_certificate(s.store.as_ref(), &req, &actor).await?))
}

fn ca_view(ca: &SshCaRecord, now: i64) -> SshCaView {
    SshCaView {
        id: ca.id,
        purpose: ca.purpose,
        state: ca.state(now),
        public_key: ca.public_key.clone(),
        created_at: format_time(ca.created_at),
        retired_at: ca.retired_at.map(format_time),
        trusted_until: ca.trusted_until.map(format_time),
    }
}

async fn list_cas(State(s): State<AdminState>) -> Result<ApiJson<Vec<SshCaView>>, HttpError> {
    let now = now_secs();
    Ok(ApiJson(s.store.list_ssh_cas().await?.iter().map(|c| ca_view(c, now)).collect()))
}

async fn rotate_ca(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<SshCaRotate>,
) -> Result<ApiJson<SshCaView>, HttpError> {
    if req.overlap_secs > MAX_OVERLAP_SECS {
        return Err(HttpError::bad_request(format!(
            "an overlap of {} s is longer than a year; clients should move to the new CA sooner",
            req.overlap_secs
        )));
    }
    let (public, private) = new_ca_key(req.purpose).map_err(|e| {
        tracing::error!(error = %e, "cannot make an SSH CA key");
        HttpError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            ferry_api::ErrorKind::Internal,
            "cannot make a key; see the log",
        )
    })?;
    let ca = s.store.rotate_ssh_ca(req.purpose, &public, private.as_bytes(), req.overlap_secs, &actor).await?;
    tracing::info!(ca = ca.id, purpose = %req.purpose, overlap_secs = req.overlap_secs, "SSH CA rotated");
    Ok(ApiJson(ca_view(&ca, now_secs())))
}

/// The host CAs clients should trust, the inventory's host patterns (every node's name
/// and addresses, `*.DOMAIN` for each domain), and the revoked host keys.
async fn known_hosts(State(s): State<AdminState>) -> Result<ApiJson<SshKnownHosts>, HttpError> {
    let now = now_secs();
    let cas = s.store.list_ssh_cas().await?;
    let cas = cas.iter().filter(|c| c.purpose == SshCaPurpose::Host && c.trusted(now)).map(|c| ca_view(c, now));
    let profiles: BTreeMap<_, _> = s
        .store
        .list_profiles()
        .await?
        .into_iter()
        .map(|p| (p.name.clone(), Profile { name: p.name, profiles: p.profiles, settings: p.settings }))
        .collect();
    let mut merged = Vec::new();
    for n in s.store.list_nodes().await? {
        let node = ferry_core::Node { name: n.name, profiles: n.profiles, settings: n.settings };
        let m = ferry_core::merge::merge_node(&node, &profiles)?;
        merged.push((node.name, m.settings));
    }
    let patterns = ferry_core::ssh::known_host_patterns(merged.iter().map(|(n, s)| (n, s)));
    Ok(ApiJson(SshKnownHosts { cas: cas.collect(), patterns, revoked_keys: s.store.ssh_revoked_keys().await? }))
}

async fn list_certificates(
    State(s): State<AdminState>,
    q: Result<Query<SshCertificateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Vec<SshCertificateView>>, HttpError> {
    let q = q?.0;
    if let Some(n) = &q.node {
        s.store.get_node(n).await?;
    }
    Ok(ApiJson(s.store.list_ssh_certificates(q.node.as_ref()).await?))
}

async fn revoke(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> Result<ApiJson<SshRevoked>, HttpError> {
    let node = NodeName::parse(&node)?;
    let certificates = s.store.revoke_ssh_node(&node, &actor).await?;
    tracing::info!(%node, certificates, "SSH host certificates revoked");
    Ok(ApiJson(SshRevoked { node, certificates }))
}

async fn reinstate(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    let node = NodeName::parse(&node)?;
    s.store.reinstate_ssh_node(&node, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}
