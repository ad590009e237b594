/* table_push.c -- pushes: plain and pooled, every kind.
 *
 * A push checks its gradients, finds every ID's rows (registering new
 * IDs through table_known.c), logs itself if a cluster phase is running,
 * sums the gradients per row in first-seen order and steps each row once
 * with its optimizer (rows.h). Large pushes are split over the table's
 * helpers (par.h) with bit-identical results.
 */
#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "scratch.h"
#include "table_impl.h"

/* Sums gradients by row key in first-seen order (deterministic). Keys
 * below `dense` (codebook pushes: codebook x k + row, a few thousand to
 * a few hundred thousand keys) find their sum through a dense index, the
 * others through a small hash table. */
typedef struct agg {
    uint64_t *hkeys; /* hash slots: key, or UINT64_MAX when empty */
    uint32_t *hidx;  /* slot -> unique index */
    size_t mask;     /* slots - 1 (a power of two) */
    uint32_t *didx;  /* dense: key -> unique index, UINT32_MAX if none */
    uint64_t *ukeys; /* unique keys in first-seen order */
    float *acc;      /* nu x w summed gradients */
    size_t nu;       /* unique keys so far */
    uint32_t w;      /* floats per row */
} agg_t;

/* Keys up to this many use the dense index (4 MiB of it per thread). */
#define AGG_DENSE_MAX ((size_t)1 << 20)

/* Sets up a for at most maxent additions; keys < dense_keys (if not 0)
 * go through the dense index. */
static int agg_init(agg_t *a, size_t maxent, uint32_t w, size_t dense_keys)
{
    a->didx = NULL;
    a->hkeys = NULL;
    a->hidx = NULL;
    a->mask = 0;
    if (dense_keys > 0 && dense_keys <= AGG_DENSE_MAX) {
        a->didx = cqr_scratch_dense(dense_keys);
        if (!a->didx)
            return CQR_ENOMEM;
    } else {
        size_t slots = 16;
        while (slots < 2 * maxent)
            slots <<= 1;
        a->hkeys = cqr_scratch(CQR_SCRATCH_AGG_HKEYS,
                               slots * sizeof(uint64_t));
        a->hidx = cqr_scratch(CQR_SCRATCH_AGG_HIDX, slots * sizeof(uint32_t));
        if (!a->hkeys || !a->hidx)
            return CQR_ENOMEM;
        memset(a->hkeys, 0xff, slots * sizeof(uint64_t));
        a->mask = slots - 1;
    }
    a->ukeys = cqr_scratch(CQR_SCRATCH_AGG_UKEYS, maxent * sizeof(uint64_t));
    a->acc = cqr_scratch(CQR_SCRATCH_AGG_ACC,
                         maxent * (size_t)w * sizeof(float));
    if (!a->ukeys || !a->acc)
        return CQR_ENOMEM;
    a->nu = 0;
    a->w = w;
    return 0;
}

/* Puts the dense index back to all UINT32_MAX (k: rows per codebook, as
 * in cb_add). Must follow every dense use of agg_init that added keys. */
static void agg_done(agg_t *a, uint32_t k)
{
    if (!a->didx)
        return;
    for (size_t u = 0; u < a->nu; u++)
        a->didx[(a->ukeys[u] >> 32) * k + (uint32_t)a->ukeys[u]] =
            UINT32_MAX;
}

static inline void acc_add(float *acc, const float *g, uint32_t w)
{
    uint32_t j = 0;
    for (; j + 4 <= w; j += 4)
        cqr_f4_store(acc + j, cqr_f4_load(acc + j) + cqr_f4_load(g + j));
    for (; j < w; j++)
        acc[j] += g[j];
}

static inline void agg_new(agg_t *a, uint64_t key, const float *g)
{
    a->ukeys[a->nu] = key;
    memcpy(a->acc + a->nu * a->w, g, a->w * sizeof(float));
    a->nu++;
}

/* Dense: `pos` is the key's dense position. */
static inline void agg_add_dense(agg_t *a, size_t pos, uint64_t key,
                                 const float *g)
{
    uint32_t u = a->didx[pos];
    if (u != UINT32_MAX) {
        acc_add(a->acc + (size_t)u * a->w, g, a->w);
        return;
    }
    a->didx[pos] = (uint32_t)a->nu;
    agg_new(a, key, g);
}

