//! What cowblk-img and cowblk-io share: qemu's number formats, one-line
//! errors, the progress bar. No format logic lives here.

#![allow(dead_code)]

pub mod doc;
pub mod getopt;
pub mod spec;

/// Exit code of a failed command.
pub const EXIT_FAILURE: i32 = 1;

/// Makes the tool behave like a C tool in a shell: die quietly on a closed
/// pipe and turn a panic into one line instead of a backtrace.
pub fn init(prog: &'static str) {
    // SAFETY: restoring the default disposition of SIGPIPE at startup,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("{prog}: internal error: {msg}");
        std::process::exit(EXIT_FAILURE);
    }));
}

/// Prints `prog: msg` on stderr.
pub fn error(prog: &str, msg: impl std::fmt::Display) {
    eprintln!("{prog}: {msg}");
}

/// A library error as a user reads it: the message without the category
/// prefix where the message already says what went wrong.
pub fn describe(e: &cowblk::Error) -> String {
    use cowblk::Error as E;
    match e {
        // A missing file ends the message as a bare quoted path: say what
        // the C tools say of it.
        E::NotFound(m) if m.ends_with('\'') => {
            let (ctx, path) = match m.rfind(": '") {
                Some(i) => (&m[..i + 2], &m[i + 2..]),
                None => ("", m.as_str()),
            };
            capitalise(&format!(
                "{ctx}Could not open {path}: No such file or directory"
            ))
        }
        // Errors while opening an image read "Could not open 'X': why", as
        // qemu-img's do, without the library's category word.
        E::Corrupt(m) | E::Unsupported(m) | E::NotFound(m) | E::InvalidArgument(m)
            if m.starts_with("could not open '") =>
        {
            capitalise(m)
        }
        E::Io { context, source } => format!("{context}: {}", strerror(source)),
        // qemu-img's words; the library's message also lists the known ones.
        E::UnknownFormat(m) if m.starts_with('\'') => {
            let name = m.split(" (known:").next().unwrap_or(m);
            format!("Unknown file format {name}")
        }
        other => capitalise(&other.to_string()),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The C library's text for an OS error (without Rust's " (os error N)").
pub fn strerror(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_text(n),
        None => e.to_string(),
    }
}

