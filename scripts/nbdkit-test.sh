#!/bin/bash
# make nbdkit-test: serves images through build/nbdkit/nbdkit-cowblk-plugin.so
# and drives them with this machine's unpatched QEMU 10 tools (qemu-img,
# qemu-io over nbd+unix://) and libnbd's tools (nbdinfo, nbdcopy), then runs
# eight clients at once against eight overlays of one base.
# Prints one line per check and ends with "N passed, N failed".
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLUGIN=$ROOT/build/nbdkit/nbdkit-cowblk-plugin.so
CIMG=$ROOT/target/release/cowblk-img
QIMG=/usr/bin/qemu-img
QIO=/usr/bin/qemu-io
PY=/usr/bin/python3            # Debian's, where python3-libnbd lives
TO=${NBDKIT_TEST_TIMEOUT:-120}   # bound for every single tool run
CLIENT_ROUNDS=${NBDKIT_CLIENT_ROUNDS:-400}

for b in "$PLUGIN" "$CIMG" "$QIMG" "$QIO" "$(command -v nbdkit)" "$(command -v nbdinfo)" \
         "$(command -v nbdcopy)"; do
    [ -x "$b" ] || { echo "missing ${b:-a tool} (run 'make nbdkit' first)"; echo "0 passed, 1 failed"; exit 1; }
done

mkdir -p "$ROOT/build"
T=$(mktemp -d "$ROOT/build/nbdkit-test.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT

. "$ROOT/scripts/testlib.sh"

# serve NAME ARGS...: starts nbdkit on $T/NAME.sock with the plugin and ARGS,
# waits for the socket. stop NAME: stops it and waits until it has exited
# (so its image is closed, flushed and unlocked).
serve() {
    local name=$1
    shift
    rm -f "$T/$name.sock" "$T/$name.pid"
    nbdkit -f -U "$T/$name.sock" -P "$T/$name.pid" "$PLUGIN" "$@" 2>"$T/$name.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -S "$T/$name.sock" ] && [ -s "$T/$name.pid" ] && return 0
        sleep 0.1
    done
    cat "$T/$name.err"
    return 1
}
stop() {
    local pid
    pid=$(cat "$T/$1.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
url() { echo "nbd+unix:///?socket=$T/$1.sock"; }

# --- the images: a raw base with patterns, an add-cow and a qcow2 overlay ---
cd "$T"
t $QIMG create -q -f raw base.raw 64M
t $QIO -f raw -c 'write -P 0x11 0 4M' -c 'write -P 0x22 20M 3M' -c 'write -P 0x33 63M 1M' base.raw >/dev/null
sha_base=$(sha256sum base.raw | cut -d' ' -f1)
t $CIMG create -q -f add-cow -o image_file=ov.img -b base.raw -F raw ov.add-cow
cp base.raw twin.raw
t $QIMG create -q -f qcow2 -b base.raw -F raw ov.qcow2
t $QIO -f qcow2 -c 'write -P 0x44 1M 2M' -c 'write -z 21M 512k' ov.qcow2 >/dev/null

# Guest writes through NBD to the add-cow overlay, and the same to a raw twin
# of the base with the local qemu-io: afterwards both must be equal.
CMDS=(-c 'write -P 0xa1 512 4k' -c 'write -P 0xa2 3M 2M' -c 'write -P 0xa3 21M 100k'
      -c 'write -z 62M 1536k' -c 'write -P 0xa4 40000 70000' -c 'discard 10M 1M'
      -c 'write -P 0xa5 10M 64k' -c flush)
nbd_writes() {
    t $QIO -f raw "${CMDS[@]}" -c 'read -P 0xa2 3M 2M' -c 'read -P 0x22 22M 1M' \
        -c 'read -P 0 62M 1536k' -c 'read -P 0xa5 10M 64k' "$(url ov)" &&
    t $QIO -f raw "${CMDS[@]}" twin.raw
}
check "serve the add-cow overlay" serve ov file="$T/ov.add-cow" format=add-cow
check "qemu-io 10 writes and reads patterns through NBD" nbd_writes
check "qemu-img 10 compare: NBD view equals the raw twin" t $QIMG compare -f raw -F raw "$(url ov)" twin.raw
nbdinfo_size() { [ "$(t nbdinfo --size "$(url ov)")" = 67108864 ]; }
check "nbdinfo sees the size" nbdinfo_size

# qemu-img map over NBD against cowblk-img map on the image itself: the same
# runs of data and zeros. NBD has no layers, so depth, present and offset are
# dropped and adjacent runs of equal state merged before comparing.
map_norm() {
    $PY -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    s = (e["data"], e["zero"])
    if out and out[-1][2] == s and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], s])
for o in out:
    print(o[0], o[1], "data" if o[2][0] else "-", "zero" if o[2][1] else "-")
'
}
map_same() {
    local img=$1 name=$2
    t $QIMG map --output=json "$(url "$name")" | map_norm >"$T/map.nbd" &&
    t $CIMG map --output=json "$img" | map_norm >"$T/map.local" &&
    cat "$T/map.nbd" && diff "$T/map.nbd" "$T/map.local"
}
check "stop the add-cow server" stop ov
check "serve it read-only (-r)" serve ov -r file="$T/ov.add-cow"
check "map over NBD equals cowblk-img map (add-cow)" map_same ov.add-cow ov
check "a write through a read-only server fails" sh -c "! timeout $TO $QIO -f raw -c 'write 0 512' '$(url ov)'"
nbdcopy_out() {
    t nbdcopy "$(url ov)" "$T/copy.raw" && t $CIMG convert -O raw ov.add-cow local.raw &&
    cmp "$T/copy.raw" local.raw && cmp local.raw twin.raw
}
check "nbdcopy copies the whole image out, equal to the local view" nbdcopy_out
check "stop the read-only server" stop ov

