/* table_push.c -- pushes: plain and pooled, every kind.
 *
 * A push checks its gradients, finds every ID's rows (registering new
 * IDs through table_known.c), logs itself if a cluster phase is running,
 * sums the gradients per row in first-seen order and steps each row once
 * with its optimizer (rows.h). Large pushes are split over the table's
 * helpers (par.h) with bit-identical results.
 */
#include <float.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
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

/* Makes sure agg_init(a, maxent, w, dense_keys) will not allocate: this
 * thread's scratch grows to what it asks for (scratch only grows). */
static int agg_reserve(size_t maxent, uint32_t w, size_t dense_keys)
{
    if (dense_keys > 0 && dense_keys <= AGG_DENSE_MAX) {
        if (!cqr_scratch_dense(dense_keys))
            return CQR_ENOMEM;
    } else {
        size_t slots = 16;
        while (slots < 2 * maxent)
            slots <<= 1;
        if (!cqr_scratch(CQR_SCRATCH_AGG_HKEYS, slots * sizeof(uint64_t)) ||
            !cqr_scratch(CQR_SCRATCH_AGG_HIDX, slots * sizeof(uint32_t)))
            return CQR_ENOMEM;
    }
    if (!cqr_scratch(CQR_SCRATCH_AGG_UKEYS, maxent * sizeof(uint64_t)) ||
        !cqr_scratch(CQR_SCRATCH_AGG_ACC, maxent * (size_t)w * sizeof(float)))
        return CQR_ENOMEM;
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

/* A codebook push runs in two passes, each split over the helpers when
 * there are any: resolve (by ID ranges) finds every ID's row in each
 * codebook, ptrs[j * nb + blk] for the nb = ncb x c codebooks (learned
 * pointers first, then hashed ones); apply (by chunks) sums the
 * gradients per row and steps the rows. The map is probed once per ID
 * whatever the number of parts. */
typedef struct resolve_ctx {
    const cqr_table_t *t;
    const cqr_cbstate_t *st;
    const uint64_t *ids;
    uint32_t *ptrs;     /* the range's first ID's pointers */
    size_t unknown;     /* IDs that need the exclusive path */
} resolve_ctx_t;

/* cqr_cqr_resolve's callback: ID j's B0 pointers and B1 rows. */
static void resolve_one(void *ud, size_t j, const uint32_t *p, int known,
                        const uint8_t *v)
{
    resolve_ctx_t *x = ud;
    const cqr_table_t *t = x->t;
    uint32_t *out = x->ptrs + j * (size_t)t->ncb * t->c;
    memcpy(out, p, t->c * sizeof *p);
    for (uint32_t i = 0; i < t->c; i++)
        out[t->c + i] = cqr_hash_h(t, x->st, x->ids[j], i);
    /* IDs to admit now, and (eviction on) stale stamps. */
    x->unknown += cqr_needs_known(t, known, v, x->ids[j]);
}

static size_t cb_resolve_range(const cqr_table_t *t, const cqr_cbstate_t *st,
                               const uint64_t *ids, size_t b, size_t e,
                               uint32_t *ptrs)
{
    const uint32_t nb = t->ncb * t->c;
    if (t->cfg.kind == CQR_KIND_CQR) {
        resolve_ctx_t x = {t, st, ids + b, ptrs + b * nb, 0};
        cqr_cqr_resolve(t, st, ids + b, e - b, resolve_one, &x);
        return x.unknown;
    }
    uint32_t p[CQR_MAX_CHUNKS], h[CQR_MAX_CHUNKS];
    for (size_t j = b; j < e; j++) {
        cqr_cb_pointers(t, st, ids[j], p, h);
        uint32_t *out = ptrs + j * nb;
        if (t->ncb == 2) {
            memcpy(out, p, t->c * sizeof *p);
            memcpy(out + t->c, h, t->c * sizeof *h);
        } else {
            memcpy(out, h, t->c * sizeof *h);
        }
    }
    return 0;
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
 * each ID (codebook kinds), or each ID's row map slot (full: a uint64,
 * two entries). */
static uint32_t *id_rows(const cqr_table_t *t, size_t n)
{
    size_t per = t->ncb ? (size_t)t->ncb * t->c : 2;
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

/* Full tables: the slot of row map index i (the ID 0's at i == cap). */
static inline cqr_full_slot_t *full_slot_at(const cqr_table_t *t, uint64_t i)
{
    return (cqr_full_slot_t *)(void *)cqr_idmap_val_at(&t->rowmap, i);
}

/* A full push's key of fallback row r (IDs not admitted yet): apart from
 * every row map slot index. */
#define FULL_FB_KEY (UINT64_C(1) << 63)

/* Steps fallback row `key` of a full push. */
static void full_step_fallback(cqr_table_t *t, uint64_t key, const float *g,
                               uint32_t e)
{
    uint32_t r = (uint32_t)(key & ~FULL_FB_KEY);
    cqr_rows_step(t->fallback, r, g, &t->cfg.optim);
    cqr_mark(&t->fbmark[r], e);
    cqr_mark(&t->fbpage, e);
}

/* Steps the summed rows [u0, u1) of a full push (keys: row map slot
 * indices, one per row, or FULL_FB_KEY | fallback row). */
static void full_step_range(cqr_table_t *t, const agg_t *a, size_t u0,
                            size_t u1)
{
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    const uint32_t now = t->fstamp ? cqr_table_now(t) : 0;
    /* Rows are random over the whole table: prefetch a few steps ahead
     * (a step touches the row, its Adam moments, counters and mark). */
    enum { STEP_AHEAD = 8 };
    for (size_t u = u0; u < u1; u++) {
        if (a->ukeys[u] & FULL_FB_KEY) {
            full_step_fallback(t, a->ukeys[u], a->acc + u * a->w, e);
            continue;
        }
        cqr_full_slot_t *sl = full_slot_at(t, a->ukeys[u]);
        uint32_t local, row = sl->row;
        if (u + STEP_AHEAD < u1 && !(a->ukeys[u + STEP_AHEAD] & FULL_FB_KEY)) {
            uint32_t nl, nrow = full_slot_at(t, a->ukeys[u + STEP_AHEAD])->row;
            const cqr_rows_t *nb = cqr_full_block(t, nrow, &nl);
            cqr_rows_prefetch_step(nb, nl);
            __builtin_prefetch(&t->fmark[nrow >> CQR_FULL_BLOCK_SHIFT][nl], 1);
        }
        cqr_rows_t *blk = cqr_full_block(t, row, &local);
        cqr_rows_step_at(blk, local, &sl->seq, a->acc + u * a->w,
                         &t->cfg.optim);
        cqr_mark(&t->fmark[row >> CQR_FULL_BLOCK_SHIFT][local], e);
        cqr_mark(&t->fpage[row >> CQR_FULL_BLOCK_SHIFT], e);
        if (t->fstamp)
            cqr_mark(&t->fstamp[row >> CQR_FULL_BLOCK_SHIFT][local], now);
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

/* Finds the row map slots of ids[b, e) into slots[] (indices, as
 * cqr_idmap_index_of gives them; FULL_FB_KEY | fallback row for IDs not
 * admitted yet); returns how many need the exclusive path (their entry
 * is UINT64_MAX): IDs to admit now, and IDs whose row expired. */
static size_t full_resolve_range(const cqr_table_t *t, const uint64_t *ids,
                                 size_t b, size_t e, uint64_t *slots)
{
    size_t unknown = 0;
    const int ttl = t->cfg.ttl_seconds != 0;
    const uint32_t now = ttl ? cqr_table_now(t) : 0;
    for (size_t j = b; j < e && j < b + CQR_LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&t->rowmap, ids[j]);
    for (size_t j = b; j < e; j++) {
        if (j + CQR_LOOKUP_GROUP < e)
            cqr_idmap_prefetch(&t->rowmap, ids[j + CQR_LOOKUP_GROUP]);
        const cqr_full_slot_t *sl = cqr_full_find(t, ids[j]);
        if (sl && !(ttl && cqr_full_expired(t, sl->row, now))) {
            slots[j] = cqr_idmap_index_of(&t->rowmap, sl);
        } else if (!sl && !cqr_admit_ok(t, ids[j])) {
            slots[j] = FULL_FB_KEY | cqr_full_fb_row(t, ids[j]);
        } else {
            slots[j] = UINT64_MAX;
            unknown++;
        }
    }
    return unknown;
}

/* The resolve pass of a push, for every kind: finds the rows of every
 * ID (codebook kinds: in state st; full: their row map slots, as uint64
 * in rows[2j..2j+1]) into rows[], split over the helpers by ID ranges,
 * and returns how many IDs the table does not know (full and cqr; a cqr
 * ID's learned pointers are then its hashed ones). */
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
        return full_resolve_range(j->t, j->ids, b, e,
                                  (uint64_t *)(void *)j->rows);
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

/* Sums the gradients per row (first-seen order), then steps each row;
 * slots[] as full_resolve_range wrote them. */
static void full_apply_rows(cqr_table_t *t, const uint64_t *slots,
                            const float *grads, size_t n)
{
    agg_t a;
    const uint32_t dim = t->cfg.dim;
    int rc = agg_init(&a, n, dim, 0);
    assert(rc == 0 && "out of memory for push scratch");
    (void)rc;
    for (size_t j = 0; j < n; j++) {
        assert(slots[j] != UINT64_MAX);
        agg_add(&a, slots[j], grads + j * dim);
    }
    /* The rows are distinct: parts step disjoint rows. */
    unsigned parts = cqr_range_parts(t, a.nu);
    if (parts) {
        full_job_t j = {t, &a, parts};
        cqr_par_run(t->par, j.parts, full_part, &j);
    } else
        full_step_range(t, &a, 0, a.nu);
}

/* ---- pushes of one or several parts ------------------------------------
 * Every push, single or multi-table, goes through cqr_tables_push:
 *   check     every part's arguments, bags and gradients (nothing locked)
 *   prepare   pooled gradients spread to their IDs, this thread's scratch
 *             reserved for the largest part (the apply cannot fail)
 *   lock      every table's gate, then every table's lock (shared), in
 *             uid order (cqr_tableset_t)
 *   resolve   every part's rows; parts with IDs the table does not know
 *             register them (exclusive lock, one table at a time) and the
 *             locks are taken again, until no part has unknown IDs
 *   log       every part whose table runs a phase reserves its log entry;
 *             all are published only when all are reserved
 *   apply     the parts in order, each split over its table's helpers
 * so that a refusal at any stage leaves every table's rows unchanged. */

/* The largest sign-cleared bits of g[0..nf): an integer max, ordered as
 * the magnitudes for finite floats and above them for Inf and NaN. */
static uint32_t bits_max(const float *g, size_t nf, uint32_t m)
{
    for (size_t j = 0; j < nf; j++) {
        uint32_t b;
        memcpy(&b, &g[j], sizeof b);
        b &= 0x7fffffffu;
        m = b > m ? b : m;
    }
    return m;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* bits_max over whole blocks of 16 floats, 8 wide, picked at run time:
 * Debian builds for baseline x86-64, which has no unsigned 32-bit max,
 * and the scalar loop (a compare and a move per float, each waiting for
 * the last) was 12% of a push's server time at batch 4096, dim 64.
 * *done gets the floats covered. */
__attribute__((target("avx2"))) static uint32_t
bits_max_avx2(const float *g, size_t nf, size_t *done)
{
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    size_t j = 0;
    for (; j + 16 <= nf; j += 16) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)(g + j));
        __m256i b =
            _mm256_loadu_si256((const __m256i *)(const void *)(g + j + 8));
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(a, mask));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(b, mask));
    }
    uint32_t l[8];
    _mm256_storeu_si256((__m256i *)(void *)l, _mm256_max_epu32(m0, m1));
    uint32_t m = 0;
    for (int k = 0; k < 8; k++)
        m = l[k] > m ? l[k] : m;
    *done = j;
    return m;
}
#define PUSH_HAVE_AVX2 1
#endif

