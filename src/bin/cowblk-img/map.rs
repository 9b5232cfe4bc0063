//! `map`: the allocation across the backing chain, human or JSON.

use crate::args::{fail, lib, one_file, output_arg, size_arg, Output, Parser, Res};
use crate::open::{force_share, open};
use cowblk::ops;
use std::ffi::OsString;

fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "map";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut out) = (None, Output::Human);
    let (mut start, mut max_len) = (0u64, u64::MAX);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "output" => out = output_arg(&v, C)?,
            "s" => start = size_arg("start offset", &v)?,
            "l" => max_len = size_arg("max length", &v)?,
            "U" => force_share(),
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    let img = open(&file, fmt, true)?;
    let mut entries = ops::map(&img, start, max_len).map_err(lib)?;
    if entries.is_empty() {
        // Nothing to map (an empty image, a start at or past the end):
        // qemu-img still prints one empty run.
        entries.push(ops::MapEntry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        });
    }
    match out {
        Output::Json => {
            let lines: Vec<String> = entries
                .iter()
                .map(|e| {
                    let mut s = format!(
                        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
                        e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
                    );
                    if let Some(o) = e.offset {
                        s += &format!(", \"offset\": {o}");
                    }
                    s + "}"
                })
                .collect();
            println!("[{}]", lines.join(",\n"));
        }
        Output::Human => {
            println!("{:<16}{:<16}{:<16}File", "Offset", "Length", "Mapped to");
            for e in entries.iter().filter(|e| e.data || e.compressed) {
                // A compressed run has no host offset to show.
                if e.compressed {
                    return Err(fail(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                }
                if let (Some(o), Some(f)) = (e.offset, &e.file) {
                    println!("{:<16}{:<16}{:<16}{f}", hex(e.start), hex(e.length), hex(o));
                }
            }
        }
    }
    Ok(0)
}
