/* The paper's least-squares experiment: fit each table kind directly to a
 * target table with cluster structure. 4,096 IDs drawn from 32 planted
 * prototypes plus small noise, dim 16, 4 chunks; cqr and ce get 512 rows
 * per codebook, hash 1,024 rows (the same parameters). Between phases the
 * tables are trained close to convergence. cqr must improve at every
 * phase and end at least 5x below hash and ce, which cannot improve. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "check_main.h"

#define N 4096
#define DIM 16
#define PROTOS 32
#define PHASES 8

static uint64_t ids[N];
static float target[N * DIM];
static float emb[N * DIM];
static float grad[N * DIM];

static float gauss(cqr_rng_t *r)
{
    float u1 = cqr_rng_unit(r) + 1e-7f, u2 = cqr_rng_unit(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static void make_targets(void)
{
    cqr_rng_t r;
    cqr_rng_seed(&r, 2024);
    float protos[PROTOS * DIM];
    for (int j = 0; j < PROTOS * DIM; j++)
        protos[j] = gauss(&r);
    for (int i = 0; i < N; i++) {
        ids[i] = cqr_rng_next(&r);
        int p = (int)(cqr_rng_next(&r) % PROTOS);
        for (int d = 0; d < DIM; d++)
            target[i * DIM + d] = protos[p * DIM + d] + 0.1f * gauss(&r);
    }
}

/* Mean squared error per element, and the gradient of 0.5 * sum. */
static double mse(cqr_table_t *t)
{
    ck_assert_int_eq(cqr_table_lookup(t, ids, N, emb), 0);
    double s = 0.0;
    for (int j = 0; j < N * DIM; j++) {
        double e = (double)emb[j] - target[j];
        s += e * e;
        grad[j] = (float)e;
    }
    return s / (N * DIM);
}

static double fit(cqr_table_t *t, int steps)
{
    for (int s = 0; s < steps; s++) {
        mse(t);
        ck_assert_int_eq(cqr_table_push(t, ids, grad, N), 0);
    }
    return mse(t);
}

static cqr_table_t *make(cqr_kind_t kind, uint32_t rows)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, DIM);
    cfg.chunks = kind == CQR_KIND_HASH ? 1 : 4;
    cfg.rows = rows;
    cfg.seed = 99;
    cfg.optim.kind = CQR_OPT_ADAM;
    cfg.optim.lr = 0.05f;
    cfg.reset_optimizer = 1;
    cfg.cluster_threads = 2;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

#define STEPS 300

START_TEST(test_least_squares)
{
    make_targets();
    cqr_table_t *cqr = make(CQR_KIND_CQR, 512);
    cqr_table_t *ce = make(CQR_KIND_CE, 512);
    cqr_table_t *hash = make(CQR_KIND_HASH, 1024);
    double m_ce = fit(ce, STEPS * (PHASES + 1));
    double m_hash = fit(hash, STEPS * (PHASES + 1));
    double prev = fit(cqr, STEPS);
    printf("lsq: hash %.4f ce %.4f (after %d steps)\n", m_hash, m_ce,
           STEPS * (PHASES + 1));
    printf("lsq: cqr phase 0 %.4f\n", prev);
    for (int p = 1; p <= PHASES; p++) {
        cqr_phase_result_t res;
        ck_assert_int_eq(cqr_table_cluster(cqr, NULL, NULL, &res), 0);
        double after_phase = mse(cqr);
        double m = fit(cqr, STEPS);
        printf("lsq: cqr phase %d %.4f (right after the phase %.4f, "
               "inertia %.4f, %.3f s)\n", p, m, after_phase, res.inertia,
               res.seconds_total);
        ck_assert_msg(m < prev, "phase %d did not improve: %g >= %g", p, m,
                      prev);
        prev = m;
    }
    cqr_table_stats_t st;
    cqr_table_stats(cqr, &st);
    printf("lsq: cqr known ids %llu, index bytes per known id %.1f\n",
           (unsigned long long)st.known_ids, st.bytes_per_known_id);
    ck_assert_msg(prev * 5.0 <= m_hash && prev * 5.0 <= m_ce,
                  "cqr %g not 5x below hash %g and ce %g", prev, m_hash, m_ce);
    cqr_table_destroy(cqr);
    cqr_table_destroy(ce);
    cqr_table_destroy(hash);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("lsq");
    TCase *tc = tcase_create("lsq");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_least_squares);
    suite_add_tcase(s, tc);
    return s;
}
