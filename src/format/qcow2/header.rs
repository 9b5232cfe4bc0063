//! The qcow2 header (cluster 0): fixed fields, header extensions, the
//! backing file name, and every limit QEMU enforces on them. Pure: works on
//! the bytes of cluster 0.

use super::features::{self, FeatureName};
use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
pub const MIN_CLUSTER_BITS: u32 = 9;
/// QEMU's implementation limit (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Extended L2 entries need subclusters of at least 512 bytes.
pub const MIN_EXTL2_CLUSTER_BITS: u32 = 14;
pub const V2_HEADER_LEN: u32 = 72;
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// Offset of the compression_type byte (present if header_length > it).
const OFF_COMPRESSION_TYPE: usize = 104;
/// QEMU's limits (CVE-2014-0143/0144 and later): active or snapshot L1
/// table, refcount table, snapshot count, backing file name.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_SNAPSHOTS: u32 = 65536;
pub const MAX_BACKING_NAME: u32 = 1023;
/// Backing format names must fit QEMU's 16-byte field (with its NUL).
pub const MAX_BACKING_FMT: u32 = 15;
/// Host offsets must lie below 2^56 (the L1/L2 entry offset field).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Bitmaps: at most 65535 bitmaps, a directory of at most 64 MiB.
pub const MAX_BITMAPS: u32 = 65535;
pub const MAX_BITMAP_DIR_BYTES: u64 = 1024 * MAX_BITMAPS as u64;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FMT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

pub const CRYPT_NONE: u32 = 0;
pub const CRYPT_AES: u32 = 1;
pub const CRYPT_LUKS: u32 = 2;

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    Zstd,
}

/// The bitmaps extension (parsed for validation; bitmaps are not read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapsExt {
    pub nb_bitmaps: u32,
    pub dir_size: u64,
    pub dir_offset: u64,
}

/// A parsed, validated qcow2 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    pub backing_file: Option<String>,
    pub backing_fmt: Option<String>,
    pub data_file: Option<String>,
    pub feature_names: Vec<FeatureName>,
    /// Full disk encryption header pointer (offset, length).
    pub crypto_ext: Option<(u64, u64)>,
    pub bitmaps: Option<BitmapsExt>,
    /// Extensions this build does not interpret, in order: a rewrite of the
    /// header must keep them.
    pub unknown_extensions: Vec<(u32, Vec<u8>)>,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

/// Whether `buf` starts like a qcow2 image: the magic and a version of 2
/// or more, as QEMU probes (an unknown version then fails to open as
/// qcow2 rather than opening as raw).
pub fn probe(buf: &[u8]) -> i32 {
    if buf.len() >= 8 && &buf[..4] == MAGIC && BigEndian::read_u32(&buf[4..8]) >= 2 {
        return 100;
    }
    0
}

/// Checks a table's placement: cluster aligned, below 2^56, no overflow.
pub fn check_table(what: &str, offset: u64, bytes: u64, cluster_bits: u32) -> Result<()> {
    let cs = 1u64 << cluster_bits;
    if !offset.is_multiple_of(cs) {
        return Err(corrupt(format!(
            "{what} offset {offset:#x} is not aligned to the cluster size ({cs})"
        )));
    }
    // The start must be a valid host offset even for an empty table.
    match offset.checked_add(bytes) {
        Some(end) if offset < MAX_HOST_OFFSET && end <= MAX_HOST_OFFSET => Ok(()),
        _ => Err(corrupt(format!(
            "{what} at offset {offset:#x} ({bytes} bytes) lies beyond the 2^56 byte limit"
        ))),
    }
}

