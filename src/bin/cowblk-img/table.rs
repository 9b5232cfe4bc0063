//! cowblk-img's commands and options, declared once: the parser reads them,
//! and `--help`, docs/CLI.md's option lists and the man page are generated
//! from them (tests/cli_docs.rs keeps the committed copies current).
//! Long names are those qemu-img (QEMU 10.0) accepts, in its order, so that
//! abbreviations resolve, and fail as ambiguous, as they do there (its
//! --help names a few more than it takes, e.g. convert's --target-format).

use super::spec::{flag, lflag, lopt, opt, sflag, sopt, Cmd, Opt, Tool};

const HELP: Opt = flag('h', "help", "print this help and exit");
const QUIET: Opt = flag('q', "quiet", "quiet: print nothing but errors");
const PROGRESS: Opt = flag('p', "progress", "show progress: (NN.NN/100%) on stdout");
const FORMAT: Opt = opt(
    'f',
    "format",
    "FMT",
    "format of FILENAME (probed when not given)",
);
const SHARE: Opt = flag(
    'U',
    "force-share",
    "open read-only images even when another process is writing them",
);
const OUTPUT: Opt = lopt("output", "human|json", "output format (default human)");
const CONFINED: Opt = lflag(
    "confined",
    "untrusted image: every file it names must be a regular file inside its directory",
);

