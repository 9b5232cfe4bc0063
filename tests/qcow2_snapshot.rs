//! qcow2 internal snapshots written by us, against QEMU 10: create /
//! apply / delete sequences interleaved with random writes, checked
//! against a model after every step (`qemu-img check` clean, `qemu-img
//! snapshot -l` listing ours as its own, QEMU reading every snapshot back
//! byte for byte with `convert -l`); snapshots QEMU made deleted and
//! applied by us and the reverse; power cuts at every operation of create,
//! delete and apply. Needs qemu-img on PATH.

mod common;

use common::Rng;
use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions, SnapshotRef};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir(&format!("q2s-{name}"))
}

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// `run`, again while the image is locked by a child process of another
/// test that inherited our descriptor between its fork and exec (QEMU's
/// locks belong to the open file description).
fn run_unlocked(prog: &str, args: &[&str]) -> std::process::Output {
    for _ in 0..50 {
        let o = run(prog, args);
        if !String::from_utf8_lossy(&o.stderr).contains("lock\nIs another process") {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run(prog, args)
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run_unlocked(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const IMG: &str = env!("CARGO_BIN_EXE_cowblk-img");

fn create(path: &Path, opts: &str, size: u64) {
    let s = size.to_string();
    let p = path.to_str().unwrap();
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, p, s.as_str()],
    );
}

/// `qemu-img check`: exit 0 (no errors, no leaks) or, with `leaks_ok`,
/// 3 (leaks only). Returns the output.
fn qemu_check(path: &Path, leaks_ok: bool, what: &str) -> String {
    let o = run_unlocked(
        "qemu-img",
        &["check", "-f", "qcow2", path.to_str().unwrap()],
    );
    let code = o.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        code == 0 || (leaks_ok && code == 3),
        "{what}: qemu-img check exited {code}: {text}"
    );
    text
}

/// What QEMU reads: the active state, or a snapshot by id.
fn qemu_read(path: &Path, snap_id: Option<&str>) -> Vec<u8> {
    let out = path.with_extension("read.raw");
    let mut args = vec!["convert", "-f", "qcow2", "-O", "raw"];
    let l;
    if let Some(id) = snap_id {
        l = format!("snapshot.id={id}");
        args.extend(["-l", l.as_str()]);
    }
    args.extend([path.to_str().unwrap(), out.to_str().unwrap()]);
    ok("qemu-img", &args);
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: {:#x} instead of {:#x}",
            got[i], want[i]
        );
    }
}

fn rw() -> OpenOptions {
    OpenOptions {
        format: Some("qcow2".into()),
        ..Default::default()
    }
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read(&mut b, 0).unwrap();
    b
}

