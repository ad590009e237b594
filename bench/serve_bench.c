/* serve_bench.c -- cqrps-serve-bench: what a serving export costs and
 * how fast it looks up, beside the training table, in one run.
 *
 * For one kind and vocabulary: a table of `ids` known IDs (every ID
 * pushed once; cqr tables run one cluster phase, so the pointers are
 * learned), then
 *   - the checkpoint: a complete export of its segments (persist.h), the
 *     bytes a first checkpoint writes (optimizer state included);
 *   - the serving export (table_model.h) in f32, f16 and int8: build
 *     seconds and bytes;
 *   - lookups of uniform IDs (a tenth never seen) in batches of --batch:
 *     the table's (cqr_table_lookup, one thread) against the export's
 *     (cqr_model_lookup, one thread and --threads threads), in IDs per
 *     wall second and per CPU second (the machine is shared);
 *   - lookups through the server's registry while the table is rebuilt
 *     from the export and swapped in every 100 ms: batch latency before
 *     and during the reloads (stderr), and failed lookups (none expected).
 * One TSV line on stdout (header with --header); progress on stderr.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "engine/err.h"
#include "engine/model.h"
#include "engine/persist.h"
#include "engine/table.h"
#include "engine/table_model.h"
#include "tables/registry.h"

#define PROG "cqrps-serve-bench"

typedef struct opts {
    cqr_kind_t kind;
    uint32_t dim, chunks, rows, threads, batch;
    uint64_t ids;
    double seconds;   /* per lookup measurement */
    int header;
} opts_t;

static void usage(void)
{
    fprintf(stderr, "usage: " PROG " [--kind full|hash|ce|cqr] [--dim 16] "
            "[--chunks 4] [--rows 1024]\n  [--ids 1e6] [--threads 2] "
            "[--batch 4096] [--seconds 2] [--header]\n");
}

static int parse(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.kind = CQR_KIND_CQR, .dim = 16, .chunks = 4, .rows = 1024,
                  .threads = 2, .batch = 4096, .ids = 1000000,
                  .seconds = 2.0};
    static const struct option lo[] = {
        {"kind", 1, 0, 'k'}, {"dim", 1, 0, 'd'}, {"chunks", 1, 0, 'c'},
        {"rows", 1, 0, 'r'}, {"ids", 1, 0, 'n'}, {"threads", 1, 0, 't'},
        {"batch", 1, 0, 'b'}, {"seconds", 1, 0, 's'}, {"header", 0, 0, 'H'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'k':
            if (cqr_kind_parse(optarg, &o->kind))
                return -1;
            break;
        case 'd': o->dim = (uint32_t)atoi(optarg); break;
        case 'c': o->chunks = (uint32_t)atoi(optarg); break;
        case 'r': o->rows = (uint32_t)atoi(optarg); break;
        case 'n':
            if (bench_parse_count(optarg, &o->ids))
                return -1;
            break;
        case 't': o->threads = (uint32_t)atoi(optarg); break;
        case 'b': o->batch = (uint32_t)atoi(optarg); break;
        case 's': o->seconds = atof(optarg); break;
        case 'H': o->header = 1; break;
        default: return -1;
        }
    }
    return o->threads && o->batch ? 0 : -1;
}

/* A table of o->ids known IDs (bench_id(0 .. ids-1)). */
static cqr_table_t *build(const opts_t *o)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, o->kind, o->dim);
    if (o->kind != CQR_KIND_FULL) {
        cfg.rows = o->rows;
        if (o->kind != CQR_KIND_HASH)
            cfg.chunks = o->chunks;
    }
    cfg.cluster_threads = o->threads;
    cqr_table_t *t = NULL;
    if (cqr_table_create(&cfg, &t))
        return NULL;
    enum { B = 65536 };
    uint64_t *ids = malloc(B * sizeof *ids);
    float *g = malloc((size_t)B * o->dim * sizeof *g);
    bench_rng_t r;
    bench_rng_seed(&r, 1);
    for (size_t j = 0; j < (size_t)B * o->dim; j++)
        g[j] = (float)(bench_rng_unit(&r) - 0.5);
    for (uint64_t at = 0; at < o->ids; at += B) {
        size_t n = o->ids - at < B ? (size_t)(o->ids - at) : B;
        for (size_t j = 0; j < n; j++)
            ids[j] = bench_id(at + j);
        if (cqr_table_push(t, ids, g, n))
            break;
    }
    free(ids);
    free(g);
    if (o->kind == CQR_KIND_CQR && cqr_table_cluster(t, NULL, NULL, NULL)) {
        cqr_table_destroy(t);
        return NULL;
    }
    return t;
}

