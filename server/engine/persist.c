/* persist.c -- export and import of a table's state as checked segments.
 *
 * Export copies under the table's gate (see table_impl.h) and encodes
 * after releasing it; import builds a fresh table from cqr_table_create
 * and overwrites its state page by page. The formats are in persist.h.
 */
#include "persist.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "err.h"
#include "table_impl.h"

/* Floats, IDs and pointers are copied as raw bytes: the segment format is
 * little-endian, and so must the machine be. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "segments store raw little-endian values");

#define SEG_MAGIC 0x53525143u /* "CQRS" */
#define SEG_FLAG_DELTA 1u
#define CFG_BYTES 92u

const char *cqr_page_type_name(uint32_t type)
{
    switch (type) {
    case CQR_PAGE_CFG: return "cfg";
    case CQR_PAGE_META: return "meta";
    case CQR_PAGE_CB: return "cb";
    case CQR_PAGE_ROWS: return "rows";
    case CQR_PAGE_MAP: return "map";
    }
    return "?";
}

uint64_t cqr_table_uid(const cqr_table_t *t)
{
    return t->uid;
}

/* ---- Little-endian writer and bounded reader --------------------------- */

typedef struct wr {
    uint8_t *p; /* next byte to write */
} wr_t;

static void put(wr_t *w, const void *src, size_t n)
{
    if (n)
        memcpy(w->p, src, n);
    w->p += n;
}