/* The largest magnitude of g[0..nf), or Inf/NaN's bits when one is not
 * finite (bits_max), with no branch per float. */
static float grads_max(const float *g, size_t nf)
{
    uint32_t m = 0;
    size_t done = 0;
#ifdef PUSH_HAVE_AVX2
    if (nf >= 16 && __builtin_cpu_supports("avx2"))
        m = bits_max_avx2(g, nf, &done);
#endif
    if (nf > done) /* g is NULL when nf is 0 (a part with no IDs) */
        m = bits_max(g + done, nf - done, m);
    float f;
    memcpy(&f, &m, sizeof f);
    return f;
}
/* Rows of a part: IDs (plain) or bags (pooled). */
static size_t part_rows(const cqr_part_t *p)
{
    return p->offsets ? p->nbags : p->n;
}

/* Checks a part's arguments (not its table's state). */
static int part_check(const cqr_part_t *p, int push)
{
    if (!p->t || (p->n && !p->ids))
        return CQR_EINVAL;
    size_t rows = part_rows(p);
    if (rows && (push ? !p->grads : !p->out))
        return CQR_EINVAL;
    if (!p->offsets)
        return 0;
    if ((unsigned)p->pool > CQR_POOL_MEAN || (p->nbags == 0 && p->n > 0))
        return CQR_EINVAL;
    return cqr_bags_check(p->offsets, p->nbags, p->n);
}

