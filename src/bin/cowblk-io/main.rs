//! cowblk-io: qemu-io's syntax and output over the cowblk library.
//!
//! `cowblk-io [-f FMT] [-r] [-c CMD]... FILE`; commands run in order, each
//! printing what qemu-io prints; the exit code is 1 if any failed.

#[path = "../shared/mod.rs"]
mod shared;

use cowblk::io::ZeroFlags;
use cowblk::{Image, OpenOptions};
use shared::{cvtstr, errno_text};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PROG: &str = "cowblk-io";
/// Largest single request, as qemu's block layer (INT_MAX, sector aligned).
const MAX_REQUEST: u64 = 2147483136;

const USAGE: &str = "Usage: cowblk-io [OPTIONS]... [-c STRING]... [file]
Exercise a disk image with qemu-io's commands, through the cowblk library.

  -c, --cmd STRING     execute command with its arguments from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      open read-only
      --confined       untrusted image: files it names must be regular files
                       inside its directory (see docs/CLI.md)
  -n, --nocache        accepted for compatibility (host cache is not bypassed)
  -t, --cache=MODE     accepted for compatibility
  -d, --discard=MODE   accepted for compatibility
  -i, --aio=MODE       accepted for compatibility (aio runs on threads)
  -U, --force-share    force shared permissions (read-only opens only)
  -h, --help           display this help and exit
  -V, --version        output version information and exit

Without -c, commands are read from standard input.
See 'cowblk-io -c help' for the commands.";

/// One command's table entry: name, argument synopsis, description.
struct CmdInfo {
    name: &'static str,
    args: &'static str,
    help: &'static str,
    min: usize,
    max: Option<usize>,
}

const CMDS: &[CmdInfo] = &[
    CmdInfo {
        name: "aio_flush",
        args: "",
        help: "completes all outstanding aio requests",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "aio_read",
        args: "[-Ciqrv] [-P pattern] off len [len..]",
        help: "asynchronously reads a number of bytes",
        min: 2,
        max: None,
    },
    CmdInfo {
        name: "aio_write",
        args: "[-Cfiqruz] [-P pattern] off len [len..]",
        help: "asynchronously writes a number of bytes",
        min: 2,
        max: None,
    },
    CmdInfo {
        name: "alloc",
        args: "offset [count]",
        help: "checks if offset is allocated in the file",
        min: 1,
        max: Some(2),
    },
    CmdInfo {
        name: "discard",
        args: "[-Cq] off len",
        help: "discards a number of bytes at a specified offset",
        min: 2,
        max: Some(2),
    },
    CmdInfo {
        name: "flush",
        args: "",
        help: "flush all in-core file state to disk",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "help",
        args: "[command]",
        help: "help for one or all commands",
        min: 0,
        max: Some(1),
    },
    CmdInfo {
        name: "info",
        args: "",
        help: "prints information about the current file",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "length",
        args: "",
        help: "gets the length of the current file",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "open",
        args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
        help: "open the file specified by path",
        min: 1,
        max: None,
    },
    CmdInfo {
        name: "close",
        args: "",
        help: "close the current open file",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "map",
        args: "",
        help: "prints the allocated areas of a file",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "quit",
        args: "",
        help: "exit the program",
        min: 0,
        max: Some(0),
    },
    CmdInfo {
        name: "read",
        args: "[-abCqrv] [-P pattern [-s off] [-l len]] off len",
        help: "reads a number of bytes at a specified offset",
        min: 2,
        max: None,
    },
    CmdInfo {
        name: "readv",
        args: "[-Cqrv] [-P pattern] off len [len..]",
        help: "reads a number of bytes at a specified offset",
        min: 2,
        max: None,
    },
    CmdInfo {
        name: "sleep",
        args: "ms",
        help: "waits for the given value in milliseconds",
        min: 1,
        max: Some(1),
    },
    CmdInfo {
        name: "truncate",
        args: "[-m prealloc_mode] off",
        help: "truncates the current file at the given offset",
        min: 1,
        max: Some(1),
    },
    CmdInfo {
        name: "write",
        args: "[-bcCfnqruz] [-P pattern | -s source_file] off len",
        help: "writes a number of bytes at a specified offset",
        min: 0,
        max: None,
    },
    CmdInfo {
        name: "writev",
        args: "[-Cfqr] [-P pattern] off len [len..]",
        help: "writes a number of bytes at a specified offset",
        min: 2,
        max: None,
    },
];

