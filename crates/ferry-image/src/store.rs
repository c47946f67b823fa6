//! The content-addressed object store (`data_dir/objects/sha256/<digest>`) and image
//! import: artifacts are written under a temporary name while hashed, then renamed to
//! their digest, so a reader never sees a partial file and an artifact never changes.

use crate::pack::{self, PackError, PackStats, Packer};
use crate::seal::{ImageKey, SealWriter};
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
    #[error(transparent)]
    Pack(#[from] PackError),
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

    /// Packs a root file system (a directory, or a tar archive: plain, zstd or gzip) as
    /// an image's root archive — tar with extended attributes, zstd-compressed at
    /// `level`, sealed with `key` when one is given — and stores it. `progress` gets the
    /// bytes of archive packed so far (before compression).
    pub fn put_root(
        &self,
        src: &Path,
        key: Option<&ImageKey>,
        level: i32,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Stored, PackStats), ImportError> {
        let out = self.create()?;
        let sink = match key {
            Some(k) => Sink::Sealed(SealWriter::new(out, k).map_err(io_err(src))?),
            None => Sink::Plain(out),
        };
        let mut zst = zstd::Encoder::new(sink, level).map_err(io_err(src))?;
        // Several threads when the machine has them (the output does not depend on it).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        if threads > 1 {
            zst.multithread(threads).map_err(io_err(src))?;
        }
        let mut packer = Packer::new(Counting { inner: zst, count: 0, progress });
        if src.is_dir() {
            pack::pack_dir(src, &mut packer)?;
        } else if src.is_file() {
            pack::pack_tar(src, &mut packer)?;
        } else {
            return Err(ImportError::NotARootfs(src.display().to_string()));
        }
        let (counting, stats) = packer.finish().map_err(io_err(src))?;
        let file = counting.inner.finish().and_then(Sink::finish).map_err(io_err(src))?;
        Ok((self.commit(file)?, stats))
    }
}

/// Where the compressed archive goes: the object file, through the sealing when sealed.
enum Sink {
    Plain(HashingFile),
    Sealed(SealWriter<HashingFile>),
}

impl Sink {
    /// Ends the stream (the sealed image's last chunk) and returns the object file.
    fn finish(self) -> io::Result<HashingFile> {
        match self {
            Sink::Plain(f) => Ok(f),
            Sink::Sealed(w) => w.finish(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(f) => f.write(buf),
            Sink::Sealed(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.flush(),
            Sink::Sealed(w) => w.flush(),
        }
    }
}

/// Counts the bytes written through it and reports them.
struct Counting<'a, W: Write> {
    inner: W,
    count: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        (self.progress)(self.count);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
