#!/usr/bin/env bash
# ctr.sh -- the multi-feature trainer's figures (examples/python/train_ctr.py):
# quality on ml-1m-partial against the published CCE code, several workers,
# speed against local nn.EmbeddingBag tables, and a 1e7-ID synthetic run.
#
#   bench/ctr.sh [OUTDIR]                 every section (default bench/out/ctr)
#   SECTIONS="speed scale" bench/ctr.sh   some of: quality workers speed scale
#   bench/ctr.sh --report-only OUTDIR     summary.md and plots from the TSVs
#   DATA=/path/to/ml-1m-partial bench/ctr.sh
#
# quality   DLRM-lite on ml-1m-partial (../shared/reference/ml-1m-partial.md):
#           kinds KINDS (full hash ce cqr) at P = PPDS (64 256 1024), seeds
#           SEEDS (1 2), LENGTHS (10 30) epochs, 1 worker, the server's
#           default table settings. full/hash/ce run the longest length
#           once: their shorter figure is the best of its first epochs,
#           which is what a shorter run computes (nothing in them depends
#           on the number of epochs); cqr runs each length (its phases do).
# workers   cqr at P=256 with WORKERS (2 4) workers, seeds and lengths as
#           above (1 worker: the quality runs).
# speed     on a fresh server, alone: examples/s of 1, 2, 4 workers at
#           batch 1024 and 4096 and of the same model with local
#           nn.EmbeddingBag tables (sparse gradients, SparseAdam) in one
#           process, ROUNDS (3) interleaved rounds, medians; requests per
#           step from the server's counters with 1 and 2 shards; bfloat16
#           on the wire on and off; the same on synthetic-ctr (26 features,
#           1e6 IDs) at batch 4096.
# scale     two shards, synthetic-ctr with about 1e7 distinct IDs (2.8e6
#           rows, 4e7-ID vocabulary, Zipf 0.5), cqr at P=1024, one epoch at
#           batch 4096: examples/s, the servers' memory, bytes per known ID.
#
# Other knobs: JOBS (trainers at once for quality/workers, default 2),
# SPEED_STEPS (200), SCALE_ROWS, SCALE_VOCAB (smaller for a quick try),
# FLAGS (extra trainer flags for every run, for experiments), BUILD_DIR.
# Writes to OUTDIR: runs.tsv (one line per run), epochs.tsv (one per
# epoch), speed.tsv, scale.tsv, summary.md (tables beside the reference,
# the targets PASS/MISS, run times), auc.png, speed.png, logs/.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-/usr/bin/python3}
TRAIN="$ROOT/examples/python/train_ctr.py"
BENCH=ctr
. "$HERE/lib.sh"

# ---- One run (xargs calls the script back in this mode) ----------------------
if [ "${1:-}" = "--run-one" ]; then
  shift
  section=$1 kind=$2 ppd=$3 seed=$4 epochs=$5 workers=$6
  tag="$section-$kind-p$ppd-s$seed-e$epochs-w$workers"
  log="$OUT/logs/$tag.out"
  rm -f "$OUT/logs/$tag.tsv"
  read -r -a extra <<<"${FLAGS:-}"
  t0=$(date +%s.%N)
  if ! "$PY" "$TRAIN" --addr "$ADDR" --data "$DATA" --format movielens-1m \
      --kind "$kind" --ppd "$ppd" --seed "$seed" --epochs "$epochs" \
      --workers "$workers" --tsv "$OUT/logs/$tag.tsv" --progress 0 \
      --cache-dir "$OUT/cache" --table-prefix "b-$tag" "${extra[@]}" \
      >"$log" 2>"$OUT/logs/$tag.err"; then
    echo "FAILED	$tag	see $OUT/logs/$tag.err"
    exit 0
  fi
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  awk -v s="$section" -v k="$kind" -v p="$ppd" -v sd="$seed" -v e="$epochs" \
      -v w="$workers" -v t="$secs" '
    function kv(key,   i, a) {
      for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
      return ""
    }
    /^memory_total / { bpi = kv("bytes_per_id"); comp = kv("compression") }
    /^best_auc=/ { auc = kv("best_auc"); ll = kv("best_logloss") }
    END { printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s, k, p, sd, e, w, auc, ll, bpi, comp, t }' "$log"
  exit 0
