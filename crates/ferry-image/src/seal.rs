//! Sealed images: the compressed root archive encrypted with a per-image key, in
//! chunks, so that it streams and every chunk is authenticated before it is used.
//!
//! The construction is the STREAM online AEAD of the `aead` crate (`EncryptorBE32`) over
//! XChaCha20-Poly1305 — no cryptography of ours: a 32-byte header (magic, version,
//! chunk size, the 19-byte random nonce prefix), then 1 MiB plaintext chunks, each with
//! its 16-byte tag. A chunk's nonce is the prefix, its 32-bit counter and a last-chunk
//! flag, so chunks cannot be reordered, dropped or repeated, and the end of the stream
//! cannot be cut off unnoticed. Every chunk is authenticated with the header as its
//! associated data. A chunk of exactly the chunk size is never the last: the last one is
//! shorter, possibly empty (its tag alone).

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{generic_array::GenericArray, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// The sealed image's magic bytes.
pub const MAGIC: &[u8; 8] = b"FERRYIMG";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Plaintext bytes per chunk, as a power of two (1 MiB).
pub const CHUNK_LOG2: u8 = 20;
pub const CHUNK: usize = 1 << CHUNK_LOG2;
/// Header length: magic, version, chunk size, 3 reserved bytes, the nonce prefix.
pub const HEADER_LEN: usize = 32;
const NONCE_PREFIX_LEN: usize = 19;
const TAG_LEN: usize = 16;
/// Key length in bytes.
pub const KEY_LEN: usize = 32;

/// A per-image key. Wiped from memory on drop; never printed.
pub struct ImageKey(Zeroizing<[u8; KEY_LEN]>);

impl ImageKey {
    /// A fresh random key (the operating system's generator).
    pub fn generate() -> ImageKey {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        ImageKey(key)
    }

    /// A key from its bytes (as delivered through the tunnel).
    pub fn from_slice(bytes: &[u8]) -> Result<ImageKey, SealError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(ImageKey(Zeroizing::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(GenericArray::from_slice(self.0.as_ref()))
    }
}

impl std::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("an image key is {KEY_LEN} bytes, not {0}")]
    KeyLength(usize),
    #[error("not a sealed ferry image (no FERRYIMG header)")]
    NotSealed,
    #[error(
        "sealed image format version {0} is not supported by this ferry (it reads version {VERSION}): update the agent"
    )]
    Version(u8),
    #[error("sealed image chunk size 2^{0} is not supported")]
    ChunkSize(u8),
    #[error("chunk {0} of the sealed image does not authenticate: the image was altered, or the key is not its key")]
    Forged(u64),
    #[error("the end of the sealed image does not authenticate: it was truncated or altered")]
    Truncated,
    #[error("the sealed image has data after its last chunk")]
    TrailingData,
    #[error("the sealed image is too large for one key (2^32 chunks)")]
    TooLarge,
}

