//! `cowblk_map_nb`, the non-blocking lookup the QEMU glue makes in its
//! coroutines: it answers from the metadata cache or says -EAGAIN, agrees
//! with block status, and its "unallocated" answers stay safe to act on
//! (read the backing file) while allocating writes race with the readers.

mod common;

use common::{tmpdir, Rng};
use cowblk::ffi::*;
use std::ffi::CString;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const CS: u64 = 65536;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Handle(*mut cowblk_image);
// SAFETY: a cowblk_image may be used from many threads at once (C ABI).
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn open(path: &Path, format: &str, flags: u32) -> Handle {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let f = CString::new(format).unwrap();
    let mut img = std::ptr::null_mut();
    let r = unsafe { cowblk_open(p.as_ptr(), f.as_ptr(), flags, 0, &mut img) };
    assert_eq!(r, 0, "open {path:?}");
    Handle(img)
}

/// (ret, kind, pnum, host)
fn map_nb(h: &Handle, off: u64, len: u64) -> (i32, u32, u64, u64) {
    let (mut pnum, mut host, mut kind) = (u64::MAX, u64::MAX, u32::MAX);
    let r = unsafe { cowblk_map_nb(h.0, off, len, &mut pnum, &mut host, &mut kind) };
    (r, kind, pnum, host)
}

fn status(h: &Handle, off: u64, len: u64) -> (i32, u64, u64) {
    let (mut pnum, mut map) = (0, 0);
    let r = unsafe { cowblk_block_status(h.0, off, len, &mut pnum, &mut map) };
    assert!(r >= 0, "block status at {off}");
    (r, pnum, map)
}

fn preadv(h: &Handle, buf: &mut [u8], off: u64) {
    let v = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    assert_eq!(
        unsafe { cowblk_preadv(h.0, off, &v, 1) },
        0,
        "read at {off}"
    );
}

/// `cowblk_preadv_nb` into `buf`: its return value.
fn preadv_nb(h: &Handle, buf: &mut [u8], off: u64) -> i32 {
    let v = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    unsafe { cowblk_preadv_nb(h.0, off, &v, 1) }
}

/// Whether the filesystem under `path` serves RWF_NOWAIT reads from the
/// page cache (some, like older tmpfs, refuse the flag: the library then
/// answers -EAGAIN and the host reads on a worker).
fn nowait_reads_work(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let v = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    };
    use std::os::unix::io::AsRawFd;
    unsafe { libc::preadv2(f.as_raw_fd(), &v, 1, 0, libc::RWF_NOWAIT) == 512 }
}

fn close(h: Handle) {
    let mut p = h.0;
    assert_eq!(unsafe { cowblk_close(&mut p) }, 0);
}

#[test]
fn answers_from_the_cache_or_would_block_and_agrees_with_block_status() {
    let d = tmpdir("mapnb-qcow2");
    let base = d.join("base.raw");
    let top = d.join("top.qcow2");
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    run("qemu-img", &["create", "-q", "-f", "raw", b, "4M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=64k",
            "-b",
            b,
            "-F",
            "raw",
            t,
        ],
    );
    for cmd in ["write 64k 64k", "write -z 256k 128k", "write 1M 4k"] {
        run("qemu-io", &["-f", "qcow2", "-c", cmd, t]);
    }
    run("qemu-img", &["check", "-q", t]);
    let h = open(
        &top,
        "qcow2",
        COWBLK_OPEN_RDONLY | COWBLK_OPEN_CALLER_BACKING,
    );
    // Nothing loaded yet: every lookup would block, without reading.
    let (r, ..) = map_nb(&h, 0, 4 << 20);
    assert_eq!(r, -libc::EAGAIN);
    let (r, ..) = map_nb(&h, 0, 0);
    assert_eq!(r, -libc::EINVAL);
    let (r, ..) = map_nb(&h, 4 << 20, 1);
    assert_eq!(r, -libc::EIO);
    // A block status loads the L1 chunk and the L2 table; then every run
    // is answered from memory, exactly as block status answers it.
    status(&h, 0, 1);
    let mut off = 0;
    let mut kinds = [0; 3];
    while off < 4 << 20 {
        let (r, kind, n, host) = map_nb(&h, off, (4 << 20) - off);
        assert_eq!(r, 0, "cached lookup at {off}");
        let (st, sn, smap) = status(&h, off, (4 << 20) - off);
        assert_eq!(n, sn, "run length at {off}");
        let want = if st as u32 & COWBLK_BLOCK_ALLOCATED == 0 {
            COWBLK_MAP_UNALLOCATED
        } else if st as u32 & COWBLK_BLOCK_ZERO != 0 {
            COWBLK_MAP_ZERO
        } else {
            assert_eq!(host, smap, "host offset at {off}");
            COWBLK_MAP_DATA
        };
        assert_eq!(kind, want, "kind at {off}");
        kinds[kind as usize] += 1;
        off += n;
    }
    assert!(kinds.iter().all(|&k| k > 0), "every kind seen: {kinds:?}");
    close(h);
}