/* What a push keeps per part between its stages. */
typedef struct push_st {
    const float *g;          /* n x dim gradients, one row per ID */
    uint32_t *rows;          /* the IDs' rows (id_rows layout) */
    cqr_pushlog_ent_t *ent;  /* the reserved log entry, or NULL */
    int unknown;             /* IDs to register before applying */
    float gmax;              /* largest |gradient| of the part */
} push_st_t;

/* Rows of a part in the id_rows layout (full: a uint64 row map slot an
 * ID, two entries), rounded up to even so that every part's rows start
 * 8-byte aligned. */
static size_t part_nrows(const cqr_part_t *p)
{
    const cqr_table_t *t = p->t;
    size_t per = t->ncb ? (size_t)t->ncb * t->c : 2;
    return ((p->n ? p->n : 1) * per + 1) & ~(size_t)1;
}

/* The prepare stage: pooled gradients spread to their IDs (in the
 * thread's pool scratch), room for every part's rows (the thread's rows
 * scratch), and the aggregation scratch of the largest part. */
static int push_prepare(const cqr_part_t *pp, size_t np, push_st_t *st)
{
    size_t pooled = 0, nrows = 0;
    for (size_t i = 0; i < np; i++) {
        if (pp[i].offsets)
            pooled += pp[i].n * pp[i].t->cfg.dim;
        nrows += part_nrows(&pp[i]);
    }
    float *g = NULL;
    if (pooled) {
        g = cqr_scratch(CQR_SCRATCH_POOL_GRADS, pooled * sizeof(float));
        if (!g)
            return CQR_ENOMEM;
    }
    uint32_t *rows = cqr_scratch(CQR_SCRATCH_ID_ROWS,
                                 nrows * sizeof(uint32_t));
    if (!rows)
        return CQR_ENOMEM;
    for (size_t i = 0; i < np; i++) {
        const cqr_part_t *p = &pp[i];
        const cqr_table_t *t = p->t;
        const uint32_t dim = t->cfg.dim;
        st[i].rows = rows;
        rows += part_nrows(p);
        st[i].ent = NULL;
        st[i].unknown = 0;
        if (!p->offsets) {
            st[i].g = p->grads;
        } else {
            for (size_t b = 0; b < p->nbags; b++) {
                size_t lo = p->offsets[b];
                size_t hi = cqr_bag_end(p->offsets, p->nbags, p->n, b);
                float scale = p->pool == CQR_POOL_MEAN && hi > lo
                                  ? 1.0f / (float)(hi - lo) : 1.0f;
                const float *gb = p->grads + b * dim;
                for (size_t j = lo; j < hi; j++)
                    for (uint32_t d = 0; d < dim; d++)
                        g[j * dim + d] = gb[d] * scale;
            }
            st[i].g = g;
            g += p->n * dim;
        }
        /* Scratch only grows: reserved for every part, it is there for
         * the largest, and the apply's own requests cannot fail. */
        int rc = t->cfg.kind == CQR_KIND_FULL
                     ? agg_reserve(p->n, dim, 0)
                     : agg_reserve(p->n * t->c * t->ncb, t->w,
                                   cb_dense_keys(t));
        if (rc)
            return rc;
    }
    return 0;
}

