//! Issue 17's proof: power-on to login on a real provisioning network, with real parts
//! only. In a namespace: a bridge with ferry's address, a real dnsmasq running exactly
//! the file `ferry configure dnsmasq --interface --range --tftp-root --install-ipxe
//! --ipv6-ra` printed, and QEMU (TCG, SeaBIOS + iPXE ROM) on a TAP in that bridge. The
//! node, known by its DHCP address, MAC and SMBIOS asset tag, boots a full Debian 12
//! (scripts/node-image.sh os: systemd, cloud-init 22.4, openssh-server; no key, no
//! password) imported with `ferry image import`: iPXE → ferry's initramfs → enroll,
//! WireGuard, seed through the tunnel, phone home → `root=tmpfs` → systemd → the
//! image's own cloud-init applies the seed (hostname, an admin user with the profile's
//! authorized key, a file from a template secret, network-config with a VLAN
//! sub-interface) → `ssh` with StrictHostKeyChecking=yes trusting only ferry's SSH host
//! CA (`ferry ssh known-hosts`): the initramfs agent made the node's host key and had it
//! certified. Then a reboot of the same VM (boot count 2, a new host key, the same
//! known_hosts), and a second VM with the same MAC and a wrong asset tag: refused.
//!
//! The time split goes to stdout and `$CARGO_TARGET_TMPDIR/first-node-times.txt`; the
//! serial logs to `first-node-serial.log`, `first-node-refused-serial.log` there.

mod common;

