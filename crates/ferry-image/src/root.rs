//! Reading a stored root archive: the sealed stream opened (every chunk authenticated
//! first), zstd decompressed, and — on machines with more than one core — all of that in
//! a thread of its own, so decompression and unpacking overlap as `tar` and `zstd` do in
//! a shell pipeline.

use crate::seal::{ImageKey, SealReader};
use std::io::{self, Read};
use std::sync::mpsc;

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
