//! `measure`: the file size a new image needs.

use crate::args::{fail, lib, output_arg, size_arg, snapshot_ref, Output, Parser, Res};
use crate::open::{force_share, open_with};
use crate::shared::qemu_json;
use cowblk::format;
use cowblk::ops;
use cowblk::{CreateOptions, Error, OpenOptions};
use serde_json::{json, Map, Value};
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "measure";
    let mut p = Parser::new(C, args);
    let (mut out, mut ofmt, mut fmt) = (Output::Human, "raw".to_string(), None);
    let (mut opt_strs, mut size, mut snap) = (Vec::new(), None, None);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "output" => out = output_arg(&v, C)?,
            "O" => ofmt = v,
            "o" => opt_strs.push(v),
            "f" => fmt = Some(v),
            "l" => snap = Some(snapshot_ref(&v)?),
            "U" => force_share(),
            "size" => size = Some(size_arg("image size", &v)?),
            _ => {}
        }
    }
    let files = p.files();
    if files.len() > 1 {
        return Err(fail("At most one filename argument is allowed."));
    }
    if size.is_some() && !files.is_empty() {
        return Err(fail("--size N cannot be used together with a filename."));
    }
    if size.is_none() && files.is_empty() {
        return Err(fail("Either --size N or one filename must be specified."));
    }
    format::find_driver(&ofmt).map_err(lib)?;
    let mut opts = CreateOptions::new();
    for o in &opt_strs {
        opts.parse_into(o).map_err(lib)?;
    }
    let input = match files.first() {
        Some(f) => Some(open_with(
            f,
            &OpenOptions {
                format: fmt,
                read_only: true,
                snapshot: snap,
                ..Default::default()
            },
        )?),
        None => None,
    };
    let m = ops::measure(&ofmt, &opts, input.as_ref(), size).map_err(|e| match e {
        Error::InvalidArgument(m) => fail(m),
        e => lib(e),
    })?;
    match out {
        Output::Human => {
            println!("required size: {}", m.required);
            println!("fully allocated size: {}", m.fully_allocated);
            if let Some(b) = m.bitmaps {
                println!("bitmaps size: {b}");
            }
        }
        Output::Json => {
            let mut o = Map::new();
            if let Some(b) = m.bitmaps {
                o.insert("bitmaps".into(), json!(b));
            }
            o.insert("required".into(), json!(m.required));
            o.insert("fully-allocated".into(), json!(m.fully_allocated));
            println!("{}", qemu_json(&Value::Object(o)));
        }
    }
    Ok(0)
}
