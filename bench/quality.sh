#!/usr/bin/env bash
# quality.sh -- the quality grid on MovieLens-100k: GMF trained through a
# real cqrps-server with every table kind at equal parameter budgets,
# against the published CCE code's figures (../shared/reference).
#
#   bench/quality.sh [OUTDIR]            default OUTDIR: bench/out/quality
#   DATA=/path/to/ml-100k bench/quality.sh
#   bench/quality.sh --data PATH OUTDIR
#   bench/quality.sh --report-only OUTDIR   summary and plots from runs.tsv
#
# Grid: kinds full, hash, ce, cqr; P = 8 32 128 512 2048 parameters per
# dimension per table (full: one row per ID); seeds 1 2 3; 10 and 50
# epochs; for each variant below. Every variant uses the same settings for
# every kind and budget (lr 1e-3, AdamW betas 0.9/0.999, eps 1e-8, weight
# decay 0.01, dim 32, 4 chunks, batch 4096, cqr clustering after epochs
# 0 .. floor(0.75 epochs) - 1):
#   defaults          the server's defaults, no tuning flag (README,
#                     "Defaults": initial values uniform in +-0.01, cqr
#                     phases zero the codebooks' optimizer state), lazy
#                     AdamW (only touched rows step)
#   dense             defaults, but every row steps every batch (PyTorch's dense
#                     AdamW, which the reference uses), emulated by pushing
#                     zero gradients for the IDs a batch does not use
#   old_defaults      the defaults before issue 15: initial values in
#                     +-1/sqrt(dim) (as the published code), optimizer state
#                     kept across phases
#   small_init        initial values in +-0.01, optimizer state kept
#   small_init_reset  initial values in +-0.01 and the reset, as flags (the
#                     defaults, spelled out)
#   admit2, admit3    defaults, cqr IDs get learned pointers only at their
#                     2nd / 3rd push (--admit-after; KINDS=cqr)
#   evict2            defaults, cqr IDs not pushed during the last 2 phases
#                     lose them (--evict-after-phases 2; KINDS=cqr)
# Override with VARIANTS="defaults small_init" (names from the list), and
# SEEDS, EPOCHS, KINDS, PPDS, JOBS (trainers at once, default 2).
#
# Writes to OUTDIR: runs.tsv (best validation AUC and log-loss per run),
# summary.md (means and spreads beside the reference, the issue's targets,
# bytes per ID), auc_<E>ep.png (AUC against parameters per ID, gnuplot),
# auc_<E>ep_bytes.png (AUC against bytes per known ID while training:
# parameters, optimizer state and index of both tables; runs.tsv column
# train_bytes_per_id),
# logs/ (each run's output and per-epoch TSV) and server.log.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH=quality
. "$HERE/lib.sh"

# ---- One run (internal: xargs calls the script back in this mode) ---------
if [ "${1:-}" = "--run-one" ]; then
  shift
  variant=$1 kind=$2 ppd=$3 seed=$4 epochs=$5
  flagvar="FLAGS_$variant"
  read -r -a flags <<<"${!flagvar}"
  tag="$variant-$kind-p$ppd-s$seed-e$epochs"
  log="$OUT/logs/$tag.out"
  rm -f "$OUT/logs/$tag.tsv"
  t0=$(date +%s.%N)
  if ! "$TRAIN" --addr "$ADDR" --data "$DATA" --kind "$kind" \
      --ppd "$([ "$kind" = full ] && echo 1 || echo "$ppd")" --seed "$seed" \
      --epochs "$epochs" --tsv "$OUT/logs/$tag.tsv" \
      --table-prefix "q-$tag" "${flags[@]}" >"$log" 2>"$OUT/logs/$tag.err"; then
    echo "FAILED	$tag	see $OUT/logs/$tag.err"
    exit 0
  fi
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  # best line, bytes per ID, index bytes per ID, float params per ID
  awk -v v="$variant" -v k="$kind" -v p="$ppd" -v s="$seed" -v e="$epochs" -v t="$secs" '
    function kv(key,   i, a) {
      for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == key) return a[2] }
      return ""
    }
    /^memory table=/ {
      ids += kv("ids"); idx += kv("index_bytes"); par += (kv("bytes") - kv("index_bytes")) / 4
      # parameters + optimizer state + index: what training holds per known
      # ID (full: the optimizer state of the rows in use, as its params)
      pb = kv("bytes") - kv("index_bytes"); ob = kv("optimizer_bytes")
      if (kv("kind") == "full" && kv("param_bytes") > 0) ob = ob * pb / kv("param_bytes")
      tb += kv("bytes") + ob; kn += (kv("known_ids") > 0 ? kv("known_ids") : kv("ids"))
    }
    /^memory_total / { bpi = kv("bytes_per_id") }
    /^best_auc=/ { auc = kv("best_auc"); ll = kv("best_logloss") }
    END {
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.3f\t%s\t%.2f\n", v, k, (k == "full" ? 0 : p), s, e,
             auc, ll, bpi, idx / ids, par / ids, t, (kn > 0 ? tb / kn : 0)
    }' "$log"
  exit 0
