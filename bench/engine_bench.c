/* engine_bench.c -- the cqrps engine measured in-process, with no network.
 *
 * Modes (--mode):
 *   lookup | push  embeddings/s of cqr_table_lookup / cqr_table_push on a
 *                  table warmed with --vocab known IDs, --threads threads,
 *                  batches of --batch IDs drawn uniformly or Zipf(--zipf),
 *                  for --seconds; latency percentiles per batch. This is
 *                  the "no network" ceiling a server can approach.
 *   cluster        one cluster phase of a cqr table with --vocab known IDs,
 *                  k = --rows, --chunks, --iters, --sample per centroid,
 *                  --threads workers: time of every stage.
 *   kmeans         the k-means step alone on the points a phase would use
 *                  (--sample x k uniformly drawn known IDs, per chunk), its
 *                  FLOP rate, and OpenBLAS sgemm's rate measured in the
 *                  same process; --dump FILE writes the points (chunk after
 *                  chunk, n x w float32 each) for kmeans_compare.py.
 *   memory         RSS growth per known ID while --vocab IDs are pushed
 *                  into a fresh table (run it in a fresh process); with
 *                  --compact, after a compaction, and then the lookup and
 *                  push rates of the compacted table (as those modes).
 *   sgemm          OpenBLAS sgemm rate alone.
 *
 * Output: progress on stderr, a human summary on stderr, and with --json
 * one JSON object per result on stdout. Every run logs OpenBLAS's core
 * name (DESIGN.md s6: the kernels it picks decide the k-means speed).
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "engine/err.h"
#include "engine/kmeans.h"
#include "engine/par.h"
#include "engine/table.h"

#define PROG "engine-bench"

typedef struct opts {
    const char *mode;     /* lookup, push, cluster, kmeans, memory, sgemm */
    cqr_kind_t kind;      /* table kind */
    cqr_optim_kind_t opt; /* optimizer */
    uint32_t dim;         /* floats per embedding */
    uint32_t chunks;      /* ce/cqr chunks */
    uint32_t rows;        /* codebook rows (k) */
    uint32_t batch;       /* IDs per call */
    uint64_t vocab;       /* known IDs */
    double zipf;          /* 0 = uniform */
    double seconds;       /* timed duration of lookup/push */
    uint32_t threads;     /* caller threads (lookup/push), phase workers */
    uint32_t helpers;     /* engine helper threads for each call (par.h) */
    uint32_t iters;       /* k-means iterations (at most) */
    double tol;           /* k-means tolerance; < 0: the table default
                             (cluster) or 0 (kmeans: fixed iterations) */
    uint32_t sample;      /* sample points per centroid */
    uint32_t warm_batch;  /* IDs per warm-up push */
    const char *dump;     /* kmeans: points file */
    int json;             /* print JSON lines */
    int compact;          /* cqr: compact the table after warming */
} opts_t;