/* The resolve stage under every table's shared lock: 1 if some part has
 * IDs its table must register first (their st[i].unknown is set). */
static int push_resolve(const cqr_part_t *pp, size_t np, push_st_t *st)
{
    int any = 0;
    for (size_t i = 0; i < np; i++) {
        cqr_table_t *t = pp[i].t;
        const int track = t->cfg.kind == CQR_KIND_FULL ||
                          t->cfg.kind == CQR_KIND_CQR;
        size_t unknown = pp[i].n ? resolve_rows(t, t->st, pp[i].ids,
                                                pp[i].n, st[i].rows) : 0;
        st[i].unknown = track && unknown > 0;
        any |= st[i].unknown;
    }
    return any;
}

/* The log stage: every part whose table runs a phase reserves its
 * entry, or none does (*bad names the part refused). */
static int log_reserve(const cqr_part_t *pp, size_t np, push_st_t *st,
                       size_t *bad)
{
    int rc = 0;
    size_t i;
    for (i = 0; i < np && rc == 0; i++)
        if (pp[i].t->log && pp[i].n)
            rc = cqr_pushlog_reserve(pp[i].t->log, pp[i].ids, st[i].g,
                                     pp[i].n, &st[i].ent);
    if (rc == 0)
        return 0;
    *bad = i - 1;
    for (size_t k = 0; k + 1 < i; k++)
        if (st[k].ent)
            cqr_pushlog_cancel(pp[k].t->log, st[k].ent);
    return rc;
}

