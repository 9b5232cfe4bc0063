//! The add-cow header: parsing and serialising, no I/O.
//! Layout: docs/specs/add-cow.txt.

use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

pub const MAGIC: &[u8; 8] = b"ADD_COW\xff";
pub const VERSION: u32 = 1;
/// Bytes of the header; the bitmap starts here.
pub const HEADER_SIZE: u64 = 2560;
pub const NAME_LEN: usize = 1024;
pub const BACKING_FMT_LEN: usize = 16;

const OFF_VERSION: usize = 8;
const OFF_BACKING: usize = 12;
const OFF_IMAGE: usize = 1036;
pub const OFF_SIZE: usize = 2060;
/// The header's last sector: it holds the size, and a resize rewrites it
/// alone, in one aligned 512-byte write.
pub const SIZE_SECTOR: usize = 2048;
const OFF_CLUSTER_BITS: usize = 2068;
const OFF_INCOMPAT: usize = 2072;
const OFF_COMPAT: usize = 2080;
const OFF_AUTOCLEAR: usize = 2088;
const OFF_BACKING_FMT: usize = 2096;
const OFF_STORE_OFFSET: usize = 2112;
const OFF_STORE_LEN: usize = 2120;
const OFF_STORE_CRC: usize = 2128;
const END_DEFINED: usize = OFF_STORE_CRC + 4;

/// Compatible feature bit: the header's store fields name a key/value
/// metadata store (docs/specs/metadata.txt).
pub const COMPAT_METADATA: u64 = 1;

/// Incompatible feature bits this version understands (none yet).
pub const INCOMPAT_KNOWN: u64 = 0;
/// Autoclear feature bits this version understands (none yet).
pub const AUTOCLEAR_KNOWN: u64 = 0;

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest virtual size (QEMU's BDRV_MAX_LENGTH: INT64_MAX rounded down to 1 GiB).
pub const MAX_SIZE: u64 = (i64::MAX as u64) & !((1u64 << 30) - 1);

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub backing_file: String,
    pub image_file: String,
    /// As stored: 0 means "the image file's length".
    pub size: u64,
    /// Effective cluster bits (a stored 0 reads as 9).
    pub cluster_bits: u32,
    pub incompat: u64,
    pub compat: u64,
    pub autoclear: u64,
    pub backing_fmt: String,
    /// The metadata store (offset, length, CRC-32C of its superblock),
    /// present exactly when `compat` has `COMPAT_METADATA`.
    pub store: Option<StoreRef>,
}

/// Where the metadata store lies in the add-cow file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreRef {
    pub offset: u64,
    pub len: u64,
    /// CRC-32C of the store's 64-byte superblock: the header names the
    /// store it was written with, not whatever lies there now.
    pub crc: u32,
}

fn read_name(buf: &[u8], what: &str) -> Result<String> {
    let nul = buf.iter().position(|&b| b == 0).ok_or_else(|| {
        Error::Corrupt(format!(
            "add-cow {what} name is not NUL-terminated within its {} bytes",
            buf.len()
        ))
    })?;
    String::from_utf8(buf[..nul].to_vec())
        .map_err(|_| Error::Corrupt(format!("add-cow {what} name is not valid UTF-8")))
}

fn write_name(buf: &mut [u8], name: &str, what: &str) -> Result<()> {
    let b = name.as_bytes();
    if b.len() >= buf.len() {
        return Err(Error::InvalidArgument(format!(
            "{what} name '{name}' is longer than {} bytes",
            buf.len() - 1
        )));
    }
    if b.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "{what} name contains a NUL byte"
        )));
    }
    buf[..b.len()].copy_from_slice(b);
    Ok(())
}

