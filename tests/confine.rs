//! Files an image names (the CVE-2024-4467 class): `OpenOptions::confined`
//! holds backing files, add-cow image files and qcow2 data files to the top
//! image's directory and to regular files; metadata-only opens (`info`)
//! never open them.

mod cli_support;

use cli_support::{ok, run, COWBLK_IMG, COWBLK_IO};
use cowblk::io::posix::PosixStorage;
use cowblk::io::{Access, BlockFile, Storage};
use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Byte offsets of the add-cow header's name fields (docs/specs/add-cow.txt).
const BACKING_FIELD: usize = 12;
const IMAGE_FIELD: usize = 1036;

fn tmpdir(name: &str) -> PathBuf {
    cli_support::tmpdir(&format!("confine-{name}"))
}

/// Writes `name` into a 1024-byte name field of an add-cow header.
fn set_name(addcow: &Path, field: usize, name: &str) {
    let mut b = std::fs::read(addcow).unwrap();
    assert!(name.len() < 1024);
    b[field..field + 1024].fill(0);
    b[field..field + name.len()].copy_from_slice(name.as_bytes());
    std::fs::write(addcow, b).unwrap();
}

/// An add-cow file of 64 KiB (4 KiB clusters) with its first 8 KiB written
/// (bits set), then renamed to point at `image_file`.
fn addcow_naming(dir: &Path, name: &str, image_file: &str) -> PathBuf {
    let p = dir.join(name);
    let mut o = CreateOptions::new();
    o.set("size", "64k")
        .set("image_file", format!("{name}.img"))
        .set("cluster_size", "4k");
    Image::create(&p, "add-cow", &o).unwrap();
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    img.write(&[0x5a; 8192], 0).unwrap();
    img.close().unwrap();
    set_name(&p, IMAGE_FIELD, image_file);
    p
}

fn opts(confined: bool, read_only: bool) -> OpenOptions {
    OpenOptions {
        read_only,
        confined,
        ..Default::default()
    }
}

/// Runs `f` on another thread and fails the test if it never returns: a
/// guard so that a regression shows as a failure, not a hung test run.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

/// The message and errno of a confined open that must be refused.
fn refused(p: &Path, read_only: bool) -> (String, i32) {
    match Image::open(p, &opts(true, read_only)) {
        Ok(_) => panic!("confined open of '{}' succeeded", p.display()),
        Err(e) => (e.to_string(), e.errno()),
    }
}

#[test]
fn image_file_etc_passwd_with_bits_set_is_refused_when_confined() {
    let d = tmpdir("passwd");
    let p = addcow_naming(&d, "a.add-cow", "/etc/passwd");
    let passwd = std::fs::read("/etc/passwd").unwrap();
    for read_only in [true, false] {
        let (msg, errno) = refused(&p, read_only);
        assert_eq!(errno, libc::EACCES, "{msg}");
        assert!(msg.contains("'/etc/passwd'"), "{msg}");
        assert!(msg.contains("outside the image's directory"), "{msg}");
    }
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    // Without the flag the name is followed, as QEMU does: this is what
    // the flag exists for (read-only here; never write the host's file).
    let img = Image::open(&p, &opts(false, true)).unwrap();
    let mut buf = vec![0u8; 64.min(passwd.len())];
    img.read(&mut buf, 0).unwrap();
    assert_eq!(buf, passwd[..buf.len()]);
}

