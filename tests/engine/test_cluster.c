/* Cluster phases of the engine (cluster.c): early stopping of their
 * k-means and cancellation. The phase's other contracts (replay, new IDs,
 * abort, determinism) are in test_table.c. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "check_main.h"

static cqr_table_t *make(uint32_t rows, float tol, uint32_t threads)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, 8);
    cfg.chunks = 2;
    cfg.rows = rows;
    cfg.seed = 5;
    cfg.optim.kind = CQR_OPT_ADAM;
    cfg.optim.lr = 0.01f;
    cfg.cluster_tol = tol;
    cfg.cluster_threads = threads;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
}

/* `steps` pushes of the IDs with gradients drawn from `seed`. */
static void train(cqr_table_t *t, const uint64_t *ids, size_t n, int steps,
                  uint64_t seed)
{
    float *g = malloc(n * 8 * sizeof(float));
    ck_assert_ptr_nonnull(g);
    cqr_rng_t r;
    cqr_rng_seed(&r, seed);
    for (int s = 0; s < steps; s++) {
        for (size_t j = 0; j < n * 8; j++)
            g[j] = (float)(cqr_rng_double(&r) - 0.5);
        ck_assert_int_eq(cqr_table_push(t, ids, g, n), 0);
    }
    free(g);
}

static uint64_t *make_ids(size_t n)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    for (size_t j = 0; j < n; j++)
        ids[j] = 0x9e3779b97f4a7c15ULL * (j + 1);
    return ids;
}

/* A phase whose k-means has fewer centroids than distinct vectors (k = 4
 * on 2 codebook rows per chunk, so the IDs' vectors form at most
 * 4 x 4 distinct points) converges long before the cap; tolerance 0
 * runs every iteration. */
START_TEST(test_phase_early_stop)
{
    const size_t n = 500;
    uint64_t *ids = make_ids(n);
    cqr_phase_result_t res;

    cqr_table_t *t = make(8, 1e-3f, 1);
    train(t, ids, n, 3, 1);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, &res), 0);
    ck_assert_uint_ge(res.kmeans_iters_max, 1);
    ck_assert_uint_lt(res.kmeans_iters_max, 25);
    ck_assert_uint_le(res.kmeans_iters_sum, 2 * res.kmeans_iters_max);
    cqr_table_destroy(t);

    t = make(8, 0.0f, 1);
    train(t, ids, n, 3, 1);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, &res), 0);
    ck_assert_uint_eq(res.kmeans_iters_max, 25);
    ck_assert_uint_eq(res.kmeans_iters_sum, 2 * 25);
    cqr_table_destroy(t);
    free(ids);
}
END_TEST

/* The tolerance is part of the config: validated and in the digest. */
START_TEST(test_tol_config)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, 8);
    ck_assert(cfg.cluster_tol == CQR_DEFAULT_CLUSTER_TOL);
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), 0);
    cfg.cluster_tol = 0.0f;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), 0);
    cfg.cluster_tol = 1.0f;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cfg.cluster_tol = -0.5f;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cqr_table_t *a = make(8, 1e-3f, 1), *b = make(8, 1e-2f, 1);
    ck_assert_uint_ne(digest(a), digest(b));
    cqr_table_destroy(a);
    cqr_table_destroy(b);
}
END_TEST

/* A cancelled phase leaves the table as a twin that never had the phase
 * but got the same pushes: cancelled before run, after run (commit
 * refuses), and from within run (the progress callback raises the flag
 * once k-means reports). The next phase is the table's first. */
typedef struct cancel_at {
    cqr_phase_t *ph;   /* the phase to cancel */
    int calls;         /* progress reports seen */
} cancel_at_t;

static void cancel_on_kmeans(void *ud, const cqr_progress_t *p)
{
    cancel_at_t *c = ud;
    if (strcmp(p->stage, "kmeans") == 0 && c->calls++ == 0)
        cqr_phase_cancel(c->ph);
}

