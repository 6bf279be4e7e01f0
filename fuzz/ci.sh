#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and fails on any finding: a panic, a sanitizer
# report, an input that allocates past the memory limits, or one that takes longer than FUZZ_TIMEOUT.
#
#   bash fuzz/ci.sh                  # 60 s per target
#   FUZZ_SECONDS=600 bash fuzz/ci.sh # longer
#   FUZZ_JOBS=1 bash fuzz/ci.sh      # one target at a time (default: as many as there are cores)
#
# Needs the nightly toolchain (rustup); installs cargo-fuzz into ~/.cargo/bin when it is missing. Each target
# starts from its committed seed corpus (fuzz/corpus/<target>, read-only here: new inputs go to a temporary
# directory). A crashing input is kept in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run
# <target> <file>). Builds land in ~/.cache/msk-sync-fuzz-target (about 2 GB; the first build takes tens of
# minutes on 2 cores, later ones seconds to minutes).
set -euo pipefail

seconds="${FUZZ_SECONDS:-60}"
# Memory: whole-process RSS, and any single allocation. The budgets of the decoders (a container-file
# block inflates to at most 64 MiB; a batch decodes at most 512 MiB of messages) must keep every input under
# these, with the sanitizer's own overhead.
rss_mb="${FUZZ_RSS_MB:-3072}"
malloc_mb="${FUZZ_MALLOC_MB:-1024}"
timeout_s="${FUZZ_TIMEOUT:-60}"

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# The sanitizer build of the library and its dependencies (sea-orm, sqlx…) is the slow part: tens of minutes on
# 2 cores. It goes to a cache outside the clone, so every later run (CI clones afresh) rebuilds only msk-sync.
export CARGO_TARGET_DIR="${MSK_SYNC_FUZZ_TARGET:-$HOME/.cache/msk-sync-fuzz-target}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz into ~/.cargo/bin"
    cargo install cargo-fuzz --locked
fi

targets=$(cargo +nightly fuzz list)
# One build for every target (release, debug assertions on, AddressSanitizer: cargo-fuzz's defaults).
cargo +nightly fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Each libFuzzer run is one process on one core: FUZZ_JOBS targets run at once (default: the cores there are),
# so the whole set takes about (targets / cores) x FUZZ_SECONDS. Each keeps its own log, read when it ends.
jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
fuzz_one() { # target -> its log; exit status 0 when libFuzzer found nothing
    local target="$1"
    mkdir -p "$work/$target"
    cargo +nightly fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
        -timeout="$timeout_s" -print_final_stats=1 >"$work/$target.log" 2>&1
}
report() { # target status
    local target="$1" status="$2" log="$work/$1.log" result=ok
    if [ "$status" -ne 0 ]; then
        result=FAILED
        failed+=("$target")
        tail -n 60 "$log"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    peak=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    echo "fuzz $target: $result, ${execs:-?} executions in ${seconds} s, peak RSS ${peak:-?} MB"
}

failed=()
running=() # targets of the current round, with their pids in pids[]
pids=()
finish_round() {
    local i status
    for i in "${!pids[@]}"; do
        status=0
        wait "${pids[$i]}" || status=$?
        report "${running[$i]}" "$status"
    done
    running=()
    pids=()
}
for target in $targets; do
    fuzz_one "$target" &
    running+=("$target")
    pids+=("$!")
    [ "${#pids[@]}" -ge "$jobs" ] && finish_round
done
finish_round

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: findings in ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no findings"