# qcow2 (made by QEMU 10, with a backing file): read through NBD.
check "serve a qcow2 overlay read-only" serve q -r file="$T/ov.qcow2"
check "qemu-img 10 compare: qcow2 through NBD equals qemu-img's own view" \
    t $QIMG compare -f raw -F qcow2 "$(url q)" ov.qcow2
check "map over NBD equals cowblk-img map (qcow2)" map_same ov.qcow2 q
check "stop the qcow2 server" stop q

# qcow2 read-write through NBD: QEMU 10's qemu-io writes our qcow2 overlay
# (made by QEMU), the same writes go to a raw twin; then QEMU 10 checks the
# image we wrote and compares it with the twin.
cp base.raw qtwin.raw
t $QIMG create -q -f qcow2 -b base.raw -F raw qrw.qcow2
QCMDS=(-c 'write -P 0xb1 0 4k' -c 'write -P 0xb2 1M 3M' -c 'write -z 21M 512k'
       -c 'write -P 0xb3 40000 70000' -c 'write -z -u 2M 64k' -c 'write -P 0xb4 63M 64k' -c flush)
qcow2_writes() {
    t $QIO -f raw "${QCMDS[@]}" -c 'read -P 0xb2 1M 1M' -c 'read -P 0 2M 64k' "$(url qrw)" &&
    t $QIO -f raw "${QCMDS[@]}" qtwin.raw
}
check "serve a qcow2 overlay read-write" serve qrw file="$T/qrw.qcow2"
check "qemu-io 10 writes and reads a qcow2 image through NBD" qcow2_writes
check "qemu-img 10 compare: the qcow2 through NBD equals the raw twin" \
    t $QIMG compare -f raw -F raw "$(url qrw)" qtwin.raw
check "stop the qcow2 server" stop qrw
check "qemu-img 10 check: the qcow2 we wrote is clean" t $QIMG check qrw.qcow2
check "qemu-img 10 reads the qcow2 we wrote as the twin" t $QIMG compare qrw.qcow2 qtwin.raw

# Errors reach the client with their errno: a read past the end.
check "serve add-cow again" serve ov file="$T/ov.add-cow"
check "a read past the end is refused" sh -c "! timeout $TO $QIO -f raw -c 'read 64M 512' '$(url ov)'"
check "stop it" stop ov
# Flags and capabilities: FUA, zero with and without may-trim, fast zero,
# trim, cache, multi-conn, block status (scripts/nbd-flags.py).
t $CIMG create -q -f add-cow -o image_file=flags.img flags.add-cow 16M
check "serve a fresh add-cow" serve fl file="$T/flags.add-cow"
check "FUA, zero (may-trim, fast), trim, cache, multi-conn, extents" \
    t $PY "$ROOT/scripts/nbd-flags.py" "$T/fl.sock"
check "stop it" stop fl

