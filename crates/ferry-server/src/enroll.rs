//! The provisioning listener: enrollment. Whoever is on the provisioning network may
//! ask; only a node that satisfies every factor of its identity policy gets a tunnel.
//! Refusals are a bare 401 to the caller and a precise reason in the audit log.

use crate::client_addr::client_address;
use crate::error::{ApiJson, HttpError};
use crate::limits::{self, EnrollLimits};
use crate::nonces::NonceStore;
use crate::tunnels::TunnelManager;
use crate::Config;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::admin::MergedNodeView;
use ferry_api::enroll::{Challenge, EnrollRequest, EnrollResponse, CHALLENGE_PATH, ENROLL_PATH, TPM_CREDENTIAL_PATH};
use ferry_core::enroll::verify_asset_tag_proof;
use ferry_core::identity::{evaluate, AssetTagEvidence, Evidence, Refusal};
use ferry_core::{MacAddr, NodeName};
use ferry_store::{Actor, StoreError};
use ferry_wg::PublicKey;
use std::net::IpAddr;
use std::sync::Arc;

/// Enrollment requests are small; anything bigger is not one.
pub const ENROLL_BODY_LIMIT: usize = 16 * 1024;

pub use crate::listen::TcpConn;

#[derive(Clone)]
pub struct ProvisioningState {
    pub tunnels: Arc<TunnelManager>,
    pub nonces: Arc<NonceStore<crate::tpm::PendingTpm>>,
    pub config: Arc<Config>,
    pub server_public_key: PublicKey,
    pub tpm: Arc<crate::tpm::TpmPolicy>,
    /// Rate limits and the cap on enrollments in progress (`limits`).
    pub limits: Arc<EnrollLimits>,
}

/// The enrollment routes. Every one is rate limited before anything else happens; the
/// two that do the work (TPM credential, enrollment) also need one of the
/// `max_concurrent_enrollments` slots. Routes merged into this router afterwards (boot
/// scripts, artifacts) get none of these layers.
pub fn router(state: ProvisioningState) -> Router {
    let slot = || axum::middleware::from_fn_with_state(state.limits.clone(), limits::enrollment_slot);
    Router::new()
        .route(CHALLENGE_PATH, post(challenge))
        .route(ENROLL_PATH, post(enroll).layer(slot()))
        .route(TPM_CREDENTIAL_PATH, post(crate::tpm::credential).layer(slot()))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::rate_limit))
        .layer(DefaultBodyLimit::max(ENROLL_BODY_LIMIT))
        .with_state(state)
}

async fn challenge(
    State(s): State<ProvisioningState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    headers: HeaderMap,
) -> Response {
    let client = client_address(conn.remote.ip(), &headers, &s.config.provisioning.trusted_proxies);
    match s.nonces.issue(crate::client_addr::source_group(client)) {
        Ok(nonce) => {
            ApiJson(Challenge { nonce: B64.encode(nonce), expires_in_secs: s.nonces.ttl().as_secs() }).into_response()
        }
        // The rate-limit middleware refuses most of these already; this is the race.
        Err(_) => s.limits.nonces_held().into_response(),
    }
}

fn refused() -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, "refused", "refused")
}

/// Records why an attempt was refused (audit log and server log) and returns the bare
/// refusal the caller gets.
pub(crate) async fn refuse(
    s: &ProvisioningState,
    client: IpAddr,
    subject: String,
    reason: impl std::fmt::Display,
) -> HttpError {
    tracing::warn!(%subject, %client, %reason, "enrollment refused");
    let detail = format!("from={client} reason={reason}");
    let actor = Actor(format!("client:{client}"));
    if let Err(e) = s.tunnels.store.record_event(&actor, "enroll.refused", &subject, &detail).await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
    refused()
}

/// The format of an address inside a URL (IPv6 in brackets).
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn decode32(what: &str, s: &str) -> Result<[u8; 32], HttpError> {
    B64.decode(s.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| HttpError::bad_request(format!("{what} must be 32 bytes, base64-encoded")))
}

