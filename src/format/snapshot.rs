//! Internal snapshots as formats that have them describe them.

/// One internal snapshot (`qemu-img snapshot -l`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    /// Bytes of saved VM state.
    pub vm_state_size: u64,
    /// Creation time, seconds and nanoseconds since the epoch.
    pub date_sec: u64,
    pub date_nsec: u32,
    /// Guest clock at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count, where recorded.
    pub icount: Option<u64>,
}

/// Which snapshot to open (`-l snapshot.id=ID` / `snapshot.name=NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRef {
    Id(String),
    Name(String),
}

impl SnapshotRef {
    /// Whether `s` is the snapshot meant.
    pub fn matches(&self, s: &SnapshotInfo) -> bool {
        match self {
            SnapshotRef::Id(id) => &s.id == id,
            SnapshotRef::Name(n) => &s.name == n,
        }
    }
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotRef::Id(id) => write!(f, "snapshot id '{id}'"),
            SnapshotRef::Name(n) => write!(f, "snapshot '{n}'"),
        }
    }
}
