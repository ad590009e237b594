/* admit_util.c -- table helpers of the admission suites (see .h). */
#include "admit_util.h"

#include <check.h>
#include <stdlib.h>

cqr_table_t *admit_make(cqr_kind_t kind, uint64_t seed, uint32_t admit,
                        uint32_t evict, uint64_t max_ids, uint32_t ttl)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, ADMIT_DIM);
    if (kind != CQR_KIND_FULL)
        cfg.rows = 64;
    cfg.seed = seed;
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

void admit_push_ids(cqr_table_t *t, const uint64_t *ids, size_t n, float g)
{
    float *gr = malloc(n * ADMIT_DIM * sizeof *gr);
    for (size_t j = 0; j < n * ADMIT_DIM; j++)
        gr[j] = g;
    ck_assert_int_eq(cqr_table_push(t, ids, gr, n), 0);
    free(gr);
}

void admit_push_one(cqr_table_t *t, uint64_t id)
{
    admit_push_ids(t, &id, 1, 0.5f);
}

cqr_table_stats_t admit_stats(cqr_table_t *t)
{
    cqr_table_stats_t s;
    cqr_table_stats(t, &s);
    return s;
}

uint64_t admit_digest(cqr_table_t *t)
{
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(t, &d), 0);
    return d;
}

cqr_table_t *admit_restore(chain_t *c, cqr_table_t *t, cqr_table_t *prev)
{
    chain_export(c, t);
    cqr_table_t *v = chain_import(c, 0);
    ck_assert_uint_eq(admit_digest(v), admit_digest(t));
    cqr_table_stats_t st = admit_stats(t), sv = admit_stats(v);
    ck_assert_uint_eq(sv.ids_admitted, st.ids_admitted);
    ck_assert_uint_eq(sv.ids_evicted, st.ids_evicted);
    ck_assert_uint_eq(sv.known_ids, st.known_ids);
    if (prev)
        ck_assert_uint_eq(admit_digest(prev), admit_digest(t));
    cqr_table_destroy(prev);
    return v;
}
