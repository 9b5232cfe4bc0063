//! `dd`: dd-style operands (bs=, count=, skip=, if=, of=) copying into a
//! new image.

use crate::args::{cvtnum, fail, lib, Fail, Parser, Res};
use crate::create::create_error;
use crate::open::{end_force_share, force_share, open};
use crate::{shared, PROG};
use cowblk::format;
use cowblk::{CreateOptions, Image};
use std::ffi::OsString;

/// A dd count or skip: an integer as strtoll reads it (decimal, 0x hex, 0
/// octal; no suffix), 0 to 2^63 - 1, in qemu-img's words.
fn dd_blocks(name: &str, s: &str) -> Result<u64, Fail> {
    let (neg, t) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        i64::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<i64>()
    };
    match v {
        Ok(v) if !neg => Ok(v as u64),
        Ok(_) => Err(fail(format!(
            "Invalid {name} specified. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => Err(fail(format!(
            "Invalid {name} specified. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(_) => Err(fail(format!("Invalid {name} specified: '{s}'."))),
    }
}

/// `qemu-img dd`: copies the input from block `skip` up to block `count`
/// (both in `bs` units from the input's start, as qemu-img counts them)
/// into a new output image.
pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "dd";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut ofmt) = (None, "raw".to_string());
    let (mut bs, mut count, mut skip, mut input, mut output) = (512u64, None, None, None, None);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "O" => ofmt = v,
            "U" => force_share(),
            _ => {}
        }
    }
    // The operands, after every option as getopt permutes them.
    for v in p.files() {
        match v.split_once('=') {
            Some(("bs", x)) => bs = cvtnum("bs", x, 1, i32::MAX as u64)?,
            Some(("count", x)) => count = Some(dd_blocks("count", x)?),
            Some(("skip", x)) => skip = Some(dd_blocks("skip", x)?),
            Some(("if", x)) => input = Some(x.to_string()),
            Some(("of", x)) => output = Some(x.to_string()),
            _ => {
                let name = v.split('=').next().unwrap_or(&v);
                return Err(fail(format!("unrecognized operand {name}")));
            }
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err(fail("Must specify both input and output files"));
    };
    let src = open(&input, fmt, true)?;
    let mut end = src.size();
    if let Some(c) = count {
        if let Some(n) = c.checked_mul(bs) {
            end = end.min(n);
        }
    }
    let start = skip.map(|k| k.checked_mul(bs));
    let out_size = match start {
        Some(Some(off)) if off <= end => end - off,
        Some(_) => 0,
        None => end,
    };
    let mut opts = CreateOptions::new();
    opts.set(format::options::SIZE, out_size.to_string());
    Image::create(&output, &ofmt, &opts).map_err(|e| {
        let f = create_error(&output, &e);
        let why = f.msg.strip_prefix(&format!("{output}: ")).unwrap_or(&f.msg);
        fail(format!(
            "{output}: error while creating output image: {why}"
        ))
    })?;
    end_force_share();
    let dst = open(&output, Some(ofmt), false)?;
    let mut pos = match start {
        Some(Some(off)) if off <= end => off,
        None => 0,
        // qemu-img reports this after creating the (empty) output and
        // still exits 0.
        Some(_) => {
            shared::error(PROG, format!("{input}: cannot skip to specified offset"));
            return Ok(0);
        }
    };
    let first = pos;
    let mut buf = vec![0u8; bs.min(end - pos).max(1) as usize];
    while pos < end {
        let n = bs.min(end - pos) as usize;
        src.read(&mut buf[..n], pos).map_err(lib)?;
        dst.write(&buf[..n], pos - first).map_err(lib)?;
        pos += n as u64;
    }
    dst.close().map_err(lib)?;
    Ok(0)
}
