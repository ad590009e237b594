#!/usr/bin/env bash
# demo.sh -- the README's main command: install, build, start a cqrps
# server, train a DLRM-style click-through-rate model through it from two
# worker processes with CQR tables and with hashing-trick tables at the
# same budget, compare them, and stop the server.
#
#   scripts/demo.sh                 # everything, from a fresh clone
#   BUILD_DIR=out scripts/demo.sh   # another build directory
#   PPD=256 EPOCHS=6 scripts/demo.sh
#
# Data: MovieLens-1M (partial) from ../shared/data/ml-1m-partial beside the
# project root when it is there (DATA=... overrides), else a generated
# synthetic-ctr set of Criteo's shape (26 sparse + 13 dense features). The
# trainer is examples/python/train_ctr.py (PyTorch, gloo, the tables on the
# server). Takes a few minutes on 2 cores, most of it the build and the
# training. The server runs on 127.0.0.1 on a free port and is stopped by
# PID when the script exits, whatever the reason.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
PPD=${PPD:-64}          # parameters per dimension per table (the budget)
EPOCHS=${EPOCHS:-3}
SEED=${SEED:-1}
WORKERS=${WORKERS:-2}
DATA=${DATA:-"$ROOT/../shared/data/ml-1m-partial"}
JOBS=$(nproc 2>/dev/null || echo 2)

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n== %s\n' "$*"; }

# ---- 1. Packages -----------------------------------------------------------
say "packages"
# The one package list is .ci/install-deps.sh's (scripts/test.sh runs it
# too); it calls apt-get only for what is missing.
bash .ci/install-deps.sh

# ---- 2. Build --------------------------------------------------------------
say "build ($BUILD_DIR, Release, $JOBS jobs)"
t_build=$(date +%s.%N)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" \
  --target cqrps-server cqrps cqrps-cli >/dev/null
build_s=$(elapsed "$t_build")
echo "built in ${build_s} s"
SERVER="$BUILD_DIR/server/cqrps-server"
CLI="$BUILD_DIR/client/cqrps"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
TRAIN=("$PY" "$ROOT/examples/python/train_ctr.py")
export PYTHONPATH="$ROOT/client/python${PYTHONPATH:+:$PYTHONPATH}"
export CQRPS_LIBRARY="$ROOT/$BUILD_DIR/client/libcqrps.so"
case "$BUILD_DIR" in /*) CQRPS_LIBRARY="$BUILD_DIR/client/libcqrps.so" ;; esac

# ---- 3. Server -------------------------------------------------------------
say "server"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cqrps-demo.XXXXXX")
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$SERVER" --listen 127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 100); do
  ADDR=$(sed -n 's/^cqrps-server listening on //p' "$TMP/server.out" | head -n1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  echo "demo: the server did not start; its log:" >&2
  cat "$TMP/server.log" >&2
  exit 1
fi
echo "cqrps-server (pid $SERVER_PID) listening on $ADDR"

# ---- 4. Train --------------------------------------------------------------
# One run per kind, each from $WORKERS worker processes; the cqr run keeps
# its tables for `cqrps describe`. Progress goes to the terminal; without
# one, to a file shown on error.
if [ -f "$DATA/ratings.dat" ]; then
  DATA_ARGS=(--data "$DATA" --format movielens-1m)
  DATA_NAME="MovieLens-1M (partial), 7 features"
  UTAB=user
else
  DATA_ARGS=(--format synthetic-ctr --rows 150000 --vocab 300000)
  DATA_NAME="synthetic-ctr (no $DATA), 26 sparse + 13 dense features"
  UTAB=C3
fi
train() { # kind extra-args...
  local kind=$1; shift
  local err=/dev/stderr
  [ -t 2 ] || err="$TMP/$kind.err"
  if ! "${TRAIN[@]}" --addr "$ADDR" "${DATA_ARGS[@]}" --kind "$kind" \
      --ppd "$PPD" --seed "$SEED" --epochs "$EPOCHS" --workers "$WORKERS" \
      --progress 5 --cache-dir "$TMP/cache" --table-prefix "demo-$kind" \
      "$@" >"$TMP/$kind.out" 2>"$err"; then
    echo "demo: the $kind trainer failed" >&2
    [ -f "$TMP/$kind.err" ] && cat "$TMP/$kind.err" >&2
    exit 1
  fi
}
for kind in cqr hash; do
  say "train $kind (P=$PPD, $EPOCHS epochs, $WORKERS workers, $DATA_NAME)"
  extra=()
  [ "$kind" = cqr ] && extra=(--keep)
  t0=$(date +%s.%N)
  train "$kind" "${extra[@]}"
  grep -E '^(data|features|epoch=)' "$TMP/$kind.out" | sed -n '1,3p;$p' | cut -c1-150 | sed 's/^/  /'
  [ "$kind" = cqr ] && grep '^cluster ' "$TMP/$kind.out" | tail -n 1 | sed 's/^/  /'
  echo "  $(tail -n1 "$TMP/$kind.out")   ($(elapsed "$t0") s)"
done

# ---- 5. Compression at work ---------------------------------------------------
say "a cqr table on the server (cqrps describe demo-cqr.$UTAB)"
"$CLI" --addr "$ADDR" describe "demo-cqr.$UTAB" | sed 's/^/  /'
sed -n 's/^memory table=\([^ ]*\) .*/\1/p' "$TMP/cqr.out" |
  while read -r t; do "$CLI" --addr "$ADDR" drop "$t" >/dev/null; done

# ---- 6. Comparison -------------------------------------------------------------
say "comparison: every table, best validation over $EPOCHS epochs"
{
  printf 'kind\tbudget\tmemory\tbytes/ID\tvs full\tbest AUC\tbest logloss\n'
  for kind in cqr hash; do
    awk -v kind="$kind" -v ppd="$PPD" '
      function kv(s, key,   i, a) {
        for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
        return ""
      }
      /^memory_total / { bytes = kv($0, "bytes"); bpi = kv($0, "bytes_per_id"); full = kv($0, "full_bytes") }
      /^best_auc=/ { auc = kv($0, "best_auc"); ll = kv($0, "best_logloss") }
      END {
        printf "%s\tP=%s\t%.1f KiB\t%.1f\t%.1f%%\t%.4f\t%.4f\n", kind, ppd,
               bytes / 1024, bpi, 100 * bytes / full, auc, ll
      }' "$TMP/$kind.out"
  done
} | column -t -s $'\t' | sed 's/^/  /'

cqr_auc=$(sed -n 's/^best_auc=\([0-9.]*\).*/\1/p' "$TMP/cqr.out")
hash_auc=$(sed -n 's/^best_auc=\([0-9.]*\).*/\1/p' "$TMP/hash.out")
echo
awk -v c="$cqr_auc" -v h="$hash_auc" -v p="$PPD" 'BEGIN {
  printf "  at the same budget (P=%s) cqr reaches AUC %.3f, hashing %.3f: %+.3f\n", p, c, h, c - h }'
echo "  memory = codebooks + learned pointers (params + index) of every table"
echo "  (features with at most P IDs get a full table); 'vs full' compares with"
echo "  one float row per ID. Optimizer state is extra."
echo "  Every kind, budget and length, workers and speed: bench/ctr.sh"
say "done in $(elapsed "$t_start") s (build ${build_s} s)"
