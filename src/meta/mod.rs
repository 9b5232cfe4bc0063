//! Key/value metadata stores (docs/specs/metadata.txt, section 2): the
//! format-independent byte layout, parsed from and built into byte slices.
//! Where each format keeps its store is the format's business.

pub mod store;

pub use store::{Entry, Store, Superblock};