static void agg_add(agg_t *a, uint64_t key, const float *g)
{
    size_t s = (size_t)cqr_mix64(key) & a->mask;
    while (a->hkeys[s] != UINT64_MAX && a->hkeys[s] != key)
        s = (s + 1) & a->mask;
    if (a->hkeys[s] == key) {
        acc_add(a->acc + (size_t)a->hidx[s] * a->w, g, a->w);
        return;
    }
    a->hkeys[s] = key;
    a->hidx[s] = (uint32_t)a->nu;
    agg_new(a, key, g);
}

/* A codebook push's key (codebook index, row) and its dense position. */
static inline void cb_add(agg_t *a, uint32_t k, uint32_t blk, uint32_t row,
                          const float *g)
{
    uint64_t key = (uint64_t)blk << 32 | row;
    if (a->didx)
        agg_add_dense(a, (size_t)blk * k + row, key, g);
    else
        agg_add(a, key, g);
}

/* Keys of a codebook push: every (codebook, row). */
static inline size_t cb_dense_keys(const cqr_table_t *t)
{
    return (size_t)t->ncb * t->c * t->k;
}

static inline int cb_prefetch(const cqr_table_t *t)
{
    return t->cfg.kind == CQR_KIND_CQR;
}

/* A codebook push runs in two passes, each split over the helpers when
 * there are any: resolve (by ID ranges) finds every ID's row in each
 * codebook, ptrs[j * nb + blk] for the nb = ncb x c codebooks (learned
 * pointers first, then hashed ones); apply (by chunks) sums the
 * gradients per row and steps the rows. The map is probed once per ID
 * whatever the number of parts. */
static size_t cb_resolve_range(const cqr_table_t *t, const cqr_cbstate_t *st,
                               const uint64_t *ids, size_t b, size_t e,
                               uint32_t *ptrs)
{
    const uint32_t nb = t->ncb * t->c;
    uint32_t p[CQR_MAX_CHUNKS], h[CQR_MAX_CHUNKS];
    size_t unknown = 0;
    const size_t ahead = CQR_LOOKUP_GROUP;
    for (size_t j = b; cb_prefetch(t) && j < e && j < b + ahead; j++)
        cqr_idmap_prefetch(&st->ids, ids[j]);
    for (size_t j = b; j < e; j++) {
        if (cb_prefetch(t) && j + ahead < e)
            cqr_idmap_prefetch(&st->ids, ids[j + ahead]);
        unknown += !cqr_cb_pointers(t, st, ids[j], p, h);
        uint32_t *out = ptrs + j * nb;
        if (t->ncb == 2) {
            memcpy(out, p, t->c * sizeof *p);
            memcpy(out + t->c, h, t->c * sizeof *h);
        } else {
            memcpy(out, h, t->c * sizeof *h);
        }
    }
    return unknown;
}

/* Applies a push's gradients to the codebooks of chunks [c0, c1): sums
 * them per row in `a` (set up for those chunks, empty), steps each row
 * once, marks them, and empties a's dense index again. */
static void cb_apply_chunks(cqr_table_t *t, cqr_cbstate_t *st,
                            const cqr_optim_config_t *o,
                            const uint32_t *ptrs, const float *grads,
                            size_t n, uint32_t c0, uint32_t c1, agg_t *a)
{
    const uint32_t dim = t->cfg.dim, nb = t->ncb * t->c;
    for (size_t j = 0; j < n; j++) {
        const float *g = grads + j * dim;
        const uint32_t *pj = ptrs + j * nb;
        for (uint32_t i = c0; i < c1; i++) {
            const float *gc = g + (size_t)i * t->w;
            cb_add(a, t->k, i, pj[i], gc);
            if (t->ncb == 2)
                cb_add(a, t->k, t->c + i, pj[t->c + i], gc);
        }
    }
    /* Marks are the table's, whichever state is stepped: a phase's
     * replay onto its private state stamps them too, harmlessly, since
     * its commit marks every codebook changed anyway. */
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    for (size_t u = 0; u < a->nu; u++) {
        uint32_t blk = (uint32_t)(a->ukeys[u] >> 32);
        uint32_t row = (uint32_t)a->ukeys[u];
        cqr_rows_step(&st->cb[blk], row, a->acc + u * a->w, o);
        cqr_mark(&t->cbmark[(size_t)blk * t->k + row], e);
        cqr_mark(&t->cbpage[(size_t)blk * t->cbpages +
                            (row >> CQR_CB_PAGE_SHIFT)], e);
    }
    agg_done(a, t->k);
}

