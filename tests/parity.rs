//! The differential suite: every command line in tests/parity/corpus.txt
//! runs with QEMU 10's tool (qemu-img or qemu-io) and with ours, on images
//! QEMU made; stdout, stderr and the exit code must match once tool names,
//! paths and timings are normalised, and files a command writes must hold
//! the same guest bytes. Intended differences are listed, each with its
//! reason, in tests/parity/known.txt; the list is printed at the end, and an
//! entry whose command no longer differs fails the run (so the list stays
//! true).
//!
//! Corpus syntax, one command per line (`#` comments):
//!   img ARGS...      qemu-img vs cowblk-img
//!   io ARGS...       qemu-io vs cowblk-io
//!   w img ARGS...    the same, run on private copies of the images because
//!                    the command writes; `=> FILE...` at the end names files
//!                    whose guest contents must then be equal (`FMT:FILE`
//!                    where probing would guess the format wrong)
//! ARGS are split on spaces; a word in single quotes may hold spaces.
//! `@NAME` expands to one line per image of the set NAME (see `SETS`).

mod cli_support;

use cli_support::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Image sets for `@NAME` expansion.
const SETS: &[(&str, &[&str])] = &[
    (
        "all",
        &[
            "raw.img",
            "empty.raw",
            "v3.qcow2",
            "v2.qcow2",
            "comp.qcow2",
            "snap.qcow2",
            "top.qcow2",
            "mid.qcow2",
            "ext.qcow2",
            "rc1.qcow2",
            "c512.qcow2",
            "c2m.qcow2",
            "dirty.qcow2",
            "zero.qcow2",
            "datafile.qcow2",
            "bitmap.qcow2",
            "prealloc.qcow2",
        ],
    ),
    (
        "bad",
        &[
            "corrupt.qcow2",
            "missing.qcow2",
            "trunc.qcow2",
            "garbage.bin",
            "nonexistent",
        ],
    ),
];

/// Makes every image of the corpus with QEMU 10's tools.
fn setup(dir: &Path) {
    let img = |args: &[&str]| {
        ok(dir, "qemu-img", args);
    };
    let io = |fmt: &str, file: &str, cmds: &[&str]| {
        ok(dir, "qemu-io", &io_args(&["-f", fmt], cmds, file));
    };
    let data = [
        "write -P 0xab 0 64k",
        "write -P 0x11 1M 4k",
        "write -P 0x22 3M 512k",
    ];
    img(&["create", "-q", "-f", "raw", "raw.img", "4M"]);
    io("raw", "raw.img", &data);
    img(&["create", "-q", "-f", "raw", "empty.raw", "0"]);
    for (name, opts) in [
        ("v3.qcow2", "compat=1.1"),
        ("v2.qcow2", "compat=0.10"),
        ("ext.qcow2", "extended_l2=on,cluster_size=128k"),
        ("rc1.qcow2", "refcount_bits=1"),
        ("c512.qcow2", "cluster_size=512"),
        ("c2m.qcow2", "cluster_size=2M"),
        ("snap.qcow2", "compat=1.1"),
        ("zero.qcow2", "compat=1.1"),
        ("bitmap.qcow2", "compat=1.1"),
        ("corrupt.qcow2", "compat=1.1"),
    ] {
        img(&["create", "-q", "-f", "qcow2", "-o", opts, name, "4M"]);
        io("qcow2", name, &data);
    }
    io(
        "qcow2",
        "zero.qcow2",
        &["write -z 0 64k", "write -z -u 3M 128k"],
    );
    io("qcow2", "snap.qcow2", &[]);
    img(&["snapshot", "-c", "first", "snap.qcow2"]);
    io("qcow2", "snap.qcow2", &["write -P 0x33 0 128k"]);
    img(&["snapshot", "-c", "2", "snap.qcow2"]);
    img(&["bitmap", "--add", "bitmap.qcow2", "b0"]);
    img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        "raw.img",
        "comp.qcow2",
    ]);
    img(&["create", "-q", "-f", "raw", "base.raw", "4M"]);
    io("raw", "base.raw", &["write -P 0x44 0 2M"]);
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "mid.qcow2",
    ]);
    io("qcow2", "mid.qcow2", &["write -P 0x55 1M 1M"]);
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    io(
        "qcow2",
        "top.qcow2",
        &["write -P 0x66 1536k 64k", "write -z 0 64k"],
    );
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        "dirty.qcow2",
        "4M",
    ]);
    // abort leaves the dirty bit set, as a killed writer does.
    run(
        dir,
        "qemu-io",
        &io_args(
            &["-f", "qcow2"],
            &["write -P 7 0 64k", "abort"],
            "dirty.qcow2",
        ),
    );
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=datafile.dat",
        "datafile.qcow2",
        "4M",
    ]);
    io("qcow2", "datafile.qcow2", &data);
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        "prealloc.qcow2",
        "4M",
    ]);
    // The corrupt bit (incompatible feature bit 1) set by hand.
    let mut c = std::fs::read(dir.join("corrupt.qcow2")).unwrap();
    c[79] |= 2;
    std::fs::write(dir.join("corrupt.qcow2"), c).unwrap();
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.raw",
        "-F",
        "raw",
        "-u",
        "missing.qcow2",
        "4M",
    ]);
    let v3 = std::fs::read(dir.join("v3.qcow2")).unwrap();
    std::fs::write(dir.join("trunc.qcow2"), &v3[..300]).unwrap();
    // A qcow2 magic and version: writing it to sector 0 of a probed raw
    // image is refused.
    std::fs::write(dir.join("magic.bin"), b"QFI\xfb\0\0\0\x03").unwrap();
    std::fs::write(
        dir.join("garbage.bin"),
        b"QFI\xfbnot really a qcow2 image at all".repeat(40),
    )
    .unwrap();
}

