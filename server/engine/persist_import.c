/* persist_import.c -- import of a table's state from segments.
 *
 * Import builds a fresh table from cqr_table_create and overwrites its
 * state page by page, verifying every segment before it uses it and the
 * whole table before it hands it out. persist.h has the formats.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "persist_impl.h"

enum { IM_CFG, IM_META, IM_PAGES, IM_FAILED };

struct cqr_import {
    int state;           /* IM_*: what comes next */
    cqr_table_t *t;      /* the table being built (private) */
    uint8_t *have;       /* per page: base applied */
    size_t ncbp;         /* codebook pages */
    size_t nfp;          /* full row pages */
    size_t nmp;          /* map pages */
    size_t nsp;          /* sketch pages (0 or 1) */
    size_t nfbp;         /* fallback pages (0 or 1) */
    uint64_t map_count;  /* IDs the meta says the map holds */
    size_t nstp;         /* static pages (a compacted cqr table) */
    size_t nkp;          /* keys pages */
    uint64_t st_bytes;   /* bytes of the serialised static set */
    uint64_t st_n;       /* its IDs */
    int st_on;           /* the meta had a static tail */
    uint8_t *st_img;     /* the serialised set, as its pages come */
    cqr_keyfile_t *kf;   /* its IDs, as the keys pages come */
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
    free(im->st_img);
    cqr_keyfile_unref(im->kf);
    free(im);
}

const char *cqr_import_error(const cqr_import_t *im)
{
    return im ? im->err : "";
}

