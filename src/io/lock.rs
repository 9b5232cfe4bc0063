//! Image locking that QEMU understands: the byte-range scheme of QEMU's
//! file-posix driver, so that cowblk and QEMU (qemu-io, qemu-img, a VM)
//! keep each other out of an image exactly as two QEMUs would.
//!
//! Each open file description holds a shared (read) OFD lock on byte
//! `100 + bit` for every permission it uses and on byte `200 + bit` for
//! every permission it does not let others use. An open conflicts when
//! someone else holds `200 + bit` for a permission it wants, or `100 + bit`
//! for a permission it does not share. OFD locks belong to the open file
//! description, so two opens of one file conflict even inside one process.

use crate::error::{Error, Result};
use std::os::unix::io::RawFd;

/// Permission bits, numbered as QEMU's `BLK_PERM_*`.
pub mod perm {
    pub const CONSISTENT_READ: u8 = 1 << 0;
    pub const WRITE: u8 = 1 << 1;
    pub const WRITE_UNCHANGED: u8 = 1 << 2;
    pub const RESIZE: u8 = 1 << 3;
    pub const ALL: u8 = 0x0f;
}

/// QEMU's names for the bits, used in its messages.
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

/// First byte of the "permission held" range.
pub const PERM_BASE: i64 = 100;
/// First byte of the "permission not shared" range.
pub const SHARED_BASE: i64 = 200;

/// What one open holds and lets others hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSpec {
    pub perm: u8,
    pub shared: u8,
}

/// The part a file plays in an open image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds format metadata (a qcow2 image, an add-cow file).
    Metadata,
    /// Guest data under a format's metadata (add-cow's image file, a qcow2
    /// data file).
    Data,
    /// A raw image: guest bytes are the file's bytes.
    Raw,
}

impl LockSpec {
    /// The permissions QEMU 10 takes for a file in `role` of an image
    /// opened read-only or not, with `force_share` (read-only only).
    ///
    /// Read-only: consistent read, sharing all but what the format needs
    /// stable (metadata: write and resize; data: resize). Read-write:
    /// write too, and nobody else may write (QEMU still shares write on a
    /// qcow2 data file and on raw, which are stricter here: a second writer
    /// would go behind the first one's back).
    pub fn for_role(role: Role, read_only: bool, force_share: bool) -> LockSpec {
        use perm::*;
        if read_only {
            let shared = match (force_share, role) {
                (true, _) | (false, Role::Raw) => ALL,
                (false, Role::Metadata) => ALL & !(WRITE | RESIZE),
                (false, Role::Data) => ALL & !RESIZE,
            };
            return LockSpec {
                perm: CONSISTENT_READ,
                shared,
            };
        }
        match role {
            Role::Raw => LockSpec {
                perm: CONSISTENT_READ | WRITE,
                shared: ALL & !WRITE,
            },
            Role::Metadata | Role::Data => LockSpec {
                perm: CONSISTENT_READ | WRITE | RESIZE,
                shared: ALL & !(WRITE | RESIZE),
            },
        }
    }
}

fn flock(kind: libc::c_short, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (l_pid must
    // be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

fn set(fd: RawFd, kind: libc::c_short, start: i64, len: i64) -> std::io::Result<()> {
    let mut fl = flock(kind, start, len);
    loop {
        // SAFETY: fcntl with a valid flock on a caller-owned fd.
        if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether another open file description holds a lock on byte `off`.
fn held_by_other(fd: RawFd, off: i64) -> std::io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, off, 1);
    // SAFETY: fcntl with a valid flock on a caller-owned fd.
    if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Errors that mean "this kernel or filesystem has no OFD locks": QEMU's
/// `locking=auto` then runs without locks, and so do we.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP)
    )
}

/// Takes the locks of `spec` on `fd` and checks that nobody else's locks
/// conflict, as QEMU does (set first, then test, so two racing opens
/// cannot both miss each other). On a conflict every lock byte of ours is
/// released again and the error names the permission, in QEMU's words.
///
/// A conflict is tried again for up to about 150 ms: a child that another
/// thread of this process is forking holds copies of our descriptors, and
/// so the locks of an image we just closed, until it execs. A real user of
/// the image holds its locks far longer.
pub fn lock(fd: RawFd, spec: LockSpec, name: &str) -> Result<()> {
    let mut wait = std::time::Duration::from_millis(1);
    loop {
        match take(fd, spec, name) {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Only our own locks go; failure leaves nothing worse.
                let _ = set(
                    fd,
                    libc::F_UNLCK as libc::c_short,
                    PERM_BASE,
                    SHARED_BASE + 100 - PERM_BASE,
                );
                if !matches!(e, Error::Locked(_)) || wait.as_millis() > 64 {
                    return Err(e);
                }
                std::thread::sleep(wait);
                wait *= 2;
            }
        }
    }
}

