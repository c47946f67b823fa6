//! One simulated node: challenge, enroll (real X25519 key, real asset-tag proof), then
//! the four documents and phone-home — through a real WireGuard tunnel (`wire`), or
//! (`--no-wire`) over loopback from a socket bound to its tunnel address.

use super::report::{Stats, Step};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::enroll::{Challenge, EnrollRequest, EnrollResponse, Proofs};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub fn node_name(i: usize) -> String {
    format!("s{i:05}")
}
pub fn node_mac(i: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}
pub fn node_tag(i: usize) -> String {
    format!("storm-asset-{i}")
}

/// A node that enrolled and has not finished.
pub struct Session {
    /// The simulated node's index.
    pub node: usize,
    pub address: IpAddr,
    pub server: SocketAddr,
    pub started: Instant,
    /// What its WireGuard tunnel needs (wire mode).
    pub tunnel: Option<super::wire::TunnelParams>,
}

async fn request(
    local: Option<IpAddr>,
    server: SocketAddr,
    method: Method,
    path: &str,
    json: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), String> {
    let sock = if server.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|_| "socket")?;
    if let Some(l) = local {
        sock.bind(SocketAddr::new(l, 0)).map_err(|_| "bind")?;
    }
    let stream = sock.connect(server).await.map_err(|_| "connect")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| "handshake")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", server.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|_| "request")?;
    let resp = sender.send_request(req).await.map_err(|_| "send")?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|_| "body")?.to_bytes();
    Ok((status, body))
}

pub fn expect_ok(step: Step, r: Result<(StatusCode, Bytes), String>, stats: &Stats) -> Option<Bytes> {
    match r {
        Ok((s, b)) if s.is_success() => Some(b),
        Ok((s, _)) => {
            stats.error(format!("{} HTTP {}", step.name(), s.as_u16()));
            None
        }
        Err(kind) => {
            stats.error(format!("{} {kind}", step.name()));
            None
        }
    }
}

/// A server under test: where to enroll, and the key it must present.
pub struct Target {
    pub provisioning: SocketAddr,
    pub server_key: String,
}

/// What every simulated node of a run does.
pub struct Plan {
    pub targets: Vec<Target>,
    /// Through real WireGuard tunnels, or over loopback (`--no-wire`).
    pub wire: bool,
    /// One TCP connection for all of a node's requests inside the tunnel, instead of
    /// one per request (what cloud-init and today's agent do).
    pub keep_alive: bool,
    /// How long a failed node boots again (`--retry-for`; zero: never).
    pub retry_for: std::time::Duration,
}

/// The server node `i` tries first: the one its MAC picks, as the agent's default
/// (`ferry.server_order=hashed`) does.
pub fn first_server(i: usize, servers: usize) -> usize {
    ferry_core::MacAddr::parse(&node_mac(i)).map(|m| m.first_server(servers)).unwrap_or(0)
}

/// Node `i` enrolls at the server its MAC picks (a retry: the next one, as the agent
/// goes round the list).
pub async fn enroll_only(i: usize, attempt: usize, plan: Arc<Plan>, stats: Arc<Stats>) -> Option<Session> {
    let targets = &plan.targets;
    let index = (first_server(i, targets.len()) + attempt) % targets.len();
    let target = &targets[index];
    let (prov, server_key) = (target.provisioning, &target.server_key);
    let started = Instant::now();
    let t = Instant::now();
    let body = expect_ok(
        Step::Challenge,
        request(None, prov, Method::POST, ferry_api::enroll::CHALLENGE_PATH, None).await,
        &stats,
    )?;
    stats.record(Step::Challenge, t.elapsed());
    let challenge: Challenge = serde_json::from_slice(&body).ok()?;
    let nonce = B64.decode(&challenge.nonce).ok()?;
    let key = ferry_wg::PrivateKey::generate();
    let public = key.public_key();
    let node = ferry_core::NodeName::parse(&node_name(i)).ok()?;
    // Like the agent: the proof is keyed with the secret shared with the pinned key.
    let pinned: ferry_wg::PublicKey = server_key.parse().ok()?;
    if challenge.server_public_key.as_deref() != Some(server_key.as_str()) {
        stats.error("challenge: server key mismatch".into());
        return None;
    }
    let shared = key.shared_secret(&pinned)?;
    let ctx = ferry_core::enroll::ProofContext {
        nonce: &nonce,
        wg_public_key: &public.0,
        node: &node,
        server_public_key: &pinned.0,
    };
    let proof = ferry_core::enroll::asset_tag_proof(node_tag(i).as_bytes(), &shared, &ctx);
    let req = EnrollRequest {
        mac: node_mac(i),
        public_key: public.to_base64(),
        nonce: challenge.nonce,
        proofs: Proofs { asset_tag_v2: Some(B64.encode(proof)), asset_tag_v1: None, tpm: None },
        // Like the agent in fetch mode: the node fetches and phones home itself.
        mode: Some("fetch".into()),
    };
    let t = Instant::now();
    let sent = t;
    let body = expect_ok(
        Step::Enroll,
        request(None, prov, Method::POST, ferry_api::enroll::ENROLL_PATH, serde_json::to_vec(&req).ok()).await,
        &stats,
    )?;
    stats.record(Step::Enroll, t.elapsed());
    let resp: EnrollResponse = serde_json::from_slice(&body).ok()?;
    if resp.server_public_key != *server_key {
        stats.error("enroll: server key mismatch".into());
        return None;
    }
    let address: IpAddr = resp.node_address.parse().ok()?;
    // http://SERVER_TUNNEL_ADDRESS:PORT/ (each lab server has its own datasource port).
    let authority = resp.datasource_url.strip_prefix("http://")?.split('/').next()?;
    let server: SocketAddr = authority.parse().ok()?;
    let tunnel = match (plan.wire, address) {
        (true, IpAddr::V4(node_address)) => Some(super::wire::TunnelParams {
            node_key: *key.as_bytes(),
            server_key: pinned.0,
            endpoint: resp.endpoint.parse().ok()?,
            node_address,
            datasource: server,
            index: i as u32,
        }),
        (true, IpAddr::V6(_)) => {
            stats.error("enroll: IPv6 tunnel address (the bench speaks IPv4 in the tunnel)".into());
            return None;
        }
        (false, _) => None,
    };
    stats.tunnel_opened();
    stats.enrolled_at(index, sent);
    Some(Session { node: i, address, server, started, tunnel })
}

