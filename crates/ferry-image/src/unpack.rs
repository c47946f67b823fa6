//! Unpacks an image's tar stream into a root directory (a node's tmpfs) with every
//! extended attribute, owner, mode, time, hard link, device node and sparse hole.
//!
//! The `tar` crate parses the stream; the entries are applied here because its own
//! unpacking sets no extended attributes on directories, symbolic links or device
//! nodes, makes no device nodes, and stops at the first attribute a file system refuses.
//! Regular files go through the `tar` crate (it seeks over the holes of sparse entries),
//! then get their attributes — after the owner and mode, since a change of owner clears
//! `security.capability`. Directories get theirs at the end, deepest first, so that
//! their times, read-only modes and default ACLs do not affect what is created in them.
//!
//! Every path is resolved inside the root (`openat2` with `RESOLVE_IN_ROOT`), so no entry
//! — not `..`, not a symbolic link the image holds — can reach outside it.
//!
//! SELinux: [`UnpackOptions::after_first`] runs once the entries of `etc/selinux` are
//! unpacked (the packer puts them first) and before anything else; a node loads the
//! image's policy there. Labels (`security.selinux`) of what came before it are written
//! only after it ran: on a tmpfs, the kernel takes a label written before the policy
//! loaded for nothing and labels the file by its type transition instead.

use crate::pack::{self, XATTR_PREFIX};
use crate::tarstream::{self, Member};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the file system at {root} refuses extended attribute {name} of {path} ({errno}); \
         SELinux labels and file capabilities need a tmpfs root (root=tmpfs)"
    )]
    Refused { root: String, path: String, name: String, errno: Errno },
    #[error("{0}")]
    Hook(String),
}

/// What to do when the file system refuses an extended attribute (`EOPNOTSUPP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrPolicy {
    /// Fail — except for `user.*`, which tmpfs takes only from Linux 6.6 on: those are
    /// counted and reported. For a tmpfs root.
    Strict,
    /// Count and report every refused attribute. For a ramfs root, which has none.
    Lenient,
}

/// The hook run once the SELinux policy files are unpacked; its error stops the unpack.
pub type AfterFirst<'a> = &'a mut dyn FnMut(&Path) -> Result<(), String>;

pub struct UnpackOptions<'a> {
    pub xattrs: XattrPolicy,
    pub after_first: Option<AfterFirst<'a>>,
}

impl Default for UnpackOptions<'_> {
    fn default() -> Self {
        UnpackOptions { xattrs: XattrPolicy::Strict, after_first: None }
    }
}

/// What was unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    pub file_bytes: u64,
    /// Extended attributes written.
    pub xattrs: u64,
    /// Extended attributes the file system refused, by namespace (`user`, ...).
    pub dropped: BTreeMap<String, u64>,
}