# A library error reaches the client with its errno and nbdkit's log with
# the library's message: a qcow2 whose first L1 entry points past the end.
corrupt_qcow2() {
    t $QIMG create -q -f qcow2 bad.qcow2 4M && t $QIO -c 'write -P 1 0 64k' bad.qcow2 >/dev/null &&
    $PY -c '
import struct, sys
f = open("bad.qcow2", "r+b")
f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
f.seek(l1); f.write(struct.pack(">Q", (1 << 63) | (1 << 40)))
' && serve bad -r file="$T/bad.qcow2" && $PY -c '
import errno, nbd, sys
h = nbd.NBD(); h.connect_unix(sys.argv[1])
try:
    h.pread(4096, 0)
except nbd.Error as e:
    print("client got", e.errno)
    sys.exit(0 if e.errnum == errno.EINVAL else 1)
sys.exit(1)
' "$T/bad.sock" && stop bad && grep "cowblk: read:" "$T/bad.err"
}
check "a corrupt image: the client gets the errno, the log the message" corrupt_qcow2
# confined=true: an image naming a file outside its directory is refused
# (here an add-cow whose image file lies elsewhere), and says why.
confined_refusal() {
    mkdir -p "$T/outside" "$T/jail" &&
    t $CIMG create -q -f add-cow -o image_file="$T/outside/x.img" "$T/jail/evil.add-cow" 1M &&
    serve evil confined=true file="$T/jail/evil.add-cow" &&
    ! t $QIO -f raw -c 'read 0 512' "$(url evil)" && stop evil &&
    grep "outside the image's directory" "$T/evil.err"
}
check "confined=true refuses an image naming a file outside its directory" confined_refusal
check "a missing image fails at startup with a message" \
    sh -c "! timeout $TO nbdkit -f -U $T/x.sock $PLUGIN file=$T/nope.add-cow 2>$T/x.err && grep -q nope $T/x.err"

# Eight clients at once: each writes its own add-cow overlay of one base
# (one nbdkit per overlay) while all of them read the base through it.
eight_clients() {
    local socks=() i
    for i in 0 1 2 3 4 5 6 7; do
        t $CIMG create -q -f add-cow -o image_file=c$i.img -b base.raw -F raw c$i.add-cow || return 1
        serve c$i file="$T/c$i.add-cow" || return 1
        socks+=("$T/c$i.sock")
    done
    t $PY "$ROOT/scripts/nbd-clients.py" base.raw "$CLIENT_ROUNDS" 7 "${socks[@]}" || return 1
    for i in 0 1 2 3 4 5 6 7; do
        stop c$i || return 1
        t $CIMG compare -f add-cow -F raw c$i.add-cow "$T/c$i.sock.model" || return 1
    done
    echo "base: $(sha256sum base.raw | cut -d' ' -f1) (was $sha_base)"
    [ "$(sha256sum base.raw | cut -d' ' -f1)" = "$sha_base" ]
}
check "eight clients on eight overlays of one base, each equal to its model, base unchanged" eight_clients

# SIGKILL in the middle of writes: after a restart the image opens and every
# write that a flush had covered before the kill is there.
killed_server() {
    local img=$1 fmt=$2 pid
    rm -f "$T/kill.log"
    serve k file="$T/$img" format="$fmt" || return 1
    t $PY "$ROOT/scripts/nbd-kill-writer.py" write "$T/k.sock" "$T/kill.log" 4096 &
    local writer=$!
    for _ in $(seq 300); do
        [ "$(tail -n 1 "$T/kill.log" 2>/dev/null || echo 0)" -ge 128 ] && break
        sleep 0.05
    done
    pid=$(cat "$T/k.pid")
    kill -9 "$pid"
    wait "$writer"
    echo "killed after $(tail -n 1 "$T/kill.log") flushed chunks"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    serve k file="$T/$img" format="$fmt" || return 1
    t $PY "$ROOT/scripts/nbd-kill-writer.py" verify "$T/k.sock" "$T/kill.log" || return 1
    stop k
}
t $CIMG create -q -f add-cow -o image_file=kill.img kill.add-cow 256M
check "add-cow: server SIGKILLed during writes, restarted: flushed writes all there" \
    killed_server kill.add-cow add-cow
t $QIMG create -q -f qcow2 kill.qcow2 256M
check "qcow2: server SIGKILLed during writes, restarted: flushed writes all there" \
    killed_server kill.qcow2 qcow2
check "qemu-img 10 check of the killed qcow2: no errors (leaks allowed)" \
    sh -c "timeout $TO $QIMG check kill.qcow2; r=\$?; [ \$r -eq 0 ] || [ \$r -eq 3 ]"

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
