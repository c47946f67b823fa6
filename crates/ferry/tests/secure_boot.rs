//! Issue 19: a network boot under UEFI Secure Boot with Debian's signed parts only, on
//! a real provisioning network. QEMU (TCG, q35 with SMM) runs OVMF's Secure Boot code
//! with the Microsoft-keys variable store and OVMF's own virtio-net driver (`romfile=`:
//! QEMU's iPXE ROM is not signed) on a TAP of a bridge (`provisioning_net`); a real
//! dnsmasq, started with exactly what `ferry configure dnsmasq --secure-boot` printed,
//! answers its PXE request with Debian's signed shim; shim loads Debian's signed
//! `grubnetx64.efi` (as `grubx64.efi`, beside it), GRUB reads `grub/grub.cfg` (ferry's
//! dispatcher by `$net_default_mac`), the node's own grub.cfg, then Debian's signed
//! kernel and ferry's initramfs, and the agent enrolls with the kernel's (signed)
//! WireGuard module under lockdown with `ferry serve` on the bridge's address.
//!
//! Debian 12's signed GRUB has `tftp`, `efinet`, `tpm` and `smbios` built in but no
//! `http` module, and loads no module under Secure Boot: it reads everything over TFTP.
//! The TFTP root is exported by that same `ferry configure dnsmasq --secure-boot` (shim,
//! GRUB, the dispatcher, each node's grub.cfg as ferry serves it at `/boot/grub?mac=`,
//! each image's kernel and initramfs); the tests only alter files in it.
//!
//! The measured-boot test attaches swtpm to the same VM and gates enrollment on the
//! PCRs of that boot.
//!
//! Serial logs (each line with the time since QEMU started) are left in
//! `$CARGO_TARGET_TMPDIR/secure-boot-serial.log`, `secure-boot-unsigned-serial.log`,
//! `secure-boot-no-node-file-serial.log` and `measured-boot-BOOT-serial.log`; a failing test prints dnsmasq's log.

mod common;

use common::netboot::{add_node, import_image, keep_serial, steps, wait_for_power_off, MAC};
use common::provisioning_net::{self, server_on_bridge, ProvisioningNet};
use common::qemu::{self, Qemu};
use common::{Netns, TestServer, FERRY};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Debian packages of the Secure Boot chain, as one command.
const INSTALL: &str = "apt-get install -y --no-install-recommends ovmf shim-signed grub-efi-amd64-signed";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// OVMF's variable store with Microsoft's keys enrolled (Secure Boot on).
const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// OVMF's variable store without keys: Secure Boot off.
const OVMF_VARS_NO_KEYS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
const GRUB_NET: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
/// The budget for one VM boot under TCG.
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// Node n1's address on the provisioning network (its static lease).
const NODE_IP: &str = "10.77.0.10";
/// n1's grub.cfg in the exported TFTP tree (`grub/nodes/MAC.cfg`).
const NODE_CFG: &str = "grub/nodes/52:54:00:12:34:56.cfg";

/// Fails (never skips) with the command that installs what is missing.
fn require_secure_boot_parts() {
    for f in [OVMF_CODE, OVMF_VARS_MS, OVMF_VARS_NO_KEYS, SHIM, GRUB_NET] {
        assert!(Path::new(f).is_file(), "{f} is missing: install the Secure Boot test prerequisites with `{INSTALL}`");
    }
}

/// A server on a provisioning network: the guests reach it on the bridge's address.
/// Dropped network first (dnsmasq, TAPs, bridge), then the server and its namespace.
struct Lab {
    net: RefCell<ProvisioningNet>,
    server: TestServer,
    _net_dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("dnsmasq's log:\n{}", self.net.borrow().log());
        }
    }
}

