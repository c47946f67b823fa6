//! The admin API, served only on a unix socket. Callers are identified by the kernel
//! (SO_PEERCRED), not by anything they send.

use crate::error::{ApiJson, HttpError};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Extension, Router};
use ferry_api::admin::{
    AddNodes, AddProfiles, AuditEntry, AuditQuery, BootInfo, Changed, KnownHost, MergedNodeView, Names, NodeQuery,
    NodeView, ProfileView, SecretScopeQuery, SecretSet, SecretView, ServerInfo, ServerView, SetNodes, SetProfiles,
    Status, TokenCreate, TokenCreated, TokenInfo, TpmApprove, TpmQuery, TpmRegister, TpmView, TunnelView,
};
use ferry_api::image::{AddImage, ImageRecord};
use ferry_api::ErrorKind;
use ferry_api::{routes, Secret};
use ferry_core::{NodeName, ProfileName};
use ferry_store::Actor;

/// Largest admin request body: a few thousand nodes with templates fit comfortably.
pub const ADMIN_BODY_LIMIT: usize = 16 * 1024 * 1024;

pub use crate::admin_state::AdminState;
pub use crate::listen::PeerCred;

/// The admin API on the unix socket: every route, token management included, for
/// callers the kernel vouches for.
pub fn router(state: AdminState) -> Router {
    routes()
        .route(routes::TOKENS, get(list_tokens).post(create_token))
        .route(routes::TOKEN, delete(revoke_token))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin_peer))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .with_state(state)
}

/// The admin API on the remote (TLS) listener: bearer tokens and roles; tokens are
/// managed on the unix socket only.
pub fn remote_router(state: AdminState) -> Router {
    routes()
        .layer(middleware::from_fn_with_state(state.store.clone(), crate::remote::require_token))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .with_state(state)
}

/// Every route of [`routes::ROUTES`] but the unix-socket-only ones.
fn routes() -> Router<AdminState> {
    Router::new()
        .route(routes::NODES, get(list_nodes).post(add_nodes).patch(set_nodes).delete(delete_nodes))
        .route(routes::NODE, get(get_node))
        .route(routes::PROFILES, get(list_profiles).post(add_profiles).patch(set_profiles).delete(delete_profiles))
        .route(routes::PROFILE, get(get_profile))
        .route(routes::INVENTORY, post(crate::admin_inventory::add_inventory))
        .route(routes::NODE_BOOT, get(boot_info))
        .route(routes::TUNNELS, get(list_tunnels))
        .route(routes::TUNNEL, delete(revoke_tunnel))
        .route(routes::KNOWN_HOSTS, get(known_hosts))
        .route(routes::SERVER, get(server_info))
        .route(routes::SERVERS, get(list_servers))
        .route(routes::SERVER_RECORD, delete(remove_server))
        .route(routes::IMAGES, get(list_images).post(add_image))
        .route(routes::IMAGE, get(get_image).delete(delete_image))
        .route(routes::IMAGE_VERIFY, get(crate::image_roots::verify))
        .route(routes::SECRETS, get(list_secrets))
        .route(routes::SECRET, put(set_secret).delete(delete_secret))
        .route(routes::TPMS, get(list_tpms))
        .route(routes::NODE_TPM, put(register_tpm).delete(clear_tpm))
        .route(routes::NODE_TPM_APPROVE, post(approve_tpm))
        .route(routes::AUDIT, get(audit))
        .route(routes::STATUS, get(status))
        .route(routes::METRICS, get(metrics))
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::READYZ, get(readyz))
        .merge(crate::ssh_admin::routes())
        .merge(crate::tpm_learn::routes())
}

