/* table_lookup.c -- lookups: plain and pooled, every kind.
 *
 * A lookup takes the table's lock shared, never grows the table and never
 * waits for other lookups; rows are copied with their seqlocks (rows.h).
 * Large lookups are split by ID ranges over the table's helpers (par.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "scratch.h"
#include "table_impl.h"

/* Full tables: a three-stage pipeline over groups of CQR_LOOKUP_GROUP IDs.
 * While group g's rows are copied, group g+1's map slots are read and
 * its rows requested, and group g+2's map slots requested: every miss to
 * memory is in flight a whole group before it is needed. An ID costs its
 * map slot's line (ID, row index and the row's counter) and its row's
 * lines: five for 64 floats. */
static void full_lookup(const cqr_table_t *t, const uint64_t *ids, size_t n,
                        float *out)
{
    enum { G = CQR_LOOKUP_GROUP };
    const uint32_t dim = t->cfg.dim;
    const cqr_full_slot_t *slots[2][G];
    const size_t ngroups = (n + G - 1) / G;
    const int ttl = t->cfg.ttl_seconds != 0;
    const uint32_t now = ttl ? cqr_table_now(t) : 0;
    for (size_t k = 0; k < 2 * G && k < n; k++)
        cqr_idmap_prefetch(&t->rowmap, ids[k]);
    for (size_t g = 0; g <= ngroups; g++) {
        /* Stage 2 for group g: find slots, request their rows. */
        if (g < ngroups) {
            size_t base = g * G;
            size_t m = n - base < G ? n - base : G;
            const cqr_full_slot_t **r = slots[g & 1];
            for (size_t j = 0; j < m; j++) {
                if (base + j + 2 * G < n)
                    cqr_idmap_prefetch(&t->rowmap, ids[base + j + 2 * G]);
                uint32_t local = 0;
                r[j] = cqr_full_find(t, ids[base + j]);
                /* An expired row is gone (table_evict.c). */
                if (r[j] && ttl && cqr_full_expired(t, r[j]->row, now))
                    r[j] = NULL;
                if (r[j])
                    cqr_rows_prefetch(cqr_full_block(t, r[j]->row, &local),
                                      local);
            }
        }
        /* Stage 3 for group g-1: copy its rows. */
        if (g > 0) {
            size_t base = (g - 1) * G;
            size_t m = n - base < G ? n - base : G;
            const cqr_full_slot_t *const *r = (const cqr_full_slot_t *const *)
                slots[(g - 1) & 1];
            for (size_t j = 0; j < m; j++) {
                float *o = out + (base + j) * dim;
                if (r[j]) {
                    uint32_t local;
                    const cqr_rows_t *blk =
                        cqr_full_block(t, r[j]->row, &local);
                    cqr_rows_read_at(blk, local, &r[j]->seq, o);
                } else
                    cqr_full_absent_row(t, ids[base + j], o);
            }
        }
    }
}

/* cqr tables: one pipeline over the whole call. cqr_cqr_resolve requests
 * the static set's pilots and values and the map's slots 32 or 64 IDs
 * ahead and hands over each ID's B0 pointers in order; ID j's codebook
 * rows are requested then, and summed CQR_ROW_LAG IDs later (ID j's sum
 * is made when ID j + lag is handed over), so that the misses of the
 * static set, the map and the codebooks (32 MB at k = 65,536 and dim 64:
 * larger than the caches) are all in flight before they are needed. A
 * pipeline restarted for every block of IDs (as before) waited for the
 * first groups' pilots at each start: 1e8 compacted IDs looked up at 0.7x
 * the rate of 1e7 IDs in the map. */
#define CQR_ROW_LAG 16
/* Known-ID maps up to this size take the simple loop (lookup_locked). */
#define CQR_PIPE_MAP_BYTES (32u << 20)
#define CQR_PIPE_PTRS 2048 /* pointers the ring holds: lag x chunks */

typedef struct cqr_pipe {
    const cqr_table_t *t;
    const cqr_cbstate_t *st;
    const uint64_t *ids;
    float *out;
    size_t lag;   /* IDs between a row's request and its sum */
    size_t slot;  /* ring slot of the next ID handed over */
    uint32_t p[CQR_PIPE_PTRS]; /* B0 rows, ID by ID, in ring slots */
    uint32_t h[CQR_PIPE_PTRS]; /* B1 rows */
} cqr_pipe_t;

