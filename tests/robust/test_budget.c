/* The memory budget (budget.h) and the tables' growth charges: full row
 * blocks, full row maps and cqr known-ID maps are charged before they are
 * allocated, pushes past the limit get CQR_ELIMIT, phase commits and
 * attaching an existing table re-charge, destroy refunds, and concurrent
 * pushes never take the budget past its limit. */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/budget.h"
#include "engine/err.h"
#include "engine/table.h"
#include "check_main.h"

/* Rows of a full table's first block (table_impl.h, CQR_FULL_FIRST). */
#define CQR_TEST_FIRST 64u

static cqr_table_t *make(cqr_kind_t kind, uint32_t dim, uint32_t rows)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    if (kind != CQR_KIND_FULL)
        cfg.rows = rows;
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 0.1f;
    cfg.seed = 7;
    cfg.cluster_iters = 3;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

/* Pushes n new IDs starting at `first` (gradients 1/64); returns rc. */
static int push_new(cqr_table_t *t, uint64_t first, size_t n, uint32_t dim)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    float *g = malloc(n * dim * sizeof *g);
    ck_assert(ids && g);
    for (size_t i = 0; i < n; i++)
        ids[i] = first + i;
    for (size_t i = 0; i < n * dim; i++)
        g[i] = 1.0f / 64;
    int rc = cqr_table_push(t, ids, g, n);
    free(ids);
    free(g);
    return rc;
}

START_TEST(test_primitives)
{
    cqr_budget_t b;
    cqr_budget_init(&b, 100);
    ck_assert_int_eq(cqr_budget_charge(&b, 60), 0);
    ck_assert_int_eq(cqr_budget_charge(&b, 41), CQR_ELIMIT);
    ck_assert_uint_eq(cqr_budget_used(&b), 60);
    ck_assert_int_eq(cqr_budget_charge(&b, 40), 0);
    ck_assert_uint_eq(cqr_budget_left(&b), 0);
    ck_assert_int_eq(cqr_budget_charge(&b, 1), CQR_ELIMIT);
    /* A huge request cannot wrap around. */
    cqr_budget_refund(&b, 100);
    ck_assert_int_eq(cqr_budget_charge(&b, UINT64_MAX), CQR_ELIMIT);
    ck_assert_int_eq(cqr_budget_charge(&b, 0), 0);
    cqr_budget_force(&b, 150);
    ck_assert_uint_eq(cqr_budget_used(&b), 150);
    ck_assert_uint_eq(cqr_budget_left(&b), 0);
    ck_assert_int_eq(cqr_budget_charge(&b, 1), CQR_ELIMIT);
    cqr_budget_refund(&b, 150);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
}
END_TEST

/* A full table grows one 65536-row block at a time; the budget admits
 * two blocks and their row map, and the push that needs a third block
 * is refused before anything is allocated. */
START_TEST(test_full_table_bounded)
{
    const uint32_t dim = 8;
    /* SGD: 8 floats + seqlock + change mark = 40 bytes a row. */
    const uint64_t block = 65536ull * (dim * 4 + 4 + 4);
    cqr_budget_t b;
    cqr_budget_init(&b, 2 * block + (4u << 20));
    cqr_table_t *t = make(CQR_KIND_FULL, dim, 0);
    cqr_table_set_budget(t, &b);
    ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));

    uint64_t next = 1;
    int rc = 0;
    int pushes = 0;
    while (rc == 0 && pushes < 1000) {
        rc = push_new(t, next, 10000, dim);
        if (rc == 0)
            next += 10000;
        pushes++;
        ck_assert_uint_le(cqr_budget_used(&b), b.max);
        ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));
    }
    ck_assert_int_eq(rc, CQR_ELIMIT);
    /* The refusal knows what it needed (the third block, or the row
     * map's growth), for LIMIT_EXCEEDED's message. */
    ck_assert_uint_gt(cqr_table_refused_bytes(), 0);
    ck_assert_uint_le(cqr_table_refused_bytes(), block + (8u << 20));
    /* Two blocks were admitted, a third was not. */
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_ge(st.known_ids, 65536);
    ck_assert_uint_le(st.known_ids, 2 * 65536);
    ck_assert_uint_le(cqr_table_grown_bytes(t), b.max);

    /* Known IDs still train; lookups of new IDs still answer. */
    ck_assert_int_eq(push_new(t, 1, 100, dim), 0);
    float out[8];
    uint64_t fresh = UINT64_C(1) << 60;
    ck_assert_int_eq(cqr_table_lookup(t, &fresh, 1, out), 0);

    cqr_table_destroy(t);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
}
END_TEST

