//! The provisioning listener: enrollment. Whoever is on the provisioning network may
//! ask; only a node that satisfies every factor of its identity policy gets a tunnel.
//! Refusals are a bare 401 to the caller and a precise reason in the audit log.

use crate::client_addr::{client_address, source_group};
use crate::error::{ApiJson, HttpError};
use crate::limits::{self, EnrollLimits, ENROLL_BODY_LIMIT};
use crate::nonces::NonceStore;
use crate::tpm::{NotIssued, PendingTpm, TpmPolicy};
use crate::tunnels::TunnelManager;
use crate::Config;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::admin::MergedNodeView;
use ferry_api::enroll::{
    Challenge, EnrollRequest, EnrollResponse, TpmCredentialChallenge, TpmCredentialRequest, CHALLENGE_PATH,
    ENROLL_PATH, TPM_CREDENTIAL_PATH,
};
use ferry_api::ErrorKind;
use ferry_core::enroll::{verify_asset_tag_proof, ProofContext};
use ferry_core::identity::{evaluate, AssetTagEvidence, Evidence, Refusal, Refused};
use ferry_core::net::url_host;
use ferry_core::MacAddr;
use ferry_store::{Actor, AgentMode, Store, StoreError};
use ferry_wg::{PrivateKey, PublicKey};
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::listen::TcpConn;

#[derive(Clone)]
pub struct ProvisioningState {
    pub store: Arc<dyn Store>,
    /// Opens the tunnel of a node that proved who it is.
    pub tunnels: Arc<TunnelManager>,
    pub nonces: Arc<NonceStore<PendingTpm>>,
    pub config: Arc<Config>,
    pub server_public_key: PublicKey,
    /// The server's static WireGuard key, for the X25519 secret asset-tag proofs are
    /// keyed with (a copy of the device's; never logged).
    pub server_private_key: Arc<PrivateKey>,
    pub tpm: Arc<TpmPolicy>,
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
        .route(TPM_CREDENTIAL_PATH, post(tpm_credential).layer(slot()))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit))
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
        Ok(nonce) => ApiJson(Challenge {
            nonce: B64.encode(nonce),
            expires_in_secs: s.nonces.ttl().as_secs(),
            server_public_key: Some(s.server_public_key.to_base64()),
        })
        .into_response(),
        // The rate-limit middleware refuses most of these already; this is the race.
        Err(_) => s.limits.nonces_held().into_response(),
    }
}

fn refused() -> HttpError {
    HttpError::new(StatusCode::UNAUTHORIZED, ErrorKind::Refused, "refused")
}

/// Middleware on the enrollment routes: the rate limits (`limits`), before anything
/// else is done (the body is not even read). A challenge from a source that already
/// holds its share of outstanding nonces is refused after its own bucket and before the
/// global one, so it takes nothing from the others.
async fn rate_limit(
    State(s): State<ProvisioningState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    req: Request,
    next: Next,
) -> Response {
    let client = client_address(conn.remote.ip(), req.headers(), &s.config.provisioning.trusted_proxies);
    let source = source_group(client);
    let challenge = req.uri().path() == CHALLENGE_PATH;
    let checked = s
        .limits
        .check_source(source)
        .and_then(|()| if challenge && s.nonces.source_full(source) { Err(s.limits.nonces_held()) } else { Ok(()) })
        .and_then(|()| s.limits.check_global(source));
    match checked {
        Ok(()) => next.run(req).await,
        Err(t) => {
            s.limits.log_refusal(source, req.uri().path(), t);
            t.into_response()
        }
    }
}

/// Records why an attempt was refused (audit log and server log) and returns the bare
/// refusal the caller gets.
async fn refuse(s: &ProvisioningState, client: IpAddr, subject: String, reason: impl std::fmt::Display) -> HttpError {
    audit_refusal(s, client, &subject, reason.to_string()).await;
    refused()
}

async fn audit_refusal(s: &ProvisioningState, client: IpAddr, subject: &str, reason: String) {
    tracing::warn!(%subject, %client, %reason, "enrollment refused");
    let detail = format!("from={client} reason={reason}");
    let actor = Actor(format!("client:{client}"));
    if let Err(e) = s.store.record_event(&actor, "enroll.refused", subject, &detail).await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
}

