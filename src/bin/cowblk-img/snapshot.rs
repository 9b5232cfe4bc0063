//! `snapshot`: list (the default), create, apply and delete internal
//! snapshots, with qemu-img's messages and exit codes; and the snapshot
//! table info prints too.

use crate::args::{fail, lib, one_file, usage_err, Parser, Res};
use crate::open::{force_share, forcing_share, open};
use crate::shared::size_to_str;
use cowblk::format::SnapshotInfo;
use cowblk::{Error, SnapshotRef};
use std::ffi::OsString;

#[derive(Clone, Copy, PartialEq)]
enum Action {
    List,
    Create,
    Apply,
    Delete,
}

pub fn run(args: Vec<OsString>) -> Res {
    const C: &str = "snapshot";
    let mut p = Parser::new(C, args);
    let (mut fmt, mut action, mut name, mut quiet) = (None, None, String::new(), false);
    let set = |a: Action, action: &mut Option<Action>| {
        if action.is_some() {
            return Err(usage_err(C, "Cannot mix '-l', '-a', '-c', '-d'"));
        }
        *action = Some(a);
        Ok(())
    };
    while let Some((k, v)) = p.next()? {
        match k.as_str() {
            "f" => fmt = Some(v),
            "l" => set(Action::List, &mut action)?,
            c @ ("a" | "c" | "d") => {
                let act = match c {
                    "a" => Action::Apply,
                    "c" => Action::Create,
                    _ => Action::Delete,
                };
                set(act, &mut action)?;
                name = v;
            }
            "q" => quiet = true,
            "U" => force_share(),
            _ => {}
        }
    }
    let _ = quiet; // qemu-img prints nothing on success either way.
    let file = one_file(p.files(), C)?;
    let action = action.unwrap_or(Action::List);
    if action == Action::List {
        let img = open(&file, fmt, true)?;
        let snaps = img.snapshots();
        if !snaps.is_empty() {
            print!("Snapshot list:\n{}", snapshot_table(&snaps));
        }
        return Ok(0);
    }
    if forcing_share() {
        return Err(fail(format!(
            "Could not open '{file}': force-share=on can only be used with read-only images"
        )));
    }
    let img = open(&file, fmt, false)?;
    let has = |n: &str| img.snapshots().iter().any(|s| s.name == n);
    let r = match action {
        Action::Create => img.snapshot_create(&name).map(|_| ()).map_err(|e| {
            // qemu-img's words where QEMU refuses (no snapshots in the
            // format, an external data file); ours where we say more.
            let why = match e {
                Error::Unsupported(m) if !m.contains("1-bit") => {
                    "Operation not supported".to_string()
                }
                e => lib(e).msg,
            };
            fail(format!("Could not create snapshot '{name}': {why}"))
        }),
        Action::Apply => img
            .snapshot_apply(&SnapshotRef::IdOrName(name.clone()))
            .map_err(|e| {
                let why = match e {
                    Error::NotFound(_) => {
                        "Failed to load snapshot: No such file or directory".to_string()
                    }
                    Error::Unsupported(_) if img.format_name() != "qcow2" => {
                        "Block driver does not support snapshots".to_string()
                    }
                    e => lib(e).msg,
                };
                fail(format!("Could not apply snapshot '{name}': {why}"))
            }),
        Action::Delete => {
            // qemu-img finds the snapshot to delete by name only.
            if !has(&name) {
                Err(fail(format!(
                    "Could not delete snapshot '{name}': snapshot not found"
                )))
            } else {
                img.snapshot_delete(&SnapshotRef::Name(name.clone()))
                    .map_err(|e| {
                        fail(format!(
                            "Could not delete snapshot '{name}': {}",
                            lib(e).msg
                        ))
                    })
            }
        }
        Action::List => Ok(()),
    };
    let closed = img.close().map_err(lib);
    r?;
    closed?;
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
