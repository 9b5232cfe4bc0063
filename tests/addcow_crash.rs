//! Power cuts at every step of a write workload on the fault-injecting
//! I/O layer: afterwards every sector reads a version it held since the
//! last flush that completed, never zeros where the backing file had data.

mod common;

use common::{pattern, Rng};
use cowblk::io::fault::MemStorage;
use cowblk::io::{Access, BlockFile, Storage};
use cowblk::{CreateOptions, Image, IoVec, OpenOptions};
use std::path::Path;
use std::sync::Arc;

const SECTOR: usize = 512;

/// Chooses which unflushed writes survive a power cut.
type Keep = Box<dyn FnMut(&Path, usize) -> bool>;

#[derive(Clone)]
enum Op {
    Write { off: u64, data: Vec<u8> },
    Zero { off: u64, len: u64 },
    Flush,
}

/// Storage holding base.raw (a pattern) and an empty overlay.
fn setup(size: u64, cluster: u64) -> (MemStorage, Vec<u8>) {
    let st = MemStorage::new();
    let base = pattern(size as usize, 7);
    st.insert("base.raw", base.clone());
    let st = Arc::new(st);
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img")
        .set("cluster_size", cluster.to_string());
    Image::create_in(st.clone(), Path::new("ov.add-cow"), "add-cow", &o).unwrap();
    // Make everything durable and hand back a plain storage.
    let st = Arc::try_unwrap(st).ok().unwrap();
    let st = st.crash(|_, _| true);
    (st, base)
}

fn workload(seed: u64, size: u64, n: usize) -> Vec<Op> {
    let mut r = Rng::new(seed);
    let sectors = size / SECTOR as u64;
    let mut ops = Vec::new();
    for i in 0..n {
        if i % 7 == 6 {
            ops.push(Op::Flush);
            continue;
        }
        let s = r.below(sectors);
        let len = (1 + r.below(24)).min(sectors - s);
        if r.below(6) == 0 {
            ops.push(Op::Zero {
                off: s * SECTOR as u64,
                len: len * SECTOR as u64,
            });
        } else {
            let mut data = vec![0u8; (len as usize) * SECTOR];
            r.fill(&mut data);
            ops.push(Op::Write {
                off: s * SECTOR as u64,
                data,
            });
        }
    }
    ops
}

/// Per-sector versions allowed after a crash: what each sector held at the
/// last completed flush plus everything written to it since.
struct Model {
    cur: Vec<Vec<u8>>,
    allowed: Vec<Vec<Vec<u8>>>,
}

impl Model {
    fn new(base: &[u8]) -> Self {
        let cur: Vec<Vec<u8>> = base.chunks(SECTOR).map(|c| c.to_vec()).collect();
        let allowed = cur.iter().map(|c| vec![c.clone()]).collect();
        Model { cur, allowed }
    }
    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, c) in data.chunks(SECTOR).enumerate() {
            let s = off as usize / SECTOR + i;
            self.cur[s] = c.to_vec();
            self.allowed[s].push(c.to_vec());
        }
    }
    fn flushed(&mut self) {
        for (a, c) in self.allowed.iter_mut().zip(&self.cur) {
            *a = vec![c.clone()];
        }
    }
}

/// Runs `ops` until the injected fault stops it; returns the model.
fn run(img: &Image, ops: &[Op], base: &[u8]) -> Model {
    let mut m = Model::new(base);
    for op in ops {
        let ok = match op {
            Op::Write { off, data } => {
                // A failed write may still have reached the disk in part.
                m.write(*off, data);
                img.write(data, *off).is_ok()
            }
            Op::Zero { off, len } => {
                m.write(*off, &vec![0u8; *len as usize]);
                img.write_zeroes(*off, *len).is_ok()
            }
            Op::Flush => {
                let ok = img.flush().is_ok();
                if ok {
                    m.flushed();
                }
                ok
            }
        };
        if !ok {
            break;
        }
    }
    m
}

