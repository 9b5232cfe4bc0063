//! `bench`: qemu-img bench's request pattern, timed.

use crate::args::{cvtnum, fail, lib, one_file, size_arg, Parser, Res};
use crate::open::{force_share, open, with_progress, ProgressStyle};
use cowblk::ops::{self, BenchOptions};
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "bench";
    let mut p = Parser::new(C, args);
    let mut o = BenchOptions::default();
    let (mut fmt, mut progress) = (None, false);
    let int = |name: &str, s: &str, min: u64| cvtnum(name, s, min, i32::MAX as u64);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "c" => o.count = int("request count", &v, 1)?,
            "d" => o.depth = int("queue depth", &v, 1)?,
            "f" => fmt = Some(v),
            "o" => o.offset = size_arg("offset", &v)?,
            "s" => o.buf_size = cvtnum("buffer size", &v, 1, i32::MAX as u64)?,
            "S" => o.step = size_arg("step size", &v)?,
            "w" => o.write = true,
            // qemu-img bench prints its two lines even with -q.
            "p" => progress = true,
            "n" => {}
            "U" => force_share(),
            "flush-interval" => o.flush_interval = int("flush interval", &v, 0)?,
            "pattern" => o.pattern = cvtnum("pattern byte", &v, 0, 0xff)? as u8,
            _ => {}
        }
    }
    if o.flush_interval > 0 && !o.write {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    let file = one_file(p.files(), C)?;
    let img = open(&file, fmt, !o.write)?;
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
    let t = with_progress(
        progress,
        ProgressStyle {
            min_skip: 1.0,
            final_100: false,
        },
        |pr| ops::bench(&img, &o, pr),
    )
    .map_err(lib)?;
    img.close().map_err(lib)?;
    println!("Run completed in {:.3} seconds.", t.as_secs_f64());
    Ok(0)
}
