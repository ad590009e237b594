#!/usr/bin/env bash
# perf.sh -- reproduces every performance figure of cqrps in one command.
#
#   bench/perf.sh [--quick] [--build-dir DIR] [--out DIR] [--no-install]
#                 [--no-build] [--server-threads N] [--engine-threads N]
#                 [--only SECTION[,SECTION...]]
#
# Sections (all by default, in this order): main, batch, vocab, conns,
# tables, threads, cluster, kmeans, memory. --only runs the named ones
# (e.g. `--only vocab,memory` for issue 19's figures); the summary marks
# what did not run.
#
# What it does, in order:
#   1. installs what the baselines need if missing (Debian: redis-server,
#      libhiredis-dev, python3-faiss, python3-sklearn; as root via
#      apt-get);
#   2. builds a Release tree (default build-perf/) with the benchmarks;
#   3. starts its own redis-server (persistence off, loopback, a free port)
#      and its own cqrps-server (loopback, port 0, port read from its ready
#      line), and stops both by PID at exit;
#   4. runs the physical limits (loopback TCP, in-process engine), the Redis
#      baseline, cqrps lookups and pushes, the scaling curves (batch,
#      vocabulary, server threads, client connections), steps over
#      several tables (one multi-table call against one call per table,
#      bfloat16), cluster phases (known IDs, k), the
#      k-means comparison with faiss and scikit-learn and the memory per
#      known ID;
#   5. prints the figures, the ratios cqrps/Redis and cqrps/loopback, and
#      every target of issue 6 with PASS/MISS; writes results.jsonl,
#      summary.md and the logs under bench/out/perf/ (gitignored).
#
# The main figures (limits, Redis, cqrps at depth 1 and 2) are the median
# of 3 runs each. --quick (about 4 minutes) runs shorter timings, small
# curves and the k-means comparison with 5 iterations instead of 25 (same
# points, same k, same iterations for every library). The full run takes
# about 15 minutes; the 1e8-ID point runs only if MemAvailable allows.
#
# Numbers depend on what else the machine runs: the load average at start
# and end is recorded in the summary.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build-perf"
OUT="$ROOT/bench/out/perf"
QUICK=0
INSTALL=1
BUILD_IT=1
SRV_THREADS=2
ENG_THREADS=1
PY=/usr/bin/python3   # Debian's python: faiss and sklearn live there
SECTIONS="main batch vocab conns tables threads cluster kmeans memory"
ONLY=""

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --build-dir) BUILD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD_IT=0 ;;
    --server-threads) SRV_THREADS=$2; shift ;;
    --engine-threads) ENG_THREADS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "perf.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

CMDLINE="bench/perf.sh"
[ "$QUICK" = 1 ] && CMDLINE="$CMDLINE --quick"
if [ -n "$ONLY" ]; then
    for sec in ${ONLY//,/ }; do
        case " $SECTIONS " in
        *" $sec "*) ;;
        *) echo "perf.sh: unknown section $sec (sections: $SECTIONS)" >&2
           exit 2 ;;
        esac
    done
    CMDLINE="$CMDLINE --only $ONLY"
fi
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

say() { printf '\n=== %s\n' "$*" >&2; }
log() { printf 'perf.sh: %s\n' "$*" >&2; }

# ---- 1. packages -------------------------------------------------------------
need=()
for p in redis-server redis-tools libhiredis-dev python3-faiss python3-sklearn \
         python3-numpy; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$INSTALL" = 1 ]; then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    else
        log "missing packages: ${need[*]} (run without --no-install)"
        exit 1
    fi
fi

# ---- 2. build ------------------------------------------------------------------
if [ "$BUILD_IT" = 1 ]; then
    say "build (Release) in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" --target cqrps-server cqrps-bench \
        cqrps-engine-bench cqrps-loopback-bench cqrps-redis-bench >/dev/null
fi
SERVER="$BUILD/server/cqrps-server"
CQB="$BUILD/bench/cqrps-bench"
ENG="$BUILD/bench/cqrps-engine-bench"
LOOP="$BUILD/bench/cqrps-loopback-bench"
RB="$BUILD/bench/cqrps-redis-bench"
for b in "$SERVER" "$CQB" "$ENG" "$LOOP" "$RB"; do
    [ -x "$b" ] || { log "missing $b"; exit 1; }
done

