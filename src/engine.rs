//! The shared engine: reads, writes, copy-on-write and backing-chain reads
//! for every format. Formats only map and allocate (`format::Format`).
//!
//! Locking: every request holds the image's request lock shared for its
//! whole run (range check included); a resize holds it exclusive, so the
//! size never changes under a request, as QEMU drains before a truncate.
//! An uncontended shared acquire is one atomic operation. `Format::map`
//! takes the format's metadata lock for the lookup only; data I/O runs
//! with no metadata lock held. Allocating writes hold a range lock on the
//! clusters they allocate, so two writers never copy-on-write the same
//! cluster at once.

use crate::error::{Error, Result};
use crate::format::Mapping;
use crate::image::{Backing, BlockStatus, Image};
use crate::io::{BlockFile, Const, IoVec, ZeroFlags};

/// The bytes QEMU's probe-protection looks at (the first sector).
const PROBE_SECTOR: u64 = 512;

/// What an allocating write puts between the copied head and tail.
#[derive(Clone, Copy)]
enum Payload<'v, 'a> {
    /// Bytes `[at, at + len)` of the caller's list.
    Data(&'v IoVec<'a, Const>, usize),
    Zeros(ZeroFlags),
}

/// Zeroes `[host, host + n)` of `file` as `flags` allow.
fn zero_file(file: &dyn BlockFile, host: u64, n: u64, flags: ZeroFlags) -> Result<()> {
    if flags == ZeroFlags::UNMAP {
        file.write_zeroes(host, n)
    } else {
        file.zero_range(host, n, flags)
    }
}

