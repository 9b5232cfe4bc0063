//! getopt_long as glibc does it, driven by a command's option table: short
//! options clustered or with attached values, long options by unambiguous
//! prefix, `--name=value`, non-options collected in order (permutation),
//! `--` ending the options, and glibc's words for every error.

#![allow(dead_code)]

use super::spec::Opt;
use std::fmt;

/// A bad option, in glibc's words (the caller puts the program name
/// before it).
#[derive(Debug, PartialEq)]
pub enum GetoptError {
    Invalid(char),
    NeedsArg(char),
    /// The word as typed, `--` and any `=value` included.
    Unrecognized(String),
    LongNeedsArg(&'static str),
    NoArgAllowed(&'static str),
    /// The word as typed, and the long names it could mean.
    Ambiguous(String, Vec<&'static str>),
}

impl fmt::Display for GetoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetoptError::Invalid(c) => write!(f, "invalid option -- '{c}'"),
            GetoptError::NeedsArg(c) => write!(f, "option requires an argument -- '{c}'"),
            GetoptError::Unrecognized(w) => write!(f, "unrecognized option '{w}'"),
            GetoptError::LongNeedsArg(n) => write!(f, "option '--{n}' requires an argument"),
            GetoptError::NoArgAllowed(n) => write!(f, "option '--{n}' doesn't allow an argument"),
            GetoptError::Ambiguous(w, names) => {
                write!(f, "option '{w}' is ambiguous; possibilities:")?;
                for n in names {
                    write!(f, " '--{n}'")?;
                }
                Ok(())
            }
        }
    }
}

/// The parser over one command line (the command name not included).
pub struct Getopt {
    args: Vec<String>,
    /// The next word to look at.
    next: usize,
    /// Inside a cluster of short options: the word and the byte offset of
    /// the next option character.
    cluster: Option<(usize, usize)>,
    opts: &'static [Opt],
    /// Where the non-option words are in `args`, in order.
    positional: Vec<usize>,
    /// Whether long options exist; without them (qemu-io's commands use
    /// plain getopt) `--x` is a cluster of short options starting at '-'.
    long: bool,
}

impl Getopt {
    pub fn new(args: Vec<String>, opts: &'static [Opt]) -> Self {
        Getopt {
            args,
            next: 0,
            cluster: None,
            long: opts.iter().any(|o| !o.long.is_empty()),
            opts,
            positional: Vec::new(),
        }
    }

    /// The next option and its value ("" for a flag), or None at the end.
    pub fn next_opt(&mut self) -> Result<Option<(&'static Opt, String)>, GetoptError> {
        if let Some((w, at)) = self.cluster {
            return self.short(w, at).map(Some);
        }
        while self.next < self.args.len() {
            let w = self.next;
            let word = &self.args[w];
            self.next += 1;
            if word == "--" {
                self.positional.extend(self.next..self.args.len());
                self.next = self.args.len();
                break;
            }
            if word.len() < 2 || !word.starts_with('-') {
                self.positional.push(w);
                continue;
            }
            if self.long && word.starts_with("--") {
                return self.long_opt(w).map(Some);
            }
            return self.short(w, 1).map(Some);
        }
        Ok(None)
    }

    /// The non-option words; call after `next_opt` returned None.
    pub fn positional(self) -> Vec<String> {
        let at = self.positional_indices();
        let mut args = self.args;
        at.into_iter()
            .map(|i| std::mem::take(&mut args[i]))
            .collect()
    }

    /// Where the non-option words stand in the words given to `new`.
    pub fn positional_indices(&self) -> Vec<usize> {
        let mut at = self.positional.clone();
        at.extend(self.next.min(self.args.len())..self.args.len());
        at
    }

