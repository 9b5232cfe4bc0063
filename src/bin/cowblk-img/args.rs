//! A command's failure, its command line read through the option table,
//! and the argument forms several commands share (numbers, --output,
//! snapshot selectors).

use crate::shared::getopt::Getopt;
use crate::shared::{describe, doc};
use crate::{open, table};
use cowblk::format;
use cowblk::{Error, SnapshotRef};
use std::ffi::OsString;

/// A command's failure: what to print and the exit code.
pub struct Fail {
    pub msg: String,
    pub code: i32,
    /// Point at `cowblk-img CMD --help` (bad usage).
    pub usage: Option<&'static str>,
    /// The command whose name prefixes the message instead of the tool's
    /// alone, as getopt's messages are ("cowblk-img info: ...").
    pub getopt: Option<&'static str>,
}

pub type Res = Result<i32, Fail>;

pub fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        code: 1,
        usage: None,
        getopt: None,
    }
}

pub fn usage_err(cmd: &'static str, msg: impl Into<String>) -> Fail {
    Fail {
        msg: msg.into(),
        code: 1,
        usage: Some(cmd),
        getopt: None,
    }
}

pub fn lib(e: Error) -> Fail {
    fail(describe(&e))
}

/// A command's options as getopt_long reads them, from its table entry.
/// `-h`/`--help` prints the command's help and exits; `--confined` is
/// taken here for every command that declares it.
pub struct Parser {
    g: Getopt,
    cmd: &'static str,
    /// The words as given (not always UTF-8).
    orig: Vec<OsString>,
}

impl Parser {
    pub fn new(cmd: &'static str, args: Vec<OsString>) -> Self {
        let spec = table::TOOL
            .cmd(cmd)
            .unwrap_or_else(|| panic!("command {cmd} is not in the table"));
        let words = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Parser {
            g: Getopt::new(words, spec.opts),
            cmd,
            orig: args,
        }
    }

    /// The next option: its short name ("f") or, without one, its long
    /// name ("output"), and its value ("" for a flag).
    pub fn next(&mut self) -> Result<Option<(String, String)>, Fail> {
        loop {
            let (o, v) = match self.g.next_opt() {
                Ok(Some(x)) => x,
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(Fail {
                        getopt: Some(self.cmd),
                        ..usage_err(self.cmd, e.to_string())
                    })
                }
            };
            match o.long {
                "help" => {
                    let spec = table::TOOL.cmd(self.cmd).expect("checked in new");
                    print!("{}", doc::img_cmd_help(&table::TOOL, spec));
                    std::process::exit(0);
                }
                "confined" => open::set_confined(),
                _ if o.short != '\0' => return Ok(Some((o.short.to_string(), v))),
                long => return Ok(Some((long.to_string(), v))),
            }
        }
    }

    /// The words that are not options, in order.
    pub fn files(self) -> Vec<String> {
        self.g.positional()
    }

    /// The words that are not options, as given (values may be bytes).
    pub fn files_os(mut self) -> Vec<OsString> {
        let at = self.g.positional_indices();
        at.into_iter()
            .map(|i| std::mem::take(&mut self.orig[i]))
            .collect()
    }
}

pub fn one_file(files: Vec<String>, cmd: &'static str) -> Result<String, Fail> {
    let mut files = files;
    if files.len() != 1 {
        return Err(usage_err(cmd, "Expecting one image file name"));
    }
    Ok(files.remove(0))
}

#[derive(Clone, Copy, PartialEq)]
pub enum Output {
    Human,
    Json,
}

pub fn output_arg(s: &str, cmd: &'static str) -> Result<Output, Fail> {
    match s {
        "human" => Ok(Output::Human),
        "json" => Ok(Output::Json),
        _ => Err(usage_err(
            cmd,
            format!("--output expects 'human' or 'json' not '{s}'"),
        )),
    }
}

/// A number argument in QEMU's grammar, bounded, with qemu-img's messages
/// ("Invalid image size specified: 'x'.").
pub fn cvtnum(name: &str, s: &str, min: u64, max: u64) -> Result<u64, Fail> {
    // A negative decimal integer is out of range for qemu-img (its parser
    // reads it as a huge number), any other negative form invalid.
    let t = s.trim_start();
    let negative_int =
        t.len() > 1 && t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit());
    if negative_int {
        return Err(fail(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        )));
    }
    match format::options::cvtnum(s) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Err(format::options::SizeError::Invalid) => {
            Err(fail(format!("Invalid {name} specified: '{s}'.")))
        }
        _ => Err(fail(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))),
    }
}

/// `cvtnum` for a 64-bit offset or size (0 to 2^63 - 1).
pub fn size_arg(name: &str, s: &str) -> Result<u64, Fail> {
    cvtnum(name, s, 0, i64::MAX as u64)
}

/// `-l` as qemu-img reads it: an argument starting with "snapshot." is an
/// option list of `snapshot.id=ID` and/or `snapshot.name=NAME` (",," is a
/// comma in a value; the last of a repeated key wins) selecting by id, by
/// name, or by both; anything else is a string matched as an id first,
/// then as a name.
pub fn snapshot_ref(s: &str) -> Result<SnapshotRef, Fail> {
    if !s.starts_with("snapshot.") {
        return Ok(SnapshotRef::IdOrName(s.into()));
    }
    let (mut id, mut name) = (None, None);
    for part in split_opts(s) {
        // QEMU reads a bare key as KEY=on, with a warning.
        let (key, v) = part.split_once('=').unwrap_or_else(|| {
            eprintln!(
                "cowblk-img: warning: short-form boolean option '{part}' deprecated\n\
                 Please use {part}=on instead"
            );
            (part.as_str(), "on")
        });
        match key {
            "snapshot.id" => id = Some(v.to_string()),
            "snapshot.name" => name = Some(v.to_string()),
            _ => {
                eprintln!("cowblk-img: Invalid parameter '{key}'");
                return Err(fail(format!("Failed in parsing snapshot param '{s}'")));
            }
        }
    }
    Ok(match (id, name) {
        (Some(i), Some(n)) => SnapshotRef::IdAndName(i, n),
        (Some(i), None) => SnapshotRef::Id(i),
        (None, Some(n)) => SnapshotRef::Name(n),
        // split_opts yields at least one part, and each sets one or fails.
        (None, None) => unreachable!("an option list with no option"),
    })
}

/// Splits a QEMU option list at single commas (",," is a literal comma);
/// a trailing comma ends the list.
fn split_opts(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            out.last_mut().unwrap().push(c);
        } else if chars.peek() == Some(&',') {
            chars.next();
            out.last_mut().unwrap().push(',');
        } else {
            out.push(String::new());
        }
    }
    if out.len() > 1 && out.last().is_some_and(|p| p.is_empty()) {
        out.pop();
    }
    out
}
