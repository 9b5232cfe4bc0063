//! `cowblk-img amend [-f FMT] -o OPTIONS [-p] [-q] FILENAME`: qemu-img
//! amend (the library's `Image::amend`).

use super::*;

pub(super) fn amend(args: Vec<OsString>) -> Res {
    const C: &str = "amend";
    let mut p = parser(args);
    let (mut fmt, mut progress, mut quiet) = (None, false, false);
    let mut opt_strs: Vec<String> = Vec::new();
    let mut files = Vec::new();
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('o') => opt_strs.push(val(&mut p, C)?),
            Short('p') => progress = true,
            Short('q') => quiet = true,
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    if opt_strs.is_empty() {
        return Err(usage_err(C, "Must specify options (-o)"));
    }
    let file = one_file(files, C)?;
    if opt_strs.iter().any(|o| o == "help" || o == "?") {
        return print_opts_help(fmt.as_deref().unwrap_or("qcow2"), false);
    }
    let mut opts = CreateOptions::new();
    for o in &opt_strs {
        opts.parse_into(o).map_err(lib)?;
    }
    let img = open(&file, fmt, false)?;
    with_progress(progress && !quiet, |pr| img.amend(&opts, pr)).map_err(|e| match e {
        // The library uses QEMU's words for what amend refuses.
        Error::InvalidArgument(m) | Error::Unsupported(m) => fail(m),
        e => lib(e),
    })?;
    img.close().map_err(lib)?;
    Ok(0)
}
