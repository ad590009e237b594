/* Engine tables: exact optimizer arithmetic, aggregation, determinism,
 * pooled calls, cluster phases and their push replay. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/table.h"
#include "engine/table_impl.h"
#include "check_main.h"

static cqr_table_t *make(cqr_kind_t kind, uint32_t dim, uint32_t chunks,
                         uint32_t rows, cqr_optim_kind_t opt, float lr,
                         uint64_t seed)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    cfg.chunks = chunks;
    cfg.rows = rows;
    cfg.seed = seed;
    cfg.optim.kind = opt;
    cfg.optim.lr = lr;
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

START_TEST(test_config_check)
{
    cqr_table_config_t cfg;
    char why[128];
    cqr_table_config_default(&cfg, CQR_KIND_CQR, 32);
    ck_assert_int_eq(cfg.chunks, 4);
    ck_assert_int_eq(cqr_table_config_check(&cfg, why, sizeof why), 0);
    cfg.chunks = 5;
    ck_assert_int_eq(cqr_table_config_check(&cfg, why, sizeof why), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(why, "divisible"));
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 0);
    ck_assert_int_eq(cqr_table_config_check(&cfg, why, sizeof why), CQR_EINVAL);
    cqr_table_config_default(&cfg, CQR_KIND_HASH, 8);
    cfg.optim.lr = 0.0f;
    ck_assert_int_eq(cqr_table_config_check(&cfg, why, sizeof why), CQR_EINVAL);
    cqr_table_config_default(&cfg, CQR_KIND_CE, 8);
    cfg.optim.beta1 = 1.0f;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cqr_kind_t k;
    ck_assert_int_eq(cqr_kind_parse("cqr", &k), 0);
    ck_assert_int_eq(k, CQR_KIND_CQR);
    ck_assert_int_eq(cqr_kind_parse("nope", &k), CQR_EINVAL);
    ck_assert_str_eq(cqr_strerror(CQR_ENOTFOUND), "no such table");
    ck_assert_str_eq(cqr_errname(CQR_ENONFINITE), "NONFINITE");
}
END_TEST

/* A full table's row before any push is its deterministic initial value,
 * uniform in +-CQR_DEFAULT_INIT_SCALE; lookups do not grow the table. */
START_TEST(test_full_init_and_unknown_lookup)
{
    cqr_table_t *a = make(CQR_KIND_FULL, 16, 1, 0, CQR_OPT_SGD, 0.1f, 7);
    cqr_table_t *b = make(CQR_KIND_FULL, 16, 1, 0, CQR_OPT_SGD, 0.1f, 7);
    uint64_t ids[3] = {0, 42, UINT64_MAX};
    float x[48], y[48];
    ck_assert_int_eq(cqr_table_lookup(a, ids, 3, x), 0);
    ck_assert_int_eq(cqr_table_lookup(a, ids, 3, y), 0);
    ck_assert_mem_eq(x, y, sizeof x);
    ck_assert_int_eq(cqr_table_lookup(b, ids, 3, y), 0);
    ck_assert_mem_eq(x, y, sizeof x);
    for (int j = 0; j < 48; j++)
        ck_assert(fabsf(x[j]) <= CQR_DEFAULT_INIT_SCALE);
    ck_assert(memcmp(x, x + 16, 16 * sizeof(float)) != 0);
    cqr_table_stats_t st;
    cqr_table_stats(a, &st);
    ck_assert_uint_eq(st.known_ids, 0);
    ck_assert_uint_eq(st.param_bytes, 0);
    ck_assert_uint_eq(st.lookups, 6);
    cqr_table_destroy(a);
    cqr_table_destroy(b);
}
END_TEST

START_TEST(test_sgd_exact)
{
    cqr_table_t *t = make(CQR_KIND_FULL, 4, 1, 0, CQR_OPT_SGD, 0.5f, 1);
    uint64_t id = 99;
    float v0[4], v1[4], g[4] = {1.0f, -2.0f, 0.25f, 0.0f};
    cqr_table_lookup(t, &id, 1, v0);
    ck_assert_int_eq(cqr_table_push(t, &id, g, 1), 0);
    cqr_table_lookup(t, &id, 1, v1);
    for (int j = 0; j < 4; j++)
        ck_assert_float_eq(v1[j], v0[j] - 0.5f * g[j]);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.known_ids, 1);
    cqr_table_destroy(t);
}
END_TEST

