//! Resizing for hosts that manage the backing layer themselves.

use super::error::guard;
use super::handle::{cowblk_image, image};
use std::ffi::c_int;

/// `cowblk_truncate` for a handle opened with COWBLK_OPEN_CALLER_BACKING:
/// `backing_len` is the length of the backing layer the caller manages
/// (`has_backing` false: it has none). Grown space that layer would show
/// (below `backing_len`) is made to read zeros; the rest stays unallocated,
/// as QEMU's formats leave it (plain `cowblk_truncate` in that mode must
/// assume an endless backing layer). QEMU's BDRV_REQ_ZERO_WRITE case.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_truncate_over(
    img: *mut cowblk_image,
    size: u64,
    has_backing: bool,
    backing_len: u64,
) -> c_int {
    guard(|| {
        let len = has_backing.then_some(backing_len);
        image(img)?.img.truncate_over(size, len)?;
        Ok(0)
    })
}