fi

# ---- Arguments ------------------------------------------------------------------
DATA=${DATA:-"$ROOT/../shared/data/ml-1m-partial"}
OUT="" REPORT_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report-only) REPORT_ONLY=1; shift ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) OUT=$1; shift ;;
  esac
done
OUT=${OUT:-"$ROOT/bench/out/ctr"}
SECTIONS=${SECTIONS:-"quality workers speed scale"}
SEEDS=${SEEDS:-"1 2"}
PPDS=${PPDS:-"64 256 1024"}
KINDS=${KINDS:-"full hash ce cqr"}
LENGTHS=${LENGTHS:-"10 30"}
WORKERS=${WORKERS:-"2 4"}
ROUNDS=${ROUNDS:-3}
SPEED_STEPS=${SPEED_STEPS:-200}     # measured steps of 1024 rows per speed run
SCALE_ROWS=${SCALE_ROWS:-2800000}
SCALE_VOCAB=${SCALE_VOCAB:-40000000}
JOBS=${JOBS:-2}
BUILD_DIR=${BUILD_DIR:-"$ROOT/build"}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
export OUT DATA PY TRAIN FLAGS="${FLAGS:-}"
export PYTHONPATH="$ROOT/client/python${PYTHONPATH:+:$PYTHONPATH}"
export CQRPS_LIBRARY=${CQRPS_LIBRARY:-"$BUILD_DIR/client/libcqrps.so"}

t_start=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { s = b - a; printf "%d:%02d:%02d", s / 3600, (s % 3600) / 60, s % 60 }'; }
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

if [ -z "$REPORT_ONLY" ]; then
if want quality || want workers; then
  if [ ! -f "$DATA/ratings.dat" ]; then
    echo "ctr: no ml-1m-partial at $DATA (set DATA; it is ../shared/data/ml-1m-partial" >&2
    echo "beside the project root); SECTIONS=\"speed scale\" needs no data" >&2
    exit 2
  fi
  DATA=$(cd "$DATA" && pwd)
fi

