#!/usr/bin/env bash
# demo.sh -- the README's main command: install, build, start a cqrps
# server, train the GMF recommender through it on built-in synthetic data
# with CQR tables and with hashing-trick tables at the same budget, compare
# them, and stop the server.
#
#   scripts/demo.sh                 # everything, from a fresh clone
#   BUILD_DIR=out scripts/demo.sh   # another build directory
#   PPD=32 EPOCHS=30 scripts/demo.sh
#
# Needs no download: the data set is generated (users and items in planted
# taste groups). Takes well under two minutes on 2 cores, most of it the
# build. The server runs on 127.0.0.1 on a free port and is stopped by PID
# when the script exits, whatever the reason.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
PPD=${PPD:-64}          # parameters per dimension per table (the budget)
EPOCHS=${EPOCHS:-20}
SEED=${SEED:-1}
# A small initial scale (the same for every kind) lets Adam's first steps,
# not the random init, shape the embeddings: see bench/quality.sh.
INIT_SCALE=${INIT_SCALE:-0.01}
JOBS=$(nproc 2>/dev/null || echo 2)

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '\n== %s\n' "$*"; }

# ---- 1. Packages -----------------------------------------------------------
say "packages"
if [ -x .ci/install-deps.sh ]; then
  .ci/install-deps.sh
else
  PKGS=(build-essential cmake pkg-config libuv1-dev libprotobuf-c-dev
        protobuf-c-compiler libopenblas-dev librocksdb-dev check
        libsubunit-dev libxxhash-dev)
  missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo "packages present"
fi

# ---- 2. Build --------------------------------------------------------------
say "build ($BUILD_DIR, Release, $JOBS jobs)"
t_build=$(date +%s.%N)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$JOBS" \
  --target cqrps-server cqrps-train-gmf cqrps-cli >/dev/null
build_s=$(elapsed "$t_build")
echo "built in ${build_s} s"
SERVER="$BUILD_DIR/server/cqrps-server"
TRAIN="$BUILD_DIR/examples/cqrps-train-gmf"
CLI="$BUILD_DIR/client/cqrps"

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
# One trainer per kind; the cqr run keeps its tables for `cqrps describe`.
# Progress bars go to the terminal; without one, to a file shown on error.
train() { # kind extra-args...
  local kind=$1; shift
  local err=/dev/stderr
  [ -t 2 ] || err="$TMP/$kind.err"
  if ! "$TRAIN" --addr "$ADDR" --synthetic --kind "$kind" --ppd "$PPD" \
      --seed "$SEED" --epochs "$EPOCHS" --init-scale "$INIT_SCALE" \
      --table-prefix "demo-$kind" "$@" >"$TMP/$kind.out" 2>"$err"; then
    echo "demo: the $kind trainer failed" >&2
    [ -f "$TMP/$kind.err" ] && cat "$TMP/$kind.err" >&2
    exit 1
  fi
}
for kind in cqr hash full; do
  say "train $kind (P=$PPD, $EPOCHS epochs, synthetic data)"
  extra=()
  [ "$kind" = cqr ] && extra=(--keep)
  t0=$(date +%s.%N)
  train "$kind" "${extra[@]}"
  grep -E '^(data|epoch=)' "$TMP/$kind.out" | sed -n '1p;2p;$p' | sed 's/^/  /'
  [ "$kind" = cqr ] && grep '^cluster ' "$TMP/$kind.out" | tail -n 2 | sed 's/^/  /'
  echo "  $(tail -n1 "$TMP/$kind.out")   ($(elapsed "$t0") s)"
done

# ---- 5. Compression at work ---------------------------------------------------
say "the cqr user table on the server (cqrps describe)"
"$CLI" --addr "$ADDR" describe demo-cqr.user | sed 's/^/  /'
"$CLI" --addr "$ADDR" drop demo-cqr.user >/dev/null
"$CLI" --addr "$ADDR" drop demo-cqr.item >/dev/null

# ---- 6. Comparison -------------------------------------------------------------
say "comparison: both tables, synthetic data, best validation over $EPOCHS epochs"
{
  printf 'kind\tbudget\tmemory\tbytes/ID\tvs full\tbest AUC\tbest logloss\n'
  for kind in cqr hash full; do
    awk -v kind="$kind" -v ppd="$PPD" '
      function kv(s, key,   i, a) {
        for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
        return ""
      }
      /^memory_total / { bytes = kv($0, "bytes"); bpi = kv($0, "bytes_per_id"); full = kv($0, "full_bytes") }
      /^best_auc=/ { auc = kv($0, "best_auc"); ll = kv($0, "best_logloss") }
      END {
        budget = (kind == "full") ? "1 row/ID" : "P=" ppd
        printf "%s\t%s\t%.1f KiB\t%.1f\t%.1f%%\t%.4f\t%.4f\n", kind, budget,
               bytes / 1024, bpi, 100 * bytes / full, auc, ll
      }' "$TMP/$kind.out"
  done
} | column -t -s $'\t' | sed 's/^/  /'

cqr_auc=$(sed -n 's/^best_auc=\([0-9.]*\).*/\1/p' "$TMP/cqr.out")
hash_auc=$(sed -n 's/^best_auc=\([0-9.]*\).*/\1/p' "$TMP/hash.out")
echo
awk -v c="$cqr_auc" -v h="$hash_auc" -v p="$PPD" 'BEGIN {
  printf "  at the same budget (P=%s) cqr reaches AUC %.3f, hashing %.3f: %+.3f\n", p, c, h, c - h }'
echo "  memory = codebooks + learned pointers (params + index) of both tables;"
echo "  'vs full' compares with one float row per ID. Optimizer state is extra."
echo "  The same on MovieLens-100k, every kind and budget: bench/quality.sh"
say "done in $(elapsed "$t_start") s (build ${build_s} s)"