use common::provisioning_net::{self, ProvisioningNet, SERVER_ADDRESS};
use common::qemu::{self, Qemu, SerialLine};
use common::{eventually, unique, Netns, TestServer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:17:00:10";
const NODE_IP: &str = "10.77.0.10";
/// The runtime VLAN of the profile's network-config, and the node's address on it.
const VLAN_ID: u16 = 100;
const VLAN_IP: &str = "10.78.0.10";
/// QEMU's own bound (both boots of the same VM run in one QEMU process).
const QEMU_LIMIT: Duration = Duration::from_secs(600);

fn require_tools() {
    for (tool, package) in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ssh-keyscan", "openssh-client"),
        ("zstd", "zstd"),
    ] {
        let ok =
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} is missing: apt-get install -y {package} (scripts/test.sh does)");
    }
}

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`); returns the public key line.
fn keygen(path: &Path, comment: &str) -> String {
    common::sh(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path.to_str().unwrap()]);
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned()
}

/// The profile's user-data: hostname, the admin user with its authorized key, a file
/// from a template secret. Nothing about SSH host keys: the node's comes from ferry's
/// initramfs agent, certified by ferry's SSH host CA (the default).
const USER_DATA: &str = r#"#cloud-config
hostname: {{ node.name }}
fqdn: {{ node.name }}.cluster
users:
  - name: admin
    shell: /bin/sh
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys:
      - {{ secret('admin.pub') }}
write_files:
  - path: /etc/munge/munge.key
    permissions: "0400"
    content: "{{ secret('munge.key') }}"
"#;

/// The profile's network-config (v2): the provisioning interface by DHCP, the runtime
/// VLAN tagged on it, with an address derived from the provisioning one.
fn network_config() -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    dhcp4: true\nvlans:\n  eth0.{VLAN_ID}:\n    id: {VLAN_ID}\n    link: eth0\n    \
         addresses: [\"{{{{ interfaces.eth0.ipv4 | replace('10.77.', '10.78.') }}}}/24\"]\n"
    )
}

struct Lab {
    // Dropped in this order: the network (dnsmasq, TAPs, bridge), then the server and
    // its namespace.
    net: ProvisioningNet,
    server: TestServer,
    _net_dir: tempfile::TempDir,
    admin_key: PathBuf,
    known_hosts: PathBuf,
}

impl Lab {
    /// `ssh admin@NODE_IP` as the node n1, with StrictHostKeyChecking=yes against
    /// `known_hosts` (what `ferry ssh known-hosts` printed: the CA line) and nothing else.
    fn ssh(&self, command: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.net.netns, "ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "BatchMode=yes", "-o", "HostKeyAlias=n1", "-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.admin_key)
            .args([&format!("admin@{NODE_IP}"), command])
            .output()
            .expect("run ssh")
    }
}

fn setup(kver: &str) -> Lab {
    let ns = Netns::new("fyf");
    let net_dir = tempfile::tempdir().unwrap();
    let net = ProvisioningNet::create(&ns.name, net_dir.path());
    let server = TestServer::start_in_with(
        ns,
        "",
        &format!("{SERVER_ADDRESS}:8470"),
        &format!("public_url = \"http://{SERVER_ADDRESS}:8470\""),
        &format!("backend = \"userspace\"\nendpoint = \"{SERVER_ADDRESS}:51820\""),
        None,
    );
    let dir = server.dir.path().to_path_buf();
    let step = Instant::now();

    // The image: ferry's initramfs for the Debian kernel, the full OS as its root.
    let initrd = dir.join("initrd.img");
    server.ok(&[
        "image",
        "initramfs",
        "--output",
        initrd.to_str().unwrap(),
        "--kernel-version",
        kver,
        "--gzip-level",
        "1",
    ]);
    let root = dir.join("os-root");
    std::fs::create_dir_all(&root).unwrap();
    let tarball = common::netboot::node_image("os");
    common::sh(&[
        "tar",
        "--zstd",
        "--xattrs",
        "--xattrs-include=*",
        "-xf",
        tarball.to_str().unwrap(),
        "-C",
        root.to_str().unwrap(),
    ]);
    let kernel = format!("/boot/vmlinuz-{kver}");
    server.ok(&["image", "import", "debian12", "--kernel", &kernel, "--initrd", initrd.to_str().unwrap(), "--rootfs"]
        .iter()
        .copied()
        .chain([root.to_str().unwrap()])
        .collect::<Vec<_>>());
    std::fs::remove_dir_all(&root).unwrap();
    println!("setup: initramfs, unpacking and importing the image {:.1} s", step.elapsed().as_secs_f64());

    // The profile: image, tmpfs root, cloud-init documents; the node: MAC, address,
    // asset tag; secrets: the admin's key (profile), the node's host key, a munge key.
    let (ud, nc) = (dir.join("user-data"), dir.join("network-config"));
    std::fs::write(&ud, USER_DATA).unwrap();
    std::fs::write(&nc, network_config()).unwrap();
    server.ok(&[
        "profile",
        "add",
        "compute",
        "--image",
        "debian12",
        "--root",
        "tmpfs",
        "--identity",
        "network,asset-tag",
        "--kernel-args",
        // No ferry.ssh=: the initramfs agent makes the node's host key and has it certified.
        "console=ttyS0,115200 net.ifnames=0 ferry.timeout=90",
        "--user-data",
        ud.to_str().unwrap(),
        "--network-config",
        nc.to_str().unwrap(),
    ]);
    let tag_file = dir.join("asset-tag");
    std::fs::write(&tag_file, format!("FERRY-E2E-{}", unique("t"))).unwrap();
    server.ok(&["node", "add", "n1", "--profile", "compute", "--mac", MAC, "--ip", NODE_IP, "--asset-tag-file"]
        .iter()
        .copied()
        .chain([tag_file.to_str().unwrap()])
        .collect::<Vec<_>>());
    let admin_key = dir.join("admin_ed25519");
    keygen(&admin_key, "admin@ferry-test");
    let munge = dir.join("munge.key");
    std::fs::write(&munge, "munge-secret-for-n1").unwrap();
    let secret = |name: &str, file: &Path, scope: &[&str]| {
        let mut args = vec!["secret", "set", name, "--from-file", file.to_str().unwrap()];
        args.extend_from_slice(scope);
        server.ok(&args);
    };
    secret("admin.pub", &admin_key.with_extension("pub"), &["--profile", "compute"]);
    secret("munge.key", &munge, &["--profile", "compute"]);

    // dnsmasq from exactly what ferry prints (the iPXE binaries put in place by it).
    let mut net = net;
    let config = server.ok(&[
        "configure",
        "dnsmasq",
        "--interface",
        &net.bridge,
        "--range",
        provisioning_net::NETWORK,
        "--tftp-root",
        net.tftp_root.to_str().unwrap(),
        "--install-ipxe",
        "--ipv6-ra",
    ]);
    assert!(config.contains(&format!("dhcp-host={MAC},{NODE_IP},n1")), "{config}");
    net.start_dnsmasq(&config);
    // The login node's known_hosts: ferry's CA line, nothing else, written once.
    let known = server.ok(&["ssh", "known-hosts"]);
    assert_eq!(known.lines().count(), 1, "{known}");
    assert!(known.starts_with("@cert-authority ") && known.contains(" ssh-ed25519 "), "{known}");
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, &known).unwrap();
    Lab { server, net, _net_dir: net_dir, admin_key, known_hosts }
}

/// The host certificate the node's sshd presents (`ssh-keyscan -c`, from the client's
/// side): (serial, the certified key's fingerprint).
fn presented_certificate(lab: &Lab) -> (u64, String) {
    let scan = Command::new("ip")
        .args(["netns", "exec", &lab.net.netns, "ssh-keyscan", "-c", "-t", "ed25519", "-T", "10", NODE_IP])
        .output()
        .expect("ssh-keyscan");
    let cert = String::from_utf8_lossy(&scan.stdout).lines().find(|l| !l.starts_with('#')).unwrap_or("").to_owned();
    let file = lab.server.dir.path().join("presented-cert.pub");
    // `ssh-keyscan -c` prints the certificate alone (older versions: after the host).
    let line = cert.find("ssh-ed25519-cert-v01@openssh.com ").map(|i| cert[i..].to_owned()).unwrap_or_default();
    assert!(line.starts_with("ssh-ed25519-cert-v01@openssh.com "), "the node presents a host certificate: {cert:?}");
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let shown = common::sh(&["ssh-keygen", "-L", "-f", file.to_str().unwrap()]);
    let field = |name: &str| {
        shown.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    let serial = field("Serial:").parse().unwrap_or_else(|_| panic!("{shown}"));
    let fingerprint = field("Public key:").split_whitespace().last().unwrap_or_default().to_owned();
    (serial, fingerprint)
}

/// The certificate the client is shown is the last one ferry issued to n1 (`ferry ssh
/// certs --node n1`), for the key n1 reported at phone-home; its fingerprint.
fn assert_presented_certificate_is_ferrys(lab: &Lab, boots: usize) -> String {
    let (serial, fingerprint) = presented_certificate(lab);
    let certs = lab.server.json(&["ssh", "certs", "--node", "n1", "--json"]);
    let certs = certs.as_array().unwrap();
    assert_eq!(certs.len(), boots, "one certificate per boot: {certs:?}");
    let newest = certs.iter().max_by_key(|c| c["issued_at"].as_str().unwrap_or("").to_owned()).unwrap();
    assert_eq!(newest["serial"].as_u64(), Some(serial), "{newest}");
    assert_eq!(newest["fingerprint"].as_str(), Some(fingerprint.as_str()), "{newest}");
    let shown = lab.server.json(&["node", "show", "n1", "--json"]);
    let reported: Vec<String> = shown["boot"]["host_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let file = lab.server.dir.path().join("reported.pub");
            std::fs::write(&file, format!("{}\n", k.as_str().unwrap())).unwrap();
            common::sh(&["ssh-keygen", "-l", "-f", file.to_str().unwrap()])
        })
        .collect();
    assert!(reported.iter().any(|r| r.contains(&fingerprint)), "n1 reported the key it presents: {reported:?}");
    fingerprint
}

