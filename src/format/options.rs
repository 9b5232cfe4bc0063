//! Creation options in qemu-img's `-o key=value,...` style.

use crate::error::{Error, Result};

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptKind {
    Size,
    Str,
    Bool,
    Number,
}

/// One option a driver accepts at creation.
#[derive(Clone, Copy, Debug)]
pub struct OptDesc {
    pub name: &'static str,
    pub kind: OptKind,
    pub help: &'static str,
}

/// Names shared by every driver.
pub const SIZE: &str = "size";
pub const BACKING_FILE: &str = "backing_file";
pub const BACKING_FMT: &str = "backing_fmt";

/// Options given to `create`, as ordered key/value pairs.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pairs: Vec<(String, String)>,
}

impl CreateOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (a later value replaces an earlier one).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        if let Some(p) = self.pairs.iter_mut().find(|p| p.0 == key) {
            p.1 = value;
        } else {
            self.pairs.push((key, value));
        }
        self
    }

    /// Parses `a=b,c=d` (a `,,` stands for a literal comma, as in QEMU).
    pub fn parse_into(&mut self, s: &str) -> Result<()> {
        let mut cur = String::new();
        let mut items = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    items.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        items.push(cur);
        for it in items.into_iter().filter(|i| !i.is_empty()) {
            match it.split_once('=') {
                Some((k, v)) => {
                    self.set(k, v);
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "option '{it}' has no value (expected key=value)"
                    )))
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|p| p.0 == key).map(|p| p.1.as_str())
    }

    /// A non-empty string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn get_size(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| parse_size(v).map_err(|e| e.context(format!("option '{key}'"))))
            .transpose()
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v {
                "on" | "true" | "yes" | "1" => Ok(true),
                "off" | "false" | "no" | "0" => Ok(false),
                _ => Err(Error::InvalidArgument(format!(
                    "option '{key}' expects on or off, not '{v}'"
                ))),
            })
            .transpose()
    }

    /// Every key, for checking against a driver's list.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|p| p.0.as_str())
    }

    /// Refuses keys the driver does not know, naming them.
    pub fn check_known(&self, fmt: &str, known: &[OptDesc]) -> Result<()> {
        for k in self.keys() {
            if !known.iter().any(|d| d.name == k) {
                return Err(Error::InvalidArgument(format!(
                    "format '{fmt}' does not support option '{k}'"
                )));
            }
        }
        Ok(())
    }
}

/// Why a size did not parse (qemu_strtosz's -EINVAL and -ERANGE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number, or an extraneous or unknown suffix.
    Invalid,
    /// Does not fit in 64 bits (or, from `cvtnum`, in 63).
    TooLarge,
}

/// Parses a size the way QEMU's `qemu_strtosz` (and so `qemu-img` and
/// `qemu-io`) does, so a script's numbers mean the same to both tools:
/// decimal digits with an optional `+`; or `0x` hex (no fraction, no
/// suffix); an optional decimal fraction (`1.5k`, `.5k`, `1.`), which
/// needs a suffix unless it is zero; no exponents; an optional suffix
/// `B K M G T P E` in either case (powers of 1024). A scaled fraction is
/// exact to 64 fractional bits and rounded half up.
pub fn strtosz(s: &str) -> std::result::Result<u64, SizeError> {
    use SizeError::*;
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'+'));
    let start = i;
    let mut val: u64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        val = val
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b[i] - b'0')))
            .ok_or(TooLarge)?;
        i += 1;
    }
    let int_digits = i - start;
    if int_digits > 0 && val == 0 && matches!(b.get(i), Some(b'x' | b'X')) {
        // strtoull(.., 16) takes a "0x" prefix only before a hex digit and
        // only at the start: "00x10" and "0x" stop at the 'x'.
        if int_digits != 1 || !b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) {
            return Err(Invalid);
        }
        i += 1;
        let h = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i < b.len() {
            return Err(Invalid);
        }
        return u64::from_str_radix(&s[h..i], 16).map_err(|_| TooLarge);
    }
    // The fraction as a double (what QEMU's strtod sees), and its digits.
    let mut frac = 0.0f64;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        let f = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            frac_digits += 1;
        }
        if matches!(b.get(i), Some(b'e' | b'E'))
            && (frac_digits > 0 || int_digits > 0)
            && exponent_follows(&b[i + 1..])
        {
            return Err(Invalid);
        }
        if frac_digits > 0 {
            frac = s[f..i].parse::<f64>().map_err(|_| Invalid)?;
        }
    }
    if int_digits == 0 && frac_digits == 0 {
        return Err(Invalid);
    }
    let mul: u64 = match b.get(i).map(u8::to_ascii_uppercase) {
        None => 1,
        Some(c) => {
            let m = match c {
                b'B' => 1,
                b'K' => 1 << 10,
                b'M' => 1 << 20,
                b'G' => 1 << 30,
                b'T' => 1 << 40,
                b'P' => 1 << 50,
                b'E' => 1 << 60,
                _ => return Err(Invalid),
            };
            i += 1;
            m
        }
    };
    if i < b.len() {
        return Err(Invalid);
    }
    if mul == 1 {
        // A fraction of a byte is refused, even one too small to count.
        return if frac != 0.0 { Err(Invalid) } else { Ok(val) };
    }
    // 64.64 fixed point times the unit, rounded half up.
    let valf = (frac * 18446744073709551616.0) as u64;
    let whole = u128::from(val) * u128::from(mul);
    let part = u128::from(valf) * u128::from(mul);
    let total = whole + (part >> 64) + ((part >> 63) & 1);
    u64::try_from(total).map_err(|_| TooLarge)
}

