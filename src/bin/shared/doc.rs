//! Texts generated from a tool's table (spec.rs): the `--help` screens,
//! cowblk-io's `help CMD`, docs/CLI.md's option lists and the roff man
//! pages. Nothing here is written by hand per command.

#![allow(dead_code)]

use super::spec::{Cmd, Opt, Tool};

/// Words of `text` in lines of at most `width` columns, each line starting
/// with `indent` (the first too).
pub fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + w.len() > width {
            out += indent;
            out += &line;
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line += w;
    }
    if !line.is_empty() {
        out += indent;
        out += &line;
        out.push('\n');
    }
    out
}

/// Items laid out as a synopsis: the first line after `lead`, the rest
/// indented by `cont`, at most `width` columns.
fn flow(lead: &str, items: &[String], width: usize, cont: &str) -> String {
    let mut out = lead.to_string();
    let mut col = lead.len();
    for it in items {
        if col + 1 + it.len() > width && col > cont.len() {
            out += "\n";
            out += cont;
            out += it;
            col = cont.len() + it.len();
        } else {
            out.push(' ');
            out += it;
            col += 1 + it.len();
        }
    }
    out
}

/// The options of a cowblk-img command and its arguments, help left out.
fn img_items(c: &Cmd) -> Vec<String> {
    let mut items: Vec<String> = c
        .opts
        .iter()
        .filter(|o| o.long != "help")
        .map(Opt::synopsis)
        .collect();
    items.extend(c.args.split_whitespace().map(str::to_owned));
    items
}

/// `cowblk-img CMD [...] ARGS` on one line.
pub fn img_synopsis(tool: &Tool, c: &Cmd) -> String {
    format!("{} {} {}", tool.name, c.name, img_items(c).join(" "))
}

/// `cowblk-img CMD --help`.
pub fn img_cmd_help(tool: &Tool, c: &Cmd) -> String {
    let mut s = format!("{}.  Usage:\n\n", c.summary);
    s += &flow(
        &format!("  {} {}", tool.name, c.name),
        &img_items(c),
        78,
        "        ",
    );
    s += "\n\nArguments:\n";
    for o in c.opts {
        s += &format!("  {}\n", o.spelling());
        s += &wrap(o.help, 78, "     ");
    }
    s.push('\n');
    s += &wrap(c.text, 78, "");
    s
}

/// `cowblk-img --help`.
pub fn img_help(tool: &Tool) -> String {
    let mut s = format!(
        "{}.  Usage:\n\n  {} {}\n\nCommands (run {} COMMAND --help for command-specific help):\n\n",
        tool.summary, tool.name, tool.usage, tool.name
    );
    for c in tool.cmds {
        s += &format!("  {} - {}\n", c.name, c.summary);
    }
    s.push('\n');
    s += &wrap(tool.description, 78, "");
    for (title, text) in tool.sections {
        s += &format!("\n{}:\n", title);
        s += &wrap(text, 78, "  ");
    }
    s
}

/// `cowblk-io --help`.
pub fn io_usage(tool: &Tool) -> String {
    let mut s = format!("Usage: {} {}\n{}\n\n", tool.name, tool.usage, tool.summary);
    for o in tool.opts {
        let sp = if o.short == '\0' {
            format!("    --{}", o.long)
        } else {
            format!("-{}, --{}", o.short, o.long)
        };
        let sp = if o.takes_arg() {
            format!("{sp} {}", o.arg)
        } else {
            sp
        };
        let help = wrap(o.help, 78, &" ".repeat(23));
        let help = help.trim_start();
        if sp.len() + 2 < 21 {
            s += &format!("  {sp:<21}{help}");
        } else {
            s += &format!("  {sp}\n{}{help}", " ".repeat(23));
        }
    }
    s.push('\n');
    s += &wrap(tool.description, 78, "");
    s
}

/// qemu-io's one line for a command: `read [-v] off len -- reads ...`.
pub fn io_cmd_line(c: &Cmd) -> String {
    if c.args.is_empty() {
        format!("{} -- {}", c.name, c.summary)
    } else {
        format!("{} {} -- {}", c.name, c.args, c.summary)
    }
}