static void put_u32(wr_t *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(wr_t *w, uint64_t v) { put(w, &v, 8); }
static void put_f32(wr_t *w, float v) { put(w, &v, 4); }
static void put_f64(wr_t *w, double v) { put(w, &v, 8); }

typedef struct rd {
    const uint8_t *p; /* next byte to read */
    size_t n;         /* bytes left */
    int bad;          /* a read ran past the end */
} rd_t;

static const uint8_t *take(rd_t *r, size_t n)
{
    if (r->bad || n > r->n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->n -= n;
    return p;
}

static void get(rd_t *r, void *dst, size_t n)
{
    const uint8_t *p = take(r, n);
    if (p)
        memcpy(dst, p, n);
    else
        memset(dst, 0, n);
}

static uint32_t get_u32(rd_t *r) { uint32_t v; get(r, &v, 4); return v; }
static uint64_t get_u64(rd_t *r) { uint64_t v; get(r, &v, 8); return v; }
static float get_f32(rd_t *r) { float v; get(r, &v, 4); return v; }
static double get_f64(rd_t *r) { double v; get(r, &v, 8); return v; }

/* ---- Segment framing ---------------------------------------------------- */

/* A buffer prepared before the gate is taken, for one page. */
typedef struct prebuf {
    uint32_t type, index; /* the page it is meant for */
    uint8_t *p;           /* NULL once taken */
    size_t cap;           /* bytes at p */
} prebuf_t;

/* An export runs twice over the same decisions: first to plan (no gate,
 * nothing copied: it only records the size of every segment, so that the
 * buffers can be allocated and faulted in while pushes go on), then under
 * the gate to copy into those buffers at memcpy speed. */
typedef struct exp_ctx {
    cqr_table_t *t;            /* the table */
    const cqr_export_opts_t *o; /* the caller's options */
    uint32_t since;            /* o->since */
    int plan;                  /* 1: record sizes in pre, copy nothing */
    prebuf_t *pre;             /* planned buffers, in page order */
    size_t npre, cap_pre;
    size_t ipre;               /* next planned buffer to match */
} exp_ctx_t;

/* A segment buffer with room for the header and `payload` bytes; the
 * payload is written at data + CQR_SEGMENT_HEADER. Returns 1 while
 * planning (the caller then copies nothing), 0, or CQR_ENOMEM. */
static int seg_alloc(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                     uint32_t index, cqr_seg_kind_t kind, size_t payload)
{
    sg->type = type;
    sg->index = index;
    sg->kind = kind;
    sg->len = CQR_SEGMENT_HEADER + payload;
    sg->data = NULL;
    if (cx && cx->plan) {
        if (cx->npre == cx->cap_pre) {
            size_t cap = cx->cap_pre ? 2 * cx->cap_pre : 64;
            prebuf_t *np = realloc(cx->pre, cap * sizeof *np);
            if (!np)
                return CQR_ENOMEM;
            cx->pre = np;
            cx->cap_pre = cap;
        }
        /* Deltas grow with the pushes between plan and copy: slack. */
        size_t cap = kind == CQR_SEG_DELTA ? sg->len + sg->len / 8 + 4096
                                           : sg->len;
        cx->pre[cx->npre++] = (prebuf_t){type, index, NULL, cap};
        return 1;
    }
    if (cx) {
        while (cx->ipre < cx->npre &&
               (cx->pre[cx->ipre].type < type ||
                (cx->pre[cx->ipre].type == type &&
                 cx->pre[cx->ipre].index < index)))
            cx->ipre++;
        prebuf_t *pb = cx->ipre < cx->npre ? &cx->pre[cx->ipre] : NULL;
        if (pb && pb->type == type && pb->index == index && pb->p &&
            pb->cap >= sg->len) {
            sg->data = pb->p;
            pb->p = NULL;
            return 0;
        }
    }
    sg->data = malloc(sg->len);
    return sg->data ? 0 : CQR_ENOMEM;
}

#define SEG_ALLOC_OR_RETURN(...)                                             \
    do {                                                                     \
        int rc_ = seg_alloc(__VA_ARGS__);                                    \
        if (rc_)                                                             \
            return rc_ > 0 ? 0 : rc_;                                        \
    } while (0)

static uint64_t seg_checksum(const uint8_t *data, size_t len)
{
    /* The header's hash seeds the payload's, so both are covered. */
    return XXH3_64bits_withSeed(data + CQR_SEGMENT_HEADER,
                                len - CQR_SEGMENT_HEADER,
                                XXH3_64bits(data, 24));
}

/* Writes the header and checksum of a filled segment. */
static void seg_seal(cqr_segment_t *sg)
{
    wr_t w = {sg->data};
    uint16_t version = CQR_SEGMENT_VERSION;
    uint8_t type = (uint8_t)sg->type;
    uint8_t flags = sg->kind == CQR_SEG_DELTA ? SEG_FLAG_DELTA : 0;
    put_u32(&w, SEG_MAGIC);
    put(&w, &version, 2);
    put(&w, &type, 1);
    put(&w, &flags, 1);
    put_u32(&w, sg->index);
    put_u32(&w, 0);
    put_u64(&w, sg->len - CQR_SEGMENT_HEADER);
    sg->hash = seg_checksum(sg->data, sg->len);
    put_u64(&w, sg->hash);
}

/* Parses and checks a segment's header; with `sum`, verifies the
 * checksum before trusting any field beyond the magic and length, so that
 * a damaged version byte reads as damage, not as a newer format. */
static int seg_header(const uint8_t *data, size_t len, int sum,
                      uint32_t *type, uint32_t *index, cqr_seg_kind_t *kind,
                      uint64_t *hash)
{
    if (!data || len < CQR_SEGMENT_HEADER)
        return CQR_ECORRUPT;
    rd_t r = {data, len, 0};
    uint32_t magic = get_u32(&r);
    uint16_t version;
    uint8_t ty, flags;
    get(&r, &version, 2);
    get(&r, &ty, 1);
    get(&r, &flags, 1);
    uint32_t idx = get_u32(&r);
    (void)get_u32(&r);
    uint64_t plen = get_u64(&r);
    uint64_t want = get_u64(&r);
    if (magic != SEG_MAGIC || plen != len - CQR_SEGMENT_HEADER)
        return CQR_ECORRUPT;
    if (sum && seg_checksum(data, len) != want)
        return CQR_ECORRUPT;
    if (version != CQR_SEGMENT_VERSION)
        return CQR_EVERSION;
    if (ty < CQR_PAGE_CFG || ty > CQR_PAGE_MAP || (flags & ~SEG_FLAG_DELTA))
        return CQR_ECORRUPT;
    if (type)
        *type = ty;
    if (index)
        *index = idx;
    if (kind)
        *kind = flags & SEG_FLAG_DELTA ? CQR_SEG_DELTA : CQR_SEG_BASE;
    if (hash)
        *hash = want;
    return 0;
}

int cqr_segment_peek(const uint8_t *data, size_t len, uint32_t *type,
                     uint32_t *index, cqr_seg_kind_t *kind)
{
    return seg_header(data, len, 0, type, index, kind, NULL);
}

int cqr_segment_verify(const uint8_t *data, size_t len, uint64_t *hash)
{
    return seg_header(data, len, 1, NULL, NULL, NULL, hash);
}

/* ---- Shapes ------------------------------------------------------------- */

/* Bytes of one row in a rows payload: parameters, optimizer state and
 * (Adam) the step count. */
static size_t row_bytes(const cqr_table_t *t, uint32_t w)
{
    uint32_t sw = cqr_optim_state_floats(t->cfg.optim.kind, w);
    return (size_t)w * 4 + (size_t)sw * 4 +
           (t->cfg.optim.kind == CQR_OPT_ADAM ? 4 : 0);
}

/* The known-ID map an export writes (NULL for hash and ce). */
static cqr_idmap_t *tracked_map(cqr_table_t *t)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return &t->rowmap;
    if (t->cfg.kind == CQR_KIND_CQR)
        return &t->st->ids;
    return NULL;
}

static size_t map_pages(size_t cap)
{
    return (cap + CQR_MAP_PAGE - 1) / CQR_MAP_PAGE;
}

static uint32_t page_slots(size_t cap, size_t p)
{
    size_t lo = p * CQR_MAP_PAGE;
    return (uint32_t)(cap - lo < CQR_MAP_PAGE ? cap - lo : CQR_MAP_PAGE);
}

static uint32_t full_page_rows(const cqr_table_t *t, size_t b)
{
    uint64_t lo = (uint64_t)b * CQR_FULL_BLOCK;
    return (uint32_t)(t->nrows - lo < CQR_FULL_BLOCK ? t->nrows - lo
                                                      : CQR_FULL_BLOCK);
}

static uint32_t cb_page_rows(const cqr_table_t *t, uint32_t p)
{
    uint32_t lo = p * CQR_CB_PAGE;
    return t->k - lo < CQR_CB_PAGE ? t->k - lo : CQR_CB_PAGE;
}

/* ---- Encoding of cfg and meta ------------------------------------------ */

static int enc_cfg(const cqr_table_t *t, cqr_segment_t *sg)
{
    SEG_ALLOC_OR_RETURN(NULL, sg, CQR_PAGE_CFG, 0, CQR_SEG_BASE, CFG_BYTES);
    const cqr_table_config_t *c = &t->cfg;
    wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    put_u32(&w, c->kind);
    put_u32(&w, c->dim);
    put_u32(&w, c->chunks);
    put_u32(&w, c->rows);
    put_u64(&w, c->seed);
    put_f32(&w, c->init_scale);
    put_u32(&w, c->optim.kind);
    put_f32(&w, c->optim.lr);
    put_f32(&w, c->optim.beta1);
    put_f32(&w, c->optim.beta2);
    put_f32(&w, c->optim.eps);
    put_f32(&w, c->optim.weight_decay);
    put_u32(&w, c->cluster_iters);
    put_u32(&w, c->cluster_sample);
    put_u32(&w, c->cluster_threads);
    put_u32(&w, c->reset_optimizer);
    put_u64(&w, c->schedule_every);
    put_u32(&w, c->schedule_max_phases);
    put_u32(&w, 0); /* reserved */
    put_u64(&w, 0); /* reserved */
    assert(w.p == sg->data + sg->len);
    sg->items = 1;
    return 0;
}

static void dec_cfg(rd_t *r, cqr_table_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->kind = (cqr_kind_t)get_u32(r);
    c->dim = get_u32(r);
    c->chunks = get_u32(r);
    c->rows = get_u32(r);
    c->seed = get_u64(r);
    c->init_scale = get_f32(r);
    c->optim.kind = (cqr_optim_kind_t)get_u32(r);
    c->optim.lr = get_f32(r);
    c->optim.beta1 = get_f32(r);
    c->optim.beta2 = get_f32(r);
    c->optim.eps = get_f32(r);
    c->optim.weight_decay = get_f32(r);
    c->cluster_iters = get_u32(r);
    c->cluster_sample = get_u32(r);
    c->cluster_threads = get_u32(r);
    c->reset_optimizer = get_u32(r);
    c->schedule_every = get_u64(r);
    c->schedule_max_phases = get_u32(r);
    (void)get_u32(r);
    (void)get_u64(r);
}

/* Meta: phase and usage counters, the schedule, seeds, the map's shape.
 * Lock held (shared) and gate held exclusively. */
static int enc_meta(cqr_table_t *t, cqr_segment_t *sg)
{
    const cqr_idmap_t *m = tracked_map(t);
    size_t bytes = 4 + 4 + 8 + 3 * 8 + 3 * 8;
    if (t->ncb)
        bytes += 2 * (size_t)t->c * 8;
    if (m)
        bytes += 8 + 8 + 4 + 4 + m->vw;
    if (t->cfg.kind == CQR_KIND_FULL)
        bytes += 8;
    SEG_ALLOC_OR_RETURN(NULL, sg, CQR_PAGE_META, 0, CQR_SEG_BASE, bytes);
    wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    put_u32(&w, t->phases_done);
    put_u32(&w, 0); /* reserved */
    /* During a phase the live state is the pre-phase table, and so is the
     * schedule: a restored table runs the interrupted phase again. */
    put_u64(&w, t->phase ? t->examples_prev_phase : t->examples_at_phase);
    put_u64(&w, __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED));
    put_u64(&w, __atomic_load_n(&t->n_pushes, __ATOMIC_RELAXED));
    put_u64(&w, __atomic_load_n(&t->n_lookups, __ATOMIC_RELAXED));
    pthread_mutex_lock(&t->plock);
    put_f64(&w, t->last_inertia);
    put_f64(&w, t->last_phase_seconds);
    put_f64(&w, t->last_commit_seconds);
    pthread_mutex_unlock(&t->plock);
    if (t->ncb) {
        put(&w, t->st->seed_p, (size_t)t->c * 8);
        put(&w, t->st->seed_h, (size_t)t->c * 8);
    }
    if (m) {
        put_u64(&w, m->cap);
        put_u64(&w, m->count);
        put_u32(&w, m->vw);
        put_u32(&w, (uint32_t)m->has_zero);
        put(&w, m->zero_val, m->vw);
    }
    if (t->cfg.kind == CQR_KIND_FULL)
        put_u64(&w, t->nrows);
    assert(w.p == sg->data + sg->len);
    sg->items = 1;
    return 0;
}

