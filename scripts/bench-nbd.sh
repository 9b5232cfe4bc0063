#!/bin/bash
# make bench-nbd: fio's nbd engine, 4 KiB random reads and writes at depth 1
# and 16, against the cowblk nbdkit plugin (add-cow and qcow2), nbdkit's own
# file plugin on the same raw bytes, and QEMU 10's qemu-nbd serving QEMU's
# qcow2 of the same data. Prints IOPS and ratios; one run, every server
# measured back to back on the same page-cache-warm files.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLUGIN=$ROOT/build/nbdkit/nbdkit-cowblk-plugin.so
CIMG=$ROOT/target/release/cowblk-img
SIZE=${BENCH_NBD_SIZE:-1G}
RUNTIME=${BENCH_NBD_SECONDS:-5}
PY=/usr/bin/python3
command -v fio >/dev/null || { echo "fio is missing (make bench-nbd installs it)"; exit 1; }

mkdir -p "$ROOT/build"
T=$(mktemp -d "$ROOT/build/bench-nbd.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
cd "$T"

# The same data everywhere: a raw file full of bytes; an add-cow over it
# detached (`rebase -b ""`), so its image file holds the same bytes with
# every cluster allocated; QEMU's qcow2 of it (64 KiB clusters).
fio --name=fill --filename=data.raw --size="$SIZE" --rw=write --bs=1M --ioengine=psync \
    --refill_buffers --output=/dev/null
"$CIMG" create -q -f add-cow -o image_file=ac.img -b data.raw -F raw ac.add-cow
"$CIMG" rebase -q -b "" ac.add-cow
cmp data.raw ac.img
qemu-img convert -O qcow2 data.raw q.qcow2

# Every file enters the page cache the same way. Written by different tools
# (fio's 1 MiB writes, our rebase, qemu-img), their cached pages differ in
# size, and ext4's buffered 4 KiB writes into them differed by 1.4x in cost:
# nbdkit's own file plugin served ac.img 0.7x as fast as data.raw.
sync
if [ -w /proc/sys/vm/drop_caches ]; then
    echo 3 >/proc/sys/vm/drop_caches
else
    echo "not root: page cache not reset, write figures may favour data.raw" >&2
fi
cat data.raw ac.img q.qcow2 >/dev/null

serve_file()   { nbdkit -f -U "$T/s" -P "$T/pid" file file=data.raw & }
serve_addcow() { nbdkit -f -U "$T/s" -P "$T/pid" "$PLUGIN" file=ac.add-cow & }
serve_qcow2()  { nbdkit -f -U "$T/s" -P "$T/pid" "$PLUGIN" file=q.qcow2 -r & }
serve_qnbd()   { qemu-nbd -k "$T/s" -f qcow2 --cache=writeback -t --shared=4 q.qcow2 & }

run() {  # run SERVER RW DEPTH -> IOPS
    local server=$1 rw=$2 depth=$3 iops
    rm -f "$T/s" "$T/pid"
    "serve_$server"
    PID=$!
    for _ in $(seq 100); do [ -S "$T/s" ] && break; sleep 0.05; done
    iops=$(fio --name=b --ioengine=nbd --uri="nbd+unix:///?socket=$T/s" --rw="$rw" --bs=4k \
        --iodepth="$depth" --size="$SIZE" --runtime="$RUNTIME" --time_based --ramp_time=1 \
        --output-format=json --output="$T/fio.json" 2>"$T/fio.err"; "$PY" -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(int(j["read"]["iops"] + j["write"]["iops"]))' "$T/fio.json")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    [ -n "$iops" ] || { cat "$T/fio.err" >&2; exit 1; }
    echo "$iops"
}

printf '%-10s %5s | %9s %9s %9s %9s | %7s %7s\n' workload depth file-plg add-cow cow-qcow2 qemu-nbd \
    ac/file ac/qnbd
for rw in randread randwrite; do
    for depth in 1 16; do
        f=$(run file $rw $depth)
        a=$(run addcow $rw $depth)
        if [ $rw = randread ]; then q=$(run qcow2 $rw $depth); else q=-; fi
        n=$(run qnbd $rw $depth)
        printf '%-10s %5s | %9s %9s %9s %9s | %7.2f %7.2f\n' $rw $depth "$f" "$a" "$q" "$n" \
            "$(awk "BEGIN{print $a / $f}")" "$(awk "BEGIN{print $a / $n}")"
    done
done