/* Sums the rows of ID j, held in ring slot `slot`. */
static void cqr_pipe_sum(const cqr_pipe_t *x, size_t j, size_t slot)
{
    const cqr_table_t *t = x->t;
    const cqr_cbstate_t *st = x->st;
    const uint32_t *p = x->p + slot * t->c, *h = x->h + slot * t->c;
    float *o = x->out + j * t->cfg.dim;
    for (uint32_t i = 0; i < t->c; i++)
        cqr_rows_read_sum(&st->cb[i], p[i], &st->cb[t->c + i], h[i],
                          o + (size_t)i * t->w);
}

static void cqr_pipe_one(void *ud, size_t j, const uint32_t *p, int known,
                         const uint8_t *v)
{
    (void)known;
    (void)v;
    cqr_pipe_t *x = ud;
    const cqr_table_t *t = x->t;
    const size_t slot = x->slot;
    if (j >= x->lag)
        cqr_pipe_sum(x, j - x->lag, slot);
    x->slot = slot + 1 == x->lag ? 0 : slot + 1;
    uint32_t *pj = x->p + slot * t->c, *hj = x->h + slot * t->c;
    for (uint32_t i = 0; i < t->c; i++) {
        pj[i] = p[i];
        hj[i] = cqr_hash_h(t, x->st, x->ids[j], i);
        cqr_rows_prefetch(&x->st->cb[i], pj[i]);
        cqr_rows_prefetch(&x->st->cb[t->c + i], hj[i]);
    }
}

static void cqr_lookup(const cqr_table_t *t, const uint64_t *ids, size_t n,
                       float *out)
{
    cqr_pipe_t x;
    x.t = t;
    x.st = t->st;
    x.ids = ids;
    x.out = out;
    x.lag = CQR_PIPE_PTRS / t->c < CQR_ROW_LAG ? CQR_PIPE_PTRS / t->c
                                                 : CQR_ROW_LAG;
    x.slot = 0;
    cqr_cqr_resolve(t, t->st, ids, n, cqr_pipe_one, &x);
    /* The last lag IDs: their rows were requested, not yet summed. */
    size_t j = n > x.lag ? n - x.lag : 0;
    size_t slot = n > x.lag ? x.slot : 0;
    for (; j < n; j++) {
        cqr_pipe_sum(&x, j, slot);
        slot = slot + 1 == x.lag ? 0 : slot + 1;
    }
}

static void lookup_locked(cqr_table_t *t, const uint64_t *ids, size_t n,
                          float *out)
{
    if (t->cfg.kind == CQR_KIND_FULL) {
        full_lookup(t, ids, n, out);
        return;
    }
    const cqr_cbstate_t *st = t->st;
    /* cqr: the block pipeline where there are misses to hide (a static
     * set, or a map past CQR_PIPE_MAP_BYTES); a small map stays cached,
     * and there the pipeline's bookkeeping cost more than it hid (1e6
     * IDs: 11.7 against 13.5 M lookups/s; 1e7: 8.4 against 6.4). */
    const int cqr = t->cfg.kind == CQR_KIND_CQR;
    if (cqr && (st->ps || (uint64_t)st->ids.cap * st->ids.stride >
                              CQR_PIPE_MAP_BYTES)) {
        cqr_lookup(t, ids, n, out);
        return;
    }
    /* hash and ce (no per-ID state) and cqr with a small map: the
     * codebooks stay cached, the map's probes go a group ahead. */
    const uint32_t dim = t->cfg.dim;
    uint32_t p[CQR_MAX_CHUNKS], h[CQR_MAX_CHUNKS];
    for (size_t j = 0; cqr && j < n && j < CQR_LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&st->ids, ids[j]);
    for (size_t j = 0; j < n; j++) {
        if (cqr && j + CQR_LOOKUP_GROUP < n)
            cqr_idmap_prefetch(&st->ids, ids[j + CQR_LOOKUP_GROUP]);
        float *o = out + j * dim;
        cqr_cb_pointers(t, st, ids[j], p, h);
        for (uint32_t i = 0; i < t->c; i++) {
            float *oc = o + (size_t)i * t->w;
            if (t->ncb == 2)
                cqr_rows_read_sum(&st->cb[i], p[i], &st->cb[t->c + i], h[i],
                                  oc);
            else
                cqr_rows_read(&st->cb[i], h[i], oc);
        }
    }
}