/* Lookups for o->seconds by `threads` threads. */
typedef struct run {
    const opts_t *o;
    cqr_table_t *t;         /* or */
    const cqr_model_t *m;
    uint64_t seed;
    uint64_t done;          /* IDs looked up */
} run_t;

static void *run_main(void *arg)
{
    run_t *r = arg;
    const opts_t *o = r->o;
    uint64_t *ids = malloc(o->batch * sizeof *ids);
    float *out = malloc((size_t)o->batch * o->dim * sizeof *out);
    bench_rng_t rng;
    bench_rng_seed(&rng, r->seed);
    const double end = bench_now() + o->seconds;
    while (bench_now() < end) {
        for (uint32_t j = 0; j < o->batch; j++)
            ids[j] = bench_id(bench_rng_below(&rng, o->ids + o->ids / 9));
        int rc = r->m ? cqr_model_lookup(r->m, ids, o->batch, out)
                      : cqr_table_lookup(r->t, ids, o->batch, out);
        if (rc)
            break;
        r->done += o->batch;
    }
    free(ids);
    free(out);
    return NULL;
}

/* IDs per wall second and per CPU second of `threads` lookups. */
static void rate(const opts_t *o, cqr_table_t *t, const cqr_model_t *m,
                 uint32_t threads, double *per_s, double *per_cpu_s)
{
    run_t r[64];
    pthread_t th[64];
    threads = threads > 64 ? 64 : threads;
    const double w0 = bench_now(), c0 = bench_cpu_now();
    for (uint32_t i = 0; i < threads; i++) {
        r[i] = (run_t){.o = o, .t = t, .m = m, .seed = 100 + i};
        pthread_create(&th[i], NULL, run_main, &r[i]);
    }
    uint64_t done = 0;
    for (uint32_t i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        done += r[i].done;
    }
    const double w = bench_now() - w0, c = bench_cpu_now() - c0;
    *per_s = (double)done / w;
    *per_cpu_s = (double)done / c;
}

/* ---- Latency during reloads ---------------------------------------------
 * The serving server's swap (serve.h): lookups through the registry
 * (get, lookup, unref) on one thread while the main thread rebuilds the
 * table from the export and swaps it in (cqr_registry_replace) every
 * 100 ms during the second half of the run. */
typedef struct reload_run {
    const opts_t *o;
    cqr_registry_t *reg;
    double t_switch;        /* reloads start here */
    bench_lat_t calm, busy; /* batch latencies before and during */
    uint64_t failed;
    atomic_int stop;
} reload_run_t;

static void *reload_reader(void *arg)
{
    reload_run_t *r = arg;
    const opts_t *o = r->o;
    uint64_t *ids = malloc(o->batch * sizeof *ids);
    float *out = malloc((size_t)o->batch * o->dim * sizeof *out);
    bench_rng_t rng;
    bench_rng_seed(&rng, 7);
    while (!atomic_load(&r->stop)) {
        for (uint32_t j = 0; j < o->batch; j++)
            ids[j] = bench_id(bench_rng_below(&rng, o->ids));
        double t0 = bench_now();
        cqr_entry_t *e = NULL;
        int rc = cqr_registry_get(r->reg, "t", &e);
        if (rc == 0) {
            rc = cqr_table_lookup(e->table, ids, o->batch, out);
            cqr_entry_unref(e);
        }
        double us = (bench_now() - t0) * 1e6;
        r->failed += rc != 0;
        bench_lat_add(t0 < r->t_switch ? &r->calm : &r->busy, us);
    }
    free(ids);
    free(out);
    return NULL;
}

