//! The transitions once enrolled, with the fakes of `machine_tests`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ferry_api::enroll::PhoneHome;

use crate::args::Mode;
use crate::http::Method;
use crate::machine::{State, StopFuture};
use crate::state::{state_path, AgentState};
use crate::test_fakes::*;
use crate::tunnel::{TunnelFactory, TunnelSpec};
use ferry_wg::BackendKind;

fn doc(name: &str) -> String {
    format!("{DS}{name}")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// A tunnel from the fake factory, as `bring_up` would have opened it.
async fn open(tunnels: &FakeTunnels) -> Box<dyn crate::tunnel::Tunnel> {
    let spec = TunnelSpec {
        interface: "ferry-test0".into(),
        backend: ferry_wg::BackendChoice::Userspace,
        private_key: ferry_wg::PrivateKey::generate(),
        node_address: "100.64.0.2".parse().expect("ip"),
        server_address: "100.64.0.1".parse().expect("ip"),
        server_key: server_key(),
        endpoint: "192.0.2.1:51820".parse().expect("addr"),
        keepalive: 5,
        guard: crate::tunnel::GuardPolicy::Required,
    };
    tunnels.open(spec).await.expect("fake open")
}

#[tokio::test(start_paused = true)]
async fn enrolled_to_tunnel_up_with_the_pinned_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Get, &doc("meta-data"), unreachable_reply("handshake pending"));
    server.on(Method::Get, &doc("meta-data"), reply(200, b"instance-id: x\n"));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let public = a.public_key;
    assert!(matches!(a.step(State::Enrolled { lease: lease() }).await, State::TunnelUp { .. }));
    assert!(a.key.is_none(), "the private key left the agent");
    let log = tunnels.log.lock().expect("lock");
    let (spec, key) = &log.opened[0];
    assert_eq!(*key, public, "the device got the enrolled key");
    assert_eq!(spec.server_key, server_key(), "peer = the pinned key");
    assert_eq!(spec.node_address.to_string(), "100.64.0.2");
    assert_eq!(spec.server_address.to_string(), "100.64.0.1");
    assert_eq!(spec.endpoint.to_string(), "192.0.2.1:51820");
    assert_eq!((spec.keepalive, spec.interface.as_str()), (5, "ferry-test0"));
    assert_eq!(server.requests(Method::Get, &doc("meta-data")).len(), 2, "probed until it answered");
}

#[tokio::test(start_paused = true)]
async fn enrolled_tunnel_that_never_answers_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.tunnel_timeout = Duration::from_secs(2);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(cfg, &FakeServer::default(), &tunnels);
    let State::Failed(err) = a.step(State::Enrolled { lease: lease() }).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().contains("ferry.pubkey="), "hints at the key: {err}");
    assert_eq!(tunnels.counts(), (1, 1, 0), "opened and removed");
}

#[tokio::test(start_paused = true)]
async fn enrolled_tunnel_that_cannot_be_created_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tunnels = FakeTunnels::new(BackendKind::Userspace);
    tunnels.fail = Some("cannot create interface ferry-test0: permission denied".into());
    let (mut a, _) = agent(test_config(dir.path()), &FakeServer::default(), &tunnels);
    let State::Failed(err) = a.step(State::Enrolled { lease: lease() }).await else { panic!("expected failure") };
    assert_eq!(err.exit_code(), 6);
}

#[tokio::test(start_paused = true)]
async fn tunnel_up_to_fetched_skips_absent_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    serve_documents(&server);
    server.on(Method::Get, &doc("user-data"), busy(0)); // first a 503, then the document
    server.on(Method::Get, &doc("user-data"), reply(200, b"#cloud-config\n"));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let cfg = test_config(dir.path());
    let seed = cfg.seed_dir.clone();
    let (mut a, _) = agent(cfg, &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let State::Fetched { meta_data, .. } = a.step(State::TunnelUp { lease: lease(), tunnel }).await else {
        panic!("expected fetched")
    };
    assert_eq!(meta_data, b"instance-id: i-n1-7\nlocal-hostname: n1\n");
    assert_eq!(mode(&seed), 0o700);
    for name in ["meta-data", "user-data", "vendor-data"] {
        assert_eq!(mode(&seed.join(name)), 0o600, "{name}");
    }
    assert!(!seed.join("network-config").exists(), "404 means absent");
    assert_eq!(std::fs::read(seed.join("user-data")).expect("read"), b"#cloud-config\n");
    assert_eq!(tunnels.counts(), (1, 0, 0), "the tunnel stays up for phone-home");
}