/// Whether the node completed (phoned home).
pub async fn finish(session: Option<Session>, plan: Arc<Plan>, stats: Arc<Stats>) -> bool {
    let Some(s) = session else { return false };
    if s.tunnel.is_some() {
        return super::wire_node::finish(s, &plan, &stats).await;
    }
    for doc in ["meta-data", "user-data", "vendor-data", "network-config"] {
        let t = Instant::now();
        if expect_ok(
            Step::Document,
            request(Some(s.address), s.server, Method::GET, &format!("/{doc}"), None).await,
            &stats,
        )
        .is_none()
        {
            return false;
        }
        stats.record(Step::Document, t.elapsed());
    }
    let report = ferry_api::enroll::PhoneHome { instance_id: Some("storm".into()), ..Default::default() };
    let t = Instant::now();
    if expect_ok(
        Step::PhoneHome,
        request(Some(s.address), s.server, Method::POST, "/phone-home", serde_json::to_vec(&report).ok()).await,
        &stats,
    )
    .is_some()
    {
        stats.record(Step::PhoneHome, t.elapsed());
        stats.record(Step::Node, s.started.elapsed());
        stats.phoned_home(s.node);
        stats.completed();
        stats.tunnel_closed();
        return true;
    }
    false
}

/// A whole boot; with `--retry-for`, a failed one boots again from the start (at the
/// next server) after a doubling wait, as the agent does, until the time is up.
pub async fn full_boot(i: usize, plan: Arc<Plan>, stats: Arc<Stats>) {
    let give_up = Instant::now() + plan.retry_for;
    let mut wait = std::time::Duration::from_millis(200);
    for attempt in 0.. {
        let s = enroll_only(i, attempt, plan.clone(), stats.clone()).await;
        if finish(s, plan.clone(), stats.clone()).await {
            if attempt > 0 {
                stats.node_retried();
            }
            return;
        }
        // A little jitter, so that refused nodes do not all come back at once.
        let pause = wait + std::time::Duration::from_millis((i % 97) as u64 * 2);
        if Instant::now() + pause > give_up {
            return;
        }
        stats.retry();
        tokio::time::sleep(pause).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(2));
    }
}

/// Runs the futures with at most `sem` permits in flight, in order of creation. A task
/// is spawned only once it has its permit: spawning all N at once allocated every
/// node's whole future up front (an async fn's future is as large as its largest
/// state), ~26 KiB per node in wire mode (client peak RSS 345 → 84 MiB at 10,000 nodes).
pub async fn run_all<Fut, T>(
    futs: impl IntoIterator<Item = Fut>,
    sem: &Arc<tokio::sync::Semaphore>,
    progress: &indicatif::ProgressBar,
) -> Vec<T>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static + Default,
{
    let mut handles = Vec::new();
    for f in futs {
        let Ok(permit) = sem.clone().acquire_owned().await else { break };
        let pb = progress.clone();
        handles.push(tokio::spawn(async move {
            let r = f.await;
            drop(permit);
            pb.inc(1);
            r
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or_default());
    }
    out
}