/// `help CMD` in cowblk-io: the line, then the extended help.
pub fn io_cmd_help(c: &Cmd) -> String {
    let mut s = io_cmd_line(c) + "\n\n";
    s += &wrap(c.text, 78, " ");
    for o in c.opts {
        s += &format!(" -{}, -- {}\n", o.short, o.help);
    }
    s
}

/// docs/CLI.md's generated option lists for a tool.
pub fn markdown(tool: &Tool) -> String {
    let img = tool.name == "cowblk-img";
    let mut s = String::new();
    if !img {
        s += &format!("```\n{} {}\n```\n\n", tool.name, tool.usage);
        for o in tool.opts {
            s += &format!("- `{}`: {}\n", o.spelling(), o.help);
        }
        s += "\nCommands (`help CMD` shows one with its options):\n";
    }
    for c in tool.cmds {
        let line = if img {
            flow(
                &format!("{} {}", tool.name, c.name),
                &img_items(c),
                78,
                "    ",
            )
        } else if c.args.is_empty() {
            c.name.to_string()
        } else {
            format!("{} {}", c.name, c.args)
        };
        s += &format!("\n**{}**: {}.\n\n```\n{line}\n```\n", c.name, c.summary);
        let opts: Vec<&Opt> = c.opts.iter().filter(|o| o.long != "help").collect();
        if !opts.is_empty() {
            s.push('\n');
        }
        for o in opts {
            s += &format!("- `{}`: {}\n", o.spelling(), o.help);
        }
        if !c.text.is_empty() {
            s += &format!("\n{}\n", wrap(c.text, 78, "").trim_end());
        }
    }
    s
}

/// Text made safe for roff: backslashes, hyphens, and lines that would
/// read as requests.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    t.lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn roff_opt(o: &Opt) -> String {
    let mut names = Vec::new();
    if o.short != '\0' {
        names.push(format!("\\fB\\-{}\\fR", o.short));
    }
    if !o.long.is_empty() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff(o.long)));
    }
    let mut s = names.join(", ");
    if o.takes_arg() {
        s += &format!(" \\fI{}\\fR", roff(o.arg));
    }
    format!(".TP\n{s}\n{}\n", roff(o.help))
}

/// The man page (section 1) of a tool.
pub fn man(tool: &Tool, version: &str) -> String {
    let img = tool.name == "cowblk-img";
    let mut s = format!(
        ".\\\" Generated from the tool's option table (src/bin/{n}/table.rs);\n\
         .\\\" regenerate with `make man`, do not edit.\n\
         .TH {} 1 \"\" \"cowblk {version}\" \"User Commands\"\n.nh\n\
         .SH NAME\n{} \\- {}\n.SH SYNOPSIS\n.B {}\n{}\n.SH DESCRIPTION\n{}\n",
        tool.name.to_uppercase(),
        tool.name,
        roff(tool.summary),
        tool.name,
        roff(tool.usage),
        roff(tool.description),
        n = tool.name,
    );
    s += ".SH OPTIONS\n";
    for o in tool.opts {
        s += &roff_opt(o);
    }
    s += ".SH COMMANDS\n";
    for c in tool.cmds {
        s += &format!(".SS {}\n", c.name);
        if img {
            let items = img_items(c);
            s += &format!(".B {} {}\n{}\n", tool.name, c.name, roff(&items.join(" ")));
        } else {
            s += &format!(".B {}\n{}\n", c.name, roff(c.args));
        }
        s += &format!(".PP\n{}.\n", roff(c.summary));
        if !c.text.is_empty() {
            s += &format!("{}\n", roff(c.text));
        }
        for o in c.opts.iter().filter(|o| o.long != "help") {
            s += &roff_opt(o);
        }
    }
    for (title, text) in tool.sections {
        s += &format!(".SH {title}\n{}\n", roff(text));
    }
    s += &format!(".SH SEE ALSO\n{}\n", roff(tool.see_also));
    s
}
