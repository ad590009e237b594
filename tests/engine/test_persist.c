/* Engine persistence: export/import round trips for every kind and
 * optimizer, incremental chains, exports during phases and under
 * concurrent pushes, and rejection of damaged segments. */
#include <assert.h>
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/persist.h"
#include "engine/table.h"
#include "engine/table_impl.h"
#include "check_main.h"

static cqr_table_t *make(cqr_kind_t kind, cqr_optim_kind_t opt, uint32_t dim,
                         uint32_t rows, uint64_t seed)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    if (kind != CQR_KIND_FULL)
        cfg.rows = rows;
    cfg.seed = seed;
    cfg.optim.kind = opt;
    cfg.optim.lr = opt == CQR_OPT_SGD ? 0.05f : 0.01f;
    cfg.optim.weight_decay = 0.01f;
    cfg.cluster_iters = 5;
    cfg.cluster_sample = 20;
    cfg.schedule_every = 1000;
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

/* n pushes of `batch` IDs drawn from [lo, lo+span) (the ID 0 included
 * when lo is 0), gradients from the rng. The same rng state gives the
 * same pushes. */
static void push_random(cqr_table_t *t, cqr_rng_t *rng, int n, size_t batch,
                        uint64_t lo, uint64_t span)
{
    uint32_t dim = cqr_table_config(t)->dim;
    uint64_t *ids = malloc(batch * sizeof *ids);
    float *g = malloc(batch * dim * sizeof *g);
    ck_assert_ptr_nonnull(ids);
    ck_assert_ptr_nonnull(g);
    for (int k = 0; k < n; k++) {
        for (size_t j = 0; j < batch; j++)
            ids[j] = lo + cqr_rng_next(rng) % span;
        for (size_t j = 0; j < batch * dim; j++)
            g[j] = cqr_rng_sym(rng, 1.0f);
        ck_assert_int_eq(cqr_table_push(t, ids, g, batch), 0);
    }
    free(ids);
    free(g);
}

/* Lookups of known and unknown IDs agree bit for bit. */
static void assert_same_lookups(cqr_table_t *a, cqr_table_t *b, uint64_t span)
{
    uint32_t dim = cqr_table_config(a)->dim;
    enum { N = 256 };
    uint64_t ids[N];
    float *x = malloc(N * dim * sizeof *x), *y = malloc(N * dim * sizeof *y);
    for (int j = 0; j < N; j++)
        ids[j] = j < N / 2 ? (uint64_t)j * 7 % span : cqr_mix64(j);
    ck_assert_int_eq(cqr_table_lookup(a, ids, N, x), 0);
    ck_assert_int_eq(cqr_table_lookup(b, ids, N, y), 0);
    ck_assert_mem_eq(x, y, N * dim * sizeof *x);
    free(x);
    free(y);
}

static cqr_table_t *roundtrip(cqr_table_t *t)
{
    chain_t c = {0};
    chain_export(&c, t);
    ck_assert_int_eq(c.deltas, 0);
    ck_assert_int_eq(c.unchanged, 0);
    cqr_table_t *u = chain_import(&c, 0);
    chain_free(&c);
    return u;
}

/* Export then import gives the same digest and lookups, and the imported
 * table then evolves exactly like the original (state is complete:
 * optimizer steps, seeds, phase counters, schedule). */
