//! Power cuts at every operation of metadata sets, deletes and batches
//! (docs/specs/metadata.txt): afterwards the image holds the old or the new
//! set of pairs, never a mix or a damaged store, and guest data written and
//! flushed before is intact.

mod common;

use common::{pattern, Rng};
use cowblk::io::fault::MemStorage;
use cowblk::meta::MetaOp;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

type Pairs = BTreeMap<String, Vec<u8>>;

/// Chooses which unflushed writes survive a power cut.
type Keep = Box<dyn FnMut(&Path, usize) -> bool>;

const SIZE: u64 = 256 << 10;

fn create(st: &Arc<MemStorage>, fmt: &str) -> &'static str {
    let mut o = CreateOptions::new();
    o.set("size", SIZE.to_string());
    let fmt = match fmt {
        "qcow2-v2" => {
            o.set("compat", "0.10");
            "qcow2"
        }
        f => f,
    };
    let name = if fmt == "add-cow" {
        o.set("image_file", "d.img").set("cluster_size", "4096");
        "d.add-cow"
    } else {
        o.set("cluster_size", "4096");
        "d.qcow2"
    };
    Image::create_in(st.clone(), Path::new(name), fmt, &o).unwrap();
    name
}

fn pairs_of(img: &Image) -> Pairs {
    img.meta_all().unwrap().into_iter().collect()
}

fn apply(p: &mut Pairs, ops: &[MetaOp]) {
    for op in ops {
        match op {
            MetaOp::Set(k, v) => {
                p.insert(k.clone(), v.clone());
            }
            MetaOp::Delete(k) => {
                p.remove(k);
            }
        }
    }
}