/// One parsed corpus line.
struct Case {
    line: String,
    io: bool,
    writes: bool,
    args: Vec<String>,
    compare: Vec<String>,
}

fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn corpus() -> Vec<Case> {
    let text = include_str!("parity/corpus.txt");
    let mut cases = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let expanded: Vec<String> = match line.split_whitespace().find(|w| w.starts_with('@')) {
            Some(set) => {
                let name = &set[1..];
                let files = SETS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("unknown set {set} in: {line}"))
                    .1;
                files.iter().map(|f| line.replacen(set, f, 1)).collect()
            }
            None => vec![line.to_string()],
        };
        for l in expanded {
            let (cmd, compare) = match l.split_once(" => ") {
                Some((c, f)) => (
                    c.to_string(),
                    f.split_whitespace().map(str::to_owned).collect(),
                ),
                None => (l.clone(), Vec::new()),
            };
            let mut words = split_words(&cmd);
            let writes = words[0] == "w";
            if writes {
                words.remove(0);
            }
            let io = match words[0].as_str() {
                "img" => false,
                "io" => true,
                other => panic!("corpus line must start with img or io, not {other}: {l}"),
            };
            words.remove(0);
            cases.push(Case {
                line: l,
                io,
                writes,
                args: words,
                compare,
            });
        }
    }
    cases
}

/// Known differences: command line (after expansion) => reason.
fn known() -> BTreeMap<String, String> {
    include_str!("parity/known.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (c, r) = l
                .split_once(" :: ")
                .unwrap_or_else(|| panic!("known.txt line needs 'COMMAND :: REASON': {l}"));
            (c.trim().to_string(), r.trim().to_string())
        })
        .collect()
}

