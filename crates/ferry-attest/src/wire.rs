//! Reading the TPM's marshalled (big-endian, size-prefixed) structures.

use crate::AttestError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if self.buf.len() < n {
            return Err(AttestError::malformed(self.what, format!("truncated (wanted {n} more bytes)")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, AttestError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, AttestError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, AttestError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, AttestError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes.
    pub fn sized(&mut self) -> Result<&'a [u8], AttestError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    pub fn finish(self) -> Result<(), AttestError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(AttestError::malformed(self.what, format!("{} trailing bytes", self.buf.len())))
        }
    }
}

/// Appends a `TPM2B_*`.
pub(crate) fn put_sized(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}