/// Lets through only root, the server's own user and configured admin users; the
/// caller becomes the audit log's actor.
async fn require_admin_peer(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<PeerCred>,
    mut req: Request,
    next: Next,
) -> Result<Response, HttpError> {
    match peer.uid {
        Some(uid) if state.allowed_uids.contains(&uid) => {
            req.extensions_mut().insert(Actor(format!("uid:{uid}")));
            Ok(next.run(req).await)
        }
        other => {
            tracing::warn!(uid = ?other, pid = ?peer.pid, "admin socket: refused a caller that is not an admin user");
            Err(HttpError::new(
                StatusCode::FORBIDDEN,
                ErrorKind::Forbidden,
                "permission denied: the admin API is for root, the ferry service user and `admin_users`",
            ))
        }
    }
}

fn parse_names<T: std::str::FromStr<Err = ferry_core::CoreError>>(names: &[String]) -> Result<Vec<T>, HttpError> {
    if names.is_empty() {
        return Err(HttpError::bad_request("no names given"));
    }
    names.iter().map(|n| n.parse::<T>().map_err(HttpError::from)).collect()
}

async fn list_nodes(State(s): State<AdminState>) -> Result<ApiJson<Vec<NodeView>>, HttpError> {
    Ok(ApiJson(s.store.list_nodes().await?))
}

async fn get_node(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    q: Result<Query<NodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    use axum::response::IntoResponse;
    let name = NodeName::parse(&name)?;
    if q?.merged {
        let view: MergedNodeView = s.store.merged_node(&name).await?;
        Ok(ApiJson(view).into_response())
    } else {
        Ok(ApiJson(s.store.get_node(&name).await?).into_response())
    }
}

async fn add_nodes(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<AddNodes>,
) -> Result<ApiJson<Changed>, HttpError> {
    let changed = s.store.add_nodes(req, &actor).await?;
    tracing::info!(%changed, actor = %actor.0, "nodes added");
    Ok(ApiJson(Changed { changed }))
}

async fn set_nodes(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<SetNodes>,
) -> Result<ApiJson<Changed>, HttpError> {
    let changed = s.store.set_nodes(&req.names, &req.patch, &actor).await?;
    tracing::info!(%changed, actor = %actor.0, "nodes changed");
    Ok(ApiJson(Changed { changed }))
}

async fn delete_nodes(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<Names>,
) -> Result<ApiJson<Changed>, HttpError> {
    let names: Vec<NodeName> = parse_names(&req.names)?;
    // Through the tunnel manager: their tunnels close (audited) and their peers go now.
    let changed = s.tunnels.delete_nodes(&names, &actor).await?;
    tracing::info!(%changed, actor = %actor.0, "nodes deleted");
    Ok(ApiJson(Changed { changed }))
}

async fn list_profiles(State(s): State<AdminState>) -> Result<ApiJson<Vec<ProfileView>>, HttpError> {
    Ok(ApiJson(s.store.list_profiles().await?))
}

async fn get_profile(State(s): State<AdminState>, Path(name): Path<String>) -> Result<ApiJson<ProfileView>, HttpError> {
    Ok(ApiJson(s.store.get_profile(&ProfileName::parse(&name)?).await?))
}

async fn add_profiles(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<AddProfiles>,
) -> Result<ApiJson<Changed>, HttpError> {
    Ok(ApiJson(Changed { changed: s.store.add_profiles(req, &actor).await? }))
}

async fn set_profiles(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<SetProfiles>,
) -> Result<ApiJson<Changed>, HttpError> {
    Ok(ApiJson(Changed { changed: s.store.set_profiles(&req.names, &req.patch, &actor).await? }))
}

async fn delete_profiles(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<Names>,
) -> Result<ApiJson<Changed>, HttpError> {
    let names: Vec<ProfileName> = parse_names(&req.names)?;
    Ok(ApiJson(Changed { changed: s.store.delete_profiles(&names, &actor).await? }))
}

