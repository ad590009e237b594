/* Helper pool (par.h) and tables that split their calls over it: every
 * part runs exactly once, pools are shared by concurrent callers, and a
 * table with helpers gives bit-identical lookups, digests and phases to
 * the same table without. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/kmeans.h"
#include "engine/par.h"
#include "engine/table.h"
#include "check_main.h"

typedef struct count_job {
    unsigned parts;
    unsigned *hits;        /* parts counters */
    unsigned long spin;    /* work per part, so helpers get some */
} count_job_t;

static void count_part(void *arg, unsigned i)
{
    count_job_t *j = arg;
    ck_assert_uint_lt(i, j->parts);
    unsigned long x = 0;
    for (unsigned long k = 0; k < j->spin; k++)
        __atomic_store_n(&x, x + k, __ATOMIC_RELAXED); /* not optimised out */
    ck_assert_uint_eq(x, j->spin * (j->spin - (j->spin > 0)) / 2);
    __atomic_fetch_add(&j->hits[i], 1, __ATOMIC_RELAXED);
}

static void run_counted(cqr_par_t *p, unsigned parts, unsigned long spin)
{
    unsigned *hits = calloc(parts ? parts : 1, sizeof *hits);
    ck_assert_ptr_nonnull(hits);
    count_job_t j = {parts, hits, spin};
    cqr_par_run(p, parts, count_part, &j);
    for (unsigned i = 0; i < parts; i++)
        ck_assert_uint_eq(hits[i], 1);
    free(hits);
}

START_TEST(test_every_part_once)
{
    for (unsigned helpers = 0; helpers <= 3; helpers++) {
        cqr_par_t *p = NULL;
        ck_assert_int_eq(cqr_par_create(helpers, &p), 0);
        ck_assert_uint_eq(cqr_par_helpers(p), helpers);
        for (unsigned parts = 0; parts <= 40; parts++)
            run_counted(p, parts, parts % 3 ? 2000 : 0);
        cqr_par_destroy(p);
    }
    /* A NULL pool runs inline. */
    run_counted(NULL, 7, 10);
    ck_assert_uint_eq(cqr_par_helpers(NULL), 0);
    cqr_par_destroy(NULL);
}
END_TEST

static void *caller_main(void *arg)
{
    cqr_par_t *p = arg;
    for (unsigned r = 0; r < 300; r++)
        run_counted(p, 1 + r % 17, 500);
    return NULL;
}

/* Several callers (I/O threads) share one pool at once. */
START_TEST(test_shared_by_callers)
{
    cqr_par_t *p = NULL;
    ck_assert_int_eq(cqr_par_create(2, &p), 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, caller_main, p), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cqr_par_destroy(p);
}
END_TEST

static cqr_table_t *make(cqr_kind_t kind, cqr_optim_kind_t opt,
                         cqr_par_t *par)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, 32);
    if (kind == CQR_KIND_CE || kind == CQR_KIND_CQR)
        cfg.chunks = 4;
    if (kind != CQR_KIND_FULL)
        cfg.rows = 256;
    cfg.seed = 5;
    cfg.optim.kind = opt;
    cfg.optim.lr = 0.05f;
    cfg.cluster_iters = 4;
    cfg.cluster_sample = 8;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    cqr_table_set_par(t, par);
    return t;
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
}

/* Batches big enough to be split (>= 512 IDs), with repeated IDs so
 * that rows sum several gradients, and a few unknown IDs per lookup. */
enum { N = 3000, DIM = 32, VOCAB = 5000 };

static void fill(cqr_rng_t *r, uint64_t *ids, float *g, size_t n)
{
    for (size_t j = 0; j < n; j++)
        ids[j] = 1 + cqr_rng_next(r) % VOCAB;
    for (size_t j = 0; j < n * DIM; j++)
        g[j] = cqr_rng_sym(r, 1.0f);
}

static void check_same(cqr_table_t *a, cqr_table_t *b, uint64_t seed)
{
    static uint64_t ids[N];
    static float oa[N * DIM], ob[N * DIM];
    cqr_rng_t r;
    cqr_rng_seed(&r, seed);
    for (size_t j = 0; j < N; j++)
        ids[j] = 1 + cqr_rng_next(&r) % (VOCAB + 200);
    ck_assert_int_eq(cqr_table_lookup(a, ids, N, oa), 0);
    ck_assert_int_eq(cqr_table_lookup(b, ids, N, ob), 0);
    ck_assert_int_eq(memcmp(oa, ob, sizeof oa), 0);
    ck_assert_uint_eq(digest(a), digest(b));
}

