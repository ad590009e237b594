/* checkpoint_bench.c -- checkpoint and restore cost of large tables.
 *
 * For each table kind asked for (--kind full, cqr or both), builds a table
 * of --ids known IDs (default 10 million, dim --dim, optimizer --opt) in
 * memory, then in a fresh RocksDB store (--dir, default a temp dir that is
 * removed afterwards):
 *   1. checkpoint 1: the whole table (no base yet);
 *   2. touches --touch of the known IDs (default 1%, uniform) with one
 *      push each, then checkpoint 2: incremental, against checkpoint 1;
 *   3. (cqr) adds --touch new IDs, then checkpoint 3 (pointer map deltas);
 *   4. destroys the table, reopens the store and restores the latest
 *      generation; checks its digest against the table's.
 * Reports times, bytes written, the longest push pause (the export's copy
 * under the table's gate), RSS, and the ratio second/first, as progress
 * on stderr and one final JSON line on stdout.
 */
#define _GNU_SOURCE /* nftw */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_common.h"
#include "engine/err.h"
#include "engine/persist.h"
#include "store/store.h"
#include "engine/table.h"

#define PROG "checkpoint-bench"

typedef struct opts {
    uint64_t ids;          /* known IDs per table */
    uint32_t dim;          /* floats per embedding */
    uint32_t rows;         /* cqr codebook rows */
    cqr_optim_kind_t opt;  /* optimizer */
    double touch;          /* fraction touched between checkpoints */
    const char *kinds;     /* "full", "cqr" or "both" */
    const char *dir;       /* store directory, or NULL for a temp dir */
} opts_t;

typedef struct result {
    const char *kind;
    uint64_t ids;
    uint64_t rss_table;       /* RSS after building the table */
    uint64_t peak_rss;        /* peak RSS so far */
    double build_s;
    cqr_store_ckpt_stats_t c1, c2, c3; /* c3: cqr new IDs only */
    int have_c3;
    double restore_s;
    uint64_t restore_bytes;
    uint64_t disk_bytes;      /* live SST + blob bytes after retention */
    int digest_ok;
} result_t;

static int rm_cb(const char *path, const struct stat *sb, int flag,
                 struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void die(const char *what, int rc)
{
    bench_log(PROG, "%s: %s", what, cqr_strerror(rc));
    exit(1);
}

static void progress(void *ud, const cqr_store_progress_t *p)
{
    double *last = ud;
    double t = bench_now();
    if (t - *last < 1.0 && p->fraction < 1.0)
        return;
    *last = t;
    bench_log(PROG, "  %s %s %.0f%% (%.0f MB)", p->stage,
              p->table ? p->table : "", 100.0 * p->fraction,
              p->bytes_done / 1e6);
}

static void push_ids(cqr_table_t *t, const uint64_t *ids, size_t n,
                     uint32_t dim, bench_rng_t *rng)
{
    const size_t batch = 65536;
    float *g = malloc(batch * dim * sizeof *g);
    if (!g)
        die("gradients", CQR_ENOMEM);
    for (size_t lo = 0; lo < n; lo += batch) {
        size_t m = n - lo < batch ? n - lo : batch;
        for (size_t j = 0; j < m * dim; j++)
            g[j] = (float)(bench_rng_unit(rng) - 0.5) * 0.1f;
        int rc = cqr_table_push(t, ids + lo, g, m);
        if (rc)
            die("push", rc);
    }
    free(g);
}

static uint64_t *fill_ids(uint64_t first_rank, size_t n)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    if (!ids)
        die("ids", CQR_ENOMEM);
    for (size_t j = 0; j < n; j++)
        ids[j] = bench_id(first_rank + j);
    return ids;
}

static void log_ckpt(const char *what, const cqr_store_ckpt_stats_t *c)
{
    bench_log(PROG, "%s: generation %llu, %.3f s, %.1f MB written (%llu "
              "segments, %llu shared), export %.3f s, write %.3f s, sync "
              "%.3f s, push pause %.1f ms",
              what, (unsigned long long)c->generation, c->seconds,
              c->bytes_written / 1e6, (unsigned long long)c->segments_written,
              (unsigned long long)c->segments_shared, c->seconds_export,
              c->seconds_write, c->seconds_sync, c->pause_max_seconds * 1e3);
}

static int collect_one(void *ud, const char *name, cqr_table_t *t)
{
    (void)name;
    cqr_table_t **out = ud;
    if (*out)
        cqr_table_destroy(*out);
    *out = t;
    return 0;
}