impl From<SealError> for io::Error {
    fn from(e: SealError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encrypts what is written to it into `inner`; [`SealWriter::finish`] writes the last
/// chunk and returns `inner`.
pub struct SealWriter<W: Write> {
    inner: W,
    encryptor: Option<EncryptorBE32<XChaCha20Poly1305>>,
    header: [u8; HEADER_LEN],
    buf: Vec<u8>,
}

impl<W: Write> SealWriter<W> {
    /// Writes the header with a fresh random nonce prefix.
    pub fn new(mut inner: W, key: &ImageKey) -> io::Result<SealWriter<W>> {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9] = CHUNK_LOG2;
        header[HEADER_LEN - NONCE_PREFIX_LEN..].copy_from_slice(&prefix);
        inner.write_all(&header)?;
        let encryptor = EncryptorBE32::from_aead(key.cipher(), GenericArray::from_slice(&prefix));
        Ok(SealWriter { inner, encryptor: Some(encryptor), header, buf: Vec::with_capacity(CHUNK + TAG_LEN) })
    }

    fn seal_full_chunk(&mut self) -> io::Result<()> {
        let enc = self.encryptor.as_mut().ok_or_else(|| io::Error::other("the sealed image is finished"))?;
        enc.encrypt_next_in_place(&self.header, &mut self.buf).map_err(|_| io::Error::from(SealError::TooLarge))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seals the last chunk (possibly empty) and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.buf.len() == CHUNK {
            self.seal_full_chunk()?;
        }
        let enc = self.encryptor.take().ok_or_else(|| io::Error::other("the sealed image is finished"))?;
        enc.encrypt_last_in_place(&self.header, &mut self.buf).map_err(|_| io::Error::from(SealError::TooLarge))?;
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full chunk is sealed only once more data comes: the last one must be short.
        if self.buf.len() == CHUNK && !data.is_empty() {
            self.seal_full_chunk()?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts a sealed image as it is read: every chunk is authenticated before any of
/// its bytes are returned, and the end of the stream must be its last chunk.
pub struct SealReader<R: Read> {
    inner: R,
    decryptor: Option<DecryptorBE32<XChaCha20Poly1305>>,
    header: [u8; HEADER_LEN],
    chunk: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

/// Reads the sealed header of `inner` and checks it is one this code reads.
fn read_header(inner: &mut impl Read) -> io::Result<[u8; HEADER_LEN]> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(inner, &mut header)?;
    if got < HEADER_LEN || &header[..8] != MAGIC {
        return Err(SealError::NotSealed.into());
    }
    if header[8] != VERSION {
        return Err(SealError::Version(header[8]).into());
    }
    if header[9] != CHUNK_LOG2 {
        return Err(SealError::ChunkSize(header[9]).into());
    }
    Ok(header)
}

/// Whether `bytes` start like a sealed image.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl<R: Read> SealReader<R> {
    pub fn new(mut inner: R, key: &ImageKey) -> io::Result<SealReader<R>> {
        let header = read_header(&mut inner)?;
        let prefix = &header[HEADER_LEN - NONCE_PREFIX_LEN..];
        let decryptor = DecryptorBE32::from_aead(key.cipher(), GenericArray::from_slice(prefix));
        Ok(SealReader {
            inner,
            decryptor: Some(decryptor),
            header,
            chunk: Vec::with_capacity(CHUNK + TAG_LEN),
            pos: 0,
            index: 0,
            done: false,
        })
    }

    /// Reads and opens the next chunk into `self.chunk`.
    fn next_chunk(&mut self) -> io::Result<()> {
        self.chunk.resize(CHUNK + TAG_LEN, 0);
        let got = read_full(&mut self.inner, &mut self.chunk)?;
        self.chunk.truncate(got);
        self.pos = 0;
        let index = self.index;
        self.index += 1;
        if got == CHUNK + TAG_LEN {
            let dec = self.decryptor.as_mut().ok_or(SealError::TrailingData)?;
            return dec
                .decrypt_next_in_place(&self.header, &mut self.chunk)
                .map_err(|_| SealError::Forged(index).into());
        }
        if got < TAG_LEN {
            return Err(SealError::Truncated.into());
        }
        let dec = self.decryptor.take().ok_or(SealError::TrailingData)?;
        dec.decrypt_last_in_place(&self.header, &mut self.chunk).map_err(|_| {
            // A forged last chunk and a stream cut at a chunk boundary look alike.
            if index == 0 {
                SealError::Forged(0)
            } else {
                SealError::Truncated
            }
        })?;
        let mut probe = [0u8; 1];
        if read_full(&mut self.inner, &mut probe)? != 0 {
            return Err(SealError::TrailingData.into());
        }
        self.done = true;
        Ok(())
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks that `key` opens the sealed image read from `inner`: its header and first
/// chunk authenticate. A quick check that a stored key belongs to a stored image.
pub fn key_opens(inner: impl Read, key: &ImageKey) -> io::Result<()> {
    let mut r = SealReader::new(inner, key)?;
    r.next_chunk()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8], key: &ImageKey) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), key).unwrap();
        // Odd write sizes cross chunk boundaries.
        for part in data.chunks(77_777) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    fn open(sealed: &[u8], key: &ImageKey) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealReader::new(sealed, key)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn kind(e: io::Error) -> String {
        e.into_inner().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        let key = ImageKey::generate();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&data, &key);
            let chunks = len / CHUNK + 1;
            assert_eq!(sealed.len(), HEADER_LEN + len + chunks * TAG_LEN, "length {len}");
            assert_eq!(open(&sealed, &key).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn plaintext_never_shows_and_each_seal_differs() {
        let key = ImageKey::generate();
        let data = b"FERRY-MARKER-4711 ".repeat(1000);
        let (a, b) = (seal(&data, &key), seal(&data, &key));
        assert!(!a.windows(17).any(|w| w == b"FERRY-MARKER-4711"));
        assert_ne!(a, b, "a fresh nonce prefix every time");
    }

    #[test]
    fn tampering_truncation_and_wrong_keys_are_refused() {
        let key = ImageKey::generate();
        let data: Vec<u8> = (0..(2 * CHUNK + 100)).map(|i| i as u8).collect();
        let sealed = seal(&data, &key);

        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + CHUNK + TAG_LEN + 3] ^= 1;
        assert!(kind(open(&flipped, &key).unwrap_err()).contains("chunk 1"), "a flipped byte in chunk 1");
        let mut header = sealed.clone();
        header[20] ^= 1;
        assert!(kind(open(&header, &key).unwrap_err()).contains("chunk 0"), "the header is authenticated");
        // Cut at a chunk boundary: the last full chunk is not a last chunk.
        let cut = &sealed[..HEADER_LEN + 2 * (CHUNK + TAG_LEN)];
        assert!(kind(open(cut, &key).unwrap_err()).contains("truncated"));
        assert!(kind(open(&sealed[..sealed.len() - 1], &key).unwrap_err()).contains("truncated"));
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(kind(open(&longer, &key).unwrap_err()).contains("truncated or altered"));
        let other = ImageKey::generate();
        assert!(kind(open(&sealed, &other).unwrap_err()).contains("not its key"));
        assert!(key_opens(&sealed[..], &key).is_ok());
        assert!(key_opens(&sealed[..], &other).is_err());
        assert!(kind(open(b"(\xb5/\xfd plain zstd", &key).unwrap_err()).contains("not a sealed"));
        // Two chunks swapped: each authenticates only at its own position.
        let mut swapped = sealed.clone();
        let (c0, c1) = (HEADER_LEN, HEADER_LEN + CHUNK + TAG_LEN);
        let first: Vec<u8> = swapped[c0..c1].to_vec();
        let second: Vec<u8> = swapped[c1..c1 + CHUNK + TAG_LEN].to_vec();
        swapped[c0..c1].copy_from_slice(&second);
        swapped[c1..c1 + CHUNK + TAG_LEN].copy_from_slice(&first);
        assert!(open(&swapped, &key).is_err());
    }

    #[test]
    fn keys_never_print() {
        let key = ImageKey::from_slice(&[7u8; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "ImageKey(<redacted>)");
        assert!(ImageKey::from_slice(&[0u8; 31]).is_err());
    }
}
