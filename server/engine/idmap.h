/* idmap.h -- the known-ID map: uint64 ID -> a fixed-width value.
 *
 * Open addressing with linear probing over two flat arrays (keys, values),
 * so a cqr table with 4 chunks of 16-bit pointers costs 16 bytes a slot.
 * Any 64-bit ID is a valid key: slot key 0 means empty, and the ID 0 is
 * kept beside the arrays. Capacity is any number (not a power of two):
 * the probe start is fastrange(mix(id), cap), and the map grows by 1.25x
 * at 85% load, which keeps memory per ID at most 1/0.68 slots without long
 * probe runs (lookups prefetch their slots: cqr_idmap_prefetch).
 *
 * Not thread-safe: the owner (a table) guards it with its rwlock: find and
 * iteration under the read lock, insert under the write lock.
 *
 * Ownership: a cqr_idmap_t is a value owned by its table (or state); init
 * allocates its arrays, free releases them. A value pointer is the map's
 * and valid until the next insert (which may rehash).
 * Errors: 0 or CQR_ENOMEM (init, insert, reserve); the map is unchanged
 * after a failed insert or reserve.
 */
#ifndef CQR_IDMAP_H
#define CQR_IDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"

typedef struct cqr_idmap {
    uint64_t *keys;    /* cap slots; 0 = empty */
    uint8_t *vals;     /* cap x vw bytes */
    size_t cap;        /* slots */
    size_t count;      /* IDs held, the ID 0 included */
    uint32_t vw;       /* value width in bytes, >= 1 */
    int has_zero;      /* whether the ID 0 is held */
    uint8_t *zero_val; /* the ID 0's value (vw bytes) */
} cqr_idmap_t;

int cqr_idmap_init(cqr_idmap_t *m, uint32_t vw, size_t initial);
void cqr_idmap_free(cqr_idmap_t *m);

/* The slot where a probe for `id` starts: fastrange of the mixed ID over
 * the capacity (64-bit, so that any capacity works). */
static inline size_t cqr_idmap_slot(const cqr_idmap_t *m, uint64_t id)
{
    return (size_t)(((unsigned __int128)cqr_mix64(id) * m->cap) >> 64);
}

/* Starts loading the cache lines that a probe for `id` reads first (its
 * key and value slots), so that a batch's probes overlap their misses
 * instead of paying them one after another. A hint: reads nothing,
 * changes nothing, never faults. */
static inline void cqr_idmap_prefetch(const cqr_idmap_t *m, uint64_t id)
{
    size_t i = cqr_idmap_slot(m, id);
    __builtin_prefetch(&m->keys[i]);
    __builtin_prefetch(m->vals + i * m->vw);
    /* GCC 12's RTL passes delete such prefetches as dead code in some
     * loops; a signal fence emits no instruction and keeps them. */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* The value of `id`, or NULL. The pointer is valid until the next insert. */
void *cqr_idmap_find(const cqr_idmap_t *m, uint64_t id);

/* Finds or inserts `id`; *val points at its value (zero-filled when new;
 * *inserted says which). CQR_ENOMEM if growing fails (map unchanged). */
int cqr_idmap_insert(cqr_idmap_t *m, uint64_t id, void **val, int *inserted);

/* Makes room for `n` IDs in all without growing on the way. */
int cqr_idmap_reserve(cqr_idmap_t *m, size_t n);

/* Iteration: start with *pos = 0; returns 1 and the next ID and its value
 * pointer, or 0 at the end. Order is slot order (not insertion order). */
int cqr_idmap_next(const cqr_idmap_t *m, size_t *pos, uint64_t *id,
                   void **val);

/* Bytes held by the map's arrays. */
uint64_t cqr_idmap_bytes(const cqr_idmap_t *m);

/* How much cqr_idmap_bytes grows if one ID that the map does not hold is
 * inserted now (0 when it fits without growing), so an owner can charge a
 * memory budget before the insert allocates. The rehash briefly holds the
 * old arrays as well. */
uint64_t cqr_idmap_grow_bytes(const cqr_idmap_t *m);

#endif
