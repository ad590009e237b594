/* idmap.c -- open-addressing map from 64-bit IDs to fixed-width values. */
#include "idmap.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "bigmem.h"
#include "err.h"

#define CQR_IDMAP_MIN 16

static int alloc_slots(cqr_idmap_t *m, size_t cap)
{
    if (cap > SIZE_MAX / 2 / m->stride)
        return CQR_ENOMEM;
    uint8_t *slots = cqr_big_calloc(cap, m->stride);
    if (!slots)
        return CQR_ENOMEM;
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int cqr_idmap_init(cqr_idmap_t *m, uint32_t vw, size_t initial)
{
    memset(m, 0, sizeof *m);
    assert(vw >= 1);
    m->vw = vw;
    m->stride = (8 + vw + 7) & ~7u;
    m->zero_slot = calloc(1, m->stride);
    if (!m->zero_slot)
        return CQR_ENOMEM;
    size_t cap = initial < CQR_IDMAP_MIN ? CQR_IDMAP_MIN : initial;
    int rc = alloc_slots(m, cap);
    if (rc) {
        free(m->zero_slot);
        m->zero_slot = NULL;
    }
    return rc;
}

void cqr_idmap_free(cqr_idmap_t *m)
{
    cqr_big_free(m->slots, m->cap, m->stride);
    free(m->zero_slot);
    memset(m, 0, sizeof *m);
}

/* Places id in the slots (known absent, room guaranteed); returns its
 * slot. */
static uint8_t *place(cqr_idmap_t *m, uint64_t id)
{
    size_t i = cqr_idmap_slot(m, id);
    while (cqr_idmap_key_at(m, i) != 0) {
        if (++i == m->cap)
            i = 0;
        m->steps++;
    }
    uint8_t *s = m->slots + i * m->stride;
    memcpy(s, &id, sizeof id);
    return s;
}

static int rehash(cqr_idmap_t *m, size_t cap)
{
    cqr_idmap_t old = *m;
    int rc = alloc_slots(m, cap);
    if (rc) {
        *m = old;
        return rc;
    }
    for (size_t i = 0; i < old.cap; i++) {
        uint64_t k = cqr_idmap_key_at(&old, i);
        if (k != 0)
            memcpy(place(m, k) + 8, old.slots + i * old.stride + 8, old.vw);
    }
    cqr_big_free(old.slots, old.cap, old.stride);
    return 0;
}

/* Slots needed so that n IDs stay at or below 85% load. */
static size_t cap_for(size_t n)
{
    return n + (n * 3) / 17 + 1;
}

uint64_t cqr_idmap_reserve_bytes(const cqr_idmap_t *m, size_t n)
{
    size_t cap = cap_for(n);
    return cap <= m->cap ? 0 : (uint64_t)(cap - m->cap) * m->stride;
}

int cqr_idmap_reserve(cqr_idmap_t *m, size_t n)
{
    if (cap_for(n) <= m->cap)
        return 0;
    return rehash(m, cap_for(n));
}

/* The capacity after inserting one more key into the slots: grows by
 * 1.25x past 85% load. */
static size_t grown_cap(const cqr_idmap_t *m)
{
    /* Keys in the slots (ID 0 lives outside) after this insert. */
    size_t inarr = m->count - (size_t)m->has_zero + 1;
    /* 1.25x at 85% load: the load then stays within [68%, 85%], so a
     * slot of 16 bytes (cqr, 4 chunks, k <= 65536; full) costs at most
     * 23.5 bytes per known ID; 1.5x at 80% let it reach 30. */
    if (inarr * 20 <= m->cap * 17)
        return m->cap;
    size_t want = m->cap + m->cap / 4;
    if (want < cap_for(inarr))
        want = cap_for(inarr);
    return want;
}

uint64_t cqr_idmap_grow_bytes(const cqr_idmap_t *m)
{
    return (uint64_t)(grown_cap(m) - m->cap) * m->stride;
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
        memset(m->zero_slot, 0, m->stride);
        m->count++;
        *val = m->zero_slot + 8;
        *inserted = 1;
        return 0;
    }
    size_t want = grown_cap(m);
    if (want != m->cap) {
        int rc = rehash(m, want);
        if (rc)
            return rc;
    }
    *val = place(m, id) + 8;
    m->count++;
    *inserted = 1;
    return 0;
}

/* Whether slot j's ID, whose probe starts at home, may move back to the
 * hole at i (i.e. home is not cyclically within (i, j]). */
static int may_fill(size_t i, size_t j, size_t home)
{
    if (i <= j)
        return home <= i || home > j;
    return home <= i && home > j;
}

int cqr_idmap_delete(cqr_idmap_t *m, uint64_t id, cqr_idmap_moved_cb moved,
                     void *ud)
{
    if (id == 0) {
        if (!m->has_zero)
            return 0;
        m->has_zero = 0;
        memset(m->zero_slot, 0, m->stride);
        m->count--;
        if (moved)
            moved(ud, m->cap);
        return 1;
    }
    uint8_t *v = cqr_idmap_find(m, id);
    if (!v)
        return 0;
    size_t i = cqr_idmap_index_of(m, v);
    for (size_t j = i;;) {
        if (++j == m->cap)
            j = 0;
        uint64_t k = cqr_idmap_key_at(m, j);
        if (k == 0)
            break;
        if (!may_fill(i, j, cqr_idmap_slot(m, k)))
            continue;
        memcpy(m->slots + i * m->stride, m->slots + j * m->stride, m->stride);
        if (moved)
            moved(ud, i);
        i = j;
    }
    memset(m->slots + i * m->stride, 0, m->stride);
    if (moved)
        moved(ud, i);
    m->count--;
    return 1;
}

int cqr_idmap_next(const cqr_idmap_t *m, size_t *pos, uint64_t *id,
                   void **val)
{
    while (*pos < m->cap) {
        size_t i = (*pos)++;
        uint64_t k = cqr_idmap_key_at(m, i);
        if (k != 0) {
            *id = k;
            *val = m->slots + i * m->stride + 8;
            return 1;
        }
    }
    if (*pos == m->cap) {
        (*pos)++;
        if (m->has_zero) {
            *id = 0;
            *val = m->zero_slot + 8;
            return 1;
        }
    }
    return 0;
}

uint64_t cqr_idmap_bytes(const cqr_idmap_t *m)
{
    return (uint64_t)(m->cap + 1) * m->stride;
}
