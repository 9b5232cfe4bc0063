//! qcow2 read side against QEMU: images made with qemu-img and qemu-io must
//! read back byte for byte as `qemu-img convert -O raw` reads them, and the
//! chain status must give the ranges `qemu-img map --output=json` prints.
//! Needs qemu-img and qemu-io (QEMU 7.2 or later) on PATH.

use cowblk::{CreateOptions, Image, OpenOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------- helpers

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-q2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Runs qemu-io commands on an image (format given).
fn qemu_io(fmt: &str, path: &Path, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), fmt.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(path.to_str().unwrap().into());
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run("qemu-io", &a);
}

fn create(path: &Path, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path.to_str().unwrap(), size]);
    qemu_img(&args);
}

/// QEMU's view of the bytes (optionally at a snapshot).
fn qemu_bytes(path: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let out = path.with_extension("convert.raw");
    let mut args = vec!["convert", "-O", "raw"];
    let l;
    if let Some(s) = snapshot {
        l = format!("snapshot.name={s}");
        args.extend(["-l", &l]);
    }
    args.extend([path.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

fn our_bytes(path: &Path, opts: &OpenOptions) -> Vec<u8> {
    let img = Image::open(path, opts).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut b = vec![0u8; img.size() as usize];
    // Odd-sized pieces so reads straddle clusters and subclusters.
    let mut pos = 0;
    while pos < b.len() {
        let n = (b.len() - pos).min(100_003);
        img.read(&mut b[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    b
}

fn assert_same_bytes(path: &Path, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{path:?}: size differs");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
        panic!(
            "{path:?}: first difference at byte {i} (ours {:#x}, qemu {:#x})",
            ours[i], theirs[i]
        );
    }
}

/// One qemu-img map entry.
#[derive(Debug, PartialEq, Eq, Clone)]
struct MapEntry {
    start: u64,
    length: u64,
    depth: u64,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    offset: Option<u64>,
}

fn qemu_map(path: &Path) -> Vec<MapEntry> {
    let out = qemu_img(&["map", "--output=json", path.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| MapEntry {
            start: e["start"].as_u64().unwrap(),
            length: e["length"].as_u64().unwrap(),
            depth: e["depth"].as_u64().unwrap(),
            present: e["present"].as_bool().unwrap(),
            zero: e["zero"].as_bool().unwrap(),
            data: e["data"].as_bool().unwrap(),
            compressed: e["compressed"].as_bool().unwrap_or(false),
            offset: e.get("offset").and_then(|o| o.as_u64()),
        })
        .collect()
}

/// Our chain status, merged the way qemu-img map merges entries.
fn our_map(img: &Image) -> Vec<MapEntry> {
    let size = img.size();
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let (depth, st, n) = img.chain_status(pos, size - pos).unwrap();
        assert!(n > 0);
        let e = MapEntry {
            start: pos,
            length: n,
            depth: depth as u64,
            present: st.allocated,
            zero: st.zero,
            data: st.data,
            compressed: st.compressed,
            offset: st.offset,
        };
        match out.last_mut() {
            Some(l)
                if l.depth == e.depth
                    && l.present == e.present
                    && l.zero == e.zero
                    && l.data == e.data
                    && l.compressed == e.compressed
                    && match (l.offset, e.offset) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a + l.length == b,
                        _ => false,
                    } =>
            {
                l.length += n
            }
            _ => out.push(e),
        }
        pos += n;
    }
    out
}

/// Bytes and map against QEMU.
fn check(path: &Path) {
    let theirs = qemu_bytes(path, None);
    let ours = our_bytes(path, &ro());
    assert_same_bytes(path, &ours, &theirs);
    let img = Image::open(path, &ro()).unwrap();
    assert_eq!(our_map(&img), qemu_map(path), "{path:?}: map differs");
}

/// A small deterministic generator for offsets and patterns.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// qemu-io commands: random pattern writes, zero writes (with and
/// without unmap), discards and compressed writes over `size` bytes.
/// Compressed writes go only to clusters nothing touched yet (QEMU refuses
/// to compress over an allocated cluster).
fn random_ops(rng: &mut Rng, size: u64, cluster: u64, n: usize, v3: bool) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut touched = std::collections::HashSet::new();
    for _ in 0..n {
        let kind = rng.below(10);
        let len = 1 + rng.below((cluster * 3).min(size / 4).max(2));
        let off = rng.below(size - len);
        let pat = 1 + rng.below(250);
        let a = off / cluster * cluster;
        let l = cluster.min(size - a);
        let cmd = match kind {
            0..=4 => format!("write -P {pat} {off} {len}"),
            5 if v3 => format!("write -z {off} {len}"),
            6 if v3 => format!("write -z -u {a} {l}"),
            7 => format!("discard {a} {l}"),
            8 if l == cluster && !touched.contains(&a) => {
                format!("write -c -P {pat} {a} {cluster}")
            }
            _ => format!("write -P {pat} {off} {}", len.min(512)),
        };
        // What the command may have allocated.
        let (s, e) = if cmd.contains(" -c ") || cmd.starts_with("discard") || cmd.contains("-u") {
            (a, a + l)
        } else {
            let mut it = cmd.rsplit(' ');
            let n: u64 = it.next().unwrap().parse().unwrap();
            let o: u64 = it.next().unwrap().parse().unwrap();
            (o, o + n)
        };
        let mut c = s / cluster * cluster;
        while c < e {
            touched.insert(c);
            c += cluster;
        }
        cmds.push(cmd);
    }
    cmds
}

// ---------------------------------------------------------------- tests

#[test]
fn versions_cluster_sizes_and_refcount_widths() {
    let d = tmpdir("matrix");
    let cases: &[(&str, u64, u32)] = &[
        ("0.10", 512, 16),
        ("0.10", 65536, 16),
        ("1.1", 512, 1),
        ("1.1", 4096, 2),
        ("1.1", 65536, 16),
        ("1.1", 16384, 64),
        ("1.1", 1 << 21, 8),
        ("0.10", 1 << 21, 16),
    ];
    for (i, &(compat, cs, rb)) in cases.iter().enumerate() {
        let p = d.join(format!("m{i}.qcow2"));
        let size = (cs * 24).clamp(3 << 20, 24 << 20) + 4608; // not cluster aligned
        let opts = if compat == "0.10" {
            format!("compat={compat},cluster_size={cs}")
        } else {
            format!("compat={compat},cluster_size={cs},refcount_bits={rb}")
        };
        create(&p, &opts, &size.to_string());
        let mut rng = Rng(i as u64 + 1);
        qemu_io(
            "qcow2",
            &p,
            &random_ops(&mut rng, size, cs, 40, compat == "1.1"),
        );
        check(&p);
        let img = Image::open(&p, &ro()).unwrap();
        assert_eq!(img.cluster_size(), cs);
        assert_eq!(img.size(), size);
    }
}

#[test]
fn zero_clusters_with_and_without_preallocation() {
    let d = tmpdir("zero");
    let p = d.join("z.qcow2");
    create(&p, "cluster_size=65536", "2M");
    qemu_io(
        "qcow2",
        &p,
        &[
            "write -P 1 0 512k".into(),
            "write -z 64k 64k".into(),      // zero, cluster stays allocated
            "write -z -u 192k 128k".into(), // zero, cluster freed
            "write -z 1M 64k".into(),       // zero on an unallocated cluster
            "write -z 100k 1k".into(),      // partial: writes zeros as data
        ],
    );
    check(&p);
    let img = Image::open(&p, &ro()).unwrap();
    let (st, _) = img.block_status(65536, 65536).unwrap();
    assert!(st.zero && st.allocated && st.offset.is_some(), "{st:?}");
    let (st, _) = img.block_status(192 << 10, 65536).unwrap();
    assert!(st.zero && st.allocated && st.offset.is_none(), "{st:?}");
}

#[test]
fn compressed_zlib_and_zstd() {
    let d = tmpdir("compressed");
    let src = d.join("src.raw");
    let size = 3 * 1024 * 1024 + 512;
    let mut data = vec![0u8; size];
    let mut rng = Rng(7);
    for (i, b) in data.iter_mut().enumerate() {
        // Compressible runs with noise, and a zero stretch.
        *b = if (600_000..900_000).contains(&i) {
            0
        } else if rng.below(4) == 0 {
            rng.below(256) as u8
        } else {
            (i / 4096) as u8
        };
    }
    std::fs::write(&src, &data).unwrap();
    for ct in ["zlib", "zstd"] {
        for cs in ["512", "4k", "64k", "2M"] {
            let p = d.join(format!("c-{ct}-{cs}.qcow2"));
            qemu_img(&[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ct},cluster_size={cs}"),
                src.to_str().unwrap(),
                p.to_str().unwrap(),
            ]);
            let ours = our_bytes(&p, &ro());
            assert_eq!(ours, data, "{p:?}");
            check(&p);
        }
        // Compressed writes mixed with normal ones, via qemu-io.
        let p = d.join(format!("io-{ct}.qcow2"));
        create(&p, &format!("compression_type={ct}"), "1M");
        qemu_io(
            "qcow2",
            &p,
            &[
                "write -c -P 5 0 64k".into(),
                "write -c -P 6 128k 64k".into(),
                "write -P 7 130k 3k".into(), // rewrites a compressed cluster
                "write -c -z 256k 64k".into(),
            ],
        );
        check(&p);
    }
}

#[test]
fn extended_l2_subclusters() {
    let d = tmpdir("extl2");
    for (i, cs) in [16384u64, 65536, 1 << 21].into_iter().enumerate() {
        let p = d.join(format!("e{i}.qcow2"));
        let size = cs * 40 + 1024;
        create(
            &p,
            &format!("extended_l2=on,cluster_size={cs}"),
            &size.to_string(),
        );
        let sc = cs / 32;
        let mut cmds = vec![
            format!("write -P 1 0 {sc}"),
            format!("write -P 2 {} {}", 3 * sc, 2 * sc),
            format!("write -z {} {}", 7 * sc, sc),
            format!("write -z {} {}", cs + 5 * sc, 3 * sc),
            format!("write -P 3 {} {}", 2 * cs, cs),
            format!("write -z -u {} {}", 2 * cs, sc),
            format!("write -c -P 4 {} {}", 4 * cs, cs),
        ];
        let mut rng = Rng(100 + i as u64);
        cmds.extend(random_ops(&mut rng, size, cs, 30, true));
        qemu_io("qcow2", &p, &cmds);
        check(&p);
    }
    // Over a backing file: unallocated subclusters read through.
    let base = d.join("base.qcow2");
    create(&base, "", "1M");
    qemu_io("qcow2", &base, &["write -P 9 0 1M".into()]);
    let top = d.join("top.qcow2");
    create(
        &top,
        "extended_l2=on,backing_file=base.qcow2,backing_fmt=qcow2",
        "1M",
    );
    qemu_io(
        "qcow2",
        &top,
        &[
            "write -P 1 4k 2k".into(),
            "write -z 70k 4k".into(),
            "write -P 2 300k 100k".into(),
        ],
    );
    check(&top);
}

#[test]
fn external_data_files() {
    let d = tmpdir("datafile");
    for raw in ["off", "on"] {
        let p = d.join(format!("df-{raw}.qcow2"));
        // QEMU resolves a relative data file name against its working
        // directory; an absolute name avoids the difference (this library
        // resolves it against the image's directory, like backing files).
        let data = d.join(format!("df-{raw}.data")).display().to_string();
        create(&p, &format!("data_file={data},data_file_raw={raw}"), "2M");
        let mut rng = Rng(55);
        let mut cmds = random_ops(&mut rng, 2 << 20, 65536, 30, true);
        // No compressed clusters with external data files.
        cmds.retain(|c| !c.contains("-c"));
        qemu_io("qcow2", &p, &cmds);
        check(&p);
        let img = Image::open(&p, &ro()).unwrap();
        assert!(img.info().unwrap().data_file.unwrap().ends_with(&data));
        if raw == "on" {
            // The data file alone is the disk.
            let bytes = std::fs::read(d.join(&data)).unwrap();
            assert_eq!(bytes, our_bytes(&p, &ro()));
        }
    }
}

#[test]
fn backing_chains_of_qcow2_and_raw_with_short_backing() {
    let d = tmpdir("chain");
    let base = d.join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", base.to_str().unwrap(), "700k"]);
    qemu_io("raw", &base, &["write -P 11 0 700k".into()]);
    let mid = d.join("mid.qcow2");
    create(
        &mid,
        "backing_file=base.raw,backing_fmt=raw,cluster_size=4k",
        "1M",
    );
    qemu_io(
        "qcow2",
        &mid,
        &[
            "write -P 12 100k 50k".into(),
            "write -z 300k 8k".into(),
            "write -c -P 13 400k 4k".into(),
        ],
    );
    let top = d.join("top.qcow2");
    create(
        &top,
        "backing_file=mid.qcow2,backing_fmt=qcow2,compat=0.10,cluster_size=512",
        "1536k",
    );
    qemu_io(
        "qcow2",
        &top,
        &["write -P 14 120k 1k".into(), "write -P 15 1100k 7k".into()],
    );
    let img = Image::open(&top, &ro()).unwrap();
    // The backing format comes from the header extension.
    assert_eq!(img.backing_spec().unwrap().format.as_deref(), Some("qcow2"));
    drop(img);
    check(&mid);
    check(&top);
    // Without the backing format extension the backing file is probed.
    let probed = d.join("probed.qcow2");
    std::fs::copy(&top, &probed).unwrap();
    hide_extension(&probed, 0xe279_2aca);
    let img = Image::open(&probed, &ro()).unwrap();
    assert_eq!(img.backing_spec().unwrap().format, None);
    assert_eq!(
        img.backing().unwrap().as_image().unwrap().format_name(),
        "qcow2"
    );
    drop(img);
    assert_same_bytes(&probed, &our_bytes(&probed, &ro()), &qemu_bytes(&top, None));
}

/// Turns a header extension into an unknown one (ignored by readers).
fn hide_extension(p: &Path, typ: u32) {
    let mut b = std::fs::read(p).unwrap();
    let v3 = u32::from_be_bytes(b[4..8].try_into().unwrap()) >= 3;
    let mut off = if v3 {
        u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize
    } else {
        72
    };
    loop {
        let t = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        assert_ne!(t, 0, "extension {typ:#x} not found");
        if t == typ {
            b[off..off + 4].copy_from_slice(&0x0bad_0bad_u32.to_be_bytes());
            break;
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    std::fs::write(p, b).unwrap();
}

/// Each layer kind: how to create it over `backing` (name, format).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Raw,
    Qcow2,
    AddCow,
}

fn ext(k: Kind) -> &'static str {
    match k {
        Kind::Raw => "raw",
        Kind::Qcow2 => "qcow2",
        Kind::AddCow => "add-cow",
    }
}

/// Random writes for one layer; `align` > 1 makes them whole clusters.
fn layer_writes(rng: &mut Rng, size: u64, align: u64) -> Vec<(u64, Vec<u8>)> {
    (0..6)
        .map(|_| {
            let len = 1 + rng.below(150_000);
            let off = rng.below(size - len);
            let pat = 1 + rng.below(250) as u8;
            let a = off / align * align;
            let e = (off + len).div_ceil(align) * align;
            (a, vec![pat; (e.min(size) - a) as usize])
        })
        .collect()
}

#[test]
fn three_deep_chains_mixing_raw_qcow2_and_add_cow() {
    let d = tmpdir("mixed");
    let size: u64 = 1 << 20;
    let bottoms = [Kind::Raw, Kind::Qcow2, Kind::AddCow];
    let uppers = [Kind::Qcow2, Kind::AddCow];
    let mut n = 0;
    for b in bottoms {
        for m in uppers {
            for t in uppers {
                n += 1;
                let chain = [b, m, t];
                let mut rng = Rng(1000 + n);
                // A raw bottom layer is filled with 200 before its writes.
                let fill = if matches!(b, Kind::Raw) { 200 } else { 0 };
                let mut model = vec![fill; size as usize];
                let mut prev: Option<(String, Kind)> = None;
                let mut names = Vec::new();
                for (depth, k) in chain.iter().enumerate() {
                    let name = format!("c{n}-{depth}.{}", ext(*k));
                    let p = d.join(&name);
                    // QEMU writes a qcow2 over add-cow with the backing
                    // detached: whole clusters keep the model exact.
                    let over_addcow = chain[..depth].iter().any(|k| matches!(k, Kind::AddCow));
                    let align = if matches!(k, Kind::Qcow2) && over_addcow {
                        4096
                    } else {
                        1
                    };
                    let writes = layer_writes(&mut rng, size, align);
                    make_layer(&p, *k, prev.as_ref(), over_addcow, size, &writes);
                    for (off, data) in &writes {
                        model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
                    }
                    prev = Some((name.clone(), *k));
                    names.push(p);
                }
                let top = names.last().unwrap();
                let ours = our_bytes(top, &ro());
                assert_same_bytes(top, &ours, &model);
                let img = Image::open(top, &ro()).unwrap();
                // The whole chain is open, three deep.
                let mut depth = 0;
                let mut cur = img.backing();
                while let Some(b) = cur {
                    depth += 1;
                    cur = b.as_image().and_then(|i| i.backing());
                }
                assert_eq!(depth, 2, "{chain:?}");
                // Chains QEMU can open: compare everything with it.
                if !chain.iter().any(|k| matches!(k, Kind::AddCow)) {
                    check(top);
                }
            }
        }
    }
}

/// Rewrites the backing format header extension in place (its padded
/// space must fit the new name).
fn set_backing_fmt_ext(p: &Path, fmt: &str) {
    let mut b = std::fs::read(p).unwrap();
    let mut off = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
    loop {
        let typ = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        assert_ne!(typ, 0, "no backing format extension");
        if typ == 0xe279_2aca {
            assert!(fmt.len() <= len.div_ceil(8) * 8);
            b[off + 4..off + 8].copy_from_slice(&(fmt.len() as u32).to_be_bytes());
            b[off + 8..off + 8 + fmt.len()].copy_from_slice(fmt.as_bytes());
            break;
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    std::fs::write(p, b).unwrap();
}

/// Makes one layer over `backing` and applies `writes` with the tool that
/// can: qemu-io for raw and qcow2, this library for add-cow. A qcow2 with
/// an add-cow layer below is written by qemu-io with its backing detached
/// (QEMU cannot open add-cow), so its writes are whole clusters.
fn make_layer(
    p: &Path,
    k: Kind,
    backing: Option<&(String, Kind)>,
    over_addcow: bool,
    size: u64,
    writes: &[(u64, Vec<u8>)],
) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, v)| format!("write -P {} {o} {}", v[0], v.len()))
        .collect();
    match k {
        Kind::Raw => {
            assert!(backing.is_none());
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "raw",
                p.to_str().unwrap(),
                &size.to_string(),
            ]);
            // Filled, so it has no holes (QEMU maps holes in raw files as zeros).
            let mut all = vec![format!("write -P 200 0 {size}")];
            all.extend(cmds);
            qemu_io("raw", p, &all);
        }
        Kind::Qcow2 => {
            let direct_addcow = matches!(backing, Some((_, Kind::AddCow)));
            let mut opts = "cluster_size=4k".to_string();
            if let Some((b, bk)) = backing {
                // QEMU does not know add-cow: record raw, then patch.
                let f = if direct_addcow { "raw" } else { ext(*bk) };
                opts += &format!(",backing_file={b},backing_fmt={f}");
            }
            let mut args = vec!["create", "-q", "-f", "qcow2", "-o", &opts];
            if over_addcow {
                args.push("-u");
            }
            let sz = size.to_string();
            args.extend([p.to_str().unwrap(), &sz]);
            qemu_img(&args);
            if over_addcow {
                let mut args = vec!["--image-opts".to_string()];
                for c in cmds {
                    args.push("-c".into());
                    args.push(c);
                }
                args.push(format!(
                    "driver=qcow2,file.driver=file,file.filename={},backing=",
                    p.display()
                ));
                let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                run("qemu-io", &a);
                if direct_addcow {
                    set_backing_fmt_ext(p, "add-cow");
                }
            } else {
                qemu_io("qcow2", p, &cmds);
            }
        }
        Kind::AddCow => {
            let mut o = CreateOptions::new();
            o.set("size", size.to_string()).set(
                "image_file",
                p.file_name().unwrap().to_str().unwrap().to_string() + ".img",
            );
            if let Some((b, bk)) = backing {
                o.set("backing_file", b.as_str())
                    .set("backing_fmt", ext(*bk));
            }
            Image::create(p, "add-cow", &o).unwrap();
            let img = Image::open(p, &OpenOptions::default()).unwrap();
            for (off, data) in writes {
                img.write(data, *off).unwrap();
            }
            img.close().unwrap();
        }
    }
}