/// Tool names, the run's directory, timings and rates made comparable.
fn normalise_out(s: &str, dir: &Path) -> String {
    let d = dir.display().to_string();
    let s = s
        .replace(&d, "DIR")
        .replace("cowblk-img", "TOOL")
        .replace("cowblk-io", "TOOL")
        .replace("qemu-img", "TOOL")
        .replace("qemu-io", "TOOL");
    normalise(&s)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn our_tools_answer_as_qemus_do() {
    let root = tmpdir("parity");
    let base = root.join("images");
    std::fs::create_dir_all(&base).unwrap();
    setup(&base);
    let cases = corpus();
    let known = known();
    assert!(
        cases.len() >= 200,
        "the corpus has only {} commands",
        cases.len()
    );
    let (qd, od) = (root.join("qemu"), root.join("ours"));
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    let mut matched = 0;
    for c in &cases {
        // Each tool runs in its own copy, so neither sees the other's
        // writes (or its lock files); read-only commands share one copy.
        if c.writes || !qd.exists() {
            copy_dir(&base, &qd);
            copy_dir(&base, &od);
        }
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let (qt, ot) = if c.io {
            ("qemu-io", COWBLK_IO)
        } else {
            ("qemu-img", COWBLK_IMG)
        };
        let q = run(&qd, qt, &args);
        let o = run(&od, ot, &args);
        let mut diff = Vec::new();
        if q.code != o.code {
            diff.push(format!("exit code: qemu {} ours {}", q.code, o.code));
        }
        for (what, a, b) in [
            ("stdout", &q.stdout, &o.stdout),
            ("stderr", &q.stderr, &o.stderr),
        ] {
            let (a, b) = (normalise_out(a, &qd), normalise_out(b, &od));
            if a != b {
                diff.push(format!("{what}:\n  qemu: {a:?}\n  ours: {b:?}"));
            }
        }
        for spec in &c.compare {
            // FMT:FILE names the format where probing would guess wrong.
            let (fmt, f) = match spec.split_once(':') {
                Some((fmt, f)) => (Some(fmt), f),
                None => (None, spec.as_str()),
            };
            let (qf, of) = (qd.join(f), od.join(f));
            match (qf.exists(), of.exists()) {
                // A failed command need not leave the file; a successful
                // one must (else the corpus names the wrong file).
                (false, false) if q.code != 0 => continue,
                (false, false) => {
                    diff.push(format!("written file {f}: missing after both tools"));
                    continue;
                }
                (true, true) => {}
                (q, o) => {
                    diff.push(format!(
                        "written file {f}: exists after qemu {q}, after ours {o}"
                    ));
                    continue;
                }
            }
            let (qs, os) = (qf.display().to_string(), of.display().to_string());
            let mut args = vec!["compare", "-U"];
            if let Some(fmt) = fmt {
                args.extend(["-f", fmt, "-F", fmt]);
            }
            args.extend([qs.as_str(), os.as_str()]);
            let r = run(&root, "qemu-img", &args);
            if r.code != 0 {
                diff.push(format!(
                    "written file {f}: {}{}",
                    r.stdout.trim(),
                    r.stderr.trim()
                ));
            }
        }
        if c.writes {
            // The next case starts from fresh copies.
            let _ = std::fs::remove_dir_all(&qd);
        }
        match (diff.is_empty(), known.get(&c.line)) {
            (true, None) => matched += 1,
            (true, Some(_)) => stale.push(c.line.clone()),
            (false, None) => failures.push(format!("{}\n{}", c.line, diff.join("\n"))),
            (false, Some(_)) => {}
        }
    }
    let unused: Vec<&String> = known
        .keys()
        .filter(|k| !cases.iter().any(|c| &c.line == *k))
        .collect();
    println!("\nKnown, intended differences ({}):", known.len());
    for (c, r) in &known {
        println!("  {c}\n      {r}");
    }
    println!(
        "\nparity: {} commands, {matched} identical, {} known differences, {} unexpected",
        cases.len(),
        known.len(),
        failures.len()
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        unused.is_empty(),
        "known.txt names commands not in the corpus: {unused:?}"
    );
    assert!(
        stale.is_empty(),
        "listed as known differences but now identical: {stale:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} commands differ:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
