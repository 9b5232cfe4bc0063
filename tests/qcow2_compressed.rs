//! qcow2 compressed writes against QEMU 10: `cowblk-img convert -c` and
//! `cowblk-io write -c` (zlib and zstd) read back by qemu-img (compare
//! equal, check clean, map shows the clusters compressed); the same
//! commands on twin images by qemu-io give equal maps; compressed
//! clusters written from several threads pack and check clean; normal
//! writes over compressed clusters keep working. Needs qemu-img/qemu-io.

mod common;

use common::Rng;
use cowblk::{Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir(&format!("q2c-{name}"))
}

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qcow2 image made by qemu-img with creation options `o`.
fn create(p: &Path, o: &str, size: &str) {
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", o, s(p), size],
    );
}

/// `qemu-img check`: exit 0 (no errors, no leaks); returns its output.
fn qemu_check(path: &Path) -> String {
    ok("qemu-img", &["check", "-f", "qcow2", s(path)])
}

fn compare_raw(img: &Path, raw: &Path) {
    ok(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)],
    );
}

/// `qemu-img map --output=json` entries as (start, length, compressed, data).
fn map(path: &Path) -> Vec<(u64, u64, bool, bool)> {
    let out = ok(
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", s(path)],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["compressed"].as_bool().unwrap(),
                e["data"].as_bool().unwrap(),
            )
        })
        .fold(Vec::new(), |mut out: Vec<(u64, u64, bool, bool)>, e| {
            // Runs split only by host offsets are one run here.
            match out.last_mut() {
                Some(l) if (l.2, l.3) == (e.2, e.3) => l.1 += e.1,
                _ => out.push(e),
            }
            out
        })
}

fn compressed_bytes(m: &[(u64, u64, bool, bool)]) -> u64 {
    m.iter().filter(|e| e.2).map(|e| e.1).sum()
}

/// Source contents: compressible text, random (incompressible) and zero
/// clusters of 4 KiB, and an odd length so the last cluster is partial.
fn source(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut b = vec![0u8; len];
    for (i, c) in b.chunks_mut(4096).enumerate() {
        match rng.below(3) {
            0 => {}
            1 => rng.fill(c),
            _ => {
                let t = format!("cluster {i} of compressible text; ");
                for (j, x) in c.iter_mut().enumerate() {
                    *x = t.as_bytes()[j % t.len()];
                }
            }
        }
    }
    b
}

fn convert_case(ct: &str, cluster: u64) {
    let d = tmpdir(&format!("conv-{ct}-{cluster}"));
    let raw = d.join("src.raw");
    let data = source(3 * 1024 * 1024 + 777, cluster + ct.len() as u64);
    std::fs::write(&raw, &data).unwrap();
    let ours = d.join("ours.qcow2");
    let opts = format!("compression_type={ct},cluster_size={cluster}");
    ok(
        env!("CARGO_BIN_EXE_cowblk-img"),
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &opts,
            s(&raw),
            s(&ours),
        ],
    );
    qemu_check(&ours);
    compare_raw(&ours, &raw);
    let m = map(&ours);
    assert!(
        compressed_bytes(&m) > 0,
        "{ct}/{cluster}: nothing compressed: {m:?}"
    );
    // Incompressible clusters were written plain: the same ones as
    // qemu-img's own convert -c.
    let theirs = d.join("theirs.qcow2");
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &opts,
            s(&raw),
            s(&theirs),
        ],
    );
    assert!(
        m == map(&theirs),
        "{ct}/{cluster}: map differs from qemu-img's"
    );
    let info = ok("qemu-img", &["info", s(&ours)]);
    assert!(info.contains(&format!("compression type: {ct}")), "{info}");
    // Normal writes over compressed clusters (partial: copy-on-write from
    // the compressed data), then QEMU checks and compares again.
    let img = Image::open(
        &ours,
        &OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = data.clone();
    model.resize(img.size() as usize, 0);
    let mut rng = Rng::new(9);
    for i in 0..40 {
        // Some writes in the last (partial) cluster.
        let off = if i % 8 == 0 {
            model.len() - 1 - rng.below(3000) as usize
        } else {
            rng.below(model.len() as u64 - 9000) as usize
        };
        let len = (1 + rng.below(9000) as usize).min(model.len() - off);
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf);
        img.write(&buf, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&buf);
    }
    img.close().unwrap();
    qemu_check(&ours);
    std::fs::write(&raw, &model).unwrap();
    compare_raw(&ours, &raw);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn convert_compressed_zlib_64k() {
    convert_case("zlib", 65536);
}

#[test]
fn convert_compressed_zstd_64k() {
    convert_case("zstd", 65536);
}

#[test]
fn convert_compressed_zlib_4k() {
    convert_case("zlib", 4096);
}

#[test]
fn convert_compressed_zstd_2m() {
    convert_case("zstd", 2 << 20);
}

#[test]
fn convert_compressed_refuses_raw_output() {
    let d = tmpdir("raw");
    let raw = d.join("src.raw");
    std::fs::write(&raw, source(65536, 1)).unwrap();
    let out = d.join("out.raw");
    let o = run(
        env!("CARGO_BIN_EXE_cowblk-img"),
        &["convert", "-c", "-O", "raw", s(&raw), s(&out)],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Compression not supported"), "{err}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&d);
}

