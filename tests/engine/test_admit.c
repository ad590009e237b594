/* Admission and eviction (issue 19): exact counts, lookups of admitted,
 * not yet admitted and evicted IDs, digests across export and import,
 * and memory under churn. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "admit_util.h"
#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "check_main.h"

enum { DIM = ADMIT_DIM };

static cqr_table_t *make(cqr_kind_t kind, uint32_t admit, uint32_t evict,
                         uint64_t max_ids, uint32_t ttl)
{
    return admit_make(kind, 7, admit, evict, max_ids, ttl);
}

static void cluster(cqr_table_t *t, cqr_phase_result_t *res)
{
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, res), 0);
}

/* Options that do not apply to a kind are refused; defaults are off. */
START_TEST(test_config)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, DIM);
    ck_assert_uint_eq(cfg.admit_after, 1);
    ck_assert_uint_eq(cfg.evict_after_phases, 0);
    ck_assert_uint_eq(cfg.max_ids, 0);
    ck_assert_uint_eq(cfg.ttl_seconds, 0);
    cfg.admit_after = 256;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cfg.admit_after = 1;
    cfg.max_ids = 10;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cqr_table_config_default(&cfg, CQR_KIND_CE, DIM);
    cfg.admit_after = 2;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    cqr_table_config_default(&cfg, CQR_KIND_FULL, DIM);
    cfg.evict_after_phases = 2;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    /* Full tables take admission, max_ids and ttl_seconds
     * (test_admit_full.c); max_ids must fit a row number. */
    cqr_table_config_default(&cfg, CQR_KIND_FULL, DIM);
    cfg.admit_after = 2;
    cfg.max_ids = 100;
    cfg.ttl_seconds = 60;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), 0);
    cfg.max_ids = UINT32_MAX;
    ck_assert_int_eq(cqr_table_config_check(&cfg, NULL, 0), CQR_EINVAL);
    /* The sketch is charged at creation. */
    cqr_table_config_default(&cfg, CQR_KIND_CQR, DIM);
    uint64_t plain = cqr_table_config_bytes(&cfg);
    cfg.admit_after = 3;
    ck_assert_uint_gt(cqr_table_config_bytes(&cfg), plain);
}
END_TEST

/* cqr, admit_after 3: an ID has no pointers of its own until its third
 * push; before, it looks up what a never-pushed ID with its hashed
 * pointers would (the hashed rows it trains). */
START_TEST(test_cqr_admit_counts)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 3, 0, 0, 0);
    cqr_table_t *ce = make(CQR_KIND_CQR, 1, 0, 0, 0);
    admit_push_one(t, 42);
    admit_push_one(t, 42);
    ck_assert_uint_eq(admit_stats(t).known_ids, 0);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 0);
    ck_assert_uint_eq(admit_stats(t).sketch_bytes, 4u << 18);
    /* Duplicates in one call count as separate pushes. */
    uint64_t two[2] = {43, 43};
    admit_push_ids(t, two, 2, 0.5f);
    ck_assert_uint_eq(admit_stats(t).known_ids, 0);
    admit_push_one(t, 42); /* its third */
    ck_assert_uint_eq(admit_stats(t).known_ids, 1);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 1);
    admit_push_one(t, 43);
    ck_assert_uint_eq(admit_stats(t).known_ids, 2);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 2);
    admit_push_one(t, 42);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 2);
    /* Default: every new ID is admitted at its first push. */
    admit_push_one(ce, 1);
    admit_push_one(ce, 2);
    admit_push_one(ce, 1);
    ck_assert_uint_eq(admit_stats(ce).known_ids, 2);
    ck_assert_uint_eq(admit_stats(ce).ids_admitted, 2);
    ck_assert_uint_eq(admit_stats(ce).sketch_bytes, 0);
    cqr_table_destroy(t);
    cqr_table_destroy(ce);
}
END_TEST

/* A phase gives learned pointers only to admitted IDs; an unadmitted ID
 * pushed during... (sequential here) keeps its hashed ones. */
START_TEST(test_cqr_admit_phase)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 2, 0, 0, 0);
    uint64_t ids[200];
    for (int j = 0; j < 200; j++)
        ids[j] = 1000 + j;
    admit_push_ids(t, ids, 200, 0.1f);
    admit_push_ids(t, ids, 100, 0.2f); /* the first 100 reach 2 pushes */
    ck_assert_uint_eq(admit_stats(t).known_ids, 100);
    cqr_phase_result_t res;
    cluster(t, &res);
    ck_assert_uint_eq(res.ids_assigned, 100);
    ck_assert_uint_eq(admit_stats(t).known_ids, 100);
    admit_push_ids(t, ids + 100, 100, 0.1f);
    ck_assert_uint_eq(admit_stats(t).known_ids, 200);
    cqr_table_destroy(t);
}
END_TEST

/* cqr, evict_after_phases K: an ID not pushed during the last K phases
 * loses its pointers at the next commit, and looks up as a never-pushed
 * ID with the same hashed pointers does. */