/* ---- Export of rows pages ----------------------------------------------- */

static int want_base(const exp_ctx_t *cx, uint32_t type, uint32_t index)
{
    return cx->o->force_base && cx->o->force_base(cx->o->ud, type, index);
}

/* Copies rows [lo, lo+n) of r as a base: parameters, then state, then
 * steps, each contiguous. */
static int rows_base(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                     uint32_t index, const cqr_rows_t *r, uint32_t lo,
                     uint32_t n)
{
    SEG_ALLOC_OR_RETURN(cx, sg, type, index, CQR_SEG_BASE,
                        (size_t)n * row_bytes(cx->t, r->w));
    wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    put(&w, r->param + (size_t)lo * r->w, (size_t)n * r->w * 4);
    if (r->sw)
        put(&w, r->state + (size_t)lo * r->sw, (size_t)n * r->sw * 4);
    if (r->step)
        put(&w, r->step + lo, (size_t)n * 4);
    assert(w.p == sg->data + sg->len);
    sg->items = n;
    return 0;
}

/* Copies the m rows of [lo, lo+n) whose mark is >= since: a count, the
 * row indices within the page, then their parameters, state and steps. */
static int rows_delta(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                      uint32_t index, const cqr_rows_t *r, uint32_t lo,
                      uint32_t n, const uint32_t *marks, uint32_t since,
                      uint32_t m)
{
    SEG_ALLOC_OR_RETURN(cx, sg, type, index, CQR_SEG_DELTA,
                        8 + (size_t)m * (4 + row_bytes(cx->t, r->w)));
    uint8_t *base = sg->data + CQR_SEGMENT_HEADER;
    wr_t w = {base};
    put_u32(&w, m);
    put_u32(&w, 0);
    uint32_t *idx = (uint32_t *)w.p; /* 8-aligned after the header */
    uint32_t k = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (__atomic_load_n(&marks[j], __ATOMIC_RELAXED) >= since)
            idx[k++] = j;
    }
    assert(k == m);
    w.p += (size_t)m * 4;
    for (uint32_t q = 0; q < m; q++)
        put(&w, r->param + (size_t)(lo + idx[q]) * r->w, (size_t)r->w * 4);
    for (uint32_t q = 0; r->sw && q < m; q++)
        put(&w, r->state + (size_t)(lo + idx[q]) * r->sw, (size_t)r->sw * 4);
    for (uint32_t q = 0; r->step && q < m; q++)
        put_u32(&w, r->step[lo + idx[q]]);
    assert(w.p == sg->data + sg->len);
    sg->items = m;
    return 0;
}

