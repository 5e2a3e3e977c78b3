#!/usr/bin/env bash
# Run every seeded simulation test over many seeds.
#
#   scripts/sim-sweep.sh [--seeds N] [--start S] [--jobs J] [--only REGEX]
#
# Builds the stack's test binaries, finds the seeded simulation tests (the test files under
# stack/tests that call support::seeds, and every test in them but regression_seeds, which
# runs its own fixed seeds), and runs each test once per seed S..S+N-1 with PLEX_SIM_SEED
# set, J runs at a time (default 2). A failing run's output is kept under the log directory
# (PLEX_SWEEP_LOG, default target/sim-sweep) and listed with the command that reproduces it.
# Exits non-zero on any failure. --only keeps the tests whose "binary::test" matches REGEX.
#
# Defaults: 300 seeds (the quick chaos run); the full run uses --seeds 10000.
set -euo pipefail

seeds=300
start=1
jobs=2
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --start) start="$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "sim-sweep: unknown argument $1" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log="${PLEX_SWEEP_LOG:-$root/target/sim-sweep}"
rm -rf "$log"
mkdir -p "$log/fail"

echo "sim-sweep: building test binaries"
build_out="$(cargo test --release -p stack --no-run 2>&1)" || { echo "$build_out"; exit 1; }

# The seeded test files, and their binaries as cargo printed them.
list="$log/runs"
: >"$list"
for src in stack/tests/*.rs; do
    grep -q 'seeds(' "$src" || continue
    name="$(basename "$src" .rs)"
    bin="$(echo "$build_out" | sed -n "s|.*Executable tests/$name.rs (\(.*\))|\1|p" | tail -1)"
    [ -n "$bin" ] || { echo "sim-sweep: no binary for $src" >&2; exit 1; }
    # Run a copy: a build during a long sweep replaces (or removes) cargo's binaries.
    mkdir -p "$log/bin"
    cp "$bin" "$log/bin/"
    bin="$log/bin/$(basename "$bin")"
    for t in $("$bin" --list 2>/dev/null | sed -n 's/: test$//p'); do
        [ "$t" = regression_seeds ] && continue
        if [ -n "$only" ] && ! [[ "$name::$t" =~ $only ]]; then
            continue
        fi
        echo "$bin $t" >>"$list"
    done
done
ntests="$(wc -l <"$list")"
[ "$ntests" -gt 0 ] || { echo "sim-sweep: no tests selected" >&2; exit 1; }
total=$((ntests * seeds))
echo "sim-sweep: $ntests tests x $seeds seeds ($start..$((start + seeds - 1))) = $total runs, $jobs at a time"
sed 's/^/  /' "$list"

# One run: prints "ok|FAIL <binary> <test> <seed>".
run_one() {
    local bin="$1" test="$2" seed="$3" log="$4"
    local out="$log/fail/$(basename "$bin" | sed 's/-[0-9a-f]*$//')-$test-$seed.log"
    if PLEX_SIM_SEED="$seed" "$bin" --exact "$test" --test-threads 1 >"$out" 2>&1; then
        rm -f "$out"
        echo "ok $bin $test $seed"
    else
        echo "FAIL $bin $test $seed"
    fi
}
export -f run_one

t0=$(date +%s)
results="$log/results"
for ((s = start; s < start + seeds; s++)); do
    while read -r bin test; do
        echo "$bin $test $s"
    done <"$list"
done | xargs -P "$jobs" -n 3 bash -c 'run_one "$0" "$1" "$2" "'"$log"'"' | {
    done_runs=0
    fails=0
    while read -r status bin test seed; do
        echo "$status $bin $test $seed" >>"$results"
        done_runs=$((done_runs + 1))
        if [ "$status" = FAIL ]; then
            fails=$((fails + 1))
            echo "  FAIL $(basename "$bin") $test seed=$seed"
        fi
        if [ $((done_runs % 100)) -eq 0 ] || [ "$done_runs" -eq "$total" ]; then
            echo "sim-sweep: $done_runs/$total runs, $fails failures, $(($(date +%s) - t0)) s"
        fi
    done
}

elapsed=$(($(date +%s) - t0))
runs="$(wc -l <"$results" 2>/dev/null || echo 0)"
failures="$(grep -c '^FAIL' "$results" 2>/dev/null || true)"
failures="${failures:-0}"
if [ "$failures" -gt 0 ]; then
    echo "sim-sweep: failures:"
    grep '^FAIL' "$results" | while read -r _ bin test seed; do
        echo "  $test seed=$seed: reproduce with PLEX_SIM_SEED=$seed $bin --exact $test" \
            "(log: $log/fail/$(basename "$bin" | sed 's/-[0-9a-f]*$//')-$test-$seed.log)"
    done
fi
echo "sim-sweep: $runs runs, $failures failures ($elapsed s)"
[ "$runs" -eq "$total" ] || { echo "sim-sweep: only $runs of $total runs reported" >&2; exit 1; }
[ "$failures" -eq 0 ]
