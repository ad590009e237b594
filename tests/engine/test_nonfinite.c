/* Finite gradients that would make a table hold or serve Inf or NaN
 * (issue 14, item 5). A push whose step would make any stored value
 * (parameter or optimizer state) non-finite -- or, for the codebook
 * kinds, a parameter so large that B0 + B1 could overflow in a lookup --
 * is refused as a whole with CQR_ENONFINITE and applies nothing, with and
 * without helpers; a cluster phase that meets a non-finite value fails
 * and keeps the previous state; nothing ever looks up non-finite. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/par.h"
#include "engine/table.h"
#include "check_main.h"

static cqr_table_t *make(cqr_kind_t kind, cqr_optim_kind_t opt, float lr,
                         uint32_t dim, cqr_par_t *par)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    cfg.optim.kind = opt;
    cfg.optim.lr = lr;
    if (kind != CQR_KIND_FULL)
        cfg.rows = 64;
    cfg.cluster_sample = 8;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    if (par != NULL)
        cqr_table_set_par(t, par);
    return t;
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
}

/* Every ID of ids[0..n) looks up finite. */
static void all_finite(cqr_table_t *t, const uint64_t *ids, size_t n)
{
    uint32_t dim = cqr_table_config(t)->dim;
    float *out = malloc(n * dim * sizeof *out);
    ck_assert_int_eq(cqr_table_lookup(t, ids, n, out), 0);
    for (size_t j = 0; j < n * dim; j++)
        if (!isfinite(out[j]))
            ck_abort_msg("value %zu of the lookup is %g", j, out[j]);
    free(out);
}

static void fill(float *g, size_t n, float v)
{
    for (size_t j = 0; j < n; j++)
        g[j] = v;
}

/* The repro on a full SGD table: -3e38 twice with lr 1 is +Inf;
 * lr 1e6 with 1e33 is -Inf. The refused push applies nothing. */
START_TEST(test_full_sgd)
{
    cqr_table_t *t = make(CQR_KIND_FULL, CQR_OPT_SGD, 1.0f, 8, NULL);
    uint64_t id = 42;
    float g[8], out[8];
    fill(g, 8, -3e38f);
    ck_assert_int_eq(cqr_table_push(t, &id, g, 1), 0);
    uint64_t d = digest(t);
    ck_assert_int_eq(cqr_table_push(t, &id, g, 1), CQR_ENONFINITE);
    ck_assert_uint_eq(digest(t), d);
    ck_assert_int_eq(cqr_table_lookup(t, &id, 1, out), 0);
    ck_assert(isfinite(out[0]) && out[0] > 2e38f);
    cqr_table_destroy(t);

    t = make(CQR_KIND_FULL, CQR_OPT_SGD, 1e6f, 8, NULL);
    fill(g, 8, 1e33f);
    d = digest(t);
    ck_assert_int_eq(cqr_table_push(t, &id, g, 1), CQR_ENONFINITE);
    ck_assert_uint_eq(digest(t), d);
    all_finite(t, &id, 1);
    /* A row hit twice in one push sums to the overflow too. */
    uint64_t two[2] = {7, 7};
    float g2[16];
    fill(g2, 16, 2e32f);
    ck_assert_int_eq(cqr_table_push(t, two, g2, 2), CQR_ENONFINITE);
    ck_assert_uint_eq(digest(t), d);
    cqr_table_destroy(t);
}
END_TEST

/* The optimizer state overflows before the parameters: Adagrad's
 * accumulator (mean g^2) and Adam's second moment. */
START_TEST(test_state_overflow)
{
    const cqr_optim_kind_t opts[2] = {CQR_OPT_ADAGRAD, CQR_OPT_ADAM};
    const cqr_kind_t kinds[2] = {CQR_KIND_FULL, CQR_KIND_HASH};
    for (int o = 0; o < 2; o++)
        for (int k = 0; k < 2; k++) {
            cqr_table_t *t = make(kinds[k], opts[o], 0.01f, 8, NULL);
            uint64_t ids[3] = {1, 2, 3};
            float g[24];
            fill(g, 24, 1e-3f);
            ck_assert_int_eq(cqr_table_push(t, ids, g, 3), 0);
            uint64_t d = digest(t);
            g[20] = 1e21f; /* ID 3: g^2 = 1e42 */
            ck_assert_int_eq(cqr_table_push(t, ids, g, 3), CQR_ENONFINITE);
            ck_assert_uint_eq(digest(t), d);
            all_finite(t, ids, 3);
            g[20] = 1e-3f;
            ck_assert_int_eq(cqr_table_push(t, ids, g, 3), 0);
            cqr_table_destroy(t);
        }
}
END_TEST