static void usage(void)
{
    fprintf(stderr,
        "usage: cqrps-engine-bench --mode lookup|push|cluster|kmeans|memory|sgemm\n"
        "  [--kind full|hash|ce|cqr] [--optimizer sgd|adagrad|adam] [--dim 64]\n"
        "  [--chunks 4] [--rows 1024] [--batch 1024] [--vocab 1e6] [--zipf S]\n"
        "  [--seconds 3] [--threads 1] [--helpers 0] [--iters 25] [--sample 100]\n"
        "  [--tol X (k-means relative inertia tolerance; 0 = every iteration)]\n"
        "  [--dump FILE] [--json] [--compact (cqr: compact after warming)]\n");
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.mode = "lookup", .kind = CQR_KIND_CQR, .opt = CQR_OPT_ADAM,
                  .dim = 64, .chunks = 4, .rows = 1024, .batch = 1024,
                  .vocab = 1000000, .seconds = 3.0, .threads = 1,
                  .iters = 25, .sample = 100, .warm_batch = 65536,
                  .tol = -1};
    static const struct option lo[] = {
        {"mode", 1, 0, 'm'},   {"kind", 1, 0, 'k'},    {"optimizer", 1, 0, 'o'},
        {"dim", 1, 0, 'd'},    {"chunks", 1, 0, 'c'},  {"rows", 1, 0, 'r'},
        {"batch", 1, 0, 'b'},  {"vocab", 1, 0, 'v'},   {"zipf", 1, 0, 'z'},
        {"seconds", 1, 0, 's'}, {"threads", 1, 0, 't'}, {"iters", 1, 0, 'i'},
        {"sample", 1, 0, 'S'}, {"dump", 1, 0, 'D'},    {"json", 0, 0, 'j'},
        {"warm-batch", 1, 0, 'W'}, {"helpers", 1, 0, 'H'},
        {"tol", 1, 0, 'T'}, {"compact", 0, 0, 'C'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': o->mode = optarg; break;
        case 'k':
            if (cqr_kind_parse(optarg, &o->kind))
                return -1;
            break;
        case 'o':
            if (cqr_optim_parse(optarg, &o->opt))
                return -1;
            break;
        case 'd': case 'c': case 'r': case 'b': case 'v': case 't':
        case 'i': case 'S': case 'W': case 'H':
            if (bench_parse_count(optarg, &v))
                return -1;
            if (ch == 'd') o->dim = (uint32_t)v;
            if (ch == 'c') o->chunks = (uint32_t)v;
            if (ch == 'r') o->rows = (uint32_t)v;
            if (ch == 'b') o->batch = (uint32_t)v;
            if (ch == 'v') o->vocab = v;
            if (ch == 't') o->threads = (uint32_t)v;
            if (ch == 'i') o->iters = (uint32_t)v;
            if (ch == 'S') o->sample = (uint32_t)v;
            if (ch == 'W') o->warm_batch = (uint32_t)v;
            if (ch == 'H') o->helpers = (uint32_t)v;
            break;
        case 'z': o->zipf = atof(optarg); break;
        case 's': o->seconds = atof(optarg); break;
        case 'T': o->tol = atof(optarg); break;
        case 'D': o->dump = optarg; break;
        case 'j': o->json = 1; break;
        case 'C': o->compact = 1; break;
        default: return -1;
        }
    }
    if (!o->batch || !o->vocab || !o->threads || o->seconds <= 0)
        return -1;
    return 0;
}

static int make_table(const opts_t *o, cqr_table_t **t)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, o->kind, o->dim);
    if (o->kind == CQR_KIND_CE || o->kind == CQR_KIND_CQR)
        cfg.chunks = o->chunks;
    if (o->kind != CQR_KIND_FULL)
        cfg.rows = o->rows;
    cfg.optim.kind = o->opt;
    cfg.cluster_iters = o->iters;
    cfg.cluster_sample = o->sample;
    cfg.cluster_threads = o->threads;
    if (o->tol >= 0)
        cfg.cluster_tol = (float)o->tol;
    cfg.seed = 42;
    char why[256] = "";
    int rc = cqr_table_config_check(&cfg, why, sizeof why);
    if (rc) {
        bench_log(PROG, "bad table config: %s", why);
        return rc;
    }
    return cqr_table_create(&cfg, t);
}

/* Pushes the vocabulary ranks [lo, hi) once each (in rank order, small
 * random gradients) so that they are known, as cqrps-bench does over the
 * wire. */