/// Bytes of the base file: a pattern per 512-byte sector.
fn base_byte(off: u64) -> u8 {
    ((off / 512) as u8).wrapping_mul(37) | 1
}

#[test]
fn racing_allocating_writes_never_leave_a_stale_unallocated_answer_in_use() {
    let d = tmpdir("mapnb-race");
    let size: u64 = 64 * CS;
    let base = d.join("base.raw");
    let bytes: Vec<u8> = (0..size).map(base_byte).collect();
    std::fs::write(&base, &bytes).unwrap();
    let ov = d.join("ov.add-cow");
    let o = format!(
        "backing_file=base.raw,backing_fmt=raw,image_file=ov.img,cluster_size=65536,size={size}"
    );
    let (fc, pc, oc) = (
        CString::new("add-cow").unwrap(),
        CString::new(ov.to_str().unwrap()).unwrap(),
        CString::new(o).unwrap(),
    );
    assert_eq!(
        unsafe { cowblk_create(fc.as_ptr(), pc.as_ptr(), oc.as_ptr()) },
        0
    );
    // As the QEMU glue opens it: the caller reads the backing file.
    let h = Arc::new(open(&ov, "add-cow", COWBLK_OPEN_CALLER_BACKING));
    let basef = Arc::new(std::fs::File::open(&base).unwrap());
    // Each cluster: writer A writes its first quarter, writer B its second
    // (both first writes, racing to allocate it); the other half is never
    // written, so it must always read the base bytes (the copy-on-write
    // copies them). `done[q]` is set once the write of quarter q returned.
    let quarters = (size / CS * 2) as usize;
    let done: Arc<Vec<AtomicBool>> =
        Arc::new((0..quarters).map(|_| AtomicBool::new(false)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let fast = Arc::new(AtomicU64::new(0));
    let nowait = Arc::new(AtomicU64::new(0));
    let new_byte = |q: usize| 0x80u8 | (q as u8 & 0x7f) | 1;

    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (h, basef, done) = (h.clone(), basef.clone(), done.clone());
        writers.push(std::thread::spawn(move || {
            let mut order: Vec<u64> = (0..size / CS).collect();
            let mut rng = Rng::new(w + 1);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for c in order {
                let off = c * CS + w * CS / 4;
                let q = (c * 2 + w) as usize;
                let data = vec![new_byte(q); (CS / 4) as usize];
                let (mut co, mut cl) = (0, 0);
                assert_eq!(
                    unsafe { cowblk_cow_range(h.0, off, CS / 4, &mut co, &mut cl) },
                    0
                );
                let mut old = vec![0u8; cl as usize];
                basef.read_exact_at(&mut old, co).unwrap();
                let v = libc::iovec {
                    iov_base: data.as_ptr() as *mut _,
                    iov_len: data.len(),
                };
                let ov = libc::iovec {
                    iov_base: old.as_mut_ptr().cast(),
                    iov_len: old.len(),
                };
                let r = unsafe { cowblk_pwritev_cow(h.0, off, &v, 1, co, &ov, (cl > 0) as i32) };
                assert_eq!(r, 0, "write at {off}");
                done[q].store(true, Ordering::Release);
            }
        }));
    }
    let mut readers = Vec::new();
    for t in 0..2u64 {
        let (h, basef, done, stop, fast, nowait) = (
            h.clone(),
            basef.clone(),
            done.clone(),
            stop.clone(),
            fast.clone(),
            nowait.clone(),
        );
        readers.push(std::thread::spawn(move || {
            let mut rng = Rng::new(100 + t);
            let mut buf = vec![0u8; CS as usize];
            let mut reads = 0u64;
            while !stop.load(Ordering::Acquire) || reads < 1000 {
                reads += 1;
                let c = rng.below(size / CS);
                let len = 512 * (1 + rng.below(CS / 512 - 1));
                let off = c * CS + 512 * rng.below((CS - len) / 512 + 1);
                // Quarters whose write had returned before this read began.
                let before: Vec<bool> = (0..2)
                    .map(|w| done[(c * 2 + w) as usize].load(Ordering::Acquire))
                    .collect();
                let out = &mut buf[..len as usize];
                // The glue's read: cached lookups, the backing file for
                // unallocated runs, the library for the rest.
                let mut at = 0;
                while at < len {
                    let (r, kind, n, _) = map_nb(&h, off + at, len - at);
                    let part = &mut out[at as usize..];
                    let n = if r == 0 {
                        fast.fetch_add(1, Ordering::Relaxed);
                        assert!(n > 0 && n <= len - at);
                        match kind {
                            COWBLK_MAP_UNALLOCATED => basef
                                .read_exact_at(&mut part[..n as usize], off + at)
                                .unwrap(),
                            // the glue's order: without waiting first
                            COWBLK_MAP_DATA => {
                                if preadv_nb(&h, &mut part[..n as usize], off + at) == 0 {
                                    nowait.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    preadv(&h, &mut part[..n as usize], off + at);
                                }
                            }
                            k => panic!("kind {k} in an add-cow image"),
                        }
                        n
                    } else {
                        assert_eq!(r, -libc::EAGAIN);
                        let (st, n, _) = status(&h, off + at, len - at);
                        if st as u32 & COWBLK_BLOCK_ALLOCATED != 0 {
                            preadv(&h, &mut part[..n as usize], off + at);
                        } else {
                            basef
                                .read_exact_at(&mut part[..n as usize], off + at)
                                .unwrap();
                        }
                        n
                    };
                    at += n;
                }
                for (i, &b) in out.iter().enumerate() {
                    let pos = off + i as u64;
                    let w = (pos % CS) / (CS / 4);
                    let old = base_byte(pos);
                    if w >= 2 {
                        assert_eq!(b, old, "never-written byte {pos} lost its backing contents");
                    } else {
                        let new = new_byte((c * 2 + w) as usize);
                        if before[w as usize] {
                            assert_eq!(
                                b, new,
                                "byte {pos} read old contents after its write returned"
                            );
                        } else {
                            assert!(
                                b == old || b == new,
                                "byte {pos} reads {b:#x}, neither old nor new"
                            );
                        }
                    }
                }
            }
        }));
    }
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        fast.load(Ordering::Relaxed) > 0,
        "the cached path was taken"
    );
    assert_eq!(
        nowait.load(Ordering::Relaxed) > 0,
        nowait_reads_work(&d.join("ov.img")),
        "data was read without waiting where the filesystem allows it"
    );
    // Everything written is there, and the rest is the base's.
    let mut all = vec![0u8; size as usize];
    preadv(&h, &mut all, 0);
    for (i, &b) in all.iter().enumerate() {
        let pos = i as u64;
        let w = (pos % CS) / (CS / 4);
        let want = if w >= 2 {
            base_byte(pos)
        } else {
            new_byte((pos / CS * 2 + w) as usize)
        };
        assert_eq!(b, want, "byte {pos} after the race");
    }
    let h = Arc::try_unwrap(h).ok().unwrap();
    close(h);
}