/* One rows page: unchanged, base or delta by its marks. `whole` forces a
 * base (first export, or the structure was replaced). */
static int rows_page(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                     uint32_t index, const cqr_rows_t *r, uint32_t lo,
                     uint32_t n, const uint32_t *marks, const uint32_t *pmark,
                     int whole)
{
    if (!whole) {
        if (__atomic_load_n(pmark, __ATOMIC_RELAXED) < cx->since) {
            sg->type = type;
            sg->index = index;
            sg->kind = CQR_SEG_UNCHANGED;
            return 0;
        }
        uint32_t m = 0;
        for (uint32_t j = 0; j < n; j++)
            m += __atomic_load_n(&marks[j], __ATOMIC_RELAXED) >= cx->since;
        if (m == 0) {
            sg->type = type;
            sg->index = index;
            sg->kind = CQR_SEG_UNCHANGED;
            return 0;
        }
        /* A delta row costs its index on top of the row: past a quarter
         * of the page a base is about as small and ends the chain. */
        if ((uint64_t)m * 4 < n && !want_base(cx, type, index))
            return rows_delta(cx, sg, type, index, r, lo, n, marks,
                              cx->since, m);
    }
    return rows_base(cx, sg, type, index, r, lo, n);
}

/* ---- Export of map pages ------------------------------------------------ */

static int map_base(exp_ctx_t *cx, cqr_segment_t *sg, const cqr_idmap_t *m,
                    uint32_t p)
{
    uint32_t n = page_slots(m->cap, p);
    size_t lo = (size_t)p * CQR_MAP_PAGE;
    SEG_ALLOC_OR_RETURN(cx, sg, CQR_PAGE_MAP, p, CQR_SEG_BASE,
                        (size_t)n * (8 + m->vw));
    wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    put(&w, m->keys + lo, (size_t)n * 8);
    put(&w, m->vals + lo * m->vw, (size_t)n * m->vw);
    sg->items = n;
    return 0;
}

/* The slots sl[0..cnt) (within page p) inserted since the cursor. */
static int map_delta(exp_ctx_t *cx, cqr_segment_t *sg, const cqr_idmap_t *m,
                     uint32_t p, const uint32_t *sl, uint32_t cnt)
{
    size_t lo = (size_t)p * CQR_MAP_PAGE;
    SEG_ALLOC_OR_RETURN(cx, sg, CQR_PAGE_MAP, p, CQR_SEG_DELTA,
                        8 + (size_t)cnt * (4 + 8 + m->vw));
    wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    put_u32(&w, cnt);
    put_u32(&w, 0);
    put(&w, sl, (size_t)cnt * 4);
    for (uint32_t q = 0; q < cnt; q++)
        put_u64(&w, m->keys[lo + sl[q]]);
    for (uint32_t q = 0; q < cnt; q++)
        put(&w, m->vals + (lo + sl[q]) * m->vw, m->vw);
    sg->items = cnt;
    return 0;
}