static int warm_range(cqr_table_t *t, const opts_t *o, uint64_t lo,
                      uint64_t hi)
{
    /* The buffers live for the whole process, so that a second call (the
     * memory mode warms in two steps) does not count them as growth. */
    static uint64_t *ids;
    static float *g;
    size_t wb = o->warm_batch;
    if (!ids) {
        ids = malloc(wb * sizeof *ids);
        g = malloc(wb * (size_t)o->dim * sizeof *g);
        if (!ids || !g) {
            free(ids);
            free(g);
            ids = NULL;
            return CQR_ENOMEM;
        }
        bench_rng_t r;
        bench_rng_seed(&r, 7);
        for (size_t j = 0; j < wb * o->dim; j++)
            g[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.02f;
    }
    double t0 = bench_now(), last = t0;
    int rc = 0;
    for (uint64_t base = lo; base < hi; base += wb) {
        size_t n = hi - base < wb ? (size_t)(hi - base) : wb;
        for (size_t j = 0; j < n; j++)
            ids[j] = bench_id(base + j);
        rc = cqr_table_push(t, ids, g, n);
        if (rc)
            break;
        double now = bench_now();
        if (now - last > 2.0) {
            bench_log(PROG, "warm: %.0f%% (%llu / %llu IDs, %.1f s)",
                      100.0 * (double)(base + n - lo) / (double)(hi - lo),
                      (unsigned long long)(base + n - lo),
                      (unsigned long long)(hi - lo), now - t0);
            last = now;
        }
    }
    bench_log(PROG, "warm: %llu IDs known in %.2f s",
              (unsigned long long)(hi - lo), bench_now() - t0);
    return rc;
}

/* A compaction's stages as they end, with the time since its start. */
static int compact_progress(void *ud, const char *stage, uint64_t done,
                            uint64_t total)
{
    const double *t0 = ud;
    if (done == total)
        bench_log(PROG, "compaction: %s done (%llu IDs) at %.2f s", stage,
                  (unsigned long long)total, bench_now() - *t0);
    return 0;
}

/* --compact: the known IDs into the table's static set. */
static int compact(cqr_table_t *t, const opts_t *o)
{
    if (!o->compact)
        return 0;
    double t0 = bench_now();
    uint64_t moved = 0;
    int rc = cqr_table_compact_ex(t, compact_progress, &t0, &moved);
    if (rc)
        bench_log(PROG, "compaction failed: %s", cqr_strerror(rc));
    else
        bench_log(PROG, "compaction: %llu IDs into the static set in %.2f s",
                  (unsigned long long)moved, bench_now() - t0);
    return rc;
}

static int warm(cqr_table_t *t, const opts_t *o)
{
    int rc = warm_range(t, o, 0, o->vocab);
    return rc ? rc : compact(t, o);
}

/* ---- lookup / push -------------------------------------------------- */

typedef struct worker {
    pthread_t th;         /* the thread */
    cqr_table_t *t;       /* table under test */
    const opts_t *o;      /* options */
    int push;             /* 1 = push, 0 = lookup */
    uint32_t idx;         /* thread index (seeds its generator) */
    double t_end;         /* stop time */
    uint64_t batches;     /* batches done */
    int rc;               /* first error */
    bench_lat_t lat;      /* per-batch latency, us */
} worker_t;

/* Batches of IDs are drawn before the clock starts (a ring of NB), so the
 * generator's cost is not measured. */
#define NB 64

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    const opts_t *o = w->o;
    size_t b = o->batch;
    uint64_t *ids = malloc(NB * b * sizeof *ids);
    float *buf = malloc(b * (size_t)o->dim * sizeof *buf);
    if (!ids || !buf) {
        w->rc = CQR_ENOMEM;
        goto out;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 1000 + w->idx);
    bench_ranks_t z;
    bench_ranks_init(&z, o->vocab, o->zipf);
    bench_draw_ids(&z, &r, ids, NB * b);
    for (size_t j = 0; j < b * o->dim; j++)
        buf[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.01f;
    for (uint64_t i = 0;; i++) {
        double t0 = bench_now();
        if (t0 >= w->t_end)
            break;
        const uint64_t *bi = ids + (i % NB) * b;
        int rc = w->push ? cqr_table_push(w->t, bi, buf, b)
                         : cqr_table_lookup(w->t, bi, b, buf);
        double t1 = bench_now();
        if (rc) {
            w->rc = rc;
            break;
        }
        bench_lat_add(&w->lat, (t1 - t0) * 1e6);
        w->batches++;
    }
out:
    free(ids);
    free(buf);
    return NULL;
}

/* Times lookups (push 0) or pushes of t for o->seconds on o->threads
 * threads and reports them under the name `mode`. */
static int timed_ops(cqr_table_t *t, const opts_t *o, int push,
                     const char *mode)
{
    int rc = 0;
    worker_t *ws = calloc(o->threads, sizeof *ws);
    if (!ws)
        return CQR_ENOMEM;
    bench_log(PROG, "%s: %u thread(s), %.1f s", mode, o->threads,
              o->seconds);
    double cpu0 = bench_cpu_now();
    double t0 = bench_now();
    for (uint32_t i = 0; i < o->threads; i++) {
        ws[i] = (worker_t){.t = t, .o = o, .push = push, .idx = i,
                           .t_end = t0 + o->seconds};
        pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
    }
    uint64_t batches = 0;
    bench_lat_t all = {0};
    for (uint32_t i = 0; i < o->threads; i++) {
        pthread_join(ws[i].th, NULL);
        if (ws[i].rc && !rc)
            rc = ws[i].rc;
        batches += ws[i].batches;
        bench_lat_merge(&all, &ws[i].lat);
        bench_lat_free(&ws[i].lat);
    }
    double el = bench_now() - t0;
    double cpu = bench_cpu_now() - cpu0;
    free(ws);
    if (rc) {
        bench_log(PROG, "%s failed: %s", mode, cqr_strerror(rc));
        bench_lat_free(&all);
        return rc;
    }
    bench_lat_sort(&all);
    double emb = (double)batches * o->batch / el;
    double mb = emb * o->dim * 4 / 1e6;
    double p50 = bench_lat_pct(&all, 0.5), p99 = bench_lat_pct(&all, 0.99),
           p999 = bench_lat_pct(&all, 0.999);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    /* Embeddings per CPU-second: what the engine does with the CPU time it
     * got, whatever else the machine runs. */
    double emb_cpu = cpu > 0 ? (double)batches * o->batch / cpu : 0.0;
    bench_log(PROG,
              "%s kind=%s dim=%u batch=%u vocab=%llu threads=%u helpers=%u: "
              "%.3f M emb/s, %.0f MB/s, p50 %.1f us p99 %.1f us p999 %.1f us; "
              "%.3f M emb per CPU-second",
              mode, cqr_kind_name(o->kind), o->dim, o->batch,
              (unsigned long long)o->vocab, o->threads, o->helpers, emb / 1e6,
              mb, p50, p99, p999, emb_cpu / 1e6);
    if (o->json)
        printf("{\"bench\":\"engine\",\"op\":\"%s\",\"kind\":\"%s\","
               "\"optimizer\":\"%s\",\"dim\":%u,\"chunks\":%u,\"rows\":%u,"
               "\"batch\":%u,\"vocab\":%llu,\"zipf\":%g,\"threads\":%u,"
               "\"helpers\":%u,\"compact\":%d,"
               "\"seconds\":%.3f,\"emb_per_s\":%.1f,\"mb_per_s\":%.2f,"
               "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
               "\"cpu_s\":%.3f,\"emb_per_cpu_s\":%.1f,"
               "\"known_ids\":%llu,\"blas_core\":\"%s\"}\n",
               mode, cqr_kind_name(o->kind), cqr_optim_name(o->opt), o->dim,
               o->chunks, o->rows, o->batch, (unsigned long long)o->vocab,
               o->zipf, o->threads, o->helpers, o->compact, el, emb, mb, p50,
               p99, p999,
               cpu, emb_cpu,
               (unsigned long long)st.known_ids, bench_blas_core());
    bench_lat_free(&all);
    return 0;
}

static int run_ops(const opts_t *o)
{
    cqr_table_t *t = NULL;
    cqr_par_t *par = NULL;
    int rc = make_table(o, &t);
    if (rc)
        return rc;
    if (o->helpers) {
        rc = cqr_par_create(o->helpers, &par);
        if (rc)
            goto out;
        cqr_table_set_par(t, par);
    }
    rc = warm(t, o);
    if (rc)
        goto out;
    rc = timed_ops(t, o, !strcmp(o->mode, "push"), o->mode);
out:
    cqr_table_destroy(t);
    cqr_par_destroy(par);
    return rc;
}

/* ---- cluster ------------------------------------------------------------ */

typedef struct progress_state {
    double t0;         /* phase start */
    double last;       /* last report */
    char stage[32];    /* last stage reported */
    double every;      /* seconds between reports within a stage */
} progress_state_t;

static void on_progress(void *ud, const cqr_progress_t *p)
{
    progress_state_t *ps = ud;
    double now = bench_now();
    if (strcmp(ps->stage, p->stage) || now - ps->last > ps->every) {
        bench_log(PROG, "phase: %-8s chunk %u/%u iter %u/%u  %.0f%%  %.2f s"
                  "  inertia %.6g", p->stage, p->chunk + 1, p->chunks,
                  p->iter, p->iters, 100.0 * p->fraction, now - ps->t0,
                  p->inertia);
        snprintf(ps->stage, sizeof ps->stage, "%s", p->stage);
        ps->last = now;
    }
}

static int run_cluster(const opts_t *o)
{
    if (o->kind != CQR_KIND_CQR) {
        bench_log(PROG, "cluster needs --kind cqr");
        return CQR_EINVAL;
    }
    cqr_table_t *t = NULL;
    int rc = make_table(o, &t);
    if (rc)
        return rc;
    uint64_t rss0 = bench_rss_bytes();
    rc = warm(t, o);
    if (rc)
        goto out;
    uint64_t rss1 = bench_rss_bytes();
    progress_state_t ps = {.t0 = bench_now(),
                           .every = getenv("BENCH_PROGRESS_ALL") ? 0 : 1.0};
    cqr_phase_result_t res;
    double cpu0 = bench_cpu_now();
    double t0 = bench_now();
    rc = cqr_table_cluster(t, on_progress, &ps, &res);
    double wall = bench_now() - t0;
    double cpu = bench_cpu_now() - cpu0;
    if (rc) {
        bench_log(PROG, "cluster failed: %s", cqr_strerror(rc));
        goto out;
    }
    uint64_t peak = bench_peak_rss_bytes();
    bench_log(PROG,
              "cluster known=%llu k=%u chunks=%u iters=%u sample/centroid=%u "
              "threads=%u: total %.2f s (snapshot %.2f, kmeans %.2f, assign "
              "%.2f, commit %.3f), %.2f CPU-s, inertia %.4g, k-means "
              "iterations %u max %u over %u chunks",
              (unsigned long long)o->vocab, o->rows, o->chunks, o->iters,
              o->sample, o->threads, wall, res.seconds_snapshot,
              res.seconds_kmeans, res.seconds_assign, res.seconds_commit, cpu,
              res.inertia, res.kmeans_iters_max, res.kmeans_iters_sum,
              o->chunks);
    if (o->json)
        printf("{\"bench\":\"engine\",\"op\":\"cluster\",\"kind\":\"cqr\","
               "\"dim\":%u,\"chunks\":%u,\"rows\":%u,\"vocab\":%llu,"
               "\"iters\":%u,\"sample\":%u,\"threads\":%u,"
               "\"seconds_total\":%.4f,\"seconds_engine_total\":%.4f,"
               "\"seconds_snapshot\":%.4f,\"seconds_kmeans\":%.4f,"
               "\"seconds_assign\":%.4f,\"seconds_commit\":%.4f,"
               "\"cpu_s\":%.3f,\"sample_size\":%llu,\"ids_assigned\":%llu,\"inertia\":%.6g,"
               "\"tol\":%g,\"kmeans_iters_max\":%u,\"kmeans_iters_sum\":%u,"
               "\"rss_warm_bytes\":%llu,\"peak_rss_bytes\":%llu,"
               "\"blas_core\":\"%s\"}\n",
               o->dim, o->chunks, o->rows, (unsigned long long)o->vocab,
               o->iters, o->sample, o->threads, wall, res.seconds_total,
               res.seconds_snapshot, res.seconds_kmeans, res.seconds_assign,
               res.seconds_commit, cpu, (unsigned long long)res.sample_size,
               (unsigned long long)res.ids_assigned, res.inertia,
               (double)cqr_table_config(t)->cluster_tol, res.kmeans_iters_max,
               res.kmeans_iters_sum, (unsigned long long)(rss1 - rss0), (unsigned long long)peak,
               bench_blas_core());
out:
    cqr_table_destroy(t);
    return rc;
}

/* ---- sgemm and k-means -------------------------------------------------- */

/* Single-threaded sgemm rate of an (m x kk) x (kk x n) product, GFLOP per
 * CPU-second of the calling thread (so that other work on the machine does
 * not lower it): the shape of the engine's distance tiles (B transposed,
 * as kmeans.c calls it). Repeats for about `secs` of CPU time. */
static double sgemm_rate(int m, int n, int kk, double secs)
{
    float *a = malloc((size_t)m * kk * sizeof *a);
    float *b = malloc((size_t)n * kk * sizeof *b);
    float *c = malloc((size_t)m * n * sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return 0.0;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 3);
    for (size_t i = 0; i < (size_t)m * kk; i++)
        a[i] = (float)bench_rng_unit(&r);
    for (size_t i = 0; i < (size_t)n * kk; i++)
        b[i] = (float)bench_rng_unit(&r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, -2.0f, a,
                kk, b, kk, 0.0f, c, n);
    uint64_t reps = 0;
    double t0 = bench_thread_cpu_now(), el;
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, -2.0f,
                    a, kk, b, kk, 0.0f, c, n);
        reps++;
        el = bench_thread_cpu_now() - t0;
    } while (el < secs);
    free(a);
    free(b);
    free(c);
    return 2.0 * m * n * kk * (double)reps / el / 1e9;
}

