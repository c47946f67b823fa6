//! Issue 18 on a real network boot: QEMU (TCG) boots a node through iPXE from ferry; the
//! initramfs agent makes the node's SSH host key, has it certified through the tunnel
//! and installs key, certificate and sshd drop-in in the image's /etc/ssh on the tmpfs
//! root; the image's init starts a real sshd (Debian 12's, with its libraries, taken from
//! the cloud-init test root). A real OpenSSH client on the host, whose known_hosts holds
//! only ferry's `@cert-authority` line, logs in with `StrictHostKeyChecking=yes` — and
//! again after the node reboots with a new host key.
//!
//! QEMU's user networking forwards the namespace's 127.0.0.1:2222 to the guest's port
//! 22; the client names the host `n3` (`HostKeyAlias`), a principal of its certificate.
//!
//! Run as root: `cargo test -p ferry --test netboot_ssh -- --nocapture` (needs what
//! tests/netboot.rs needs, and the cloud-init root of `scripts/cloud-init-chroot.sh`).

mod common;

use common::chroot::{rootfs_tarball, NodeRoot};
use common::qemu::{self, Qemu};
use common::{sh, unique, Netns, TestServer};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:12:34:58";
/// One boot: to the image's sshd, a login, and the kill.
const QEMU_LIMIT: Duration = Duration::from_secs(150);
const SSH_PORT: u16 = 2222;

/// The image's init: shows the host key it was given, starts sshd, waits to be killed.
const IMAGE_INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
$bb mkdir -p /run/sshd /root /tmp
echo "IMAGE-INIT: host key $($bb cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"
/usr/sbin/sshd -e && echo "IMAGE-INIT: sshd started"
while :; do $bb sleep 60; done
"#;

const SSHD_CONFIG: &str = "HostKey /etc/ssh/ssh_host_ed25519_key\n\
    Include /etc/ssh/sshd_config.d/*.conf\n\
    UsePAM no\n\
    PermitRootLogin prohibit-password\n\
    AuthorizedKeysFile /etc/ssh/authorized_keys\n";

