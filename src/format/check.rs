//! Consistency checks (`qemu-img check`): what a format's checker reports.

/// The outcome of a format's consistency check, in qemu-img's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Errors that may corrupt data (qemu-img exit code 2).
    pub corruptions: u64,
    /// Wasted space that harms no data (exit code 3).
    pub leaks: u64,
    /// Errors that stopped the check from completing (exit code 1).
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    /// Clusters the image can address, and those allocated, if the format
    /// has clusters.
    pub total_clusters: Option<u64>,
    pub allocated_clusters: Option<u64>,
    /// Allocated clusters not contiguous with the previous one in their
    /// L2 table (compressed ones always count), and compressed clusters
    /// (qcow2).
    pub fragmented_clusters: Option<u64>,
    pub compressed_clusters: Option<u64>,
    /// First byte past the format's metadata and data, if meaningful.
    pub image_end_offset: Option<u64>,
    /// One line per problem found, for the user.
    pub messages: Vec<String>,
    /// The check stopped early with this error after finding what
    /// `messages` say (qemu-img then prints "Check failed: ..." and no
    /// summary).
    pub failure: Option<String>,
}

/// What a check may repair (`qemu-img check -r`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repair {
    #[default]
    None,
    Leaks,
    All,
}
