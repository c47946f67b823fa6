//! Packs a root file system — a directory, or a tar archive (plain, zstd or gzip) — as
//! the tar stream of a ferry image: PAX extended headers (`SCHILY.xattr.*`) carrying every
//! extended attribute (SELinux labels, file capabilities, `trusted.*`, `user.*`, POSIX
//! ACLs as their `system.posix_acl_*` attributes), numeric owners, modes, modification
//! times, hard links, device nodes and FIFOs, and sparse files as GNU sparse entries.
//! The `tar` crate writes the format; this module decides what goes in, in which order.
//!
//! Order: the root, then `etc/selinux` (the SELinux policy and configuration), then
//! everything else. A node loads the image's policy as soon as those entries are
//! unpacked, so that every label written after is the label the kernel uses (see
//! `unpack`). From a directory the walk is sorted; from a tar the input is read in
//! passes (the image's user and group names for text ACLs, the policy, the rest).

use crate::acl;
use crate::tarstream::{Member, Reader, Sparse};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Entries unpacked first: the SELinux policy (see the module's documentation).
pub const FIRST: &str = "etc/selinux";
/// The PAX key prefix of extended attributes (GNU tar, libarchive, the `tar` crate).
pub const XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.display().to_string(), source }
}

/// What went into the archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Character and block devices, FIFOs.
    pub specials: u64,
    /// Bytes of regular file content (the unpacked size, holes of sparse files included).
    pub file_bytes: u64,
    /// Extended attributes (name and value pairs), ACLs included.
    pub xattrs: u64,
    /// Sockets and the contents of other file systems mounted inside a source
    /// directory, which are not packed.
    pub skipped: u64,
}

/// An entry's metadata as it goes into the archive.
struct Meta {
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    device: Option<(u32, u32)>,
}

impl Meta {
    fn header(&self, size: u64) -> io::Result<tar::Header> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(self.kind);
        h.set_mode(self.mode & 0o7777);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(size);
        if let Some((major, minor)) = self.device {
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        Ok(h)
    }
}

/// The tar stream being written, with what it holds so far.
pub struct Packer<W: Write> {
    builder: tar::Builder<W>,
    pub stats: PackStats,
}

impl<W: Write> Packer<W> {
    pub fn new(out: W) -> Packer<W> {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        builder.sparse(true);
        Packer { builder, stats: PackStats::default() }
    }

    /// Ends the archive and returns the writer.
    pub fn finish(self) -> io::Result<(W, PackStats)> {
        Ok((self.builder.into_inner()?, self.stats))
    }

    fn xattrs(&mut self, xattrs: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        self.stats.xattrs += xattrs.len() as u64;
        let keys: Vec<String> = xattrs.keys().map(|k| format!("{XATTR_PREFIX}{k}")).collect();
        self.builder.append_pax_extensions(keys.iter().map(String::as_str).zip(xattrs.values().map(Vec::as_slice)))
    }

    /// One entry that is not a regular file with content from disk.
    fn entry(
        &mut self,
        name: &str,
        meta: &Meta,
        xattrs: &BTreeMap<String, Vec<u8>>,
        link: Option<&Path>,
        data: Option<(u64, &mut dyn Read)>,
    ) -> io::Result<()> {
        self.xattrs(xattrs)?;
        self.stats.entries += 1;
        let path = archive_path(name);
        match (link, data) {
            (Some(target), _) => {
                let mut h = meta.header(0)?;
                self.builder.append_link(&mut h, path, target)?;
                match meta.kind {
                    tar::EntryType::Link => self.stats.hardlinks += 1,
                    _ => self.stats.symlinks += 1,
                }
            }
            (None, Some((size, reader))) => {
                let mut h = meta.header(size)?;
                self.builder.append_data(&mut h, path, reader)?;
                self.stats.files += 1;
                self.stats.file_bytes += size;
            }
            (None, None) => {
                let mut h = meta.header(0)?;
                self.builder.append_data(&mut h, path, io::empty())?;
                match meta.kind {
                    tar::EntryType::Directory => self.stats.dirs += 1,
                    _ => self.stats.specials += 1,
                }
            }
        }
        Ok(())
    }
}