typedef struct cb_job {
    cqr_table_t *t;
    cqr_cbstate_t *st;
    const cqr_optim_config_t *o;
    const float *grads;
    size_t n;
    uint32_t *ptrs;
    const agg_t *base; /* the caller's scratch, split between the parts */
    unsigned parts;
} cb_job_t;

static void cb_apply_part(void *arg, unsigned i)
{
    cb_job_t *j = arg;
    const cqr_table_t *t = j->t;
    uint32_t c0 = (uint32_t)((uint64_t)t->c * i / j->parts);
    uint32_t c1 = (uint32_t)((uint64_t)t->c * (i + 1) / j->parts);
    /* Chunks [c0, c1) add at most n x ncb x (c1 - c0) rows: their slice of
     * the caller's keys and sums; the dense index is shared, since the
     * parts' codebooks (hence positions) are disjoint. */
    agg_t a = *j->base;
    size_t off = j->n * t->ncb * c0;
    a.ukeys += off;
    a.acc += off * a.w;
    a.nu = 0;
    cb_apply_chunks(j->t, j->st, j->o, j->ptrs, j->grads, j->n, c0, c1, &a);
}

/* This thread's room for a push's rows per ID: every codebook's row of
 * each ID (codebook kinds), or each ID's row (full). */
static uint32_t *id_rows(const cqr_table_t *t, size_t n)
{
    size_t per = t->ncb ? (size_t)t->ncb * t->c : 1;
    return cqr_scratch(CQR_SCRATCH_ID_ROWS,
                       (n ? n : 1) * per * sizeof(uint32_t));
}

static size_t resolve_rows(cqr_table_t *t, const cqr_cbstate_t *st,
                           const uint64_t *ids, size_t n, uint32_t *rows);

/* The apply pass over resolved rows. */
static void cb_apply_resolved(cqr_table_t *t, cqr_cbstate_t *st,
                              const cqr_optim_config_t *o, uint32_t *ptrs,
                              const float *grads, size_t n)
{
    agg_t a;
    int rc = agg_init(&a, n * t->c * t->ncb, t->w, cb_dense_keys(t));
    assert(rc == 0 && "out of memory for push scratch");
    (void)rc;
    unsigned helpers = cqr_par_helpers(t->par);
    if (helpers && n >= CQR_PAR_MIN && t->c >= 2 && a.didx) {
        cb_job_t j = {.t = t, .st = st, .o = o, .grads = grads, .n = n,
                      .ptrs = ptrs,
                      .base = &a,
                      .parts = helpers + 1 < t->c ? helpers + 1 : t->c};
        cqr_par_run(t->par, j.parts, cb_apply_part, &j);
    } else
        cb_apply_chunks(t, st, o, ptrs, grads, n, 0, t->c, &a);
}

void cqr_cb_apply(cqr_table_t *t, cqr_cbstate_t *st,
                  const cqr_optim_config_t *o, const uint64_t *ids,
                  const float *grads, size_t n)
{
    uint32_t *ptrs = id_rows(t, n);
    assert(ptrs && "out of memory for push scratch");
    resolve_rows(t, st, ids, n, ptrs);
    cb_apply_resolved(t, st, o, ptrs, grads, n);
}

/* Steps the summed rows [u0, u1) of a full push. */
static void full_step_range(cqr_table_t *t, const agg_t *a, size_t u0,
                            size_t u1)
{
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    /* Rows are random over the whole table: prefetch a few steps ahead
     * (a step touches the row, its Adam moments, counters and mark). */
    enum { STEP_AHEAD = 8 };
    for (size_t u = u0; u < u1; u++) {
        uint32_t local, row = (uint32_t)a->ukeys[u];
        if (u + STEP_AHEAD < u1) {
            uint32_t nl, nrow = (uint32_t)a->ukeys[u + STEP_AHEAD];
            const cqr_rows_t *nb = cqr_full_block(t, nrow, &nl);
            cqr_rows_prefetch_step(nb, nl);
            __builtin_prefetch(&t->fmark[nrow >> CQR_FULL_BLOCK_SHIFT][nl], 1);
        }
        cqr_rows_t *blk = cqr_full_block(t, row, &local);
        cqr_rows_step(blk, local, a->acc + u * a->w, &t->cfg.optim);
        cqr_mark(&t->fmark[row >> CQR_FULL_BLOCK_SHIFT][local], e);
        cqr_mark(&t->fpage[row >> CQR_FULL_BLOCK_SHIFT], e);
    }
}

