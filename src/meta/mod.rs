//! Key/value metadata stores (docs/specs/metadata.txt): the
//! format-independent byte layout (`store`), parsed from and built into
//! byte slices, and the image-level interface (`api`). Where each format
//! keeps its store is the format's business (`api::MetaStore`).

pub mod api;
pub mod store;

pub use api::{MetaEntry, MetaOp, MetaStore, Same};
pub use store::{Entry, Store, Superblock};
