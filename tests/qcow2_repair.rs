//! `cowblk-img check -r leaks|all` on qcow2 against QEMU 10: images made
//! by qemu-img/qemu-io are damaged in known ways (refcounts too low or
//! too high, leaked clusters, an L2 entry pointing into metadata, a
//! missing refcount block, a refcount block past the end, a bad snapshot
//! table entry, wrong OFLAG_COPIED flags); twin copies are checked and
//! repaired by both tools, which must print the same (stdout, stderr,
//! exit code, human and JSON), leave byte-identical files, and after
//! `-r all` both say the image is clean (where QEMU can repair it) with
//! the guest data of the undamaged image wherever it was recoverable.
//! Needs qemu-img and qemu-io on PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OURS: &str = env!("CARGO_BIN_EXE_cowblk-img");
const CS: u64 = 0x10000;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-q2r-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn ok(dir: &Path, prog: &str, args: &[&str]) {
    let o = run(dir, prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `args` (a check) with both tools, QEMU on `qf` and ours on `of`
/// (the file name is the last argument; JSON output names it, so both
/// files get the same name in separate directories). Returns QEMU's exit
/// code and stdout.
fn same(dir: &Path, args: &[&str], f: &str) -> (i32, String) {
    let (qd, od) = (dir.join("q"), dir.join("o"));
    let mut a = args.to_vec();
    a.push(f);
    let q = run(&qd, "qemu-img", &a);
    let o = run(&od, OURS, &a);
    assert_eq!(text(&o.stdout), text(&q.stdout), "{a:?}: stdout");
    // Errors are prefixed with the tool's name.
    let qerr = text(&q.stderr).replace("qemu-img: ", "cowblk-img: ");
    assert_eq!(text(&o.stderr), qerr, "{a:?}: stderr");
    assert_eq!(o.status.code(), q.status.code(), "{a:?}: exit code");
    (q.status.code().unwrap(), text(&q.stdout))
}

fn rd(b: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(b[off as usize..off as usize + 8].try_into().unwrap())
}

fn wr(b: &mut [u8], off: u64, v: u64) {
    b[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}

fn wr16(b: &mut [u8], off: u64, v: u16) {
    b[off as usize..off as usize + 2].copy_from_slice(&v.to_be_bytes());
}

/// The image's layout, from its bytes (16-bit refcounts, 64 KiB clusters).
struct Lay {
    rt: u64,
    l1: u64,
}

impl Lay {
    fn of(b: &[u8]) -> Lay {
        Lay {
            rt: rd(b, 48),
            l1: rd(b, 40),
        }
    }
    /// Offset of the refcount entry of host cluster `c` (first block).
    fn rc(&self, b: &[u8], c: u64) -> u64 {
        (rd(b, self.rt) & !0x1ff) + 2 * c
    }
    /// Offset of the L2 entry of guest cluster `g` (first L2 table).
    fn l2e(&self, b: &[u8], g: u64) -> u64 {
        (rd(b, self.l1) & 0x00ff_ffff_ffff_fe00) + 8 * g
    }
}

/// The base image: 64 KiB clusters, data in three places, one snapshot
/// (clusters shared, refcount 2) and writes after it, and a discard that
/// leaves free clusters inside the file.
fn base(dir: &Path) {
    ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "img.qcow2", "16M"],
    );
    let io = |cmds: &[&str]| {
        let mut a = vec!["-f", "qcow2"];
        for c in cmds {
            a.extend(["-c", c]);
        }
        a.push("img.qcow2");
        ok(dir, "qemu-io", &a);
    };
    io(&["write -P 1 0 256k", "write -P 2 4M 128k", "write -P 3 9M 64k"]);
    ok(dir, "qemu-img", &["snapshot", "-c", "s1", "img.qcow2"]);
    io(&["write -P 4 64k 64k", "write -P 5 12M 192k", "discard 12M 64k"]);
}

fn raw(dir: &Path, f: &str) -> Vec<u8> {
    ok(
        dir,
        "qemu-img",
        &["convert", "-U", "-O", "raw", f, "guest.raw"],
    );
    let v = std::fs::read(dir.join("guest.raw")).unwrap();
    std::fs::remove_file(dir.join("guest.raw")).unwrap();
    v
}

/// What a case expects after `-r all`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum After {
    /// Clean and the guest data of the undamaged image.
    Intact,
    /// Clean; guest data equal to QEMU's repair (some was lost).
    Clean,
    /// QEMU cannot make it clean either: equal to QEMU's result.
    AsQemu,
}

