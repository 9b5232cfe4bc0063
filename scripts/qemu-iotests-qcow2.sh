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

(cd "$DIR" && QEMU_PROG=$stub QSD_PROG=$stub timeout "${IOTESTS_TIMEOUT:-3600}" \
    ./check -qcow2 "$@") >"$T/log" 2>&1
cat "$T/log"

# The harness prints "NAME ... pass|fail|not run" lines (twice with a
# terminal); take the last word state per test.
python3 - "$T/log" "$@" <<'PY'
import re, sys
log = open(sys.argv[1], errors="replace").read()
state = {}
for m in re.finditer(r"(?:^|\s)([\w-]+)\s+(pass|fail|not run)(?=\s|$)", log):
    state[m.group(1)] = m.group(2)
asked = sys.argv[2:] or sorted(state)
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