/* Publishes (a running phase replays them onto its new state) or cancels
 * the reserved entries. */
static void log_finish(const cqr_part_t *pp, size_t np, push_st_t *st,
                       int publish)
{
    for (size_t i = 0; i < np; i++) {
        if (!st[i].ent)
            continue;
        if (publish)
            cqr_pushlog_publish(pp[i].t->log, st[i].ent);
        else
            cqr_pushlog_cancel(pp[i].t->log, st[i].ent);
        st[i].ent = NULL;
    }
}

/* Counts a push of the IDs that still have no state of their own in the
 * admission sketch (admit_after > 1). Shared lock and gate held. */
static void sketch_count(cqr_table_t *t, const uint64_t *ids, size_t n)
{
    int any = 0;
    for (size_t j = 0; j < n; j++) {
        const int known = t->cfg.kind == CQR_KIND_FULL
                              ? cqr_full_find(t, ids[j]) != NULL
                              : cqr_cqr_known(t, t->st, ids[j]);
        if (!known) {
            cqr_sketch_add(t->sketch, ids[j]);
            any = 1;
        }
    }
    if (any)
        cqr_mark(&t->skmark, __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED));
}

static int push_locked(const cqr_part_t *pp, size_t np, push_st_t *st,
                       const cqr_tableset_t *set, size_t *bad)
{
    for (;;) {
        cqr_tableset_lock(set, 0);
        int unknown = push_resolve(pp, np, st);
        /* The logs are asked before any ID is registered, so that a full
         * log refuses a push that would otherwise leave new IDs behind. */
        int rc = log_reserve(pp, np, st, bad);
        if (rc) {
            cqr_tableset_unlock(set, 0);
            return rc;
        }
        if (!unknown)
            break;
        /* New IDs: register them exclusively, one table at a time (the
         * gates stay held), then resolve again under the shared locks:
         * a phase may begin, commit or end in between. */
        log_finish(pp, np, st, 0);
        cqr_tableset_unlock(set, 0);
        for (size_t i = 0; i < np; i++) {
            if (!st[i].unknown)
                continue;
            cqr_table_t *t = pp[i].t;
            pthread_rwlock_wrlock(&t->lock);
            rc = cqr_table_add_known(t, pp[i].ids, pp[i].n);
            pthread_rwlock_unlock(&t->lock);
            if (rc) {
                *bad = i;
                return rc;
            }
        }
    }
    log_finish(pp, np, st, 1);
    for (size_t i = 0; i < np; i++) {
        cqr_table_t *t = pp[i].t;
        if (!pp[i].n)
            continue;
        if (t->cfg.kind == CQR_KIND_FULL)
            full_apply_rows(t, (const uint64_t *)(void *)st[i].rows,
                            st[i].g, pp[i].n);
        else
            cb_apply_resolved(t, t->st, &t->cfg.optim, st[i].rows, st[i].g,
                              pp[i].n);
        if (t->sketch)
            sketch_count(t, pp[i].ids, pp[i].n);
    }
    cqr_tableset_unlock(set, 0);
    for (size_t i = 0; i < np; i++) {
        __atomic_fetch_add(&pp[i].t->n_pushes, pp[i].n, __ATOMIC_RELAXED);
        __atomic_fetch_add(&pp[i].t->n_examples, part_rows(&pp[i]),
                           __ATOMIC_RELAXED);
    }
    return 0;
}

/* Parts whose per-part state lives on the stack. */
#define PUSH_INLINE 8

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* How many times the most repeated of ids[0..n) occurs (n if there is no
 * memory to count: the safe side). Only a push near the value limits
 * asks. */
static size_t max_repeats(const uint64_t *ids, size_t n)
{
    uint64_t *s = malloc(n * sizeof *s);
    if (!s)
        return n;
    memcpy(s, ids, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_u64);
    size_t best = n ? 1 : 0, run = 1;
    for (size_t j = 1; j < n; j++) {
        run = s[j] == s[j - 1] ? run + 1 : 1;
        best = run > best ? run : best;
    }
    free(s);
    return best;
}