fn check(st: &MemStorage, m: &Model, size: u64, what: &str) {
    let img = Image::open_in(
        Arc::new(st.crash(|_, _| true)),
        Path::new("ov.add-cow"),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert_eq!(img.size(), size);
    let mut buf = vec![0u8; size as usize];
    img.read(&mut buf, 0).unwrap();
    for (s, got) in buf.chunks(SECTOR).enumerate() {
        assert!(
            m.allowed[s].iter().any(|v| v == got),
            "{what}: sector {s} holds none of its {} allowed versions",
            m.allowed[s].len()
        );
    }
}

fn crash_everywhere(size: u64, cluster: u64, cache: u64, nops: usize, stride: u64) {
    let ops = workload(size ^ cluster, size, nops);
    // Count the operations a full run takes.
    let (st, base) = setup(size, cluster);
    let total = {
        let st = Arc::new(st);
        let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(cache)).unwrap();
        let start = st.op_count();
        run(&img, &ops, &base);
        img.flush().unwrap();
        st.op_count() - start
    };
    assert!(total > 20, "workload too small: {total} operations");
    let mut r = Rng::new(99);
    let mut k = 0;
    while k <= total {
        let (st, base) = setup(size, cluster);
        let st = Arc::new(st);
        let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(cache)).unwrap();
        st.fail_from(Some(st.op_count() + k));
        let m = run(&img, &ops, &base);
        drop(img);
        // Keep none, all, and random subsets of the unflushed writes.
        let subsets: Vec<Keep> = vec![
            Box::new(|_, _| false),
            Box::new(|_, _| true),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(2) == 0
            }),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(4) == 0
            }),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(4) != 0
            }),
        ];
        for (i, keep) in subsets.into_iter().enumerate() {
            let crashed = st.crash(keep);
            check(&crashed, &m, size, &format!("cut at op {k}, subset {i}"));
        }
        k += stride;
    }
}

fn open_opts(cache: u64) -> OpenOptions {
    OpenOptions {
        cache_size: cache,
        ..Default::default()
    }
}

#[test]
fn power_cut_at_every_step_small_clusters() {
    crash_everywhere(256 << 10, 4096, 0, 40, 1);
}

#[test]
fn power_cut_at_every_step_with_bitmap_eviction() {
    // 512-byte clusters over 24 MiB: a 6 KiB bitmap in three 4 KiB
    // blocks, with room for only two in the cache.
    crash_everywhere(24 << 20, 512, 8192, 30, 3);
}

#[test]
fn power_cut_during_resize() {
    let size = 256u64 << 10;
    for (new, what) in [(size + 100_352, "grow"), (size / 2 + 4096, "shrink")] {
        let mut k = 0;
        loop {
            let (st, base) = setup(size, 65536);
            let st = Arc::new(st);
            let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(0)).unwrap();
            img.write(&[0xee; 4096], 8192).unwrap();
            img.flush().unwrap();
            st.fail_from(Some(st.op_count() + k));
            let done = img.truncate(new).is_ok();
            drop(img);
            let mut expect = base.clone();
            expect[8192..8192 + 4096].fill(0xee);
            for keep in 0..3u64 {
                let mut r = Rng::new(keep + k);
                let crashed = st.crash(|_, _| keep == 1 || (keep == 2 && r.below(2) == 0));
                let img = Image::open_in(
                    Arc::new(crashed),
                    Path::new("ov.add-cow"),
                    &OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{what} cut at {k}: {e}"));
                let got_size = img.size();
                assert!(
                    got_size == size || got_size == new,
                    "{what} cut at {k}: size {got_size}"
                );
                let mut buf = vec![0u8; got_size as usize];
                img.read(&mut buf, 0).unwrap();
                let keep_len = size.min(new) as usize;
                assert_eq!(
                    &buf[..keep_len.min(buf.len())],
                    &expect[..keep_len.min(buf.len())],
                    "{what} cut at {k}"
                );
                if got_size > size {
                    assert!(
                        buf[size as usize..].iter().all(|&b| b == 0),
                        "{what} cut at {k}: grown area shows old data"
                    );
                }
            }
            if done {
                break;
            }
            k += 1;
        }
        assert!(k > 3, "{what}: resize took only {k} operations");
    }
}

