#!/bin/sh
# bench/serve.sh -- serving exports at 1e6 and 1e7 IDs per kind
# (cqrps-serve-bench): checkpoint and export bytes and seconds, and
# lookups from the export beside the table's, in one run per line.
# usage: bench/serve.sh [BUILD_DIR] [IDS...]   (default build, 1e6 1e7)
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
sizes=${*:-1e6 1e7}
bin=$build/bench/cqrps-serve-bench
[ -x "$bin" ] || { echo "serve.sh: build $bin first" >&2; exit 2; }
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
header=--header
for n in $sizes; do
  for kind in full hash ce cqr; do
    nice -n 10 "$bin" --kind "$kind" --ids "$n" $header
    header=
  done
done
