#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan; tests/fuzz) and runs
# each for a bounded time, starting from the checked-in seed corpus.
# Fails if a target crashes, trips a sanitizer or an assertion, leaks, or
# times out on one input; the input that did it is kept under
# $BUILD/fuzz-artifacts/ and its path printed (replay it with
# `$BUILD/tests/fuzz/TARGET FILE`). New inputs found go to a scratch
# directory, so the checked-in corpus stays the generator's output.
#
#   scripts/fuzz.sh                        # 60 s per target
#   CQR_FUZZ_SECONDS=600 scripts/fuzz.sh   # longer
#   CQR_FUZZ_TARGETS=fuzz_rpc scripts/fuzz.sh
#   CQR_FUZZ_RUNS=100000000 CQR_FUZZ_SECONDS=86400 scripts/fuzz.sh
#                                          # until 1e8 executions
#
# Environment: CQR_FUZZ_SECONDS (per target, default 60),
# CQR_FUZZ_TARGETS (default "fuzz_frame fuzz_rpc"), CQR_FUZZ_BUILD (build
# directory, default build-fuzz), CQR_FUZZ_JOBS (parallel fuzzing
# processes per target, default 1), CQR_FUZZ_RUNS (stop a process after
# this many executions, whichever of time and runs comes first; default
# unbounded).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${CQR_FUZZ_SECONDS:-60}
TARGETS=${CQR_FUZZ_TARGETS:-"fuzz_frame fuzz_rpc"}
BUILD=${CQR_FUZZ_BUILD:-build-fuzz}
JOBS=${CQR_FUZZ_JOBS:-1}
RUNS=${CQR_FUZZ_RUNS:--1}

if ! command -v clang >/dev/null; then
  echo "fuzz: clang not found (.ci/install-deps.sh installs it)" >&2
  exit 1
fi

echo "== fuzz: build ($BUILD, clang, libFuzzer + ASan + UBSan)"
CC=clang cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCQR_FUZZ=ON >/dev/null
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$(nproc)" --target $TARGETS

mkdir -p "$BUILD/fuzz-artifacts"
status=0
summary=""
for t in $TARGETS; do
  bin="$BUILD/tests/fuzz/$t"
  seeds="tests/fuzz/corpus/$t"
  scratch=$(mktemp -d)
  logs=()
  echo "== fuzz: $t for ${SECONDS_EACH} s, $JOBS process(es) (seeds: $seeds)"
  # -timeout: one input may take 10 s at most; -rss_limit_mb: per process;
  # leaks are checked after each input (LeakSanitizer). Each process
  # writes its own log; they share the scratch corpus (-reload picks up
  # what the others found).
  # ASan: a 16 MiB quarantine instead of 256 MiB keeps freed memory
  # in cache (with the default, most of fuzz_rpc's allocations landed on
  # memory that had to be faulted in and poisoned anew), and 10 frames
  # of allocation stack instead of 30. A use after free is still caught
  # while the chunk is among the last 16 MiB freed (an input frees far
  # less); replay an artifact with plain ASAN_OPTIONS for full stacks.
  pids=()
  for j in $(seq 1 "$JOBS"); do
    log="$BUILD/fuzz-artifacts/$t-$j.log"
    logs+=("$log")
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:quarantine_size_mb=16:malloc_context_size=10 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "$bin" -max_total_time="$SECONDS_EACH" -runs="$RUNS" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -seed="$j$RANDOM" \
        -artifact_prefix="$BUILD/fuzz-artifacts/$t-" \
        "$scratch" "$seeds" >"$log" 2>&1 &
    pids+=($!)
  done
  rc=0
  for pid in "${pids[@]}"; do
    wait "$pid" || rc=$?
  done
  execs=$(cat "${logs[@]}" |
          grep -o 'stat::number_of_executed_units: *[0-9]*' |
          awk '{s += $2} END {print s + 0}')
  cov=$(for l in "${logs[@]}"; do grep -o 'cov: [0-9]*' "$l" | tail -1; done |
        awk '$2 > m {m = $2} END {print m + 0}')
  ft=$(for l in "${logs[@]}"; do grep -o 'ft: [0-9]*' "$l" | tail -1; done |
       awk '$2 > m {m = $2} END {print m + 0}')
  corp=$(find "$scratch" -type f | wc -l)
  line="$t: execs=$execs cov=${cov:-?} ft=${ft:-?} new_inputs=$corp exit=$rc"
  echo "fuzz: $line"
  summary="$summary$line"$'\n'
  if [ "$rc" -ne 0 ]; then
    for log in "${logs[@]}"; do
      echo "fuzz: $t FAILED; the end of $log:" >&2
      tail -n 60 "$log" >&2
    done
    ls -1 "$BUILD/fuzz-artifacts/$t-"* 2>/dev/null | grep -v '\.log$' >&2 || true
    status=1
  fi
  rm -rf "$scratch"
done
printf '== fuzz summary\n%s' "$summary"
exit $status