/* Prints "p50 p99 max (calm) | p50 p99 max (reloading) reloads failed". */
static void reload_latency(const opts_t *o, const cqr_model_t *m)
{
    cqr_registry_t *reg = NULL;
    cqr_table_t *t = NULL;
    char why[200];
    if (cqr_registry_create(4, UINT64_MAX / 4, 0, &reg) ||
        cqr_table_from_model(m, &t, why, sizeof why) ||
        cqr_registry_replace(reg, "t", t, 1, why, sizeof why))
        return;
    reload_run_t r = {.o = o, .reg = reg};
    r.t_switch = bench_now() + o->seconds;
    pthread_t th;
    pthread_create(&th, NULL, reload_reader, &r);
    int reloads = 0;
    const double end = r.t_switch + o->seconds;
    while (bench_now() < end) {
        double t0 = bench_now();
        if (t0 >= r.t_switch &&
            cqr_table_from_model(m, &t, why, sizeof why) == 0 &&
            cqr_registry_replace(reg, "t", t, 2, why, sizeof why) == 0)
            reloads++;
        double left = 0.1 - (bench_now() - t0);
        if (left > 0)
            usleep((useconds_t)(left * 1e6));
    }
    atomic_store(&r.stop, 1);
    pthread_join(th, NULL);
    bench_lat_sort(&r.calm);
    bench_lat_sort(&r.busy);
    bench_log(PROG, "reload: batch latency us p50/p99/max calm %.0f/%.0f/"
              "%.0f, during %d reloads %.0f/%.0f/%.0f, failed %llu",
              bench_lat_pct(&r.calm, 0.5), bench_lat_pct(&r.calm, 0.99),
              bench_lat_pct(&r.calm, 1.0), reloads,
              bench_lat_pct(&r.busy, 0.5), bench_lat_pct(&r.busy, 0.99),
              bench_lat_pct(&r.busy, 1.0), (unsigned long long)r.failed);
    bench_lat_free(&r.calm);
    bench_lat_free(&r.busy);
    cqr_registry_destroy(reg);
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse(argc, argv, &o)) {
        usage();
        return 2;
    }
    bench_log(PROG, "blas core %s; building %s with %llu IDs",
              bench_blas_core(), cqr_kind_name(o.kind),
              (unsigned long long)o.ids);
    double t0 = bench_now();
    cqr_table_t *t = build(&o);
    if (!t) {
        bench_log(PROG, "cannot build the table");
        return 1;
    }
    bench_log(PROG, "built in %.1f s", bench_now() - t0);
    cqr_export_opts_t eo = {0};
    cqr_export_t *x = NULL;
    t0 = bench_now();
    if (cqr_table_export(t, &eo, &x))
        return 1;
    const double ck_s = bench_now() - t0;
    const uint64_t ck_bytes = x->bytes;
    cqr_export_free(x);
    uint64_t bytes[3];
    double secs[3];
    cqr_model_t *m = NULL;
    for (uint32_t dt = 0; dt < 3; dt++) {
        uint8_t *img = NULL;
        size_t len = 0;
        char why[200];
        t0 = bench_now();
        if (cqr_table_model(t, NULL, dt, 1, 0, &img, &len, why, sizeof why)) {
            bench_log(PROG, "export failed: %s", why);
            return 1;
        }
        secs[dt] = bench_now() - t0;
        bytes[dt] = len;
        if (dt == CQR_DTYPE_F32 &&
            cqr_model_open_image(img, len, &m, why, sizeof why) == 0)
            continue;
        free(img);
    }
    double tab1, tab1c, mod1, mod1c, modn, modnc;
    rate(&o, t, NULL, 1, &tab1, &tab1c);
    rate(&o, NULL, m, 1, &mod1, &mod1c);
    rate(&o, NULL, m, o.threads, &modn, &modnc);
    if (o.header)
        printf("kind\tids\tdim\tckpt_bytes\tckpt_s\tf32_bytes\tf32_s\t"
               "f16_bytes\tint8_bytes\ttable_ids_s_1t\ttable_ids_cpu_s\t"
               "model_ids_s_1t\tmodel_ids_cpu_s\tmodel_ids_s_%ut\n",
               o.threads);
    printf("%s\t%llu\t%u\t%llu\t%.3f\t%llu\t%.3f\t%llu\t%llu\t%.3g\t%.3g\t"
           "%.3g\t%.3g\t%.3g\n", cqr_kind_name(o.kind),
           (unsigned long long)o.ids, o.dim, (unsigned long long)ck_bytes,
           ck_s, (unsigned long long)bytes[0], secs[0],
           (unsigned long long)bytes[1], (unsigned long long)bytes[2], tab1,
           tab1c, mod1, mod1c, modn);
    cqr_table_destroy(t);
    reload_latency(&o, m);
    cqr_model_close(m);
    return 0;
}