#[test]
fn dotdot_and_absolute_names_leaving_the_directory_are_refused() {
    let d = tmpdir("dotdot");
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(d.join("outside.img"), vec![1u8; 65536]).unwrap();
    let p = addcow_naming(&sub, "a.add-cow", "../outside.img");
    let (msg, errno) = refused(&p, true);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains("'") && msg.contains("outside.img"), "{msg}");
    assert!(msg.contains("outside the image's directory"), "{msg}");
    // Unconfined, `..` is followed.
    let img = Image::open(&p, &opts(false, true)).unwrap();
    let mut b = [0u8; 4];
    img.read(&mut b, 0).unwrap();
    assert_eq!(b, [1; 4]);
    drop(img);
    // `..` that comes back inside stays allowed.
    set_name(&p, IMAGE_FIELD, "../sub/a.add-cow.img");
    let img = Image::open(&p, &opts(true, false)).unwrap();
    img.read(&mut b, 0).unwrap();
    assert_eq!(b, [0x5a; 4]);
    drop(img);
    // An absolute name inside the directory is allowed, outside refused.
    let abs_in = sub.join("a.add-cow.img").canonicalize().unwrap();
    set_name(&p, IMAGE_FIELD, abs_in.to_str().unwrap());
    Image::open(&p, &opts(true, true)).unwrap();
    let abs_out = d.join("outside.img");
    set_name(&p, IMAGE_FIELD, abs_out.to_str().unwrap());
    let (msg, _) = refused(&p, true);
    assert!(msg.contains(abs_out.to_str().unwrap()), "{msg}");
}

#[test]
fn symlinks_out_are_refused_and_symlinks_inside_allowed() {
    let d = tmpdir("symlink");
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(d.join("outside.img"), vec![1u8; 65536]).unwrap();
    let p = addcow_naming(&sub, "a.add-cow", "out-link");
    std::os::unix::fs::symlink("../outside.img", sub.join("out-link")).unwrap();
    let (msg, errno) = refused(&p, false);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains("out-link"), "{msg}");
    assert!(msg.contains("outside.img"), "names where it leads: {msg}");
    // A symlink to an absolute path outside, through a directory link.
    std::os::unix::fs::symlink(&d, sub.join("up")).unwrap();
    set_name(&p, IMAGE_FIELD, "up/outside.img");
    let (msg, _) = refused(&p, true);
    assert!(msg.contains("up/outside.img"), "{msg}");
    // Links that stay inside: relative and absolute.
    std::os::unix::fs::symlink("a.add-cow.img", sub.join("in-link")).unwrap();
    let abs = sub.canonicalize().unwrap().join("a.add-cow.img");
    std::os::unix::fs::symlink(&abs, sub.join("abs-in-link")).unwrap();
    for name in ["in-link", "abs-in-link"] {
        set_name(&p, IMAGE_FIELD, name);
        let img = Image::open(&p, &opts(true, false)).unwrap();
        let mut b = [0u8; 4];
        img.read(&mut b, 4096).unwrap();
        assert_eq!(b, [0x5a; 4], "{name}");
        img.write(&[7u8; 4], 16384).unwrap();
        img.close().unwrap();
    }
    assert_eq!(std::fs::read(&abs).unwrap()[16384..16388], [7; 4]);
}

#[test]
fn fifos_are_refused_without_hanging() {
    let d = tmpdir("fifo");
    let p = addcow_naming(&d, "a.add-cow", "f");
    let fifo = std::ffi::CString::new(d.join("f").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for (confined, read_only) in [(true, true), (true, false), (false, true), (false, false)] {
        let p = p.clone();
        let r = returns("opening an add-cow naming a fifo", move || {
            Image::open(&p, &opts(confined, read_only)).map(|_| ())
        });
        let e = r.expect_err("a fifo as image file opened");
        let msg = e.to_string();
        assert!(msg.contains("a fifo"), "{msg}");
        assert!(msg.contains("/f'"), "{msg}");
        if confined {
            assert!(msg.contains("not a regular file"), "{msg}");
            assert_eq!(e.errno(), libc::EACCES);
        }
    }
}

#[test]
fn devices_and_directories_are_refused() {
    let d = tmpdir("devices");
    let p = addcow_naming(&d, "a.add-cow", "/dev/zero");
    let (msg, errno) = refused(&p, true);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains("'/dev/zero'"), "{msg}");
    assert!(msg.contains("a character device"), "{msg}");
    // A device reached through a link inside the directory.
    std::os::unix::fs::symlink("/dev/null", d.join("null")).unwrap();
    set_name(&p, IMAGE_FIELD, "null");
    let (msg, _) = refused(&p, false);
    assert!(
        msg.contains("null'") && msg.contains("a character device"),
        "{msg}"
    );
    // A directory inside.
    std::fs::create_dir(d.join("dir")).unwrap();
    set_name(&p, IMAGE_FIELD, "dir");
    let (msg, errno) = refused(&p, true);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains("dir'") && msg.contains("a directory"), "{msg}");
}