/// A directory's attributes, applied after everything in it.
struct DirMeta {
    name: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Unpacker<'o, 'h> {
    root: PathBuf,
    root_fd: OwnedFd,
    opts: &'o mut UnpackOptions<'h>,
    report: UnpackReport,
    /// The parent directory of the previous entry (most entries share it).
    parent: Option<(String, OwnedFd)>,
    dirs: Vec<DirMeta>,
    /// Whether `after_first` has run; until then labels wait in `labels`.
    first_done: bool,
    labels: Vec<(String, Vec<u8>)>,
}

fn io_at(path: impl std::fmt::Display) -> impl FnOnce(io::Error) -> UnpackError {
    move |source| UnpackError::Io { path: path.to_string(), source }
}

fn errno_at(path: impl std::fmt::Display) -> impl FnOnce(Errno) -> UnpackError {
    move |e| UnpackError::Io { path: path.to_string(), source: io::Error::from(e) }
}

/// Unpacks the tar stream `archive` into the existing directory `root`.
pub fn unpack(archive: impl Read, root: &Path, opts: &mut UnpackOptions<'_>) -> Result<UnpackReport, UnpackError> {
    let root_fd = nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(errno_at(root.display()))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let mut u = Unpacker {
        root: root.to_owned(),
        root_fd,
        opts,
        report: UnpackReport::default(),
        parent: None,
        dirs: Vec::new(),
        first_done: false,
        labels: Vec::new(),
    };
    let mut reader = tarstream::Reader::new(archive);
    let bad = |e: io::Error| UnpackError::Invalid(format!("the image archive is malformed: {e}"));
    while let Some(member) = reader.next_member().map_err(bad)? {
        let name = pack::normalize(&member.path).map_err(UnpackError::Invalid)?;
        if !u.first_done && !pack::is_first(&name) {
            u.run_after_first()?;
        }
        u.entry(&member, reader.data(), name)?;
    }
    if !u.first_done {
        u.run_after_first()?;
    }
    u.finish_dirs()?;
    Ok(u.report)
}

/// `openat2` of `path` below the directory `dir`, resolved as if `dir` were the root:
/// neither `..` nor a symbolic link leads out of it.
fn open_in(dir: RawFd, path: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { "." } else { path };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(dir, path, how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `(parent, last component)` of a normalized, non-empty name.
fn split(name: &str) -> (&str, &str) {
    match name.rsplit_once('/') {
        Some((parent, last)) => (parent, last),
        None => ("", name),
    }
}

/// The path of `last` in the directory `dirfd`, for the calls that have no `*at` form
/// (`lsetxattr`, the `tar` crate's file creation): `/proc/self/fd/N/last`.
fn fd_path(dirfd: RawFd, last: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{dirfd}/{last}"))
}

impl Unpacker<'_, '_> {
    fn run_after_first(&mut self) -> Result<(), UnpackError> {
        self.first_done = true;
        if let Some(hook) = self.opts.after_first.as_mut() {
            hook(&self.root).map_err(UnpackError::Hook)?;
        }
        for (name, label) in std::mem::take(&mut self.labels) {
            let (parent, last) = split(&name);
            let dir = self.dir(parent)?;
            self.set_xattr_path(dir.as_raw_fd(), last, &name, "security.selinux", &label)?;
        }
        Ok(())
    }

    /// The directory `name` (relative to the root), created with its parents (0755,
    /// root's) when missing; their own entries set their attributes later.
    fn dir(&mut self, name: &str) -> Result<OwnedFd, UnpackError> {
        if let Some((cached, fd)) = &self.parent {
            if cached == name {
                return fd.try_clone().map_err(io_at(name));
            }
        }
        let root = self.root_fd.as_raw_fd();
        let fd = match open_in(root, name, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let mut at = open_in(root, "", OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(errno_at("/"))?;
                for part in name.split('/') {
                    match nix::sys::stat::mkdirat(Some(at.as_raw_fd()), part, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(errno_at(name)(e)),
                    }
                    at = open_in(at.as_raw_fd(), part, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(errno_at(name))?;
                }
                at
            }
            Err(e) => return Err(errno_at(name)(e)),
        };
        self.parent = Some((name.to_owned(), fd.try_clone().map_err(io_at(name))?));
        Ok(fd)
    }

    fn entry(&mut self, m: &Member, data: impl Read, name: String) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let kind = m.kind();
        let xattrs = xattrs_of(m);
        let h = &m.header;
        let invalid = |what: &str| UnpackError::Invalid(format!("{name}: invalid {what} in the image archive"));
        let mode = h.mode().map_err(|_| invalid("mode"))? & 0o7777;
        let uid = u32::try_from(h.uid().map_err(|_| invalid("uid"))?).map_err(|_| invalid("uid"))?;
        let gid = u32::try_from(h.gid().map_err(|_| invalid("gid"))?).map_err(|_| invalid("gid"))?;
        let mtime = h.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        self.report.entries += 1;
        if kind == T::Directory {
            if !name.is_empty() {
                let (parent, last) = split(&name);
                let dir = self.dir(parent)?;
                match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), last, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EEXIST) => self.replace_unless_dir(dir.as_raw_fd(), last, &name)?,
                    Err(e) => return Err(errno_at(&name)(e)),
                }
            }
            self.report.dirs += 1;
            self.dirs.push(DirMeta { name, mode, uid, gid, mtime, xattrs });
            return Ok(());
        }
        if name.is_empty() {
            return Err(UnpackError::Invalid(format!("the image archive has a {kind:?} entry for its root")));
        }
        let (parent, last) = split(&name);
        let dir = self.dir(parent)?;
        let dirfd = dir.as_raw_fd();
        let at = Some(dirfd);
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let file = self.write_file(dirfd, last, &name, m, data)?;
                // Owner, then mode (a change of owner clears set-id bits and file
                // capabilities), then attributes, then time.
                nix::unistd::fchown(file.as_raw_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(errno_at(&name))?;
                nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(errno_at(&name))?;
                for (attr, value) in xattrs {
                    if !self.defer_label(&name, &attr, &value) {
                        let result = xattr::FileExt::set_xattr(&file, &attr, &value);
                        self.xattr_result(result, &name, &attr)?;
                    }
                }
                let t = TimeSpec::new(mtime, 0);
                nix::sys::stat::futimens(file.as_raw_fd(), &t, &t).map_err(errno_at(&name))?;
                self.report.files += 1;
                self.report.file_bytes += m.file_size();
                return Ok(());
            }
            T::Symlink => {
                let target = m.link.as_deref().unwrap_or_default();
                let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(target);
                self.create(dirfd, last, &name, |d, n| nix::unistd::symlinkat(target, Some(d), n))?;
                self.report.symlinks += 1;
            }
            T::Link => {
                let target = pack::normalize(m.link.as_deref().unwrap_or_default()).map_err(UnpackError::Invalid)?;
                let (tparent, tlast) = split(&target);
                if target.is_empty() {
                    return Err(UnpackError::Invalid(format!("{name}: a hard link to the root")));
                }
                let tdir = self.dir(tparent)?;
                let flags = nix::fcntl::AtFlags::empty();
                self.create(dirfd, last, &name, |d, n| {
                    nix::unistd::linkat(Some(tdir.as_raw_fd()), tlast, Some(d), n, flags)
                })?;
                self.report.hardlinks += 1;
                // The same inode as its target: owner, mode and attributes are its.
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                let sflag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0) as u64;
                let minor = h.device_minor().ok().flatten().unwrap_or(0) as u64;
                let dev = nix::sys::stat::makedev(major, minor);
                self.create(dirfd, last, &name, |d, n| {
                    nix::sys::stat::mknodat(Some(d), n, sflag, Mode::from_bits_truncate(0o600), dev)
                })?;
                self.report.specials += 1;
            }
            other => {
                return Err(UnpackError::Invalid(format!(
                    "{name}: tar entry type {:?} is not one a ferry image holds",
                    other.as_byte() as char
                )))
            }
        }
        // Owner, then mode (a change of owner clears set-id bits), then attributes, then time.
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(at, last, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), nofollow)
            .map_err(errno_at(&name))?;
        if kind != T::Symlink {
            let follow = nix::sys::stat::FchmodatFlags::FollowSymlink;
            nix::sys::stat::fchmodat(at, last, Mode::from_bits_truncate(mode), follow).map_err(errno_at(&name))?;
        }
        for (attr, value) in xattrs {
            if !self.defer_label(&name, &attr, &value) {
                self.set_xattr_path(dirfd, last, &name, &attr, &value)?;
            }
        }
        let t = TimeSpec::new(mtime, 0);
        nix::sys::stat::utimensat(at, last, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .map_err(errno_at(&name))?;
        Ok(())
    }

    /// Runs `make` for `last` in `dirfd`, replacing what is there (an archive may list
    /// a name twice; the later entry wins, as with tar).
    fn create(
        &mut self,
        dirfd: RawFd,
        last: &str,
        name: &str,
        make: impl Fn(RawFd, &str) -> nix::Result<()>,
    ) -> Result<(), UnpackError> {
        match make(dirfd, last) {
            Err(Errno::EEXIST) => {
                remove(dirfd, last).map_err(errno_at(name))?;
                make(dirfd, last).map_err(errno_at(name))
            }
            other => other.map_err(errno_at(name)),
        }
    }

    fn replace_unless_dir(&mut self, dirfd: RawFd, last: &str, name: &str) -> Result<(), UnpackError> {
        let st = nix::sys::stat::fstatat(Some(dirfd), last, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno_at(name))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            return Ok(());
        }
        remove(dirfd, last).map_err(errno_at(name))?;
        nix::sys::stat::mkdirat(Some(dirfd), last, Mode::from_bits_truncate(0o700)).map_err(errno_at(name))
    }

    /// Creates the regular file `last` in `dirfd` (replacing one of that name) with the
    /// member's data: a sparse member's segments at their offsets, its holes left holes.
    fn write_file(
        &mut self,
        dirfd: RawFd,
        last: &str,
        name: &str,
        m: &Member,
        mut data: impl Read,
    ) -> Result<std::fs::File, UnpackError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = || nix::fcntl::openat(Some(dirfd), last, flags, Mode::from_bits_truncate(0o600));
        let fd = match open() {
            Err(Errno::EEXIST) => {
                remove(dirfd, last).map_err(errno_at(name))?;
                open()
            }
            other => other,
        }
        .map_err(errno_at(name))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let whole = [(0, m.size)];
        let segments = m.sparse.as_ref().map_or(&whole[..], |s| &s.segments[..]);
        let mut buf = vec![0u8; WRITE];
        for &(offset, len) in segments {
            let mut at = offset;
            let mut left = len;
            while left > 0 {
                let want = left.min(WRITE as u64) as usize;
                data.read_exact(&mut buf[..want]).map_err(io_at(name))?;
                write_skipping_zeros(&file, &buf[..want], at).map_err(io_at(name))?;
                at += want as u64;
                left -= want as u64;
            }
        }
        file.set_len(m.file_size()).map_err(io_at(name))?;
        // Anything the member carried beyond its map (there should be nothing).
        io::copy(&mut data, &mut io::sink()).map_err(io_at(name))?;
        std::io::Write::flush(&mut file).map_err(io_at(name))?;
        Ok(file)
    }

    /// Keeps a label until the SELinux policy is loaded; true if it was kept.
    fn defer_label(&mut self, name: &str, attr: &str, value: &[u8]) -> bool {
        if self.first_done || attr != "security.selinux" {
            return false;
        }
        self.labels.push((name.to_owned(), value.to_vec()));
        true
    }

    fn set_xattr_path(
        &mut self,
        dirfd: RawFd,
        last: &str,
        name: &str,
        attr: &str,
        value: &[u8],
    ) -> Result<(), UnpackError> {
        let result = xattr::set(fd_path(dirfd, last), attr, value);
        self.xattr_result(result, name, attr)
    }

    /// Counts a written attribute, or applies the policy to a refused one.
    fn xattr_result(&mut self, result: io::Result<()>, name: &str, attr: &str) -> Result<(), UnpackError> {
        match result {
            Ok(()) => {
                self.report.xattrs += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => {
                let namespace = attr.split('.').next().unwrap_or(attr);
                if namespace == "user" || self.opts.xattrs == XattrPolicy::Lenient {
                    *self.report.dropped.entry(namespace.to_owned()).or_default() += 1;
                    return Ok(());
                }
                Err(UnpackError::Refused {
                    root: self.root.display().to_string(),
                    path: format!("/{name}"),
                    name: attr.to_owned(),
                    errno: Errno::EOPNOTSUPP,
                })
            }
            Err(e) => Err(UnpackError::Io { path: format!("/{name} (extended attribute {attr})"), source: e }),
        }
    }

    /// Directories' owners, modes, attributes and times, deepest first.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        self.parent = None;
        for d in std::mem::take(&mut self.dirs).into_iter().rev() {
            let fd =
                open_in(self.root_fd.as_raw_fd(), &d.name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW)
                    .map_err(errno_at(format!("/{}", d.name)))?;
            let shown = format!("/{}", d.name);
            nix::unistd::fchown(fd.as_raw_fd(), Some(Uid::from_raw(d.uid)), Some(Gid::from_raw(d.gid)))
                .map_err(errno_at(&shown))?;
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(d.mode)).map_err(errno_at(&shown))?;
            let file = std::fs::File::from(fd);
            for (attr, value) in &d.xattrs {
                let result = xattr::FileExt::set_xattr(&file, attr, value);
                self.xattr_result(result, &d.name, attr)?;
            }
            let t = TimeSpec::new(d.mtime, 0);
            nix::sys::stat::futimens(file.as_raw_fd(), &t, &t).map_err(errno_at(&shown))?;
        }
        Ok(())
    }
}