/* Issue 14, item 7: a full table's first block starts small and
 * doubles, so a wide table takes its first IDs under a budget far below
 * a 65536-row block, is charged what it allocated, and keeps every row's
 * values as block 0 is reallocated on its way to a whole block and the
 * table goes on into block 1. */
START_TEST(test_full_first_block_small)
{
    const uint32_t dim = 4096;
    /* SGD: 4096 floats and a change mark a row: 16 KiB; 65536 rows would
     * be 1 GiB. */
    const uint64_t row = dim * 4 + 4;
    cqr_budget_t b;
    cqr_budget_init(&b, 8u << 20);
    cqr_table_t *t = make(CQR_KIND_FULL, dim, 0);
    cqr_table_set_budget(t, &b);
    ck_assert_int_eq(push_new(t, 1, 1, dim), 0);
    ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));
    ck_assert_uint_ge(cqr_table_grown_bytes(t), CQR_TEST_FIRST * row);
    ck_assert_uint_lt(cqr_table_grown_bytes(t), CQR_TEST_FIRST * row +
                                                    (64u << 10));
    cqr_table_destroy(t);

    /* Narrow rows through every size of block 0 and into block 1. */
    const uint32_t d2 = 4;
    t = make(CQR_KIND_FULL, d2, 0);
    cqr_budget_init(&b, 64u << 20);
    cqr_table_set_budget(t, &b);
    ck_assert_int_eq(push_new(t, 1, 50, d2), 0);
    uint64_t ids[50];
    float before[50 * 4], after[50 * 4];
    for (int i = 0; i < 50; i++)
        ids[i] = (uint64_t)i + 1;
    ck_assert_int_eq(cqr_table_lookup(t, ids, 50, before), 0);
    for (uint64_t first = 51; first < 70000; first += 997) {
        ck_assert_int_eq(push_new(t, first, 997, d2), 0);
        ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));
        ck_assert_int_eq(cqr_table_lookup(t, ids, 50, after), 0);
        ck_assert_mem_eq(before, after, sizeof before);
    }
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_gt(st.known_ids, 65536);
    /* Two whole blocks (SGD, dim 4: 20 bytes a row) and the map. */
    ck_assert_uint_le(cqr_table_grown_bytes(t),
                      2ull * 65536 * (d2 * 4 + 4) + (8u << 20));
    cqr_table_destroy(t);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
}
END_TEST

/* cqr tables grow their known-ID map; a phase commit swaps in a map of
 * another size and re-charges. */
START_TEST(test_cqr_map_bounded)
{
    const uint32_t dim = 8;
    cqr_budget_t b;
    cqr_budget_init(&b, 1u << 20);
    cqr_table_t *t = make(CQR_KIND_CQR, dim, 16);
    cqr_table_set_budget(t, &b);
    uint64_t next = 1;
    int rc = 0;
    for (int i = 0; rc == 0 && i < 1000; i++) {
        rc = push_new(t, next, 4096, dim);
        if (rc == 0)
            next += 4096;
        ck_assert_uint_le(cqr_budget_used(&b), b.max);
        ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));
    }
    ck_assert_int_eq(rc, CQR_ELIMIT);
    ck_assert_uint_gt(next, 4096);

    cqr_phase_result_t res;
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, &res), 0);
    ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));

    cqr_table_destroy(t);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
}
END_TEST

/* A table that grew before it had a budget (a restored one) is charged in
 * full when attached, even past the limit; growth is then refused until
 * memory is given back; detaching refunds. */
