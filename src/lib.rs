//! cowblk: QEMU-style block format drivers (raw, add-cow) behind one
//! engine, with a C ABI.
//!
//! Layers, bottom up: `io` (files), `format` (mapping and allocation per
//! format), `engine` + `image` (reads, writes, copy-on-write, backing
//! chains), `ffi` (the C ABI).

pub mod compressed_write;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod format;
pub mod image;
pub mod io;
pub mod meta;
pub mod nb;
pub mod ops;
pub mod rangelock;

pub use error::{Error, Result};
pub use format::CreateOptions;
pub use image::{Backing, BlockStatus, Image, ImageInfo, OpenOptions, SnapshotRef};
pub use io::{Const, IoVec, Mut};