impl std::ops::Deref for Lab {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

/// What every test here starts with: its prerequisites (or a clear error), its turn on
/// the machine, the Debian kernel's version and a server on a provisioning network.
fn vm_test() -> (std::sync::MutexGuard<'static, ()>, String, Lab) {
    common::require_root();
    qemu::require_qemu();
    let kver = qemu::debian_kernel();
    let one = common::netboot::ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("fys");
    let net_dir = tempfile::tempdir().unwrap();
    let net = ProvisioningNet::create(&ns.name, net_dir.path());
    let server = server_on_bridge(ns);
    (one, kver, Lab { net: RefCell::new(net), server, _net_dir: net_dir })
}

/// Gives n1 its static lease, runs `ferry configure dnsmasq --secure-boot` on the
/// provisioning network (it fetches from ferry's listener there, as an admin's would),
/// starts dnsmasq with exactly what it printed, and returns the TFTP root it exported.
fn tftp_root(s: &Lab, image: &str) -> PathBuf {
    s.ok(&["node", "set", "n1", "--ip", NODE_IP]);
    let mut net = s.net.borrow_mut();
    let root = net.tftp_root.clone();
    let configure = || {
        let root = root.to_str().unwrap();
        let out = ferry_on_the_network(s, &["configure", "dnsmasq", "--secure-boot", "--interface", &net.bridge])
            .args(["--range", provisioning_net::NETWORK, "--tftp-root", root])
            .output()
            .expect("run ferry configure dnsmasq");
        let (config, told) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ferry configure dnsmasq --secure-boot failed: {told}");
        (config.into_owned(), told.into_owned())
    };
    let (config, told) = configure();
    assert!(config.contains("dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi\n"), "{config}");
    assert!(config.contains(&format!("dhcp-host={MAC},{NODE_IP},n1")), "{config}");
    for f in ["shimx64.efi", "grubx64.efi", "grub/grub.cfg", NODE_CFG] {
        assert!(root.join(f).is_file(), "ferry exported no {f}: {told}");
    }
    for what in ["kernel", "initrd"] {
        assert!(root.join(format!("boot/images/{image}/{what}")).is_file(), "no {image} {what}: {told}");
    }
    // Re-running it (as after an inventory change) downloads no current image file again.
    let (again, told) = configure();
    assert_eq!(again, config);
    assert!(told.contains(" 0 image file(s) (2 already current)"), "{told}");
    net.start_dnsmasq(&config);
    drop(net);
    let (status, detail) = doctor_dnsmasq(s);
    assert!(
        status == "ok" && detail.contains("Secure Boot TFTP tree in") && detail.ends_with("is current"),
        "{detail}"
    );
    root
}

/// The ferry CLI run in the server's namespace, where the provisioning network is (as an
/// admin runs it on the server host).
fn ferry_on_the_network(s: &Lab, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &s.netns.name, FERRY]).args(args);
    c.env("FERRY_ADMIN_SOCKET", &s.socket).stdin(std::process::Stdio::null());
    c
}

/// `ferry doctor`'s dnsmasq check of the running dnsmasq's configuration: (status, detail).
fn doctor_dnsmasq(s: &Lab) -> (String, String) {
    let conf = s.net.borrow().dir.join("dnsmasq.conf");
    let out = ferry_on_the_network(s, &["doctor", "--json", "--dnsmasq-conf", conf.to_str().unwrap()])
        .output()
        .expect("run ferry doctor");
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ferry doctor --json");
    let check = checks.as_array().unwrap().iter().find(|c| c["check"] == "dnsmasq").expect("a dnsmasq check");
    (check["status"].as_str().unwrap().to_owned(), check["detail"].as_str().unwrap().to_owned())
}

/// Boots the guest under Secure Boot from `tftp` and waits until it powers off.
fn secure_boot(s: &Lab, tag: &str, tftp: &Path) -> Qemu {
    let mut vm = start(s, tag, tftp);
    wait_for_power_off(&mut vm, BOOT_LIMIT);
    vm
}

/// Waits until a serial line contains `needle` (`true`), or QEMU exits or the boot's
/// time limit passes (`false`).
fn wait_for(vm: &mut Qemu, needle: &str) -> bool {
    let deadline = Instant::now() + BOOT_LIMIT;
    while Instant::now() < deadline {
        if vm.lines().iter().any(|l| l.text.contains(needle)) {
            return true;
        }
        if vm.wait(Duration::from_millis(200)).is_some() {
            return vm.lines().iter().any(|l| l.text.contains(needle));
        }
    }
    false
}

/// Starts QEMU with Secure Boot on: see [`start_with`].
fn start(s: &Lab, tag: &str, tftp: &Path) -> Qemu {
    start_with(s, tag, tftp, true, &[])
}