/// How `write -z` zeroes: holes only with -u, as qemu-io.
fn zero_flags(f: &Flags) -> ZeroFlags {
    ZeroFlags {
        may_unmap: f.unmap,
        no_fallback: f.no_fallback,
    }
}

fn find_cmd(name: &str) -> Option<&'static CmdInfo> {
    CMDS.iter().find(|c| c.name == name)
}

fn print_cmd_help(c: &CmdInfo) {
    let sep = if c.args.is_empty() { "" } else { " " };
    println!("{}{sep}{} -- {}", c.name, c.args, c.help);
}

/// Why a command failed; the message has been printed already.
struct Failed;

type CmdResult = Result<(), Failed>;

/// The open image and outstanding aio requests.
struct Session {
    /// None when qemu-io runs without a file: commands then say so.
    img: Option<Arc<Image>>,
    aio: Vec<JoinHandle<String>>,
    quit: bool,
}

/// Options of one command, qemu-io's getopt flags.
#[derive(Default)]
struct Flags {
    pattern: Option<u8>,
    /// write -s: the data comes from this file (zeros past its end).
    source: Option<String>,
    pattern_off: Option<u64>,
    pattern_len: Option<u64>,
    quiet: bool,
    verbose: bool,
    zero: bool,
    fua: bool,
    /// -u: with -z, the range may be deallocated (QEMU's MAY_UNMAP).
    unmap: bool,
    /// -n: fail rather than write zero bytes.
    no_fallback: bool,
    /// -C: machine-parsable statistics.
    cflag: bool,
    /// -b: the VM state area, not the disk.
    vmstate: bool,
    /// -c: compressed.
    compressed: bool,
    args: Vec<String>,
}

/// A number in QEMU's grammar, with qemu-io's messages.
fn cvtnum(s: &str) -> Result<u64, Failed> {
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
fn parse_pattern(s: &str) -> Result<u8, Failed> {
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

/// Parses `argv` (command name first) against the flags `allowed`.
fn parse_flags(argv: &[String], allowed: &str) -> Result<Flags, Failed> {
    let name = &argv[0];
    let info = find_cmd(name).ok_or(Failed)?;
    let mut f = Flags::default();
    let mut p = lexopt::Parser::from_args(argv[1..].iter().cloned());
    let bad = |msg: String| {
        println!("{name}: {msg}");
        print_cmd_help(info);
        Failed
    };
    loop {
        let arg = match p.next() {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(e) => return Err(bad(e.to_string())),
        };
        use lexopt::Arg::*;
        match arg {
            Short(c) if allowed.contains(c) => {
                let mut val = || -> Result<String, Failed> {
                    p.value()
                        .map_err(|e| bad(e.to_string()))
                        .map(|v| v.to_string_lossy().into_owned())
                };
                match c {
                    'P' => f.pattern = Some(parse_pattern(&val()?)?),
                    's' if name == "write" => f.source = Some(val()?),
                    's' => f.pattern_off = Some(cvtnum(&val()?)?),
                    'l' => f.pattern_len = Some(cvtnum(&val()?)?),
                    'q' => f.quiet = true,
                    'v' => f.verbose = true,
                    'z' => f.zero = true,
                    'f' => f.fua = true,
                    'u' => f.unmap = true,
                    'n' => f.no_fallback = true,
                    'C' => f.cflag = true,
                    'b' => f.vmstate = true,
                    'c' => f.compressed = true,
                    // Accepted and ignored, as qemu-io does.
                    'p' | 'r' => {}
                    _ => return Err(bad(format!("unhandled option -- '{c}'"))),
                }
            }
            Short(c) => {
                eprintln!("{name}: invalid option -- '{c}'");
                print_cmd_help(info);
                return Err(Failed);
            }
            Long(l) => return Err(bad(format!("unrecognized option '--{l}'"))),
            Value(v) => f.args.push(v.to_string_lossy().into_owned()),
        }
    }
    let n = f.args.len();
    if n < info.min || info.max.is_some_and(|m| n > m) {
        let expect = match info.max {
            Some(m) if m == info.min => format!("expected {m} arguments"),
            Some(m) => format!("expected between {} and {m} arguments", info.min),
            None => format!("expected at least {} arguments", info.min),
        };
        eprintln!("bad argument count {n} to {name}, {expect}");
        return Err(Failed);
    }
    Ok(f)
}

/// read and write take more words than they use; like qemu-io, refuse
/// extras with the command's usage line.
fn exactly_two(f: &Flags, name: &str) -> Result<(), Failed> {
    if f.args.len() != 2 {
        if let Some(c) = find_cmd(name) {
            print_cmd_help(c);
        }
        return Err(Failed);
    }
    Ok(())
}

fn timestr(t: Duration) -> String {
    let secs = t.as_secs();
    let frac = t.subsec_nanos() as f64 / 1e9;
    if secs == 0 {
        format!("{frac:05.2} sec")
    } else {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs / 60) % 60,
            (secs % 60) as f64 + frac
        )
    }
}

