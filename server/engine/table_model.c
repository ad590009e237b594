/* table_model.c -- a table's serving export (table_model.h): the
 * content model.h's writer serialises, read from the table's state. */
#include "table_model.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_impl.h"
#include "table_impl.h"

/* The per-ID part of an export being built. */
typedef struct id_part {
    uint64_t *ids;
    uint8_t *vals;
    float *scales;   /* int8 full rows */
    size_t n;
    uint64_t *removed;
    size_t nremoved;
} id_part_t;

static void id_part_free(id_part_t *p)
{
    free(p->ids);
    free(p->vals);
    free(p->scales);
    free(p->removed);
}

/* The known-ID map of a full or cqr table (NULL for hash and ce). */
static const cqr_idmap_t *known_map(const cqr_table_t *t)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return &t->rowmap;
    if (t->cfg.kind == CQR_KIND_CQR)
        return &t->st->ids;
    return NULL;
}

/* A full table's row of a map value. */
static const float *full_row(const cqr_table_t *t, const void *val)
{
    const cqr_full_slot_t *s = val;
    uint32_t local;
    const cqr_rows_t *blk = cqr_full_block(t, s->row, &local);
    return blk->param + (size_t)local * blk->w;
}

/* Whether the known ID whose map value is val counts as known at `now`:
 * a full table's row that expired (ttl_seconds) is not. */
static int live(const cqr_table_t *t, const void *val, uint32_t now)
{
    return t->cfg.kind != CQR_KIND_FULL ||
           !cqr_full_expired(t, ((const cqr_full_slot_t *)val)->row, now);
}

/* Whether the value of `id` (val, in t) equals the one base has. */
static int same_value(const cqr_table_t *t, const cqr_table_t *base,
                      uint64_t id, const void *val)
{
    if (t->cfg.kind == CQR_KIND_CQR) {
        /* Either table may keep the ID in its static set. */
        uint32_t p[CQR_MAX_CHUNKS];
        const uint8_t *bv;
        if (!cqr_cqr_find(base, base->st, id, p, &bv))
            return 0;
        uint8_t b[CQR_MAX_CHUNKS * 4];
        for (uint32_t i = 0; i < base->c; i++)
            cqr_ptr_set(b, base->pw, i, p[i]);
        return memcmp(val, b, (size_t)t->c * t->pw) == 0;
    }
    const void *bv = cqr_idmap_find(known_map(base), id);
    if (!bv)
        return 0;
    return memcmp(full_row(t, val), full_row(base, bv),
                  (size_t)t->cfg.dim * sizeof(float)) == 0;
}

/* Adds ID id of value val (a full table's map value; a cqr table's
 * pointers, c x pw bytes) to p unless base has the same. */
static void collect_one(const cqr_table_t *t, const cqr_table_t *base,
                        uint32_t dtype, size_t vb, id_part_t *p, uint64_t id,
                        const void *val)
{
    if (base && same_value(t, base, id, val))
        return;
    p->ids[p->n] = id;
    if (t->cfg.kind == CQR_KIND_FULL)
        cqr_model_encode(dtype, full_row(t, val), 1, t->cfg.dim,
                         p->vals + p->n * vb,
                         p->scales ? p->scales + p->n : NULL);
    else
        memcpy(p->vals + p->n * vb, val, vb);
    p->n++;
}

/* Known IDs of a full or cqr table (the static set's included). */
static size_t known_count(const cqr_table_t *t)
{
    return t->cfg.kind == CQR_KIND_CQR ? cqr_state_known(t->st)
                                       : known_map(t)->count;
}

/* Collects the IDs of t (all, or those whose value differs from base's)
 * and the IDs only base knows. Rows of t expired at t's clock are left
 * out; base's are all taken as its export had them (a row live now was
 * live at any earlier export, so the delta stays exact). */