/// One damage case: both tools check it (human, JSON), repair twin copies
/// with `-r leaks` and with `-r all` (human and JSON), and the results
/// are compared.
fn case(name: &str, damage: impl Fn(&mut Vec<u8>), after: After) -> i32 {
    let dir = tmpdir(name);
    base(&dir);
    let model = raw(&dir, "img.qcow2");
    let mut b = std::fs::read(dir.join("img.qcow2")).unwrap();
    damage(&mut b);
    for sub in ["q", "o"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let put = |f: &str| {
        for sub in ["q", "o"] {
            std::fs::write(dir.join(sub).join(f), &b).unwrap();
        }
    };
    put("bad.qcow2");
    let (found, _) = same(&dir, &["check"], "bad.qcow2");
    same(&dir, &["check", "--output=json"], "bad.qcow2");
    for (mode, json) in [("leaks", false), ("all", false), ("leaks", true), ("all", true)] {
        let f = format!("r{mode}{json}.qcow2");
        put(&f);
        let mut a = vec!["check", "-r", mode];
        if json {
            a.push("--output=json");
        }
        same(&dir, &a, &f);
        // The same repair: the same bytes.
        let qb = std::fs::read(dir.join("q").join(&f)).unwrap();
        let ob = std::fs::read(dir.join("o").join(&f)).unwrap();
        assert!(qb == ob, "{name} -r {mode}: the repaired files differ");
        // Both tools agree on the result.
        same(&dir, &["check"], &f);
        if mode == "all" && !json {
            let (code, _) = same(&dir, &["check"], &f);
            let ours = raw(&dir.join("o"), &f);
            assert!(ours == raw(&dir.join("q"), &f), "{name}: guest data");
            match after {
                After::Intact => {
                    assert_eq!(code, 0, "{name}: not clean after -r all");
                    assert!(ours == model, "{name}: guest data lost");
                }
                After::Clean => assert_eq!(code, 0, "{name}: not clean after -r all"),
                After::AsQemu => assert_ne!(code, 0, "{name}: expected to stay damaged"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    found
}

#[test]
fn refcount_too_high_is_a_leak() {
    let code = case(
        "high",
        |b| {
            let l = Lay::of(b);
            // The L1 table's cluster (refcount 1) claims 3.
            let e = l.rc(b, l.l1 / CS);
            wr16(b, e, 3);
        },
        After::Intact,
    );
    assert_eq!(code, 3);
}

#[test]
fn refcount_too_low_on_a_shared_cluster() {
    let code = case(
        "low",
        |b| {
            let l = Lay::of(b);
            // Guest cluster 0 is shared with the snapshot (refcount 2):
            // after the snapshot it was not rewritten, so its entry has no
            // COPIED flag. Claim 1.
            let host = rd(b, l.l2e(b, 2)) & 0x00ff_ffff_ffff_fe00;
            assert_ne!(host, 0);
            let e = l.rc(b, host / CS);
            wr16(b, e, 1);
        },
        After::Intact,
    );
    assert_eq!(code, 2);
}

#[test]
fn refcount_zero_on_a_used_cluster_rebuilds() {
    let code = case(
        "zero",
        |b| {
            let l = Lay::of(b);
            let host = rd(b, l.l2e(b, 0)) & 0x00ff_ffff_ffff_fe00;
            let e = l.rc(b, host / CS);
            wr16(b, e, 0);
        },
        After::Intact,
    );
    assert_eq!(code, 2);
}

#[test]
fn leaked_clusters() {
    let code = case(
        "leaked",
        |b| {
            let l = Lay::of(b);
            // A free cluster inside the file (the discard freed one; the
            // last cluster of the file is in use): claim it, and one past
            // the end of the file.
            let n = b.len() as u64 / CS;
            let mut done = 0;
            for c in 1..n {
                let e = l.rc(b, c);
                if u16::from_be_bytes([b[e as usize], b[e as usize + 1]]) == 0 && done < 1 {
                    wr16(b, e, 1);
                    done += 1;
                }
            }
            assert_eq!(done, 1, "no free cluster in the base image");
            let e = l.rc(b, n + 3);
            wr16(b, e, 1);
        },
        After::Intact,
    );
    assert_eq!(code, 3);
}

#[test]
fn l2_entry_pointing_into_the_l1_table() {
    let code = case(
        "intol1",
        |b| {
            let l = Lay::of(b);
            // Guest cluster 4 (unallocated) now points at the active L1
            // table's cluster, COPIED set.
            let e = l.l2e(b, 4);
            wr(b, e, l.l1 | 1 << 63);
        },
        After::Clean,
    );
    assert_eq!(code, 2);
}

#[test]
fn l2_entry_pointing_into_the_refcount_block() {
    let code = case(
        "intorb",
        |b| {
            let l = Lay::of(b);
            let e = l.l2e(b, 4);
            let rb = rd(b, l.rt) & !0x1ff;
            wr(b, e, rb | 1 << 63);
        },
        After::Clean,
    );
    assert_eq!(code, 2);
}

#[test]
fn missing_refcount_block() {
    let code = case(
        "norb",
        |b| {
            let l = Lay::of(b);
            wr(b, l.rt, 0);
        },
        After::Intact,
    );
    assert_eq!(code, 2);
}

#[test]
fn refcount_block_past_the_end_of_the_file() {
    let code = case(
        "rbpast",
        |b| {
            let l = Lay::of(b);
            // A second table entry naming a block far past the end.
            wr(b, l.rt + 8, 64 * CS);
        },
        After::Intact,
    );
    assert_eq!(code, 2);
}

#[test]
fn snapshot_table_entry_with_unaligned_l1() {
    let code = case(
        "snapl1",
        |b| {
            let so = rd(b, 64);
            let l1 = rd(b, so);
            wr(b, so, l1 + 512);
        },
        After::AsQemu,
    );
    assert_eq!(code, 2);
}

#[test]
fn oflag_copied_wrong() {
    let code = case(
        "copied",
        |b| {
            let l = Lay::of(b);
            // Guest cluster 1 was rewritten after the snapshot (COPIED):
            // clear it; guest cluster 2 is shared: set it; and the L1
            // entry loses its flag.
            let e1 = l.l2e(b, 1);
            let v1 = rd(b, e1);
            assert_ne!(v1 & 1 << 63, 0);
            wr(b, e1, v1 & !(1 << 63));
            let e2 = l.l2e(b, 2);
            let v2 = rd(b, e2);
            assert_eq!(v2 & 1 << 63, 0);
            wr(b, e2, v2 | 1 << 63);
            let v = rd(b, l.l1);
            wr(b, l.l1, v & !(1 << 63));
        },
        After::Intact,
    );
    assert_eq!(code, 2);
}
