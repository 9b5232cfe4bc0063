//! cowblk-io: qemu-io's syntax and output over the cowblk library.
//!
//! `cowblk-io [-f FMT] [-r] [-s] [-c CMD]... FILE`; commands run in order,
//! each printing what qemu-io prints; the exit code is 1 if any failed.
//! table.rs declares the options and commands; one module per kind of
//! command.

#[path = "../shared/mod.rs"]
mod shared;

mod aio;
mod flags;
mod open;
mod report;
mod rw;
mod session;
mod table;

use cowblk::OpenOptions;
use session::Session;
use shared::getopt::Getopt;
use shared::{doc, spec};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

const PROG: &str = "cowblk-io";

struct Args {
    cmds: Vec<String>,
    format: Option<String>,
    read_only: bool,
    /// -s: writes go to a temporary overlay.
    snapshot: bool,
    /// --confined: hold the files the image names to its directory.
    confined: bool,
    force_share: bool,
    file: Option<String>,
}

/// The command line, read through the table's options.
fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        cmds: Vec::new(),
        format: None,
        read_only: false,
        snapshot: false,
        confined: false,
        force_share: false,
        file: None,
    };
    let words = std::env::args_os()
        .skip(1)
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut g = Getopt::new(words, table::TOOL.opts);
    while let Some((o, v)) = g.next_opt().map_err(|e| e.to_string())? {
        match o.long {
            "cmd" => a.cmds.push(v),
            "format" => a.format = Some(v),
            "read-only" => a.read_only = true,
            "snapshot" => a.snapshot = true,
            "confined" => a.confined = true,
            "force-share" => a.force_share = true,
            "copy-on-read" => return Err("copy-on-read is not supported".into()),
            "help" => {
                print!("{}", doc::io_usage(&table::TOOL));
                std::process::exit(0);
            }
            "version" => {
                println!("{PROG} version {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            // Host I/O tuning: declared for compatibility, one way here.
            _ => {}
        }
    }
    let mut files = g.positional().into_iter();
    a.file = files.next();
    if let Some(extra) = files.next() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    Ok(a)
}

fn main() {
    shared::init(PROG);
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            // As qemu-io: the error, then the usage on stdout.
            shared::error(PROG, e);
            print!("{}", doc::io_usage(&table::TOOL));
            std::process::exit(1);
        }
    };
    if let (Some(file), true, false) = (&args.file, args.force_share, args.read_only) {
        shared::error(
            PROG,
            format!(
                "can't open device {file}: force-share=on can only be used with read-only images"
            ),
        );
        std::process::exit(1);
    }
    open::set_confined(args.confined);
    let opts = OpenOptions {
        format: args.format,
        read_only: args.read_only,
        confined: args.confined,
        force_share: args.force_share,
        ..Default::default()
    };
    let img = args
        .file
        .map(|file| match open::open_image(&file, &opts, args.snapshot) {
            Ok(i) => i,
            Err(()) => std::process::exit(1),
        });
    let mut s = Session {
        img,
        aio: Vec::new(),
        quit: false,
    };
    let mut failed = false;
    if args.cmds.is_empty() {
        let stdin = std::io::stdin();
        let tty = stdin.is_terminal();
        loop {
            if tty {
                print!("{PROG}> ");
                let _ = std::io::stdout().flush();
            }
            let mut line = String::new();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            failed |= s.run(line.trim()).is_err();
            let _ = std::io::stdout().flush();
            if s.quit {
                break;
            }
        }
    } else {
        for c in &args.cmds {
            failed |= s.run(c).is_err();
            if s.quit {
                break;
            }
        }
    }
    s.drain();
    let Session { img, .. } = s;
    let close = match img.map(Arc::try_unwrap) {
        Some(Ok(img)) => img.close(),
        Some(Err(img)) => img.flush(),
        None => Ok(()),
    };
    if let Err(e) = close {
        shared::error(PROG, shared::describe(&e));
        failed = true;
    }
    let _ = std::io::stdout().flush();
    std::process::exit(if failed { 1 } else { 0 });
}
