//! cowblk-img: qemu-img's commands, options, outputs and exit codes over
//! the cowblk library. Every operation is a library call (`cowblk::ops`,
//! `Image`); this file only parses arguments and prints.

mod amend;
#[path = "../shared/mod.rs"]
mod shared;
mod snapshot;

mod meta;

use cowblk::format::info::{fields_human, fields_json};
use cowblk::format::{self, CheckReport, OptKind, Repair, SnapshotInfo};
use cowblk::ops::{self, BenchOptions};
use cowblk::{CreateOptions, Error, Image, ImageInfo, OpenOptions, SnapshotRef};
use lexopt::prelude::*;
use serde_json::{json, Map, Value};
use shared::{describe, qemu_json, size_to_str, ProgressBar};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

const PROG: &str = "cowblk-img";

/// A command's failure: what to print and the exit code.
struct Fail {
    msg: String,
    code: i32,
    /// Point at `cowblk-img CMD --help` (bad usage).
    usage: Option<&'static str>,
    /// The command whose name prefixes the message instead of the tool's
    /// alone, as getopt's messages are ("cowblk-img info: ...").
    getopt: Option<&'static str>,
}

type Res = Result<i32, Fail>;

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        code: 1,
        usage: None,
        getopt: None,
    }
}

fn usage_err(cmd: &'static str, msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        code: 1,
        usage: Some(cmd),
        getopt: None,
    }
}

fn lib(e: Error) -> Fail {
    fail(describe(&e))
}

const HELP: &str = "QEMU-style disk image utility over the cowblk library.  Usage:

  cowblk-img [-h | -V] COMMAND [--help | command options]

Commands (run cowblk-img COMMAND --help for command-specific help):

  bench - Run simple image benchmark
  check - Check basic image integrity
  commit - Commit image to its backing file
  compare - Check if two images have the same contents
  convert - Copy one image to another with optional format conversion
  create - Create and format new image file
  dd - Copy input to output with optional format conversion
  info - Display information about image
  map - Dump image metadata
  measure - Calculate file size required for a new image
  meta - List, read and change key/value metadata inside an image
  rebase - Change backing file of the image
  resize - Resize the image to the new size
  snapshot - List, apply, create or delete snapshots in image

Commands that open an image take --confined: files the image names must be
regular files inside its directory (for untrusted images; docs/CLI.md).

Exit codes are qemu-img's: 0 success, 1 error; check: 2 corruptions,
3 leaks, 63 no checks for the format; compare: 1 different, 2 error.";