START_TEST(test_tables_bit_identical)
{
    static const cqr_kind_t kinds[] = {CQR_KIND_FULL, CQR_KIND_HASH,
                                       CQR_KIND_CE, CQR_KIND_CQR};
    static const cqr_optim_kind_t opts[] = {CQR_OPT_SGD, CQR_OPT_ADAGRAD,
                                            CQR_OPT_ADAM};
    cqr_par_t *par = NULL;
    ck_assert_int_eq(cqr_par_create(3, &par), 0);
    static uint64_t ids[N];
    static float g[N * DIM];
    for (size_t ki = 0; ki < 4; ki++) {
        for (size_t oi = 0; oi < 3; oi++) {
            cqr_table_t *a = make(kinds[ki], opts[oi], NULL);
            cqr_table_t *b = make(kinds[ki], opts[oi], par);
            cqr_rng_t r;
            cqr_rng_seed(&r, 100 + ki * 3 + oi);
            for (int step = 0; step < 6; step++) {
                /* 600 to 3,000 IDs: split into 3 to 12 parts. */
                size_t n = 600 + (size_t)step * 480;
                fill(&r, ids, g, n);
                ck_assert_int_eq(cqr_table_push(a, ids, g, n), 0);
                ck_assert_int_eq(cqr_table_push(b, ids, g, n), 0);
                if (step == 3 && kinds[ki] == CQR_KIND_CQR) {
                    /* The phase's replay steps rows through the pool. */
                    ck_assert_int_eq(cqr_table_cluster(a, NULL, NULL, NULL), 0);
                    ck_assert_int_eq(cqr_table_cluster(b, NULL, NULL, NULL), 0);
                }
                check_same(a, b, 7 + step);
            }
            cqr_table_destroy(a);
            cqr_table_destroy(b);
        }
    }
    cqr_par_destroy(par);
}
END_TEST

typedef struct pusher {
    cqr_table_t *t;
    uint64_t seed;
} pusher_t;

static void *pusher_main(void *arg)
{
    pusher_t *p = arg;
    uint64_t *ids = malloc(N * sizeof *ids);
    float *g = malloc((size_t)N * DIM * sizeof *g);
    float *out = malloc((size_t)N * DIM * sizeof *out);
    cqr_rng_t r;
    cqr_rng_seed(&r, p->seed);
    for (int i = 0; i < 20; i++) {
        fill(&r, ids, g, 1024);
        ck_assert_int_eq(cqr_table_push(p->t, ids, g, 1024), 0);
        ck_assert_int_eq(cqr_table_lookup(p->t, ids, 1024, out), 0);
    }
    free(ids);
    free(g);
    free(out);
    return NULL;
}

/* Concurrent pushers and lookups through one pool (run under TSan). */
START_TEST(test_concurrent_callers)
{
    cqr_par_t *par = NULL;
    ck_assert_int_eq(cqr_par_create(2, &par), 0);
    cqr_table_t *tf = make(CQR_KIND_FULL, CQR_OPT_ADAM, par);
    cqr_table_t *tc = make(CQR_KIND_CQR, CQR_OPT_ADAM, par);
    pthread_t th[4];
    pusher_t ps[4];
    for (int i = 0; i < 4; i++) {
        ps[i] = (pusher_t){i % 2 ? tf : tc, 900 + (uint64_t)i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, pusher_main, &ps[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cqr_table_stats_t st;
    cqr_table_stats(tc, &st);
    ck_assert_uint_eq(st.pushes, 2 * 20 * 1024);
    cqr_table_destroy(tf);
    cqr_table_destroy(tc);
    cqr_par_destroy(par);
}
END_TEST

Suite *cqr_test_suite(void)
{
    cqr_blas_init();
    Suite *s = suite_create("par");
    TCase *tc = tcase_create("par");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_every_part_once);
    tcase_add_test(tc, test_shared_by_callers);
    tcase_add_test(tc, test_tables_bit_identical);
    tcase_add_test(tc, test_concurrent_callers);
    suite_add_tcase(s, tc);
    return s;
}
