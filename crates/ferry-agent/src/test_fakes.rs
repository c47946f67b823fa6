//! Test fakes: a scripted HTTP server, a recording tunnel factory, captured stdout, and
//! the canned configuration, enrollment answer and lease they go with.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::EnrollResponse;
use ferry_core::{MacAddr, NodeName};
use ferry_wg::{BackendChoice, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::args::{Mode, ServerOrder};
use crate::attest::{CredentialChallenge, TpmAnswer, TpmBackend, TpmIdentity};
use crate::config::{Config, ServerUrl, Tuning};
use crate::error::AgentError;
use crate::http::{Method, Request, Response, Transport, TransportError};
use crate::machine::{Agent, Lease};
use crate::tunnel::{Tunnel, TunnelFactory, TunnelSpec};
use ferry_wg::BackendKind;

pub const CHALLENGE: &str = "http://192.0.2.1:8080/v1/enroll/challenge";
pub const TPM: &str = "http://192.0.2.1:8080/v1/enroll/tpm";
pub const ENROLL: &str = "http://192.0.2.1:8080/v1/enroll";
pub const DS: &str = "http://100.64.0.1:8081/";
pub const PHONE: &str = "http://100.64.0.1:8081/phone-home";
pub const TAG: &str = "TAG-0001";
pub const NONCE: [u8; 32] = [9; 32];

type Reply = Result<Response, TransportError>;
type Routes = HashMap<(Method, String), VecDeque<Reply>>;

/// A scripted server: per (method, URL) a queue of replies; the last one repeats.
#[derive(Clone, Default)]
pub struct FakeServer {
    routes: Arc<Mutex<Routes>>,
    log: Arc<Mutex<Vec<Request>>>,
    /// At each `drop_connections`: how many requests had been sent.
    drops: Arc<Mutex<Vec<usize>>>,
}

impl FakeServer {
    pub fn on(&self, method: Method, url: &str, reply: Reply) -> &Self {
        self.routes.lock().expect("lock").entry((method, url.to_string())).or_default().push_back(reply);
        self
    }
    /// The URLs requested, in order.
    pub fn urls(&self) -> Vec<String> {
        self.log.lock().expect("lock").iter().map(|r| r.url.clone()).collect()
    }
    /// Every request, in order.
    pub fn log(&self) -> Vec<Request> {
        self.log.lock().expect("lock").clone()
    }
    /// The number of requests sent before each `drop_connections`.
    pub fn drops(&self) -> Vec<usize> {
        self.drops.lock().expect("lock").clone()
    }
    pub fn requests(&self, method: Method, url: &str) -> Vec<Request> {
        self.log.lock().expect("lock").iter().filter(|r| r.method == method && r.url == url).cloned().collect()
    }
}

#[async_trait]
impl Transport for FakeServer {
    async fn send(&self, req: Request) -> Result<Response, TransportError> {
        self.log.lock().expect("lock").push(req.clone());
        let mut routes = self.routes.lock().expect("lock");
        match routes.get_mut(&(req.method, req.url.clone())) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap_or_else(|| unreachable_reply(&req.url)),
            Some(q) => q.front().cloned().unwrap_or_else(|| unreachable_reply(&req.url)),
            None => unreachable_reply(&req.url),
        }
    }

    fn drop_connections(&self) {
        let sent = self.log.lock().expect("lock").len();
        self.drops.lock().expect("lock").push(sent);
    }
}

pub fn unreachable_reply(url: &str) -> Reply {
    Err(TransportError(format!("cannot connect to {url}: Connection refused")))
}

pub fn reply(status: u16, body: &[u8]) -> Reply {
    Ok(Response { status, retry_after: None, body: body.to_vec() })
}

pub fn busy(retry_after_secs: u64) -> Reply {
    Ok(Response {
        status: 503,
        retry_after: Some(Duration::from_secs(retry_after_secs)),
        body: br#"{"error":"busy","kind":"unavailable"}"#.to_vec(),
    })
}

