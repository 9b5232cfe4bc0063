//! `create`: a new image, reported with qemu-img's "Formatting" line;
//! `-o help` (shared with convert).

use crate::args::size_arg;
use crate::args::{fail, lib, usage_err, Fail, Parser, Res};
use crate::shared::{describe, errno_text};
use cowblk::format::{self, OptKind};
use cowblk::{CreateOptions, Image, OpenOptions};
use std::ffi::OsString;

fn kind_name(k: OptKind) -> &'static str {
    match k {
        OptKind::Size => "size",
        OptKind::Str => "str",
        OptKind::Bool => "bool (on/off)",
        OptKind::Number => "num",
    }
}

/// `-o help`. Without a file name qemu-img adds that the protocol layer
/// (the file) may take more options.
pub fn print_opts_help(fmt: &str, no_file: bool) -> Res {
    print_opts(fmt, no_file, &format!("Supported {fmt} options:"), &|_| {
        true
    })
}

/// The options of `fmt` that `keep` selects, under `title`, as qemu-img
/// lists them.
pub fn print_opts(fmt: &str, no_file: bool, title: &str, keep: &dyn Fn(&str) -> bool) -> Res {
    let d = format::find_driver(fmt).map_err(lib)?;
    println!("{title}");
    for o in d.create_opts.iter().filter(|o| keep(o.name)) {
        let key = format!("{}=<{}>", o.name, kind_name(o.kind));
        println!("  {key:<22} - {}", o.help);
    }
    if no_file {
        println!("\nThe protocol level may support further options.");
        println!("Specify the target filename to include those options.");
    }
    Ok(0)
}

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "create";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut backing, mut bfmt, mut quiet) = ("raw".to_string(), None, None, false);
    let mut opts = CreateOptions::new();
    let mut opt_strs = Vec::new();
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = v,
            "b" => backing = Some(v),
            "F" => bfmt = Some(v),
            "o" => opt_strs.push(v),
            "q" => quiet = true,
            // The library always opens the backing file to check it.
            "u" => {
                return Err(fail(
                    "create -u is not supported: the backing file must exist and open",
                ))
            }
            _ => {}
        }
    }
    let pos = p.files();
    if opt_strs.iter().any(|o| o == "help" || o == "?") {
        return print_opts_help(&fmt, pos.is_empty());
    }
    for o in &opt_strs {
        opts.parse_into(o).map_err(lib)?;
    }
    if pos.is_empty() {
        return Err(usage_err(C, "Expecting image file name"));
    }
    if let Some(extra) = pos.get(2) {
        return Err(usage_err(C, format!("Unexpected argument: {extra}")));
    }
    let file = pos[0].clone();
    if let Some(s) = pos.get(1) {
        opts.set(
            format::options::SIZE,
            size_arg("image size", s)?.to_string(),
        );
    }
    if let Some(b) = &backing {
        opts.set(format::options::BACKING_FILE, b.clone());
    }
    if let Some(f) = &bfmt {
        opts.set(format::options::BACKING_FMT, f.clone());
    }
    let driver =
        format::find_driver(&fmt).map_err(|e| fail(format!("{file}: {}", describe(&e))))?;
    let backing = opts.get(format::options::BACKING_FILE).map(str::to_owned);
    if backing.is_some() && !driver.supports_backing {
        return Err(fail(format!(
            "{file}: Backing file not supported for file format '{fmt}'"
        )));
    }
    // Unknown options and a bad size fail before anything is printed.
    if let Some(k) = opts
        .keys()
        .find(|k| !driver.create_opts.iter().any(|d| d.name == *k))
    {
        return Err(fail(format!("{file}: Invalid parameter '{k}'")));
    }
    let mut size = opts.get_size(format::options::SIZE).map_err(|_| {
        fail(format!(
            "{file}: Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        ))
    })?;
    if size.is_none() && backing.is_none() {
        return Err(fail(format!(
            "{file}: Image creation needs a size parameter"
        )));
    }
    // As qemu-img: the backing file opens (and gives the size when none is
    // given) before anything is printed or made.
    if let Some(b) = &backing {
        let bsize = backing_size(&file, b, opts.get(format::options::BACKING_FMT))?;
        size = size.or(Some(bsize));
    }
    let size = size.unwrap_or(0);
    if !quiet {
        println!("{}", formatting_line(&file, &fmt, &opts, size, driver));
    }
    Image::create(&file, &fmt, &opts).map_err(|e| create_error(&file, &e))?;
    Ok(0)
}

/// qemu-img's "Formatting 'FILE', fmt=FMT size=N ..." line, printed before
/// the image is made: its options in qemu-img's order with its defaults.
fn formatting_line(
    file: &str,
    fmt: &str,
    opts: &CreateOptions,
    size: u64,
    driver: &format::Driver,
) -> String {
    let mut line = format!("Formatting '{file}', fmt={fmt}");
    if fmt == "qcow2" {
        for (k, v) in format::qcow2::create::formatting_opts(opts, size) {
            line += &format!(" {k}={v}");
        }
        return line;
    }
    for d in driver.create_opts {
        let v = if d.name == format::options::SIZE {
            Some(size.to_string())
        } else {
            opts.get(d.name).map(str::to_owned)
        };
        if let Some(v) = v {
            line += &format!(" {}={v}", d.name);
        }
    }
    line
}

/// Opens the backing file named for a new image (relative to the image's
/// directory) and returns its size, failing in qemu-img's words.
fn backing_size(file: &str, backing: &str, bfmt: Option<&str>) -> Result<u64, Fail> {
    let path = format::resolve_relative(std::path::Path::new(file), backing);
    let shown = path.display().to_string();
    // Only its size is read, sharing the file with any writer (as
    // qemu-img create does).
    let opts = OpenOptions {
        format: bfmt.map(str::to_owned),
        read_only: true,
        no_backing: true,
        metadata_only: true,
        force_share: true,
        ..Default::default()
    };
    match Image::open(&path, &opts) {
        Ok(img) if bfmt.is_some() => Ok(img.size()),
        Ok(img) => Err(fail(format!(
            "{file}: Backing file specified without backing format\nDetected format of {}.",
            img.format_name()
        ))),
        Err(e) => {
            // An OS error names the file, a format's complaint stands alone.
            let why = match &e {
                cowblk::Error::Io { .. } | cowblk::Error::NotFound(_) => {
                    format!("Could not open '{shown}': {}", errno_text(e.errno()))
                }
                e => {
                    let d = describe(e);
                    let ctx = format!("Could not open '{}': ", path.display());
                    match d.find(&ctx) {
                        Some(i) => d[i + ctx.len()..].to_string(),
                        None => d,
                    }
                }
            };
            Err(fail(format!(
                "{file}: {why}\nCould not open backing image."
            )))
        }
    }
}

/// A failed creation as qemu-img reports it: "FILE: why", the library's
/// category and its "could not create 'FILE'" context left out (the
/// reason stays as the library words it, in QEMU's words), an I/O error as
/// "Could not create 'FILE': strerror".
pub fn create_error(file: &str, e: &cowblk::Error) -> Fail {
    let d = describe(e);
    let ctx = format!("could not create '{file}': ");
    let why = match d.find(&ctx) {
        Some(i) => &d[i + ctx.len()..],
        None => d.as_str(),
    };
    let why = match why.strip_prefix(&ctx) {
        Some(os) => format!("Could not create '{file}': {os}"),
        None => why.to_string(),
    };
    fail(format!("{file}: {why}"))
}