fn take(fd: RawFd, spec: LockSpec, name: &str) -> Result<()> {
    let mut bytes = Vec::new();
    for (i, _) in NAMES.iter().enumerate() {
        let bit = 1u8 << i;
        if spec.perm & bit != 0 {
            bytes.push(PERM_BASE + i as i64);
        }
        if spec.shared & bit == 0 {
            bytes.push(SHARED_BASE + i as i64);
        }
    }
    for &off in &bytes {
        if let Err(e) = set(fd, libc::F_RDLCK as libc::c_short, off, 1) {
            if unsupported(&e) {
                return Ok(());
            }
            return Err(Error::io(
                format!("Failed to lock byte {off} of '{name}'"),
                e,
            ));
        }
    }
    let probe = |off: i64| {
        held_by_other(fd, off)
            .map_err(|e| Error::io(format!("Failed to test lock byte {off} of '{name}'"), e))
    };
    for (i, what) in NAMES.iter().enumerate() {
        if spec.perm & (1 << i) != 0 && probe(SHARED_BASE + i as i64)? {
            return Err(conflict(format!("Failed to get \"{what}\" lock"), name));
        }
    }
    for (i, what) in NAMES.iter().enumerate() {
        if spec.shared & (1 << i) == 0 && probe(PERM_BASE + i as i64)? {
            return Err(conflict(
                format!("Failed to get shared \"{what}\" lock"),
                name,
            ));
        }
    }
    Ok(())
}

fn conflict(what: String, name: &str) -> Error {
    Error::Locked(format!(
        "{what}\nIs another process using the image [{name}]?"
    ))
}

#[cfg(test)]
mod tests {
    use super::perm::*;
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::unix::io::AsRawFd;

    fn spec(role: Role, ro: bool) -> LockSpec {
        LockSpec::for_role(role, ro, false)
    }

    /// The bytes QEMU 10's qemu-io was seen holding (/proc/locks).
    #[test]
    fn specs_match_qemu_where_qemu_is_strict() {
        let qcow2_rw = spec(Role::Metadata, false);
        assert_eq!(qcow2_rw.perm, CONSISTENT_READ | WRITE | RESIZE);
        assert_eq!(!qcow2_rw.shared & ALL, WRITE | RESIZE);
        let qcow2_ro = spec(Role::Metadata, true);
        assert_eq!((qcow2_ro.perm, !qcow2_ro.shared & ALL), (1, WRITE | RESIZE));
        assert_eq!(spec(Role::Raw, true).shared, ALL);
        assert_eq!(spec(Role::Data, true).shared, ALL & !RESIZE);
        assert_eq!(LockSpec::for_role(Role::Metadata, true, true).shared, ALL);
    }

    fn file(p: &std::path::Path, rw: bool) -> File {
        OpenOptions::new().read(true).write(rw).open(p).unwrap()
    }

    #[test]
    fn two_descriptions_conflict_even_in_one_process() {
        let dir = std::env::temp_dir().join(format!("cowblk-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let w = file(&p, true);
        lock(w.as_raw_fd(), spec(Role::Metadata, false), "img").unwrap();
        let w2 = file(&p, true);
        let e = lock(w2.as_raw_fd(), spec(Role::Metadata, false), "img").unwrap_err();
        assert!(
            e.to_string().starts_with("Failed to get \"write\" lock"),
            "{e}"
        );
        assert_eq!(e.errno(), libc::EAGAIN);
        let r = file(&p, false);
        let e = lock(r.as_raw_fd(), spec(Role::Metadata, true), "img").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Failed to get shared \"write\" lock"));
        // Force-share reads; a raw reader shares everything too.
        lock(
            r.as_raw_fd(),
            LockSpec::for_role(Role::Metadata, true, true),
            "img",
        )
        .unwrap();
        let r2 = file(&p, false);
        lock(r2.as_raw_fd(), spec(Role::Raw, true), "img").unwrap();
        // The failed opens left nothing behind: once the writer is gone,
        // a second writer gets in (the readers share write).
        drop(w);
        drop(r2);
        lock(w2.as_raw_fd(), spec(Role::Raw, false), "img").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