START_TEST(test_roundtrip_all_kinds)
{
    const cqr_kind_t kinds[] = {CQR_KIND_FULL, CQR_KIND_HASH, CQR_KIND_CE,
                                CQR_KIND_CQR};
    const cqr_optim_kind_t opts[] = {CQR_OPT_SGD, CQR_OPT_ADAGRAD,
                                     CQR_OPT_ADAM};
    for (int ki = 0; ki < 4; ki++) {
        for (int oi = 0; oi < 3; oi++) {
            cqr_kind_t kind = kinds[ki];
            cqr_table_t *t = make(kind, opts[oi], 16, 64, 11 + ki * 3 + oi);
            cqr_rng_t rng;
            cqr_rng_seed(&rng, 5);
            push_random(t, &rng, 20, 64, 0, 3000);
            if (kind == CQR_KIND_CQR) {
                ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
                push_random(t, &rng, 10, 64, 0, 4000);
                ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
                push_random(t, &rng, 5, 64, 2000, 4000);
            }
            cqr_table_t *u = roundtrip(t);
            ck_assert_msg(digest(t) == digest(u), "%s/%s: digest differs",
                          cqr_kind_name(kind), cqr_optim_name(opts[oi]));
            assert_same_lookups(t, u, 4000);
            cqr_table_stats_t a, b;
            cqr_table_stats(t, &a);
            cqr_table_stats(u, &b);
            ck_assert_uint_eq(a.known_ids, b.known_ids);
            ck_assert_uint_eq(a.phases_done, b.phases_done);
            ck_assert_uint_eq(a.examples_pushed, b.examples_pushed);
            ck_assert_uint_eq(a.pushes, b.pushes);
            ck_assert_int_eq(cqr_table_cluster_due(t),
                             cqr_table_cluster_due(u));

            /* Same future: identical pushes (and a phase) keep the two
             * tables identical. */
            cqr_rng_t r1, r2;
            cqr_rng_seed(&r1, 99);
            cqr_rng_seed(&r2, 99);
            push_random(t, &r1, 8, 32, 0, 5000);
            push_random(u, &r2, 8, 32, 0, 5000);
            if (kind == CQR_KIND_CQR) {
                ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
                ck_assert_int_eq(cqr_table_cluster(u, NULL, NULL, NULL), 0);
            }
            ck_assert_msg(digest(t) == digest(u), "%s/%s: diverged",
                          cqr_kind_name(kind), cqr_optim_name(opts[oi]));
            cqr_table_destroy(t);
            cqr_table_destroy(u);
        }
    }
}
END_TEST

