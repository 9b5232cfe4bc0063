//! The format-independent metadata interface: `Image::meta_*` read one
//! key through the store's directory, and change the pairs by building a
//! whole new store that the format swaps in atomically (`MetaStore`).

use super::store::{self, Store, Superblock, SUPERBLOCK_LEN};
use crate::error::{Error, Result};
use crate::image::Image;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// Where a format keeps its store (docs/specs/metadata.txt, section 3).
pub trait MetaStore: Send + Sync {
    /// Guards the store's location: readers hold it shared for as long as
    /// they read store bytes, a change holds it exclusive.
    fn meta_lock(&self) -> &RwLock<()>;
    /// Length of the current store, `None` when the image holds none.
    fn store_len(&self) -> Result<Option<u64>>;
    /// Reads `buf.len()` bytes at `off` of the current store (the caller
    /// keeps `off + buf.len()` within `store_len`).
    fn read_store(&self, buf: &mut [u8], off: u64) -> Result<()>;
    /// Replaces the store with `new` (`None`: no store) as one atomic,
    /// crash-safe change: after a power cut at any moment the image holds
    /// the old store or the new one. `same` lists byte ranges of the new
    /// store equal to ranges of the old one (values carried over), which
    /// the format may share instead of writing.
    fn replace_store(&self, new: Option<&[u8]>, same: &[Same]) -> Result<()>;
    /// The unit a format can share between stores: values at least this
    /// long are placed at multiples of it. `None`: no sharing.
    fn share_unit(&self) -> Option<u64> {
        None
    }
}

/// `len` bytes at `new_off` of a new store equal those at `old_off` of the
/// store it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Same {
    pub new_off: u64,
    pub old_off: u64,
    pub len: u64,
}

/// One change of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Set(String, Vec<u8>),
    Delete(String),
}

/// A key and its value's size, as `meta_list` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaEntry {
    pub key: String,
    pub size: u64,
}

/// The last directory read and the superblock bytes it belongs to. The
/// superblock holds the generation, the directory's CRC and the store's
/// length, so equal bytes mean an equal directory (and every value read
/// is checked against its own CRC anyway).
pub(crate) type DirCache = Mutex<Option<([u8; SUPERBLOCK_LEN], Arc<Store>)>>;

fn read_dir(ms: &dyn MetaStore, cache: &DirCache) -> Result<Option<Arc<Store>>> {
    let Some(len) = ms.store_len()? else {
        return Ok(None);
    };
    let mut sb = [0u8; SUPERBLOCK_LEN];
    if len < SUPERBLOCK_LEN as u64 {
        return Err(Error::Corrupt(format!(
            "metadata store: {len} bytes, shorter than its superblock"
        )));
    }
    ms.read_store(&mut sb, 0)?;
    let raw = sb;
    if let Some((k, st)) = &*cache.lock().unwrap_or_else(|p| p.into_inner()) {
        if *k == raw && st.superblock.store_len <= len {
            return Ok(Some(st.clone()));
        }
    }
    let sb = Superblock::parse(&sb)?;
    if sb.store_len > len {
        return Err(Error::Corrupt(format!(
            "metadata store: the superblock says {} bytes, the image keeps {len}",
            sb.store_len
        )));
    }
    // Parse checked dir_len against the entry count's bounds (at most
    // 280 MiB for 2^20 entries) and against the store's length.
    let mut dir = vec![0u8; sb.dir_len as usize];
    ms.read_store(&mut dir, sb.dir_offset)?;
    let st = Arc::new(Store::parse(sb, &dir)?);
    // Bounded: a directory of up to 16 MiB (some 300,000 short keys).
    if sb.dir_len <= 16 << 20 {
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((raw, st.clone()));
    }
    Ok(Some(st))
}