/// The datasource documents (network-config absent) and phone-home.
pub fn serve_documents(server: &FakeServer) {
    let doc = |name: &str| format!("{DS}{name}");
    server.on(Method::Get, &doc("meta-data"), reply(200, b"instance-id: i-n1-7\nlocal-hostname: n1\n"));
    server.on(Method::Get, &doc("user-data"), reply(200, b"#cloud-config\n"));
    server.on(Method::Get, &doc("vendor-data"), reply(200, b"#cloud-config\n{}\n"));
    server.on(Method::Get, &doc("network-config"), reply(404, br#"{"error":"not found","kind":"not-found"}"#));
    server.on(Method::Post, PHONE, reply(200, b"{}"));
}

/// The challenge answer, naming the server's (pinned) key.
pub fn challenge_body() -> Vec<u8> {
    format!(r#"{{"nonce":"{}","expires_in_secs":60,"server_public_key":"{}"}}"#, STANDARD.encode(NONCE), server_key())
        .into_bytes()
}

/// The server's static key (its public half is what the test config pins).
pub fn server_private_key() -> PrivateKey {
    PrivateKey::from_bytes([7; 32])
}

pub fn server_key() -> PublicKey {
    server_private_key().public_key()
}

/// The server's check of an asset-tag proof the agent sent for `TAG` and node n1.
pub fn tag_proof_verifies(node_key: &PublicKey, proof_b64: &str) -> bool {
    let node = ferry_core::NodeName::parse("n1").expect("name");
    let shared = server_private_key().shared_secret(node_key).expect("contributory");
    let ctx = ferry_core::enroll::ProofContext {
        nonce: &NONCE,
        wg_public_key: &node_key.0,
        node: &node,
        server_public_key: &server_key().0,
    };
    let proof = STANDARD.decode(proof_b64).expect("base64");
    ferry_core::enroll::verify_asset_tag_proof(TAG.as_bytes(), &shared, &ctx, &proof)
}

pub fn answer(key: &PublicKey) -> EnrollResponse {
    EnrollResponse {
        node: "n1".into(),
        server_public_key: key.to_base64(),
        endpoint: "192.0.2.1:51820".into(),
        node_address: "100.64.0.2".into(),
        prefix_len: 16,
        server_address: "100.64.0.1".into(),
        expires_in_secs: 600,
        expires_at: "2030-01-01T00:10:00Z".into(),
        datasource_url: DS.into(),
        phone_home_url: PHONE.into(),
    }
}

pub fn answer_body(a: &EnrollResponse) -> Vec<u8> {
    serde_json::to_vec(a).expect("json")
}

pub fn lease() -> Lease {
    Lease {
        node: "n1".into(),
        server_key: server_key(),
        endpoint: "192.0.2.1:51820".parse().expect("addr"),
        node_address: "100.64.0.2".parse().expect("ip"),
        server_address: "100.64.0.1".parse().expect("ip"),
        expires_in: Duration::from_secs(600),
        expires_at: "2030-01-01T00:10:00Z".into(),
        datasource_url: DS.into(),
        phone_home_url: PHONE.into(),
    }
}

pub fn test_config(dir: &Path) -> Config {
    Config {
        servers: vec![ServerUrl::parse("http://192.0.2.1:8080").expect("url")],
        // The failover tests start at A, the first listed (hashed order: its own test).
        server_order: ServerOrder::Listed,
        pinned: vec![server_key()],
        node: Some(NodeName::parse("n1").expect("name")),
        asset_tag: Some(Zeroizing::new(TAG.to_string())),
        tpm: None,
        tls_pins: Vec::new(),
        mac: None,
        mode: Mode::Fetch,
        interface: "ferry-test0".into(),
        backend: BackendChoice::Userspace,
        hold: false,
        timeout: Duration::from_secs(60),
        tunnel_timeout: Duration::from_secs(10),
        seed_dir: dir.join("run/ferry/seed"),
        network_config_file: dir.join("etc/cloud/cloud.cfg.d/99_ferry_network.cfg"),
        state_dir: dir.join("run/ferry"),
        ssh_dir: dir.join("etc/ssh"),
        host_keys: crate::host_keys::HostKeys::Certify,
        keepalive: 5,
        hostname_file: dir.join("hostname"),
        sys_class_net: dir.join("sys/class/net"),
        tuning: Tuning {
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            probe_initial: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
            ttl_grace: Duration::from_secs(1),
            watch_interval: Duration::from_millis(500),
            watch_patience: Duration::from_secs(5),
        },
        image: None,
    }
}

/// What the fake tunnel factory saw.
#[derive(Default)]
pub struct TunnelLog {
    pub opened: Vec<(TunnelSpecSeen, PublicKey)>,
    /// Tunnels moved in place to another server (with the node's new public key).
    pub reconfigured: Vec<(TunnelSpecSeen, PublicKey)>,
    pub closed: usize,
    pub detached: usize,
    /// Watcher probes through the tunnel: (server key of the tunnel then, target).
    pub probes: Vec<(PublicKey, std::net::SocketAddr)>,
}

/// A `TunnelSpec` without the private key (kept: only its public half).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpecSeen {
    pub interface: String,
    pub node_address: std::net::IpAddr,
    pub server_address: std::net::IpAddr,
    pub server_key: PublicKey,
    pub endpoint: std::net::SocketAddr,
    pub keepalive: u16,
}

#[derive(Clone)]
pub struct FakeTunnels {
    pub log: Arc<Mutex<TunnelLog>>,
    pub backend: BackendKind,
    pub fail: Option<String>,
    /// Servers (by key) whose datasource no longer answers through the tunnel.
    pub dead: Arc<Mutex<Vec<PublicKey>>>,
}

impl FakeTunnels {
    pub fn new(backend: BackendKind) -> Self {
        FakeTunnels { log: Arc::default(), backend, fail: None, dead: Arc::default() }
    }
    /// From now on, the server with this key answers nothing through the tunnel.
    pub fn kill(&self, server: PublicKey) {
        self.dead.lock().expect("lock").push(server);
    }
    pub fn counts(&self) -> (usize, usize, usize) {
        let l = self.log.lock().expect("lock");
        (l.opened.len(), l.closed, l.detached)
    }
}

#[async_trait]
impl TunnelFactory for FakeTunnels {
    async fn open(&self, spec: TunnelSpec) -> Result<Box<dyn Tunnel>, AgentError> {
        if let Some(why) = &self.fail {
            return Err(AgentError::Tunnel(why.clone()));
        }
        self.log.lock().expect("lock").opened.push((seen(&spec), spec.private_key.public_key()));
        Ok(Box::new(FakeTunnel {
            name: spec.interface,
            backend: self.backend,
            log: self.log.clone(),
            server_key: spec.server_key,
            dead: self.dead.clone(),
        }))
    }
}

fn seen(spec: &TunnelSpec) -> TunnelSpecSeen {
    TunnelSpecSeen {
        interface: spec.interface.clone(),
        node_address: spec.node_address,
        server_address: spec.server_address,
        server_key: spec.server_key,
        endpoint: spec.endpoint,
        keepalive: spec.keepalive,
    }
}

struct FakeTunnel {
    name: String,
    backend: BackendKind,
    log: Arc<Mutex<TunnelLog>>,
    server_key: PublicKey,
    dead: Arc<Mutex<Vec<PublicKey>>>,
}

#[async_trait]
impl Tunnel for FakeTunnel {
    fn interface(&self) -> &str {
        &self.name
    }
    fn backend(&self) -> BackendKind {
        self.backend
    }
    fn guard(&self) -> Option<&str> {
        Some("ferry_agent_fake")
    }
    async fn probe(&self, target: std::net::SocketAddr, _: Duration) -> Result<(), String> {
        self.log.lock().expect("lock").probes.push((self.server_key, target));
        match self.dead.lock().expect("lock").contains(&self.server_key) {
            true => Err(format!("connect to {target}: no answer")),
            false => Ok(()),
        }
    }
    async fn reconfigure(&mut self, spec: TunnelSpec) -> Result<(), AgentError> {
        assert_eq!(spec.interface, self.name, "a tunnel moves on the same interface");
        self.server_key = spec.server_key;
        self.log.lock().expect("lock").reconfigured.push((seen(&spec), spec.private_key.public_key()));
        Ok(())
    }
    async fn close(self: Box<Self>) -> Result<(), AgentError> {
        self.log.lock().expect("lock").closed += 1;
        Ok(())
    }
    fn detach(self: Box<Self>) {
        self.log.lock().expect("lock").detached += 1;
    }
}

/// Standard output, captured.
#[derive(Clone, Default)]
pub struct Out(pub Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

pub fn mac() -> MacAddr {
    MacAddr::parse("52:54:00:12:34:56").expect("mac")
}

pub fn agent(cfg: Config, server: &FakeServer, tunnels: &FakeTunnels) -> (Agent<FakeServer, FakeTunnels>, Out) {
    let out = Out::default();
    (Agent::new(cfg, mac(), server.clone(), tunnels.clone(), Box::new(out.clone())), out)
}

/// What the fake TPM was asked.
#[derive(Default)]
pub struct TpmLog {
    pub identities: usize,
    pub challenges: Vec<CredentialChallenge>,
}

/// A TPM that answers with recognisable bytes: the secret is the credential blob
/// reversed, the "attest" is the qualifying data, PCR i has value [i; 32].
#[derive(Clone, Default)]
pub struct FakeTpm {
    pub log: Arc<Mutex<TpmLog>>,
    pub fail: Option<String>,
}

impl FakeTpm {
    pub fn identity() -> TpmIdentity {
        TpmIdentity {
            ek_public: b"EK-PUBLIC".to_vec(),
            ek_certificate: Some(b"EK-CERT".to_vec()),
            ak_public: b"AK-PUBLIC".to_vec(),
        }
    }
}

#[async_trait]
impl TpmBackend for FakeTpm {
    async fn identity(&mut self) -> Result<TpmIdentity, AgentError> {
        self.log.lock().expect("lock").identities += 1;
        Ok(Self::identity())
    }
    async fn prove(&mut self, c: CredentialChallenge) -> Result<TpmAnswer, AgentError> {
        if let Some(why) = &self.fail {
            return Err(AgentError::Tpm(why.clone()));
        }
        self.log.lock().expect("lock").challenges.push(c.clone());
        Ok(TpmAnswer {
            secret: c.credential_blob.iter().rev().copied().collect(),
            attest: c.qualifying.to_vec(),
            signature: b"SIGNATURE".to_vec(),
            pcr_values: c.pcrs.iter().map(|&i| (i, vec![i; 32])).collect(),
        })
    }
}

/// The server's TPM credential challenge for node n1, PCRs 0 and 7.
pub fn tpm_challenge_body() -> Vec<u8> {
    serde_json::to_vec(&ferry_api::enroll::TpmCredentialChallenge {
        node: "n1".into(),
        credential_blob: STANDARD.encode(b"BLOB"),
        encrypted_secret: STANDARD.encode(b"ENCRYPTED"),
        pcrs: vec![7, 0],
    })
    .expect("json")
}