// ---- Resizing: every cut of a grow or shrink, on awkward starting points ----

/// A starting point for resize cuts.
#[derive(Clone, Copy)]
struct Start {
    size: u64,
    cluster: u64,
    /// Length of base.raw; `None`: the overlay has no backing file.
    base_len: Option<u64>,
    /// Bytes of non-zero garbage the image file holds past the size.
    image_extra: u64,
    /// Store size 0 and cluster_bits 0 (the 2012 layout: the size is the
    /// image file's length, one bit per 512-byte sector).
    size0: bool,
}

/// A durable storage for `s` after a few flushed writes, and the guest view
/// it must show (computed here, not read back).
fn start(s: &Start) -> (MemStorage, Vec<u8>) {
    let st = Arc::new(MemStorage::new());
    let mut view = vec![0u8; s.size as usize];
    let mut o = CreateOptions::new();
    o.set("image_file", "ov.img")
        .set("size", s.size.to_string())
        .set("cluster_size", s.cluster.to_string());
    if let Some(bl) = s.base_len {
        let base = pattern(bl as usize, 7);
        let n = bl.min(s.size) as usize;
        view[..n].copy_from_slice(&base[..n]);
        st.insert("base.raw", base);
        o.set("backing_file", "base.raw").set("backing_fmt", "raw");
    }
    Image::create_in(st.clone(), Path::new("ov.add-cow"), "add-cow", &o).unwrap();
    let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(0)).unwrap();
    // A partial first cluster, a whole cluster, and a partial write into the
    // last cluster (so it is owned and, when the size is not a cluster
    // multiple, straddles the end).
    let cs = s.cluster;
    let last = (s.size - 1) / cs * cs;
    let writes = [
        (cs / 4, 512u64, 0x11u8),
        (cs, cs, 0x22),
        (last, 512.min(s.size - last), 0x33),
    ];
    for (off, len, v) in writes {
        img.write(&vec![v; len as usize], off).unwrap();
        view[off as usize..(off + len) as usize].fill(v);
    }
    img.close().unwrap();
    let st = Arc::try_unwrap(st).ok().unwrap().crash(|_, _| true);
    if s.image_extra > 0 {
        let mut d = st.file("ov.img").unwrap().contents();
        assert_eq!(d.len() as u64, s.size);
        d.extend(std::iter::repeat_n(0xa5, s.image_extra as usize));
        st.insert("ov.img", d);
    }
    if s.size0 {
        let mut m = st.file("ov.add-cow").unwrap().contents();
        m[2060..2068].fill(0);
        if s.cluster == 512 {
            m[2068..2072].fill(0);
        }
        st.insert("ov.add-cow", m);
    }
    (st, view)
}

