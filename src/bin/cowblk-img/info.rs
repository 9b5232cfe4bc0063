//! `info`: an image's (or its chain's) metadata, human or JSON, laid out
//! as qemu-img's.

use crate::args::{lib, one_file, output_arg, Output, Parser, Res};
use crate::open::{force_share, open_with};
use crate::shared::{qemu_json, size_to_str};
use crate::snapshot::snapshot_table;
use cowblk::format::info::{fields_human, fields_json};
use cowblk::format::SnapshotInfo;
use cowblk::{Image, ImageInfo, OpenOptions};
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;

/// The image file's length and disk usage as QEMU's file driver reports
/// them: the length in whole 512-byte sectors, rounded up.
fn file_node(path: &str) -> (u64, u64) {
    std::fs::metadata(path)
        .map(|m| (m.len().div_ceil(512) * 512, m.blocks() * 512))
        .unwrap_or((0, 0))
}

fn info_json(i: &ImageInfo, snaps: &[SnapshotInfo]) -> Value {
    let (flen, fdisk) = file_node(&i.filename);
    let mut m = Map::new();
    m.insert(
        "children".into(),
        json!([{ "name": "file", "info": {
            "children": [],
            "virtual-size": flen,
            "filename": i.filename,
            "format": "file",
            "actual-size": fdisk,
            "format-specific": { "type": "file", "data": {} },
            "dirty-flag": false,
        }}]),
    );
    if let Some(f) = &i.backing_format {
        m.insert("backing-filename-format".into(), json!(f));
    }
    if !snaps.is_empty() {
        let list: Vec<Value> = snaps
            .iter()
            .map(|s| {
                let mut o = Map::new();
                if let Some(ic) = s.icount {
                    o.insert("icount".into(), json!(ic));
                }
                o.insert(
                    "vm-clock-nsec".into(),
                    json!(s.vm_clock_nsec % 1_000_000_000),
                );
                o.insert("name".into(), json!(s.name));
                o.insert("date-sec".into(), json!(s.date_sec));
                o.insert("date-nsec".into(), json!(s.date_nsec));
                o.insert(
                    "vm-clock-sec".into(),
                    json!(s.vm_clock_nsec / 1_000_000_000),
                );
                o.insert("id".into(), json!(s.id));
                o.insert("vm-state-size".into(), json!(s.vm_state_size));
                Value::Object(o)
            })
            .collect();
        m.insert("snapshots".into(), Value::Array(list));
    }
    m.insert("virtual-size".into(), json!(i.virtual_size));
    m.insert("filename".into(), json!(i.filename));
    if i.cluster_size > 0 {
        m.insert("cluster-size".into(), json!(i.cluster_size));
    }
    m.insert("format".into(), json!(i.format));
    m.insert("actual-size".into(), json!(i.disk_size));
    if !i.specific.is_empty() {
        m.insert(
            "format-specific".into(),
            json!({ "type": i.format, "data": fields_json(&i.specific) }),
        );
    }
    if let (Some(b), Some(p)) = (&i.backing_file, &i.backing_path) {
        m.insert("full-backing-filename".into(), json!(p));
        m.insert("backing-filename".into(), json!(b));
    }
    m.insert("dirty-flag".into(), json!(i.dirty));
    Value::Object(m)
}

fn info_human(i: &ImageInfo, snaps: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
        i.filename,
        i.format,
        size_to_str(i.virtual_size),
        i.virtual_size,
        size_to_str(i.disk_size)
    );
    if i.cluster_size > 0 {
        s += &format!("cluster_size: {}\n", i.cluster_size);
    }
    if i.dirty {
        s += "cleanly shut down: no\n";
    }
    if let (Some(b), Some(p)) = (&i.backing_file, &i.backing_path) {
        if b == p {
            s += &format!("backing file: {b}\n");
        } else {
            s += &format!("backing file: {b} (actual path: {p})\n");
        }
    }
    if let Some(f) = &i.backing_format {
        s += &format!("backing file format: {f}\n");
    }
    if !snaps.is_empty() {
        s += "Snapshot list:\n";
        s += &snapshot_table(snaps);
    }
    if !i.specific.is_empty() {
        s += "Format specific information:\n";
        s += &fields_human(&i.specific, 4);
    }
    let (flen, fdisk) = file_node(&i.filename);
    s += &format!(
        "Child node '/file':\n    filename: {}\n    protocol type: file\n    file length: {} ({flen} bytes)\n    disk size: {}\n",
        i.filename,
        size_to_str(flen),
        size_to_str(fdisk)
    );
    s
}

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "info";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut out, mut chain) = (None, Output::Human, false);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "output" => out = output_arg(&v, C)?,
            "b" => chain = true,
            "U" => force_share(),
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    // As qemu-img info: metadata only; the files the image names are shown,
    // not opened (they may be missing), and the chain only when asked.
    let img = open_with(
        &file,
        &OpenOptions {
            format: fmt,
            read_only: true,
            no_backing: !chain,
            metadata_only: true,
            ..Default::default()
        },
    )?;
    let mut layers = Vec::new();
    let mut cur: Option<&Image> = Some(&img);
    let mut holder;
    while let Some(l) = cur {
        layers.push((l.info_cheap().map_err(lib)?, l.snapshots()));
        if !chain {
            break;
        }
        holder = l.backing();
        cur = holder.as_deref().and_then(|b| b.as_image());
        // `holder` keeps the layer alive while `cur` borrows it.
        let _ = &holder;
    }
    match out {
        Output::Json if chain => {
            let arr: Vec<Value> = layers.iter().map(|(i, s)| info_json(i, s)).collect();
            println!("{}", qemu_json(&Value::Array(arr)));
        }
        Output::Json => println!("{}", qemu_json(&info_json(&layers[0].0, &layers[0].1))),
        Output::Human => {
            let parts: Vec<String> = layers.iter().map(|(i, s)| info_human(i, s)).collect();
            print!("{}", parts.join("\n"));
        }
    }
    Ok(0)
}