/// A raw base, a middle add-cow on it and a top add-cow on the middle, all
/// in `dir`.
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("base.raw"), vec![3u8; 65536]).unwrap();
    let mid = dir.join("mid.add-cow");
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "mid.img");
    Image::create(&mid, "add-cow", &o).unwrap();
    let top = dir.join("top.add-cow");
    let mut o = CreateOptions::new();
    o.set("backing_file", "mid.add-cow")
        .set("backing_fmt", "add-cow")
        .set("image_file", "top.img");
    Image::create(&top, "add-cow", &o).unwrap();
    (top, mid)
}

#[test]
fn every_depth_of_the_chain_is_confined() {
    let d = tmpdir("chain");
    let (top, mid) = chain(&d);
    let img = Image::open(&top, &opts(true, false)).unwrap();
    let mut b = [0u8; 4];
    img.read(&mut b, 0).unwrap();
    assert_eq!(b, [3; 4]);
    drop(img);
    // The middle layer's backing file leaves the directory.
    let outer = d.parent().unwrap().join(format!(
        "{}-outer.raw",
        d.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&outer, vec![9u8; 65536]).unwrap();
    let rel = format!("../{}", outer.file_name().unwrap().to_str().unwrap());
    set_name(&mid, BACKING_FIELD, &rel);
    let (msg, errno) = refused(&top, true);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains(&rel), "{msg}");
    Image::open(&top, &opts(false, true)).unwrap();
    // The middle layer's image file at depth 1.
    set_name(&mid, BACKING_FIELD, "base.raw");
    set_name(&mid, IMAGE_FIELD, "/etc/passwd");
    let (msg, _) = refused(&top, true);
    assert!(msg.contains("'/etc/passwd'"), "{msg}");
    // The middle layer itself as a symlink out of the directory.
    set_name(&mid, IMAGE_FIELD, "mid.img");
    set_name(&top, BACKING_FIELD, "mid-link");
    let sub = d.join("elsewhere");
    std::fs::create_dir(&sub).unwrap();
    std::fs::rename(&top, sub.join("top.add-cow")).unwrap();
    std::fs::rename(d.join("top.img"), sub.join("top.img")).unwrap();
    std::os::unix::fs::symlink("../mid.add-cow", sub.join("mid-link")).unwrap();
    let (msg, _) = refused(&sub.join("top.add-cow"), true);
    assert!(msg.contains("mid-link"), "{msg}");
    std::fs::remove_file(&outer).unwrap();
}

fn qemu_img(dir: &Path, args: &[&str]) {
    ok(dir, "qemu-img", args);
}

#[test]
fn qcow2_data_file_and_backing_are_confined() {
    let d = tmpdir("qcow2");
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let data = d.join("data.raw");
    let data_opt = format!("data_file={}", data.display());
    qemu_img(
        &sub,
        &[
            "create", "-q", "-f", "qcow2", "-o", &data_opt, "t.qcow2", "1M",
        ],
    );
    qemu_img(&sub, &["check", "-q", "t.qcow2"]);
    let t = sub.join("t.qcow2");
    let (msg, errno) = refused(&t, true);
    assert_eq!(errno, libc::EACCES);
    assert!(msg.contains(data.to_str().unwrap()), "{msg}");
    Image::open(&t, &opts(false, true)).unwrap();
    qemu_img(
        &sub,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=in.raw",
            "i.qcow2",
            "1M",
        ],
    );
    Image::open(sub.join("i.qcow2"), &opts(true, true)).unwrap();
    // A backing file named with `..`.
    std::fs::write(d.join("base.raw"), vec![0u8; 1 << 20]).unwrap();
    qemu_img(
        &sub,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "../base.raw",
            "-F",
            "raw",
            "b.qcow2",
            "1M",
        ],
    );
    qemu_img(&sub, &["check", "-q", "b.qcow2"]);
    let (msg, _) = refused(&sub.join("b.qcow2"), true);
    assert!(msg.contains("../base.raw"), "{msg}");
    Image::open(sub.join("b.qcow2"), &opts(false, true)).unwrap();
}