START_TEST(test_attach_existing)
{
    const uint32_t dim = 4;
    cqr_table_t *t = make(CQR_KIND_FULL, dim, 0);
    ck_assert_int_eq(push_new(t, 1, 1000, dim), 0);
    uint64_t grown = cqr_table_grown_bytes(t);
    /* 1000 rows take a first block of 1024 rows (SGD: 4 floats and a
     * change mark a row), not a whole 65536-row block, and the map. */
    ck_assert_uint_gt(grown, 1024ull * (dim * 4 + 4));
    ck_assert_uint_lt(grown, 65536ull * (dim * 4 + 4));

    cqr_budget_t b;
    cqr_budget_init(&b, grown / 2);
    cqr_table_set_budget(t, &b);
    ck_assert_uint_eq(cqr_budget_used(&b), grown);
    /* Within the existing block: no growth needed until the map grows. */
    ck_assert_int_eq(push_new(t, 1, 1000, dim), 0);
    ck_assert_int_eq(push_new(t, 1000000, 200000, dim), CQR_ELIMIT);
    ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t));

    cqr_table_set_budget(t, NULL);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
    /* Without a budget, growth is unbounded again. */
    ck_assert_int_eq(push_new(t, 1000000, 200000, dim), 0);
    cqr_table_destroy(t);
}
END_TEST

/* Hash and ce tables never grow: their pushes never touch the budget. */
START_TEST(test_fixed_kinds_free)
{
    cqr_budget_t b;
    cqr_budget_init(&b, 1u << 20);
    for (int k = CQR_KIND_HASH; k <= CQR_KIND_CE; k++) {
        cqr_table_t *t = make((cqr_kind_t)k, 8, 64);
        cqr_table_set_budget(t, &b);
        ck_assert_int_eq(push_new(t, 1, 50000, 8), 0);
        ck_assert_uint_eq(cqr_budget_used(&b), 0);
        cqr_table_destroy(t);
    }
}
END_TEST

/* Threads pushing new IDs into two tables sharing one budget: the limit
 * holds, the charge equals the tables' growth, destroy refunds it all. */
typedef struct pusher {
    cqr_table_t *t;
    uint64_t first;
    int limited; /* saw CQR_ELIMIT */
    int other;   /* saw another error */
} pusher_t;

static void *pusher_main(void *arg)
{
    pusher_t *p = arg;
    for (int i = 0; i < 60; i++) {
        int rc = push_new(p->t, p->first + (uint64_t)i * 5000, 5000, 8);
        if (rc == CQR_ELIMIT)
            p->limited = 1;
        else if (rc != 0)
            p->other = 1;
    }
    return NULL;
}

START_TEST(test_concurrent_limit)
{
    cqr_budget_t b;
    cqr_budget_init(&b, 12u << 20);
    cqr_table_t *t[2] = {make(CQR_KIND_FULL, 8, 0),
                         make(CQR_KIND_CQR, 8, 16)};
    cqr_table_set_budget(t[0], &b);
    cqr_table_set_budget(t[1], &b);
    pusher_t p[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        p[i] = (pusher_t){t[i % 2], (uint64_t)(i + 1) << 40, 0, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, pusher_main, &p[i]),
                         0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    int limited = 0;
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(p[i].other, 0);
        limited |= p[i].limited;
    }
    ck_assert_int_eq(limited, 1);
    ck_assert_uint_le(cqr_budget_used(&b), b.max);
    ck_assert_uint_eq(cqr_budget_used(&b), cqr_table_grown_bytes(t[0]) +
                                               cqr_table_grown_bytes(t[1]));
    cqr_table_destroy(t[0]);
    cqr_table_destroy(t[1]);
    ck_assert_uint_eq(cqr_budget_used(&b), 0);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("budget");
    TCase *tc = tcase_create("budget");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_primitives);
    tcase_add_test(tc, test_full_table_bounded);
    tcase_add_test(tc, test_cqr_map_bounded);
    tcase_add_test(tc, test_attach_existing);
    tcase_add_test(tc, test_full_first_block_small);
    tcase_add_test(tc, test_fixed_kinds_free);
    tcase_add_test(tc, test_concurrent_limit);
    suite_add_tcase(s, tc);
    return s;
}