typedef struct full_job {
    cqr_table_t *t;
    const agg_t *a;
    unsigned parts;
} full_job_t;

static void full_part(void *arg, unsigned i)
{
    full_job_t *j = arg;
    size_t b, e;
    cqr_part_range(j->a->nu, j->parts, i, &b, &e);
    full_step_range(j->t, j->a, b, e);
}

/* Finds the rows of ids[b, e) into rows[]; returns how many are
 * unknown (their rows[] entry is UINT32_MAX). */
static size_t full_resolve_range(const cqr_table_t *t, const uint64_t *ids,
                                 size_t b, size_t e, uint32_t *rows)
{
    size_t unknown = 0;
    for (size_t j = b; j < e && j < b + CQR_LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&t->rowmap, ids[j]);
    for (size_t j = b; j < e; j++) {
        if (j + CQR_LOOKUP_GROUP < e)
            cqr_idmap_prefetch(&t->rowmap, ids[j + CQR_LOOKUP_GROUP]);
        if (!cqr_full_find(t, ids[j], &rows[j])) {
            rows[j] = UINT32_MAX;
            unknown++;
        }
    }
    return unknown;
}

/* The resolve pass of a push, for every kind: finds the rows of every
 * ID (codebook kinds: in state st) into rows[], split over the helpers by
 * ID ranges, and returns how many IDs the table does not know (full and
 * cqr; a cqr ID's learned pointers are then its hashed ones). */
typedef struct resolve_job {
    cqr_table_t *t;
    const cqr_cbstate_t *st;
    const uint64_t *ids;
    uint32_t *rows;
    size_t n;
    unsigned parts;
    size_t unknown; /* atomic */
} resolve_job_t;

static size_t resolve_range(const resolve_job_t *j, size_t b, size_t e)
{
    if (j->t->cfg.kind == CQR_KIND_FULL)
        return full_resolve_range(j->t, j->ids, b, e, j->rows);
    return cb_resolve_range(j->t, j->st, j->ids, b, e, j->rows);
}

static void resolve_part(void *arg, unsigned i)
{
    resolve_job_t *j = arg;
    size_t b, e;
    cqr_part_range(j->n, j->parts, i, &b, &e);
    size_t u = resolve_range(j, b, e);
    if (u)
        __atomic_fetch_add(&j->unknown, u, __ATOMIC_RELAXED);
}

static size_t resolve_rows(cqr_table_t *t, const cqr_cbstate_t *st,
                           const uint64_t *ids, size_t n, uint32_t *rows)
{
    resolve_job_t j = {t, st, ids, rows, n, cqr_range_parts(t, n), 0};
    if (!j.parts)
        return resolve_range(&j, 0, n);
    cqr_par_run(t->par, j.parts, resolve_part, &j);
    return j.unknown;
}

/* Sums the gradients per row (first-seen order), then steps each row. */
static void full_apply_rows(cqr_table_t *t, const uint32_t *rows,
                            const float *grads, size_t n)
{
    agg_t a;
    const uint32_t dim = t->cfg.dim;
    int rc = agg_init(&a, n, dim, 0);
    assert(rc == 0 && "out of memory for push scratch");
    (void)rc;
    for (size_t j = 0; j < n; j++) {
        assert(rows[j] != UINT32_MAX);
        agg_add(&a, rows[j], grads + j * dim);
    }
    /* The rows are distinct: parts step disjoint rows. */
    unsigned parts = cqr_range_parts(t, a.nu);
    if (parts) {
        full_job_t j = {t, &a, parts};
        cqr_par_run(t->par, j.parts, full_part, &j);
    } else
        full_step_range(t, &a, 0, a.nu);
}


