/* persist_segment.c -- the segment framing (header, checksum) and the
 * cfg payload, shared by export and import (formats: persist.h). */
#include <xxhash.h>

#include "err.h"
#include "persist_impl.h"

#define SEG_MAGIC 0x53525143u /* "CQRS" */
#define SEG_FLAG_DELTA 1u

const char *cqr_page_type_name(uint32_t type)
{
    switch (type) {
    case CQR_PAGE_CFG: return "cfg";
    case CQR_PAGE_META: return "meta";
    case CQR_PAGE_CB: return "cb";
    case CQR_PAGE_ROWS: return "rows";
    case CQR_PAGE_MAP: return "map";
    case CQR_PAGE_SKETCH: return "sketch";
    case CQR_PAGE_FALLBACK: return "fallback";
    case CQR_PAGE_STATIC: return "static";
    case CQR_PAGE_KEYS: return "keys";
    }
    return "?";
}

static uint64_t seg_checksum(const uint8_t *data, size_t len)
{
    /* The header's hash seeds the payload's, so both are covered. */
    return XXH3_64bits_withSeed(data + CQR_SEGMENT_HEADER,
                                len - CQR_SEGMENT_HEADER,
                                XXH3_64bits(data, 24));
}

/* Writes the header and checksum of a filled segment. */
void cqr_seg_seal(cqr_segment_t *sg)
{
    cqr_wr_t w = {sg->data};
    uint16_t version = CQR_SEGMENT_VERSION;
    uint8_t type = (uint8_t)sg->type;
    uint8_t flags = sg->kind == CQR_SEG_DELTA ? SEG_FLAG_DELTA : 0;
    cqr_put_u32(&w, SEG_MAGIC);
    cqr_put(&w, &version, 2);
    cqr_put(&w, &type, 1);
    cqr_put(&w, &flags, 1);
    cqr_put_u32(&w, sg->index);
    cqr_put_u32(&w, 0);
    cqr_put_u64(&w, sg->len - CQR_SEGMENT_HEADER);
    sg->hash = seg_checksum(sg->data, sg->len);
    cqr_put_u64(&w, sg->hash);
}

int cqr_seg_header(const uint8_t *data, size_t len, int sum, uint32_t *type,
                   uint32_t *index, cqr_seg_kind_t *kind, uint64_t *hash)
{
    if (!data || len < CQR_SEGMENT_HEADER)
        return CQR_ECORRUPT;
    cqr_rd_t r = {data, len, 0};
    uint32_t magic = cqr_get_u32(&r);
    uint16_t version;
    uint8_t ty, flags;
    cqr_get(&r, &version, 2);
    cqr_get(&r, &ty, 1);
    cqr_get(&r, &flags, 1);
    uint32_t idx = cqr_get_u32(&r);
    (void)cqr_get_u32(&r);
    uint64_t plen = cqr_get_u64(&r);
    uint64_t want = cqr_get_u64(&r);
    if (magic != SEG_MAGIC || plen != len - CQR_SEGMENT_HEADER)
        return CQR_ECORRUPT;
    if (sum && seg_checksum(data, len) != want)
        return CQR_ECORRUPT;
    if (version != CQR_SEGMENT_VERSION)
        return CQR_EVERSION;
    if (ty < CQR_PAGE_CFG || ty > CQR_PAGE_KEYS || (flags & ~SEG_FLAG_DELTA))
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
    return cqr_seg_header(data, len, 0, type, index, kind, NULL);
}

int cqr_segment_verify(const uint8_t *data, size_t len, uint64_t *hash)
{
    return cqr_seg_header(data, len, 1, NULL, NULL, NULL, hash);
}

/* ---- The cfg payload (CQR_CFG_BYTES) ------------------------------------ */

void cqr_cfg_put(cqr_wr_t *w, const cqr_table_config_t *c)
{
    cqr_put_u32(w, c->kind);
    cqr_put_u32(w, c->dim);
    cqr_put_u32(w, c->chunks);
    cqr_put_u32(w, c->rows);
    cqr_put_u64(w, c->seed);
    cqr_put_f32(w, c->init_scale);
    cqr_put_u32(w, c->optim.kind);
    cqr_put_f32(w, c->optim.lr);
    cqr_put_f32(w, c->optim.beta1);
    cqr_put_f32(w, c->optim.beta2);
    cqr_put_f32(w, c->optim.eps);
    cqr_put_f32(w, c->optim.weight_decay);
    cqr_put_u32(w, c->cluster_iters);
    cqr_put_u32(w, c->cluster_sample);
    cqr_put_u32(w, c->cluster_threads);
    cqr_put_u32(w, c->reset_optimizer);
    cqr_put_u64(w, c->schedule_every);
    cqr_put_u32(w, c->schedule_max_phases);
    /* Was reserved (written as 0): a checkpoint from before cluster_tol
     * restores with 0, every iteration, which is what it ran. */
    cqr_put_f32(w, c->cluster_tol);
    cqr_put_u64(w, 0); /* reserved */
    if (!cqr_cfg_long(c))
        return;
    cqr_put_u32(w, c->admit_after);
    cqr_put_u32(w, c->evict_after_phases);
    cqr_put_u64(w, c->max_ids);
    cqr_put_u32(w, c->ttl_seconds);
    /* Was reserved (written as 0): flags, bit 0 = compact. */
    cqr_put_u32(w, c->compact ? 1u : 0u);
}

void cqr_cfg_get(cqr_rd_t *r, cqr_table_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->kind = (cqr_kind_t)cqr_get_u32(r);
    c->dim = cqr_get_u32(r);
    c->chunks = cqr_get_u32(r);
    c->rows = cqr_get_u32(r);
    c->seed = cqr_get_u64(r);
    c->init_scale = cqr_get_f32(r);
    c->optim.kind = (cqr_optim_kind_t)cqr_get_u32(r);
    c->optim.lr = cqr_get_f32(r);
    c->optim.beta1 = cqr_get_f32(r);
    c->optim.beta2 = cqr_get_f32(r);
    c->optim.eps = cqr_get_f32(r);
    c->optim.weight_decay = cqr_get_f32(r);
    c->cluster_iters = cqr_get_u32(r);
    c->cluster_sample = cqr_get_u32(r);
    c->cluster_threads = cqr_get_u32(r);
    c->reset_optimizer = cqr_get_u32(r);
    c->schedule_every = cqr_get_u64(r);
    c->schedule_max_phases = cqr_get_u32(r);
    c->cluster_tol = cqr_get_f32(r);
    (void)cqr_get_u64(r);
    if (r->n == 0) {
        c->admit_after = 1; /* a short cfg: no admission, no eviction */
        return;
    }
    c->admit_after = cqr_get_u32(r);
    c->evict_after_phases = cqr_get_u32(r);
    c->max_ids = cqr_get_u64(r);
    c->ttl_seconds = cqr_get_u32(r);
    c->compact = cqr_get_u32(r) & 1u;
}