/// What an agent older than asset-tag proof v2 is told (and the audit records).
pub const OUTDATED_AGENT: &str = "this agent sent an asset-tag proof v1, which a network observer can attack \
    offline; this server accepts only v2: update ferry on the node (rebuild its initramfs or image with \
    `ferry image initramfs` of the server's version)";

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
    let mode = match req.mode.as_deref().map(str::parse::<AgentMode>) {
        None => AgentMode::CloudInit,
        Some(Ok(mode)) => mode,
        Some(Err(_)) => return Err(HttpError::bad_request("mode must be fetch or cloud-init")),
    };
    let client = client_address(conn.remote.ip(), &headers, &s.config.provisioning.trusted_proxies);
    // Consume the nonce first: a refused attempt cannot be retried with it.
    let Some(tpm_challenge) = s.nonces.take(&nonce) else {
        return Err(refuse(&s, client, format!("mac/{mac}"), "unknown, used or expired nonce").await);
    };
    // Read now, not at the credential step: a TPM registration revoked since counts for nothing.
    let Some(identity) = s.store.enrollment_identity(&mac).await? else {
        return Err(refuse(&s, client, format!("mac/{mac}"), "no node has this MAC").await);
    };
    let node = identity.node.clone();
    let subject = format!("node/{node}");
    if req.proofs.asset_tag_v1.is_some() {
        audit_refusal(&s, client, &subject, format!("asset-tag factor: {OUTDATED_AGENT}")).await;
        return Err(HttpError::bad_request(OUTDATED_AGENT));
    }
    let Admitted { policy, ttl, settings } =
        match check_identity(&s, identity, &req, &key, &nonce, client, tpm_challenge).await? {
            Ok(ok) => ok,
            Err(refusal) => return Err(refuse(&s, client, subject, refusal).await),
        };
    let actor = Actor(format!("node:{node}@{client}"));
    let tunnel = match s.tunnels.open(&node, &key, ttl, Some(mode), settings, &actor).await {
        Ok(t) => t,
        Err(StoreError::PoolExhausted(net)) => {
            tracing::error!(%net, "tunnel address pool exhausted");
            return Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Busy,
                "no tunnel address free; retry later",
            ));
        }
        Err(StoreError::Conflict(why)) => return Err(refuse(&s, client, subject, why).await),
        Err(e) => return Err(e.into()),
    };
    let factors: Vec<String> = policy.factors.iter().map(|f| f.to_string()).collect();
    let detail = format!("from={client} factors={} address={}", factors.join(","), tunnel.address);
    s.store.record_event(&actor, "enroll.accepted", &subject, &detail).await?;
    tracing::info!(%node, %client, address = %tunnel.address, "node enrolled");

    let wg = &s.config.wireguard;
    let network = s.tunnels.network();
    let server_address = network.server_address();
    let endpoint = wg.endpoint.clone().unwrap_or_else(|| format!("{}:{}", url_host(conn.local.ip()), wg.listen_port));
    let (datasource_url, phone_home_url) = crate::datasource::urls(server_address, s.config.datasource.port);
    Ok(ApiJson(EnrollResponse {
        node: node.to_string(),
        server_public_key: s.server_public_key.to_base64(),
        endpoint,
        node_address: tunnel.address.to_string(),
        prefix_len: network.prefix_len(),
        server_address: server_address.to_string(),
        expires_in_secs: (tunnel.expires_at - tunnel.created_at).max(0) as u64,
        expires_at: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(tunnel.expires_at as u64),
        )
        .to_string(),
        datasource_url,
        phone_home_url,
    }))
}

