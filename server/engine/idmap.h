/* idmap.h -- the known-ID map: uint64 ID -> a fixed-width value.
 *
 * Open addressing with linear probing over one flat array of slots, each
 * the ID (8 bytes) followed by its value (vw bytes, the slot rounded up
 * to 8 bytes): a probe reads one cache line where separate key and value
 * arrays cost two (a full table's slot of ID, row and seqlock counter is
 * 16 bytes; a cqr table's of ID and 4 pointers of 16 bits too). Any
 * 64-bit ID is a valid key: slot key 0 means empty, and the ID 0 has a
 * slot of its own beside the array (index `cap`). Capacity is any number
 * (not a power of two): the probe start is fastrange(mix(id), cap), and
 * the map grows by 1.25x at 85% load, which keeps memory per ID at most
 * 1/0.68 slots without long probe runs (lookups prefetch their slots:
 * cqr_idmap_prefetch). Deletion shifts the following run back, so the
 * map never holds tombstones.
 *
 * Not thread-safe: the owner (a table) guards it with its rwlock: find and
 * iteration under the read lock, insert and delete under the write lock.
 *
 * Ownership: a cqr_idmap_t is a value owned by its table (or state); init
 * allocates its slots, free releases them. A value pointer is the map's
 * and valid until the next insert (which may rehash) or delete (which
 * may move slots).
 * Errors: 0 or CQR_ENOMEM (init, insert, reserve); the map is unchanged
 * after a failed insert or reserve.
 */
#ifndef CQR_IDMAP_H
#define CQR_IDMAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hash.h"

typedef struct cqr_idmap {
    uint8_t *slots;     /* cap slots of `stride` bytes: ID (0 = empty),
                           then the value */
    size_t cap;         /* slots */
    size_t count;       /* IDs held, the ID 0 included */
    uint32_t vw;        /* value width in bytes, >= 1 */
    uint32_t stride;    /* bytes per slot: 8 + vw rounded up to 8 */
    int has_zero;       /* whether the ID 0 is held */
    uint8_t *zero_slot; /* the ID 0's slot (stride bytes; index cap) */
    uint64_t steps;     /* slots stepped over past the home slot by every
                           placement (inserts and rehashes): a probe-
                           length statistic for tests and benches */
} cqr_idmap_t;

int cqr_idmap_init(cqr_idmap_t *m, uint32_t vw, size_t initial);

/* Bytes that cqr_idmap_reserve(m, n) would add (0 when it has room). */
uint64_t cqr_idmap_reserve_bytes(const cqr_idmap_t *m, size_t n);
void cqr_idmap_free(cqr_idmap_t *m);

/* The slot where a probe for `id` starts: fastrange of the mixed ID over
 * the capacity (64-bit, so that any capacity works). */
static inline size_t cqr_idmap_slot(const cqr_idmap_t *m, uint64_t id)
{
    return (size_t)(((unsigned __int128)cqr_mix64(id) * m->cap) >> 64);
}

/* The ID in slot i (< cap; 0 = empty). */
static inline uint64_t cqr_idmap_key_at(const cqr_idmap_t *m, size_t i)
{
    uint64_t k;
    memcpy(&k, m->slots + i * m->stride, sizeof k);
    return k;
}

/* The value of slot i (i == cap: the ID 0's). */
static inline uint8_t *cqr_idmap_val_at(const cqr_idmap_t *m, size_t i)
{
    return (i == m->cap ? m->zero_slot : m->slots + i * m->stride) + 8;
}

/* The slot index of a value pointer from this map (cap for the ID 0). */
static inline size_t cqr_idmap_index_of(const cqr_idmap_t *m, const void *v)
{
    const uint8_t *s = (const uint8_t *)v - 8;
    return s == m->zero_slot ? m->cap : (size_t)(s - m->slots) / m->stride;
}

/* Starts loading the cache line that a probe for `id` reads first (its
 * slot), so that a batch's probes overlap their misses instead of paying
 * them one after another. A hint: reads nothing, changes nothing, never
 * faults. */
static inline void cqr_idmap_prefetch(const cqr_idmap_t *m, uint64_t id)
{
    __builtin_prefetch(m->slots + cqr_idmap_slot(m, id) * m->stride);
    /* GCC 12's RTL passes delete such prefetches as dead code in some
     * loops; a signal fence emits no instruction and keeps them. */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* The value of `id`, or NULL. The pointer is valid until the next insert
 * or delete. */
static inline void *cqr_idmap_find(const cqr_idmap_t *m, uint64_t id)
{
    if (id == 0)
        return m->has_zero ? m->zero_slot + 8 : NULL;
    size_t i = cqr_idmap_slot(m, id);
    for (;;) {
        uint64_t k = cqr_idmap_key_at(m, i);
        if (k == id)
            return m->slots + i * m->stride + 8;
        if (k == 0)
            return NULL;
        if (++i == m->cap)
            i = 0;
    }
}

/* Finds or inserts `id`; *val points at its value (zero-filled when new;
 * *inserted says which). CQR_ENOMEM if growing fails (map unchanged). */
int cqr_idmap_insert(cqr_idmap_t *m, uint64_t id, void **val, int *inserted);

/* Called by a delete for every slot whose contents it changed (emptied, or
 * given another slot's ID and value). */
typedef void (*cqr_idmap_moved_cb)(void *ud, size_t slot);

/* Removes `id` (1 if it was there, else 0). The following slots of its
 * probe run may move back one by one; `moved` (may be NULL) hears of
 * every slot changed. Never fails, never shrinks. */
int cqr_idmap_delete(cqr_idmap_t *m, uint64_t id, cqr_idmap_moved_cb moved,
                     void *ud);

/* Makes room for `n` IDs in all without growing on the way. */
int cqr_idmap_reserve(cqr_idmap_t *m, size_t n);

/* Iteration: start with *pos = 0; returns 1 and the next ID and its value
 * pointer, or 0 at the end. Order is slot order (not insertion order);
 * the ID 0 comes last. */
int cqr_idmap_next(const cqr_idmap_t *m, size_t *pos, uint64_t *id,
                   void **val);

/* Bytes held by the map's slots. */
uint64_t cqr_idmap_bytes(const cqr_idmap_t *m);

/* How much cqr_idmap_bytes grows if one ID that the map does not hold is
 * inserted now (0 when it fits without growing), so an owner can charge a
 * memory budget before the insert allocates. The rehash briefly holds the
 * old slots as well. */
uint64_t cqr_idmap_grow_bytes(const cqr_idmap_t *m);

#endif
