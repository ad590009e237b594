/* Admission and eviction of full tables (issue 19, table_evict.c): the
 * fallback rows of IDs not admitted yet, max_ids (sampled LRU) and
 * ttl_seconds with the table clock the test sets; exact counts, lookups
 * of evicted IDs, digests across export and import, bounded memory under
 * churn, and concurrent use. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "admit_util.h"
#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "engine/table_impl.h"
#include "check_main.h"

enum { DIM = ADMIT_DIM };

static cqr_table_t *make(uint32_t admit, uint64_t max_ids, uint32_t ttl)
{
    return admit_make(CQR_KIND_FULL, 11, admit, 0, max_ids, ttl);
}

static void lookup(cqr_table_t *t, uint64_t id, float *out)
{
    ck_assert_int_eq(cqr_table_lookup(t, &id, 1, out), 0);
}

/* Whether the table holds a row for id (single-threaded tests). */
static int has_row(cqr_table_t *t, uint64_t id)
{
    return cqr_full_find(t, id) != NULL;
}

static void assert_row_eq(const float *a, const float *b)
{
    for (int d = 0; d < DIM; d++)
        ck_assert_float_eq(a[d], b[d]);
}

/* admit_after 3: an ID shares its fallback row (which its pushes train)
 * until its third push, which gives it a row starting from that fallback
 * row; IDs on other fallback rows are untouched. */
START_TEST(test_full_admit_counts)
{
    cqr_table_t *t = make(3, 0, 0);
    const uint64_t x = 42;
    uint64_t y = 43;
    while (cqr_full_fb_row(t, y) == cqr_full_fb_row(t, x))
        y++;
    float vx[DIM], vy[DIM], v[DIM], fb[DIM];
    lookup(t, x, vx);
    lookup(t, y, vy);
    float init[DIM];
    cqr_full_init_row(t, x, init);
    ck_assert(memcmp(vx, init, sizeof vx) != 0); /* the fallback row's */
    for (int k = 1; k <= 2; k++) {
        admit_push_one(t, x);
        lookup(t, x, v);
        for (int d = 0; d < DIM; d++)
            ck_assert_float_eq_tol(v[d], vx[d] - 0.05f * k, 1e-6f);
        ck_assert_uint_eq(admit_stats(t).known_ids, 0);
        ck_assert_uint_eq(admit_stats(t).ids_admitted, 0);
    }
    memcpy(fb, v, sizeof fb);
    lookup(t, y, v);
    assert_row_eq(v, vy);
    admit_push_one(t, x); /* the third: admitted, then stepped */
    ck_assert_uint_eq(admit_stats(t).known_ids, 1);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 1);
    lookup(t, x, v);
    for (int d = 0; d < DIM; d++)
        ck_assert_float_eq_tol(v[d], fb[d] - 0.05f, 1e-6f);
    /* The fallback row stays where x's pushes left it. */
    uint64_t z = x + 1000;
    while (cqr_full_fb_row(t, z) != cqr_full_fb_row(t, x))
        z++;
    lookup(t, z, v);
    assert_row_eq(v, fb);
    cqr_table_stats_t s = admit_stats(t);
    ck_assert_uint_gt(s.sketch_bytes, 0);
    ck_assert_uint_ge(s.param_bytes,
                      (uint64_t)CQR_FALLBACK_ROWS * DIM * sizeof(float));
    cqr_table_destroy(t);
}
END_TEST

/* max_ids: a stream of new IDs keeps at most max_ids rows (memory stops
 * growing), every ID beyond frees one (exact counts), the last push's IDs
 * stay, and an evicted ID looks up its initial value again. */
