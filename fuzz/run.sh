#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Runs every fuzz target (or the ones named) for SECONDS each (default 60)
# and fails on any finding (crash, oracle failure, timeout, OOM, leak).
#
#   fuzz/run.sh                  # smoke check: 60 s per target
#   fuzz/run.sh 900              # the 15-minute run per target
#   fuzz/run.sh 120 bounce dma_pool
#
# Seeds come from the unit tests of fuzz/common (written to
# fuzz/corpus/<target>/, git-ignored); the corpus grows across runs.
# Prints, per target, libFuzzer's final execs/s and cov: (edges covered).
# Environment: FUZZ_JOBS (parallel libFuzzer jobs per target, default 1),
# FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail

cd "$(dirname "$0")"
secs="${1:-60}"
if [[ $# -gt 0 ]]; then
    shift
fi
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [[ "$secs" -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (from crates.io)"
    cargo +nightly install cargo-fuzz --locked
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "== seeds (cargo test in fuzz/common)"
(cd common && cargo test --quiet)

echo "== build"
cargo +nightly fuzz build

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "corpus/$t" "artifacts/$t"
    rc=0
    # -timeout: one input may not run 60 s; -rss_limit_mb: nor grow past 2 GiB.
    # shellcheck disable=SC2086
    jobs=()
    if [[ "${FUZZ_JOBS:-1}" -gt 1 ]]; then
        jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    fi
    cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=2048 "${jobs[@]}" \
        -print_final_stats=1 ${FUZZ_ARGS:-} >"logs/$t.log" 2>&1 || rc=$?
    # With -jobs, libFuzzer logs each job to fuzz-<n>.log (stats: the last job's).
    for f in fuzz-*.log; do
        if [[ -f "$f" ]]; then
            cat "$f" >>"logs/$t.log"
            rm -f "$f"
        fi
    done
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "logs/$t.log" | tail -n 1 || true)"
    execs="$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$done_line")"
    cov="$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")"
    runs="$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "logs/$t.log" | tail -n 1)"
    findings="$(find "artifacts/$t" -type f | wc -l)"
    line="$t: execs/s=${execs:-?} cov=${cov:-?} runs=${runs:-?} findings=$findings rc=$rc"
    echo "$line"
    summary+=("$line")
    if [[ $rc -ne 0 || $findings -ne 0 || -z "$done_line" ]]; then
        failed+=("$t")
        echo "-- $t failed; last lines of logs/$t.log:"
        tail -n 40 "logs/$t.log"
    fi
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
        "reproduce with: cargo +nightly fuzz run <target> <file>)" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs}s with no finding"
