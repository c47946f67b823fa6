//! Network-booting a QEMU guest from a real `ferry serve` (the QEMU tests' shared
//! steps): a server whose provisioning and WireGuard the guest reaches at 10.0.2.2
//! (QEMU user networking inside a namespace that has only loopback), the node
//! initramfs built from this ferry binary, images imported with the Debian kernel,
//! and a boot through SeaBIOS and the iPXE ROM until the guest powers off.

use super::qemu::{self, Qemu, SerialLine};
use super::{unique, Netns, TestServer};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAC: &str = "52:54:00:12:34:56";
/// QEMU's own `timeout` for a boot that powers off by itself.
pub const QEMU_LIMIT: Duration = Duration::from_secs(75);

/// The QEMU tests run one at a time: each is CPU-bound (TCG) and measures boot times.
pub static ONE_VM: Mutex<()> = Mutex::new(());

/// A server as the QEMU guest sees it: provisioning and WireGuard on the namespace's
/// loopback, announced as 10.0.2.2.
pub fn server() -> TestServer {
    TestServer::start_in_with(
        Netns::new("fyq"),
        "",
        "127.0.0.1:8470",
        "public_url = \"http://10.0.2.2:8470\"",
        "backend = \"userspace\"\nendpoint = \"10.0.2.2:51820\"",
        None,
    )
}

/// What every VM test starts with: its prerequisites (or a clear error), its turn on the
/// machine, the Debian kernel's version and a server.
pub fn vm_test() -> (std::sync::MutexGuard<'static, ()>, String, TestServer) {
    super::require_root();
    qemu::require_qemu();
    let kver = qemu::debian_kernel();
    let one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    (one, kver, server())
}

/// Builds the node initramfs with this ferry binary and imports it with the Debian
/// kernel as image `name` (with `rootfs` as its root file system, if given).
pub fn import_image(s: &TestServer, kver: &str, name: &str, rootfs: Option<&Path>) -> Duration {
    let initrd = s.dir.path().join("initrd.img");
    let started = Instant::now();
    let built = s.json(&[
        "image",
        "initramfs",
        "--output",
        initrd.to_str().unwrap(),
        "--kernel-version",
        kver,
        "--gzip-level",
        "1",
        "--json",
    ]);
    let took = started.elapsed();
    assert_eq!(built["ferry_stripped"], true, "strip (binutils) makes the initramfs smaller: {built}");
    let modules: Vec<&str> = built["modules"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(modules.last().is_some_and(|m| m.ends_with("/wireguard.ko")), "wireguard loads last: {modules:?}");
    for m in ["virtio_net.ko", "failover.ko", "net_failover.ko", "udp_tunnel.ko", "libchacha20poly1305.ko"] {
        assert!(modules.iter().any(|x| x.ends_with(&format!("/{m}"))), "{m} in {modules:?}");
    }
    let kernel = format!("/boot/vmlinuz-{kver}");
    let mut args = vec!["image", "import", name, "--kernel", &kernel, "--initrd", initrd.to_str().unwrap()];
    if let Some(r) = rootfs {
        args.extend(["--rootfs", r.to_str().unwrap()]);
    }
    s.ok(&args);
    took
}

/// Adds node `name` with our MAC, an asset tag (its only identity factor) and `extra`
/// settings; returns the tag for QEMU's SMBIOS table.
pub fn add_node(s: &TestServer, name: &str, extra: &[&str]) -> String {
    let tag = format!("FERRY-QEMU-{}", unique("t"));
    let tag_file = s.dir.path().join("asset-tag");
    std::fs::write(&tag_file, &tag).unwrap();
    let mut args = vec![
        "node",
        "add",
        name,
        "--mac",
        MAC,
        "--identity",
        "asset-tag",
        "--asset-tag-file",
        tag_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    s.ok(&args);
    tag
}

/// Network-boots the guest (SeaBIOS → iPXE ROM → DHCP → ferry's /boot/ipxe) and waits
/// until it powers off.
pub fn netboot(s: &TestServer, tag: &str) -> Qemu {
    netboot_with(s, tag, &[])
}

/// [`netboot`] with extra QEMU arguments (a TPM).
pub fn netboot_with(s: &TestServer, tag: &str, extra: &[String]) -> Qemu {
    netboot_sized(s, tag, 512, QEMU_LIMIT, extra)
}

/// [`netboot_with`] with the guest's memory (MiB) and QEMU's time limit.
pub fn netboot_sized(s: &TestServer, tag: &str, memory_mib: u32, limit: Duration, extra: &[String]) -> Qemu {
    let memory = memory_mib.to_string();
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        &memory,
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        // SeaBIOS's serial console carries the BIOS and iPXE text (`-device sga` is deprecated).
        "-machine",
        "graphics=off",
        "-boot",
        "n",
        "-netdev",
        "user,id=n0,bootfile=http://10.0.2.2:8470/boot/ipxe",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        "-smbios",
        &format!("type=3,asset={tag}"),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend_from_slice(extra);
    let mut vm = Qemu::spawn(&s.netns, s.dir.path(), limit, &args);
    wait_for_power_off(&mut vm, limit);
    vm
}

/// Waits until the guest powers off (QEMU exits successfully) within `limit`; panics
/// with the end of the serial log otherwise.
pub fn wait_for_power_off(vm: &mut Qemu, limit: Duration) {
    let status = vm.wait(limit + Duration::from_secs(5));
    let tail = vm.tail(80);
    match status {
        Some(st) => assert!(st.success(), "QEMU exited with {st}; serial log:\n{tail}"),
        None => panic!("the guest did not power off within {limit:?}; serial log:\n{tail}"),
    }
}

/// Keeps a guest's serial log (each line with its time since QEMU started) in
/// `$CARGO_TARGET_TMPDIR/NAME`, for a look after the test.
pub fn keep_serial(vm: &Qemu, name: &str) {
    let serial: String = vm.lines().iter().map(|l| format!("{:7.2} {}\n", l.at.as_secs_f64(), l.text)).collect();
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(name), serial);
}

/// Finds each step's line, each after the previous one; panics with the log otherwise.
pub fn steps<'a>(vm: &Qemu, lines: &'a [SerialLine], steps: &[(&str, &str)]) -> Vec<&'a SerialLine> {
    let mut from = 0;
    let mut found = Vec::new();
    for (what, needle) in steps {
        let Some(i) = lines[from..].iter().position(|l| l.text.contains(needle)) else {
            panic!("serial log: no {what} ({needle:?}) after line {from}:\n{}", vm.tail(120));
        };
        found.push(&lines[from + i]);
        from += i + 1;
    }
    found
}

/// The cached root of a test node image variant (`scripts/node-image.sh VARIANT`):
/// `FERRY_NODE_IMAGE_<VARIANT>` if set (scripts/test.sh sets it), else where the script
/// puts it. Fails, with the command that builds it, when it is missing.
pub fn node_image(variant: &str) -> std::path::PathBuf {
    let env = format!("FERRY_NODE_IMAGE_{}", variant.to_ascii_uppercase());
    let path = match std::env::var_os(&env) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
            let script = Path::new(&manifest).join("../../scripts/node-image.sh");
            let out = std::process::Command::new(&script)
                .args([variant, "--print-path"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} {variant} --print-path: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    assert!(
        path.is_file(),
        "the {variant} test node image {} is missing: build it with `sudo scripts/node-image.sh {variant}` \
         (`sudo scripts/test.sh` does this before running the tests)",
        path.display()
    );
    path
}
