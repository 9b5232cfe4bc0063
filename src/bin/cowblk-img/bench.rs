//! `bench`: qemu-img bench's request pattern, timed.

use crate::args::{cvtnum, fail, lib, one_file, size_arg, usage_err, Fail, Parser, Res};
use crate::open::{force_share, open, with_progress, ProgressStyle};
use cowblk::ops::{self, BenchOptions};
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "bench";
    let mut p = Parser::new(C, args);
    let mut o = BenchOptions::default();
    let (mut fmt, mut quiet, mut progress) = (None, false, false);
    let num = |s: String| -> Result<u64, Fail> {
        s.parse::<u64>()
            .map_err(|_| usage_err(C, format!("Invalid number: '{s}'")))
    };
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "c" => o.count = num(v)?,
            "d" => o.depth = num(v)?,
            "f" => fmt = Some(v),
            "o" => o.offset = size_arg("offset", &v)?,
            "s" => o.buf_size = cvtnum("buffer size", &v, 1, i32::MAX as u64)?,
            "S" => o.step = size_arg("step size", &v)?,
            "w" => o.write = true,
            "q" => quiet = true,
            "p" => progress = true,
            "n" => {}
            "U" => force_share(),
            "flush-interval" => o.flush_interval = num(v)?,
            "pattern" => {
                let v = num(v)?;
                o.pattern = u8::try_from(v)
                    .map_err(|_| usage_err(C, format!("Invalid pattern byte specified: {v}")))?;
            }
            _ => {}
        }
    }
    if o.flush_interval > 0 && !o.write {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    let file = one_file(p.files(), C)?;
    let img = open(&file, fmt, !o.write)?;
    if !quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            o.count,
            if o.write { "write" } else { "read" },
            o.buf_size,
            o.depth,
            o.offset,
            o.step()
        );
        if o.flush_interval > 0 {
            println!("Sending flush every {} requests", o.flush_interval);
        }
    }
    let t = with_progress(
        progress && !quiet,
        ProgressStyle {
            min_skip: 1.0,
            final_100: false,
        },
        |pr| ops::bench(&img, &o, pr),
    )
    .map_err(lib)?;
    img.close().map_err(lib)?;
    if !quiet {
        println!("Run completed in {:.3} seconds.", t.as_secs_f64());
    }
    Ok(0)
}
