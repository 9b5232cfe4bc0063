//! Writes, reads and truncates racing on one add-cow handle, against a
//! model. Each writer thread owns every third 1 KiB piece of the disk
//! (so writes copy-on-write clusters that other threads write too); one
//! thread shrinks and grows the image meanwhile. A request either fails
//! the range check as a whole or completes; afterwards each piece holds
//! its owner's last write, or zeros if a shrink may have cut it, never
//! older data or backing data that a shrink deleted.

mod common;

use common::{pattern, Rng};
use cowblk::io::fault::{MemFile, MemStorage};
use cowblk::io::BlockFile;
use cowblk::{CreateOptions, Error, Image, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

const FULL: u64 = 256 << 10;
const PIECE: u64 = 1024;
const SECTOR: u64 = 512;
const WRITERS: u64 = 3;
const ROUNDS: u64 = 600;
const OPS: u64 = 100;

fn setup() -> (Arc<MemStorage>, Vec<u8>) {
    let st = Arc::new(MemStorage::new());
    let base = pattern(FULL as usize, 3);
    st.insert("base.raw", base.clone());
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img")
        .set("cluster_size", "4096");
    Image::create_in(st.clone(), Path::new("ov.add-cow"), "add-cow", &o).unwrap();
    (st, base)
}

/// The two shrink sizes of every round, known to all threads in advance
/// (sector multiples, most not cluster multiples).
fn cuts() -> Vec<[u64; 2]> {
    let mut r = Rng::new(77);
    (0..ROUNDS)
        .map(|_| [0, 1].map(|_| FULL / 4 + r.below(FULL / 2 / SECTOR) * SECTOR))
        .collect()
}

/// Runs `f` unless a thread already failed; a panic marks the run failed
/// (keeping its message) instead of leaving the others at a barrier.
fn guarded(failed: &Mutex<Option<String>>, f: impl FnOnce()) {
    if failed.lock().unwrap().is_some() {
        return;
    }
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        failed.lock().unwrap().get_or_insert(msg);
    }
}

fn out_of_range(e: &Error) -> bool {
    matches!(e, Error::OutOfRange(m) if m.contains("past the end of the image"))
}

/// One writer's model of its sectors: what each held when the round began
/// and its last successful write in this round.
struct Model {
    cur: Vec<Vec<u8>>,
    last: Vec<Option<Vec<u8>>>,
}

impl Model {
    /// Whether `got` is allowed for owned sector `i` (guest sector `s`)
    /// in a round whose smallest size is `cut`.
    fn allowed(&self, i: usize, s: u64, cut: u64, got: &[u8]) -> bool {
        let want = self.last[i].as_ref().unwrap_or(&self.cur[i]);
        got == want.as_slice() || ((s + 1) * SECTOR > cut && got.iter().all(|&b| b == 0))
    }
}

