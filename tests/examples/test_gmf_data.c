/* test_gmf_data.c -- the trainer's data, metrics and model math, without a
 * server: the split on the real MovieLens-100k (skipped when absent), the
 * split rules on hand-made rows, AUC and log-loss on hand-made cases, the
 * GMF gradient against finite differences, and the synthetic generator. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gmf.h"
#include "metrics.h"
#include "movielens.h"
#include "check_main.h"

/* Where MovieLens-100k lives: $CQRPS_ML100K, else ../shared/data/ml-100k
 * beside the project root (DESIGN.md section 5). */
static const char *ml100k_path(void)
{
    const char *env = getenv("CQRPS_ML100K");

    return env && *env ? env : CQR_SOURCE_DIR "/../shared/data/ml-100k";
}

static int have_ml100k(void)
{
    char p[4096];
    struct stat st;

    snprintf(p, sizeof p, "%s/u.data", ml100k_path());
    return stat(p, &st) == 0;
}

/* ---- Split on the real data -------------------------------------------- */

START_TEST(split_real_counts)
{
    ml_data_t d;
    char err[256];
    double vpos = 0, tpos = 0;

    if (!have_ml100k()) {
        fprintf(stderr, "SKIP split_real_counts: no %s\n", ml100k_path());
        return;
    }
    ck_assert_int_eq(ml_load(ml100k_path(), &d, err, sizeof err), 0);
    ck_assert_uint_eq(d.nraw, 100000);
    ck_assert_uint_eq(d.nkept, 72855);
    ck_assert_uint_eq(d.nusers, 943);
    ck_assert_uint_eq(d.nitems, 1642);
    ck_assert_uint_eq(d.ntrain, 70969);
    ck_assert_uint_eq(d.nvalid, 1886);
    for (size_t j = 0; j < d.ntrain; j++)
        tpos += d.train[j].label;
    for (size_t j = 0; j < d.nvalid; j++)
        vpos += d.valid[j].label;
    /* 76.21% and 68.40% positive (reference README). */
    ck_assert_double_eq_tol(tpos / d.ntrain, 0.7621, 5e-5);
    ck_assert_double_eq_tol(vpos / d.nvalid, 0.6840, 5e-5);
    /* The constant predictor p = mean label of validation: BCE 0.6238. */
    {
        double p = vpos / d.nvalid, z = log(p / (1 - p));
        float *zs = malloc(d.nvalid * sizeof *zs);
        float *ys = malloc(d.nvalid * sizeof *ys);

        for (size_t j = 0; j < d.nvalid; j++) {
            zs[j] = (float)z;
            ys[j] = d.valid[j].label;
        }
        ck_assert_double_eq_tol(metric_logloss(zs, ys, d.nvalid), 0.6238,
                                5e-5);
        ck_assert_double_eq_tol(metric_auc(zs, ys, d.nvalid), 0.5, 1e-12);
        free(zs);
        free(ys);
    }
    ml_data_free(&d);
}
END_TEST

START_TEST(load_directory_or_file)
{
    ml_data_t a, b;
    char err[256], f[4096];

    if (!have_ml100k()) {
        fprintf(stderr, "SKIP load_directory_or_file\n");
        return;
    }
    snprintf(f, sizeof f, "%s/u.data", ml100k_path());
    ck_assert_int_eq(ml_load(ml100k_path(), &a, err, sizeof err), 0);
    ck_assert_int_eq(ml_load(f, &b, err, sizeof err), 0);
    ck_assert_uint_eq(a.ntrain, b.ntrain);
    ck_assert_mem_eq(a.train, b.train, a.ntrain * sizeof *a.train);
    ck_assert_mem_eq(a.valid, b.valid, a.nvalid * sizeof *a.valid);
    ml_data_free(&a);
    ml_data_free(&b);
}
END_TEST

START_TEST(load_missing_file)
{
    ml_data_t d;
    char err[256] = "";

    ck_assert_int_eq(ml_load("/nonexistent/ml-100k", &d, err, sizeof err),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "u.data"));
    ck_assert_ptr_null(d.train);
}
END_TEST

/* ---- Split rules on hand-made rows ------------------------------------- */

