#!/usr/bin/python3
"""What the cowblk plugin advertises, and its zero/trim/FUA flags.

usage: nbd-flags.py SOCKET
The server must serve a writable image of at least 8 MiB with no backing
file, all unwritten. Exits 1 naming the first thing that is wrong.
"""
import errno
import sys

import nbd

M = 1024 * 1024


def expect(cond, what):
    if not cond:
        print("wrong:", what)
        sys.exit(1)
    print("ok:", what)


h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_unix(sys.argv[1])
expect(h.can_multi_conn(), "multi-conn advertised (one shared handle)")
expect(h.can_flush() and h.can_fua(), "flush and FUA advertised")
expect(h.can_trim() and h.can_zero() and h.can_fast_zero(), "trim, zero and fast zero advertised")
expect(h.can_cache(), "cache advertised")
expect(not h.is_read_only(), "writable")

h.pwrite(b"\xab" * M, 0, nbd.CMD_FLAG_FUA)
expect(h.pread(M, 0) == b"\xab" * M, "a FUA write reads back")

# Fast zero: refused where the range holds data, done where it reads zeros.
try:
    h.zero(M, 0, nbd.CMD_FLAG_FAST_ZERO)
    expect(False, "fast zero over data is refused")
except nbd.Error as e:
    expect(e.errnum == errno.ENOTSUP, f"fast zero over data is refused with ENOTSUP ({e.errno})")
expect(h.pread(M, 0) == b"\xab" * M, "a refused fast zero changes nothing")
h.zero(M, 4 * M, nbd.CMD_FLAG_FAST_ZERO)
expect(h.pread(M, 4 * M) == bytes(M), "fast zero over zeros succeeds")

# Zero with and without may-trim (NO_HOLE), and trim: all read zeros after.
h.zero(M // 2, 0, nbd.CMD_FLAG_NO_HOLE)
expect(h.pread(M // 2, 0) == bytes(M // 2), "zero without may-trim reads zeros")
h.zero(M // 2, M // 2)
expect(h.pread(M // 2, M // 2) == bytes(M // 2), "zero with may-trim reads zeros")
h.pwrite(b"\xcd" * M, 2 * M)
h.trim(M, 2 * M)
got = h.pread(M, 2 * M)
expect(got in (b"\xcd" * M, bytes(M)), "trim leaves old data or zeros")
h.cache(M, 0)
h.flush()

# Block status: data where written, hole+zero elsewhere.
seen = []
h.block_status(8 * M, 0, lambda ctx, off, ents, err: seen.append(list(ents)) or 0)
ents = seen[0]
expect(len(ents) >= 2 and sum(ents[0::2]) == 8 * M, f"extents cover the image: {ents}")
h.shutdown()