/// qemu-io's two-line report after a data command, or with -C its one
/// machine-parsable line (bytes,ops,h:mm:ss.cc,bytes/sec,ops/sec).
fn report_c(c: bool, op: &str, t: Duration, off: u64, count: u64, total: u64, cnt: u64) -> String {
    if !c {
        return report(op, t, off, count, total, cnt);
    }
    let secs = t.as_secs_f64().max(1e-9);
    let cs = t.as_millis() / 10;
    format!(
        "{total},{cnt},{}:{:02}:{:02}.{:02},{:.3},{:.3}\n",
        cs / 360_000,
        cs / 6000 % 60,
        cs / 100 % 60,
        cs % 100,
        total as f64 / secs,
        cnt as f64 / secs
    )
}

/// qemu-io's two-line report after a data command.
fn report(op: &str, t: Duration, off: u64, count: u64, total: u64, cnt: u64) -> String {
    let secs = t.as_secs_f64().max(1e-9);
    format!(
        "{op} {total}/{count} bytes at offset {off}\n{}, {cnt} ops; {} ({}/sec and {:.4} ops/sec)\n",
        cvtstr(total as f64),
        timestr(t),
        cvtstr(total as f64 / secs),
        cnt as f64 / secs
    )
}

/// Like qemu-io's dump_buffer: 16 bytes a line, hex then printable text.
fn dump(buf: &[u8], off: u64) -> String {
    let mut s = String::new();
    for (i, line) in buf.chunks(16).enumerate() {
        s += &format!("{:08x}:  ", off + 16 * i as u64);
        for b in line {
            s += &format!("{b:02x} ");
        }
        s.push(' ');
        for &b in line {
            s.push(if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            });
        }
        s.push('\n');
    }
    s
}

/// Refuses requests QEMU would refuse; `given` is the argument as typed
/// (qemu-io echoes it, suffix and all).
fn check_len(len: u64, given: &str) -> Result<(), Failed> {
    check_len_note(len, given, "")
}

/// `check_len` with qemu-io's note for the command (" without -n" for write).
fn check_len_note(len: u64, given: &str, note: &str) -> Result<(), Failed> {
    if len > MAX_REQUEST {
        println!("length cannot exceed {MAX_REQUEST}{note}, given {given}");
        return Err(Failed);
    }
    Ok(())
}

/// What qemu-io says for an operation the format cannot do (-b, -c).
fn unsupported(op: &str) -> Failed {
    println!("{op} failed: {}", errno_text(libc::ENOTSUP));
    Failed
}

fn fail(op: &str, e: &cowblk::Error) -> Failed {
    // QEMU's block layer refuses writes to a read-only node itself, before
    // the command sees an errno.
    if let cowblk::Error::ReadOnly(_) = e {
        shared::error(PROG, "Block node is read-only");
    } else {
        println!("{op} failed: {}", errno_text(e.errno()));
    }
    Failed
}

/// Offsets and lengths: `off len [len..]`.
fn off_lens(args: &[String]) -> Result<(u64, Vec<u64>), Failed> {
    let off = cvtnum(&args[0])?;
    let lens = args[1..]
        .iter()
        .map(|a| cvtnum(a))
        .collect::<Result<Vec<_>, _>>()?;
    let total: u64 = lens.iter().sum();
    check_len(total, &total.to_string())?;
    Ok((off, lens))
}