START_TEST(split_rules)
{
    /* User 50: 4 kept rows, two tied at ts 20 straddling the cut.
     * User 7: 3 rows, one rating 3 (dropped) -> 2 kept, both validation.
     * Item 999 appears only in a dropped row: not counted. */
    const ml_raw_t raw[] = {
        {50, 10, 5, 30}, /* 0 */
        {7, 11, 1, 5},   /* 1 */
        {50, 12, 4, 20}, /* 2 tie, earlier in file */
        {7, 999, 3, 1},  /* 3 dropped */
        {50, 13, 2, 10}, /* 4 */
        {50, 14, 1, 20}, /* 5 tie, later in file */
        {7, 12, 4, 6},   /* 6 */
    };
    ml_data_t d;
    char err[256];

    ck_assert_int_eq(ml_split(raw, 7, &d, err, sizeof err), 0);
    ck_assert_uint_eq(d.nraw, 7);
    ck_assert_uint_eq(d.nkept, 6);
    ck_assert_uint_eq(d.nusers, 2);
    ck_assert_uint_eq(d.nitems, 5); /* 10 11 12 13 14 */
    ck_assert_uint_eq(d.nvalid, 4);
    ck_assert_uint_eq(d.ntrain, 2);
    /* Users renumbered by rank: 7 -> 0, 50 -> 1; items 10.. -> 0... */
    /* Train: user 50's first two by (ts, file order): ts 10 (item 13),
     * then ts 20 file pos 2 (item 12). */
    ck_assert_uint_eq(d.train[0].user, 1);
    ck_assert_uint_eq(d.train[0].item, 3);
    ck_assert_float_eq(d.train[0].label, 0);
    ck_assert_uint_eq(d.train[1].user, 1);
    ck_assert_uint_eq(d.train[1].item, 2);
    ck_assert_float_eq(d.train[1].label, 1);
    /* Validation: user 7's two rows, then user 50's tie-later (item 14)
     * and ts 30 (item 10). */
    ck_assert_uint_eq(d.valid[0].user, 0);
    ck_assert_uint_eq(d.valid[0].item, 1);
    ck_assert_float_eq(d.valid[0].label, 0);
    ck_assert_uint_eq(d.valid[1].item, 2);
    ck_assert_float_eq(d.valid[1].label, 1);
    ck_assert_uint_eq(d.valid[2].user, 1);
    ck_assert_uint_eq(d.valid[2].item, 4);
    ck_assert_uint_eq(d.valid[3].item, 0);
    ck_assert_float_eq(d.valid[3].label, 1);
    ml_data_free(&d);
}
END_TEST

/* ---- Metrics ------------------------------------------------------------ */

START_TEST(auc_perfect_and_reversed)
{
    const float y[] = {0, 0, 1, 1, 0, 1};
    const float z[] = {-3, -1, 2, 5, 0.5f, 0.7f};
    float zr[6];

    ck_assert_double_eq_tol(metric_auc(z, y, 6), 1.0, 1e-12);
    for (int j = 0; j < 6; j++)
        zr[j] = -z[j];
    ck_assert_double_eq_tol(metric_auc(zr, y, 6), 0.0, 1e-12);
}
END_TEST

START_TEST(auc_all_equal_scores)
{
    const float y[] = {1, 0, 1, 1, 0};
    const float z[] = {0.3f, 0.3f, 0.3f, 0.3f, 0.3f};

    ck_assert_double_eq_tol(metric_auc(z, y, 5), 0.5, 1e-12);
}
END_TEST

START_TEST(auc_ties_counted_half)
{
    /* Pairs (pos, neg): pos scores {1, 2}, neg scores {1, 0}.
     * (1 vs 1) tie = 0.5, (1 vs 0) = 1, (2 vs 1) = 1, (2 vs 0) = 1:
     * AUC = 3.5 / 4. */
    const float y[] = {1, 1, 0, 0};
    const float z[] = {1, 2, 1, 0};

    ck_assert_double_eq_tol(metric_auc(z, y, 4), 3.5 / 4, 1e-12);
}
END_TEST

