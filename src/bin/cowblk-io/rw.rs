//! read, readv, write, writev and discard: one synchronous request each,
//! reported as qemu-io reports it.

use crate::flags::find_cmd;
use crate::flags::{
    check_len, check_len_note, cvtnum, exactly_two, off_lens, parse_flags, zero_flags, CmdResult,
    Failed,
};
use crate::report::{dump, fail, report_c, unsupported, verify};
use crate::session::Session;
use crate::shared::{self, doc};
use std::time::Instant;

impl Session {
    pub fn read(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
        exactly_two(&f, "read")?;
        let off = cvtnum(&f.args[0])?;
        let count = cvtnum(&f.args[1])?;
        check_len(count, &f.args[1])?;
        // -s and -l qualify -P; alone they are a usage error.
        if f.pattern.is_none() && (f.pattern_off.is_some() || f.pattern_len.is_some()) {
            println!("{}", doc::io_cmd_line(find_cmd("read").ok_or(Failed)?));
            return Err(Failed);
        }
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
            sector_aligned(off, count)?;
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

    pub fn readv(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
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

    pub fn write(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
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
        let off = cvtnum(&f.args[0])?;
        let count = cvtnum(&f.args[1])?;
        check_len_note(count, &f.args[1], " without -n")?;
        if f.vmstate {
            sector_aligned(off, count)?;
        }
        if f.vmstate {
            return Err(unsupported("write"));
        }
        // -c with -z is a zero write, as in qemu-io.
        let compressed = f.compressed && !f.zero;
        if compressed {
            sector_aligned(off, count)?;
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

    pub fn writev(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
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

    pub fn discard(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
        exactly_two(&f, "discard")?;
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
}

/// The VM state area is addressed in whole sectors (qemu-io checks this
/// before trying).
fn sector_aligned(off: u64, count: u64) -> Result<(), Failed> {
    for (v, what) in [(off, "offset"), (count, "count")] {
        if v % 512 != 0 {
            println!("{v} is not a sector-aligned value for '{what}'");
            return Err(Failed);
        }
    }
    Ok(())
}