/* Parts on helpers: a large push whose last ID overflows applies nothing
 * in any part (full: rows split by ranges; cqr: codebooks by chunks). */
START_TEST(test_helpers_all_or_nothing)
{
    cqr_par_t *par;
    ck_assert_int_eq(cqr_par_create(3, &par), 0);
    const cqr_kind_t kinds[2] = {CQR_KIND_FULL, CQR_KIND_CQR};
    enum { N = 6000, DIM = 16 };
    uint64_t *ids = malloc(N * sizeof *ids);
    float *g = malloc((size_t)N * DIM * sizeof *g);
    for (int k = 0; k < 2; k++) {
        cqr_table_t *t = make(kinds[k], CQR_OPT_SGD, 1.0f, DIM, par);
        for (size_t j = 0; j < N; j++)
            ids[j] = 1000 + j * 7919;
        fill(g, (size_t)N * DIM, 0.25f);
        ck_assert_int_eq(cqr_table_push(t, ids, g, N), 0);
        uint64_t d = digest(t);
        /* Once is finite (cqr: within FLT_MAX / 2), twice is not. */
        g[(size_t)(N - 1) * DIM + 3] = kinds[k] == CQR_KIND_FULL ? -2e38f
                                                                 : -1e38f;
        ck_assert_int_eq(cqr_table_push(t, ids, g, N - 1), 0);
        d = digest(t);
        ck_assert_int_eq(cqr_table_push(t, &ids[N - 1], &g[(N - 1) * DIM],
                                        1), 0);
        d = digest(t);
        /* One more push of the same overflows the last ID's row (or
         * codebook rows). */
        ck_assert_int_eq(cqr_table_push(t, ids, g, N), CQR_ENONFINITE);
        ck_assert_uint_eq(digest(t), d);
        all_finite(t, ids, N);
        cqr_table_destroy(t);
    }
    free(ids);
    free(g);
    cqr_par_destroy(par);
}
END_TEST

/* Cluster phases that meet values near the float limit fail with
 * CQR_ENONFINITE and keep the table exactly as it was; every lookup is
 * finite before and after. Each case brings a cqr table (SGD, lr 1) of
 * the IDs 1..n there its own way; test_phase_refused runs them all. */
enum { PHASE_DIM = 8 };

typedef struct phase_case {
    size_t n;       /* IDs 1..n */
    /* Pushes to t with ids[0..n) and g (n * PHASE_DIM floats). */
    void (*load)(cqr_table_t *t, const uint64_t *ids, float *g, size_t n);
    int unknown;    /* never-pushed IDs look up finite too */
    int trains;     /* a push after the failed phase applies */
} phase_case_t;

/* The cqr repro: two -3e38 pushes to one ID. Codebook values are
 * kept within FLT_MAX / 2, so that B0 + B1 cannot overflow; the second
 * push is refused. ID 5's embedding ends near 2e38: k-means' squared
 * distances are not finite, so the phase fails (it used to commit NaN
 * centroids). */
static void load_one_id(cqr_table_t *t, const uint64_t *ids, float *g,
                        size_t n)
{
    fill(g, n * PHASE_DIM, 0.01f);
    ck_assert_int_eq(cqr_table_push(t, ids, g, n), 0);
    float big[PHASE_DIM];
    fill(big, PHASE_DIM, -3e38f);
    /* The first already puts B0 and B1 rows past FLT_MAX / 2. */
    ck_assert_int_eq(cqr_table_push(t, &ids[5], big, 1), CQR_ENONFINITE);
    fill(big, PHASE_DIM, -1e38f);
    ck_assert_int_eq(cqr_table_push(t, &ids[5], big, 1), 0);
    ck_assert_int_eq(cqr_table_push(t, &ids[5], big, 1), CQR_ENONFINITE);
}

/* Every ID near the limit, so that the k-means sums overflow (squared
 * distances and means not finite in float): alternate signs, rows near
 * +-8e37, embeddings near +-1.6e38. */
static void load_every_id(cqr_table_t *t, const uint64_t *ids, float *g,
                          size_t n)
{
    for (size_t j = 0; j < n * PHASE_DIM; j++)
        g[j] = (j / PHASE_DIM) % 2 ? 8e37f : -8e37f;
    for (size_t j = 0; j < n; j++) {
        int rc = cqr_table_push(t, &ids[j], &g[j * PHASE_DIM], 1);
        ck_assert(rc == 0 || rc == CQR_ENONFINITE);
    }
}

static const phase_case_t phase_cases[] = {
    {2000, load_one_id, 1, 0},
    {600, load_every_id, 0, 1},
};

