/* model_read.c -- opening and verifying serving exports, and lookups
 * from them (model.h). */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "hash.h"
#include "model_impl.h"

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int fail(char *why, size_t whylen, int rc, const char *fmt,
                const char *arg)
{
    snprintf(why, whylen, fmt, arg);
    return rc;
}

/* Reads and checks the header into m (sections not yet verified). */
static int read_header(cqr_model_t *m, char *why, size_t whylen)
{
    const uint8_t *p = m->img;
    if (m->len < CQR_MODEL_HEADER || memcmp(p, CQR_MODEL_MAGIC, 8) != 0)
        return fail(why, whylen, CQR_ECORRUPT,
                    "not a cqrps export (bad magic or too short)%s", "");
    uint32_t ver = get_u32(p + 8);
    if (ver != CQR_MODEL_VERSION) {
        snprintf(why, whylen, "export format version %u, this build reads "
                 "version %u", ver, CQR_MODEL_VERSION);
        return CQR_EVERSION;
    }
    if (XXH3_64bits(p, CQR_MODEL_HSUM) != get_u64(p + CQR_MODEL_HSUM))
        return fail(why, whylen, CQR_ECORRUPT,
                    "header checksum mismatch (damaged file)%s", "");
    cqr_model_info_t *h = &m->h;
    h->flags = get_u32(p + 12);
    h->kind = get_u32(p + 16);
    h->dim = get_u32(p + 20);
    h->chunks = get_u32(p + 24);
    h->rows = get_u32(p + 28);
    h->dtype = get_u32(p + 32);
    h->pw = get_u32(p + 36);
    memcpy(&h->init_scale, p + 40, 4);
    m->L = get_u32(p + 44);
    h->seed = get_u64(p + 48);
    h->generation = get_u64(p + 56);
    h->base_generation = get_u64(p + 64);
    m->nids = get_u64(p + 72);
    m->nremoved = get_u64(p + 80);
    char w[200];
    if (cqr_model_check_info(h, w, sizeof w))
        return fail(why, whylen, CQR_ECORRUPT, "impossible header: %s", w);
    if (m->nids >= UINT32_MAX || m->nremoved > m->len / 8 ||
        m->L != cqr_model_bucket_bits(m->nids) ||
        (m->nremoved && !(h->flags & CQR_MODEL_DELTA)))
        return fail(why, whylen, CQR_ECORRUPT, "impossible ID counts%s", "");
    if (get_u64(p + 88) != m->len)
        return fail(why, whylen, CQR_ECORRUPT,
                    "file size does not match its header (truncated?)%s", "");
    m->c = h->chunks;
    m->w = h->dim / h->chunks;
    m->k = h->rows;
    m->ncb = cqr_model_ncb(h);
    m->esize = cqr_dtype_size(h->dtype);
    m->vb = cqr_model_val_bytes(h);
    return 0;
}

static const char *const sect_names[CQR_MODEL_NSECT] = {
    "seeds", "codebooks", "codebook scales", "buckets", "ids", "values",
    "value scales", "removed"};

/* Checks each section's place, length and checksum. */
static int read_sections(cqr_model_t *m, char *why, size_t whylen)
{
    uint64_t off[CQR_MODEL_NSECT], len[CQR_MODEL_NSECT], total;
    cqr_model_layout(&m->h, m->nids, m->nremoved, off, len, &total);
    if (total != m->len)
        return fail(why, whylen, CQR_ECORRUPT,
                    "file size does not match its contents%s", "");
    for (uint32_t s = 0; s < CQR_MODEL_NSECT; s++) {
        const uint8_t *e = m->img + CQR_MODEL_SECT_TABLE + 24 * s;
        if (get_u64(e) != off[s] || get_u64(e + 8) != len[s])
            return fail(why, whylen, CQR_ECORRUPT,
                        "section %s: wrong place or length", sect_names[s]);
        if (XXH3_64bits(m->img + off[s], len[s]) != get_u64(e + 16))
            return fail(why, whylen, CQR_ECORRUPT,
                        "section %s: checksum mismatch (damaged file)",
                        sect_names[s]);
    }
    const uint8_t *b = m->img;
    m->seeds = (const uint64_t *)(const void *)(b + off[CQR_MSECT_SEEDS]);
    m->cb = b + off[CQR_MSECT_CB];
    m->cb_scales = (const float *)(const void *)(b + off[CQR_MSECT_CB_SCALES]);
    m->buckets = (const uint32_t *)(const void *)(b + off[CQR_MSECT_BUCKETS]);
    m->ids = (const uint64_t *)(const void *)(b + off[CQR_MSECT_IDS]);
    m->vals = b + off[CQR_MSECT_VALS];
    m->val_scales =
        (const float *)(const void *)(b + off[CQR_MSECT_VAL_SCALES]);
    m->removed = (const uint64_t *)(const void *)(b + off[CQR_MSECT_REMOVED]);
    return 0;
}

