//! `amend`: change a qcow2 image's options in place, as qemu-img amend
//! (the library's `Image::amend`).

use crate::args::{fail, lib, usage_err, Parser, Res};
use crate::create::print_opts;
use crate::open::{open, with_progress, ProgressStyle};
use cowblk::{CreateOptions, Error};
use std::ffi::OsString;

/// The qcow2 options amend changes.
const AMENDABLE: &[&str] = &[
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "lazy_refcounts",
    "refcount_bits",
    "size",
];

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "amend";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut progress, mut quiet) = (None, false, false);
    let mut opt_strs: Vec<String> = Vec::new();
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "o" => opt_strs.push(v),
            "p" => progress = true,
            "q" => quiet = true,
            _ => {}
        }
    }
    if opt_strs.is_empty() {
        return Err(usage_err(C, "Must specify options (-o)"));
    }
    let mut files = p.files();
    if files.len() != 1 {
        return Err(fail("Expecting one image file name"));
    }
    let file = files.remove(0);
    if opt_strs.iter().any(|o| o == "help" || o == "?") {
        // The options amend can change (qemu-img's list, less encryption).
        let fmt = fmt.as_deref().unwrap_or("qcow2");
        let amendable = |k: &str| AMENDABLE.contains(&k);
        return print_opts(
            fmt,
            false,
            &format!("Amend options for '{fmt}':"),
            &amendable,
        );
    }
    let mut opts = CreateOptions::new();
    for o in &opt_strs {
        opts.parse_into(o).map_err(lib)?;
    }
    let img = open(&file, fmt, false)?;
    with_progress(
        progress && !quiet,
        ProgressStyle {
            min_skip: 1.0,
            final_100: false,
        },
        |pr| img.amend(&opts, pr),
    )
    .map_err(|e| match e {
        // The library uses QEMU's words for what amend refuses.
        Error::InvalidArgument(m) | Error::Unsupported(m) => fail(m),
        e => lib(e),
    })?;
    img.close().map_err(lib)?;
    Ok(0)
}
