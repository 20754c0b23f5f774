#!/usr/bin/env bash
# Builds every cargo-fuzz target of the repository (agent, capsule, events, fabric and state fuzz
# crates) and runs each for a bounded time from its checked-in seeds (<crate>/fuzz/seeds/<target>/).
# Fails when a target crashes (a panic, an abort, a timeout, running out of memory): the input
# is kept under target/fuzz/artifacts/<crate>/<target>/ and the line to replay it is printed.
#
#   scripts/fuzz.sh                    every target, BOLT_FUZZ_SECONDS (20) each
#   scripts/fuzz.sh capsule/unpack_layer events/log_tables
#
# Needs rustup's nightly toolchain and cargo-fuzz; both are installed when missing. Targets run
# BOLT_FUZZ_JOBS (2) at a time; builds are `--dev` (debug assertions and overflow checks on)
# without a sanitizer: the code under test is safe Rust.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
SECS=${BOLT_FUZZ_SECONDS:-20}
JOBS=${BOLT_FUZZ_JOBS:-2}
CRATES=(events state fabric capsule agent)
TARGET_DIR=$REPO/target/fuzz
ARTIFACTS=$TARGET_DIR/artifacts
BUILD=(--dev --sanitizer none --target-dir "$TARGET_DIR")
BIN_DIR=$TARGET_DIR/x86_64-unknown-linux-gnu/debug

# One target: fuzz_one CRATE TARGET (also the entry point of the parallel runs below).
fuzz_one() {
    local crate=$1 target=$2 corpus art log rc
    corpus=$TARGET_DIR/corpus/$crate/$target
    art=$ARTIFACTS/$crate/$target
    log=$TARGET_DIR/logs/$crate-$target.log
    mkdir -p "$corpus" "$art" "$(dirname "$log")"
    if [[ ! -d $REPO/$crate/fuzz/seeds/$target ]]; then
        echo "fuzz: $crate/$target has no seeds: add a few inputs under $crate/fuzz/seeds/$target/"
        return 1
    fi
    # The working corpus comes first (libFuzzer adds new inputs there); the seeds stay as they are.
    # -timeout: one input running this long is a hang; -rss_limit_mb: memory blow-ups are crashes.
    set +e
    "$BIN_DIR/$target" "$corpus" "$REPO/$crate/fuzz/seeds/$target" \
        -max_total_time="$SECS" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$art/" >"$log" 2>&1
    rc=$?
    set -e
    local execs
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if ((rc != 0)); then
        echo "fuzz: $crate/$target CRASHED (exit $rc) after ${execs:-?} runs; log $log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/    /'
        echo "    replay: (cd $crate && cargo +nightly fuzz run ${BUILD[*]} $target $art/<crash file>)"
        return 1
    fi
    echo "fuzz: $crate/$target ok: ${execs:-?} runs in ${SECS} s"
}

if [[ ${1:-} == --one ]]; then
    fuzz_one "$2" "$3"
    exit
fi

# The tools, installed when missing: nightly (libFuzzer's instrumentation) and cargo-fuzz.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# CRATE/TARGET pairs: those asked for, or every target of every fuzz crate.
pairs=()
if (($# > 0)); then
    pairs=("$@")
else
    for crate in "${CRATES[@]}"; do
        while read -r target; do
            [[ -n $target ]] && pairs+=("$crate/$target")
        done < <(cd "$crate" && cargo +nightly fuzz list)
    done
fi

t0=$SECONDS
for crate in $(printf '%s\n' "${pairs[@]}" | cut -d/ -f1 | sort -u); do
    echo "fuzz: building $crate/fuzz"
    (cd "$crate" && cargo +nightly fuzz build "${BUILD[@]}")
done
echo "fuzz: built in $((SECONDS - t0)) s; running ${#pairs[@]} targets, ${SECS} s each, $JOBS at a time"

t1=$SECONDS
failed=0
printf '%s\n' "${pairs[@]}" | tr / ' ' |
    xargs -P "$JOBS" -L 1 "$REPO/scripts/fuzz.sh" --one || failed=1
echo "fuzz: ran in $((SECONDS - t1)) s"
if ((failed)); then
    echo "fuzz: FAILED: a target crashed (inputs under $ARTIFACTS)" >&2
    exit 1
fi
echo "fuzz: all ${#pairs[@]} targets ran without a crash"