/// Starts QEMU: OVMF's Secure Boot code with a fresh copy of the Microsoft-keys variable
/// store (`secure`) or of the store without keys (Secure Boot off), PXE on a new TAP of
/// the provisioning network (whose dnsmasq serves `tftp`), and `extra` arguments (a TPM).
fn start_with(s: &Lab, tag: &str, tftp: &Path, secure: bool, extra: &[String]) -> Qemu {
    assert_eq!(tftp, s.net.borrow().tftp_root, "dnsmasq serves the exported TFTP root");
    let vars = s.dir.path().join("OVMF_VARS.fd");
    std::fs::copy(if secure { OVMF_VARS_MS } else { OVMF_VARS_NO_KEYS }, &vars).unwrap();
    let mut args: Vec<String> = vec![
        "-accel".into(),
        "tcg".into(),
        "-cpu".into(),
        "max".into(),
        "-m".into(),
        "1024".into(),
        // Secure Boot needs SMM, and the variable store writable only from SMM.
        "-machine".into(),
        "q35,smm=on".into(),
        "-global".into(),
        "driver=cfi.pflash01,property=secure,value=on".into(),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-boot".into(),
        "n".into(),
        "-smbios".into(),
        format!("type=3,asset={tag}"),
    ];
    // OVMF's own virtio-net driver: the iPXE option ROM is not signed for Secure Boot.
    args.extend(s.net.borrow_mut().qemu_nic_with(MAC, ",romfile="));
    args.extend_from_slice(extra);
    Qemu::spawn(&s.netns, s.dir.path(), BOOT_LIMIT, &args)
}

/// `kernel` without its Authenticode signature: the PE certificate table's entry in
/// the optional header's data directories (PE32+: index 4, at offset 144) zeroed.
fn unsigned(kernel: &[u8]) -> Vec<u8> {
    let mut k = kernel.to_vec();
    let pe = u32::from_le_bytes(k[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&k[pe..pe + 4], b"PE\0\0", "the kernel is an EFI (PE) image");
    let optional = pe + 4 + 20;
    assert_eq!(u16::from_le_bytes([k[optional], k[optional + 1]]), 0x20b, "PE32+");
    let cert_table = optional + 144;
    assert_ne!(&k[cert_table..cert_table + 8], &[0u8; 8], "Debian's kernel is signed");
    k[cert_table..cert_table + 8].fill(0);
    k
}

#[test]
fn secure_boot_shim_signed_grub_and_kernel_network_boot_a_node_that_phones_home() {
    require_secure_boot_parts();
    let (_one, kver, s) = vm_test();
    let started = Instant::now();
    import_image(&s, &kver, "netboot", None);
    let tag = add_node(
        &s,
        "n1",
        &["--image", "netboot", "--kernel-args", "console=ttyS0,115200 ferry.test=poweroff ferry.timeout=60"],
    );
    let tftp = tftp_root(&s, "netboot");
    let vm = secure_boot(&s, &tag, &tftp);
    let lines = vm.lines();
    let at = steps(
        &vm,
        &lines,
        &[
            ("the firmware's PXE client", "Start PXE over IPv4"),
            ("shim as the boot file", "NBP filename is shimx64.efi"),
            ("shim fetching the signed GRUB", "Fetching Netboot Image grubx64.efi"),
            ("ferry's per-node grub.cfg", "ferry: loading n1"),
            ("Secure Boot, as the kernel's EFI stub sees it", "EFI stub: UEFI Secure Boot is enabled."),
            ("the Debian kernel", &format!("Linux version {kver}")),
            ("lockdown", "Kernel is locked down from EFI Secure Boot"),
            ("the kernel's Secure Boot check", "secureboot: Secure boot enabled"),
            ("the kernel command line", "ferry.node=n1"),
            ("/init", "ferry-init: start"),
            ("the signed wireguard.ko loaded under lockdown", "wireguard: WireGuard "),
            ("the agent", "ferry-init: agent: enrolling"),
            ("enrollment", "enrolled node=n1 address=100.64."),
            ("the kernel WireGuard tunnel", "tunnel interface up interface=ferry-node0 backend=Kernel"),
            ("phone-home", "phoned home"),
            ("the result", "FERRY-RESULT: ok 0"),
            ("power-off", "reboot: Power down"),
        ],
    );
    assert!(!lines.iter().any(|l| l.text.contains("FERRY-RESULT: fail")));
    let shown = s.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["boot"]["boot_count"], 1, "{shown}");
    let audit = s.ok(&["audit", "--node", "n1", "--limit", "100"]);
    assert!(audit.contains("reason=phone-home"), "{audit}");

    let t = |i: usize| at[i].at.as_secs_f64();
    println!(
        "Secure Boot network boot of n1 under QEMU TCG (seconds from QEMU's start)\n\
         \x20 OVMF to PXE                        {:6.2}\n\
         \x20 shim over TFTP, GRUB over TFTP     {:6.2}\n\
         \x20 grub.cfg, kernel + initrd (TFTP)   {:6.2}\n\
         \x20 kernel until /init                 {:6.2}\n\
         \x20 /init to phone-home                {:6.2}\n\
         \x20 QEMU start to power-off            {:6.2}\n\
         \x20 whole test                         {:6.2}",
        t(0),
        t(3) - t(0),
        t(4) - t(3),
        t(9) - t(4),
        t(14) - t(9),
        t(16),
        started.elapsed().as_secs_f64()
    );
    keep_serial(&vm, "secure-boot-serial.log");
}

