/* persist_export.c -- export of a table's state as segments.
 *
 * An export plans (which pages, how big) and faults in its buffers while
 * pushes go on, copies the changed pages under the table's gate (see
 * table_impl.h), and seals the segments after releasing it. persist.h
 * has the formats and the consistency argument.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "persist_impl.h"

uint64_t cqr_table_uid(const cqr_table_t *t)
{
    return t->uid;
}

/* ---- Segment buffers ---------------------------------------------------- */

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
 * payload is written at data + CQR_SEGMENT_HEADER. 0 or CQR_ENOMEM.
 * While planning it only records the size and leaves sg->data NULL: the
 * caller then copies nothing. */
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
        return 0;
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


static int enc_cfg(const cqr_table_t *t, cqr_segment_t *sg)
{
    int rc = seg_alloc(NULL, sg, CQR_PAGE_CFG, 0, CQR_SEG_BASE,
                       cqr_cfg_long(&t->cfg) ? CQR_CFG_BYTES
                                             : CQR_CFG_BYTES_V1);
    if (rc)
        return rc;
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    cqr_cfg_put(&w, &t->cfg);
    assert(w.p == sg->data + sg->len);
    sg->items = 1;
    return 0;
}

/* Meta: phase and usage counters, the schedule, seeds, the map's shape.
 * Lock held (shared) and gate held exclusively. The importer reads it
 * back in im_meta (persist_import.c). */
static int enc_meta(cqr_table_t *t, cqr_segment_t *sg)
{
    const cqr_idmap_t *m = cqr_tracked_map(t);
    size_t bytes = 4 + 4 + 8 + 3 * 8 + 3 * 8;
    if (t->ncb)
        bytes += 2 * (size_t)t->c * 8;
    if (m)
        bytes += 8 + 8 + 4 + 4 + cqr_map_pvw(t, m);
    if (t->cfg.kind == CQR_KIND_FULL)
        bytes += 8;
    if (cqr_cfg_long(&t->cfg))
        bytes += CQR_META_TAIL_BYTES;
    const cqr_ptrset_t *ps = cqr_static_set(t);
    if (ps)
        bytes += CQR_META_STATIC_BYTES;
    int rc = seg_alloc(NULL, sg, CQR_PAGE_META, 0, CQR_SEG_BASE, bytes);
    if (rc)
        return rc;
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    cqr_put_u32(&w, t->phases_done);
    cqr_put_u32(&w, 0); /* reserved */
    /* During a phase the live state is the pre-phase table, and so is the
     * schedule: a restored table runs the interrupted phase again. */
    cqr_put_u64(&w, t->phase ? t->examples_prev_phase : t->examples_at_phase);
    cqr_put_u64(&w, __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED));
    cqr_put_u64(&w, __atomic_load_n(&t->n_pushes, __ATOMIC_RELAXED));
    cqr_put_u64(&w, __atomic_load_n(&t->n_lookups, __ATOMIC_RELAXED));
    pthread_mutex_lock(&t->plock);
    cqr_put_f64(&w, t->last_inertia);
    cqr_put_f64(&w, t->last_phase_seconds);
    cqr_put_f64(&w, t->last_commit_seconds);
    pthread_mutex_unlock(&t->plock);
    if (t->ncb) {
        cqr_put(&w, t->st->seed_p, (size_t)t->c * 8);
        cqr_put(&w, t->st->seed_h, (size_t)t->c * 8);
    }
    if (m) {
        cqr_put_u64(&w, m->cap);
        cqr_put_u64(&w, m->count);
        cqr_put_u32(&w, cqr_map_pvw(t, m));
        cqr_put_u32(&w, (uint32_t)m->has_zero);
        cqr_put(&w, cqr_idmap_val_at(m, m->cap), cqr_map_pvw(t, m));
    }
    if (t->cfg.kind == CQR_KIND_FULL)
        cqr_put_u64(&w, t->nrows);
    if (cqr_cfg_long(&t->cfg)) {
        cqr_put_u64(&w, t->n_admitted);
        cqr_put_u64(&w, t->n_evicted);
        cqr_put_u64(&w, t->ttl_hand);
        cqr_put_u64(&w, 0); /* reserved */
    }
    if (ps) {
        cqr_put_u64(&w, cqr_packmap_size(&ps->pm));
        cqr_put_u64(&w, ps->pm.n);
        cqr_put_u64(&w, t->rebuilds);
        cqr_put_u64(&w, 0); /* reserved */
    }
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
 * steps, then (a full table that evicts) stamps, each contiguous. */
