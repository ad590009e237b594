/* model_write.c -- the canonical writer of serving exports (model.h):
 * value encodings, the bucketed ID index, sections and checksums, and the
 * atomic file write. */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "hash.h"
#include "model_impl.h"

const char *cqr_dtype_name(uint32_t d)
{
    switch (d) {
    case CQR_DTYPE_F32: return "f32";
    case CQR_DTYPE_F16: return "f16";
    case CQR_DTYPE_INT8: return "int8";
    default: return "?";
    }
}

int cqr_dtype_parse(const char *name, cqr_dtype_t *out)
{
    static const char *const names[] = {"f32", "f16", "int8"};
    for (uint32_t d = 0; name && d < 3; d++) {
        if (strcmp(name, names[d]) == 0) {
            *out = (cqr_dtype_t)d;
            return 0;
        }
    }
    return CQR_EINVAL;
}

uint32_t cqr_dtype_size(uint32_t d)
{
    return d == CQR_DTYPE_F32 ? 4 : d == CQR_DTYPE_F16 ? 2 : 1;
}

uint32_t cqr_model_ncb(const cqr_model_info_t *h)
{
    if (h->kind == CQR_MODEL_KIND_FULL)
        return (h->flags & CQR_MODEL_FALLBACK) ? 1 : 0;
    return h->kind == CQR_MODEL_KIND_HASH ? 1 : 2;
}

size_t cqr_model_val_bytes(const cqr_model_info_t *h)
{
    if (h->kind == CQR_MODEL_KIND_FULL)
        return (size_t)h->dim * cqr_dtype_size(h->dtype);
    if (h->kind == CQR_MODEL_KIND_CQR)
        return (size_t)h->chunks * h->pw;
    return 0;
}

/* IEEE binary16 from binary32, rounding to nearest even. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t e = (x >> 23) & 0xffu, m = x & 0x7fffffu;
    if (e == 0xff)
        return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0));
    int32_t ne = (int32_t)e - 127 + 15;
    if (ne >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (ne <= 0) {
        if (ne < -10)
            return (uint16_t)sign;
        m |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - ne);
        uint32_t hm = m >> shift, rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1)))
            hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t hm = m >> 13, rem = m & 0x1fffu;
    uint32_t h = sign | ((uint32_t)ne << 10) | hm;
    if (rem > 0x1000u || (rem == 0x1000u && (hm & 1)))
        h++; /* a carry into the exponent is the right rounding */
    return (uint16_t)h;
}

float cqr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        x = sign | 0x7f800000u | (m << 13);
    else
        x = sign | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

void cqr_model_encode(uint32_t dtype, const float *src, size_t rows,
                      uint32_t w, uint8_t *dst, float *scales)
{
    size_t n = rows * w;
    if (dtype == CQR_DTYPE_F32) {
        memcpy(dst, src, n * 4);
        return;
    }
    if (dtype == CQR_DTYPE_F16) {
        for (size_t j = 0; j < n; j++) {
            uint16_t h = f32_to_f16(src[j]);
            memcpy(dst + 2 * j, &h, 2);
        }
        return;
    }
    for (size_t r = 0; r < rows; r++) {
        const float *x = src + r * w;
        float mx = 0;
        for (uint32_t j = 0; j < w; j++)
            mx = fabsf(x[j]) > mx ? fabsf(x[j]) : mx;
        float s = mx / 127.0f;
        scales[r] = s;
        for (uint32_t j = 0; j < w; j++) {
            long q = s > 0 ? lrintf(x[j] / s) : 0;
            q = q > 127 ? 127 : q < -127 ? -127 : q;
            dst[r * w + j] = (uint8_t)(int8_t)q;
        }
    }
}

int cqr_model_check_info(const cqr_model_info_t *h, char *why, size_t whylen)
{
    const char *bad = NULL;
    if (h->kind > CQR_MODEL_KIND_CQR)
        bad = "unknown table kind";
    else if (h->dim == 0 || h->dim > CQR_MODEL_MAX_DIM)
        bad = "dim out of range";
    else if (h->chunks == 0 || h->chunks > CQR_MODEL_MAX_CHUNKS ||
             h->dim % h->chunks != 0)
        bad = "chunks do not divide dim";
    else if (h->dtype > CQR_DTYPE_INT8)
        bad = "unknown dtype";
    else if (h->flags & ~(CQR_MODEL_DELTA | CQR_MODEL_FALLBACK))
        bad = "unknown flags";
    else if ((h->flags & CQR_MODEL_FALLBACK) && h->kind != CQR_MODEL_KIND_FULL)
        bad = "fallback rows in a table that is not full";
    else if (h->kind == CQR_MODEL_KIND_FULL && h->chunks != 1)
        bad = "full tables have one chunk";
    else if (h->kind == CQR_MODEL_KIND_FULL && !(h->flags & CQR_MODEL_FALLBACK)
                 ? h->rows != 0
                 : h->rows == 0 || h->rows > CQR_MODEL_MAX_ROWS)
        bad = "rows out of range";
    else if (h->kind == CQR_MODEL_KIND_HASH && h->chunks != 1)
        bad = "hash tables have one chunk";
    else if (h->kind == CQR_MODEL_KIND_CQR
                 ? (h->pw != 1 && h->pw != 2 && h->pw != 4) ||
                       (h->pw < 4 && h->rows > (1u << (8 * h->pw)))
                 : h->pw != 0)
        bad = "pointer width does not fit the rows";
    else if (!(h->init_scale >= 0) || !isfinite(h->init_scale))
        bad = "init_scale out of range";
    if (!bad)
        return 0;
    snprintf(why, whylen, "%s", bad);
    return CQR_EINVAL;
}