#[tokio::test(start_paused = true)]
async fn tunnel_up_missing_required_document_fails_and_removes_the_tunnel() {
    let dir = tempfile::tempdir().expect("tempdir");
    for missing in ["meta-data", "user-data"] {
        let server = FakeServer::default();
        server.on(Method::Get, &doc(missing), reply(404, b"{}"));
        for name in ["meta-data", "user-data", "vendor-data"].iter().filter(|n| **n != missing) {
            server.on(Method::Get, &doc(name), reply(200, b"x"));
        }
        let tunnels = FakeTunnels::new(BackendKind::Userspace);
        let cfg = test_config(dir.path());
        let seed = cfg.seed_dir.clone();
        let (mut a, _) = agent(cfg, &server, &tunnels);
        let tunnel = open(&tunnels).await;
        let State::Failed(err) = a.step(State::TunnelUp { lease: lease(), tunnel }).await else {
            panic!("expected failure")
        };
        assert_eq!(err.exit_code(), 6, "{err}");
        assert!(err.to_string().contains(missing), "{err}");
        assert_eq!(tunnels.counts(), (1, 1, 0));
        assert!(!seed.exists(), "no partial seed");
    }
}

#[tokio::test(start_paused = true)]
async fn fetched_to_phoned_home_reports_instance_and_host_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = test_config(dir.path());
    std::fs::create_dir_all(&cfg.ssh_dir).expect("mkdir");
    std::fs::write(cfg.ssh_dir.join("ssh_host_ed25519_key.pub"), "ssh-ed25519 AAAAED root@n1\n").expect("w");
    std::fs::write(cfg.ssh_dir.join("ssh_host_ecdsa_key.pub"), "ecdsa-sha2-nistp256 AAAAEC root@n1\n").expect("w");
    std::fs::write(cfg.ssh_dir.join("ssh_host_ed25519_key"), "-----BEGIN OPENSSH PRIVATE KEY-----").expect("w");
    let server = FakeServer::default();
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(cfg, &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let meta_data = b"instance-id: i-n1-7\nlocal-hostname: n1\n".to_vec();
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "{next:?}");
    assert!(a.phoned_home);
    let sent = server.requests(Method::Post, PHONE);
    let body = sent[0].json.clone().expect("json body");
    assert!(!String::from_utf8_lossy(&body).contains("PRIVATE"), "private keys are never sent");
    let report: PhoneHome = serde_json::from_slice(&body).expect("PhoneHome JSON");
    assert_eq!(report.instance_id.as_deref(), Some("i-n1-7"));
    assert_eq!(report.hostname.as_deref(), Some("n1"), "meta-data's name while the kernel has none");
    assert_eq!(report.pub_key_ed25519.as_deref(), Some("ssh-ed25519 AAAAED root@n1"));
    assert_eq!(report.pub_key_ecdsa.as_deref(), Some("ecdsa-sha2-nistp256 AAAAEC root@n1"));
    assert_eq!((report.pub_key_rsa, report.pub_key_dsa), (None, None));
}