#[test]
fn reads_without_waiting_only_what_is_cached_and_this_layers() {
    let d = tmpdir("mapnb-preadv-nb");
    let base = d.join("base.raw");
    let top = d.join("top.qcow2");
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    run("qemu-img", &["create", "-q", "-f", "raw", b, "4M"]);
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x11 0 4M", b]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=64k",
            "-b",
            b,
            "-F",
            "raw",
            t,
        ],
    );
    // data at 64k-128k, zeros at 256k-384k, compressed at 1M-1M+64k
    for cmd in [
        "write -P 0x22 64k 64k",
        "write -z 256k 128k",
        "write -c -P 0x33 1M 64k",
    ] {
        run("qemu-io", &["-f", "qcow2", "-c", cmd, t]);
    }
    run("qemu-img", &["check", "-q", t]);
    let h = open(
        &top,
        "qcow2",
        COWBLK_OPEN_RDONLY | COWBLK_OPEN_CALLER_BACKING,
    );
    let mut buf = vec![0u8; 8192];
    // Cold metadata: would block, and says so.
    assert_eq!(preadv_nb(&h, &mut buf, 70000), -libc::EAGAIN);
    assert!(cowblk_last_error_str().contains("would block"));
    // A blocking read loads the metadata (and the page cache).
    let mut want = vec![0u8; 8192];
    preadv(&h, &mut want, 70000);
    assert!(want.iter().all(|&x| x == 0x22));
    buf.fill(0);
    if nowait_reads_work(&top) {
        assert_eq!(preadv_nb(&h, &mut buf, 70000), 0);
        assert_eq!(buf, want);
    } else {
        assert_eq!(preadv_nb(&h, &mut buf, 70000), -libc::EAGAIN);
    }
    // Zeros: filled without I/O (the buffer held other bytes).
    buf.fill(0xee);
    assert_eq!(preadv_nb(&h, &mut buf, 270000), 0);
    assert!(buf.iter().all(|&x| x == 0));
    // Unallocated: the backing file's bytes, not this layer's: would block.
    assert_eq!(preadv_nb(&h, &mut buf, 2 << 20), -libc::EAGAIN);
    // A run straddling data and unallocated: would block as a whole.
    assert_eq!(preadv_nb(&h, &mut buf, 128 * 1024 - 4096), -libc::EAGAIN);
    // Compressed: only the library reads it (map_nb says so, no EAGAIN).
    let (r, kind, n, _) = map_nb(&h, 1 << 20, 4096);
    assert_eq!((r, kind, n), (0, COWBLK_MAP_COMPRESSED, 4096));
    assert_eq!(preadv_nb(&h, &mut buf, 1 << 20), -libc::EAGAIN);
    preadv(&h, &mut buf, 1 << 20);
    assert!(buf.iter().all(|&x| x == 0x33));
    // Outside the image, a bad vector: errors, not "would block".
    assert_eq!(preadv_nb(&h, &mut buf, 4 << 20), -libc::EIO);
    assert_eq!(
        unsafe { cowblk_preadv_nb(h.0, 0, std::ptr::null(), 1) },
        -libc::EINVAL
    );
    close(h);
}

fn cowblk_last_error_str() -> String {
    let p = cowblk_last_error();
    if p.is_null() {
        return String::new();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}
