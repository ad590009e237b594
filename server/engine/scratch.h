/* scratch.h -- per-thread work buffers of lookups and pushes.
 *
 * A lookup or push needs work space proportional to its batch. Keeping
 * it per thread avoids a malloc (often an mmap) per call: each thread has
 * one buffer per slot, which only grows, and is freed when the thread
 * exits.
 *
 * Threading: a buffer belongs to the calling thread; no locks. Two uses
 * of the same slot by one thread must not overlap (each slot below has
 * one user, and no call path nests two of them).
 * Ownership: the buffers stay the thread's; callers never free them, and
 * a pointer is valid until the thread's next request for the same slot.
 * Errors: NULL when out of memory (callers return CQR_ENOMEM).
 */
#ifndef CQR_SCRATCH_H
#define CQR_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

enum cqr_scratch_slot {
    CQR_SCRATCH_AGG_HKEYS = 0,  /* a push's aggregation: hash slot keys */
    CQR_SCRATCH_AGG_HIDX = 1,   /* ... hash slot -> unique index */
    CQR_SCRATCH_AGG_UKEYS = 2,  /* ... unique keys */
    CQR_SCRATCH_AGG_ACC = 3,    /* ... summed gradients */
    CQR_SCRATCH_POOL_ROWS = 4,  /* a pooled lookup's rows per ID */
    CQR_SCRATCH_POOL_GRADS = 5, /* a pooled push's gradients per ID */
    CQR_SCRATCH_ID_ROWS = 6,    /* a push's rows (or B0/B1 rows) per ID */
    CQR_SCRATCH_SLOTS = 7
};

/* At least `bytes` of this thread's buffer `slot` (contents undefined). */
void *cqr_scratch(enum cqr_scratch_slot slot, size_t bytes);

/* This thread's dense aggregation index with at least n entries, every
 * entry UINT32_MAX: its users put back UINT32_MAX in every entry they set
 * before they return. */
uint32_t *cqr_scratch_dense(size_t n);

#endif
