//! Network boot on the provisioning listener: per-node iPXE and GRUB scripts, and the
//! image artifacts they load. Scripts name no secret; an unknown MAC gets a retry
//! script that names nothing from the inventory. A script fetch is audited, repeats
//! within a minute folded into a count (anyone may ask for a known MAC's script).
//!
//! The asset-tag gate (Warewulf compatibility, see `gate`): a gated image is served
//! only to a request naming a node that boots it with the gate on, with that node's
//! tag. The tag is compared only for such a node, only after the enrollment rate limits
//! admitted the request, and never while the node's gate is locked; a wrong tag is
//! audited (`boot.gate-refused`, never the tag) and counts towards the lock.
//!
//! A kernel request naming a node's MAC (the iPXE script's `?mac=`) is audited once
//! (`boot.artifacts`, repeats folded like script fetches): `ferry node status` shows the
//! node loading its image. One entry per boot, never one per range or other artifact.

use crate::artifacts;
use crate::client_addr::{client_address, source_group};
use crate::gate::GateGuard;
use crate::limits::EnrollLimits;
use crate::listen::TcpConn;
use crate::metrics::Metrics;
use crate::Config;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ferry_core::boot::{grub_config, ipxe_chain, ipxe_retry, ipxe_script, BootTarget};
use ferry_core::merge::merge_node;
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::{MacAddr, Node, NodeName};
use ferry_store::Store;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where an artifact with this digest lives.
pub fn object_path(data_dir: &std::path::Path, sha256: &str) -> PathBuf {
    data_dir.join("objects").join("sha256").join(sha256)
}

#[derive(Clone)]
pub struct BootState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// The tunnel network: boot scripts name the datasource on its server address.
    pub network: TunnelNetwork,
    pub config: Arc<Config>,
    pub server_public_key: String,
    /// Images used by at least one asset-gated node, recomputed every few seconds.
    gated: Arc<Mutex<(Option<Instant>, HashSet<String>)>>,
    /// The enrollment rate limits, which tag guesses go through too.
    limits: Arc<EnrollLimits>,
    guard: Arc<GateGuard>,
}

impl BootState {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        network: TunnelNetwork,
        config: Arc<Config>,
        server_public_key: String,
        limits: Arc<EnrollLimits>,
    ) -> Self {
        let p = &config.provisioning;
        let guard = Arc::new(GateGuard::new(p.boot_gate_max_failures, p.boot_gate_lockout_secs));
        let gated = Arc::new(Mutex::new((None, HashSet::new())));
        BootState { store, metrics, network, config, server_public_key, gated, limits, guard }
    }
}

pub fn router(state: BootState) -> Router {
    Router::new()
        .route("/boot/ipxe", get(ipxe_by_query))
        .route("/boot/ipxe/{mac}", get(ipxe_by_path))
        .route("/boot/grub", get(grub_by_query))
        .route("/boot/grub/{mac}", get(grub_by_path))
        .route("/boot/images/{image}/{artifact}", get(image_artifact))
        .with_state(state)
}

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
    asset: Option<String>,
}

/// The URL nodes use for us: configured, else from the request's Host header.
fn base_url(s: &BootState, headers: &HeaderMap) -> String {
    if let Some(u) = &s.config.provisioning.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']')))
        .map(str::to_owned)
        .unwrap_or_else(|| s.config.provisioning.listen.to_string());
    format!("http://{host}")
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

enum Script {
    Ipxe,
    Grub,
}

