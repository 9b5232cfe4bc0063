//! aio_read and aio_write on their own threads; their reports wait for
//! aio_flush (or exit), as qemu-io's do.

use crate::flags::{off_lens, parse_flags, zero_flags, CmdResult};
use crate::report::{dump, report_c, verify};
use crate::session::Session;
use crate::shared::errno_text;
use std::time::Instant;

impl Session {
    /// Starts a request on its own thread; its report is printed when the
    /// requests are drained (aio_flush, or exit), in submission order.
    pub fn aio(&mut self, argv: &[String], write: bool) -> CmdResult {
        let f = parse_flags(argv)?;
        // As qemu-io: with -z the pattern is not used.
        let (off, lens) = off_lens(&f.args)?;
        let count: u64 = lens.iter().sum();
        let img = self.image().clone();
        self.aio.push(std::thread::spawn(move || {
            let t = Instant::now();
            let mut buf = vec![f.pattern.unwrap_or(0xcd); count as usize];
            let (op, r) = if !write {
                ("readv", img.read(&mut buf, off))
            } else if f.zero {
                (
                    "aio_write",
                    img.write_zeroes_flags(off, count, zero_flags(&f)),
                )
            } else {
                ("aio_write", img.write(&buf, off))
            };
            let r = r.and_then(|_| if f.fua { img.flush() } else { Ok(()) });
            let t = t.elapsed();
            // Named as qemu-io names them: its aio reads and writes are
            // vectored, its zero writes not.
            if let Err(e) = r {
                return format!("{op} failed: {}\n", errno_text(e.errno()));
            }
            let mut out = String::new();
            if !write {
                // As qemu-io: the mismatch is reported, then the request.
                if let Some(m) = f.pattern.and_then(|p| verify(&buf, p, off)) {
                    out += &m;
                }
            }
            if !f.quiet {
                if f.verbose {
                    out += &dump(&buf, off);
                }
                let verb = if write { "wrote" } else { "read" };
                out += &report_c(f.cflag, verb, t, off, count, count, 1);
            }
            out
        }));
        Ok(())
    }

    /// Waits for every outstanding aio request and prints its report.
    pub fn drain(&mut self) {
        for h in self.aio.drain(..) {
            match h.join() {
                Ok(s) => print!("{s}"),
                Err(_) => println!("aio request failed: internal error"),
            }
        }
    }
}
