//! Compressed writes through the engine (`qemu-io write -c`, `qemu-img
//! convert -c`): whole clusters only, each compressed by the format and
//! written uncompressed when compression does not shrink it, as QEMU does.
//! Compressing is split from storing so that a converter can compress on
//! several threads and store from one.

use crate::error::{Error, Result};
use crate::image::Image;
use crate::io::{Const, IoVec};

impl Image {
    /// Whether the format stores compressed clusters.
    pub fn supports_compression(&self) -> bool {
        self.fmt.cluster_size() > 0 && self.fmt.compress_cluster(&[]).is_ok()
    }

    /// Compresses the contents of one cluster (shorter data, the image's
    /// last partial cluster, is padded with zeros). No lock and no I/O:
    /// any thread may call it. `None` when it does not shrink.
    pub fn compress_cluster(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        let cs = self.fmt.cluster_size() as usize;
        if data.len() > cs {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not fit in one cluster of {cs}",
                data.len()
            )));
        }
        if data.len() == cs {
            return self.fmt.compress_cluster(data);
        }
        let mut full = data.to_vec();
        full.resize(cs, 0);
        self.fmt.compress_cluster(&full)
    }

    /// Writes `buf` at `off` compressed, cluster by cluster: `off` must
    /// be cluster aligned and the length whole clusters, or end at the
    /// image's end (the last cluster is padded with zeros).
    pub fn write_compressed(&self, buf: &[u8], off: u64) -> Result<()> {
        self.writev_compressed(&IoVec::from_ref(buf), off)
    }

    /// `write_compressed` from a scatter list, one cluster at a time
    /// (memory: one cluster, whatever the request's length).
    pub fn writev_compressed(&self, iov: &IoVec<Const>, off: u64) -> Result<()> {
        let cs = self.compressed_unit()?;
        let len = iov.len() as u64;
        {
            let _s = self.shared();
            self.check_range(off, len)?;
            self.check_compressed_range(off, len, cs)?;
        }
        let mut buf = vec![0u8; cs.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(cs) as usize;
            iov.copy_to(done as usize, &mut buf[..n]);
            let c = self.compress_cluster(&buf[..n])?;
            self.store_compressed(off + done, &buf[..n], c.as_deref())?;
            done += n as u64;
        }
        Ok(())
    }

    /// Stores one cluster at `off` (cluster aligned; `data` a whole
    /// cluster or the image's last partial one) given the result of
    /// `compress_cluster` on it: compressed when `compressed` is `Some`,
    /// else as a plain write of `data`.
    pub fn store_compressed(&self, off: u64, data: &[u8], compressed: Option<&[u8]>) -> Result<()> {
        let cs = self.compressed_unit()?;
        let _s = self.shared();
        let len = data.len() as u64;
        self.check_range(off, len)?;
        if len > cs {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes do not fit in one cluster of {cs}"
            )));
        }
        self.check_compressed_range(off, len, cs)?;
        if len == 0 {
            return Ok(());
        }
        match compressed {
            None => self.writev_locked(&IoVec::from_ref(data), off, None),
            Some(c) => {
                let _g = self.alloc_locks.lock(off, off + len);
                self.fmt.write_compressed(off, c)
            }
        }
    }

    fn compressed_unit(&self) -> Result<u64> {
        self.check_writable()?;
        if !self.supports_compression() {
            return Err(Error::Unsupported(format!(
                "compression is not supported by the {} format",
                self.fmt.format_name()
            )));
        }
        Ok(self.fmt.cluster_size())
    }

    /// QEMU's rule: whole clusters, or a tail that ends the image.
    fn check_compressed_range(&self, off: u64, len: u64, cs: u64) -> Result<()> {
        if !off.is_multiple_of(cs) || (!len.is_multiple_of(cs) && off + len != self.size()) {
            return Err(Error::InvalidArgument(format!(
                "compressed writes must cover whole clusters of {cs} bytes ({len} bytes at offset {off})"
            )));
        }
        Ok(())
    }
}
