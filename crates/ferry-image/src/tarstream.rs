//! Reading a tar stream member by member, with the `tar` crate's header types.
//!
//! The `tar` crate's own reader splits a PAX extended header on newlines before it
//! honours each record's length (tar-rs issue #452, open), so a binary attribute value
//! that holds a 0x0A byte — a file capability, the ACL entry of uid 10 — fails the whole
//! entry, and the tail of such a value would be read as a record of its own (a forged
//! `path=` or `linkpath=`). This reader walks the 512-byte blocks itself, takes every
//! field from the crate's `Header`, `GnuHeader` and `GnuExtSparseHeader`, and parses PAX
//! records by their length, as POSIX defines them. It understands ustar, GNU long names
//! and links (`L`, `K`), PAX local headers (`x`; global ones, `g`, are skipped) and GNU
//! sparse members (`S`, with their extension blocks).

use std::io::{self, Read};

const BLOCK: usize = 512;
/// Largest PAX header or GNU long name accepted: attributes of one file are far below.
const MAX_META: u64 = 16 << 20;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A sparse member's layout: its full size and where its stored data goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    pub real_size: u64,
    /// (offset in the file, length), in the order the data is stored.
    pub segments: Vec<(u64, u64)>,
}

/// One member (not a meta entry) of the stream.
#[derive(Debug, Clone)]
pub struct Member {
    pub header: tar::Header,
    /// The path (PAX `path`, else a GNU long name, else the header's).
    pub path: Vec<u8>,
    /// The link target (PAX `linkpath`, else a GNU long link, else the header's).
    pub link: Option<Vec<u8>>,
    /// The PAX records that applied to it, in order.
    pub pax: Vec<(String, Vec<u8>)>,
    /// Bytes of data stored in the stream.
    pub size: u64,
    pub sparse: Option<Sparse>,
}

impl Member {
    pub fn kind(&self) -> tar::EntryType {
        self.header.entry_type()
    }

    /// The file's size once unpacked (a sparse member's holes included).
    pub fn file_size(&self) -> u64 {
        self.sparse.as_ref().map_or(self.size, |s| s.real_size)
    }
}