/// The C library's text for errno `n`.
pub fn errno_text(n: i32) -> String {
    // SAFETY: strerror returns a valid NUL-terminated string; it is copied
    // at once (the tools call it from one thread at a time).
    unsafe {
        let p = libc::strerror(n);
        if p.is_null() {
            return format!("error {n}");
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// qemu's size_to_str: three significant digits and a binary unit
/// ("68 KiB", "1.5 MiB").
pub fn size_to_str(v: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    // Switch to the next unit once the number would reach 1000.
    let mut i = 0;
    while i < 6 && (v as f64) >= 1000.0 * (1u64 << (10 * i)) as f64 {
        i += 1;
    }
    let x = v as f64 / (1u64 << (10 * i)) as f64;
    format!("{} {}", sig3(x), UNITS[i])
}

/// printf's "%0.3g" for values from 0 to below 1000.
fn sig3(x: f64) -> String {
    let decimals = if x >= 99.95 {
        0
    } else if x >= 9.995 {
        1
    } else if x >= 0.9995 || x == 0.0 {
        2
    } else {
        3
    };
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// qemu-io's cvtstr: "64 KiB", "1.500 KiB", "512 bytes".
pub fn cvtstr(v: f64) -> String {
    const UNITS: [(&str, f64); 6] = [
        (" EiB", (1u64 << 60) as f64),
        (" PiB", (1u64 << 50) as f64),
        (" TiB", (1u64 << 40) as f64),
        (" GiB", (1u64 << 30) as f64),
        (" MiB", (1u64 << 20) as f64),
        (" KiB", (1u64 << 10) as f64),
    ];
    let (num, suffix) = match UNITS.iter().find(|(_, m)| v >= *m) {
        Some((s, m)) => (format!("{:.3}", v / m), *s),
        None => (format!("{v:.6}"), " bytes"),
    };
    // Like qemu: an exact ".000..." is dropped, anything else kept.
    match num.find(".000") {
        Some(i) => format!("{}{}", &num[..i], suffix),
        None => format!("{num}{suffix}"),
    }
}

/// Progress as qemu-img shows it with `-p`, on stdout whether or not it
/// is a terminal: "    (NN.NN/100%)\r" when the share done moves by more
/// than `min_skip` points, and always at 0 and 100; a newline at the end.
pub struct ProgressBar {
    on: bool,
    min_skip: f64,
    current: f64,
    last: Option<f64>,
}

impl ProgressBar {
    /// Starts (and, when enabled, prints 0.00) as qemu-img does before the
    /// work starts.
    pub fn new(enabled: bool, min_skip: f64) -> Self {
        let mut p = ProgressBar {
            on: enabled,
            min_skip,
            current: 0.0,
            last: None,
        };
        p.set(0.0);
        p
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let pct = if total == 0 {
            100.0
        } else {
            (done.min(total) as f64 * 100.0 / total as f64) as f32 as f64
        };
        // The start was printed already; the library reports it again.
        if pct == 0.0 && self.last == Some(0.0) {
            return;
        }
        self.set(pct);
    }

    fn set(&mut self, pct: f64) {
        self.current = pct;
        let due = match self.last {
            None => true,
            Some(l) => pct > l + self.min_skip || pct < l - self.min_skip,
        };
        if self.on && (due || pct == 0.0 || pct == 100.0) {
            self.last = Some(pct);
            print!("    ({pct:.2}/100%)\r");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    }

    /// Ends the display; `at_100` prints 100.00 once more first (convert
    /// and commit do, compare and rebase not).
    pub fn finish(&mut self, at_100: bool) {
        if at_100 {
            self.set(100.0);
        }
        if self.on {
            println!();
        }
    }
}

/// JSON laid out as QEMU prints it: four-space indents, `"key": value`,
/// and empty arrays and objects still opened on their own lines.
pub fn qemu_json(v: &serde_json::Value) -> String {
    let mut out = String::new();
    qemu_json_into(v, 0, &mut out);
    out
}

fn qemu_json_into(v: &serde_json::Value, level: usize, out: &mut String) {
    use serde_json::Value;
    let pad = |n: usize| "    ".repeat(n);
    match v {
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, it) in items.iter().enumerate() {
                out.push_str(&pad(level + 1));
                qemu_json_into(it, level + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(level));
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (k, it)) in map.iter().enumerate() {
                out.push_str(&pad(level + 1));
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                qemu_json_into(it, level + 1, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(level));
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Printed when an image opened read-write was probed as raw, with
/// qemu-img's wording: the library then refuses writes that would make
/// its first sector look like another format.
pub fn warn_probed_raw(img: &cowblk::Image) {
    if img.probed_raw() {
        eprintln!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
             Automatically detecting the format is dangerous for raw images, write operations \
             on block 0 will be restricted.\n         \
             Specify the 'raw' format explicitly to remove the restrictions.",
            img.path().display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by qemu-img info (size_to_str) on this machine.
    #[test]
    fn sizes_as_qemu_img_prints_them() {
        for (v, s) in [
            (0, "0 B"),
            (512, "512 B"),
            (1024, "1 KiB"),
            (1536, "1.5 KiB"),
            (69632, "68 KiB"),
            (1022976, "999 KiB"),
            (1024000, "0.977 MiB"),
            (11010048, "10.5 MiB"),
            (123457024, "118 MiB"),
            (1 << 40, "1 TiB"),
            (5_000_000_000_000, "4.55 TiB"),
        ] {
            assert_eq!(size_to_str(v), s, "{v}");
        }
    }

    /// Values printed by qemu-io (cvtstr) on this machine.
    #[test]
    fn numbers_as_qemu_io_prints_them() {
        for (v, s) in [
            (0.0, "0 bytes"),
            (20.0, "20 bytes"),
            (512.0, "512 bytes"),
            (1536.0, "1.500 KiB"),
            (65536.0, "64 KiB"),
            (1966080.0, "1.875 MiB"),
            (2162688.0, "2.062 MiB"),
            (4194304.0, "4 MiB"),
        ] {
            assert_eq!(cvtstr(v), s, "{v}");
        }
    }

    #[test]
    fn json_layout_as_qemu() {
        let v = serde_json::json!({"a": [], "b": {"c": 1}, "d": {}});
        assert_eq!(
            qemu_json(&v),
            "{\n    \"a\": [\n    ],\n    \"b\": {\n        \"c\": 1\n    },\n    \"d\": {\n    }\n}"
        );
    }
}