/* Empty tables and the ID 0 alone survive too. */
START_TEST(test_roundtrip_edges)
{
    for (int ki = 0; ki < 4; ki++) {
        cqr_table_t *t = make((cqr_kind_t)ki, CQR_OPT_ADAM, 8, 3, 1);
        cqr_table_t *u = roundtrip(t);
        ck_assert(digest(t) == digest(u));
        cqr_table_destroy(u);
        uint64_t zero = 0;
        float g[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        ck_assert_int_eq(cqr_table_push(t, &zero, g, 1), 0);
        u = roundtrip(t);
        ck_assert(digest(t) == digest(u));
        assert_same_lookups(t, u, 10);
        cqr_table_destroy(t);
        cqr_table_destroy(u);
    }
}
END_TEST

/* A chain of incremental exports rebuilds the exact table at every
 * step, across new IDs, map growth (rehash) and phase commits; deltas
 * are actually used. */
START_TEST(test_incremental_chain)
{
    for (int ki = 0; ki < 4; ki++) {
        cqr_kind_t kind = (cqr_kind_t)ki;
        cqr_table_t *t = make(kind, CQR_OPT_ADAM, 8, 70000, 3);
        chain_t c = {0};
        cqr_rng_t rng;
        cqr_rng_seed(&rng, 17);
        push_random(t, &rng, 40, 512, 0, 20000);
        chain_export(&c, t);
        size_t deltas = 0;
        for (int round = 0; round < 8; round++) {
            /* A few rows of known IDs, sometimes new IDs, sometimes a
             * phase. */
            push_random(t, &rng, 2, 16, 0, 20000);
            if (round % 3 == 1)
                push_random(t, &rng, 1, 64, 20000 + round * 1000, 1000);
            if (round == 5)
                push_random(t, &rng, 40, 1024, 100000, 200000); /* rehash */
            if (kind == CQR_KIND_CQR && round == 3)
                ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
            chain_export(&c, t);
            deltas += c.deltas;
            if (kind == CQR_KIND_CQR && round == 3)
                ck_assert_int_eq(c.deltas, 0); /* a commit rewrites all */
            if (round == 0)
                ck_assert_uint_gt(c.deltas, 0);
            cqr_table_t *u = chain_import(&c, 0);
            ck_assert_msg(digest(t) == digest(u), "%s round %d",
                          cqr_kind_name(kind), round);
            cqr_table_destroy(u);
        }
        ck_assert_uint_gt(deltas, 0);
        cqr_table_t *u = chain_import(&c, 1);
        ck_assert(digest(t) == digest(u));
        /* The imported table continues the chain incrementally. */
        push_random(u, &rng, 1, 8, 0, 20000);
        chain_export(&c, u);
        ck_assert_uint_eq(c.bases, 2); /* only cfg and meta */
        cqr_table_t *v = chain_import(&c, 0);
        ck_assert(digest(u) == digest(v));
        cqr_table_destroy(u);
        cqr_table_destroy(v);
        cqr_table_destroy(t);
        chain_free(&c);
    }
}
END_TEST

/* A table never exported keeps no insertion records (a server without
 * a data dir pays nothing for them); an export from the initial epoch
 * writes the whole map even so, and later ones are incremental. */
START_TEST(test_records_start_at_first_export)
{
    for (int ki = 0; ki < 2; ki++) {
        cqr_table_t *t = make(ki ? CQR_KIND_CQR : CQR_KIND_FULL,
                              CQR_OPT_SGD, 8, 16, 1);
        cqr_rng_t rng;
        cqr_rng_seed(&rng, 1);
        push_random(t, &rng, 20, 256, 1, 100000);
        ck_assert_uint_eq(t->ins_n, 0);
        cqr_export_opts_t o = {.since = 1}; /* the initial epoch */
        cqr_export_t *x;
        ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
        size_t maps = 0;
        for (size_t i = 0; i < x->nseg; i++) {
            if (x->seg[i].type == CQR_PAGE_MAP) {
                ck_assert_int_eq(x->seg[i].kind, CQR_SEG_BASE);
                maps++;
            }
        }
        ck_assert_uint_gt(maps, 0);
        uint32_t cursor = x->cursor;
        cqr_export_free(x);
        push_random(t, &rng, 1, 16, 200000, 1000);
        ck_assert_uint_gt(t->ins_n, 0);
        o.since = cursor;
        ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
        size_t deltas = 0;
        for (size_t i = 0; i < x->nseg; i++)
            deltas += x->seg[i].type == CQR_PAGE_MAP &&
                      x->seg[i].kind == CQR_SEG_DELTA;
        ck_assert_uint_gt(deltas, 0);
        cqr_export_free(x);
        cqr_table_destroy(t);
    }
}
END_TEST

/* Touching 1% of a large full table exports about 1% of it; adding 1%
 * new IDs to a cqr table exports about 1% of its map. */
START_TEST(test_incremental_size)
{
    cqr_table_t *t = make(CQR_KIND_FULL, CQR_OPT_ADAM, 16, 0, 1);
    const size_t n = 200000, batch = 4096;
    uint64_t *ids = malloc(batch * sizeof *ids);
    float *g = calloc(batch * 16, sizeof *g);
    for (size_t j = 0; j < batch * 16; j++)
        g[j] = 0.5f;
    for (size_t lo = 0; lo < n; lo += batch) {
        size_t m = n - lo < batch ? n - lo : batch;
        for (size_t j = 0; j < m; j++)
            ids[j] = cqr_mix64(lo + j + 1);
        ck_assert_int_eq(cqr_table_push(t, ids, g, m), 0);
    }
    chain_t c = {0};
    chain_export(&c, t);
    uint64_t first = c.bytes;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 3);
    for (size_t j = 0; j < n / 100; j++)
        ids[j] = cqr_mix64(cqr_rng_next(&rng) % n + 1);
    ck_assert_int_eq(cqr_table_push(t, ids, g, n / 100), 0);
    chain_export(&c, t);
    double ratio = (double)c.bytes / first;
    ck_assert_msg(ratio < 0.015 && ratio > 0.005,
                  "second export is %.4f of the first", ratio);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert(digest(t) == digest(u));
    cqr_table_destroy(u);
    cqr_table_destroy(t);
    chain_free(&c);

    t = make(CQR_KIND_CQR, CQR_OPT_ADAM, 16, 1024, 1);
    chain_t d = {0};
    for (size_t lo = 0; lo < n; lo += batch) {
        size_t m = n - lo < batch ? n - lo : batch;
        for (size_t j = 0; j < m; j++)
            ids[j] = cqr_mix64(lo + j + 1);
        ck_assert_int_eq(cqr_table_push(t, ids, g, m), 0);
    }
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    /* A commit leaves the new map at its growth threshold, so the first
     * new ID after it rehashes the map (every slot moves): take that
     * step first, then measure 1% new IDs. */
    for (size_t j = 0; j < 10; j++)
        ids[j] = cqr_mix64(2 * n + j);
    ck_assert_int_eq(cqr_table_push(t, ids, g, 10), 0);
    chain_export(&d, t);
    first = d.bytes;
    for (size_t j = 0; j < n / 100; j++)
        ids[j] = cqr_mix64(n + 1 + j);
    ck_assert_int_eq(cqr_table_push(t, ids, g, n / 100), 0);
    chain_export(&d, t);
    ratio = (double)d.bytes / first;
    /* Map deltas plus the touched codebook pages (small here). */
    ck_assert_msg(ratio < 0.2, "second cqr export is %.4f of the first",
                  ratio);
    ck_assert_uint_gt(d.deltas, 0);
    u = chain_import(&d, 0);
    ck_assert(digest(t) == digest(u));
    cqr_table_destroy(u);
    cqr_table_destroy(t);
    chain_free(&d);
    free(ids);
    free(g);
}
END_TEST