START_TEST(auc_matches_pair_count)
{
    /* Random scores with many ties against the O(n^2) definition. */
    enum { N = 300 };
    float z[N], y[N];
    ml_rng_t r;
    double num = 0, den = 0;

    ml_rng_seed(&r, 42);
    for (int j = 0; j < N; j++) {
        z[j] = (float)ml_rng_below(&r, 20);
        y[j] = (float)(ml_rng_unif(&r) < 0.4);
    }
    for (int a = 0; a < N; a++)
        for (int b = 0; b < N; b++)
            if (y[a] == 1 && y[b] == 0) {
                den += 1;
                num += z[a] > z[b] ? 1 : (z[a] == z[b] ? 0.5 : 0);
            }
    ck_assert_double_eq_tol(metric_auc(z, y, N), num / den, 1e-12);
}
END_TEST

START_TEST(auc_single_class)
{
    const float y[] = {1, 1, 1};
    const float z[] = {0.1f, 0.2f, 0.3f};

    ck_assert_double_eq_tol(metric_auc(z, y, 3), 0.5, 1e-12);
}
END_TEST

START_TEST(logloss_values)
{
    const float y[] = {1, 0};
    const float z0[] = {0, 0};
    const float zbig[] = {100, -100};
    const float zbad[] = {-100, 100};

    ck_assert_double_eq_tol(metric_logloss(z0, y, 2), log(2.0), 1e-12);
    ck_assert_double_eq_tol(metric_logloss(zbig, y, 2), 0.0, 1e-30);
    /* Exact for huge wrong logits, no clamping to log(1e-7). */
    ck_assert_double_eq_tol(metric_logloss(zbad, y, 2), 100.0, 1e-9);
}
END_TEST

/* ---- GMF gradient ------------------------------------------------------- */

START_TEST(gmf_gradient_finite_difference)
{
    /* 7 rows over 3 users and 4 items (repeats make the sums matter). */
    enum { D = 6, NU = 3, NI = 4, N = 7 };
    const uint32_t us[N] = {0, 1, 2, 0, 1, 0, 2};
    const uint32_t is[N] = {0, 1, 2, 3, 0, 0, 1};
    const float y[N] = {1, 0, 1, 0, 1, 1, 0};
    float U[NU * D], I[NI * D], gU[NU * D], gI[NI * D];
    ml_rng_t r;
    const double h = 1e-3;

    ml_rng_seed(&r, 7);
    for (int k = 0; k < NU * D; k++)
        U[k] = (float)(ml_rng_unif(&r) * 2 - 1);
    for (int k = 0; k < NI * D; k++)
        I[k] = (float)(ml_rng_unif(&r) * 2 - 1);
    gmf_batch(U, I, D, us, is, y, N, NU, NI, NULL, gU, gI);
    for (int k = 0; k < NU * D; k++) {
        float keep = U[k];
        double lp, lm;

        U[k] = keep + (float)h;
        lp = gmf_batch(U, I, D, us, is, y, N, NU, NI, NULL, NULL, NULL);
        U[k] = keep - (float)h;
        lm = gmf_batch(U, I, D, us, is, y, N, NU, NI, NULL, NULL, NULL);
        U[k] = keep;
        ck_assert_double_eq_tol(gU[k], (lp - lm) / (2 * h), 2e-5);
    }
    for (int k = 0; k < NI * D; k++) {
        float keep = I[k];
        double lp, lm;

        I[k] = keep + (float)h;
        lp = gmf_batch(U, I, D, us, is, y, N, NU, NI, NULL, NULL, NULL);
        I[k] = keep - (float)h;
        lm = gmf_batch(U, I, D, us, is, y, N, NU, NI, NULL, NULL, NULL);
        I[k] = keep;
        ck_assert_double_eq_tol(gI[k], (lp - lm) / (2 * h), 2e-5);
    }
}
END_TEST

START_TEST(gmf_logits_and_loss)
{
    const float U[2] = {1, 2}, I[2] = {3, -1};
    const uint32_t s[1] = {0};
    const float y[1] = {1};
    float z[1];
    double l = gmf_batch(U, I, 2, s, s, y, 1, 1, 1, z, NULL, NULL);

    ck_assert_float_eq(z[0], 1.0f);
    ck_assert_double_eq_tol(l, log1p(exp(-1.0)), 1e-12);
}
END_TEST