/// Removes `last` in `dirfd` (an archive may list a name twice): a file, or an empty
/// directory.
fn remove(dirfd: RawFd, last: &str) -> nix::Result<()> {
    match nix::unistd::unlinkat(Some(dirfd), last, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Err(Errno::EISDIR) => nix::unistd::unlinkat(Some(dirfd), last, nix::unistd::UnlinkatFlags::RemoveDir),
        other => other,
    }
}

/// An entry's extended attributes from its PAX header, in the archive's order.
fn xattrs_of(m: &Member) -> Vec<(String, Vec<u8>)> {
    m.pax.iter().filter_map(|(k, v)| Some((k.strip_prefix(XATTR_PREFIX)?.to_owned(), v.clone()))).collect()
}

/// Bytes written per call; a block of zeros this size (or a whole sparse hole) is
/// skipped over rather than written, so that holes stay holes.
const WRITE: usize = 256 * 1024;
const HOLE: usize = 4096;

/// Writes `buf` at `offset`, leaving whole aligned blocks of zeros unwritten (holes).
fn write_skipping_zeros(file: &std::fs::File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut pos = 0;
    let mut run: Option<usize> = None;
    while pos < buf.len() {
        let into_block = ((offset + pos as u64) % HOLE as u64) as usize;
        let len = (HOLE - into_block).min(buf.len() - pos);
        let hole = len == HOLE && is_zero(&buf[pos..pos + len]);
        match (hole, run) {
            (true, Some(start)) => {
                file.write_all_at(&buf[start..pos], offset + start as u64)?;
                run = None;
            }
            (false, None) => run = Some(pos),
            _ => {}
        }
        pos += len;
    }
    if let Some(start) = run {
        file.write_all_at(&buf[start..], offset + start as u64)?;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    words.by_ref().all(|w| w.iter().fold(0u8, |acc, x| acc | x) == 0) && words.remainder().iter().all(|x| *x == 0)
}