START_TEST(test_cqr_evict)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 1, 2, 0, 0);
    uint64_t a[50], b[50];
    for (int j = 0; j < 50; j++) {
        a[j] = 1 + j;
        b[j] = 100 + j;
    }
    admit_push_ids(t, a, 50, 0.1f);
    admit_push_ids(t, b, 50, 0.1f);
    cqr_phase_result_t res;
    cluster(t, &res); /* phase 1: both pushed in interval 0 */
    ck_assert_uint_eq(res.ids_evicted, 0);
    ck_assert_uint_eq(admit_stats(t).known_ids, 100);
    admit_push_ids(t, a, 50, 0.1f);
    cluster(t, &res); /* phase 2: b last pushed 2 phases ago: kept */
    ck_assert_uint_eq(res.ids_evicted, 0);
    admit_push_ids(t, a, 50, 0.1f);
    cluster(t, &res); /* phase 3: b not pushed during the last 2 */
    ck_assert_uint_eq(res.ids_evicted, 50);
    ck_assert_uint_eq(admit_stats(t).known_ids, 50);
    ck_assert_uint_eq(admit_stats(t).ids_evicted, 50);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 100);
    /* An evicted ID looks up its hashed pointers: as a never-pushed ID
     * would, in a table that has its codebooks. Its next push admits it
     * again. */
    admit_push_one(t, b[0]);
    ck_assert_uint_eq(admit_stats(t).known_ids, 51);
    ck_assert_uint_eq(admit_stats(t).ids_admitted, 101);
    cqr_table_destroy(t);
}
END_TEST

/* Export and import carry the options, the sketch, the stamps and the
 * counters: the restored table digests alike, and stays alike under the
 * same further calls. Exports are incremental. */
START_TEST(test_cqr_restore_exact)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 2, 1, 0, 0);
    chain_t c = {0};
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 3);
    uint64_t ids[64];
    cqr_table_t *u = NULL;
    for (int round = 0; round < 6; round++) {
        for (int j = 0; j < 64; j++)
            ids[j] = 1 + cqr_rng_below(&rng, 150);
        admit_push_ids(t, ids, 64, 0.05f * (round + 1));
        if (u)
            admit_push_ids(u, ids, 64, 0.05f * (round + 1));
        if (round % 2 == 1) {
            cluster(t, NULL);
            if (u)
                cluster(u, NULL);
        }
        u = admit_restore(&c, t, u);
        ck_assert(cqr_table_config(u)->admit_after == 2);
        ck_assert(cqr_table_config(u)->evict_after_phases == 1);
    }
    ck_assert_uint_gt(admit_stats(t).ids_evicted, 0);
    chain_free(&c);
    cqr_table_destroy(u);
    cqr_table_destroy(t);
}
END_TEST

/* A table without the options writes the short cfg of older builds (and
 * so reads their checkpoints). */
START_TEST(test_short_cfg)
{
    cqr_table_t *t = make(CQR_KIND_CQR, 1, 0, 0, 0);
    admit_push_one(t, 5);
    cqr_export_opts_t o = {0};
    cqr_export_t *x;
    ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
    ck_assert_uint_eq(x->seg[0].len, 32 + 92);
    cqr_export_free(x);
    chain_t c = {0};
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert_uint_eq(admit_digest(u), admit_digest(t));
    ck_assert_uint_eq(admit_stats(u).ids_admitted, 1);
    ck_assert_uint_eq(cqr_table_config(u)->admit_after, 1);
    chain_free(&c);
    cqr_table_destroy(u);
    cqr_table_destroy(t);
}
END_TEST

/* Churn: each round brings new IDs and the old ones stop. With eviction
 * the known IDs and the map stay bounded; without, they grow. */
START_TEST(test_cqr_churn)
{
    cqr_table_t *on = make(CQR_KIND_CQR, 1, 1, 0, 0);
    cqr_table_t *off = make(CQR_KIND_CQR, 1, 0, 0, 0);
    enum { PER = 2000, ROUNDS = 10 };
    uint64_t *ids = malloc(PER * sizeof *ids);
    uint64_t max_on = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (int j = 0; j < PER; j++)
            ids[j] = (uint64_t)r * PER + j + 1;
        admit_push_ids(on, ids, PER, 0.01f);
        admit_push_ids(off, ids, PER, 0.01f);
        cluster(on, NULL);
        cluster(off, NULL);
        if (admit_stats(on).index_bytes > max_on)
            max_on = admit_stats(on).index_bytes;
        ck_assert_uint_le(admit_stats(on).known_ids, 2 * PER);
    }
    ck_assert_uint_eq(admit_stats(off).known_ids, (uint64_t)PER * ROUNDS);
    ck_assert_uint_eq(admit_stats(on).ids_evicted + admit_stats(on).known_ids,
                      (uint64_t)PER * ROUNDS);
    ck_assert_uint_lt(max_on * 3, admit_stats(off).index_bytes);
    free(ids);
    cqr_table_destroy(on);
    cqr_table_destroy(off);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("admit");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_cqr_admit_counts);
    tcase_add_test(tc, test_cqr_admit_phase);
    tcase_add_test(tc, test_cqr_evict);
    tcase_add_test(tc, test_cqr_restore_exact);
    tcase_add_test(tc, test_short_cfg);
    tcase_add_test(tc, test_cqr_churn);
    suite_add_tcase(s, tc);
    return s;
}
