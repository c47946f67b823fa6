//! Sealed images with real components: a real `ferry serve` (userspace WireGuard) in
//! its namespace, real agents in node namespaces (fetch mode with `--image-root` on a
//! tmpfs), curl for whoever else is on the provisioning network.
//!
//! - A node booting a sealed image gets its key through its own tunnel, downloads the
//!   root from the provisioning listener and unpacks it with its SELinux labels, file
//!   capability and ACL; a node whose profile does not use the image, a node without a
//!   tunnel, and forged headers get no key.
//! - Downloading the sealed root from the provisioning network yields ciphertext: a
//!   marker planted in the image is not in it (and is, in the same image unsealed).
//! - A flipped byte or a truncated root in the object store: the agent refuses it (exit
//!   7) before anything is unpacked, and `ferry image verify` names the artifact.

mod common;

use common::cluster::{Cluster, DATASOURCE, SERVER_IP};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const MARKER: &[u8] = b"FERRY-MARKER-planted-in-the-image-7c1f";
/// `security.capability` for `cap_net_raw+ep` (what `setcap` writes).
const CAP_NET_RAW_EP: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// `system.posix_acl_access` for `u::rw-,u:1000:r--,g::r--,m::r--,o::r--`.
const ACL: [u8; 44] = [
    2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 2, 0, 4, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 0x10, 0, 4,
    0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255,
];

/// A small image root: a label, a file capability, an ACL, a secret-looking marker.
fn image_root(dir: &Path) -> PathBuf {
    let root = dir.join("image-root");
    for d in ["etc/selinux", "usr/bin", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/selinux/config"), "SELINUX=enforcing\nSELINUXTYPE=default\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    xattr::set(root.join("etc/shadow"), "security.selinux", b"system_u:object_r:shadow_t:s0").unwrap();
    std::fs::write(root.join("usr/bin/ping"), b"\x7fELF not really ping").unwrap();
    std::fs::set_permissions(root.join("usr/bin/ping"), std::fs::Permissions::from_mode(0o755)).unwrap();
    xattr::set(root.join("usr/bin/ping"), "security.capability", &CAP_NET_RAW_EP).unwrap();
    std::fs::write(root.join("srv/notes"), b"notes\n").unwrap();
    xattr::set(root.join("srv/notes"), "system.posix_acl_access", &ACL).unwrap();
    std::fs::write(root.join("etc/site-secret"), MARKER).unwrap();
    root
}

/// Imports image `name` from `root` with dummy kernel and initrd; `extra` flags.
fn import(c: &Cluster, name: &str, root: &Path, extra: &[&str]) -> serde_json::Value {
    let dir = c.server.dir.path();
    std::fs::write(dir.join("kernel"), b"not a kernel").unwrap();
    std::fs::write(dir.join("initrd"), b"not an initrd").unwrap();
    let (k, i) = (dir.join("kernel"), dir.join("initrd"));
    let mut args = vec!["image", "import", name, "--kernel", k.to_str().unwrap(), "--initrd", i.to_str().unwrap()];
    args.extend(["--rootfs", root.to_str().unwrap(), "--zstd-level", "3"]);
    args.extend_from_slice(extra);
    let out = c.server.run(&args);
    assert!(out.status.success(), "import {name}: {}", String::from_utf8_lossy(&out.stderr));
    let shown = c.server.json(&["image", "show", name, "--json"]);
    assert!(shown["root"]["sha256"].is_string(), "{shown}");
    shown
}

fn object(c: &Cluster, sha256: &str) -> PathBuf {
    c.server.dir.path().join("data/objects/sha256").join(sha256)
}

/// Node `i`'s agent in fetch mode, unpacking into a fresh tmpfs directory: (exit code,
/// stderr, the root directory).
fn boot(c: &Cluster, i: usize) -> (Option<i32>, String, tempfile::TempDir) {
    let root = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm (tmpfs)");
    let out = c
        .agent(i, "fetch")
        .arg("--image-root")
        .arg(root.path())
        .arg("--image-cache")
        .arg(c.nodes[i].path("image.part"))
        .output()
        .expect("agent");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), root)
}