/// The L1 entries needed to map `size` guest bytes.
pub fn l1_entries_for(size: u64, cluster_bits: u32, extended_l2: bool) -> u64 {
    let l2_bits = cluster_bits - if extended_l2 { 4 } else { 3 };
    let shift = cluster_bits + l2_bits;
    size.div_ceil(1u64 << shift)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible & features::INCOMPAT_EXTL2 != 0
    }
    pub fn has_data_file(&self) -> bool {
        self.incompatible & features::INCOMPAT_DATA_FILE != 0
    }
    pub fn data_file_raw(&self) -> bool {
        self.autoclear & features::AUTOCLEAR_DATA_FILE_RAW != 0
    }
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Reads the cluster size from the first bytes, so the caller knows how
    /// much of the file `parse` needs.
    pub fn peek_cluster_bits(buf: &[u8]) -> Result<u32> {
        if buf.len() < 24 || &buf[..4] != MAGIC {
            return Err(corrupt("Image is not in qcow2 format"));
        }
        // The version decides how the rest reads: check it first, as QEMU.
        let version = BigEndian::read_u32(&buf[4..8]);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let bits = BigEndian::read_u32(&buf[20..24]);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
            return Err(Error::Unsupported(format!(
                "cluster_bits {bits}: cluster sizes from 512 bytes to 2 MiB are supported"
            )));
        }
        Ok(bits)
    }

    /// Parses cluster 0. `c0` may be shorter than a cluster (a short file):
    /// missing bytes read as zeros.
    pub fn parse(c0: &[u8]) -> Result<Header> {
        let cluster_bits = Self::peek_cluster_bits(c0)?;
        let cs = 1usize << cluster_bits;
        let padded;
        let b: &[u8] = if c0.len() >= cs {
            &c0[..cs]
        } else {
            let mut v = vec![0u8; cs];
            v[..c0.len()].copy_from_slice(c0);
            padded = v;
            &padded
        };
        let r32 = |o: usize| BigEndian::read_u32(&b[o..o + 4]);
        let r64 = |o: usize| BigEndian::read_u64(&b[o..o + 8]);
        let version = r32(4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let mut h = Header {
            version,
            backing_file_offset: r64(8),
            backing_file_size: r32(16),
            cluster_bits,
            size: r64(24),
            crypt_method: r32(32),
            l1_size: r32(36),
            l1_table_offset: r64(40),
            refcount_table_offset: r64(48),
            refcount_table_clusters: r32(56),
            nb_snapshots: r32(60),
            snapshots_offset: r64(64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression: Compression::Zlib,
            backing_file: None,
            backing_fmt: None,
            data_file: None,
            feature_names: Vec::new(),
            crypto_ext: None,
            bitmaps: None,
            unknown_extensions: Vec::new(),
        };
        if version >= 3 {
            h.incompatible = r64(72);
            h.compatible = r64(80);
            h.autoclear = r64(88);
            h.refcount_order = r32(96);
            h.header_length = r32(100);
            if h.header_length < V3_MIN_HEADER_LEN {
                return Err(corrupt(format!(
                    "header_length {} is shorter than the 104 bytes of a version 3 header",
                    h.header_length
                )));
            }
            if h.header_length as usize > cs {
                return Err(corrupt(format!(
                    "header_length {} exceeds the cluster size {cs}",
                    h.header_length
                )));
            }
        }
        if h.refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {} is above 6 (refcount entries wider than 64 bits)",
                h.refcount_order
            )));
        }
        h.parse_compression_type(b)?;
        if h.extended_l2() && cluster_bits < MIN_EXTL2_CLUSTER_BITS {
            return Err(corrupt(format!(
                "extended L2 entries need clusters of at least 16 KiB, not {cs} bytes"
            )));
        }
        h.parse_backing_name(b)?;
        h.parse_extensions(b)?;
        h.check_limits()?;
        Ok(h)
    }

    fn parse_compression_type(&mut self, b: &[u8]) -> Result<()> {
        let present = self.header_length as usize > OFF_COMPRESSION_TYPE;
        let t = if present { b[OFF_COMPRESSION_TYPE] } else { 0 };
        let bit = self.incompatible & features::INCOMPAT_COMPRESSION != 0;
        if bit && t == 0 {
            return Err(corrupt(
                "the compression type bit is set but compression_type is zlib (0)",
            ));
        }
        if !bit && t != 0 {
            return Err(corrupt(format!(
                "compression_type {t} without the compression type incompatible bit"
            )));
        }
        self.compression = match t {
            0 => Compression::Zlib,
            1 => Compression::Zstd,
            _ => return Err(Error::Unsupported(format!("compression type {t}"))),
        };
        Ok(())
    }

    fn parse_backing_name(&mut self, b: &[u8]) -> Result<()> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let cs = b.len() as u64;
        let off = self.backing_file_offset;
        let len = self.backing_file_size as u64;
        if off > cs {
            return Err(corrupt(format!(
                "backing file name offset {off} lies outside the first cluster ({cs} bytes)"
            )));
        }
        if len > MAX_BACKING_NAME as u64 || len > cs - off {
            return Err(corrupt(format!(
                "backing file name of {len} bytes at offset {off} is too long \
                 (at most {MAX_BACKING_NAME} bytes, inside the first cluster)"
            )));
        }
        let name = &b[off as usize..(off + len) as usize];
        self.backing_file = Some(
            String::from_utf8(name.to_vec())
                .map_err(|_| Error::Unsupported("backing file name is not UTF-8".into()))?,
        );
        Ok(())
    }

    fn parse_extensions(&mut self, b: &[u8]) -> Result<()> {
        let mut off = self.header_length as u64;
        let end = if self.backing_file_offset != 0 {
            self.backing_file_offset
        } else {
            b.len() as u64
        };
        while off < end {
            if end - off < 8 {
                return Err(corrupt(format!(
                    "header extension at offset {off} runs past the end of the extension area ({end})"
                )));
            }
            let o = off as usize;
            let typ = BigEndian::read_u32(&b[o..o + 4]);
            let len = BigEndian::read_u32(&b[o + 4..o + 8]) as u64;
            off += 8;
            if len > end - off {
                return Err(corrupt(format!(
                    "header extension {typ:#x} of {len} bytes at offset {} runs past the end of the extension area ({end})",
                    off - 8
                )));
            }
            let data = &b[off as usize..(off + len) as usize];
            match typ {
                EXT_END => return Ok(()),
                EXT_BACKING_FMT => {
                    if len > MAX_BACKING_FMT as u64 {
                        return Err(corrupt(format!(
                            "backing format name of {len} bytes is too long (at most {MAX_BACKING_FMT})"
                        )));
                    }
                    self.backing_fmt = Some(ext_string(data, "backing format")?);
                }
                EXT_FEATURE_TABLE => self.feature_names = features::parse_name_table(data),
                EXT_CRYPTO => {
                    if len != 16 {
                        return Err(corrupt(format!(
                            "encryption header extension has {len} bytes, not 16"
                        )));
                    }
                    self.crypto_ext = Some((
                        BigEndian::read_u64(&data[0..8]),
                        BigEndian::read_u64(&data[8..16]),
                    ));
                }
                EXT_BITMAPS => self.parse_bitmaps(data)?,
                EXT_DATA_FILE => self.data_file = Some(ext_string(data, "data file")?),
                _ => self.unknown_extensions.push((typ, data.to_vec())),
            }
            off = (off + len).div_ceil(8) * 8;
        }
        Ok(())
    }

    fn parse_bitmaps(&mut self, data: &[u8]) -> Result<()> {
        if data.len() != 24 {
            return Err(corrupt(format!(
                "bitmaps extension has {} bytes, not 24",
                data.len()
            )));
        }
        let ext = BitmapsExt {
            nb_bitmaps: BigEndian::read_u32(&data[0..4]),
            dir_size: BigEndian::read_u64(&data[8..16]),
            dir_offset: BigEndian::read_u64(&data[16..24]),
        };
        // Without the autoclear bit the extension is stale and ignored.
        if self.autoclear & features::AUTOCLEAR_BITMAPS == 0 {
            return Ok(());
        }
        if BigEndian::read_u32(&data[4..8]) != 0 {
            return Err(corrupt("bitmaps extension: reserved field is not zero"));
        }
        if ext.nb_bitmaps == 0 || ext.nb_bitmaps > MAX_BITMAPS {
            return Err(corrupt(format!(
                "bitmaps extension: {} bitmaps (1 to {MAX_BITMAPS} allowed)",
                ext.nb_bitmaps
            )));
        }
        if ext.dir_size > MAX_BITMAP_DIR_BYTES {
            return Err(corrupt(format!(
                "bitmaps extension: directory of {} bytes is too large",
                ext.dir_size
            )));
        }
        check_table(
            "bitmap directory",
            ext.dir_offset,
            ext.dir_size,
            self.cluster_bits,
        )?;
        self.bitmaps = Some(ext);
        Ok(())
    }

    /// The size and placement limits of the spec and of QEMU.
    fn check_limits(&self) -> Result<()> {
        let cb = self.cluster_bits;
        if self.size > i64::MAX as u64 {
            return Err(Error::TooLarge(format!(
                "virtual size {} is above 2^63",
                self.size
            )));
        }
        // Active L1 table.
        let l1_bytes = self.l1_size as u64 * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::TooLarge(format!(
                "active L1 table of {} entries exceeds QEMU's 32 MiB limit",
                self.l1_size
            )));
        }
        let need = l1_entries_for(self.size, cb, self.extended_l2());
        if need > i32::MAX as u64 {
            // QEMU's words (its l1_vm_state_index check): the virtual
            // size needs more L1 entries than an int holds
            return Err(Error::TooLarge("Image is too big".into()));
        }
        if (self.l1_size as u64) < need {
            return Err(corrupt(format!(
                "L1 table of {} entries is too small for a virtual size of {} (needs {need})",
                self.l1_size, self.size
            )));
        }
        check_table("L1 table", self.l1_table_offset, l1_bytes, cb)?;
        // Refcount table.
        let rt_bytes = (self.refcount_table_clusters as u64) << cb;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(Error::TooLarge(format!(
                "refcount table of {} clusters exceeds QEMU's 8 MiB limit",
                self.refcount_table_clusters
            )));
        }
        check_table("refcount table", self.refcount_table_offset, rt_bytes, cb)?;
        // Snapshot table: count here, total size when it is read.
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::TooLarge(format!(
                "{} snapshots exceed the limit of {MAX_SNAPSHOTS}",
                self.nb_snapshots
            )));
        }
        check_table(
            "snapshot table",
            self.snapshots_offset,
            self.nb_snapshots as u64 * 40,
            cb,
        )?;
        if self.data_file_raw() && !self.has_data_file() {
            return Err(corrupt(
                "the data-file-raw bit is set but the image has no external data file",
            ));
        }
        if self.data_file_raw() && self.backing_file.is_some() {
            return Err(corrupt(
                "an image with a raw external data file cannot have a backing file",
            ));
        }
        Ok(())
    }
}