static int im_cfg(cqr_import_t *im, cqr_rd_t *r)
{
    cqr_table_config_t cfg;
    const size_t len = r->n;
    if (len != CQR_CFG_BYTES && len != CQR_CFG_BYTES_V1)
        return im_fail(im, CQR_ECORRUPT, "cfg: %zu bytes, expected %u or %u",
                       len, CQR_CFG_BYTES_V1, CQR_CFG_BYTES);
    cqr_cfg_get(r, &cfg);
    if ((len == CQR_CFG_BYTES) != cqr_cfg_long(&cfg))
        return im_fail(im, CQR_ECORRUPT, "cfg: %zu bytes for its options",
                       len);
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

/* The static tail of a compacted cqr table's meta: the shape of its
 * static set, whose pages then come. */
static int im_static_tail(cqr_import_t *im, cqr_rd_t *r)
{
    im->st_bytes = cqr_get_u64(r);
    im->st_n = cqr_get_u64(r);
    im->t->rebuilds = cqr_get_u64(r);
    (void)cqr_get_u64(r);
    /* A packmap of n IDs takes at least n / 8 bytes of values, and
     * about 9 bytes an ID: bounds that keep allocations sane. */
    im->st_on = 1;
    if (r->bad || im->st_n > (1ull << 40) ||
        im->st_bytes < 64 || im->st_bytes > 64 * im->st_n + (1u << 20))
        return im_fail(im, CQR_ECORRUPT, "meta: impossible static set (%llu "
                       "bytes, %llu IDs)", (unsigned long long)im->st_bytes,
                       (unsigned long long)im->st_n);
    im->st_img = malloc(im->st_bytes);
    int rc = im->st_img ? cqr_keyfile_create(im->st_n, &im->kf) : CQR_ENOMEM;
    if (rc)
        return im_fail(im, rc, "meta: static set of %llu bytes: %s",
                       (unsigned long long)im->st_bytes, cqr_strerror(rc));
    im->nstp = (im->st_bytes + CQR_STATIC_PAGE - 1) / CQR_STATIC_PAGE;
    im->nkp = (im->st_n + CQR_KEYS_PAGE - 1) / CQR_KEYS_PAGE;
    return 0;
}

/* A static or keys page (always a base). */
static int im_static(cqr_import_t *im, cqr_rd_t *r, uint32_t type,
                     uint32_t p)
{
    const int keys = type == CQR_PAGE_KEYS;
    const uint64_t total = keys ? im->st_n : im->st_bytes;
    const uint64_t unit = keys ? CQR_KEYS_PAGE : CQR_STATIC_PAGE;
    const uint64_t lo = (uint64_t)p * unit;
    const uint64_t n = total - lo < unit ? total - lo : unit;
    if (r->n != (keys ? n * 8 : n))
        return im_fail(im, CQR_ECORRUPT, "%s/%u: %zu bytes",
                       cqr_page_type_name(type), p, r->n);
    if (!keys) {
        cqr_get(r, im->st_img + lo, n);
        return 0;
    }
    enum { BLK = 4096 };
    uint8_t rec[BLK * CQR_KF_REC];
    int rc = 0;
    for (uint64_t q = 0; q < n && rc == 0; q += BLK) {
        uint64_t cnt = n - q < BLK ? n - q : BLK;
        for (uint64_t j = 0; j < cnt; j++)
            cqr_kf_put(rec + j * CQR_KF_REC, cqr_get_u64(r), 0);
        rc = cqr_keyfile_write(im->kf, lo + q, rec, cnt);
    }
    return rc ? im_fail(im, rc, "keys/%u: %s", p, cqr_strerror(rc)) : 0;
}

static int im_meta(cqr_import_t *im, cqr_rd_t *r)
{
    cqr_table_t *t = im->t;
    t->phases_done = cqr_get_u32(r);
    (void)cqr_get_u32(r);
    t->examples_at_phase = cqr_get_u64(r);
    t->n_examples = cqr_get_u64(r);
    t->n_pushes = cqr_get_u64(r);
    t->n_lookups = cqr_get_u64(r);
    t->last_inertia = cqr_get_f64(r);
    t->last_phase_seconds = cqr_get_f64(r);
    t->last_commit_seconds = cqr_get_f64(r);
    if (t->ncb) {
        cqr_get(r, t->st->seed_p, (size_t)t->c * 8);
        cqr_get(r, t->st->seed_h, (size_t)t->c * 8);
    }
    cqr_idmap_t *m = cqr_tracked_map(t);
    if (m) {
        uint64_t cap = cqr_get_u64(r), count = cqr_get_u64(r);
        uint32_t vw = cqr_get_u32(r), has_zero = cqr_get_u32(r);
        if (r->bad || vw != cqr_map_pvw(t, m) || has_zero > 1 || cap < 16 ||
            cap > (1ull << 40) || count - has_zero >= cap || count < has_zero)
            return im_fail(im, CQR_ECORRUPT,
                           "meta: impossible map shape (cap %llu, count "
                           "%llu, value width %u)",
                           (unsigned long long)cap, (unsigned long long)count,
                           vw);
        const uint32_t mvw = m->vw; /* the table's, maybe wider than vw */
        cqr_idmap_free(m);
        int rc = cqr_idmap_init(m, mvw, (size_t)cap);
        if (rc)
            return im_fail(im, rc, "meta: map of %llu slots: %s",
                           (unsigned long long)cap, cqr_strerror(rc));
        assert(m->cap == cap);
        m->count = count;
        m->has_zero = (int)has_zero;
        cqr_get(r, cqr_idmap_val_at(m, m->cap), vw);
        im->map_count = count;
        im->nmp = cqr_map_pages(cap);
    }
    if (t->cfg.kind == CQR_KIND_FULL) {
        uint64_t nrows = cqr_get_u64(r);
        /* Rows freed by eviction stay allocated: more rows than IDs. */
        int fewer = cqr_full_evicts(&t->cfg) ? nrows < im->map_count
                                             : nrows != im->map_count;
        if (r->bad || nrows >= UINT32_MAX || fewer)
            return im_fail(im, CQR_ECORRUPT,
                           "meta: %llu rows for %llu known IDs",
                           (unsigned long long)nrows,
                           (unsigned long long)im->map_count);
        size_t nb = (nrows + CQR_FULL_BLOCK - 1) >> CQR_FULL_BLOCK_SHIFT;
        int rc = cqr_full_reserve(t, nrows);
        if (rc)
            return im_fail(im, rc, "meta: %zu row blocks: %s", nb,
                           cqr_strerror(rc));
        t->nrows = nrows;
        im->nfp = nb;
    }
    if (cqr_cfg_long(&t->cfg)) {
        t->n_admitted = cqr_get_u64(r);
        t->n_evicted = cqr_get_u64(r);
        t->ttl_hand = cqr_get_u64(r);
        (void)cqr_get_u64(r);
    }
    if (t->cfg.kind == CQR_KIND_CQR && r->n == CQR_META_STATIC_BYTES) {
        int rc = im_static_tail(im, r);
        if (rc)
            return rc;
    }
    if (!cqr_cfg_long(&t->cfg)) {
        /* Before issue 19 every known ID was admitted and none evicted. */
        t->n_admitted = im->map_count + im->st_n;
    }
    if (r->bad || r->n != 0)
        return im_fail(im, CQR_ECORRUPT, "meta: wrong length");
    im->ncbp = (size_t)t->ncb * t->c * t->cbpages;
    im->nsp = t->sketch ? 1 : 0;
    im->nfbp = t->fallback ? 1 : 0;
    im->have = calloc(im->ncbp + im->nfp + im->nmp + im->nsp + im->nfbp +
                          im->nstp + im->nkp + 1,
                      1);
    if (!im->have)
        return im_fail(im, CQR_ENOMEM, "meta: out of memory");
    im->state = IM_PAGES;
    return 0;
}

/* Applies a rows payload (base or delta) to rows [lo, lo+n) of r (and
 * their stamps, for a full table that evicts; else stamps is NULL). */
static int im_rows(cqr_import_t *im, cqr_rd_t *r, cqr_seg_kind_t kind,
                   cqr_rows_t *rows, uint32_t lo, uint32_t n, const char *what,
                   uint32_t index, uint32_t *stamps)
{
    const cqr_table_t *t = im->t;
    const size_t rb = cqr_row_bytes(t, rows->w) + (stamps ? 4 : 0);
    if (kind == CQR_SEG_BASE) {
        /* A full table's last page may have grown since its base; the
         * rows added later come in deltas (new rows are always marked). */
        if (r->n % rb || r->n / rb > n ||
            (strcmp(what, "rows") != 0 && r->n / rb != n))
            return im_fail(im, CQR_ECORRUPT, "%s/%u: %zu bytes for %u rows",
                           what, index, r->n, n);
        n = (uint32_t)(r->n / rb);
        cqr_get(r, rows->param + (size_t)lo * rows->w,
                (size_t)n * rows->w * 4);
        if (rows->sw)
            cqr_get(r, rows->state + (size_t)lo * rows->sw,
                    (size_t)n * rows->sw * 4);
        if (rows->step)
            cqr_get(r, rows->step + lo, (size_t)n * 4);
        if (stamps)
            cqr_get(r, stamps + lo, (size_t)n * 4);
        return 0;
    }
    uint32_t m = cqr_get_u32(r);
    (void)cqr_get_u32(r);
    if (r->bad || m > n || r->n != (size_t)m * (4 + rb))
        return im_fail(im, CQR_ECORRUPT, "%s/%u: bad delta length", what,
                       index);
    const uint8_t *ip = cqr_take(r, (size_t)m * 4);
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
        cqr_get(r, rows->param + (size_t)(lo + j) * rows->w,
                (size_t)rows->w * 4);
    }
    for (uint32_t q = 0; rows->sw && q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        cqr_get(r, rows->state + (size_t)(lo + j) * rows->sw,
                (size_t)rows->sw * 4);
    }
    for (uint32_t q = 0; rows->step && q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        rows->step[lo + j] = cqr_get_u32(r);
    }
    for (uint32_t q = 0; stamps && q < m; q++) {
        uint32_t j;
        memcpy(&j, ip + 4 * (size_t)q, 4);
        stamps[lo + j] = cqr_get_u32(r);
    }
    return 0;
}