static int push_impl(cqr_table_t *t, const uint64_t *ids, const float *grads,
                     size_t n, uint64_t examples)
{
    /* A float is NaN or Inf exactly when its exponent bits are all ones:
     * an integer test that vectorises, with no branch per float. */
    const size_t nf = n * t->cfg.dim;
    uint32_t nonfinite = 0;
    for (size_t j = 0; j < nf; j++) {
        uint32_t b;
        memcpy(&b, &grads[j], sizeof b);
        nonfinite |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (nonfinite)
        return CQR_ENONFINITE;
    const int track = t->cfg.kind == CQR_KIND_FULL ||
                      t->cfg.kind == CQR_KIND_CQR;
    /* Reserve this thread's scratch now, so that the apply below cannot
     * fail halfway through a push. */
    agg_t a;
    int rc = t->cfg.kind == CQR_KIND_FULL
                 ? agg_init(&a, n, t->cfg.dim, 0)
                 : agg_init(&a, n * t->c * t->ncb, t->w, cb_dense_keys(t));
    if (rc)
        return rc;
    uint32_t *rows = id_rows(t, n);
    if (!rows)
        return CQR_ENOMEM;
    const int full = t->cfg.kind == CQR_KIND_FULL;
    /* The gate makes the push one step for an export: wholly before its
     * copy or wholly after it, counters included. */
    pthread_rwlock_rdlock(&t->gate);
    for (;;) {
        /* Finding every ID's rows (the map probes: cache misses, split
         * over the helpers) also tells whether some are new. */
        pthread_rwlock_rdlock(&t->lock);
        size_t unknown = resolve_rows(t, t->st, ids, n, rows);
        if (!track || unknown == 0)
            break;
        /* New IDs: register them exclusively, then apply under the
         * shared lock. A phase commit in between may swap in a map
         * without them, hence the loop. */
        pthread_rwlock_unlock(&t->lock);
        pthread_rwlock_wrlock(&t->lock);
        rc = cqr_table_add_known(t, ids, n);
        pthread_rwlock_unlock(&t->lock);
        if (rc)
            goto out;
    }
    if (t->log) {
        /* A running phase replays it onto its new state. */
        rc = cqr_pushlog_append(t->log, ids, grads, n);
        if (rc) {
            pthread_rwlock_unlock(&t->lock);
            goto out;
        }
    }
    if (full)
        full_apply_rows(t, rows, grads, n);
    else
        cb_apply_resolved(t, t->st, &t->cfg.optim, rows, grads, n);
    pthread_rwlock_unlock(&t->lock);
    __atomic_fetch_add(&t->n_pushes, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->n_examples, examples, __ATOMIC_RELAXED);
out:
    pthread_rwlock_unlock(&t->gate);
    return rc;
}

int cqr_table_push(cqr_table_t *t, const uint64_t *ids, const float *grads,
                   size_t n)
{
    if (!t || (n && (!ids || !grads)))
        return CQR_EINVAL;
    if (n == 0)
        return 0;
    return push_impl(t, ids, grads, n, n);
}

int cqr_table_push_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                          const uint32_t *offsets, size_t nbags,
                          cqr_pooling_t pool, const float *bag_grads)
{
    if (!t || (n && !ids) || (nbags && !bag_grads) ||
        (unsigned)pool > CQR_POOL_MEAN)
        return CQR_EINVAL;
    int rc = cqr_bags_check(offsets, nbags, n);
    if (rc)
        return rc;
    if (nbags == 0)
        return n ? CQR_EINVAL : 0;
    const uint32_t dim = t->cfg.dim;
    for (size_t j = 0; j < nbags * dim; j++) {
        if (!isfinite(bag_grads[j]))
            return CQR_ENONFINITE;
    }
    if (n == 0)
        return 0;
    float *g = cqr_scratch(CQR_SCRATCH_POOL_GRADS, n * dim * sizeof(float));
    if (!g)
        return CQR_ENOMEM;
    for (size_t b = 0; b < nbags; b++) {
        size_t lo = offsets[b], hi = cqr_bag_end(offsets, nbags, n, b);
        float scale = pool == CQR_POOL_MEAN && hi > lo
                          ? 1.0f / (float)(hi - lo) : 1.0f;
        const float *gb = bag_grads + b * dim;
        for (size_t j = lo; j < hi; j++) {
            for (uint32_t d = 0; d < dim; d++)
                g[j * dim + d] = gb[d] * scale;
        }
    }
    return push_impl(t, ids, g, n, nbags);
}