/// The whole current store's bytes (its superblock's `store_len`), or
/// `None` without a store.
fn read_whole(ms: &dyn MetaStore) -> Result<Option<(Vec<u8>, Superblock)>> {
    let Some(len) = ms.store_len()? else {
        return Ok(None);
    };
    if len < SUPERBLOCK_LEN as u64 {
        return Err(Error::Corrupt(format!(
            "metadata store: {len} bytes, shorter than its superblock"
        )));
    }
    let mut b = [0u8; SUPERBLOCK_LEN];
    ms.read_store(&mut b, 0)?;
    let sb = Superblock::parse(&b)?;
    if sb.store_len > len {
        return Err(Error::Corrupt(format!(
            "metadata store: the superblock says {} bytes, the image keeps {len}",
            sb.store_len
        )));
    }
    let mut b = vec![0u8; sb.store_len as usize];
    ms.read_store(&mut b, 0)?;
    Ok(Some((b, sb)))
}

impl Image {
    fn meta_store(&self) -> Result<&dyn MetaStore> {
        self.fmt.meta_store().ok_or_else(|| {
            Error::Unsupported(format!(
                "key/value metadata is not supported by {}",
                self.fmt.format_name()
            ))
        })
    }

    /// The keys and their value sizes, sorted by key bytes.
    pub fn meta_list(&self) -> Result<Vec<MetaEntry>> {
        let ms = self.meta_store()?;
        let _s = self.shared();
        let _m = ms.meta_lock().read().unwrap_or_else(|p| p.into_inner());
        Ok(read_dir(ms, &self.meta_dir)?
            .map(|st| {
                st.entries
                    .iter()
                    .map(|e| MetaEntry {
                        key: e.key.clone(),
                        size: e.len,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The value of `key`, `None` if absent. Reads the superblock, the
    /// directory and this value only; checks the value's CRC.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        store::check_key(key)?;
        let ms = self.meta_store()?;
        let _s = self.shared();
        let _m = ms.meta_lock().read().unwrap_or_else(|p| p.into_inner());
        let Some(st) = read_dir(ms, &self.meta_dir)? else {
            return Ok(None);
        };
        let Some(e) = st.get(key) else {
            return Ok(None);
        };
        // Parse checked the length (at most 4 GiB) against the store.
        let mut v = vec![0u8; e.len as usize];
        ms.read_store(&mut v, e.offset)?;
        if crc32c::crc32c(&v) != e.crc {
            return Err(Error::Corrupt(format!(
                "metadata store: the value of '{key}' fails its checksum"
            )));
        }
        Ok(Some(v))
    }

    /// Sets one key.
    pub fn meta_set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta_batch(&[MetaOp::Set(key.into(), value.to_vec())])
    }

    /// Deletes one key; `NotFound` if absent.
    pub fn meta_delete(&self, key: &str) -> Result<()> {
        self.meta_batch(&[MetaOp::Delete(key.into())])
    }

    /// Applies `ops` in order as one atomic change: all of them or, on an
    /// error or a power cut, none. Deleting an absent key fails the batch.
    pub fn meta_batch(&self, ops: &[MetaOp]) -> Result<()> {
        self.check_writable()?;
        for op in ops {
            match op {
                MetaOp::Set(k, v) => {
                    store::check_key(k)?;
                    if v.len() as u64 > store::MAX_VALUE {
                        return Err(Error::TooLarge(format!("the value of '{k}'")));
                    }
                }
                MetaOp::Delete(k) => store::check_key(k)?,
            }
        }
        let ms = self.meta_store()?;
        let _s = self.shared();
        let _m = ms.meta_lock().write().unwrap_or_else(|p| p.into_inner());
        // The whole old store, every value checked: a damaged store is
        // refused rather than carried into the new one.
        let (old, generation) = match read_whole(ms)? {
            None => (Vec::new(), 0),
            Some((b, sb)) => (b, sb.generation.wrapping_add(1)),
        };
        // Each value with where it lies in the old store, if it was
        // carried over unchanged.
        let mut pairs: BTreeMap<String, (Cow<[u8]>, Option<u64>)> = BTreeMap::new();
        if !old.is_empty() {
            let st = store::parse_all(&old)?;
            for e in st.entries {
                let v = &old[e.offset as usize..(e.offset + e.len) as usize];
                pairs.insert(e.key, (Cow::Borrowed(v), Some(e.offset)));
            }
        }
        for op in ops {
            match op {
                MetaOp::Set(k, v) => {
                    pairs.insert(k.clone(), (Cow::Borrowed(v), None));
                }
                MetaOp::Delete(k) => {
                    if pairs.remove(k).is_none() {
                        return Err(Error::NotFound(format!("metadata key '{k}'")));
                    }
                }
            }
        }
        if pairs.is_empty() {
            return ms.replace_store(None, &[]);
        }
        let list: Vec<(&str, &[u8])> = pairs
            .iter()
            .map(|(k, (v, _))| (k.as_str(), &v[..]))
            .collect();
        let unit = ms.share_unit();
        let bytes = store::build_aligned(generation, &list, unit.unwrap_or(8))?;
        let mut same = Vec::new();
        if let Some(unit) = unit {
            // The new store's offsets, from its own directory.
            let st = store::parse_all(&bytes)?;
            for e in &st.entries {
                if let Some((_, Some(old_off))) = pairs.get(&e.key) {
                    if e.len >= unit
                        && e.offset.is_multiple_of(unit)
                        && old_off.is_multiple_of(unit)
                    {
                        same.push(Same {
                            new_off: e.offset,
                            old_off: *old_off,
                            len: e.len,
                        });
                    }
                }
            }
        }
        ms.replace_store(Some(&bytes), &same)
    }

    /// Every pair, in key order (for copying metadata, as `convert` does):
    /// reads the whole store once and checks every value's CRC.
    pub fn meta_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let ms = self.meta_store()?;
        let _s = self.shared();
        let _m = ms.meta_lock().read().unwrap_or_else(|p| p.into_inner());
        let Some((b, _)) = read_whole(ms)? else {
            return Ok(Vec::new());
        };
        let st = store::parse_all(&b)?;
        Ok(st
            .entries
            .into_iter()
            .map(|e| {
                let v = b[e.offset as usize..(e.offset + e.len) as usize].to_vec();
                (e.key, v)
            })
            .collect())
    }

    /// The store's problem, if it has one: every rule and every value's
    /// CRC checked (for `check`).
    pub(crate) fn meta_check(&self) -> Option<Error> {
        let ms = self.fmt.meta_store()?;
        let _s = self.shared();
        let _m = ms.meta_lock().read().unwrap_or_else(|p| p.into_inner());
        match read_whole(ms) {
            Ok(None) => None,
            Ok(Some((b, _))) => store::parse_all(&b).err(),
            Err(e) => Some(e),
        }
    }

    /// Whether this image's format can hold metadata.
    pub fn meta_supported(&self) -> bool {
        self.fmt.meta_store().is_some()
    }
}

impl Image {
    /// Copies every pair into `dst` as one batch (its old pairs are
    /// replaced where keys meet) and returns how many. Nothing to copy is
    /// not an error; a source with pairs and a destination that cannot
    /// hold them is (`Unsupported`, naming the destination's format).
    pub fn meta_copy_to(&self, dst: &Image) -> Result<usize> {
        if !self.meta_supported() {
            return Ok(0);
        }
        let all = self.meta_all()?;
        if all.is_empty() {
            return Ok(0);
        }
        let n = all.len();
        let ops: Vec<MetaOp> = all.into_iter().map(|(k, v)| MetaOp::Set(k, v)).collect();
        dst.meta_batch(&ops)
            .map_err(|e| e.context(format!("copying {n} metadata key(s)")))?;
        Ok(n)
    }

    /// The keys and sizes for `info`'s format-specific part: nothing when
    /// the image holds no pairs.
    pub(crate) fn meta_info_fields(&self) -> Vec<(String, crate::format::info::InfoValue)> {
        use crate::format::info::InfoValue;
        if !self.meta_supported() {
            return Vec::new();
        }
        match self.meta_list() {
            Ok(l) if l.is_empty() => Vec::new(),
            Ok(l) => vec![(
                "metadata".into(),
                InfoValue::List(
                    l.into_iter()
                        .map(|e| {
                            InfoValue::Map(vec![
                                ("key".into(), e.key.into()),
                                ("size".into(), e.size.into()),
                            ])
                        })
                        .collect(),
                ),
            )],
            Err(e) => vec![("metadata".into(), format!("unreadable: {e}").into())],
        }
    }
}