/// The negative case: the same boot with Debian's kernel stripped of its signature
/// (otherwise byte for byte the same) is refused by GRUB's shim-lock verifier, so no
/// kernel runs: the console shows the refusal and never a Linux banner.
#[test]
fn secure_boot_refuses_an_unsigned_kernel() {
    require_secure_boot_parts();
    let (_one, kver, s) = vm_test();
    import_image(&s, &kver, "netboot", None);
    let tag = add_node(&s, "n1", &["--image", "netboot", "--kernel-args", "console=ttyS0,115200 ferry.test=poweroff"]);
    let tftp = tftp_root(&s, "netboot");
    let kernel = tftp.join("boot/images/netboot/kernel");
    std::fs::write(&kernel, unsigned(&std::fs::read(&kernel).unwrap())).unwrap();
    // `ferry doctor` sees that the exported kernel is not the image's.
    let (status, detail) = doctor_dnsmasq(&s);
    assert!(status == "fail" && detail.ends_with("out of date: boot/images/netboot/kernel"), "{detail}");
    let mut vm = start(&s, &tag, &tftp);
    let refused = wait_for(&mut vm, "bad shim signature");
    // A few seconds more: a kernel that started anyway would print its banner.
    std::thread::sleep(Duration::from_secs(5));
    vm.kill();
    let lines = vm.lines();
    assert!(refused, "no refusal on the console:\n{}", vm.tail(60));
    steps(
        &vm,
        &lines,
        &[
            ("shim fetching the signed GRUB", "Fetching Netboot Image grubx64.efi"),
            ("ferry's per-node grub.cfg", "ferry: loading n1"),
            ("GRUB's shim-lock verifier refusing the kernel", "bad shim signature"),
        ],
    );
    assert!(
        !lines.iter().any(|l| l.text.contains("Linux version") || l.text.contains("EFI stub:")),
        "an unsigned kernel ran:\n{}",
        vm.tail(60)
    );
    keep_serial(&vm, "secure-boot-unsigned-serial.log");
}

/// ferry's dispatcher `grub/grub.cfg` on a MAC with a lease but no node file (a node
/// file removed, an export not re-run): the signed GRUB says the MAC is not in ferry's
/// inventory and boots nothing.
#[test]
fn secure_boot_grub_boots_nothing_for_a_mac_without_a_node_file() {
    require_secure_boot_parts();
    let (_one, kver, s) = vm_test();
    import_image(&s, &kver, "netboot", None);
    let tag = add_node(&s, "n1", &["--image", "netboot", "--kernel-args", "console=ttyS0,115200 ferry.test=poweroff"]);
    let tftp = tftp_root(&s, "netboot");
    std::fs::remove_file(tftp.join(NODE_CFG)).unwrap();
    let mut vm = start(&s, &tag, &tftp);
    let stopped = wait_for(&mut vm, "ferry: not booting.");
    std::thread::sleep(Duration::from_secs(3));
    vm.kill();
    let lines = vm.lines();
    assert!(stopped, "no message from ferry's dispatcher:\n{}", vm.tail(60));
    steps(
        &vm,
        &lines,
        &[
            ("shim fetching the signed GRUB", "Fetching Netboot Image grubx64.efi"),
            ("the dispatcher naming the MAC", &format!("ferry: the MAC address {MAC} is not in ferry's inventory")),
            ("the dispatcher stopping", "ferry: not booting."),
        ],
    );
    assert!(
        !lines.iter().any(|l| l.text.contains("ferry: loading") || l.text.contains("Linux version")),
        "{}",
        vm.tail(60)
    );
    keep_serial(&vm, "secure-boot-no-node-file-serial.log");
}