/* Creates the table and pushes o->ids known IDs into it. */
static cqr_table_t *build(const opts_t *o, cqr_kind_t kind,
                          bench_rng_t *rng, result_t *r)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, o->dim);
    cfg.optim.kind = o->opt;
    if (kind == CQR_KIND_CQR)
        cfg.rows = o->rows;
    cqr_table_t *t;
    int rc = cqr_table_create(&cfg, &t);
    if (rc)
        die("create", rc);

    bench_log(PROG, "%s: building %llu known IDs, dim %u, %s", r->kind,
              (unsigned long long)o->ids, o->dim, cqr_optim_name(o->opt));
    uint64_t rss0 = bench_rss_bytes();
    double t0 = bench_now();
    const size_t chunk = 1 << 20;
    for (uint64_t lo = 0; lo < o->ids; lo += chunk) {
        size_t m = o->ids - lo < chunk ? (size_t)(o->ids - lo) : chunk;
        uint64_t *ids = fill_ids(lo, m);
        push_ids(t, ids, m, o->dim, rng);
        free(ids);
    }
    r->build_s = bench_now() - t0;
    r->rss_table = bench_rss_bytes();
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    bench_log(PROG, "%s: built in %.1f s: %llu known IDs, params %.0f MB, "
              "optimizer %.0f MB, index %.0f MB, RSS +%.0f MB", r->kind,
              r->build_s, (unsigned long long)st.known_ids,
              st.param_bytes / 1e6, st.optim_bytes / 1e6,
              st.index_bytes / 1e6, (r->rss_table - rss0) / 1e6);
    return t;
}

/* One complete checkpoint, one after touching a fraction of the known IDs
 * and, for cqr, one after new IDs (insertion records); then the disk use. */
static void checkpoints(const opts_t *o, cqr_kind_t kind, cqr_table_t *t,
                        cqr_store_t *s, bench_rng_t *rng, result_t *r)
{
    const char *name = r->kind;
    double last = 0;
    uint64_t gen;
    int rc = cqr_store_checkpoint(s, &t, &name, 1, progress, &last, &gen,
                                  &r->c1);
    if (rc)
        die("checkpoint 1", rc);
    log_ckpt("checkpoint 1 (complete)", &r->c1);

    /* Touch a fraction of the known IDs, uniformly. */
    size_t nt = (size_t)(o->ids * o->touch);
    uint64_t *tids = malloc((nt ? nt : 1) * sizeof *tids);
    for (size_t j = 0; j < nt; j++)
        tids[j] = bench_id(bench_rng_below(rng, o->ids));
    push_ids(t, tids, nt, o->dim, rng);
    rc = cqr_store_checkpoint(s, &t, &name, 1, progress, &last, &gen, &r->c2);
    if (rc)
        die("checkpoint 2", rc);
    log_ckpt("checkpoint 2 (after touching)", &r->c2);
    free(tids);
    if (kind == CQR_KIND_CQR) {
        /* New IDs change the pointer map (insertion records). */
        uint64_t *nids = fill_ids(o->ids, nt);
        push_ids(t, nids, nt, o->dim, rng);
        free(nids);
        rc = cqr_store_checkpoint(s, &t, &name, 1, progress, &last, &gen,
                                  &r->c3);
        if (rc)
            die("checkpoint 3", rc);
        r->have_c3 = 1;
        log_ckpt("checkpoint 3 (after new IDs)", &r->c3);
    }
    uint64_t segs;
    cqr_store_usage(s, &segs, &r->disk_bytes);
}

/* Reopens the store, loads the newest generation and compares digests. */
static void restore(const char *dir, const cqr_store_opts_t *so,
                    uint64_t want, result_t *r)
{
    bench_log(PROG, "%s: restoring", r->kind);
    double t0 = bench_now();
    cqr_store_t *s;
    char why[512];
    int rc = cqr_store_open(dir, so, &s, why, sizeof why);
    if (rc) {
        bench_log(PROG, "reopen %s: %s", dir, why);
        exit(1);
    }
    cqr_table_t *u = NULL;
    cqr_store_load_info_t li;
    double last = 0;
    rc = cqr_store_load(s, 0, collect_one, &u, progress, &last, &li);
    if (rc)
        die("load", rc);
    r->restore_s = bench_now() - t0;
    r->restore_bytes = li.bytes;
    uint64_t got = 0;
    cqr_table_digest(u, &got);
    r->digest_ok = got == want;
    r->peak_rss = bench_peak_rss_bytes();
    bench_log(PROG, "%s: restored generation %llu in %.3f s (%.1f MB read), "
              "digest %s", r->kind, (unsigned long long)li.generation,
              r->restore_s, li.bytes / 1e6, r->digest_ok ? "equal" : "DIFFERS");
    cqr_table_destroy(u);
    cqr_store_close(s);
}

static void run(const opts_t *o, cqr_kind_t kind, const char *dir,
                result_t *r)
{
    memset(r, 0, sizeof *r);
    r->kind = cqr_kind_name(kind);
    r->ids = o->ids;
    bench_rng_t rng;
    bench_rng_seed(&rng, 42);
    cqr_table_t *t = build(o, kind, &rng, r);

    cqr_store_opts_t so;
    cqr_store_opts_default(&so);
    so.keep = 2;
    cqr_store_t *s;
    char why[512];
    int rc = cqr_store_open(dir, &so, &s, why, sizeof why);
    if (rc) {
        bench_log(PROG, "open %s: %s", dir, why);
        exit(1);
    }
    checkpoints(o, kind, t, s, &rng, r);
    uint64_t want;
    cqr_table_digest(t, &want);
    cqr_table_destroy(t);
    cqr_store_close(s);
    restore(dir, &so, want, r);
}