/// `POST /v1/enroll/tpm`: the TPM credential challenge (`tpm`). Every refusal, and
/// every bad request that names a nonce, uses the nonce up: a caller gets one try per
/// challenge.
async fn tpm_credential(
    State(s): State<ProvisioningState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<ApiJson<TpmCredentialChallenge>, HttpError> {
    let req: TpmCredentialRequest = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid TPM credential request: {e}")))?;
    let nonce = crate::tpm::request_nonce(&req)?;
    let client = client_address(conn.remote.ip(), &headers, &s.config.provisioning.trusted_proxies);
    let answer = crate::tpm::challenge(s.store.as_ref(), &s.tpm, &s.nonces, &req, &nonce).await;
    if answer.is_err() {
        s.nonces.take(&nonce);
    }
    match answer {
        Ok(challenge) => Ok(ApiJson(challenge)),
        Err(NotIssued::Refused { subject, reason }) => Err(refuse(&s, client, subject, reason).await),
        Err(NotIssued::Failed(e)) => Err(e),
    }
}

/// A node that proved who it is: the factors it proved, its tunnel's lifetime, and the
/// merged settings the decision was made on (its documents render from the same ones).
struct Admitted {
    policy: ferry_core::identity::Policy,
    ttl: u64,
    settings: MergedNodeView,
}

type Decision = Result<Admitted, Refused>;

/// Gathers the evidence for the node's policy and evaluates it. A TPM that proved
/// itself but is not the node's goes to discovery only when every other factor held.
async fn check_identity(
    s: &ProvisioningState,
    identity: ferry_store::EnrollmentIdentity,
    req: &EnrollRequest,
    key: &PublicKey,
    nonce: &[u8; 32],
    client: IpAddr,
    tpm_challenge: Option<crate::tpm::PendingTpm>,
) -> Result<Decision, HttpError> {
    let ferry_store::EnrollmentIdentity { node, merged, asset_tag: tag, tpm: held_tpm } = identity;
    let node = &node;
    let registered = held_tpm.as_ref().is_some_and(|r| r.state == ferry_store::TpmState::Registered);
    let policy = merged.settings.identity_policy(tag.is_some(), registered);
    let network = merged.settings.interfaces.values().any(|i| {
        i.ipv4.map(IpAddr::V4) == Some(client) || i.ipv6.map(IpAddr::V6) == Some(client) || is_mapped(client, i.ipv4)
    });
    let asset_tag = match (&tag, &req.proofs.asset_tag_v2) {
        (None, None) => AssetTagEvidence::NotConfigured,
        // A proof for a tag the inventory does not know proves nothing; it is ignored.
        (None, Some(_)) => AssetTagEvidence::NotConfigured,
        (Some(_), None) => AssetTagEvidence::Missing,
        (Some(tag), Some(proof)) => {
            let ctx = ProofContext { nonce, wg_public_key: &key.0, node, server_public_key: &s.server_public_key.0 };
            if asset_tag_proof_verifies(tag.expose().as_bytes(), proof, &s.server_private_key, key, &ctx) {
                AssetTagEvidence::Valid
            } else {
                AssetTagEvidence::Invalid
            }
        }
    };
    let tpm = crate::tpm::evidence(
        tpm_challenge,
        req.proofs.tpm.as_ref(),
        nonce,
        &key.0,
        node,
        &merged.settings,
        held_tpm.as_ref(),
    );
    if let Some(quoted) = tpm.quoted.filter(|_| !merged.settings.tpm_pcrs.is_empty()) {
        // Kept even when the PCR policy refuses: what `ferry node tpm learn` shows. Only for a
        // node whose policy selects PCRs (nothing to learn otherwise), and never at the cost
        // of the enrollment: a failed record only means there is no quote to learn yet.
        let record = quoted.record(&merged.settings.tpm_pcrs, &client.to_string());
        if let Err(e) = s.store.record_pcr_quote(node, &record).await {
            tracing::warn!(node = %node, error = %e, "could not keep the verified PCR quote for ferry node tpm learn");
        }
    }
    let ttl = merged.settings.tunnel_ttl_secs.unwrap_or(s.config.wireguard.tunnel_ttl_secs);
    let evidence = Evidence { network, asset_tag, tpm: tpm.evidence };
    match (evaluate(&policy, &evidence, &client.to_string()), tpm.candidate) {
        (Ok(()), _) => Ok(Ok(Admitted { policy, ttl, settings: merged })),
        // Every other factor held (`evaluate` checks the TPM last): discovery may hold it.
        (Err(Refused { reason: Refusal::TpmUnregistered(_), verdicts }), Some(candidate)) => {
            let actor = Actor(format!("node:{node}@{client}"));
            let reason =
                Refusal::TpmUnregistered(crate::tpm::discover(s.store.as_ref(), node, &candidate, &actor).await?);
            Ok(Err(Refused { reason, verdicts }))
        }
        (Err(refusal), _) => Ok(Err(refusal)),
    }
}

/// Verifies an asset-tag proof v2 (base64) with the X25519 secret of the server's
/// static key and the node's WireGuard key; a low-order node key never verifies.
fn asset_tag_proof_verifies(
    tag: &[u8],
    proof: &str,
    server_key: &PrivateKey,
    node_key: &PublicKey,
    ctx: &ProofContext<'_>,
) -> bool {
    let (Ok(proof), Some(shared)) = (B64.decode(proof.trim()), server_key.shared_secret(node_key)) else {
        return false;
    };
    verify_asset_tag_proof(tag, &shared, ctx, &proof)
}

/// At start-up: says how many nodes enroll on network position alone (opted in) and how
/// many are refused for want of any stronger factor or an opt-in.
pub async fn warn_about_weak_identities(store: &dyn ferry_store::Store) -> anyhow::Result<()> {
    let nodes = store.list_nodes().await?;
    let weak = nodes.iter().filter(|n| n.identity.weak && !n.identity.refused).count();
    let refused = nodes.iter().filter(|n| n.identity.refused).count();
    if weak > 0 {
        tracing::warn!(
            nodes = weak,
            "{weak} node(s) enroll on network position alone (--identity network): anyone on the provisioning \
             network who takes such a node's address receives its configuration and secrets; give them an asset \
             tag or a TPM (ferry node list shows them as WEAK)"
        );
    }
    if refused > 0 {
        tracing::warn!(
            nodes = refused,
            "{refused} node(s) have no asset tag, no registered TPM and no identity policy: their enrollments are \
             refused until they get one, or an admin accepts network position with --identity network \
             (ferry node list shows them as REFUSED; see docs/operations.md, upgrade notes)"
        );
    }
    Ok(())
}

/// An IPv4 client seen on a dual-stack socket as `::ffff:a.b.c.d`.
fn is_mapped(client: IpAddr, v4: Option<std::net::Ipv4Addr>) -> bool {
    matches!((client, v4), (IpAddr::V6(c), Some(v4)) if c.to_ipv4_mapped() == Some(v4))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's side (node private key, server public key) and the server's (server
    /// private key, node public key) agree; an observer who has every public value but
    /// neither private key cannot confirm even the right tag.
    #[test]
    fn asset_tag_proofs_need_the_secret_shared_with_the_pinned_server_key() {
        let (server, node_key) = (PrivateKey::generate(), PrivateKey::generate());
        let (server_pub, node_pub) = (server.public_key(), node_key.public_key());
        let node = ferry_core::NodeName::parse("n1").unwrap();
        let nonce = [9u8; 32];
        let ctx =
            ProofContext { nonce: &nonce, wg_public_key: &node_pub.0, node: &node, server_public_key: &server_pub.0 };
        let agent_shared = node_key.shared_secret(&server_pub).unwrap();
        let proof = B64.encode(ferry_core::enroll::asset_tag_proof(b"TAG-5e1f-77c0-a9d3", &agent_shared, &ctx));
        assert!(asset_tag_proof_verifies(b"TAG-5e1f-77c0-a9d3", &proof, &server, &node_pub, &ctx));
        assert!(!asset_tag_proof_verifies(b"TAG-5e1f-77c0-a9d4", &proof, &server, &node_pub, &ctx), "wrong tag");
        // Another server (key) cannot check it either: the proof is for the pinned one.
        assert!(!asset_tag_proof_verifies(b"TAG-5e1f-77c0-a9d3", &proof, &PrivateKey::generate(), &node_pub, &ctx));
        // The observer: the right tag, keyed with any public value instead of the secret.
        let raw = B64.decode(&proof).unwrap();
        for stand_in in [server_pub.0, node_pub.0, nonce, [0u8; 32]] {
            assert!(!ferry_core::enroll::verify_asset_tag_proof(b"TAG-5e1f-77c0-a9d3", &stand_in, &ctx, &raw));
        }
        // A low-order "WireGuard key" would make the secret public: never verifies.
        let zero = PublicKey([0u8; 32]);
        let weak_ctx = ProofContext { wg_public_key: &zero.0, ..ctx };
        let forged = B64.encode(ferry_core::enroll::asset_tag_proof(b"TAG-5e1f-77c0-a9d3", &[0u8; 32], &weak_ctx));
        assert!(!asset_tag_proof_verifies(b"TAG-5e1f-77c0-a9d3", &forged, &server, &zero, &weak_ctx));
    }
}
