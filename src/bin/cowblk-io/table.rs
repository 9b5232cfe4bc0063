//! cowblk-io's command line and commands, declared once: the parsers read
//! them, and `--help`, `help CMD`, docs/CLI.md's lists and the man page are
//! generated from them (tests/cli_docs.rs keeps the committed copies
//! current). Synopses and one-line summaries are qemu-io's, which scripts
//! and its usage errors show; the extended texts are ours.

use super::spec::{plain, sflag, sopt, Cmd, Opt, Tool};

const CFLAG: Opt = sflag('C', "report statistics in one machine-parsable line");
const QFLAG: Opt = sflag('q', "quiet: print no statistics");
const VFLAG: Opt = sflag('v', "dump the data read, in hex and text");
const RFLAG: Opt = sflag('r', "ignored (qemu-io registers the buffer)");
const PFLAG: Opt = sflag('p', "ignored (an old option of qemu-io)");
const FUA: Opt = sflag('f', "flush after the write (Force Unit Access)");
const VERIFY: Opt = sopt('P', "pattern", "check that every byte read is this one");
const FILL: Opt = sopt(
    'P',
    "pattern",
    "fill the data with this byte (default 0xcd)",
);

/// The interactive commands, in qemu-io's (alphabetical) order.
pub const COMMANDS: &[Cmd] = &[
    plain(
        "aio_flush",
        "completes all outstanding aio requests",
        "Waits for every aio_read and aio_write still running, prints their \
         reports in the order they were submitted, and flushes the image.",
    ),
    Cmd {
        name: "aio_read",
        summary: "asynchronously reads a number of bytes",
        args: "[-Ciqrv] [-P pattern] off len [len..]",
        opts: &[CFLAG, VERIFY, QFLAG, RFLAG, VFLAG],
        text: "Starts a read of the sum of the lengths at off on its own thread and \
               returns at once; the report comes at the next aio_flush or at exit. \
               As in qemu-io, a failed or mismatching request is reported but does \
               not fail the command. Example: 'aio_read -P 0xab 0 64k'.",
        min: 2,
        max: None,
    },
    Cmd {
        name: "aio_write",
        summary: "asynchronously writes a number of bytes",
        args: "[-Cfiqruz] [-P pattern] off len [len..]",
        opts: &[
            CFLAG,
            FUA,
            FILL,
            QFLAG,
            RFLAG,
            sflag('u', "with -z: the range may be deallocated"),
            sflag('z', "write zeroes rather than data"),
        ],
        text: "Starts a write of the sum of the lengths at off on its own thread and \
               returns at once; the report comes at the next aio_flush or at exit. \
               Example: 'aio_write -P 9 0 64k' then 'aio_flush'.",
        min: 2,
        max: None,
    },
    Cmd {
        name: "alloc",
        summary: "checks if offset is allocated in the file",
        args: "offset [count]",
        opts: &[],
        text: "Counts the bytes from offset (count defaults to 512 and stops at \
               the end of the image) that the image itself holds, backing files \
               not included.",
        min: 1,
        max: Some(2),
    },
    plain(
        "close",
        "close the current open file",
        "Finishes outstanding aio, then closes the image; 'open' opens another.",
    ),
    Cmd {
        name: "discard",
        summary: "discards a number of bytes at a specified offset",
        args: "[-Cq] off len",
        opts: &[CFLAG, QFLAG],
        text: "Tells the image the range is no longer needed; it may then read as \
               zeros or keep its data, as the format decides. Example: \
               'discard 0 1M'.",
        min: 2,
        max: None,
    },
    plain(
        "flush",
        "flush all in-core file state to disk",
        "Makes every completed write durable.",
    ),
    Cmd {
        name: "help",
        summary: "help for one or all commands",
        args: "[command]",
        opts: &[],
        text: "Without an argument, lists the commands; with one, shows that \
               command's options.",
        min: 0,
        max: Some(1),
    },
    plain(
        "info",
        "prints information about the current file",
        "Prints the format, the cluster size, the VM state offset and the \
         format's own fields.",
    ),
    plain(
        "length",
        "gets the length of the current file",
        "Prints the virtual size.",
    ),
    plain(
        "map",
        "prints the allocated areas of a file",
        "Prints each run of the image's own allocated or unallocated bytes, \
         from the start to the end.",
    ),
    Cmd {
        name: "open",
        summary: "open the file specified by path",
        args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
        opts: &[
            sflag('r', "open read-only"),
            sflag(
                's',
                "snapshot mode: writes go to a temporary overlay, the image is untouched",
            ),
            sflag('C', "refused: copy-on-read is not supported"),
            sflag('n', "ignored (the host cache is used)"),
            sflag('U', "share the image with writers (read-only opens only)"),
            sflag('k', "ignored (aio runs on threads)"),
            sopt('i', "mode", "ignored (aio runs on threads)"),
            sopt('t', "cache", "ignored (one cache mode)"),
            sopt('d', "discard", "ignored"),
            sopt(
                'o',
                "options",
                "driver options; only driver=FMT (the format) is known",
            ),
        ],
        text: "Opens the image for the commands that follow, when none is open. \
               Without -o driver=FMT the format is probed. Example: \
               'open -r -o driver=qcow2 disk.qcow2'.",
        min: 1,
        max: None,
    },
    plain(
        "quit",
        "exit the program",
        "Ends the session; outstanding aio is finished first.",
    ),
    Cmd {
        name: "read",
        summary: "reads a number of bytes at a specified offset",
        args: "[-abCqrv] [-P pattern [-s off] [-l len]] off len",
        opts: &[
            sflag('b', "the VM state area rather than the disk (refused)"),
            CFLAG,
            sopt('l', "len", "with -P: check only len bytes"),
            PFLAG,
            VERIFY,
            QFLAG,
            RFLAG,
            sopt(
                's',
                "off",
                "with -P: start checking off bytes into the data",
            ),
            VFLAG,
        ],
        text: "Reads len bytes at off; with -P the data must hold the pattern, else \
               the command fails. Example: 'read -v 512 1k'.",
        min: 2,
        max: None,
    },
    Cmd {
        name: "readv",
        summary: "reads a number of bytes at a specified offset",
        args: "[-Cqrv] [-P pattern] off len [len..]",
        opts: &[CFLAG, VERIFY, QFLAG, RFLAG, VFLAG],
        text: "Reads at off into one buffer per len, in one vectored request. \
               Example: 'readv -P 0x22 3M 4k 4k'.",
        min: 2,
        max: None,
    },
    Cmd {
        name: "sleep",
        summary: "waits for the given value in milliseconds",
        args: "ms",
        opts: &[],
        text: "Pauses the session.",
        min: 1,
        max: Some(1),
    },
    Cmd {
        name: "truncate",
        summary: "truncates the current file at the given offset",
        args: "[-m prealloc_mode] off",
        opts: &[sopt(
            'm',
            "prealloc_mode",
            "off, metadata, falloc or full (grown space reads zeros in every mode)",
        )],
        text: "Sets the virtual size to off; grown space reads zeros.",
        min: 1,
        max: Some(3),
    },
    Cmd {
        name: "write",
        summary: "writes a number of bytes at a specified offset",
        args: "[-bcCfnqruz] [-P pattern | -s source_file] off len",
        opts: &[
            sflag('b', "the VM state area rather than the disk (refused)"),
            sflag('c', "write compressed data (qcow2)"),
            CFLAG,
            FUA,
            sflag('n', "with -z: fail rather than write zero bytes"),
            PFLAG,
            FILL,
            QFLAG,
            RFLAG,
            sopt(
                's',
                "source_file",
                "take the data from this file (zeros past its end)",
            ),
            sflag('u', "with -z: the range may be deallocated"),
            sflag('z', "write zeroes rather than data"),
        ],
        text: "Writes len bytes at off, of the pattern, of the source file or zeros. \
               Example: 'write -P 0x5a 512 1k'.",
        min: 2,
        max: None,
    },
    Cmd {
        name: "writev",
        summary: "writes a number of bytes at a specified offset",
        args: "[-Cfqr] [-P pattern] off len [len..]",
        opts: &[CFLAG, FUA, FILL, QFLAG, RFLAG],
        text: "Writes at off from one buffer per len, in one vectored request. \
               Example: 'writev -P 3 0 512 4k'.",
        min: 2,
        max: None,
    },
];

