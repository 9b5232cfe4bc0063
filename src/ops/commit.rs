//! Writing an overlay's own data into its backing file (`qemu-img commit`).

use super::{Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::{Image, OpenOptions};
use std::sync::Arc;

/// Copies every range allocated in `top` into its backing file (growing
/// the backing file if it is smaller), makes that durable, then, unless
/// `keep`, empties `top` where its format can (so it reads through again).
pub fn commit(top: &Image, keep: bool, progress: Progress) -> Result<()> {
    let spec = top.backing_spec().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "image '{}' does not have a backing file",
            top.path().display()
        ))
    })?;
    let opts = OpenOptions {
        format: spec.format.clone(),
        ..Default::default()
    };
    // The top's own read-only handle on the base keeps writers out (image
    // locking, even within this process): let go of it while the base is
    // open for writing, and put a read-only one back afterwards, also when
    // the copy fails.
    let ro = OpenOptions {
        read_only: true,
        ..opts.clone()
    };
    top.set_backing_layer(None);
    let copied = top
        .open_named(&spec.path, &opts)
        .map_err(|e| e.context(format!("backing file '{}'", spec.name)))
        .and_then(|base| copy_into(top, base, progress));
    let fresh = top.open_named(&spec.path, &ro).map(Arc::new);
    if let Ok(b) = &fresh {
        top.set_backing_layer(Some(b.clone()));
    }
    copied?;
    fresh?;
    if !keep {
        match top.make_empty() {
            Ok(()) | Err(Error::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
    }
    top.flush()
}

/// Copies what `top` allocates into `base`, then closes `base` (its data
/// durable before the top lets go of it).
fn copy_into(top: &Image, base: Image, progress: Progress) -> Result<()> {
    let size = top.size();
    if base.size() < size {
        base.truncate(size)?;
    }
    let mut buf = Vec::new();
    let mut off = 0;
    progress(0, size);
    while off < size {
        let (st, n) = top.block_status(off, (size - off).min(CHUNK))?;
        if st.allocated {
            if st.zero && !st.data {
                base.write_zeroes(off, n)?;
            } else {
                buf.resize(n as usize, 0);
                top.read(&mut buf, off)?;
                base.write(&buf, off)?;
            }
        }
        off += n;
        progress(off, size);
    }
    base.close()
}
