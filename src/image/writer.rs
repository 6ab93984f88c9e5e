//! Appends metadata records into a caller-provided buffer: no allocation, usable while the
//! program's threads are parked.

use super::format::{align8, RecordHeader};
use bytemuck::Pod;

/// The buffer is full: the caller must retry with a larger one.
#[derive(Debug, Clone, Copy)]
pub struct Full;

/// Writes records into a fixed byte buffer.
pub struct MetaWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> MetaWriter<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        MetaWriter { buf, len: 0 }
    }

    /// Continues after `len` bytes of records already in `buf` (a copy-on-write writer goes on
    /// with the records its parent captured).
    pub fn continue_at(buf: &'a mut [u8], len: usize) -> Self {
        let len = len.min(buf.len());
        MetaWriter { buf, len }
    }

    /// Appends whole records written by another writer.
    pub fn append(&mut self, records: &[u8]) -> Result<(), Full> {
        self.put(records)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free in the buffer.
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// The records written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Whether a record of `kind` whose payload after its first `head` bytes is `tail` was
    /// written already (a walk over the records; allocation-free).
    pub fn has_record(&self, kind: u32, head: usize, tail: &[u8]) -> bool {
        let hsize = core::mem::size_of::<RecordHeader>();
        let mut pos = 0;
        while pos + hsize <= self.len {
            let rh: RecordHeader = bytemuck::pod_read_unaligned(&self.buf[pos..pos + hsize]);
            let body = pos + hsize;
            let end = body + rh.len as usize;
            if end > self.len {
                return false;
            }
            if rh.kind == kind
                && rh.len as usize == head + tail.len()
                && &self.buf[body + head..end] == tail
            {
                return true;
            }
            pos = body + align8(rh.len as usize);
        }
        false
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.len + bytes.len();
        if end > self.buf.len() {
            return Err(Full);
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Appends one record: `head` followed by `tail`, padded to 8 bytes.
    pub fn record<T: Pod>(&mut self, kind: u32, head: &T, tail: &[u8]) -> Result<(), Full> {
        let payload = core::mem::size_of::<T>() + tail.len();
        let rh = RecordHeader {
            kind,
            len: payload as u32,
        };
        self.put(bytemuck::bytes_of(&rh))?;
        self.put(bytemuck::bytes_of(head))?;
        self.put(tail)?;
        let pad = align8(payload) - payload;
        self.put(&[0u8; 8][..pad])
    }

    /// Appends one record: `head`, then a tail of at most `max_tail` bytes that `fill` writes in
    /// place and whose length it returns (so large payloads need no intermediate buffer).
    pub fn record_fill<T: Pod>(
        &mut self,
        kind: u32,
        head: &T,
        max_tail: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), Full> {
        let hsize = core::mem::size_of::<RecordHeader>();
        let size = core::mem::size_of::<T>();
        let start = self.len;
        if start + hsize + size + align8(max_tail) > self.buf.len() {
            return Err(Full);
        }
        let tail_at = start + hsize + size;
        let n = fill(&mut self.buf[tail_at..tail_at + max_tail]).min(max_tail);
        let rh = RecordHeader {
            kind,
            len: (size + n) as u32,
        };
        self.buf[start..start + hsize].copy_from_slice(bytemuck::bytes_of(&rh));
        self.buf[start + hsize..tail_at].copy_from_slice(bytemuck::bytes_of(head));
        let end = tail_at + n;
        let padded = start + hsize + align8(size + n);
        self.buf[end..padded].fill(0);
        self.len = padded;
        Ok(())
    }

    /// The free part of the buffer from `skip` bytes past the end of what was written: where
    /// the tail of a record will be once `skip` bytes of records (its own header and head
    /// included) are appended. A capture writes a large tail there in place first (a socket's
    /// queued bytes, straight from the kernel), then [`Self::record_placed`] appends its head.
    pub fn ahead(&mut self, skip: usize) -> &mut [u8] {
        let at = (self.len + skip).min(self.buf.len());
        &mut self.buf[at..]
    }

    /// Appends one record: `head`, then the `n` bytes of tail that were written in place
    /// through [`Self::ahead`] (with `skip` = the record's header and `head`).
    pub fn record_placed<T: Pod>(&mut self, kind: u32, head: &T, n: usize) -> Result<(), Full> {
        let hsize = core::mem::size_of::<RecordHeader>();
        let size = core::mem::size_of::<T>();
        let start = self.len;
        let tail_at = start + hsize + size;
        let padded = start + hsize + align8(size + n);
        if padded > self.buf.len() || size + n > u32::MAX as usize {
            return Err(Full);
        }
        let rh = RecordHeader {
            kind,
            len: (size + n) as u32,
        };
        self.buf[start..start + hsize].copy_from_slice(bytemuck::bytes_of(&rh));
        self.buf[start + hsize..tail_at].copy_from_slice(bytemuck::bytes_of(head));
        self.buf[tail_at + n..padded].fill(0);
        self.len = padded;
        Ok(())
    }

    /// Drops everything appended after the first `len` bytes (a record given up half-way).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends a record whose payload is only `bytes`.
    pub fn raw(&mut self, kind: u32, bytes: &[u8]) -> Result<(), Full> {
        let rh = RecordHeader {
            kind,
            len: bytes.len() as u32,
        };
        self.put(bytemuck::bytes_of(&rh))?;
        self.put(bytes)?;
        let pad = align8(bytes.len()) - bytes.len();
        self.put(&[0u8; 8][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::format::{Extent, REC_END, REC_EXTENTS};

    #[test]
    fn records_are_padded_and_full_is_reported() {
        let mut buf = [0u8; 64];
        let mut w = MetaWriter::new(&mut buf);
        let e = Extent {
            addr: 4096,
            len: 4096,
            file_off: 0,
        };
        w.record(REC_EXTENTS, &e, b"abc").unwrap();
        assert_eq!(w.len(), 8 + 24 + 8); // header + extent + "abc" padded to 8
        w.raw(REC_END, &[]).unwrap();
        assert_eq!(w.len(), 48);
        assert!(w.record(REC_EXTENTS, &e, &[]).is_err());
    }

    #[test]
    fn a_tail_written_ahead_becomes_the_record() {
        let mut buf = [0xffu8; 128];
        let mut w = MetaWriter::new(&mut buf);
        w.raw(REC_END, b"ab").unwrap();
        let before = w.len();
        let e = Extent {
            addr: 1,
            len: 2,
            file_off: 3,
        };
        w.ahead(8 + 24)[..5].copy_from_slice(b"hello");
        w.record_placed(REC_EXTENTS, &e, 5).unwrap();
        let mut other = [0u8; 128];
        let mut o = MetaWriter::new(&mut other);
        o.raw(REC_END, b"ab").unwrap();
        o.record(REC_EXTENTS, &e, b"hello").unwrap();
        assert_eq!(w.bytes(), o.bytes());
        assert_eq!(w.len(), before + 8 + 24 + 8);
        assert!(w.record_placed(REC_EXTENTS, &e, 100).is_err());
    }
}