fn cmd_help(cmd: &str) -> &'static str {
    match cmd {
        "meta" => meta::HELP,
        "create" => {
            "Create and format a new image file.  Usage:

  cowblk-img create [-q] [-f FMT] [-b BACKING_FILE -F BACKING_FMT]
        [-o OPTIONS] FILENAME [SIZE]

  -f FMT            format of the new image (default raw)
  -b BACKING_FILE   backing file (relative names resolve against FILENAME's directory)
  -F BACKING_FMT    format of the backing file (required with -b)
  -o OPTIONS        KEY=VALUE,... format options; '-o help' lists them
  -q                quiet
  SIZE              size with an optional k, M, G, T suffix"
        }
        "info" => {
            "Display information about an image.  Usage:

  cowblk-img info [-f FMT] [-b | --backing-chain] [-U] [--output human|json] FILENAME"
        }
        "map" => {
            "Dump the image's allocation map.  Usage:

  cowblk-img map [-f FMT] [--output human|json] [-s | --start-offset OFFSET]
        [-l | --max-length LENGTH] [-U] FILENAME

JSON entries carry start, length, depth, present, zero, data, compressed, offset."
        }
        "check" => {
            "Check an image's metadata.  Usage:

  cowblk-img check [-p] [-q] [-f FMT] [-r leaks|all] [--output human|json] [-U] FILENAME

  -p    show progress on a terminal

Exit codes: 0 clean, 1 check error, 2 corruptions, 3 leaks, 63 format has no checks."
        }
        "convert" => {
            "Copy an image into a new one, possibly of another format.  Usage:

  cowblk-img convert [-p] [-q] [-n] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS]
        [-l SNAPSHOT|snapshot.id=ID|snapshot.name=NAME] FILENAME OUTPUT

  -n    the output exists already: do not create it
  -p    show progress on a terminal"
        }
        "snapshot" => {
            "List, create, apply or delete internal snapshots (qcow2).  Usage:

  cowblk-img snapshot [-f FMT] [-q] [-U] [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILENAME"
        }
        "compare" => {
            "Compare the contents of two images.  Usage:

  cowblk-img compare [-f FMT] [-F FMT] [-p] [-q] [-s] [-U] FILENAME1 FILENAME2

  -s    strict: images of different sizes differ
Exit codes: 0 identical, 1 different, 2 error."
        }
        "resize" => {
            "Resize an image.  Usage:

  cowblk-img resize [-f FMT] [-q] [--shrink] FILENAME [+|-]SIZE"
        }
        "measure" => {
            "Calculate the file size required for a new image.  Usage:

  cowblk-img measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]
        [--size N | [-f FMT] [-l SNAPSHOT] [-U] FILENAME]

  Prints the bytes a new OUTPUT_FMT image (default raw) made with OPTIONS
  needs: for N bytes of guest data, or to hold FILENAME's contents
  (required) and once fully allocated."
        }
        "dd" => {
            "Copy input to output with optional format conversion.  Usage:

  cowblk-img dd [-f FMT] [-O OUTPUT_FMT] [-U]
        [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT

  bs=BLOCK_SIZE  bytes per block, with k/M/G/T/P/E suffixes (default 512)
  count=BLOCKS   copy only up to BLOCKS blocks of the input
  skip=BLOCKS    skip BLOCKS blocks at the start of the input
  The output is created (format OUTPUT_FMT, default raw)."
        }
        "commit" => {
            "Write an overlay's own data into its backing file.  Usage:

  cowblk-img commit [-q] [-p] [-f FMT] [-d] [-b BASE] FILENAME

  -d    keep the overlay's data (do not empty it)"
        }
        "rebase" => {
            "Change an image's backing file.  Usage:

  cowblk-img rebase [-q] [-p] [-u] [-f FMT] -b BACKING_FILE [-F BACKING_FMT] FILENAME

  -u            unsafe: only record the new name, copy nothing
  -b \"\"         detach: copy in everything the image still reads from its
                backing file (for add-cow: the raw image file then stands alone)"
        }
        "bench" => {
            "Run a simple request benchmark.  Usage:

  cowblk-img bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-n] [-p]
        [--no-drain] [-o OFFSET] [--pattern=PATTERN] [-q] [-s BUFFER_SIZE]
        [-S STEP_SIZE] [-t CACHE] [-i AIO] [-w] [-U] FILENAME"
        }
        _ => HELP,
    }
}