async fn enroll(
    State(s): State<ProvisioningState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ApiJson<EnrollResponse>, HttpError> {
    let req: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid enrollment request: {e}")))?;
    let key: PublicKey = req
        .public_key
        .trim()
        .parse()
        .map_err(|_| HttpError::bad_request("public_key is not a WireGuard public key"))?;
    let nonce = decode32("nonce", &req.nonce)?;
    let mac = MacAddr::parse(&req.mac)?;
    let mode = match req.mode.as_deref() {
        None | Some("cloud-init") => "cloud-init",
        Some("fetch") => "fetch",
        Some(_) => return Err(HttpError::bad_request("mode must be fetch or cloud-init")),
    };
    let client = client_address(conn.remote.ip(), &headers, &s.config.provisioning.trusted_proxies);
    // Consume the nonce first: a refused attempt cannot be retried with it.
    let Some(tpm_challenge) = s.nonces.take(&nonce) else {
        return Err(refuse(&s, client, format!("mac/{mac}"), "unknown, used or expired nonce").await);
    };
    let Some(node) = s.tunnels.store.node_by_mac(&mac).await? else {
        return Err(refuse(&s, client, format!("mac/{mac}"), "no node has this MAC").await);
    };
    let subject = format!("node/{node}");
    let Admitted { policy, ttl, settings } =
        match check_identity(&s, &node, &req, &key, &nonce, client, tpm_challenge).await? {
            Ok(ok) => ok,
            Err(refusal) => return Err(refuse(&s, client, subject, refusal).await),
        };
    let actor = Actor(format!("node:{node}@{client}"));
    let tunnel = match s.tunnels.open(&node, &key, ttl, Some(mode), settings, &actor).await {
        Ok(t) => t,
        Err(StoreError::PoolExhausted(net)) => {
            tracing::error!(%net, "tunnel address pool exhausted");
            return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "no tunnel address free; retry later"));
        }
        Err(StoreError::Conflict(why)) => return Err(refuse(&s, client, subject, why).await),
        Err(e) => return Err(e.into()),
    };
    let factors: Vec<String> = policy.iter().map(|f| f.to_string()).collect();
    let detail = format!("from={client} factors={} address={}", factors.join(","), tunnel.address);
    s.tunnels.store.record_event(&actor, "enroll.accepted", &subject, &detail).await?;
    tracing::info!(%node, %client, address = %tunnel.address, "node enrolled");

    let wg = &s.config.wireguard;
    let server_address = s.tunnels.network.server_address();
    let endpoint = wg.endpoint.clone().unwrap_or_else(|| format!("{}:{}", url_host(conn.local.ip()), wg.listen_port));
    let base = format!("http://{}:{}", url_host(server_address), s.config.datasource.port);
    Ok(ApiJson(EnrollResponse {
        node: node.to_string(),
        server_public_key: s.server_public_key.to_base64(),
        endpoint,
        node_address: tunnel.address.to_string(),
        prefix_len: s.tunnels.network.prefix_len(),
        server_address: server_address.to_string(),
        expires_in_secs: (tunnel.expires_at - tunnel.created_at).max(0) as u64,
        expires_at: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(tunnel.expires_at as u64),
        )
        .to_string(),
        datasource_url: format!("{base}/"),
        phone_home_url: format!("{base}/phone-home"),
    }))
}

/// A node that proved who it is: the factors it proved, its tunnel's lifetime, and the
/// merged settings the decision was made on (its documents render from the same ones).
struct Admitted {
    policy: Vec<ferry_core::IdentityFactor>,
    ttl: u64,
    settings: MergedNodeView,
}

type Decision = Result<Admitted, Refusal>;

/// Gathers the evidence for the node's policy and evaluates it.
async fn check_identity(
    s: &ProvisioningState,
    node: &NodeName,
    req: &EnrollRequest,
    key: &PublicKey,
    nonce: &[u8; 32],
    client: IpAddr,
    tpm_challenge: Option<crate::tpm::PendingTpm>,
) -> Result<Decision, HttpError> {
    let (merged, tag) = s.tunnels.store.node_identity(node).await?;
    let policy = merged.settings.identity_policy(tag.is_some());
    let network = merged.settings.interfaces.values().any(|i| {
        i.ipv4.map(IpAddr::V4) == Some(client) || i.ipv6.map(IpAddr::V6) == Some(client) || is_mapped(client, i.ipv4)
    });
    let asset_tag = match (&tag, &req.proofs.asset_tag) {
        (None, None) => AssetTagEvidence::NotConfigured,
        // A proof for a tag the inventory does not know proves nothing; it is ignored.
        (None, Some(_)) => AssetTagEvidence::NotConfigured,
        (Some(_), None) => AssetTagEvidence::Missing,
        (Some(tag), Some(proof)) => match B64.decode(proof.trim()) {
            Ok(p) if verify_asset_tag_proof(tag.expose().as_bytes(), nonce, &key.0, node, &p) => {
                AssetTagEvidence::Valid
            }
            _ => AssetTagEvidence::Invalid,
        },
    };
    let tpm = crate::tpm::evidence(
        tpm_challenge,
        req.proofs.tpm.as_ref(),
        nonce,
        &key.0,
        node,
        &merged.settings.pcr_policy(),
    );
    let ttl = merged.settings.tunnel_ttl_secs.unwrap_or(s.config.wireguard.tunnel_ttl_secs);
    Ok(evaluate(&policy, &Evidence { network, asset_tag, tpm }, &client.to_string()).map(|()| Admitted {
        policy,
        ttl,
        settings: merged,
    }))
}

/// An IPv4 client seen on a dual-stack socket as `::ffff:a.b.c.d`.
fn is_mapped(client: IpAddr, v4: Option<std::net::Ipv4Addr>) -> bool {
    matches!((client, v4), (IpAddr::V6(c), Some(v4)) if c.to_ipv4_mapped() == Some(v4))
}