START_TEST(test_full_max_ids)
{
    enum { MAX = 100, BATCH = 10, TOTAL = 2000 };
    cqr_table_t *t = make(1, MAX, 0);
    cqr_table_t *off = make(1, 0, 0);
    uint64_t ids[BATCH];
    cqr_table_stats_t warm = {0};
    for (uint64_t b = 0; b < TOTAL / BATCH; b++) {
        cqr_table_set_clock(t, 1000000 + (uint32_t)b);
        for (int j = 0; j < BATCH; j++)
            ids[j] = 1 + b * BATCH + (uint64_t)j;
        admit_push_ids(t, ids, BATCH, 0.5f);
        admit_push_ids(off, ids, BATCH, 0.5f);
        ck_assert_uint_le(admit_stats(t).known_ids, MAX);
        if (b == 2 * MAX / BATCH)
            warm = admit_stats(t);
    }
    cqr_table_stats_t s = admit_stats(t);
    ck_assert_uint_eq(s.known_ids, MAX);
    ck_assert_uint_eq(s.ids_admitted, TOTAL);
    ck_assert_uint_eq(s.ids_evicted, TOTAL - MAX);
    ck_assert_uint_eq(s.index_bytes, warm.index_bytes);
    ck_assert_uint_eq(s.param_bytes, warm.param_bytes);
    ck_assert_uint_eq(admit_stats(off).known_ids, TOTAL);
    ck_assert_uint_gt(admit_stats(off).index_bytes, 4 * s.index_bytes);
    /* The last batch is never evicted by its own registration; most of
     * the rows kept are recent (sampled LRU). */
    int recent = 0;
    for (uint64_t id = TOTAL - 2 * MAX + 1; id <= TOTAL; id++)
        recent += has_row(t, id);
    for (uint64_t id = TOTAL - BATCH + 1; id <= TOTAL; id++)
        ck_assert(has_row(t, id));
    ck_assert_int_ge(recent, 80);
    /* An evicted ID: its initial value, as if never pushed. */
    uint64_t gone = 1;
    while (has_row(t, gone))
        gone++;
    float v[DIM], init[DIM], was[DIM];
    lookup(t, gone, v);
    cqr_full_init_row(t, gone, init);
    assert_row_eq(v, init);
    lookup(off, gone, was);
    ck_assert(memcmp(was, init, sizeof was) != 0);
    /* Pushed again: a fresh row from its initial value. */
    admit_push_one(t, gone);
    lookup(t, gone, v);
    for (int d = 0; d < DIM; d++)
        ck_assert_float_eq_tol(v[d], init[d] - 0.05f, 1e-6f);
    ck_assert_uint_eq(admit_stats(t).known_ids, MAX);
    cqr_table_destroy(off);
    cqr_table_destroy(t);
}
END_TEST

/* ttl_seconds with the table clock: a row not pushed for T seconds is
 * gone to lookups at once, freed at the next registration of new IDs,
 * and starts afresh when pushed again. */
START_TEST(test_full_ttl)
{
    cqr_table_t *t = make(1, 0, 10);
    const uint64_t a = 5, b = 6, c = 7;
    float init_a[DIM], v[DIM], vb[DIM];
    cqr_full_init_row(t, a, init_a);
    cqr_table_set_clock(t, 1000);
    admit_push_one(t, a);
    admit_push_one(t, b);
    cqr_table_set_clock(t, 1005);
    admit_push_one(t, b);
    lookup(t, b, vb);
    cqr_table_set_clock(t, 1009);
    lookup(t, a, v);
    ck_assert(memcmp(v, init_a, sizeof v) != 0); /* 9 s: still there */
    cqr_table_set_clock(t, 1010);
    lookup(t, a, v);
    assert_row_eq(v, init_a); /* 10 s: gone */
    lookup(t, b, v);
    assert_row_eq(v, vb);
    ck_assert_uint_eq(admit_stats(t).known_ids, 2);
    ck_assert_uint_eq(admit_stats(t).ids_evicted, 0);
    admit_push_one(t, c); /* a registration: the sweep frees a */
    ck_assert_uint_eq(admit_stats(t).ids_evicted, 1);
    ck_assert_uint_eq(admit_stats(t).known_ids, 2);
    ck_assert(!has_row(t, a));
    admit_push_one(t, a); /* afresh */
    lookup(t, a, v);
    for (int d = 0; d < DIM; d++)
        ck_assert_float_eq_tol(v[d], init_a[d] - 0.05f, 1e-6f);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 4);
    /* b expires at 1015; pushing it at 1015 starts it afresh too. */
    cqr_table_set_clock(t, 1015);
    admit_push_one(t, b);
    float init_b[DIM];
    cqr_full_init_row(t, b, init_b);
    lookup(t, b, v);
    for (int d = 0; d < DIM; d++)
        ck_assert_float_eq_tol(v[d], init_b[d] - 0.05f, 1e-6f);
    ck_assert_uint_eq(admit_stats(t).ids_evicted, 2);
    cqr_table_destroy(t);
}
END_TEST