impl Image {
    /// Reads `buf.len()` bytes at `off`.
    pub fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.readv(&IoVec::from_mut(buf), off)
    }

    /// Reads into a scatter list.
    // Inlined down to the data file's read: frames on the stack across
    // the system call cost (see `PosixFile::read_at`).
    #[inline(always)]
    pub fn readv(&self, iov: &IoVec, off: u64) -> Result<()> {
        let _s = self.shared();
        self.check_range(off, iov.len() as u64)?;
        self.read_inner(iov, off)
    }

    /// Reads with the request lock already held.
    #[inline(always)]
    pub(crate) fn read_inner(&self, iov: &IoVec, off: u64) -> Result<()> {
        self.read_with(iov, off, None, false)
    }

    /// Reads with `over` standing in for the backing layer, if given.
    /// `cow`: the bytes are old contents about to become this layer's own.
    #[inline(always)]
    fn read_with(
        &self,
        iov: &IoVec,
        off: u64,
        over: Option<&dyn Backing>,
        cow: bool,
    ) -> Result<()> {
        let len = iov.len() as u64;
        let mut done = 0u64;
        while done < len {
            let pos = off + done;
            let ext = self.fmt.map(pos, len - done)?;
            let n = ext.len.min(len - done);
            if n == 0 {
                return Err(Error::Corrupt(format!("empty mapping at offset {pos}")));
            }
            // One extent covering the whole request (the common case)
            // needs no sub-list.
            let sliced;
            let part = if n == len {
                iov
            } else {
                sliced = iov.slice(done as usize, n as usize);
                &sliced
            };
            match ext.mapping {
                Mapping::Data { host, .. } => self.fmt.data_file().preadv(part, host)?,
                Mapping::Zero => part.zero(),
                Mapping::Unallocated => self.read_unallocated(part, pos, over, cow)?,
                Mapping::Compressed { host, csize } => {
                    let cs = self.fmt.cluster_size().max(1);
                    self.fmt.read_compressed(host, csize, pos % cs, part)?
                }
            }
            done += n;
        }
        Ok(())
    }

    #[inline(always)]
    fn read_unallocated(
        &self,
        iov: &IoVec,
        off: u64,
        over: Option<&dyn Backing>,
        cow: bool,
    ) -> Result<()> {
        if let Some(b) = over {
            return b.read_backing(iov, off);
        }
        match self.backing.load().as_ref() {
            Some(b) => match &b.direct {
                Some((file, size)) if off.saturating_add(iov.len() as u64) <= *size => {
                    file.preadv(iov, off)
                }
                _ => b.layer.read_backing(iov, off),
            },
            None => {
                if cow {
                    self.refuse_without_backing(&format!(
                        "copying {} bytes at offset {off} on write",
                        iov.len()
                    ))?;
                }
                iov.zero();
                Ok(())
            }
        }
    }

    /// Fails when the image records a backing file that this handle did
    /// not open (`OpenOptions::no_backing`): zeros standing in for its data
    /// must never become this layer's own data.
    fn refuse_without_backing(&self, what: &str) -> Result<()> {
        if self.backing.load().is_some() {
            return Ok(());
        }
        match self.fmt.backing() {
            Some(spec) => Err(Error::Unsupported(format!(
                "{what} needs data from backing file '{}', and '{}' was opened without it \
                 (no backing): reopen it with its backing file",
                spec.name,
                self.path().display()
            ))),
            None => Ok(()),
        }
    }

    /// Writes `buf` at `off`.
    pub fn write(&self, buf: &[u8], off: u64) -> Result<()> {
        self.writev(&IoVec::from_ref(buf), off)
    }

    /// Writes a scatter list at `off`.
    pub fn writev(&self, iov: &IoVec<Const>, off: u64) -> Result<()> {
        self.writev_with(iov, off, None)
    }

    /// Writes with `backing` supplying the old contents of partially
    /// written, unallocated clusters instead of the image's own backing
    /// layer: for hosts that manage the backing chain themselves.
    pub fn writev_cow(&self, iov: &IoVec<Const>, off: u64, backing: &dyn Backing) -> Result<()> {
        self.writev_with(iov, off, Some(backing))
    }

    fn writev_with(&self, iov: &IoVec<Const>, off: u64, over: Option<&dyn Backing>) -> Result<()> {
        self.check_writable()?;
        let _s = self.shared();
        self.check_range(off, iov.len() as u64)?;
        self.writev_locked(iov, off, over)
    }

    /// A write with the request lock held and the range checked.
    pub(crate) fn writev_locked(
        &self,
        iov: &IoVec<Const>,
        off: u64,
        over: Option<&dyn Backing>,
    ) -> Result<()> {
        let len = iov.len() as u64;
        if self.probed_raw() && off < PROBE_SECTOR && len > 0 {
            self.check_probe_write(iov, off)?;
        }
        let mut done = 0u64;
        while done < len {
            let pos = off + done;
            let ext = self.fmt.map(pos, len - done)?;
            let n = ext.len.min(len - done);
            done += match ext.mapping {
                Mapping::Data {
                    host,
                    in_place: true,
                } => {
                    let file = self.fmt.data_file();
                    if n == len {
                        file.pwritev(iov, host)?;
                    } else {
                        file.pwritev(&iov.slice(done as usize, n as usize), host)?;
                    }
                    n
                }
                _ => self.write_allocating(pos, n, Payload::Data(iov, done as usize), over)?,
            };
        }
        Ok(())
    }

    /// Refuses a write that would make a probed raw image's first sector
    /// probe as another format (QEMU refuses it with EPERM too).
    fn check_probe_write(&self, iov: &IoVec<Const>, off: u64) -> Result<()> {
        let mut sector = vec![0u8; PROBE_SECTOR.min(self.size()) as usize];
        self.read_inner(&IoVec::from_mut(&mut sector), 0)?;
        let n = (sector.len() as u64 - off).min(iov.len() as u64) as usize;
        iov.copy_to(0, &mut sector[off as usize..off as usize + n]);
        let d = crate::format::probe(&sector, self.path());
        if d.name != self.fmt.format_name() {
            return Err(Error::PermissionDenied(format!(
                "'{}' was probed as raw: a write that makes its first sector look like {} is \
                 refused (give the format explicitly to allow it)",
                self.path().display(),
                d.name
            )));
        }
        Ok(())
    }

    /// Makes `[off, off + len)` read as zeros, deallocating where it can.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.write_zeroes_flags(off, len, ZeroFlags::UNMAP)
    }

    /// Makes `[off, off + len)` read as zeros as `flags` allow: no
    /// deallocation without `may_unmap`; with `no_fallback`, fails with
    /// `Error::Unsupported` where zeros (or old contents of a partly
    /// zeroed cluster) would have to be written as data.
    pub fn write_zeroes_flags(&self, off: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        self.check_writable()?;
        let _s = self.shared();
        self.check_range(off, len)?;
        let cs = self.fmt.cluster_size();
        let (off, len) = self.zero_edges(off, len, cs, flags)?;
        let mut done = 0u64;
        while done < len {
            let pos = off + done;
            let ext = self.fmt.map(pos, len - done)?;
            let n = ext.len.min(len - done);
            // Whole clusters may be zeroed in metadata alone.
            // With may_unmap, preallocated zero clusters are freed too.
            let already = matches!(ext.mapping, Mapping::Zero)
                && !(flags.may_unmap && ext.reserved.is_some());
            // (the image's partial last cluster is whole up to the end)
            let to_end = pos + n == self.size();
            if cs > 0 && pos.is_multiple_of(cs) && (n >= cs || to_end) && !already {
                let whole = if to_end {
                    n.div_ceil(cs) * cs
                } else {
                    n / cs * cs
                };
                if self.fmt.zero_clusters(pos, whole, flags.may_unmap)? {
                    done += whole.min(n);
                    continue;
                }
            }
            done += match ext.mapping {
                Mapping::Zero => n,
                Mapping::Data {
                    host,
                    in_place: true,
                } => {
                    zero_file(&**self.fmt.data_file(), host, n, flags)?;
                    n
                }
                _ => self.write_allocating(pos, n, Payload::Zeros(flags), None)?,
            };
        }
        Ok(())
    }

    /// QEMU's qcow2 rule for a zero write over part of a cluster: when the
    /// cluster's other bytes already read as zeros (through the backing
    /// chain, by block status: no data read), the whole cluster is zeroed
    /// in metadata rather than written. The head and the tail cluster are
    /// judged each on its own, each under the cluster's allocation lock
    /// (so no write lands in it between the look and the zeroing). Only
    /// where the format has zero clusters. Returns what is left to do.
    fn zero_edges(&self, off: u64, len: u64, cs: u64, flags: ZeroFlags) -> Result<(u64, u64)> {
        if cs == 0 || len == 0 || !self.fmt.has_zero_clusters() {
            return Ok((off, len));
        }
        let size = self.size();
        // A cluster's end; the image's partial last cluster ends with it
        // (as QEMU's qcow2 counts it).
        let ce = |c: u64| (c + cs).min(size);
        let (mut start, mut end) = (off, off + len);
        let hs = start / cs * cs;
        if (start != hs || end < ce(hs))
            && self.zero_whole(hs, start, end.min(ce(hs)), cs, flags, flags.host_zero_head)?
        {
            start = ce(hs).min(end);
        }
        let ts = (end - 1) / cs * cs;
        // (a request inside one cluster was judged as the head)
        if ts > hs
            && end != ce(ts)
            && self.zero_whole(ts, ts, end, cs, flags, flags.host_zero_tail)?
        {
            end = ts;
        }
        Ok((start, end.saturating_sub(start)))
    }

    /// Zeroes cluster `[c, c + cs)` in metadata if its bytes outside
    /// `[a, b)` read as zeros (`host_zero`: the host vouches for its
    /// backing chain there); whether it did.
    fn zero_whole(
        &self,
        c: u64,
        a: u64,
        b: u64,
        cs: u64,
        flags: ZeroFlags,
        host_zero: bool,
    ) -> Result<bool> {
        let _g = self.alloc_locks.lock(c, c + cs);
        let e = (c + cs).min(self.size());
        if self.reads_zero_locked(c, a, host_zero)? && self.reads_zero_locked(b, e, host_zero)? {
            return self.fmt.zero_clusters(c, cs, flags.may_unmap);
        }
        Ok(false)
    }

    /// Whether `[a, b)` reads as zeros through the chain without reading
    /// data (request lock held). A host-managed backing layer cannot be
    /// asked: its unallocated ranges count as zero only where the host
    /// said its backing chain reads zeros (`host_zero`).
    fn reads_zero_locked(&self, mut a: u64, b: u64, host_zero: bool) -> Result<bool> {
        while a < b {
            let (st, n) = self.block_status_locked(a, b - a)?;
            let n = n.min(b - a).max(1);
            if st.data && !st.zero {
                return Ok(false);
            }
            if !st.zero && !st.allocated {
                let back = self.backing();
                match back.as_ref() {
                    // opened without the backing file it records:
                    // cannot tell
                    None if self.fmt.backing().is_some() => return Ok(false),
                    None => {}
                    Some(bk) => match bk.as_image() {
                        Some(img) if a < img.size() => {
                            let m = n.min(img.size() - a);
                            let (_, st2, n2) = img.chain_status(a, m)?;
                            if !st2.zero || st2.data {
                                return Ok(false);
                            }
                            a += n2.min(m).max(1);
                            continue;
                        }
                        Some(img) if img.size() <= a => {}
                        // the host reads the backing file: zeros where it
                        // says so
                        None if host_zero => {}
                        _ => return Ok(false),
                    },
                }
            } else if !st.zero {
                return Ok(false);
            }
            a += n;
        }
        Ok(true)
    }

    /// Hints that `[off, off + len)` is unused. Only whole clusters are
    /// passed on; contents stay defined (the format decides what it may drop).
    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let _s = self.shared();
        self.check_range(off, len)?;
        let cs = self.fmt.cluster_size();
        if cs == 0 {
            return self.fmt.discard(off, len);
        }
        let start = off.div_ceil(cs) * cs;
        let end = if off + len == self.size() {
            off + len
        } else {
            (off + len) / cs * cs
        };
        if end > start {
            let _g = self.alloc_locks.lock(start, end);
            self.fmt.discard(start, end - start)?;
        }
        Ok(())
    }

    /// The range of old contents a write of `[off, off + len)` would copy
    /// (cluster-aligned, covering partially written unallocated clusters),
    /// or `None`. Hosts that supply backing data call this before
    /// `writev_cow`.
    pub fn cow_range(&self, off: u64, len: u64) -> Result<Option<(u64, u64)>> {
        let _s = self.shared();
        self.check_range(off, len)?;
        let cs = self.fmt.cluster_size();
        if cs == 0 || len == 0 {
            return Ok(None);
        }
        let cstart = off / cs * cs;
        let cend = (off + len).div_ceil(cs).saturating_mul(cs).min(self.size());
        let head = off > cstart && !self.block_status_locked(cstart, 1)?.0.allocated;
        let last = (off + len - 1) / cs * cs;
        let tail = off + len < cend && !self.block_status_locked(last, 1)?.0.allocated;
        Ok(match (head, tail) {
            (false, false) => None,
            (true, false) => Some((cstart, (cstart + cs).min(cend) - cstart)),
            (false, true) => Some((last, cend - last)),
            (true, true) => Some((cstart, cend - cstart)),
        })
    }

    /// Allocates the clusters under `[pos, pos + n)` (or a prefix of it),
    /// copying the rest of partially written clusters from the old
    /// contents. Returns how many of the `n` bytes were written.
    fn write_allocating(
        &self,
        pos: u64,
        n: u64,
        payload: Payload,
        over: Option<&dyn Backing>,
    ) -> Result<u64> {
        let cs = self.fmt.cluster_size();
        if cs == 0 {
            return Err(Error::Unsupported(format!(
                "{} cannot allocate",
                self.fmt.format_name()
            )));
        }
        // The caller holds the request lock: the size is stable.
        let size = self.size();
        let cstart = pos / cs * cs;
        let cend = (pos + n).div_ceil(cs).saturating_mul(cs).min(size);
        let _guard = self.alloc_locks.lock(cstart, cend);
        // Someone may have allocated these clusters while we waited.
        let ext = self.fmt.map(pos, n)?;
        let n = ext.len.min(n);
        if let Mapping::Data {
            host,
            in_place: true,
        } = ext.mapping
        {
            match payload {
                Payload::Data(iov, at) => self
                    .fmt
                    .data_file()
                    .pwritev(&iov.slice(at, n as usize), host)?,
                Payload::Zeros(flags) => zero_file(&**self.fmt.data_file(), host, n, flags)?,
            }
            return Ok(n);
        }
        let want_end = (pos + n).div_ceil(cs).saturating_mul(cs).min(size);
        if matches!(payload, Payload::Zeros(f) if f.no_fallback)
            && (pos > cstart || pos + n < want_end)
        {
            // Checked before allocating, so nothing is left half done.
            return Err(Error::Unsupported(
                "zeroing part of an unallocated cluster writes its other bytes".into(),
            ));
        }
        // The copy unit: a format may copy less than a cluster around a
        // write (qcow2 subclusters); the lock above stays per cluster.
        let unit = self.fmt.cow_unit(pos)?.clamp(1, cs);
        let cstart = pos / unit * unit;
        let want_end = (pos + n).div_ceil(unit).saturating_mul(unit).min(size);
        let (host, alen) = self.fmt.allocate(cstart, want_end - cstart)?;
        let run_end = cstart + alen;
        let wend = (pos + n).min(run_end);
        // Old contents of the partial units at either end; nothing past
        // the image's end (a partial last cluster) is copied.
        let mut head = vec![0u8; (pos - cstart) as usize];
        let mut tail = vec![0u8; (run_end.min(size) - wend) as usize];
        if !head.is_empty() {
            self.read_with(&IoVec::from_mut(&mut head), cstart, over, true)?;
        }
        // A run may end past the virtual size (the last cluster of an
        // image whose size is not a whole number of clusters): the bytes
        // past the end stay zeros, nobody reads them.
        let inside = size.saturating_sub(wend).min(tail.len() as u64) as usize;
        if inside > 0 {
            self.read_with(&IoVec::from_mut(&mut tail[..inside]), wend, over, true)?;
        }
        let data = self.fmt.data_file();
        match payload {
            Payload::Data(iov, at) => {
                let mut all = IoVec::from_ref(&head);
                all.append(iov.slice(at, (wend - pos) as usize));
                all.append(IoVec::from_ref(&tail));
                data.pwritev(&all, host)?;
            }
            Payload::Zeros(flags) => {
                if !head.is_empty() {
                    data.write_at(&head, host)?;
                }
                zero_file(&**data, host + (pos - cstart), wend - pos, flags)?;
                if !tail.is_empty() {
                    data.write_at(&tail, host + (wend - cstart))?;
                }
            }
        }
        // Metadata after data: the format orders its write-back after a
        // flush of this data.
        self.fmt.link(cstart, alen, host)?;
        Ok(wend - pos)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        if self.read_only() {
            return Ok(());
        }
        let _s = self.shared();
        self.fmt.flush()
    }

    /// Changes the virtual size. Grown space reads as zeros, never as
    /// backing data.
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.truncate_with(size, None)
    }

    /// `truncate` for a host that manages the backing layer itself:
    /// `backing_len` is that layer's length (None: there is none), so only
    /// grown space it would show is made to read zeros.
    pub fn truncate_over(&self, size: u64, backing_len: Option<u64>) -> Result<()> {
        self.truncate_with(size, Some(backing_len))
    }

    fn truncate_with(&self, size: u64, over: Option<Option<u64>>) -> Result<()> {
        self.check_writable()?;
        // Waits for running requests; new ones wait for the resize.
        let _x = self.exclusive();
        if size > self.size() && over.is_none() {
            // Which grown clusters must be owned (so that they read zeros)
            // depends on the backing file's length.
            self.refuse_without_backing(&format!("growing to {size} bytes"))?;
        }
        let backing_len = over.unwrap_or_else(|| self.backing().map(|b| b.size()));
        let old = |iov: &IoVec, off: u64| self.read_with(iov, off, None, true);
        self.fmt.truncate(size, backing_len, &old)
    }

    /// The state of the run at `off` (at most `len` bytes) in this layer,
    /// and its length.
    pub fn block_status(&self, off: u64, len: u64) -> Result<(BlockStatus, u64)> {
        let _s = self.shared();
        self.block_status_locked(off, len)
    }

    /// `block_status` with the request lock already held.
    fn block_status_locked(&self, off: u64, len: u64) -> Result<(BlockStatus, u64)> {
        self.check_range(off, len)?;
        if len == 0 {
            return Err(Error::InvalidArgument(
                "block status of an empty range".into(),
            ));
        }
        let mut ext = self.fmt.map(off, len)?;
        let st = match ext.mapping {
            Mapping::Data { host, .. } => {
                // In a passthrough format (raw) a hole in the file reads
                // zeros: say so, as QEMU's file layer does. A format with
                // preallocated metadata keeps "data" and adds "zero".
                let pass = self.fmt.passthrough();
                let hole = if pass || self.fmt.zero_holes_under_data() {
                    match self.fmt.data_file().data_run(host, ext.len.min(len))? {
                        Some((is_data, n)) => {
                            ext.len = ext.len.min(n);
                            !is_data
                        }
                        None => false,
                    }
                } else {
                    false
                };
                BlockStatus {
                    allocated: true,
                    data: !(hole && pass),
                    zero: hole,
                    offset: Some(host),
                    compressed: false,
                }
            }
            Mapping::Compressed { .. } => BlockStatus {
                allocated: true,
                data: true,
                zero: false,
                offset: None,
                compressed: true,
            },
            Mapping::Zero => BlockStatus {
                allocated: true,
                data: false,
                zero: true,
                offset: ext.reserved,
                compressed: false,
            },
            Mapping::Unallocated => BlockStatus {
                allocated: false,
                data: false,
                zero: self.backing().is_none(),
                offset: ext.reserved,
                compressed: false,
            },
        };
        Ok((st, ext.len.min(len)))
    }

    /// QEMU's is_allocated: whether `[off, ...)` is allocated in this
    /// layer, and how many bytes from `off` (at most `len`) share that.
    pub fn is_allocated(&self, off: u64, len: u64) -> Result<(bool, u64)> {
        let mut total = 0;
        let mut state = None;
        while total < len {
            let (st, n) = self.block_status(off + total, len - total)?;
            match state {
                None => state = Some(st.allocated),
                Some(s) if s != st.allocated => break,
                _ => {}
            }
            total += n;
        }
        Ok((state.unwrap_or(false), total))
    }

    /// What `qemu-img map` reports for the run at `off` (at most `len`
    /// bytes): walking down from this image, the first layer whose status
    /// says data or zeros, or the last layer; its depth (0 = this image),
    /// its status (`allocated` is map's "present") and the run length.
    /// Unallocated ranges past the end of a shorter backing file read as
    /// zeros at the layer above it, as in QEMU.
    pub fn chain_status(&self, off: u64, len: u64) -> Result<(usize, BlockStatus, u64)> {
        let (mut st, n) = self.block_status(off, len)?;
        if st.data || st.zero {
            return Ok((0, st, n));
        }
        let b = self.backing();
        match b.as_ref().and_then(|b| b.as_image()) {
            Some(img) if off < img.size() => {
                let m = n.min(img.size() - off);
                let (d, st2, n2) = img.chain_status(off, m)?;
                Ok((d + 1, st2, n2))
            }
            Some(_) => {
                st.zero = true;
                Ok((0, st, n))
            }
            // A caller-supplied backing layer: nothing to look into.
            None => Ok((0, st, n)),
        }
    }
}