/* An export during a running phase captures the live state, which is
 * the table without the phase; the restored schedule says the phase is
 * due again; after the commit the next export rewrites everything. */
START_TEST(test_export_during_phase)
{
    cqr_table_t *t = make(CQR_KIND_CQR, CQR_OPT_ADAM, 16, 64, 5);
    cqr_table_t *ref = make(CQR_KIND_CQR, CQR_OPT_ADAM, 16, 64, 5);
    cqr_rng_t r1, r2;
    cqr_rng_seed(&r1, 8);
    cqr_rng_seed(&r2, 8);
    push_random(t, &r1, 40, 64, 0, 3000);
    push_random(ref, &r2, 40, 64, 0, 3000);
    ck_assert_int_eq(cqr_table_cluster_due(t), 1);
    chain_t c = {0};
    chain_export(&c, t);

    cqr_phase_t *ph;
    ck_assert_int_eq(cqr_phase_begin(t, &ph), 0);
    ck_assert_int_eq(cqr_table_cluster_due(t), 0);
    push_random(t, &r1, 5, 64, 0, 4000);
    push_random(ref, &r2, 5, 64, 0, 4000);
    chain_export(&c, t); /* between begin and run */
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert(digest(u) == digest(ref));
    ck_assert_int_eq(cqr_table_cluster_due(u), 1);
    cqr_table_destroy(u);
    ck_assert_int_eq(cqr_phase_run(ph, NULL, NULL), 0);
    push_random(t, &r1, 3, 64, 0, 4000);
    push_random(ref, &r2, 3, 64, 0, 4000);
    chain_export(&c, t); /* between run and commit */
    ck_assert_uint_gt(c.unchanged + c.deltas, 0);
    u = chain_import(&c, 0);
    ck_assert(digest(u) == digest(ref));
    cqr_table_destroy(u);
    ck_assert_int_eq(cqr_phase_commit(ph), 0);
    cqr_phase_destroy(ph);

    chain_export(&c, t); /* after commit: all cb and map pages rewritten */
    ck_assert_int_eq(c.deltas, 0);
    ck_assert_int_eq(c.unchanged, 0);
    u = chain_import(&c, 0);
    ck_assert(digest(u) == digest(t));
    ck_assert_int_eq(cqr_table_cluster_due(u), 0);
    cqr_table_stats_t st;
    cqr_table_stats(u, &st);
    ck_assert_uint_eq(st.phases_done, 1);
    cqr_table_destroy(u);
    cqr_table_destroy(t);
    cqr_table_destroy(ref);
    chain_free(&c);
}
END_TEST