/// Parses the records of a PAX extended header: `<length> <key>=<value>\n`, where the
/// decimal length counts the whole record.
pub fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or_else(|| invalid("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("PAX record with a malformed length"))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(invalid("PAX record whose length does not match its content"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(|| invalid("PAX record without '='"))?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| invalid("PAX key that is not UTF-8"))?;
        out.push((key.to_owned(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// A tar stream read member by member.
pub struct Reader<R: Read> {
    inner: R,
    /// Data bytes of the current member not read yet, then its padding.
    left: u64,
    pad: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Reader<R> {
        Reader { inner, left: 0, pad: 0, done: false }
    }

    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(invalid("the archive ends inside a header block")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut sink = [0u8; 8192];
        while n > 0 {
            let want = n.min(sink.len() as u64) as usize;
            let got = self.inner.read(&mut sink[..want])?;
            if got == 0 {
                return Err(invalid("the archive ends inside a member"));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// The rest of a meta entry's data (PAX header, long name), bounded.
    fn meta_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(invalid(format!("a tar meta entry of {size} bytes (more than {MAX_META})")));
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data).map_err(|_| invalid("the archive ends inside a meta entry"))?;
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next member, its meta entries applied; `None` at the end of the archive.
    pub fn next_member(&mut self) -> io::Result<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        let (left, pad) = (self.left, self.pad);
        self.left = 0;
        self.pad = 0;
        self.skip(left + pad)?;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        loop {
            let Some(block) = self.block()? else {
                self.done = true;
                return if pax.is_empty() && long_name.is_none() {
                    Ok(None)
                } else {
                    Err(invalid("meta entries without a member"))
                };
            };
            if block.iter().all(|b| *b == 0) {
                // The end: two zero blocks (one is enough for us).
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            check_sum(&block, &header)?;
            let size = header.entry_size().map_err(|e| invalid(format!("a header's size: {e}")))?;
            match header.entry_type() {
                tar::EntryType::XHeader => pax.extend(parse_pax(&self.meta_data(size)?)?),
                tar::EntryType::XGlobalHeader => {
                    self.meta_data(size)?;
                }
                tar::EntryType::GNULongName => long_name = Some(trim_nul(self.meta_data(size)?)),
                tar::EntryType::GNULongLink => long_link = Some(trim_nul(self.meta_data(size)?)),
                _ => return self.member(header, size, pax, long_name, long_link).map(Some),
            }
        }
    }

    fn member(
        &mut self,
        header: tar::Header,
        header_size: u64,
        pax: Vec<(String, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Member> {
        let pax_value = |key: &str| pax.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let path = pax_value("path").or(long_name).unwrap_or_else(|| header.path_bytes().into_owned());
        let link = pax_value("linkpath").or(long_link).or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let size = match pax_value("size") {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid("PAX size that is not a number"))?,
            None => header_size,
        };
        let sparse = match header.entry_type() {
            tar::EntryType::GNUSparse => Some(self.sparse_map(&header)?),
            _ => None,
        };
        // Links, directories and devices carry no data whatever their size field says.
        let size = match header.entry_type() {
            tar::EntryType::Link | tar::EntryType::Symlink | tar::EntryType::Directory => 0,
            _ => size,
        };
        if let Some(s) = &sparse {
            let stored: u64 = s.segments.iter().map(|(_, len)| len).sum();
            if stored != size
                || s.segments.iter().any(|(off, len)| off.checked_add(*len).is_none_or(|e| e > s.real_size))
            {
                return Err(invalid("a sparse member's map does not match its data"));
            }
        }
        self.left = size;
        self.pad = padding(size);
        Ok(Member { header, path, link, pax, size, sparse })
    }

    /// A GNU sparse member's map: four entries in its header, then extension blocks.
    fn sparse_map(&mut self, header: &tar::Header) -> io::Result<Sparse> {
        let gnu = header.as_gnu().ok_or_else(|| invalid("a sparse member without a GNU header"))?;
        let real_size = gnu.real_size().map_err(|e| invalid(format!("a sparse member's size: {e}")))?;
        let mut segments = Vec::new();
        let mut add = |e: &tar::GnuSparseHeader| -> io::Result<()> {
            if !e.is_empty() {
                let bad = |e: io::Error| invalid(format!("a sparse map entry: {e}"));
                segments.push((e.offset().map_err(bad)?, e.length().map_err(bad)?));
            }
            Ok(())
        };
        for e in &gnu.sparse {
            add(e)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            let block = self.block()?.ok_or_else(|| invalid("the archive ends inside a sparse map"))?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for e in ext.sparse() {
                add(e)?;
            }
            extended = ext.is_extended();
        }
        Ok(Sparse { real_size, segments })
    }

    /// Reads the current member's data.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { reader: self }
    }
}

/// The data of the member last returned by [`Reader::next_member`].
pub struct Data<'a, R: Read> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.left == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(r.left.min(usize::MAX as u64) as usize);
        let n = r.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(invalid("the archive ends inside a member's data"));
        }
        r.left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// The header checksum: the sum of its bytes with the checksum field as spaces.
fn check_sum(block: &[u8; BLOCK], header: &tar::Header) -> io::Result<()> {
    let sum: u32 = block[..148].iter().chain(&[b' '; 8]).chain(&block[156..]).map(|b| *b as u32).sum();
    match header.cksum() {
        Ok(c) if c == sum => Ok(()),
        _ => Err(invalid("a tar header's checksum does not match: not a tar archive, or a damaged one")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_read_by_length_even_with_newlines_in_values() {
        let cap = [1u8, 0, 0, 2, 2, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut data = Vec::new();
        let key = "SCHILY.xattr.security.capability";
        let rest = 3 + key.len() + cap.len();
        data.extend_from_slice(format!("{} {key}=", rest + 2).as_bytes());
        data.extend_from_slice(&cap);
        data.push(b'\n');
        data.extend_from_slice(b"16 linkpath=a\nb\n");
        let recs = parse_pax(&data).unwrap();
        assert_eq!(recs, [(key.to_owned(), cap.to_vec()), ("linkpath".to_owned(), b"a\nb".to_vec())]);
        assert!(parse_pax(b"15 linkpath=a\nb\n").is_err(), "a length that does not match");
        assert!(parse_pax(b"x linkpath=a\n").is_err());
        assert!(parse_pax(b"99 k=v\n").is_err());
    }

    #[test]
    fn members_meta_entries_and_sparse_maps() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.nl", &b"a\nb"[..])]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{}/f", "x".repeat(150)), &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "l", "/target").unwrap();
        let tar = b.into_inner().unwrap();
        let mut r = Reader::new(&tar[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.path, format!("{}/f", "x".repeat(150)).into_bytes(), "a GNU long name");
        assert_eq!(m.pax, [("SCHILY.xattr.user.nl".to_owned(), b"a\nb".to_vec())]);
        let mut data = Vec::new();
        r.data().read_to_end(&mut data).unwrap();
        assert_eq!(data, b"abc");
        let l = r.next_member().unwrap().unwrap();
        assert_eq!((l.kind(), l.link.as_deref()), (tar::EntryType::Symlink, Some(&b"/target"[..])));
        assert!(r.next_member().unwrap().is_none());

        // A corrupt header is refused.
        let mut bad = tar.clone();
        bad[10] ^= 1;
        assert!(Reader::new(&bad[..]).next_member().is_err());
    }
}