fi

# ---- Arguments ------------------------------------------------------------
DATA=${DATA:-"$ROOT/../shared/data/ml-100k"}
OUT=""
REPORT_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --report-only) REPORT_ONLY=1; shift ;;
    -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) OUT=$1; shift ;;
  esac
done
OUT=${OUT:-"$ROOT/bench/out/quality"}
VARIANTS=${VARIANTS:-"defaults dense old_defaults small_init"}
SEEDS=${SEEDS:-"1 2 3"}
EPOCHS=${EPOCHS:-"10 50"}
KINDS=${KINDS:-"full hash ce cqr"}
PPDS=${PPDS:-"8 32 128 512 2048"}
JOBS=${JOBS:-2}
BUILD_DIR=${BUILD_DIR:-"$ROOT/build"}

export FLAGS_defaults=""
export FLAGS_dense="--dense"
export FLAGS_old_defaults="--init-scale 0.1767767 --no-reset-optimizer"
export FLAGS_small_init="--init-scale 0.01 --no-reset-optimizer"
export FLAGS_small_init_reset="--init-scale 0.01 --reset-optimizer"
# Memory per ID (issue 19; cqr only): admission at the 2nd / 3rd push,
# eviction after 2 phases without a push.
export FLAGS_admit2="--admit-after 2"
export FLAGS_admit3="--admit-after 3"
export FLAGS_evict2="--evict-after-phases 2"
for v in $VARIANTS; do
  fv="FLAGS_$v"
  if [ -z "${!fv+set}" ]; then
    echo "quality: unknown variant '$v'" >&2; exit 2
  fi
done
if [ -z "$REPORT_ONLY" ] && [ ! -f "$DATA/u.data" ] && [ ! -f "$DATA/ratings.dat" ] &&
   [ ! -f "$DATA" ]; then
  echo "quality: no MovieLens-100k at $DATA (set DATA or --data to the ml-100k" >&2
  echo "directory; it is at ../shared/data/ml-100k beside the project root)" >&2
  exit 2