#[path = "../../ferry-agent/tests/common/swtpm.rs"]
mod swtpm;

/// The node's TPM: manufactured by swtpm with a local CA, its EK registered for node
/// `n1`; each boot gets a fresh swtpm process on the same state (PCRs reset, as at
/// power-on).
struct NodeTpm {
    dir: tempfile::TempDir,
}

impl NodeTpm {
    fn manufacture() -> (NodeTpm, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = swtpm::LocalCa::new(&dir.path().join("ca"));
        let mut tpm = swtpm::Swtpm::manufacture(&dir.path().join("tpm"), &ca);
        let tcti = tpm.start();
        let ek = ferry_agent::tpm::Tpm::open(&tcti).unwrap().endorsement().unwrap();
        tpm.stop();
        let public = ferry_attest::TpmPublic::parse(&ek.public).unwrap();
        let spki = ferry_attest::EkIdentity::from_tpm_public(&public).unwrap();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, spki.spki_der());
        let pem_file = dir.path().join("ek.pem");
        std::fs::write(&pem_file, format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")).unwrap();
        (NodeTpm { dir }, pem_file)
    }

    /// Starts swtpm for one boot; returns it and QEMU's TPM arguments.
    fn power_on(&self, boot: &str) -> (std::process::Child, Vec<String>) {
        let sock = self.dir.path().join(format!("tpm/{boot}.sock"));
        let child = std::process::Command::new(swtpm::require("swtpm"))
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.dir.path().join("tpm/state").display()))
            .args(["--ctrl", &format!("type=unixio,path={}", sock.display())])
            .arg("--log")
            .arg(format!("file={},level=1", self.dir.path().join(format!("tpm/{boot}.log")).display()))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("swtpm for QEMU");
        common::eventually(10, "swtpm's control socket", || sock.exists());
        let args = vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", sock.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ];
        (child, args)
    }
}

/// The PCRs pinned: 4 (boot loaders), 7 (Secure Boot state and keys), 8 (GRUB's
/// command lines and the kernel's), 9 (the files GRUB read: grub.cfg, kernel, initramfs).
const PINNED: [u8; 4] = [4, 7, 8, 9];

/// Boots once with the TPM and waits for the server's verdict: the audit's first new
/// `enroll.refused` naming a PCR (`Err(detail)`) or the node's phone-home (`Ok`).
fn measured_boot(s: &Lab, tpm: &NodeTpm, boot: &str, tag: &str, tftp: &Path, secure: bool) -> Result<(), String> {
    let (mut emulator, tpm_args) = tpm.power_on(boot);
    // Compared without their padding: the table's column widths follow its widest entry.
    let rows = |audit: &str| -> Vec<String> {
        audit.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
    };
    let seen: std::collections::HashSet<String> =
        rows(&s.ok(&["audit", "--node", "n1", "--limit", "1000"])).into_iter().collect();
    let mut vm = start_with(s, tag, tftp, secure, &tpm_args);
    let deadline = Instant::now() + BOOT_LIMIT;
    let verdict = loop {
        // QEMU's exit first, then the audit: a verdict written just before power-off counts.
        let exited = vm.wait(Duration::from_secs(2)).is_some();
        let audit = s.ok(&["audit", "--node", "n1", "--limit", "1000"]);
        let new: Vec<String> = rows(&audit).into_iter().filter(|l| !seen.contains(l)).collect();
        if let Some(l) = new.iter().find(|l| l.contains("enroll.refused") && l.contains("PCR")) {
            break Err(l.clone());
        }
        if new.iter().any(|l| l.contains("reason=phone-home")) {
            break Ok(());
        }
        assert!(!exited && Instant::now() < deadline, "no verdict for boot {boot}:\n{}\n{audit}", vm.tail(60));
    };
    vm.kill();
    let _ = emulator.kill();
    let _ = emulator.wait();
    let serial: String = vm.lines().iter().map(|l| format!("{:7.2} {}\n", l.at.as_secs_f64(), l.text)).collect();
    let _ =
        std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("measured-boot-{boot}-serial.log")), serial);
    verdict
}

