//! L1/L2 entry decoding: what one guest (sub)cluster is, from the raw
//! entries. Pure; the metadata cache and file I/O live elsewhere.

/// Offset bits 9..=55 of L1 and L2 entries (and refcount table entries).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount is exactly one (standard clusters and L2 tables).
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Reads as zeros (standard L2 entries without extended L2).
pub const OFLAG_ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;
/// Compressed data is addressed in 512-byte sectors.
pub const COMPRESSED_SECTOR: u64 = 512;

/// What a guest subcluster (a cluster without extended L2) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Data at this host cluster offset.
    Normal(u64),
    /// Reads zeros; no host cluster.
    ZeroPlain,
    /// Reads zeros; a host cluster is preallocated at this offset.
    ZeroAlloc(u64),
    /// Not allocated: backing file or zeros.
    UnallocPlain,
    /// Not allocated, but the cluster has a host cluster at this offset
    /// (another subcluster of it is allocated).
    UnallocAlloc(u64),
    /// Compressed data: host byte offset and compressed length.
    Compressed { host: u64, csize: u64 },
    /// An entry that breaks the rules (zero and allocated at once, ...).
    Invalid,
}

impl Kind {
    /// The host cluster behind a standard kind.
    pub fn host_cluster(self) -> Option<u64> {
        match self {
            Kind::Normal(h) | Kind::ZeroAlloc(h) | Kind::UnallocAlloc(h) => Some(h),
            _ => None,
        }
    }

    /// Same kind, ignoring the host offset.
    pub fn same_class(self, o: Kind) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&o)
    }
}

/// The shape of the mapping tables of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub cluster_bits: u32,
    pub extended: bool,
    /// External data file: offset 0 with the COPIED flag is allocated.
    pub data_file: bool,
}