impl<W: Write> Packer<W> {
    /// A GNU sparse member (from an input archive): its map in the header and extension
    /// blocks, then the stored data.
    fn sparse(
        &mut self,
        name: &str,
        meta: &Meta,
        xattrs: &BTreeMap<String, Vec<u8>>,
        map: &Sparse,
        stored: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.xattrs(xattrs)?;
        let mut h = meta.header(stored)?;
        h.set_entry_type(tar::EntryType::GNUSparse);
        let mut ext_blocks = Vec::new();
        {
            let gnu = h.as_gnu_mut().ok_or_else(|| io::Error::other("not a GNU header"))?;
            gnu.set_real_size(map.real_size);
            let (first, rest) = map.segments.split_at(map.segments.len().min(gnu.sparse.len()));
            for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(first) {
                slot.set_offset(*offset);
                slot.set_length(*len);
            }
            gnu.set_is_extended(!rest.is_empty());
            let blocks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
            for (i, chunk) in blocks.iter().enumerate() {
                let mut ext = tar::GnuExtSparseHeader::new();
                for (slot, (offset, len)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
                    slot.set_offset(*offset);
                    slot.set_length(*len);
                }
                ext.set_is_extended(i + 1 < blocks.len());
                ext_blocks.extend_from_slice(ext.as_bytes());
            }
        }
        // The extension blocks follow the header, before the data the size counts.
        self.builder.append_data(&mut h, archive_path(name), io::Cursor::new(ext_blocks).chain(data.take(stored)))?;
        self.stats.entries += 1;
        self.stats.files += 1;
        self.stats.file_bytes += map.real_size;
        Ok(())
    }
}

/// The name an entry has in the archive: `.` for the root.
fn archive_path(name: &str) -> &str {
    if name.is_empty() {
        "."
    } else {
        name
    }
}

/// Normalizes an archive path: no leading `/` or `./`, no `.` or empty components, no
/// trailing `/`; `..` is refused. The root is the empty string.
pub fn normalize(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| format!("{} is not UTF-8", String::from_utf8_lossy(raw)))?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{text:?} leads out of the root with ..: refused")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Whether `name` is packed in the first pass: the root, an ancestor of [`FIRST`], or
/// inside it.
pub fn is_first(name: &str) -> bool {
    name.is_empty()
        || FIRST.starts_with(name) && FIRST.as_bytes().get(name.len()) == Some(&b'/')
        || name == FIRST
        || name.starts_with(FIRST) && name.as_bytes().get(FIRST.len()) == Some(&b'/')
}

// ---------------------------------------------------------------- from a directory

/// The extended attributes of `path` itself (not what a symbolic link points to).
fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, PackError> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // A file system without extended attributes has none to keep.
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => return Ok(out),
        Err(e) => return Err(io_at(path)(e)),
    };
    for name in names {
        let key = name
            .to_str()
            .ok_or_else(|| {
                PackError::Invalid(format!("{}: an extended attribute name is not UTF-8: {name:?}", path.display()))
            })?
            .to_owned();
        if let Some(value) = xattr::get(path, &name).map_err(io_at(path))? {
            out.insert(key, value);
        }
    }
    Ok(out)
}

fn meta_of(m: &std::fs::Metadata, kind: tar::EntryType) -> Meta {
    let device = matches!(kind, tar::EntryType::Char | tar::EntryType::Block)
        .then(|| (nix::sys::stat::major(m.rdev()) as u32, nix::sys::stat::minor(m.rdev()) as u32));
    Meta { kind, mode: m.mode(), uid: m.uid() as u64, gid: m.gid() as u64, mtime: m.mtime().max(0) as u64, device }
}

/// Walks a source directory in a fixed order (sorted, [`FIRST`] first).
struct DirWalk<'p, W: Write> {
    packer: &'p mut Packer<W>,
    device: u64,
    /// (device, inode) of regular files with several links → the first name packed.
    links: HashMap<(u64, u64), String>,
}

/// Packs the directory `src` (its contents; `src` itself is the root entry). Other file
/// systems mounted inside it are not descended into, as with `tar --one-file-system`.
pub fn pack_dir<W: Write>(src: &Path, packer: &mut Packer<W>) -> Result<(), PackError> {
    let root = std::fs::symlink_metadata(src).map_err(io_at(src))?;
    if !root.is_dir() {
        return Err(PackError::Invalid(format!("{} is not a directory", src.display())));
    }
    let mut walk = DirWalk { packer, device: root.dev(), links: HashMap::new() };
    walk.visit(src, String::new(), &root)
}

