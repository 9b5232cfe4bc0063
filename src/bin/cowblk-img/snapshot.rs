//! `snapshot`: listing internal snapshots; the table info prints too.

use crate::args::{fail, one_file, usage_err, Parser, Res};
use crate::open::{force_share, open};
use crate::shared::size_to_str;
use cowblk::format::SnapshotInfo;
use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "snapshot";
    let mut p = Parser::new(C, args);
    // One operation: -l (the default), -a, -c or -d.
    let (mut fmt, mut op): (_, Option<String>) = (None, None);
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "q" => {}
            "U" => force_share(),
            c @ ("l" | "a" | "c" | "d") => {
                if op.is_some() {
                    return Err(usage_err(C, "Cannot mix '-l', '-a', '-c', '-d'"));
                }
                op = Some(c.to_string());
            }
            _ => {}
        }
    }
    let file = one_file(p.files(), C)?;
    if let Some(c) = op.filter(|c| c != "l") {
        return Err(fail(format!(
            "snapshot -{c} is not supported: cowblk opens snapshots read-only"
        )));
    }
    let img = open(&file, fmt, true)?;
    let snaps = img.snapshots();
    if !snaps.is_empty() {
        print!("Snapshot list:\n{}", snapshot_table(&snaps));
    }
    Ok(0)
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

pub fn snapshot_table(snaps: &[SnapshotInfo]) -> String {
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