/// An initramfs has no sshd keys: the report carries the host key the seed's
/// cloud-config installs (`ssh_keys`), never its private half.
#[tokio::test(start_paused = true)]
async fn fetched_to_phoned_home_reports_the_host_key_the_seed_installs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = test_config(dir.path());
    let user_data = "#cloud-config\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    AAAA\n  ed25519_public: ssh-ed25519 AAAAFROMSEED root@n1\n";
    crate::seed::write_seed(
        &cfg.seed_dir,
        &[("meta-data", b"instance-id: n1\n".to_vec()), ("user-data", user_data.into())],
    )
    .expect("seed");
    let server = FakeServer::default();
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(cfg, &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: b"instance-id: n1\n".to_vec() }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "{next:?}");
    let body = server.requests(Method::Post, PHONE)[0].json.clone().expect("json body");
    assert!(!String::from_utf8_lossy(&body).contains("PRIVATE"), "private keys are never sent");
    let report: PhoneHome = serde_json::from_slice(&body).expect("PhoneHome JSON");
    assert_eq!(report.pub_key_ed25519.as_deref(), Some("ssh-ed25519 AAAAFROMSEED root@n1"));
}

#[tokio::test(start_paused = true)]
async fn fetched_phone_home_failure_is_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, PHONE, reply(403, br#"{"error":"forbidden","kind":"forbidden"}"#));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: Vec::new() }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "{next:?}");
    assert!(!a.phoned_home);
}

#[tokio::test(start_paused = true)]
async fn phoned_home_to_torn_down_prints_the_seed_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let cfg = test_config(dir.path());
    let seed = cfg.seed_dir.display().to_string();
    let (mut a, out) = agent(cfg, &FakeServer::default(), &tunnels);
    let tunnel = open(&tunnels).await;
    assert!(matches!(a.step(State::PhonedHome { lease: lease(), tunnel }).await, State::TornDown { .. }));
    assert_eq!(tunnels.counts(), (1, 1, 0));
    assert_eq!(out.text(), format!("ds=nocloud;s=file://{seed}/\n"));
}

