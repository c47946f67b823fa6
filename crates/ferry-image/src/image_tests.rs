//! Round trips of a root file system through `pack` and `unpack` (and the store's sealed
//! archive): everything a node's tmpfs root must get back. Root only (owners, device
//! nodes, `security.*` and `trusted.*` attributes); the unpacking side is a tmpfs
//! (`/dev/shm`), as on a node.

use crate::pack::{self, Packer};
use crate::seal::ImageKey;
use crate::store::ObjectStore;
use crate::unpack::{unpack, UnpackError, UnpackOptions, XattrPolicy};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// `security.capability` for `cap_net_raw+ep` (what `setcap` writes; v2).
const CAP_NET_RAW_EP: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// `system.posix_acl_access` for `u::rw-,u:1000:r--,g::r--,m::r--,o::r--`.
const ACL: [u8; 44] = [
    2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 2, 0, 4, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 255, 255, 255, 255, 0x10, 0, 4,
    0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255,
];
const SHADOW: &[u8] = b"system_u:object_r:shadow_t:s0";

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (owners, device nodes, security.* attributes)");
}

fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm (tmpfs)")
}

fn set(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).unwrap_or_else(|e| panic!("getxattr {name} on {}: {e}", path.display()))
}

/// A small root with one of everything.
fn source_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    };
    let shadow = w("etc/shadow", b"root:*:19000:0:99999:7:::\n");
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::chown(&shadow, Some(0.into()), Some(42.into())).unwrap();
    set(&shadow, "security.selinux", SHADOW);
    set(&shadow, "trusted.ferry", b"t");
    set(&shadow, "user.ferry", b"u");
    w("etc/selinux/config", b"SELINUX=enforcing\nSELINUXTYPE=default\n");
    set(&root.join("etc/selinux/config"), "security.selinux", b"system_u:object_r:selinux_config_t:s0");
    let ping = w("usr/bin/ping", b"\x7fELF not really ping");
    std::fs::set_permissions(&ping, std::fs::Permissions::from_mode(0o755)).unwrap();
    set(&ping, "security.capability", &CAP_NET_RAW_EP);
    let acl = w("srv/shared/notes", b"notes\n");
    std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
    set(&acl, "system.posix_acl_access", &ACL);
    let suid = w("usr/bin/su", b"su");
    nix::unistd::chown(&suid, Some(1000.into()), Some(1000.into())).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::hard_link(&suid, root.join("usr/bin/su-link")).unwrap();
    symlink("/usr/bin/ping", root.join("usr/bin/ping6")).unwrap();
    nix::unistd::fchownat(
        None,
        &root.join("usr/bin/ping6"),
        Some(1001.into()),
        Some(1001.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    set(&root.join("usr/bin/ping6"), "security.selinux", b"system_u:object_r:bin_t:s0");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let null = root.join("dev/null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
    set(&null, "security.selinux", b"system_u:object_r:null_device_t:s0");
    nix::unistd::mkfifo(&root.join("dev/initctl"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Sparse: 1 GiB with 4 KiB of data at the end.
    let mut sparse = File::create(root.join("var/log/lastlog").tap_parent()).unwrap();
    sparse.set_len(1 << 30).unwrap();
    std::io::Seek::seek(&mut sparse, std::io::SeekFrom::Start((1 << 30) - 4096)).unwrap();
    sparse.write_all(&[7u8; 4096]).unwrap();
    let long = format!("usr/share/{}/file", "d".repeat(120));
    w(&long, b"long path");
    // A read-only directory with content, labelled, with a default ACL.
    std::fs::create_dir_all(root.join("ro")).unwrap();
    w("ro/inside", b"x");
    set(&root.join("ro"), "security.selinux", b"system_u:object_r:etc_t:s0");
    std::fs::set_permissions(root.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    nix::sys::stat::utimensat(None, &root.join("ro"), &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    set(root, "security.selinux", b"system_u:object_r:root_t:s0");
}

trait TapParent {
    fn tap_parent(self) -> Self;
}
impl TapParent for std::path::PathBuf {
    fn tap_parent(self) -> Self {
        std::fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

/// Everything `source_tree` made, checked in `root`.
fn check_tree(root: &Path, sparse: bool) {
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let shadow = root.join("etc/shadow");
    assert_eq!(std::fs::read(&shadow).unwrap(), b"root:*:19000:0:99999:7:::\n");
    let m = meta("etc/shadow");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 0, 42));
    assert_eq!(get(&shadow, "security.selinux").as_deref(), Some(SHADOW));
    assert_eq!(get(&shadow, "trusted.ferry").as_deref(), Some(&b"t"[..]));
    // This machine's tmpfs takes user.* (Linux 6.6 and later).
    assert_eq!(get(&shadow, "user.ferry").as_deref(), Some(&b"u"[..]));
    assert_eq!(get(&root.join("usr/bin/ping"), "security.capability").as_deref(), Some(&CAP_NET_RAW_EP[..]));
    assert_eq!(get(&root.join("srv/shared/notes"), "system.posix_acl_access").as_deref(), Some(&ACL[..]));
    let su = meta("usr/bin/su");
    assert_eq!((su.mode() & 0o7777, su.uid(), su.gid()), (0o4755, 1000, 1000), "set-uid kept after chown");
    assert_eq!(su.ino(), meta("usr/bin/su-link").ino(), "hard link");
    assert_eq!(std::fs::read_link(root.join("usr/bin/ping6")).unwrap(), Path::new("/usr/bin/ping"));
    assert_eq!(meta("usr/bin/ping6").uid(), 1001, "symbolic links keep their owner");
    assert_eq!(
        get(&root.join("usr/bin/ping6"), "security.selinux").as_deref(),
        Some(&b"system_u:object_r:bin_t:s0"[..])
    );
    let null = meta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((null.rdev(), null.mode() & 0o7777), (nix::sys::stat::makedev(1, 3), 0o666));
    assert_eq!(
        get(&root.join("dev/null"), "security.selinux").as_deref(),
        Some(&b"system_u:object_r:null_device_t:s0"[..])
    );
    assert!(meta("dev/initctl").file_type().is_fifo());
    if sparse {
        let lastlog = meta("var/log/lastlog");
        assert_eq!(lastlog.len(), 1 << 30);
        assert!(lastlog.blocks() * 512 < 1 << 20, "sparse: {} blocks", lastlog.blocks());
        let mut tail = vec![0u8; 4096];
        let mut f = File::open(root.join("var/log/lastlog")).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start((1 << 30) - 4096)).unwrap();
        f.read_exact(&mut tail).unwrap();
        assert!(tail.iter().all(|b| *b == 7));
    }
    assert_eq!(std::fs::read(root.join(format!("usr/share/{}/file", "d".repeat(120)))).unwrap(), b"long path");
    let ro = meta("ro");
    assert_eq!((ro.mode() & 0o7777, ro.mtime()), (0o555, 1_000_000_000), "directory attributes come last");
    assert_eq!(get(&root.join("ro"), "security.selinux").as_deref(), Some(&b"system_u:object_r:etc_t:s0"[..]));
    assert_eq!(get(root, "security.selinux").as_deref(), Some(&b"system_u:object_r:root_t:s0"[..]), "the root's own");
}

fn pack_dir_to_vec(src: &Path) -> (Vec<u8>, pack::PackStats) {
    let mut packer = Packer::new(Vec::new());
    pack::pack_dir(src, &mut packer).unwrap();
    packer.finish().unwrap()
}

fn names(tar: &[u8]) -> Vec<String> {
    let mut r = crate::tarstream::Reader::new(tar);
    let mut out = Vec::new();
    while let Some(m) = r.next_member().unwrap() {
        out.push(pack::normalize(&m.path).unwrap());
    }
    out
}

#[test]
fn a_directory_round_trips_with_every_attribute() {
    require_root();
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    let (tar, stats) = pack_dir_to_vec(src.path());
    assert!(tar.len() < 1 << 20, "the sparse file's hole is not in the archive: {} bytes", tar.len());
    assert_eq!((stats.hardlinks, stats.symlinks, stats.specials), (1, 1, 2), "{stats:?}");
    assert_eq!(stats.xattrs, 10, "{stats:?}");
    let order = names(&tar);
    assert_eq!(&order[..4], ["", "etc", "etc/selinux", "etc/selinux/config"], "the policy first: {order:?}");

    let dst = tmpfs_dir();
    let report = unpack(&tar[..], dst.path(), &mut UnpackOptions::default()).unwrap();
    check_tree(dst.path(), true);
    assert_eq!((report.hardlinks, report.symlinks, report.specials), (1, 1, 2));
    assert_eq!(report.xattrs, 10);
    assert!(report.dropped.is_empty());
}

#[test]
fn gnu_tar_archives_import_with_their_attributes_and_text_acls() {
    require_root();
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    // GNU tar writes ACLs as text with this machine's name for uid 1000; the image's
    // own /etc/passwd resolves it.
    let user = nix::unistd::User::from_uid(1000.into()).ok().flatten().map_or("alice".to_owned(), |u| u.name);
    std::fs::write(
        src.path().join("etc/passwd"),
        format!("root:x:0:0::/root:/bin/sh\n{user}:x:1000:1000::/h:/bin/sh\n"),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let gnu_tar = |flags: &[&str], file: &str| {
        let out = work.path().join(file);
        let status = std::process::Command::new("tar")
            .arg("--create")
            .args(flags)
            .arg("--file")
            .arg(&out)
            .arg("-C")
            .arg(src.path())
            .arg(".")
            .status()
            .expect("GNU tar");
        assert!(status.success(), "tar {flags:?}");
        out
    };
    let no_sparse = "--exclude=./var/log/lastlog";
    for (flags, file) in [
        (&["--xattrs", "--xattrs-include=*", "--acls", no_sparse][..], "full.tar"),
        // The ACL only as GNU tar's text, gzip-compressed.
        (
            &["--acls", "--xattrs", "--xattrs-include=*", "--xattrs-exclude=system.posix_acl_*", "--gzip", no_sparse][..],
            "text-acl.tar.gz",
        ),
    ] {
        let out = gnu_tar(flags, file);
        let mut packer = Packer::new(Vec::new());
        pack::pack_tar(&out, &mut packer).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (tar, _) = packer.finish().unwrap();
        assert_eq!(&names(&tar)[..4], ["", "etc", "etc/selinux", "etc/selinux/config"], "{file}");
        let dst = tmpfs_dir();
        unpack(&tar[..], dst.path(), &mut UnpackOptions::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        check_tree(dst.path(), false);
    }
    // GNU tar's PAX sparse format is not read: said plainly.
    let sparse = gnu_tar(&["--xattrs", "--sparse"], "sparse.tar");
    let err = pack::pack_tar(&sparse, &mut Packer::new(std::io::sink())).unwrap_err().to_string();
    assert!(err.contains("--sparse"), "{err}");
}

#[test]
fn labels_written_before_the_policy_loads_wait_for_it() {
    require_root();
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    let (tar, _) = pack_dir_to_vec(src.path());
    let dst = tmpfs_dir();
    let mut seen = Vec::new();
    let mut hook = |root: &Path| {
        let config = root.join("etc/selinux/config");
        seen.push((config.exists(), root.join("etc/shadow").exists(), get(&config, "security.selinux")));
        Ok(())
    };
    let mut opts = UnpackOptions { xattrs: XattrPolicy::Strict, after_first: Some(&mut hook) };
    unpack(&tar[..], dst.path(), &mut opts).unwrap();
    assert_eq!(seen, [(true, false, None)], "once, after the policy, before the rest, with no label yet");
    let label = get(&dst.path().join("etc/selinux/config"), "security.selinux");
    assert_eq!(label.as_deref(), Some(&b"system_u:object_r:selinux_config_t:s0"[..]), "written after the hook");
    check_tree(dst.path(), true);

    let mut failing = |_: &Path| Err("no policy for this kernel".to_owned());
    let mut opts = UnpackOptions { xattrs: XattrPolicy::Strict, after_first: Some(&mut failing) };
    let err = unpack(&tar[..], tmpfs_dir().path(), &mut opts).unwrap_err();
    assert!(matches!(err, UnpackError::Hook(ref m) if m.contains("no policy")), "{err}");
}

/// A ramfs keeps no extended attributes: a tmpfs root refuses to boot on one without
/// them; a ramfs root boots and says what it dropped.
#[test]
fn a_file_system_without_attributes_fails_strict_and_counts_lenient() {
    require_root();
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    let (tar, _) = pack_dir_to_vec(src.path());
    let mnt = tempfile::tempdir().unwrap();
    nix::mount::mount(Some("ramfs"), mnt.path(), Some("ramfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(mnt.path());
    let strict = mnt.path().join("strict");
    std::fs::create_dir(&strict).unwrap();
    let err = unpack(&tar[..], &strict, &mut UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("root=tmpfs"), "{err}");
    let lenient = mnt.path().join("lenient");
    std::fs::create_dir(&lenient).unwrap();
    let mut opts = UnpackOptions { xattrs: XattrPolicy::Lenient, after_first: None };
    let report = unpack(&tar[..], &lenient, &mut opts).unwrap();
    assert_eq!(report.xattrs, 0);
    let dropped: u64 = report.dropped.values().sum();
    assert_eq!(dropped, 10, "{:?}", report.dropped);
    assert_eq!(report.dropped.get("security"), Some(&7), "{:?}", report.dropped);
    assert!(lenient.join("usr/bin/ping").is_file());
}

/// A header whose name bytes are written raw (the `tar` crate's own checks bypassed).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[test]
fn nothing_in_an_archive_reaches_outside_the_root() {
    require_root();
    // `..` is refused outright.
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "../../escaped", tar::EntryType::Regular, "", b"x");
    let tar = b.into_inner().unwrap();
    let err = unpack(&tar[..], tmpfs_dir().path(), &mut UnpackOptions::default()).unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
    // Symbolic links to the machine's root and above it, then files and a hard link
    // through them: resolved in the image's root, everything lands inside it.
    let stray = format!("ferry-escape-test-{}", std::process::id());
    let mut b = tar::Builder::new(Vec::new());
    raw_entry(&mut b, "escape", tar::EntryType::Symlink, "/", b"");
    raw_entry(&mut b, "up", tar::EntryType::Symlink, "../../../../..", b"");
    raw_entry(&mut b, &format!("escape/{stray}"), tar::EntryType::Regular, "", b"inside");
    raw_entry(&mut b, &format!("up/{stray}-2"), tar::EntryType::Regular, "", b"inside too");
    raw_entry(&mut b, "hard", tar::EntryType::Link, &format!("escape/{stray}"), b"");
    let tar = b.into_inner().unwrap();
    let root = tmpfs_dir();
    unpack(&tar[..], root.path(), &mut UnpackOptions::default()).unwrap();
    for name in [stray.clone(), format!("{stray}-2")] {
        assert!(!Path::new("/").join(&name).exists(), "/{name} written outside the root");
    }
    assert_eq!(std::fs::read(root.path().join(&stray)).unwrap(), b"inside");
    assert_eq!(std::fs::read(root.path().join(format!("{stray}-2"))).unwrap(), b"inside too");
    assert_eq!(std::fs::read(root.path().join("hard")).unwrap(), b"inside");
}

#[test]
fn the_store_keeps_a_sealed_root_that_opens_only_with_its_key() {
    require_root();
    let src = tempfile::tempdir().unwrap();
    source_tree(src.path());
    std::fs::write(src.path().join("etc/marker"), b"FERRY-MARKER-SEALED-ROOT").unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = ObjectStore::new(data.path());
    let key = ImageKey::generate();
    let mut seen = 0;
    let (stored, stats) = store.put_root(src.path(), Some(&key), 3, &mut |n| seen = n).unwrap();
    assert!(seen > 0 && stats.entries > 10, "{stats:?}");
    let bytes = std::fs::read(store.path(&stored.sha256)).unwrap();
    assert_eq!(bytes.len() as u64, stored.size);
    assert!(crate::seal::is_sealed(&bytes));
    assert!(!bytes.windows(10).any(|w| w == b"FERRY-MARK"), "ciphertext only");
    let tar = crate::root::decoder(File::open(store.path(&stored.sha256)).unwrap(), Some(&key)).unwrap();
    let dst = tmpfs_dir();
    unpack(crate::root::pipelined(tar), dst.path(), &mut UnpackOptions::default()).unwrap();
    check_tree(dst.path(), true);
    let wrong = crate::root::decoder(File::open(store.path(&stored.sha256)).unwrap(), Some(&ImageKey::generate()))
        .and_then(|mut r| r.read(&mut [0u8; 16]));
    assert!(wrong.is_err(), "another key opens nothing");

    // Unsealed: the same content, readable by anyone.
    let (plain, _) = store.put_root(src.path(), None, 3, &mut |_| {}).unwrap();
    let mut raw = Vec::new();
    zstd::Decoder::new(File::open(store.path(&plain.sha256)).unwrap()).unwrap().read_to_end(&mut raw).unwrap();
    assert!(raw.windows(24).any(|w| w == b"FERRY-MARKER-SEALED-ROOT"));
}
