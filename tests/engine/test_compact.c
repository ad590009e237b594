/* Compact per-ID state of cqr tables (issue 19, item 1): a compaction
 * keeps every known ID's lookup and the digest; checkpoints carry the
 * static set byte for byte; phases of a compacted table build static sets
 * too; serving exports stay exact for known IDs. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/model.h"
#include "engine/table_model.h"
#include "engine/table.h"
#include "check_main.h"

enum { DIM = 16, KNOWN = 6000, FOREIGN = 4000 };

static cqr_table_t *make(uint32_t rows, uint32_t evict)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, DIM);
    cfg.chunks = 4;
    cfg.rows = rows;
    cfg.seed = 11;
    cfg.optim.kind = CQR_OPT_ADAM;
    cfg.optim.lr = 0.05f;
    cfg.evict_after_phases = evict;
    cfg.cluster_threads = 2;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

/* The j-th known ID, and never-seen IDs (odd, so never a known one). */
static uint64_t known_id(uint64_t j)
{
    return cqr_mix64(j + 1) & ~1ull;
}

static uint64_t foreign_id(uint64_t j)
{
    return cqr_mix64(j + 77777) | 1ull;
}

/* Pushes known IDs [lo, hi), gradients from `salt`. */
static void push_range(cqr_table_t *t, uint64_t lo, uint64_t hi, int salt)
{
    const size_t n = hi - lo;
    uint64_t *ids = malloc(n * sizeof *ids);
    float *g = malloc(n * DIM * sizeof *g);
    for (size_t j = 0; j < n; j++) {
        ids[j] = known_id(lo + j);
        for (int d = 0; d < DIM; d++)
            g[j * DIM + d] =
                (float)((cqr_mix64(ids[j] + (uint64_t)(d + salt)) % 1000) /
                            1000.0 - 0.5);
    }
    ck_assert_int_eq(cqr_table_push(t, ids, g, n), 0);
    free(ids);
    free(g);
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
}

static cqr_table_stats_t stats(cqr_table_t *t)
{
    cqr_table_stats_t s;
    cqr_table_stats(t, &s);
    return s;
}

/* Lookups of n IDs id(0..n) into a new array. */
static float *look(cqr_table_t *t, uint64_t (*id)(uint64_t), size_t n)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    float *out = malloc(n * DIM * sizeof *out);
    for (size_t j = 0; j < n; j++)
        ids[j] = id(j);
    ck_assert_int_eq(cqr_table_lookup(t, ids, n, out), 0);
    free(ids);
    return out;
}

/* Rows of a and b (n each) that differ. */
static size_t differ(const float *a, const float *b, size_t n)
{
    size_t k = 0;
    for (size_t j = 0; j < n; j++)
        k += memcmp(a + j * DIM, b + j * DIM, DIM * sizeof *a) != 0;
    return k;
}

/* A compaction changes nothing a known ID looks up, nor the digest; the
 * table then evolves as an uncompacted one under pushes of known IDs. */