/// Checks `buf` against `pattern`; prints qemu-io's message on mismatch.
fn verify(buf: &[u8], pattern: u8, off: u64) -> Option<String> {
    (!buf.iter().all(|&b| b == pattern)).then(|| {
        format!(
            "Pattern verification failed at offset {off}, {} bytes\n",
            buf.len()
        )
    })
}

impl Session {
    fn image(&self) -> &Arc<Image> {
        self.img
            .as_ref()
            .expect("commands check for an open file first")
    }

    fn run(&mut self, line: &str) -> CmdResult {
        let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let Some(name) = argv.first() else {
            return Ok(());
        };
        let Some(info) = find_cmd(name) else {
            eprintln!("command \"{name}\" not found");
            return Err(Failed);
        };
        if self.img.is_none() && !matches!(info.name, "help" | "quit" | "sleep" | "open") {
            eprintln!("no file open, try 'help open'");
            return Err(Failed);
        }
        match info.name {
            "read" => self.read(&argv),
            "readv" => self.readv(&argv),
            "write" => self.write(&argv),
            "writev" => self.writev(&argv),
            "aio_read" => self.aio(&argv, false),
            "aio_write" => self.aio(&argv, true),
            "aio_flush" => {
                parse_flags(&argv, "")?;
                self.drain();
                self.image().flush().map_err(|e| fail("aio_flush", &e))
            }
            "discard" => self.discard(&argv),
            "flush" => {
                parse_flags(&argv, "")?;
                self.image().flush().map_err(|e| fail("flush", &e))
            }
            "truncate" => {
                let f = parse_flags(&argv, "")?;
                let size = cvtnum(&f.args[0])?;
                self.image()
                    .truncate(size)
                    .map_err(|e| fail("truncate", &e))
            }
            "length" => {
                parse_flags(&argv, "")?;
                println!("{}", cvtstr(self.image().size() as f64));
                Ok(())
            }
            "map" => self.map(&argv),
            "open" => self.open(&argv),
            "close" => {
                parse_flags(&argv, "")?;
                self.drain();
                if let Some(img) = self.img.take() {
                    let r = match Arc::try_unwrap(img) {
                        Ok(img) => img.close(),
                        Err(img) => img.flush(),
                    };
                    r.map_err(|e| fail("close", &e))?;
                }
                Ok(())
            }
            "alloc" => self.alloc(&argv),
            "info" => self.info(&argv),
            "help" => {
                let f = parse_flags(&argv, "")?;
                match f.args.first() {
                    Some(c) => match find_cmd(c) {
                        Some(ci) => print_cmd_help(ci),
                        None => {
                            eprintln!("command {c} not found");
                            return Err(Failed);
                        }
                    },
                    None => {
                        for c in CMDS {
                            print_cmd_help(c);
                        }
                        println!("\nUse 'help commandname' for extended help.");
                    }
                }
                Ok(())
            }
            "quit" => {
                parse_flags(&argv, "")?;
                self.quit = true;
                Ok(())
            }
            "sleep" => {
                let f = parse_flags(&argv, "")?;
                let ms: u64 = f.args[0].parse().map_err(|_| {
                    println!("Invalid value for milliseconds: {}", f.args[0]);
                    Failed
                })?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
            _ => Err(Failed),
        }
    }

    fn read(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "P:s:l:bCqrvp")?;
        exactly_two(&f, "read")?;
        let off = cvtnum(&f.args[0])?;
        let count = cvtnum(&f.args[1])?;
        check_len(count, &f.args[1])?;
        let (poff, plen) = match f.pattern {
            Some(_) => {
                let po = f.pattern_off.unwrap_or(0);
                let pl = f.pattern_len.unwrap_or(count.saturating_sub(po));
                if po.checked_add(pl).is_none_or(|e| e > count) {
                    println!("pattern verification range exceeds end of read data");
                    return Err(Failed);
                }
                (po, pl)
            }
            None => (0, 0),
        };
        if f.vmstate {
            return Err(unsupported("read"));
        }
        let mut buf = vec![0u8; count as usize];
        let t = Instant::now();
        self.image()
            .read(&mut buf, off)
            .map_err(|e| fail("read", &e))?;
        let t = t.elapsed();
        let mut res = Ok(());
        if let Some(p) = f.pattern {
            let r = &buf[poff as usize..(poff + plen) as usize];
            if let Some(m) = verify(r, p, off + poff) {
                print!("{m}");
                res = Err(Failed);
            }
        }
        if !f.quiet {
            if f.verbose {
                print!("{}", dump(&buf, off));
            }
            print!("{}", report_c(f.cflag, "read", t, off, count, count, 1));
        }
        res
    }

