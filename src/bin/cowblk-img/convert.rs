//! `convert`: the guest view of one or more images copied into a new (or
//! existing, -n) one.

use crate::args::{cvtnum, fail, lib, snapshot_ref, Fail, Parser, Res};
use crate::create::print_opts_help;
use crate::open::{
    confined, end_force_share, force_share, open, open_with, with_progress, ProgressStyle,
};
use crate::PROG;
use cowblk::format;
use cowblk::ops;
use cowblk::{CreateOptions, Error, Image, OpenOptions};
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "convert";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut ofmt, mut progress, mut quiet, mut no_create) =
        (None, "raw".to_string(), false, false, false);
    let (mut opt_strs, mut snap, mut dense) = (Vec::new(), None, false);
    let mut compress = false;
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "O" => ofmt = v,
            "o" => opt_strs.push(v),
            "p" => progress = true,
            "q" => quiet = true,
            "n" => no_create = true,
            "l" => snap = Some(snapshot_ref(&v)?),
            // -S 0 copies every byte; any other valid size keeps holes
            // (runs of zeros are always detected).
            "S" => dense = sparse_size(&v)? == 0,
            // Cache modes, coroutines, out-of-order (-t, -T, -m, -W): the
            // library has one way of doing each; declared and ignored.
            "U" => force_share(),
            "c" => compress = true,
            _ => {}
        }
    }
    let mut files = p.files();
    if opt_strs.iter().any(|o| o == "help" || o == "?") {
        return print_opts_help(&ofmt, files.len() < 2);
    }
    if files.len() < 2 {
        return Err(fail("Must specify image file name"));
    }
    let out = files.pop().unwrap_or_default();
    // A snapshot names one source's state; with several sources qemu-img
    // refuses it.
    if snap.is_some() && files.len() > 1 {
        return Err(fail("No support for concatenating multiple snapshot"));
    }
    let srcs = files
        .iter()
        .map(|f| {
            let opts = OpenOptions {
                format: fmt.clone(),
                read_only: true,
                snapshot: snap.clone(),
                confined: confined(),
                ..Default::default()
            };
            match Image::open(f, &opts) {
                // qemu-img's words for a snapshot the image does not have.
                Err(Error::NotFound(m)) if snap.is_some() && m.contains("snapshot '") => {
                    Err(fail("Failed to load snapshot: Can't find snapshot"))
                }
                _ => open_with(f, &opts),
            }
        })
        .collect::<Result<Vec<Image>, Fail>>()?;
    let total = srcs.iter().map(|s| s.size()).sum::<u64>();
    if !no_create {
        let mut opts = CreateOptions::new();
        for o in &opt_strs {
            opts.parse_into(o).map_err(lib)?;
        }
        // An explicit size must parse, but the sources' total wins, as in
        // qemu-img.
        opts.get_size(format::options::SIZE).map_err(|_| {
            fail(
                "Parameter 'size' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively.",
            )
        })?;
        opts.set(format::options::SIZE, total.to_string());
        Image::create(&out, &ofmt, &opts).map_err(lib)?;
    }
    // -U covers the sources only, as in qemu-img.
    end_force_share();
    let dst = open(&out, Some(ofmt), false)?;
    if compress && !dst.supports_compression() {
        drop(dst);
        if !no_create {
            let _ = std::fs::remove_file(&out);
        }
        return Err(fail("Compression not supported for this file format"));
    }
    let refs: Vec<&Image> = srcs.iter().collect();
    with_progress(
        progress && !quiet,
        ProgressStyle {
            min_skip: 1.0,
            final_100: true,
        },
        |pr| {
            if compress {
                ops::convert_compressed(&refs, &dst, !no_create, 0, pr)
            } else if dense {
                ops::convert_dense(&refs, &dst, pr)
            } else {
                ops::convert(&refs, &dst, !no_create, pr)
            }
        },
    )
    .map_err(lib)?;
    // qemu-img convert does not carry internal snapshots (where qcow2
    // keeps metadata): cowblk copies the metadata itself, and says so.
    if let [src] = &refs[..] {
        if dst.meta_supported() {
            let n = src.meta_copy_to(&dst).map_err(lib)?;
            if n > 0 && !quiet {
                eprintln!("{PROG}: copied {n} metadata key(s) from '{}'", files[0]);
            }
        } else if src.meta_supported() {
            let n = src.meta_list().map_err(lib)?.len();
            if n > 0 {
                eprintln!(
                    "{PROG}: warning: {n} metadata key(s) not copied: {} cannot hold metadata",
                    dst.format_name()
                );
            }
        }
    }
    dst.close().map_err(lib)?;
    Ok(0)
}

/// `-S`, checked as qemu-img checks it: a number, a multiple of 512 up to
/// 16 MiB, or 0.
fn sparse_size(s: &str) -> Result<u64, Fail> {
    let v = cvtnum("buffer size for sparse output", s, 0, i64::MAX as u64)?;
    if v % 512 != 0 || v > 16 << 20 {
        return Err(fail(
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 \
             up to 16777216. Select 0 to disable sparse detection (fully allocates output).",
        ));
    }
    Ok(v)
}
