//! Builds a real initramfs (Debian's static busybox, a real dynamic binary standing in
//! for ferry, a synthetic module tree with xz-compressed modules) and reads it back.

use ferry_image::cpio::{read_archive, Entry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use ferry_image::initramfs::{build_initramfs, InitramfsError, InitramfsOptions, INIT_SCRIPT, PINS_PATH};
use std::io::Read;
use std::path::Path;

const KVER: &str = "9.9.9-ferrytest";

fn require_busybox() {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing: apt-get install -y --no-install-recommends busybox-static (scripts/test.sh does)"
    );
}

/// A module tree like Debian's: `modules.dep`, `modules.builtin`, `.ko.xz` files.
fn module_tree(root: &Path) -> std::path::PathBuf {
    let dir = root.join("lib/modules").join(KVER);
    let modules = [
        ("kernel/net/core/failover.ko.xz", ""),
        ("kernel/drivers/net/net_failover.ko.xz", "kernel/net/core/failover.ko.xz"),
        ("kernel/drivers/net/virtio_net.ko.xz", "kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz"),
        ("kernel/net/ipv4/udp_tunnel.ko.xz", ""),
        ("kernel/lib/crypto/libchacha.ko.xz", ""),
        (
            "kernel/drivers/net/wireguard/wireguard.ko.xz",
            "kernel/lib/crypto/libchacha.ko.xz kernel/net/ipv4/udp_tunnel.ko.xz",
        ),
    ];
    let mut dep = String::new();
    for (path, deps) in modules {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let body = format!("\x7fELF module {path}");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut body.as_bytes(), &mut xz).unwrap();
        std::fs::write(&file, xz).unwrap();
        dep.push_str(&format!("{path}: {deps}\n"));
    }
    std::fs::write(dir.join("modules.dep"), dep).unwrap();
    std::fs::write(dir.join("modules.builtin"), "kernel/drivers/virtio/virtio_pci.ko\n").unwrap();
    dir
}

fn options(tmp: &Path) -> InitramfsOptions {
    let mut o = InitramfsOptions::new(tmp.join("out/initrd.img"));
    o.modules_dir = Some(module_tree(tmp));
    o.ferry = Some("/usr/bin/env".into()); // small and dynamically linked, like ferry
    o.strip = false;
    o.compression = 1;
    o
}

fn unpack(path: &Path) -> Vec<Entry> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    read_archive(&raw).unwrap()
}