/// Every command with a real option, in alphabetical order.
pub const COMMANDS: &[Cmd] = &[
    Cmd {
        name: "amend",
        summary: "Update format-specific options of the image",
        args: "FILENAME",
        opts: &[
            HELP,
            QUIET,
            PROGRESS,
            FORMAT,
            opt('t', "cache", "CACHE", "accepted for compatibility; ignored"),
            opt(
                'o',
                "options",
                "OPTIONS",
                "KEY=VALUE,... the options to change; '-o help' lists them",
            ),
            CONFINED,
        ],
        text: "Rewrites a qcow2 image's header and metadata for the new options \
               (compat, lazy_refcounts, refcount_bits, ...), refusing what \
               qemu-img amend refuses, in its words.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "bench",
        summary: "Run simple image benchmark",
        args: "FILENAME",
        opts: &[
            HELP,
            sflag(
                'q',
                "accepted; bench prints its two lines anyway, as qemu-img's does",
            ),
            FORMAT,
            opt('t', "cache", "CACHE", "accepted for compatibility; ignored"),
            opt('c', "count", "COUNT", "number of requests (default 75000)"),
            opt(
                's',
                "buffer-size",
                "BUFFER_SIZE",
                "bytes per request (default 4k)",
            ),
            opt(
                'd',
                "depth",
                "DEPTH",
                "requests in flight at once (default 64)",
            ),
            opt('o', "offset", "OFFSET", "offset of the first request"),
            opt(
                'S',
                "step-size",
                "STEP_SIZE",
                "offset increment between requests (default the buffer size)",
            ),
            opt('i', "aio", "AIO", "accepted for compatibility; ignored"),
            flag('n', "native", "accepted for compatibility; ignored"),
            flag('w', "write", "write instead of read"),
            lopt(
                "pattern",
                "PATTERN",
                "byte written by write requests (default 0)",
            ),
            lopt(
                "flush-interval",
                "INTERVAL",
                "flush after every INTERVAL requests (write tests only)",
            ),
            lflag("no-drain", "accepted for compatibility; ignored"),
            SHARE,
            sflag('p', "show progress (not in qemu-img)"),
            CONFINED,
        ],
        text: "Sends the requests qemu-img bench sends (offsets step and wrap the same \
               way), DEPTH at a time, and prints \"Run completed in N seconds.\"",
        min: 0,
        max: None,
    },
    Cmd {
        name: "check",
        summary: "Check basic image integrity",
        args: "FILENAME",
        opts: &[
            HELP,
            QUIET,
            FORMAT,
            opt(
                'T',
                "cache",
                "CACHE_MODE",
                "accepted for compatibility; ignored",
            ),
            SHARE,
            OUTPUT,
            opt(
                'r',
                "repair",
                "leaks|all",
                "repair leaks only, or everything (opens the image read-write)",
            ),
            CONFINED,
        ],
        text: "Exit codes: 0 clean, 1 check error, 2 corruptions, 3 leaks, 63 the \
               format has no checks (raw).",
        min: 0,
        max: None,
    },
    Cmd {
        name: "commit",
        summary: "Commit image to its backing file",
        args: "FILENAME",
        opts: &[
            HELP,
            QUIET,
            PROGRESS,
            FORMAT,
            opt(
                't',
                "cache",
                "CACHE_MODE",
                "accepted for compatibility; ignored",
            ),
            flag(
                'd',
                "drop",
                "keep FILENAME's data (do not empty it afterwards)",
            ),
            opt(
                'b',
                "base",
                "BASE_IMG",
                "the backing file to commit into (only the direct one is supported)",
            ),
            opt('r', "rate", "RATE", "accepted for compatibility; ignored"),
            CONFINED,
        ],
        text: "Writes the overlay's own data into its backing file, then empties the \
               overlay (unless -d).",
        min: 0,
        max: None,
    },
    Cmd {
        name: "compare",
        summary: "Check if two images have the same contents",
        args: "FILENAME1 FILENAME2",
        opts: &[
            HELP,
            QUIET,
            PROGRESS,
            opt('f', "a-format", "FMT", "format of FILENAME1"),
            opt('F', "b-format", "FMT", "format of FILENAME2"),
            flag('s', "strict", "strict: sizes and allocation must match too"),
            opt(
                'T',
                "cache",
                "CACHE_MODE",
                "accepted for compatibility; ignored",
            ),
            SHARE,
            CONFINED,
        ],
        text: "Exit codes: 0 identical, 1 different (\"Content mismatch at offset N!\"), \
               2 error. Without -s, images of different sizes compare equal when the \
               longer reads zeros past the end of the shorter.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "convert",
        summary: "Copy one image to another with optional format conversion",
        args: "SRC_FILENAME [SRC_FILENAME2 [...]] TGT_FILENAME",
        opts: &[
            HELP,
            QUIET,
            sflag('p', "show progress: (NN.NN/100%) on stdout"),
            opt('f', "source-format", "SRC_FMT", "format of the sources"),
            sopt(
                'l',
                "SNAPSHOT_PARAMS",
                "read an internal snapshot: ID_OR_NAME, snapshot.id=ID, snapshot.name=NAME",
            ),
            opt(
                'T',
                "source-cache",
                "SRC_CACHE",
                "accepted for compatibility; ignored",
            ),
            sopt('O', "TGT_FMT", "format of the target (default raw)"),
            sopt(
                'o',
                "TGT_OPTS",
                "KEY=VALUE,... options of the new target; '-o help' lists them",
            ),
            sflag('c', "compressed output (qcow2)"),
            sopt('t', "TGT_CACHE", "accepted for compatibility; ignored"),
            sflag('n', "the target exists already: do not create it"),
            opt(
                'S',
                "sparse-size",
                "SPARSE_SIZE",
                "0: write every byte (fully allocated target); otherwise zero runs stay holes",
            ),
            SHARE,
            opt('r', "rate", "RATE", "accepted for compatibility; ignored"),
            opt(
                'm',
                "parallel",
                "NUM_COROUTINES",
                "accepted for compatibility; ignored",
            ),
            flag('W', "oob-writes", "accepted for compatibility; ignored"),
            CONFINED,
        ],
        text: "Copies the guest view of the sources, one after the other, into the \
               target. Runs that read as zeros are left as holes, or zeroed with -n.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "create",
        summary: "Create and format new image file",
        args: "FILENAME [SIZE]",
        opts: &[
            HELP,
            QUIET,
            opt(
                'f',
                "format",
                "FMT",
                "format of the new image (default raw)",
            ),
            opt(
                'o',
                "options",
                "FMT_OPTS",
                "KEY=VALUE,... format options; '-o help' lists them",
            ),
            opt(
                'b',
                "backing",
                "BACKING_FILENAME",
                "backing file (a relative name resolves against FILENAME's directory)",
            ),
            opt(
                'F',
                "backing-format",
                "BACKING_FMT",
                "format of the backing file (required with -b)",
            ),
            flag(
                'u',
                "backing-unsafe",
                "refused: the backing file must exist and open",
            ),
        ],
        text: "SIZE takes the suffixes k, M, G, T, P, E (powers of 1024); without it \
               the backing file's size is used. Prints \"Formatting 'FILENAME', \
               fmt=FMT size=N ...\" as qemu-img does.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "dd",
        summary: "Copy input to output with optional format conversion",
        args: "[bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT",
        opts: &[
            HELP,
            FORMAT,
            opt(
                'O',
                "output-format",
                "OUTPUT_FMT",
                "format of OUTPUT (default raw)",
            ),
            SHARE,
            CONFINED,
        ],
        text: "bs is the block size (default 512, with suffixes); count copies only \
               up to BLOCKS blocks of INPUT; skip starts BLOCKS blocks into it. \
               OUTPUT is created.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "info",
        summary: "Display information about image",
        args: "FILENAME",
        opts: &[
            HELP,
            FORMAT,
            OUTPUT,
            flag(
                'b',
                "backing-chain",
                "show every image of the backing chain",
            ),
            SHARE,
            CONFINED,
        ],
        text: "Reads metadata only: the files the image names are shown, not opened \
               (they may be missing); the chain is opened with --backing-chain.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "map",
        summary: "Dump image metadata",
        args: "FILENAME",
        opts: &[
            HELP,
            FORMAT,
            OUTPUT,
            opt('s', "start-offset", "OFFSET", "start at this guest offset"),
            opt('l', "max-length", "LENGTH", "map at most LENGTH bytes"),
            SHARE,
            CONFINED,
        ],
        text: "JSON entries carry start, length, depth, present, zero, data, \
               compressed and offset, across the backing chain.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "measure",
        summary: "Calculate file size required for a new image",
        args: "(--size SIZE | FILENAME)",
        opts: &[
            HELP,
            OUTPUT,
            opt(
                'O',
                "target-format",
                "OUTPUT_FMT",
                "format of the new image (default raw)",
            ),
            opt(
                'o',
                "options",
                "OPTIONS",
                "KEY=VALUE,... options of the new image",
            ),
            lopt("size", "SIZE", "measure for SIZE bytes of guest data"),
            opt('f', "format", "FMT", "format of FILENAME"),
            opt(
                'l',
                "snapshot",
                "SNAPSHOT_PARAM",
                "measure an internal snapshot of FILENAME",
            ),
            SHARE,
            CONFINED,
        ],
        text: "Prints the bytes a new OUTPUT_FMT image needs to hold SIZE bytes or \
               FILENAME's contents (\"required size\"), and once fully allocated.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "meta",
        summary: "List, read and change key/value metadata inside an image",
        args: "list|get|set|delete FILENAME [KEY [VALUE]]",
        opts: &[
            HELP,
            FORMAT,
            lopt(
                "output",
                "human|json",
                "list: output format (default human)",
            ),
            lopt("file", "PATH", "set: the value is this file's contents"),
            flag(
                'U',
                "force-share",
                "list, get: open the image even while another process writes it",
            ),
            CONFINED,
        ],
        text: "Not in qemu-img. 'meta list FILENAME' prints one key per line (JSON: an \
               array of {\"key\", \"size\"}); 'meta get FILENAME KEY' writes the \
               value's bytes to stdout and exits 1 if the key is absent; 'meta set \
               FILENAME KEY VALUE' (or --file PATH) stores a value; 'meta delete \
               FILENAME KEY' removes one. Formats: qcow2 (a hidden snapshot named \
               cowblk-metadata) and add-cow; raw cannot hold metadata \
               (docs/specs/metadata.txt).",
        min: 0,
        max: None,
    },
    Cmd {
        name: "rebase",
        summary: "Change backing file of the image",
        args: "FILENAME",
        opts: &[
            HELP,
            QUIET,
            PROGRESS,
            FORMAT,
            opt('t', "cache", "CACHE", "accepted for compatibility; ignored"),
            opt(
                'b',
                "backing",
                "BACKING_FILENAME",
                "the new backing file; \"\" detaches (copies everything in)",
            ),
            opt(
                'F',
                "backing-format",
                "BACKING_FMT",
                "format of the new backing file",
            ),
            opt(
                'T',
                "backing-cache",
                "CACHE",
                "accepted for compatibility; ignored",
            ),
            flag(
                'u',
                "backing-unsafe",
                "unsafe: only record the new name, copy nothing",
            ),
            flag('c', "compress", "refused: compression is not supported"),
            SHARE,
            CONFINED,
        ],
        text: "Keeps the guest view: ranges the image does not own that differ \
               between the old and the new backing file are copied in first. \
               Detaching with -b \"\" is safe to interrupt and to run again.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "resize",
        summary: "Resize the image to the new size",
        args: "FILENAME [+-]SIZE",
        opts: &[
            HELP,
            QUIET,
            FORMAT,
            lflag("shrink", "allow a size smaller than the current one"),
            lopt("preallocation", "PREALLOC", "only 'off' is supported"),
            CONFINED,
        ],
        text: "+SIZE and -SIZE are relative. Grown space reads zeros, never backing \
               data.",
        min: 0,
        max: None,
    },
    Cmd {
        name: "snapshot",
        summary: "List or manipulate snapshots within image",
        args: "FILENAME",
        opts: &[
            HELP,
            QUIET,
            FORMAT,
            SHARE,
            flag('l', "list", "list the internal snapshots (the default)"),
            opt(
                'c',
                "create",
                "SNAPSHOT",
                "create a snapshot named SNAPSHOT (names may repeat)",
            ),
            opt(
                'a',
                "apply",
                "SNAPSHOT",
                "revert the disk to a snapshot, found by id, else by name",
            ),
            opt(
                'd',
                "delete",
                "SNAPSHOT",
                "delete the snapshot of that name",
            ),
            CONFINED,
        ],
        text: "One operation at a time, on formats with internal snapshots \
               (qcow2); -c, -a and -d open the image read-write, so -U is \
               refused with them.",
        min: 0,
        max: None,
    },
];

