//! The admin API, served only on a unix socket. Callers are identified by the kernel
//! (SO_PEERCRED), not by anything they send.

use crate::error::{ApiJson, HttpError};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::{Extension, Router};
use ferry_api::admin::{
    AddNodes, AddProfiles, Changed, MergedNodeView, Names, NodeView, ProfileView, SetNodes, SetProfiles,
};
use ferry_core::{NodeName, ProfileName};
use ferry_store::{Actor, AuditEntry, Store};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::net::UnixListener;

/// Largest admin request body: a few thousand nodes with templates fit comfortably.
pub const ADMIN_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The credentials of the process at the other end of the socket.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => PeerCred { uid: Some(c.uid()), pid: c.pid() },
            Err(_) => PeerCred { uid: None, pid: None },
        }
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub allowed_uids: Arc<HashSet<u32>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/nodes", get(list_nodes).post(add_nodes).patch(set_nodes).delete(delete_nodes))
        .route("/v1/nodes/{name}", get(get_node))
        .route("/v1/profiles", get(list_profiles).post(add_profiles).patch(set_profiles).delete(delete_profiles))
        .route("/v1/profiles/{name}", get(get_profile))
        .route("/v1/audit", get(audit))
        .route("/v1/status", get(status))
        .layer(middleware::from_fn_with_state(state.clone(), require_admin_peer))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .with_state(state)
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
                "forbidden",
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

#[derive(Deserialize)]
struct ShowQuery {
    #[serde(default)]
    merged: bool,
}

async fn get_node(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    q: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
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
    let changed = s.store.delete_nodes(&names, &actor).await?;
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

#[derive(Deserialize)]
struct AuditQuery {
    subject: Option<String>,
    limit: Option<i64>,
}

async fn audit(
    State(s): State<AdminState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Vec<AuditEntry>>, HttpError> {
    let Query(q) = q?;
    Ok(ApiJson(s.store.audit(q.subject.as_deref(), q.limit.unwrap_or(100)).await?))
}

async fn status(State(s): State<AdminState>) -> Result<ApiJson<serde_json::Value>, HttpError> {
    let nodes = s.store.list_nodes().await?.len();
    let profiles = s.store.list_profiles().await?.len();
    Ok(ApiJson(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "nodes": nodes, "profiles": profiles })))
}
