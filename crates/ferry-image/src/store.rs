//! The content-addressed object store (`data_dir/objects/sha256/<digest>`) and image
//! import: artifacts are written under a temporary name while hashed, then renamed to
//! their digest, so a reader never sees a partial file and an artifact never changes.

use crate::cpio::{CpioWriter, Meta};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0} is neither a directory nor a tar archive")]
    NotARootfs(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io { path: path.display().to_string(), source }
}

/// A stored object: SHA-256 (hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

pub struct ObjectStore {
    root: PathBuf,
}

/// A file being written while hashed.
struct HashingFile {
    file: BufWriter<File>,
    hash: Sha256,
    size: u64,
    tmp: PathBuf,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectStore {
    pub fn new(data_dir: &Path) -> Self {
        ObjectStore { root: data_dir.join("objects").join("sha256") }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256)
    }

    fn create(&self) -> Result<HashingFile, ImportError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let tmp = self.root.join(format!(".tmp-{}-{}", std::process::id(), rand_suffix()));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(HashingFile { file: BufWriter::with_capacity(1 << 20, file), hash: Sha256::new(), size: 0, tmp })
    }

    fn commit(&self, mut f: HashingFile) -> Result<Stored, ImportError> {
        f.flush().map_err(io_err(&f.tmp))?;
        f.file.get_ref().sync_all().map_err(io_err(&f.tmp))?;
        let sha256 = format!("{:x}", f.hash.finalize());
        let dest = self.path(&sha256);
        std::fs::rename(&f.tmp, &dest).map_err(io_err(&dest))?;
        Ok(Stored { sha256, size: f.size })
    }

    /// Copies a file into the store; `progress` gets the bytes copied so far.
    pub fn put_file(&self, src: &Path, progress: &mut dyn FnMut(u64)) -> Result<Stored, ImportError> {
        let mut input = File::open(src).map_err(io_err(src))?;
        let mut out = self.create()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(io_err(src))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io_err(&out.tmp))?;
            progress(out.size);
        }
        self.commit(out)
    }

    /// Packs a root file system (a directory or a tar archive) as a cpio archive under
    /// `rootfs/`, stored twice: zstd- and gzip-compressed. Returns (zstd, gzip).
    pub fn put_rootfs(&self, src: &Path, progress: &mut dyn FnMut(u64)) -> Result<(Stored, Stored), ImportError> {
        let zst = zstd::Encoder::new(self.create()?, 9).map_err(io_err(src))?;
        let gz = flate2::write::GzEncoder::new(self.create()?, flate2::Compression::default());
        let mut cpio = CpioWriter::new(Tee { a: zst, b: gz, written: 0, progress });
        cpio.dir("rootfs", 0o755).map_err(io_err(src))?;
        if src.is_dir() {
            // Owners, permissions, links and device nodes as they are on disk.
            cpio.append_tree(src, "rootfs").map_err(io_err(src))?;
        } else if src.is_file() {
            pack_tar(src, &mut cpio)?;
        } else {
            return Err(ImportError::NotARootfs(src.display().to_string()));
        }
        let tee = cpio.finish().map_err(io_err(src))?;
        let zst = tee.a.finish().map_err(io_err(src))?;
        let gz = tee.b.finish().map_err(io_err(src))?;
        Ok((self.commit(zst)?, self.commit(gz)?))
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Writes the same bytes to two compressors, reporting progress.
struct Tee<'a, A: Write, B: Write> {
    a: A,
    b: B,
    written: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.a.write_all(buf)?;
        self.b.write_all(buf)?;
        self.written += buf.len() as u64;
        (self.progress)(self.written);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.a.flush()?;
        self.b.flush()
    }
}

