//! The tools' options are declared once (src/bin/cowblk-img/table.rs,
//! src/bin/cowblk-io/table.rs). This test keeps everything made from them
//! current: the man pages in man/ and the generated option lists in
//! docs/CLI.md must be what the tables give (`make man`, which sets
//! COWBLK_BLESS_DOCS=1, rewrites them instead of failing), the tools'
//! --help and `help CMD` must print the generated texts, and the man pages
//! must render without a warning.

mod cli_support;

#[path = "../src/bin/shared/spec.rs"]
mod spec;

#[path = "../src/bin/shared/doc.rs"]
mod doc;

#[path = "../src/bin/cowblk-img/table.rs"]
mod img_table;

#[path = "../src/bin/cowblk-io/table.rs"]
mod io_table;

use cli_support::*;
use spec::Tool;
use std::path::{Path, PathBuf};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn bless() -> bool {
    std::env::var_os("COWBLK_BLESS_DOCS").is_some()
}

fn tools() -> [&'static Tool; 2] {
    [&img_table::TOOL, &io_table::TOOL]
}

#[test]
fn man_pages_are_current() {
    for t in tools() {
        let path = root().join(format!("man/{}.1", t.name));
        let want = doc::man(t, VERSION);
        if bless() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale or missing: run `make man` and commit it",
            path.display()
        );
    }
}

/// The generated part of docs/CLI.md for `tool` sits between these lines.
fn markers(tool: &str) -> (String, String) {
    (
        format!("<!-- {tool} options: generated from its table by `make man`; do not edit -->\n"),
        format!("<!-- end of {tool} options -->\n"),
    )
}

#[test]
fn cli_md_option_lists_are_current() {
    let path = root().join("docs/CLI.md");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let mut stale = Vec::new();
    for t in tools() {
        let (begin, end) = markers(t.name);
        let b = text
            .find(&begin)
            .unwrap_or_else(|| panic!("docs/CLI.md lacks the line {begin:?}"))
            + begin.len();
        let e = b + text[b..]
            .find(&end)
            .unwrap_or_else(|| panic!("docs/CLI.md lacks the line {end:?}"));
        let want = doc::markdown(t);
        if text[b..e] != want {
            stale.push(t.name);
            text.replace_range(b..e, &want);
        }
    }
    if bless() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "docs/CLI.md's option lists of {stale:?} are stale: run `make man` and commit it"
    );
}

#[test]
fn man_pages_render_without_warnings() {
    for t in tools() {
        let page = doc::man(t, VERSION);
        let dir = tmpdir("cli-docs");
        let f = dir.join(format!("{}.1", t.name));
        std::fs::write(&f, &page).unwrap();
        let o = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&f)
            .output()
            .expect("groff is needed to check the man pages (apt-get install groff)");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && err.is_empty(), "{}: {err}", t.name);
        let _ = std::fs::remove_dir_all(&dir);
        for c in t.cmds {
            assert!(page.contains(&format!(".SS {}\n", c.name)));
        }
    }
}

#[test]
fn each_option_is_declared_once_per_command() {
    for t in tools() {
        for c in t.cmds {
            for (i, o) in c.opts.iter().enumerate() {
                assert!(
                    o.short != '\0' || !o.long.is_empty(),
                    "{} {}: an option with no name",
                    t.name,
                    c.name
                );
                assert!(
                    !o.help.is_empty(),
                    "{} {}: {} has no help",
                    t.name,
                    c.name,
                    o.spelling()
                );
                for p in &c.opts[..i] {
                    assert!(
                        (o.short == '\0' || o.short != p.short)
                            && (o.long.is_empty() || o.long != p.long),
                        "{} {}: {} declared twice",
                        t.name,
                        c.name,
                        o.spelling()
                    );
                }
            }
        }
    }
}

/// cowblk-io's synopses are qemu-io's words, written out: each must name
/// every option the command declares (but the ignored ones qemu-io does
/// not show either).
#[test]
fn io_synopses_name_their_options() {
    for c in io_table::COMMANDS {
        for o in c.opts {
            let named = c.args.contains(&format!("-{}", o.short))
                || c.args
                    .split(['[', ']', ' ', '|'])
                    .any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains(o.short));
            assert!(
                named || o.help.starts_with("ignored"),
                "io {}: the synopsis {:?} lacks -{}",
                c.name,
                c.args,
                o.short
            );
        }
    }
}

#[test]
fn the_tools_print_the_generated_help() {
    let dir = tmpdir("cli-docs-help");
    let o = ok(&dir, COWBLK_IMG, &["--help"]);
    assert_eq!(o.stdout, doc::img_help(&img_table::TOOL));
    for c in img_table::COMMANDS {
        // Every command in the table runs (its --help, from the table).
        let o = ok(&dir, COWBLK_IMG, &[c.name, "--help"]);
        assert_eq!(
            o.stdout,
            doc::img_cmd_help(&img_table::TOOL, c),
            "{}",
            c.name
        );
    }
    let o = ok(&dir, COWBLK_IO, &["--help"]);
    assert_eq!(o.stdout, doc::io_usage(&io_table::TOOL));
    let o = ok(&dir, COWBLK_IO, &["-c", "help"]);
    let list: String = io_table::COMMANDS
        .iter()
        .map(|c| doc::io_cmd_line(c) + "\n")
        .collect();
    assert!(o.stdout.starts_with(&list), "{}", o.stdout);
    for c in io_table::COMMANDS {
        let o = ok(&dir, COWBLK_IO, &["-c", &format!("help {}", c.name)]);
        assert_eq!(o.stdout, doc::io_cmd_help(c), "{}", c.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