/* With admission on, an evicted ID looks up its fallback row again. */
START_TEST(test_full_evicted_fallback)
{
    cqr_table_t *t = make(2, 0, 10);
    const uint64_t x = 9;
    cqr_table_set_clock(t, 500);
    admit_push_one(t, x);
    admit_push_one(t, x); /* admitted */
    ck_assert(has_row(t, x));
    float fb[DIM], v[DIM];
    cqr_table_set_clock(t, 510);
    lookup(t, x, v);
    cqr_rows_read(t->fallback, cqr_full_fb_row(t, x), fb);
    assert_row_eq(v, fb);
    cqr_table_destroy(t);
}
END_TEST

/* Export and import at every round, with admission, max_ids and a TTL
 * that expires rows: the import digests as the table, with the same
 * counts, and both go on alike. */
START_TEST(test_full_restore_exact)
{
    cqr_table_t *t = make(2, 60, 4);
    chain_t c = {0};
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 5);
    uint64_t ids[48];
    cqr_table_t *u = NULL;
    for (int round = 0; round < 10; round++) {
        uint32_t now = 2000 + 3 * (uint32_t)round;
        cqr_table_set_clock(t, now);
        if (u)
            cqr_table_set_clock(u, now);
        for (int j = 0; j < 48; j++)
            ids[j] = 1 + cqr_rng_below(&rng, 200 + 20 * round);
        admit_push_ids(t, ids, 48, 0.05f * (round + 1));
        if (u)
            admit_push_ids(u, ids, 48, 0.05f * (round + 1));
        u = admit_restore(&c, t, u);
        ck_assert_uint_le(admit_stats(t).known_ids, 60);
    }
    ck_assert_uint_gt(admit_stats(t).ids_evicted, 0);
    chain_free(&c);
    cqr_table_destroy(u);
    cqr_table_destroy(t);
}
END_TEST

/* Pushes and lookups from several threads with admission and max_ids:
 * no crash, no race (TSan), the bound holds once they are done. */
typedef struct worker {
    cqr_table_t *t;
    uint64_t seed;
} worker_t;

static void *work(void *arg)
{
    worker_t *w = arg;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, w->seed);
    uint64_t ids[32];
    float g[32 * DIM], out[32 * DIM];
    for (size_t j = 0; j < 32 * DIM; j++)
        g[j] = 0.01f;
    for (int it = 0; it < 300; it++) {
        for (int j = 0; j < 32; j++)
            ids[j] = 1 + cqr_rng_below(&rng, 2000);
        if (cqr_table_push(w->t, ids, g, 32) != 0)
            return (void *)1;
        if (cqr_table_lookup(w->t, ids, 32, out) != 0)
            return (void *)1;
    }
    return NULL;
}

START_TEST(test_full_threads)
{
    cqr_table_t *t = make(2, 500, 0);
    pthread_t th[3];
    worker_t w[3];
    for (int i = 0; i < 3; i++) {
        w[i] = (worker_t){t, 100 + (uint64_t)i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(th[i], &r);
        ck_assert_ptr_null(r);
    }
    cqr_table_stats_t s = admit_stats(t);
    ck_assert_uint_le(s.known_ids, 500);
    ck_assert_uint_eq(s.ids_admitted - s.ids_evicted, s.known_ids);
    cqr_table_destroy(t);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("admit_full");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_full_admit_counts);
    tcase_add_test(tc, test_full_max_ids);
    tcase_add_test(tc, test_full_ttl);
    tcase_add_test(tc, test_full_evicted_fallback);
    tcase_add_test(tc, test_full_restore_exact);
    tcase_add_test(tc, test_full_threads);
    suite_add_tcase(s, tc);
    return s;
}
