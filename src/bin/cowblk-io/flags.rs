//! A command's words as qemu-io reads them: the argument count, the
//! options its table declares, numbers and pattern bytes in QEMU's grammar.

use crate::shared::doc;
use crate::shared::getopt::Getopt;
use crate::table::COMMANDS;
use cowblk::io::ZeroFlags;

/// Largest single request, as qemu's block layer (INT_MAX, sector aligned).
pub const MAX_REQUEST: u64 = 2147483136;

pub fn find_cmd(name: &str) -> Option<&'static crate::spec::Cmd> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// How `write -z` zeroes: holes only with -u, as qemu-io.
pub fn zero_flags(f: &Flags) -> ZeroFlags {
    ZeroFlags {
        may_unmap: f.unmap,
        no_fallback: f.no_fallback,
        ..ZeroFlags::default()
    }
}

/// Why a command failed; the message has been printed already.
pub struct Failed;

pub type CmdResult = Result<(), Failed>;

/// Options of one command, qemu-io's getopt flags.
#[derive(Default)]
pub struct Flags {
    pub pattern: Option<u8>,
    /// write -s: the data comes from this file (zeros past its end).
    pub source: Option<String>,
    pub pattern_off: Option<u64>,
    pub pattern_len: Option<u64>,
    pub quiet: bool,
    pub verbose: bool,
    pub zero: bool,
    pub fua: bool,
    /// -u: with -z, the range may be deallocated (QEMU's MAY_UNMAP).
    pub unmap: bool,
    /// -n: fail rather than write zero bytes.
    pub no_fallback: bool,
    /// -C: machine-parsable statistics.
    pub cflag: bool,
    /// -b: the VM state area, not the disk.
    pub vmstate: bool,
    /// -c: compressed.
    pub compressed: bool,
    /// open -r / -s / -U / -o, truncate -m.
    pub read_only: bool,
    pub snapshot: bool,
    pub force_share: bool,
    pub options: Vec<String>,
    pub mode: Option<String>,
    pub args: Vec<String>,
}

/// A number in QEMU's grammar, with qemu-io's messages.
pub fn cvtnum(s: &str) -> Result<u64, Failed> {
    use cowblk::format::options::{cvtnum, SizeError};
    match cvtnum(s) {
        Ok(v) => Ok(v),
        Err(SizeError::TooLarge) => {
            println!("Parsing error: argument too large -- {s}");
            Err(Failed)
        }
        Err(SizeError::Invalid) => {
            println!(
                "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {s}"
            );
            Err(Failed)
        }
    }
}

/// A pattern byte as qemu_strtol reads it (decimal, 0x hex or 0 octal).
pub fn parse_pattern(s: &str) -> Result<u8, Failed> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        i64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<i64>().ok()
    };
    match v {
        Some(v) if (0..=255).contains(&v) => Ok(v as u8),
        _ => {
            println!("{s} is not a valid pattern byte");
            Err(Failed)
        }
    }
}

/// Parses `argv` (command name first) as qemu-io does: the word count
/// against the command's bounds first, then its options (from the table)
/// with getopt's messages and the command's usage line.
pub fn parse_flags(argv: &[String]) -> Result<Flags, Failed> {
    let name = argv[0].as_str();
    let info = find_cmd(name).ok_or(Failed)?;
    let n = argv.len() - 1;
    if n < info.min || info.max.is_some_and(|m| n > m) {
        let expect = match info.max {
            Some(m) if m == info.min => format!("expected {m} arguments"),
            Some(m) => format!("expected between {} and {m} arguments", info.min),
            None => format!("expected at least {} arguments", info.min),
        };
        eprintln!("bad argument count {n} to {name}, {expect}");
        return Err(Failed);
    }
    let mut f = Flags::default();
    let mut g = Getopt::new(argv[1..].to_vec(), info.opts);
    loop {
        let (o, v) = match g.next_opt() {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(e) => {
                eprintln!("{name}: {e}");
                println!("{}", doc::io_cmd_line(info));
                return Err(Failed);
            }
        };
        match o.short {
            'P' => f.pattern = Some(parse_pattern(&v)?),
            's' if name == "write" => f.source = Some(v),
            's' if name == "open" => f.snapshot = true,
            's' => f.pattern_off = Some(cvtnum(&v)?),
            'l' => f.pattern_len = Some(cvtnum(&v)?),
            'q' => f.quiet = true,
            'v' => f.verbose = true,
            'z' => f.zero = true,
            'f' => f.fua = true,
            'u' => f.unmap = true,
            'n' if name == "write" => f.no_fallback = true,
            'C' => f.cflag = true,
            'b' => f.vmstate = true,
            'c' => f.compressed = true,
            'r' => f.read_only = true,
            'U' => f.force_share = true,
            'o' => f.options.push(v),
            'm' => f.mode = Some(v),
            // Declared for compatibility and ignored (see the table).
            _ => {}
        }
    }
    f.args = g.positional();
    Ok(f)
}

/// read and write take more words than they use; like qemu-io, refuse
/// extras with the command's usage line.
pub fn exactly_two(f: &Flags, name: &str) -> Result<(), Failed> {
    if f.args.len() != 2 {
        if let Some(c) = find_cmd(name) {
            println!("{}", doc::io_cmd_line(c));
        }
        return Err(Failed);
    }
    Ok(())
}

/// Refuses requests QEMU would refuse; `given` is the argument as typed
/// (qemu-io echoes it, suffix and all).
pub fn check_len(len: u64, given: &str) -> Result<(), Failed> {
    check_len_note(len, given, "")
}

/// `check_len` with qemu-io's note for the command (" without -n" for write).
pub fn check_len_note(len: u64, given: &str, note: &str) -> Result<(), Failed> {
    if len > MAX_REQUEST {
        println!("length cannot exceed {MAX_REQUEST}{note}, given {given}");
        return Err(Failed);
    }
    Ok(())
}

/// Offsets and lengths: `off len [len..]`.
pub fn off_lens(args: &[String]) -> Result<(u64, Vec<u64>), Failed> {
    let off = cvtnum(&args[0])?;
    let lens = args[1..]
        .iter()
        .map(|a| cvtnum(a))
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = lens.iter().sum();
    check_len(total, &total.to_string())?;
    Ok((off, lens))
}