/* The structure the checksums cannot vouch for (a writer's bug, or a
 * crafted file): the index, the order of IDs, the pointers' range. */
static int check_structure(const cqr_model_t *m, char *why, size_t whylen)
{
    const uint64_t nb = 1ull << m->L;
    if (m->buckets[0] != 0 || m->buckets[nb] != m->nids)
        return fail(why, whylen, CQR_ECORRUPT, "bad ID index%s", "");
    for (uint64_t bk = 0; bk < nb; bk++) {
        uint32_t lo = m->buckets[bk], hi = m->buckets[bk + 1];
        if (hi < lo || hi > m->nids)
            return fail(why, whylen, CQR_ECORRUPT, "bad ID index%s", "");
        for (uint32_t j = lo; j < hi; j++)
            if (cqr_model_bucket(m->ids[j], m->L) != bk ||
                (j > lo && m->ids[j] <= m->ids[j - 1]))
                return fail(why, whylen, CQR_ECORRUPT,
                            "IDs out of order in the index%s", "");
    }
    for (uint64_t j = 1; j < m->nremoved; j++)
        if (m->removed[j] <= m->removed[j - 1])
            return fail(why, whylen, CQR_ECORRUPT,
                        "removed IDs out of order%s", "");
    if (m->h.kind == CQR_MODEL_KIND_CQR) {
        const uint32_t pw = m->h.pw;
        for (uint64_t j = 0; j < m->nids * m->c; j++) {
            uint32_t p = 0;
            memcpy(&p, m->vals + j * pw, pw);
            if (p >= m->k)
                return fail(why, whylen, CQR_ECORRUPT,
                            "pointer out of range%s", "");
        }
    }
    return 0;
}

static int open_model(cqr_model_t *m, cqr_model_t **out, char *why,
                      size_t whylen)
{
    int rc = read_header(m, why, whylen);
    if (rc == 0)
        rc = read_sections(m, why, whylen);
    if (rc == 0)
        rc = check_structure(m, why, whylen);
    if (rc) {
        cqr_model_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

int cqr_model_open_image(uint8_t *img, size_t len, cqr_model_t **out,
                         char *why, size_t whylen)
{
    cqr_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        free(img);
        return fail(why, whylen, CQR_ENOMEM, "out of memory%s", "");
    }
    m->img = img;
    m->len = len;
    return open_model(m, out, why, whylen);
}

int cqr_model_open(const char *path, cqr_model_t **out, char *why,
                   size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(e));
        return CQR_EIO;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size < (off_t)CQR_MODEL_HEADER) {
        close(fd);
        snprintf(why, whylen, "%s: not a cqrps export (too short)", path);
        return CQR_ECORRUPT;
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(why, whylen, "cannot map %s: %s", path, strerror(e));
        return CQR_EIO;
    }
    cqr_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        munmap(p, (size_t)sb.st_size);
        return fail(why, whylen, CQR_ENOMEM, "out of memory%s", "");
    }
    m->img = p;
    m->len = (size_t)sb.st_size;
    m->mapped = 1;
    return open_model(m, out, why, whylen);
}

void cqr_model_close(cqr_model_t *m)
{
    if (!m)
        return;
    if (m->mapped)
        munmap(m->img, m->len);
    else
        free(m->img);
    free(m);
}

const cqr_model_info_t *cqr_model_info(const cqr_model_t *m)
{
    return &m->h;
}

uint64_t cqr_model_nids(const cqr_model_t *m)
{
    return m->nids;
}

const uint8_t *cqr_model_image(const cqr_model_t *m, size_t *len)
{
    *len = m->len;
    return m->img;
}

