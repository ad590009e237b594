#!/usr/bin/env bash
# The README's main command, run as written (scripts/demo.sh with its
# defaults) against this build directory: it must finish with status 0,
# print the comparison table, find cqr above hashing at the same budget
# (the claim the demo makes), and leave no server of its own running.
#
#   test_demo.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT

status=0
BUILD_DIR="$build" "$src/scripts/demo.sh" >"$out" 2>&1 || status=$?
cat "$out"
if [ "$status" -ne 0 ]; then
  echo "test_demo: scripts/demo.sh exited $status" >&2
  exit 1
fi
grep -q '^  kind  *budget  *memory' "$out" ||
  { echo "test_demo: no comparison table" >&2; exit 1; }
line=$(grep 'at the same budget (P=' "$out") ||
  { echo "test_demo: no comparison line" >&2; exit 1; }
# "  at the same budget (P=64) cqr reaches AUC 0.791, hashing 0.752: +0.039"
cqr=$(sed -n 's/.*cqr reaches AUC \([0-9.]*\),.*/\1/p' <<<"$line")
hash=$(sed -n 's/.*hashing \([0-9.]*\):.*/\1/p' <<<"$line")
awk -v c="$cqr" -v h="$hash" 'BEGIN { exit !(c > h && h > 0.5) }' ||
  { echo "test_demo: cqr $cqr is not above hashing $hash" >&2; exit 1; }
pid=$(sed -n 's/^cqrps-server (pid \([0-9]*\)) listening.*/\1/p' "$out")
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  echo "test_demo: the demo's server (pid $pid) is still running" >&2
  kill -KILL "$pid"
  exit 1
fi
echo "test_demo: ok (cqr $cqr, hash $hash)"