/* ---- Synthetic data ----------------------------------------------------- */

START_TEST(synthetic_deterministic)
{
    ml_synth_config_t cfg;
    ml_data_t a, b, c;
    char err[256];

    ml_synth_config_default(&cfg);
    ck_assert_int_eq(ml_synthetic(&cfg, 3, &a, err, sizeof err), 0);
    ck_assert_int_eq(ml_synthetic(&cfg, 3, &b, err, sizeof err), 0);
    ck_assert_int_eq(ml_synthetic(&cfg, 4, &c, err, sizeof err), 0);
    ck_assert_uint_eq(a.ntrain, b.ntrain);
    ck_assert_uint_eq(a.nvalid, b.nvalid);
    ck_assert_mem_eq(a.train, b.train, a.ntrain * sizeof *a.train);
    ck_assert_mem_eq(a.valid, b.valid, a.nvalid * sizeof *a.valid);
    ck_assert(a.ntrain != c.ntrain ||
              memcmp(a.train, c.train, a.ntrain * sizeof *a.train) != 0);
    ml_data_free(&a);
    ml_data_free(&b);
    ml_data_free(&c);
}
END_TEST

START_TEST(synthetic_shape)
{
    ml_synth_config_t cfg;
    ml_data_t d;
    char err[256];
    double pos = 0;

    ml_synth_config_default(&cfg);
    ck_assert_int_eq(ml_synthetic(&cfg, 1, &d, err, sizeof err), 0);
    /* MovieLens-like size: ~1000 users, most of 1700 items, ~70k train
     * rows, 2 validation rows per user. */
    ck_assert_uint_eq(d.nusers, 1000);
    ck_assert_uint_le(d.nitems, 1700);
    ck_assert_uint_ge(d.nitems, 1500);
    ck_assert_uint_eq(d.nvalid, 2000);
    ck_assert_uint_ge(d.ntrain, 60000);
    ck_assert_uint_le(d.ntrain, 85000);
    for (size_t j = 0; j < d.ntrain; j++) {
        ck_assert_uint_lt(d.train[j].user, d.nusers);
        ck_assert_uint_lt(d.train[j].item, d.nitems);
        pos += d.train[j].label;
    }
    pos /= (double)d.ntrain;
    ck_assert(pos > 0.35 && pos < 0.75);
    ml_data_free(&d);
}
END_TEST

START_TEST(shuffle_is_permutation)
{
    enum { N = 1000 };
    ml_row_t v[N];
    int seen[N] = {0};
    ml_rng_t r;

    for (int j = 0; j < N; j++)
        v[j] = (ml_row_t){(uint32_t)j, 0, 0};
    ml_rng_seed(&r, 9);
    ml_shuffle(v, N, &r);
    for (int j = 0; j < N; j++)
        seen[v[j].user]++;
    for (int j = 0; j < N; j++)
        ck_assert_int_eq(seen[j], 1);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("examples");
    TCase *t;

    t = tcase_create("split");
    tcase_add_test(t, split_real_counts);
    tcase_add_test(t, load_directory_or_file);
    tcase_add_test(t, load_missing_file);
    tcase_add_test(t, split_rules);
    suite_add_tcase(s, t);

    t = tcase_create("metrics");
    tcase_add_test(t, auc_perfect_and_reversed);
    tcase_add_test(t, auc_all_equal_scores);
    tcase_add_test(t, auc_ties_counted_half);
    tcase_add_test(t, auc_matches_pair_count);
    tcase_add_test(t, auc_single_class);
    tcase_add_test(t, logloss_values);
    suite_add_tcase(s, t);

    t = tcase_create("gmf");
    tcase_add_test(t, gmf_gradient_finite_difference);
    tcase_add_test(t, gmf_logits_and_loss);
    suite_add_tcase(s, t);

    t = tcase_create("synthetic");
    tcase_add_test(t, synthetic_deterministic);
    tcase_add_test(t, synthetic_shape);
    tcase_add_test(t, shuffle_is_permutation);
    suite_add_tcase(s, t);
    return s;
}