static int rows_base(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                     uint32_t index, const cqr_rows_t *r, uint32_t lo,
                     uint32_t n, const uint32_t *stamps)
{
    int rc = seg_alloc(cx, sg, type, index, CQR_SEG_BASE,
                       (size_t)n * (cqr_row_bytes(cx->t, r->w) +
                                    (stamps ? 4 : 0)));
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    cqr_put(&w, r->param + (size_t)lo * r->w, (size_t)n * r->w * 4);
    if (r->sw)
        cqr_put(&w, r->state + (size_t)lo * r->sw, (size_t)n * r->sw * 4);
    if (r->step)
        cqr_put(&w, r->step + lo, (size_t)n * 4);
    for (uint32_t j = 0; stamps && j < n; j++)
        cqr_put_u32(&w, __atomic_load_n(&stamps[lo + j], __ATOMIC_RELAXED));
    assert(w.p == sg->data + sg->len);
    sg->items = n;
    return 0;
}

/* Copies the m rows of [lo, lo+n) whose mark is >= since: a count, the
 * row indices within the page, then their parameters, state, steps and
 * stamps (if any). */
static int rows_delta(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                      uint32_t index, const cqr_rows_t *r, uint32_t lo,
                      uint32_t n, const uint32_t *marks, uint32_t since,
                      uint32_t m, const uint32_t *stamps)
{
    int rc = seg_alloc(cx, sg, type, index, CQR_SEG_DELTA,
                       8 + (size_t)m * (4 + cqr_row_bytes(cx->t, r->w) +
                                        (stamps ? 4 : 0)));
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    uint8_t *base = sg->data + CQR_SEGMENT_HEADER;
    cqr_wr_t w = {base};
    cqr_put_u32(&w, m);
    cqr_put_u32(&w, 0);
    uint32_t *idx = (uint32_t *)w.p; /* 8-aligned after the header */
    uint32_t k = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (__atomic_load_n(&marks[j], __ATOMIC_RELAXED) >= since)
            idx[k++] = j;
    }
    assert(k == m);
    w.p += (size_t)m * 4;
    for (uint32_t q = 0; q < m; q++)
        cqr_put(&w, r->param + (size_t)(lo + idx[q]) * r->w, (size_t)r->w * 4);
    for (uint32_t q = 0; r->sw && q < m; q++)
        cqr_put(&w, r->state + (size_t)(lo + idx[q]) * r->sw,
                (size_t)r->sw * 4);
    for (uint32_t q = 0; r->step && q < m; q++)
        cqr_put_u32(&w, r->step[lo + idx[q]]);
    for (uint32_t q = 0; stamps && q < m; q++)
        cqr_put_u32(&w, __atomic_load_n(&stamps[lo + idx[q]],
                                        __ATOMIC_RELAXED));
    assert(w.p == sg->data + sg->len);
    sg->items = m;
    return 0;
}

/* One rows page: unchanged, base or delta by its marks. `whole` forces a
 * base (first export, or the structure was replaced); stamps: a full
 * block's last-push stamps (eviction), else NULL. */
static int rows_page(exp_ctx_t *cx, cqr_segment_t *sg, uint32_t type,
                     uint32_t index, const cqr_rows_t *r, uint32_t lo,
                     uint32_t n, const uint32_t *marks, const uint32_t *pmark,
                     int whole, const uint32_t *stamps)
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
                              cx->since, m, stamps);
    }
    return rows_base(cx, sg, type, index, r, lo, n, stamps);
}

/* ---- Export of map pages ------------------------------------------------ */

/* A map page's payload: the n IDs of its slots (0 = empty), then their
 * values (pvw bytes each), gathered from the interleaved slots. */
static int map_base(exp_ctx_t *cx, cqr_segment_t *sg, const cqr_idmap_t *m,
                    uint32_t p)
{
    const uint32_t n = cqr_page_slots(m->cap, p);
    const uint32_t pvw = cqr_map_pvw(cx->t, m);
    const size_t lo = (size_t)p * CQR_MAP_PAGE;
    int rc = seg_alloc(cx, sg, CQR_PAGE_MAP, p, CQR_SEG_BASE,
                       (size_t)n * (8 + pvw));
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    for (uint32_t q = 0; q < n; q++)
        cqr_put_u64(&w, cqr_idmap_key_at(m, lo + q));
    for (uint32_t q = 0; q < n; q++)
        cqr_put(&w, cqr_idmap_val_at(m, lo + q), pvw);
    sg->items = n;
    return 0;
}