async fn script(s: &BootState, headers: &HeaderMap, mac: Option<&str>, kind: Script) -> Response {
    let base = base_url(s, headers);
    let retry = |why: &str| match kind {
        Script::Ipxe => text(ipxe_retry(&base, why)),
        Script::Grub => text(format!("echo 'ferry: {why}'\nsleep 30\nreboot\n")),
    };
    let Some(mac) = mac else {
        return match kind {
            Script::Ipxe => text(ipxe_chain(&base)),
            Script::Grub => (StatusCode::BAD_REQUEST, "give ?mac=\n").into_response(),
        };
    };
    let Ok(mac) = MacAddr::parse(mac) else { return retry("that is not a MAC address") };
    let store = &s.store;
    let node = match store.node_by_mac(&mac).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            tracing::info!(%mac, "boot request from an unknown MAC");
            return retry("no node has this MAC");
        }
        Err(e) => {
            tracing::error!(error = %e, "boot lookup failed");
            return retry("server error");
        }
    };
    let Ok(merged) = store.merged_node(&node).await else { return retry("server error") };
    let tag = merged.asset_tag == ferry_api::admin::SecretState::Set;
    let Some(image_name) = merged.settings.image.clone() else { return retry("this node has no image") };
    let image = match store.get_image(&image_name).await {
        Ok(Some(i)) => i,
        _ => return retry("this node's image is not imported"),
    };
    let (datasource_url, _) = crate::datasource::urls(s.network.server_address(), s.config.datasource.port);
    let target = BootTarget {
        node: &node,
        image: &image.name,
        base_url: &base,
        server_public_key: &s.server_public_key,
        datasource_url: &datasource_url,
        has_rootfs: image.rootfs_gz.is_some(),
        asset_gate: merged.settings.boot_asset_gate == Some(true) && tag,
    };
    let actor = ferry_store::Actor(format!("mac:{mac}"));
    let (subject, detail) = (format!("node/{node}"), format!("image={image_name}"));
    if let Err(e) = store.record_repeatable_event(&actor, "boot.script", &subject, &detail).await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
    text(match kind {
        Script::Ipxe => ipxe_script(&merged.settings, &target),
        Script::Grub => grub_config(&merged.settings, &target),
    })
}

async fn ipxe_by_query(State(s): State<BootState>, headers: HeaderMap, Query(q): Query<MacQuery>) -> Response {
    script(&s, &headers, q.mac.as_deref(), Script::Ipxe).await
}
async fn ipxe_by_path(State(s): State<BootState>, headers: HeaderMap, Path(mac): Path<String>) -> Response {
    script(&s, &headers, Some(&mac), Script::Ipxe).await
}
async fn grub_by_query(State(s): State<BootState>, headers: HeaderMap, Query(q): Query<MacQuery>) -> Response {
    script(&s, &headers, q.mac.as_deref(), Script::Grub).await
}
async fn grub_by_path(State(s): State<BootState>, headers: HeaderMap, Path(mac): Path<String>) -> Response {
    script(&s, &headers, Some(&mac), Script::Grub).await
}

/// Images that at least one gated node (with an asset tag) boots.
async fn gated_images(s: &BootState) -> HashSet<String> {
    {
        let cache = s.gated.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return cache.1.clone();
        }
    }
    let store = &s.store;
    let (Ok(nodes), Ok(profiles)) = (store.list_nodes().await, store.list_profiles().await) else {
        return HashSet::new();
    };
    let profiles = profiles
        .into_iter()
        .map(|p| (p.name.clone(), ferry_core::Profile { name: p.name, profiles: p.profiles, settings: p.settings }))
        .collect();
    let mut gated = HashSet::new();
    for n in nodes.into_iter().filter(|n| n.asset_tag == ferry_api::admin::SecretState::Set) {
        let node = Node { name: n.name, profiles: n.profiles, settings: n.settings };
        if let Ok(m) = merge_node(&node, &profiles) {
            if let (Some(true), Some(image)) = (m.settings.boot_asset_gate, m.settings.image) {
                gated.insert(image);
            }
        }
    }
    *s.gated.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), gated.clone());
    gated
}

/// The node a gated-artifact request names, with its tag, if that node boots `image`
/// with its gate on and has a tag: the only case in which a tag is compared.
async fn gated_node(s: &BootState, image: &str, mac: Option<&str>) -> Option<(NodeName, ferry_api::Secret)> {
    let mac = MacAddr::parse(mac?).ok()?;
    let store = &s.store;
    let node = store.node_by_mac(&mac).await.ok()??;
    let (merged, tag) = store.node_identity(&node).await.ok()?;
    let gated = merged.settings.image.as_deref() == Some(image) && merged.settings.boot_asset_gate == Some(true);
    Some((node, tag.filter(|_| gated)?))
}