/* First insertion record with epoch >= e (records are in epoch order). */
static size_t ins_first(const cqr_table_t *t, uint32_t e)
{
    size_t lo = 0, hi = t->ins_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->ins_epoch[mid] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* All map pages into seg[0..npages). */
static int map_export(exp_ctx_t *cx, cqr_segment_t *seg, size_t npages)
{
    cqr_table_t *t = cx->t;
    const cqr_idmap_t *m = tracked_map(t);
    const uint32_t since = cx->since;
    const int whole = since == 0 || since <= t->map_base_epoch ||
                      since < t->map_floor ||
                      !__atomic_load_n(&t->ins_on, __ATOMIC_RELAXED);
    uint32_t *cnt = NULL, *off = NULL, *sl = NULL;
    int rc = 0;
    if (!whole) {
        /* Bucket the slots inserted since the cursor by page. */
        size_t first = ins_first(t, since), n = t->ins_n - first;
        cnt = calloc(npages + 1, sizeof *cnt);
        off = calloc(npages + 1, sizeof *off);
        sl = malloc((n ? n : 1) * sizeof *sl);
        if (!cnt || !off || !sl) {
            rc = CQR_ENOMEM;
            goto out;
        }
        for (size_t q = first; q < t->ins_n; q++)
            cnt[t->ins_slot[q] / CQR_MAP_PAGE]++;
        for (size_t p = 0; p < npages; p++)
            off[p + 1] = off[p] + cnt[p];
        for (size_t q = first; q < t->ins_n; q++) {
            uint64_t s = t->ins_slot[q];
            sl[off[s / CQR_MAP_PAGE]++] = (uint32_t)(s % CQR_MAP_PAGE);
        }
        for (size_t p = 0; p < npages; p++)
            off[p] -= cnt[p]; /* back to the start of each bucket */
    }
    for (size_t p = 0; p < npages && rc == 0; p++) {
        cqr_segment_t *sg = &seg[p];
        if (!whole) {
            if (cnt[p] == 0) {
                sg->type = CQR_PAGE_MAP;
                sg->index = (uint32_t)p;
                sg->kind = CQR_SEG_UNCHANGED;
                continue;
            }
            /* A delta slot costs 4 bytes more than a base slot. */
            if ((uint64_t)cnt[p] * 2 < page_slots(m->cap, p) &&
                !want_base(cx, CQR_PAGE_MAP, (uint32_t)p)) {
                rc = map_delta(cx, sg, m, (uint32_t)p, sl + off[p], cnt[p]);
                continue;
            }
        }
        rc = map_base(cx, sg, m, (uint32_t)p);
    }
out:
    free(cnt);
    free(off);
    free(sl);
    return rc;
}

/* ---- Export ------------------------------------------------------------- */

static void segs_free(cqr_segment_t *seg, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(seg[i].data);
    free(seg);
}

/* Builds every segment's payload (gate held exclusively, lock shared),
 * or with cx->plan only sizes them (lock shared). */
static int export_locked(exp_ctx_t *cx, cqr_export_t *x)
{
    cqr_table_t *t = cx->t;
    const cqr_idmap_t *m = tracked_map(t);
    const size_t ncbp = (size_t)t->ncb * t->c * t->cbpages;
    const size_t nmp = m ? map_pages(m->cap) : 0;
    const size_t nseg = 2 + ncbp + t->nblocks + nmp;
    cqr_segment_t *seg = calloc(nseg, sizeof *seg);
    if (!seg)
        return CQR_ENOMEM;
    int rc = cx->plan ? 0 : enc_cfg(t, &seg[0]);
    if (rc == 0 && !cx->plan)
        rc = enc_meta(t, &seg[1]);
    size_t s = 2;
    const int cb_whole = cx->since == 0 || cx->since <= t->cb_base_epoch;
    for (uint32_t b = 0; rc == 0 && b < t->ncb * t->c; b++) {
        for (uint32_t p = 0; rc == 0 && p < t->cbpages; p++, s++) {
            uint32_t lo = p * CQR_CB_PAGE;
            rc = rows_page(cx, &seg[s], CQR_PAGE_CB, b * t->cbpages + p,
                           &t->st->cb[b], lo, cb_page_rows(t, p),
                           t->cbmark + (size_t)b * t->k + lo,
                           &t->cbpage[(size_t)b * t->cbpages + p], cb_whole);
        }
    }
    for (size_t b = 0; rc == 0 && b < t->nblocks; b++, s++)
        rc = rows_page(cx, &seg[s], CQR_PAGE_ROWS, (uint32_t)b,
                       &t->blocks[b], 0, full_page_rows(t, b), t->fmark[b],
                       &t->fpage[b], cx->since == 0);
    if (rc == 0 && nmp)
        rc = map_export(cx, seg + s, nmp);
    if (rc || cx->plan) {
        segs_free(seg, nseg);
        return rc;
    }
    x->seg = seg;
    x->nseg = nseg;
    x->known_ids = m ? m->count : 0;
    x->phases_done = t->phases_done;
    /* What a complete export would take, for the caller's ratios. */
    uint64_t full = seg[0].len + seg[1].len;
    for (uint32_t b = 0; b < t->ncb * t->c; b++)
        full += (uint64_t)t->k * row_bytes(t, t->w) +
                (uint64_t)t->cbpages * CQR_SEGMENT_HEADER;
    full += t->nrows * row_bytes(t, t->cfg.dim) +
            t->nblocks * CQR_SEGMENT_HEADER;
    if (m)
        full += (uint64_t)m->cap * (8 + m->vw) + nmp * CQR_SEGMENT_HEADER;
    x->full_bytes = full;
    return 0;
}

/* Drops insertion records older than `since`: the caller said it has
 * them. Gate held exclusively. */
static void ins_trim(cqr_table_t *t, uint32_t since)
{
    if (since <= t->map_floor)
        return;
    size_t first = ins_first(t, since);
    if (first) {
        memmove(t->ins_slot, t->ins_slot + first,
                (t->ins_n - first) * sizeof *t->ins_slot);
        memmove(t->ins_epoch, t->ins_epoch + first,
                (t->ins_n - first) * sizeof *t->ins_epoch);
        t->ins_n -= first;
    }
    t->map_floor = since;
}

int cqr_table_export(cqr_table_t *t, const cqr_export_opts_t *opts,
                     cqr_export_t **out)
{
    if (!t || !opts || !out)
        return CQR_EINVAL;
    cqr_export_t *x = calloc(1, sizeof *x);
    if (!x)
        return CQR_ENOMEM;
    x->uid = t->uid;
    x->since = opts->since;
    x->kind = t->cfg.kind;
    x->dim = t->cfg.dim;
    exp_ctx_t cx = {.t = t, .o = opts, .since = opts->since};

    /* Plan, then allocate and fault in the buffers, while pushes go on:
     * under the gate only the copy remains. */
    const double t0 = cqr_now();
    pthread_rwlock_rdlock(&t->lock);
    int rc = opts->since > __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED)
                 ? CQR_EINVAL : 0;
    if (rc == 0) {
        cx.plan = 1;
        rc = export_locked(&cx, x);
        cx.plan = 0;
    }
    pthread_rwlock_unlock(&t->lock);
    for (size_t i = 0; rc == 0 && i < cx.npre; i++) {
        uint8_t *p = malloc(cx.pre[i].cap);
        if (!p)
            continue; /* the copy falls back to malloc */
        for (size_t o = 0; o < cx.pre[i].cap; o += 4096)
            p[o] = 0;
        cx.pre[i].p = p;
    }
    const double tp = cqr_now();
    x->prepare_seconds = tp - t0;

    pthread_rwlock_wrlock(&t->gate);
    const double t1 = cqr_now();
    pthread_rwlock_rdlock(&t->lock);
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    if (rc == 0 && !__atomic_load_n(&t->ins_on, __ATOMIC_RELAXED)) {
        /* From now on new IDs are recorded; none before was, so any
         * export from a cursor up to this one writes the whole map. */
        __atomic_store_n(&t->ins_on, 1, __ATOMIC_RELAXED);
        if (t->map_floor < e + 1)
            t->map_floor = e + 1;
    }
    if (rc == 0)
        rc = opts->since > e ? CQR_EINVAL : export_locked(&cx, x);
    if (rc == 0) {
        /* Changes from now on carry e + 1: every change with epoch <= e
         * happened under the gate before this point and is in the copy. */
        ins_trim(t, opts->since);
        __atomic_store_n(&t->wepoch, e + 1, __ATOMIC_RELAXED);
        x->cursor = e + 1;
    }
    pthread_rwlock_unlock(&t->lock);
    pthread_rwlock_unlock(&t->gate);
    const double t2 = cqr_now();
    for (size_t i = 0; i < cx.npre; i++)
        free(cx.pre[i].p); /* planned but not needed after all */
    free(cx.pre);
    if (rc) {
        free(x);
        return rc;
    }
    for (size_t i = 0; i < x->nseg; i++) {
        if (x->seg[i].data) {
            seg_seal(&x->seg[i]);
            x->bytes += x->seg[i].len;
        }
    }
    x->wait_seconds = t1 - tp;
    x->pause_seconds = t2 - t1;
    x->seconds = cqr_now() - t0;
    pthread_mutex_lock(&t->plock);
    t->exp_count++;
    t->exp_last_pause = x->pause_seconds;
    if (x->pause_seconds > t->exp_max_pause)
        t->exp_max_pause = x->pause_seconds;
    t->exp_last_wait = x->wait_seconds;
    t->exp_last_seconds = x->seconds;
    t->exp_last_bytes = x->bytes;
    pthread_mutex_unlock(&t->plock);
    *out = x;
    return 0;
}

