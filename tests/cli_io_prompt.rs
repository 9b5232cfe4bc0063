//! cowblk-io reading commands from standard input: a `cowblk-io> ` prompt
//! before each command when stdin is a terminal (run under script(1), which
//! gives it a pseudo-terminal), none when it is a pipe, as qemu-io does.

mod cli_support;

use cli_support::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn feed(cmd: &mut Command, input: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prompt_only_on_a_terminal() {
    let d = tmpdir("io-prompt");
    make_base(&d, "base.raw", "4M");
    let input = "read -P 0xab 0 64k\nquit\n";
    let piped = feed(
        Command::new(COWBLK_IO)
            .args(["-r", "-f", "raw", "base.raw"])
            .current_dir(&d),
        input,
    );
    assert!(!piped.contains("cowblk-io> "), "{piped:?}");
    assert!(piped.starts_with("read 65536/65536 bytes at offset 0\n"));
    let tty = feed(
        Command::new("script")
            .args(["-qec"])
            .arg(format!("{COWBLK_IO} -r -f raw base.raw"))
            .arg("/dev/null")
            .current_dir(&d),
        input,
    );
    // One prompt before each of the two commands, the read's report after
    // the first.
    assert_eq!(tty.matches("cowblk-io> ").count(), 2, "{tty:?}");
    let first = tty.find("cowblk-io> ").unwrap();
    let report = tty
        .find("read 65536/65536 bytes at offset 0")
        .expect("no report");
    assert!(first < report, "{tty:?}");
    let _ = std::fs::remove_dir_all(&d);
}
