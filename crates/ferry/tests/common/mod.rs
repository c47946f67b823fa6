//! Test harness: real `ferry serve` processes, each in a network namespace of its own
//! (the server brings up a real WireGuard device and binds real ports), and node
//! namespaces joined to it by a bridge.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod chroot;
pub mod cluster;
pub mod ha;
pub mod netboot;
pub mod provisioning_net;
pub mod qemu;
pub mod raw;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// What curl run with `-w "\n%{http_code}"` printed: (HTTP status, body); status 0 when
/// nothing answered.
pub fn curl_answer(out: &Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails (never skips) when a test needs root.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root: run it through `sudo scripts/test.sh`");
}

/// A short name unique to this process and call: `{prefix}{pid}x{n}` (≤ 15 chars).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Runs a command, asserts success, returns stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// A command to run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn sh(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub netns: Netns,
    pub interface: String,
    child: Option<Child>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with("", "127.0.0.1:8470")
    }

    /// Starts `ferry serve` in a new namespace. `top` is extra top-level TOML;
    /// `listen` the provisioning address.
    pub fn start_with(top: &str, listen: &str) -> TestServer {
        let netns = Netns::new("fys");
        Self::start_in(netns, top, listen, "backend = \"userspace\"\n", None)
    }

    /// `interface`: attach to this existing interface instead of creating a new one.
    pub fn start_in(netns: Netns, top: &str, listen: &str, wireguard: &str, interface: Option<String>) -> TestServer {
        Self::start_in_with(netns, top, listen, "", wireguard, interface)
    }

    /// [`TestServer::start_in`] with extra `[provisioning]` keys (e.g. `public_url = "..."`).
    pub fn start_in_with(
        netns: Netns,
        top: &str,
        listen: &str,
        provisioning: &str,
        wireguard: &str,
        interface: Option<String>,
    ) -> TestServer {
        let mut server = Self::configure_in_with(netns, top, listen, provisioning, wireguard, interface);
        server.launch();
        server
    }

    /// [`TestServer::start_in_with`] without starting it: [`TestServer::launch`] or
    /// [`TestServer::try_launch`] does.
    pub fn configure_in_with(
        netns: Netns,
        top: &str,
        listen: &str,
        provisioning: &str,
        wireguard: &str,
        interface: Option<String>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let interface = interface.unwrap_or_else(|| unique("fy"));
        let config = dir.path().join("ferry.toml");
        // Reconcile every second unless the test sets its own interval.
        let reconcile =
            if wireguard.contains("reconcile_interval_secs") { "" } else { "reconcile_interval_secs = 1\n" };
        let toml = format!(
            "{top}\n[provisioning]\nlisten = \"{listen}\"\n{provisioning}\n[wireguard]\ninterface = \"{interface}\"\n{reconcile}{wireguard}\n"
        );
        std::fs::write(&config, toml).expect("config");
        TestServer {
            socket: dir.path().join("run/admin.sock"),
            log: dir.path().join("server.log"),
            config,
            dir,
            netns,
            interface,
            child: None,
        }
    }

    /// (Re)starts the server process with the same data directory, with a soft limit of
    /// 1,024 open files (systemd's default for services; the server raises it).
    pub fn launch(&mut self) {
        if let Err(status) = self.try_launch() {
            panic!("ferry serve exited with {status}: {}", self.log_text());
        }
    }

    /// [`TestServer::launch`], or the exit status of a server that stopped before it
    /// was ready (its log says why).
    pub fn try_launch(&mut self) -> Result<(), std::process::ExitStatus> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        // prlimit and `ip netns exec` both exec: the child's pid is the server's.
        let child = self
            .netns
            .cmd("prlimit")
            .args(["--nofile=1024:", "--", FERRY])
            .args(["serve", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .env("FERRY_LOG", "debug,sqlx=warn,boringtun=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ferry serve (prlimit is in util-linux)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready = the admin API answers (the socket is bound before the device is
        // reconciled, so a connect alone is too early).
        while !self.run(&["server-key"]).status.success() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(status);
            }
            assert!(Instant::now() < deadline, "ferry serve did not start: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(FERRY);
        c.env("FERRY_ADMIN_SOCKET", &self.socket).stdin(Stdio::null());
        c
    }

    /// Runs the CLI and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run ferry")
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ferry {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, asserts failure with exit code 1, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "ferry {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    /// A GET on the admin socket by path (`/metrics`, `/readyz`): (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&self.socket)
            .arg(format!("http://ferry{path}"))
            .output()
            .expect("curl");
        curl_answer(&out)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The peers `wg show` lists on the server's device (the real tool).
    pub fn wg_peers(&self) -> Vec<String> {
        self.netns.sh(&["wg", "show", &self.interface, "peers"]).lines().map(str::to_owned).collect()
    }

    /// The nodes with an active tunnel (`ferry tunnel list`).
    pub fn tunnel_nodes(&self) -> Vec<String> {
        let list = self.json(&["tunnel", "list", "--json"]);
        list.as_array()
            .expect("tunnel list")
            .iter()
            .map(|t| t["node"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// How many tunnels are active.
    pub fn active_tunnels(&self) -> usize {
        self.tunnel_nodes().len()
    }

    /// Nothing granted: no tunnel in the store, no peer on the device.
    pub fn assert_nothing_granted(&self) {
        assert_eq!(self.tunnel_nodes(), Vec::<String>::new(), "no tunnel");
        assert!(self.wg_peers().is_empty(), "no device peer: {:?}", self.wg_peers());
    }

    /// A node's audit log as `ferry audit --node` prints it (its last 500 entries).
    pub fn audit(&self, node: &str) -> String {
        self.ok(&["audit", "--node", node, "--limit", "500"])
    }

    pub fn public_key(&self) -> String {
        self.ok(&["server-key"]).trim().to_owned()
    }

    /// Stops the server with SIGTERM and waits for it; panics if it does not stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "ferry serve ignored SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills the server with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(Path::new("/var/run/wireguard").join(format!("{}.sock", self.interface)));
    }
}

/// Waits until `f` holds, up to `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts wireguard-go in `ns` on a new interface with `address` (e.g. 100.64.0.1/16),
/// for the uapi backend: the device outlives a crashed `ferry serve`.
pub fn wireguard_go(ns: &Netns, address: &str) -> (String, KillOnDrop) {
    let name = unique("fy");
    let child = ns
        .cmd("wireguard-go")
        .args(["-f", &name])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go (apt-get install -y wireguard-go)");
    let child = KillOnDrop(Some(child));
    eventually(10, "wireguard-go socket", || Path::new(&format!("/var/run/wireguard/{name}.sock")).exists());
    ns.sh(&["ip", "addr", "add", address, "dev", &name]);
    ns.sh(&["ip", "link", "set", &name, "up"]);
    (name, child)
}