START_TEST(test_adagrad_exact)
{
    cqr_table_t *t = make(CQR_KIND_FULL, 2, 1, 0, CQR_OPT_ADAGRAD, 0.1f, 1);
    uint64_t id = 5;
    float v0[2], v1[2], v2[2];
    float g[2] = {3.0f, 4.0f}; /* mean square 12.5 */
    cqr_table_lookup(t, &id, 1, v0);
    cqr_table_push(t, &id, g, 1);
    cqr_table_lookup(t, &id, 1, v1);
    /* acc = 12.5; step = 0.1 / (sqrt(12.5) + 1e-8) */
    for (int j = 0; j < 2; j++)
        ck_assert_float_eq_tol(v1[j], v0[j] - 0.1f * g[j] / 3.5355339f, 1e-6f);
    cqr_table_push(t, &id, g, 1);
    cqr_table_lookup(t, &id, 1, v2);
    /* acc = 25: step 0.1 / 5 */
    for (int j = 0; j < 2; j++)
        ck_assert_float_eq_tol(v2[j], v1[j] - 0.02f * g[j], 1e-6f);
    cqr_table_destroy(t);
}
END_TEST

/* Adam with a constant gradient moves a row by lr per step (bias
 * correction makes m_hat = g and v_hat = g^2 exactly); AdamW's decay
 * multiplies by (1 - lr*wd) first. */
START_TEST(test_adam_exact)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 3);
    cfg.optim.lr = 0.1f;
    cfg.optim.weight_decay = 0.5f;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    uint64_t id = 12345;
    float v[3], w[3], g[3] = {0.5f, -0.5f, 2.0f};
    cqr_table_lookup(t, &id, 1, v);
    for (int step = 0; step < 3; step++) {
        ck_assert_int_eq(cqr_table_push(t, &id, g, 1), 0);
        cqr_table_lookup(t, &id, 1, w);
        for (int j = 0; j < 3; j++) {
            float expect = v[j] * (1.0f - 0.1f * 0.5f) -
                           0.1f * (g[j] > 0 ? 1.0f : -1.0f);
            ck_assert_float_eq_tol(w[j], expect, 1e-5f);
            v[j] = w[j];
        }
    }
    /* An untouched row is not decayed (lazy). */
    uint64_t other = 777;
    float o1[3], o2[3];
    cqr_table_lookup(t, &other, 1, o1);
    cqr_table_push(t, &id, g, 1);
    cqr_table_lookup(t, &other, 1, o2);
    ck_assert_mem_eq(o1, o2, sizeof o1);
    cqr_table_destroy(t);
}
END_TEST

/* ce and cqr: a push moves both codebook rows of every chunk, so the
 * embedding moves by 2 * lr * g under SGD. */
START_TEST(test_codebook_sgd)
{
    cqr_kind_t kinds[2] = {CQR_KIND_CE, CQR_KIND_CQR};
    for (int kk = 0; kk < 2; kk++) {
        cqr_table_t *t = make(kinds[kk], 8, 4, 64, CQR_OPT_SGD, 0.25f, 3);
        uint64_t id = 1000;
        float v0[8], v1[8], g[8];
        for (int j = 0; j < 8; j++)
            g[j] = (float)(j - 3);
        cqr_table_lookup(t, &id, 1, v0);
        cqr_table_push(t, &id, g, 1);
        cqr_table_lookup(t, &id, 1, v1);
        for (int j = 0; j < 8; j++)
            ck_assert_float_eq_tol(v1[j], v0[j] - 0.5f * g[j], 1e-5f);
        cqr_table_stats_t st;
        cqr_table_stats(t, &st);
        ck_assert_uint_eq(st.known_ids, kinds[kk] == CQR_KIND_CQR ? 1 : 0);
        cqr_table_destroy(t);
    }
    /* hash: one codebook, moves by lr * g. */
    cqr_table_t *t = make(CQR_KIND_HASH, 8, 1, 64, CQR_OPT_SGD, 0.25f, 3);
    uint64_t id = 1000;
    float v0[8], v1[8], g[8] = {1, 1, 1, 1, -1, -1, -1, -1};
    cqr_table_lookup(t, &id, 1, v0);
    cqr_table_push(t, &id, g, 1);
    cqr_table_lookup(t, &id, 1, v1);
    for (int j = 0; j < 8; j++)
        ck_assert_float_eq_tol(v1[j], v0[j] - 0.25f * g[j], 1e-6f);
    cqr_table_destroy(t);
}
END_TEST

