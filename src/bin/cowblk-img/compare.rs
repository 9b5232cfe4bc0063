//! `compare`: two images' guest contents (and, with -s, sizes and
//! allocation), with qemu-img's exit codes 0/1/2.

use crate::args::{lib, usage_err, Fail, Parser, Res};
use crate::open::{force_share, open};
use crate::shared::ProgressBar;
use cowblk::ops;
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "compare";
    let mut p = Parser::new(C, args);
    let (mut fa, mut fb, mut strict, mut quiet, mut progress) = (None, None, false, false, false);
    // A bad option exits 1, as in qemu-img (2 is for failures to compare).
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fa = Some(v),
            "F" => fb = Some(v),
            "s" => strict = true,
            "q" => quiet = true,
            "p" => progress = true,
            "U" => force_share(),
            _ => {}
        }
    }
    let files = p.files();
    if files.len() != 2 {
        return Err(usage_err(C, "Expecting two image file names"));
    }
    let err2 = |f: Fail| Fail { code: 2, ..f };
    let a = open(&files[0], fa.clone(), true).map_err(err2)?;
    // -f names the first image's format only; the second is probed
    // unless -F names it (qemu-img does the same).
    let b = open(&files[1], fb, true).map_err(err2)?;
    let mut bar = ProgressBar::new(progress && !quiet, 2.0);
    let r = ops::compare(&a, &b, strict, &mut |d, t| bar.update(d, t));
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            bar.finish(false);
            return Err(err2(lib(e)));
        }
    };
    let (msgs, code) = verdict(&r, a.size().min(b.size()), strict);
    // The verdict comes before the progress line's newline, as in qemu-img.
    for m in msgs.iter().filter(|_| !quiet) {
        println!("{m}");
    }
    bar.finish(false);
    Ok(code)
}

/// What compare prints and its exit code. As qemu-img, the size warning
/// comes only once the common part compared equal.
fn verdict(r: &ops::CompareResult, common: u64, strict: bool) -> (Vec<String>, i32) {
    if r.size_mismatch && strict {
        return (vec!["Strict mode: Image size mismatch!".into()], 1);
    }
    if let Some(off) = r.status_mismatch {
        return (
            vec![format!("Strict mode: Offset {off} block status mismatch!")],
            1,
        );
    }
    let mut msgs = Vec::new();
    if r.size_mismatch && r.first_mismatch.is_none_or(|off| off >= common) {
        msgs.push("Warning: Image size mismatch!".to_string());
    }
    match r.first_mismatch {
        Some(off) => {
            msgs.push(format!("Content mismatch at offset {off}!"));
            (msgs, 1)
        }
        None => {
            msgs.push("Images are identical.".into());
            (msgs, 0)
        }
    }
}
