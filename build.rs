//! Generates the C header from src/ffi/ into OUT_DIR/cowblk.h (the
//! committed include/cowblk.h must equal it: tests/header.rs), and gives the
//! shared library its soname.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("version");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("version");
    let patch = env::var("CARGO_PKG_VERSION_PATCH").expect("version");

    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcowblk.so.{major}");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");

    let num = |s: &str| s.parse::<u64>().expect("numeric version");
    let number = num(&major) * 10000 + num(&minor) * 100 + num(&patch);
    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("reading cbindgen.toml");
    config.after_includes = Some(format!(
        "\n#define COWBLK_VERSION_MAJOR {major}\n\
         #define COWBLK_VERSION_MINOR {minor}\n\
         #define COWBLK_VERSION_PATCH {patch}\n\
         /* MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons. */\n\
         #define COWBLK_VERSION_NUMBER {number}"
    ));
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("generating the C header from src/ffi")
        .write_to_file(out.join("cowblk.h"));
}
