//! `resize`: a new virtual size, absolute or relative.

use crate::args::{fail, lib, usage_err, Parser, Res};
use crate::open::open;
use crate::PROG;
use cowblk::format;
use std::ffi::OsString;

pub fn run(mut args: Vec<OsString>) -> Res {
    const C: &str = "resize";
    // A last word like "-1M" is the size, not options: qemu-img takes it
    // out before reading the options.
    let negative = args
        .last()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a.starts_with('-') && a[1..].starts_with(|c: char| c.is_ascii_digit()));
    if negative.is_some() {
        args.pop();
    }
    let mut p = Parser::new(C, args);
    let (mut fmt, mut quiet, mut shrink) = (None, false, false);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "q" => quiet = true,
            "shrink" => shrink = true,
            "preallocation" if v != "off" => {
                return Err(fail(format!("Preallocation mode '{v}' is not supported")));
            }
            _ => {}
        }
    }
    let mut words = p.files();
    words.extend(negative);
    if words.len() > 2 {
        return Err(usage_err(C, "Extra argument(s) in command line"));
    }
    let [file, size_s]: [String; 2] = words
        .try_into()
        .map_err(|_| usage_err(C, "Expecting image file name and size"))?;
    // As qemu-img: the number is checked before the image is opened, as a
    // 64-bit option value; the sum as a signed 64-bit size.
    let (sign, digits) = match size_s.as_bytes().first() {
        Some(b'+') => (1i128, &size_s[1..]),
        Some(b'-') => (-1, &size_s[1..]),
        _ => (0, size_s.as_str()),
    };
    let n = match format::options::strtosz(digits) {
        Ok(n) => n,
        Err(format::options::SizeError::TooLarge) => {
            return Err(fail(format!(
                "Value '{digits}' is out of range for parameter 'size'"
            )))
        }
        Err(format::options::SizeError::Invalid) => {
            return Err(fail(
                "Parameter 'size' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively.",
            ))
        }
    };
    let img = open(&file, fmt, false)?;
    let cur = img.size();
    let total = if sign == 0 {
        i128::from(n as i64)
    } else {
        i128::from(cur) + sign * i128::from(n as i64)
    };
    if total <= 0 || total > i128::from(i64::MAX) {
        return Err(fail("New image size must be positive"));
    }
    let new = total as u64;
    if new < cur && !shrink {
        // The error, then the warning, as qemu-img orders them.
        return Err(fail(format!(
            "Use the --shrink option to perform a shrink operation.\n\
             {PROG}: warning: Shrinking an image will delete all data beyond the shrunken \
             image's end. Before performing such an operation, make sure there is no \
             important data there."
        )));
    }
    img.truncate(new).map_err(lib)?;
    img.close().map_err(lib)?;
    if !quiet {
        println!("Image resized.");
    }
    Ok(0)
}