/// A datasource whose node has no network-config (all cloud-init mode fetches itself).
fn no_network_config() -> FakeServer {
    let server = FakeServer::default();
    server.on(Method::Get, &doc("network-config"), reply(404, br#"{"error":"not found","kind":"not-found"}"#));
    server
}

#[tokio::test(start_paused = true)]
async fn cloud_init_holds_until_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.mode = Mode::CloudInit;
    let state_dir = cfg.state_dir.clone();
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stop: StopFuture = Box::pin(async move {
        let _ = rx.await;
    });
    let drop_in = cfg.network_config_file.clone();
    std::fs::create_dir_all(drop_in.parent().expect("parent")).expect("cloud.cfg.d");
    let server = FakeServer::default();
    server.on(Method::Get, &doc("network-config"), reply(200, b"version: 2\nethernets: {eth0: {dhcp4: true}}\n"));
    let (a, out) = agent(cfg, &server, &tunnels);
    let mut a = a.with_stop(stop);
    let tunnel = open(&tunnels).await;
    let held = a.step(State::TunnelUp { lease: lease(), tunnel }).await;
    assert!(matches!(held, State::Holding { .. }), "{held:?}");
    assert_eq!(server.urls(), [doc("network-config")], "only network-config: cloud-init fetches the rest itself");
    assert_eq!(server.drops(), [1], "cloud-init fetches the documents: no connection is kept while holding");
    assert_eq!(out.text(), format!("ds=nocloud-net;s={DS}\n"));
    let written = std::fs::read_to_string(&drop_in).expect("the network-config drop-in");
    assert!(written.ends_with("network:\n  version: 2\n  ethernets: {eth0: {dhcp4: true}}\n"), "{written}");
    assert_eq!(mode(&drop_in), 0o600);
    let record: AgentState =
        serde_json::from_slice(&std::fs::read(state_path(&state_dir)).expect("state file")).expect("json");
    assert!(record.held);
    assert_eq!((record.pid, record.interface.as_str()), (std::process::id(), "ferry-test0"));
    assert_eq!((record.backend, record.datasource_url.as_str()), (BackendKind::Userspace, DS));
    assert_eq!(mode(&state_path(&state_dir)), 0o600);
    assert_eq!(tunnels.counts(), (1, 0, 0), "still up while holding");
    tx.send(()).expect("stop");
    assert!(matches!(a.step(held).await, State::TornDown { .. }));
    assert_eq!(tunnels.counts(), (1, 1, 0));
    assert!(!state_path(&state_dir).exists(), "state file removed");
}

#[tokio::test(start_paused = true)]
async fn holding_ends_after_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.mode = Mode::CloudInit;
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (a, _) = agent(cfg, &no_network_config(), &tunnels);
    let mut a = a.with_stop(Box::pin(std::future::pending()));
    let tunnel = open(&tunnels).await;
    let held = a.step(State::TunnelUp { lease: lease(), tunnel }).await;
    let began = tokio::time::Instant::now();
    assert!(matches!(a.step(held).await, State::TornDown { .. }));
    assert!(began.elapsed() >= Duration::from_secs(600), "held for the TTL");
    assert_eq!(tunnels.counts(), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn cloud_init_with_kernel_wireguard_detaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.mode = Mode::CloudInit;
    let state_dir = cfg.state_dir.clone();
    let tunnels = FakeTunnels::new(BackendKind::Kernel);
    // A drop-in from an earlier boot, when the node had a network-config.
    let stale = cfg.network_config_file.clone();
    std::fs::create_dir_all(stale.parent().expect("parent")).expect("cloud.cfg.d");
    std::fs::write(&stale, "network: {version: 2}\n").expect("stale drop-in");
    let (mut a, out) = agent(cfg, &no_network_config(), &tunnels);
    let tunnel = open(&tunnels).await;
    assert!(matches!(a.step(State::TunnelUp { lease: lease(), tunnel }).await, State::Detached { .. }));
    assert!(!stale.exists(), "the node has no network-config now: the old drop-in is gone");
    assert_eq!(tunnels.counts(), (1, 0, 1), "left up");
    assert_eq!(out.text(), format!("ds=nocloud-net;s={DS}\n"));
    let record: AgentState =
        serde_json::from_slice(&std::fs::read(state_path(&state_dir)).expect("state file")).expect("json");
    assert!(!record.held);
    assert_eq!(record.backend, BackendKind::Kernel);
}

#[tokio::test(start_paused = true)]
async fn full_fetch_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FakeServer::default();
    server.on(Method::Post, CHALLENGE, busy(2));
    server.on(Method::Post, CHALLENGE, reply(200, &challenge_body()));
    server.on(Method::Post, ENROLL, reply(200, &answer_body(&answer(&server_key()))));
    serve_documents(&server);
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let cfg = test_config(dir.path());
    let seed = cfg.seed_dir.display().to_string();
    let (a, out) = agent(cfg, &server, &tunnels);
    let outcome = a.run().await.expect("success");
    let sent = server.log().len();
    assert_eq!(
        server.drops().first(),
        Some(&sent),
        "the kept connection is dropped after the last request, not before"
    );
    assert_eq!(outcome.node, "n1");
    assert!(outcome.phoned_home && !outcome.detached);
    assert_eq!(outcome.ds, format!("ds=nocloud;s=file://{seed}/"));
    assert_eq!(out.text(), format!("{}\n", outcome.ds), "stdout carries only the ds line");
    assert_eq!(tunnels.counts(), (1, 1, 0));
}

/// The three retry loops once enrolled: the request each repeats, and the step that
/// runs it. (Enrollment's Retry-After: `machine_tests`.)
#[derive(Debug, Clone, Copy)]
enum RetryLoop {
    DatasourceProbe,
    DocumentFetch,
    PhoneHome,
}

/// What one run of a loop came to.
struct Ran {
    state: State,
    phoned_home: bool,
    took: Duration,
    requests: usize,
}

impl RetryLoop {
    const ALL: [RetryLoop; 3] = [RetryLoop::DatasourceProbe, RetryLoop::DocumentFetch, RetryLoop::PhoneHome];