START_TEST(test_compact_exact)
{
    cqr_table_t *t = make(64, 0), *r = make(64, 0);
    cqr_table_t *both[2] = {t, r};
    for (int i = 0; i < 2; i++) {
        push_range(both[i], 0, KNOWN, 1);
        ck_assert_int_eq(cqr_table_cluster(both[i], NULL, NULL, NULL), 0);
        push_range(both[i], KNOWN / 2, KNOWN + 500, 2);
    }
    uint64_t moved = 0;
    ck_assert_int_eq(cqr_table_compact(t, &moved), 0);
    ck_assert_uint_eq(moved, KNOWN + 500);
    cqr_table_stats_t s = stats(t);
    ck_assert_uint_eq(s.known_ids, KNOWN + 500);
    ck_assert_uint_eq(s.static_ids, KNOWN + 500);
    ck_assert_uint_eq(s.rebuilds, 1);
    ck_assert_uint_lt(s.index_bytes, stats(r).index_bytes / 2);
    ck_assert_uint_eq(digest(t), digest(r));
    float *a = look(t, known_id, KNOWN + 500), *b = look(r, known_id,
                                                          KNOWN + 500);
    ck_assert_mem_eq(a, b, (KNOWN + 500) * DIM * sizeof *a);
    free(a);
    free(b);
    /* Never-seen IDs: their hashed pointers, but for the few that match
     * a slot's fingerprint (2^-16 here); stable. */
    a = look(t, foreign_id, FOREIGN);
    b = look(r, foreign_id, FOREIGN);
    ck_assert_uint_le(differ(a, b, FOREIGN), 2);
    free(b);
    b = look(t, foreign_id, FOREIGN);
    ck_assert_mem_eq(a, b, FOREIGN * DIM * sizeof *a);
    free(a);
    free(b);
    /* Calls shorter than, equal to and just past the lookup pipeline's
     * lag (16 IDs) and its resolve groups. */
    const size_t ns[] = {1, 15, 16, 17, 33, 64, 65};
    for (size_t q = 0; q < sizeof ns / sizeof ns[0]; q++) {
        a = look(t, known_id, ns[q]);
        b = look(r, known_id, ns[q]);
        ck_assert_mem_eq(a, b, ns[q] * DIM * sizeof *a);
        free(a);
        free(b);
    }
    /* Pushes of known and new IDs: the new ones go to the map. */
    for (int i = 0; i < 2; i++)
        push_range(both[i], 100, KNOWN + 900, 3);
    s = stats(t);
    ck_assert_uint_eq(s.known_ids, KNOWN + 900);
    ck_assert_uint_eq(s.static_ids, KNOWN + 500);
    ck_assert_uint_eq(digest(t), digest(r));
    /* A second compaction takes both parts. */
    ck_assert_int_eq(cqr_table_compact(t, &moved), 0);
    ck_assert_uint_eq(moved, 400);
    ck_assert_uint_eq(stats(t).static_ids, KNOWN + 900);
    ck_assert_uint_eq(digest(t), digest(r));
    a = look(t, known_id, KNOWN + 900);
    b = look(r, known_id, KNOWN + 900);
    ck_assert_mem_eq(a, b, (KNOWN + 900) * DIM * sizeof *a);
    free(a);
    free(b);
    cqr_table_destroy(t);
    cqr_table_destroy(r);
}
END_TEST

/* A phase of a compacted table builds a static set of the IDs it
 * assigned; its known IDs look up what an uncompacted table's do (up to
 * the order of the residual sums). */
START_TEST(test_compact_phase)
{
    cqr_table_t *t = make(64, 0), *r = make(64, 0);
    cqr_table_t *both[2] = {t, r};
    for (int i = 0; i < 2; i++)
        push_range(both[i], 0, KNOWN, 1);
    ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(cqr_table_cluster(both[i], NULL, NULL, NULL), 0);
        push_range(both[i], KNOWN - 100, KNOWN + 200, 2);
    }
    cqr_table_stats_t s = stats(t);
    ck_assert_uint_eq(s.phases_done, 1);
    ck_assert_uint_eq(s.rebuilds, 2);
    ck_assert_uint_eq(s.static_ids, KNOWN);
    ck_assert_uint_eq(s.known_ids, KNOWN + 200);
    float *a = look(t, known_id, KNOWN + 200), *b = look(r, known_id,
                                                          KNOWN + 200);
    for (size_t j = 0; j < (size_t)(KNOWN + 200) * DIM; j++)
        ck_assert_float_eq_tol(a[j], b[j], 1e-4f);
    free(a);
    free(b);
    cqr_table_destroy(t);
    cqr_table_destroy(r);
}
END_TEST

/* Export and import restore a compacted table exactly, never-seen IDs
 * included (the static set travels byte for byte); incremental exports
 * skip the static set until a rebuild replaces it. */