/// Keeps a VM's serial log (each line with its time since QEMU started) for a look
/// after the test, in `$CARGO_TARGET_TMPDIR/first-node-{name}`.
fn keep_serial(vm: &Qemu, name: &str) {
    let serial: String = vm.lines().iter().map(|l| format!("{:7.2} {}\n", l.at.as_secs_f64(), l.text)).collect();
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("first-node-{name}")), serial);
}

/// Keeps a VM's raw serial log (`Qemu::log`) when the test fails while it is in scope.
struct KeepOnPanic(PathBuf, &'static str);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ =
                std::fs::copy(&self.0, Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("first-node-{}", self.1)));
        }
    }
}

/// Waits for a serial line containing `needle` after line `from`; its index.
fn wait_line(vm: &mut Qemu, from: usize, needle: &str, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(i) = vm.lines().iter().skip(from).position(|l| l.text.contains(needle)) {
            return from + i;
        }
        if Instant::now() > deadline || vm.wait(Duration::from_millis(200)).is_some() {
            keep_serial(vm, "failed-serial.log");
            panic!("serial console: no {needle:?} after line {from} within {limit:?}:\n{}", vm.tail(150));
        }
    }
}

/// Seconds since QEMU started, of the first line containing `needle` from `from`.
fn at(lines: &[SerialLine], from: usize, needle: &str) -> f64 {
    lines.iter().skip(from).find(|l| l.text.contains(needle)).map_or(f64::NAN, |l| l.at.as_secs_f64())
}