fi
DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
if [ -n "$REPORT_ONLY" ]; then
  [ -f "$OUT/runs.tsv" ] || { echo "quality: no $OUT/runs.tsv" >&2; exit 2; }
  rm -f "$OUT"/*.dat "$OUT"/*.png
else
  rm -f "$OUT"/logs/* "$OUT"/*.dat "$OUT"/*.png
fi

t_start=$(date +%s.%N)
since() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { s = b - a; printf "%d:%02d", s / 60, s % 60 }'; }

if [ -z "$REPORT_ONLY" ]; then
# ---- Build (only what the grid runs) ---------------------------------------
bench_build cqrps-server cqrps-train-gmf
TRAIN="$BUILD_DIR/examples/cqrps-train-gmf"

# ---- Server ------------------------------------------------------------------
trap bench_stop_servers EXIT
trap 'exit 130' INT TERM
bench_start_server server --log-level info
ADDR=$SRV_ADDR SERVER_PID=$SRV_PID

# ---- The grid ----------------------------------------------------------------
jobs_file="$OUT/jobs.txt"
: >"$jobs_file"
for e in $EPOCHS; do           # short runs first: early results come early
  for v in $VARIANTS; do
    for k in $KINDS; do
      for p in $PPDS; do
        for s in $SEEDS; do
          echo "$v $k $p $s $e" >>"$jobs_file"
        done
        [ "$k" = full ] && break   # full ignores P: one set of seeds
      done
    done
  done
done
total=$(wc -l <"$jobs_file")
echo "quality: $total runs, $JOBS at a time, server $ADDR (pid $SERVER_PID)"
echo "quality: data $DATA"
echo "quality: output $OUT"

export ADDR TRAIN DATA OUT
printf 'variant\tkind\tppd\tseed\tepochs\tbest_auc\tbest_logloss\tbytes_per_id\tindex_bytes_per_id\tparams_per_id\tseconds\ttrain_bytes_per_id\n' >"$OUT/runs.tsv"
done_n=0 failed=0
while IFS= read -r line; do
  done_n=$((done_n + 1))
  case "$line" in
    FAILED*)
      failed=$((failed + 1))
      printf '[%d/%d %s] %s\n' "$done_n" "$total" "$(since)" "$line" >&2
      continue ;;
  esac
  printf '%s\n' "$line" >>"$OUT/runs.tsv"
  IFS=$'\t' read -r v k p s e auc ll _ _ _ secs _ <<<"$line"
  printf '[%3d/%d %s] %-16s %-4s P=%-4s seed=%s epochs=%-2s auc=%.4f logloss=%.4f (%ss)\n' \
    "$done_n" "$total" "$(since)" "$v" "$k" "$([ "$k" = full ] && echo - || echo "$p")" \
    "$s" "$e" "$auc" "$ll" "$secs"
done < <(xargs -P "$JOBS" -L 1 "$0" --run-one <"$jobs_file")
bench_stop_servers
grid_time=$(since)
echo "$grid_time" >"$OUT/grid_time.txt"

else
  total=$(($(wc -l <"$OUT/runs.tsv") - 1)) failed=0
  grid_time=$(cat "$OUT/grid_time.txt" 2>/dev/null || echo "?")
fi

# ---- Summary -------------------------------------------------------------------
blas=$(sed -n 's/.*blas_core=\([^ ]*\).*/\1/p' "$OUT/server.log" 2>/dev/null | head -n1 || true)
{
  echo "# cqrps quality grid: GMF on MovieLens-100k"
  echo
  echo "Generated by \`bench/quality.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores,"
  echo "OpenBLAS core ${blas:-unknown}; $total runs ($failed failed), $JOBS trainers at a time,"
  echo "grid wall time $grid_time (m:s). Seeds: $SEEDS."
  echo
  echo "Split and model as ../shared/reference/README.md (train 70,969 /"
  echo "validation 1,886 rows; GMF, dim 32, 4 chunks, batch 4096, AdamW lr 1e-3,"
  echo "betas 0.9/0.999, eps 1e-8, weight decay 0.01; cqr clusters after epochs"
  echo "0 .. floor(0.75 epochs) - 1). Best validation AUC and true mean BCE over"
  echo "epochs. Reference: the published CCE code (3 seeds at 10 epochs, 2 at 50)."
  echo "Our \`ce\` is two hashed codebooks of P/2 rows summed (DESIGN.md); the"
  echo "reference's CE is one table of P rows hashed per chunk, so the two ce"
  echo "columns are different methods at the same budget."
  echo
  env FLAGS_defaults="(none: server defaults)" FLAGS_dense="$FLAGS_dense" \
      FLAGS_old_defaults="$FLAGS_old_defaults" \
      FLAGS_small_init="$FLAGS_small_init" FLAGS_small_init_reset="$FLAGS_small_init_reset" \
      awk -f "$HERE/quality_summary.awk" -v variants="$VARIANTS" \
      -v flags_env=1 "$HERE/quality_reference.tsv" "$OUT/runs.tsv"
} >"$OUT/summary.md"

# gnuplot for the plot: installed on demand (Debian's gnuplot-nox).
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "quality: installing gnuplot-nox for the plot"
  bench_apt_install gnuplot-nox
fi