START_TEST(test_compact_restore)
{
    cqr_table_t *t = make(64, 0);
    push_range(t, 0, KNOWN, 1);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
    push_range(t, KNOWN - 10, KNOWN + 300, 2);
    chain_t c = {0};
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert_uint_eq(digest(u), digest(t));
    ck_assert_uint_eq(stats(u).known_ids, stats(t).known_ids);
    ck_assert_uint_eq(stats(u).static_ids, stats(t).static_ids);
    float *a = look(t, foreign_id, FOREIGN), *b = look(u, foreign_id,
                                                        FOREIGN);
    ck_assert_mem_eq(a, b, FOREIGN * DIM * sizeof *a);
    free(a);
    free(b);
    /* The same calls keep them alike, a phase included. */
    push_range(t, 50, 400, 3);
    push_range(u, 50, 400, 3);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    ck_assert_int_eq(cqr_table_cluster(u, NULL, NULL, NULL), 0);
    ck_assert_uint_eq(digest(u), digest(t));
    cqr_table_destroy(u);
    /* Pushes only: the static and keys pages are unchanged. */
    chain_export(&c, t);
    push_range(t, 0, 100, 4);
    chain_export(&c, t);
    ck_assert_uint_ge(c.unchanged, 2);
    u = chain_import(&c, 0);
    ck_assert_uint_eq(digest(u), digest(t));
    a = look(t, foreign_id, FOREIGN);
    b = look(u, foreign_id, FOREIGN);
    ck_assert_mem_eq(a, b, FOREIGN * DIM * sizeof *a);
    free(a);
    free(b);
    cqr_table_destroy(u);
    chain_free(&c);
    cqr_table_destroy(t);
}
END_TEST

/* Serving exports of a compacted table give its known IDs' lookups. */
START_TEST(test_compact_model)
{
    cqr_table_t *t = make(64, 0);
    push_range(t, 0, KNOWN, 1);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
    push_range(t, KNOWN, KNOWN + 100, 2);
    uint8_t *img = NULL;
    size_t len = 0;
    char why[256] = "";
    ck_assert_int_eq(cqr_table_model(t, NULL, CQR_DTYPE_F32, 1, 0, &img,
                                     &len, why, sizeof why),
                     0);
    cqr_model_t *m = NULL;
    ck_assert_int_eq(cqr_model_open_image(img, len, &m, why, sizeof why), 0);
    ck_assert_uint_eq(cqr_model_nids(m), KNOWN + 100);
    const size_t n = KNOWN + 100;
    uint64_t *ids = malloc(n * sizeof *ids);
    float *y = malloc(n * DIM * sizeof *y);
    for (size_t j = 0; j < n; j++)
        ids[j] = known_id(j);
    ck_assert_int_eq(cqr_model_lookup(m, ids, n, y), 0);
    float *x = look(t, known_id, n);
    ck_assert_mem_eq(x, y, n * DIM * sizeof *x);
    free(x);
    free(y);
    free(ids);
    cqr_model_close(m);
    cqr_table_destroy(t);
}
END_TEST

/* Tables that evict, other kinds, and a running phase refuse. */
START_TEST(test_compact_refused)
{
    cqr_table_t *t = make(64, 2);
    push_range(t, 0, 100, 1);
    ck_assert_int_eq(cqr_table_compact(t, NULL), CQR_EUNSUPPORTED);
    cqr_table_destroy(t);
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, DIM);
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    ck_assert_int_eq(cqr_table_compact(t, NULL), CQR_EUNSUPPORTED);
    cqr_table_destroy(t);
    t = make(64, 0);
    push_range(t, 0, 100, 1);
    cqr_phase_t *ph = NULL;
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    ck_assert_int_eq(cqr_table_compact(t, NULL), CQR_EBUSY);
    cqr_phase_destroy(ph);
    ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
    /* An empty map compacts too (nothing to move). */
    uint64_t moved = 1;
    ck_assert_int_eq(cqr_table_compact(t, &moved), 0);
    ck_assert_uint_eq(moved, 0);
    ck_assert_uint_eq(stats(t).known_ids, 100);
    cqr_table_destroy(t);
    /* An empty table compacts, runs phases and restores. */
    t = make(64, 0);
    ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    float *a = look(t, foreign_id, 10);
    chain_t c = {0};
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert_uint_eq(digest(u), digest(t));
    ck_assert_uint_eq(stats(u).known_ids, 0);
    float *b = look(u, foreign_id, 10);
    ck_assert_mem_eq(a, b, 10 * DIM * sizeof *a);
    free(a);
    free(b);
    chain_free(&c);
    cqr_table_destroy(u);
    cqr_table_destroy(t);
}
END_TEST

/* Pushes made while a compaction runs (from its progress callback, on
 * the compacting thread, between the map's copy and the install): at
 * "map" new IDs and known ones, at "built" more new IDs; the twin gets
 * the same pushes in the same order. */
typedef struct during {
    cqr_table_t *t, *twin;
    int calls, stop_at; /* stop_at: the call that asks to stop (0: none) */
} during_t;

