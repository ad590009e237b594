/* model_delta.c -- applying a delta export to a full one (model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "model.h"
#include "model_impl.h"

static int is_removed(const cqr_model_t *d, uint64_t id)
{
    size_t lo = 0, hi = d->nremoved;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->removed[mid] == id)
            return 1;
        if (d->removed[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* CQR_EINVAL with a reason unless d is a delta that applies to base. */
static int check_pair(const cqr_model_t *base, const cqr_model_t *d,
                      char *why, size_t whylen)
{
    const cqr_model_info_t *a = &base->h, *b = &d->h;
    if (a->flags & CQR_MODEL_DELTA) {
        snprintf(why, whylen, "the base is itself a delta");
        return CQR_EINVAL;
    }
    if (!(b->flags & CQR_MODEL_DELTA)) {
        snprintf(why, whylen, "not a delta export");
        return CQR_EINVAL;
    }
    if (b->base_generation != a->generation) {
        snprintf(why, whylen, "the delta applies to generation %llu, the "
                 "model is generation %llu",
                 (unsigned long long)b->base_generation,
                 (unsigned long long)a->generation);
        return CQR_EINVAL;
    }
    if (a->kind != b->kind || a->dim != b->dim || a->chunks != b->chunks ||
        (a->flags & CQR_MODEL_FALLBACK) != (b->flags & CQR_MODEL_FALLBACK) ||
        a->rows != b->rows || a->pw != b->pw || a->seed != b->seed ||
        a->dtype != b->dtype ||
        memcmp(&a->init_scale, &b->init_scale, 4) != 0) {
        snprintf(why, whylen, "the delta is of another table (kind, shape, "
                 "seed or dtype differ)");
        return CQR_EINVAL;
    }
    return 0;
}

int cqr_model_apply_delta(const cqr_model_t *base, const cqr_model_t *d,
                          cqr_model_t **out, char *why, size_t whylen)
{
    int rc = check_pair(base, d, why, whylen);
    if (rc)
        return rc;
    const size_t vb = base->vb;
    const int scaled = base->val_scales && base->h.dtype == CQR_DTYPE_INT8 &&
                       base->h.kind == CQR_MODEL_KIND_FULL;
    size_t cap = base->nids + d->nids;
    uint64_t *ids = malloc((cap ? cap : 1) * 8);
    uint8_t *vals = malloc(cap * vb + 1);
    float *vs = scaled ? malloc((cap ? cap : 1) * 4) : NULL;
    if (!ids || !vals || (scaled && !vs)) {
        free(ids);
        free(vals);
        free(vs);
        snprintf(why, whylen, "out of memory");
        return CQR_ENOMEM;
    }
    size_t n = 0;
    for (size_t j = 0; j < base->nids; j++) {
        uint64_t id = base->ids[j];
        if (cqr_model_find(d, id) >= 0 || is_removed(d, id))
            continue;
        ids[n] = id;
        memcpy(vals + n * vb, base->vals + j * vb, vb);
        if (scaled)
            vs[n] = base->val_scales[j];
        n++;
    }
    memcpy(ids + n, d->ids, d->nids * 8);
    if (vb)
        memcpy(vals + n * vb, d->vals, d->nids * vb);
    if (scaled)
        memcpy(vs + n, d->val_scales, d->nids * 4);
    n += d->nids;
    cqr_model_content_t mc = {
        .h = d->h, .seeds = d->seeds, .cb = d->cb,
        .cb_scales = d->h.dtype == CQR_DTYPE_INT8 ? d->cb_scales : NULL,
        .nids = n, .ids = ids, .vals = vals, .val_scales = vs};
    mc.h.flags &= ~CQR_MODEL_DELTA;
    mc.h.base_generation = 0;
    uint8_t *img = NULL;
    size_t len = 0;
    rc = cqr_model_write(&mc, &img, &len, why, whylen);
    free(ids);
    free(vals);
    free(vs);
    if (rc)
        return rc;
    return cqr_model_open_image(img, len, out, why, whylen);
}
