/* Multi-table calls of the engine (cqr_tables_lookup / cqr_tables_push):
 * equal to the single-table calls bit for bit (every kind, plain and
 * pooled, with and without helpers), a table in several parts, and a
 * refused push that applies nothing of any part (arguments, non-finite
 * gradients, a full phase log); the push log's reserve/publish/cancel;
 * optimizer updates. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/par.h"
#include "engine/pushlog.h"
#include "engine/table.h"
#include "engine/table_impl.h"
#include "check_main.h"

enum { NT = 4 };

static const cqr_kind_t kinds[NT] = {CQR_KIND_FULL, CQR_KIND_HASH,
                                     CQR_KIND_CE, CQR_KIND_CQR};
static const uint32_t dims[NT] = {8, 16, 4, 12};

static cqr_table_t *make(cqr_kind_t kind, uint32_t dim, cqr_par_t *par)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    cfg.seed = 11;
    cfg.rows = kind == CQR_KIND_FULL ? 0 : 64;
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

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float rndf(uint64_t *s)
{
    return (float)(rnd(s) >> 40) / (float)(1 << 24) - 0.5f;
}

/* Two parts per table: a plain one and a pooled one (sum for even
 * tables, mean for odd), over n IDs with repeats. Arrays are malloc'd
 * and freed by free_parts. */
static void make_parts(cqr_table_t **t, size_t n, uint64_t seed,
                       cqr_part_t *p)
{
    uint64_t s = seed;
    for (int k = 0; k < NT; k++) {
        uint64_t *ids = malloc(n * sizeof *ids);
        uint32_t *offs = malloc((n / 4 + 1) * sizeof *offs);
        size_t nb = n / 4 + 1;
        for (size_t j = 0; j < n; j++)
            ids[j] = rnd(&s) % (3 * n);
        offs[0] = 0;
        for (size_t b = 1; b < nb; b++)
            offs[b] = offs[b - 1] + (uint32_t)(rnd(&s) % 6);
        for (size_t b = 0; b < nb; b++)
            if (offs[b] > n)
                offs[b] = (uint32_t)n;
        float *gp = malloc(n * dims[k] * sizeof *gp);
        float *gb = malloc(nb * dims[k] * sizeof *gb);
        for (size_t j = 0; j < n * dims[k]; j++)
            gp[j] = rndf(&s);
        for (size_t j = 0; j < nb * dims[k]; j++)
            gb[j] = rndf(&s);
        p[2 * k] = (cqr_part_t){.t = t[k], .ids = ids, .n = n,
                                .out = malloc(n * dims[k] * sizeof(float)),
                                .grads = gp};
        p[2 * k + 1] = (cqr_part_t){.t = t[k], .ids = ids, .n = n,
                                    .offsets = offs, .nbags = nb,
                                    .pool = k % 2 ? CQR_POOL_MEAN
                                                  : CQR_POOL_SUM,
                                    .out = malloc(nb * dims[k] *
                                                  sizeof(float)),
                                    .grads = gb};
    }
}

static void free_parts(cqr_part_t *p)
{
    for (int k = 0; k < NT; k++) {
        free((void *)p[2 * k].ids);
        free(p[2 * k].out);
        free((void *)p[2 * k].grads);
        free((void *)p[2 * k + 1].offsets);
        free(p[2 * k + 1].out);
        free((void *)p[2 * k + 1].grads);
    }
}

/* The multi-table calls on tables a against single calls on tables b
 * (equal configs): lookups and digests stay equal over a few steps. */
