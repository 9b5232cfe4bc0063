# Sourced by the shell test drivers (qemu-test.sh, nbdkit-test.sh): one
# line per check and a closing "N passed, N failed". The driver sets T (its
# scratch directory) and TO (a time bound for every tool run) first.
PASS=0
FAIL=0
LOG=$T/step.log

# check NAME CMD...: runs CMD (a shell function or command) and records it;
# a failure shows the last lines of its output.
check() {
    local name=$1
    shift
    if "$@" >"$LOG" 2>&1; then
        PASS=$((PASS + 1))
        echo "ok   $name"
    else
        FAIL=$((FAIL + 1))
        echo "FAIL $name"
        tail -n 25 "$LOG" | sed 's/^/     | /'
    fi
}

# Runs a tool with a time bound.
t() { timeout "$TO" "$@"; }
