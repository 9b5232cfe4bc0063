#!/bin/sh
# convert of a compressed qcow2 image to raw: cowblk-img against qemu-img
# (this machine's), best of $BENCH_RUNS (default 3). The image: 1 GiB with
# 300 MiB of compressible data in 1 MiB pieces, compressed by qemu-img.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${BENCH_DIR:-$ROOT/build/bench-convert}
RUNS=${BENCH_RUNS:-3}
OURS=$ROOT/target/release/cowblk-img
[ -x "$OURS" ] || (cd "$ROOT" && cargo build --release -q)
rm -rf "$W" && mkdir -p "$W" && cd "$W"
qemu-img create -q -f raw src.raw 1G
python3 - <<'PY'
import random
r = random.Random(5)
with open("src.raw", "r+b") as f:
    for i in range(300):
        f.seek(i * (1 << 30) // 300 // 65536 * 65536)
        f.write(bytes(r.getrandbits(8) & 0x3f for _ in range(4096)) * 256)
PY
qemu-img convert -c -O qcow2 src.raw c.qcow2
rm src.raw
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -n 1; }
best_o= best_q=
i=0
while [ $i -lt "$RUNS" ]; do
    rm -f o.raw q.raw
    t=$(secs "$OURS" convert -O raw c.qcow2 o.raw)
    best_o=$(awk -v a="$t" -v b="$best_o" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }')
    t=$(secs qemu-img convert -O raw c.qcow2 q.raw)
    best_q=$(awk -v a="$t" -v b="$best_q" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }')
    i=$((i + 1))
done
cmp o.raw q.raw
echo "convert compressed qcow2 (1 GiB, 300 MiB data) to raw, best of $RUNS:"
awk -v o="$best_o" -v q="$best_q" 'BEGIN { printf "cowblk-img %.2f s, qemu-img %.2f s, ratio %.2f\n", o, q, o / q }'
cd / && rm -rf "$W"