/// A few random writes (every size and alignment, zero writes, discards).
fn scribble(img: &Image, model: &mut [u8], rng: &mut Rng, cs: u64) {
    let size = model.len() as u64;
    for _ in 0..6 {
        let off = rng.below(size / 512) * 512 + rng.below(2) * rng.below(512);
        let len = (1 + rng.below(3 * cs)).min(size - off);
        match rng.below(8) {
            0 => {
                img.write_zeroes(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            1 => {
                // A discard of whole clusters, v3 reads zeros there
                // (no backing file); v2 too (unallocated reads zeros).
                let a = off / cs * cs;
                let n = (len / cs).max(1) * cs;
                let n = n.min(size - a) / cs * cs;
                if n > 0 {
                    img.discard(a, n).unwrap();
                    model[a as usize..(a + n) as usize].fill(0);
                }
            }
            _ => {
                let mut b = vec![0u8; len as usize];
                rng.fill(&mut b);
                img.write(&b, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&b);
            }
        }
    }
}

/// `qemu-img snapshot -l` and ours print the same table.
fn listings_agree(path: &Path) {
    let p = path.to_str().unwrap();
    let q = ok("qemu-img", &["snapshot", "-l", p]);
    let c = ok(IMG, &["snapshot", "-l", p]);
    assert_eq!(c, q, "snapshot -l differs");
}

/// Random create / apply / delete with writes in between; after every
/// step the image is closed, checked and read by QEMU (active state and
/// every snapshot) and listed by both tools.
fn sequence(name: &str, opts: &str, size: u64, steps: usize) {
    let d = tmpdir(name);
    let p = d.join("s.qcow2");
    create(&p, opts, size);
    let mut rng = Rng::new(name.len() as u64 * 7 + steps as u64);
    let mut model = vec![0u8; size as usize];
    // (id, name, contents) as QEMU lists them.
    let mut snaps: Vec<(String, String, Vec<u8>)> = Vec::new();
    for step in 0..steps {
        let img = Image::open(&p, &rw()).unwrap();
        let cs = img.cluster_size().min(64 << 10);
        scribble(&img, &mut model, &mut rng, cs);
        let op = match rng.below(6) {
            _ if snaps.is_empty() => 0,
            0..=2 => 0,
            3 | 4 => 1,
            _ => 2,
        };
        let what = match op {
            0 => {
                let n = format!("s{step}");
                let id = img.snapshot_create(&n).unwrap();
                // QEMU's rule: one more than the largest id in the table.
                let max = snaps.iter().map(|s| s.0.parse::<u64>().unwrap()).max();
                assert_eq!(id, (max.unwrap_or(0) + 1).to_string());
                snaps.push((id, n.clone(), model.clone()));
                format!("create {n}")
            }
            1 => {
                let i = rng.below(snaps.len() as u64) as usize;
                img.snapshot_apply(&SnapshotRef::Id(snaps[i].0.clone()))
                    .unwrap();
                model = snaps[i].2.clone();
                same(&read_all(&img), &model, "our read after apply");
                format!("apply {}", snaps[i].1)
            }
            _ => {
                let i = rng.below(snaps.len() as u64) as usize;
                let (_, n, _) = snaps.remove(i);
                img.snapshot_delete(&SnapshotRef::Name(n.clone())).unwrap();
                format!("delete {n}")
            }
        };
        // More writes after the operation (they must not reach snapshots).
        scribble(&img, &mut model, &mut rng, cs);
        img.close().unwrap();
        let what = format!("{name} step {step} ({what})");
        eprintln!("{what}");
        qemu_check(&p, false, &what);
        same(&qemu_read(&p, None), &model, &format!("{what}: active"));
        for (id, n, data) in &snaps {
            same(&qemu_read(&p, Some(id)), data, &format!("{what}: {n}"));
        }
        listings_agree(&p);
        // Our own reader agrees too.
        for (id, _, data) in &snaps {
            let o = OpenOptions {
                read_only: true,
                snapshot: Some(SnapshotRef::Id(id.clone())),
                ..rw()
            };
            same(&read_all(&Image::open(&p, &o).unwrap()), data, &what);
        }
    }
    assert!(!snaps.is_empty() || steps < 3);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sequences_v3_64k_refcount16() {
    sequence("v3-64k", "cluster_size=65536,refcount_bits=16", 4 << 20, 14);
}

#[test]
fn sequences_v3_512() {
    sequence("v3-512", "cluster_size=512", 256 << 10, 14);
}

#[test]
fn sequences_v2_512() {
    sequence("v2-512", "cluster_size=512,compat=0.10", 256 << 10, 14);
}

#[test]
fn sequences_v2_64k() {
    sequence("v2-64k", "cluster_size=65536,compat=0.10", 4 << 20, 10);
}

#[test]
fn sequences_extended_l2_and_refcount64() {
    sequence(
        "ext-64",
        "cluster_size=16384,extended_l2=on,refcount_bits=64",
        1 << 20,
        10,
    );
}

/// Snapshots QEMU made are applied and deleted by us; ours by QEMU.
#[test]
fn interop_with_qemu_snapshots() {
    let d = tmpdir("interop");
    let p = d.join("i.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=4096", 1 << 20);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 64k", ps]);
    ok("qemu-img", &["snapshot", "-c", "qemu1", ps]);
    let q1 = qemu_read(&p, None);
    // Our snapshot on top of QEMU's.
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x22 32k 64k", ps],
    );
    ok(IMG, &["snapshot", "-c", "ours1", ps]);
    let o1 = qemu_read(&p, None);
    qemu_check(&p, false, "after our create");
    listings_agree(&p);
    // QEMU applies ours and deletes it; writes.
    ok("qemu-img", &["snapshot", "-a", "ours1", ps]);
    same(&qemu_read(&p, None), &o1, "QEMU applied ours");
    ok("qemu-img", &["snapshot", "-d", "ours1", ps]);
    qemu_check(&p, false, "QEMU deleted ours");
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x33 0 8k", ps]);
    // We apply QEMU's and delete it.
    ok(IMG, &["snapshot", "-a", "qemu1", ps]);
    same(&qemu_read(&p, None), &q1, "we applied QEMU's");
    qemu_check(&p, false, "after our apply");
    ok(IMG, &["snapshot", "-c", "ours2", ps]);
    ok("qemu-img", &["snapshot", "-c", "qemu2", ps]);
    ok(IMG, &["snapshot", "-d", "qemu1", ps]);
    qemu_check(&p, false, "we deleted QEMU's");
    let list = ok("qemu-img", &["snapshot", "-l", ps]);
    let names: Vec<&str> = list
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, ["ours2", "qemu2"], "{list}");
    // Ids are one more than the largest in the table at the time: ours1
    // (2) was gone when ours2 was made, so 2 again, then 3.
    let ids: Vec<&str> = list
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["2", "3"], "{list}");
    listings_agree(&p);
    ok("qemu-img", &["snapshot", "-d", "ours2", ps]);
    ok(IMG, &["snapshot", "-d", "qemu2", ps]);
    let c = qemu_check(&p, false, "all deleted");
    assert!(c.contains("No errors"), "{c}");
    same(&qemu_read(&p, None), &q1, "active after all deletions");
    let _ = std::fs::remove_dir_all(&d);
}