impl<W: Write> DirWalk<'_, W> {
    fn visit(&mut self, abs: &Path, name: String, m: &std::fs::Metadata) -> Result<(), PackError> {
        let ft = m.file_type();
        let xattrs = read_xattrs(abs)?;
        let io = io_at(abs);
        if ft.is_dir() {
            self.packer.entry(&name, &meta_of(m, tar::EntryType::Directory), &xattrs, None, None).map_err(io)?;
            if m.dev() != self.device {
                self.packer.stats.skipped += 1;
                return Ok(());
            }
            for (child_name, child) in sorted_children(abs, &name)? {
                let child_meta = std::fs::symlink_metadata(&child).map_err(io_at(&child))?;
                self.visit(&child, child_name, &child_meta)?;
            }
            return Ok(());
        }
        if !ft.is_dir() && m.nlink() > 1 && ft.is_file() {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                let target = PathBuf::from(first);
                let meta = meta_of(m, tar::EntryType::Link);
                return self.packer.entry(&name, &meta, &BTreeMap::new(), Some(&target), None).map_err(io);
            }
            self.links.insert(key, name.clone());
        }
        if ft.is_file() {
            self.packer.xattrs(&xattrs).map_err(io_at(abs))?;
            let mut file = File::open(abs).map_err(io_at(abs))?;
            // The tar crate writes sparse files as GNU sparse entries (SEEK_DATA/SEEK_HOLE).
            self.packer.builder.append_file(archive_path(&name), &mut file).map_err(io_at(abs))?;
            let s = &mut self.packer.stats;
            s.entries += 1;
            s.files += 1;
            s.file_bytes += m.len();
            return Ok(());
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(abs).map_err(io_at(abs))?;
            let meta = meta_of(m, tar::EntryType::Symlink);
            return self.packer.entry(&name, &meta, &xattrs, Some(&target), None).map_err(io);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else if ft.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets belong to running programs; tar has no type for them.
            self.packer.stats.skipped += 1;
            return Ok(());
        };
        self.packer.entry(&name, &meta_of(m, kind), &xattrs, None, None).map_err(io)
    }
}

/// A directory's entries as (archive name, path), sorted by name, the one leading to
/// [`FIRST`] first.
fn sorted_children(dir: &Path, name: &str) -> Result<Vec<(String, PathBuf)>, PackError> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let file_name = entry.file_name();
        let child = std::str::from_utf8(file_name.as_bytes())
            .map_err(|_| PackError::Invalid(format!("{}: a file name is not UTF-8: {file_name:?}", dir.display())))?;
        let child_name = if name.is_empty() { child.to_owned() } else { format!("{name}/{child}") };
        children.push((child_name, entry.path()));
    }
    children.sort_by(|(a, _), (b, _)| (!is_first(a), a.as_bytes()).cmp(&(!is_first(b), b.as_bytes())));
    Ok(children)
}

// ---------------------------------------------------------------- from a tar archive

/// A tar archive, decompressed as its first bytes say (zstd, gzip, or none).
fn open_tar(src: &Path) -> Result<Box<dyn Read>, PackError> {
    let mut file = BufReader::with_capacity(1 << 20, File::open(src).map_err(io_at(src))?);
    let magic = {
        use std::io::BufRead;
        file.fill_buf().map_err(io_at(src))?.get(..6).map(<[u8]>::to_vec).unwrap_or_default()
    };
    Ok(if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(file).map_err(io_at(src))?)
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(PackError::Invalid(format!(
            "{} is xz-compressed: decompress it first (xz -d) or recompress it with zstd",
            src.display()
        )));
    } else {
        Box::new(file)
    })
}

