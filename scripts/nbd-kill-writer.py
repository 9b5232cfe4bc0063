#!/usr/bin/python3
"""Writes through NBD until the server dies, then checks what survived.

usage: nbd-kill-writer.py write SOCKET LOG CHUNKS
       nbd-kill-writer.py verify SOCKET LOG

write: writes chunk k (64 KiB of bytes derived from k, at offset k * 64 KiB,
never rewritten) for k = 0, 1, ... up to CHUNKS, flushing after every 8th
and appending the number of chunks flushed so far to LOG (fsynced) once the
flush has returned. It stops at CHUNKS or when the connection breaks.
verify: every chunk below the last number in LOG must hold its bytes;
beyond it, each 512-byte sector must hold its new bytes or the old zeros.
"""
import os
import random
import sys

import nbd

CHUNK = 64 * 1024
SECTOR = 512


def chunk(k):
    return random.Random(k).randbytes(CHUNK)


def write(sock, log, chunks):
    h = nbd.NBD()
    h.connect_unix(sock)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for k in range(chunks):
            h.pwrite(chunk(k), k * CHUNK)
            if k % 8 == 7:
                h.flush()
                os.write(fd, f"{k + 1}\n".encode())
                os.fsync(fd)
    except nbd.Error as e:
        print(f"connection ended after writes were under way: {e}")
        return 0
    print(f"all {chunks} chunks written before the kill")
    return 0


def verify(sock, log):
    with open(log) as f:
        lines = f.read().split()
    flushed = int(lines[-1]) if lines else 0
    h = nbd.NBD()
    h.connect_unix(sock)
    size = h.get_size()
    total = size // CHUNK
    zero = bytes(SECTOR)
    for k in range(total):
        got = h.pread(CHUNK, k * CHUNK)
        want = chunk(k)
        if k < flushed:
            if got != want:
                print(f"chunk {k} was flushed but reads differently")
                return 1
            continue
        for s in range(0, CHUNK, SECTOR):
            g = got[s:s + SECTOR]
            if g != want[s:s + SECTOR] and g != zero:
                print(f"chunk {k} sector {s // SECTOR} holds neither its old nor its new bytes")
                return 1
    print(f"{flushed} flushed chunks intact; the rest old or new per sector")
    return 0 if flushed > 0 else 1


if __name__ == "__main__":
    if sys.argv[1] == "write":
        sys.exit(write(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.exit(verify(sys.argv[2], sys.argv[3]))