/// Whether an exponent (optional sign, then digits) starts `b`.
fn exponent_follows(b: &[u8]) -> bool {
    let b = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    b.first().is_some_and(u8::is_ascii_digit)
}

/// `strtosz` bounded to 2^63 - 1, as qemu-io's and qemu-img's `cvtnum`
/// bound offsets and sizes.
pub fn cvtnum(s: &str) -> std::result::Result<u64, SizeError> {
    match strtosz(s)? {
        v if v > i64::MAX as u64 => Err(SizeError::TooLarge),
        v => Ok(v),
    }
}

/// Parses a size for an option value (`-o size=...`): QEMU's grammar
/// (`cvtnum`), with errors naming the value.
pub fn parse_size(s: &str) -> Result<u64> {
    cvtnum(s).map_err(|e| match e {
        SizeError::Invalid => Error::InvalidArgument(format!("invalid size '{s}'")),
        SizeError::TooLarge => Error::TooLarge(format!("size '{s}' is above 2^63 - 1")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    // What QEMU 10's qemu-io and qemu-img answered for each input on this
    // machine (tests/numbers.rs asks qemu-io itself for many more).
    #[test]
    fn qemu_grammar() {
        use SizeError::*;
        for (s, want) in [
            ("0x10", Ok(16)),
            ("0X10", Ok(16)),
            ("+0x10", Ok(16)),
            ("0x", Err(Invalid)),
            ("00x10", Err(Invalid)),
            ("0x1k", Err(Invalid)),
            ("0x1.5", Err(Invalid)),
            ("010", Ok(10)),
            ("+5", Ok(5)),
            ("0.5", Err(Invalid)),
            ("1.5", Err(Invalid)),
            ("1.0", Ok(1)),
            ("1.", Ok(1)),
            ("1.b", Ok(1)),
            ("1.5b", Err(Invalid)),
            ("5.000000000000000000001", Err(Invalid)),
            ("1.5k", Ok(1536)),
            (".5k", Ok(512)),
            ("1.k", Ok(1024)),
            (".", Err(Invalid)),
            ("k", Err(Invalid)),
            (".k", Err(Invalid)),
            ("0.1k", Ok(102)),
            ("1.001k", Ok(1025)),
            ("0.0005k", Ok(1)),
            ("0.0001k", Ok(0)),
            ("0.99999999999999999999k", Ok(1024)),
            ("1e3", Err(Invalid)),
            ("1.e3", Err(Invalid)),
            ("1.5ek", Err(Invalid)),
            ("1.5e", Ok(3 << 59)),
            ("1e", Ok(1 << 60)),
            ("0e", Ok(0)),
            ("7E", Ok(7 << 60)),
            ("8E", Err(TooLarge)),
            ("8191P", Ok(8191 << 50)),
            ("8192P", Err(TooLarge)),
            ("9223372036854775807", Ok(i64::MAX as u64)),
            ("9223372036854775808", Err(TooLarge)),
            ("18446744073709551615", Err(TooLarge)),
            ("99999999999999999999", Err(TooLarge)),
            ("0x8000000000000000", Err(TooLarge)),
            ("1kB", Err(Invalid)),
            ("abc", Err(Invalid)),
            ("", Err(Invalid)),
            ("inf", Err(Invalid)),
            ("-5", Err(Invalid)),
        ] {
            assert_eq!(cvtnum(s), want, "input {s:?}");
        }
        // Past 2^63 only cvtnum's bound refuses; 2^64 overflows strtosz.
        assert_eq!(strtosz("8E"), Ok(8 << 60));
        assert_eq!(strtosz("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(strtosz("16E"), Err(TooLarge));
    }

    #[test]
    fn option_lists() {
        let mut o = CreateOptions::new();
        o.parse_into("backing_file=a,,b,size=1M").unwrap();
        assert_eq!(o.get("backing_file"), Some("a,b"));
        assert_eq!(o.get_size("size").unwrap(), Some(1 << 20));
        assert!(o.parse_into("novalue").is_err());
    }
}