static int collect_ids(const cqr_table_t *t, const cqr_table_t *base,
                       uint32_t dtype, id_part_t *p)
{
    const int full = t->cfg.kind == CQR_KIND_FULL;
    const size_t vb = full ? (size_t)t->cfg.dim * cqr_dtype_size(dtype)
                           : (size_t)t->c * t->pw;
    size_t cap = known_count(t) ? known_count(t) : 1;
    p->ids = malloc(cap * 8);
    p->vals = malloc(cap * vb);
    p->scales = full && dtype == CQR_DTYPE_INT8 ? malloc(cap * 4) : NULL;
    if (!p->ids || !p->vals || (full && dtype == CQR_DTYPE_INT8 && !p->scales))
        return CQR_ENOMEM;
    const uint32_t now = t->cfg.ttl_seconds ? cqr_table_now(t) : 0;
    uint64_t id;
    void *val;
    int rc = 0;
    if (full) {
        size_t pos = 0;
        while (cqr_idmap_next(known_map(t), &pos, &id, &val))
            if (live(t, val, now))
                collect_one(t, base, dtype, vb, p, id, val);
    } else {
        cqr_known_iter_t it;
        uint32_t ptr[CQR_MAX_CHUNKS];
        uint8_t v[CQR_MAX_CHUNKS * 4];
        cqr_known_iter_init(&it, t, t->st);
        while (p->n < cap && cqr_known_iter_next(&it, &id, ptr, &val)) {
            for (uint32_t i = 0; i < t->c; i++)
                cqr_ptr_set(v, t->pw, i, ptr[i]);
            collect_one(t, base, dtype, vb, p, id, v);
        }
        rc = it.rc;
        cqr_known_iter_free(&it);
    }
    if (rc || !base)
        return rc;
    p->removed = malloc((known_count(base) ? known_count(base) : 1) * 8);
    if (!p->removed)
        return CQR_ENOMEM;
    if (full) {
        size_t pos = 0;
        while (cqr_idmap_next(known_map(base), &pos, &id, &val)) {
            const void *v = cqr_idmap_find(known_map(t), id);
            if (!v || !live(t, v, now))
                p->removed[p->nremoved++] = id;
        }
        return 0;
    }
    cqr_known_iter_t it;
    uint32_t ptr[CQR_MAX_CHUNKS];
    cqr_known_iter_init(&it, base, base->st);
    while (p->nremoved < known_count(base) &&
           cqr_known_iter_next(&it, &id, ptr, &val))
        if (!cqr_cqr_known(t, t->st, id))
            p->removed[p->nremoved++] = id;
    rc = it.rc;
    cqr_known_iter_free(&it);
    return rc;
}

/* Seeds and encoded codebooks of a codebook kind into *seeds, *cb,
 * *scales (malloc'd). */
static int collect_codebooks(const cqr_table_t *t, uint32_t dtype,
                             uint64_t **seeds, uint8_t **cb, float **scales)
{
    if (t->cfg.kind == CQR_KIND_FULL) {
        /* Its fallback rows (admission), or nothing. */
        const uint32_t n = t->fallback ? CQR_FALLBACK_ROWS : 0;
        *seeds = calloc(2, 8);
        *cb = malloc((size_t)n * t->cfg.dim * cqr_dtype_size(dtype) + 1);
        *scales = dtype == CQR_DTYPE_INT8 ? malloc((size_t)n * 4 + 4) : NULL;
        if (!*seeds || !*cb || (dtype == CQR_DTYPE_INT8 && !*scales))
            return CQR_ENOMEM;
        if (n) {
            (*seeds)[0] = t->fb_seed;
            cqr_model_encode(dtype, t->fallback->param, n, t->cfg.dim, *cb,
                             *scales);
        }
        return 0;
    }
    const size_t c = t->c, nblk = (size_t)t->ncb * c;
    const size_t blk_vals = (size_t)t->k * t->w;
    *seeds = calloc(2 * c, 8);
    *cb = malloc(nblk * blk_vals * cqr_dtype_size(dtype) + 1);
    *scales = dtype == CQR_DTYPE_INT8 ? malloc(nblk * t->k * 4 + 4) : NULL;
    if (!*seeds || !*cb || (dtype == CQR_DTYPE_INT8 && !*scales))
        return CQR_ENOMEM;
    if (t->ncb == 0)
        return 0;
    for (size_t i = 0; i < c; i++) {
        (*seeds)[i] = t->st->seed_p[i];
        (*seeds)[c + i] = t->st->seed_h[i];
    }
    for (size_t b = 0; b < nblk; b++) {
        const cqr_rows_t *r = &t->st->cb[b];
        if (r->n != t->k || r->w != t->w)
            return CQR_EINVAL;
        cqr_model_encode(dtype, r->param, t->k, t->w,
                         *cb + b * blk_vals * cqr_dtype_size(dtype),
                         *scales ? *scales + b * t->k : NULL);
    }
    return 0;
}