fn zstd_decompress(bytes: &[u8]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take()?.write_all(bytes).ok()?;
            child.wait_with_output().ok()
        })?;
    out.status.success().then_some(out.stdout)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_node_unpacks_its_sealed_image_and_only_its_own_tunnel_gets_the_key() {
    let c = Cluster::new(3);
    let work = tempfile::tempdir().unwrap();
    let root = image_root(work.path());
    let sealed = import(&c, "sealed", &root, &[]);
    let plain = import(&c, "plain", &root, &["--no-seal"]);
    assert_eq!((sealed["root"]["sealed"].as_bool(), plain["root"]["sealed"].as_bool()), (Some(true), Some(false)));
    assert_eq!(sealed["root"]["xattrs"], 3, "{sealed}");
    c.server.ok(&["profile", "add", "uses-sealed", "--image", "sealed"]);
    c.add_nodes(&["--identity", "network"]);
    c.server.ok(&["node", "set", "n1", "--profile", "uses-sealed"]);
    c.server.ok(&["node", "set", "n2", "--image", "plain"]);

    // The provisioning network (n3, no tunnel) downloads ciphertext only; the same
    // image unsealed shows the marker, so the grep can find it.
    let fetch = |image: &str| {
        let out = c.nodes[2]
            .ns
            .cmd("curl")
            .args(["-s", "-f", "-m", "20", &format!("http://{SERVER_IP}:8470/boot/images/{image}/root")])
            .output()
            .expect("curl");
        assert!(out.status.success(), "GET /boot/images/{image}/root");
        out.stdout
    };
    let ciphertext = fetch("sealed");
    assert_eq!(ciphertext.len() as u64, sealed["root"]["size"].as_u64().unwrap());
    assert!(ciphertext.starts_with(b"FERRYIMG"), "a sealed image");
    assert!(!contains(&ciphertext, MARKER), "the marker is in the served sealed root");
    assert!(zstd_decompress(&ciphertext).is_none_or(|d| !contains(&d, MARKER)), "it decompresses to the marker");
    let clear = zstd_decompress(&fetch("plain")).expect("an unsealed root is zstd");
    assert!(contains(&clear, MARKER), "the marker is in the unsealed root: the grep works");

    // n1 boots its sealed image: every attribute on its tmpfs root.
    let (code, log, dir) = boot(&c, 0);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("image root unpacked"), "{log}");
    let r = dir.path();
    assert_eq!(std::fs::read(r.join("etc/site-secret")).unwrap(), MARKER);
    let attr = |p: &str, name: &str| xattr::get(r.join(p), name).unwrap();
    assert_eq!(attr("etc/shadow", "security.selinux").as_deref(), Some(&b"system_u:object_r:shadow_t:s0"[..]));
    assert_eq!(attr("usr/bin/ping", "security.capability").as_deref(), Some(&CAP_NET_RAW_EP[..]));
    assert_eq!(attr("srv/notes", "system.posix_acl_access").as_deref(), Some(&ACL[..]));
    assert!(!c.nodes[0].path("image.part").exists(), "the downloaded archive is gone");
    let audit = c.server.ok(&["audit", "--node", "n1", "--limit", "100"]);
    assert!(audit.contains("image.key-delivered") && audit.contains("sealed=true"), "{audit}");

    // Through n1's own tunnel (held now): the key; it opens the served root and appears
    // in no log line of the server (debug level).
    let _n1 = c.hold(0);
    let (code, body) = c.nodes[0].curl(&[&format!("{DATASOURCE}/image-key")]);
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key = answer["key"].as_str().expect("a key for a sealed root").to_owned();
    assert_eq!(answer["root"]["sha256"], sealed["root"]["sha256"]);
    assert!(!c.server.log_text().contains(&key), "the key is in the server's log");
    assert!(!audit.contains(&key));
    let n1_addr =
        c.server.json(&["tunnel", "list", "--json"]).as_array().unwrap()[0]["address"].as_str().unwrap().to_owned();

    // The key goes to no other caller. n2 boots another image (unsealed): it gets its
    // own image and no key, whatever it claims and asks for.
    let n2 = c.hold(1);
    for header in [format!("X-Forwarded-For: {n1_addr}"), format!("Forwarded: for={n1_addr}")] {
        let (code, body) = c.nodes[1].curl(&["-H", &header, &format!("{DATASOURCE}/image-key?image=sealed")]);
        assert_eq!(code, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((answer["image"].as_str(), answer.get("key")), (Some("plain"), None), "{body}");
        assert!(!body.contains(&key));
    }
    // n2 without an image (from its next tunnel on): nothing.
    drop(n2);
    c.server.ok(&["node", "unset", "n2", "image"]);
    let _n2 = c.hold(1);
    let (code, body) = c.nodes[1].curl(&[&format!("{DATASOURCE}/image-key")]);
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains(&key), "{body}");
    // No tunnel at all (n3 routes the tunnel network to the server): refused.
    c.nodes[2].ns.sh(&["ip", "route", "add", "100.64.0.0/16", "via", SERVER_IP]);
    let (code, body) =
        c.nodes[2].curl(&["-H", &format!("X-Forwarded-For: {n1_addr}"), &format!("{DATASOURCE}/image-key")]);
    assert_eq!(code, 403, "{body}");
    let audit = c.server.ok(&["audit", "--limit", "500"]);
    let deliveries: Vec<&str> = audit.lines().filter(|l| l.contains("image.key-delivered")).collect();
    assert!(deliveries.iter().all(|l| l.contains("node/n1") || l.contains("image=plain")), "{deliveries:?}");
}

#[test]
fn a_flipped_byte_or_a_truncated_root_is_refused_before_anything_is_unpacked() {
    let c = Cluster::new(1);
    let work = tempfile::tempdir().unwrap();
    let root = image_root(work.path());
    let sealed = import(&c, "sealed", &root, &[]);
    let plain = import(&c, "plain", &root, &["--no-seal"]);
    c.add_nodes(&["--identity", "network"]);
    for (image, record) in [("sealed", &sealed), ("plain", &plain)] {
        c.server.ok(&["node", "set", "n1", "--image", image]);
        let path = object(&c, record["root"]["sha256"].as_str().unwrap());
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        std::fs::write(&path, &flipped).unwrap();
        let verify = c.server.run(&["image", "verify", image]);
        assert_eq!(verify.status.code(), Some(1), "verify notices the flipped byte");
        let said = String::from_utf8_lossy(&verify.stdout);
        assert!(said.contains("root") && said.contains("DIGEST"), "{said}");

        let (code, log, dir) = boot(&c, 0);
        assert_eq!(code, Some(7), "{image}, flipped byte: {log}");
        assert!(log.contains("refusing the node image") && log.contains("nothing unpacked"), "{log}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{image}: something was unpacked");

        std::fs::write(&path, &good[..good.len() - 100]).unwrap();
        let (code, log, dir) = boot(&c, 0);
        assert_eq!(code, Some(7), "{image}, truncated: {log}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        std::fs::write(&path, &good).unwrap();
        c.server.ok(&["image", "verify", image]);
        let (code, log, dir) = boot(&c, 0);
        assert_eq!(code, Some(0), "{image}, restored: {log}");
        let mut marker = Vec::new();
        std::fs::File::open(dir.path().join("etc/site-secret")).unwrap().read_to_end(&mut marker).unwrap();
        assert_eq!(marker, MARKER);
    }
}