/* Sets slot i of m to id and a value of pvw bytes (the rest of the slot's
 * value, a full row's counter, zero). */
static void im_slot(cqr_idmap_t *m, size_t i, const uint8_t *id,
                    const uint8_t *val, uint32_t pvw)
{
    uint8_t *s = m->slots + i * m->stride;
    memset(s, 0, m->stride);
    memcpy(s, id, 8);
    memcpy(s + 8, val, pvw);
}

static int im_map(cqr_import_t *im, cqr_rd_t *r, cqr_seg_kind_t kind,
                  uint32_t p)
{
    cqr_idmap_t *m = cqr_tracked_map(im->t);
    const uint32_t n = cqr_page_slots(m->cap, p);
    const uint32_t pvw = cqr_map_pvw(im->t, m);
    const size_t lo = (size_t)p * CQR_MAP_PAGE;
    if (kind == CQR_SEG_BASE) {
        if (r->n != (size_t)n * (8 + pvw))
            return im_fail(im, CQR_ECORRUPT, "map/%u: %zu bytes, expected %zu",
                           p, r->n, (size_t)n * (8 + pvw));
        const uint8_t *kp = cqr_take(r, (size_t)n * 8);
        const uint8_t *vp = cqr_take(r, (size_t)n * pvw);
        for (uint32_t q = 0; q < n; q++)
            im_slot(m, lo + q, kp + 8 * (size_t)q, vp + (size_t)q * pvw, pvw);
        return 0;
    }
    uint32_t cnt = cqr_get_u32(r);
    (void)cqr_get_u32(r);
    if (r->bad || cnt > n || r->n != (size_t)cnt * (4 + 8 + pvw))
        return im_fail(im, CQR_ECORRUPT, "map/%u: bad delta length", p);
    const uint8_t *sp = cqr_take(r, (size_t)cnt * 4);
    const uint8_t *kp = cqr_take(r, (size_t)cnt * 8);
    const uint8_t *vp = cqr_take(r, (size_t)cnt * pvw);
    for (uint32_t q = 0; q < cnt; q++) {
        uint32_t s;
        memcpy(&s, sp + 4 * (size_t)q, 4);
        if (s >= n)
            return im_fail(im, CQR_ECORRUPT, "map/%u: delta slot %u of %u", p,
                           s, n);
        im_slot(m, lo + s, kp + 8 * (size_t)q, vp + (size_t)q * pvw, pvw);
    }
    return 0;
}

