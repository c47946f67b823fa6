//! The in-process test server: the real routers of every audience, built by `app` as
//! `Server::build` builds them, over a temporary SQLite store, a recording WireGuard
//! device and the default configuration. Requests go to the routers without sockets;
//! the caller's address (provisioning, datasource) or credentials (admin socket) go in
//! as each listener puts them. Refusals, header handling, datasource identity and admin
//! access are tested with it in milliseconds, without root or namespaces; the root-only
//! end-to-end tests (`crates/ferry/tests`) stay the proof with the real components.

mod device;

mod admin_access;
mod boot_artifacts;
mod datasource_identity;
mod enrollment;
mod forged_headers;

pub use device::RecordingDevice;

use crate::app::{Handlers, Parts, Routers};
use crate::listen::{PeerCred, TcpConn};
use crate::tunnels::TunnelManager;
use crate::Config;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ferry_api::admin::{AddNodes, NewNode};
use ferry_api::enroll::{EnrollRequest, Proofs};
use ferry_api::Secret;
use ferry_core::enroll::{asset_tag_proof, ProofContext};
use ferry_core::tunnel::TunnelNetwork;
use ferry_core::NodeName;
use ferry_store::{Actor, Role, Sealer, SqlStore, Store};
use ferry_wg::{PrivateKey, PublicKey};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tower::ServiceExt;

/// The address nodes reach the provisioning listener on.
pub const PROVISIONING: &str = "192.0.2.1:8470";

/// A running in-process server.
pub struct TestServer {
    pub store: Arc<dyn Store>,
    pub tunnels: Arc<TunnelManager>,
    pub device: RecordingDevice,
    pub config: Arc<Config>,
    pub server_public_key: PublicKey,
    routers: Routers,
    _dir: tempfile::TempDir,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The error kind of a ferry error body.
    pub fn kind(&self) -> String {
        self.json()["kind"].as_str().unwrap_or_default().to_owned()
    }
}

/// A request: `method path` with a body (JSON when it is not empty).
pub fn request(method: &str, path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("host", "ferry")
        .body(body.into())
        .expect("a well-formed request")
}

pub fn get(path: &str) -> Request<Body> {
    request("GET", path, Body::empty())
}

