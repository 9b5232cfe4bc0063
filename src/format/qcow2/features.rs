//! Feature bits and the feature name table (header extension 0x6803f857).

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible bit this build understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Compatible feature bits.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Autoclear feature bits.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// Which of the three feature bitmaps a name table entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureKind {
    Incompatible,
    Compatible,
    Autoclear,
}

/// One entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    pub kind: FeatureKind,
    pub bit: u8,
    pub name: String,
}

/// Bytes per feature name table entry.
pub const ENTRY_SIZE: usize = 48;

/// Parses the feature name table as QEMU reads it: a last entry cut short
/// reads as zero-padded, and the first entry with an empty name ends the
/// table. Entries with an unknown type or a bit number above 63 are
/// skipped (the table is informational only).
pub fn parse_name_table(data: &[u8]) -> Vec<FeatureName> {
    let mut out = Vec::new();
    for chunk in data.chunks(ENTRY_SIZE) {
        let mut e = [0u8; ENTRY_SIZE];
        e[..chunk.len()].copy_from_slice(chunk);
        let raw = &e[2..];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        if end == 0 {
            break;
        }
        let kind = match e[0] {
            0 => FeatureKind::Incompatible,
            1 => FeatureKind::Compatible,
            2 => FeatureKind::Autoclear,
            _ => continue,
        };
        if e[1] > 63 {
            continue;
        }
        out.push(FeatureName {
            kind,
            bit: e[1],
            name: String::from_utf8_lossy(&raw[..end]).into_owned(),
        });
    }
    out
}

/// Describes the incompatible bits in `bits` for an error message as
/// QEMU's qcow2 does: the names the image's own table gives them, in the
/// table's order (cut at 46 bytes), then the rest as one hex mask.
pub fn describe_incompatible(bits: u64, table: &[FeatureName]) -> String {
    let mut rest = bits;
    let mut parts: Vec<String> = Vec::new();
    for f in table {
        // (parse_name_table keeps bits below 64 only)
        if f.kind == FeatureKind::Incompatible && rest & (1u64 << f.bit) != 0 {
            let mut end = f.name.len().min(46);
            while !f.name.is_char_boundary(end) {
                end -= 1;
            }
            parts.push(f.name[..end].to_string());
            rest &= !(1u64 << f.bit);
        }
    }
    if rest != 0 {
        parts.push(format!("Unknown incompatible feature: {rest:x}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: u8, bit: u8, name: &str) -> Vec<u8> {
        let mut e = vec![0u8; ENTRY_SIZE];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        e
    }

    #[test]
    fn names_unknown_bits_from_the_table() {
        let mut t = entry(0, 9, "time travel");
        t.extend(entry(1, 0, "lazy refcounts"));
        t.extend(entry(7, 1, "bogus type"));
        let names = parse_name_table(&t);
        assert_eq!(names.len(), 2);
        let d = describe_incompatible((1 << 9) | (1 << 40), &names);
        assert_eq!(d, "time travel, Unknown incompatible feature: 10000000000");
    }

    /// As QEMU reads the table (iotest 036): a short last entry counts,
    /// zero-padded; an entry with an empty name ends the table.
    #[test]
    fn short_last_entries_count_and_empty_names_end_the_table() {
        let mut t = vec![0u8, 63];
        t.extend(b"Test feature");
        let names = parse_name_table(&t);
        assert_eq!(names.len(), 1);
        assert_eq!(
            describe_incompatible(7 << 61, &names),
            "Test feature, Unknown incompatible feature: 6000000000000000"
        );
        let mut t = entry(0, 61, "a");
        t.extend(entry(0, 62, ""));
        t.extend(entry(0, 63, "c"));
        assert_eq!(parse_name_table(&t).len(), 1);
    }

    #[test]
    fn full_length_names_need_no_terminator() {
        let long = "x".repeat(46);
        let names = parse_name_table(&entry(2, 63, &long));
        assert_eq!(names[0].name, long);
        assert_eq!(names[0].kind, FeatureKind::Autoclear);
    }
}
