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
    let base = top
        .open_named(&spec.path, &opts)
        .map_err(|e| e.context(format!("backing file '{}'", spec.name)))?;
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
    // The base holds the data durably before the top lets go of it.
    base.close()?;
    let fresh = top.open_named(
        &spec.path,
        &OpenOptions {
            read_only: true,
            ..opts
        },
    )?;
    top.set_backing_layer(Some(Arc::new(fresh)));
    if !keep {
        match top.make_empty() {
            Ok(()) | Err(Error::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
    }
    top.flush()
}