START_TEST(test_phase_cancel)
{
    const size_t n = 700;
    uint64_t *ids = make_ids(n);
    cqr_table_t *a = make(32, 1e-3f, 2), *b = make(32, 1e-3f, 2);
    train(a, ids, n, 4, 1);
    train(b, ids, n, 4, 1);
    ck_assert_uint_eq(digest(a), digest(b));

    for (int when = 0; when < 3; when++) {
        cqr_phase_t *ph;
        ck_assert_int_eq(cqr_phase_begin(a, &ph), 0);
        train(a, ids, n / 2, 2, 10 + when); /* logged and applied live */
        cancel_at_t at = {.ph = ph};
        if (when == 0) {
            cqr_phase_cancel(ph);
            ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), CQR_ECANCELED);
        } else if (when == 1) {
            ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
            cqr_phase_cancel(ph);
            ck_assert_int_eq(cqr_phase_commit(ph), CQR_ECANCELED);
        } else {
            ck_assert_int_eq(cqr_phase_run(ph, cancel_on_kmeans, &at),
                             CQR_ECANCELED);
            ck_assert_int_eq(at.calls, 1); /* stopped at once */
        }
        cqr_phase_destroy(ph);
        train(b, ids, n / 2, 2, 10 + when);
        ck_assert_uint_eq(digest(a), digest(b));
    }
    cqr_table_stats_t st;
    cqr_table_stats(a, &st);
    ck_assert_uint_eq(st.phases_done, 0);
    ck_assert_uint_eq(st.phase_running, 0);

    cqr_phase_result_t ra, rb;
    ck_assert_int_eq(cqr_table_cluster(a, NULL, NULL, &ra), 0);
    ck_assert_int_eq(cqr_table_cluster(b, NULL, NULL, &rb), 0);
    ck_assert_uint_eq(ra.phase_no, 1);
    ck_assert_uint_eq(digest(a), digest(b));
    cqr_table_destroy(a);
    cqr_table_destroy(b);
    free(ids);
}
END_TEST

/* Cancel from another thread while the phase runs (under TSan: the flag
 * is the only shared state). Whether it lands in run or before commit,
 * the phase does not commit. */
typedef struct canceller {
    cqr_phase_t *ph;
    cqr_table_t *t;
} canceller_t;

static void *cancel_main(void *arg)
{
    canceller_t *c = arg;
    uint64_t ids[16];
    float g[16 * 8];
    for (int j = 0; j < 16; j++)
        ids[j] = (uint64_t)j;
    memset(g, 0, sizeof g);
    g[0] = 0.5f;
    ck_assert_int_eq(cqr_table_push(c->t, ids, g, 16), 0);
    cqr_phase_cancel(c->ph);
    return NULL;
}

START_TEST(test_phase_cancel_thread)
{
    const size_t n = 20000;
    uint64_t *ids = make_ids(n);
    cqr_table_t *t = make(256, 0.0f, 2);
    train(t, ids, n, 2, 3);
    cqr_phase_t *ph;
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    canceller_t c = {ph, t};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, cancel_main, &c), 0);
    int rc = cqr_phase_run(ph, NULL, NULL);
    ck_assert(rc == 0 || rc == CQR_ECANCELED);
    pthread_join(th, NULL);
    if (rc == 0)
        ck_assert_int_eq(cqr_phase_commit(ph), CQR_ECANCELED);
    cqr_phase_destroy(ph);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.phases_done, 0);
    ck_assert_uint_eq(st.known_ids, n + 16); /* the canceller's push */
    cqr_table_destroy(t);
    free(ids);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("cluster");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_phase_early_stop);
    tcase_add_test(tc, test_tol_config);
    tcase_add_test(tc, test_phase_cancel);
    tcase_add_test(tc, test_phase_cancel_thread);
    suite_add_tcase(s, tc);
    return s;
}