fn pack_tar<W: Write>(src: &Path, cpio: &mut CpioWriter<W>) -> Result<(), ImportError> {
    let file = File::open(src).map_err(io_err(src))?;
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(|_| ImportError::NotARootfs(src.display().to_string()))? {
        let mut entry = entry.map_err(io_err(src))?;
        let path = entry.path().map_err(io_err(src))?.to_string_lossy().into_owned();
        let name = format!("rootfs/{}", path.trim_start_matches("./").trim_end_matches('/'));
        let h = entry.header();
        let meta = Meta {
            perm: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0),
            gid: h.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0),
        };
        let size = h.size().unwrap_or(0);
        let res = match h.entry_type() {
            tar::EntryType::Directory => cpio.dir_meta(&name, meta),
            tar::EntryType::Regular | tar::EntryType::Continuous => cpio.file_from_meta(&name, meta, size, &mut entry),
            tar::EntryType::Symlink => {
                let target =
                    entry.link_name().ok().flatten().map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                cpio.symlink_meta(&name, &target, meta)
            }
            _ => continue,
        };
        res.map_err(io_err(src))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_and_rootfs_from_dir_and_tar() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(dir.path());
        let src = dir.path().join("kernel");
        std::fs::write(&src, b"not really a kernel").unwrap();
        let a = store.put_file(&src, &mut |_| {}).unwrap();
        assert_eq!(a.size, 19);
        assert_eq!(std::fs::read(store.path(&a.sha256)).unwrap(), b"not really a kernel");
        assert_eq!(store.put_file(&src, &mut |_| {}).unwrap(), a, "same content, same object");

        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/os-release"), b"ID=ferrytest\n").unwrap();
        std::os::unix::fs::symlink("os-release", root.join("etc/link")).unwrap();
        let (zst, gz) = store.put_rootfs(&root, &mut |_| {}).unwrap();
        let raw = zstd::decode_all(File::open(store.path(&zst.sha256)).unwrap()).unwrap();
        let mut from_gz = Vec::new();
        flate2::read::GzDecoder::new(File::open(store.path(&gz.sha256)).unwrap()).read_to_end(&mut from_gz).unwrap();
        assert_eq!(raw, from_gz, "both compressions hold the same archive");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains("rootfs/etc/os-release\0")
                && text.contains("ID=ferrytest")
                && text.contains("rootfs/etc/link\0")
        );

        let tar_path = dir.path().join("root.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        b.append_dir_all(".", &root).unwrap();
        b.finish().unwrap();
        drop(b);
        let (zst2, _) = store.put_rootfs(&tar_path, &mut |_| {}).unwrap();
        let raw2 = String::from_utf8_lossy(&zstd::decode_all(File::open(store.path(&zst2.sha256)).unwrap()).unwrap())
            .into_owned();
        assert!(raw2.contains("rootfs/etc/os-release\0") && raw2.contains("ID=ferrytest"));
        assert!(store.put_rootfs(&dir.path().join("missing"), &mut |_| {}).is_err());
    }

    /// A node boots its image with the owners it was built with (a user's home is not
    /// root's), from a directory and from a tar archive alike.
    #[test]
    fn rootfs_keeps_owners_and_modes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(dir.path());
        let unpack = |s: &Stored| {
            let raw = zstd::decode_all(File::open(store.path(&s.sha256)).unwrap()).unwrap();
            crate::cpio::read_archive(&raw).unwrap()
        };

        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("home/alice")).unwrap();
        std::fs::write(root.join("home/alice/.profile"), b"x").unwrap();
        std::fs::set_permissions(root.join("home/alice/.profile"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let on_disk = std::fs::metadata(root.join("home/alice/.profile")).unwrap();
        let (zst, _) = store.put_rootfs(&root, &mut |_| {}).unwrap();
        let e = unpack(&zst).into_iter().find(|e| e.name == "rootfs/home/alice/.profile").unwrap();
        assert_eq!((e.uid, e.gid, e.perm()), (on_disk.uid(), on_disk.gid(), 0o600));

        let tar_path = dir.path().join("owned.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_path("home/alice/notes").unwrap();
        h.set_size(2);
        h.set_mode(0o640);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_cksum();
        b.append(&h, &b"hi"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let (zst, _) = store.put_rootfs(&tar_path, &mut |_| {}).unwrap();
        let e = unpack(&zst).into_iter().find(|e| e.name == "rootfs/home/alice/notes").unwrap();
        assert_eq!((e.uid, e.gid, e.perm(), e.data.as_slice()), (1000, 1001, 0o640, &b"hi"[..]));
    }
}