mkdir -p "$OUT"
RES="$OUT/results.jsonl"
: > "$RES"
LOGS="$OUT/logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---- timing plan -------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
    T=2; TS=1.5; KM_ITERS=5
    B_LIST="256 1024 4096"
    V_LIST="100000 1000000"
    THR_LIST="1 2"
    CONN_LIST="1 4"
    CL_V_LIST=""
    CL_K_LIST="256"
    PH_K_LIST="256 4096 16384"
    PH_V_LIST="100000 1000000"
    MEM_V_LIST="1000000"
    MEM_C_V_LIST="1000000"
else
    T=5; TS=3; KM_ITERS=25
    B_LIST="64 256 1024 4096 16384"
    V_LIST="100000 1000000 10000000 100000000"
    THR_LIST="1 2 4"
    CONN_LIST="1 2 4 8"
    CL_V_LIST="100000 10000000"
    CL_K_LIST="256 2048"
    PH_K_LIST="256 1024 4096 16384"
    PH_V_LIST="100000 1000000 10000000"
    MEM_V_LIST="1000000 10000000"
    MEM_C_V_LIST="10000000 100000000"
fi

# run TAG CMD...: runs a benchmark, keeps its stderr in logs/TAG.log (and
# shows its progress), and appends its JSON lines tagged with TAG.
run() {
    local tag=$1; shift
    local rc=0
    "$@" 2> >(tee "$LOGS/$tag.log" >&2) > "$LOGS/$tag.json" || rc=$?
    if [ $rc -ne 0 ]; then
        log "FAILED ($rc): $tag: $*"
        echo "{\"tag\":\"$tag\",\"failed\":true,\"rc\":$rc}" >> "$RES"
        return 0
    fi
    sed "s/^{/{\"tag\":\"$tag\",/" "$LOGS/$tag.json" >> "$RES"
}