/* ---- Consistency under concurrent pushes and lookups -------------------
 * A full table with SGD lr 1 and init 0: a push of gradient -1 adds
 * exactly 1 to each row it names. Pusher k pushes {A_k, B_k, N_k(i)} in
 * its i-th push, so any consistent state has v(A_k) = v(B_k) = c_k, the
 * new IDs N_k(0..c_k) at 1, and 2 + c_k known IDs per pusher; and an
 * export that begins after pusher k acknowledged a pushes and ends
 * before it acknowledged b pushes has a <= c_k <= b. */

#define PUSHERS 3

typedef struct pusher {
    cqr_table_t *t;
    int k;
    int stop;         /* atomic */
    uint64_t started; /* atomic: pushes begun */
    uint64_t acked;   /* atomic: pushes acknowledged */
} pusher_t;

static uint64_t id_a(int k) { return 1000 + 10 * (uint64_t)k; }
static uint64_t id_b(int k) { return 1001 + 10 * (uint64_t)k; }
static uint64_t id_n(int k, uint64_t i)
{
    return (uint64_t)(k + 1) << 40 | i;
}

static void *pusher_main(void *arg)
{
    pusher_t *p = arg;
    float g[3 * 16];
    for (int j = 0; j < 3 * 16; j++)
        g[j] = -1.0f;
    assert(cqr_table_config(p->t)->dim <= 16);
    for (uint64_t i = 0; !__atomic_load_n(&p->stop, __ATOMIC_RELAXED); i++) {
        uint64_t ids[3] = {id_a(p->k), id_n(p->k, i), id_b(p->k)};
        __atomic_store_n(&p->started, i + 1, __ATOMIC_RELEASE);
        ck_assert_int_eq(cqr_table_push(p->t, ids, g, 3), 0);
        __atomic_store_n(&p->acked, i + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

typedef struct looker {
    cqr_table_t *t;
    int stop;        /* atomic */
} looker_t;

static void *looker_main(void *arg)
{
    looker_t *l = arg;
    uint64_t ids[PUSHERS * 2];
    float out[PUSHERS * 2 * 16];
    while (!__atomic_load_n(&l->stop, __ATOMIC_RELAXED)) {
        for (int k = 0; k < PUSHERS; k++) {
            ids[2 * k] = id_a(k);
            ids[2 * k + 1] = id_n(k, 5);
        }
        ck_assert_int_eq(cqr_table_lookup(l->t, ids, PUSHERS * 2, out), 0);
    }
    return NULL;
}

START_TEST(test_concurrent_consistency)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 4);
    cfg.init_scale = 0.0f;
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 1.0f;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    pusher_t p[PUSHERS];
    pthread_t th[PUSHERS + 1];
    looker_t l = {t, 0};
    for (int k = 0; k < PUSHERS; k++) {
        p[k] = (pusher_t){t, k, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[k], NULL, pusher_main, &p[k]), 0);
    }
    ck_assert_int_eq(pthread_create(&th[PUSHERS], NULL, looker_main, &l), 0);
    chain_t c = {0};
    for (int round = 0; round < 12; round++) {
        uint64_t before[PUSHERS], after[PUSHERS];
        for (int k = 0; k < PUSHERS; k++)
            before[k] = __atomic_load_n(&p[k].acked, __ATOMIC_ACQUIRE);
        cqr_export_opts_t o = {.since = c.uid == cqr_table_uid(t) ? c.cursor
                                                                  : 0};
        cqr_export_t *x;
        ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
        /* A push may be applied before the export yet acknowledged to
         * its pusher only after: the bound is the pushes begun. */
        for (int k = 0; k < PUSHERS; k++)
            after[k] = __atomic_load_n(&p[k].started, __ATOMIC_ACQUIRE);
        chain_apply(&c, x);
        cqr_export_free(x);
        cqr_table_t *u = chain_import(&c, 0);
            cqr_table_stats_t st;
        cqr_table_stats(u, &st);
        uint64_t known = 0;
        for (int k = 0; k < PUSHERS; k++) {
            uint64_t ids[4];
            float v[16];
            ids[0] = id_a(k);
            ids[1] = id_b(k);
            ck_assert_int_eq(cqr_table_lookup(u, ids, 2, v), 0);
            uint64_t ck = (uint64_t)v[0];
            ck_assert_msg(v[0] == v[4], "pusher %d: A %g B %g: torn push", k,
                          v[0], v[4]);
            ck_assert_msg(before[k] <= ck && ck <= after[k],
                          "pusher %d: %llu not in [%llu, %llu]", k,
                          (unsigned long long)ck,
                          (unsigned long long)before[k],
                          (unsigned long long)after[k]);
            if (ck > 0) {
                ids[2] = id_n(k, ck - 1);
                ids[3] = id_n(k, 0);
                ck_assert_int_eq(cqr_table_lookup(u, ids + 2, 2, v), 0);
                ck_assert(v[0] == 1.0f && v[4] == 1.0f);
            }
            known += ck ? 2 + ck : 0;
        }
        ck_assert_uint_eq(st.known_ids, known);
        cqr_table_destroy(u);
    }
    for (int k = 0; k < PUSHERS; k++)
        __atomic_store_n(&p[k].stop, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&l.stop, 1, __ATOMIC_RELAXED);
    for (int k = 0; k <= PUSHERS; k++)
        pthread_join(th[k], NULL);
    cqr_persist_stats_t ps;
    cqr_persist_stats(t, &ps);
    ck_assert_uint_eq(ps.exports, 12);
    ck_assert(ps.max_pause_seconds >= ps.last_pause_seconds);
    /* Quiet now: the chain equals the table. */
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert(digest(u) == digest(t));
    cqr_table_destroy(u);
    cqr_table_destroy(t);
    chain_free(&c);
}
END_TEST

