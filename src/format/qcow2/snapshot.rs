//! The internal snapshot table. Entries are parsed from byte slices; the
//! walk over the table takes a reader so it stays free of file types.

use super::header::{check_table, MAX_L1_BYTES};
use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

/// Fixed part of a table entry.
pub const ENTRY_HEADER: usize = 40;
/// QEMU's limits: extra data per entry, and the whole table.
pub const MAX_EXTRA_DATA: u32 = 1024;
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One snapshot table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    /// Virtual disk size at the snapshot (extra data), if recorded.
    pub disk_size: Option<u64>,
    /// Record/replay instruction count, if recorded and enabled.
    pub icount: Option<u64>,
    /// The raw extra data, kept for rewrites of the table.
    pub extra: Vec<u8>,
}

/// Total length (padded to 8) of the entry whose fixed part is `fixed`.
pub fn entry_len(fixed: &[u8]) -> Result<u64> {
    let extra = BigEndian::read_u32(&fixed[36..40]);
    if extra > MAX_EXTRA_DATA {
        return Err(Error::Corrupt(format!(
            "snapshot table entry has {extra} bytes of extra data (at most {MAX_EXTRA_DATA})"
        )));
    }
    let id = BigEndian::read_u16(&fixed[12..14]) as u64;
    let name = BigEndian::read_u16(&fixed[14..16]) as u64;
    Ok((ENTRY_HEADER as u64 + extra as u64 + id + name).div_ceil(8) * 8)
}

/// Parses one entry; `buf` holds at least `entry_len` bytes.
pub fn parse_entry(buf: &[u8]) -> Result<Snapshot> {
    let total = entry_len(buf)? as usize;
    if buf.len() < total {
        return Err(Error::Corrupt("snapshot table entry is truncated".into()));
    }
    let extra_len = BigEndian::read_u32(&buf[36..40]) as usize;
    let id_len = BigEndian::read_u16(&buf[12..14]) as usize;
    let name_len = BigEndian::read_u16(&buf[14..16]) as usize;
    let extra = &buf[ENTRY_HEADER..ENTRY_HEADER + extra_len];
    let ids = ENTRY_HEADER + extra_len;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut vm_state_size = BigEndian::read_u32(&buf[32..36]) as u64;
    if extra.len() >= 8 {
        vm_state_size = BigEndian::read_u64(&extra[0..8]);
    }
    let disk_size = (extra.len() >= 16).then(|| BigEndian::read_u64(&extra[8..16]));
    let icount = (extra.len() >= 24)
        .then(|| BigEndian::read_u64(&extra[16..24]))
        .filter(|&c| c != u64::MAX);
    Ok(Snapshot {
        l1_table_offset: BigEndian::read_u64(&buf[0..8]),
        l1_size: BigEndian::read_u32(&buf[8..12]),
        id: text(&buf[ids..ids + id_len]),
        name: text(&buf[ids + id_len..ids + id_len + name_len]),
        date_sec: BigEndian::read_u32(&buf[16..20]),
        date_nsec: BigEndian::read_u32(&buf[20..24]),
        vm_clock_nsec: BigEndian::read_u64(&buf[24..32]),
        vm_state_size,
        disk_size,
        icount,
        extra: extra.to_vec(),
    })
}