typedef struct sgemm_figs {
    double tile;  /* (256 x w) x (w x k): the engine's tile */
    double ref;   /* (8192 x w) x (w x k): DESIGN.md s6's reference shape */
    double big;   /* 1024^3: near the kernels' peak */
} sgemm_figs_t;

static void measure_sgemm(uint32_t w, uint32_t k, sgemm_figs_t *f)
{
    f->tile = sgemm_rate(256, (int)k, (int)w, 0.4);
    f->ref = sgemm_rate(8192, (int)k, (int)w, 0.4);
    f->big = sgemm_rate(1024, 1024, 1024, 0.6);
    bench_log(PROG,
              "sgemm (1 thread, core %s), GFLOP per CPU-second: %.2f "
              "(256x%ux%u), %.2f (8192x%ux%u), %.2f (1024^3)",
              bench_blas_core(), f->tile, w, k, f->ref, w, k, f->big);
}

static int run_sgemm(const opts_t *o)
{
    sgemm_figs_t f;
    uint32_t w = o->dim / (o->chunks ? o->chunks : 1);
    measure_sgemm(w, o->rows, &f);
    if (o->json)
        printf("{\"bench\":\"engine\",\"op\":\"sgemm\",\"w\":%u,\"k\":%u,"
               "\"gflops_tile\":%.3f,\"gflops_ref\":%.3f,\"gflops_1024\":%.3f,"
               "\"blas_core\":\"%s\"}\n",
               w, o->rows, f.tile, f.ref, f.big, bench_blas_core());
    return 0;
}