/* Gradients of the same row in one push are summed, then one step: with
 * Adam that differs from two steps, and equals one push of the sum. */
START_TEST(test_duplicates_aggregate)
{
    cqr_kind_t kinds[4] = {CQR_KIND_FULL, CQR_KIND_HASH, CQR_KIND_CE,
                           CQR_KIND_CQR};
    for (int kk = 0; kk < 4; kk++) {
        uint32_t chunks = kinds[kk] >= CQR_KIND_CE ? 2 : 1;
        uint32_t rows = kinds[kk] == CQR_KIND_FULL ? 0 : 16;
        cqr_table_t *a = make(kinds[kk], 4, chunks, rows, CQR_OPT_ADAM, 0.01f, 9);
        cqr_table_t *b = make(kinds[kk], 4, chunks, rows, CQR_OPT_ADAM, 0.01f, 9);
        cqr_table_t *c = make(kinds[kk], 4, chunks, rows, CQR_OPT_ADAM, 0.01f, 9);
        uint64_t ids2[2] = {31, 31};
        float g2[8] = {0.5f, 1, -1, 2, 0.25f, -3, 1, 0};
        float sum[4];
        for (int j = 0; j < 4; j++)
            sum[j] = g2[j] + g2[4 + j];
        ck_assert_int_eq(cqr_table_push(a, ids2, g2, 2), 0);
        ck_assert_int_eq(cqr_table_push(b, ids2, sum, 1), 0);
        cqr_table_push(c, ids2, g2, 1);
        cqr_table_push(c, ids2, g2 + 4, 1);
        ck_assert_uint_eq(digest(a), digest(b));
        ck_assert_uint_ne(digest(a), digest(c));
        cqr_table_destroy(a);
        cqr_table_destroy(b);
        cqr_table_destroy(c);
    }
}
END_TEST

START_TEST(test_nonfinite_rejected)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 4, 2, 16, CQR_OPT_SGD, 0.1f, 1);
    uint64_t d0 = digest(t);
    uint64_t ids[2] = {1, 2};
    float g[8] = {0, 0, 0, 0, 0, NAN, 0, 0};
    ck_assert_int_eq(cqr_table_push(t, ids, g, 2), CQR_ENONFINITE);
    g[5] = INFINITY;
    ck_assert_int_eq(cqr_table_push(t, ids, g, 2), CQR_ENONFINITE);
    ck_assert_uint_eq(digest(t), d0);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.known_ids, 0);
    cqr_table_destroy(t);
}
END_TEST

/* Large pushes: the gradient scan runs 16 floats at a time where the
 * CPU allows; a NaN or an Inf anywhere (first float, inside the vector
 * body, in the scalar tail, either sign) refuses the push whole. */
START_TEST(test_nonfinite_rejected_large)
{
    enum { N = 67, DIM = 12, NF = N * DIM }; /* 50 blocks of 16, 4 left */
    cqr_table_t *t = make(CQR_KIND_CQR, DIM, 2, 16, CQR_OPT_SGD, 0.1f, 1);
    uint64_t ids[N];
    for (uint64_t i = 0; i < N; i++)
        ids[i] = 100 + i;
    static float g[NF];
    for (size_t j = 0; j < NF; j++)
        g[j] = (j % 7 == 0 ? -1.0f : 1.0f) * 0.001f * (float)(j % 13);
    const uint64_t d0 = digest(t);
    const size_t pos[] = {0, 15, 16, 17, 511, NF - 17, NF - 5, NF - 4, NF - 1};
    const float bad[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (size_t a = 0; a < sizeof pos / sizeof *pos; a++)
        for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
            const float keep = g[pos[a]];
            g[pos[a]] = bad[b];
            ck_assert_int_eq(cqr_table_push(t, ids, g, N), CQR_ENONFINITE);
            g[pos[a]] = keep;
        }
    ck_assert_uint_eq(digest(t), d0);
    /* The same gradients, all finite, are taken. */
    ck_assert_int_eq(cqr_table_push(t, ids, g, N), 0);
    ck_assert_uint_ne(digest(t), d0);
    cqr_table_destroy(t);
}
END_TEST