/// The same qemu-io commands on twin images (ours by cowblk-io, theirs by
/// qemu-io): equal contents, equal maps, both check clean; misaligned
/// compressed writes fail as in qemu-io.
#[test]
fn write_c_matches_qemu_io() {
    for ct in ["zlib", "zstd"] {
        let d = tmpdir(&format!("io-{ct}"));
        let ours = d.join("ours.qcow2");
        let theirs = d.join("theirs.qcow2");
        for p in [&ours, &theirs] {
            create(
                p,
                &format!("cluster_size=4096,compression_type={ct}"),
                "1000k",
            );
        }
        let noise = d.join("noise");
        let mut n = vec![0u8; 8192];
        Rng::new(5).fill(&mut n);
        std::fs::write(&noise, &n).unwrap();
        let cmds = [
            "write -c -P 0x61 0 64k".to_string(),
            "write -c -P 0x62 128k 4k".to_string(),
            // Incompressible: written plain.
            format!("write -c -s {} 256k 8k", noise.display()),
            // The last (partial) cluster: the image is 1000 KiB.
            "write -c -P 0x63 996k 4k".to_string(),
            "write -c -z 512k 8k".to_string(),
            "flush".to_string(),
        ];
        let tool = |prog: &str, p: &Path| {
            let mut args = vec!["-f", "qcow2"];
            for c in &cmds {
                args.extend(["-c", c.as_str()]);
            }
            args.push(s(p));
            ok(prog, &args)
        };
        let a = tool(env!("CARGO_BIN_EXE_cowblk-io"), &ours);
        let b = tool("qemu-io", &theirs);
        assert_eq!(a.lines().count(), b.lines().count(), "{a}\n{b}");
        qemu_check(&ours);
        ok("qemu-img", &["compare", s(&ours), s(&theirs)]);
        let (mo, mt) = (map(&ours), map(&theirs));
        assert_eq!(mo, mt, "{ct}");
        assert_eq!(compressed_bytes(&mo), 64 * 1024 + 4096 + 4096, "{mo:?}");
        // Misaligned: the same refusal as qemu-io.
        for c in ["write -c -P 1 100 4k", "write -c -P 1 4k 1k"] {
            let a = run(
                env!("CARGO_BIN_EXE_cowblk-io"),
                &["-f", "qcow2", "-c", c, s(&ours)],
            );
            let b = run("qemu-io", &["-f", "qcow2", "-c", c, s(&theirs)]);
            assert_eq!(
                String::from_utf8_lossy(&a.stdout),
                String::from_utf8_lossy(&b.stdout),
                "{c}"
            );
        }
        qemu_check(&ours);
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// The first compressed write into an empty image allocates the L2 table
/// before the compressed bytes, as QEMU does: the same L1 entry and the
/// same host offset in the L2 entry as qemu-io's (iotest 214 pokes these
/// entries at fixed file offsets).
#[test]
fn write_c_lays_out_tables_and_data_as_qemu_io() {
    let d = tmpdir("layout");
    let be = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let mut seen = Vec::new();
    for (prog, name) in [
        (env!("CARGO_BIN_EXE_cowblk-io"), "ours"),
        ("qemu-io", "theirs"),
    ] {
        let p = d.join(format!("{name}.qcow2"));
        create(&p, "cluster_size=2M", "8M");
        ok(
            prog,
            &[
                "-f",
                "qcow2",
                "-c",
                "write -c -P 0x11 0 2M",
                "-c",
                "write -c -P 0x11 2M 2M",
                s(&p),
            ],
        );
        qemu_check(&p);
        let b = std::fs::read(&p).unwrap();
        let l1 = be(&b, 40) as usize;
        let l2 = (be(&b, l1) & ((1 << 56) - 1)) as usize;
        // host offsets of the two compressed clusters: bits 0..49 with
        // 2 MiB clusters (62 - (21 - 8))
        let host = |e: u64| e & ((1 << 49) - 1);
        seen.push((l2, host(be(&b, l2)), host(be(&b, l2 + 8))));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0, 0x80_0000, "{seen:x?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Compressed clusters from four threads at once into one image (packed
/// into shared host clusters), then rewritten compressed and plain: every
/// refcount right (check finds no leaks), contents as the model says.
#[test]
fn compressed_writes_from_threads_pack_and_check_clean() {
    let d = tmpdir("threads");
    let p = d.join("t.qcow2");
    let cs = 4096u64;
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&p),
            "4M",
        ],
    );
    let img = Image::open(
        &p,
        &OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let clusters = 1024u64;
    let content = |c: u64, round: u64| -> Vec<u8> {
        let t = format!("cluster {c} round {round} ");
        (0..cs as usize)
            .map(|j| t.as_bytes()[j % t.len()])
            .collect()
    };
    for round in 0..2u64 {
        std::thread::scope(|sc| {
            for t in 0..4u64 {
                let img = &img;
                sc.spawn(move || {
                    for c in (t..clusters).step_by(4) {
                        img.write_compressed(&content(c, round), c * cs).unwrap();
                    }
                });
            }
        });
    }
    // Plain writes over some of them, a compressed write that fails
    // alignment, and a flush in between.
    img.write(&[7u8; 100], 5 * cs + 10).unwrap();
    img.flush().unwrap();
    assert!(img.write_compressed(&[1u8; 4096], 100).is_err());
    img.write_zeroes(8 * cs, 2 * cs).unwrap();
    img.close().unwrap();
    let out = qemu_check(&p);
    assert!(out.contains("compressed clusters"), "{out}");
    let mut model = Vec::new();
    for c in 0..clusters {
        model.extend(content(c, 1));
    }
    model[(5 * cs + 10) as usize..(5 * cs + 110) as usize].fill(7);
    model[(8 * cs) as usize..(10 * cs) as usize].fill(0);
    let raw = d.join("model.raw");
    std::fs::write(&raw, &model).unwrap();
    compare_raw(&p, &raw);
    // Packed: far fewer host bytes than clusters written.
    let len = std::fs::metadata(&p).unwrap().len();
    assert!(len < clusters * cs / 4, "file is {len} bytes");
    let _ = std::fs::remove_dir_all(&d);
}

/// Compressed writes (packed into shared host clusters), a plain write
/// over a compressed cluster and flushes; every cluster written once.
fn crash_workload(img: &Image) -> cowblk::Result<()> {
    let cs = img.cluster_size() as usize;
    for i in 0..10u64 {
        let t = format!("crash cluster {i} ");
        let data: Vec<u8> = (0..cs).map(|j| t.as_bytes()[j % t.len()]).collect();
        img.write_compressed(&data, (i * 2 + 1) * cs as u64)?;
        if i % 3 == 2 {
            img.flush()?;
        }
    }
    // Over the old compressed cluster at 40 KiB (a plain, partial write).
    img.write(&[0x77; 1000], 40 * 1024 + 100)?;
    img.flush()
}

/// Cuts the power at every operation of `crash_workload` (lazy refcounts
/// off and on), keeping none, all or half of the unflushed writes: every
/// state opens (a dirty one repaired), reads old or new in every sector,
/// and qemu-img check finds no errors (leaks allowed).
#[test]
fn crash_at_every_operation_of_compressed_writes() {
    use cowblk::io::fault::MemStorage;
    use std::sync::Arc;
    for (name, opts) in [
        ("plain", "cluster_size=4096,compression_type=zlib"),
        (
            "lazy",
            "cluster_size=4096,compression_type=zstd,lazy_refcounts=on",
        ),
    ] {
        let d = tmpdir(&format!("crash-{name}"));
        let base = d.join("base.qcow2");
        ok(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, s(&base), "256k"],
        );
        // Old contents: a compressed cluster at 40 KiB, data elsewhere.
        ok(
            "qemu-io",
            &[
                "-c",
                "write -c -P 0x44 40k 4k",
                "-c",
                "write -P 0x45 100k 8k",
                s(&base),
            ],
        );
        let bytes = std::fs::read(&base).unwrap();
        let path = Path::new("img.qcow2");
        let rw = OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        };
        let read_all = |img: &Image| {
            let mut b = vec![0u8; img.size() as usize];
            img.read(&mut b, 0).unwrap();
            b
        };
        let fresh = || {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            st
        };
        let old = read_all(&Image::open_in(fresh(), path, &rw).unwrap());
        let st = fresh();
        st.reset_count();
        let img = Image::open_in(st.clone(), path, &rw).unwrap();
        crash_workload(&img).unwrap();
        let total = st.op_count();
        let new = read_all(&img);
        drop(img);
        assert!(total > 20, "{total} operations");
        let out = d.join("cut.qcow2");
        for k in 0..total {
            for policy in 0..3u64 {
                let st = fresh();
                st.reset_count();
                st.fail_from(Some(k));
                if let Ok(img) = Image::open_in(st.clone(), path, &rw) {
                    let _ = crash_workload(&img);
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
                let img = Image::open_in(cut.clone(), path, &rw)
                    .unwrap_or_else(|e| panic!("{name}: op {k} policy {policy}: {e}"));
                let got = read_all(&img);
                for (sec, ((g, o), n)) in got
                    .chunks(512)
                    .zip(old.chunks(512))
                    .zip(new.chunks(512))
                    .enumerate()
                {
                    assert!(
                        g == o || g == n,
                        "{name}: op {k} policy {policy}: sector {sec} is neither old nor new"
                    );
                }
                drop(img);
                // A dirty state is checked as our open repaired it.
                let state = if state[79] & 1 == 1 {
                    cut.file(path).unwrap().contents()
                } else {
                    state
                };
                std::fs::write(&out, &state).unwrap();
                let c = run("qemu-img", &["check", "-f", "qcow2", s(&out)]);
                let code = c.status.code().unwrap_or(-1);
                assert!(
                    code == 0 || code == 3,
                    "{name}: op {k} policy {policy}: qemu-img check exited {code}: {}",
                    String::from_utf8_lossy(&c.stdout)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