/* The points a phase would cluster: chunk vectors of a uniform sample of
 * n known IDs, chunk-major (chunk i is an n x w block of pts). */
static int sample_points(cqr_table_t *t, const opts_t *o, size_t n,
                         float *pts)
{
    const uint32_t c = o->chunks, w = o->dim / c;
    uint64_t *ids = malloc(n * sizeof *ids);
    float *emb = malloc(n * o->dim * sizeof *emb);
    int rc = ids && emb ? 0 : CQR_ENOMEM;
    if (!rc) {
        bench_rng_t r;
        bench_rng_seed(&r, 11);
        for (size_t j = 0; j < n; j++)
            ids[j] = bench_id(bench_rng_below(&r, o->vocab));
        rc = cqr_table_lookup(t, ids, n, emb);
    }
    if (!rc)
        for (uint32_t i = 0; i < c; i++)
            for (size_t j = 0; j < n; j++)
                memcpy(pts + ((size_t)i * n + j) * w,
                       emb + j * o->dim + i * w, w * sizeof(float));
    free(ids);
    free(emb);
    return rc;
}

/* --dump: the points as raw floats, for kmeans_compare.py. */
static int dump_points(const opts_t *o, const float *pts, size_t n)
{
    const uint32_t c = o->chunks, w = o->dim / c;
    FILE *f = fopen(o->dump, "wb");
    if (!f || fwrite(pts, sizeof(float), n * o->dim, f) != n * o->dim) {
        bench_log(PROG, "cannot write %s: %s", o->dump, strerror(errno));
        if (f)
            fclose(f);
        return CQR_EIO;
    }
    fclose(f);
    bench_log(PROG, "wrote %zu x %u points x %u chunks to %s", n, w, c,
              o->dump);
    return 0;
}