fn main() {
    shared::init(PROG);
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        shared::error(PROG, "Not enough arguments");
        eprintln!("Try '{PROG} --help' for more info");
        std::process::exit(1);
    }
    let cmd = args.remove(0).to_string_lossy().into_owned();
    if OPENING.contains(&cmd.as_str()) {
        let before = args.len();
        args.retain(|a| a != "--confined");
        CONFINED.store(args.len() != before, Ordering::Relaxed);
    }
    let r = match cmd.as_str() {
        "-h" | "--help" => {
            println!("{HELP}");
            Ok(0)
        }
        "-V" | "--version" => {
            println!("{PROG} version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        _ if args.iter().any(|a| a == "--help" || a == "-h") && cmd_help(&cmd) != HELP => {
            println!("{}", cmd_help(&cmd));
            Ok(0)
        }
        "create" => create(args),
        "info" => info(args),
        "map" => map(args),
        "check" => check(args),
        "convert" => convert(args),
        "snapshot" => snapshot::snapshot(args),
        "compare" => compare(args),
        "resize" => resize(args),
        "commit" => commit(args),
        "rebase" => rebase(args),
        "bench" => bench(args),
        "dd" => dd(args),
        "amend" => amend::amend(args),
        "measure" => measure(args),
        "meta" => meta::meta(args),
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

// ---- argument helpers ----

fn parser(args: Vec<OsString>) -> lexopt::Parser {
    lexopt::Parser::from_args(args)
}

fn val(p: &mut lexopt::Parser, cmd: &'static str) -> Result<String, Fail> {
    p.value()
        .map(|v| v.to_string_lossy().into_owned())
        .map_err(|e| usage_err(cmd, e.to_string()))
}

/// An option the command does not take, in getopt's words.
fn unexpected(a: lexopt::Arg, cmd: &'static str) -> Fail {
    let msg = match a {
        Long(l) => format!("unrecognized option '--{l}'"),
        Short(c) => format!("invalid option -- '{c}'"),
        a => return usage_err(cmd, a.unexpected().to_string()),
    };
    Fail {
        getopt: Some(cmd),
        ..usage_err(cmd, msg)
    }
}

fn one_file(files: Vec<String>, cmd: &'static str) -> Result<String, Fail> {
    let mut files = files;
    if files.len() != 1 {
        return Err(usage_err(cmd, "Expecting one image file name"));
    }
    Ok(files.remove(0))
}

#[derive(Clone, Copy, PartialEq)]
enum Output {
    Human,
    Json,
}

fn output_arg(s: &str, cmd: &'static str) -> Result<Output, Fail> {
    match s {
        "human" => Ok(Output::Human),
        "json" => Ok(Output::Json),
        _ => Err(usage_err(
            cmd,
            format!("--output expects 'human' or 'json' not '{s}'"),
        )),
    }
}

/// A number argument in QEMU's grammar, bounded, with qemu-img's messages
/// ("Invalid image size specified: 'x'.").
fn cvtnum(name: &str, s: &str, min: u64, max: u64) -> Result<u64, Fail> {
    match format::options::cvtnum(s) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Err(format::options::SizeError::Invalid) => {
            Err(fail(format!("Invalid {name} specified: '{s}'.")))
        }
        _ => Err(fail(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

/// `cvtnum` for a 64-bit offset or size (0 to 2^63 - 1).
fn size_arg(name: &str, s: &str) -> Result<u64, Fail> {
    cvtnum(name, s, 0, i64::MAX as u64)
}

fn open(file: &str, fmt: Option<String>, read_only: bool) -> Result<Image, Fail> {
    open_with(
        file,
        &OpenOptions {
            format: fmt,
            read_only,
            ..Default::default()
        },
    )
}

/// Commands that open existing images: they take `--confined` anywhere
/// on their command line.
const OPENING: &[&str] = &[
    "info", "map", "check", "convert", "snapshot", "compare", "resize", "commit", "rebase",
    "bench", "dd", "meta",
];

/// `--confined` was given: every image opened holds the files it names to
/// its own directory (`OpenOptions::confined`).
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Set by -U/--force-share: opens of the command's source images share
/// every permission (read-only opens only, as in qemu-img).
static FORCE_SHARE: AtomicBool = AtomicBool::new(false);

fn force_share() {
    FORCE_SHARE.store(true, Ordering::Relaxed);
}

/// Opens an image. The library's warnings (a corrupt bit on a read-only
/// open) are not printed: qemu-img opens such images silently too.
fn open_with(file: &str, opts: &OpenOptions) -> Result<Image, Fail> {
    let mut opts = opts.clone();
    opts.force_share |= FORCE_SHARE.load(Ordering::Relaxed);
    opts.confined |= CONFINED.load(Ordering::Relaxed);
    let img = Image::open(file, &opts).map_err(|e| match e {
        // Said as qemu-img says it.
        Error::Locked(m) | Error::InvalidArgument(m) if is_lock_refusal(&m) => {
            fail(format!("Could not open '{file}': {m}"))
        }
        e => lib(e),
    })?;
    shared::warn_probed_raw(&img);
    Ok(img)
}

/// Whether a message is a lock conflict or a refused force-share.
fn is_lock_refusal(m: &str) -> bool {
    m.starts_with("Failed to get ") || m.starts_with("force-share=on")
}

/// A progress callback for `-p`, with its bar.
fn with_progress<T>(enabled: bool, f: impl FnOnce(ops::Progress) -> T) -> T {
    let mut bar = ProgressBar::new(enabled);
    let r = f(&mut |d, t| bar.update(d, t));
    bar.finish();
    r
}

// ---- create ----

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
fn print_opts_help(fmt: &str, no_file: bool) -> Res {
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

fn create(args: Vec<OsString>) -> Res {
    const C: &str = "create";
    let mut p = parser(args);
    let (mut fmt, mut backing, mut bfmt, mut quiet) = ("raw".to_string(), None, None, false);
    let mut opts = CreateOptions::new();
    let mut opt_strs = Vec::new();
    let mut pos = Vec::new();
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = val(&mut p, C)?,
            Short('b') => backing = Some(val(&mut p, C)?),
            Short('F') => bfmt = Some(val(&mut p, C)?),
            Short('o') => opt_strs.push(val(&mut p, C)?),
            Short('q') => quiet = true,
            // The library always opens the backing file to check it.
            Short('u') => {
                return Err(fail(
                    "create -u is not supported: the backing file must exist and open",
                ))
            }
            Value(v) => pos.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
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

// ---- info ----

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

fn date_str(sec: u64) -> String {
    // SAFETY: localtime_r fills the caller's struct; strftime writes at most
    // the buffer's size.
    unsafe {
        let t = sec as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y-%m-%d %H:%M:%S".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn snapshot_table(snaps: &[SnapshotInfo]) -> String {
    let mut s = format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    );
    for sn in snaps {
        let ms = sn.vm_clock_nsec / 1_000_000;
        let clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        );
        let icount = sn.icount.map(|i| i.to_string()).unwrap_or_default();
        s += &format!(
            "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            sn.id,
            sn.name,
            size_to_str(sn.vm_state_size),
            date_str(sn.date_sec),
            clock,
            icount
        );
    }
    s
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

fn info(args: Vec<OsString>) -> Res {
    const C: &str = "info";
    let mut p = parser(args);
    let (mut fmt, mut out, mut chain, mut files) = (None, Output::Human, false, Vec::new());
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') | Long("format") => fmt = Some(val(&mut p, C)?),
            Long("output") => out = output_arg(&val(&mut p, C)?, C)?,
            Short('b') | Long("backing-chain") => chain = true,
            Short('U') | Long("force-share") => force_share(),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
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

// ---- map ----

fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn map(args: Vec<OsString>) -> Res {
    const C: &str = "map";
    let mut p = parser(args);
    let (mut fmt, mut out, mut files) = (None, Output::Human, Vec::new());
    let (mut start, mut max_len) = (0u64, u64::MAX);
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') | Long("format") => fmt = Some(val(&mut p, C)?),
            Long("output") => out = output_arg(&val(&mut p, C)?, C)?,
            Short('s') | Long("start-offset") => {
                start = size_arg("start offset", &val(&mut p, C)?)?
            }
            Short('l') | Long("max-length") => max_len = size_arg("max length", &val(&mut p, C)?)?,
            Short('U') | Long("force-share") => force_share(),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
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

// ---- check ----

fn check(args: Vec<OsString>) -> Res {
    const C: &str = "check";
    let mut p = parser(args);
    let (mut fmt, mut out, mut files, mut repair, mut quiet, mut progress) =
        (None, Output::Human, Vec::new(), Repair::None, false, false);
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') | Long("format") => fmt = Some(val(&mut p, C)?),
            Long("output") => out = output_arg(&val(&mut p, C)?, C)?,
            Short('r') | Long("repair") => {
                repair = match val(&mut p, C)?.as_str() {
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
            Short('q') | Long("quiet") => quiet = true,
            Short('p') => progress = true,
            Short('U') | Long("force-share") => force_share(),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
    let img = open_with(
        &file,
        &OpenOptions {
            format: fmt,
            read_only: repair == Repair::None,
            repair: repair != Repair::None,
            ..Default::default()
        },
    )?;
    let r: CheckReport =
        match with_progress(progress && !quiet, |pr| img.check_progress(repair, pr)) {
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

// ---- convert ----

/// `-l` as qemu-img reads it: an argument starting with "snapshot." is an
/// option list of `snapshot.id=ID` and/or `snapshot.name=NAME` (",," is a
/// comma in a value; the last of a repeated key wins) selecting by id, by
/// name, or by both; anything else is a string matched as an id first,
/// then as a name.
fn snapshot_ref(s: &str) -> Result<SnapshotRef, Fail> {
    if !s.starts_with("snapshot.") {
        return Ok(SnapshotRef::IdOrName(s.into()));
    }
    let (mut id, mut name) = (None, None);
    for part in split_opts(s) {
        // QEMU reads a bare key as KEY=on, with a warning.
        let (key, v) = part.split_once('=').unwrap_or_else(|| {
            eprintln!(
                "cowblk-img: warning: short-form boolean option '{part}' deprecated\n\
                 Please use {part}=on instead"
            );
            (part.as_str(), "on")
        });
        match key {
            "snapshot.id" => id = Some(v.to_string()),
            "snapshot.name" => name = Some(v.to_string()),
            _ => {
                eprintln!("cowblk-img: Invalid parameter '{key}'");
                return Err(fail(format!("Failed in parsing snapshot param '{s}'")));
            }
        }
    }
    Ok(match (id, name) {
        (Some(i), Some(n)) => SnapshotRef::IdAndName(i, n),
        (Some(i), None) => SnapshotRef::Id(i),
        (None, Some(n)) => SnapshotRef::Name(n),
        // split_opts yields at least one part, and each sets one or fails.
        (None, None) => unreachable!("an option list with no option"),
    })
}

/// Splits a QEMU option list at single commas (",," is a literal comma);
/// a trailing comma ends the list.
fn split_opts(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            out.last_mut().unwrap().push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            out.last_mut().unwrap().push(',');
        } else {
            out.push(String::new());
        }
    }
    if out.len() > 1 && out.last().is_some_and(|p| p.is_empty()) {
        out.pop();
    }
    out
}

fn convert(args: Vec<OsString>) -> Res {
    const C: &str = "convert";
    let mut p = parser(args);
    let (mut fmt, mut ofmt, mut progress, mut quiet, mut no_create) =
        (None, "raw".to_string(), false, false, false);
    let (mut opt_strs, mut files, mut snap) = (Vec::new(), Vec::new(), None);
    let mut compress = false;
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('O') => ofmt = val(&mut p, C)?,
            Short('o') => opt_strs.push(val(&mut p, C)?),
            Short('p') => progress = true,
            Short('q') => quiet = true,
            Short('n') => no_create = true,
            Short('l') => snap = Some(snapshot_ref(&val(&mut p, C)?)?),
            // Cache modes, sparse size, coroutines, out-of-order: the
            // library has one way of doing each; accepted for scripts.
            Short('t') | Short('T') | Short('S') | Short('m') => {
                val(&mut p, C)?;
            }
            Short('W') => {}
            Short('U') | Long("force-share") => force_share(),
            Short('c') => compress = true,
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    if opt_strs.iter().any(|o| o == "help" || o == "?") {
        return print_opts_help(&ofmt, files.len() < 2);
    }
    if files.len() < 2 {
        return Err(fail("Must specify image file name"));
    }
    let out = files.pop().unwrap_or_default();
    // A snapshot names one source's state; with several sources qemu-img
    // refuses it.
    if snap.is_some() && files.len() > 1 {
        return Err(fail("No support for concatenating multiple snapshot"));
    }
    let srcs = files
        .iter()
        .map(|f| {
            let opts = OpenOptions {
                format: fmt.clone(),
                read_only: true,
                snapshot: snap.clone(),
                confined: CONFINED.load(Ordering::Relaxed),
                ..Default::default()
            };
            match Image::open(f, &opts) {
                // qemu-img's words for a snapshot the image does not have.
                Err(Error::NotFound(m)) if snap.is_some() && m.contains("snapshot '") => {
                    Err(fail("Failed to load snapshot: Can't find snapshot"))
                }
                _ => open_with(f, &opts),
            }
        })
        .collect::<Result<Vec<Image>, Fail>>()?;
    let total = srcs.iter().map(|s| s.size()).sum::<u64>();
    if !no_create {
        let mut opts = CreateOptions::new();
        for o in &opt_strs {
            opts.parse_into(o).map_err(lib)?;
        }
        // An explicit size must parse, but the sources' total wins, as in
        // qemu-img.
        opts.get_size(format::options::SIZE).map_err(|_| {
            fail(
                "Parameter 'size' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively.",
            )
        })?;
        opts.set(format::options::SIZE, total.to_string());
        Image::create(&out, &ofmt, &opts).map_err(lib)?;
    }
    // -U covers the sources only, as in qemu-img.
    FORCE_SHARE.store(false, Ordering::Relaxed);
    let dst = open(&out, Some(ofmt), false)?;
    if compress && !dst.supports_compression() {
        drop(dst);
        if !no_create {
            let _ = std::fs::remove_file(&out);
        }
        return Err(fail("Compression not supported for this file format"));
    }
    let refs: Vec<&Image> = srcs.iter().collect();
    with_progress(progress && !quiet, |pr| {
        if compress {
            ops::convert_compressed(&refs, &dst, !no_create, 0, pr)
        } else {
            ops::convert(&refs, &dst, !no_create, pr)
        }
    })
    .map_err(lib)?;
    // qemu-img convert does not carry internal snapshots (where qcow2
    // keeps metadata): cowblk copies the metadata itself, and says so.
    if let [src] = &refs[..] {
        if dst.meta_supported() {
            let n = src.meta_copy_to(&dst).map_err(lib)?;
            if n > 0 && !quiet {
                eprintln!("{PROG}: copied {n} metadata key(s) from '{}'", files[0]);
            }
        } else if src.meta_supported() {
            let n = src.meta_list().map_err(lib)?.len();
            if n > 0 {
                eprintln!(
                    "{PROG}: warning: {n} metadata key(s) not copied: {} cannot hold metadata",
                    dst.format_name()
                );
            }
        }
    }
    dst.close().map_err(lib)?;
    Ok(0)
}

// ---- measure ----

fn measure(args: Vec<OsString>) -> Res {
    const C: &str = "measure";
    let mut p = parser(args);
    let (mut out, mut ofmt, mut fmt) = (Output::Human, "raw".to_string(), None);
    let (mut opt_strs, mut size, mut snap, mut files) = (Vec::new(), None, None, Vec::new());
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Long("output") => out = output_arg(&val(&mut p, C)?, C)?,
            Short('O') => ofmt = val(&mut p, C)?,
            Short('o') => opt_strs.push(val(&mut p, C)?),
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('l') => snap = Some(snapshot_ref(&val(&mut p, C)?)?),
            Short('U') | Long("force-share") => force_share(),
            Long("size") => size = Some(size_arg("image size", &val(&mut p, C)?)?),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    if files.len() > 1 {
        return Err(usage_err(C, "Expecting one image file name"));
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

// ---- dd ----

/// A dd count or skip: an integer as strtoll reads it (decimal, 0x hex, 0
/// octal; no suffix), 0 to 2^63 - 1, in qemu-img's words.
fn dd_blocks(name: &str, s: &str) -> Result<u64, Fail> {
    let (neg, t) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        i64::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<i64>()
    };
    match v {
        Ok(v) if !neg => Ok(v as u64),
        Ok(_) => Err(fail(format!(
            "Invalid {name} specified. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(e) if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) => Err(fail(format!(
            "Invalid {name} specified. Must be between 0 and {}.",
            i64::MAX
        ))),
        Err(_) => Err(fail(format!("Invalid {name} specified: '{s}'."))),
    }
}

/// `qemu-img dd`: copies the input from block `skip` up to block `count`
/// (both in `bs` units from the input's start, as qemu-img counts them)
/// into a new output image.
fn dd(args: Vec<OsString>) -> Res {
    const C: &str = "dd";
    let mut p = parser(args);
    let (mut fmt, mut ofmt) = (None, "raw".to_string());
    let (mut bs, mut count, mut skip, mut input, mut output) = (512u64, None, None, None, None);
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') | Long("format") => fmt = Some(val(&mut p, C)?),
            Short('O') | Long("output-format") => ofmt = val(&mut p, C)?,
            Short('U') | Long("force-share") => force_share(),
            Value(v) => {
                let v = v.to_string_lossy().into_owned();
                match v.split_once('=') {
                    Some(("bs", x)) => bs = cvtnum("bs", x, 1, i32::MAX as u64)?,
                    Some(("count", x)) => count = Some(dd_blocks("count", x)?),
                    Some(("skip", x)) => skip = Some(dd_blocks("skip", x)?),
                    Some(("if", x)) => input = Some(x.to_string()),
                    Some(("of", x)) => output = Some(x.to_string()),
                    _ => {
                        let name = v.split('=').next().unwrap_or(&v);
                        return Err(fail(format!("unrecognized operand {name}")));
                    }
                }
            }
            a => return Err(unexpected(a, C)),
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err(fail("Must specify both input and output files"));
    };
    let src = open(&input, fmt, true)?;
    let mut end = src.size();
    if let Some(c) = count {
        if let Some(n) = c.checked_mul(bs) {
            end = end.min(n);
        }
    }
    let start = skip.map(|k| k.checked_mul(bs));
    let out_size = match start {
        Some(Some(off)) if off <= end => end - off,
        Some(_) => 0,
        None => end,
    };
    let mut opts = CreateOptions::new();
    opts.set(format::options::SIZE, out_size.to_string());
    Image::create(&output, &ofmt, &opts).map_err(lib)?;
    FORCE_SHARE.store(false, Ordering::Relaxed);
    let dst = open(&output, Some(ofmt), false)?;
    let mut pos = match start {
        Some(Some(off)) if off <= end => off,
        None => 0,
        // qemu-img reports this after creating the (empty) output and
        // still exits 0.
        Some(_) => {
            shared::error(PROG, format!("{input}: cannot skip to specified offset"));
            return Ok(0);
        }
    };
    let first = pos;
    let mut buf = vec![0u8; bs.min(end - pos).max(1) as usize];
    while pos < end {
        let n = bs.min(end - pos) as usize;
        src.read(&mut buf[..n], pos).map_err(lib)?;
        dst.write(&buf[..n], pos - first).map_err(lib)?;
        pos += n as u64;
    }
    dst.close().map_err(lib)?;
    Ok(0)
}

// ---- snapshot ---- (snapshot.rs)

// ---- compare ----

fn compare(args: Vec<OsString>) -> Res {
    const C: &str = "compare";
    let mut p = parser(args);
    let (mut fa, mut fb, mut strict, mut quiet, mut progress, mut files) =
        (None, None, false, false, false, Vec::new());
    while let Some(a) = p.next().map_err(|e| Fail {
        code: 2,
        ..usage_err(C, e.to_string())
    })? {
        match a {
            Short('f') => fa = Some(val(&mut p, C)?),
            Short('F') => fb = Some(val(&mut p, C)?),
            Short('s') => strict = true,
            Short('q') => quiet = true,
            Short('p') => progress = true,
            Short('U') | Long("force-share") => force_share(),
            Short('T') => {
                val(&mut p, C)?;
            }
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => {
                return Err(Fail {
                    code: 2,
                    ..unexpected(a, C)
                })
            }
        }
    }
    if files.len() != 2 {
        return Err(usage_err(C, "Expecting two image file names"));
    }
    let err2 = |f: Fail| Fail { code: 2, ..f };
    let a = open(&files[0], fa.clone(), true).map_err(err2)?;
    // -f names the first image's format only; the second is probed
    // unless -F names it (qemu-img does the same).
    let b = open(&files[1], fb, true).map_err(err2)?;
    let r = with_progress(progress && !quiet, |pr| ops::compare(&a, &b, strict, pr))
        .map_err(|e| err2(lib(e)))?;
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    if r.size_mismatch {
        if strict {
            say("Strict mode: Image size mismatch!".into());
            return Ok(1);
        }
        say("Warning: Image size mismatch!".into());
    }
    if let Some(off) = r.status_mismatch {
        say(format!("Strict mode: Offset {off} block status mismatch!"));
        return Ok(1);
    }
    match r.first_mismatch {
        Some(off) => {
            say(format!("Content mismatch at offset {off}!"));
            Ok(1)
        }
        None => {
            say("Images are identical.".into());
            Ok(0)
        }
    }
}

// ---- resize ----

fn resize(mut args: Vec<OsString>) -> Res {
    const C: &str = "resize";
    // The size comes last and may start with '-': take it before options
    // are parsed, as qemu-img does.
    let Some(size_s) = args.pop() else {
        return Err(usage_err(C, "Expecting image file name and size"));
    };
    let size_s = size_s.to_string_lossy().into_owned();
    if args.last().is_some_and(|a| a == "--") {
        args.pop();
    }
    let mut p = parser(args);
    let (mut fmt, mut quiet, mut shrink, mut files) = (None, false, false, Vec::new());
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('q') => quiet = true,
            Long("shrink") => shrink = true,
            Long("preallocation") => {
                let v = val(&mut p, C)?;
                if v != "off" {
                    return Err(fail(format!("Preallocation mode '{v}' is not supported")));
                }
            }
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
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

// ---- commit ----

fn commit(args: Vec<OsString>) -> Res {
    const C: &str = "commit";
    let mut p = parser(args);
    let (mut fmt, mut quiet, mut progress, mut keep, mut base, mut files) =
        (None, false, false, false, None, Vec::new());
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('q') => quiet = true,
            Short('p') => progress = true,
            Short('d') => keep = true,
            Short('b') => base = Some(val(&mut p, C)?),
            Short('t') | Short('r') => {
                val(&mut p, C)?;
            }
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
    let img = open(&file, fmt, false)?;
    if let Some(b) = base {
        let direct = img.backing_spec().map(|s| s.name);
        if direct.as_deref() != Some(b.as_str()) {
            return Err(fail(format!(
                "'{b}' is not the backing file of '{file}': only commits into the direct backing file are supported"
            )));
        }
    }
    with_progress(progress && !quiet, |pr| ops::commit(&img, keep, pr)).map_err(lib)?;
    img.close().map_err(lib)?;
    if !quiet {
        println!("Image committed.");
    }
    Ok(0)
}

// ---- rebase ----

fn rebase(args: Vec<OsString>) -> Res {
    const C: &str = "rebase";
    let mut p = parser(args);
    let (mut fmt, mut quiet, mut progress, mut unsafe_, mut base, mut bfmt, mut files) =
        (None, false, false, false, None, None, Vec::new());
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('q') => quiet = true,
            Short('p') => progress = true,
            Short('u') => unsafe_ = true,
            Short('b') => base = Some(val(&mut p, C)?),
            Short('F') => bfmt = Some(val(&mut p, C)?),
            Short('t') | Short('T') => {
                val(&mut p, C)?;
            }
            Short('U') | Long("force-share") => force_share(),
            Short('c') => return Err(fail("Compression is not supported")),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let file = one_file(files, C)?;
    let Some(base) = base else {
        return Err(usage_err(
            C,
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    };
    let img = open(&file, fmt, false)?;
    let new = (!base.is_empty()).then(|| ops::rebase::NewBacking {
        name: &base,
        format: bfmt.as_deref(),
    });
    with_progress(progress && !quiet, |pr| ops::rebase(&img, new, unsafe_, pr)).map_err(lib)?;
    img.close().map_err(lib)?;
    Ok(0)
}

// ---- bench ----

fn bench(args: Vec<OsString>) -> Res {
    const C: &str = "bench";
    let mut p = parser(args);
    let mut o = BenchOptions::default();
    let (mut fmt, mut quiet, mut progress, mut files) = (None, false, false, Vec::new());
    let num = |s: String| -> Result<u64, Fail> {
        s.parse::<u64>()
            .map_err(|_| usage_err(C, format!("Invalid number: '{s}'")))
    };
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('c') => o.count = num(val(&mut p, C)?)?,
            Short('d') => o.depth = num(val(&mut p, C)?)?,
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('o') => o.offset = size_arg("offset", &val(&mut p, C)?)?,
            Short('s') => o.buf_size = cvtnum("buffer size", &val(&mut p, C)?, 1, i32::MAX as u64)?,
            Short('S') => o.step = size_arg("step size", &val(&mut p, C)?)?,
            Short('w') => o.write = true,
            Short('q') => quiet = true,
            Short('p') => progress = true,
            Short('n') | Long("no-drain") => {}
            Short('U') | Long("force-share") => force_share(),
            Short('t') | Short('i') => {
                val(&mut p, C)?;
            }
            Long("flush-interval") => o.flush_interval = num(val(&mut p, C)?)?,
            Long("pattern") => {
                let v = num(val(&mut p, C)?)?;
                o.pattern = u8::try_from(v)
                    .map_err(|_| usage_err(C, format!("Invalid pattern byte specified: {v}")))?;
            }
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    if o.flush_interval > 0 && !o.write {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    let file = one_file(files, C)?;
    let img = open(&file, fmt, !o.write)?;
    if !quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
            o.count,
            if o.write { "write" } else { "read" },
            o.buf_size,
            o.depth,
            o.offset,
            o.step()
        );
        if o.flush_interval > 0 {
            println!("Sending flush every {} requests", o.flush_interval);
        }
    }
    let t = with_progress(progress && !quiet, |pr| ops::bench(&img, &o, pr)).map_err(lib)?;
    img.close().map_err(lib)?;
    if !quiet {
        println!("Run completed in {:.3} seconds.", t.as_secs_f64());
    }
    Ok(0)
}