    fn short(&mut self, w: usize, at: usize) -> Result<(&'static Opt, String), GetoptError> {
        let word = self.args[w].clone();
        let c = word[at..].chars().next().unwrap_or('?');
        let after = at + c.len_utf8();
        let rest = &word[after..];
        self.cluster = (!rest.is_empty()).then_some((w, after));
        let Some(o) = self.opts.iter().find(|o| o.short == c && c != '\0') else {
            return Err(GetoptError::Invalid(c));
        };
        if !o.takes_arg() {
            return Ok((o, String::new()));
        }
        self.cluster = None;
        if !rest.is_empty() {
            return Ok((o, rest.to_string()));
        }
        match self.args.get(self.next) {
            Some(v) => {
                self.next += 1;
                Ok((o, v.clone()))
            }
            None => Err(GetoptError::NeedsArg(c)),
        }
    }

    fn long_opt(&mut self, w: usize) -> Result<(&'static Opt, String), GetoptError> {
        let word = self.args[w].clone();
        let body = &word[2..];
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let o = match self
            .opts
            .iter()
            .find(|o| !o.long.is_empty() && o.long == name)
        {
            Some(o) => o,
            None => {
                let cands: Vec<&'static Opt> = self
                    .opts
                    .iter()
                    .filter(|o| !o.long.is_empty() && o.long.starts_with(name))
                    .collect();
                match cands.len() {
                    0 => return Err(GetoptError::Unrecognized(word)),
                    1 => cands[0],
                    _ => {
                        return Err(GetoptError::Ambiguous(
                            word,
                            cands.iter().map(|o| o.long).collect(),
                        ))
                    }
                }
            }
        };
        match (o.takes_arg(), value) {
            (false, Some(_)) => Err(GetoptError::NoArgAllowed(o.long)),
            (false, None) => Ok((o, String::new())),
            (true, Some(v)) => Ok((o, v)),
            (true, None) => match self.args.get(self.next) {
                Some(v) => {
                    self.next += 1;
                    Ok((o, v.clone()))
                }
                None => Err(GetoptError::LongNeedsArg(o.long)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{flag, lflag, lopt, opt};
    use super::*;

    static OPTS: &[Opt] = &[
        opt('f', "format", "FMT", ""),
        lopt("output", "OUT", ""),
        flag('b', "backing-chain", ""),
        flag('U', "force-share", ""),
        lflag("image-opts", ""),
    ];

    /// Each option as (short, long, value), then the other words.
    type Parsed = (Vec<(char, &'static str, String)>, Vec<String>);

    fn all(words: &[&str]) -> Result<Parsed, GetoptError> {
        let mut g = Getopt::new(words.iter().map(|s| s.to_string()).collect(), OPTS);
        let mut out = Vec::new();
        while let Some((o, v)) = g.next_opt()? {
            out.push((o.short, o.long, v));
        }
        Ok((out, g.positional()))
    }

    #[test]
    fn clusters_values_and_permutation() {
        let (o, p) = all(&["a", "-bUfraw", "b", "--out=json", "--", "-c"]).unwrap();
        assert_eq!(o.len(), 4);
        assert_eq!(o[2].2, "raw");
        assert_eq!(o[3], ('\0', "output", "json".to_string()));
        assert_eq!(p, ["a", "b", "-c"]);
        let (o, _) = all(&["-f", "qcow2", "--back"]).unwrap();
        assert_eq!(o[0].2, "qcow2");
        assert_eq!(o[1].1, "backing-chain");
    }

    #[test]
    fn errors_in_glibc_words() {
        let e = |w: &[&str]| all(w).unwrap_err().to_string();
        assert_eq!(e(&["-z"]), "invalid option -- 'z'");
        assert_eq!(e(&["-f"]), "option requires an argument -- 'f'");
        assert_eq!(e(&["--output"]), "option '--output' requires an argument");
        assert_eq!(e(&["--bog=1"]), "unrecognized option '--bog=1'");
        assert_eq!(
            e(&["--back=1"]),
            "option '--backing-chain' doesn't allow an argument"
        );
        assert_eq!(
            e(&["--f=raw"]),
            "option '--f=raw' is ambiguous; possibilities: '--format' '--force-share'"
        );
    }
}
