#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: scripts/fuzz.sh SECONDS
# (per target; default 60, so 6 minutes for the six targets: qcow2_parse,
# qcow2_read, qcow2_write, addcow_parse, addcow_io, meta_parse). Seeds come from fuzz/corpus/<target> (committed,
# left untouched); new inputs go to a temporary directory. A crash leaves
# its input in fuzz/artifacts/<target>/ and makes this script fail.
#
# Needs: cargo-fuzz (installed here if missing) and a C++
# compiler (libfuzzer-sys builds libFuzzer). cargo-fuzz needs nightly
# features (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 enables
# them, which this script sets.
set -euo pipefail
secs="${1:-60}"
# FUZZ_SEED fixes libFuzzer's seed (CI does, so a run replays the same
# inputs); unset, every run explores anew.
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz 0.13.2 from crates.io" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $(cargo fuzz list); do
    mkdir -p "$work/$t"
    echo "== fuzzing $t for ${secs}s"
    cargo fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=131072 -rss_limit_mb=1024 \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
        -timeout=10 -print_final_stats=1
done
echo "fuzz.sh: all targets ran ${secs}s without a crash"
