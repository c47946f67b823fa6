//! The agent against a stand-in server through a real tunnel: two network namespaces
//! joined by a veth pair; in the "server" one a userspace WireGuard device (ferry-wg)
//! and a minimal HTTP server speaking the enrollment API and serving the datasource on
//! the server's tunnel address only; in the "node" one, `ferry_agent::run`: an impostor
//! key (refused), fetch mode, then cloud-init mode held until SIGTERM, then `teardown`.
//!
//! Needs root, /dev/net/tun and `ip` (iproute2). Everything created is named after the
//! PID and removed at the end. (End-to-end tests against `ferry serve` live elsewhere.)

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_agent::{AgentArgs, AgentState, Mode, TeardownArgs};
use ferry_api::enroll::{EnrollRequest, EnrollResponse, PhoneHome};
use ferry_wg::{open_device, BackendChoice, DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey, PublicKey};
use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces and veth ends, removed on drop.
struct Lab {
    netns: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`, with a current-thread runtime.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[derive(Default)]
struct Seen {
    macs: Vec<String>,
    phone_home: Vec<PhoneHome>,
}

/// One request per connection: it answers with `Connection: close`, so the agent opens
/// a new one for each request (its kept connection is not reused after a close).
async fn serve_one(mut s: TcpStream, dev: Arc<dyn ferry_wg::WgDevice>, key: PublicKey, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0usize);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, reply) = match (method, path) {
        ("POST", "/v1/enroll/challenge") => {
            (200, format!(r#"{{"nonce":"{}","expires_in_secs":60}}"#, STANDARD.encode([5u8; 32])))
        }
        ("POST", "/v1/enroll") => {
            let req: EnrollRequest = serde_json::from_slice(&body).expect("enroll request");
            seen.lock().expect("lock").macs.push(req.mac);
            let node_key: PublicKey = req.public_key.parse().expect("node key");
            let peer = PeerConfig::new(node_key).allowed_ip("100.64.0.2/32".parse().expect("net"));
            // One node: the new key replaces any earlier one (as the real server does).
            dev.apply(DeviceUpdate::new().replace_peers(true).add_peer(peer)).await.expect("add peer");
            let answer = EnrollResponse {
                node: "n1".into(),
                server_public_key: key.to_base64(),
                endpoint: "10.99.0.1:51820".into(),
                node_address: "100.64.0.2".into(),
                prefix_len: 16,
                server_address: "100.64.0.1".into(),
                expires_in_secs: 600,
                expires_at: "2030-01-01T00:00:00Z".into(),
                datasource_url: "http://100.64.0.1:8081/".into(),
                phone_home_url: "http://100.64.0.1:8081/phone-home".into(),
            };
            (200, serde_json::to_string(&answer).expect("json"))
        }
        ("GET", "/meta-data") => (200, "instance-id: e2e-1\nlocal-hostname: n1\n".into()),
        ("GET", "/user-data") => (200, "#cloud-config\n".into()),
        ("GET", _) => (404, r#"{"error":"not found","kind":"not-found"}"#.into()),
        ("POST", "/phone-home") => {
            seen.lock().expect("lock").phone_home.push(serde_json::from_slice(&body).expect("phone-home"));
            (200, "{}".into())
        }
        _ => (400, "{}".into()),
    };
    let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
    let _ = s.write_all(resp.as_bytes()).await;
}

/// The tunnel parameters an impostor (no WireGuard key of its own; the pinned public key
/// echoed) answers with: a tunnel network whose server address is the node's own.
fn impostor_answer(key: &PublicKey) -> EnrollResponse {
    EnrollResponse {
        node: "n1".into(),
        server_public_key: key.to_base64(),
        endpoint: "10.99.0.1:51820".into(),
        node_address: "172.31.0.2".into(),
        prefix_len: 24,
        server_address: ROGUE.into(),
        expires_in_secs: 600,
        expires_at: "2030-01-01T00:00:00Z".into(),
        datasource_url: format!("http://{ROGUE}:8081/"),
        phone_home_url: format!("http://{ROGUE}:8081/phone-home"),
    }
}

/// An address of the node (on its loopback) where a local user's listener plays datasource.
const ROGUE: &str = "172.31.0.1";

/// The impostor's enrollment API: a nonce, then the lie.
async fn impostor_loop(l: TcpListener, key: PublicKey) {
    while let Ok((mut s, _)) = l.accept().await {
        let mut buf = vec![0u8; 16384];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = if head.starts_with("POST /v1/enroll/challenge ") {
            format!(r#"{{"nonce":"{}","expires_in_secs":60}}"#, STANDARD.encode([6u8; 32]))
        } else {
            serde_json::to_string(&impostor_answer(&key)).expect("json")
        };
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
        let _ = s.write_all(resp.as_bytes()).await;
    }
}

async fn accept_loop(l: TcpListener, dev: Arc<dyn ferry_wg::WgDevice>, key: PublicKey, seen: Arc<Mutex<Seen>>) {
    while let Ok((s, _)) = l.accept().await {
        tokio::spawn(serve_one(s, dev.clone(), key, seen.clone()));
    }
}

fn agent_args(pubkey: &str, interface: &str, dir: &std::path::Path) -> AgentArgs {
    AgentArgs {
        server: Some("http://10.99.0.1:8080".into()),
        server_order: None,
        pubkey: Some(pubkey.into()),
        node: Some("n1".into()),
        tpm: None,
        tls_pin: None,
        mode: Mode::Fetch,
        mac: None,
        interface: interface.into(),
        wg_backend: BackendChoice::Userspace,
        hold: false,
        timeout: Duration::from_secs(30),
        tunnel_timeout: Duration::from_secs(15),
        seed_dir: dir.join("seed"),
        network_config_file: dir.join("cloud.cfg.d/99_ferry_network.cfg"),
        state_dir: dir.join("state"),
        ssh_dir: dir.join("ssh"),
        ssh_host_keys: ferry_agent::HostKeys::Certify,
        cmdline: dir.join("no-cmdline"),
        asset_tag_file: dir.join("no-asset-tag"),
        pins_file: dir.join("no-pins"),
        image_root: None,
        image_cache: dir.join("image.part"),
    }
}

#[test]
fn fetch_and_cloud_init_modes_through_a_real_tunnel() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (network namespaces, TUN)");
    let pid = std::process::id();
    let (srv_ns, node_ns) = (format!("fa-srv-{pid}"), format!("fa-node-{pid}"));
    let mut lab = Lab { netns: Vec::new() };
    for ns in [&srv_ns, &node_ns] {
        run(&["ip", "netns", "add", ns]);
        lab.netns.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (vs, vn) = (format!("fa-vs-{pid}"), format!("fa-vn-{pid}"));
    run(&["ip", "link", "add", &vs, "type", "veth", "peer", "name", &vn]);
    for (ns, dev, addr) in [(&srv_ns, &vs, "10.99.0.1/24"), (&node_ns, &vn, "10.99.0.2/24")] {
        run(&["ip", "link", "set", dev, "netns", ns]);
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let node_mac = run(&["ip", "-n", &node_ns, "-o", "link", "show", "dev", &vn])
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("veth MAC")
        .to_string();

    // The server: WireGuard device + HTTP (enrollment on the veth, datasource in the tunnel).
    let server_key = PrivateKey::generate();
    let server_pub = server_key.public_key();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let srv_if = format!("fas{pid}");
    let seen2 = seen.clone();
    let server = in_netns(&srv_ns, move || {
        runtime().block_on(async move {
            let setup = InterfaceSetup {
                addresses: vec!["100.64.0.1/16".parse().expect("net")],
                private_key: Some(server_key),
                listen_port: Some(51820),
                ..InterfaceSetup::default()
            };
            let dev: Arc<dyn ferry_wg::WgDevice> =
                Arc::from(open_device(&srv_if, BackendChoice::Userspace, &setup).await.expect("server device"));
            let enroll = TcpListener::bind("10.99.0.1:8080").await.expect("bind enroll");
            let ds = TcpListener::bind("100.64.0.1:8081").await.expect("bind datasource");
            let impostor = TcpListener::bind("10.99.0.1:8090").await.expect("bind impostor");
            tokio::spawn(impostor_loop(impostor, server_pub));
            tokio::spawn(accept_loop(enroll, dev.clone(), server_pub, seen2.clone()));
            tokio::spawn(accept_loop(ds, dev.clone(), server_pub, seen2));
            ready_tx.send(()).expect("ready");
            let _ = stop_rx.await;
            // Closing needs the only reference: the accept loops die with the runtime.
            drop(dev);
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).expect("server ready");

    // An impostor check first: a node pinning another key brings nothing up.
    let dir = tempfile::tempdir().expect("tempdir");
    let node_if = format!("fan{pid}");
    let wrong = PrivateKey::generate().public_key().to_base64();
    let args = agent_args(&wrong, &node_if, dir.path());
    let err = in_netns(&node_ns, move || runtime().block_on(ferry_agent::run(args)))
        .join()
        .expect("agent thread")
        .expect_err("impostor refused");
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(!PathBuf::from(dir.path()).join("seed").exists());

    // An impostor that echoes the pinned key points the node at one of its own addresses,
    // where a local user's listener waits with documents of its own: refused (exit 4),
    // nothing fetched, no tunnel.
    run(&["ip", "-n", &node_ns, "addr", "add", &format!("{ROGUE}/32"), "dev", "lo"]);
    let rogue_hits = Arc::new(Mutex::new(0usize));
    let (rogue_ready_tx, rogue_ready_rx) = std::sync::mpsc::channel();
    let (rogue_stop_tx, rogue_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hits = rogue_hits.clone();
    let rogue = in_netns(&node_ns, move || {
        runtime().block_on(async move {
            let l = TcpListener::bind(format!("{ROGUE}:8081")).await.expect("bind rogue");
            rogue_ready_tx.send(()).expect("ready");
            let serve = async {
                while let Ok((mut s, _)) = l.accept().await {
                    *hits.lock().expect("lock") += 1;
                    let body = "instance-id: rogue\nlocal-hostname: rogue\n";
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                }
            };
            tokio::select! { () = serve => {}, _ = rogue_stop_rx => {} }
        })
    });
    rogue_ready_rx.recv_timeout(Duration::from_secs(10)).expect("rogue listener ready");
    let mut args = agent_args(&server_pub.to_base64(), &node_if, dir.path());
    args.server = Some("http://10.99.0.1:8090".into());
    let err = in_netns(&node_ns, move || runtime().block_on(ferry_agent::run(args)))
        .join()
        .expect("agent thread")
        .expect_err("impostor refused");
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(err.to_string().contains("is an address of this node"), "{err}");
    assert_eq!(*rogue_hits.lock().expect("lock"), 0, "the local listener was never asked");
    assert!(!PathBuf::from(dir.path()).join("seed").exists());
    let gone = Command::new("ip").args(["-n", &node_ns, "link", "show", "dev", &node_if]).output().expect("ip");
    assert!(!gone.status.success(), "no tunnel interface");
    let routes = run(&["ip", "-n", &node_ns, "route", "show", "table", "main"]);
    assert!(!routes.contains(ROGUE), "no route to the impostor's address: {routes}");
    let _ = rogue_stop_tx.send(());
    rogue.join().expect("rogue thread");

    // The real run: MAC discovered, tunnel up, seed fetched, phone-home, interface removed.
    let args = agent_args(&server_pub.to_base64(), &node_if, dir.path());
    let outcome = in_netns(&node_ns, move || runtime().block_on(ferry_agent::run(args)))
        .join()
        .expect("agent thread")
        .unwrap_or_else(|e| panic!("agent failed (exit {}): {e}", e.exit_code()));
    assert_eq!(outcome.ds, format!("ds=nocloud;s=file://{}/", dir.path().join("seed").display()));
    assert!(outcome.phoned_home);
    let seed = dir.path().join("seed");
    assert_eq!(
        std::fs::read_to_string(seed.join("meta-data")).expect("meta-data"),
        "instance-id: e2e-1\nlocal-hostname: n1\n"
    );
    assert!(seed.join("user-data").exists());
    assert!(!seed.join("network-config").exists() && !seed.join("vendor-data").exists());
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(
            seen.macs,
            vec![node_mac.clone(), node_mac.clone()],
            "the MAC of the interface routing to the server"
        );
        assert_eq!(seen.phone_home.len(), 1);
        assert_eq!(seen.phone_home[0].instance_id.as_deref(), Some("e2e-1"));
    }
    let gone = Command::new("ip").args(["-n", &node_ns, "link", "show", "dev", &node_if]).output().expect("ip");
    assert!(!gone.status.success(), "the node's tunnel interface was removed");

    // cloud-init mode: the tunnel is held (state file 0600) until SIGTERM, then removed.
    let mut args = agent_args(&server_pub.to_base64(), &node_if, dir.path());
    args.mode = Mode::CloudInit;
    let state_dir = dir.path().join("state");
    let state_file = state_dir.join(ferry_agent::STATE_FILE);
    let agent = in_netns(&node_ns, move || runtime().block_on(ferry_agent::run(args)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !state_file.exists() {
        assert!(!agent.is_finished(), "the agent stopped before holding the tunnel");
        assert!(std::time::Instant::now() < deadline, "no state file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let record: AgentState = serde_json::from_slice(&std::fs::read(&state_file).expect("state")).expect("json");
    assert!(record.held);
    assert_eq!((record.pid, record.interface.as_str()), (pid, node_if.as_str()));
    assert_eq!(record.ds, "ds=nocloud-net;s=http://100.64.0.1:8081/");
    run(&["ip", "-n", &node_ns, "link", "show", "dev", &node_if]);
    // The handler is installed before the state file is written, so this does not kill us.
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let outcome = agent.join().expect("agent thread").expect("clean stop");
    assert_eq!(outcome.ds, "ds=nocloud-net;s=http://100.64.0.1:8081/");
    assert!(!outcome.detached && !outcome.phoned_home);
    assert!(!state_file.exists(), "state file removed");
    let gone = Command::new("ip").args(["-n", &node_ns, "link", "show", "dev", &node_if]).output().expect("ip");
    assert!(!gone.status.success(), "the held interface was removed");
    let teardown = TeardownArgs { state_dir, wait: Duration::from_secs(1) };
    runtime().block_on(ferry_agent::teardown(teardown)).expect("nothing left to tear down");
    assert_eq!(seen.lock().expect("lock").macs.len(), 3);

    let _ = stop_tx.send(());
    server.join().expect("server thread");
}