/// A durable image with guest data and some pairs, then the change under
/// test cut at every operation; each cut is checked with none, all and
/// random subsets of the unflushed writes kept.
fn crash_every_op(fmt: &str, changes: &[Vec<MetaOp>]) {
    let big: Vec<u8> = pattern(300_000, 3);
    let initial = vec![
        MetaOp::Set("license".into(), b"MIT".to_vec()),
        MetaOp::Set("logo".into(), big.clone()),
        MetaOp::Set("empty".into(), Vec::new()),
    ];
    let guest = pattern(SIZE as usize, 9);
    let base = {
        let st = Arc::new(MemStorage::new());
        let name = create(&st, fmt);
        let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
        img.write(&guest, 0).unwrap();
        img.meta_batch(&initial).unwrap();
        img.flush().unwrap();
        drop(img);
        (st.crash(|_, _| true), name)
    };
    let (mut base_st, name) = base;
    let mut before = Pairs::new();
    apply(&mut before, &initial);
    for (ci, change) in changes.iter().enumerate() {
        let mut after = before.clone();
        apply(&mut after, change);
        // Operations a full run takes.
        let total = {
            let st = Arc::new(base_st.crash(|_, _| true));
            let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
            let start = st.op_count();
            img.meta_batch(change).unwrap();
            st.op_count() - start
        };
        assert!(total >= 4, "change {ci}: only {total} operations");
        let mut r = Rng::new(ci as u64 + 1);
        let (mut saw_old, mut saw_new) = (false, false);
        for k in 0..=total {
            let st = Arc::new(base_st.crash(|_, _| true));
            let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
            st.fail_from(Some(st.op_count() + k));
            let res = img.meta_batch(change);
            assert_eq!(res.is_ok(), k == total, "change {ci}, cut at {k}: {res:?}");
            drop(img);
            let seeds = (r.next(), r.next());
            let keeps: Vec<Keep> = vec![
                Box::new(|_, _| false),
                Box::new(|_, _| true),
                Box::new({
                    let mut r = Rng::new(seeds.0);
                    move |_, _| r.below(2) == 0
                }),
                Box::new({
                    let mut r = Rng::new(seeds.1);
                    move |_, _| r.below(4) != 0
                }),
            ];
            for (i, keep) in keeps.into_iter().enumerate() {
                let what = format!("{fmt} change {ci}, cut at op {k}/{total}, subset {i}");
                let crashed = Arc::new(st.crash(keep));
                let img = Image::open_in(
                    crashed.clone(),
                    Path::new(name),
                    &OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
                let got = pairs_of(&img);
                if got == before {
                    saw_old = true;
                } else if got == after {
                    saw_new = true;
                } else {
                    panic!(
                        "{what}: neither the old nor the new pairs: {:?}",
                        got.keys().collect::<Vec<_>>()
                    );
                }
                let mut buf = vec![0u8; SIZE as usize];
                img.read(&mut buf, 0).unwrap();
                assert!(buf == guest, "{what}: guest data changed");
                if fmt.starts_with("qcow2") {
                    let rep = img.check(cowblk::format::Repair::None).unwrap();
                    assert_eq!(rep.corruptions, 0, "{what}: {:?}", rep.messages);
                    // A finished change leaves nothing leaked; a cut may
                    // leak (as in QEMU), never corrupt.
                    if k == total {
                        assert_eq!(rep.leaks, 0, "{what}: {:?}", rep.messages);
                    }
                }
            }
        }
        assert!(saw_old && saw_new, "change {ci}: both outcomes occur");
        // The next change starts from this one's result.
        let st = Arc::new(base_st.crash(|_, _| true));
        let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
        img.meta_batch(change).unwrap();
        drop(img);
        base_st = st.crash(|_, _| true);
        before = after;
    }
}

fn changes() -> Vec<Vec<MetaOp>> {
    vec![
        vec![MetaOp::Set("motd".into(), b"hello".to_vec())],
        vec![MetaOp::Delete("logo".into())],
        vec![
            MetaOp::Set("license".into(), b"GPL-2.0".to_vec()),
            MetaOp::Delete("empty".into()),
            MetaOp::Set("logo".into(), pattern(70_000, 5)),
        ],
        // Deleting the last keys drops the store altogether.
        vec![
            MetaOp::Delete("license".into()),
            MetaOp::Delete("logo".into()),
            MetaOp::Delete("motd".into()),
        ],
    ]
}

#[test]
fn qcow2_v3_set_delete_batch_survive_a_cut_anywhere() {
    crash_every_op("qcow2", &changes());
}

#[test]
fn qcow2_v2_set_delete_batch_survive_a_cut_anywhere() {
    crash_every_op("qcow2-v2", &changes());
}

#[test]
fn addcow_set_delete_batch_survive_a_cut_anywhere() {
    crash_every_op("add-cow", &changes());
}

/// A grow whose bitmap reaches the store moves the store first; a cut at
/// any operation leaves the pairs intact and the old or the new size.
#[test]
fn addcow_grow_moving_the_store_survives_a_cut_anywhere() {
    let st = Arc::new(MemStorage::new());
    let mut o = CreateOptions::new();
    o.set("size", SIZE.to_string())
        .set("image_file", "d.img")
        .set("cluster_size", "512");
    Image::create_in(st.clone(), Path::new("d.add-cow"), "add-cow", &o).unwrap();
    let img = Image::open_in(st.clone(), Path::new("d.add-cow"), &OpenOptions::default()).unwrap();
    let guest = pattern(SIZE as usize, 4);
    img.write(&guest, 0).unwrap();
    let pairs = vec![
        MetaOp::Set("a".into(), pattern(10_000, 1)),
        MetaOp::Set("b".into(), b"bee".to_vec()),
    ];
    img.meta_batch(&pairs).unwrap();
    img.flush().unwrap();
    drop(img);
    let base = st.crash(|_, _| true);
    let mut want = Pairs::new();
    apply(&mut want, &pairs);
    // 32 MiB at 512-byte clusters: an 8 KiB bitmap, past the store at 4 KiB.
    let new = 32u64 << 20;
    let mut k = 0;
    loop {
        let st = Arc::new(base.crash(|_, _| true));
        let img =
            Image::open_in(st.clone(), Path::new("d.add-cow"), &OpenOptions::default()).unwrap();
        st.fail_from(Some(st.op_count() + k));
        let done = img.truncate(new).is_ok();
        drop(img);
        for keep in 0..3u64 {
            let mut r = Rng::new(keep * 7 + k);
            let what = format!("grow cut at {k}, subset {keep}");
            let crashed = st.crash(|_, _| keep == 1 || (keep == 2 && r.below(2) == 0));
            let img = Image::open_in(
                Arc::new(crashed),
                Path::new("d.add-cow"),
                &OpenOptions {
                    read_only: true,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(img.size() == SIZE || img.size() == new, "{what}");
            assert_eq!(pairs_of(&img), want, "{what}");
            let mut buf = vec![0u8; SIZE as usize];
            img.read(&mut buf, 0).unwrap();
            assert!(buf == guest, "{what}: guest data changed");
        }
        if done {
            break;
        }
        k += 1;
    }
    assert!(k > 5, "the grow took only {k} operations");
}

/// Counts the bytes read through the files it opens.
struct Counting {
    inner: Arc<MemStorage>,
    read: Arc<std::sync::atomic::AtomicU64>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

struct CountingFile {
    inner: Arc<dyn cowblk::io::BlockFile>,
    read: Arc<std::sync::atomic::AtomicU64>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl cowblk::io::BlockFile for CountingFile {
    fn preadv(&self, iov: &cowblk::IoVec, off: u64) -> cowblk::Result<()> {
        self.read
            .fetch_add(iov.len() as u64, std::sync::atomic::Ordering::SeqCst);
        self.inner.preadv(iov, off)
    }
    fn pwritev(&self, iov: &cowblk::IoVec<cowblk::Const>, off: u64) -> cowblk::Result<()> {
        self.written
            .fetch_add(iov.len() as u64, std::sync::atomic::Ordering::SeqCst);
        self.inner.pwritev(iov, off)
    }
    fn flush(&self) -> cowblk::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> cowblk::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> cowblk::Result<()> {
        self.inner.set_len(len)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

impl cowblk::io::Storage for Counting {
    fn open(
        &self,
        path: &Path,
        access: cowblk::io::Access,
    ) -> cowblk::Result<Arc<dyn cowblk::io::BlockFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open(path, access)?,
            read: self.read.clone(),
            written: self.written.clone(),
        }))
    }
    fn create(&self, path: &Path, t: bool) -> cowblk::Result<Arc<dyn cowblk::io::BlockFile>> {
        self.inner.create(path, t)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> cowblk::Result<()> {
        self.inner.remove(path)
    }
}

/// Reading one small key of a store holding 8 MiB of other values reads
/// a few KiB (superblock, directory, L2 table, value), not the store.
#[test]
fn reading_one_key_reads_only_its_bytes() {
    for fmt in ["add-cow", "qcow2"] {
        let st = Arc::new(MemStorage::new());
        let name = create(&st, fmt);
        let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
        img.meta_batch(&[
            MetaOp::Set("big1".into(), pattern(4 << 20, 1)),
            MetaOp::Set("big2".into(), pattern(4 << 20, 2)),
            MetaOp::Set("small".into(), b"tiny".to_vec()),
        ])
        .unwrap();
        img.close().unwrap();
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cs = Arc::new(Counting {
            inner: Arc::new(st.crash(|_, _| true)),
            read: read.clone(),
            written: Default::default(),
        });
        let img = Image::open_in(
            cs,
            Path::new(name),
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let before = read.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(img.meta_get("small").unwrap().unwrap(), b"tiny");
        let n = read.load(std::sync::atomic::Ordering::SeqCst) - before;
        eprintln!("{fmt}: one small key: {n} bytes read");
        assert!(n < 64 << 10, "{fmt}: one small key read {n} bytes");
        let before = read.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(img.meta_get("big2").unwrap().unwrap(), pattern(4 << 20, 2));
        let n = read.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(
            n < (4 << 20) + (64 << 10),
            "{fmt}: a 4 MiB key read {n} bytes"
        );
    }
}

/// qcow2 shares the clusters of values a change carries over: setting a
/// small key next to 8 MiB of values writes a few clusters, not 8 MiB,
/// and the values still read back (add-cow copies the store).
#[test]
fn qcow2_changes_share_unchanged_values() {
    let st = Arc::new(MemStorage::new());
    let name = create(&st, "qcow2");
    let img = Image::open_in(st.clone(), Path::new(name), &OpenOptions::default()).unwrap();
    img.meta_batch(&[
        MetaOp::Set("big1".into(), pattern(4 << 20, 1)),
        MetaOp::Set("big2".into(), pattern((4 << 20) + 100, 2)),
    ])
    .unwrap();
    img.close().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cs = Arc::new(Counting {
        inner: Arc::new(st.crash(|_, _| true)),
        read: Default::default(),
        written: written.clone(),
    });
    let img = Image::open_in(cs.clone(), Path::new(name), &OpenOptions::default()).unwrap();
    let before = written.load(std::sync::atomic::Ordering::SeqCst);
    img.meta_set("small", b"tiny").unwrap();
    img.flush().unwrap();
    let n = written.load(std::sync::atomic::Ordering::SeqCst) - before;
    eprintln!("qcow2: a small set beside 8 MiB of values wrote {n} bytes");
    assert!(n < 256 << 10, "wrote {n} bytes");
    assert_eq!(img.meta_get("big1").unwrap().unwrap(), pattern(4 << 20, 1));
    assert_eq!(
        img.meta_get("big2").unwrap().unwrap(),
        pattern((4 << 20) + 100, 2)
    );
    // Deleting one big value frees its clusters; the other stays shared.
    img.meta_delete("big1").unwrap();
    assert_eq!(
        img.meta_get("big2").unwrap().unwrap(),
        pattern((4 << 20) + 100, 2)
    );
    let r = img.check(cowblk::format::Repair::None).unwrap();
    assert_eq!((r.corruptions, r.leaks), (0, 0), "{:?}", r.messages);
}