static int during_push(void *ud, const char *stage, uint64_t done,
                       uint64_t total)
{
    during_t *d = ud;
    ck_assert_uint_le(done, total);
    d->calls++;
    if (d->stop_at && d->calls == d->stop_at)
        return 1;
    cqr_table_t *both[2] = {d->t, d->twin};
    for (int i = 0; i < 2; i++) {
        if (strcmp(stage, "map") == 0)
            push_range(both[i], KNOWN - 300, KNOWN + 700, 4);
        else if (strcmp(stage, "built") == 0)
            push_range(both[i], KNOWN + 700, KNOWN + 1000, 5);
    }
    return 0;
}

/* IDs registered while a compaction runs stay known (in the map after
 * the install) and every ID looks up what the uncompacted twin's does. */
START_TEST(test_compact_registers_meanwhile)
{
    cqr_table_t *t = make(64, 0), *r = make(64, 0);
    for (int i = 0; i < 2; i++)
        push_range(i ? r : t, 0, KNOWN, 1);
    during_t d = {t, r, 0, 0};
    uint64_t moved = 0;
    ck_assert_int_eq(cqr_table_compact_ex(t, during_push, &d, &moved), 0);
    ck_assert_int_eq(d.calls, 3); /* map, static (empty), built */
    ck_assert_uint_eq(moved, KNOWN);
    cqr_table_stats_t s = stats(t);
    ck_assert_uint_eq(s.known_ids, KNOWN + 1000);
    ck_assert_uint_eq(s.static_ids, KNOWN);
    ck_assert_uint_eq(stats(r).known_ids, KNOWN + 1000);
    ck_assert_uint_eq(digest(t), digest(r));
    float *a = look(t, known_id, KNOWN + 1000);
    float *b = look(r, known_id, KNOWN + 1000);
    ck_assert_mem_eq(a, b, (KNOWN + 1000) * DIM * sizeof *a);
    free(a);
    free(b);
    /* The next compaction takes the 1000 left in the map, and a second
     * static set's IDs are read from the first's key file. */
    d.calls = 0;
    ck_assert_int_eq(cqr_table_compact_ex(t, during_push, &d, &moved), 0);
    ck_assert_uint_eq(moved, 1000);
    ck_assert_uint_eq(stats(t).static_ids, KNOWN + 1000);
    ck_assert_uint_eq(stats(t).known_ids, KNOWN + 1000);
    ck_assert_uint_eq(digest(t), digest(r));
    cqr_table_destroy(t);
    cqr_table_destroy(r);
}
END_TEST

/* A progress callback that asks to stop: CQR_ECANCELED, nothing changes
 * (the IDs pushed meanwhile stay known), and a later compaction works. */
START_TEST(test_compact_stopped)
{
    for (int stop_at = 1; stop_at <= 3; stop_at++) {
        cqr_table_t *t = make(64, 0), *r = make(64, 0);
        for (int i = 0; i < 2; i++)
            push_range(i ? r : t, 0, KNOWN, 1);
        during_t d = {t, r, 0, stop_at};
        ck_assert_int_eq(cqr_table_compact_ex(t, during_push, &d, NULL),
                         CQR_ECANCELED);
        cqr_table_stats_t s = stats(t);
        ck_assert_uint_eq(s.static_ids, 0);
        ck_assert_uint_eq(s.rebuilds, 0);
        ck_assert_uint_eq(s.known_ids, stats(r).known_ids);
        ck_assert_uint_eq(digest(t), digest(r));
        ck_assert_int_eq(cqr_table_compact(t, NULL), 0);
        ck_assert_uint_eq(stats(t).static_ids, stats(r).known_ids);
        ck_assert_uint_eq(digest(t), digest(r));
        cqr_table_destroy(t);
        cqr_table_destroy(r);
    }
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("compact");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_compact_exact);
    tcase_add_test(tc, test_compact_phase);
    tcase_add_test(tc, test_compact_restore);
    tcase_add_test(tc, test_compact_model);
    tcase_add_test(tc, test_compact_refused);
    tcase_add_test(tc, test_compact_registers_meanwhile);
    tcase_add_test(tc, test_compact_stopped);
    suite_add_tcase(s, tc);
    return s;
}