void cqr_export_free(cqr_export_t *x)
{
    if (!x)
        return;
    segs_free(x->seg, x->nseg);
    free(x);
}

void cqr_persist_stats(cqr_table_t *t, cqr_persist_stats_t *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&t->plock);
    st->exports = t->exp_count;
    st->last_pause_seconds = t->exp_last_pause;
    st->max_pause_seconds = t->exp_max_pause;
    st->last_wait_seconds = t->exp_last_wait;
    st->last_seconds = t->exp_last_seconds;
    st->last_bytes = t->exp_last_bytes;
    pthread_mutex_unlock(&t->plock);
}

/* ---- Import ------------------------------------------------------------- */

enum { IM_CFG, IM_META, IM_PAGES, IM_FAILED };

struct cqr_import {
    int state;           /* IM_*: what comes next */
    cqr_table_t *t;      /* the table being built (private) */
    uint8_t *have;       /* per page: base applied */
    size_t ncbp;         /* codebook pages */
    size_t nfp;          /* full row pages */
    size_t nmp;          /* map pages */
    uint64_t map_count;  /* IDs the meta says the map holds */
    char err[200];       /* the last error */
};

static int im_fail(cqr_import_t *im, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->err, sizeof im->err, fmt, ap);
    va_end(ap);
    im->state = IM_FAILED;
    return rc;
}

int cqr_import_begin(cqr_import_t **out)
{
    if (!out)
        return CQR_EINVAL;
    cqr_import_t *im = calloc(1, sizeof *im);
    if (!im)
        return CQR_ENOMEM;
    *out = im;
    return 0;
}

void cqr_import_abort(cqr_import_t *im)
{
    if (!im)
        return;
    cqr_table_destroy(im->t);
    free(im->have);
    free(im);
}

const char *cqr_import_error(const cqr_import_t *im)
{
    return im ? im->err : "";
}

static int im_cfg(cqr_import_t *im, rd_t *r)
{
    cqr_table_config_t cfg;
    if (r->n != CFG_BYTES)
        return im_fail(im, CQR_ECORRUPT, "cfg: %zu bytes, expected %u", r->n,
                       CFG_BYTES);
    dec_cfg(r, &cfg);
    char why[128];
    if (cqr_table_config_check(&cfg, why, sizeof why))
        return im_fail(im, CQR_ECORRUPT, "cfg: %s", why);
    int rc = cqr_table_create(&cfg, &im->t);
    if (rc)
        return im_fail(im, rc, "cfg: creating the table: %s",
                       cqr_strerror(rc));
    im->state = IM_META;
    return 0;
}

static int im_meta(cqr_import_t *im, rd_t *r)
{
    cqr_table_t *t = im->t;
    t->phases_done = get_u32(r);
    (void)get_u32(r);
    t->examples_at_phase = get_u64(r);
    t->n_examples = get_u64(r);
    t->n_pushes = get_u64(r);
    t->n_lookups = get_u64(r);
    t->last_inertia = get_f64(r);
    t->last_phase_seconds = get_f64(r);
    t->last_commit_seconds = get_f64(r);
    if (t->ncb) {
        get(r, t->st->seed_p, (size_t)t->c * 8);
        get(r, t->st->seed_h, (size_t)t->c * 8);
    }
    cqr_idmap_t *m = tracked_map(t);
    if (m) {
        uint64_t cap = get_u64(r), count = get_u64(r);
        uint32_t vw = get_u32(r), has_zero = get_u32(r);
        if (r->bad || vw != m->vw || has_zero > 1 || cap < 16 ||
            cap > (1ull << 40) || count - has_zero >= cap || count < has_zero)
            return im_fail(im, CQR_ECORRUPT,
                           "meta: impossible map shape (cap %llu, count "
                           "%llu, value width %u)",
                           (unsigned long long)cap, (unsigned long long)count,
                           vw);
        cqr_idmap_free(m);
        int rc = cqr_idmap_init(m, vw, (size_t)cap);
        if (rc)
            return im_fail(im, rc, "meta: map of %llu slots: %s",
                           (unsigned long long)cap, cqr_strerror(rc));
        assert(m->cap == cap);
        m->count = count;
        m->has_zero = (int)has_zero;
        get(r, m->zero_val, vw);
        im->map_count = count;
        im->nmp = map_pages(cap);
    }
    if (t->cfg.kind == CQR_KIND_FULL) {
        uint64_t nrows = get_u64(r);
        if (r->bad || nrows >= UINT32_MAX || nrows != im->map_count)
            return im_fail(im, CQR_ECORRUPT,
                           "meta: %llu rows for %llu known IDs",
                           (unsigned long long)nrows,
                           (unsigned long long)im->map_count);
        size_t nb = (nrows + CQR_FULL_BLOCK - 1) >> CQR_FULL_BLOCK_SHIFT;
        for (size_t b = 0; b < nb; b++) {
            int rc = cqr_full_add_block(t);
            if (rc)
                return im_fail(im, rc, "meta: row block %zu: %s", b,
                               cqr_strerror(rc));
        }
        t->nrows = nrows;
        im->nfp = nb;
    }
    if (r->bad || r->n != 0)
        return im_fail(im, CQR_ECORRUPT, "meta: wrong length");
    im->ncbp = (size_t)t->ncb * t->c * t->cbpages;
    im->have = calloc(im->ncbp + im->nfp + im->nmp + 1, 1);
    if (!im->have)
        return im_fail(im, CQR_ENOMEM, "meta: out of memory");
    im->state = IM_PAGES;
    return 0;
}