static void json_ckpt(const char *key, const cqr_store_ckpt_stats_t *c)
{
    printf("\"%s\":{\"seconds\":%.4f,\"bytes\":%llu,\"segments\":%llu,"
           "\"shared\":%llu,\"export_s\":%.4f,\"write_s\":%.4f,"
           "\"sync_s\":%.4f,\"pause_s\":%.6f}", key, c->seconds,
           (unsigned long long)c->bytes_written,
           (unsigned long long)c->segments_written,
           (unsigned long long)c->segments_shared, c->seconds_export,
           c->seconds_write, c->seconds_sync, c->pause_max_seconds);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: " PROG " [--ids N] [--dim D] [--rows K] [--opt "
            "sgd|adagrad|adam]\n"
            "       [--touch F] [--kind full|cqr|both] [--dir DIR]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts_t o = {.ids = 10000000, .dim = 16, .rows = 16384,
                .opt = CQR_OPT_ADAM, .touch = 0.01, .kinds = "both"};
    static const struct option lo[] = {
        {"ids", required_argument, 0, 'n'}, {"dim", required_argument, 0, 'd'},
        {"rows", required_argument, 0, 'k'}, {"opt", required_argument, 0, 'o'},
        {"touch", required_argument, 0, 't'},
        {"kind", required_argument, 0, 'K'}, {"dir", required_argument, 0, 'D'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (bench_parse_count(optarg, &o.ids) || o.ids == 0)
                usage();
            break;
        case 'd': o.dim = (uint32_t)atoi(optarg); break;
        case 'k': o.rows = (uint32_t)atoi(optarg); break;
        case 'o':
            if (cqr_optim_parse(optarg, &o.opt))
                usage();
            break;
        case 't': o.touch = atof(optarg); break;
        case 'K': o.kinds = optarg; break;
        case 'D': o.dir = optarg; break;
        default: usage();
        }
    }
    if (!(o.touch > 0 && o.touch <= 1) || o.dim == 0)
        usage();
    int do_full = strcmp(o.kinds, "cqr") != 0;
    int do_cqr = strcmp(o.kinds, "full") != 0;
    bench_log(PROG, "OpenBLAS core %s; %ld CPUs", bench_blas_core(),
              sysconf(_SC_NPROCESSORS_ONLN));
    result_t res[2];
    int nres = 0;
    for (int k = 0; k < 2; k++) {
        if ((k == 0 && !do_full) || (k == 1 && !do_cqr))
            continue;
        char tmpl[] = "/tmp/cqr_ckpt_bench_XXXXXX";
        const char *dir = o.dir;
        char sub[4096];
        if (!dir) {
            if (!mkdtemp(tmpl)) {
                bench_log(PROG, "mkdtemp: %s", strerror(errno));
                return 1;
            }
            dir = tmpl;
        } else {
            snprintf(sub, sizeof sub, "%s/%s", o.dir, k ? "cqr" : "full");
            dir = sub;
        }
        run(&o, k ? CQR_KIND_CQR : CQR_KIND_FULL, dir, &res[nres++]);
        if (!o.dir)
            nftw(tmpl, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    }
    printf("{\"bench\":\"checkpoint\",\"blas_core\":\"%s\",\"dim\":%u,"
           "\"opt\":\"%s\",\"touch\":%g,\"results\":[", bench_blas_core(),
           o.dim, cqr_optim_name(o.opt), o.touch);
    for (int i = 0; i < nres; i++) {
        const result_t *r = &res[i];
        printf("%s{\"kind\":\"%s\",\"ids\":%llu,\"build_s\":%.2f,"
               "\"rss_table\":%llu,\"peak_rss\":%llu,", i ? "," : "",
               r->kind, (unsigned long long)r->ids, r->build_s,
               (unsigned long long)r->rss_table,
               (unsigned long long)r->peak_rss);
        json_ckpt("first", &r->c1);
        printf(",");
        json_ckpt("second", &r->c2);
        if (r->have_c3) {
            printf(",");
            json_ckpt("new_ids", &r->c3);
        }
        printf(",\"second_over_first_time\":%.4f,"
               "\"second_over_first_bytes\":%.4f,\"restore_s\":%.3f,"
               "\"restore_bytes\":%llu,\"disk_bytes\":%llu,"
               "\"digest_equal\":%s}",
               r->c2.seconds / r->c1.seconds,
               (double)r->c2.bytes_written / r->c1.bytes_written,
               r->restore_s, (unsigned long long)r->restore_bytes,
               (unsigned long long)r->disk_bytes,
               r->digest_ok ? "true" : "false");
    }
    printf("]}\n");
    for (int i = 0; i < nres; i++) {
        if (!res[i].digest_ok)
            return 1;
    }
    return 0;
}
