//! cpio archives in the `newc` format (the SVR4 "070701" format without checksums),
//! which is what the Linux kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of 4 bytes, then the data padded to a
//! multiple of 4 bytes; the archive ends with an entry named `TRAILER!!!`. The kernel
//! accepts several archives (each possibly compressed) concatenated, later entries
//! replacing earlier ones: that is how iPXE's several `initrd` lines combine.
//!
//! [`CpioWriter`] writes an archive (every entry's parent directories first, no duplicate
//! names, owner root unless told otherwise, time stamps 0 so builds are reproducible);
//! [`read_archive`] reads one back (tests, inspection).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;

/// Owner and permission bits of an entry (the file type comes from the entry kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777` at most).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    /// Owned by root with these permissions.
    pub fn root(perm: u32) -> Meta {
        Meta { perm, uid: 0, gid: 0 }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Normalises an archive path: no leading `/` or `./`, no empty, `.` or `..` parts.
pub fn normalize(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid(format!("archive path {path:?} must not contain '..'"))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid(format!("archive path {path:?} names no file")));
    }
    let joined = parts.join("/");
    if joined == TRAILER || joined.contains('\0') {
        return Err(invalid(format!("archive path {path:?} is not allowed")));
    }
    Ok(joined)
}

/// Writes a `newc` archive to `W` (typically a gzip encoder over a file).
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    names: HashSet<String>,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter { out, next_ino: 1, names: HashSet::new(), written: 0 }
    }

    /// Whether the archive already has an entry with this (normalised) path.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.names.contains(&p))
    }

    /// Uncompressed bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Number of entries written so far (without the trailer).
    pub fn entries(&self) -> usize {
        self.names.len()
    }

    /// A directory owned by root (and its missing parents, mode 0755). An existing
    /// directory is kept as it is. Only the permission bits of `perm` count.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.dir_meta(path, Meta::root(perm))
    }

    /// A directory with this owner (an existing one is left as it is).
    pub fn dir_meta(&mut self, path: &str, meta: Meta) -> io::Result<()> {
        let path = normalize(path)?;
        if self.names.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.entry(&path, S_IFDIR, meta, 2, (0, 0), &[])
    }

    /// A regular file owned by root with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let meta = Meta::root(perm);
        let path = self.new_name(path)?;
        self.header(&path, S_IFREG, meta, 1, (0, 0), data.len() as u64)?;
        self.body(data)?;
        self.pad(data.len() as u64)
    }

    /// A regular file owned by root of `size` bytes streamed from `reader` (which must
    /// yield at least that many; only `size` are read).
    pub fn file_from(&mut self, path: &str, perm: u32, size: u64, reader: &mut dyn Read) -> io::Result<()> {
        self.file_from_meta(path, Meta::root(perm), size, reader)
    }

    /// Like [`CpioWriter::file_from`], with this owner.
    pub fn file_from_meta(&mut self, path: &str, meta: Meta, size: u64, reader: &mut dyn Read) -> io::Result<()> {
        let path = self.new_name(path)?;
        self.header(&path, S_IFREG, meta, 1, (0, 0), size)?;
        let copied = io::copy(&mut reader.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {copied} (did the file change while it was archived?)"),
            ));
        }
        self.written += size;
        self.pad(size)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.symlink_meta(path, target, Meta::root(0o777))
    }

    /// A symbolic link with this owner.
    pub fn symlink_meta(&mut self, path: &str, target: &str, meta: Meta) -> io::Result<()> {
        let path = self.new_name(path)?;
        self.entry(&path, S_IFLNK, meta, 1, (0, 0), target.as_bytes())
    }

    /// A character device node owned by root (e.g. `dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = self.new_name(path)?;
        self.entry(&path, S_IFCHR, Meta::root(perm), 1, (major, minor), &[])
    }

    /// Adds the tree under `src` below `prefix` (e.g. an image's root file system under
    /// `rootfs`): directories, regular files, symbolic links, device nodes and FIFOs,
    /// with their owners and permissions. Sockets are skipped; hard links become copies.
    /// Returns the number of entries added.
    pub fn append_tree(&mut self, src: &Path, prefix: &str) -> io::Result<usize> {
        let meta = std::fs::symlink_metadata(src)?;
        if !meta.is_dir() {
            return Err(invalid(format!("{} is not a directory", src.display())));
        }
        let prefix = normalize(prefix)?;
        let before = self.names.len();
        self.dir_meta(&prefix, meta_of(&meta))?;
        self.tree(src, &prefix)?;
        Ok(self.names.len() - before)
    }

    fn tree(&mut self, dir: &Path, at: &str) -> io::Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| invalid(format!("{}: file names must be UTF-8", child.path().display())))?;
            let path = format!("{at}/{name}");
            let md = std::fs::symlink_metadata(child.path())?;
            let ft = md.file_type();
            let m = meta_of(&md);
            if ft.is_dir() {
                self.dir_meta(&path, m)?;
                self.tree(&child.path(), &path)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(child.path())?;
                let target = target
                    .to_str()
                    .ok_or_else(|| invalid(format!("{}: link targets must be UTF-8", child.path().display())))?;
                let path = self.new_name(&path)?;
                self.entry(&path, S_IFLNK, m, 1, (0, 0), target.as_bytes())?;
            } else if ft.is_file() {
                let mut f = std::fs::File::open(child.path())?;
                self.file_from_meta(&path, m, md.len(), &mut f)?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let kind = if ft.is_char_device() {
                    S_IFCHR
                } else if ft.is_block_device() {
                    S_IFBLK
                } else {
                    S_IFIFO
                };
                let rdev = md.rdev();
                let (major, minor) = (nix_major(rdev), nix_minor(rdev));
                let path = self.new_name(&path)?;
                self.entry(&path, kind, m, 1, (major, minor), &[])?;
            }
        }
        Ok(())
    }

    /// Writes the trailer and returns the inner writer (not flushed further).
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, Meta::root(0), 1, (0, 0), 0)?;
        // Pad the archive to 512 bytes, as cpio(1) does.
        let rest = (512 - self.written % 512) % 512;
        self.body(&vec![0; rest as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn new_name(&mut self, path: &str) -> io::Result<String> {
        let path = normalize(path)?;
        if self.names.contains(&path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{path} is already in the archive")));
        }
        self.parents(&path)?;
        Ok(path)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let parent = &path[..at + i];
            if !self.names.contains(parent) {
                self.entry(parent, S_IFDIR, Meta::root(0o755), 2, (0, 0), &[])?;
            }
            at += i + 1;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        path: &str,
        kind: u32,
        meta: Meta,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        self.header(path, kind, meta, nlink, rdev, data.len() as u64)?;
        self.body(data)?;
        self.pad(data.len() as u64)
    }

    fn header(&mut self, path: &str, kind: u32, meta: Meta, nlink: u32, rdev: (u32, u32), size: u64) -> io::Result<()> {
        let size =
            u32::try_from(size).map_err(|_| invalid(format!("{path}: newc cannot hold files of 4 GiB or more")))?;
        let ino = if path == TRAILER { 0 } else { self.next_ino };
        let fields = [
            ino,
            kind | (meta.perm & 0o7777),
            meta.uid,
            meta.gid,
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            path.len() as u32 + 1,
            0, // check
        ];
        let mut h = Vec::with_capacity(110 + path.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        h.extend_from_slice(path.as_bytes());
        h.push(0);
        while h.len() % 4 != 0 {
            h.push(0);
        }
        self.body(&h)?;
        if path != TRAILER {
            self.next_ino += 1;
            self.names.insert(path.to_owned());
        }
        Ok(())
    }

    fn body(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let n = ((4 - len % 4) % 4) as usize;
        self.body(&[0; 3][..n])
    }
}

fn meta_of(md: &std::fs::Metadata) -> Meta {
    Meta { perm: md.mode() & 0o7777, uid: md.uid(), gid: md.gid() }
}

// glibc's encoding of dev_t (gnu_dev_major / gnu_dev_minor).
fn nix_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn nix_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: (u32, u32),
    /// File contents, or a symbolic link's target.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// Reads the entries of one uncompressed `newc` archive, up to its trailer.
pub fn read_archive(bytes: &[u8]) -> io::Result<Vec<Entry>> {
    let bad = |at: usize, why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("cpio at byte {at}: {why}"));
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let h = bytes.get(at..at + 110).ok_or_else(|| bad(at, "truncated header"))?;
        if &h[..6] != MAGIC {
            return Err(bad(at, "not a newc header (magic 070701)"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).map_err(|_| bad(at, "non-ASCII field"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad(at, "non-hex field"))
        };
        let (mode, uid, gid, size) = (field(1)?, field(2)?, field(3)?, field(6)? as usize);
        let rdev = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        if namesize == 0 {
            return Err(bad(at, "empty name"));
        }
        let name_bytes = bytes.get(at + 110..at + 110 + namesize - 1).ok_or_else(|| bad(at, "truncated name"))?;
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| bad(at, "name is not UTF-8"))?;
        let data_at = align(at + 110 + namesize);
        if name == TRAILER {
            return Ok(entries);
        }
        let data = bytes.get(data_at..data_at + size).ok_or_else(|| bad(at, "truncated data"))?.to_vec();
        entries.push(Entry { name, mode, uid, gid, rdev, data });
        at = align(data_at + size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(f: impl FnOnce(&mut CpioWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        f(&mut w);
        w.finish().unwrap()
    }

    #[test]
    fn writes_parents_first_and_reads_back() {
        let bytes = archive(|w| {
            w.file("/usr/bin/tool", 0o100755, b"#!/bin/sh\necho hi\n").unwrap();
            w.symlink("bin/sh", "/bin/busybox").unwrap();
            w.char_device("dev/console", 0o600, 5, 1).unwrap();
            w.dir("tmp", 0o041777).unwrap();
            w.file("empty", 0o600, b"").unwrap();
        });
        assert_eq!(bytes.len() % 512, 0);
        let entries = read_archive(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/tool", "bin", "bin/sh", "dev", "dev/console", "tmp", "empty"]);
        let tool = &entries[2];
        assert_eq!((tool.kind(), tool.perm()), (S_IFREG, 0o755));
        assert_eq!(tool.data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[0].kind(), S_IFDIR);
        assert_eq!((entries[4].kind(), entries[4].data.as_slice()), (S_IFLNK, b"/bin/busybox".as_slice()));
        assert_eq!((entries[6].kind(), entries[6].rdev), (S_IFCHR, (5, 1)));
        assert_eq!(entries[7].perm(), 0o1777);
        assert_eq!((entries[8].uid, entries[8].perm(), entries[8].data.len()), (0, 0o600, 0));
    }

    #[test]
    fn every_header_and_body_is_aligned() {
        // Names and sizes of every length modulo 4 keep each header at a 4-byte boundary.
        let bytes = archive(|w| {
            for n in 1..=9 {
                w.file(&"f".repeat(n), 0o644, &vec![b'x'; n]).unwrap();
            }
        });
        let entries = read_archive(&bytes).unwrap();
        assert_eq!(entries.len(), 9);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.data.len(), i + 1);
        }
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(6).position(|w| w == MAGIC) {
            assert_eq!((at + i) % 4, 0, "header at {}", at + i);
            at += i + 6;
        }
    }

    #[test]
    fn refuses_duplicates_and_bad_paths() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a/b", 0o644, b"1").unwrap();
        assert_eq!(w.file("/a//b", 0o644, b"2").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(w.symlink("a/b", "x").is_err());
        w.dir("a", 0o700).unwrap(); // already there: kept
        for bad in ["", "/", "../x", "a/../b", "TRAILER!!!"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
        assert!(w.contains("./a/b") && !w.contains("a/c"));
        assert_eq!(w.entries(), 2);
    }

    #[test]
    fn streamed_file_must_have_its_announced_size() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.file_from("f", 0o644, 10, &mut &b"short"[..]).unwrap_err();
        assert!(err.to_string().contains("expected 10 bytes, read 5"), "{err}");
    }

    #[test]
    fn appends_a_tree_with_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::create_dir_all(root.join("etc/empty")).unwrap();
        std::fs::write(root.join("sbin/init"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("sbin/init"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(root.join("etc/hostname"), "node\n").unwrap();
        std::os::unix::fs::symlink("../sbin/init", root.join("etc/init-link")).unwrap();
        let mut w = CpioWriter::new(Vec::new());
        let n = w.append_tree(root, "rootfs").unwrap();
        assert_eq!(n, 7);
        let entries = read_archive(&w.finish().unwrap()).unwrap();
        let get = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(get("rootfs").kind(), S_IFDIR);
        assert_eq!(get("rootfs/etc/empty").kind(), S_IFDIR);
        assert_eq!(
            (get("rootfs/sbin/init").perm(), get("rootfs/sbin/init").data.as_slice()),
            (0o750, b"#!/bin/sh\n".as_slice())
        );
        assert_eq!(get("rootfs/etc/init-link").data, b"../sbin/init");
        assert_eq!(get("rootfs/etc/hostname").data, b"node\n");
        assert!(w_is_sorted(&entries));
    }

    fn w_is_sorted(entries: &[Entry]) -> bool {
        // Parents always come before their children.
        entries.iter().enumerate().all(|(i, e)| match e.name.rsplit_once('/') {
            Some((parent, _)) => entries[..i].iter().any(|p| p.name == parent),
            None => true,
        })
    }

    #[test]
    fn reader_rejects_garbage() {
        assert!(read_archive(b"").is_err());
        assert!(read_archive(&[b'0'; 200]).is_err());
        let mut bytes = archive(|w| w.file("x", 0o644, b"data").unwrap());
        bytes.truncate(120);
        assert!(read_archive(&bytes).is_err());
    }

    #[test]
    fn device_numbers_decode_like_glibc() {
        // makedev(5, 1) and makedev(259, 65536) as glibc encodes them.
        let enc = |ma: u64, mi: u64| {
            ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff)
        };
        for (ma, mi) in [(5, 1), (1, 3), (259, 65536), (4095, 255)] {
            assert_eq!((nix_major(enc(ma, mi)), nix_minor(enc(ma, mi))), (ma as u32, mi as u32));
        }
    }
}
