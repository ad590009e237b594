/* sketch.c -- the count-min sketch of push counts (sketch.h). */
#include "sketch.h"

#include <stdlib.h>

#include "err.h"
#include "hash.h"

int cqr_sketch_create(uint64_t seed, cqr_sketch_t **out)
{
    cqr_sketch_t *s = calloc(1, sizeof *s);
    if (!s)
        return CQR_ENOMEM;
    s->c = calloc(CQR_SKETCH_BYTES, 1);
    if (!s->c) {
        free(s);
        return CQR_ENOMEM;
    }
    for (uint32_t r = 0; r < CQR_SKETCH_DEPTH; r++)
        s->seed[r] = cqr_derive_seed(seed, 0x5ce7c4u, r);
    *out = s;
    return 0;
}

void cqr_sketch_free(cqr_sketch_t *s)
{
    if (!s)
        return;
    free(s->c);
    free(s);
}

static inline uint8_t *counter(const cqr_sketch_t *s, uint32_t r, uint64_t id)
{
    return s->c + (size_t)r * CQR_SKETCH_WIDTH +
           cqr_fastrange(cqr_hash_id(id, s->seed[r]), CQR_SKETCH_WIDTH);
}

unsigned cqr_sketch_estimate(const cqr_sketch_t *s, uint64_t id)
{
    unsigned m = 255;
    for (uint32_t r = 0; r < CQR_SKETCH_DEPTH; r++) {
        unsigned v = __atomic_load_n(counter(s, r, id), __ATOMIC_RELAXED);
        if (v < m)
            m = v;
    }
    return m;
}

void cqr_sketch_add(cqr_sketch_t *s, uint64_t id)
{
    unsigned m = cqr_sketch_estimate(s, id);
    if (m == 255)
        return;
    for (uint32_t r = 0; r < CQR_SKETCH_DEPTH; r++) {
        uint8_t *c = counter(s, r, id);
        if (__atomic_load_n(c, __ATOMIC_RELAXED) == m)
            __atomic_store_n(c, (uint8_t)(m + 1), __ATOMIC_RELAXED);
    }
}