static void check_equal(unsigned helpers, size_t n)
{
    cqr_par_t *par = NULL;
    ck_assert_int_eq(cqr_par_create(helpers, &par), 0);
    cqr_table_t *a[NT], *b[NT];
    for (int k = 0; k < NT; k++) {
        a[k] = make(kinds[k], dims[k], par);
        b[k] = make(kinds[k], dims[k], NULL);
    }
    for (int step = 0; step < 3; step++) {
        cqr_part_t pa[2 * NT], pb[2 * NT];
        make_parts(a, n, 77 + (uint64_t)step, pa);
        make_parts(b, n, 77 + (uint64_t)step, pb);
        size_t bad = 99;
        ck_assert_int_eq(cqr_tables_lookup(pa, 2 * NT, &bad), 0);
        for (int i = 0; i < 2 * NT; i++) {
            const cqr_part_t *q = &pb[i];
            if (q->offsets)
                ck_assert_int_eq(cqr_table_lookup_pooled(
                                     q->t, q->ids, q->n, q->offsets,
                                     q->nbags, q->pool, q->out), 0);
            else
                ck_assert_int_eq(cqr_table_lookup(q->t, q->ids, q->n,
                                                  q->out), 0);
            size_t rows = q->offsets ? q->nbags : q->n;
            ck_assert_int_eq(memcmp(pa[i].out, q->out,
                                    rows * dims[i / 2] * sizeof(float)), 0);
        }
        ck_assert_int_eq(cqr_tables_push(pa, 2 * NT, &bad), 0);
        for (int i = 0; i < 2 * NT; i++) {
            const cqr_part_t *q = &pb[i];
            if (q->offsets)
                ck_assert_int_eq(cqr_table_push_pooled(
                                     q->t, q->ids, q->n, q->offsets,
                                     q->nbags, q->pool, q->grads), 0);
            else
                ck_assert_int_eq(cqr_table_push(q->t, q->ids, q->grads,
                                                q->n), 0);
        }
        for (int k = 0; k < NT; k++)
            ck_assert_uint_eq(digest(a[k]), digest(b[k]));
        free_parts(pa);
        free_parts(pb);
    }
    for (int k = 0; k < NT; k++) {
        cqr_table_destroy(a[k]);
        cqr_table_destroy(b[k]);
    }
    cqr_par_destroy(par);
}

START_TEST(test_equal_small)
{
    check_equal(0, 40);
    check_equal(1, 40);
}
END_TEST

START_TEST(test_equal_large)
{
    check_equal(0, 3000);
    check_equal(1, 3000);
    check_equal(3, 2000);
}
END_TEST

/* A table in two parts of one push is stepped twice, as by two pushes. */
START_TEST(test_same_table_twice)
{
    cqr_table_t *a = make(CQR_KIND_CQR, 8, NULL);
    cqr_table_t *b = make(CQR_KIND_CQR, 8, NULL);
    uint64_t ids[3] = {5, 6, 5};
    float g1[24], g2[24];
    for (int j = 0; j < 24; j++) {
        g1[j] = 0.01f * (float)j;
        g2[j] = -0.02f * (float)j;
    }
    cqr_part_t p[2] = {{.t = a, .ids = ids, .n = 3, .grads = g1},
                       {.t = a, .ids = ids, .n = 3, .grads = g2}};
    ck_assert_int_eq(cqr_tables_push(p, 2, NULL), 0);
    ck_assert_int_eq(cqr_table_push(b, ids, g1, 3), 0);
    ck_assert_int_eq(cqr_table_push(b, ids, g2, 3), 0);
    ck_assert_uint_eq(digest(a), digest(b));
    cqr_table_stats_t st;
    cqr_table_stats(a, &st);
    ck_assert_uint_eq(st.pushes, 6);
    cqr_table_destroy(a);
    cqr_table_destroy(b);
}
END_TEST

