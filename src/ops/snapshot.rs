//! Internal snapshots of an open image (`qemu-img snapshot -c/-a/-d`):
//! each waits for running requests and holds off new ones while the
//! format rewrites its tables, as a resize does.

use crate::error::Result;
use crate::image::{Image, SnapshotRef};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the epoch (QEMU's wall-clock date; the
/// nanoseconds are whole microseconds, as `g_get_real_time` gives).
pub fn now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as u32, d.subsec_micros() * 1000)
}

impl Image {
    /// Creates an internal snapshot of the active state named `name`
    /// (names may repeat, as in QEMU); returns the id it was given.
    pub fn snapshot_create(&self, name: &str) -> Result<String> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.snapshot_create(name, now())
    }

    /// Makes the active state (contents and size) a copy of the snapshot's.
    pub fn snapshot_apply(&self, which: &SnapshotRef) -> Result<()> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.snapshot_apply(which)
    }

    /// Deletes an internal snapshot.
    pub fn snapshot_delete(&self, which: &SnapshotRef) -> Result<()> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.snapshot_delete(which)
    }
}
