//! `cowblk-img meta`: key/value metadata inside images
//! (docs/specs/metadata.txt). list [--output=json] | get | set [--file] |
//! delete, each with -f FMT as everywhere.

use super::{fail, lib, open_with, output_arg, parser, unexpected, usage_err, val, Output, Res};
use cowblk::OpenOptions;
use lexopt::prelude::*;
use serde_json::json;
use std::ffi::OsString;
use std::io::Write;

pub const HELP: &str = "Read and change key/value metadata stored inside an image.  Usage:

  cowblk-img meta list [-f FMT] [-U] [--output human|json] FILENAME
  cowblk-img meta get [-f FMT] [-U] FILENAME KEY
  cowblk-img meta set [-f FMT] FILENAME KEY VALUE
  cowblk-img meta set [-f FMT] FILENAME KEY --file PATH
  cowblk-img meta delete [-f FMT] FILENAME KEY

list prints one key per line (JSON: an array of {\"key\", \"size\"});
get writes the value's bytes to stdout, and exits 1 if the key is absent.
Formats: qcow2 (a hidden snapshot named cowblk-metadata) and add-cow;
raw cannot hold metadata.";

pub fn meta(args: Vec<OsString>) -> Res {
    const C: &str = "meta";
    let mut args = args;
    if args.is_empty() {
        return Err(usage_err(
            C,
            "Expecting a subcommand: list, get, set or delete",
        ));
    }
    let sub = args.remove(0).to_string_lossy().into_owned();
    let mut p = parser(args);
    let (mut fmt, mut out, mut file, mut share) = (None, Output::Human, None, false);
    let mut pos: Vec<OsString> = Vec::new();
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Long("output") if sub == "list" => out = output_arg(&val(&mut p, C)?, C)?,
            Long("file") if sub == "set" => file = Some(val(&mut p, C)?),
            Short('U') | Long("force-share") if sub == "list" || sub == "get" => share = true,
            Value(v) => pos.push(v),
            a => return Err(unexpected(a, C)),
        }
    }
    let want = match (sub.as_str(), &file) {
        ("list", _) => 1,
        ("get" | "delete", _) | ("set", Some(_)) => 2,
        ("set", None) => 3,
        _ => {
            return Err(usage_err(
                C,
                format!("Unknown subcommand '{sub}' (list, get, set or delete)"),
            ))
        }
    };
    if pos.len() != want {
        return Err(usage_err(
            C,
            format!("'meta {sub}' expects {want} arguments, got {}", pos.len()),
        ));
    }
    let name = pos[0].to_string_lossy().into_owned();
    let key = |i: usize| -> Result<String, super::Fail> {
        pos[i]
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| fail("Metadata keys must be valid UTF-8"))
    };
    let read_only = sub == "list" || sub == "get";
    let img = open_with(
        &name,
        &OpenOptions {
            format: fmt,
            read_only,
            force_share: share,
            ..Default::default()
        },
    )?;
    match sub.as_str() {
        "list" => {
            let l = img.meta_list().map_err(lib)?;
            match out {
                Output::Human => {
                    for e in &l {
                        println!("{}", e.key);
                    }
                }
                Output::Json => {
                    let v: Vec<_> = l
                        .iter()
                        .map(|e| json!({"key": e.key, "size": e.size}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into())
                    );
                }
            }
        }
        "get" => {
            let k = key(1)?;
            let v = img
                .meta_get(&k)
                .map_err(lib)?
                .ok_or_else(|| fail(format!("No metadata key '{k}' in '{name}'")))?;
            let mut so = std::io::stdout().lock();
            so.write_all(&v)
                .and_then(|_| so.flush())
                .map_err(|e| fail(format!("Could not write the value: {e}")))?;
        }
        "set" => {
            let k = key(1)?;
            let v = match &file {
                Some(path) => std::fs::read(path)
                    .map_err(|e| fail(format!("Could not read '{path}': {e}")))?,
                None => {
                    use std::os::unix::ffi::OsStrExt;
                    pos[2].as_bytes().to_vec()
                }
            };
            img.meta_set(&k, &v).map_err(lib)?;
        }
        "delete" => {
            let k = key(1)?;
            img.meta_delete(&k).map_err(|e| match e {
                cowblk::Error::NotFound(_) => fail(format!("No metadata key '{k}' in '{name}'")),
                e => lib(e),
            })?;
        }
        _ => unreachable!("checked above"),
    }
    img.close().map_err(lib)?;
    Ok(0)
}