START_TEST(test_phase_refused)
{
    const phase_case_t *pc = &phase_cases[_i];
    const size_t n = pc->n;
    const uint64_t unknown[3] = {999999, 1u << 30, 77777777};
    cqr_table_t *t = make(CQR_KIND_CQR, CQR_OPT_SGD, 1.0f, PHASE_DIM, NULL);
    uint64_t *ids = malloc(n * sizeof *ids);
    float *g = malloc(n * PHASE_DIM * sizeof *g);
    for (size_t j = 0; j < n; j++)
        ids[j] = j + 1;
    pc->load(t, ids, g, n);
    all_finite(t, ids, n);
    if (pc->unknown)
        all_finite(t, unknown, 3);
    uint64_t d = digest(t);
    cqr_phase_result_t res;
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, &res), CQR_ENONFINITE);
    ck_assert_uint_eq(digest(t), d);
    all_finite(t, ids, n);
    if (pc->unknown)
        all_finite(t, unknown, 3);
    if (pc->trains) { /* the table still trains */
        fill(g, PHASE_DIM, 1.0f);
        ck_assert_int_eq(cqr_table_push(t, &ids[0], g, 1), 0);
        all_finite(t, ids, n);
    }
    cqr_table_destroy(t);
    free(ids);
    free(g);
}
END_TEST

/* A pooled lookup whose sum would overflow is refused, not served. */
START_TEST(test_pooled_lookup_overflow)
{
    cqr_table_t *t = make(CQR_KIND_FULL, CQR_OPT_SGD, 1.0f, 4, NULL);
    uint64_t ids[3] = {1, 2, 3};
    float g[12];
    fill(g, 12, -3e38f);
    ck_assert_int_eq(cqr_table_push(t, ids, g, 3), 0);
    uint32_t off = 0;
    float out[4];
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 3, &off, 1,
                                             CQR_POOL_SUM, out),
                     CQR_ENONFINITE);
    /* The mean is the sum scaled, so it overflows alike. */
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 3, &off, 1,
                                             CQR_POOL_MEAN, out),
                     CQR_ENONFINITE);
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 1, &off, 1,
                                             CQR_POOL_SUM, out), 0);
    ck_assert(isfinite(out[0]));
    cqr_table_destroy(t);
}
END_TEST

/* Phases committing while pushes run: each commit forgets the table's
 * bounds, so a push's rescan can be undone by a commit before the push
 * reserves again. Tiny gradients must never be refused for it (they
 * were, about one run of test_rpc's concurrent test in six). */
typedef struct racer {
    cqr_table_t *t;
    int stop;      /* atomic */
    int phases;
} racer_t;

static void *commit_loop(void *arg)
{
    racer_t *r = arg;
    while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
        if (cqr_table_cluster(r->t, NULL, NULL, NULL) == 0)
            r->phases++;
    }
    return NULL;
}

START_TEST(test_no_refusal_under_phases)
{
    enum { N = 16, DIM = 8, PUSHES = 200000 };
    cqr_table_t *t = make(CQR_KIND_CQR, CQR_OPT_ADAM, 0.01f, DIM, NULL);
    uint64_t ids[N];
    float g[N * DIM];
    for (size_t j = 0; j < N; j++)
        ids[j] = j * 13 + 1;
    fill(g, N * DIM, 0.001f);
    ck_assert_int_eq(cqr_table_push(t, ids, g, N), 0);
    racer_t r = {t, 0, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, commit_loop, &r), 0);
    int refused = 0;
    for (int k = 0; k < PUSHES && !refused; k++) {
        refused += cqr_table_push(t, ids, g, N) == CQR_ENONFINITE;
        /* Let the phase thread in between pushes (this machine has 2
         * cores and the race needs a commit inside a push). */
        if (k % 64 == 0)
            sched_yield();
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
    pthread_join(th, NULL);
    ck_assert_msg(refused == 0, "%d of %d pushes refused during %d phases",
                  refused, PUSHES, r.phases);
    ck_assert_int_gt(r.phases, 0);
    all_finite(t, ids, N);
    cqr_table_destroy(t);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("nonfinite");
    TCase *tc = tcase_create("nonfinite");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_full_sgd);
    tcase_add_test(tc, test_state_overflow);
    tcase_add_test(tc, test_helpers_all_or_nothing);
    tcase_add_loop_test(tc, test_phase_refused, 0,
                        (int)(sizeof phase_cases / sizeof phase_cases[0]));
    tcase_add_test(tc, test_pooled_lookup_overflow);
    tcase_add_test(tc, test_no_refusal_under_phases);
    suite_add_tcase(s, tc);
    return s;
}