static int same_table(const cqr_table_t *a, const cqr_table_t *b)
{
    return a->cfg.kind == b->cfg.kind && a->cfg.dim == b->cfg.dim &&
           a->c == b->c && a->k == b->k && a->pw == b->pw &&
           a->cfg.seed == b->cfg.seed &&
           memcmp(&a->cfg.init_scale, &b->cfg.init_scale, 4) == 0;
}

static int build(cqr_table_t *t, cqr_table_t *base, uint32_t dtype,
                 cqr_model_info_t *h, uint8_t **img, size_t *len, char *why,
                 size_t whylen)
{
    id_part_t p = {0};
    uint64_t *seeds = NULL;
    uint8_t *cb = NULL;
    float *scales = NULL;
    int rc = collect_codebooks(t, dtype, &seeds, &cb, &scales);
    if (rc == 0 && known_map(t))
        rc = collect_ids(t, base, dtype, &p);
    if (rc == 0) {
        cqr_model_content_t mc = {
            .h = *h, .seeds = seeds, .cb = cb, .cb_scales = scales,
            .nids = p.n, .ids = p.ids, .vals = p.vals,
            .val_scales = p.scales, .nremoved = p.nremoved,
            .removed = p.removed};
        rc = cqr_model_write(&mc, img, len, why, whylen);
    } else {
        snprintf(why, whylen, "%s", rc == CQR_ENOMEM ? "out of memory"
                                                     : "inconsistent table");
    }
    id_part_free(&p);
    free(seeds);
    free(cb);
    free(scales);
    return rc;
}

int cqr_table_model(cqr_table_t *t, cqr_table_t *base, uint32_t dtype,
                    uint64_t generation, uint64_t base_generation,
                    uint8_t **img, size_t *len, char *why, size_t whylen)
{
    if (!t || !img || !len || dtype > CQR_DTYPE_INT8) {
        snprintf(why, whylen, "invalid argument");
        return CQR_EINVAL;
    }
    if (base && !same_table(t, base)) {
        snprintf(why, whylen, "the two generations hold different tables "
                 "(kind, shape or seed differ): export it whole");
        return CQR_EINVAL;
    }
    cqr_model_info_t h = {
        .flags = base ? CQR_MODEL_DELTA : 0, .kind = (uint32_t)t->cfg.kind,
        .dim = t->cfg.dim, .chunks = t->c, .rows = t->k, .dtype = dtype,
        .pw = t->cfg.kind == CQR_KIND_CQR ? t->pw : 0,
        .init_scale = t->cfg.init_scale, .seed = t->cfg.seed,
        .generation = generation,
        .base_generation = base ? base_generation : 0};
    if (t->cfg.kind == CQR_KIND_FULL && t->fallback) {
        h.flags |= CQR_MODEL_FALLBACK;
        h.rows = CQR_FALLBACK_ROWS;
    }
    /* Lock order: by uid, as cqr_tableset_t does. */
    cqr_table_t *first = t, *second = base;
    if (base && base->uid < t->uid) {
        first = base;
        second = t;
    }
    pthread_rwlock_rdlock(&first->lock);
    if (second && second != first)
        pthread_rwlock_rdlock(&second->lock);
    int rc = build(t, base, dtype, &h, img, len, why, whylen);
    if (second && second != first)
        pthread_rwlock_unlock(&second->lock);
    pthread_rwlock_unlock(&first->lock);
    return rc;
}

