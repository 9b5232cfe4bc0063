//! The session: the open image, outstanding aio, and every command's
//! dispatch; the commands that only look (map, alloc, info) live here too.

use crate::flags::{cvtnum, find_cmd, parse_flags, CmdResult, Failed};
use crate::report::fail;
use crate::shared::{self, cvtstr, doc};
use crate::table::COMMANDS;
use crate::PROG;
use cowblk::Image;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The commands that write (qemu-io gives them write permission).
const WRITING: &[&str] = &["aio_write", "discard", "truncate", "write", "writev"];

/// The open image and outstanding aio requests.
pub struct Session {
    /// None when qemu-io runs without a file: commands then say so.
    pub img: Option<Arc<Image>>,
    pub aio: Vec<JoinHandle<String>>,
    pub quit: bool,
}

impl Session {
    pub fn image(&self) -> &Arc<Image> {
        self.img
            .as_ref()
            .expect("commands check for an open file first")
    }

    pub fn run(&mut self, line: &str) -> CmdResult {
        let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let Some(name) = argv.first() else {
            return Ok(());
        };
        let Some(info) = find_cmd(name) else {
            eprintln!("command \"{name}\" not found");
            return Err(Failed);
        };
        if self.img.is_none() && !matches!(info.name, "help" | "quit" | "sleep" | "open") {
            eprintln!("no file open, try 'help open'");
            return Err(Failed);
        }
        // Commands that need write permission are refused on a read-only
        // image before their words are read, as in qemu-io.
        if WRITING.contains(&info.name) && self.image().read_only() {
            shared::error(PROG, "Block node is read-only");
            return Err(Failed);
        }
        match info.name {
            "read" => self.read(&argv),
            "readv" => self.readv(&argv),
            "write" => self.write(&argv),
            "writev" => self.writev(&argv),
            "aio_read" => self.aio(&argv, false),
            "aio_write" => self.aio(&argv, true),
            "aio_flush" => {
                parse_flags(&argv)?;
                self.drain();
                self.image().flush().map_err(|e| fail("aio_flush", &e))
            }
            "discard" => self.discard(&argv),
            "flush" => {
                parse_flags(&argv)?;
                self.image().flush().map_err(|e| fail("flush", &e))
            }
            "truncate" => {
                let f = parse_flags(&argv)?;
                // The modes QEMU knows; the library grows by zeros either way.
                if let Some(m) = f.mode.as_deref() {
                    if !["off", "metadata", "falloc", "full"].contains(&m) {
                        shared::error(PROG, format!("Invalid preallocation mode '{m}'"));
                        return Err(Failed);
                    }
                }
                let Some(size) = f.args.first() else {
                    println!("{}", doc::io_cmd_line(info));
                    return Err(Failed);
                };
                let size = cvtnum(size)?;
                self.image()
                    .truncate(size)
                    .map_err(|e| fail("truncate", &e))
            }
            "length" => {
                parse_flags(&argv)?;
                println!("{}", cvtstr(self.image().size() as f64));
                Ok(())
            }
            "map" => self.map(&argv),
            "open" => self.open(&argv),
            "close" => {
                parse_flags(&argv)?;
                self.drain();
                if let Some(img) = self.img.take() {
                    let r = match Arc::try_unwrap(img) {
                        Ok(img) => img.close(),
                        Err(img) => img.flush(),
                    };
                    r.map_err(|e| fail("close", &e))?;
                }
                Ok(())
            }
            "alloc" => self.alloc(&argv),
            "info" => self.info(&argv),
            "help" => {
                let f = parse_flags(&argv)?;
                match f.args.first() {
                    Some(c) => match find_cmd(c) {
                        Some(ci) => print!("{}", doc::io_cmd_help(ci)),
                        None => {
                            println!("command {c} not found");
                            return Err(Failed);
                        }
                    },
                    None => {
                        for c in COMMANDS {
                            println!("{}", doc::io_cmd_line(c));
                        }
                        println!("\nUse 'help commandname' for extended help.");
                    }
                }
                Ok(())
            }
            "quit" => {
                parse_flags(&argv)?;
                self.quit = true;
                Ok(())
            }
            "sleep" => {
                let f = parse_flags(&argv)?;
                let ms: u64 = f.args[0].parse().map_err(|_| {
                    println!("{} is not a valid number", f.args[0]);
                    Failed
                })?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
            _ => Err(Failed),
        }
    }

    pub fn map(&mut self, argv: &[String]) -> CmdResult {
        parse_flags(argv)?;
        let size = self.image().size();
        let mut off = 0;
        while off < size {
            let (alloc, n) = self
                .image()
                .is_allocated(off, size - off)
                .map_err(|e| fail("map", &e))?;
            println!(
                "{} (0x{n:x}) bytes {} at offset {} (0x{off:x})",
                cvtstr(n as f64),
                if alloc {
                    "    allocated"
                } else {
                    "not allocated"
                },
                cvtstr(off as f64)
            );
            off += n;
        }
        Ok(())
    }

    pub fn alloc(&mut self, argv: &[String]) -> CmdResult {
        let f = parse_flags(argv)?;
        let off = cvtnum(&f.args[0])?;
        // One sector by default; the count stops at the end of the image.
        // Any byte offset and count go, as in QEMU 10.
        let mut count = match f.args.get(1) {
            Some(c) => cvtnum(c)?,
            None => 512,
        };
        let size = self.image().size();
        let mut sum = 0;
        let mut pos = off;
        while pos < off + count {
            if pos >= size {
                count = pos - off;
                break;
            }
            let want = (off + count - pos).min(size - pos);
            let (a, n) = self
                .image()
                .is_allocated(pos, want)
                .map_err(|e| fail("is_allocated", &e))?;
            if a {
                sum += n;
            }
            pos += n;
        }
        println!(
            "{sum}/{count} bytes allocated at offset {}",
            cvtstr(off as f64)
        );
        Ok(())
    }

    pub fn info(&mut self, argv: &[String]) -> CmdResult {
        parse_flags(argv)?;
        let i = self.image().info_cheap().map_err(|e| fail("info", &e))?;
        println!("format name: {}", i.format);
        println!("cluster size: {}", cvtstr(i.cluster_size as f64));
        println!(
            "vm state offset: {}",
            cvtstr(i.vm_state_offset.unwrap_or(0) as f64)
        );
        if !i.specific.is_empty() {
            println!("Format specific information:");
            print!("{}", cowblk::format::info::fields_human(&i.specific, 4));
        }
        Ok(())
    }
}
