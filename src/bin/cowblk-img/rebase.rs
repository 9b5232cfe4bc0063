//! `rebase`: a new backing file, keeping the guest view (or, -u, only
//! the recorded name).

use crate::args::{fail, lib, one_file, usage_err, Parser, Res};
use crate::open::{force_share, open, with_progress, ProgressStyle};
use cowblk::ops;
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "rebase";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut quiet, mut progress, mut unsafe_, mut base, mut bfmt) =
        (None, false, false, false, None, None);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "q" => quiet = true,
            "p" => progress = true,
            "u" => unsafe_ = true,
            "b" => base = Some(v),
            "F" => bfmt = Some(v),
            "U" => force_share(),
            "c" => return Err(fail("Compression is not supported")),
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    let Some(base) = base else {
        return Err(usage_err(
            C,
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    };
    let img = open(&file, fmt, false)?;
    let new = (!base.is_empty()).then(|| ops::rebase::NewBacking {
        name: &base,
        format: bfmt.as_deref(),
    });
    with_progress(
        progress && !quiet,
        ProgressStyle {
            min_skip: 2.0,
            final_100: false,
        },
        |pr| ops::rebase(&img, new, unsafe_, pr),
    )
    .map_err(lib)?;
    img.close().map_err(lib)?;
    Ok(0)
}