/* Applies a rows payload (base or delta) to rows [lo, lo+n) of r. */
static int im_rows(cqr_import_t *im, rd_t *r, cqr_seg_kind_t kind,
                   cqr_rows_t *rows, uint32_t lo, uint32_t n, const char *what,
                   uint32_t index)
{
    const cqr_table_t *t = im->t;
    const size_t rb = row_bytes(t, rows->w);
    if (kind == CQR_SEG_BASE) {
        /* A full table's last page may have grown since its base; the
         * rows added later come in deltas (new rows are always marked). */
        if (r->n % rb || r->n / rb > n ||
            (what[0] == 'c' && r->n / rb != n))
            return im_fail(im, CQR_ECORRUPT, "%s/%u: %zu bytes for %u rows",
                           what, index, r->n, n);
        n = (uint32_t)(r->n / rb);
        get(r, rows->param + (size_t)lo * rows->w, (size_t)n * rows->w * 4);
        if (rows->sw)
            get(r, rows->state + (size_t)lo * rows->sw,
                (size_t)n * rows->sw * 4);
        if (rows->step)
            get(r, rows->step + lo, (size_t)n * 4);
        return 0;
    }
    uint32_t m = get_u32(r);
    (void)get_u32(r);
    if (r->bad || m > n || r->n != (size_t)m * (4 + rb))
        return im_fail(im, CQR_ECORRUPT, "%s/%u: bad delta length", what,
                       index);
    const uint8_t *ip = take(r, (size_t)m * 4);
    for (uint32_t q = 0; q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        if (j >= n)
            return im_fail(im, CQR_ECORRUPT, "%s/%u: delta row %u of %u",
                           what, index, j, n);
    }
    for (uint32_t q = 0; q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        get(r, rows->param + (size_t)(lo + j) * rows->w,
            (size_t)rows->w * 4);
    }
    for (uint32_t q = 0; rows->sw && q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        get(r, rows->state + (size_t)(lo + j) * rows->sw,
            (size_t)rows->sw * 4);
    }
    for (uint32_t q = 0; rows->step && q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        rows->step[lo + j] = get_u32(r);
    }
    return 0;
}

static int im_map(cqr_import_t *im, rd_t *r, cqr_seg_kind_t kind, uint32_t p)
{
    cqr_idmap_t *m = tracked_map(im->t);
    const uint32_t n = page_slots(m->cap, p);
    const size_t lo = (size_t)p * CQR_MAP_PAGE;
    if (kind == CQR_SEG_BASE) {
        if (r->n != (size_t)n * (8 + m->vw))
            return im_fail(im, CQR_ECORRUPT, "map/%u: %zu bytes, expected %zu",
                           p, r->n, (size_t)n * (8 + m->vw));
        get(r, m->keys + lo, (size_t)n * 8);
        get(r, m->vals + lo * m->vw, (size_t)n * m->vw);
        return 0;
    }
    uint32_t cnt = get_u32(r);
    (void)get_u32(r);
    if (r->bad || cnt > n || r->n != (size_t)cnt * (4 + 8 + m->vw))
        return im_fail(im, CQR_ECORRUPT, "map/%u: bad delta length", p);
    const uint8_t *sp = take(r, (size_t)cnt * 4);
    const uint8_t *kp = take(r, (size_t)cnt * 8);
    const uint8_t *vp = take(r, (size_t)cnt * m->vw);
    for (uint32_t q = 0; q < cnt; q++) {
        uint32_t s;
        memcpy(&s, sp + 4 * (size_t)q, 4);
        if (s >= n)
            return im_fail(im, CQR_ECORRUPT, "map/%u: delta slot %u of %u", p,
                           s, n);
        memcpy(m->keys + lo + s, kp + 8 * (size_t)q, 8);
        memcpy(m->vals + (lo + s) * m->vw, vp + (size_t)q * m->vw, m->vw);
    }
    return 0;
}

