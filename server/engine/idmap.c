/* idmap.c -- open-addressing map from 64-bit IDs to fixed-width values. */
#include "idmap.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "bigmem.h"
#include "err.h"

#define CQR_IDMAP_MIN 16

static int alloc_arrays(cqr_idmap_t *m, size_t cap)
{
    if (cap > SIZE_MAX / 8 / (m->vw > 8 ? m->vw : 8))
        return CQR_ENOMEM;
    uint64_t *keys = cqr_big_calloc(cap, sizeof(uint64_t));
    uint8_t *vals = cqr_big_calloc(cap, m->vw);
    if (!keys || !vals) {
        cqr_big_free(keys, cap, sizeof(uint64_t));
        cqr_big_free(vals, cap, m->vw);
        return CQR_ENOMEM;
    }
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

int cqr_idmap_init(cqr_idmap_t *m, uint32_t vw, size_t initial)
{
    memset(m, 0, sizeof *m);
    assert(vw >= 1);
    m->vw = vw;
    m->zero_val = calloc(1, vw);
    if (!m->zero_val)
        return CQR_ENOMEM;
    size_t cap = initial < CQR_IDMAP_MIN ? CQR_IDMAP_MIN : initial;
    int rc = alloc_arrays(m, cap);
    if (rc) {
        free(m->zero_val);
        m->zero_val = NULL;
    }
    return rc;
}

static void free_arrays(cqr_idmap_t *m)
{
    cqr_big_free(m->keys, m->cap, sizeof(uint64_t));
    cqr_big_free(m->vals, m->cap, m->vw);
}

void cqr_idmap_free(cqr_idmap_t *m)
{
    free_arrays(m);
    free(m->zero_val);
    memset(m, 0, sizeof *m);
}

void *cqr_idmap_find(const cqr_idmap_t *m, uint64_t id)
{
    if (id == 0)
        return m->has_zero ? m->zero_val : NULL;
    size_t i = cqr_idmap_slot(m, id);
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == id)
            return m->vals + i * m->vw;
        if (k == 0)
            return NULL;
        if (++i == m->cap)
            i = 0;
    }
}

/* Places id in the arrays (known absent, room guaranteed). */
static uint8_t *place(cqr_idmap_t *m, uint64_t id)
{
    size_t i = cqr_idmap_slot(m, id);
    while (m->keys[i] != 0) {
        if (++i == m->cap)
            i = 0;
    }
    m->keys[i] = id;
    return m->vals + i * m->vw;
}

static int rehash(cqr_idmap_t *m, size_t cap)
{
    cqr_idmap_t old = *m;
    int rc = alloc_arrays(m, cap);
    if (rc) {
        *m = old;
        return rc;
    }
    for (size_t i = 0; i < old.cap; i++) {
        if (old.keys[i] != 0)
            memcpy(place(m, old.keys[i]), old.vals + i * old.vw, old.vw);
    }
    free_arrays(&old);
    return 0;
}

/* Slots needed so that n IDs stay at or below 85% load. */
static size_t cap_for(size_t n)
{
    return n + (n * 3) / 17 + 1;
}

int cqr_idmap_reserve(cqr_idmap_t *m, size_t n)
{
    if (cap_for(n) <= m->cap)
        return 0;
    return rehash(m, cap_for(n));
}

/* The capacity after inserting one more key into the arrays: grows by
 * 1.25x past 85% load. */
static size_t grown_cap(const cqr_idmap_t *m)
{
    /* Keys in the arrays (ID 0 lives outside) after this insert. */
    size_t inarr = m->count - (size_t)m->has_zero + 1;
    /* 1.25x at 85% load: the load then stays within [68%, 85%], so a
     * slot of 16 bytes (cqr, 4 chunks, k <= 65536) costs at most 23.5
     * bytes per known ID; 1.5x at 80% let it reach 30. */
    if (inarr * 20 <= m->cap * 17)
        return m->cap;
    size_t want = m->cap + m->cap / 4;
    if (want < cap_for(inarr))
        want = cap_for(inarr);
    return want;
}

uint64_t cqr_idmap_grow_bytes(const cqr_idmap_t *m)
{
    return (uint64_t)(grown_cap(m) - m->cap) * (sizeof(uint64_t) + m->vw);
}

int cqr_idmap_insert(cqr_idmap_t *m, uint64_t id, void **val, int *inserted)
{
    void *v = cqr_idmap_find(m, id);
    if (v) {
        *val = v;
        *inserted = 0;
        return 0;
    }
    if (id == 0) {
        m->has_zero = 1;
        memset(m->zero_val, 0, m->vw);
        m->count++;
        *val = m->zero_val;
        *inserted = 1;
        return 0;
    }
    size_t want = grown_cap(m);
    if (want != m->cap) {
        int rc = rehash(m, want);
        if (rc)
            return rc;
    }
    *val = place(m, id);
    m->count++;
    *inserted = 1;
    return 0;
}

int cqr_idmap_next(const cqr_idmap_t *m, size_t *pos, uint64_t *id,
                   void **val)
{
    while (*pos < m->cap) {
        size_t i = (*pos)++;
        if (m->keys[i] != 0) {
            *id = m->keys[i];
            *val = m->vals + i * m->vw;
            return 1;
        }
    }
    if (*pos == m->cap) {
        (*pos)++;
        if (m->has_zero) {
            *id = 0;
            *val = m->zero_val;
            return 1;
        }
    }
    return 0;
}

uint64_t cqr_idmap_bytes(const cqr_idmap_t *m)
{
    return (uint64_t)m->cap * (sizeof(uint64_t) + m->vw) + m->vw;
}