/// Waits until `ssh admin@n1` works; the time it first did (since QEMU started).
fn wait_ssh(lab: &Lab, vm: &Qemu, started: Instant, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let out = lab.ssh("hostname");
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n1");
            return started.elapsed().as_secs_f64();
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        // A wrong host key is a failure at once, never a retry.
        let wrong_key = err.contains("HOST IDENTIFICATION HAS CHANGED") || err.contains("verification failed");
        if wrong_key || Instant::now() > deadline {
            keep_serial(vm, "failed-serial.log");
        }
        assert!(!wrong_key, "{err}");
        assert!(Instant::now() < deadline, "ssh admin@n1 did not work within {limit:?}: {err}\n{}", vm.tail(80));
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn time_split(lines: &[SerialLine], from: usize, ssh_at: f64, power_on: f64) -> String {
    let t = |needle: &str| at(lines, from, needle) - power_on;
    format!(
        "  DHCP (iPXE)   {:6.1}\n  iPXE script   {:6.1}\n  kernel        {:6.1}\n  enrolled      {:6.1}\n  phoned home   {:6.1}\n  \
         systemd       {:6.1}\n  login prompt  {:6.1}\n  ssh works     {:6.1}\n",
        t("Configuring (net0"),
        t("booting n1"),
        t("Linux version"),
        t("enrolled node=n1"),
        t("phoned home"),
        t("systemd 252"),
        t(" login:"),
        ssh_at - power_on,
    )
}

#[test]
fn power_on_to_login_on_a_real_provisioning_network() {
    common::require_root();
    qemu::require_qemu();
    require_tools();
    let kver = qemu::debian_kernel();
    let test_started = Instant::now();
    let mut lab = setup(&kver);
    let setup_took = test_started.elapsed();
    let tag = std::fs::read_to_string(lab.server.dir.path().join("asset-tag")).unwrap();

    // Power on. No -no-reboot: the second boot is a reboot of the same VM.
    let machine = |mut nic: Vec<String>, tag: &str| {
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1536",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "graphics=off",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(["-boot".into(), "n".into(), "-smbios".into(), format!("type=3,asset={tag}")]);
        args.append(&mut nic);
        args
    };
    // The operator's view, open while the node boots: one JSON line per change.
    let watch_out = lab.server.dir.path().join("status-watch.jsonl");
    let watch = lab
        .server
        .cmd()
        .args(["node", "status", "n1", "--watch", "--json"])
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .spawn()
        .expect("ferry node status --watch");
    let watch = common::KillOnDrop(Some(watch));

    let nic = lab.net.qemu_nic(MAC);
    let started = Instant::now();
    let mut vm = Qemu::spawn(&lab.server.netns, &lab.net.dir, QEMU_LIMIT, &machine(nic, &tag));
    let _keep = KeepOnPanic(vm.log.clone(), "failed-raw-serial.log");
    let phoned = wait_line(&mut vm, 0, "FERRY-RESULT: ok 0", Duration::from_secs(300));
    wait_line(&mut vm, phoned, " login:", Duration::from_secs(300));
    let known = std::fs::read_to_string(&lab.known_hosts).unwrap();
    let ssh_at = wait_ssh(&lab, &vm, started, Duration::from_secs(90));
    let first = time_split(&vm.lines(), 0, ssh_at, 0.0);
    let first_key = assert_presented_certificate_is_ferrys(&lab, 1);

    // What cloud-init applied from the tunnel-delivered seed.
    let out = lab.ssh(&format!(
        "hostname; id -un; sudo cat /etc/munge/munge.key; echo; ip -4 -o addr show dev eth0.{VLAN_ID}; \
         ls /etc/ssh/ | grep ssh_host; cloud-init status --wait --long | head -n 3; \
         stat -f -c %T /; cat /etc/image-id"
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("n1\nadmin\nmunge-secret-for-n1\n"), "{text}");
    assert!(text.contains(&format!("inet {VLAN_IP}/24")), "the VLAN sub-interface from network-config: {text}");
    assert!(text.contains("ssh_host_ed25519_key-cert.pub"), "the agent's certificate is in /etc/ssh: {text}");
    assert!(text.contains("status: done") && text.contains("tmpfs\nos-1"), "{text}");
    assert!(!vm.lines().iter().any(|l| l.text.contains("Invalid cloud-config")), "the profile's user-data is valid");
    // (The VLAN on the wire is not checked from the host side: this machine's kernel has
    // no 8021q; the node's own kernel shows the tagged sub-interface with its address.)

    let shown = lab.server.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["boot"]["boot_count"], 1, "{shown}");
    let status = lab.server.json(&["node", "status", "n1", "--json"]);
    assert_eq!(status[0]["phase"], "phoned-home", "{status}");
    assert!(status[0]["last_boot_at"].is_string() && status[0]["enrolled_at"].is_string(), "{status}");
    eventually(10, "no tunnel and no peer after phone-home", || {
        lab.server.tunnel_nodes().is_empty() && lab.server.wg_peers().is_empty()
    });

    // Second boot of the same VM (powered off and on again: a warm reboot under TCG made
    // the initramfs's copy into tmpfs 40 times slower, clear_page soft lockups): a new
    // tunnel, boot count 2, a new host key, the same known_hosts.
    let _ = lab.ssh("sudo systemctl poweroff");
    if vm.wait(Duration::from_secs(120)).is_none() {
        vm.kill();
    }
    keep_serial(&vm, "serial.log");
    drop(_keep);
    let nic = lab.net.qemu_nic(MAC);
    let second_dir = lab.server.dir.path().join("second-boot");
    std::fs::create_dir_all(&second_dir).unwrap();
    let started2 = Instant::now();
    let mut vm = Qemu::spawn(&lab.server.netns, &second_dir, QEMU_LIMIT, &machine(nic, &tag));
    let _keep = KeepOnPanic(vm.log.clone(), "failed-raw-serial-2.log");
    let again = wait_line(&mut vm, 0, "FERRY-RESULT: ok 0", Duration::from_secs(300));
    wait_line(&mut vm, again, " login:", Duration::from_secs(300));
    let ssh2_at = wait_ssh(&lab, &vm, started2, Duration::from_secs(90));
    let second = time_split(&vm.lines(), 0, ssh2_at, 0.0);
    let shown = lab.server.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["boot"]["boot_count"], 2, "{shown}");
    assert_eq!(std::fs::read_to_string(&lab.known_hosts).unwrap(), known, "known_hosts untouched");
    let second_key = assert_presented_certificate_is_ferrys(&lab, 2);
    assert_ne!(first_key, second_key, "a new host key at the second boot");
    keep_serial(&vm, "serial-2.log");
    let _ = lab.ssh("sudo systemctl poweroff");
    if vm.wait(Duration::from_secs(120)).is_none() {
        vm.kill();
    }

    // A second VM with the same MAC and the wrong asset tag: refused, nothing granted.
    let audit_before = lab.server.audit("n1").lines().count();
    let nic = lab.net.qemu_nic(MAC);
    let mut impostor = Qemu::spawn(&lab.server.netns, lab.server.dir.path(), QEMU_LIMIT, &machine(nic, "WRONG-TAG"));
    let _keep_impostor = KeepOnPanic(impostor.log.clone(), "refused-failed-raw-serial.log");
    let refused = wait_line(&mut impostor, 0, "refused to enroll this node", Duration::from_secs(150));
    wait_line(&mut impostor, refused, "FERRY-RESULT: fail 3 (agent)", Duration::from_secs(20));
    keep_serial(&impostor, "refused-serial.log");
    impostor.kill();
    lab.server.assert_nothing_granted();
    let audit = lab.server.audit("n1");
    let new_lines: Vec<&str> = audit.lines().skip(audit_before).collect();
    assert!(audit.contains("asset-tag"), "ferry audit says why: {audit}");
    assert!(!new_lines.iter().any(|l| l.contains("datasource") || l.contains("tunnel-open")), "{new_lines:?}");
    assert_eq!(lab.server.json(&["node", "show", "n1", "--json"])["boot"]["boot_count"], 2);
    let status = lab.server.json(&["node", "status", "n1", "--json"]);
    assert_eq!(status[0]["phase"], "refused", "{status}");
    assert!(status[0]["reason"].as_str().is_some_and(|r| r.contains("asset")), "{status}");
    // The live view saw each phase of both boots and the refusal, in order.
    eventually(10, "ferry node status --watch shows the refusal", || {
        std::fs::read_to_string(&watch_out).is_ok_and(|t| t.contains("\"phase\":\"refused\""))
    });
    drop(watch);
    let seen: Vec<String> = std::fs::read_to_string(&watch_out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["phase"].as_str().unwrap().to_owned())
        .collect();
    let want = [
        "script-fetched",
        "artifacts",
        "enrolled",
        "phoned-home",
        "script-fetched",
        "artifacts",
        "enrolled",
        "phoned-home",
        "script-fetched",
        "artifacts",
        "refused",
    ];
    let mut rest = seen.iter();
    for phase in want {
        assert!(rest.any(|p| p == phase), "ferry node status --watch: no {phase} in order: {seen:?}");
    }

    let report = format!(
        "power-on to login under QEMU TCG (seconds; each boot from its power-on/reboot)\n\
         \x20 setup (server, initramfs, image import, dnsmasq) {:.1}\nfirst boot:\n{first}second boot (power cycle):\n{second}\
         \x20 whole test {:.1}\n",
        setup_took.as_secs_f64(),
        test_started.elapsed().as_secs_f64()
    );
    println!("{report}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join("first-node-times.txt"), &report);
}