/* Any bad part refuses the push whole, with that part's index. */
START_TEST(test_refused_applies_nothing)
{
    cqr_table_t *t[NT];
    for (int k = 0; k < NT; k++)
        t[k] = make(kinds[k], dims[k], NULL);
    cqr_part_t p[2 * NT];
    make_parts(t, 50, 5, p);
    uint64_t before[NT];
    for (int k = 0; k < NT; k++)
        before[k] = digest(t[k]);
    size_t bad = 0;

    float *g = (float *)p[5].grads;
    float keep = g[7];
    g[7] = NAN;
    ck_assert_int_eq(cqr_tables_push(p, 2 * NT, &bad), CQR_ENONFINITE);
    ck_assert_uint_eq(bad, 5);
    g[7] = keep;

    uint32_t *o = (uint32_t *)p[3].offsets;
    uint32_t keepo = o[0];
    o[0] = 1;
    ck_assert_int_eq(cqr_tables_push(p, 2 * NT, &bad), CQR_EINVAL);
    ck_assert_uint_eq(bad, 3);
    o[0] = keepo;

    cqr_pooling_t keepp = p[7].pool;
    p[7].pool = (cqr_pooling_t)9;
    ck_assert_int_eq(cqr_tables_push(p, 2 * NT, &bad), CQR_EINVAL);
    ck_assert_uint_eq(bad, 7);
    p[7].pool = keepp;

    for (int k = 0; k < NT; k++)
        ck_assert_uint_eq(digest(t[k]), before[k]);
    ck_assert_int_eq(cqr_tables_push(p, 2 * NT, &bad), 0);
    for (int k = 0; k < NT; k++)
        ck_assert_uint_ne(digest(t[k]), before[k]);
    free_parts(p);
    for (int k = 0; k < NT; k++)
        cqr_table_destroy(t[k]);
}
END_TEST

/* A phase's full push log refuses the part of its table: the other
 * tables' parts (before and after it) are not applied either, and
 * nothing is logged. */
START_TEST(test_full_log_applies_nothing)
{
    cqr_table_t *t[NT];
    for (int k = 0; k < NT; k++)
        t[k] = make(kinds[k], dims[k], NULL);
    cqr_part_t p[2 * NT];
    make_parts(t, 50, 9, p);
    cqr_phase_t *ph = NULL;
    ck_assert_int_eq(cqr_phase_begin(t[3], &ph), 0);
    /* Room for the plain part of t[3], not for its pooled part too. */
    cqr_pushlog_set_max(t[3]->log, 3000);
    uint64_t before[NT];
    for (int k = 0; k < NT; k++)
        before[k] = digest(t[k]);
    size_t bad = 0;
    ck_assert_int_eq(cqr_tables_push(p, 2 * NT, &bad), CQR_EBUSY);
    ck_assert_uint_eq(bad, 7);
    for (int k = 0; k < NT; k++)
        ck_assert_uint_eq(digest(t[k]), before[k]);
    /* Nothing was logged: the phase replays nothing. */
    ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
    cqr_phase_result_t res;
    cqr_phase_result(ph, &res);
    ck_assert_uint_eq(res.replayed_pushes, 0);
    cqr_phase_destroy(ph);
    free_parts(p);
    for (int k = 0; k < NT; k++)
        cqr_table_destroy(t[k]);
}
END_TEST

static int count_replay(void *ud, const uint64_t *ids, const float *grads,
                        size_t n)
{
    (void)ids;
    (void)grads;
    *(size_t *)ud += n;
    return 0;
}