fn ext_string(data: &[u8], what: &str) -> Result<String> {
    String::from_utf8(data.to_vec())
        .map_err(|_| Error::Unsupported(format!("{what} name is not UTF-8")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use byteorder::WriteBytesExt;

    /// A valid v3 header (64 KiB clusters, 1 MiB) to break in tests.
    pub fn good() -> Vec<u8> {
        let mut b = vec![0u8; 65536];
        b[..4].copy_from_slice(MAGIC);
        let w32 = |b: &mut Vec<u8>, o: usize, v: u32| BigEndian::write_u32(&mut b[o..o + 4], v);
        let w64 = |b: &mut Vec<u8>, o: usize, v: u64| BigEndian::write_u64(&mut b[o..o + 8], v);
        w32(&mut b, 4, 3);
        w32(&mut b, 20, 16);
        w64(&mut b, 24, 1 << 20);
        w32(&mut b, 36, 1);
        w64(&mut b, 40, 0x30000);
        w64(&mut b, 48, 0x10000);
        w32(&mut b, 56, 1);
        w32(&mut b, 96, 4);
        w32(&mut b, 100, 112);
        b
    }

    fn set32(b: &mut [u8], o: usize, v: u32) {
        BigEndian::write_u32(&mut b[o..o + 4], v);
    }
    fn set64(b: &mut [u8], o: usize, v: u64) {
        BigEndian::write_u64(&mut b[o..o + 8], v);
    }
    fn ext(b: &mut [u8], at: usize, typ: u32, data: &[u8]) -> usize {
        let mut e = Vec::new();
        e.write_u32::<BigEndian>(typ).unwrap();
        e.write_u32::<BigEndian>(data.len() as u32).unwrap();
        e.extend_from_slice(data);
        b[at..at + e.len()].copy_from_slice(&e);
        at + e.len().div_ceil(8) * 8
    }
    fn err(b: &[u8]) -> String {
        Header::parse(b).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_good_header() {
        let h = Header::parse(&good()).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.compression, Compression::Zlib);
        assert_eq!(probe(&good()), 100);
        // Any version from 2 up probes as qcow2 (and then fails to open if
        // unknown), as in QEMU; 0 and 1 do not.
        assert_eq!(probe(b"QFI\xfb\0\0\0\x04"), 100);
        assert_eq!(probe(b"QFI\xfb\0\0\0\x01"), 0);
    }

    #[test]
    fn magic_version_and_cluster_bits() {
        let mut b = good();
        b[0] = b'X';
        assert!(err(&b).contains("not in qcow2 format"));
        let mut b = good();
        set32(&mut b, 4, 4);
        assert!(err(&b).contains("version 4"));
        for bits in [8, 22, 63] {
            let mut b = good();
            set32(&mut b, 20, bits);
            assert!(err(&b).contains("cluster_bits"), "{bits}");
        }
    }

    #[test]
    fn header_length_limits() {
        let mut b = good();
        set32(&mut b, 100, 96);
        assert!(err(&b).contains("shorter than the 104"));
        let mut b = good();
        set32(&mut b, 100, 65544);
        assert!(err(&b).contains("exceeds the cluster size"));
    }

    #[test]
    fn refcount_order_limit() {
        let mut b = good();
        set32(&mut b, 96, 7);
        assert!(err(&b).contains("refcount_order 7"));
        set32(&mut b, 96, 6);
        assert_eq!(Header::parse(&b).unwrap().refcount_bits(), 64);
    }

    #[test]
    fn l1_limits() {
        let mut b = good();
        set32(&mut b, 36, (MAX_L1_BYTES / 8 + 1) as u32);
        assert!(err(&b).contains("32 MiB"));
        let mut b = good();
        set64(&mut b, 24, 1 << 40); // needs 2048 entries
        assert!(err(&b).contains("too small"));
        let mut b = good();
        set64(&mut b, 24, u64::MAX);
        assert!(err(&b).contains("2^63"));
        let mut b = good();
        set64(&mut b, 40, 0x30200);
        assert!(err(&b).contains("not aligned"));
        let mut b = good();
        set64(&mut b, 40, 1 << 56);
        assert!(err(&b).contains("2^56"));
        let mut b = good();
        set64(&mut b, 40, u64::MAX - 0xffff);
        assert!(err(&b).contains("2^56"));
        // An empty table still needs a valid offset (found by fuzzing).
        assert!(check_table("L1 table", 1 << 56, 0, 16).is_err());
        assert!(check_table("L1 table", (1 << 56) - 65536, 0, 16).is_ok());
    }

    #[test]
    fn refcount_table_limits() {
        let mut b = good();
        set32(&mut b, 56, 129); // 129 * 64 KiB > 8 MiB
        assert!(err(&b).contains("8 MiB"));
        let mut b = good();
        set64(&mut b, 48, 0x10008);
        assert!(err(&b).contains("refcount table offset"));
    }

    #[test]
    fn snapshot_limits() {
        let mut b = good();
        set32(&mut b, 60, MAX_SNAPSHOTS + 1);
        assert!(err(&b).contains("snapshots exceed"));
        let mut b = good();
        set32(&mut b, 60, 1);
        set64(&mut b, 64, 0x1234);
        assert!(err(&b).contains("snapshot table offset"));
    }

    #[test]
    fn backing_name_limits() {
        let mut b = good();
        set64(&mut b, 8, 65537);
        set32(&mut b, 16, 1);
        assert!(err(&b).contains("outside the first cluster"));
        let mut b = good();
        set64(&mut b, 8, 512);
        set32(&mut b, 16, 1024);
        assert!(err(&b).contains("too long"));
        let mut b = good();
        set64(&mut b, 8, 65536 - 4);
        set32(&mut b, 16, 5);
        assert!(err(&b).contains("too long"));
        let mut b = good();
        set64(&mut b, 8, 512);
        set32(&mut b, 16, 4);
        b[512..516].copy_from_slice(b"base");
        assert_eq!(Header::parse(&b).unwrap().backing_file.unwrap(), "base");
    }

    #[test]
    fn extensions() {
        let mut b = good();
        let at = ext(&mut b, 112, EXT_BACKING_FMT, b"qcow2");
        let at = ext(&mut b, at, EXT_DATA_FILE, b"data.raw");
        let at = ext(&mut b, at, 0x1234_5678, b"keep me");
        ext(&mut b, at, EXT_END, b"");
        set64(&mut b, 72, features::INCOMPAT_DATA_FILE);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.backing_fmt.as_deref(), Some("qcow2"));
        assert_eq!(h.data_file.as_deref(), Some("data.raw"));
        assert_eq!(
            h.unknown_extensions,
            vec![(0x1234_5678, b"keep me".to_vec())]
        );
    }

    #[test]
    fn extension_overruns() {
        // Length running past the cluster.
        let mut b = good();
        set32(&mut b, 112, 0x1234);
        set32(&mut b, 116, 65536);
        assert!(err(&b).contains("runs past"));
        // Extension area ends at the backing name.
        let mut b = good();
        set64(&mut b, 8, 128);
        set32(&mut b, 16, 1);
        ext(&mut b, 112, EXT_BACKING_FMT, b"qcow2qcow2qc");
        assert!(err(&b).contains("runs past"));
        // Backing format too long.
        let mut b = good();
        ext(&mut b, 112, EXT_BACKING_FMT, &[b'a'; 16]);
        assert!(err(&b).contains("too long"));
        // Crypto extension of the wrong size.
        let mut b = good();
        ext(&mut b, 112, EXT_CRYPTO, &[0; 8]);
        assert!(err(&b).contains("not 16"));
    }

    #[test]
    fn compression_type_rules() {
        let mut b = good();
        b[104] = 1;
        assert!(err(&b).contains("without the compression type"));
        set64(&mut b, 72, features::INCOMPAT_COMPRESSION);
        assert_eq!(Header::parse(&b).unwrap().compression, Compression::Zstd);
        b[104] = 9;
        assert!(err(&b).contains("compression type 9"));
        b[104] = 0;
        assert!(err(&b).contains("bit is set"));
    }

    #[test]
    fn extended_l2_needs_16k_clusters() {
        let mut b = good();
        set32(&mut b, 20, 13);
        set64(&mut b, 72, features::INCOMPAT_EXTL2);
        set64(&mut b, 24, 1 << 16);
        assert!(err(&b).contains("16 KiB"));
    }

    #[test]
    fn data_file_raw_rules() {
        let mut b = good();
        set64(&mut b, 88, features::AUTOCLEAR_DATA_FILE_RAW);
        assert!(err(&b).contains("no external data file"));
    }

    #[test]
    fn bitmaps_extension_limits() {
        let mut data = [0u8; 24];
        BigEndian::write_u32(&mut data[0..4], 0);
        let mut b = good();
        set64(&mut b, 88, features::AUTOCLEAR_BITMAPS);
        ext(&mut b, 112, EXT_BITMAPS, &data);
        assert!(err(&b).contains("0 bitmaps"));
        // Stale (autoclear bit clear): ignored.
        let mut b = good();
        ext(&mut b, 112, EXT_BITMAPS, &data);
        assert!(Header::parse(&b).unwrap().bitmaps.is_none());
    }

    #[test]
    fn short_input_is_padded_not_a_panic() {
        let b = good();
        assert!(Header::parse(&b[..104]).is_ok());
        assert!(Header::parse(&b[..10]).is_err());
        let v2 = {
            let mut b = good();
            set32(&mut b, 4, 2);
            b
        };
        let h = Header::parse(&v2[..72]).unwrap();
        assert_eq!(h.header_length, 72);
        assert_eq!(h.refcount_order, 4);
    }
}