# The main figures are medians of REPS rounds: a 2-core VM's timings vary
# by 20% and more from one run to the next and drift over minutes, so each
# round runs every main benchmark once, Redis and cqrps interleaved, and a
# drift hits the baseline and cqrps alike.
#
# rep TAG CMD...: one run; its stderr and JSON line are added to
# logs/TAG.log and logs/TAG.json. A failure is recorded once.
# med TAG: appends the run with the median emb/s, with every run's emb/s
# in "runs" (sorted) and "runs_in_order" (as measured).
REPS=3
rep() {
    local tag=$1; shift
    local rc=0
    [ -e "$LOGS/$tag.failed" ] && return 0
    "$@" 2> >(tee -a "$LOGS/$tag.log" >&2) >> "$LOGS/$tag.json" || rc=$?
    if [ $rc -ne 0 ]; then
        log "FAILED ($rc): $tag: $*"
        echo "{\"tag\":\"$tag\",\"failed\":true,\"rc\":$rc}" >> "$RES"
        : > "$LOGS/$tag.failed"
    fi
    return 0
}
med() {
    local tag=$1
    [ -e "$LOGS/$tag.failed" ] && return 0
    "$PY" - "$tag" "$LOGS/$tag.json" >> "$RES" <<'PYEOF'
import json, sys
tag, path = sys.argv[1], sys.argv[2]
rs = [json.loads(l) for l in open(path) if l.startswith("{")]
order = [r.get("emb_per_s") for r in rs]
rs.sort(key=lambda r: r.get("emb_per_s", 0))
m = {"tag": tag, **rs[len(rs) // 2]}
m["runs"] = [r.get("emb_per_s") for r in rs]
m["runs_in_order"] = order
print(json.dumps(m))
PYEOF
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- 3. servers --------------------------------------------------------------
REDIS_PID=""
SRV_PID=""
cleanup() {
    if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
    if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$LOGS/redis-server.log" &
REDIS_PID=$!
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { log "redis-server did not start"; exit 1; }
REDIS_ADDR="127.0.0.1:$REDIS_PORT"
log "redis-server $(redis-server --version | awk '{print $3}') pid $REDIS_PID on $REDIS_ADDR"

CQ_ADDR=""
start_cqrps() { # start_cqrps THREADS [ENGINE_THREADS]
    local ready="$LOGS/cqrps-server.ready"
    : > "$ready"
    "$SERVER" --listen 127.0.0.1:0 --threads "$1" \
        --engine-threads "${2:-$ENG_THREADS}" --cluster-threads 2 \
        > "$ready" 2>> "$LOGS/cqrps-server.log" &
    SRV_PID=$!
    for _ in $(seq 100); do
        grep -q 'listening on' "$ready" && break
        sleep 0.05
    done
    CQ_ADDR=$(sed -n 's/^cqrps-server listening on //p' "$ready")
    [ -n "$CQ_ADDR" ] || { log "cqrps-server did not start"; exit 1; }
    log "cqrps-server pid $SRV_PID on $CQ_ADDR, $1 I/O thread(s)," \
        "${2:-$ENG_THREADS} engine helper(s)"
}
stop_cqrps() {
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
}
start_cqrps "$SRV_THREADS"

T_START=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
mem_avail_gb() { awk '/MemAvailable/ {printf "%d", $2/1048576}' /proc/meminfo; }

# ---- 4. benchmarks -----------------------------------------------------------
# What main, batch and conns share: Redis and the tables t_cqr and t_full
# with 1e6 known IDs.
sec_setup() {
    say "setup: Redis loaded with 1e6 rows of 256 bytes; cqrps tables with 1e6 known IDs"
    run redis_load "$RB" --addr "$REDIS_ADDR" --op lookup --load --dim 64 \
        --batch 1024 --vocab 1e6 --seconds 0.5 --json
    for kind in cqr full; do
        # Creates the table and makes all 1e6 IDs known; the runs reuse it.
        run "warm_$kind" "$CQB" --addr "$CQ_ADDR" --op lookup --kind "$kind" \
            --dim 64 --batch 1024 --conns 1 --vocab 1e6 --seconds 0.5 \
            --table "t_$kind" --keep --json
    done
}

sec_main() {
    MAIN_TAGS=""
    for r in $(seq "$REPS"); do
        say "main figures, round $r of $REPS: limits, engine, Redis, cqrps (dim 64, batch 1024, 1e6 IDs, one connection)"
        rep loop_stream "$LOOP" --mode stream --dim 64 --batch 1024 --seconds "$TS" --json
        rep loop_rpc "$LOOP" --mode rpc --dim 64 --batch 1024 --seconds "$TS" --json
        for kind in cqr full; do
            rep "engine_lookup_$kind" "$ENG" --mode lookup --kind "$kind" \
                --dim 64 --batch 1024 --vocab 1e6 --seconds "$TS" --json
            rep "engine_push_$kind" "$ENG" --mode push --kind "$kind" \
                --optimizer adam --dim 64 --batch 1024 --vocab 1e6 --seconds "$TS" \
                --json
        done
        # Depth 1 is one request at a time; depth 2 keeps two in flight on the
        # one connection, for Redis and cqrps alike.
        for d in 1 2; do
            sfx=""
            [ "$d" = 2 ] && sfx="_depth2"
            rep "redis_lookup$sfx" "$RB" --addr "$REDIS_ADDR" --op lookup --dim 64 \
                --batch 1024 --vocab 1e6 --depth "$d" --seconds "$T" \
                --server-pid "$REDIS_PID" --json
            for kind in cqr full; do
                rep "cqrps_lookup_$kind$sfx" "$CQB" --addr "$CQ_ADDR" --op lookup \
                    --kind "$kind" --dim 64 --batch 1024 --conns 1 --depth "$d" \
                    --vocab 1e6 --seconds "$T" --server-pid "$SRV_PID" \
                    --table "t_$kind" --warm 0 --json
            done
            rep "redis_push$sfx" "$RB" --addr "$REDIS_ADDR" --op push --dim 64 \
                --batch 1024 --vocab 1e6 --depth "$d" --seconds "$T" \
                --server-pid "$REDIS_PID" --json
            for kind in cqr full; do
                rep "cqrps_push_$kind$sfx" "$CQB" --addr "$CQ_ADDR" --op push \
                    --kind "$kind" --optimizer adam --dim 64 --batch 1024 \
                    --conns 1 --depth "$d" --vocab 1e6 --seconds "$T" \
                    --server-pid "$SRV_PID" --table "t_$kind" --warm 0 --json
            done
            MAIN_TAGS="$MAIN_TAGS redis_lookup$sfx redis_push$sfx"
            for kind in cqr full; do
                MAIN_TAGS="$MAIN_TAGS cqrps_lookup_$kind$sfx cqrps_push_$kind$sfx"
            done
        done
    done
    for tag in loop_stream loop_rpc engine_lookup_cqr engine_push_cqr \
               engine_lookup_full engine_push_full $(echo "$MAIN_TAGS" | tr ' ' '\n' | sort -u); do
        med "$tag"
    done
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    run cqrps_lookup_cqr_zipf "$CQB" --addr "$CQ_ADDR" --op lookup --kind cqr \
        --dim 64 --batch 1024 --conns 1 --vocab 1e6 --zipf 1.05 --seconds "$TS" \
        --server-pid "$SRV_PID" --table t_cqr --warm 0 --json
}

sec_batch() {
    say "scaling: throughput against the batch size (cqr lookups, 1e6 IDs)"
    for b in $B_LIST; do
        run "scale_batch_$b" "$CQB" --addr "$CQ_ADDR" --op lookup --kind cqr \
            --dim 64 --batch "$b" --conns 1 --vocab 1e6 --seconds "$TS" \
            --server-pid "$SRV_PID" --table t_cqr --warm 0 --json
    done
}

sec_vocab() {
    say "scaling: throughput against known IDs (cqr lookups and pushes)"
    for v in $V_LIST; do
        if [ "$v" -ge 100000000 ]; then
            # About 30 bytes per ID in the server at the map's peak, plus the
            # warm-up's buffers: ask for 8 GB free to be safe.
            if [ "$(mem_avail_gb)" -lt 8 ]; then
                log "skipping V=$v: $(mem_avail_gb) GB available"
                continue
            fi
        fi
        run "scale_vocab_lookup_$v" "$CQB" --addr "$CQ_ADDR" --op lookup --kind cqr \
            --dim 64 --batch 1024 --conns 1 --vocab "$v" --seconds "$TS" \
            --server-pid "$SRV_PID" --table t_vocab --keep --json
        run "scale_vocab_push_$v" "$CQB" --addr "$CQ_ADDR" --op push --kind cqr \
            --dim 64 --batch 1024 --conns 1 --vocab "$v" --seconds "$TS" \
            --server-pid "$SRV_PID" --table t_vocab --warm 0 --json
        VMAX=$v
    done
    # Issue 19: the same table compacted through the server (its known
    # IDs' pointers moved into the static set), then the same lookups and
    # pushes at the largest size: against the map layout at 1e7 above.
    if [ -n "${VMAX:-}" ]; then
        run "scale_vocab_compact_lookup_$VMAX" "$CQB" --addr "$CQ_ADDR" \
            --op lookup --kind cqr --dim 64 --batch 1024 --conns 1 \
            --vocab "$VMAX" --seconds "$TS" --server-pid "$SRV_PID" \
            --table t_vocab --keep --warm 0 --compact --json
        run "scale_vocab_compact_push_$VMAX" "$CQB" --addr "$CQ_ADDR" \
            --op push --kind cqr --dim 64 --batch 1024 --conns 1 \
            --vocab "$VMAX" --seconds "$TS" --server-pid "$SRV_PID" \
            --table t_vocab --keep --warm 0 --json
        # The target compares two sizes measured minutes apart, and this
        # VM's memory-bound rates drift by 20-30% over minutes. So both
        # are measured again side by side: a second table of 1e7 IDs in
        # the map layout (the old layout; never compacted) and the
        # compacted table, alternated for REPS rounds; the medians and the
        # median of the rounds' ratios go into the report.
        if [ "$VMAX" -gt 10000000 ]; then
            run scale_vocab_base_warm "$CQB" --addr "$CQ_ADDR" --op lookup \
                --kind cqr --dim 64 --batch 1024 --conns 1 --vocab 1e7 \
                --seconds 1 --server-pid "$SRV_PID" --table t_vocab_base \
                --keep --json
            for _ in $(seq "$REPS"); do
                rep scale_vocab_alt_map_10000000 "$CQB" --addr "$CQ_ADDR" \
                    --op lookup --kind cqr --dim 64 --batch 1024 --conns 1 \
                    --vocab 1e7 --seconds "$TS" --server-pid "$SRV_PID" \
                    --table t_vocab_base --keep --warm 0 --json
                rep "scale_vocab_alt_compact_$VMAX" "$CQB" --addr "$CQ_ADDR" \
                    --op lookup --kind cqr --dim 64 --batch 1024 --conns 1 \
                    --vocab "$VMAX" --seconds "$TS" --server-pid "$SRV_PID" \
                    --table t_vocab --keep --warm 0 --json
            done
            med scale_vocab_alt_map_10000000
            med "scale_vocab_alt_compact_$VMAX"
        fi
    fi
    if [ "$QUICK" = 0 ]; then
        # full tables: 768 bytes of row + Adam state per ID; 1e7 IDs fit.
        run scale_vocab_full_lookup_10000000 "$CQB" --addr "$CQ_ADDR" --op lookup \
            --kind full --dim 64 --batch 1024 --conns 1 --vocab 1e7 \
            --seconds "$TS" --server-pid "$SRV_PID" --table t_vocab --json
    fi
}

sec_conns() {
    say "scaling: client connections (cqr lookups, 1e6 IDs, depth 2, $SRV_THREADS I/O threads)"
    for n in $CONN_LIST; do
        run "scale_conns_$n" "$CQB" --addr "$CQ_ADDR" --op lookup --kind cqr \
            --dim 64 --batch 1024 --conns "$n" --depth 2 --vocab 1e6 \
            --seconds "$TS" --server-pid "$SRV_PID" --table t_cqr --warm 0 --json
    done
}

sec_tables() {
    # A step of a model with 8 tables: batch 4096 IDs in each, one connection
    # at depth 1. The reference is one table's calls at the same batch; the
    # step goes as one multi-table call (one request), as 8 single-table
    # round trips, as 8 single-table calls in flight together, and as one
    # multi-table call in bfloat16.
    say "several tables per step (8 cqr tables of 1e5 IDs, batch 4096 each, one connection)"
    w=1
    for op in lookup push; do
        run "multi_multi_$op" "$CQB" --addr "$CQ_ADDR" --op "$op" --kind cqr \
            --optimizer adam --dim 64 --batch 4096 --conns 1 --vocab 1e5 \
            --tables 8 --calls multi --seconds "$TS" --server-pid "$SRV_PID" \
            --table t_multi --keep --warm "$w" --json
        w=0
        run "multi_ref_$op" "$CQB" --addr "$CQ_ADDR" --op "$op" --kind cqr \
            --optimizer adam --dim 64 --batch 4096 --conns 1 --vocab 1e5 \
            --seconds "$TS" --server-pid "$SRV_PID" --table t_multi_0 --warm 0 \
            --json
        for calls in single pipelined; do
            run "multi_${calls}_$op" "$CQB" --addr "$CQ_ADDR" --op "$op" \
                --kind cqr --optimizer adam --dim 64 --batch 4096 --conns 1 \
                --vocab 1e5 --tables 8 --calls "$calls" --seconds "$TS" \
                --server-pid "$SRV_PID" --table t_multi --warm 0 --json
        done
        run "multi_bf16_$op" "$CQB" --addr "$CQ_ADDR" --op "$op" --kind cqr \
            --optimizer adam --dim 64 --batch 4096 --conns 1 --vocab 1e5 \
            --tables 8 --calls multi --bf16 --seconds "$TS" \
            --server-pid "$SRV_PID" --table t_multi --warm 0 --json
    done
}

sec_threads() {
    say "scaling: server I/O threads (cqr lookups, 1e6 IDs, 4 connections, depth 2)"
    stop_cqrps
    for th in $THR_LIST; do
        start_cqrps "$th"
        run "scale_threads_$th" "$CQB" --addr "$CQ_ADDR" --op lookup --kind cqr \
            --dim 64 --batch 1024 --conns 4 --depth 2 --vocab 1e6 --seconds "$TS" \
            --server-pid "$SRV_PID" --json
        stop_cqrps
    done

    say "scaling: engine helpers of one connection's calls (cqr, 1e6 IDs, depth 1 and 2)"
    for et in 0 1; do
        start_cqrps "$SRV_THREADS" "$et"
        w=1 # the first run creates and warms the table, the others reuse it
        for d in 1 2; do
            for op in lookup push; do
                run "scale_helpers_${et}_${op}_d$d" "$CQB" --addr "$CQ_ADDR" \
                    --op "$op" --kind cqr --optimizer adam --dim 64 --batch 1024 \
                    --conns 1 --depth "$d" --vocab 1e6 --seconds "$TS" \
                    --server-pid "$SRV_PID" --table t_helpers --keep --warm "$w" \
                    --json
                w=0
            done
        done
        stop_cqrps
    done
}

sec_cluster() {
    say "cluster phase: cqr, 1e6 known IDs, k=1024, 4 chunks of 16, 25 iterations, 100 samples per centroid"
    run cluster_target "$ENG" --mode cluster --kind cqr --dim 64 --chunks 4 \
        --rows 1024 --vocab 1e6 --iters 25 --sample 100 --threads 2 --json
    say "cluster phase against known IDs and k"
    for v in $CL_V_LIST; do
        run "cluster_vocab_$v" "$ENG" --mode cluster --kind cqr --dim 64 --chunks 4 \
            --rows 1024 --vocab "$v" --iters 25 --sample 100 --threads 2 --json
    done
    for k in $CL_K_LIST; do
        run "cluster_k_$k" "$ENG" --mode cluster --kind cqr --dim 64 --chunks 4 \
            --rows "$k" --vocab 1e6 --iters 25 --sample 100 --threads 2 --json
    done

    # Issue 15: the table defaults (dim 32, 4 chunks of 8, at most 25
    # iterations with the default tolerance, 200 samples per centroid).
    say "cluster phase at real sizes: cqr dim 32, 4 chunks, 500,000 known IDs, k=4096, table defaults"
    run phase_target "$ENG" --mode cluster --kind cqr --dim 32 --chunks 4 \
        --rows 4096 --vocab 500000 --sample 200 --threads 2 --json
    say "cluster phase against k (500,000 IDs) and known IDs (k=4096), dim 32, table defaults"
    for k in $PH_K_LIST; do
        [ "$k" = 4096 ] && continue
        run "phase_k_$k" "$ENG" --mode cluster --kind cqr --dim 32 --chunks 4 \
            --rows "$k" --vocab 500000 --sample 200 --threads 2 --json
    done
    for v in $PH_V_LIST; do
        run "phase_vocab_$v" "$ENG" --mode cluster --kind cqr --dim 32 --chunks 4 \
            --rows 4096 --vocab "$v" --sample 200 --threads 2 --json
    done
}

sec_kmeans() {
    say "k-means step: engine vs faiss vs scikit-learn on the same points ($KM_ITERS iterations, k=1024, 2 threads)"
    PTS="$OUT/kmeans_points.f32"
    run kmeans_engine "$ENG" --mode kmeans --kind cqr --dim 64 --chunks 4 \
        --rows 1024 --vocab 1e6 --iters "$KM_ITERS" --sample 100 --threads 2 \
        --dump "$PTS" --json
    run kmeans_compare "$PY" "$ROOT/bench/kmeans_compare.py" --points "$PTS" \
        --n 102400 --w 16 --chunks 4 --k 1024 --iters "$KM_ITERS" --threads 2 \
        --run-chunks 1
    rm -f "$PTS"
}

sec_memory() {
    say "memory per known ID (cqr, 4 chunks; RSS growth of a fresh process)"
    for k in 1024 65536; do
        for v in $MEM_V_LIST; do
            run "memory_k${k}_v$v" "$ENG" --mode memory --kind cqr --dim 64 \
                --chunks 4 --rows "$k" --optimizer adam --vocab "$v" --json
        done
    done
    # Issue 19: compacted (the static set), then lookups and pushes of the
    # compacted table in the same process.
    say "memory per known ID, compacted (cqr, 4 chunks, k=65536)"
    for v in $MEM_C_V_LIST; do
        if [ "$v" -ge 100000000 ] && [ "$(mem_avail_gb)" -lt 8 ]; then
            log "skipping the compacted V=$v: $(mem_avail_gb) GB available"
            continue
        fi
        run "memory_compact_k65536_v$v" "$ENG" --mode memory --kind cqr \
            --dim 64 --chunks 4 --rows 65536 --optimizer adam --vocab "$v" \
            --compact --seconds "$TS" --json
    done
}

if want main || want batch || want conns; then
    sec_setup
fi
for sec in $SECTIONS; do
    if want "$sec"; then "sec_$sec"; fi
done

LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(( $(date +%s) - T_START ))

# ---- 5. report ---------------------------------------------------------------
say "summary"
"$PY" "$ROOT/bench/perf_report.py" --results "$RES" --out "$OUT" \
    --meta "quick=$QUICK" "elapsed_s=$ELAPSED" "load_start=$LOAD0" \
    "load_end=$LOAD1" "nproc=$(nproc)" \
    "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "redis=$(redis-server --version | awk '{print $3}')" \
    "command=$CMDLINE"
log "results in $OUT (results.jsonl, summary.md, logs/)"
