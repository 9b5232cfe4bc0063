//! `cowblk-img snapshot`: list (the default), create, apply and delete
//! internal snapshots, with qemu-img's messages and exit codes.

use super::{
    fail, force_share, lib, one_file, open, parser, snapshot_table, unexpected, usage_err, val,
    Res, FORCE_SHARE,
};
use cowblk::{Error, SnapshotRef};
use lexopt::prelude::*;
use std::ffi::OsString;
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, PartialEq)]
enum Action {
    List,
    Create,
    Apply,
    Delete,
}

pub(super) fn snapshot(args: Vec<OsString>) -> Res {
    const C: &str = "snapshot";
    let mut p = parser(args);
    let (mut fmt, mut action, mut name, mut quiet, mut files) =
        (None, None, String::new(), false, Vec::new());
    let set = |a: Action, action: &mut Option<Action>| {
        if action.is_some() {
            return Err(usage_err(C, "Cannot mix '-l', '-a', '-c', '-d'"));
        }
        *action = Some(a);
        Ok(())
    };
    while let Some(a) = p.next().map_err(|e| usage_err(C, e.to_string()))? {
        match a {
            Short('f') => fmt = Some(val(&mut p, C)?),
            Short('l') => set(Action::List, &mut action)?,
            Short(c @ ('a' | 'c' | 'd')) => {
                let act = match c {
                    'a' => Action::Apply,
                    'c' => Action::Create,
                    _ => Action::Delete,
                };
                set(act, &mut action)?;
                name = val(&mut p, C)?;
            }
            Short('q') => quiet = true,
            Short('U') | Long("force-share") => force_share(),
            Value(v) => files.push(v.to_string_lossy().into_owned()),
            a => return Err(unexpected(a, C)),
        }
    }
    let _ = quiet; // qemu-img prints nothing on success either way.
    let file = one_file(files, C)?;
    let action = action.unwrap_or(Action::List);
    if action == Action::List {
        let img = open(&file, fmt, true)?;
        let snaps = img.snapshots();
        if !snaps.is_empty() {
            print!("Snapshot list:\n{}", snapshot_table(&snaps));
        }
        return Ok(0);
    }
    if FORCE_SHARE.load(Ordering::Relaxed) {
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