/* What fitting every chunk took. */
typedef struct fit_figs {
    double secs, cpu_secs, inertia_sum;
    uint64_t iters_run;
} fit_figs_t;

/* Fits k centroids to each chunk's points, as a phase does. */
static int fit_chunks(const opts_t *o, const float *pts, size_t n,
                      float *cent, fit_figs_t *fg)
{
    const uint32_t c = o->chunks, w = o->dim / c, k = o->rows;
    memset(fg, 0, sizeof *fg);
    for (uint32_t i = 0; i < c; i++) {
        cqr_kmeans_params_t kp = {.iters = o->iters, .seed = 99 + i,
                                  .tol = o->tol > 0 ? o->tol : 0,
                                  .threads = o->threads,
                                  .init = CQR_KMEANS_INIT_PLUSPLUS,
                                  .chunk = i, .chunks = c};
        cqr_kmeans_result_t kr;
        double t0 = bench_now(), c0 = bench_cpu_now();
        int rc = cqr_kmeans_fit(pts + (size_t)i * n * w, n, w, w, k, &kp,
                                cent, NULL, &kr);
        double el = bench_now() - t0;
        fg->cpu_secs += bench_cpu_now() - c0;
        if (rc)
            return rc;
        fg->secs += el;
        fg->inertia_sum += kr.inertia;
        fg->iters_run += kr.iters;
        bench_log(PROG, "kmeans chunk %u/%u: %.3f s, %u iterations, "
                  "inertia %.5g", i + 1, c, el, kr.iters, kr.inertia);
    }
    return 0;
}