/* Rescans a part's table until its bounds are known when the part
 * reserves again (a phase that commits between the rescan and the retry
 * forgets them: retried up to this many times, then CQR_EBUSY). */
#define BOUND_TRIES 64

/* Reserves every part's worst-case step in its table's value bounds
 * (table_bound.c), gates held shared. A part that does not fit, or
 * whose table's bounds are unknown, has its table rescanned (the gates
 * let go meanwhile) and is tried again; CQR_ENONFINITE (with *bad) if it
 * does not fit the exact maxima. Reservations that were made stay: they
 * only make the bounds looser. */
static int bounds_reserve(const cqr_part_t *pp, size_t np,
                          const push_st_t *st, cqr_tableset_t *set,
                          size_t *bad)
{
    for (size_t i = 0; i < np; i++) {
        if (pp[i].n == 0)
            continue;
        int rc = cqr_bound_reserve(pp[i].t, st[i].gmax, pp[i].n);
        /* A full table's row sums only its own ID's gradients. */
        const size_t mult = rc > 0 && pp[i].t->cfg.kind == CQR_KIND_FULL
                                ? max_repeats(pp[i].ids, pp[i].n)
                                : pp[i].n;
        for (int k = 0; rc > 0 && k < BOUND_TRIES; k++) {
            if (rc == 1 && k > 0)
                break; /* the exact maxima leave no room */
            cqr_tableset_unlock(set, 1);
            cqr_bound_rescan(pp[i].t);
            cqr_tableset_lock(set, 1);
            rc = cqr_bound_reserve(pp[i].t, st[i].gmax, mult);
        }
        if (rc) {
            *bad = i;
            return rc == 2 ? CQR_EBUSY : CQR_ENONFINITE;
        }
    }
    return 0;
}

int cqr_tables_push(const cqr_part_t *pp, size_t np, size_t *bad)
{
    size_t badv = 0;
    if (!bad)
        bad = &badv;
    if (np && !pp)
        return CQR_EINVAL;
    for (size_t i = 0; i < np; i++) {
        int rc = part_check(&pp[i], 1);
        if (rc) {
            *bad = i;
            return rc;
        }
    }
    push_st_t inl[PUSH_INLINE];
    push_st_t *st = np <= PUSH_INLINE ? inl : malloc(np * sizeof *st);
    if (!st) {
        *bad = 0;
        return CQR_ENOMEM;
    }
    size_t live = 0; /* parts with IDs (a pooled part of empty bags has
                        none, and pushes nothing) */
    for (size_t i = 0; i < np; i++) {
        st[i].gmax = grads_max(pp[i].grads,
                               part_rows(&pp[i]) * pp[i].t->cfg.dim);
        if (!(st[i].gmax <= FLT_MAX)) {
            if (st != inl)
                free(st);
            *bad = i;
            return CQR_ENONFINITE;
        }
        live += pp[i].n > 0;
    }
    cqr_tableset_t set;
    int rc = live == 0 ? 0 : cqr_tableset_init(&set, pp, np);
    if (rc || live == 0) {
        if (st != inl)
            free(st);
        *bad = 0;
        return rc;
    }
    rc = push_prepare(pp, np, st);
    if (rc) {
        *bad = 0;
    } else {
        /* The gates make the push one step for an export: wholly before
         * its copy or wholly after it, counters included. */
        cqr_tableset_lock(&set, 1);
        rc = bounds_reserve(pp, np, st, &set, bad);
        if (rc == 0)
            rc = push_locked(pp, np, st, &set, bad);
        cqr_tableset_unlock(&set, 1);
    }
    cqr_tableset_free(&set);
    if (st != inl)
        free(st);
    return rc;
}

int cqr_table_push(cqr_table_t *t, const uint64_t *ids, const float *grads,
                   size_t n)
{
    cqr_part_t p = {.t = t, .ids = ids, .n = n, .grads = grads};
    return cqr_tables_push(&p, 1, NULL);
}

int cqr_table_push_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                          const uint32_t *offsets, size_t nbags,
                          cqr_pooling_t pool, const float *bag_grads)
{
    /* No bags: nothing to push (offsets may then be NULL). */
    if (nbags == 0)
        return t && (!n || ids) && (unsigned)pool <= CQR_POOL_MEAN && !n
                   ? 0 : CQR_EINVAL;
    cqr_part_t p = {.t = t, .ids = ids, .n = n, .offsets = offsets,
                    .nbags = nbags, .pool = pool, .grads = bag_grads};
    return cqr_tables_push(&p, 1, NULL);
}