START_TEST(test_pooled)
{
    cqr_table_t *t = make(CQR_KIND_CE, 4, 2, 32, CQR_OPT_SGD, 0.1f, 4);
    cqr_table_t *r = make(CQR_KIND_CE, 4, 2, 32, CQR_OPT_SGD, 0.1f, 4);
    uint64_t ids[5] = {10, 11, 12, 13, 14};
    uint32_t off[3] = {0, 2, 2}; /* bags {10,11}, {}, {12,13,14} */
    float rows[20], pooled[12];
    cqr_table_lookup(t, ids, 5, rows);
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 5, off, 3, CQR_POOL_MEAN,
                                             pooled), 0);
    for (int d = 0; d < 4; d++) {
        ck_assert_float_eq_tol(pooled[d], (rows[d] + rows[4 + d]) / 2, 1e-6f);
        ck_assert_float_eq(pooled[4 + d], 0.0f);
        ck_assert_float_eq_tol(pooled[8 + d],
                               (rows[8 + d] + rows[12 + d] + rows[16 + d]) / 3,
                               1e-6f);
    }
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 5, off, 3, CQR_POOL_SUM,
                                             pooled), 0);
    ck_assert_float_eq_tol(pooled[0], rows[0] + rows[4], 1e-6f);
    /* Pooled mean push = per-ID push of g_b / |bag|. */
    float bg[12] = {3, 3, 3, 3, 9, 9, 9, 9, -3, 6, 0, 3};
    ck_assert_int_eq(cqr_table_push_pooled(t, ids, 5, off, 3, CQR_POOL_MEAN,
                                           bg), 0);
    float per[20];
    for (int d = 0; d < 4; d++) {
        per[d] = per[4 + d] = bg[d] / 2;
        per[8 + d] = per[12 + d] = per[16 + d] = bg[8 + d] / 3;
    }
    cqr_table_push(r, ids, per, 5);
    ck_assert_uint_eq(digest(t), digest(r));
    uint32_t bad[2] = {1, 2};
    ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, 5, bad, 2, CQR_POOL_SUM,
                                             pooled), CQR_EINVAL);
    uint32_t dec[3] = {0, 3, 2};
    ck_assert_int_eq(cqr_table_push_pooled(t, ids, 5, dec, 3, CQR_POOL_SUM,
                                           bg), CQR_EINVAL);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.examples_pushed, 3);
    cqr_table_destroy(t);
    cqr_table_destroy(r);
}
END_TEST

/* Trains a cqr table on random targets for a few steps. */
static void train_random(cqr_table_t *t, const uint64_t *ids, size_t n,
                         uint32_t dim, int steps, uint64_t seed)
{
    float *g = malloc(n * dim * sizeof(float));
    srand((unsigned)seed);
    for (int s = 0; s < steps; s++) {
        for (size_t j = 0; j < n * dim; j++)
            g[j] = (float)rand() / (float)RAND_MAX - 0.5f;
        ck_assert_int_eq(cqr_table_push(t, ids, g, n), 0);
    }
    free(g);
}

/* After a phase: B0 holds the centroids, each known ID points at the
 * centroid nearest to its embedding before, and the mean squared change
 * of the embeddings is at most the mean squared k-means residual. */