static int run_kmeans(const opts_t *o)
{
    const uint32_t c = o->chunks, w = o->dim / c, k = o->rows;
    const size_t n = (size_t)o->sample * k;
    cqr_table_t *t = NULL;
    float *pts = NULL, *cent = NULL;
    int rc = make_table(o, &t);
    if (rc)
        return rc;
    rc = warm(t, o);
    if (rc)
        goto out;
    pts = malloc(n * o->dim * sizeof *pts);
    cent = malloc((size_t)k * w * sizeof *cent);
    if (!pts || !cent) {
        rc = CQR_ENOMEM;
        goto out;
    }
    rc = sample_points(t, o, n, pts);
    if (!rc && o->dump)
        rc = dump_points(o, pts, n);
    if (rc)
        goto out;
    sgemm_figs_t sg;
    measure_sgemm(w, k, &sg);
    fit_figs_t fg;
    rc = fit_chunks(o, pts, n, cent, &fg);
    if (rc)
        goto out;
    double secs = fg.secs, cpu_secs = fg.cpu_secs;
    /* FLOPs of the Lloyd iterations' cross products only (2 n k w per
     * iteration per chunk); the k-means++ seeding and the argmin passes
     * are extra work not counted, so the rate is a lower bound. */
    double flops = 2.0 * (double)n * k * w * (double)fg.iters_run;
    double gf = flops / secs / 1e9;
    /* Per CPU-second: comparable with sgemm's rate whatever the load. */
    double per_thread = cpu_secs > 0 ? flops / cpu_secs / 1e9 : 0.0;
    bench_log(PROG,
              "kmeans n=%zu w=%u k=%u iters=%u chunks=%u threads=%u: %.3f s, "
              "%.2f GFLOP/s (%.2f per CPU-second) = %.0f%% of sgemm tile rate, "
              "%.0f%% of 1024^3 rate",
              n, w, k, o->iters, c, o->threads, secs, gf, per_thread,
              100.0 * per_thread / sg.tile, 100.0 * per_thread / sg.big);
    if (o->json)
        printf("{\"bench\":\"engine\",\"op\":\"kmeans\",\"n\":%zu,\"w\":%u,"
               "\"k\":%u,\"iters\":%u,\"chunks\":%u,\"threads\":%u,"
               "\"init\":\"k-means++\",\"seconds\":%.4f,"
               "\"seconds_per_chunk\":%.4f,\"inertia\":%.6g,"
               "\"gflops\":%.3f,\"gflops_per_thread\":%.3f,\"cpu_s\":%.3f,"
               "\"sgemm_gflops_tile\":%.3f,\"sgemm_gflops_ref\":%.3f,"
               "\"sgemm_gflops_1024\":%.3f,\"frac_of_sgemm_tile\":%.4f,"
               "\"frac_of_sgemm_1024\":%.4f,\"blas_core\":\"%s\"}\n",
               n, w, k, o->iters, c, o->threads, secs, secs / c,
               fg.inertia_sum / c, gf, per_thread, cpu_secs, sg.tile, sg.ref,
               sg.big,
               per_thread / sg.tile, per_thread / sg.big, bench_blas_core());
out:
    if (rc)
        bench_log(PROG, "kmeans failed: %s", cqr_strerror(rc));
    free(pts);
    free(cent);
    cqr_table_destroy(t);
    return rc;
}

/* ---- memory ------------------------------------------------------------- */

/* RSS growth per known ID. The first warm-up batch is pushed before the
 * baseline is taken, so that the push scratch buffers (sized by the batch,
 * allocated once per thread) and the optimizer state pages that any push
 * touches are not counted as per-ID memory; the growth is then divided by
 * the IDs added after the baseline. Use --optimizer sgd to leave the
 * codebooks' optimizer state out entirely (pointers and map only). */
