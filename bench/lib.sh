# lib.sh -- what the bench scripts share (sourced, never run): building
# the targets a script needs, starting cqrps-server on a free loopback
# port and waiting for its ready line, stopping every server started, and
# installing a Debian package a plot needs.
#
# The sourcing script sets BENCH (its name, for messages), ROOT, BUILD_DIR
# and OUT, and usually
#   trap bench_stop_servers EXIT
#   trap 'exit 130' INT TERM

BENCH_PIDS=()

# bench_build TARGET...: configures BUILD_DIR (Release) unless it is
# already, then builds the targets.
bench_build() {
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  cmake --build "$BUILD_DIR" -j "$(nproc 2>/dev/null || echo 2)" \
    --target "$@" >/dev/null
}

# bench_start_server NAME [FLAG...]: starts a server on 127.0.0.1:0 with
# the flags, its stdout in OUT/NAME.out and its log in OUT/NAME.log; waits
# up to 10 s for the ready line and sets SRV_ADDR and SRV_PID. Exits the
# script if it does not start.
bench_start_server() {
  local name=$1; shift
  # The files exist before the server does: the ready-line poll below must
  # not race the background job's redirections (a failed read under
  # pipefail and set -e ended the script).
  : >"$OUT/$name.out"; : >"$OUT/$name.log"
  "$BUILD_DIR/server/cqrps-server" --listen 127.0.0.1:0 "$@" \
    >"$OUT/$name.out" 2>"$OUT/$name.log" &
  SRV_PID=$!
  BENCH_PIDS+=("$SRV_PID")
  SRV_ADDR=""
  for _ in $(seq 100); do
    SRV_ADDR=$(sed -n 's/^cqrps-server listening on //p' "$OUT/$name.out" | head -n1)
    [ -n "$SRV_ADDR" ] && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$SRV_ADDR" ]; then
    echo "$BENCH: the server did not start:" >&2; cat "$OUT/$name.log" >&2; exit 1
  fi
}

# bench_stop_servers: SIGTERM to every server started, SIGKILL to one
# still there after 5 s.
bench_stop_servers() {
  for p in "${BENCH_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${BENCH_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# bench_apt_install PACKAGE: installs a Debian package quietly (apt-get
# update only if the first try fails); says so on failure, returns 0.
bench_apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  { $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null; }; } ||
    echo "$BENCH: could not install $1; no plots" >&2
}
