//! `convert -l` / `-s` pick the same internal snapshot as QEMU 10's
//! qemu-img on an image whose snapshot names collide with ids: id-or-name
//! for a bare string, by id or by name (or both) for `snapshot.id=` and
//! `snapshot.name=`, and the same failures.

mod cli_support;

use cli_support::*;

#[test]
fn snapshot_selectors_match_qemu_img() {
    let d = tmpdir("snap-select");
    let q = |args: &[&str]| ok(&d, "qemu-img", args);
    let io = |cmd: &str| ok(&d, "qemu-io", &["-f", "qcow2", "-c", cmd, "s.qcow2"]);
    q(&["create", "-q", "-f", "qcow2", "s.qcow2", "1M"]);
    // Snapshot id 1 is named "2", id 2 is named "1", id 3 is named "x";
    // each holds a different first cluster, and so does the active state.
    io("write -P 0xa1 0 64k");
    q(&["snapshot", "-c", "2", "s.qcow2"]);
    io("write -P 0xb2 0 64k");
    q(&["snapshot", "-c", "1", "s.qcow2"]);
    io("write -P 0xc3 0 64k");
    q(&["snapshot", "-c", "x", "s.qcow2"]);
    io("write -P 0xd4 0 64k");

    let mut found = 0;
    for sel in [
        &["-l", "1"][..],
        &["-l", "2"],
        &["-l", "x"],
        &["-l", "3"],
        &["-l", "snapshot.id=1"],
        &["-l", "snapshot.id=2"],
        &["-l", "snapshot.name=1"],
        &["-l", "snapshot.name=2"],
        &["-l", "snapshot.name=x"],
        &["-l", "snapshot.id=3"],
        &["-l", "snapshot.id=3,snapshot.name=x"],
        &["-l", "snapshot.id=1,snapshot.name=2"],
        &["-l", "snapshot.name=2,snapshot.id=1"],
        // No snapshot has both.
        &["-l", "snapshot.id=1,snapshot.name=1"],
        &["-l", "snapshot.name=4"],
        &["-l", "snapshot.id=x"],
        &["-l", "4"],
        // Not a "snapshot." list: a bare string, even with '='.
        &["-l", "a=b"],
        // ",," is a comma in a value; a trailing comma ends the list.
        &["-l", "snapshot.id=1,"],
        &["-l", "snapshot.name=a,,b"],
        // A bare key is KEY=on (deprecated in QEMU, with a warning).
        &["-l", "snapshot.id"],
        &["-l", "snapshot.name"],
        // Malformed lists.
        &["-l", "snapshot.foo=1"],
        &["-l", "snapshot.name=a,b"],
        &["-l", "snapshot.id=1,snapshot.foo"],
        &["-l", "snapshot."],
        // QEMU 10 dropped convert -s.
        &["-s", "1"],
    ] {
        let mut qa = vec!["convert", "-O", "raw"];
        qa.extend_from_slice(sel);
        let mut ca = qa.clone();
        qa.extend(["s.qcow2", "q.raw"]);
        ca.extend(["s.qcow2", "c.raw"]);
        let _ = std::fs::remove_file(d.join("q.raw"));
        let _ = std::fs::remove_file(d.join("c.raw"));
        let qo = run(&d, "qemu-img", &qa);
        let co = run(&d, COWBLK_IMG, &ca);
        assert_eq!(
            co.code == 0,
            qo.code == 0,
            "{sel:?}: qemu-img {qo:?}, cowblk-img {co:?}"
        );
        if qo.code == 0 {
            found += 1;
            let want = read(&d, "q.raw");
            let got = read(&d, "c.raw");
            assert_eq!(want.len(), 1 << 20, "{sel:?}");
            same_bytes(&got, &want, &format!("{sel:?}"));
        } else {
            // The same messages, in the tool's name.
            assert_eq!(
                co.stderr,
                qo.stderr.replace("qemu-img", "cowblk-img"),
                "{sel:?}"
            );
        }
    }
    // 14 selectors matched; the collisions really were told apart.
    assert_eq!(found, 14);
    let pick = |sel: &str| {
        ok(
            &d,
            COWBLK_IMG,
            &["convert", "-O", "raw", "-l", sel, "s.qcow2", "p.raw"],
        );
        read(&d, "p.raw")[0]
    };
    assert_eq!(pick("snapshot.name=2"), 0xa1);
    assert_eq!(pick("snapshot.id=2"), 0xb2);
    assert_eq!(pick("2"), 0xb2);
    assert_eq!(pick("snapshot.name=1"), 0xb2);
    assert_eq!(pick("1"), 0xa1);
    let _ = std::fs::remove_dir_all(&d);
}