static int run_memory(const opts_t *o)
{
    uint64_t rss0 = bench_rss_bytes();
    cqr_table_t *t = NULL;
    int rc = make_table(o, &t);
    if (rc)
        return rc;
    uint64_t first = o->vocab / 10 < o->warm_batch ? o->vocab / 10
                                                   : o->warm_batch;
    rc = warm_range(t, o, 0, first);
    uint64_t rss1 = bench_rss_bytes(), peak1 = bench_peak_rss_bytes();
    if (!rc)
        rc = warm_range(t, o, first, o->vocab);
    if (rc) {
        bench_log(PROG, "warm failed: %s", cqr_strerror(rc));
        cqr_table_destroy(t);
        return rc;
    }
    uint64_t rss2 = bench_rss_bytes(), peak2 = bench_peak_rss_bytes();
    if (o->compact) {
        bench_log(PROG, "before the compaction: %.2f B/ID",
                  ((double)rss2 - (double)rss1) / (double)(o->vocab - first));
        if ((rc = compact(t, o)) != 0) {
            cqr_table_destroy(t);
            return rc;
        }
        rss2 = bench_rss_bytes();
        peak2 = bench_peak_rss_bytes();
    }
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    const double added = (double)(o->vocab - first);
    double per_id = ((double)rss2 - (double)rss1) / added;
    double peak_per_id = (double)(peak2 > peak1 ? peak2 - peak1 : 0) / added;
    bench_log(PROG,
              "memory kind=%s%s optimizer=%s chunks=%u k=%u known=%llu: RSS "
              "+%.1f MB for %.0f IDs = %.2f B/ID (peak +%.2f B/ID during "
              "growth; the table counts %.2f B/ID of index); table and "
              "scratch before: %.1f MB",
              cqr_kind_name(o->kind), o->compact ? " (compacted)" : "",
              cqr_optim_name(o->opt), o->chunks,
              o->rows, (unsigned long long)st.known_ids,
              ((double)rss2 - (double)rss1) / 1e6, added, per_id, peak_per_id,
              st.bytes_per_known_id, ((double)rss1 - (double)rss0) / 1e6);
    if (o->json)
        printf("{\"bench\":\"engine\",\"op\":\"memory\",\"kind\":\"%s\","
               "\"optimizer\":\"%s\",\"dim\":%u,\"chunks\":%u,\"rows\":%u,"
               "\"compact\":%d,"
               "\"vocab\":%llu,\"known_ids\":%llu,\"ids_measured\":%.0f,"
               "\"rss_growth_bytes\":%.0f,\"bytes_per_id\":%.3f,"
               "\"peak_bytes_per_id\":%.3f,\"index_bytes_per_id\":%.3f,"
               "\"bytes_before\":%.0f,\"blas_core\":\"%s\"}\n",
               cqr_kind_name(o->kind), cqr_optim_name(o->opt), o->dim,
               o->chunks, o->rows, o->compact, (unsigned long long)o->vocab,
               (unsigned long long)st.known_ids, added,
               (double)rss2 - (double)rss1, per_id, peak_per_id,
               st.bytes_per_known_id, (double)rss1 - (double)rss0,
               bench_blas_core());
    /* A compacted table's lookup and push rates at the size measured,
     * without a second warm-up. */
    if (o->compact)
        rc = timed_ops(t, o, 0, "lookup");
    if (o->compact && rc == 0)
        rc = timed_ops(t, o, 1, "push");
    cqr_table_destroy(t);
    return rc;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    const char *core = cqr_blas_init();
    bench_log(PROG, "OpenBLAS core: %s", core);
    int rc;
    if (!strcmp(o.mode, "lookup") || !strcmp(o.mode, "push"))
        rc = run_ops(&o);
    else if (!strcmp(o.mode, "cluster"))
        rc = run_cluster(&o);
    else if (!strcmp(o.mode, "kmeans"))
        rc = run_kmeans(&o);
    else if (!strcmp(o.mode, "memory"))
        rc = run_memory(&o);
    else if (!strcmp(o.mode, "sgemm"))
        rc = run_sgemm(&o);
    else {
        usage();
        return 2;
    }
    fflush(stdout);
    return rc ? 1 : 0;
}