#[test]
fn builds_a_bootable_layout() {
    require_busybox();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("out")).unwrap();
    let opts = options(tmp.path());
    let summary = build_initramfs(&opts).unwrap();
    assert_eq!(summary.kernel_version, KVER, "taken from the module directory's name");
    assert_eq!(summary.builtin, ["virtio_pci"]);
    let order: Vec<&str> = summary.modules.iter().map(|m| m.rsplit('/').next().unwrap()).collect();
    assert_eq!(
        order,
        ["failover.ko", "net_failover.ko", "virtio_net.ko", "libchacha.ko", "udp_tunnel.ko", "wireguard.ko"]
    );
    assert!(summary.libraries.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{:?}", summary.libraries);
    let loader =
        summary.libraries.iter().find(|l| l.to_string_lossy().contains("ld-linux")).expect("the dynamic loader");

    let entries = unpack(&opts.output);
    assert_eq!(summary.entries, entries.len());
    let get = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} missing"));
    let init = get("init");
    assert_eq!((init.kind(), init.perm(), init.data.as_slice()), (S_IFREG, 0o755, INIT_SCRIPT.as_bytes()));
    assert_eq!((get("dev/console").kind(), get("dev/console").rdev), (S_IFCHR, (5, 1)));
    assert_eq!((get("tmp").kind(), get("tmp").perm()), (S_IFDIR, 0o1777));
    assert_eq!(get("bin/busybox").data, std::fs::read("/bin/busybox").unwrap());
    for applet in ["bin/sh", "sbin/udhcpc", "sbin/ip", "sbin/insmod", "sbin/switch_root", "sbin/poweroff"] {
        let e = get(applet);
        assert_eq!((e.kind(), e.data.as_slice()), (S_IFLNK, b"/bin/busybox".as_slice()), "{applet}");
    }
    assert_eq!(get("usr/bin/ferry").data, std::fs::read("/usr/bin/env").unwrap());
    // Libraries are real files at the paths the binary asks for (no dangling host links).
    let l = get(loader.to_str().unwrap().trim_start_matches('/'));
    assert_eq!(l.kind(), S_IFREG);
    assert_eq!(l.data, std::fs::read(loader).unwrap());
    assert!(get("usr/share/udhcpc/default.script").perm() & 0o111 != 0);
    let wg = get(&format!("lib/modules/{KVER}/kernel/drivers/net/wireguard/wireguard.ko"));
    assert_eq!(wg.data, b"\x7fELF module kernel/drivers/net/wireguard/wireguard.ko.xz", "decompressed");
    let list = String::from_utf8(get("lib/ferry/modules").data.clone()).unwrap();
    assert_eq!(list.lines().collect::<Vec<_>>(), summary.modules);
    assert_eq!(get("lib/ferry/kernel-version").data, format!("{KVER}\n").as_bytes());
    // Every entry's parent comes first (the kernel creates files in archive order).
    for (i, e) in entries.iter().enumerate() {
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            assert!(
                entries[..i].iter().any(|p| p.name == parent && p.kind() == S_IFDIR),
                "{} before its parent",
                e.name
            );
        }
    }
    assert!(!summary.pinned && !entries.iter().any(|e| e.name.starts_with("etc/ferry/")), "nothing pinned unasked");
    // Only the output is left in its directory.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["initrd.img"]);
}

/// Finding 14: the server pins go into the initramfs the administrator builds, where
/// the agent reads them in preference to the kernel command line.
#[test]
fn server_pins_are_baked_in() {
    require_busybox();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("out")).unwrap();
    let mut opts = options(tmp.path());
    let pins = "ferry.server=http://10.0.0.1:8470\nferry.pubkey=pOCSkrZRwni5dyxWn1+puxPZBrRqtoyd+dwrRAn4ogk=\n";
    opts.pins = Some(pins.into());
    let summary = build_initramfs(&opts).unwrap();
    assert!(summary.pinned);
    let entries = unpack(&opts.output);
    let file = entries.iter().find(|e| e.name == PINS_PATH).expect("the pins file");
    assert_eq!((file.kind(), file.perm(), file.data.as_slice()), (S_IFREG, 0o644, pins.as_bytes()));
    let at = |name: &str| entries.iter().position(|e| e.name == name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(entries[at("etc/ferry")].kind(), S_IFDIR);
    assert!(at("etc") < at("etc/ferry") && at("etc/ferry") < at(PINS_PATH), "parents first");
}

#[test]
fn missing_pieces_are_clear_errors() {
    require_busybox();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("out")).unwrap();
    let mut opts = options(tmp.path());
    opts.modules = vec!["virtio_net".into(), "nosuch".into()];
    let err = build_initramfs(&opts).unwrap_err().to_string();
    assert!(err.contains("no module \"nosuch\""), "{err}");

    let mut opts = options(tmp.path());
    opts.modules_dir = Some(tmp.path().join("lib/modules/0.0-none"));
    let err = build_initramfs(&opts).unwrap_err();
    assert!(matches!(err, InitramfsError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("apt-get install -y linux-image-0.0-none"), "{err}");

    let mut opts = options(tmp.path());
    opts.busybox = tmp.path().join("no-busybox");
    let err = build_initramfs(&opts).unwrap_err().to_string();
    assert!(err.contains("apt-get install -y busybox-static"), "{err}");

    let mut opts = options(tmp.path());
    opts.busybox = "/usr/bin/env".into(); // not busybox: no applets
    assert!(build_initramfs(&opts).is_err());
    let left = std::fs::read_dir(tmp.path().join("out")).unwrap().count();
    assert_eq!(left, 0, "a failed build leaves nothing behind");
}
