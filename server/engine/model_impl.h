/* model_impl.h -- what the files of the serving-export module share
 * (model_write.c, model_read.c, model_delta.c; table_model.c builds
 * content from a table). model.h has the format and the contracts.
 *
 * Threading and errors: as model.h; the helpers here are pure.
 */
#ifndef CQR_MODEL_IMPL_H
#define CQR_MODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"
#include "model.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "exports store raw little-endian values");

/* The engine's kinds and limits (table.h); a test checks they agree. */
enum {
    CQR_MODEL_KIND_FULL = 0,
    CQR_MODEL_KIND_HASH = 1,
    CQR_MODEL_KIND_CE = 2,
    CQR_MODEL_KIND_CQR = 3
};
#define CQR_MODEL_MAX_DIM 4096u
#define CQR_MODEL_MAX_CHUNKS 256u
#define CQR_MODEL_MAX_ROWS (1u << 24)

#define CQR_MODEL_SECT_TABLE 96u /* offset of the section table */
#define CQR_MODEL_HSUM 296u      /* offset of the header checksum */

/* An open model: the image and where its sections are. */
struct cqr_model {
    cqr_model_info_t h;
    uint32_t c, w, k, ncb;  /* chunks, floats per chunk, rows, codebooks */
    uint32_t L;             /* bucket bits */
    uint32_t esize;         /* bytes per value */
    size_t vb;              /* bytes per ID value */
    uint64_t nids, nremoved;
    uint8_t *img;           /* the image (mapped or malloc'd) */
    size_t len;
    int mapped;             /* 1: munmap, 0: free */
    const uint64_t *seeds;  /* seed_p[c], then seed_h[c] */
    const uint8_t *cb;
    const float *cb_scales;
    const uint32_t *buckets;
    const uint64_t *ids;
    const uint8_t *vals;
    const float *val_scales;
    const uint64_t *removed;
};

/* The bucket of an ID: the top L bits of its mixed value. */
static inline uint32_t cqr_model_bucket(uint64_t id, uint32_t L)
{
    return L ? (uint32_t)(cqr_mix64(id) >> (64 - L)) : 0;
}

/* Bucket bits for nids IDs: the fewest with 2^(L+1) >= nids (one or two
 * IDs a bucket on average). */
uint32_t cqr_model_bucket_bits(uint64_t nids);

/* Where each section goes and how long it is, and the file's bytes. */
void cqr_model_layout(const cqr_model_info_t *h, uint64_t nids,
                      uint64_t nremoved, uint64_t off[CQR_MODEL_NSECT],
                      uint64_t len[CQR_MODEL_NSECT], uint64_t *total);

/* 0, or CQR_EINVAL with a reason for header fields that cannot be. */
int cqr_model_check_info(const cqr_model_info_t *h, char *why, size_t whylen);

float cqr_f16_to_f32(uint16_t h);

/* Decodes rows x w values of an encoded block (with its int8 scales, if
 * any) into floats: the values lookups use, bit for bit. */
void cqr_model_decode(const cqr_model_t *m, const uint8_t *blk,
                      const float *scales, size_t rows, uint32_t w,
                      float *dst);

/* The index of `id` in m->ids, or -1. */
static inline int64_t cqr_model_find(const cqr_model_t *m, uint64_t id)
{
    uint32_t b = cqr_model_bucket(id, m->L);
    for (uint32_t j = m->buckets[b]; j < m->buckets[b + 1]; j++)
        if (m->ids[j] == id)
            return j;
    return -1;
}

#endif