int cqr_import_segment(cqr_import_t *im, const uint8_t *data, size_t len)
{
    if (!im || !data)
        return CQR_EINVAL;
    if (im->state == IM_FAILED)
        return CQR_EINVAL;
    uint32_t type, index;
    cqr_seg_kind_t kind;
    int rc = seg_header(data, len, 1, &type, &index, &kind, NULL);
    if (rc)
        return im_fail(im, rc, "segment of %zu bytes: %s", len,
                       rc == CQR_EVERSION ? "unknown format version"
                                          : "bad header or checksum");
    rd_t r = {data + CQR_SEGMENT_HEADER, len - CQR_SEGMENT_HEADER, 0};
    if (im->state == IM_CFG) {
        if (type != CQR_PAGE_CFG || kind != CQR_SEG_BASE)
            return im_fail(im, CQR_ECORRUPT, "expected cfg, got %s/%u",
                           cqr_page_type_name(type), index);
        return im_cfg(im, &r);
    }
    if (im->state == IM_META) {
        if (type != CQR_PAGE_META || kind != CQR_SEG_BASE)
            return im_fail(im, CQR_ECORRUPT, "expected meta, got %s/%u",
                           cqr_page_type_name(type), index);
        return im_meta(im, &r);
    }
    cqr_table_t *t = im->t;
    size_t slot;
    switch (type) {
    case CQR_PAGE_CB:
        if (index >= im->ncbp)
            goto range;
        slot = index;
        break;
    case CQR_PAGE_ROWS:
        if (index >= im->nfp)
            goto range;
        slot = im->ncbp + index;
        break;
    case CQR_PAGE_MAP:
        if (index >= im->nmp)
            goto range;
        slot = im->ncbp + im->nfp + index;
        break;
    default:
        return im_fail(im, CQR_ECORRUPT, "unexpected %s segment",
                       cqr_page_type_name(type));
    }
    if (kind == CQR_SEG_DELTA && !im->have[slot])
        return im_fail(im, CQR_ECORRUPT, "%s/%u: delta before its base",
                       cqr_page_type_name(type), index);
    if (kind == CQR_SEG_BASE && im->have[slot])
        return im_fail(im, CQR_ECORRUPT, "%s/%u: two bases",
                       cqr_page_type_name(type), index);
    if (type == CQR_PAGE_CB) {
        uint32_t b = index / t->cbpages, p = index % t->cbpages;
        rc = im_rows(im, &r, kind, &t->st->cb[b], p * CQR_CB_PAGE,
                     cb_page_rows(t, p), "cb", index);
    } else if (type == CQR_PAGE_ROWS) {
        rc = im_rows(im, &r, kind, &t->blocks[index], 0,
                     full_page_rows(t, index), "rows", index);
    } else {
        rc = im_map(im, &r, kind, index);
    }
    if (rc == 0 && r.bad)
        rc = im_fail(im, CQR_ECORRUPT, "%s/%u: truncated",
                     cqr_page_type_name(type), index);
    if (rc == 0)
        im->have[slot] = 1;
    return rc;
range:
    return im_fail(im, CQR_ECORRUPT, "%s/%u: no such page",
                   cqr_page_type_name(type), index);
}

/* Checks what no single segment can: the map's count and its values. */
static int im_check_map(cqr_import_t *im)
{
    cqr_table_t *t = im->t;
    const cqr_idmap_t *m = tracked_map(t);
    uint64_t n = (uint64_t)m->has_zero;
    for (size_t s = 0; s < m->cap; s++) {
        if (m->keys[s] == 0)
            continue;
        n++;
        const uint8_t *v = m->vals + s * m->vw;
        if (t->cfg.kind == CQR_KIND_FULL) {
            uint32_t row;
            memcpy(&row, v, 4);
            if (row >= t->nrows)
                return im_fail(im, CQR_ECORRUPT, "map: row %u of %llu", row,
                               (unsigned long long)t->nrows);
        } else {
            for (uint32_t i = 0; i < t->c; i++) {
                if (cqr_ptr_get(v, t->pw, i) >= t->k)
                    return im_fail(im, CQR_ECORRUPT, "map: pointer out of "
                                   "range");
            }
        }
    }
    if (m->has_zero) {
        if (t->cfg.kind == CQR_KIND_FULL) {
            uint32_t row;
            memcpy(&row, m->zero_val, 4);
            if (row >= t->nrows)
                return im_fail(im, CQR_ECORRUPT, "meta: row of ID 0");
        } else {
            for (uint32_t i = 0; i < t->c; i++) {
                if (cqr_ptr_get(m->zero_val, t->pw, i) >= t->k)
                    return im_fail(im, CQR_ECORRUPT, "meta: pointer of ID 0");
            }
        }
    }
    if (n != im->map_count)
        return im_fail(im, CQR_ECORRUPT, "map: %llu IDs, meta says %llu",
                       (unsigned long long)n,
                       (unsigned long long)im->map_count);
    return 0;
}

int cqr_import_finish(cqr_import_t *im, cqr_table_t **out, uint32_t *cursor)
{
    if (!im || !out)
        return CQR_EINVAL;
    int rc = 0;
    if (im->state != IM_PAGES) {
        if (im->state != IM_FAILED)
            im_fail(im, CQR_ECORRUPT, "incomplete: no %s",
                    im->state == IM_CFG ? "cfg" : "meta");
        rc = CQR_ECORRUPT;
        goto fail;
    }
    size_t np = im->ncbp + im->nfp + im->nmp;
    for (size_t i = 0; i < np; i++) {
        if (!im->have[i]) {
            uint32_t type = i < im->ncbp ? CQR_PAGE_CB
                            : i < im->ncbp + im->nfp ? CQR_PAGE_ROWS
                                                     : CQR_PAGE_MAP;
            size_t idx = i < im->ncbp ? i
                         : i < im->ncbp + im->nfp ? i - im->ncbp
                                                  : i - im->ncbp - im->nfp;
            rc = im_fail(im, CQR_ECORRUPT, "incomplete: no %s/%zu",
                         cqr_page_type_name(type), idx);
            goto fail;
        }
    }
    if (tracked_map(im->t) && (rc = im_check_map(im)) != 0)
        goto fail;
    im->t->ins_on = 1; /* the next export is incremental from here */
    *out = im->t;
    if (cursor)
        *cursor = im->t->wepoch;
    im->t = NULL;
    cqr_import_abort(im);
    return 0;
fail:
    cqr_import_abort(im);
    return rc;
}