/* ---- lookups of one or several parts -----------------------------------
 * Every lookup goes through cqr_tables_lookup: the parts are checked,
 * every table is locked (shared, in uid order: cqr_tableset_t), and the
 * IDs of all parts are looked up in units of about CQR_PAR_PART IDs that
 * the helpers share (a small call runs alone); pooled parts look their
 * IDs up into the thread's pool scratch and pool them afterwards. */

/* Rows of a part: IDs (plain) or bags (pooled). */
static size_t part_rows(const cqr_part_t *p)
{
    return p->offsets ? p->nbags : p->n;
}

static int part_check(const cqr_part_t *p)
{
    if (!p->t || (p->n && !p->ids) || (part_rows(p) && !p->out))
        return CQR_EINVAL;
    if (!p->offsets)
        return 0;
    if ((unsigned)p->pool > CQR_POOL_MEAN || (p->nbags == 0 && p->n > 0))
        return CQR_EINVAL;
    return cqr_bags_check(p->offsets, p->nbags, p->n);
}

/* A call's units: unit u of part i is IDs [b, e) of that part. */
typedef struct lookup_job {
    const cqr_part_t *pp;
    float *const *dst;     /* where each part's n rows go */
    const size_t *first;   /* np + 1: part i has units [first[i],
                              first[i+1]) */
    size_t np;
} lookup_job_t;

static void lookup_unit(void *arg, unsigned u)
{
    const lookup_job_t *j = arg;
    size_t lo = 0, hi = j->np; /* the part: first[i] <= u < first[i+1] */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (j->first[mid] <= u)
            lo = mid;
        else
            hi = mid;
    }
    const cqr_part_t *p = &j->pp[lo];
    unsigned k = (unsigned)(j->first[lo + 1] - j->first[lo]);
    size_t b, e;
    cqr_part_range(p->n, k, (unsigned)(u - j->first[lo]), &b, &e);
    lookup_locked(p->t, p->ids + b, e - b,
                  j->dst[lo] + b * (size_t)p->t->cfg.dim);
}

/* Sums (or averages) a pooled part's rows into its bags. */
static void pool_bags(const cqr_part_t *p, const float *rows)
{
    const uint32_t dim = p->t->cfg.dim;
    for (size_t b = 0; b < p->nbags; b++) {
        float *o = p->out + b * dim;
        memset(o, 0, dim * sizeof(float));
        size_t lo = p->offsets[b];
        size_t hi = cqr_bag_end(p->offsets, p->nbags, p->n, b);
        for (size_t j = lo; j < hi; j++) {
            const float *r = rows + j * dim;
            for (uint32_t d = 0; d < dim; d++)
                o[d] += r[d];
        }
        if (p->pool == CQR_POOL_MEAN && hi > lo) {
            float inv = 1.0f / (float)(hi - lo);
            for (uint32_t d = 0; d < dim; d++)
                o[d] *= inv;
        }
    }
}

/* Parts whose bookkeeping lives on the stack. */
#define LOOKUP_INLINE 8

/* The locked part of cqr_tables_lookup; dst and first have np (+ 1)
 * entries. */
static void lookup_parts(const cqr_part_t *pp, size_t np, float **dst,
                         size_t *first, size_t total)
{
    struct cqr_par *par = NULL;
    for (size_t i = 0; i < np && !par; i++)
        par = pp[i].t->par;
    const int split = cqr_par_helpers(par) && total >= CQR_PAR_MIN;
    first[0] = 0;
    for (size_t i = 0; i < np; i++) {
        size_t units = split ? (pp[i].n + CQR_PAR_PART - 1) / CQR_PAR_PART
                             : (pp[i].n > 0);
        first[i + 1] = first[i] + units;
    }
    lookup_job_t j = {pp, dst, first, np};
    if (split)
        cqr_par_run(par, (unsigned)first[np], lookup_unit, &j);
    else
        for (size_t i = 0; i < np; i++)
            if (pp[i].n)
                lookup_locked(pp[i].t, pp[i].ids, pp[i].n, dst[i]);
}