/// Reads `count` entries starting at `offset` with `read(buf, offset)`,
/// enforcing the table size limit as it goes (memory and time are bounded
/// by `count` <= 65536 and 64 MiB).
pub fn read_table(
    read: &dyn Fn(&mut [u8], u64) -> Result<()>,
    offset: u64,
    count: u32,
) -> Result<Vec<Snapshot>> {
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = 0u64;
    let mut fixed = [0u8; ENTRY_HEADER];
    for i in 0..count {
        read(&mut fixed, offset + pos)
            .map_err(|e| e.context(format!("snapshot table entry {i}")))?;
        let len = entry_len(&fixed).map_err(|e| e.context(format!("snapshot {i}")))?;
        if pos + len > MAX_TABLE_BYTES {
            return Err(Error::TooLarge(format!(
                "snapshot table exceeds QEMU's limit of {MAX_TABLE_BYTES} bytes at entry {i}"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        read(&mut buf, offset + pos)?;
        out.push(parse_entry(&buf)?);
        pos += len;
    }
    Ok(out)
}

/// Bytes of extra data QEMU 5+ writes for every entry (v2 and v3 alike):
/// vm_state_size_large, disk_size, icount.
pub const KNOWN_EXTRA: usize = 24;
/// QEMU's limit on the number of snapshots.
pub const MAX_SNAPSHOTS: usize = 65536;

impl Snapshot {
    /// A new entry as QEMU makes one: 24 bytes of extra data (v2 and v3),
    /// icount recorded as `icount` (qemu-img writes 0).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        name: String,
        l1_table_offset: u64,
        l1_size: u32,
        date: (u32, u32),
        vm_clock_nsec: u64,
        disk_size: u64,
        icount: Option<u64>,
    ) -> Snapshot {
        Snapshot {
            l1_table_offset,
            l1_size,
            id,
            name,
            date_sec: date.0,
            date_nsec: date.1,
            vm_clock_nsec,
            vm_state_size: 0,
            disk_size: Some(disk_size),
            icount,
            extra: Vec::new(),
        }
    }
}

/// Encodes one entry as QEMU 5+ rewrites it: the known 24 bytes of extra
/// data from the fields (`disk_size` when the entry has none recorded),
/// then every byte of extra data past them unchanged.
pub fn encode_entry(s: &Snapshot, disk_size: u64) -> Result<Vec<u8>> {
    let unknown = s.extra.get(KNOWN_EXTRA..).unwrap_or(&[]);
    let extra_len = KNOWN_EXTRA + unknown.len();
    if extra_len > MAX_EXTRA_DATA as usize {
        return Err(Error::TooLarge(format!(
            "snapshot '{}' would have {extra_len} bytes of extra data (at most {MAX_EXTRA_DATA})",
            s.id
        )));
    }
    let (id, name) = (s.id.as_bytes(), s.name.as_bytes());
    if id.len() > u16::MAX as usize || name.len() > u16::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "snapshot id or name longer than {} bytes",
            u16::MAX
        )));
    }
    let mut b = vec![0u8; ENTRY_HEADER + extra_len];
    BigEndian::write_u64(&mut b[0..8], s.l1_table_offset);
    BigEndian::write_u32(&mut b[8..12], s.l1_size);
    BigEndian::write_u16(&mut b[12..14], id.len() as u16);
    BigEndian::write_u16(&mut b[14..16], name.len() as u16);
    BigEndian::write_u32(&mut b[16..20], s.date_sec);
    BigEndian::write_u32(&mut b[20..24], s.date_nsec);
    BigEndian::write_u64(&mut b[24..32], s.vm_clock_nsec);
    // The 32-bit field holds the low half, as QEMU writes it.
    BigEndian::write_u32(&mut b[32..36], s.vm_state_size as u32);
    BigEndian::write_u32(&mut b[36..40], extra_len as u32);
    let e = &mut b[ENTRY_HEADER..];
    BigEndian::write_u64(&mut e[0..8], s.vm_state_size);
    BigEndian::write_u64(&mut e[8..16], s.disk_size.unwrap_or(disk_size));
    BigEndian::write_u64(&mut e[16..24], s.icount.unwrap_or(u64::MAX));
    e[KNOWN_EXTRA..].copy_from_slice(unknown);
    b.extend_from_slice(id);
    b.extend_from_slice(name);
    b.resize(b.len().div_ceil(8) * 8, 0);
    Ok(b)
}

/// Encodes a whole table (`disk_size` for entries without one), enforcing
/// QEMU's limits on the count and the size.
pub fn encode_table(list: &[Snapshot], disk_size: u64) -> Result<Vec<u8>> {
    if list.len() > MAX_SNAPSHOTS {
        return Err(Error::TooLarge(format!(
            "{} snapshots (QEMU's limit is {MAX_SNAPSHOTS})",
            list.len()
        )));
    }
    let mut out = Vec::new();
    for s in list {
        out.extend(encode_entry(s, disk_size)?);
        if out.len() as u64 > MAX_TABLE_BYTES {
            return Err(Error::TooLarge(format!(
                "the snapshot table would exceed QEMU's limit of {MAX_TABLE_BYTES} bytes"
            )));
        }
    }
    Ok(out)
}

/// The id QEMU gives a new snapshot: one more than the largest numeric id
/// (ids that are not numbers count as 0).
pub fn next_id(list: &[Snapshot]) -> String {
    let max = list
        .iter()
        .map(|s| s.id.parse::<u64>().unwrap_or(0))
        .max()
        .unwrap_or(0);
    (max + 1).to_string()
}