# ---- Plots: AUC against parameters per ID, and against bytes per ID -----------
# plot_axis E COL NAME XLABEL: auc_<E>ep<NAME>.png with runs.tsv column COL
# on the x axis (10: float parameters per ID; 12: bytes per known ID with
# the optimizer state and the index). The reference is drawn on the first
# axis only (its bytes are not ours to count).
plot_axis() {
  local e=$1 col=$2 name=$3 xlabel=$4 tag="$1$3"
  rm -f "$OUT"/plot_"$tag"_*.dat
  # ours: variant kind -> x mean std
  awk -F'\t' -v e="$e" -v c="$col" -v out="$OUT" -v tag="$tag" 'NR > 1 && $5 == e && $c != "" {
      k = $1 "-" $2; key = k SUBSEP $3; n[key]++; s[key] += $6; ss[key] += $6 * $6; x[key] = $c; kk[key] = k
    } END {
      for (key in n) { m = s[key] / n[key]; v = ss[key] / n[key] - m * m
        printf "%s %.6f %.6f\n", x[key], m, (v > 0 ? sqrt(v) : 0) >> (out "/plot_" tag "_" kk[key] ".dat") }
    }' "$OUT/runs.tsv"
  # the reference at the same budgets: params/ID = 2 * P * 32 / (943 + 1642)
  if [ "$col" = 10 ]; then
    awk -F'\t' -v e="$e" -v out="$OUT" -v tag="$tag" '!/^#/ && $1 == e {
        x = ($3 == 0) ? 32 : 64 * $3 / 2585
        printf "%.6f %s\n", x, $4 >> (out "/plot_" tag "_reference-" $2 ".dat") }' "$HERE/quality_reference.tsv"
  fi
  for f in "$OUT"/plot_"$tag"_*.dat; do [ -f "$f" ] && sort -g -o "$f" "$f"; done
  {
    echo "set terminal pngcairo size 1000,650 font ',10' noenhanced"
    echo "set output '$OUT/auc_${tag}.png'"
    echo "set title 'GMF, $e epochs: best validation AUC vs $xlabel'"
    echo "set logscale x 2"
    echo "set xlabel '$xlabel'"
    echo "set ylabel 'validation AUC (mean over seeds)'"
    echo "set key outside right top"
    echo "set grid"
    printf "plot "
    sep=""
    colors=(1f77b4 ff7f0e d62728 2ca02c 9467bd 8c564b e377c2 17becf)
    first=${VARIANTS%% *} last=${VARIANTS##* } vi=0
    for v in $VARIANTS; do
      lc="lc rgb '#${colors[$((vi % 8))]}'"
      vi=$((vi + 1))
      for k in cqr ce hash full; do
        f="$OUT/plot_${tag}_${v}-${k}.dat"
        [ -f "$f" ] || continue
        case "$k" in
          cqr) style="with yerrorlines lw 2 pt 7 $lc" ;;
          ce) style="with yerrorlines dt 2 pt 2 $lc" ;;
          hash) style="with yerrorlines dt 4 pt 3 $lc" ;;
          full) style="with points pt 9 ps 2 $lc" ;;
        esac
        # ce and hash of the first and last variants only, for legibility
        if [ "$k" = ce ] || [ "$k" = hash ]; then
          [ "$v" = "$first" ] || [ "$v" = "$last" ] || continue
        fi
        printf "%s'%s' using 1:2:3 %s title 'ours %s, %s'" "$sep" "$f" "$style" "$k" "$v"
        sep=", \\
  "
      done
    done
    for k in cqr ce hash full; do
      f="$OUT/plot_${tag}_reference-${k}.dat"
      [ -f "$f" ] || continue
      printf "%s'%s' using 1:2 with linespoints dt 3 lc rgb 'black' pt %d title 'reference %s'" \
        "$sep" "$f" "$(case $k in cqr) echo 5;; ce) echo 9;; hash) echo 11;; *) echo 13;; esac)" "$k"
      sep=", \\
  "
    done
    echo
  } >"$OUT/auc_${tag}.gp"
  gnuplot "$OUT/auc_${tag}.gp" 2>"$OUT/gnuplot.err" || { echo "quality: gnuplot failed:" >&2; cat "$OUT/gnuplot.err" >&2; }
}
if command -v gnuplot >/dev/null 2>&1; then
  for e in $EPOCHS; do
    plot_axis "$e" 10 ep "float parameters per ID (users + items); full table = 32"
    plot_axis "$e" 12 ep_bytes "bytes per known ID while training (parameters + optimizer state + index, both tables)"
  done
fi

echo
echo "quality: grid done in $grid_time, $failed failed"
echo "quality: $OUT/summary.md, $OUT/runs.tsv, $(ls "$OUT"/auc_*.png 2>/dev/null | tr '\n' ' ')"
[ "$failed" -eq 0 ]
