#!/bin/bash
# QEMU 7.2's own qemu-iotests with -qcow2 against the library's qcow2: runs
# ./check -qcow2 in the second configuration of the patched tree
# (build/qemu/build-libqcow2, `make qemu-libqcow2`), where the library's
# qcow2 is registered as "qcow2" and QEMU's qcow2 is not built.
#
#   scripts/qemu-iotests-qcow2.sh [TEST...]   # default: every test (-qcow2)
#
# Prints the harness's log, then one line per test asked for ("ok", "FAIL",
# "skip" for not run) and "N passed, N failed, N not run". Exits non-zero
# if a test named on the command line did not pass.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OBJ=${QEMU_LIBQCOW2_BUILD:-$ROOT/build/qemu/build-libqcow2}
DIR=$OBJ/tests/qemu-iotests
[ -x "$OBJ/qemu-img" ] || { echo "missing $OBJ/qemu-img (run 'make qemu-libqcow2' first)"; exit 1; }
"$OBJ/qemu-img" --help | grep -q 'cowblk-qcow2' &&
    { echo "$OBJ is not the library-qcow2 configuration"; exit 1; }

T=$(mktemp -d "$ROOT/build/iotests-qcow2.XXXXXX")
trap 'rm -rf "$T"' EXIT
# A tools-only build has no qemu-system or qemu-storage-daemon, which the
# harness insists on finding: this stand-in answers its "-machine help"
# probe and fails loudly if a test ever starts it.
stub=$T/qemu-system-stub
cat >"$stub" <<'EOS'
#!/bin/sh
if [ "$1" = "-machine" ] && [ "$2" = "help" ]; then
    echo "Supported machines are:"
    exit 0
fi
echo "qemu-system-stub: not built (tools-only QEMU build)" >&2
exit 1
EOS
chmod +x "$stub"

# One ./check per test, each bounded (some tests wait for blkdebug
# breakpoints that a library doing its own I/O never reaches, and would
# hang): IOTEST_TIMEOUT seconds (default 120).
tests=("$@")
if [ ${#tests[@]} = 0 ]; then
    mapfile -t tests < <(cd "$ROOT/build/qemu/tests/qemu-iotests" && ls | grep -E "^[0-9]{3}$"; ls tests | grep -v "\\.")
fi
# every test run, for the summary (a test's own output may hold words
# that look like "NAME pass|fail")
printf '%s\n' "${tests[@]}" >"$T/all"
if [ "${IOTESTS_ONE_CHECK:-0}" = 1 ]; then
    # one ./check for the whole list (tests known to finish), bounded as a whole
    (cd "$DIR" && QEMU_PROG=$stub QSD_PROG=$stub timeout -k 5 "${IOTESTS_TIMEOUT:-1200}" \
        ./check -qcow2 "${tests[@]}") >"$T/log" 2>&1
    cat "$T/log"
    tests=()
fi
for n in "${tests[@]}"; do
    (cd "$DIR" && QEMU_PROG=$stub QSD_PROG=$stub timeout -k 5 "${IOTEST_TIMEOUT:-120}" \
        ./check -qcow2 "$n") >"$T/one" 2>&1
    rc=$?
    cat "$T/one" >>"$T/log"
    [ $rc = 124 ] || [ $rc = 137 ] && echo "$n   fail   (timed out)" >>"$T/log"
    grep -aE "(^|[[:space:]])$n +(pass|fail|not run)" "$T/one" | tail -n 1
done
cat "$T/log" >"${IOTESTS_LOG:-/dev/null}"

# The harness prints "NAME ... pass|fail|not run" lines (twice with a
# terminal); take the last word state per test.
python3 - "$T/log" "$T/all" "$@" <<'PY'
import re, sys
log = open(sys.argv[1], errors="replace").read()
run = open(sys.argv[2]).read().split()
del sys.argv[2]
state = {}
for m in re.finditer(r"(?:^|\s)([\w-]+)\s+(pass|fail|not run)(?=\s|$)", log):
    state[m.group(1)] = m.group(2)
asked = sys.argv[2:] or run
p = f = n = 0
bad = False
for t in asked:
    s = state.get(t, "fail")
    if s == "pass":
        p += 1; print("ok  ", t)
    elif s == "not run":
        n += 1; print("skip", t); bad = bad or bool(sys.argv[2:])
    else:
        f += 1; print("FAIL", t); bad = bad or bool(sys.argv[2:])
print(f"{p} passed, {f} failed, {n} not run")
sys.exit(1 if bad else 0)
PY