START_TEST(test_phase_keeps_embeddings)
{
    const uint32_t dim = 8, c = 2, w = 4, k = 16;
    const size_t n = 600;
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, dim);
    cfg.chunks = c;
    cfg.rows = k;
    cfg.seed = 11;
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 0.05f;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    uint64_t *ids = malloc(n * sizeof *ids);
    for (size_t j = 0; j < n; j++)
        ids[j] = 0x1234567ULL * (j + 1);
    train_random(t, ids, n, dim, 20, 5);
    float *before = malloc(n * dim * sizeof(float));
    float *after = malloc(n * dim * sizeof(float));
    cqr_table_lookup(t, ids, n, before);

    cqr_phase_result_t res;
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, &res), 0);
    ck_assert_uint_eq(res.phase_no, 1);
    ck_assert_uint_eq(res.ids_assigned, n);
    cqr_table_lookup(t, ids, n, after);

    /* White-box: B0's chunk blocks now hold the centroids. Every ID's
     * pointer must be the centroid nearest to its embedding before. */
    for (size_t j = 0; j < n; j++) {
        const uint8_t *v = cqr_idmap_find(&t->st->ids, ids[j]);
        ck_assert_ptr_nonnull(v);
        for (uint32_t i = 0; i < c; i++) {
            const float *cent = t->st->cb[i].param;
            const float *x = before + j * dim + i * w;
            uint32_t p = cqr_ptr_get(v, t->pw, i);
            double best = 1e30, dp = 0.0;
            for (uint32_t r = 0; r < k; r++) {
                double d = 0.0;
                for (uint32_t e = 0; e < w; e++) {
                    double z = (double)x[e] - cent[r * w + e];
                    d += z * z;
                }
                if (d < best)
                    best = d;
                if (r == p)
                    dp = d;
            }
            ck_assert_msg(dp <= best + 1e-5, "id %zu chunk %u not nearest", j, i);
        }
    }
    double change = 0.0;
    for (size_t j = 0; j < n * dim; j++) {
        ck_assert(isfinite(after[j]));
        double d = (double)after[j] - before[j];
        change += d * d;
    }
    change /= (double)n;
    /* res.inertia is the mean squared distance of a chunk vector to its
     * centroid (k-means saw all n IDs, as n < k * 200); a bucket's mean
     * residual is never farther from its members than zero is. */
    double resid = res.inertia * c;
    ck_assert_msg(change <= resid * (1.0 + 1e-4) + 1e-9,
                  "change %g > residual %g", change, resid);
    ck_assert(change > 0.0);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.phases_done, 1);
    ck_assert_uint_eq(st.known_ids, n);
    free(ids);
    free(before);
    free(after);
    cqr_table_destroy(t);
}
END_TEST

/* Pushes logged during a phase are replayed after the swap: the table
 * ends exactly as if they had been pushed right after the commit. */
START_TEST(test_phase_replay_exact)
{
    const size_t n = 300;
    uint64_t ids[300];
    for (size_t j = 0; j < n; j++)
        ids[j] = 77 + 13 * j;
    cqr_table_t *a = make(CQR_KIND_CQR, 8, 2, 16, CQR_OPT_ADAM, 0.01f, 21);
    cqr_table_t *b = make(CQR_KIND_CQR, 8, 2, 16, CQR_OPT_ADAM, 0.01f, 21);
    train_random(a, ids, n, 8, 5, 1);
    train_random(b, ids, n, 8, 5, 1);
    ck_assert_uint_eq(digest(a), digest(b));

    cqr_phase_t *ph;
    ck_assert_int_eq(cqr_phase_begin(a, &ph), 0);
    cqr_phase_t *ph2;
    ck_assert_int_eq(cqr_phase_begin(a, &ph2), CQR_EBUSY);
    train_random(a, ids, n, 8, 3, 2);       /* during the phase */
    ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
    train_random(a, ids, n, 8, 2, 3);       /* after run, before commit */
    ck_assert_int_eq(cqr_phase_commit(ph), 0);
    cqr_phase_result_t res;
    cqr_phase_result(ph, &res);
    ck_assert_uint_eq(res.replayed_pushes, 5);
    cqr_phase_destroy(ph);

    ck_assert_int_eq(cqr_table_cluster(b, NULL, NULL, NULL), 0);
    train_random(b, ids, n, 8, 3, 2);
    train_random(b, ids, n, 8, 2, 3);
    ck_assert_uint_eq(digest(a), digest(b));
    cqr_table_destroy(a);
    cqr_table_destroy(b);
}
END_TEST

/* An ID first pushed during a phase becomes known in the new state. */
START_TEST(test_phase_new_ids)
{
    uint64_t ids[200];
    for (size_t j = 0; j < 200; j++)
        ids[j] = j * 1000003ULL;
    cqr_table_t *t = make(CQR_KIND_CQR, 8, 2, 16, CQR_OPT_SGD, 0.1f, 2);
    train_random(t, ids, 100, 8, 3, 1);
    cqr_phase_t *ph;
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    train_random(t, ids + 100, 100, 8, 1, 2);
    ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
    ck_assert_int_eq(cqr_phase_commit(ph), 0);
    cqr_phase_destroy(ph);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.known_ids, 200);
    cqr_table_destroy(t);
}
END_TEST