/// The extended attributes an input tar member carries: `SCHILY.xattr.*`, GNU tar's
/// text ACLs (`SCHILY.acl.access`/`default`, when the attribute itself is absent) and
/// SELinux label (`RHT.security.selinux`).
fn tar_xattrs(m: &Member, name: &str, names: &acl::Names) -> Result<BTreeMap<String, Vec<u8>>, PackError> {
    let mut out = BTreeMap::new();
    let mut acls = Vec::new();
    for (key, value) in &m.pax {
        if let Some(attr) = key.strip_prefix(XATTR_PREFIX) {
            out.insert(attr.to_owned(), value.clone());
        } else if key == "RHT.security.selinux" {
            out.entry("security.selinux".to_owned()).or_insert_with(|| value.clone());
        } else if let Some(which) = key.strip_prefix("SCHILY.acl.") {
            acls.push((which.to_owned(), String::from_utf8_lossy(value).into_owned()));
        } else if key.starts_with("GNU.sparse.") {
            return Err(PackError::Invalid(format!(
                "{name}: GNU tar's PAX sparse format (tar --sparse --format=posix) is not supported: import the \
                 directory itself, or create the tar without --sparse"
            )));
        }
    }
    for (which, text) in acls {
        let attr = match which.as_str() {
            "access" => "system.posix_acl_access",
            "default" => "system.posix_acl_default",
            _ => continue,
        };
        if !out.contains_key(attr) && !text.trim().is_empty() {
            let value = acl::text_to_xattr(&text, names).map_err(|e| PackError::Invalid(format!("{name}: {e}")))?;
            out.insert(attr.to_owned(), value);
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Names,
    First,
    Rest,
}

/// Repacks the tar archive `src` (plain, zstd or gzip).
pub fn pack_tar<W: Write>(src: &Path, packer: &mut Packer<W>) -> Result<(), PackError> {
    let mut names = acl::Names::default();
    for pass in [Pass::Names, Pass::First, Pass::Rest] {
        let mut reader = Reader::new(open_tar(src)?);
        while let Some(member) = reader.next_member().map_err(|e| not_a_tar(src, e))? {
            let name = normalize(&member.path).map_err(|e| PackError::Invalid(format!("{}: {e}", src.display())))?;
            if pass == Pass::Names {
                if member.kind().is_file() && (name == "etc/passwd" || name == "etc/group") {
                    let mut text = String::new();
                    reader.data().take(1 << 24).read_to_string(&mut text).map_err(io_at(src))?;
                    let db = acl::Names::parse_db(&text);
                    if name == "etc/passwd" {
                        names.users = db;
                    } else {
                        names.groups = db;
                    }
                }
                continue;
            }
            if is_first(&name) != (pass == Pass::First) {
                continue;
            }
            repack_member(src, &member, &mut reader.data(), &name, &names, packer)?;
        }
    }
    Ok(())
}

fn not_a_tar(src: &Path, e: io::Error) -> PackError {
    PackError::Invalid(format!("{} is not a readable tar archive: {e}", src.display()))
}

fn repack_member<W: Write>(
    src: &Path,
    m: &Member,
    data: &mut dyn Read,
    name: &str,
    names: &acl::Names,
    packer: &mut Packer<W>,
) -> Result<(), PackError> {
    use tar::EntryType as T;
    let h = &m.header;
    let kind = h.entry_type();
    let field = |what: &str, e: io::Error| PackError::Invalid(format!("{name}: invalid {what} in its tar header: {e}"));
    let mut meta = Meta {
        kind,
        mode: h.mode().map_err(|e| field("mode", e))?,
        uid: h.uid().map_err(|e| field("uid", e))?,
        gid: h.gid().map_err(|e| field("gid", e))?,
        mtime: h.mtime().unwrap_or(0),
        device: None,
    };
    if matches!(kind, T::Char | T::Block) {
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        meta.device = Some((major, minor));
    }
    let xattrs = tar_xattrs(m, name, names)?;
    let io = io_at(src);
    match kind {
        T::Directory => packer.entry(name, &meta, &xattrs, None, None).map_err(io),
        T::GNUSparse => {
            let sparse =
                m.sparse.as_ref().ok_or_else(|| PackError::Invalid(format!("{name}: sparse without a map")))?;
            packer.sparse(name, &meta, &xattrs, sparse, m.size, data).map_err(io)
        }
        T::Regular | T::Continuous => {
            meta.kind = T::Regular;
            packer.entry(name, &meta, &xattrs, None, Some((m.size, data))).map_err(io)
        }
        T::Symlink | T::Link => {
            let target = m.link.clone().unwrap_or_default();
            if target.is_empty() {
                return Err(PackError::Invalid(format!("{name}: a link without a target")));
            }
            let target = match kind {
                // A hard link names another entry of the archive: the same normal form.
                T::Link => normalize(&target).map_err(|e| PackError::Invalid(format!("{name}: {e}")))?.into_bytes(),
                _ => target,
            };
            let target = PathBuf::from(std::ffi::OsString::from_vec(target));
            packer.entry(name, &meta, &xattrs, Some(&target), None).map_err(io)
        }
        T::Char | T::Block | T::Fifo => packer.entry(name, &meta, &xattrs, None, None).map_err(io),
        other => {
            Err(PackError::Invalid(format!("{name}: tar entry type {:?} is not supported", other.as_byte() as char)))
        }
    }
}