/* 1 if every x[0..n) is finite (no branch per float). */
static int all_finite(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t j = 0; j < n; j++) {
        uint32_t b;
        memcpy(&b, &x[j], sizeof b);
        bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
    return !bad;
}

int cqr_tables_lookup(const cqr_part_t *pp, size_t np, size_t *bad)
{
    size_t badv = 0;
    if (!bad)
        bad = &badv;
    if (np && !pp)
        return CQR_EINVAL;
    size_t pooled = 0, total = 0;
    for (size_t i = 0; i < np; i++) {
        int rc = part_check(&pp[i]);
        if (rc) {
            *bad = i;
            return rc;
        }
        if (pp[i].offsets)
            pooled += pp[i].n * pp[i].t->cfg.dim;
        total += pp[i].n;
    }
    /* Empty bags pool to zeros. */
    for (size_t i = 0; i < np; i++)
        if (pp[i].offsets && pp[i].n == 0 && pp[i].nbags)
            memset(pp[i].out, 0,
                   pp[i].nbags * pp[i].t->cfg.dim * sizeof(float));
    if (total == 0)
        return 0;
    float *rows = NULL;
    if (pooled) {
        rows = cqr_scratch(CQR_SCRATCH_POOL_ROWS, pooled * sizeof(float));
        if (!rows) {
            *bad = 0;
            return CQR_ENOMEM;
        }
    }
    float *dst_inl[LOOKUP_INLINE];
    size_t first_inl[LOOKUP_INLINE + 1];
    float **dst = np <= LOOKUP_INLINE ? dst_inl : malloc(np * sizeof *dst);
    size_t *first = np <= LOOKUP_INLINE ? first_inl
                                        : malloc((np + 1) * sizeof *first);
    cqr_tableset_t set = {0};
    int rc = dst && first ? cqr_tableset_init(&set, pp, np) : CQR_ENOMEM;
    if (rc == 0) {
        float *r = rows;
        for (size_t i = 0; i < np; i++) {
            dst[i] = pp[i].offsets ? r : pp[i].out;
            if (pp[i].offsets)
                r += pp[i].n * pp[i].t->cfg.dim;
        }
        cqr_tableset_lock(&set, 0);
        lookup_parts(pp, np, dst, first, total);
        cqr_tableset_unlock(&set, 0);
        cqr_tableset_free(&set);
        for (size_t i = 0; i < np; i++) {
            if (pp[i].offsets && pp[i].n)
                pool_bags(&pp[i], dst[i]);
            /* Rows are finite, their sums need not be: never serve Inf
             * (issue 14, item 5). */
            if (pp[i].offsets && pp[i].n && rc == 0 &&
                !all_finite(pp[i].out, pp[i].nbags * pp[i].t->cfg.dim)) {
                rc = CQR_ENONFINITE;
                *bad = i;
            }
            __atomic_fetch_add(&pp[i].t->n_lookups, pp[i].n,
                               __ATOMIC_RELAXED);
        }
    } else {
        *bad = 0;
    }
    if (dst != dst_inl)
        free(dst);
    if (first != first_inl)
        free(first);
    return rc;
}

int cqr_table_lookup(cqr_table_t *t, const uint64_t *ids, size_t n,
                     float *out)
{
    cqr_part_t p = {.t = t, .ids = ids, .n = n, .out = out};
    return cqr_tables_lookup(&p, 1, NULL);
}

int cqr_table_lookup_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                            const uint32_t *offsets, size_t nbags,
                            cqr_pooling_t pool, float *out)
{
    /* No bags: nothing to write (offsets may then be NULL). */
    if (nbags == 0)
        return t && (unsigned)pool <= CQR_POOL_MEAN && !n ? 0 : CQR_EINVAL;
    cqr_part_t p = {.t = t, .ids = ids, .n = n, .offsets = offsets,
                    .nbags = nbags, .pool = pool, .out = out};
    return cqr_tables_lookup(&p, 1, NULL);
}