START_TEST(test_phase_unsupported_and_abort)
{
    cqr_table_t *t = make(CQR_KIND_CE, 8, 2, 16, CQR_OPT_SGD, 0.1f, 2);
    cqr_phase_t *ph;
    ck_assert_int_eq(cqr_phase_begin(t, &ph), CQR_EUNSUPPORTED);
    cqr_table_destroy(t);

    t = make(CQR_KIND_CQR, 8, 2, 16, CQR_OPT_SGD, 0.1f, 2);
    uint64_t ids[50];
    for (int j = 0; j < 50; j++)
        ids[j] = (uint64_t)j;
    train_random(t, ids, 50, 8, 2, 1);
    uint64_t d0 = digest(t);
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
    cqr_phase_destroy(ph); /* abort: live state stays */
    ck_assert_uint_eq(digest(t), d0);
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    cqr_phase_destroy(ph);
    cqr_table_destroy(t);
}
END_TEST

/* Same seed and the same calls give the same digest; another seed not. */
START_TEST(test_determinism)
{
    uint64_t ids[400];
    for (int j = 0; j < 400; j++)
        ids[j] = (uint64_t)j * 0x9e3779b97f4a7c15ULL;
    uint64_t d[3];
    for (int r = 0; r < 3; r++) {
        cqr_table_t *t = make(CQR_KIND_CQR, 16, 4, 32, CQR_OPT_ADAM, 0.01f,
                              r < 2 ? 5 : 6);
        train_random(t, ids, 400, 16, 4, 1);
        ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
        train_random(t, ids, 400, 16, 2, 2);
        ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
        d[r] = digest(t);
        cqr_table_destroy(t);
    }
    ck_assert_uint_eq(d[0], d[1]);
    ck_assert_uint_ne(d[0], d[2]);
}
END_TEST

/* Lookups and pushes from several threads while phases run: all calls
 * succeed, nothing is NaN, every pushed ID ends known. Run under TSan. */
typedef struct worker {
    cqr_table_t *t;
    int push;
    uint64_t base;
    int iters;
} worker_t;

static void *work(void *arg)
{
    worker_t *wk = arg;
    uint64_t ids[64];
    float v[64 * 8];
    for (int it = 0; it < wk->iters; it++) {
        for (int j = 0; j < 64; j++)
            ids[j] = wk->base + (uint64_t)((it * 64 + j) % 500);
        if (wk->push) {
            for (int j = 0; j < 64 * 8; j++)
                v[j] = 0.01f * (float)((j % 7) - 3);
            ck_assert_int_eq(cqr_table_push(wk->t, ids, v, 64), 0);
        } else {
            ck_assert_int_eq(cqr_table_lookup(wk->t, ids, 64, v), 0);
            for (int j = 0; j < 64 * 8; j++)
                ck_assert(isfinite(v[j]));
        }
    }
    return NULL;
}

START_TEST(test_concurrent_phase)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 8, 2, 32, CQR_OPT_ADAM, 0.01f, 8);
    pthread_t th[4];
    worker_t wk[4];
    for (int i = 0; i < 4; i++) {
        wk[i] = (worker_t){t, i < 2, (uint64_t)(i % 2) * 1000000, 300};
        pthread_create(&th[i], NULL, work, &wk[i]);
    }
    for (int p = 0; p < 3; p++) {
        int rc = cqr_table_cluster(t, NULL, NULL, NULL);
        ck_assert(rc == 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_eq(st.known_ids, 1000);
    ck_assert_uint_eq(st.phases_done, 3);
    ck_assert_uint_eq(st.pushes, 2 * 300 * 64);
    cqr_table_destroy(t);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("table");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_config_check);
    tcase_add_test(tc, test_full_init_and_unknown_lookup);
    tcase_add_test(tc, test_sgd_exact);
    tcase_add_test(tc, test_adagrad_exact);
    tcase_add_test(tc, test_adam_exact);
    tcase_add_test(tc, test_codebook_sgd);
    tcase_add_test(tc, test_duplicates_aggregate);
    tcase_add_test(tc, test_nonfinite_rejected);
    tcase_add_test(tc, test_nonfinite_rejected_large);
    tcase_add_test(tc, test_pooled);
    tcase_add_test(tc, test_phase_keeps_embeddings);
    tcase_add_test(tc, test_phase_replay_exact);
    tcase_add_test(tc, test_phase_new_ids);
    tcase_add_test(tc, test_phase_unsupported_and_abort);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_concurrent_phase);
    suite_add_tcase(s, tc);
    return s;
}
