//! `commit`: an overlay's data written into its backing file.

use crate::args::{fail, lib, one_file, Parser, Res};
use crate::open::{open, with_progress, ProgressStyle};
use cowblk::ops;
use cowblk::Error;
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "commit";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut quiet, mut progress, mut keep, mut base) = (None, false, false, false, None);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "q" => quiet = true,
            "p" => progress = true,
            "d" => keep = true,
            "b" => base = Some(v),
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    let img = open(&file, fmt, false)?;
    if let Some(b) = base {
        let direct = img.backing_spec().map(|s| s.name);
        if direct.as_deref() != Some(b.as_str()) {
            if !deeper_in_chain(&img, &b) {
                return Err(fail(format!(
                    "Did not find '{b}' in the backing chain of '{file}'"
                )));
            }
            return Err(fail(format!(
                "'{b}' is not the backing file of '{file}': only commits into the direct backing file are supported"
            )));
        }
    }
    with_progress(
        progress && !quiet,
        ProgressStyle {
            min_skip: 1.0,
            final_100: true,
        },
        |pr| ops::commit(&img, keep, pr),
    )
    .map_err(|e| match e {
        // qemu-img's words.
        Error::InvalidArgument(m) if m.contains("does not have a backing file") => {
            fail("Image does not have a backing file")
        }
        e => lib(e),
    })?;
    img.close().map_err(lib)?;
    if !quiet {
        println!("Image committed.");
    }
    Ok(0)
}

/// Whether a layer below the direct backing file is named `name`.
fn deeper_in_chain(img: &cowblk::Image, name: &str) -> bool {
    let mut cur = img.backing();
    while let Some(layer) = cur {
        let Some(l) = layer.as_image() else {
            return false;
        };
        if l.backing_spec().is_some_and(|s| s.name == name) {
            return true;
        }
        cur = l.backing();
    }
    false
}
