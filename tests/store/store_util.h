/* store_util.h -- helpers of the store suites (test_store.c,
 * test_store_crash.c): temporary data dirs, tables of every kind, pushes,
 * a set of loaded tables and its digest, checkpoint and load wrappers.
 *
 * Each suite includes it once; everything is static to that suite. The
 * helpers that the crash child also runs (make, digest, push_random)
 * check with REQUIRE, which exits the child instead of asserting (set
 * g_child in the child). The including file defines _GNU_SOURCE first
 * (nftw's FTW_PHYS).
 */
#ifndef CQR_TEST_STORE_UTIL_H
#define CQR_TEST_STORE_UTIL_H

#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "store/store.h"

/* check's asserts talk to the test runner even when they pass, so the
 * crash child (not under the runner) checks with this instead. */
static int g_child;
#define REQUIRE(c)                                                           \
    do {                                                                     \
        if (g_child) {                                                       \
            if (!(c)) {                                                      \
                fprintf(stderr, "crash child: %s failed at line %d\n", #c,  \
                        __LINE__);                                           \
                _exit(3);                                                    \
            }                                                                \
        } else {                                                             \
            ck_assert(c);                                                    \
        }                                                                    \
    } while (0)

static inline int rm_cb(const char *path, const struct stat *sb,
                        int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline char *tmpdir(void)
{
    char *d = strdup("/tmp/cqr_store_test_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static inline void rmdir_all(char *d)
{
    nftw(d, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static inline cqr_store_t *open_store(const char *dir, uint32_t keep)
{
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = keep;
    cqr_store_t *s = NULL;
    char why[256];
    int rc = cqr_store_open(dir, &o, &s, why, sizeof why);
    ck_assert_msg(rc == 0, "open %s: %s", dir, why);
    return s;
}

static inline cqr_table_t *make(cqr_kind_t kind, cqr_optim_kind_t opt,
                                uint32_t dim, uint32_t rows, uint64_t seed)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    if (kind != CQR_KIND_FULL)
        cfg.rows = rows;
    cfg.seed = seed;
    cfg.optim.kind = opt;
    cfg.optim.lr = 0.02f;
    cfg.cluster_iters = 4;
    cfg.cluster_sample = 10;
    cfg.schedule_every = 5000;
    cqr_table_t *t = NULL;
    REQUIRE(cqr_table_create(&cfg, &t) == 0);
    return t;
}

static inline uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    REQUIRE(cqr_table_digest(t, &d) == 0);
    return d;
}

static inline void push_random(cqr_table_t *t, cqr_rng_t *rng, int n,
                               size_t batch, uint64_t lo, uint64_t span)
{
    uint32_t dim = cqr_table_config(t)->dim;
    uint64_t *ids = malloc(batch * sizeof *ids);
    float *g = malloc(batch * dim * sizeof *g);
    for (int k = 0; k < n; k++) {
        for (size_t j = 0; j < batch; j++)
            ids[j] = lo + cqr_rng_next(rng) % span;
        for (size_t j = 0; j < batch * dim; j++)
            g[j] = cqr_rng_sym(rng, 1.0f);
        REQUIRE(cqr_table_push(t, ids, g, batch) == 0);
    }
    free(ids);
    free(g);
}

/* A set of named tables, as a load delivers them. */
#define MAXT 8
typedef struct tset {
    size_t n;
    char *names[MAXT];
    cqr_table_t *t[MAXT];
} tset_t;

static inline int collect(void *ud, const char *name, cqr_table_t *t)
{
    tset_t *ts = ud;
    if (ts->n == MAXT) {
        cqr_table_destroy(t);
        return CQR_ELIMIT;
    }
    ts->names[ts->n] = strdup(name);
    ts->t[ts->n++] = t;
    return 0;
}

static inline cqr_table_t *tset_get(const tset_t *ts, const char *name)
{
    for (size_t i = 0; i < ts->n; i++) {
        if (strcmp(ts->names[i], name) == 0)
            return ts->t[i];
    }
    return NULL;
}

static inline void tset_free(tset_t *ts)
{
    for (size_t i = 0; i < ts->n; i++) {
        free(ts->names[i]);
        cqr_table_destroy(ts->t[i]);
    }
    memset(ts, 0, sizeof *ts);
}

/* Digest of a set: each table's digest under its name, in name order. */
static inline uint64_t tset_digest(const tset_t *ts)
{
    size_t order[MAXT];
    for (size_t i = 0; i < ts->n; i++)
        order[i] = i;
    for (size_t i = 1; i < ts->n; i++) {
        for (size_t j = i; j > 0 && strcmp(ts->names[order[j - 1]],
                                           ts->names[order[j]]) > 0; j--) {
            size_t x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    }
    uint64_t h = 0x1234;
    for (size_t i = 0; i < ts->n; i++) {
        uint64_t d = digest(ts->t[order[i]]);
        h = XXH3_64bits_withSeed(ts->names[order[i]],
                                 strlen(ts->names[order[i]]), h ^ d);
    }
    return h;
}

static inline int load(cqr_store_t *s, uint64_t gen, tset_t *ts,
                       cqr_store_load_info_t *info)
{
    memset(ts, 0, sizeof *ts);
    return cqr_store_load(s, gen, collect, ts, NULL, NULL, info);
}

static inline uint64_t checkpoint(cqr_store_t *s, cqr_table_t **t,
                                  const char **names, size_t n,
                                  cqr_store_ckpt_stats_t *st)
{
    uint64_t gen = 0;
    int rc = cqr_store_checkpoint(s, t, names, n, NULL, NULL, &gen, st);
    if (rc) {
        char why[512];
        cqr_store_error(s, why, sizeof why);
        ck_abort_msg("checkpoint: %s: %s", cqr_strerror(rc), why);
    }
    return gen;
}

#endif
