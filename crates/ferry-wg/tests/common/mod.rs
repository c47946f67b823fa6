//! Test lab: network namespaces, veth pairs and wireguard-go processes, all named with a
//! per-test prefix that includes the PID, and all removed by [`Lab`]'s `Drop`.
//!
//! How code gets into a namespace: [`in_netns`] runs a closure on a fresh thread that
//! first calls `setns(CLONE_NEWNET)` on `/var/run/netns/NAME`. Network namespaces are
//! per thread, and threads (boringtun's workers, tokio's blocking pool) inherit the
//! namespace of the thread that spawns them, so a device created there lives in that
//! namespace, as do its netlink and UDP sockets. External tools run under
//! `ip netns exec NAME ...`.

#![allow(dead_code)] // each test binary uses a part of this module

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const INSTALL: &str = "apt-get install -y wireguard-tools wireguard-go iproute2";

/// Fails the test (never skips it) unless we are root and the tools are installed.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these integration tests need root (network namespaces, TUN devices): run `cargo test` as root"
    );
    for tool in ["ip", "wg", "wireguard-go"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "`{tool}` is not installed: run `{INSTALL}`");
    }
}

/// Runs a command, failing the test with its output if it does not succeed.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (install with `{INSTALL}`)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread inside network namespace `ns`; panics propagate.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Owns everything a test creates outside the process.
pub struct Lab {
    tag: String,
    netns: Vec<String>,
    children: Vec<Child>,
    files: Vec<PathBuf>,
    ifnames: Vec<String>,
}

impl Lab {
    /// `tag`: one short letter unique to the test.
    pub fn new(tag: &str) -> Self {
        Lab {
            tag: format!("{tag}{}", std::process::id()),
            netns: Vec::new(),
            children: Vec::new(),
            files: Vec::new(),
            ifnames: Vec::new(),
        }
    }

    /// An interface name unique to this test and process (at most 15 characters).
    pub fn ifname(&mut self, suffix: &str) -> String {
        let name = format!("fw{}{suffix}", self.tag);
        assert!(name.len() <= 15, "interface name {name} too long");
        self.ifnames.push(name.clone());
        name
    }

    /// Creates a namespace with loopback up.
    pub fn netns(&mut self, suffix: &str) -> String {
        let name = format!("ferrywg-{}-{suffix}", self.tag);
        run(&["ip", "netns", "add", &name]);
        self.netns.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between two namespaces, with addresses like `198.18.0.1/24`.
    pub fn veth(&mut self, ns_a: &str, addr_a: &str, ns_b: &str, addr_b: &str) {
        let (va, vb) = (self.ifname("va"), self.ifname("vb"));
        run(&["ip", "link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (ns, dev, addr) in [(ns_a, &va, addr_a), (ns_b, &vb, addr_b)] {
            run(&["ip", "link", "set", dev, "netns", ns]);
            run(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Starts `wireguard-go -f IFNAME` in `ns` and waits for its UAPI socket.
    pub fn wireguard_go(&mut self, ns: &str, ifname: &str) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wireguard-go: {e} (install with `{INSTALL}`)"));
        self.children.push(child);
        let sock = ferry_wg::uapi::socket_path(ifname);
        self.files.push(sock.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(Ok(Some(status))) = self.children.last_mut().map(|c| c.try_wait()) {
                panic!("wireguard-go for {ifname} exited with {status}: is /dev/net/tun available?");
            }
            assert!(Instant::now() < deadline, "wireguard-go did not create {}", sock.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a secret file (mode 0600) that is deleted with the lab.
    pub fn secret_file(&mut self, name: &str, content: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("ferrywg-{}-{name}", self.tag));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        f.write_all(content.as_bytes()).expect("write secret");
        self.files.push(path.clone());
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            // by PID only: SIGTERM lets wireguard-go remove its socket and interface
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for name in &self.ifnames {
            // a veth end left in the root namespace if setup failed half way
            if Path::new("/sys/class/net").join(name).exists() {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
            let _ = std::fs::remove_file(ferry_wg::uapi::socket_path(name));
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}
