#!/usr/bin/env bash
# Runs every cargo-fuzz target of ferry for N executions each and prints a summary table.
# Fails (exit 1) if any target crashes, leaks, runs out of memory or times out.
#
#   fuzz/run-all.sh                  # 1,000,000 executions per target
#   fuzz/run-all.sh 100000           # fewer
#   fuzz/run-all.sh 1000000 settings pem   # only some targets
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default: fuzz/target)
#   FUZZ_JOBS          targets run at once (default 1; each libFuzzer process uses one core)
#   FUZZ_SANITIZER     address (default) or none (no ASan: faster, fewer checks)
#   FUZZ_TIMEOUT       seconds one input may take before it counts as a hang (default 60)
#   FUZZ_ARGS          more libFuzzer flags, e.g. "-max_len=8192"
#
# See docs/fuzzing.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

runs="${1:-1000000}"
shift || true
if ! [[ "$runs" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [RUNS] [TARGET...]" >&2
    exit 2
fi
jobs="${FUZZ_JOBS:-1}"
sanitizer="${FUZZ_SANITIZER:-address}"
timeout="${FUZZ_TIMEOUT:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is not installed. Install it with:" >&2
    echo "    cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
    echo "error: no C++ compiler (libfuzzer-sys builds libFuzzer from C++). Install one with:" >&2
    echo "    apt-get install -y g++" >&2
    exit 2
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, and -Z flags even with
# --sanitizer none); RUSTC_BOOTSTRAP=1 lets a stable rustc accept them.
export RUSTC_BOOTSTRAP=1

mapfile -t all_targets < <(cargo fuzz list)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=("${all_targets[@]}")
fi

echo "building ${#targets[@]} targets (sanitizer: $sanitizer)..." >&2
cargo fuzz build --sanitizer "$sanitizer" >&2 || {
    echo "error: cargo fuzz build failed" >&2
    exit 1
}

logs="$here/artifacts/logs"
mkdir -p "$logs"

# Per-target libFuzzer flags.
target_args() {
    case "$1" in
        # expand() refuses entries over 255 bytes before expanding; longer inputs are
        # refused at once, so spend the time on inputs around that cap.
        hostlist) echo "-max_len=256" ;;
    esac
}

run_one() {
    local t="$1" log="$logs/$1.log" start end status
    mkdir -p "corpus/$t"
    local seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    start=$(date +%s.%N)
    status=0
    # The first corpus directory receives new inputs; seeds/ is read only.
    # shellcheck disable=SC2086
    cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- \
        -runs="$runs" -timeout="$timeout" -print_final_stats=1 $(target_args "$t") ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || status=$?
    end=$(date +%s.%N)
    echo "$status $(awk "BEGIN { print $end - $start }")" >"$log.result"
}

running=0
for t in "${targets[@]}"; do
    echo "fuzzing $t ($runs executions)..." >&2
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

stat() { # stat NAME LOG -> value of libFuzzer's "stat::NAME: value" line
    sed -n "s/^stat::$1:[[:space:]]*//p" "$2" | tail -n1
}

failed=0
printf '\n%-24s %12s %9s %9s %7s %8s %8s %9s  %s\n' \
    target executions exec/s seconds cov features corpus "rss(MB)" result
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    read -r status secs <"$log.result"
    execs=$(stat number_of_executed_units "$log")
    eps=$(stat average_exec_per_sec "$log")
    rss=$(stat peak_rss_mb "$log")
    last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse)' "$log" | tail -n1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    result=ok
    if [ "$status" != 0 ]; then
        failed=1
        result="FAILED (exit $status)"
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        [ -n "$artifact" ] && result="$result: $artifact"
        grep -qE 'out-of-memory|malloc\(.*\) exceeds' "$log" && result="$result [OOM]"
        grep -q 'ERROR: libFuzzer: timeout' "$log" && result="$result [timeout]"
        grep -q 'libFuzzer: run interrupted' "$log" && result="INTERRUPTED (exit $status)"
    elif [ -n "$execs" ] && [ "$execs" -lt "$runs" ]; then
        failed=1
        result="FAILED: only $execs executions"
    fi
    printf '%-24s %12s %9s %9.0f %7s %8s %8s %9s  %s\n' \
        "$t" "${execs:-?}" "${eps:-?}" "$secs" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$result"
done
echo
echo "logs: $logs/" >&2
if [ "$failed" != 0 ]; then
    echo "error: at least one target failed; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT" >&2
    exit 1
fi
