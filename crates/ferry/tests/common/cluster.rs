//! A namespace cluster: the server's namespace holds a bridge on the provisioning
//! network 198.18.0.0/24 (server 198.18.0.1); each node namespace is joined to it by a
//! veth pair and has address 198.18.0.(10+i) and MAC 52:54:00:00:01:(i).

use super::{sh, unique, Netns, TestServer, FERRY};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const SERVER_IP: &str = "198.18.0.1";
pub const DATASOURCE: &str = "http://100.64.0.1:8471";
const USERSPACE: &str = "backend = \"userspace\"\n";

pub struct Node {
    pub ns: Netns,
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub dir: tempfile::TempDir,
    pub interface: String,
    /// The node's end of its veth pair (its provisioning interface).
    pub link: String,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub server: TestServer,
}

impl Node {
    /// Node `i` (1-based): a namespace joined by a veth pair to `bridge` in `hub`, with
    /// address 198.18.0.(10+i), MAC 52:54:00:00:01:(i), name n(i) and an SSH host key.
    pub fn on_bridge(hub: &Netns, bridge: &str, i: usize) -> Node {
        let ns = Netns::new("fcn");
        let (a, b) = (unique("fva"), unique("fvb"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        sh(&["ip", "link", "set", &a, "netns", &hub.name]);
        sh(&["ip", "link", "set", &b, "netns", &ns.name]);
        hub.sh(&["ip", "link", "set", &a, "master", bridge, "up"]);
        let ip = format!("198.18.0.{}", 10 + i);
        let mac = format!("52:54:00:00:01:{i:02x}");
        ns.sh(&["ip", "link", "set", &b, "address", &mac]);
        ns.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &b]);
        ns.sh(&["ip", "link", "set", &b, "up"]);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("ssh")).expect("ssh dir");
        let name = format!("n{i}");
        std::fs::write(
            dir.path().join("ssh/ssh_host_ed25519_key.pub"),
            format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{name} root@{name}\n"),
        )
        .expect("host key");
        Node { ns, name, ip, mac, dir, interface: unique("fyn"), link: b }
    }

    /// `ferry agent` in this node's namespace against `server` (one URL or a
    /// comma-separated list), pinning `pubkey` (one key or a list).
    pub fn agent(&self, mode: &str, server: &str, pubkey: &str, timeout: &str) -> Command {
        let mut c = self.agent_with_files(mode, timeout);
        c.args(["--server", server, "--pubkey", pubkey, "--node", &self.name, "--cmdline", "/dev/null"]);
        c
    }

    /// `ferry agent` in this node's namespace with the node's own files (seed, state, SSH
    /// host keys, asset tag) and interface; the caller says where the server is.
    pub fn agent_with_files(&self, mode: &str, timeout: &str) -> Command {
        let mut c = self.ns.cmd(FERRY);
        c.args(["agent", "--mode", mode, "--interface", &self.interface, "--timeout", timeout])
            .arg("--seed-dir")
            .arg(self.path("seed"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--ssh-dir")
            .arg(self.path("ssh"))
            // Never the host's /etc/cloud (cloud-init mode writes network-config there).
            .arg("--network-config-file")
            .arg(self.path("cloud.cfg.d/99_ferry_network.cfg"))
            .arg("--asset-tag-file")
            .arg(self.path("asset-tag"))
            .env("FERRY_LOG", "debug")
            .stdin(Stdio::null());
        c
    }

    /// `ferry node add` of this node (its name, MAC and address) on `server`, with `extra`.
    pub fn add_to(&self, server: &TestServer, extra: &[&str]) {
        let mut args = vec!["node", "add", &self.name, "--mac", &self.mac, "--ip", &self.ip];
        args.extend_from_slice(extra);
        server.ok(&args);
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// curl inside the node's namespace; returns (status code, body).
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let out = self
            .ns
            .cmd("curl")
            .args(["-s", "-m", "10", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        super::curl_answer(&out)
    }

    pub fn has_interface(&self) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns.name, "link", "show", "dev", &self.interface])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Cluster {
    pub fn new(nodes: usize) -> Cluster {
        Self::with_wireguard(nodes, USERSPACE, |_| None)
    }

    /// A cluster whose server has these `[provisioning]` keys (e.g. limits).
    pub fn with_provisioning(nodes: usize, provisioning: &str) -> Cluster {
        Self::build(nodes, "", provisioning, USERSPACE, |_| None)
    }

    /// A cluster whose server has extra `top` TOML (top-level keys or other tables, e.g.
    /// `[datasource]`), `[provisioning]` keys and `[wireguard]` keys (userspace backend).
    pub fn with_sections(nodes: usize, top: &str, provisioning: &str, wireguard: &str) -> Cluster {
        Self::build(nodes, top, provisioning, &format!("{USERSPACE}{wireguard}"), |_| None)
    }

    /// A cluster whose server config has `top` (TOML, e.g. a `[tpm]` table) added.
    pub fn with_config(nodes: usize, top: &str) -> Cluster {
        Self::build(nodes, top, "", USERSPACE, |_| None)
    }

    /// `prepare` runs in the server namespace before the server starts (e.g. to start
    /// wireguard-go for the uapi backend) and may name the interface to attach to.
    pub fn with_wireguard(count: usize, wireguard: &str, prepare: impl FnOnce(&Netns) -> Option<String>) -> Cluster {
        Self::build(count, "", "", wireguard, prepare)
    }

    fn build(
        count: usize,
        top: &str,
        provisioning: &str,
        wireguard: &str,
        prepare: impl FnOnce(&Netns) -> Option<String>,
    ) -> Cluster {
        let srv = Netns::new("fcs");
        let bridge = "br0";
        srv.sh(&["ip", "link", "add", bridge, "type", "bridge"]);
        srv.sh(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", bridge]);
        srv.sh(&["ip", "link", "set", bridge, "up"]);
        let nodes = (1..=count).map(|i| Node::on_bridge(&srv, bridge, i)).collect();
        let interface = prepare(&srv);
        let listen = format!("{SERVER_IP}:8470");
        let server = TestServer::start_in_with(srv, top, &listen, provisioning, wireguard, interface);
        Cluster { nodes, server }
    }

    /// Registers every node (MAC and IP on eth0), with extra `node add` flags.
    pub fn add_nodes(&self, extra: &[&str]) {
        for n in &self.nodes {
            n.add_to(&self.server, extra);
        }
    }

    /// `ferry agent` for node `i` (0-based) with the usual flags, in its namespace.
    pub fn agent(&self, i: usize, mode: &str) -> Command {
        self.agent_pinning(i, mode, &self.server.public_key())
    }

    /// `ferry agent` pinning `pubkey` as the server's key.
    pub fn agent_pinning(&self, i: usize, mode: &str, pubkey: &str) -> Command {
        self.agent_to(i, mode, &format!("http://{SERVER_IP}:8470"), pubkey, "60s")
    }

    /// `ferry agent` for node `i` against `server`, giving up after `timeout`.
    pub fn agent_to(&self, i: usize, mode: &str, server: &str, pubkey: &str, timeout: &str) -> Command {
        self.nodes[i].agent(mode, server, pubkey, timeout)
    }

    /// Starts a `--mode cloud-init` agent that holds node `i`'s tunnel, and waits for
    /// its `ds=` line (the tunnel answers by then).
    pub fn hold(&self, i: usize) -> Holder {
        use std::io::BufRead;
        // stderr to a file: a pipe nobody reads could fill up during a long hold.
        let log = std::fs::File::create(self.nodes[i].path("agent.log")).expect("agent log");
        let mut child = self.agent(i, "cloud-init").stdout(Stdio::piped()).stderr(log).spawn().expect("agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read ds line");
        if !line.starts_with("ds=nocloud-net;s=http://100.64.0.1:8471/") {
            let _ = child.wait();
            let log = std::fs::read_to_string(self.nodes[i].path("agent.log")).unwrap_or_default();
            panic!("agent did not hold a tunnel: {line:?} {log}");
        }
        Holder { child: Some(child), interface: self.nodes[i].interface.clone() }
    }
}

/// A running cloud-init-mode agent; killed on drop.
pub struct Holder {
    child: Option<std::process::Child>,
    interface: String,
}

impl Holder {
    /// SIGKILL (a crashed agent): nothing of its own clean-up runs.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the agent's exit code.
    pub fn stop(mut self) -> Option<i32> {
        let child = self.child.take()?;
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        child.wait_with_output().ok().and_then(|o| o.status.code())
    }
}

impl Drop for Holder {
    /// SIGTERM first, so the agent removes its interface and UAPI socket itself;
    /// SIGKILL only if it does not stop, then the socket file by hand.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
    }
}
