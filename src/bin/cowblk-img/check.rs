//! `check`: the format's consistency check (and repair), with qemu-img's
//! output and exit codes.

use crate::args::{fail, lib, one_file, output_arg, usage_err, Fail, Output, Parser, Res};
use crate::open::{force_share, open, open_with};
use crate::shared::qemu_json;
use cowblk::format::{CheckReport, Repair};
use cowblk::ops;
use cowblk::Error;
use cowblk::OpenOptions;
use serde_json::{json, Map, Value};
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "check";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut out, mut repair, mut quiet) = (None, Output::Human, Repair::None, false);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "output" => out = output_arg(&v, C)?,
            "r" => {
                repair = match v.as_str() {
                    "leaks" => Repair::Leaks,
                    "all" => Repair::All,
                    o => {
                        return Err(usage_err(
                            C,
                            format!("--repair (-r) expects 'leaks' or 'all' not '{o}'"),
                        ))
                    }
                }
            }
            "q" => quiet = true,
            "U" => force_share(),
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    let img = open_with(
        &file,
        &OpenOptions {
            format: fmt,
            read_only: repair == Repair::None,
            repair: repair != Repair::None,
            ..Default::default()
        },
    )?;
    let r: CheckReport = match img.check_progress(repair, &mut ops::no_progress) {
        Ok(r) => r,
        Err(Error::Unsupported(_)) => {
            return Err(Fail {
                code: 63,
                ..fail("This image format does not support checks")
            })
        }
        Err(e) => return Err(lib(e)),
    };
    img.close().map_err(lib)?;
    // The checker's findings go to stderr in every mode, as qemu-img's.
    for msg in &r.messages {
        eprintln!("{msg}");
    }
    if let Some(why) = &r.failure {
        return Err(fail(format!("Check failed: {why}")));
    }
    match out {
        Output::Json => {
            let mut m = Map::new();
            // Key order and omitted zero counts as qemu-img's output.
            if let Some(e) = r.image_end_offset.filter(|&e| e > 0) {
                m.insert("image-end-offset".into(), json!(e));
            }
            if let Some(c) = r.compressed_clusters.filter(|&c| c > 0) {
                m.insert("compressed-clusters".into(), json!(c));
            }
            if let Some(t) = r.total_clusters.filter(|&t| t > 0) {
                m.insert("total-clusters".into(), json!(t));
            }
            // What is left (qemu-img reports its second check's counts
            // after a repair).
            if r.corruptions > r.corruptions_fixed {
                m.insert(
                    "corruptions".into(),
                    json!(r.corruptions - r.corruptions_fixed),
                );
            }
            if r.corruptions_fixed > 0 {
                m.insert("corruptions-fixed".into(), json!(r.corruptions_fixed));
            }
            m.insert("check-errors".into(), json!(r.check_errors));
            for (k, v) in [
                ("leaks", r.leaks - r.leaks_fixed),
                ("leaks-fixed", r.leaks_fixed),
            ] {
                if v > 0 {
                    m.insert(k.into(), json!(v));
                }
            }
            if let Some(a) = r.allocated_clusters.filter(|&a| a > 0) {
                m.insert("allocated-clusters".into(), json!(a));
            }
            m.insert("filename".into(), json!(file));
            m.insert("format".into(), json!(img_format(&file)));
            if let Some(f) = r.fragmented_clusters.filter(|&f| f > 0) {
                m.insert("fragmented-clusters".into(), json!(f));
            }
            println!("{}", qemu_json(&Value::Object(m)));
        }
        Output::Human if !quiet => {
            if r.leaks_fixed > 0 || r.corruptions_fixed > 0 {
                println!(
                    "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                    r.leaks_fixed, r.corruptions_fixed
                );
            }
            let corr = r.corruptions - r.corruptions_fixed;
            let leaks = r.leaks - r.leaks_fixed;
            if corr == 0 && leaks == 0 && r.check_errors == 0 {
                println!("No errors were found on the image.");
            }
            if corr > 0 {
                println!("\n{corr} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.");
            }
            if leaks > 0 {
                println!("\n{leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.");
            }
            if r.check_errors > 0 {
                println!(
                    "\n{} internal errors have occurred during the check.",
                    r.check_errors
                );
            }
            if let (Some(t), Some(a)) = (r.total_clusters, r.allocated_clusters) {
                if t > 0 && a > 0 {
                    let pct = |n: Option<u64>| n.unwrap_or(0) as f64 * 100.0 / a as f64;
                    println!(
                        "{a}/{t} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                        a as f64 * 100.0 / t as f64,
                        pct(r.fragmented_clusters),
                        pct(r.compressed_clusters)
                    );
                }
            }
            if let Some(e) = r.image_end_offset.filter(|&e| e > 0) {
                println!("Image end offset: {e}");
            }
        }
        Output::Human => {}
    }
    Ok(if r.check_errors > 0 {
        1
    } else if r.corruptions > r.corruptions_fixed {
        2
    } else if r.leaks > r.leaks_fixed {
        3
    } else {
        0
    })
}

fn img_format(file: &str) -> String {
    open(file, None, true)
        .map(|i| i.format_name().to_string())
        .unwrap_or_default()
}
