//! What qemu-io prints after a command: the statistics lines, hex dumps,
//! pattern mismatches and failures.

use crate::flags::Failed;
use crate::shared::{self, cvtstr, errno_text};
use crate::PROG;
use std::time::Duration;

pub fn timestr(t: Duration) -> String {
    let secs = t.as_secs();
    let frac = t.subsec_nanos() as f64 / 1e9;
    if secs == 0 {
        format!("{frac:05.2} sec")
    } else {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs / 60) % 60,
            (secs % 60) as f64 + frac
        )
    }
}

/// qemu-io's two-line report after a data command, or with -C its one
/// machine-parsable line (bytes,ops,h:mm:ss.cc,bytes/sec,ops/sec).
pub fn report_c(
    c: bool,
    op: &str,
    t: Duration,
    off: u64,
    count: u64,
    total: u64,
    cnt: u64,
) -> String {
    if !c {
        return report(op, t, off, count, total, cnt);
    }
    let secs = t.as_secs_f64().max(1e-9);
    let cs = t.as_millis() / 10;
    format!(
        "{total},{cnt},{}:{:02}:{:02}.{:02},{:.3},{:.3}\n",
        cs / 360_000,
        cs / 6000 % 60,
        cs / 100 % 60,
        cs % 100,
        total as f64 / secs,
        cnt as f64 / secs
    )
}

/// qemu-io's two-line report after a data command.
pub fn report(op: &str, t: Duration, off: u64, count: u64, total: u64, cnt: u64) -> String {
    let secs = t.as_secs_f64().max(1e-9);
    format!(
        "{op} {total}/{count} bytes at offset {off}\n{}, {cnt} ops; {} ({}/sec and {:.4} ops/sec)\n",
        cvtstr(total as f64),
        timestr(t),
        cvtstr(total as f64 / secs),
        cnt as f64 / secs
    )
}

/// Like qemu-io's dump_buffer: 16 bytes a line, hex then printable text.
pub fn dump(buf: &[u8], off: u64) -> String {
    let mut s = String::new();
    for (i, line) in buf.chunks(16).enumerate() {
        s += &format!("{:08x}:  ", off + 16 * i as u64);
        for b in line {
            s += &format!("{b:02x} ");
        }
        s.push(' ');
        for &b in line {
            s.push(if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            });
        }
        s.push('\n');
    }
    s
}

/// What qemu-io says for an operation the format cannot do (-b, -c).
pub fn unsupported(op: &str) -> Failed {
    println!("{op} failed: {}", errno_text(libc::ENOTSUP));
    Failed
}

pub fn fail(op: &str, e: &cowblk::Error) -> Failed {
    // QEMU's block layer refuses writes to a read-only node itself, before
    // the command sees an errno.
    if let cowblk::Error::ReadOnly(_) = e {
        shared::error(PROG, "Block node is read-only");
    } else {
        println!("{op} failed: {}", errno_text(e.errno()));
    }
    Failed
}

/// Checks `buf` against `pattern`; prints qemu-io's message on mismatch.
pub fn verify(buf: &[u8], pattern: u8, off: u64) -> Option<String> {
    (!buf.iter().all(|&b| b == pattern)).then(|| {
        format!(
            "Pattern verification failed at offset {off}, {} bytes\n",
            buf.len()
        )
    })
}