/* ---- Back: a table from an export --------------------------------------- */

/* Fills a new table's codebooks, seeds and known IDs from m. */
static int fill_from_model(cqr_table_t *t, const cqr_model_t *m)
{
    if (t->ncb) {
        const size_t blk_rows = m->k, blk_bytes = blk_rows * m->w * m->esize;
        for (uint32_t i = 0; i < t->c; i++) {
            t->st->seed_p[i] = m->seeds[i];
            t->st->seed_h[i] = m->seeds[t->c + i];
        }
        for (size_t b = 0; b < (size_t)t->ncb * t->c; b++)
            cqr_model_decode(m, m->cb + b * blk_bytes,
                             m->h.dtype == CQR_DTYPE_INT8
                                 ? m->cb_scales + b * blk_rows : NULL,
                             blk_rows, m->w, t->st->cb[b].param);
    }
    if (t->cfg.kind == CQR_KIND_FULL && m->ncb) {
        /* Fallback rows: lookups of IDs without a row return them. */
        int rc = cqr_full_fallback_create(t);
        if (rc)
            return rc;
        cqr_model_decode(m, m->cb,
                         m->h.dtype == CQR_DTYPE_INT8 ? m->cb_scales : NULL,
                         m->k, m->h.dim, t->fallback->param);
    }
    if (m->nids == 0)
        return 0;
    int rc = cqr_table_reserve_known(t, m->nids);
    if (rc == 0)
        rc = cqr_table_add_known(t, m->ids, m->nids);
    for (size_t j = 0; rc == 0 && j < m->nids; j++) {
        if (t->cfg.kind == CQR_KIND_CQR) {
            uint8_t *v = cqr_idmap_find(&t->st->ids, m->ids[j]);
            memcpy(v, m->vals + j * m->vb, m->vb);
            continue;
        }
        const cqr_full_slot_t *s = cqr_full_find(t, m->ids[j]);
        uint32_t local;
        cqr_rows_t *blk = cqr_full_block(t, s->row, &local);
        cqr_model_decode(m, m->vals + j * m->vb,
                         m->h.dtype == CQR_DTYPE_INT8 ? m->val_scales + j
                                                      : NULL,
                         1, m->h.dim, blk->param + (size_t)local * blk->w);
    }
    return rc;
}

int cqr_table_from_model(const cqr_model_t *m, cqr_table_t **out, char *why,
                         size_t whylen)
{
    const cqr_model_info_t *h = &m->h;
    if (h->flags & CQR_MODEL_DELTA) {
        snprintf(why, whylen, "a delta cannot be served: apply it to its "
                 "base first");
        return CQR_EINVAL;
    }
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, (cqr_kind_t)h->kind, h->dim);
    cfg.chunks = h->chunks;
    if (h->kind != CQR_KIND_FULL)
        cfg.rows = h->rows; /* a full table's are its fallback rows */
    cfg.seed = h->seed;
    cfg.init_scale = h->init_scale;
    cfg.optim.kind = CQR_OPT_SGD;
    cqr_table_t *t = NULL;
    int rc = cqr_table_create(&cfg, &t);
    if (rc == 0 && (t->c != h->chunks ||
                    (h->kind != CQR_KIND_FULL && t->k != h->rows) ||
                    (h->kind == CQR_KIND_CQR && t->pw != h->pw) ||
                    (h->kind == CQR_KIND_FULL && h->rows &&
                     h->rows != CQR_FALLBACK_ROWS)))
        rc = CQR_EINVAL;
    if (rc == 0)
        rc = fill_from_model(t, m);
    if (rc) {
        cqr_table_destroy(t);
        snprintf(why, whylen, "cannot build the table: %s",
                 cqr_strerror(rc));
        return rc;
    }
    *out = t;
    return 0;
}
