#!/bin/sh
# Runs the C test programs named on the command line, one line each, and
# ends with "ctest: N passed, N failed, N skipped". Exit status 77 means
# skipped. $VALGRIND, if set, prefixes every run. Logs: <program>.log.
pass=0 fail=0 skip=0
for t in "$@"; do
    name=$(basename "$t")
    log="$t.log"
    $VALGRIND "$t" >"$log" 2>&1
    rc=$?
    case $rc in
    0) pass=$((pass + 1)); echo "PASS $name" ;;
    77) skip=$((skip + 1)); echo "SKIP $name" ;;
    *) fail=$((fail + 1)); echo "FAIL $name (exit $rc), last lines of $log:"
       tail -n 15 "$log" | sed 's/^/    /' ;;
    esac
done
echo "ctest: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