/// Records every path opened through it.
struct Recording {
    opened: Mutex<Vec<PathBuf>>,
}

impl Storage for Recording {
    fn open(&self, path: &Path, access: Access) -> cowblk::Result<Arc<dyn BlockFile>> {
        self.opened.lock().unwrap().push(path.to_path_buf());
        PosixStorage.open(path, access)
    }
    fn create(&self, path: &Path, truncate: bool) -> cowblk::Result<Arc<dyn BlockFile>> {
        PosixStorage.create(path, truncate)
    }
    fn exists(&self, path: &Path) -> bool {
        PosixStorage.exists(path)
    }
    fn remove(&self, path: &Path) -> cowblk::Result<()> {
        PosixStorage.remove(path)
    }
    fn canonical(&self, path: &Path) -> PathBuf {
        PosixStorage.canonical(path)
    }
}

fn metadata_only(chain: bool) -> OpenOptions {
    OpenOptions {
        read_only: true,
        metadata_only: true,
        no_backing: !chain,
        ..Default::default()
    }
}

#[test]
fn metadata_only_opens_nothing_the_image_names() {
    let d = tmpdir("metaonly");
    let (top, mid) = chain(&d);
    let rec = Arc::new(Recording {
        opened: Mutex::new(Vec::new()),
    });
    let img = Image::open_in(rec.clone(), &top, &metadata_only(false)).unwrap();
    let info = img.info().unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("mid.add-cow"));
    assert!(info.data_file.unwrap().ends_with("top.img"));
    assert_eq!(*rec.opened.lock().unwrap(), vec![top.clone()]);
    // The whole chain: each layer's own file (a raw layer is its own
    // data), no add-cow image file.
    rec.opened.lock().unwrap().clear();
    Image::open_in(rec.clone(), &top, &metadata_only(true)).unwrap();
    let base = d.join("base.raw");
    assert_eq!(
        *rec.opened.lock().unwrap(),
        vec![top.clone(), mid.clone(), base]
    );
    // Reads of stored data fail, naming the file, rather than invent zeros.
    let w = addcow_naming(&d, "w.add-cow", "w.add-cow.img");
    let img = Image::open(&w, &metadata_only(false)).unwrap();
    let e = img.read(&mut [0u8; 512], 0).unwrap_err();
    assert!(
        e.to_string().contains("w.add-cow.img' was not opened"),
        "{e}"
    );
    // Writable metadata-only opens make no sense.
    let e = Image::open(
        &top,
        &OpenOptions {
            metadata_only: true,
            ..Default::default()
        },
    )
    .err()
    .expect("read-write metadata-only open");
    assert!(e.to_string().contains("read-only"), "{e}");
}

