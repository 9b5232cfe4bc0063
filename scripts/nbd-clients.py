#!/usr/bin/python3
"""Many NBD clients at once, each checked against its own model.

usage: nbd-clients.py BASE_RAW ROUNDS SEED SOCKET...

Client i connects to SOCKET i (an nbdkit serving an overlay of BASE_RAW) and,
on its own thread, makes ROUNDS requests: writes of random bytes at random
offsets and lengths, zero writes, flushes, and reads of random ranges
(most of them of ranges it never wrote, so they come from the shared base).
Every read is compared with the model (BASE_RAW's bytes plus the client's
own writes). Afterwards each client's model is saved as SOCKET.model so the
overlay can be compared once its server has stopped. Exits 1 on the first
mismatch or error, naming the client, the request and the offset.
"""
import random
import sys
import threading

import nbd

MAX_REQ = 256 * 1024


def client(idx, sock, base, rounds, seed, errors):
    rng = random.Random(seed * 1000 + idx)
    model = bytearray(base)
    size = len(model)
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        if h.get_size() != size:
            raise RuntimeError(f"size {h.get_size()} != base size {size}")
        for r in range(rounds):
            op = rng.random()
            n = rng.randint(1, MAX_REQ)
            off = rng.randrange(0, size - n)
            if op < 0.35:
                data = rng.randbytes(n)
                h.pwrite(data, off)
                model[off:off + n] = data
            elif op < 0.40:
                h.zero(n, off)
                model[off:off + n] = bytes(n)
            elif op < 0.43:
                h.flush()
            else:
                got = h.pread(n, off)
                if got != model[off:off + n]:
                    bad = next(i for i in range(n) if got[i] != model[off + i])
                    raise RuntimeError(
                        f"round {r}: read of {n} bytes at {off} differs at byte {off + bad}")
        h.flush()
        h.shutdown()
        with open(sock + ".model", "wb") as f:
            f.write(model)
    except Exception as e:  # report, do not hang the other threads
        errors.append(f"client {idx} ({sock}): {e}")


def main():
    base_path, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    socks = sys.argv[4:]
    with open(base_path, "rb") as f:
        base = f.read()
    errors = []
    threads = [
        threading.Thread(target=client, args=(i, s, base, rounds, seed, errors))
        for i, s in enumerate(socks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print(e)
    print(f"{len(socks)} clients, {rounds} requests each, {len(errors)} failed")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