/// Probe score for the first bytes of a file.
pub fn probe(buf: &[u8]) -> i32 {
    if buf.len() >= 12 && &buf[..8] == MAGIC && BigEndian::read_u32(&buf[8..12]) == VERSION {
        100
    } else {
        0
    }
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Parses the first `HEADER_SIZE` bytes. `buf` shorter than that means
    /// the file is truncated.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < HEADER_SIZE as usize {
            return Err(Error::Corrupt(format!(
                "add-cow header is truncated: {} of {HEADER_SIZE} bytes",
                buf.len()
            )));
        }
        if &buf[..8] != MAGIC {
            return Err(Error::Corrupt(
                "add-cow magic is wrong (expected 'ADD_COW\\xff')".into(),
            ));
        }
        let version = BigEndian::read_u32(&buf[OFF_VERSION..]);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "add-cow version {version} (this build reads version {VERSION})"
            )));
        }
        let incompat = BigEndian::read_u64(&buf[OFF_INCOMPAT..]);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Unsupported(format!(
                "add-cow incompatible feature bits {:#x}",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        let backing_file = read_name(&buf[OFF_BACKING..OFF_BACKING + NAME_LEN], "backing file")?;
        let image_file = read_name(&buf[OFF_IMAGE..OFF_IMAGE + NAME_LEN], "image file")?;
        if image_file.is_empty() {
            return Err(Error::Corrupt("add-cow image file name is empty".into()));
        }
        let size = BigEndian::read_u64(&buf[OFF_SIZE..]);
        if size > MAX_SIZE {
            return Err(Error::Corrupt(format!(
                "add-cow virtual size {size} exceeds the maximum {MAX_SIZE}"
            )));
        }
        let stored_bits = BigEndian::read_u32(&buf[OFF_CLUSTER_BITS..]);
        let cluster_bits = match stored_bits {
            0 => MIN_CLUSTER_BITS,
            b @ MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS => b,
            b => {
                return Err(Error::Corrupt(format!(
                    "add-cow cluster_bits {b} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
                )))
            }
        };
        let backing_fmt = read_name(
            &buf[OFF_BACKING_FMT..OFF_BACKING_FMT + BACKING_FMT_LEN],
            "backing format",
        )?;
        let compat = BigEndian::read_u64(&buf[OFF_COMPAT..]);
        // Without the bit these bytes are reserved, whatever they hold.
        let store = if compat & COMPAT_METADATA != 0 {
            let r = StoreRef {
                offset: BigEndian::read_u64(&buf[OFF_STORE_OFFSET..]),
                len: BigEndian::read_u64(&buf[OFF_STORE_LEN..]),
                crc: BigEndian::read_u32(&buf[OFF_STORE_CRC..]),
            };
            if r.offset < HEADER_SIZE
                || !r.offset.is_multiple_of(512)
                || r.len < 64
                || r.offset.checked_add(r.len).is_none_or(|e| e > MAX_SIZE)
            {
                return Err(Error::Corrupt(format!(
                    "add-cow metadata store of {} bytes at offset {}: the store must be at least 64 bytes at a 512-byte aligned offset past the header",
                    r.len, r.offset
                )));
            }
            Some(r)
        } else {
            None
        };
        Ok(Header {
            store,
            backing_file,
            image_file,
            size,
            cluster_bits,
            incompat,
            compat,
            // Autoclear bits we do not know are cleared on the next write.
            autoclear: BigEndian::read_u64(&buf[OFF_AUTOCLEAR..]),
            backing_fmt,
        })
    }

    /// Serialises into `HEADER_SIZE` bytes.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; HEADER_SIZE as usize];
        buf[..8].copy_from_slice(MAGIC);
        BigEndian::write_u32(&mut buf[OFF_VERSION..], VERSION);
        write_name(
            &mut buf[OFF_BACKING..OFF_BACKING + NAME_LEN],
            &self.backing_file,
            "backing file",
        )?;
        if self.image_file.is_empty() {
            return Err(Error::InvalidArgument(
                "add-cow needs an image file name".into(),
            ));
        }
        write_name(
            &mut buf[OFF_IMAGE..OFF_IMAGE + NAME_LEN],
            &self.image_file,
            "image file",
        )?;
        BigEndian::write_u64(&mut buf[OFF_SIZE..], self.size);
        BigEndian::write_u32(&mut buf[OFF_CLUSTER_BITS..], self.cluster_bits);
        BigEndian::write_u64(&mut buf[OFF_INCOMPAT..], self.incompat);
        let mut compat = self.compat & !COMPAT_METADATA;
        if let Some(r) = self.store {
            compat |= COMPAT_METADATA;
            BigEndian::write_u64(&mut buf[OFF_STORE_OFFSET..], r.offset);
            BigEndian::write_u64(&mut buf[OFF_STORE_LEN..], r.len);
            BigEndian::write_u32(&mut buf[OFF_STORE_CRC..], r.crc);
        }
        BigEndian::write_u64(&mut buf[OFF_COMPAT..], compat);
        BigEndian::write_u64(&mut buf[OFF_AUTOCLEAR..], self.autoclear & AUTOCLEAR_KNOWN);
        write_name(
            &mut buf[OFF_BACKING_FMT..OFF_BACKING_FMT + BACKING_FMT_LEN],
            &self.backing_fmt,
            "backing format",
        )?;
        debug_assert!(END_DEFINED <= HEADER_SIZE as usize);
        Ok(buf)
    }

    /// Bytes `SIZE_SECTOR..HEADER_SIZE` of the serialised header.
    pub fn size_sector(&self) -> Result<Vec<u8>> {
        Ok(self.serialize()?[SIZE_SECTOR..].to_vec())
    }

    /// Bytes of bitmap for `size` bytes of guest.
    pub fn bitmap_len(size: u64, cluster_bits: u32) -> u64 {
        let clusters = size.div_ceil(1u64 << cluster_bits);
        clusters.div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            backing_file: "base.qcow2".into(),
            image_file: "disk.raw".into(),
            size: 1 << 30,
            cluster_bits: 16,
            incompat: 0,
            compat: 0,
            autoclear: 0,
            backing_fmt: "qcow2".into(),
            store: None,
        }
    }

    #[test]
    fn roundtrip() {
        let h = sample();
        let b = h.serialize().unwrap();
        assert_eq!(b.len(), 2560);
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(Header::parse(&b).unwrap(), h);
        assert_eq!(probe(&b), 100);
    }

    #[test]
    fn seed_2012_layout_reads_as_sectors_and_file_length() {
        let mut b = vec![0u8; 2560];
        b[..8].copy_from_slice(MAGIC);
        b[11] = 1;
        b[12..20].copy_from_slice(b"base.img");
        b[1036..1044].copy_from_slice(b"test.raw");
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.cluster_bits, 9);
        assert_eq!(h.size, 0);
        assert_eq!(h.backing_fmt, "");
    }

    #[test]
    fn refuses_bad_headers() {
        let good = sample().serialize().unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(Header::parse(&b).unwrap_err().to_string().contains("magic"));
        let mut b = good.clone();
        b[11] = 2;
        let e = Header::parse(&b).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert_eq!(e.errno(), libc::ENOTSUP);
        let mut b = good.clone();
        b[OFF_INCOMPAT + 7] = 4;
        assert!(Header::parse(&b).unwrap_err().to_string().contains("0x4"));
        let mut b = good.clone();
        b[OFF_BACKING..OFF_BACKING + NAME_LEN].fill(b'a');
        assert!(Header::parse(&b).unwrap_err().to_string().contains("NUL"));
        let mut b = good.clone();
        BigEndian::write_u32(&mut b[OFF_CLUSTER_BITS..], 22);
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("cluster_bits"));
        assert!(Header::parse(&good[..100]).is_err());
        let mut h = sample();
        h.backing_file = "x".repeat(1024);
        assert!(h.serialize().is_err());
    }

    #[test]
    fn size_sector_is_the_aligned_sector_holding_the_size() {
        const { assert!(SIZE_SECTOR.is_multiple_of(512) && SIZE_SECTOR + 512 == HEADER_SIZE as usize) };
        const { assert!(SIZE_SECTOR <= OFF_SIZE && OFF_SIZE + 8 <= HEADER_SIZE as usize) };
        let h = sample();
        let sec = h.size_sector().unwrap();
        assert_eq!(sec, h.serialize().unwrap()[SIZE_SECTOR..]);
        assert_eq!(BigEndian::read_u64(&sec[OFF_SIZE - SIZE_SECTOR..]), 1 << 30);
    }

    #[test]
    fn store_fields_round_trip_and_hostile_ones_are_refused() {
        let mut h = sample();
        h.store = Some(StoreRef {
            offset: 8192,
            len: 100,
            crc: 0xdead_beef,
        });
        let b = h.serialize().unwrap();
        let mut want = h.clone();
        want.compat |= COMPAT_METADATA;
        assert_eq!(Header::parse(&b).unwrap(), want);
        // The fields share the size's sector: one write switches stores.
        const { assert!(SIZE_SECTOR <= OFF_COMPAT && END_DEFINED <= HEADER_SIZE as usize) };
        for (off, len) in [
            (8193u64, 100u64),
            (512, 100),
            (8192, 10),
            (u64::MAX - 511, 1000),
        ] {
            let mut b = b.clone();
            BigEndian::write_u64(&mut b[OFF_STORE_OFFSET..], off);
            BigEndian::write_u64(&mut b[OFF_STORE_LEN..], len);
            let e = Header::parse(&b).unwrap_err().to_string();
            assert!(e.contains("metadata store"), "{e}");
        }
        // Without the bit the fields are reserved and ignored.
        let mut b = sample().serialize().unwrap();
        b[OFF_STORE_OFFSET] = 0xff;
        assert_eq!(Header::parse(&b).unwrap().store, None);
    }

    #[test]
    fn bitmap_len_rounds_up() {
        assert_eq!(Header::bitmap_len(0, 16), 0);
        assert_eq!(Header::bitmap_len(1, 16), 1);
        assert_eq!(Header::bitmap_len(8 << 16, 16), 1);
        assert_eq!(Header::bitmap_len((8 << 16) + 1, 16), 2);
    }
}