    /// Runs the loop's step against a server whose first answer to the loop's request is
    /// 503 with `Retry-After: retry_after_secs`, and the right answer after that. The
    /// test config probes 10 ms to 2 s apart: a longer wait can only be the server's.
    async fn run(self, retry_after_secs: u64) -> Ran {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::default();
        let (method, url) = match self {
            RetryLoop::DatasourceProbe => (Method::Get, doc("meta-data")),
            RetryLoop::DocumentFetch => (Method::Get, doc("user-data")),
            RetryLoop::PhoneHome => (Method::Post, PHONE.to_string()),
        };
        // Replies queue up per URL: the 503 comes first.
        server.on(method, &url, busy(retry_after_secs));
        serve_documents(&server);
        let tunnels = FakeTunnels::new(BackendKind::Userspace);
        let (mut a, _) = agent(test_config(dir.path()), &server, &tunnels);
        let from = match self {
            RetryLoop::DatasourceProbe => State::Enrolled { lease: lease() },
            RetryLoop::DocumentFetch => State::TunnelUp { lease: lease(), tunnel: open(&tunnels).await },
            RetryLoop::PhoneHome => {
                State::Fetched { lease: lease(), tunnel: open(&tunnels).await, meta_data: Vec::new() }
            }
        };
        let began = tokio::time::Instant::now();
        let state = a.step(from).await;
        let took = began.elapsed();
        Ran { state, phoned_home: a.phoned_home, took, requests: server.requests(method, &url).len() }
    }
}

