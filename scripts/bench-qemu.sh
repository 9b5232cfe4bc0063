#!/bin/sh
# qemu-img bench inside the patched QEMU 7.2: add-cow and cowblk-qcow2 (the
# library's qcow2 through the glue) against QEMU's own qcow2, in one binary,
# on the same work, alternating (who goes first swaps every run; write runs
# start after a sync), $BENCH_RUNS runs each. Prints one row per case with
# both times and ours / QEMU (> 1 means ours is slower).
#
# Setup: a raw backing file with data, 64 KiB clusters, 4 KiB requests,
# cache=writeback (page cache warm), BENCH_COUNT requests (default 100000),
# queue depth 1 and 16. Run by `make bench-qemu` after `make qemu`.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${QEMU_BUILD:-$ROOT/build/qemu/build-cowblk}
IMG="$B/qemu-img"
IO="$B/qemu-io"
W=${BENCH_DIR:-$ROOT/build/bench-qemu}
RUNS=${BENCH_RUNS:-3}
COUNT=${BENCH_COUNT:-100000}
DEPTHS=${BENCH_DEPTHS:-"1 16"}
SIZE=512M                     # covers COUNT * 4 KiB without wrapping
CS=65536

[ -x "$IMG" ] || { echo "no $IMG: run 'make qemu' first" >&2; exit 1; }
rm -rf "$W" && mkdir -p "$W"
cd "$W"

# Backing data: every byte non-zero, so nothing reads a hole.
"$IMG" create -q -f raw base.raw $SIZE
"$IO" -f raw -c "write -P 0x5a 0 $SIZE" base.raw >/dev/null

# Empty overlays for each format (unallocated reads).
mk() {   # fmt file
    case $1 in
    add-cow) "$IMG" create -q -f add-cow -o backing_file=base.raw,backing_fmt=raw,image_file="$2.img",cluster_size=$CS "$2" ;;
    *) "$IMG" create -q -f qcow2 -o backing_file=base.raw,backing_fmt=raw,cluster_size=$CS "$2" ;;
    esac
}
mk add-cow empty.add-cow
mk qcow2 empty.qcow2
# Fully allocated overlays (allocated reads, rewrites). The qcow2 one is
# written by QEMU's qcow2 and then read and rewritten by both drivers: the
# same file, so the same layout.
mk add-cow full.add-cow
mk qcow2 full.qcow2
"$IO" -f add-cow -c "write -P 0x33 0 $SIZE" full.add-cow >/dev/null
"$IO" -f qcow2 -c "write -P 0x33 0 $SIZE" full.qcow2 >/dev/null

# One timed run: prints seconds. fmt file depth [extra bench args]
run() {
    fmt=$1 file=$2 depth=$3
    shift 3
    "$IMG" bench -f "$fmt" -t writeback -c "$COUNT" -d "$depth" -s 4096 -S 4096 "$@" "$file" |
        sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p'
}

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }'; }
# median of the arguments
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One row: label ours-fmt ours-file qemu-file depth mode (read|fresh-write|write)
row() {
    label=$1 ofmt=$2 ofile=$3 qfile=$4 depth=$5 mode=$6
    best_o="" best_q="" all_o="" all_q="" pairs=""
    i=0
    while [ $i -lt "$RUNS" ]; do
        # who goes first alternates, so neither side always runs right
        # after the other's writes
        order="ours qemu"
        [ $((i % 2)) = 1 ] && order="qemu ours"
        for side in $order; do
            if [ $side = ours ]; then f=$ofmt file=$ofile; else f=qcow2 file=$qfile; fi
            args=""
            case $mode in
            fresh-write)
                # a new overlay every run: each 16th request allocates a
                # cluster (copying 60 KiB from the backing file)
                rm -f "$file" "$file.img"
                mk "$([ $f = add-cow ] && echo add-cow || echo qcow2)" "$file"
                args=-w ;;
            write) args=-w ;;
            esac
            # writes: start with no dirty pages of an earlier run, whose
            # writeback would otherwise land in this one's time
            [ "$mode" = read ] || sync
            t=$(run "$f" "$file" "$depth" $args)
            [ -n "$t" ] || { echo "bench of $f $file failed" >&2; exit 1; }
            if [ $side = ours ]; then
                best_o=$(min "$t" "$best_o") all_o="$all_o $t" last_o=$t
            else
                best_q=$(min "$t" "$best_q") all_q="$all_q $t" last_q=$t
            fi
        done
        pairs="$pairs $(awk -v o="$last_o" -v q="$last_q" 'BEGIN { print o / q }')"
        i=$((i + 1))
    done
    # shellcheck disable=SC2086 # the lists are words on purpose
    mo=$(med $all_o) mq=$(med $all_q) mp=$(med $pairs)
    awk -v l="$label" -v d="$depth" -v o="$best_o" -v q="$best_q" -v mo="$mo" -v mq="$mq" -v mp="$mp" \
        'BEGIN { printf "| %-39s | %2d | %7.3f | %7.3f | %5.2f | %7.3f | %7.3f | %5.2f | %5.2f |\n", l, d, o, q, o / q, mo, mq, mo / mq, mp }'
}

echo "qemu-img bench, 4 KiB requests, $COUNT requests, cache=writeback, 64 KiB clusters, raw backing; $RUNS runs each"
echo "(seconds; ratio = ours / QEMU qcow2 time: below 1.00 ours is faster; best and median of the runs,"
echo " and the median of the per-run pair ratios)"
echo
echo "| case | depth | ours best | qcow2 best | ratio | ours median | qcow2 median | ratio | paired ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
have_lib_qcow2=$("$IMG" --help | grep -c 'cowblk-qcow2' || true)
for d in $DEPTHS; do
    row "add-cow unallocated reads" add-cow empty.add-cow empty.qcow2 "$d" read
    row "add-cow allocated reads" add-cow full.add-cow full.qcow2 "$d" read
    if [ "$have_lib_qcow2" -gt 0 ]; then
        row "cowblk-qcow2 unallocated reads" cowblk-qcow2 empty.qcow2 empty.qcow2 "$d" read
        row "cowblk-qcow2 allocated reads" cowblk-qcow2 full.qcow2 full.qcow2 "$d" read
    fi
    row "add-cow first writes (1 in 16 COW)" add-cow fresh.add-cow fresh.qcow2 "$d" fresh-write
    row "add-cow rewrites" add-cow full.add-cow full.qcow2 "$d" write
    if [ "$have_lib_qcow2" -gt 0 ]; then
        row "cowblk-qcow2 first writes (1 in 16 COW)" cowblk-qcow2 fresh-lib.qcow2 fresh.qcow2 "$d" fresh-write
        row "cowblk-qcow2 rewrites" cowblk-qcow2 full.qcow2 full.qcow2 "$d" write
    fi
done
