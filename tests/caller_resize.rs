//! Caller-backing handles (the QEMU glue's mode) on qcow2:
//! `cowblk_truncate_over` grows with the host's backing length, and a write
//! to an image smaller than a cluster asks for no bytes past its end.
//! QEMU 10's qemu-img checks every image written.

mod common;

use common::tmpdir;
use cowblk::ffi::*;
use std::ffi::CString;
use std::path::Path;
use std::process::Command;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn open_caller(path: &Path) -> *mut cowblk_image {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let f = CString::new("qcow2").unwrap();
    let mut img = std::ptr::null_mut();
    let flags = COWBLK_OPEN_CALLER_BACKING | COWBLK_OPEN_NO_LOCK;
    let r = unsafe { cowblk_open(p.as_ptr(), f.as_ptr(), flags, 0, &mut img) };
    assert_eq!(r, 0, "open {path:?}");
    img
}

fn close(mut img: *mut cowblk_image) {
    assert_eq!(unsafe { cowblk_close(&mut img) }, 0);
}

/// qemu-img map's allocated ranges of `path` (json), as (start, length, zero).
fn allocated(path: &Path) -> Vec<(u64, u64, bool)> {
    let out = qemu_img(&["map", "--output=json", path.to_str().unwrap()]);
    let mut v = Vec::new();
    for line in out.lines() {
        if !line.contains("\"present\": true") {
            continue;
        }
        let num = |key: &str| -> u64 {
            let i = line.find(key).unwrap() + key.len();
            let rest = line[i..].trim_start_matches([':', ' ']);
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        v.push((
            num("\"start\""),
            num("\"length\""),
            line.contains("\"zero\": true"),
        ));
    }
    v
}

#[test]
fn growing_without_backing_leaves_new_clusters_unallocated() {
    let d = tmpdir("caller-resize-none");
    for compat in ["0.10", "1.1"] {
        let p = d.join(format!("n-{compat}.qcow2"));
        let o = format!("compat={compat}");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            p.to_str().unwrap(),
            "1M",
        ]);
        let img = open_caller(&p);
        // plain cowblk_truncate must assume an endless backing file here
        assert_eq!(unsafe { cowblk_truncate_over(img, 1 << 30, false, 0) }, 0);
        let mut len = 0;
        assert_eq!(unsafe { cowblk_get_length(img, &mut len) }, 0);
        assert_eq!(len, 1 << 30);
        close(img);
        qemu_img(&["check", p.to_str().unwrap()]);
        assert!(allocated(&p).is_empty(), "{compat}: {:?}", allocated(&p));
        assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    }
}

#[test]
fn growing_over_a_shorter_backing_file_zeroes_only_what_it_covers() {
    let d = tmpdir("caller-resize-over");
    let p = d.join("o.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]);
    let img = open_caller(&p);
    // the host's backing file is 3 MiB long: [1M, 3M) must read zeros
    assert_eq!(
        unsafe { cowblk_truncate_over(img, 8 << 20, true, 3 << 20) },
        0
    );
    close(img);
    qemu_img(&["check", p.to_str().unwrap()]);
    let a = allocated(&p);
    assert_eq!(a, vec![(1 << 20, 2 << 20, true)], "{a:?}");
}

#[test]
fn a_write_to_an_image_smaller_than_a_cluster_reads_nothing_past_its_end() {
    let d = tmpdir("caller-small");
    let p = d.join("s.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "512"]);
    let img = open_caller(&p);
    let buf = [0xaau8; 512];
    let v = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // the cluster runs 64 KiB past the end; nothing there may be asked for
    assert_eq!(unsafe { cowblk_pwritev(img, 0, &v, 1) }, 0);
    close(img);
    qemu_img(&["check", p.to_str().unwrap()]);
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "read -P 0xaa 0 512",
            p.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 512/512"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
}