/* Applies a page's segment (its slot checked) to the table. */
static int im_apply(cqr_import_t *im, cqr_rd_t *r, uint32_t type,
                    cqr_seg_kind_t kind, uint32_t index)
{
    cqr_table_t *t = im->t;
    int rc = 0;
    if (type == CQR_PAGE_CB) {
        uint32_t b = index / t->cbpages, p = index % t->cbpages;
        rc = im_rows(im, r, kind, &t->st->cb[b], p * CQR_CB_PAGE,
                     cqr_cb_page_rows(t, p), "cb", index, NULL);
    } else if (type == CQR_PAGE_ROWS) {
        rc = im_rows(im, r, kind, &t->blocks[index], 0,
                     cqr_full_page_rows(t, index), "rows", index,
                     t->fstamp ? t->fstamp[index] : NULL);
    } else if (type == CQR_PAGE_FALLBACK) {
        rc = im_rows(im, r, kind, t->fallback, 0, CQR_FALLBACK_ROWS,
                     "fallback", index, NULL);
    } else if (type == CQR_PAGE_STATIC || type == CQR_PAGE_KEYS) {
        rc = im_static(im, r, type, index);
    } else if (type == CQR_PAGE_SKETCH) {
        if (kind != CQR_SEG_BASE || r->n != CQR_SKETCH_BYTES)
            return im_fail(im, CQR_ECORRUPT, "sketch: %zu bytes", r->n);
        cqr_get(r, t->sketch->c, CQR_SKETCH_BYTES);
    } else {
        rc = im_map(im, r, kind, index);
    }
    return rc;
}