impl Geometry {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// u64 words per L2 entry.
    pub fn entry_words(&self) -> usize {
        if self.extended {
            2
        } else {
            1
        }
    }
    /// log2 of L2 entries per table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.extended { 4 } else { 3 }
    }
    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits()
    }
    /// log2 of the unit the mapping is tracked in: a subcluster with
    /// extended L2 entries, else a cluster.
    pub fn unit_bits(&self) -> u32 {
        if self.extended {
            self.cluster_bits - 5
        } else {
            self.cluster_bits
        }
    }
    /// Guest bytes one L2 table covers.
    pub fn l2_coverage(&self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits())
    }
    /// (L1 index, L2 index) of a guest offset.
    pub fn indices(&self, guest: u64) -> (u64, usize) {
        let c = guest >> self.cluster_bits;
        (c >> self.l2_bits(), (c & (self.l2_entries() - 1)) as usize)
    }

    fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }

    /// Encodes a compressed cluster descriptor for `len` bytes at `host`
    /// (the number of 512-byte sectors touched, minus one, above the
    /// offset), or `None` when the offset or length does not fit.
    pub fn compressed_entry(&self, host: u64, len: u64) -> Option<u64> {
        let shift = self.csize_shift();
        let sectors = ((host + len.max(1) - 1) >> 9) - (host >> 9);
        let mask = (1u64 << (self.cluster_bits - 8)) - 1;
        (host < (1u64 << shift) && sectors <= mask)
            .then_some(host | OFLAG_COMPRESSED | (sectors << shift))
    }

    /// Decodes a compressed cluster descriptor into (host offset, bytes).
    /// The byte count runs to the end of the last 512-byte sector used.
    pub fn compressed(&self, entry: u64) -> (u64, u64) {
        let shift = self.csize_shift();
        let host = entry & ((1u64 << shift) - 1);
        let mask = (1u64 << (self.cluster_bits - 8)) - 1;
        let sectors = ((entry >> shift) & mask) + 1;
        let csize = sectors * COMPRESSED_SECTOR - (host & (COMPRESSED_SECTOR - 1));
        (host, csize)
    }

    /// Classifies subcluster `sc` (0 without extended L2) of an L2 entry
    /// (`bitmap` is the second word of an extended entry, else 0).
    #[inline]
    pub fn kind(&self, entry: u64, bitmap: u64, sc: u32) -> Kind {
        if entry & OFLAG_COMPRESSED != 0 {
            let (host, csize) = self.compressed(entry);
            return Kind::Compressed { host, csize };
        }
        let off = entry & OFFSET_MASK;
        let allocated = off != 0 || (self.data_file && entry & OFLAG_COPIED != 0);
        if !self.extended {
            return match (entry & OFLAG_ZERO != 0, allocated) {
                (true, true) => Kind::ZeroAlloc(off),
                (true, false) => Kind::ZeroPlain,
                (false, true) => Kind::Normal(off),
                (false, false) => Kind::UnallocPlain,
            };
        }
        let alloc_bits = bitmap & 0xffff_ffff;
        let zero_bits = bitmap >> 32;
        if allocated {
            if alloc_bits & zero_bits != 0 {
                Kind::Invalid
            } else if zero_bits & (1 << sc) != 0 {
                Kind::ZeroAlloc(off)
            } else if alloc_bits & (1 << sc) != 0 {
                Kind::Normal(off)
            } else {
                Kind::UnallocAlloc(off)
            }
        } else if alloc_bits != 0 {
            Kind::Invalid
        } else if zero_bits & (1 << sc) != 0 {
            Kind::ZeroPlain
        } else {
            Kind::UnallocPlain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Geometry = Geometry {
        cluster_bits: 16,
        extended: false,
        data_file: false,
    };
    const EXT: Geometry = Geometry {
        cluster_bits: 16,
        extended: true,
        data_file: false,
    };

    #[test]
    fn standard_entries() {
        assert_eq!(STD.kind(0, 0, 0), Kind::UnallocPlain);
        assert_eq!(STD.kind(OFLAG_ZERO, 0, 0), Kind::ZeroPlain);
        assert_eq!(
            STD.kind(0x50000 | OFLAG_ZERO, 0, 0),
            Kind::ZeroAlloc(0x50000)
        );
        assert_eq!(
            STD.kind(OFLAG_COPIED | 0x50000, 0, 0),
            Kind::Normal(0x50000)
        );
        // Reserved bits 56..61 are not part of the offset.
        assert_eq!(STD.kind((1 << 57) | 0x50000, 0, 0), Kind::Normal(0x50000));
        // Offset 0 with COPIED is allocated only with a data file.
        assert_eq!(STD.kind(OFLAG_COPIED, 0, 0), Kind::UnallocPlain);
        let df = Geometry {
            data_file: true,
            ..STD
        };
        assert_eq!(df.kind(OFLAG_COPIED, 0, 0), Kind::Normal(0));
    }

    #[test]
    fn extended_entries() {
        let e = 0x50000;
        let bm = 0b01 | (0b10 << 32);
        assert_eq!(EXT.kind(e, bm, 0), Kind::Normal(e));
        assert_eq!(EXT.kind(e, bm, 1), Kind::ZeroAlloc(e));
        assert_eq!(EXT.kind(e, bm, 2), Kind::UnallocAlloc(e));
        assert_eq!(EXT.kind(0, 1 << 35, 3), Kind::ZeroPlain);
        assert_eq!(EXT.kind(0, 0, 3), Kind::UnallocPlain);
        // The zero flag of bit 0 means nothing with extended entries.
        assert_eq!(EXT.kind(OFLAG_ZERO, 0, 0), Kind::UnallocPlain);
        // Zero and allocated at once, or allocated without a host cluster.
        assert_eq!(EXT.kind(e, 1 | (1 << 32), 5), Kind::Invalid);
        assert_eq!(EXT.kind(0, 1, 5), Kind::Invalid);
    }

    #[test]
    fn compressed_descriptors() {
        // 64 KiB clusters: offset in bits 0..53, sectors-1 in 54..61.
        let e = OFLAG_COMPRESSED | (3u64 << 54) | 0x12345;
        assert_eq!(
            STD.kind(e, 0, 0),
            Kind::Compressed {
                host: 0x12345,
                csize: 4 * 512 - 0x145
            }
        );
        // 2 MiB clusters: offset in bits 0..48.
        let g = Geometry {
            cluster_bits: 21,
            ..STD
        };
        let (h, c) = g.compressed(OFLAG_COMPRESSED | (1u64 << 49) | 0x200);
        assert_eq!((h, c), (0x200, 1024));
        // Largest descriptor: two clusters' worth of sectors.
        let (_, c) = STD.compressed(OFLAG_COMPRESSED | (0xffu64 << 54));
        assert_eq!(c, 256 * 512);
    }

    #[test]
    fn indices_and_sizes() {
        assert_eq!(STD.l2_entries(), 8192);
        assert_eq!(EXT.l2_entries(), 4096);
        assert_eq!(STD.l2_coverage(), 512 << 20);
        assert_eq!(STD.indices((512 << 20) + 3 * 65536 + 7), (1, 3));
        assert_eq!(EXT.unit_bits(), 11);
    }
}