/// Opens the image the way `check` expects it after a cut: read-only, with
/// its backing file.
fn reopen_ro(st: MemStorage) -> Result<Image, cowblk::Error> {
    Image::open_in(
        Arc::new(st),
        Path::new("ov.add-cow"),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
}

/// Checks a crashed disk against a resize of the image `s` describes from
/// `old` (guest view `view`) to `new`: it opens, shows the old or the new
/// size, keeps the old data below both, and reads zeros in grown space,
/// where whole new clusters are owned exactly where the backing file
/// covers them (the spec's rule). Returns the size it shows.
fn check_resized(st: MemStorage, s: &Start, view: &[u8], new: u64, what: &str) -> u64 {
    let old = view.len() as u64;
    let img = reopen_ro(st).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let size = img.size();
    assert!(
        size == old || size == new,
        "{what}: size {size}, expected {old} or {new}"
    );
    let mut buf = vec![0u8; size as usize];
    img.read(&mut buf, 0).unwrap();
    let keep = old.min(size) as usize;
    if let Some(i) = (0..keep).find(|&i| buf[i] != view[i]) {
        panic!(
            "{what}: byte {i} reads {:#x}, it held {:#x} (size {size})",
            buf[i], view[i]
        );
    }
    if let Some(i) = (keep..size as usize).find(|&i| buf[i] != 0) {
        panic!(
            "{what}: grown byte {i} reads {:#x}, not zero (size {size}, old {old})",
            buf[i]
        );
    }
    let cs = s.cluster;
    for c in old.div_ceil(cs)..size.div_ceil(cs) {
        let owned = img.block_status(c * cs, 1).unwrap().0.allocated;
        let covered = s.base_len.is_some_and(|l| c * cs < l);
        assert_eq!(
            owned, covered,
            "{what}: grown cluster {c} owned {owned}, backing covers it {covered}"
        );
    }
    let r = img.check(cowblk::format::Repair::None).unwrap();
    assert_eq!(r.corruptions, 0, "{what}: {:?}", r.messages);
    size
}

/// The guest view a resized image shows when it reports `size`.
fn resized_view(view: &[u8], size: u64) -> Vec<u8> {
    let mut v = view.to_vec();
    v.resize(size as usize, 0);
    v
}

/// Cuts power at every operation of `truncate(new)` on a handle opened with
/// `opts` (after reading the whole image first if `warm`, so the bitmap
/// cache holds it), keeping several subsets of the unflushed writes; checks
/// each crashed disk and hands it to `then` with the size it shows.
/// Returns the uncut outcome.
#[allow(clippy::too_many_arguments)]
fn resize_cuts(
    st0: &MemStorage,
    s: &Start,
    view: &[u8],
    opts: &OpenOptions,
    warm: bool,
    new: u64,
    what: &str,
    then: &mut dyn FnMut(MemStorage, u64, &str),
) -> Result<(), cowblk::Error> {
    let mut r = Rng::new(new ^ view.len() as u64);
    for k in 0.. {
        let st = Arc::new(st0.crash(|_, _| true));
        let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), opts)
            .unwrap_or_else(|e| panic!("{what}: open: {e}"));
        if warm {
            img.read(&mut vec![0u8; view.len()], 0).unwrap();
        }
        st.fail_from(Some(st.op_count() + k));
        let res = img.truncate(new);
        drop(img);
        let injected = matches!(&res, Err(e) if e.to_string().contains("injected fault"));
        let subsets: Vec<Keep> = vec![
            Box::new(|_, _| false),
            Box::new(|_, _| true),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(2) == 0
            }),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(3) != 0
            }),
        ];
        for (i, keep) in subsets.into_iter().enumerate() {
            let crashed = st.crash(keep);
            let w = format!("{what}: cut at op {k}, subset {i}");
            let size = check_resized(crashed.crash(|_, _| true), s, view, new, &w);
            then(crashed, size, &w);
        }
        if !injected {
            return res;
        }
    }
    unreachable!()
}

fn no_then() -> impl FnMut(MemStorage, u64, &str) {
    |_, _, _| {}
}