/// The PCRs a refusal's audit detail names as differing (`PCR 7 differs`, `PCRs 4, 7 differ`).
fn differing(detail: &str) -> Vec<u8> {
    let after = detail.split_once("PCRs ").or_else(|| detail.split_once("PCR ")).map(|(_, a)| a).unwrap_or_default();
    let list = after.split(" differ").next().unwrap_or_default();
    list.split(", ").filter_map(|i| i.trim().parse().ok()).collect()
}

/// Issue 19's gate: the node selects PCRs 4, 7, 8 and 9 with no values; the first
/// known-good Secure Boot network boot is refused (not learned yet) and its verified
/// quote kept; `ferry node tpm learn` pins exactly it, no hex copied. Then that boot
/// enrolls and phones home; the same node booted with Secure Boot off is refused naming
/// PCR 7; booted with an altered kernel command line it is refused naming PCR 8. Each
/// refusal is in the audit with the PCR that differed.
#[test]
fn measured_boot_gates_enrollment_on_secure_boot_and_the_command_line() {
    require_secure_boot_parts();
    let (_one, kver, s) = vm_test();
    import_image(&s, &kver, "netboot", None);
    let (tpm, ek) = NodeTpm::manufacture();
    let tag = add_node(
        &s,
        "n1",
        &["--image", "netboot", "--kernel-args", "console=ttyS0,115200 ferry.test=poweroff ferry.timeout=60 ferry.tpm"],
    );
    s.ok(&["node", "set", "n1", "--identity", "tpm"]);
    s.ok(&["node", "set", "n1", "--tpm-ek", ek.to_str().unwrap()]);
    // The PCRs to quote, no values: nothing is trusted before an admin approves a boot.
    // (On the node, not a profile: ferry's grub.cfg names the node, so PCRs 8 and 9 are
    // per node.)
    s.ok(&["node", "set", "n1", "--tpm-pcrs", "4,7,8,9"]);
    let tftp = tftp_root(&s, "netboot");
    let first = measured_boot(&s, &tpm, "learn", &tag, &tftp, true).expect_err("not learned yet: refused");
    assert!(first.contains("PCR policy not learned yet: run ferry node tpm learn n1"), "{first}");
    let learned = s.ok(&["node", "tpm", "learn", "n1", "--yes"]);
    assert!(learned.contains("pinned PCRs 4, 7, 8, 9 on node/n1"), "{learned}");
    let node = s.json(&["node", "show", "n1", "--json"]);
    for i in PINNED {
        let value = node["settings"]["tpm_pcrs"][i.to_string()].as_str().unwrap_or_default();
        assert!(value.len() == 64 && learned.contains(value), "PCR {i} pinned as shown: {learned} {node}");
    }

    // (a) Secure Boot off (the variable store without keys): PCR 7 differs.
    let off = measured_boot(&s, &tpm, "secure-boot-off", &tag, &tftp, false).expect_err("Secure Boot off is refused");
    assert!(differing(&off).contains(&7), "{off}");
    // (b) An altered kernel command line: PCR 8 differs, PCR 7 does not.
    let good_cfg = std::fs::read_to_string(tftp.join(NODE_CFG)).unwrap();
    let altered = good_cfg.replace("'ferry.tpm'", "'ferry.tpm' 'ferry.altered=1'");
    assert_ne!(altered, good_cfg);
    std::fs::write(tftp.join(NODE_CFG), altered).unwrap();
    let cmdline =
        measured_boot(&s, &tpm, "altered-cmdline", &tag, &tftp, true).expect_err("altered command line refused");
    let named = differing(&cmdline);
    assert!(named.contains(&8) && !named.contains(&7), "{cmdline}");
    println!(
        "measured boot refusals: Secure Boot off: PCRs {:?}; altered command line: PCRs {named:?}",
        differing(&off)
    );
    // (c) The known-good boot enrolls and phones home.
    std::fs::write(tftp.join(NODE_CFG), good_cfg).unwrap();
    measured_boot(&s, &tpm, "known-good", &tag, &tftp, true).expect("the known-good boot enrolls");
    let audit = s.ok(&["audit", "--node", "n1", "--limit", "100"]);
    assert!(audit.contains("factors=tpm ") && audit.contains("reason=phone-home"), "{audit}");
}
