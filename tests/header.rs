//! The committed C header must be what build.rs generates from src/ffi/.
//! `make header` (COWBLK_BLESS_HEADER=1) rewrites it instead of failing.

use std::path::Path;

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/cowblk.h"));

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/cowblk.h")
}

#[test]
fn committed_header_is_current() {
    let path = committed_path();
    if std::env::var_os("COWBLK_BLESS_HEADER").is_some() {
        std::fs::write(&path, GENERATED).expect("writing include/cowblk.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == GENERATED,
        "include/cowblk.h is stale or missing: run `make header` and commit it"
    );
}

#[test]
fn header_version_macros_match_cargo_toml() {
    for (name, val) in [
        ("MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        let line = format!("#define COWBLK_VERSION_{name} {val}\n");
        assert!(GENERATED.contains(&line), "header lacks `{}`", line.trim());
    }
    let n = |s: &str| s.parse::<u64>().unwrap();
    let number = n(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + n(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + n(env!("CARGO_PKG_VERSION_PATCH"));
    assert!(GENERATED.contains(&format!("#define COWBLK_VERSION_NUMBER {number}\n")));
    let abi = format!(
        "#define COWBLK_ABI_VERSION {}\n",
        cowblk::ffi::COWBLK_ABI_VERSION
    );
    assert!(GENERATED.contains(&abi));
}

#[test]
fn every_exported_function_has_the_prefix_and_a_comment() {
    let mut prev = "";
    let mut n = 0;
    for line in GENERATED.lines() {
        if line.contains('(') && line.ends_with(';')
            || line.ends_with(',') && !line.starts_with(' ')
        {
            if let Some(name) = line
                .split('(')
                .next()
                .and_then(|h| h.split_whitespace().last())
                .map(|s| s.trim_start_matches('*'))
            {
                if !line.starts_with(' ') && !line.starts_with('#') && !line.starts_with('/') {
                    assert!(name.starts_with("cowblk_"), "unprefixed export: {line}");
                    assert!(prev.trim_end().ends_with("*/"), "no comment above {name}");
                    n += 1;
                }
            }
        }
        prev = line;
    }
    assert!(n >= 25, "found only {n} functions in the header");
}
