//! `compare`: two images' guest contents (and, with -s, sizes and
//! allocation), with qemu-img's exit codes 0/1/2.

use crate::args::{lib, usage_err, Fail, Parser, Res};
use crate::open::{force_share, open, with_progress};
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
    let r = with_progress(progress && !quiet, |pr| ops::compare(&a, &b, strict, pr))
        .map_err(|e| err2(lib(e)))?;
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    if r.size_mismatch {
        if strict {
            say("Strict mode: Image size mismatch!".into());
            return Ok(1);
        }
        say("Warning: Image size mismatch!".into());
    }
    if let Some(off) = r.status_mismatch {
        say(format!("Strict mode: Offset {off} block status mismatch!"));
        return Ok(1);
    }
    match r.first_mismatch {
        Some(off) => {
            say(format!("Content mismatch at offset {off}!"));
            Ok(1)
        }
        None => {
            say("Images are identical.".into());
            Ok(0)
        }
    }
}