int cqr_import_segment(cqr_import_t *im, const uint8_t *data, size_t len)
{
    if (!im || !data)
        return CQR_EINVAL;
    if (im->state == IM_FAILED)
        return CQR_EINVAL;
    uint32_t type, index;
    cqr_seg_kind_t kind;
    int rc = cqr_seg_header(data, len, 1, &type, &index, &kind, NULL);
    if (rc)
        return im_fail(im, rc, "segment of %zu bytes: %s", len,
                       rc == CQR_EVERSION ? "unknown format version"
                                          : "bad header or checksum");
    cqr_rd_t r = {data + CQR_SEGMENT_HEADER, len - CQR_SEGMENT_HEADER, 0};
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
    case CQR_PAGE_SKETCH:
        if (index >= im->nsp)
            goto range;
        slot = im->ncbp + im->nfp + im->nmp + index;
        break;
    case CQR_PAGE_FALLBACK:
        if (index >= im->nfbp)
            goto range;
        slot = im->ncbp + im->nfp + im->nmp + im->nsp + index;
        break;
    case CQR_PAGE_STATIC:
    case CQR_PAGE_KEYS:
        if (index >= (type == CQR_PAGE_STATIC ? im->nstp : im->nkp) ||
            kind != CQR_SEG_BASE)
            goto range;
        slot = im->ncbp + im->nfp + im->nmp + im->nsp + im->nfbp + index +
               (type == CQR_PAGE_KEYS ? im->nstp : 0);
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
    rc = im_apply(im, &r, type, kind, index);
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
    const cqr_idmap_t *m = cqr_tracked_map(t);
    uint64_t n = (uint64_t)m->has_zero;
    for (size_t s = 0; s < m->cap; s++) {
        if (cqr_idmap_key_at(m, s) == 0)
            continue;
        n++;
        const uint8_t *v = cqr_idmap_val_at(m, s);
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
            memcpy(&row, cqr_idmap_val_at(m, m->cap), 4);
            if (row >= t->nrows)
                return im_fail(im, CQR_ECORRUPT, "meta: row of ID 0");
        } else {
            for (uint32_t i = 0; i < t->c; i++) {
                if (cqr_ptr_get(cqr_idmap_val_at(m, m->cap), t->pw, i) >=
                    t->k)
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

/* Reads the static set from its pages and installs it: its shape must
 * be the table's and every pointer below k. */
static int im_finish_static(cqr_import_t *im)
{
    cqr_table_t *t = im->t;
    cqr_ptrset_t *ps = calloc(1, sizeof *ps);
    if (!ps)
        return im_fail(im, CQR_ENOMEM, "static: out of memory");
    int rc = cqr_packmap_read(im->st_img, im->st_bytes, &ps->pm);
    free(im->st_img);
    im->st_img = NULL;
    ps->c = t->c;
    ps->pbits = cqr_ptr_bits(t->k);
    ps->kf = im->kf;
    im->kf = NULL;
    const uint32_t fbits = cqr_ptrset_fbits(t->c, ps->pbits);
    if (rc == 0 && (ps->pm.n != im->st_n || ps->pm.fbits != fbits ||
                    ps->pm.vbits != fbits + t->c * ps->pbits))
        rc = CQR_ECORRUPT;
    for (uint32_t q = 0; rc == 0 && q < ps->pm.nparts; q++) {
        const cqr_pm_part_t *pt = &ps->pm.parts[q];
        for (uint64_t j = 0; j < pt->n && rc == 0; j++) {
            uint64_t vbit = pt->vbit0 + j * ps->pm.vbits;
            for (uint32_t i = 0; i < t->c; i++)
                if (cqr_ptrset_ptr(ps, vbit, i) >= t->k)
                    rc = CQR_ECORRUPT;
        }
    }
    if (rc) {
        cqr_ptrset_destroy(ps);
        return im_fail(im, rc, "static: %s", rc == CQR_ECORRUPT
                                                 ? "impossible static set"
                                                 : cqr_strerror(rc));
    }
    t->st->ps = ps;
    t->compact = 1;
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
    const size_t np = im->ncbp + im->nfp + im->nmp + im->nsp + im->nfbp +
                      im->nstp + im->nkp;
    for (size_t i = 0; i < np; i++) {
        if (!im->have[i]) {
            const size_t ends[7] = {
                im->ncbp, im->ncbp + im->nfp, im->ncbp + im->nfp + im->nmp,
                im->ncbp + im->nfp + im->nmp + im->nsp,
                np - im->nstp - im->nkp, np - im->nkp, np};
            static const uint32_t types[7] = {
                CQR_PAGE_CB, CQR_PAGE_ROWS, CQR_PAGE_MAP, CQR_PAGE_SKETCH,
                CQR_PAGE_FALLBACK, CQR_PAGE_STATIC, CQR_PAGE_KEYS};
            size_t g = 0;
            while (i >= ends[g])
                g++;
            uint32_t type = types[g];
            size_t idx = g ? i - ends[g - 1] : i;
            rc = im_fail(im, CQR_ECORRUPT, "incomplete: no %s/%zu",
                         cqr_page_type_name(type), idx);
            goto fail;
        }
    }
    if (cqr_tracked_map(im->t) && (rc = im_check_map(im)) != 0)
        goto fail;
    if (im->st_on && (rc = im_finish_static(im)) != 0)
        goto fail;
    if ((rc = cqr_full_free_rebuild(im->t)) != 0) {
        im_fail(im, rc, "free rows: %s", cqr_strerror(rc));
        goto fail;
    }
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