fn writer(
    img: &Image,
    t: u64,
    base: &[u8],
    cuts: &[[u64; 2]],
    rounds: &Barrier,
    failed: &Mutex<Option<String>>,
) {
    // Owned 1 KiB pieces, as sector numbers.
    let pieces: Vec<u64> = (0..FULL / PIECE).filter(|p| p % WRITERS == t).collect();
    let sectors: Vec<u64> = pieces.iter().flat_map(|p| [p * 2, p * 2 + 1]).collect();
    let mut m = Model {
        cur: sectors
            .iter()
            .map(|&s| base[(s * SECTOR) as usize..((s + 1) * SECTOR) as usize].to_vec())
            .collect(),
        last: vec![None; sectors.len()],
    };
    let mut r = Rng::new(t + 1);
    for (round, c) in cuts.iter().enumerate() {
        let cut = c[0].min(c[1]);
        rounds.wait();
        guarded(failed, || {
            for _ in 0..OPS {
                // Sector 0, sector 1 or both of a piece.
                let p = r.below(pieces.len() as u64) as usize;
                let (first, n) = match r.below(3) {
                    0 => (2 * p, 1),
                    1 => (2 * p + 1, 1),
                    _ => (2 * p, 2),
                };
                let off = sectors[first] * SECTOR;
                let len = n * SECTOR as usize;
                let kind = r.below(8);
                let res = if kind < 6 {
                    let mut data = vec![0u8; len];
                    if kind < 5 {
                        r.fill(&mut data);
                        img.write(&data, off).map(|_| data)
                    } else {
                        img.write_zeroes(off, len as u64).map(|_| data)
                    }
                } else {
                    let mut got = vec![0u8; len];
                    img.read(&mut got, off).map(|_| {
                        for (j, g) in got.chunks(SECTOR as usize).enumerate() {
                            let i = first + j;
                            assert!(
                                m.allowed(i, sectors[i], cut, g),
                                "round {round}: thread {t}: sector {} holds neither its last \
                             contents nor (cut at {cut}) zeros",
                                sectors[i]
                            );
                        }
                        Vec::new()
                    })
                };
                match res {
                    Ok(data) if !data.is_empty() => {
                        for (j, d) in data.chunks(SECTOR as usize).enumerate() {
                            m.last[first + j] = Some(d.to_vec());
                        }
                        // Read it back: the data, or zeros where a shrink and a
                        // grow came in between.
                        let mut got = vec![0u8; len];
                        match img.read(&mut got, off) {
                            Ok(()) => {
                                for (j, g) in got.chunks(SECTOR as usize).enumerate() {
                                    let i = first + j;
                                    assert!(
                                        m.allowed(i, sectors[i], cut, g),
                                        "round {round}: thread {t}: sector {} read back neither \
                                     its write nor (cut at {cut}) zeros",
                                        sectors[i]
                                    );
                                }
                            }
                            Err(e) => assert!(out_of_range(&e), "round {round}: read: {e}"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => assert!(out_of_range(&e), "round {round}: {e}"),
                }
            }
        });
        rounds.wait();
        // Quiet: the truncater has grown the image back to FULL.
        guarded(failed, || {
            assert_eq!(img.size(), FULL);
            for (i, &s) in sectors.iter().enumerate() {
                let mut got = vec![0u8; SECTOR as usize];
                img.read(&mut got, s * SECTOR).unwrap();
                assert!(
                    m.allowed(i, s, cut, &got),
                    "round {round}: thread {t}: sector {s} holds neither its last write nor \
                 (cut at {cut}) zeros"
                );
                // Resolved by looking: what it holds now is what it must keep.
                m.cur[i] = got;
                m.last[i] = None;
            }
        });
    }
}

fn truncater(
    img: &Image,
    image_file: &MemFile,
    cuts: &[[u64; 2]],
    rounds: &Barrier,
    failed: &Mutex<Option<String>>,
) {
    for (round, c) in cuts.iter().enumerate() {
        rounds.wait();
        guarded(failed, || {
            for &small in c {
                img.truncate(small).unwrap();
                // No request that began before the shrink may still be
                // running, and none after it may reach past the new end.
                for _ in 0..20 {
                    std::thread::yield_now();
                    let len = image_file.len().unwrap();
                    assert!(
                        len <= small,
                        "round {round}: image file is {len} bytes after a shrink to {small}"
                    );
                }
                img.truncate(FULL).unwrap();
            }
        });
        rounds.wait();
    }
}

#[test]
fn writes_reads_and_truncates_race_on_one_handle() {
    let (st, base) = setup();
    let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &OpenOptions::default()).unwrap();
    let rounds = Barrier::new(WRITERS as usize + 1);
    let cuts = cuts();
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..WRITERS {
            let (img, base, cuts, rounds, failed) = (&img, &base, &cuts, &rounds, &failed);
            s.spawn(move || writer(img, t, base, cuts, rounds, failed));
        }
        let image_file = st.file("ov.img").unwrap();
        truncater(&img, &image_file, &cuts, &rounds, &failed);
    });
    if let Some(m) = failed.into_inner().unwrap() {
        panic!("{m}");
    }
    // Everything reached the files in a state that reopens the same.
    let mut before = vec![0u8; FULL as usize];
    img.read(&mut before, 0).unwrap();
    img.close().unwrap();
    let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &OpenOptions::default()).unwrap();
    let mut after = vec![0u8; FULL as usize];
    img.read(&mut after, 0).unwrap();
    assert!(before == after, "contents changed across close and reopen");
    let r = img.check(cowblk::format::Repair::None).unwrap();
    assert_eq!(r.corruptions + r.leaks, 0, "{:?}", r.messages);
    let len = st.file("ov.img").unwrap().contents().len() as u64;
    assert_eq!(len, FULL, "image file length");
}
