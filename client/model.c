/* model.c -- the public face of serving exports (cqrps_model.h) over the
 * format module the server shares (server/engine/model.h). The codes of
 * both enums are the wire statuses, so they pass through unchanged. */
#include "cqrps_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"

/* The calling thread's last failure. */
static _Thread_local char last_error[512];

static int keep(int rc)
{
    if (rc == 0)
        last_error[0] = '\0';
    return rc;
}

const char *cqrps_model_last_error(void)
{
    return last_error;
}

int cqrps_model_open(const char *path, cqrps_model_t **out)
{
    if (!path || !out)
        return CQRPS_EINVAL;
    cqr_model_t *m = NULL;
    int rc = cqr_model_open(path, &m, last_error, sizeof last_error);
    if (rc == 0)
        *out = (cqrps_model_t *)m;
    return keep(rc);
}

void cqrps_model_close(cqrps_model_t *m)
{
    cqr_model_close((cqr_model_t *)m);
}

int cqrps_model_info(const cqrps_model_t *m, cqrps_model_info_t *out)
{
    if (!m || !out)
        return CQRPS_EINVAL;
    const cqr_model_t *cm = (const cqr_model_t *)m;
    const cqr_model_info_t *h = cqr_model_info(cm);
    size_t len;
    (void)cqr_model_image(cm, &len);
    memset(out, 0, sizeof *out);
    out->kind = (cqrps_kind_t)h->kind;
    out->dim = h->dim;
    out->chunks = h->chunks;
    out->rows = h->rows;
    out->dtype = cqr_dtype_name(h->dtype);
    out->is_delta = (h->flags & CQR_MODEL_DELTA) != 0;
    out->generation = h->generation;
    out->base_generation = h->base_generation;
    out->ids = cqr_model_nids(cm);
    out->bytes = len;
    return 0;
}

int cqrps_model_lookup(const cqrps_model_t *m, const uint64_t *ids, size_t n,
                       float *out)
{
    return cqr_model_lookup((const cqr_model_t *)m, ids, n, out);
}

int cqrps_model_lookup_pooled(const cqrps_model_t *m, const uint64_t *ids,
                              size_t n, const uint32_t *offsets, size_t nbags,
                              cqrps_pooling_t pooling, float *out)
{
    return cqr_model_lookup_pooled((const cqr_model_t *)m, ids, n, offsets,
                                   nbags, (int)pooling, out);
}

int cqrps_model_apply_delta(const cqrps_model_t *base, const char *delta_path,
                            cqrps_model_t **out)
{
    if (!base || !delta_path || !out)
        return CQRPS_EINVAL;
    cqr_model_t *d = NULL, *next = NULL;
    int rc = cqr_model_open(delta_path, &d, last_error, sizeof last_error);
    if (rc == 0) {
        rc = cqr_model_apply_delta((const cqr_model_t *)base, d, &next,
                                   last_error, sizeof last_error);
        cqr_model_close(d);
    }
    if (rc == 0)
        *out = (cqrps_model_t *)next;
    return keep(rc);
}

int cqrps_model_save(const cqrps_model_t *m, const char *path)
{
    if (!m || !path)
        return CQRPS_EINVAL;
    size_t len;
    const uint8_t *img = cqr_model_image((const cqr_model_t *)m, &len);
    return keep(cqr_model_save_image(img, len, path, last_error,
                                     sizeof last_error));
}