START_TEST(test_pushlog_reserve)
{
    cqr_pushlog_t *log = NULL;
    ck_assert_int_eq(cqr_pushlog_create(2, &log), 0);
    uint64_t ids[4] = {1, 2, 3, 4};
    float g[8] = {0};
    cqr_pushlog_ent_t *e1, *e2, *e3;
    ck_assert_int_eq(cqr_pushlog_reserve(log, ids, g, 4, &e1), 0);
    ck_assert_int_eq(cqr_pushlog_reserve(log, ids, g, 2, &e2), 0);
    /* A replay meanwhile leaves the reservations alone. */
    size_t seen = 0;
    uint64_t np = 0;
    ck_assert_int_eq(cqr_pushlog_replay(log, count_replay, &seen, &np), 0);
    ck_assert_uint_eq(seen, 0);
    cqr_pushlog_cancel(log, e2);
    cqr_pushlog_publish(log, e1);
    ck_assert_int_eq(cqr_pushlog_replay(log, count_replay, &seen, &np), 0);
    ck_assert_uint_eq(seen, 4);
    ck_assert_uint_eq(np, 1);
    /* Reservations count against the limit. */
    cqr_pushlog_set_max(log, 200);
    ck_assert_int_eq(cqr_pushlog_reserve(log, ids, g, 4, &e1), 0);
    ck_assert_int_eq(cqr_pushlog_reserve(log, ids, g, 4, &e3), CQR_EBUSY);
    ck_assert_ptr_null(e3);
    cqr_pushlog_cancel(log, e1);
    ck_assert_int_eq(cqr_pushlog_append(log, ids, g, 4), 0);
    cqr_pushlog_destroy(log);
}
END_TEST

START_TEST(test_lookup_errors)
{
    cqr_table_t *t = make(CQR_KIND_HASH, 4, NULL);
    uint64_t ids[3] = {1, 2, 3};
    uint32_t offs[2] = {0, 5};
    float out[12];
    cqr_part_t p[2] = {{.t = t, .ids = ids, .n = 3, .out = out},
                       {.t = t, .ids = ids, .n = 3, .offsets = offs,
                        .nbags = 2, .out = out}};
    size_t bad = 0;
    ck_assert_int_eq(cqr_tables_lookup(p, 2, &bad), CQR_EINVAL);
    ck_assert_uint_eq(bad, 1);
    offs[1] = 2;
    ck_assert_int_eq(cqr_tables_lookup(p, 2, &bad), 0);
    ck_assert_int_eq(cqr_tables_lookup(NULL, 0, &bad), 0);
    ck_assert_int_eq(cqr_tables_push(NULL, 0, &bad), 0);
    cqr_table_destroy(t);
}
END_TEST

/* SGD's step uses the lr in force; kind and range are checked. */
START_TEST(test_update_optim)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 2);
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 0.5f;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    uint64_t id = 3;
    float g[2] = {1.0f, -2.0f}, w0[2], w1[2];
    ck_assert_int_eq(cqr_table_lookup(t, &id, 1, w0), 0);
    cqr_optim_config_t o;
    cqr_table_optim(t, &o);
    o.lr = 0.25f;
    char why[128];
    ck_assert_int_eq(cqr_table_update_optim(t, &o, why, sizeof why), 0);
    ck_assert_int_eq(cqr_table_push(t, &id, g, 1), 0);
    ck_assert_int_eq(cqr_table_lookup(t, &id, 1, w1), 0);
    ck_assert(w1[0] == w0[0] - 0.25f * g[0]);
    ck_assert(w1[1] == w0[1] - 0.25f * g[1]);
    uint64_t d = digest(t);
    o.lr = -1.0f;
    ck_assert_int_eq(cqr_table_update_optim(t, &o, why, sizeof why),
                     CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(why, "learning rate"));
    o.lr = 0.1f;
    o.kind = CQR_OPT_ADAM;
    ck_assert_int_eq(cqr_table_update_optim(t, &o, why, sizeof why),
                     CQR_EINVAL);
    ck_assert_uint_eq(digest(t), d);
    cqr_table_optim(t, &o);
    ck_assert(o.lr == 0.25f && o.kind == CQR_OPT_SGD);
    cqr_table_destroy(t);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("multi");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_equal_small);
    tcase_add_test(tc, test_equal_large);
    tcase_add_test(tc, test_same_table_twice);
    tcase_add_test(tc, test_refused_applies_nothing);
    tcase_add_test(tc, test_full_log_applies_nothing);
    tcase_add_test(tc, test_pushlog_reserve);
    tcase_add_test(tc, test_lookup_errors);
    tcase_add_test(tc, test_update_optim);
    suite_add_tcase(s, tc);
    return s;
}