#[tokio::test(start_paused = true)]
async fn every_retry_loop_once_enrolled_honours_retry_after() {
    for l in RetryLoop::ALL {
        let ran = l.run(5).await;
        let through = match (&ran.state, l) {
            (State::TunnelUp { .. }, RetryLoop::DatasourceProbe)
            | (State::Fetched { .. }, RetryLoop::DocumentFetch) => true,
            (State::PhonedHome { .. }, RetryLoop::PhoneHome) => ran.phoned_home,
            _ => false,
        };
        assert!(through, "{l:?}: {:?}", ran.state);
        assert!(ran.took >= Duration::from_secs(5), "{l:?} waited {:?}, not the 5 s asked", ran.took);
        assert_eq!(ran.requests, 2, "{l:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_retry_loop_once_enrolled_gives_up_at_once_on_a_retry_after_past_its_deadline() {
    // An hour: past --timeout (60 s) and --tunnel-timeout (10 s) of the test config.
    for l in RetryLoop::ALL {
        let ran = l.run(3600).await;
        assert!(ran.took < Duration::from_secs(1), "{l:?} waited {:?} for nothing", ran.took);
        assert_eq!(ran.requests, 1, "{l:?}");
        match (ran.state, l) {
            (State::Failed(e), RetryLoop::DatasourceProbe | RetryLoop::DocumentFetch) => {
                assert!(e.to_string().contains("Retry-After 3600 s"), "{l:?}: {e}")
            }
            (State::PhonedHome { .. }, RetryLoop::PhoneHome) => assert!(!ran.phoned_home, "not fatal, not done"),
            (other, _) => panic!("{l:?}: {other:?}"),
        }
    }
}

/// A host certificate of `key` from a throwaway CA, as the server would answer.
fn host_certificate(key: &ssh_key::PublicKey) -> String {
    let ca = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519).expect("ca");
    let mut b = ssh_key::certificate::Builder::new_with_random_nonce(
        &mut rand::rngs::OsRng,
        key.key_data().clone(),
        0,
        1 << 40,
    )
    .expect("builder");
    b.cert_type(ssh_key::certificate::CertType::Host).expect("type").valid_principal("n1").expect("principal");
    b.sign(&ca).expect("sign").to_openssh().expect("text")
}

#[tokio::test(start_paused = true)]
async fn fetched_certifies_the_host_keys_through_the_tunnel_before_phoning_home() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.host_keys = crate::host_keys::HostKeys::Generate;
    let ssh = cfg.ssh_dir.clone();
    // Made now (generate keeps an existing key) so that the fake server can certify it.
    assert!(crate::host_keys::generate_ed25519(&ssh, "n1").expect("key"));
    let key = crate::host_keys::read_host_keys(&ssh).remove(0).1;
    let cert = host_certificate(&key);
    let server = FakeServer::default();
    serve_documents(&server);
    let certify = doc("ssh/host-certificates?node=n1");
    server.on(Method::Post, &certify, reply(200, format!("{cert}\n").as_bytes()));
    server.on(Method::Get, &doc("ssh/known-hosts"), reply(200, b"@cert-authority * ssh-ed25519 AAAACA\n"));
    server.on(Method::Get, &doc("ssh/revoked-keys"), reply(200, b"ssh-ed25519 AAAAOLD\n"));
    let user_ca = ssh_key::PrivateKey::random(&mut rand::rngs::OsRng, ssh_key::Algorithm::Ed25519).expect("ca");
    let user_ca = user_ca.public_key().to_openssh().expect("text");
    server.on(Method::Get, &doc("ssh/user-ca-keys"), reply(200, format!("{user_ca}\n").as_bytes()));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let interface = cfg.interface.clone();
    let (mut a, _) = agent(cfg, &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: Vec::new() }).await;
    assert!(matches!(next, State::PhonedHome { .. }), "{next:?}");

    let urls = server.urls();
    let at = |u: &str| urls.iter().position(|x| x == u).unwrap_or_else(|| panic!("{u} not requested: {urls:?}"));
    assert!(at(&certify) < at(PHONE), "certified before phone-home closes the tunnel: {urls:?}");
    let sent = &server.requests(Method::Post, &certify)[0];
    assert_eq!((sent.interface.as_deref(), sent.text), (Some(interface.as_str()), true), "through the tunnel");
    let body = String::from_utf8(sent.json.clone().expect("body")).expect("text");
    assert_eq!(body, format!("{}\n", key.to_openssh().expect("key")), "the public key only");
    let read = |p: &str| std::fs::read_to_string(ssh.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("ssh_host_ed25519_key-cert.pub"), format!("{cert}\n"));
    assert!(read("sshd_config.d/ferry-host-certificates.conf")
        .contains("HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub"));
    assert_eq!(read("ferry_known_hosts"), "@cert-authority * ssh-ed25519 AAAACA\n");
    assert_eq!(read("ferry_revoked_keys"), "ssh-ed25519 AAAAOLD\n");
    assert_eq!(read("ferry_user_ca_keys"), format!("{user_ca}\n"));
    assert!(
        read("sshd_config.d/ferry-host-certificates.conf").contains("TrustedUserCAKeys /etc/ssh/ferry_user_ca_keys")
    );
    let report: PhoneHome =
        serde_json::from_slice(&server.requests(Method::Post, PHONE)[0].json.clone().expect("json")).expect("report");
    assert_eq!(report.pub_key_ed25519.as_deref(), Some(read("ssh_host_ed25519_key.pub").trim()));
}

#[tokio::test(start_paused = true)]
async fn fetched_refused_host_certificates_still_phone_home_without_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    cfg.host_keys = crate::host_keys::HostKeys::Generate;
    let ssh = cfg.ssh_dir.clone();
    let server = FakeServer::default();
    serve_documents(&server);
    let refused = br#"{"error":"the SSH host certificates of node n1 are revoked","kind":"forbidden"}"#;
    server.on(Method::Post, &doc("ssh/host-certificates?node=n1"), reply(403, refused));
    let tunnels = FakeTunnels::new(BackendKind::Userspace);
    let (mut a, _) = agent(cfg, &server, &tunnels);
    let tunnel = open(&tunnels).await;
    let next = a.step(State::Fetched { lease: lease(), tunnel, meta_data: Vec::new() }).await;
    assert!(matches!(next, State::PhonedHome { .. }) && a.phoned_home, "{next:?}");
    assert!(ssh.join("ssh_host_ed25519_key.pub").exists(), "the key was made");
    assert!(!ssh.join("ssh_host_ed25519_key-cert.pub").exists() && !ssh.join("sshd_config.d").exists());
    assert_eq!(server.requests(Method::Post, &doc("ssh/host-certificates?node=n1")).len(), 1, "a 403 is not retried");
}
