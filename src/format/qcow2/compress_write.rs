//! qcow2 compressed writes: a whole cluster compressed (zlib or zstd, as
//! the header says) and packed into shared host clusters byte by byte,
//! as QEMU's qcow2_alloc_bytes does; each host cluster a compressed
//! cluster touches holds one reference per such cluster.
//!
//! Order as for any allocating write: the bytes' refcounts rise in memory,
//! the data is written with no lock held, then the L2 entry names it; the
//! write-back puts refcounts before L2 tables on disk.

use super::{compress, refcount, Qcow2};
use crate::error::{Error, Result};

impl Qcow2 {
    /// `Format::compress_cluster`: compresses into less than a cluster.
    pub(super) fn w_compress_cluster(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.geo.data_file {
            return Err(Error::Unsupported(
                "compressed writes are not possible with an external data file".into(),
            ));
        }
        if data.is_empty() {
            return Ok(None);
        }
        if data.len() as u64 != self.cs() {
            return Err(Error::InvalidArgument(format!(
                "a compressed cluster holds {} bytes, not {}",
                self.cs(),
                data.len()
            )));
        }
        compress::compress(self.header.compression, data, data.len() - 1)
    }

    /// `Format::write_compressed`: stores `comp` as the contents of guest
    /// cluster `guest`. What the cluster held before (data, compressed,
    /// preallocated zeros) is released after the next write-back (QEMU
    /// refuses this with EIO; replacing is as safe as any overwrite).
    pub(super) fn w_write_compressed(&self, guest: u64, comp: &[u8]) -> Result<()> {
        let cs = self.cs();
        let len = comp.len() as u64;
        if len == 0 || len >= cs || !guest.is_multiple_of(cs) {
            return Err(Error::InvalidArgument(format!(
                "compressed data of {len} bytes for guest offset {guest:#x} (cluster size {cs})"
            )));
        }
        let (host, entry) = {
            let mut m = self.meta()?;
            // The L2 table first, then the data, as QEMU allocates them:
            // the same layout (iotest 214 pokes entries by offset). The
            // table is linked only by the write-back after the data.
            self.writable_l2(&mut m, self.geo.indices(guest).0)?;
            let host = self.alloc_bytes(&mut m, len)?;
            let entry = self.geo.compressed_entry(host, len).ok_or_else(|| {
                Error::TooLarge(format!(
                    "compressed data at host offset {host:#x} cannot be described"
                ))
            })?;
            self.check_overlap(&m, host, len, "compressed data")?;
            (host, entry)
        };
        // Unused bytes of our own clusters: no lock needed.
        self.file.write_at(comp, host)?;
        let mut m = self.meta()?;
        self.rewrite_entries(&mut m, guest, cs, |_, _| Some((entry, 0)))?;
        self.after_change(&mut m)
    }

    /// Reserves `len` (< cluster size) bytes for compressed data: after
    /// the previous compressed cluster when they fit in its host cluster
    /// (or run on into the next one, if that is free), else at the start
    /// of a new cluster. Every host cluster the bytes touch gains one
    /// reference.
    fn alloc_bytes(&self, m: &mut super::write::Meta, len: u64) -> Result<u64> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let mut off = m.free_byte;
        if off != 0 {
            let rc = self.refcount(m, off >> cb)?;
            if rc == 0 || rc >= refcount::max_value(self.header.refcount_order) {
                off = 0;
            }
        }
        let start = if off != 0 && cs - off % cs >= len {
            self.add_refcount(m, off >> cb, 1)?;
            off
        } else {
            let new = self.alloc_run(m, 1)? << cb;
            if off != 0 && new == (off / cs + 1) * cs {
                // Contiguous: the bytes run on from the old cluster.
                self.add_refcount(m, off >> cb, 1)?;
                off
            } else {
                new
            }
        };
        m.free_byte = if (start + len).is_multiple_of(cs) {
            0
        } else {
            start + len
        };
        Ok(start)
    }
}