    fn readv(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "P:Cqrv")?;
        let (off, lens) = off_lens(&f.args)?;
        let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l as usize]).collect();
        let count: u64 = lens.iter().sum();
        let t = Instant::now();
        {
            let mut parts = bufs.iter_mut().map(|b| cowblk::IoVec::from_mut(b));
            let mut iov = parts.next().ok_or(Failed)?;
            for p in parts {
                iov.append(p);
            }
            self.image()
                .readv(&iov, off)
                .map_err(|e| fail("readv", &e))?;
        }
        let t = t.elapsed();
        let all: Vec<u8> = bufs.concat();
        let mut res = Ok(());
        if let Some(p) = f.pattern {
            if let Some(m) = verify(&all, p, off) {
                print!("{m}");
                res = Err(Failed);
            }
        }
        if !f.quiet {
            if f.verbose {
                print!("{}", dump(&all, off));
            }
            print!("{}", report_c(f.cflag, "read", t, off, count, count, 1));
        }
        res
    }

    fn write(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "P:s:bcCfnqruzp")?;
        exactly_two(&f, "write")?;
        if [f.zero, f.pattern.is_some(), f.source.is_some()]
            .iter()
            .filter(|&&b| b)
            .count()
            > 1
        {
            println!("Only one of -z, -P, and -s can be specified at the same time");
            return Err(Failed);
        }
        for (set, flag) in [(f.unmap, 'u'), (f.no_fallback, 'n')] {
            if set && !f.zero {
                println!("-{flag} requires -z to be specified");
                return Err(Failed);
            }
        }
        if f.vmstate {
            return Err(unsupported("write"));
        }
        let off = cvtnum(&f.args[0])?;
        let count = cvtnum(&f.args[1])?;
        check_len_note(count, &f.args[1], " without -n")?;
        // -c with -z is a zero write, as in qemu-io.
        let compressed = f.compressed && !f.zero;
        if compressed {
            for (v, what) in [(off, "offset"), (count, "count")] {
                if v % 512 != 0 {
                    println!("{v} is not a sector-aligned value for '{what}'");
                    return Err(Failed);
                }
            }
        }
        let mut buf = Vec::new();
        if let Some(src) = &f.source {
            // The file's first bytes, zeros past its end.
            use std::io::Read;
            let mut data = Vec::new();
            std::fs::File::open(src)
                .and_then(|f| f.take(count).read_to_end(&mut data))
                .map_err(|e| {
                    eprintln!("{src}: {}", shared::strerror(&e));
                    Failed
                })?;
            data.resize(count as usize, 0);
            buf = data;
        }
        let t = Instant::now();
        let r = if f.zero {
            self.image().write_zeroes_flags(off, count, zero_flags(&f))
        } else {
            if f.source.is_none() {
                buf = vec![f.pattern.unwrap_or(0xcd); count as usize];
            }
            if compressed {
                self.image().write_compressed(&buf, off)
            } else {
                self.image().write(&buf, off)
            }
        };
        r.and_then(|_| if f.fua { self.image().flush() } else { Ok(()) })
            .map_err(|e| fail("write", &e))?;
        if !f.quiet {
            print!(
                "{}",
                report_c(f.cflag, "wrote", t.elapsed(), off, count, count, 1)
            );
        }
        Ok(())
    }

    fn writev(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "P:Cfqr")?;
        let (off, lens) = off_lens(&f.args)?;
        let count: u64 = lens.iter().sum();
        let buf = vec![f.pattern.unwrap_or(0xcd); count as usize];
        let t = Instant::now();
        {
            // One iovec entry per length, as the command asks.
            let mut at = 0usize;
            let mut parts = lens.iter().map(|&l| {
                at += l as usize;
                cowblk::IoVec::from_ref(&buf[at - l as usize..at])
            });
            let mut iov = parts.next().ok_or(Failed)?;
            for p in parts {
                iov.append(p);
            }
            self.image()
                .writev(&iov, off)
                .and_then(|_| if f.fua { self.image().flush() } else { Ok(()) })
                .map_err(|e| fail("writev", &e))?;
        }
        if !f.quiet {
            print!(
                "{}",
                report_c(f.cflag, "wrote", t.elapsed(), off, count, count, 1)
            );
        }
        Ok(())
    }

    /// Starts a request on its own thread; its report is printed when the
    /// requests are drained (aio_flush, or exit), in submission order.
    fn aio(&mut self, argv: &[String], write: bool) -> CmdResult {
        let f = parse_flags(argv, if write { "P:Cfqruz" } else { "P:Cqrv" })?;
        if f.zero && f.pattern.is_some() {
            println!("-z and -P cannot be specified at the same time");
            return Err(Failed);
        }
        let (off, lens) = off_lens(&f.args)?;
        let count: u64 = lens.iter().sum();
        let img = self.image().clone();
        self.aio.push(std::thread::spawn(move || {
            let t = Instant::now();
            let mut buf = vec![f.pattern.unwrap_or(0xcd); count as usize];
            let (op, r) = if !write {
                ("aio_read", img.read(&mut buf, off))
            } else if f.zero {
                (
                    "aio_write",
                    img.write_zeroes_flags(off, count, zero_flags(&f)),
                )
            } else {
                ("aio_write", img.write(&buf, off))
            };
            let r = r.and_then(|_| if f.fua { img.flush() } else { Ok(()) });
            let t = t.elapsed();
            if let Err(e) = r {
                return format!("{op} failed: {}\n", errno_text(e.errno()));
            }
            let mut out = String::new();
            if !write {
                // As qemu-io: the mismatch is reported, then the request.
                if let Some(m) = f.pattern.and_then(|p| verify(&buf, p, off)) {
                    out += &m;
                }
            }
            if !f.quiet {
                if f.verbose {
                    out += &dump(&buf, off);
                }
                let verb = if write { "wrote" } else { "read" };
                out += &report_c(f.cflag, verb, t, off, count, count, 1);
            }
            out
        }));
        Ok(())
    }

    /// Waits for every outstanding aio request and prints its report.
    fn drain(&mut self) {
        for h in self.aio.drain(..) {
            match h.join() {
                Ok(s) => print!("{s}"),
                Err(_) => println!("aio request failed: internal error"),
            }
        }
    }

    fn discard(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "Cq")?;
        let off = cvtnum(&f.args[0])?;
        let count = cvtnum(&f.args[1])?;
        check_len(count, &f.args[1])?;
        let t = Instant::now();
        self.image()
            .discard(off, count)
            .map_err(|e| fail("discard", &e))?;
        if !f.quiet {
            print!(
                "{}",
                report_c(f.cflag, "discard", t.elapsed(), off, count, count, 1)
            );
        }
        Ok(())
    }

    fn map(&mut self, argv: &[String]) -> CmdResult {
        parse_flags(argv, "")?;
        let size = self.image().size();
        let mut off = 0;
        while off < size {
            let (alloc, n) = self
                .image()
                .is_allocated(off, size - off)
                .map_err(|e| fail("map", &e))?;
            println!(
                "{} (0x{n:x}) bytes {} at offset {} (0x{off:x})",
                cvtstr(n as f64),
                if alloc {
                    "    allocated"
                } else {
                    "not allocated"
                },
                cvtstr(off as f64)
            );
            off += n;
        }
        Ok(())
    }

    /// `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`: the
    /// format comes from `-o driver=FMT`, as in qemu-io.
    fn open(&mut self, argv: &[String]) -> CmdResult {
        use lexopt::Arg::*;
        let info = find_cmd("open").ok_or(Failed)?;
        if argv.len() < 2 {
            eprintln!("bad argument count 0 to open, expected at least 1 arguments");
            return Err(Failed);
        }
        if self.img.is_some() {
            shared::error(PROG, "file open already, try 'help close'");
            return Err(Failed);
        }
        let mut opts = OpenOptions::default();
        let (mut file, mut bad_opt) = (None, None);
        let mut p = lexopt::Parser::from_args(argv[1..].iter().cloned());
        let bad = |msg: String| {
            eprintln!("open: {msg}");
            print_cmd_help(info);
            Failed
        };
        loop {
            let arg = match p.next() {
                Ok(Some(a)) => a,
                Ok(None) => break,
                Err(e) => return Err(bad(e.to_string())),
            };
            let val = |p: &mut lexopt::Parser| -> Result<String, Failed> {
                p.value()
                    .map(|v| v.to_string_lossy().into_owned())
                    .map_err(|e| bad(e.to_string()))
            };
            match arg {
                Short('r') => opts.read_only = true,
                Short('U') => opts.force_share = true,
                // Host cache and aio tuning: one way of doing each here.
                Short('n') | Short('k') => {}
                Short('t') | Short('d') | Short('i') => {
                    val(&mut p)?;
                }
                Short('s') | Short('C') => {
                    println!(
                        "open: -{} (snapshot mode / copy-on-read) is not supported",
                        {
                            match arg {
                                Short(c) => c,
                                _ => '?',
                            }
                        }
                    );
                    return Err(Failed);
                }
                Short('o') => {
                    let o = val(&mut p)?;
                    for kv in o.split(',').filter(|x| !x.is_empty()) {
                        match kv.split_once('=') {
                            Some(("driver", d)) => opts.format = Some(d.to_string()),
                            // qcow2's open options; the driver checks them.
                            Some((k, v))
                                if [
                                    "l2-cache-size",
                                    "refcount-cache-size",
                                    "cache-size",
                                    "overlap-check",
                                ]
                                .contains(&k) =>
                            {
                                opts.format_opts.push((k.to_string(), v.to_string()))
                            }
                            _ => {
                                let k = kv.split('=').next().unwrap_or(kv);
                                bad_opt.get_or_insert(k.to_string());
                            }
                        }
                    }
                }
                Short(c) => {
                    eprintln!("open: invalid option -- '{c}'");
                    print_cmd_help(info);
                    return Err(Failed);
                }
                Long(l) => return Err(bad(format!("unrecognized option '--{l}'"))),
                Value(v) => file = Some(v.to_string_lossy().into_owned()),
            }
        }
        let Some(file) = file else {
            print_cmd_help(info);
            return Err(Failed);
        };
        if let Some(k) = bad_opt {
            let fmt = opts.format.as_deref().unwrap_or("raw");
            shared::error(
                PROG,
                format!(
                    "can't open device {file}: Block format '{fmt}' does not support the \
                     option '{k}'"
                ),
            );
            return Err(Failed);
        }
        if opts.force_share && !opts.read_only {
            shared::error(
                PROG,
                format!(
                    "can't open device {file}: force-share=on can only be used with read-only images"
                ),
            );
            return Err(Failed);
        }
        self.img = Some(open_image(&file, &opts).map_err(|()| Failed)?);
        Ok(())
    }

    fn alloc(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv, "")?;
        let off = cvtnum(&f.args[0])?;
        if off % 512 != 0 {
            println!("{off} is not a sector-aligned value for 'offset'");
            return Err(Failed);
        }
        // One sector by default; the count stops at the end of the image.
        let mut count = match f.args.get(1) {
            Some(c) => cvtnum(c)?,
            None => 512,
        };
        if count % 512 != 0 {
            println!("{count} is not a sector-aligned value for 'count'");
            return Err(Failed);
        }
        let size = self.image().size();
        let mut sum = 0;
        let mut pos = off;
        while pos < off + count {
            if pos >= size {
                count = pos - off;
                break;
            }
            let want = (off + count - pos).min(size - pos);
            let (a, n) = self
                .image()
                .is_allocated(pos, want)
                .map_err(|e| fail("is_allocated", &e))?;
            if a {
                sum += n;
            }
            pos += n;
        }
        println!(
            "{sum}/{count} bytes allocated at offset {}",
            cvtstr(off as f64)
        );
        Ok(())
    }

    fn info(&mut self, argv: &[String]) -> CmdResult {
        parse_flags(argv, "")?;
        let i = self.image().info_cheap().map_err(|e| fail("info", &e))?;
        println!("format name: {}", i.format);
        println!("cluster size: {}", cvtstr(i.cluster_size as f64));
        println!(
            "vm state offset: {}",
            cvtstr(i.vm_state_offset.unwrap_or(0) as f64)
        );
        if !i.specific.is_empty() {
            println!("Format specific information:");
            print!("{}", cowblk::format::info::fields_human(&i.specific, 4));
        }
        Ok(())
    }
}