/* ---- Lookups ------------------------------------------------------------ */

/* Row r (w values) of an encoded block: out = row (add 0) or out += row
 * (add 1). An f32 sum is the one addition the server makes. */
static void row_get(const cqr_model_t *m, const uint8_t *blk,
                    const float *scales, size_t r, uint32_t w, float *out,
                    int add)
{
    if (m->h.dtype == CQR_DTYPE_F32) {
        const float *src = (const float *)(const void *)(blk + r * w * 4);
        if (add)
            for (uint32_t j = 0; j < w; j++)
                out[j] += src[j];
        else
            memcpy(out, src, (size_t)w * 4);
    } else if (m->h.dtype == CQR_DTYPE_F16) {
        const uint8_t *src = blk + r * w * 2;
        for (uint32_t j = 0; j < w; j++) {
            uint16_t hv;
            memcpy(&hv, src + 2 * (size_t)j, 2);
            float v = cqr_f16_to_f32(hv);
            out[j] = add ? out[j] + v : v;
        }
    } else {
        const int8_t *src = (const int8_t *)(blk + r * w);
        const float s = scales[r];
        for (uint32_t j = 0; j < w; j++) {
            float v = (float)src[j] * s;
            out[j] = add ? out[j] + v : v;
        }
    }
}

void cqr_model_decode(const cqr_model_t *m, const uint8_t *blk,
                      const float *scales, size_t rows, uint32_t w,
                      float *dst)
{
    for (size_t r = 0; r < rows; r++)
        row_get(m, blk, scales, r, w, dst + r * w, 0);
}

/* A full table's initial row of an ID it does not know (table_impl.h's
 * cqr_full_init_row, bit for bit). */
static void init_row(const cqr_model_t *m, uint64_t id, float *out)
{
    cqr_rng_t rng;
    cqr_rng_seed(&rng, cqr_derive_seed(m->h.seed, CQR_MODEL_TAG_FULL_INIT,
                                       id));
    for (uint32_t j = 0; j < m->h.dim; j++)
        out[j] = cqr_rng_sym(&rng, m->h.init_scale);
}

/* B0 pointer i of a stored pointer array of pw bytes each. */
static inline uint32_t ptr_at(const uint8_t *v, uint32_t pw, uint32_t i)
{
    switch (pw) {
    case 1: return v[i];
    case 2: return (uint32_t)v[2 * i] | (uint32_t)v[2 * i + 1] << 8;
    default: {
        uint32_t p;
        memcpy(&p, v + 4 * (size_t)i, 4);
        return p;
    }
    }
}

/* The embedding of `id`, whose index in m->ids is j (-1: not there;
 * ignored for the kinds without IDs). */
static void lookup_at(const cqr_model_t *m, uint64_t id, int64_t j, float *o)
{
    if (m->h.kind == CQR_MODEL_KIND_FULL) {
        if (j >= 0)
            row_get(m, m->vals, m->val_scales, (size_t)j, m->h.dim, o, 0);
        else if (m->ncb)
            row_get(m, m->cb, m->cb_scales,
                    cqr_fastrange(cqr_hash_id(id, m->seeds[0]), m->k),
                    m->h.dim, o, 0);
        else
            init_row(m, id, o);
        return;
    }
    const uint8_t *ptrs = NULL;
    if (m->h.kind == CQR_MODEL_KIND_CQR && j >= 0)
        ptrs = m->vals + (size_t)j * m->vb;
    const size_t blk_rows = m->k;
    const size_t blk_bytes = blk_rows * m->w * m->esize;
    for (uint32_t i = 0; i < m->c; i++) {
        float *oc = o + (size_t)i * m->w;
        uint32_t h = cqr_fastrange(cqr_hash_id(id, m->seeds[m->c + i]), m->k);
        if (m->ncb == 1) {
            row_get(m, m->cb, m->cb_scales, h, m->w, oc, 0);
            continue;
        }
        uint32_t p;
        if (ptrs)
            p = ptr_at(ptrs, m->h.pw, i);
        else
            p = cqr_fastrange(cqr_hash_id(id, m->seeds[i]), m->k);
        const size_t b0 = i, b1 = (size_t)m->c + i;
        const int i8 = m->h.dtype == CQR_DTYPE_INT8;
        row_get(m, m->cb + b0 * blk_bytes,
                i8 ? m->cb_scales + b0 * blk_rows : NULL, p, m->w, oc, 0);
        row_get(m, m->cb + b1 * blk_bytes,
                i8 ? m->cb_scales + b1 * blk_rows : NULL, h, m->w, oc, 1);
    }
}