/* A cqr table exported while pushes with new IDs, lookups and a phase
 * run at once: every export imports, and the last one equals the table. */
typedef struct phaser {
    cqr_table_t *t;
    int phases;
} phaser_t;

static void *phaser_main(void *arg)
{
    phaser_t *ph = arg;
    for (int i = 0; i < ph->phases; i++)
        ck_assert_int_eq(cqr_table_cluster(ph->t, NULL, NULL, NULL), 0);
    return NULL;
}

START_TEST(test_concurrent_cqr_phase)
{
    cqr_table_t *t = make(CQR_KIND_CQR, CQR_OPT_ADAGRAD, 8, 32, 2);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 1);
    push_random(t, &rng, 20, 128, 0, 5000);
    pusher_t p[2];
    pthread_t th[4];
    looker_t l = {t, 0};
    phaser_t ph = {t, 3};
    for (int k = 0; k < 2; k++) {
        p[k] = (pusher_t){t, k, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[k], NULL, pusher_main, &p[k]), 0);
    }
    ck_assert_int_eq(pthread_create(&th[2], NULL, looker_main, &l), 0);
    ck_assert_int_eq(pthread_create(&th[3], NULL, phaser_main, &ph), 0);
    chain_t c = {0};
    for (int round = 0; round < 10; round++) {
        chain_export(&c, t);
        cqr_table_t *u = chain_import(&c, 0);
            cqr_table_destroy(u);
    }
    pthread_join(th[3], NULL);
    for (int k = 0; k < 2; k++)
        __atomic_store_n(&p[k].stop, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&l.stop, 1, __ATOMIC_RELAXED);
    for (int k = 0; k < 3; k++)
        pthread_join(th[k], NULL);
    chain_export(&c, t);
    cqr_table_t *u = chain_import(&c, 0);
    ck_assert(digest(u) == digest(t));
    cqr_table_destroy(u);
    cqr_table_destroy(t);
    chain_free(&c);
}
END_TEST