/// Grows (or shrinks) from every starting point and cuts everywhere.
fn resize_from(s: Start, new: u64) {
    let (st, view) = start(&s);
    let what = format!(
        "{} -> {new} (cluster {}, base {:?}, extra {}, size0 {})",
        s.size, s.cluster, s.base_len, s.image_extra, s.size0
    );
    resize_cuts(
        &st,
        &s,
        &view,
        &open_opts(0),
        false,
        new,
        &what,
        &mut no_then(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

const BASE: Start = Start {
    size: 40 << 10,
    cluster: 4096,
    base_len: Some(40 << 10),
    image_extra: 0,
    size0: false,
};

#[test]
fn grow_cut_everywhere_with_image_file_longer_than_size() {
    // The grown range of the image file holds stale bytes: a cut must not
    // show them, in owned clusters (backing covers them, bits set) or in
    // the cluster that straddles an unaligned old end.
    for (size, base_len) in [
        (40 << 10, Some(64 << 10)),
        ((40 << 10) - 1000, Some(64 << 10)),
    ] {
        for extra in [3000, 20 << 10] {
            resize_from(
                Start {
                    size,
                    base_len,
                    image_extra: extra,
                    ..BASE
                },
                (60 << 10) + 512,
            );
        }
    }
    // Without a backing file, an owned straddling cluster and past-the-end
    // garbage are the only ways stale bytes could show.
    resize_from(
        Start {
            size: (40 << 10) - 1000,
            base_len: None,
            image_extra: 9000,
            ..BASE
        },
        50 << 10,
    );
}

#[test]
fn grow_cut_everywhere_from_unaligned_unowned_end() {
    // The last cluster is clear when the size is a cluster multiple plus a
    // little: the grow copies its head from the backing file and owns it.
    for size in [(40 << 10) + 100, (40 << 10) + 3000] {
        resize_from(
            Start {
                size,
                base_len: Some(64 << 10),
                ..BASE
            },
            (56 << 10) + 7,
        );
    }
}

#[test]
fn resize_cut_everywhere_on_2012_layout() {
    // Size field 0: the image file's length is the size, so extending it
    // early would expose a size the bitmap does not cover.
    for (cluster, new) in [(512, (48 << 10) + 512), (512, 30 << 10), (4096, 64 << 10)] {
        resize_from(
            Start {
                cluster,
                size0: true,
                ..BASE
            },
            new,
        );
    }
}

#[test]
fn shrink_cut_everywhere_then_grow_cut_everywhere() {
    // Whatever a cut shrink left behind (new size with old bits and old
    // image bytes past it, or the old size), growing again shows zeros in
    // the grown range: deleted data never comes back.
    for s in [
        BASE,
        Start {
            base_len: None,
            ..BASE
        },
        Start {
            cluster: 512,
            size: (40 << 10) + 1536,
            base_len: Some(24 << 10),
            ..BASE
        },
    ] {
        let (st, view) = start(&s);
        // Inside the owned cluster 1, past its first sector.
        let small = s.cluster + 1000;
        let big = (s.size + 8192).max(64 << 10);
        let mut grows = 0;
        resize_cuts(
            &st,
            &s,
            &view,
            &open_opts(0),
            false,
            small,
            &format!("shrink {} -> {small}", s.size),
            &mut |crashed, size, what| {
                // A few subsets suffice for the grow after each shrink cut.
                grows += 1;
                if grows % 2 == 0 {
                    return;
                }
                let v = resized_view(&view, size);
                // Cold, and after reads that cached the bitmap.
                for warm in [false, true] {
                    resize_cuts(
                        &crashed,
                        &s,
                        &v,
                        &open_opts(0),
                        warm,
                        big,
                        &format!("{what}, then grow {size} -> {big} (warm {warm})"),
                        &mut no_then(),
                    )
                    .unwrap_or_else(|e| panic!("{what}: grow: {e}"));
                }
            },
        )
        .unwrap();
        assert!(grows > 10, "shrink took too few operations");
    }
}

fn no_backing_opts() -> OpenOptions {
    OpenOptions {
        no_backing: true,
        ..Default::default()
    }
}

#[test]
fn no_backing_handle_refuses_what_needs_backing_data() {
    let s = Start {
        size: (40 << 10) + 100,
        ..BASE
    };
    let (st0, view) = start(&s);
    let size = view.len() as u64;
    // Growing would read the last cluster's head (and decide which new
    // clusters the backing file covers) from a backing file it has not
    // opened: refused, at every cut, leaving the old image.
    let e = resize_cuts(
        &st0,
        &s,
        &view,
        &no_backing_opts(),
        false,
        size + 8192,
        "no-backing grow",
        &mut no_then(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("base.raw") && e.to_string().contains("without"),
        "{e}"
    );
    // Shrinking needs no old contents: allowed, crash-safe.
    resize_cuts(
        &st0,
        &s,
        &view,
        &no_backing_opts(),
        false,
        size - 5000,
        "no-backing shrink",
        &mut no_then(),
    )
    .unwrap();
    // Writes that copy a partial clear cluster are refused; writes that
    // cover whole clusters or land in owned ones are not.
    let st = Arc::new(st0.crash(|_, _| true));
    let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &no_backing_opts()).unwrap();
    let e = img.write(&[0x44; 512], 8192 + 512).unwrap_err();
    assert!(e.to_string().contains("base.raw"), "{e}");
    let e = img.write_zeroes(8192 + 512, 512).unwrap_err();
    assert!(e.to_string().contains("base.raw"), "{e}");
    img.write(&[0x55; 4096], 12288).unwrap();
    img.write(&[0x66; 512], 4096 + 512).unwrap();
    // Unallocated ranges still read zeros on such a handle.
    let mut b = [0xffu8; 512];
    img.read(&mut b, 16384).unwrap();
    assert_eq!(b, [0u8; 512]);
    img.close().unwrap();
    let img = reopen_ro(Arc::try_unwrap(st).ok().unwrap().crash(|_, _| true)).unwrap();
    let mut got = vec![0u8; size as usize];
    img.read(&mut got, 0).unwrap();
    let mut want = view.clone();
    want[12288..16384].fill(0x55);
    want[4096 + 512..5120].fill(0x66);
    assert!(got == want, "no-backing writes changed other data");
}

/// A storage that records the writes made to the add-cow file.
struct Recording {
    inner: MemStorage,
    writes: Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
}

struct RecFile {
    inner: Arc<dyn BlockFile>,
    writes: Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
}

impl BlockFile for RecFile {
    fn preadv(&self, iov: &IoVec, off: u64) -> cowblk::Result<()> {
        self.inner.preadv(iov, off)
    }
    fn pwritev(&self, iov: &IoVec<cowblk::Const>, off: u64) -> cowblk::Result<()> {
        self.writes.lock().unwrap().push((off, iov.len()));
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

impl Storage for Recording {
    fn open(&self, path: &Path, access: Access) -> cowblk::Result<Arc<dyn BlockFile>> {
        let f = self.inner.open(path, access)?;
        Ok(if path == Path::new("ov.add-cow") {
            Arc::new(RecFile {
                inner: f,
                writes: self.writes.clone(),
            })
        } else {
            f
        })
    }
    fn create(&self, path: &Path, truncate: bool) -> cowblk::Result<Arc<dyn BlockFile>> {
        self.inner.create(path, truncate)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> cowblk::Result<()> {
        self.inner.remove(path)
    }
}

#[test]
fn resize_writes_the_size_as_one_aligned_sector() {
    for size0 in [false, true] {
        let (st, view) = start(&Start {
            cluster: 512,
            size0,
            ..BASE
        });
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = Arc::new(Recording {
            inner: st,
            writes: writes.clone(),
        });
        let img = Image::open_in(rec.clone(), Path::new("ov.add-cow"), &open_opts(0)).unwrap();
        let size = view.len() as u64;
        for new in [size + 4096, size - 3000, size + 100] {
            img.truncate(new).unwrap();
        }
        img.close().unwrap();
        // Every write to the header (the first 2560 bytes) is the sector
        // 2048..2560, whole: a disk with 512-byte sectors writes it or not.
        let header: Vec<_> = writes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&(off, _)| off < 2560)
            .collect();
        assert!(!header.is_empty());
        assert!(
            header.iter().all(|&w| w == (2048, 512)),
            "size0 {size0}: header writes {header:?}"
        );
        let img = reopen_ro(rec.inner.crash(|_, _| true)).unwrap();
        assert_eq!(img.size(), size + 100);
    }
}

#[test]
fn guest_flush_costs_two_fdatasyncs() {
    // The order (image file, bits, add-cow file) is what the crash tests
    // above prove; here, that it costs no more than the two files' flushes.
    let (st, _) = setup(256 << 10, 4096);
    let st = Arc::new(st);
    let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(0)).unwrap();
    img.write(&[1; 512], 8192 + 512).unwrap();
    let f0 = st.flush_count();
    img.flush().unwrap();
    assert_eq!(st.flush_count() - f0, 2, "allocating write, then flush");
    // In place only: no bit changed, the image file alone.
    img.write(&[2; 512], 8192).unwrap();
    let f0 = st.flush_count();
    img.flush().unwrap();
    assert_eq!(st.flush_count() - f0, 1, "in-place write, then flush");
    let crashed = st.crash(|_, _| false);
    let img = reopen_ro(crashed).unwrap();
    let mut b = [0u8; 1024];
    img.read(&mut b, 8192).unwrap();
    assert_eq!(&b[..512], &[2; 512]);
    assert_eq!(&b[512..], &[1; 512]);
}
