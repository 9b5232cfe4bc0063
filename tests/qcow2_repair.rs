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
    io(&[
        "write -P 1 0 256k",
        "write -P 2 4M 128k",
        "write -P 3 9M 64k",
    ]);
    ok(dir, "qemu-img", &["snapshot", "-c", "s1", "img.qcow2"]);
    io(&[
        "write -P 4 64k 64k",
        "write -P 5 12M 192k",
        "discard 12M 64k",
    ]);
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
fn case(name: &str, damage: impl Fn(&mut [u8]), after: After) -> i32 {
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
    for (mode, json) in [
        ("leaks", false),
        ("all", false),
        ("leaks", true),
        ("all", true),
    ] {
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

fn damage_high(b: &mut [u8]) {
    let l = Lay::of(b);
    // The L1 table's cluster (refcount 1) claims 3.
    let e = l.rc(b, l.l1 / CS);
    wr16(b, e, 3);
}

#[test]
fn refcount_too_high_is_a_leak() {
    assert_eq!(case("high", damage_high, After::Intact), 3);
}

fn damage_low(b: &mut [u8]) {
    let l = Lay::of(b);
    // Guest cluster 0 is shared with the snapshot (refcount 2):
    // after the snapshot it was not rewritten, so its entry has no
    // COPIED flag. Claim 1.
    let host = rd(b, l.l2e(b, 2)) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(host, 0);
    let e = l.rc(b, host / CS);
    wr16(b, e, 1);
}

#[test]
fn refcount_too_low_on_a_shared_cluster() {
    assert_eq!(case("low", damage_low, After::Intact), 2);
}

fn damage_zero(b: &mut [u8]) {
    let l = Lay::of(b);
    let host = rd(b, l.l2e(b, 0)) & 0x00ff_ffff_ffff_fe00;
    let e = l.rc(b, host / CS);
    wr16(b, e, 0);
}

#[test]
fn refcount_zero_on_a_used_cluster_rebuilds() {
    assert_eq!(case("zero", damage_zero, After::Intact), 2);
}

fn damage_leaked(b: &mut [u8]) {
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
}

#[test]
fn leaked_clusters() {
    assert_eq!(case("leaked", damage_leaked, After::Intact), 3);
}

fn damage_intol1(b: &mut [u8]) {
    let l = Lay::of(b);
    // Guest cluster 4 (unallocated) now points at the active L1
    // table's cluster, COPIED set.
    let e = l.l2e(b, 4);
    wr(b, e, l.l1 | 1 << 63);
}

#[test]
fn l2_entry_pointing_into_the_l1_table() {
    assert_eq!(case("intol1", damage_intol1, After::Clean), 2);
}

fn damage_intorb(b: &mut [u8]) {
    let l = Lay::of(b);
    let e = l.l2e(b, 4);
    let rb = rd(b, l.rt) & !0x1ff;
    wr(b, e, rb | 1 << 63);
}

#[test]
fn l2_entry_pointing_into_the_refcount_block() {
    assert_eq!(case("intorb", damage_intorb, After::Clean), 2);
}

fn damage_norb(b: &mut [u8]) {
    let l = Lay::of(b);
    wr(b, l.rt, 0);
}

#[test]
fn missing_refcount_block() {
    assert_eq!(case("norb", damage_norb, After::Intact), 2);
}

fn damage_rbpast(b: &mut [u8]) {
    let l = Lay::of(b);
    // A second table entry naming a block far past the end.
    wr(b, l.rt + 8, 64 * CS);
}

#[test]
fn refcount_block_past_the_end_of_the_file() {
    assert_eq!(case("rbpast", damage_rbpast, After::Intact), 2);
}

fn damage_snapl1(b: &mut [u8]) {
    let so = rd(b, 64);
    let l1 = rd(b, so);
    wr(b, so, l1 + 512);
}

#[test]
fn snapshot_table_entry_with_unaligned_l1() {
    assert_eq!(case("snapl1", damage_snapl1, After::AsQemu), 2);
}

fn damage_prealloc(b: &mut [u8]) {
    let l = Lay::of(b);
    // Guest cluster 1 (data, COPIED) becomes a preallocated zero cluster
    // at a misaligned offset.
    let e = l.l2e(b, 1);
    let v = rd(b, e);
    wr(b, e, ((v & 0x00ff_ffff_ffff_fe00) + 512) | 1 << 63 | 1);
}

#[test]
fn misaligned_preallocated_cluster_becomes_zero() {
    assert_eq!(case("prealloc", damage_prealloc, After::Clean), 2);
}

fn damage_copied(b: &mut [u8]) {
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
}

#[test]
fn oflag_copied_wrong() {
    assert_eq!(case("copied", damage_copied, After::Intact), 2);
}

// ---------------------------------------------------------------- crashes

mod crash {
    use super::*;
    use cowblk::format::Repair;
    use cowblk::io::fault::MemStorage;
    use cowblk::{Image, OpenOptions};
    use std::sync::Arc;

    fn opts(repair: bool) -> OpenOptions {
        OpenOptions {
            format: Some("qcow2".into()),
            read_only: !repair,
            repair,
            ..Default::default()
        }
    }

    fn read_all(img: &Image) -> Vec<u8> {
        let mut b = vec![0u8; img.size() as usize];
        img.read(&mut b, 0).unwrap();
        b
    }

    fn repair(st: &Arc<MemStorage>, path: &Path) -> cowblk::Result<cowblk::format::CheckReport> {
        let img = Image::open_in(st.clone(), path, &opts(true))?;
        let r = img.check(Repair::All)?;
        img.close()?;
        Ok(r)
    }

    /// Cuts the power at every operation of `check -r all` on a damaged
    /// image, keeping none, all or a random half of the unflushed writes;
    /// a second `-r all` on every cut state must leave an image that both
    /// we and QEMU find clean, with the undamaged image's guest data.
    fn run_case(name: &str, damage: fn(&mut [u8])) {
        let dir = tmpdir(&format!("crash{name}"));
        base(&dir);
        let model = raw(&dir, "img.qcow2");
        let mut bytes = std::fs::read(dir.join("img.qcow2")).unwrap();
        damage(&mut bytes);
        let path = Path::new("img.qcow2");
        let total = {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            st.reset_count();
            let r = repair(&st, path).unwrap();
            assert!(
                r.corruptions_fixed + r.leaks_fixed > 0,
                "{name}: nothing fixed"
            );
            st.op_count()
        };
        eprintln!("{name}: {total} operations, {} crash states", total * 3);
        let mut seed = 7u64;
        for k in 0..total {
            for policy in 0..3u64 {
                let st = Arc::new(MemStorage::new());
                st.insert(path, bytes.clone());
                st.reset_count();
                st.fail_from(Some(k));
                let _ = repair(&st, path);
                let cut = st.crash(|_, _| match policy {
                    0 => false,
                    1 => true,
                    _ => {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        seed >> 63 == 0
                    }
                });
                let cut = Arc::new(cut);
                repair(&cut, path)
                    .unwrap_or_else(|e| panic!("{name}: op {k} policy {policy}: {e}"));
                let img = Image::open_in(cut.clone(), path, &opts(false)).unwrap();
                let again = img.check(Repair::None).unwrap();
                assert_eq!(
                    (again.corruptions, again.leaks, again.check_errors),
                    (0, 0, 0),
                    "{name}: op {k} policy {policy}: {:?}",
                    again.messages
                );
                assert!(
                    read_all(&img) == model,
                    "{name}: op {k} policy {policy}: guest data differs"
                );
                drop(img);
                let f = dir.join("cut.qcow2");
                std::fs::write(&f, cut.file(path).unwrap().contents()).unwrap();
                let q = run(&dir, "qemu-img", &["check", "cut.qcow2"]);
                assert!(
                    q.status.success(),
                    "{name}: op {k} policy {policy}: qemu-img check: {}{}",
                    text(&q.stdout),
                    text(&q.stderr)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crash_during_refcount_rebuild() {
        run_case("norb", damage_norb);
    }

    #[test]
    fn crash_during_leak_and_refcount_repair() {
        run_case("high", damage_high);
        run_case("low", damage_low);
    }

    #[test]
    fn crash_during_oflag_copied_repair() {
        run_case("copied", damage_copied);
    }

    #[test]
    fn crash_during_growth_for_a_block_past_the_end() {
        run_case("rbpast", damage_rbpast);
    }
}

/// The C entry point: `cowblk_check` with the FIX flags on a read-write
/// handle repairs as `check -r all` does (same counts as qemu-img on a
/// twin copy); FIX_LEAKS alone on refcounts that need a rebuild returns
/// -EIO with the findings filled in.
#[test]
fn c_api_repairs() {
    use cowblk::ffi::*;
    use std::ffi::CString;
    let dir = tmpdir("capi");
    base(&dir);
    let model = raw(&dir, "img.qcow2");
    let mut b = std::fs::read(dir.join("img.qcow2")).unwrap();
    damage_high(&mut b);
    damage_copied(&mut b);
    std::fs::write(dir.join("c.qcow2"), &b).unwrap();
    std::fs::write(dir.join("q.qcow2"), &b).unwrap();
    let check = |f: &str, fix: u32| -> (i32, cowblk_check_result) {
        let p = CString::new(dir.join(f).to_str().unwrap()).unwrap();
        let fmt = CString::new("qcow2").unwrap();
        let mut img = std::ptr::null_mut();
        let mut r: cowblk_check_result = unsafe { std::mem::zeroed() };
        r.struct_size = std::mem::size_of::<cowblk_check_result>();
        unsafe {
            assert_eq!(cowblk_open(p.as_ptr(), fmt.as_ptr(), 0, 0, &mut img), 0);
            let rc = cowblk_check(img, fix, &mut r);
            assert_eq!(cowblk_close(&mut img), 0);
            (rc, r)
        }
    };
    let (rc, r) = check("c.qcow2", COWBLK_CHECK_FIX_LEAKS | COWBLK_CHECK_FIX_ERRORS);
    assert_eq!(rc, 0);
    let q = run(
        &dir,
        "qemu-img",
        &["check", "-r", "all", "--output=json", "q.qcow2"],
    );
    let j: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    let n = |k: &str| j.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(r.leaks_fixed, n("leaks-fixed"));
    assert_eq!(r.corruptions_fixed, n("corruptions-fixed"));
    assert!(r.leaks_fixed > 0 && r.corruptions_fixed > 0);
    assert_eq!(
        (r.corruptions, r.leaks),
        (r.corruptions_fixed, r.leaks_fixed)
    );
    ok(&dir, "qemu-img", &["check", "c.qcow2"]);
    assert!(raw(&dir, "c.qcow2") == model);
    // A missing refcount block under FIX_LEAKS alone: -EIO, findings kept.
    let mut b = std::fs::read(dir.join("img.qcow2")).unwrap();
    damage_norb(&mut b);
    std::fs::write(dir.join("n.qcow2"), &b).unwrap();
    let (rc, r) = check("n.qcow2", COWBLK_CHECK_FIX_LEAKS);
    assert_eq!(rc, -libc::EIO);
    assert!(r.corruptions > 0 && r.check_errors == 1);
    let msg: Vec<u8> = r
        .messages
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    assert!(String::from_utf8_lossy(&msg).contains("ERROR need to rebuild refcount structures"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Leaks long past what the C result's 1 KiB buffer holds: the ABI 6
/// callback gets every line whole; the buffer holds whole lines only, and
/// a caller with the ABI 5 struct (no callback members) still works.
#[test]
fn c_check_hands_every_message_to_the_callback() {
    use cowblk::ffi::{cowblk_check, cowblk_check_result, cowblk_close, cowblk_open};
    use std::ffi::{c_char, c_void, CStr, CString};

    unsafe extern "C" fn collect(opaque: *mut c_void, line: *const c_char) {
        let v = &mut *(opaque as *mut Vec<String>);
        v.push(CStr::from_ptr(line).to_string_lossy().into_owned());
    }

    let dir = tmpdir("c-check-lines");
    base(&dir);
    let mut b = std::fs::read(dir.join("img.qcow2")).unwrap();
    let l = Lay::of(&b);
    let n = b.len() as u64 / CS;
    // 200 clusters appended to the file with refcount 1 and nothing
    // pointing at them: 200 leaks.
    b.resize(((n + 200) * CS) as usize, 0);
    for c in n..n + 200 {
        let e = l.rc(&b, c);
        wr16(&mut b, e, 1);
    }
    std::fs::write(dir.join("img.qcow2"), &b).unwrap();

    let path = CString::new(dir.join("img.qcow2").to_str().unwrap()).unwrap();
    let mut img = std::ptr::null_mut();
    assert_eq!(
        unsafe { cowblk_open(path.as_ptr(), std::ptr::null(), 1, 0, &mut img) },
        0
    );
    let mut lines: Vec<String> = Vec::new();
    let mut r: cowblk_check_result = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<cowblk_check_result>();
    r.message_fn = Some(collect);
    r.message_opaque = (&mut lines as *mut Vec<String>).cast();
    assert_eq!(unsafe { cowblk_check(img, 0, &mut r) }, 0);
    assert_eq!(r.leaks, 200);
    let leaked: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("Leaked cluster "))
        .collect();
    assert_eq!(leaked.len(), 200, "{lines:?}");
    // The buffer: whole lines, each one of those handed over, in order.
    let buf = unsafe { CStr::from_ptr(r.messages.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert!(buf.len() < 1024 && buf.len() > 900, "{}", buf.len());
    let kept: Vec<&str> = buf.split('\n').collect();
    assert_eq!(
        kept,
        lines[..kept.len()]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
    );
    // The members survive the call as the caller set them.
    assert!(r.message_fn.is_some());
    assert_eq!(r.message_opaque, (&mut lines as *mut Vec<String>).cast());

    // An ABI 5 caller: struct_size ends before the callback members, which
    // are neither read nor written.
    let v5 = std::mem::offset_of!(cowblk_check_result, message_fn);
    let mut r5: cowblk_check_result = unsafe { std::mem::zeroed() };
    r5.struct_size = v5;
    let marker = 0x5a5a_5a5a_usize as *mut c_void;
    r5.message_opaque = marker;
    assert_eq!(unsafe { cowblk_check(img, 0, &mut r5) }, 0);
    assert_eq!(r5.leaks, 200);
    assert_eq!(r5.message_opaque, marker);
    assert!(r5.message_fn.is_none());
    let buf5 = unsafe { CStr::from_ptr(r5.messages.as_ptr()) }
        .to_str()
        .unwrap();
    assert_eq!(buf5, buf);
    assert_eq!(unsafe { cowblk_close(&mut img) }, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// ABI 7: the C result carries qemu-img check's fragmented and compressed
/// cluster counts, the same figures as qemu-img's JSON on the same image;
/// a caller with the ABI 6 struct does not get them written.
#[test]
fn c_check_counts_fragmented_and_compressed_clusters_as_qemu_img() {
    use cowblk::ffi::{cowblk_check, cowblk_check_result, cowblk_close, cowblk_open};
    use std::ffi::{c_void, CString};

    let dir = tmpdir("c-check-counts");
    let run = |prog: &str, args: &[&str]| {
        let o = std::process::Command::new(prog)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    // Compressed clusters, then plain ones written out of guest order
    // (fragmented), in one image.
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "f.qcow2", "4M"],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -c -P 0x11 0 192k",
            "-c",
            "write -P 0x22 1M 64k",
            "-c",
            "write -P 0x23 512k 64k",
            "-c",
            "write -P 0x24 2M 64k",
            "-c",
            "write -P 0x25 768k 64k",
            "f.qcow2",
        ],
    );
    let json = run("qemu-img", &["check", "--output=json", "f.qcow2"]);
    let field = |k: &str| -> u64 {
        let at = json
            .find(&format!("\"{k}\": "))
            .unwrap_or_else(|| panic!("{k} in {json}"));
        let rest = &json[at + k.len() + 4..];
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
            .parse()
            .unwrap()
    };
    let (frag, comp) = (field("fragmented-clusters"), field("compressed-clusters"));
    assert_eq!(comp, 3, "{json}");
    assert!(frag >= 2, "{json}");

    let path = CString::new(dir.join("f.qcow2").to_str().unwrap()).unwrap();
    let mut img = std::ptr::null_mut();
    assert_eq!(
        unsafe { cowblk_open(path.as_ptr(), std::ptr::null(), 1, 0, &mut img) },
        0
    );
    let mut r: cowblk_check_result = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<cowblk_check_result>();
    assert_eq!(unsafe { cowblk_check(img, 0, &mut r) }, 0);
    assert_eq!((r.fragmented_clusters, r.compressed_clusters), (frag, comp));
    assert_eq!(r.allocated_clusters, field("allocated-clusters"));

    let v6 = std::mem::offset_of!(cowblk_check_result, fragmented_clusters);
    let mut r6: cowblk_check_result = unsafe { std::mem::zeroed() };
    r6.struct_size = v6;
    r6.fragmented_clusters = 77;
    r6.compressed_clusters = 78;
    r6.message_opaque = std::ptr::null_mut::<c_void>();
    assert_eq!(unsafe { cowblk_check(img, 0, &mut r6) }, 0);
    assert_eq!(r6.allocated_clusters, r.allocated_clusters);
    assert_eq!((r6.fragmented_clusters, r6.compressed_clusters), (77, 78));
    assert_eq!(unsafe { cowblk_close(&mut img) }, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