struct Args {
    cmds: Vec<String>,
    format: Option<String>,
    read_only: bool,
    /// --confined: hold the files the image names to its directory.
    confined: bool,
    force_share: bool,
    file: Option<String>,
}

/// `--confined` on the command line: every image the session opens, also
/// with the `open` command, holds the files it names to its directory.
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Opens an image for the session, printing qemu-io's messages.
fn open_image(file: &str, opts: &OpenOptions) -> Result<Arc<Image>, ()> {
    let mut opts = opts.clone();
    opts.confined |= CONFINED.load(Ordering::Relaxed);
    match Image::open(file, &opts) {
        // Warnings (a corrupt bit on a read-only open) stay unprinted, as
        // qemu-io opens such images silently.
        Ok(i) => {
            shared::warn_probed_raw(&i);
            Ok(Arc::new(i))
        }
        Err(e) => {
            // qemu-io says "can't open device X:" where qemu-img says
            // "Could not open 'X':".
            let d = shared::describe(&e);
            let why = d
                .strip_prefix(&format!("Could not open '{file}': "))
                .unwrap_or(&d);
            shared::error(PROG, format!("can't open device {file}: {why}"));
            Err(())
        }
    }
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut a = Args {
        cmds: Vec::new(),
        format: None,
        read_only: false,
        confined: false,
        force_share: false,
        file: None,
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        let val = |p: &mut lexopt::Parser| -> Result<String, String> {
            Ok(p.value()
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned())
        };
        match arg {
            Short('c') | Long("cmd") => a.cmds.push(val(&mut p)?),
            Short('f') | Long("format") => a.format = Some(val(&mut p)?),
            Short('r') | Long("read-only") => a.read_only = true,
            Long("confined") => a.confined = true,
            Short('U') | Long("force-share") => a.force_share = true,
            Short('n') | Long("nocache") | Short('k') | Long("native-aio") | Short('m')
            | Long("misalign") => {}
            Short('t') | Long("cache") | Short('d') | Long("discard") | Short('i')
            | Long("aio") => {
                val(&mut p)?;
            }
            Short('C') | Long("copy-on-read") => return Err("copy-on-read is not supported".into()),
            Short('s') | Long("snapshot") => {
                return Err("-s (snapshot mode) is not supported".into())
            }
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Short('V') | Long("version") => {
                println!("cowblk-io version {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Value(v) if a.file.is_none() => a.file = Some(v.to_string_lossy().into_owned()),
            Value(v) => return Err(format!("unexpected argument '{}'", v.to_string_lossy())),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(a)
}

fn main() {
    shared::init(PROG);
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            shared::error(PROG, e);
            eprintln!("Try '{PROG} --help' for more information.");
            std::process::exit(1);
        }
    };
    if let (Some(file), true, false) = (&args.file, args.force_share, args.read_only) {
        shared::error(
            PROG,
            format!(
                "can't open device {file}: force-share=on can only be used with read-only images"
            ),
        );
        std::process::exit(1);
    }
    CONFINED.store(args.confined, Ordering::Relaxed);
    let opts = OpenOptions {
        format: args.format,
        read_only: args.read_only,
        confined: args.confined,
        force_share: args.force_share,
        ..Default::default()
    };
    let img = args.file.map(|file| match open_image(&file, &opts) {
        Ok(i) => i,
        Err(()) => std::process::exit(1),
    });
    let mut s = Session {
        img,
        aio: Vec::new(),
        quit: false,
    };
    let mut failed = false;
    if args.cmds.is_empty() {
        let stdin = std::io::stdin();
        let tty = stdin.is_terminal();
        loop {
            if tty {
                print!("{PROG}> ");
                let _ = std::io::stdout().flush();
            }
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            failed |= s.run(line.trim()).is_err();
            let _ = std::io::stdout().flush();
            if s.quit {
                break;
            }
        }
    } else {
        for c in &args.cmds {
            failed |= s.run(c).is_err();
            if s.quit {
                break;
            }
        }
    }
    s.drain();
    let Session { img, .. } = s;
    let close = match img.map(Arc::try_unwrap) {
        Some(Ok(img)) => img.close(),
        Some(Err(img)) => img.flush(),
        None => Ok(()),
    };
    if let Err(e) = close {
        shared::error(PROG, shared::describe(&e));
        failed = true;
    }
    let _ = std::io::stdout().flush();
    std::process::exit(if failed { 1 } else { 0 });
}
