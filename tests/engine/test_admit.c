/* Admission and eviction (issue 19): exact counts, lookups of admitted,
 * not yet admitted and evicted IDs, digests across export and import,
 * and memory under churn. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "check_main.h"

enum { DIM = 8 };

static cqr_table_t *make(cqr_kind_t kind, uint32_t admit, uint32_t evict,
                         uint64_t max_ids, uint32_t ttl)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, DIM);
    if (kind != CQR_KIND_FULL)
        cfg.rows = 64;
    cfg.seed = 7;
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 0.1f;
    cfg.admit_after = admit;
    cfg.evict_after_phases = evict;
    cfg.max_ids = max_ids;
    cfg.ttl_seconds = ttl;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

/* Pushes ids[0..n) once, each with gradient g (the same for every ID). */
static void push_ids(cqr_table_t *t, const uint64_t *ids, size_t n, float g)
{
    float *gr = malloc(n * DIM * sizeof *gr);
    for (size_t j = 0; j < n * DIM; j++)
        gr[j] = g;
    ck_assert_int_eq(cqr_table_push(t, ids, gr, n), 0);
    free(gr);
}

static void push_one(cqr_table_t *t, uint64_t id)
{
    push_ids(t, &id, 1, 0.5f);
}

static cqr_table_stats_t stats(cqr_table_t *t)
{
    cqr_table_stats_t s;
    cqr_table_stats(t, &s);
    return s;
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
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
    push_one(t, 42);
    push_one(t, 42);
    ck_assert_uint_eq(stats(t).known_ids, 0);
    ck_assert_uint_eq(stats(t).ids_admitted, 0);
    ck_assert_uint_eq(stats(t).sketch_bytes, 4u << 18);
    /* Duplicates in one call count as separate pushes. */
    uint64_t two[2] = {43, 43};
    push_ids(t, two, 2, 0.5f);
    ck_assert_uint_eq(stats(t).known_ids, 0);
    push_one(t, 42); /* its third */
    ck_assert_uint_eq(stats(t).known_ids, 1);
    ck_assert_uint_eq(stats(t).ids_admitted, 1);
    push_one(t, 43);
    ck_assert_uint_eq(stats(t).known_ids, 2);
    ck_assert_uint_eq(stats(t).ids_admitted, 2);
    push_one(t, 42);
    ck_assert_uint_eq(stats(t).ids_admitted, 2);
    /* Default: every new ID is admitted at its first push. */
    push_one(ce, 1);
    push_one(ce, 2);
    push_one(ce, 1);
    ck_assert_uint_eq(stats(ce).known_ids, 2);
    ck_assert_uint_eq(stats(ce).ids_admitted, 2);
    ck_assert_uint_eq(stats(ce).sketch_bytes, 0);
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
    push_ids(t, ids, 200, 0.1f);
    push_ids(t, ids, 100, 0.2f); /* the first 100 reach 2 pushes */
    ck_assert_uint_eq(stats(t).known_ids, 100);
    cqr_phase_result_t res;
    cluster(t, &res);
    ck_assert_uint_eq(res.ids_assigned, 100);
    ck_assert_uint_eq(stats(t).known_ids, 100);
    push_ids(t, ids + 100, 100, 0.1f);
    ck_assert_uint_eq(stats(t).known_ids, 200);
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
    push_ids(t, a, 50, 0.1f);
    push_ids(t, b, 50, 0.1f);
    cqr_phase_result_t res;
    cluster(t, &res); /* phase 1: both pushed in interval 0 */
    ck_assert_uint_eq(res.ids_evicted, 0);
    ck_assert_uint_eq(stats(t).known_ids, 100);
    push_ids(t, a, 50, 0.1f);
    cluster(t, &res); /* phase 2: b last pushed 2 phases ago: kept */
    ck_assert_uint_eq(res.ids_evicted, 0);
    push_ids(t, a, 50, 0.1f);
    cluster(t, &res); /* phase 3: b not pushed during the last 2 */
    ck_assert_uint_eq(res.ids_evicted, 50);
    ck_assert_uint_eq(stats(t).known_ids, 50);
    ck_assert_uint_eq(stats(t).ids_evicted, 50);
    ck_assert_uint_eq(stats(t).ids_admitted, 100);
    /* An evicted ID looks up its hashed pointers: as a never-pushed ID
     * would, in a table that has its codebooks. Its next push admits it
     * again. */
    push_one(t, b[0]);
    ck_assert_uint_eq(stats(t).known_ids, 51);
    ck_assert_uint_eq(stats(t).ids_admitted, 101);
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
        push_ids(t, ids, 64, 0.05f * (round + 1));
        if (u)
            push_ids(u, ids, 64, 0.05f * (round + 1));
        if (round % 2 == 1) {
            cluster(t, NULL);
            if (u)
                cluster(u, NULL);
        }
        chain_export(&c, t);
        cqr_table_t *v = chain_import(&c, 0);
        ck_assert_uint_eq(digest(v), digest(t));
        cqr_table_stats_t st = stats(t), sv = stats(v);
        ck_assert_uint_eq(sv.ids_admitted, st.ids_admitted);
        ck_assert_uint_eq(sv.ids_evicted, st.ids_evicted);
        ck_assert_uint_eq(sv.known_ids, st.known_ids);
        ck_assert(cqr_table_config(v)->admit_after == 2);
        ck_assert(cqr_table_config(v)->evict_after_phases == 1);
        if (u)
            ck_assert_uint_eq(digest(u), digest(t));
        cqr_table_destroy(u);
        u = v;
    }
    ck_assert_uint_gt(stats(t).ids_evicted, 0);
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
    push_one(t, 5);
    cqr_export_opts_t o = {0};
    cqr_export_t *x;
    ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
    ck_assert_uint_eq(x->seg[0].len, 32 + 92);
    cqr_export_free(x);
    chain_t c = {0};
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert_uint_eq(digest(u), digest(t));
    ck_assert_uint_eq(stats(u).ids_admitted, 1);
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
        push_ids(on, ids, PER, 0.01f);
        push_ids(off, ids, PER, 0.01f);
        cluster(on, NULL);
        cluster(off, NULL);
        if (stats(on).index_bytes > max_on)
            max_on = stats(on).index_bytes;
        ck_assert_uint_le(stats(on).known_ids, 2 * PER);
    }
    ck_assert_uint_eq(stats(off).known_ids, (uint64_t)PER * ROUNDS);
    ck_assert_uint_eq(stats(on).ids_evicted + stats(on).known_ids,
                      (uint64_t)PER * ROUNDS);
    ck_assert_uint_lt(max_on * 3, stats(off).index_bytes);
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