/// Warewulf-style gating (see the module's documentation). `Err` is the answer.
async fn gate(s: &BootState, image: &str, q: &MacQuery, conn: TcpConn, headers: &HeaderMap) -> Result<(), Response> {
    if !gated_images(s).await.contains(image) {
        return Ok(());
    }
    // The same answer whatever failed, so that it tells nothing about the tag.
    let forbidden = || (StatusCode::FORBIDDEN, "this image needs the node's asset tag\n").into_response();
    let Some((node, tag)) = gated_node(s, image, q.mac.as_deref()).await else {
        tracing::debug!(%image, "gated artifact requested without naming a gated node that boots it");
        return Err(forbidden());
    };
    let metrics = &s.metrics;
    let now = Instant::now();
    if s.guard.locked(&node, now).is_some() {
        metrics.gate_refused("locked");
        tracing::debug!(%node, %image, "gated artifact refused: the node's boot gate is locked");
        return Err(forbidden());
    }
    let client = client_address(conn.remote.ip(), headers, &s.config.provisioning.trusted_proxies);
    if let Err(t) = s.limits.check(client) {
        metrics.gate_refused("throttled");
        s.limits.log_refusal(source_group(client), "/boot/images (asset-tag gate)", t);
        return Err(t.into_response());
    }
    let asset = q.asset.as_deref().unwrap_or_default();
    if bool::from(subtle::ConstantTimeEq::ct_eq(tag.expose().as_bytes(), asset.as_bytes())) {
        return Ok(());
    }
    let failure = s.guard.failed(&node, now);
    metrics.gate_refused("wrong-tag");
    let max = s.guard.max_failures();
    let lockout = s.guard.lockout().as_secs();
    tracing::warn!(%node, %client, %image, failures = failure.count, max, "wrong asset tag at the boot gate");
    let (store, actor, subject) = (&s.store, ferry_store::Actor(format!("client:{client}")), format!("node/{node}"));
    let detail = format!("from={client} image={image} failures={}/{max} within={lockout}s", failure.count);
    if let Err(e) = store.record_event(&actor, "boot.gate-refused", &subject, &detail).await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
    if failure.locked {
        metrics.boot_gate_lockouts.inc();
        tracing::error!(
            %node,
            %client,
            "boot gate of node {node} locked for {lockout} s after {max} wrong asset tags within {lockout} s \
             (is someone guessing its tag?); its gated artifacts are refused meanwhile, even with the right tag"
        );
        let detail = format!("from={client} image={image} after={max} locked_for={lockout}s");
        if let Err(e) = store.record_event(&actor, "boot.gate-locked", &subject, &detail).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
    Err(forbidden())
}

/// Audits that the node with `mac` (as its iPXE script names it) is loading `image`.
/// Nothing for a MAC no node has: the URL is anyone's to ask for.
async fn note_artifacts(s: &BootState, image: &str, mac: Option<&str>) {
    let Some(mac) = mac.and_then(|m| MacAddr::parse(m).ok()) else { return };
    let node = match s.store.node_by_mac(&mac).await {
        Ok(Some(node)) => node,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "boot lookup failed");
            return;
        }
    };
    let (actor, subject) = (ferry_store::Actor(format!("mac:{mac}")), format!("node/{node}"));
    let detail = format!("image={image} artifact=kernel");
    if let Err(e) = s.store.record_repeatable_event(&actor, "boot.artifacts", &subject, &detail).await {
        tracing::error!(error = %e, "cannot write the audit log");
    }
}

async fn image_artifact(
    State(s): State<BootState>,
    ConnectInfo(conn): ConnectInfo<TcpConn>,
    Path((image, artifact)): Path<(String, String)>,
    Query(q): Query<MacQuery>,
    headers: HeaderMap,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such image artifact\n").into_response();
    let Ok(Some(record)) = s.store.get_image(&image).await else { return not_found() };
    // A sealed root is ciphertext: its key, delivered only in the node's tunnel, is its
    // gate. Everything else of a gated image is gated (Warewulf's scheme).
    let sealed_root = artifact == "root" && record.root.as_ref().is_some_and(|r| r.sealed);
    if !sealed_root {
        if let Err(refused) = gate(&s, &image, &q, conn, &headers).await {
            return refused;
        }
    }
    let root = record.root.as_ref().map(|r| r.artifact());
    let accepts_zstd = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("zstd")));
    let chosen = match artifact.as_str() {
        "kernel" => Some(&record.kernel),
        "initrd" => Some(&record.initrd),
        // The kernel unpacks either; zstd is smaller and faster where the client says so.
        "rootfs" if accepts_zstd => record.rootfs_zst.as_ref(),
        "rootfs" => record.rootfs_gz.as_ref(),
        "root" => root.as_ref(),
        _ => None,
    };
    let Some(a) = chosen else { return not_found() };
    // A Range request continues a download that was already noted.
    if artifact == "kernel" && !headers.contains_key(header::RANGE) {
        note_artifacts(&s, &image, q.mac.as_deref()).await;
    }
    let vary: &[(header::HeaderName, &'static str)] =
        if artifact == "rootfs" { &[(header::VARY, "accept-encoding")] } else { &[] };
    artifacts::serve(&object_path(&s.config.data_dir, &a.sha256), &a.sha256, &headers, vary).await
}
