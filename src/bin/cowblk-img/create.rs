//! `create`: a new image, reported with qemu-img's "Formatting" line;
//! `-o help` (shared with convert).

use crate::args::size_arg;
use crate::args::{fail, lib, usage_err, Parser, Res};
use crate::shared::describe;
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
    let d = format::find_driver(fmt).map_err(lib)?;
    println!("Supported {fmt} options:");
    for o in d.create_opts {
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
    if pos.is_empty() || pos.len() > 2 {
        return Err(usage_err(C, "Expecting image file name"));
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
    if backing.is_some() && !driver.supports_backing {
        return Err(fail(format!(
            "{file}: Backing file not supported for file format '{fmt}'"
        )));
    }
    if opts.get(format::options::SIZE).is_none() && backing.is_none() {
        return Err(fail(format!(
            "{file}: Image creation needs a size parameter"
        )));
    }
    Image::create(&file, &fmt, &opts).map_err(lib)?;
    if !quiet {
        // Report the options as created, in the driver's order.
        let created = Image::open(
            &file,
            &OpenOptions {
                format: Some(fmt.clone()),
                read_only: true,
                no_backing: true,
                ..Default::default()
            },
        )
        .map_err(lib)?;
        let mut line = format!("Formatting '{file}', fmt={fmt}");
        if fmt == "qcow2" {
            // qemu-img's order and defaults.
            for (k, v) in format::qcow2::create::formatting_opts(&opts, created.size()) {
                line += &format!(" {k}={v}");
            }
        }
        for d in driver.create_opts.iter().filter(|_| fmt != "qcow2") {
            let v = if d.name == format::options::SIZE {
                Some(created.size().to_string())
            } else {
                opts.get(d.name).map(str::to_owned)
            };
            if let Some(v) = v {
                line += &format!(" {}={v}", d.name);
            }
        }
        println!("{line}");
    }
    Ok(0)
}