/// The image: busybox, Debian's sshd and its libraries (from the cloud-init root), a
/// root account for the client's key, no host key (the initramfs brings the node's own).
fn image_root(dir: &Path, client_key: &str) -> std::path::PathBuf {
    let debian = NodeRoot::unpack(&rootfs_tarball());
    let root = dir.join("image-root");
    for d in ["bin", "sbin", "usr/sbin", "etc/ssh/sshd_config.d", "root", "lib64", "lib/x86_64-linux-gnu"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::copy(debian.path("/usr/sbin/sshd"), root.join("usr/sbin/sshd")).unwrap();
    let ldd = sh(&["chroot", debian.root.to_str().unwrap(), "ldd", "/usr/sbin/sshd"]);
    for lib in ldd.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/'))) {
        // Copied with the names the loader asks for (symbolic links followed).
        std::fs::copy(debian.path(lib), root.join(lib.trim_start_matches('/'))).unwrap();
    }
    let write = |p: &str, text: &str, mode: u32| {
        std::fs::write(root.join(p), text).unwrap();
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n", 0o644);
    write("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    write("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600);
    write("etc/ssh/sshd_config", SSHD_CONFIG, 0o644);
    write("etc/ssh/authorized_keys", client_key, 0o644);
    write("etc/image-id", "sshd-1\n", 0o644);
    write("sbin/init", IMAGE_INIT, 0o755);
    root
}

/// Boots the node once: returns the host key the image saw and the client's login.
fn boot_and_log_in(s: &TestServer, tag: &str, ssh: &dyn Fn() -> Output) -> (String, Output) {
    let args: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-machine",
        "graphics=off",
        "-boot",
        "n",
        "-netdev",
        &format!("user,id=n0,bootfile=http://10.0.2.2:8470/boot/ipxe,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22"),
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-smbios",
        &format!("type=3,asset={tag}"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut vm = Qemu::spawn(&s.netns, s.dir.path(), QEMU_LIMIT, &args);
    let started = Instant::now();
    let line =
        |prefix: &str| vm.lines().iter().find_map(|l| l.text.split_once(prefix).map(|(_, r)| r.trim().to_owned()));
    while line("IMAGE-INIT: sshd started").is_none() {
        assert!(started.elapsed() < QEMU_LIMIT - Duration::from_secs(20), "no sshd in the guest:\n{}", vm.tail(60));
        std::thread::sleep(Duration::from_millis(200));
    }
    let host_key = line("IMAGE-INIT: host key ").unwrap_or_default();
    // sshd is up in the guest, but QEMU's port forward may still reset the first
    // connections: try again on a transport error only, never on a host-key refusal.
    let mut login = ssh();
    for _ in 0..10 {
        let said = String::from_utf8_lossy(&login.stderr);
        if login.status.success()
            || !(said.contains("kex_exchange_identification") || said.contains("Connection reset"))
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        login = ssh();
    }
    if !login.status.success() {
        eprintln!("guest serial log:\n{}", vm.tail(40));
    }
    vm.kill();
    (host_key, login)
}

#[test]
fn a_strict_ssh_client_with_only_the_ca_line_logs_in_to_a_netbooted_node_and_after_its_reboot() {
    common::require_root();
    qemu::require_qemu();
    let kver = qemu::debian_kernel();
    let s = TestServer::start_in_with(
        Netns::new("fys"),
        "",
        "127.0.0.1:8470",
        "public_url = \"http://10.0.2.2:8470\"",
        "backend = \"userspace\"\nendpoint = \"10.0.2.2:51820\"",
        None,
    );
    let dir = s.dir.path();
    let id = dir.join("id");
    sh(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin@login", "-f", id.to_str().unwrap()]);
    let root = image_root(dir, &std::fs::read_to_string(id.with_extension("pub")).unwrap());
    let initrd = dir.join("initrd.img");
    #[rustfmt::skip]
    s.ok(&["image", "initramfs", "--output", initrd.to_str().unwrap(), "--kernel-version", &kver, "--gzip-level", "1"]);
    #[rustfmt::skip]
    s.ok(&["image", "import", "sshd", "--kernel", &format!("/boot/vmlinuz-{kver}"), "--initrd",
        initrd.to_str().unwrap(), "--rootfs", root.to_str().unwrap()]);
    let tag = format!("FERRY-QEMU-{}", unique("t"));
    let tag_file = dir.join("asset-tag");
    std::fs::write(&tag_file, &tag).unwrap();
    #[rustfmt::skip]
    s.ok(&["node", "add", "n3", "--mac", MAC, "--identity", "asset-tag", "--asset-tag-file", tag_file.to_str().unwrap(),
        "--image", "sshd", "--root", "tmpfs", "--domain", "qemu.example",
        "--kernel-args", "console=ttyS0,115200 ferry.timeout=60"]);

    // The login node's known_hosts: ferry's CA line, nothing else.
    let known_hosts = s.ok(&["ssh", "known-hosts"]);
    assert_eq!(known_hosts.lines().count(), 1, "{known_hosts}");
    assert!(known_hosts.starts_with("@cert-authority *.qemu.example,n3 ssh-ed25519 "), "{known_hosts}");
    let kh = dir.join("known_hosts");
    std::fs::write(&kh, &known_hosts).unwrap();
    let ssh = || {
        s.netns
            .cmd("ssh")
            .args(["-F", "/dev/null", "-p", &SSH_PORT.to_string(), "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=30", "-o", "HostKeyAlias=n3"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-i", id.to_str().unwrap()])
            .args(["root@127.0.0.1", "echo logged-in-to-image-$(cat /etc/image-id)"])
            .output()
            .unwrap()
    };
    let text = |o: &Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));

    let started = Instant::now();
    let (first_key, login) = boot_and_log_in(&s, &tag, &ssh);
    assert!(login.status.success() && text(&login).contains("logged-in-to-image-sshd-1"), "{}", text(&login));
    assert!(!text(&login).contains("Permanently added"), "{}", text(&login));
    let first = started.elapsed();

    // The node reboots: a new host key, the same known_hosts.
    let (second_key, login) = boot_and_log_in(&s, &tag, &ssh);
    assert!(login.status.success() && text(&login).contains("logged-in-to-image-sshd-1"), "{}", text(&login));
    assert!(!first_key.is_empty() && first_key != second_key, "a new host key at the reboot: {first_key} {second_key}");
    let shown = s.json(&["node", "show", "n3", "--json"]);
    assert_eq!(shown["boot"]["boot_count"], 2, "{shown}");
    let certs = s.json(&["ssh", "certs", "--node", "n3", "--json"]);
    let principals: Vec<_> = certs.as_array().unwrap().iter().map(|c| c["principals"].clone()).collect();
    let expected = serde_json::json!(["n3", "n3.qemu.example"]);
    assert_eq!(principals, [expected.clone(), expected], "one certificate per boot, for n3's names: {certs}");
    println!(
        "two network boots, each to a strict SSH login through the CA: {:.1} s and {:.1} s",
        first.as_secs_f64(),
        (started.elapsed() - first).as_secs_f64()
    );
}