/// The tool itself.
pub const TOOL: Tool = Tool {
    name: "cowblk-img",
    summary: "QEMU-style disk image utility over the cowblk library",
    usage: "[-h | -V] COMMAND [--help | command options]",
    description: "cowblk-img takes qemu-img's commands, options, output and exit codes \
                  for the formats of the cowblk library (raw, add-cow, qcow2), so that \
                  a script written for qemu-img runs unchanged. Without -f the format \
                  is probed. Sizes and offsets take the suffixes k, M, G, T, P, E \
                  (powers of 1024), decimal or 0x hex numbers as QEMU reads them. \
                  Options abbreviate as in getopt_long.",
    opts: &[
        flag('h', "help", "print the list of commands and exit"),
        flag('V', "version", "print the version and exit"),
    ],
    cmds: COMMANDS,
    sections: &[
        (
            "EXIT STATUS",
            "0 on success, 1 on error; check: 2 corruptions, 3 leaks, 63 no checks \
             for the format; compare: 1 different, 2 error.",
        ),
        (
            "UNTRUSTED IMAGES",
            "Commands that open an image take --confined: every file the image names \
             (backing file, add-cow image file, qcow2 data file, at any depth) must \
             resolve inside the directory of the image named on the command line and \
             be a regular file, else the open fails with Permission denied.",
        ),
    ],
    see_also: "cowblk-io(1), qemu-img(1), docs/CLI.md",
};