/// Unknown extra data of an entry (past QEMU's 24 bytes) survives our
/// rewrites of the table byte for byte, and v2/v3 entries we write carry
/// QEMU's 24 bytes.
#[test]
fn unknown_extra_data_is_kept() {
    let d = tmpdir("extra");
    let p = d.join("x.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=4096,compat=0.10", 1 << 20);
    ok(IMG, &["snapshot", "-c", "a", ps]);
    // Give entry 1 eight more bytes of extra data by hand: rewrite the
    // table in a fresh cluster at the end of the file.
    let mut b = std::fs::read(&p).unwrap();
    let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let off = u64::from_be_bytes(b[64..72].try_into().unwrap()) as usize;
    assert_eq!(
        be32(&b, off + 36),
        24,
        "our entries carry 24 bytes of extra data"
    );
    let mut e = b[off..off + 40 + 24].to_vec();
    e[36..40].copy_from_slice(&32u32.to_be_bytes());
    e.extend_from_slice(b"UNKNOWN!");
    e.extend_from_slice(b"1a");
    e.resize(e.len().div_ceil(8) * 8, 0);
    let new = b.len().div_ceil(4096) * 4096;
    b.resize(new + 4096, 0);
    b[new..new + e.len()].copy_from_slice(&e);
    b[64..72].copy_from_slice(&(new as u64).to_be_bytes());
    std::fs::write(&p, &b).unwrap();
    // Fix the refcounts of the hand-made table (and free the old one).
    ok("qemu-img", &["check", "-q", "-r", "all", ps]);
    qemu_check(&p, false, "hand-made extra data");
    ok(IMG, &["snapshot", "-c", "b", ps]);
    ok(IMG, &["snapshot", "-c", "c", ps]);
    ok(IMG, &["snapshot", "-d", "b", ps]);
    qemu_check(&p, false, "after our rewrites");
    let b = std::fs::read(&p).unwrap();
    let off = u64::from_be_bytes(b[64..72].try_into().unwrap()) as usize;
    assert_eq!(be32(&b, off + 36), 32);
    assert_eq!(&b[off + 64..off + 72], b"UNKNOWN!");
    listings_agree(&p);
    let _ = std::fs::remove_dir_all(&d);
}

