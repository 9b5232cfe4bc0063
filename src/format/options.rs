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

/// Parses a size with an optional suffix: b, k/K, M, G, T, P, E (powers of
/// 1024, as qemu-img). Fractions like `1.5G` are accepted.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || Error::InvalidArgument(format!("invalid size '{s}'"));
    if t.is_empty() {
        return Err(bad());
    }
    let (num, mult): (&str, u64) = match t.chars().last().unwrap_or('0') {
        'b' | 'B' => (&t[..t.len() - 1], 1),
        'k' | 'K' => (&t[..t.len() - 1], 1 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        'p' | 'P' => (&t[..t.len() - 1], 1 << 50),
        'e' | 'E' => (&t[..t.len() - 1], 1 << 60),
        c if c.is_ascii_digit() => (t, 1),
        _ => return Err(bad()),
    };
    if num.is_empty() || num.starts_with('-') || num.starts_with('+') {
        return Err(bad());
    }
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| Error::TooLarge(format!("size '{s}' does not fit in 64 bits")));
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || !(0.0..18446744073709551615.0).contains(&v) {
        return Err(Error::TooLarge(format!("size '{s}'")));
    }
    Ok(v as u64)
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

    #[test]
    fn option_lists() {
        let mut o = CreateOptions::new();
        o.parse_into("backing_file=a,,b,size=1M").unwrap();
        assert_eq!(o.get("backing_file"), Some("a,b"));
        assert_eq!(o.get_size("size").unwrap(), Some(1 << 20));
        assert!(o.parse_into("novalue").is_err());
    }
}
