//! Reading a stored root archive: the sealed stream opened (every chunk authenticated
//! first), zstd decompressed, and — on machines with more than one core — all of that in
//! a thread of its own, so decompression and unpacking overlap as `tar` and `zstd` do in
//! a shell pipeline.

use crate::seal::{key_opens, ImageKey, SealReader};
use crate::unpack::{unpack, UnpackError, UnpackOptions, UnpackReport};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    /// The key does not open the archive (header and first chunk): nothing was unpacked.
    #[error("the key does not open the image root ({0})")]
    Key(io::Error),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

/// Unpacks the root archive in the file `archive` (already checked against its digest)
/// into `root`: for a sealed one, first checks that `key` opens it, then decrypts,
/// decompresses and unpacks in one pass (decompression in a thread of its own on
/// several cores), giving the file's space back as it goes (see [`PunchHoles`]). The
/// node's agent and `ferry bench unpack` both run this.
pub fn unpack_file(
    archive: &Path,
    root: &Path,
    key: Option<&ImageKey>,
    opts: &mut UnpackOptions<'_>,
) -> Result<UnpackReport, RootError> {
    let open_err = |source| RootError::Open { path: archive.display().to_string(), source };
    if let Some(key) = key {
        let file = std::fs::File::open(archive).map_err(open_err)?;
        key_opens(io::BufReader::new(file), key).map_err(RootError::Key)?;
    }
    // Read-write: punching holes needs a descriptor open for writing.
    let file = std::fs::OpenOptions::new().read(true).write(true).open(archive).map_err(open_err)?;
    let reader = io::BufReader::with_capacity(1 << 20, PunchHoles::new(file));
    let tar = decoder(reader, key).map_err(|e| RootError::Unpack(UnpackError::Invalid(e.to_string())))?;
    Ok(unpack(pipelined(tar), root, opts)?)
}

/// Reads a file and gives back the space of what it has read (tmpfs takes
/// `FALLOC_FL_PUNCH_HOLE`), so a downloaded archive shrinks while it is unpacked and
/// the unpacking needs no memory beyond the unpacked root.
pub struct PunchHoles {
    file: std::fs::File,
    pos: u64,
    punched: u64,
    works: bool,
}

/// Space given back in steps of this many bytes.
pub const PUNCH: u64 = 64 << 20;

impl PunchHoles {
    /// `file` must be open for writing too.
    pub fn new(file: std::fs::File) -> PunchHoles {
        PunchHoles { file, pos: 0, punched: 0, works: true }
    }
}

impl Read for PunchHoles {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if self.works && self.pos - self.punched >= PUNCH {
            use nix::fcntl::FallocateFlags as F;
            let len = self.pos - self.punched;
            let flags = F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE;
            match nix::fcntl::fallocate(self.file.as_raw_fd(), flags, self.punched as i64, len as i64) {
                Ok(()) => self.punched = self.pos,
                // The file keeps its space until it is removed (ramfs, say).
                Err(_) => self.works = false,
            }
        }
        Ok(n)
    }
}

/// The tar stream of a root archive read from `archive`: opened with `key` when the
/// image is sealed, then decompressed.
pub fn decoder<R: Read + Send + 'static>(archive: R, key: Option<&ImageKey>) -> io::Result<Box<dyn Read + Send>> {
    Ok(match key {
        Some(key) => Box::new(zstd::Decoder::new(SealReader::new(archive, key)?)?),
        None => Box::new(zstd::Decoder::new(archive)?),
    })
}

/// Bytes handed from the reading thread to the unpacking one per message.
const PIECE: usize = 1 << 20;
/// Messages in flight: bounds the memory the pipeline holds (4 MiB).
const DEPTH: usize = 4;

/// A reader whose input is read in another thread.
pub struct Pipelined {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Reads `input` in a thread of its own when the machine has more than one core;
/// otherwise returns it as it is.
pub fn pipelined(input: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return input;
    }
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    std::thread::spawn(move || {
        let mut input = input;
        loop {
            let mut piece = vec![0u8; PIECE];
            let mut got = 0;
            let result = loop {
                match input.read(&mut piece[got..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        got += n;
                        if got == PIECE {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            piece.truncate(got);
            let end = got == 0;
            let message = match result {
                Ok(()) => Ok(piece),
                Err(e) => Err(e),
            };
            let failed = message.is_err();
            // The reader went away (the unpack failed): stop reading.
            if tx.send(message).is_err() || failed || end {
                return;
            }
        }
    });
    Box::new(Pipelined { rx, piece: Vec::new(), pos: 0, done: false })
}

impl Read for Pipelined {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(piece)) => {
                    self.done = piece.is_empty();
                    self.piece = piece;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the archive reader stopped")),
            }
        }
        let n = out.len().min(self.piece.len() - self.pos);
        out[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punched_holes_give_space_back_and_reads_see_the_data() {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("image.part");
        let mut f = std::fs::File::create(&path).unwrap();
        let data: Vec<u8> = (0..(3 * PUNCH as usize / 2)).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        drop(f);
        let mut r = PunchHoles::new(std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap());
        let mut first = vec![0u8; PUNCH as usize + 10];
        r.read_exact(&mut first).unwrap();
        assert_eq!(&first[..], &data[..first.len()]);
        let held = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(held < data.len() as u64 - PUNCH + (1 << 20), "{held} bytes still held");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(&rest[..], &data[first.len()..]);
    }

    #[test]
    fn a_pipelined_reader_reads_everything_and_passes_errors_on() {
        let data: Vec<u8> = (0..(3 * PIECE + 17)).map(|i| (i % 253) as u8).collect();
        let mut out = Vec::new();
        pipelined(Box::new(io::Cursor::new(data.clone()))).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);

        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk 3 does not authenticate"));
                }
                let n = out.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let err = pipelined(Box::new(Failing(PIECE + 5))).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("chunk 3"), "{err}");
    }
}
