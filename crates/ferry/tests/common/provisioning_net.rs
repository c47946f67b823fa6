//! A real provisioning network in a network namespace: a bridge (ferry listens on its
//! address), one TAP per VM enslaved to it (QEMU's NIC, no user networking), and a real
//! dnsmasq (DHCP with static leases, TFTP, iPXE chain-loading) run with exactly the file
//! `ferry configure dnsmasq` printed. Everything is removed on drop; processes are
//! stopped by the PIDs we started.
//!
//! Usage: `let ns = Netns::new("fyp"); let net = ProvisioningNet::create(&ns.name, dir)`,
//! start `ferry serve` in `ns` on [`ProvisioningNet::server_address`], then
//! `net.start_dnsmasq(&config_text)` and `net.tap()` per VM.

use super::{eventually, sh, unique, Netns, TestServer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The Debian packages this harness needs, as one command.
pub const INSTALL: &str = "apt-get install -y --no-install-recommends dnsmasq-base ipxe iproute2";

/// The provisioning network's addresses (a documentation-free private range of our own).
pub const NETWORK: &str = "10.77.0.0/24";
pub const SERVER_ADDRESS: &str = "10.77.0.1";
/// A ULA on the bridge: dnsmasq's router advertisements (`--ipv6-ra`) need one.
pub const SERVER_ADDRESS_V6: &str = "fd77:f::1/64";

/// `ferry serve` in `ns` on the bridge's address (create the [`ProvisioningNet`] in
/// `ns` first): provisioning at `http://SERVER_ADDRESS:8470` (its `public_url`) and
/// WireGuard (userspace) at `SERVER_ADDRESS:51820`, where guests on the TAPs reach them.
pub fn server_on_bridge(ns: Netns) -> TestServer {
    TestServer::start_in_with(
        ns,
        "",
        &format!("{SERVER_ADDRESS}:8470"),
        &format!("public_url = \"http://{SERVER_ADDRESS}:8470\""),
        &format!("backend = \"userspace\"\nendpoint = \"{SERVER_ADDRESS}:51820\""),
        None,
    )
}

pub struct ProvisioningNet {
    /// The namespace everything lives in (owned by the caller, e.g. its `TestServer`).
    pub netns: String,
    pub bridge: String,
    pub dir: PathBuf,
    pub tftp_root: PathBuf,
    pub dnsmasq_log: PathBuf,
    taps: Vec<String>,
    dnsmasq: Option<Child>,
}

fn require(what: &str, ok: bool) {
    assert!(
        ok,
        "{what} is missing: install the provisioning network's prerequisites with `{INSTALL}` (scripts/test.sh does)"
    );
}

impl ProvisioningNet {
    /// Creates the bridge (with [`SERVER_ADDRESS`]/24 and [`SERVER_ADDRESS_V6`]) in
    /// `netns`; files (TFTP root, dnsmasq's log, leases, pid) go into `dir`.
    pub fn create(netns: &str, dir: &Path) -> ProvisioningNet {
        require("dnsmasq (dnsmasq-base)", Path::new("/usr/sbin/dnsmasq").is_file());
        let bridge = unique("fbr");
        let ip = |args: &[&str]| {
            let mut full = vec!["ip", "-n", netns];
            full.extend_from_slice(args);
            sh(&full);
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        // No IPv6 duplicate address detection delay: the address is usable at once.
        let _ = Command::new("ip")
            .args(["netns", "exec", netns, "sysctl", "-qw", &format!("net.ipv6.conf.{bridge}.accept_dad=0")])
            .status();
        ip(&["addr", "add", &format!("{SERVER_ADDRESS}/24"), "dev", &bridge]);
        ip(&["addr", "add", SERVER_ADDRESS_V6, "dev", &bridge, "nodad"]);
        ip(&["link", "set", &bridge, "up"]);
        let dir = dir.join("provisioning-net");
        let tftp_root = dir.join("tftp");
        std::fs::create_dir_all(&dir).expect("provisioning net dir");
        ProvisioningNet {
            netns: netns.to_owned(),
            bridge,
            dnsmasq_log: dir.join("dnsmasq.log"),
            tftp_root,
            dir,
            taps: Vec::new(),
            dnsmasq: None,
        }
    }

    /// A new TAP device on the bridge, for `-netdev tap,ifname=NAME,script=no,downscript=no`.
    pub fn tap(&mut self) -> String {
        let tap = unique("ftap");
        sh(&["ip", "-n", &self.netns, "tuntap", "add", "dev", &tap, "mode", "tap"]);
        sh(&["ip", "-n", &self.netns, "link", "set", &tap, "master", &self.bridge, "up"]);
        self.taps.push(tap.clone());
        tap
    }

    /// QEMU arguments for a virtio NIC with `mac` on a new TAP of this network.
    pub fn qemu_nic(&mut self, mac: &str) -> Vec<String> {
        self.qemu_nic_with(mac, "")
    }

    /// [`qemu_nic`](Self::qemu_nic) with more `-device` options (`,romfile=`: the
    /// firmware's own driver instead of QEMU's iPXE option ROM).
    pub fn qemu_nic_with(&mut self, mac: &str, device_options: &str) -> Vec<String> {
        let tap = self.tap();
        vec![
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}{device_options}"),
        ]
    }

    /// Starts dnsmasq in the namespace with `config` (the file `ferry configure dnsmasq`
    /// printed) and only sandbox options on its command line: no DNS (`--port=0`), its
    /// own pid, lease and log files, root (our temporary files are 0700). Waits until it
    /// listens for DHCP.
    pub fn start_dnsmasq(&mut self, config: &str) -> PathBuf {
        assert!(self.dnsmasq.is_none(), "dnsmasq already runs");
        let conf = self.dir.join("dnsmasq.conf");
        std::fs::write(&conf, config).expect("dnsmasq.conf");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "/usr/sbin/dnsmasq",
                "--keep-in-foreground",
                "--port=0",
                "--user=root",
            ])
            .arg(format!("--conf-file={}", conf.display()))
            .arg(format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()))
            .arg(format!("--dhcp-leasefile={}", self.dir.join("dnsmasq.leases").display()))
            .arg(format!("--log-facility={}", self.dnsmasq_log.display()))
            .arg("--log-dhcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("dnsmasq.stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn dnsmasq");
        self.dnsmasq = Some(child);
        eventually(10, "dnsmasq listening for DHCP", || {
            if let Some(status) = self.dnsmasq.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "dnsmasq exited with {status}: {}{}",
                    std::fs::read_to_string(self.dir.join("dnsmasq.stderr")).unwrap_or_default(),
                    self.log()
                );
            }
            self.log().contains("DHCP, static leases only")
        });
        conf
    }

    /// dnsmasq's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.dnsmasq_log).unwrap_or_default()
    }

    fn stop_dnsmasq(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ProvisioningNet {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        for tap in self.taps.drain(..) {
            let _ = Command::new("ip").args(["-n", &self.netns, "link", "del", &tap]).status();
        }
        let _ = Command::new("ip").args(["-n", &self.netns, "link", "del", &self.bridge]).status();
    }
}
