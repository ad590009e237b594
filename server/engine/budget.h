/* budget.h -- a shared memory budget: bytes charged against a limit.
 *
 * One budget bounds the memory of many tables (the server's
 * --max-table-memory). The registry charges a table's creation-time bytes
 * before it allocates them; a table charges what it grows by afterwards
 * (a full table's new row blocks, a known-ID map's growth) before it
 * allocates, so a stream of pushes of new IDs cannot take the server past
 * the limit either. What is charged is refunded when it is freed.
 *
 * A charge that would take `used` past `max` fails and changes nothing;
 * cqr_budget_force charges anyway (for memory that already exists, e.g. a
 * table restored from a checkpoint being attached), so `used` may exceed
 * `max` and further charges then fail until enough is refunded.
 *
 * Ownership: the budget is a value its creator owns (the server's
 * registry); the tables that charge it only point at it, so it outlives
 * them.
 *
 * Threading: every function is safe from any thread (one atomic counter;
 * charges are compare-and-swap, so two racing charges cannot both pass
 * the limit). max is set once by cqr_budget_init, before sharing.
 */
#ifndef CQR_BUDGET_H
#define CQR_BUDGET_H

#include <assert.h>
#include <stdatomic.h>
#include <stdint.h>

#include "err.h"

typedef struct cqr_budget {
    atomic_uint_fast64_t used; /* bytes charged now */
    uint64_t max;              /* limit; immutable after init */
} cqr_budget_t;

static inline void cqr_budget_init(cqr_budget_t *b, uint64_t max)
{
    atomic_init(&b->used, 0);
    b->max = max;
}

/* Charges `bytes` if used + bytes stays within max: 0, else CQR_ELIMIT
 * (nothing charged). */
static inline int cqr_budget_charge(cqr_budget_t *b, uint64_t bytes)
{
    uint_fast64_t used = atomic_load_explicit(&b->used,
                                              memory_order_relaxed);
    do {
        if (bytes > b->max || used > b->max - bytes)
            return CQR_ELIMIT;
    } while (!atomic_compare_exchange_weak_explicit(
        &b->used, &used, used + bytes, memory_order_relaxed,
        memory_order_relaxed));
    return 0;
}

/* Charges `bytes` whatever the limit says. */
static inline void cqr_budget_force(cqr_budget_t *b, uint64_t bytes)
{
    atomic_fetch_add_explicit(&b->used, bytes, memory_order_relaxed);
}

/* Gives back bytes charged earlier. */
static inline void cqr_budget_refund(cqr_budget_t *b, uint64_t bytes)
{
    uint_fast64_t prev = atomic_fetch_sub_explicit(&b->used, bytes,
                                                   memory_order_relaxed);
    assert(prev >= bytes && "budget refund of bytes never charged");
    (void)prev;
}

static inline uint64_t cqr_budget_used(cqr_budget_t *b)
{
    return atomic_load_explicit(&b->used, memory_order_relaxed);
}

/* Bytes left before the limit (0 when at or over it). */
static inline uint64_t cqr_budget_left(cqr_budget_t *b)
{
    uint64_t used = cqr_budget_used(b);
    return used < b->max ? b->max - used : 0;
}

#endif