async fn audit(
    State(s): State<AdminState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Vec<AuditEntry>>, HttpError> {
    let Query(q) = q?;
    let filter = ferry_store::AuditFilter {
        subject: q.subject,
        since: q.since,
        after_id: q.after,
        limit: q.limit.unwrap_or(100),
    };
    Ok(ApiJson(s.store.audit_query(&filter).await?))
}

async fn status(State(s): State<AdminState>) -> Result<ApiJson<Status>, HttpError> {
    let nodes = s.store.list_nodes().await?.len();
    let profiles = s.store.list_profiles().await?.len();
    Ok(ApiJson(Status { nodes, profiles, version: env!("CARGO_PKG_VERSION").to_owned() }))
}

async fn boot_info(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> Result<ApiJson<Option<BootInfo>>, HttpError> {
    Ok(ApiJson(s.store.boot_info(&NodeName::parse(&name)?).await?))
}

async fn list_tunnels(State(s): State<AdminState>) -> Result<ApiJson<Vec<TunnelView>>, HttpError> {
    let handshakes = s.tunnels.handshakes().await;
    let now = ferry_store::now_secs();
    let views = s
        .store
        .list_tunnels()
        .await?
        .into_iter()
        .map(|t| TunnelView {
            // Only this server's device is visible here.
            on_device: handshakes.contains_key(&t.public_key),
            mine: t.server == s.tunnels.server_id(),
            server: t.server,
            last_handshake: handshakes
                .get(&t.public_key)
                .copied()
                .flatten()
                .map(|h| humantime::format_rfc3339_seconds(h).to_string()),
            age_secs: now - t.created_at,
            expires_in_secs: t.expires_at - now,
            node: t.node,
            address: t.address.to_string(),
            public_key: t.public_key.to_base64(),
        })
        .collect();
    Ok(ApiJson(views))
}

async fn revoke_tunnel(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    let node = NodeName::parse(&node)?;
    s.store.get_node(&node).await?;
    let closed = s.tunnels.close(&node, ferry_store::CloseReason::Revoked, &actor).await?;
    Ok(ApiJson(Changed { changed: usize::from(closed.is_some()) }))
}

async fn known_hosts(State(s): State<AdminState>) -> Result<ApiJson<Vec<KnownHost>>, HttpError> {
    Ok(ApiJson(s.store.host_keys().await?))
}

async fn server_info(State(s): State<AdminState>) -> Result<ApiJson<ServerInfo>, HttpError> {
    Ok(ApiJson(ServerInfo {
        server_id: s.tunnels.server_id().to_owned(),
        public_key: s.server_public_key.to_base64(),
        tunnel_network: s.tunnels.network().to_string(),
        server_address: s.tunnels.network().server_address().to_string(),
        data_dir: s.data_dir.display().to_string(),
        public_url: s.public_url.clone(),
        provisioning_tls_pin: s.provisioning_tls_pin.clone(),
        setup: Some(ferry_api::admin::ServerSetup { now: ferry_store::now_secs(), ..(*s.setup).clone() }),
    }))
}

/// The servers sharing the store, as `ferry server list` shows them.
async fn list_servers(State(s): State<AdminState>) -> Result<ApiJson<Vec<ServerView>>, HttpError> {
    let now = ferry_store::now_secs();
    let views = s
        .store
        .list_servers()
        .await?
        .into_iter()
        .map(|st| {
            let age = now - st.server.heartbeat_at;
            ServerView {
                alive: age <= s.lost_after_secs as i64,
                this: st.server.id == s.tunnels.server_id(),
                heartbeat_age_secs: age,
                started_at: ferry_store::format_time(st.server.started_at),
                active_tunnels: st.active_tunnels,
                id: st.server.id,
                endpoint: st.server.endpoint,
                public_key: st.server.public_key.to_base64(),
                sealing_key_id: st.server.sealing_key_id,
            }
        })
        .collect();
    Ok(ApiJson(views))
}

/// Forgets a server gone for good (`ferry server remove`); refused while it is alive.
async fn remove_server(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    s.store.remove_server(&id, ferry_store::now_secs(), s.lost_after_secs as i64, &actor).await?;
    tracing::info!(server = %id, actor = %actor.0, "server removed from the store");
    Ok(ApiJson(Changed { changed: 1 }))
}

async fn list_images(State(s): State<AdminState>) -> Result<ApiJson<Vec<ImageRecord>>, HttpError> {
    Ok(ApiJson(s.store.list_images().await?))
}

async fn get_image(State(s): State<AdminState>, Path(name): Path<String>) -> Result<ApiJson<ImageRecord>, HttpError> {
    s.store
        .get_image(&name)
        .await?
        .map(ApiJson)
        .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, format!("image {name:?} not found")))
}

