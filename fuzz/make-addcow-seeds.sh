#!/usr/bin/env bash
# Regenerates the add-cow seed corpora (committed) with the library's own
# tools: cargo build --release first, then fuzz/make-addcow-seeds.sh.
# addcow_parse seeds are add-cow files; addcow_io seeds are 16 control bytes
# (see fuzz_targets/addcow_io.rs) followed by an add-cow file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
img="$root/target/release/cowblk-img" io="$root/target/release/cowblk-io"
out="$root/fuzz/corpus"
t="$(mktemp -d)"
trap 'rm -rf "$t"' EXIT
cd "$t"
"$img" create -q -f raw base.raw 256K
"$io" -f raw -c 'write -P 0x11 0 256K' base.raw >/dev/null
# a: 64 KiB, 4 KiB clusters, a raw backing file, some clusters written.
"$img" create -q -f add-cow -b base.raw -F raw -o image_file=a.img,cluster_size=4096 a.add-cow 64K
"$io" -f add-cow -c 'write -P 0x22 4096 8192' -c 'write -P 0x33 40000 100' a.add-cow >/dev/null
# b: 512-byte clusters, no backing, a partly set bitmap.
"$img" create -q -f add-cow -o image_file=b.img,cluster_size=512 b.add-cow 192K
"$io" -f add-cow -c 'write -P 0x44 0 3000' -c 'write -P 0x55 100000 70000' b.add-cow >/dev/null
# c: 64 KiB clusters over a backing file, one full cluster written.
"$img" create -q -f add-cow -b base.raw -F raw -o image_file=c.img,cluster_size=65536 c.add-cow 256K
"$io" -f add-cow -c 'write -P 0x66 65536 65536' c.add-cow >/dev/null
for s in a b c; do
    cp "$s.add-cow" "$out/addcow_parse/$s.add-cow"
done
# Control bytes: image file length (512-byte units, LE), flags, backing
# length (4 KiB units), three operations (kind, offset LE, length).
ctl() { printf "$1" >"$2"; }
ctl '\x80\x00\x03\x40\x00\x00\x10\x20\x01\x00\x40\x08\x03\x80\x00\x00' "$t/ctl.a"
ctl '\x80\x01\x01\x00\x00\x34\x12\xff\x02\x00\x80\x10\x04\x00\x00\x00' "$t/ctl.b"
ctl '\x00\x02\x03\x40\x03\xff\x00\x00\x00\xf0\x00\x7f\x01\x10\x00\x30' "$t/ctl.c"
for s in a b c; do
    cat "$t/ctl.$s" "$s.add-cow" >"$out/addcow_io/$s.seed"
done
ls -l "$out/addcow_parse" "$out/addcow_io"