/* The slots sl[0..cnt) (within page p) inserted since the cursor. */
static int map_delta(exp_ctx_t *cx, cqr_segment_t *sg, const cqr_idmap_t *m,
                     uint32_t p, const uint32_t *sl, uint32_t cnt)
{
    const uint32_t pvw = cqr_map_pvw(cx->t, m);
    const size_t lo = (size_t)p * CQR_MAP_PAGE;
    int rc = seg_alloc(cx, sg, CQR_PAGE_MAP, p, CQR_SEG_DELTA,
                       8 + (size_t)cnt * (4 + 8 + pvw));
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    cqr_put_u32(&w, cnt);
    cqr_put_u32(&w, 0);
    cqr_put(&w, sl, (size_t)cnt * 4);
    for (uint32_t q = 0; q < cnt; q++)
        cqr_put_u64(&w, cqr_idmap_key_at(m, lo + sl[q]));
    for (uint32_t q = 0; q < cnt; q++)
        cqr_put(&w, cqr_idmap_val_at(m, lo + sl[q]), pvw);
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
    const cqr_idmap_t *m = cqr_tracked_map(t);
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
            if ((uint64_t)cnt[p] * 2 < cqr_page_slots(m->cap, p) &&
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

/* ---- Export of the admission sketch ------------------------------------- */

/* The sketch's counters, whole, when they changed since the cursor. */
static int sketch_page(exp_ctx_t *cx, cqr_segment_t *sg)
{
    const cqr_table_t *t = cx->t;
    if (cx->since &&
        __atomic_load_n(&t->skmark, __ATOMIC_RELAXED) < cx->since) {
        sg->type = CQR_PAGE_SKETCH;
        sg->index = 0;
        sg->kind = CQR_SEG_UNCHANGED;
        return 0;
    }
    int rc = seg_alloc(cx, sg, CQR_PAGE_SKETCH, 0, CQR_SEG_BASE,
                       CQR_SKETCH_BYTES);
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    cqr_wr_t w = {sg->data + CQR_SEGMENT_HEADER};
    for (size_t i = 0; i < CQR_SKETCH_BYTES; i++)
        w.p[i] = __atomic_load_n(&t->sketch->c[i], __ATOMIC_RELAXED);
    sg->items = 1;
    return 0;
}

/* ---- Export of the static set ------------------------------------------ */

/* Static page p of set ps, or keys page p: a base when the set was
 * rebuilt since the cursor, else unchanged. The set is immutable (only a
 * rebuild, under the exclusive lock, replaces it). */
static int static_page(exp_ctx_t *cx, cqr_segment_t *sg,
                       const cqr_ptrset_t *ps, uint32_t type, uint32_t p)
{
    if (cx->since && cx->since > cx->t->ps_base_epoch) {
        sg->type = type;
        sg->index = p;
        sg->kind = CQR_SEG_UNCHANGED;
        return 0;
    }
    const uint64_t total = type == CQR_PAGE_STATIC ? cqr_packmap_size(&ps->pm)
                                                   : ps->pm.n;
    const uint64_t unit = type == CQR_PAGE_STATIC ? CQR_STATIC_PAGE
                                                  : CQR_KEYS_PAGE;
    const uint64_t lo = (uint64_t)p * unit;
    const uint64_t n = total - lo < unit ? total - lo : unit;
    int rc = seg_alloc(cx, sg, type, p, CQR_SEG_BASE,
                       type == CQR_PAGE_STATIC ? n : n * 8);
    if (rc || !sg->data)
        return rc; /* out of memory, or planning */
    uint8_t *out = sg->data + CQR_SEGMENT_HEADER;
    sg->items = n;
    if (type == CQR_PAGE_STATIC)
        return cqr_packmap_write_range(&ps->pm, lo, n, out);
    /* The IDs, from the key file's records. */
    enum { BLK = 4096 };
    uint8_t *rec = malloc((size_t)BLK * CQR_KF_REC);
    if (!rec)
        return CQR_ENOMEM;
    for (uint64_t q = 0; q < n && rc == 0; q += BLK) {
        uint64_t cnt = n - q < BLK ? n - q : BLK;
        rc = cqr_keyfile_read(ps->kf, lo + q, rec, cnt);
        for (uint64_t j = 0; rc == 0 && j < cnt; j++) {
            uint64_t id = cqr_kf_id(rec + j * CQR_KF_REC);
            memcpy(out + (q + j) * 8, &id, 8);
        }
    }
    free(rec);
    return rc;
}

static int static_export(exp_ctx_t *cx, cqr_segment_t *seg,
                         const cqr_ptrset_t *ps)
{
    const size_t ns = cqr_static_pages(ps), nk = cqr_keys_pages(ps);
    int rc = 0;
    for (size_t p = 0; p < ns && rc == 0; p++)
        rc = static_page(cx, &seg[p], ps, CQR_PAGE_STATIC, (uint32_t)p);
    for (size_t p = 0; p < nk && rc == 0; p++)
        rc = static_page(cx, &seg[ns + p], ps, CQR_PAGE_KEYS, (uint32_t)p);
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
    const cqr_idmap_t *m = cqr_tracked_map(t);
    const size_t ncbp = (size_t)t->ncb * t->c * t->cbpages;
    const size_t nmp = m ? cqr_map_pages(m->cap) : 0;
    const size_t nsk = t->sketch ? 1 : 0;
    const size_t nfb = t->fallback ? 1 : 0;
    const cqr_ptrset_t *ps = cqr_static_set(t);
    const size_t nst = cqr_static_pages(ps) + cqr_keys_pages(ps);
    const size_t nseg = 2 + ncbp + t->nblocks + nmp + nsk + nfb + nst;
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
                           &t->st->cb[b], lo, cqr_cb_page_rows(t, p),
                           t->cbmark + (size_t)b * t->k + lo,
                           &t->cbpage[(size_t)b * t->cbpages + p], cb_whole,
                           NULL);
        }
    }
    for (size_t b = 0; rc == 0 && b < t->nblocks; b++, s++)
        rc = rows_page(cx, &seg[s], CQR_PAGE_ROWS, (uint32_t)b,
                       &t->blocks[b], 0, cqr_full_page_rows(t, b), t->fmark[b],
                       &t->fpage[b], cx->since == 0,
                       t->fstamp ? t->fstamp[b] : NULL);
    if (rc == 0 && nmp)
        rc = map_export(cx, seg + s, nmp);
    s += nmp;
    if (rc == 0 && nsk)
        rc = sketch_page(cx, &seg[s++]);
    if (rc == 0 && nfb)
        rc = rows_page(cx, &seg[s++], CQR_PAGE_FALLBACK, 0, t->fallback, 0,
                       CQR_FALLBACK_ROWS, t->fbmark, &t->fbpage,
                       cx->since == 0, NULL);
    if (rc == 0 && nst)
        rc = static_export(cx, seg + s, ps);
    s += nst;
    if (rc || cx->plan) {
        segs_free(seg, nseg);
        return rc;
    }
    x->seg = seg;
    x->nseg = nseg;
    x->known_ids = m ? m->count : 0;
    if (ps)
        x->known_ids += ps->pm.n;
    x->phases_done = t->phases_done;
    /* What a complete export would take, for the caller's ratios. */
    uint64_t full = seg[0].len + seg[1].len;
    for (uint32_t b = 0; b < t->ncb * t->c; b++)
        full += (uint64_t)t->k * cqr_row_bytes(t, t->w) +
                (uint64_t)t->cbpages * CQR_SEGMENT_HEADER;
    full += t->nrows * (cqr_row_bytes(t, t->cfg.dim) + (t->fstamp ? 4 : 0)) +
            t->nblocks * CQR_SEGMENT_HEADER;
    if (nfb)
        full += CQR_FALLBACK_ROWS * cqr_row_bytes(t, t->cfg.dim) +
                CQR_SEGMENT_HEADER;
    if (m)
        full += (uint64_t)m->cap * (8 + cqr_map_pvw(t, m)) +
                nmp * CQR_SEGMENT_HEADER;
    if (nsk)
        full += CQR_SEGMENT_HEADER + CQR_SKETCH_BYTES;
    if (ps)
        full += cqr_packmap_size(&ps->pm) + ps->pm.n * 8 +
                nst * CQR_SEGMENT_HEADER;
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
            cqr_seg_seal(&x->seg[i]);
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