static void lookup_one(const cqr_model_t *m, uint64_t id, float *o)
{
    const int keyed = m->h.kind == CQR_MODEL_KIND_FULL ||
                      m->h.kind == CQR_MODEL_KIND_CQR;
    lookup_at(m, id, keyed ? cqr_model_find(m, id) : -1, o);
}

/* IDs per group of the lookup pipeline: the index's bucket, its IDs and
 * the value are three misses to memory for a large export; requesting a
 * whole group's lines stage by stage overlaps them. */
enum { GROUP = 16 };

static void find_group(const cqr_model_t *m, const uint64_t *ids, size_t n,
                       int64_t *idx)
{
    uint32_t b[GROUP];
    for (size_t j = 0; j < n; j++) {
        b[j] = cqr_model_bucket(ids[j], m->L);
        __builtin_prefetch(&m->buckets[b[j]]);
    }
    for (size_t j = 0; j < n; j++)
        __builtin_prefetch(&m->ids[m->buckets[b[j]]]);
    for (size_t j = 0; j < n; j++) {
        idx[j] = -1;
        for (uint32_t k = m->buckets[b[j]]; k < m->buckets[b[j] + 1]; k++)
            if (m->ids[k] == ids[j]) {
                idx[j] = k;
                const uint8_t *v = m->vals + (size_t)k * m->vb;
                for (size_t at = 0; at < m->vb; at += 64)
                    __builtin_prefetch(v + at);
                break;
            }
    }
}

int cqr_model_lookup(const cqr_model_t *m, const uint64_t *ids, size_t n,
                     float *out)
{
    if (!m || (n && (!ids || !out)) || (m->h.flags & CQR_MODEL_DELTA))
        return CQR_EINVAL;
    const int keyed = m->h.kind == CQR_MODEL_KIND_FULL ||
                      m->h.kind == CQR_MODEL_KIND_CQR;
    int64_t idx[GROUP];
    for (size_t g = 0; g < n; g += GROUP) {
        size_t k = n - g < GROUP ? n - g : GROUP;
        if (keyed)
            find_group(m, ids + g, k, idx);
        for (size_t j = 0; j < k; j++)
            lookup_at(m, ids[g + j], keyed ? idx[j] : -1,
                      out + (g + j) * m->h.dim);
    }
    return 0;
}

int cqr_model_lookup_pooled(const cqr_model_t *m, const uint64_t *ids,
                            size_t n, const uint32_t *offsets, size_t nbags,
                            int pool, float *out)
{
    if (!m || (m->h.flags & CQR_MODEL_DELTA) || (pool != 0 && pool != 1) ||
        (n && !ids) || (nbags && !out))
        return CQR_EINVAL;
    if (nbags == 0)
        return n ? CQR_EINVAL : 0;
    if (!offsets || offsets[0] != 0)
        return CQR_EINVAL;
    for (size_t b = 1; b < nbags; b++)
        if (offsets[b] < offsets[b - 1] || offsets[b] > n)
            return CQR_EINVAL;
    const uint32_t dim = m->h.dim;
    float row[CQR_MODEL_MAX_DIM];
    for (size_t b = 0; b < nbags; b++) {
        float *o = out + b * dim;
        memset(o, 0, dim * sizeof(float));
        size_t lo = offsets[b], hi = b + 1 < nbags ? offsets[b + 1] : n;
        for (size_t j = lo; j < hi; j++) {
            lookup_one(m, ids[j], row);
            for (uint32_t d = 0; d < dim; d++)
                o[d] += row[d];
        }
        /* The server's mean: the sum times the float reciprocal. */
        if (pool == 1 && hi > lo) {
            float inv = 1.0f / (float)(hi - lo);
            for (uint32_t d = 0; d < dim; d++)
                o[d] *= inv;
        }
    }
    /* As the server: a sum that overflows is refused, never served. */
    for (size_t j = 0; j < nbags * dim; j++)
        if (!isfinite(out[j]))
            return CQR_ENONFINITE;
    return 0;
}
