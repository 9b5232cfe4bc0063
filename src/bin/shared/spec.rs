//! How a command and its options are declared: one table per tool
//! (cowblk-img/table.rs, cowblk-io/table.rs) from which the parser, the
//! `--help` texts, docs/CLI.md's option lists and the man pages all come.
//! Pure data, so the documentation test can include it by path.

#![allow(dead_code)]

/// One option. `short` is '\0' and `long` "" where the option has no such
/// spelling; `arg` names the value ("" for a flag).
pub struct Opt {
    pub short: char,
    pub long: &'static str,
    pub arg: &'static str,
    pub help: &'static str,
}

impl Opt {
    pub fn takes_arg(&self) -> bool {
        !self.arg.is_empty()
    }

    /// `-f, --format FMT` as the help and the manual show it.
    pub fn spelling(&self) -> String {
        let mut s = String::new();
        if self.short != '\0' {
            s.push('-');
            s.push(self.short);
        }
        if !self.long.is_empty() {
            if !s.is_empty() {
                s += ", ";
            }
            s += "--";
            s += self.long;
        }
        if self.takes_arg() {
            s.push(' ');
            s += self.arg;
        }
        s
    }

    /// `[-f FMT]` in a synopsis (the short spelling where there is one).
    pub fn synopsis(&self) -> String {
        let name = if self.short != '\0' {
            format!("-{}", self.short)
        } else {
            format!("--{}", self.long)
        };
        if self.takes_arg() {
            format!("[{name} {}]", self.arg)
        } else {
            format!("[{name}]")
        }
    }
}

/// A flag with a short and a long spelling.
pub const fn flag(short: char, long: &'static str, help: &'static str) -> Opt {
    Opt {
        short,
        long,
        arg: "",
        help,
    }
}

/// An option taking a value, with a short and a long spelling.
pub const fn opt(short: char, long: &'static str, arg: &'static str, help: &'static str) -> Opt {
    Opt {
        short,
        long,
        arg,
        help,
    }
}

/// A flag spelled only long.
pub const fn lflag(long: &'static str, help: &'static str) -> Opt {
    flag('\0', long, help)
}

/// An option spelled only long, taking a value.
pub const fn lopt(long: &'static str, arg: &'static str, help: &'static str) -> Opt {
    opt('\0', long, arg, help)
}

/// A flag spelled only short.
pub const fn sflag(short: char, help: &'static str) -> Opt {
    flag(short, "", help)
}

/// An option spelled only short, taking a value.
pub const fn sopt(short: char, arg: &'static str, help: &'static str) -> Opt {
    opt(short, "", arg, help)
}

/// One command of a tool.
pub struct Cmd {
    pub name: &'static str,
    /// One line, for the list of commands.
    pub summary: &'static str,
    /// The synopsis after the options. For cowblk-img the positional
    /// arguments ("FILENAME [SIZE]"; the options are generated before it);
    /// for cowblk-io the whole argument synopsis as qemu-io prints it
    /// (a test checks it names exactly the declared options).
    pub args: &'static str,
    pub opts: &'static [Opt],
    /// The extended help: paragraphs, each line indented by the renderer.
    pub text: &'static str,
    /// cowblk-io: how many positional arguments the command takes.
    pub min: usize,
    pub max: Option<usize>,
}

impl Cmd {
    /// The getopt string of the short options ("P:s:qv").
    pub fn optstring(&self) -> String {
        let mut s = String::new();
        for o in self.opts.iter().filter(|o| o.short != '\0') {
            s.push(o.short);
            if o.takes_arg() {
                s.push(':');
            }
        }
        s
    }
}

/// A command with no arguments (a cowblk-io command that takes nothing).
pub const fn plain(name: &'static str, summary: &'static str, text: &'static str) -> Cmd {
    Cmd {
        name,
        summary,
        args: "",
        opts: &[],
        text,
        min: 0,
        max: Some(0),
    }
}

/// A whole tool: what its help, the manual's section and the man page say.
pub struct Tool {
    pub name: &'static str,
    /// The man page's NAME line.
    pub summary: &'static str,
    /// What follows the tool's name in the synopsis.
    pub usage: &'static str,
    pub description: &'static str,
    /// The tool's own options (cowblk-io's command line, cowblk-img's -h/-V).
    pub opts: &'static [Opt],
    pub cmds: &'static [Cmd],
    /// More man page sections: (title, text).
    pub sections: &'static [(&'static str, &'static str)],
    pub see_also: &'static str,
}

impl Tool {
    pub fn cmd(&self, name: &str) -> Option<&'static Cmd> {
        self.cmds.iter().find(|c| c.name == name)
    }
}
