//! cowblk-img: qemu-img's commands, options, outputs and exit codes over
//! the cowblk library. Every operation is a library call (`cowblk::ops`,
//! `Image`); this crate only parses arguments (table.rs declares them) and
//! prints. One module per command.

#[path = "../shared/mod.rs"]
mod shared;

mod amend;
mod args;
mod bench;
mod check;
mod commit;
mod compare;
mod convert;
mod create;
mod dd;
mod info;
mod map;
mod measure;
mod meta;
mod open;
mod rebase;
mod resize;
mod snapshot;
mod table;

use args::{fail, Fail};
use shared::{doc, spec};
use std::ffi::OsString;

const PROG: &str = "cowblk-img";

fn main() {
    shared::init(PROG);
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        shared::error(PROG, "Not enough arguments");
        eprintln!("Try '{PROG} --help' for more info");
        std::process::exit(1);
    }
    let cmd = args.remove(0).to_string_lossy().into_owned();
    let r = match cmd.as_str() {
        "-h" | "--help" => {
            print!("{}", doc::img_help(&table::TOOL));
            Ok(0)
        }
        "-V" | "--version" => {
            println!("{PROG} version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "create" => create::run(args),
        "info" => info::run(args),
        "map" => map::run(args),
        "check" => check::run(args),
        "convert" => convert::run(args),
        "snapshot" => snapshot::run(args),
        "compare" => compare::run(args),
        "resize" => resize::run(args),
        "commit" => commit::run(args),
        "rebase" => rebase::run(args),
        "bench" => bench::run(args),
        "dd" => dd::run(args),
        "measure" => measure::run(args),
        "amend" => amend::run(args),
        "meta" => meta::run(args),
        other => Err(Fail {
            usage: Some(""),
            ..fail(format!("Command not found: {other}"))
        }),
    };
    let code = match r {
        Ok(c) => c,
        Err(f) => {
            match f.getopt {
                Some(c) => eprintln!("{PROG} {c}: {}", f.msg),
                None => shared::error(PROG, &f.msg),
            }
            match f.usage {
                Some("") => eprintln!("Try '{PROG} --help' for more info"),
                Some(c) => eprintln!("Try '{PROG} {c} --help' for more info"),
                None => {}
            }
            f.code
        }
    };
    std::process::exit(code);
}