/// Registers an image whose artifacts `ferry image import` put in the object store;
/// each must be there with the size the request says. A sealed root's key (write-only)
/// is sealed at rest.
async fn add_image(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    ApiJson(add): ApiJson<AddImage>,
) -> Result<ApiJson<Changed>, HttpError> {
    let root = add.root.as_ref().map(|r| r.artifact());
    for a in [Some(&add.kernel), Some(&add.initrd), root.as_ref()].into_iter().flatten() {
        if !a.valid() {
            return Err(HttpError::bad_request("artifact digests must be 64 lowercase hex characters"));
        }
        let path = crate::boot::object_path(&s.data_dir, &a.sha256);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == a.size => {}
            _ => {
                return Err(HttpError::bad_request(format!(
                    "artifact {} is not in the object store with size {}",
                    a.sha256, a.size
                )))
            }
        }
    }
    let key = match &add.root_key {
        Some(k) => Some(zeroize::Zeroizing::new(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k.expose())
                .map_err(|_| HttpError::bad_request("root_key is not base64"))?,
        )),
        None => None,
    };
    let image = ImageRecord {
        name: add.name,
        kernel: add.kernel,
        initrd: add.initrd,
        root: add.root,
        rootfs_zst: None,
        rootfs_gz: None,
        created_at: String::new(),
    };
    s.store.add_image(&image, key.as_deref().map(|k| &k[..]), &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

async fn delete_image(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    s.store.delete_image(&name, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

fn tpm_view(node: NodeName, r: ferry_store::TpmRecord) -> TpmView {
    TpmView {
        node,
        state: r.state.as_str().into(),
        fingerprint: r.registration.fingerprint,
        certified: r.registration.ek_certificate.is_some(),
        updated_at: ferry_store::format_time(r.updated_at),
        conflict: r.conflict,
    }
}

async fn list_tpms(State(s): State<AdminState>, q: Query<TpmQuery>) -> Result<ApiJson<Vec<TpmView>>, HttpError> {
    let only = q.node.as_deref().map(NodeName::parse).transpose()?;
    let rows = s.store.node_tpms(only.as_ref()).await?;
    Ok(ApiJson(rows.into_iter().map(|(n, r)| tpm_view(n, r)).collect()))
}

async fn register_tpm(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Result<axum::Json<TpmRegister>, axum::extract::rejection::JsonRejection>,
) -> Result<ApiJson<Changed>, HttpError> {
    use base64::Engine;
    let node = NodeName::parse(&name)?;
    let axum::Json(req) = body?;
    let reg = match (&req.ek_pem, &req.ek_certificate) {
        (Some(pem), None) => s.tpm.registration_from_pem(pem)?,
        (None, Some(cert)) => {
            let der = base64::engine::general_purpose::STANDARD
                .decode(cert.trim())
                .map_err(|_| HttpError::bad_request("ek_certificate is not standard base64"))?;
            s.tpm.registration_from_certificate(&der)?
        }
        _ => return Err(HttpError::bad_request("give exactly one of ek_pem and ek_certificate")),
    };
    s.store.set_node_tpm(&node, Some(&reg), &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

async fn clear_tpm(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    let node = NodeName::parse(&name)?;
    s.store.set_node_tpm(&node, None, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

/// Approves exactly the EK the admin names (`sha256:` and 64 hex digits, any case).
async fn approve_tpm(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Result<axum::Json<TpmApprove>, axum::extract::rejection::JsonRejection>,
) -> Result<ApiJson<TpmView>, HttpError> {
    let node = NodeName::parse(&name)?;
    let missing = || {
        HttpError::bad_request(format!(
            "name the EK fingerprint you approve, as ferry node tpm {node} shows it and as you read it from the \
             node's own TPM: ferry node approve {node} --ek-fingerprint sha256:…"
        ))
    };
    let axum::Json(req) = body.map_err(|_| missing())?;
    let fingerprint = crate::tpm::normalize_fingerprint(&req.fingerprint).ok_or_else(missing)?;
    let rec = s.store.approve_tpm(&node, &fingerprint, &actor).await?;
    Ok(ApiJson(tpm_view(node, rec)))
}

fn secret_scope(node: Option<NodeName>, profile: Option<ProfileName>) -> Result<ferry_store::SecretScope, HttpError> {
    use ferry_store::SecretScope;
    match (node, profile) {
        (None, None) => Ok(SecretScope::Global),
        (Some(n), None) => Ok(SecretScope::Node(n)),
        (None, Some(p)) => Ok(SecretScope::Profile(p)),
        (Some(_), Some(_)) => Err(HttpError::bad_request("a secret belongs to a node or a profile, not both")),
    }
}

async fn list_secrets(State(s): State<AdminState>) -> Result<ApiJson<Vec<SecretView>>, HttpError> {
    Ok(ApiJson(s.store.list_secrets().await?))
}

async fn set_secret(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Result<axum::Json<SecretSet>, axum::extract::rejection::JsonRejection>,
) -> Result<ApiJson<Changed>, HttpError> {
    use base64::Engine;
    let axum::Json(req) = body?;
    let scope = secret_scope(req.node.clone(), req.profile.clone())?;
    let value = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(req.value.expose().trim())
            .map_err(|_| HttpError::bad_request("the secret value must be standard base64"))?,
    );
    s.store.set_secret(&name, &scope, &value, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

async fn delete_secret(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    q: Result<Query<SecretScopeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Changed>, HttpError> {
    let Query(q) = q?;
    let node = q.node.as_deref().map(NodeName::parse).transpose()?;
    let profile = q.profile.as_deref().map(ProfileName::parse).transpose()?;
    s.store.delete_secret(&name, &secret_scope(node, profile)?, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

/// Prometheus/OpenMetrics text.
async fn metrics(State(s): State<AdminState>) -> Response {
    use axum::response::IntoResponse;
    s.metrics.active_tunnels.set(s.tunnels.active_count() as i64);
    s.metrics.set_audit_counts(s.store.audit_counts());
    s.metrics.set_write_batches(s.store.write_batches());
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], s.metrics.encode()).into_response()
}

/// The process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to provision: the store answers and the WireGuard device is up.
async fn readyz(State(s): State<AdminState>) -> Result<&'static str, HttpError> {
    let unavailable = |why: String| HttpError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::NotReady, why);
    s.store.ping().await.map_err(|e| unavailable(format!("the store does not answer: {e}")))?;
    if !s.tunnels.device_up().await {
        return Err(unavailable("the WireGuard device is down".into()));
    }
    Ok("ready\n")
}

/// Creates a token and returns it, once; the store keeps only its SHA-256.
async fn create_token(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: Result<axum::Json<TokenCreate>, axum::extract::rejection::JsonRejection>,
) -> Result<ApiJson<TokenCreated>, HttpError> {
    let axum::Json(req) = body?;
    let role: ferry_store::Role = req.role.parse()?;
    let token = crate::remote::new_token();
    let expires_at =
        req.expires_in_secs.map(|e| ferry_store::now_secs().saturating_add(e.min(10 * 365 * 86_400) as i64));
    s.store.create_token(&req.name, role, &crate::remote::token_hash(&token), expires_at, &actor).await?;
    Ok(ApiJson(TokenCreated { name: req.name, role, token: Secret::new(token.to_string()) }))
}

async fn list_tokens(State(s): State<AdminState>) -> Result<ApiJson<Vec<TokenInfo>>, HttpError> {
    Ok(ApiJson(s.store.list_tokens().await?))
}

async fn revoke_token(
    State(s): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<ApiJson<Changed>, HttpError> {
    s.store.revoke_token(&name, &actor).await?;
    Ok(ApiJson(Changed { changed: 1 }))
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