uint32_t cqr_model_bucket_bits(uint64_t nids)
{
    uint32_t L = 0;
    while (L < 31 && (2ull << L) < nids)
        L++;
    return L;
}

void cqr_model_layout(const cqr_model_info_t *h, uint64_t nids,
                      uint64_t nremoved, uint64_t off[CQR_MODEL_NSECT],
                      uint64_t len[CQR_MODEL_NSECT], uint64_t *total)
{
    const uint64_t c = h->chunks, ncb = cqr_model_ncb(h);
    const uint64_t k = h->rows, w = h->dim / h->chunks;
    const int i8 = h->dtype == CQR_DTYPE_INT8;
    len[CQR_MSECT_SEEDS] = 2 * c * 8;
    len[CQR_MSECT_CB] = ncb * c * k * w * cqr_dtype_size(h->dtype);
    len[CQR_MSECT_CB_SCALES] = i8 ? ncb * c * k * 4 : 0;
    len[CQR_MSECT_BUCKETS] = ((1ull << cqr_model_bucket_bits(nids)) + 1) * 4;
    len[CQR_MSECT_IDS] = nids * 8;
    len[CQR_MSECT_VALS] = nids * cqr_model_val_bytes(h);
    len[CQR_MSECT_VAL_SCALES] =
        i8 && h->kind == CQR_MODEL_KIND_FULL ? nids * 4 : 0;
    len[CQR_MSECT_REMOVED] = nremoved * 8;
    uint64_t at = CQR_MODEL_HEADER;
    for (uint32_t s = 0; s < CQR_MODEL_NSECT; s++) {
        at = (at + CQR_MODEL_ALIGN - 1) & ~(uint64_t)(CQR_MODEL_ALIGN - 1);
        off[s] = at;
        at += len[s];
    }
    *total = at;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Orders the IDs canonically: perm[j] is the content index of the j-th
 * ID of the file; fills buckets (2^L + 1). CQR_EINVAL on a repeated ID. */
static int index_ids(const cqr_model_content_t *mc, uint32_t L,
                     uint32_t *buckets, uint32_t *perm)
{
    const size_t nb = (size_t)1 << L;
    memset(buckets, 0, (nb + 1) * sizeof *buckets);
    for (size_t j = 0; j < mc->nids; j++)
        buckets[cqr_model_bucket(mc->ids[j], L) + 1]++;
    for (size_t b = 0; b < nb; b++)
        buckets[b + 1] += buckets[b];
    uint32_t *fill = malloc(nb * sizeof *fill);
    if (!fill)
        return CQR_ENOMEM;
    memcpy(fill, buckets, nb * sizeof *fill);
    for (size_t j = 0; j < mc->nids; j++)
        perm[fill[cqr_model_bucket(mc->ids[j], L)]++] = (uint32_t)j;
    free(fill);
    /* Within a bucket (a few IDs): insertion sort by ID. */
    for (size_t b = 0; b < nb; b++) {
        for (uint32_t i = buckets[b] + 1; i < buckets[b + 1]; i++) {
            uint32_t v = perm[i];
            uint32_t j = i;
            while (j > buckets[b] && mc->ids[perm[j - 1]] > mc->ids[v]) {
                perm[j] = perm[j - 1];
                j--;
            }
            if (j > buckets[b] && mc->ids[perm[j - 1]] == mc->ids[v])
                return CQR_EINVAL;
            perm[j] = v;
        }
    }
    return 0;
}

/* Fills the ID sections of img from content (canonical order). */
static int write_ids(const cqr_model_content_t *mc, uint8_t *img,
                     const uint64_t *off)
{
    const uint32_t L = cqr_model_bucket_bits(mc->nids);
    uint32_t *perm = malloc((mc->nids ? mc->nids : 1) * sizeof *perm);
    if (!perm)
        return CQR_ENOMEM;
    uint32_t *buckets = (uint32_t *)(void *)(img + off[CQR_MSECT_BUCKETS]);
    int rc = index_ids(mc, L, buckets, perm);
    const size_t vb = cqr_model_val_bytes(&mc->h);
    uint64_t *ids = (uint64_t *)(void *)(img + off[CQR_MSECT_IDS]);
    uint8_t *vals = img + off[CQR_MSECT_VALS];
    float *vs = (float *)(void *)(img + off[CQR_MSECT_VAL_SCALES]);
    const int scaled = mc->h.dtype == CQR_DTYPE_INT8 &&
                       mc->h.kind == CQR_MODEL_KIND_FULL;
    for (size_t j = 0; rc == 0 && j < mc->nids; j++) {
        ids[j] = mc->ids[perm[j]];
        if (vb)
            memcpy(vals + j * vb, mc->vals + (size_t)perm[j] * vb, vb);
        if (scaled)
            vs[j] = mc->val_scales[perm[j]];
    }
    free(perm);
    if (rc == 0 && mc->nremoved) {
        uint64_t *rm = (uint64_t *)(void *)(img + off[CQR_MSECT_REMOVED]);
        memcpy(rm, mc->removed, mc->nremoved * 8);
        qsort(rm, mc->nremoved, 8, u64_cmp);
        for (size_t j = 1; j < mc->nremoved; j++)
            if (rm[j] == rm[j - 1])
                rc = CQR_EINVAL;
    }
    return rc;
}

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static void write_header(const cqr_model_info_t *h, uint64_t nids,
                         uint64_t nremoved, const uint64_t *off,
                         const uint64_t *len, uint64_t total, uint8_t *img)
{
    memcpy(img, CQR_MODEL_MAGIC, 8);
    put_u32(img + 8, CQR_MODEL_VERSION);
    put_u32(img + 12, h->flags);
    put_u32(img + 16, h->kind);
    put_u32(img + 20, h->dim);
    put_u32(img + 24, h->chunks);
    put_u32(img + 28, h->rows);
    put_u32(img + 32, h->dtype);
    put_u32(img + 36, h->pw);
    memcpy(img + 40, &h->init_scale, 4);
    put_u32(img + 44, cqr_model_bucket_bits(nids));
    put_u64(img + 48, h->seed);
    put_u64(img + 56, h->generation);
    put_u64(img + 64, h->base_generation);
    put_u64(img + 72, nids);
    put_u64(img + 80, nremoved);
    put_u64(img + 88, total);
    for (uint32_t s = 0; s < CQR_MODEL_NSECT; s++) {
        uint8_t *e = img + CQR_MODEL_SECT_TABLE + 24 * s;
        put_u64(e, off[s]);
        put_u64(e + 8, len[s]);
        put_u64(e + 16, XXH3_64bits(img + off[s], len[s]));
    }
    put_u64(img + CQR_MODEL_HSUM, XXH3_64bits(img, CQR_MODEL_HSUM));
}

int cqr_model_write(const cqr_model_content_t *mc, uint8_t **out,
                    size_t *len_out, char *why, size_t whylen)
{
    int rc = cqr_model_check_info(&mc->h, why, whylen);
    if (rc)
        return rc;
    if (mc->nids >= UINT32_MAX || (!(mc->h.flags & CQR_MODEL_DELTA) &&
                                   mc->nremoved)) {
        snprintf(why, whylen, "too many IDs, or removals in a full export");
        return CQR_EINVAL;
    }
    uint64_t off[CQR_MODEL_NSECT], len[CQR_MODEL_NSECT], total;
    cqr_model_layout(&mc->h, mc->nids, mc->nremoved, off, len, &total);
    uint8_t *img = calloc(1, total);
    if (!img) {
        snprintf(why, whylen, "out of memory (%llu bytes)",
                 (unsigned long long)total);
        return CQR_ENOMEM;
    }
    if (mc->seeds)
        memcpy(img + off[CQR_MSECT_SEEDS], mc->seeds, len[CQR_MSECT_SEEDS]);
    if (len[CQR_MSECT_CB])
        memcpy(img + off[CQR_MSECT_CB], mc->cb, len[CQR_MSECT_CB]);
    if (len[CQR_MSECT_CB_SCALES])
        memcpy(img + off[CQR_MSECT_CB_SCALES], mc->cb_scales,
               len[CQR_MSECT_CB_SCALES]);
    rc = write_ids(mc, img, off);
    if (rc) {
        free(img);
        snprintf(why, whylen, "%s", rc == CQR_EINVAL ? "repeated ID"
                                                     : "out of memory");
        return rc;
    }
    write_header(&mc->h, mc->nids, mc->nremoved, off, len, total, img);
    *out = img;
    *len_out = total;
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int cqr_model_save_image(const uint8_t *img, size_t len, const char *path,
                         char *why, size_t whylen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(why, whylen, "path too long");
        return CQR_EINVAL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(why, whylen, "cannot create %s: %s", tmp, strerror(errno));
        return CQR_EIO;
    }
    int bad = write_all(fd, img, len) || fsync(fd);
    int e = errno;
    bad |= close(fd) != 0;
    if (!bad && rename(tmp, path) != 0) {
        e = errno;
        bad = 1;
    }
    if (bad) {
        snprintf(why, whylen, "cannot write %s: %s", path, strerror(e));
        unlink(tmp);
        return CQR_EIO;
    }
    /* The rename is durable once the directory is. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return 0;
}