#[test]
fn internal_snapshots_list_and_read() {
    let d = tmpdir("snap");
    let p = d.join("s.qcow2");
    create(&p, "cluster_size=4k", "1M");
    let ps = p.to_str().unwrap();
    qemu_io(
        "qcow2",
        &p,
        &["write -P 1 0 100k".into(), "write -z 200k 8k".into()],
    );
    qemu_img(&["snapshot", "-c", "first", ps]);
    qemu_img(&["resize", "-q", ps, "2M"]);
    qemu_io(
        "qcow2",
        &p,
        &[
            "write -P 2 50k 1500k".into(),
            "write -c -P 3 1600k 4k".into(),
        ],
    );
    qemu_img(&["snapshot", "-c", "second", ps]);
    qemu_io(
        "qcow2",
        &p,
        &["write -P 4 0 10k".into(), "discard 1500k 100k".into()],
    );

    let img = Image::open(&p, &ro()).unwrap();
    let ours = img.snapshots();
    let info: Value = serde_json::from_str(&qemu_img(&["info", "--output=json", ps])).unwrap();
    let theirs = info["snapshots"].as_array().unwrap();
    assert_eq!(ours.len(), 2);
    assert_eq!(theirs.len(), 2);
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.id, t["id"].as_str().unwrap());
        assert_eq!(o.name, t["name"].as_str().unwrap());
        assert_eq!(o.vm_state_size, t["vm-state-size"].as_u64().unwrap());
        assert_eq!(o.date_sec, t["date-sec"].as_u64().unwrap());
        assert_eq!(o.date_nsec as u64, t["date-nsec"].as_u64().unwrap());
        assert_eq!(
            o.vm_clock_nsec,
            t["vm-clock-sec"].as_u64().unwrap() * 1_000_000_000
                + t["vm-clock-nsec"].as_u64().unwrap()
        );
        assert_eq!(o.icount, t.get("icount").and_then(|v| v.as_u64()));
    }
    assert_eq!(ours[0].disk_size, 1 << 20);
    assert_eq!(ours[1].disk_size, 2 << 20);
    drop(img);
    // Reads at each snapshot (by name and by id) and at the active state.
    for (sel, name) in [("first", "first"), ("2", "second"), ("1", "first")] {
        let opts = OpenOptions {
            snapshot: Some(sel.into()),
            ..ro()
        };
        let ours = our_bytes(&p, &opts);
        assert_same_bytes(&p, &ours, &qemu_bytes(&p, Some(name)));
    }
    check(&p);
    // Unknown snapshots and writable snapshot opens are refused.
    let e = Image::open(
        &p,
        &OpenOptions {
            snapshot: Some("nope".into()),
            ..ro()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("snapshot 'nope'"), "{e}");
    let e = Image::open(
        &p,
        &OpenOptions {
            snapshot: Some("first".into()),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("read-only"), "{e}");
    // Formats without snapshots refuse the option.
    let r = d.join("r.raw");
    std::fs::write(&r, [0u8; 512]).unwrap();
    let e = Image::open(
        &r,
        &OpenOptions {
            snapshot: Some("first".into()),
            ..ro()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("snapshot 'first'"), "{e}");
}

/// Sets bits in the incompatible feature field of a qcow2 file.
fn set_incompat(p: &Path, bits: u64) {
    let mut b = std::fs::read(p).unwrap();
    let v = u64::from_be_bytes(b[72..80].try_into().unwrap()) | bits;
    b[72..80].copy_from_slice(&v.to_be_bytes());
    std::fs::write(p, b).unwrap();
}

#[test]
fn feature_bits_dirty_corrupt_unknown_and_encryption() {
    let d = tmpdir("features");
    // Dirty: lazy refcounts and an abort before the clean close.
    let p = d.join("dirty.qcow2");
    create(&p, "lazy_refcounts=on", "1M");
    qemu_io(
        "qcow2",
        &p,
        &["write -P 3 0 300k".into(), "write -z 64k 64k".into()],
    );
    let _ = Command::new("qemu-io")
        .args([
            "-c",
            "write -P 4 512k 64k",
            "-c",
            "abort",
            p.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let b = std::fs::read(&p).unwrap();
    assert_eq!(b[79] & 1, 1, "qemu-io abort left the dirty bit set");
    assert_same_bytes(&p, &our_bytes(&p, &ro()), &qemu_bytes(&p, None));
    assert!(Image::open(&p, &ro()).unwrap().warnings().is_empty());
    // A read-write open repairs the refcounts and clears the bit.
    drop(Image::open(&p, &OpenOptions::default()).unwrap());
    assert_eq!(std::fs::read(&p).unwrap()[79] & 1, 0);
    qemu_img(&["check", p.to_str().unwrap()]);
    assert_same_bytes(&p, &our_bytes(&p, &ro()), &qemu_bytes(&p, None));

    // Corrupt: read-only with a warning.
    let p = d.join("corrupt.qcow2");
    create(&p, "", "1M");
    qemu_io("qcow2", &p, &["write -P 5 0 100k".into()]);
    set_incompat(&p, 2);
    let e = Image::open(&p, &OpenOptions::default()).err().unwrap();
    assert!(e.to_string().contains("corrupt"), "{e}");
    let img = Image::open(&p, &ro()).unwrap();
    let w = img.warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("corrupt") && w[0].contains("corrupt.qcow2"),
        "{w:?}"
    );
    assert_same_bytes(&p, &our_bytes(&p, &ro()), &qemu_bytes(&p, None));
    // An overlay reports its backing file's warning, naming that file.
    let top = d.join("over-corrupt.qcow2");
    create(&top, "backing_file=corrupt.qcow2,backing_fmt=qcow2", "1M");
    let w = Image::open(&top, &ro()).unwrap().warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("corrupt.qcow2'"), "{w:?}");

    // Unknown incompatible bits are named from the feature name table:
    // rename QEMU's "extended L2 entries" entry to bit 20 and set bit 20.
    let p = d.join("unknown.qcow2");
    create(&p, "", "1M");
    let mut b = std::fs::read(&p).unwrap();
    let mut off = 112usize;
    let mut renamed = false;
    loop {
        let typ = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        if typ == 0 {
            break;
        }
        if typ == 0x6803_f857 {
            for e in b[off + 8..off + 8 + len].chunks_exact_mut(48) {
                if e[0] == 0 && e[1] == 4 {
                    e[1] = 20;
                    renamed = true;
                }
            }
        }
        off += 8 + len.div_ceil(8) * 8;
    }
    assert!(renamed, "QEMU wrote no feature name table entry for bit 4");
    std::fs::write(&p, b).unwrap();
    set_incompat(&p, (1 << 20) | (1 << 33));
    let e = Image::open(&p, &ro()).err().unwrap().to_string();
    let want = "Unsupported qcow2 feature(s): extended L2 entries, \
                Unknown incompatible feature: 200000000";
    assert!(e.contains(want), "{e}");
    // qemu-img words it the same
    let q = std::process::Command::new("qemu-img")
        .args(["info", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&q.stderr).contains(want), "{q:?}");

    // Encrypted: a clear "unsupported".
    let p = d.join("enc.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=hunter2",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        p.to_str().unwrap(),
        "1M",
    ]);
    let e = Image::open(&p, &ro()).err().unwrap();
    assert!(matches!(e, cowblk::Error::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("encrypted qcow2 images (LUKS)"),
        "{e}"
    );

    // Persistent dirty bitmaps (bitmaps extension, autoclear bit) are
    // validated and otherwise left alone.
    let p = d.join("bitmaps.qcow2");
    create(&p, "", "1M");
    qemu_img(&["bitmap", "--add", p.to_str().unwrap(), "b0"]);
    qemu_io("qcow2", &p, &["write -P 6 0 64k".into()]);
    check(&p);

    // Writable opens work; a dirty image gets its refcounts rebuilt and
    // the bit cleared (tests/qcow2_write.rs tests the repair itself).
    let p = d.join("plain.qcow2");
    create(&p, "", "1M");
    Image::open(&p, &OpenOptions::default()).unwrap();
    set_incompat(&p, 1);
    Image::open(&p, &OpenOptions::default()).unwrap();
    let b = std::fs::read(&p).unwrap();
    assert_eq!(u64::from_be_bytes(b[72..80].try_into().unwrap()) & 1, 0);
}

#[test]
fn preallocated_images_read_back() {
    // QEMU's map asks the file system about holes under the clusters of
    // images it finds metadata-preallocated; so does chain_status.
    let d = tmpdir("prealloc");
    for mode in ["metadata", "falloc", "full"] {
        let p = d.join(format!("p-{mode}.qcow2"));
        create(&p, &format!("preallocation={mode},cluster_size=16k"), "1M");
        qemu_io(
            "qcow2",
            &p,
            &["write -P 3 5k 40k".into(), "write -z 300k 64k".into()],
        );
        check(&p);
        let img = Image::open(&p, &ro()).unwrap();
        // Every cluster is allocated in the image.
        assert_eq!(img.is_allocated(0, 1 << 20).unwrap(), (true, 1 << 20));
    }
}

#[test]
fn sparse_raw_backing_maps_holes_as_zeros() {
    let d = tmpdir("sparse");
    let base = d.join("base.raw");
    qemu_img(&["create", "-q", "-f", "raw", base.to_str().unwrap(), "2M"]);
    qemu_io(
        "raw",
        &base,
        &["write -P 1 64k 64k".into(), "write -P 2 1M 4k".into()],
    );
    let top = d.join("top.qcow2");
    create(&top, "backing_file=base.raw,backing_fmt=raw", "3M");
    qemu_io("qcow2", &top, &["write -P 3 1000k 100k".into()]);
    check(&top);
}

#[test]
fn concurrent_readers_with_a_small_cache() {
    // 512-byte clusters: one L2 table maps 32 KiB, so 8 MiB needs 256
    // tables; the cache holds 4. Four threads read random ranges.
    let d = tmpdir("threads");
    let p = d.join("t.qcow2");
    let size = 8u64 << 20;
    create(
        &p,
        "cluster_size=512,compression_type=zstd",
        &size.to_string(),
    );
    let mut rng = Rng(77);
    qemu_io("qcow2", &p, &random_ops(&mut rng, size, 512, 300, true));
    let expect = std::sync::Arc::new(qemu_bytes(&p, None));
    let img = std::sync::Arc::new(
        Image::open(
            &p,
            &OpenOptions {
                cache_size: 4 * 512,
                ..ro()
            },
        )
        .unwrap(),
    );
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let (img, expect) = (img.clone(), expect.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(t + 10);
                for _ in 0..400 {
                    let len = 1 + rng.below(20_000);
                    let off = rng.below(size - len);
                    let mut buf = vec![0u8; len as usize];
                    img.read(&mut buf, off).unwrap();
                    assert!(buf[..] == expect[off as usize..(off + len) as usize]);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
