//! The size grammar (`format::options::cvtnum`) against QEMU 10's own:
//! qemu-io parses each input as a read offset, and its answer (the offset
//! it read at, "argument too large", or "non-numeric argument") must be
//! ours for every input, hand-picked and random.

mod common;

use cowblk::format::options::{cvtnum, SizeError};
use std::process::Command;

/// The null-co image qemu-io reads from: big enough that every offset below
/// it is echoed back, and reads past it fail (still a parsed number).
const NULL_SIZE: u64 = 1 << 62;

#[derive(Debug, PartialEq)]
enum Answer {
    /// Read at this offset.
    At(u64),
    /// Parsed, but at or past the end of the null image.
    PastEnd,
    TooLarge,
    Invalid,
}

fn qemu_answers(inputs: &[String]) -> Vec<Answer> {
    let mut cmd = Command::new("qemu-io");
    cmd.arg("--image-opts")
        .arg(format!("driver=null-co,size={NULL_SIZE}"));
    for s in inputs {
        cmd.arg("-c").arg(format!("read {s} 1"));
    }
    let out = cmd.output().expect("qemu-io (QEMU 10) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut answers = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("read 1/1 bytes at offset ") {
            answers.push(Answer::At(rest.trim().parse().unwrap()));
        } else if line.starts_with("read failed: Input/output error") {
            answers.push(Answer::PastEnd);
        } else if line.starts_with("Parsing error: argument too large") {
            answers.push(Answer::TooLarge);
        } else if line.starts_with("Parsing error: non-numeric argument") {
            answers.push(Answer::Invalid);
        }
    }
    assert_eq!(answers.len(), inputs.len(), "qemu-io said:\n{text}");
    answers
}

fn ours(s: &str) -> Answer {
    match cvtnum(s) {
        Ok(v) if v < NULL_SIZE => Answer::At(v),
        Ok(_) => Answer::PastEnd,
        Err(SizeError::TooLarge) => Answer::TooLarge,
        Err(SizeError::Invalid) => Answer::Invalid,
    }
}

#[test]
fn every_size_parses_as_qemu_parses_it() {
    let mut inputs: Vec<String> = [
        "0",
        "1",
        "512",
        "+5",
        "010",
        "000000000001",
        "0x10",
        "0X1f",
        "+0x10",
        "0x",
        "00x10",
        "0x1k",
        "0x1.5",
        "0xg",
        "0x7fffffffffffffff",
        "0x8000000000000000",
        "1.5k",
        ".5k",
        "1.k",
        "1.",
        "1.b",
        "1.0",
        "0.5",
        "1.5b",
        ".",
        "k",
        ".k",
        "0.1k",
        "1.001k",
        "0.0005k",
        "0.99999999999999999999k",
        "1e3",
        "1.e3",
        "1.5e3",
        "1.5ek",
        "1.5e",
        "1e",
        "0e",
        "7E",
        "7.99E",
        "8E",
        "16E",
        "8191P",
        "8192P",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999",
        "1kB",
        "1KiB",
        "abc",
        "inf",
        "nan",
        "1_000",
        "5x",
        "1.5.3",
        "1.k5",
        "3G",
        "3g",
        "2t",
        "1m",
        "64K",
        "0.25M",
        "1.75G",
        "5.000000000000000000001",
        "0.000000000000000000001E",
        "1e+3",
        "1.e-3",
        "1.5e+k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Random strings over the grammar's alphabet find the corners a list
    // forgets (seeded, so a failure replays).
    let alphabet = b"0123456789012345.xXkKmMgGtTpPeEbB+";
    let mut rng = common::Rng::new(1);
    for _ in 0..600 {
        let len = 1 + rng.below(7) as usize;
        let mut s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
            .collect();
        if s.starts_with('-') {
            s.insert(0, '0');
        }
        inputs.push(s);
    }
    let theirs = qemu_answers(&inputs);
    let mut wrong = Vec::new();
    for (s, q) in inputs.iter().zip(&theirs) {
        let o = ours(s);
        if &o != q {
            wrong.push(format!("{s:?}: qemu-io {q:?}, ours {o:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        inputs.len(),
        wrong.join("\n")
    );
}