/* Damaged, missing, reordered or foreign segments are refused. */
START_TEST(test_import_rejects)
{
    cqr_table_t *t = make(CQR_KIND_CQR, CQR_OPT_ADAM, 8, 16, 4);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 2);
    push_random(t, &rng, 5, 64, 0, 1000);
    cqr_export_opts_t o = {0};
    cqr_export_t *x;
    ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
    ck_assert_uint_ge(x->nseg, 4);
    cqr_import_t *im;
    cqr_table_t *u = NULL;

    /* A flipped byte anywhere is a checksum failure. */
    for (size_t i = 0; i < x->nseg; i++) {
        cqr_segment_t *s = &x->seg[i];
        size_t pos = (size_t)(cqr_mix64(i) % s->len);
        ck_assert_int_eq(cqr_segment_verify(s->data, s->len, NULL), 0);
        s->data[pos] ^= 0x10;
        ck_assert_int_ne(cqr_segment_verify(s->data, s->len, NULL), 0);
        ck_assert_int_eq(cqr_import_begin(&im), 0);
        int rc = 0;
        for (size_t j = 0; j < x->nseg && rc == 0; j++)
            rc = cqr_import_segment(im, x->seg[j].data, x->seg[j].len);
        ck_assert_int_eq(rc, CQR_ECORRUPT);
        ck_assert_ptr_nonnull(strstr(cqr_import_error(im), "checksum"));
        cqr_import_abort(im);
        s->data[pos] ^= 0x10;
    }
    /* A missing page. */
    ck_assert_int_eq(cqr_import_begin(&im), 0);
    for (size_t j = 0; j + 1 < x->nseg; j++)
        ck_assert_int_eq(cqr_import_segment(im, x->seg[j].data, x->seg[j].len),
                         0);
    ck_assert_int_eq(cqr_import_finish(im, &u, NULL), CQR_ECORRUPT);
    /* Pages before the meta; a page twice. */
    ck_assert_int_eq(cqr_import_begin(&im), 0);
    ck_assert_int_eq(cqr_import_segment(im, x->seg[0].data, x->seg[0].len), 0);
    ck_assert_int_eq(cqr_import_segment(im, x->seg[2].data, x->seg[2].len),
                     CQR_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(cqr_import_error(im), "expected meta"));
    cqr_import_abort(im);
    ck_assert_int_eq(cqr_import_begin(&im), 0);
    for (size_t j = 0; j < 3; j++)
        ck_assert_int_eq(cqr_import_segment(im, x->seg[j].data, x->seg[j].len),
                         0);
    ck_assert_int_eq(cqr_import_segment(im, x->seg[2].data, x->seg[2].len),
                     CQR_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(cqr_import_error(im), "two bases"));
    cqr_import_abort(im);
    /* A truncated segment. */
    ck_assert_int_eq(cqr_import_begin(&im), 0);
    ck_assert_int_eq(cqr_import_segment(im, x->seg[0].data, x->seg[0].len - 1),
                     CQR_ECORRUPT);
    cqr_import_abort(im);
    /* A cursor from elsewhere. */
    cqr_export_opts_t bad = {.since = 1u << 30};
    cqr_export_t *y;
    ck_assert_int_eq(cqr_table_export(t, &bad, &y), CQR_EINVAL);
    cqr_export_free(x);
    cqr_table_destroy(t);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("persist");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_roundtrip_all_kinds);
    tcase_add_test(tc, test_roundtrip_edges);
    tcase_add_test(tc, test_incremental_chain);
    tcase_add_test(tc, test_records_start_at_first_export);
    tcase_add_test(tc, test_incremental_size);
    tcase_add_test(tc, test_export_during_phase);
    tcase_add_test(tc, test_concurrent_consistency);
    tcase_add_test(tc, test_concurrent_cqr_phase);
    tcase_add_test(tc, test_import_rejects);
    suite_add_tcase(s, tc);
    return s;
}