/// CLI behaviour as qemu-img: exit codes and messages.
#[test]
fn cli_messages_and_refusals() {
    let d = tmpdir("cli");
    let p = d.join("c.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=65536", 1 << 20);
    let both = |args: &[&str]| {
        let q = run("qemu-img", args);
        let c = run(IMG, args);
        assert_eq!(c.status.code(), q.status.code(), "{args:?}");
        let msg = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr)
                .replace("qemu-img: ", "")
                .replace("cowblk-img: ", "")
                .replace("qemu-img ", "")
                .replace("cowblk-img ", "")
        };
        assert_eq!(msg(&c), msg(&q), "{args:?}");
    };
    both(&["snapshot", "-a", "nope", ps]);
    both(&["snapshot", "-d", "nope", ps]);
    both(&["snapshot", "-c", "a", "-d", "b", ps]);
    both(&["snapshot", "-U", "-c", "a", ps]);
    ok("qemu-img", &["snapshot", "-c", "x", ps]);
    // -d matches names only: "1" is an id here, not a name.
    both(&["snapshot", "-d", "1", ps]);
    // 1-bit refcounts: a snapshot sharing clusters is refused clearly.
    let one = d.join("one.qcow2");
    let os = one.to_str().unwrap();
    create(&one, "refcount_bits=1", 1 << 20);
    ok("qemu-io", &["-f", "qcow2", "-c", "write 0 64k", os]);
    let o = run(IMG, &["snapshot", "-c", "a", os]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("Could not create snapshot 'a'") && e.contains("1-bit refcounts"),
        "{e}"
    );
    qemu_check(&one, false, "refused snapshot left no trace");
    // The metadata snapshot is never applied.
    ok(IMG, &["snapshot", "-c", "cowblk-metadata", ps]);
    let o = run(IMG, &["snapshot", "-a", "cowblk-metadata", ps]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("key/value metadata"));
    // In use by a writer: refused as qemu-img refuses.
    let mut child = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "sleep 60000", ps])
        .spawn()
        .unwrap();
    // Wait until QEMU holds its lock (qemu-img itself is then refused).
    let mut locked = false;
    for _ in 0..200 {
        if !run("qemu-img", &["snapshot", "-c", "probe", ps])
            .status
            .success()
        {
            locked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let c = run(IMG, &["snapshot", "-c", "busy", ps]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(locked, "qemu-io never took its lock");
    assert_eq!(c.status.code(), Some(1));
    let e = String::from_utf8_lossy(&c.stderr);
    assert!(e.contains("Failed to get \"write\" lock"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The C functions: count, get, create, apply, delete.
#[test]
fn c_functions() {
    use cowblk::ffi::*;
    use std::ffi::CString;
    let d = tmpdir("ffi");
    let p = d.join("f.qcow2");
    create(&p, "cluster_size=4096", 1 << 20);
    let path = CString::new(p.to_str().unwrap()).unwrap();
    unsafe {
        let mut img = std::ptr::null_mut();
        assert_eq!(
            cowblk_open(path.as_ptr(), std::ptr::null(), 0, 0, &mut img),
            0
        );
        let buf = [7u8; 4096];
        let iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut _,
            iov_len: buf.len(),
        };
        assert_eq!(cowblk_pwritev(img, 0, &iov, 1), 0);
        let name = CString::new("first").unwrap();
        assert_eq!(cowblk_snapshot_create(img, name.as_ptr()), 0);
        assert_eq!(cowblk_snapshot_count(img), 1);
        let mut s: cowblk_snapshot = std::mem::zeroed();
        s.struct_size = std::mem::size_of::<cowblk_snapshot>();
        assert_eq!(cowblk_snapshot_get(img, 0, &mut s), 0);
        let id = std::ffi::CStr::from_ptr(s.id.as_ptr()).to_str().unwrap();
        let nm = std::ffi::CStr::from_ptr(s.name.as_ptr()).to_str().unwrap();
        assert_eq!((id, nm, s.disk_size, s.icount), ("1", "first", 1 << 20, 0));
        assert_eq!(cowblk_snapshot_get(img, 1, &mut s), -libc::ENOENT);
        let zero = [0u8; 4096];
        let iov0 = libc::iovec {
            iov_base: zero.as_ptr() as *mut _,
            iov_len: zero.len(),
        };
        assert_eq!(cowblk_pwritev(img, 0, &iov0, 1), 0);
        let one = CString::new("1").unwrap();
        assert_eq!(cowblk_snapshot_apply(img, one.as_ptr()), 0);
        let mut back = [0u8; 4096];
        let iovr = libc::iovec {
            iov_base: back.as_mut_ptr() as *mut _,
            iov_len: back.len(),
        };
        assert_eq!(cowblk_preadv(img, 0, &iovr, 1), 0);
        assert_eq!(back, buf);
        let nope = CString::new("nope").unwrap();
        assert_eq!(cowblk_snapshot_apply(img, nope.as_ptr()), -libc::ENOENT);
        assert_eq!(
            cowblk_snapshot_delete(img, std::ptr::null(), std::ptr::null()),
            -libc::EINVAL
        );
        assert_eq!(
            cowblk_snapshot_delete(img, one.as_ptr(), std::ptr::null()),
            0
        );
        assert_eq!(cowblk_snapshot_count(img), 0);
        assert_eq!(cowblk_close(&mut img), 0);
    }
    qemu_check(&p, false, "after C calls");
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- crashes

/// Which operation a crash test cuts.
#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Delete,
    Apply,
}

/// Cuts the power at every operation of one snapshot operation on an
/// image holding data and a snapshot "base", keeping none, all or a
/// random half of the unflushed writes: every state opens, the active
/// state and "base" read old or new in every sector, a new snapshot reads
/// what the active state held, and `qemu-img check` finds no errors at all
/// (OFLAG_COPIED included; leaks allowed).
fn crash_op(name: &str, opts: &str, op: Op) {
    let d = tmpdir(name);
    let p = d.join("base.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, opts, 256 << 10);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x44 0 40k",
            "-c",
            "write -P 0x45 100k 20k",
            ps,
        ],
    );
    ok("qemu-img", &["snapshot", "-c", "base", ps]);
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x46 8k 16k", ps],
    );
    let bytes = std::fs::read(&p).unwrap();
    let path = Path::new("img.qcow2");
    let open = |st: &Arc<MemStorage>| Image::open_in(st.clone(), path, &rw());
    let ro = |st: &Arc<MemStorage>, snap: Option<&str>| {
        let o = OpenOptions {
            read_only: true,
            snapshot: snap.map(SnapshotRef::from),
            ..rw()
        };
        read_all(&Image::open_in(st.clone(), path, &o).unwrap())
    };
    let run_op = |img: &Image| match op {
        Op::Create => img.snapshot_create("new").map(|_| ()),
        Op::Delete => img.snapshot_delete(&SnapshotRef::Name("base".into())),
        Op::Apply => img.snapshot_apply(&"base".into()),
    };
    let st = Arc::new(MemStorage::new());
    st.insert(path, bytes.clone());
    let old = ro(&st, None);
    let base = ro(&st, Some("base"));
    let (new, total) = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        st.reset_count();
        let img = open(&st).unwrap();
        run_op(&img).unwrap();
        img.close().unwrap();
        (ro(&st, None), st.op_count())
    };
    assert!(total > 5, "{total} operations");
    let out = d.join("crash.qcow2");
    let mut after = 0u64;
    let mut states = 0u64;
    for k in 0..total {
        for policy in 0..3u64 {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            st.reset_count();
            st.fail_from(Some(k));
            if let Ok(img) = open(&st) {
                let _ = run_op(&img);
                std::mem::forget(img); // a power cut runs no destructor
            }
            let mut rng = Rng::new(k * 3 + policy);
            let cut = st.crash(|_, _| match policy {
                0 => false,
                1 => true,
                _ => rng.below(2) == 0,
            });
            let state = cut.file(path).unwrap().contents();
            let cut = Arc::new(cut);
            let what = format!("{name}: op {k} policy {policy}");
            let got = ro(&cut, None);
            for (s, ((g, o), n)) in got
                .chunks(512)
                .zip(old.chunks(512))
                .zip(new.chunks(512))
                .enumerate()
            {
                assert!(
                    g == o || g == n,
                    "{what}: sector {s} is neither old nor new"
                );
            }
            let img = Image::open_in(cut.clone(), path, &rw())
                .unwrap_or_else(|e| panic!("{what}: read-write open: {e}"));
            let snaps = img.snapshots();
            drop(img);
            for s in &snaps {
                let want = if s.name == "base" { &base } else { &old };
                same(
                    &ro(&cut, Some(&s.name)),
                    want,
                    &format!("{what}: {}", s.name),
                );
            }
            // Which side of the switch the state is on.
            let done = match op {
                Op::Create => snaps.iter().any(|s| s.name == "new"),
                Op::Delete => !snaps.iter().any(|s| s.name == "base"),
                Op::Apply => got == new,
            };
            if done {
                after += 1;
            }
            std::fs::write(&out, &state).unwrap();
            qemu_check(&out, true, &what);
            states += 1;
        }
    }
    eprintln!("{name}: {total} operations, {states} crash states, {after} after the switch");
    assert!(
        after > 0 && after < states,
        "{name}: both sides of the switch"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn crash_at_every_operation_of_create() {
    crash_op("crash-create", "cluster_size=4096", Op::Create);
}

#[test]
fn crash_at_every_operation_of_delete() {
    crash_op("crash-delete", "cluster_size=4096", Op::Delete);
}

#[test]
fn crash_at_every_operation_of_apply() {
    crash_op("crash-apply", "cluster_size=4096", Op::Apply);
}

#[test]
fn crash_at_every_operation_v2_512() {
    crash_op(
        "crash-v2-create",
        "cluster_size=512,compat=0.10",
        Op::Create,
    );
    crash_op(
        "crash-v2-delete",
        "cluster_size=512,compat=0.10",
        Op::Delete,
    );
}

/// Applying a snapshot restores its disk size (QEMU 10 resizes v3 images
/// with snapshots), both ways.
#[test]
fn apply_restores_the_disk_size() {
    let d = tmpdir("size");
    let p = d.join("z.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=65536", 1 << 20);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 1M", ps]);
    ok(IMG, &["snapshot", "-c", "small", ps]);
    let small = qemu_read(&p, None);
    ok("qemu-img", &["resize", "-f", "qcow2", ps, "3M"]);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 2 2M 1M", ps]);
    ok(IMG, &["snapshot", "-c", "big", ps]);
    let big = qemu_read(&p, None);
    assert_eq!(big.len(), 3 << 20);
    ok(IMG, &["snapshot", "-a", "small", ps]);
    qemu_check(&p, false, "applied the smaller snapshot");
    same(&qemu_read(&p, None), &small, "small");
    ok(IMG, &["snapshot", "-a", "big", ps]);
    qemu_check(&p, false, "applied the bigger snapshot");
    same(&qemu_read(&p, None), &big, "big");
    listings_agree(&p);
    let _ = std::fs::remove_dir_all(&d);
}

/// Hostile images: a snapshot whose L1 table lies outside the file, and
/// random byte flips in the metadata, through create / apply / delete:
/// clear errors, never a panic.
#[test]
fn hostile_snapshot_metadata() {
    let d = tmpdir("hostile");
    let p = d.join("h.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=4096", 256 << 10);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x44 0 40k", ps]);
    ok("qemu-img", &["snapshot", "-c", "base", ps]);
    ok(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x46 8k 16k", ps],
    );
    let bytes = std::fs::read(&p).unwrap();
    // The snapshot's L1 offset far past the end of the file.
    let snap = u64::from_be_bytes(bytes[64..72].try_into().unwrap()) as usize;
    let mut bad = bytes.clone();
    bad[snap..snap + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&p, &bad).unwrap();
    for args in [
        ["snapshot", "-a", "base", ps],
        ["snapshot", "-d", "base", ps],
    ] {
        let o = run(IMG, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("L1 table"), "{args:?}: {e}");
    }
    // Random flips in the first 16 clusters (header, tables, snapshot
    // table, L1/L2 tables, refcounts).
    let path = Path::new("m.qcow2");
    let mut rng = Rng::new(99);
    let mut opened = 0;
    for i in 0..400 {
        let mut m = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below((16 * 4096).min(m.len() as u64)) as usize;
            m[at] ^= 1 << rng.below(8);
        }
        let st = Arc::new(MemStorage::new());
        st.insert(path, m);
        let r = std::panic::catch_unwind(|| {
            let Ok(img) = Image::open_in(st.clone(), path, &rw()) else {
                return false;
            };
            let _ = img.snapshot_create("x");
            let _ = img.snapshot_apply(&"base".into());
            let _ = img.snapshot_delete(&SnapshotRef::Name("base".into()));
            let _ = img.snapshot_delete(&SnapshotRef::Name("x".into()));
            true
        });
        match r {
            Ok(o) => opened += o as u32,
            Err(_) => panic!("mutant {i} panicked"),
        }
    }
    assert!(opened > 100, "{opened} mutants opened");
    let _ = std::fs::remove_dir_all(&d);
}

/// 512-byte clusters and 8 MiB of data: dozens of refcount blocks (one in
/// every 128 KiB, QEMU puts them between the data) are copied by every
/// transaction, and the holes the previous one freed lie in every block's
/// range; two creates, a delete, an apply and a delete in a row.
#[test]
fn many_refcount_blocks() {
    let d = tmpdir("blocks");
    let p = d.join("b.qcow2");
    let ps = p.to_str().unwrap();
    create(&p, "cluster_size=512", 16 << 20);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 3 0 8150k", ps]);
    let a = qemu_read(&p, None);
    ok(IMG, &["snapshot", "-c", "a", ps]);
    qemu_check(&p, false, "create a");
    ok(IMG, &["snapshot", "-c", "b", ps]);
    qemu_check(&p, false, "create b");
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 4 1M 2M", ps]);
    ok(IMG, &["snapshot", "-d", "a", ps]);
    qemu_check(&p, false, "delete a");
    same(&qemu_read(&p, Some("2")), &a, "b");
    ok(IMG, &["snapshot", "-a", "b", ps]);
    qemu_check(&p, false, "apply b");
    ok(IMG, &["snapshot", "-d", "b", ps]);
    qemu_check(&p, false, "delete b");
    same(&qemu_read(&p, None), &a, "active");
    let _ = std::fs::remove_dir_all(&d);
}