#[test]
fn info_works_when_named_files_are_missing_or_fifos() {
    let d = tmpdir("infomissing");
    let p = addcow_naming(&d, "a.add-cow", "gone.img");
    let img = Image::open(&p, &metadata_only(false)).unwrap();
    let i = img.info().unwrap();
    assert_eq!(i.virtual_size, 65536);
    assert_eq!(i.allocated_bytes, 8192);
    assert!(i.data_file.unwrap().ends_with("gone.img"));
    // A fifo is never opened, so info returns.
    let fifo = std::ffi::CString::new(d.join("f").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    set_name(&p, IMAGE_FIELD, "f");
    let p2 = p.clone();
    let i = returns("info on an add-cow naming a fifo", move || {
        Image::open(&p2, &metadata_only(false)).and_then(|i| i.info())
    })
    .unwrap();
    assert_eq!(i.allocated_bytes, 8192);
    // Confined and metadata-only: names are not checked, as nothing opens.
    let o = OpenOptions {
        confined: true,
        ..metadata_only(false)
    };
    Image::open(&p, &o).unwrap();
}

// ---- the tools ----

#[test]
fn cli_info_on_a_missing_or_fifo_image_file_as_qemu_img_on_a_missing_data_file() {
    let d = tmpdir("cliinfo");
    // QEMU 10's qemu-img info: a qcow2 whose data file is gone still shows.
    qemu_img(
        &d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=d.raw",
            "t.qcow2",
            "1M",
        ],
    );
    qemu_img(&d, &["check", "-q", "t.qcow2"]);
    std::fs::remove_file(d.join("d.raw")).unwrap();
    let q = ok(&d, "qemu-img", &["info", "t.qcow2"]);
    let c = ok(&d, COWBLK_IMG, &["info", "t.qcow2"]);
    for o in [&q.stdout, &c.stdout] {
        assert!(o.contains("data file: d.raw"), "{o}");
        assert!(o.contains("virtual size: 1 MiB (1048576 bytes)"), "{o}");
    }
    let c = ok(&d, COWBLK_IMG, &["info", "--output=json", "t.qcow2"]);
    assert!(
        c.stdout.contains("\"data-file\": \"d.raw\""),
        "{}",
        c.stdout
    );
    // The add-cow analogue: image file missing, then a fifo.
    let p = addcow_naming(&d, "a.add-cow", "gone.img");
    let name = p.file_name().unwrap().to_str().unwrap().to_owned();
    let c = ok(&d, COWBLK_IMG, &["info", &name]);
    assert!(c.stdout.contains("image file: gone.img"), "{}", c.stdout);
    let fifo = std::ffi::CString::new(d.join("f").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    set_name(&p, IMAGE_FIELD, "f");
    let dd = d.clone();
    let c = returns("cowblk-img info on a fifo image file", move || {
        run(&dd, COWBLK_IMG, &["info", "--output=json", "a.add-cow"])
    });
    assert_eq!(c.code, 0, "{c:?}");
    assert!(c.stdout.contains("\"virtual-size\": 65536"), "{}", c.stdout);
    // --backing-chain over a layer whose image file is missing.
    set_name(&p, IMAGE_FIELD, "gone.img");
    let mut o = CreateOptions::new();
    o.set("backing_file", "a.add-cow")
        .set("backing_fmt", "add-cow")
        .set("image_file", "top.img");
    Image::create(d.join("top.add-cow"), "add-cow", &o).unwrap_err();
    // (creating on a backing whose data is missing fails; name it by hand)
    std::fs::write(d.join("gone.img"), vec![0u8; 65536]).unwrap();
    Image::create(d.join("top.add-cow"), "add-cow", &o).unwrap();
    std::fs::remove_file(d.join("gone.img")).unwrap();
    let c = ok(&d, COWBLK_IMG, &["info", "--backing-chain", "top.add-cow"]);
    assert_eq!(c.stdout.matches("image: ").count(), 2, "{}", c.stdout);
    assert!(c.stdout.contains("image file: gone.img"), "{}", c.stdout);
}

#[test]
fn cli_confined_refuses_and_names_the_file() {
    let d = tmpdir("cliconf");
    addcow_naming(&d, "a.add-cow", "/etc/passwd");
    let cases: Vec<Vec<&str>> = vec![
        vec!["map", "--confined", "a.add-cow"],
        vec!["--confined", "check", "a.add-cow"],
        vec!["compare", "--confined", "a.add-cow", "a.add-cow"],
        vec!["convert", "--confined", "-O", "raw", "a.add-cow", "out.raw"],
    ];
    for args in &cases {
        let args: Vec<&str> = if args[0] == "--confined" {
            // The flag goes after the command name.
            vec![args[1], args[0], args[2]]
        } else {
            args.clone()
        };
        let c = run(&d, COWBLK_IMG, &args);
        assert_ne!(c.code, 0, "{args:?}: {c:?}");
        assert!(c.stderr.contains("'/etc/passwd'"), "{args:?}: {}", c.stderr);
        assert!(
            c.stderr.contains("outside the image's directory"),
            "{}",
            c.stderr
        );
    }
    assert!(!d.join("out.raw").exists());
    let c = run(
        &d,
        COWBLK_IO,
        &["--confined", "-r", "-c", "read 0 512", "a.add-cow"],
    );
    assert_ne!(c.code, 0, "{c:?}");
    assert!(c.stderr.contains("'/etc/passwd'"), "{}", c.stderr);
    // cowblk-io's own `open` command inherits the flag.
    let c = run(&d, COWBLK_IO, &["--confined", "-c", "open -r a.add-cow"]);
    assert_ne!(c.code, 0, "{c:?}");
    assert!(c.stderr.contains("'/etc/passwd'"), "{}", c.stderr);
    // Without the flag the tools follow the name, as qemu-img does.
    let c = ok(&d, COWBLK_IMG, &["map", "--output=json", "a.add-cow"]);
    assert!(c.stdout.contains("\"data\": true"), "{}", c.stdout);
    // A confined image that names only files beside it works.
    let dd = tmpdir("cliconf-ok");
    addcow_naming(&dd, "b.add-cow", "b.add-cow.img");
    let c = ok(
        &dd,
        COWBLK_IO,
        &["--confined", "-c", "read -P 0x5a 0 8k", "b.add-cow"],
    );
    assert!(c.stdout.contains("read 8192/8192"), "{}", c.stdout);
    ok(&dd, COWBLK_IMG, &["check", "--confined", "b.add-cow"]);
    // info --confined checks nothing it does not open; with the chain, the
    // backing files it opens are held to the directory.
    let sub = dd.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut o = CreateOptions::new();
    o.set("backing_file", "../b.add-cow")
        .set("backing_fmt", "add-cow")
        .set("image_file", "t.img");
    Image::create(sub.join("t.add-cow"), "add-cow", &o).unwrap();
    ok(&sub, COWBLK_IMG, &["info", "--confined", "t.add-cow"]);
    ok(&sub, COWBLK_IMG, &["info", "--backing-chain", "t.add-cow"]);
    let c = run(
        &sub,
        COWBLK_IMG,
        &["info", "--backing-chain", "--confined", "t.add-cow"],
    );
    assert_eq!(c.code, 1, "{c:?}");
    assert!(c.stderr.contains("'../b.add-cow'"), "{}", c.stderr);
    assert!(c.stdout.is_empty(), "{}", c.stdout);
}

#[test]
fn commit_reopens_the_backing_file_under_the_same_confinement() {
    let d = tmpdir("commit");
    std::fs::write(d.join("base.raw"), vec![3u8; 65536]).unwrap();
    let top = d.join("top.add-cow");
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "top.img");
    Image::create(&top, "add-cow", &o).unwrap();
    // Confined commit of a chain that stays inside works.
    let img = Image::open(&top, &opts(true, false)).unwrap();
    img.write(&[8u8; 4096], 0).unwrap();
    cowblk::ops::commit(&img, true, &mut |_, _| {}).unwrap();
    assert_eq!(
        std::fs::read(d.join("base.raw")).unwrap()[..4096],
        [8; 4096]
    );
    // After the open, the backing name comes to lead outside: the commit's
    // read-write reopen of the backing file is refused, nothing written.
    img.write(&[9u8; 4096], 0).unwrap();
    let outer = d.parent().unwrap().join(format!(
        "{}-outer.raw",
        d.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&outer, vec![1u8; 65536]).unwrap();
    std::fs::rename(d.join("base.raw"), d.join("base.moved")).unwrap();
    std::os::unix::fs::symlink(&outer, d.join("base.raw")).unwrap();
    let e = cowblk::ops::commit(&img, true, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert!(e.to_string().contains("base.raw"), "{e}");
    assert_eq!(std::fs::read(&outer).unwrap(), vec![1u8; 65536]);
    std::fs::remove_file(&outer).unwrap();
}