# ---- Build and servers ----------------------------------------------------------
bench_build cqrps-server cqrps
trap bench_stop_servers EXIT
trap 'exit 130' INT TERM
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# ---- Quality and workers ------------------------------------------------------------
if want quality || want workers; then
  bench_start_server grid
  export ADDR=$SRV_ADDR
  jobs_file="$OUT/jobs.txt"
  : >"$jobs_file"
  longest=$(echo $LENGTHS | tr ' ' '\n' | sort -n | tail -n1)
  if want quality; then
    for s in $SEEDS; do
      for k in $KINDS; do
        for p in $PPDS; do
          if [ "$k" = cqr ]; then
            for e in $LENGTHS; do echo "quality cqr $p $s $e 1" >>"$jobs_file"; done
          else
            echo "quality $k $p $s $longest 1" >>"$jobs_file"
          fi
          [ "$k" = full ] && break  # full ignores P
        done
      done
    done
  fi
  if want workers; then
    for w in $WORKERS; do
      for s in $SEEDS; do
        for e in $LENGTHS; do echo "workers cqr 256 $s $e $w" >>"$jobs_file"; done
      done
    done
  fi
  total=$(wc -l <"$jobs_file")
  echo "ctr: $total training runs, $JOBS at a time, server $ADDR; output $OUT"
  [ -f "$OUT/runs.tsv" ] && mv "$OUT/runs.tsv" "$OUT/runs.tsv.old"
  printf 'section\tkind\tppd\tseed\tepochs\tworkers\tbest_auc\tbest_logloss\tbytes_per_id\tcompression\tseconds\n' >"$OUT/runs.tsv"
  n=0 failed=0
  while IFS= read -r line; do
    n=$((n + 1))
    case "$line" in
      FAILED*) failed=$((failed + 1)); printf '[%d/%d %s] %s\n' "$n" "$total" "$(since "$t_start")" "$line" >&2; continue ;;
    esac
    printf '%s\n' "$line" >>"$OUT/runs.tsv"
    IFS=$'\t' read -r sec k p s e w auc ll _ _ secs <<<"$line"
    printf '[%3d/%d %s] %-7s %-4s P=%-4s seed=%s epochs=%-2s workers=%s auc=%.4f logloss=%.4f (%ss)\n' \
      "$n" "$total" "$(since "$t_start")" "$sec" "$k" "$p" "$s" "$e" "$w" "$auc" "$ll" "$secs"
  done < <(xargs -P "$JOBS" -L 1 "$0" --run-one <"$jobs_file")
  # every epoch of every run, for the report's "best of the first E epochs"
  {
    printf 'run\t'; head -n1 "$(ls "$OUT"/logs/*.tsv | head -n1)"
    for f in "$OUT"/logs/*.tsv; do
      tag=$(basename "$f" .tsv)
      tail -n +2 "$f" | sed "s/^/$tag\t/"
    done
  } >"$OUT/epochs.tsv"
  bench_stop_servers
  echo "ctr: training runs done in $(since "$t_start"), $failed failed"
fi

# ---- Speed ------------------------------------------------------------------------------
# speed_run LABEL FORMAT-ARGS...: one measured epoch; prints the epoch line.
speed_run() {
  local label=$1; shift
  local log="$OUT/logs/speed-$label-r$round.out"
  if ! "$PY" "$TRAIN" --seed 1 --epochs 1 --progress 0 --cluster-frac 0 \
      --cache-dir "$OUT/cache" --table-prefix "speed-$label" "$@" \
      >"$log" 2>"$OUT/logs/speed-$label-r$round.err"; then
    echo "ctr: speed run $label failed:" >&2; tail -n 5 "$OUT/logs/speed-$label-r$round.err" >&2
    return 0
  fi
  awk -v l="$label" -v r="$round" '
    function kv(key,   i, a) {
      for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
      return ""
    }
    /^tables / { b = kv("batch"); w = kv("workers") }
    /^epoch=/ { printf "%s\t%s\t%s\t%s\t%s\t%s\n", l, r, b, w, kv("examples_per_s"), kv("requests_per_step") }' "$log" >>"$OUT/speed.tsv"
}
if want speed; then
  t_speed=$(date +%s.%N)
  bench_start_server speed-a; A=$SRV_ADDR
  bench_start_server speed-b; B=$SRV_ADDR
  ML=(--data "$DATA" --format movielens-1m)
  if [ ! -f "$DATA/ratings.dat" ]; then ML=(); echo "ctr: speed: no ml-1m-partial, synthetic only" >&2; fi
  SY=(--format synthetic-ctr --rows 440000 --vocab 1000000)
  sy_steps=$((SPEED_STEPS / 4))
  printf 'label\tround\tbatch\tworkers\texamples_per_s\trequests_per_step\n' >"$OUT/speed.tsv"
  for round in $(seq "$ROUNDS"); do
    echo "ctr: speed round $round/$ROUNDS"
    if [ "${#ML[@]}" -gt 0 ]; then
      for b in 1024 4096; do
        steps=$((SPEED_STEPS * 1024 / b))
        speed_run "ml-local-b$b" "${ML[@]}" --kind cqr --ppd 256 --local sparse_adam --batch "$b" --max-steps "$steps"
        for w in 1 2 4; do
          speed_run "ml-cqr-w$w-b$b" --addr "$A" "${ML[@]}" --kind cqr --ppd 256 --workers "$w" --batch "$b" --max-steps "$steps"
        done
        speed_run "ml-cqr-w1-b$b-bf16" --addr "$A" "${ML[@]}" --kind cqr --ppd 256 --batch "$b" --max-steps "$steps" --bf16
        speed_run "ml-full-w1-b$b" --addr "$A" "${ML[@]}" --kind full --ppd 256 --batch "$b" --max-steps "$steps"
        speed_run "ml-cqr-2shards-b$b" --addr "$A,$B" "${ML[@]}" --kind cqr --ppd 256 --batch "$b" --max-steps "$steps"
      done
    fi
    speed_run "synth-local-b4096" "${SY[@]}" --kind full --ppd 1024 --local sparse_adam --batch 4096 --max-steps "$sy_steps"
    speed_run "synth-cqr-w1-b4096" --addr "$A" "${SY[@]}" --kind cqr --ppd 1024 --batch 4096 --max-steps "$sy_steps"
    speed_run "synth-cqr-w1-b4096-bf16" --addr "$A" "${SY[@]}" --kind cqr --ppd 1024 --batch 4096 --max-steps "$sy_steps" --bf16
    speed_run "synth-full-w1-b4096" --addr "$A" "${SY[@]}" --kind full --ppd 1024 --batch 4096 --max-steps "$sy_steps"
    speed_run "synth-cqr-2shards-b4096" --addr "$A,$B" "${SY[@]}" --kind cqr --ppd 1024 --batch 4096 --max-steps "$sy_steps"
  done
  bench_stop_servers
  echo "$(since "$t_speed")" >"$OUT/speed_time.txt"
  echo "ctr: speed done in $(since "$t_speed")"
fi

# ---- Scale ---------------------------------------------------------------------------
if want scale; then
  t_scale=$(date +%s.%N)
  bench_start_server scale-a; A=$SRV_ADDR; PA=$SRV_PID
  bench_start_server scale-b; B=$SRV_ADDR; PB=$SRV_PID
  rss0=$(( $(rss_kib "$PA") + $(rss_kib "$PB") ))
  log="$OUT/logs/scale.out"
  echo "ctr: scale run (2 shards, about 1e7 IDs)"
  "$PY" "$TRAIN" --addr "$A,$B" --format synthetic-ctr --rows "$SCALE_ROWS" \
    --vocab "$SCALE_VOCAB" --zipf 0.5 --kind cqr --ppd 1024 --seed 1 --epochs 1 \
    --batch 4096 --val-batch 16384 --progress 60 --table-prefix scale --keep \
    >"$log" 2>"$OUT/logs/scale.err"
  rss1=$(( $(rss_kib "$PA") + $(rss_kib "$PB") ))
  hwm=$(( $(hwm_kib "$PA") + $(hwm_kib "$PB") ))
  scale_s=$(since "$t_scale")
  awk -v rss0="$rss0" -v rss1="$rss1" -v hwm="$hwm" -v t="$scale_s" '
    function kv(key,   i, a) {
      for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
      return ""
    }
    /^memory table=/ { known += kv("known_ids"); tb += kv("bytes"); opt += kv("optimizer_bytes") }
    /^epoch=/ { eps = kv("examples_per_s"); auc = kv("val_auc"); rps = kv("requests_per_step") }
    END {
      printf "known_ids\texamples_per_s\tval_auc\trequests_per_step\ttable_bytes\toptimizer_bytes\tserver_rss_bytes\tserver_rss_start_bytes\tserver_peak_bytes\tbytes_per_known_id_tables\tbytes_per_known_id_rss\twall\n"
      printf "%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%s\n", known, eps, auc, rps, tb, opt, rss1 * 1024, rss0 * 1024, hwm * 1024,
        (tb + opt) / known, (rss1 - rss0) * 1024 / known, t
    }' "$log" >"$OUT/scale.tsv"
  cat "$OUT/scale.tsv"
  bench_stop_servers
  echo "ctr: scale done in $scale_s"
fi
fi

# ---- Report ---------------------------------------------------------------------------
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  echo "ctr: installing python3-matplotlib for the plots"
  bench_apt_install python3-matplotlib
fi
echo "$(since "$t_start")" >>"$OUT/wall_times.txt"
"$PY" "$HERE/ctr_report.py" "$OUT" "$HERE/ctr_reference.tsv"
echo "ctr: $OUT/summary.md $(ls "$OUT"/*.png 2>/dev/null | tr '\n' ' ')"