use super::spec::{flag, lflag, opt};

/// The tool and its command line.
pub const TOOL: Tool = Tool {
    name: "cowblk-io",
    summary: "Exercise a disk image with qemu-io's commands, through the cowblk library",
    usage: "[OPTIONS]... [-c STRING]... [file]",
    description: "Runs the commands given with -c, in order, on the image; without -c \
                  they are read from standard input, with a 'cowblk-io> ' prompt when \
                  it is a terminal. Every command runs even after one fails; the exit \
                  code is 1 if any failed. See 'cowblk-io -c help' for the commands.",
    opts: &[
        opt('c', "cmd", "STRING", "execute a command with its arguments"),
        opt(
            'f',
            "format",
            "FMT",
            "the image's format (probed when not given)",
        ),
        flag('r', "read-only", "open read-only"),
        flag(
            's',
            "snapshot",
            "writes go to a temporary overlay; the image is untouched",
        ),
        flag(
            'n',
            "nocache",
            "accepted for compatibility (the host cache is used)",
        ),
        flag(
            'C',
            "copy-on-read",
            "refused: copy-on-read is not supported",
        ),
        flag('m', "misalign", "accepted for compatibility"),
        flag('k', "native-aio", "accepted for compatibility"),
        opt(
            'i',
            "aio",
            "MODE",
            "accepted for compatibility (aio runs on threads)",
        ),
        opt('t', "cache", "MODE", "accepted for compatibility"),
        opt('d', "discard", "MODE", "accepted for compatibility"),
        flag(
            'U',
            "force-share",
            "share the image with writers (read-only opens only)",
        ),
        lflag(
            "confined",
            "untrusted image: every file it names must be a regular file inside its directory",
        ),
        flag('h', "help", "display this help and exit"),
        flag('V', "version", "output version information and exit"),
    ],
    cmds: COMMANDS,
    sections: &[(
        "EXIT STATUS",
        "0 when every command succeeded, 1 when one failed or the image did not open.",
    )],
    see_also: "cowblk-img(1), qemu-io(1), docs/CLI.md",
};