/// Checks a snapshot's L1 table before it is loaded (CVE-2014-0143).
pub fn check_l1(s: &Snapshot, cluster_bits: u32) -> Result<()> {
    let bytes = s.l1_size as u64 * 8;
    if bytes > MAX_L1_BYTES {
        return Err(Error::TooLarge(format!(
            "snapshot '{}' has an L1 table of {} entries, above QEMU's 32 MiB limit",
            s.id, s.l1_size
        )));
    }
    check_table(
        &format!("snapshot '{}' L1 table", s.id),
        s.l1_table_offset,
        bytes,
        cluster_bits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn entry(id: &str, name: &str, extra: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; ENTRY_HEADER];
        BigEndian::write_u64(&mut b[0..8], 0x40000);
        BigEndian::write_u32(&mut b[8..12], 2);
        BigEndian::write_u16(&mut b[12..14], id.len() as u16);
        BigEndian::write_u16(&mut b[14..16], name.len() as u16);
        BigEndian::write_u32(&mut b[16..20], 1_700_000_000);
        BigEndian::write_u32(&mut b[32..36], 77);
        BigEndian::write_u32(&mut b[36..40], extra.len() as u32);
        b.extend_from_slice(extra);
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(name.as_bytes());
        b.resize(b.len().div_ceil(8) * 8, 0);
        b
    }

    #[test]
    fn entries_with_and_without_extra_data() {
        let mut extra = vec![0u8; 24];
        BigEndian::write_u64(&mut extra[0..8], 1 << 33);
        BigEndian::write_u64(&mut extra[8..16], 1 << 20);
        BigEndian::write_u64(&mut extra[16..24], u64::MAX);
        let mut table = entry("1", "first", &extra);
        table.extend(entry("2", "second", &[]));
        let read = |buf: &mut [u8], off: u64| {
            let o = off as usize;
            let n = buf.len().min(table.len().saturating_sub(o));
            buf[..n].copy_from_slice(&table[o..o + n]);
            buf[n..].fill(0);
            Ok(())
        };
        let s = read_table(&read, 0, 2).unwrap();
        assert_eq!(s[0].name, "first");
        assert_eq!(s[0].vm_state_size, 1 << 33);
        assert_eq!(s[0].disk_size, Some(1 << 20));
        assert_eq!(s[0].icount, None);
        assert_eq!(s[1].id, "2");
        assert_eq!(s[1].vm_state_size, 77);
        assert_eq!(s[1].disk_size, None);
        check_l1(&s[0], 16).unwrap();
    }

    #[test]
    fn limits() {
        let mut e = entry("1", "x", &[]);
        BigEndian::write_u32(&mut e[36..40], 1025);
        assert!(entry_len(&e)
            .unwrap_err()
            .to_string()
            .contains("extra data"));
        // 65535-byte ids and names: the table limit stops the walk.
        let mut e = entry("", "", &[]);
        BigEndian::write_u16(&mut e[12..14], 65535);
        BigEndian::write_u16(&mut e[14..16], 65535);
        let read = |buf: &mut [u8], _off: u64| {
            buf[..ENTRY_HEADER].copy_from_slice(&e[..ENTRY_HEADER]);
            Ok(())
        };
        let err = read_table(&read, 0, 65536).unwrap_err().to_string();
        assert!(err.contains("snapshot table exceeds"), "{err}");
        let mut s = parse_entry(&entry("1", "x", &[])).unwrap();
        s.l1_size = (MAX_L1_BYTES / 8 + 1) as u32;
        assert!(check_l1(&s, 16).unwrap_err().to_string().contains("32 MiB"));
        s.l1_size = 1;
        s.l1_table_offset = 0x40100;
        assert!(check_l1(&s, 16)
            .unwrap_err()
            .to_string()
            .contains("aligned"));
        assert!(parse_entry(&entry("1", "x", &[])[..40]).is_err());
    }
    #[test]
    fn encode_keeps_unknown_extra_data() {
        let mut extra = vec![0u8; 40];
        BigEndian::write_u64(&mut extra[8..16], 1 << 20);
        BigEndian::write_u64(&mut extra[16..24], 5);
        for (i, b) in extra[24..].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let raw = entry("7", "keep", &extra);
        let s = parse_entry(&raw).unwrap();
        let out = encode_entry(&s, 99).unwrap();
        let back = parse_entry(&out).unwrap();
        assert_eq!(back.extra, extra);
        assert_eq!(back.icount, Some(5));
        // Short extra data (old QEMU) grows to 24 bytes, size filled in.
        let old = parse_entry(&entry("1", "old", &[])).unwrap();
        let back = parse_entry(&encode_entry(&old, 4096).unwrap()).unwrap();
        assert_eq!(back.extra.len(), KNOWN_EXTRA);
        assert_eq!(back.disk_size, Some(4096));
        assert_eq!(back.vm_state_size, 77);
        assert_eq!(back.icount, None);
        assert_eq!(next_id(&[old.clone(), s.clone()]), "8");
        assert_eq!(next_id(&[]), "1");
    }
}