/// `req` with one more header.
pub fn with_header(mut req: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    req.headers_mut().insert(name, value.parse().expect("a header value"));
    req
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

impl TestServer {
    /// A server with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with the default configuration as `change` leaves it.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        change(&mut config);
        config.validate().expect("a valid test configuration");
        let store: Arc<dyn Store> = Arc::new(
            SqlStore::open_sqlite(&dir.path().join("ferry.db"), Sealer::ephemeral()).await.expect("a SQLite store"),
        );
        let device = RecordingDevice::default();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let network: TunnelNetwork = config.wireguard.network;
        let tunnels = Arc::new(
            TunnelManager::new(store.clone(), Box::new(device.clone()), network, "test".into())
                .with_metrics(metrics.clone()),
        );
        let server_key = PrivateKey::generate();
        let server_public_key = server_key.public_key();
        let config = Arc::new(config);
        let handlers = Handlers::new(Parts {
            config: config.clone(),
            store: store.clone(),
            metrics,
            tunnels: tunnels.clone(),
            server_key,
            tpm: Arc::new(crate::tpm::TpmPolicy::load(&config.tpm).expect("the TPM policy")),
            allowed_uids: Arc::new(crate::allowed_uids(&config.admin_users).expect("the admin users")),
            provisioning_tls_pin: None,
            backend: ferry_wg::BackendKind::Userspace,
        });
        let routers = handlers.routers(&config);
        TestServer { store, tunnels, device, config, server_public_key, routers, _dir: dir }
    }

    async fn call<I: Clone + Send + Sync + 'static>(router: &Router, info: I, mut req: Request<Body>) -> Answer {
        req.extensions_mut().insert(ConnectInfo(info));
        let resp = router.clone().oneshot(req).await.expect("routers answer every request");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("a readable body");
        Answer { status: parts.status, headers: parts.headers, body }
    }

    /// A request on the admin socket from a process of `uid` (`None`: the kernel
    /// could not say).
    pub async fn admin(&self, uid: Option<u32>, req: Request<Body>) -> Answer {
        Self::call(&self.routers.admin, PeerCred { uid, pid: Some(4242) }, req).await
    }

    /// A request on the remote admin listener with `token` as its bearer token.
    pub async fn remote(&self, token: Option<&str>, req: Request<Body>) -> Answer {
        let req = match token {
            Some(t) => with_header(req, "authorization", &format!("Bearer {t}")),
            None => req,
        };
        // The remote router ignores the peer; the listener gives it a TCP peer anyway.
        let conn = TcpConn { local: "192.0.2.1:8472".parse().unwrap(), remote: "192.0.2.200:40000".parse().unwrap() };
        Self::call(&self.routers.remote_admin, conn, req).await
    }

    /// A request on the provisioning listener from `from`.
    pub async fn provisioning(&self, from: IpAddr, req: Request<Body>) -> Answer {
        let conn = TcpConn { local: PROVISIONING.parse().unwrap(), remote: SocketAddr::new(from, 40000) };
        Self::call(&self.routers.provisioning, conn, req).await
    }

    /// A request on the datasource listener from `from`.
    pub async fn datasource(&self, from: IpAddr, req: Request<Body>) -> Answer {
        let local = SocketAddr::new(self.config.wireguard.network.server_address(), self.config.datasource.port);
        Self::call(&self.routers.datasource, TcpConn { local, remote: SocketAddr::new(from, 40000) }, req).await
    }

    /// Adds node `name` with an interface (`mac`, `ipv4`), `settings` (JSON, merged
    /// over that) and an asset tag.
    pub async fn add_node(&self, name: &str, mac: &str, ipv4: &str, settings: serde_json::Value, tag: Option<&str>) {
        let mut all = serde_json::json!({"interfaces": {"eth0": {"mac": mac, "ipv4": ipv4}}});
        all.as_object_mut().unwrap().extend(settings.as_object().cloned().unwrap_or_default());
        let node = NewNode {
            name: NodeName::parse(name).unwrap(),
            profiles: vec![],
            settings: serde_json::from_value(all).expect("node settings"),
            asset_tag: tag.map(|t| Secret::new(t.to_owned())),
        };
        self.store.add_nodes(AddNodes { nodes: vec![node] }, &Actor("test".into())).await.expect("the node is added");
    }

    /// A token for `role`, expiring at `expires_at` (seconds since the epoch).
    pub async fn token(&self, name: &str, role: Role, expires_at: Option<i64>) -> String {
        let token = crate::remote::new_token();
        let hash = crate::remote::token_hash(&token);
        self.store.create_token(name, role, &hash, expires_at, &Actor("test".into())).await.expect("a token");
        token.to_string()
    }

    /// A fresh nonce for a node at `from`.
    pub async fn challenge(&self, from: IpAddr) -> String {
        let a = self.provisioning(from, request("POST", ferry_api::enroll::CHALLENGE_PATH, Body::empty())).await;
        assert_eq!(a.status, StatusCode::OK, "a challenge: {a:?}");
        a.json()["nonce"].as_str().expect("a nonce").to_owned()
    }

    /// Sends an enrollment request from `from`.
    pub async fn enroll(&self, from: IpAddr, req: &EnrollRequest) -> Answer {
        let body = serde_json::to_vec(req).unwrap();
        self.provisioning(from, request("POST", ferry_api::enroll::ENROLL_PATH, body)).await
    }

    /// Enrolls the node with `mac` that opted in to its address alone (`--identity
    /// network`) from `from`; its tunnel address.
    pub async fn enroll_by_address(&self, from: IpAddr, mac: &str) -> IpAddr {
        let a = Attempt::new(self, from).await;
        let answer = self.enroll(from, &a.request(mac, Proofs::default())).await;
        assert_eq!(answer.status, StatusCode::OK, "enrolled: {answer:?}");
        answer.json()["node_address"].as_str().expect("a tunnel address").parse().expect("an address")
    }

    /// Active tunnels in the store.
    pub async fn active_tunnels(&self) -> usize {
        self.store.list_tunnels().await.expect("the tunnel list").len()
    }

    /// Nothing was granted: no tunnel in the store, none in the datasource's view, no
    /// peer on the device.
    pub async fn assert_nothing_granted(&self) {
        assert_eq!(self.active_tunnels().await, 0, "no tunnel in the store");
        assert_eq!(self.tunnels.active_count(), 0, "no tunnel the datasource would answer");
        assert!(self.device.keys().is_empty(), "no device peer");
    }

    /// The audit log of `subject` (`node/n1`), one `action detail` line per entry.
    pub async fn audit(&self, subject: &str) -> String {
        self.store.flush().await.expect("the audit log is written");
        let entries = self.store.audit(Some(subject), 1000).await.expect("the audit log");
        entries.iter().map(|e| format!("{} {} {}\n", e.actor, e.action, e.detail)).collect()
    }

    /// Every audit entry (how many).
    pub async fn audit_rows(&self) -> usize {
        self.store.flush().await.expect("the audit log is written");
        self.store.audit(None, 1_000_000).await.expect("the audit log").len()
    }
}

/// A node's side of an enrollment: its fresh WireGuard key and the proofs it sends.
pub struct Attempt {
    pub key: PrivateKey,
    pub nonce: String,
}

impl Attempt {
    /// A fresh key and a nonce from the server for a node at `from`.
    pub async fn new(server: &TestServer, from: IpAddr) -> Attempt {
        Attempt { key: PrivateKey::generate(), nonce: server.challenge(from).await }
    }

    /// The asset-tag proof v2 of `tag` for `node`, bound to this attempt's nonce and
    /// key and to the server's key.
    pub fn proof(&self, server: &TestServer, tag: &str, node: &str) -> String {
        let nonce: [u8; 32] = B64.decode(&self.nonce).unwrap().try_into().unwrap();
        let node = NodeName::parse(node).unwrap();
        let public = self.key.public_key();
        let ctx = ProofContext {
            nonce: &nonce,
            wg_public_key: &public.0,
            node: &node,
            server_public_key: &server.server_public_key.0,
        };
        let shared = self.key.shared_secret(&server.server_public_key).expect("a shared secret");
        B64.encode(asset_tag_proof(tag.as_bytes(), &shared, &ctx))
    }

    /// The enrollment request for `mac` with this attempt's key, nonce and proofs.
    pub fn request(&self, mac: &str, proofs: Proofs) -> EnrollRequest {
        EnrollRequest {
            mac: mac.to_owned(),
            public_key: self.key.public_key().to_base64(),
            nonce: self.nonce.clone(),
            proofs,
            mode: None,
        }
    }

    /// With an asset-tag proof v2.
    pub fn with_tag(&self, server: &TestServer, mac: &str, tag: &str, node: &str) -> EnrollRequest {
        self.request(mac, Proofs { asset_tag_v2: Some(self.proof(server, tag, node)), ..Default::default() })
    }
}
