//! Internal snapshots through the C ABI (qcow2): list, create, apply,
//! delete, as `qemu-img snapshot -l/-c/-a/-d`.

use super::args::{opt_str_arg, str_arg, struct_size_arg, write_prefix};
use super::error::guard;
use super::handle::{cowblk_image, image};
use crate::error::Error;
use crate::image::SnapshotRef;
use std::ffi::{c_char, c_int};

/// Bytes of `cowblk_snapshot.id` and `.name` (QEMU's own limits; longer
/// ones are cut, always NUL-terminated).
pub const COWBLK_SNAPSHOT_ID_LEN: usize = 128;
pub const COWBLK_SNAPSHOT_NAME_LEN: usize = 256;

/// One internal snapshot. Before the call, zero the struct and set
/// `struct_size = sizeof(struct cowblk_snapshot)`.
#[repr(C)]
pub struct cowblk_snapshot {
    /// sizeof(struct cowblk_snapshot) as the caller compiled it.
    pub struct_size: usize,
    /// NUL-terminated id ("1", "2", ...) and name.
    pub id: [c_char; COWBLK_SNAPSHOT_ID_LEN],
    pub name: [c_char; COWBLK_SNAPSHOT_NAME_LEN],
    /// Bytes of saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Wall-clock time taken: seconds and nanoseconds since the epoch.
    pub date_sec: u64,
    pub date_nsec: u32,
    /// Guest clock at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Virtual disk size at the snapshot.
    pub disk_size: u64,
    /// Record/replay instruction count; UINT64_MAX when not recorded.
    pub icount: u64,
}

const SNAPSHOT_V1_END: usize = std::mem::size_of::<cowblk_snapshot>();

fn copy_cut(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

/// The number of internal snapshots the image holds (0 for formats
/// without any), or a negative errno.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_snapshot_count(img: *mut cowblk_image) -> c_int {
    guard(|| Ok(image(img)?.img.snapshots().len() as i32))
}

/// Fills `*out` with snapshot `index` (table order, as `qemu-img snapshot
/// -l` lists them). Returns 0, -ENOENT past the last one, or another
/// negative errno.
///
/// # Safety
/// `img` is a live handle; `out` points at `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn cowblk_snapshot_get(
    img: *mut cowblk_image,
    index: u32,
    out: *mut cowblk_snapshot,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let given = struct_size_arg(out, SNAPSHOT_V1_END, "snapshot")?;
        let list = h.img.snapshots();
        let s = list.get(index as usize).ok_or_else(|| {
            Error::NotFound(format!(
                "snapshot index {index} (the image has {})",
                list.len()
            ))
        })?;
        let mut v = cowblk_snapshot {
            struct_size: given,
            id: [0; COWBLK_SNAPSHOT_ID_LEN],
            name: [0; COWBLK_SNAPSHOT_NAME_LEN],
            vm_state_size: s.vm_state_size,
            date_sec: s.date_sec,
            date_nsec: s.date_nsec,
            vm_clock_nsec: s.vm_clock_nsec,
            disk_size: s.disk_size,
            icount: s.icount.unwrap_or(u64::MAX),
        };
        copy_cut(&mut v.id, &s.id);
        copy_cut(&mut v.name, &s.name);
        write_prefix(out, given, v);
        Ok(0)
    })
}

/// Creates an internal snapshot of the active state named `name` (names
/// may repeat; the id is one more than the largest numeric id), dated now.
/// Needs a read-write handle; waits for running requests. -ENOTSUP for
/// formats without snapshots, qcow2 with an external data file, or a
/// qcow2 with 1-bit refcounts holding data (a shared cluster needs a
/// count of 2).
///
/// # Safety
/// `img` is a live handle; `name` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn cowblk_snapshot_create(
    img: *mut cowblk_image,
    name: *const c_char,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let name = str_arg(name, "snapshot name")?;
        h.img.snapshot_create(name)?;
        Ok(0)
    })
}

/// Makes the active state (contents and virtual size) a copy of the
/// snapshot whose id is `id_or_name`, else the first named so (QEMU's
/// `snapshot -a` / loadvm rule). -ENOENT when there is none; -EINVAL for
/// "cowblk-metadata" (it holds key/value metadata, not a disk state).
///
/// # Safety
/// `img` is a live handle; `id_or_name` a NUL-terminated UTF-8 string.
#[no_mangle]
pub unsafe extern "C" fn cowblk_snapshot_apply(
    img: *mut cowblk_image,
    id_or_name: *const c_char,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let s = str_arg(id_or_name, "snapshot id or name")?;
        h.img
            .snapshot_apply(&SnapshotRef::IdOrName(s.to_string()))?;
        Ok(0)
    })
}

/// Deletes the first snapshot with this `id` and/or `name` (either may be
/// NULL, not both; with both, both must match), as QEMU's
/// bdrv_snapshot_delete. -ENOENT when none matches.
///
/// # Safety
/// `img` is a live handle; `id` and `name` NULL or NUL-terminated UTF-8.
#[no_mangle]
pub unsafe extern "C" fn cowblk_snapshot_delete(
    img: *mut cowblk_image,
    id: *const c_char,
    name: *const c_char,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let id = opt_str_arg(id, "snapshot id")?;
        let name = opt_str_arg(name, "snapshot name")?;
        let which = match (id, name) {
            (Some(i), Some(n)) => SnapshotRef::IdAndName(i.into(), n.into()),
            (Some(i), None) => SnapshotRef::Id(i.into()),
            (None, Some(n)) => SnapshotRef::Name(n.into()),
            (None, None) => {
                return Err(Error::InvalidArgument(
                    "snapshot delete needs an id or a name".into(),
                ))
            }
        };
        h.img.snapshot_delete(&which)?;
        Ok(0)
    })
}
