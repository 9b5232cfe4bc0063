//! Opening images: the command line's file and the `open` command, with
//! qemu-io's messages; `-s` puts a temporary qcow2 overlay on top.

use crate::flags::{find_cmd, parse_flags, CmdResult, Failed};
use crate::session::Session;
use crate::shared::{self, doc};
use crate::PROG;
use cowblk::{Image, OpenOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

impl Session {
    /// `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`: the
    /// format comes from `-o driver=FMT`, as in qemu-io.
    pub fn open(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
        if self.img.is_some() {
            shared::error(PROG, "file open already, try 'help close'");
            return Err(Failed);
        }
        if f.cflag {
            println!("open: -C (copy-on-read) is not supported");
            return Err(Failed);
        }
        let Some(file) = f.args.last() else {
            // Options alone name no file for the protocol layer.
            if !f.options.is_empty() {
                shared::error(
                    PROG,
                    "can't open: A block device must be specified for \"file\"",
                );
            } else {
                println!("{}", doc::io_cmd_line(find_cmd("open").ok_or(Failed)?));
            }
            return Err(Failed);
        };
        let mut opts = OpenOptions {
            read_only: f.read_only,
            force_share: f.force_share,
            ..Default::default()
        };
        let mut bad_opt = None;
        for kv in f.options.iter().flat_map(|o| o.split(',')) {
            match kv.split_once('=') {
                Some(("driver", d)) => opts.format = Some(d.to_string()),
                // qcow2's open options; the driver checks them.
                Some((k, v)) if cowblk::format::qcow2::open_opts::NAMES.contains(&k) => {
                    opts.format_opts.push((k.to_string(), v.to_string()))
                }
                _ if kv.is_empty() => {}
                _ => {
                    let k = kv.split('=').next().unwrap_or(kv);
                    bad_opt.get_or_insert(k.to_string());
                }
            }
        }
        if let Some(k) = bad_opt {
            let fmt = opts.format.as_deref().unwrap_or("raw");
            shared::error(
                PROG,
                format!(
                    "can't open device {file}: Block format '{fmt}' does not support the \
                     option '{k}'"
                ),
            );
            return Err(Failed);
        }
        if opts.force_share && !opts.read_only {
            shared::error(
                PROG,
                format!(
                    "can't open device {file}: force-share=on can only be used with read-only images"
                ),
            );
            return Err(Failed);
        }
        self.img = Some(open_image(file, &opts, f.snapshot).map_err(|()| Failed)?);
        Ok(())
    }
}

/// `--confined` on the command line: every image the session opens, also
/// with the `open` command, holds the files it names to its directory.
static CONFINED: AtomicBool = AtomicBool::new(false);

pub fn set_confined(on: bool) {
    CONFINED.store(on, Ordering::Relaxed);
}

/// Opens an image for the session, printing qemu-io's messages. In
/// snapshot mode (`-s`) the image is opened read-only under a new qcow2
/// overlay that takes the writes and is deleted at once (it lives while
/// open): the image itself stays untouched, as with qemu-io -s.
pub fn open_image(file: &str, opts: &OpenOptions, snapshot: bool) -> Result<Arc<Image>, ()> {
    let mut opts = opts.clone();
    opts.confined |= CONFINED.load(Ordering::Relaxed);
    let r = if snapshot {
        open_overlay(file, &opts)
    } else {
        Image::open(file, &opts)
    };
    match r {
        // Warnings (a corrupt bit on a read-only open) stay unprinted, as
        // qemu-io opens such images silently.
        Ok(i) => {
            if !snapshot {
                shared::warn_probed_raw(&i);
            }
            Ok(Arc::new(i))
        }
        Err(e) => {
            // qemu-io says "can't open device X:" where qemu-img says
            // "Could not open 'X':".
            let d = shared::describe(&e);
            let why = d
                .strip_prefix(&format!("Could not open '{file}': "))
                .unwrap_or(&d);
            shared::error(PROG, format!("can't open device {file}: {why}"));
            Err(())
        }
    }
}

/// The temporary overlay of snapshot mode. It goes next to the image when
/// the open is confined (so the rule covers the whole chain through it),
/// else into the temporary directory as QEMU's does.
fn open_overlay(file: &str, opts: &OpenOptions) -> Result<Image, cowblk::Error> {
    use cowblk::format::options::{BACKING_FILE, BACKING_FMT, SIZE};
    let base = Image::open(
        file,
        &OpenOptions {
            read_only: true,
            ..opts.clone()
        },
    )?;
    let (size, fmt) = (base.size(), base.format_name().to_string());
    drop(base);
    let path = std::path::Path::new(file);
    let (dir, backing) = if opts.confined {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        (
            dir.map(|d| d.to_path_buf()).unwrap_or_else(|| ".".into()),
            name.unwrap_or_else(|| file.to_string()),
        )
    } else {
        let abs = std::fs::canonicalize(path).map_err(|e| cowblk::Error::Io {
            context: format!("could not open '{file}'"),
            source: e,
        })?;
        (std::env::temp_dir(), abs.display().to_string())
    };
    let tmp = dir.join(format!(
        ".cowblk-io-snapshot-{}-{}.qcow2",
        std::process::id(),
        OVERLAYS.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp_s = tmp.display().to_string();
    let mut co = cowblk::CreateOptions::new();
    co.set(SIZE, size.to_string());
    co.set(BACKING_FILE, backing);
    co.set(BACKING_FMT, fmt);
    let made = Image::create(&tmp_s, "qcow2", &co).and_then(|()| {
        Image::open(
            &tmp_s,
            &OpenOptions {
                format: Some("qcow2".into()),
                ..opts.clone()
            },
        )
    });
    // Unlinked at once: the open image keeps its file until closed.
    let _ = std::fs::remove_file(&tmp);
    made
}

/// Numbers the overlays of one process.
static OVERLAYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
