/* sketch.h -- a count-min sketch of push counts, for admission (issue 19).
 *
 * CQR_SKETCH_DEPTH rows of CQR_SKETCH_WIDTH one-byte counters; an ID
 * counts in one counter per row (a seeded hash), and its estimate is the
 * smallest of them: never below its true count (saturating at 255), above
 * it only when other IDs share all its counters. Adds are conservative
 * (only the counters at the minimum go up), which keeps the overestimate
 * small. Memory is fixed: CQR_SKETCH_BYTES, whatever the number of IDs.
 * Counts never decay: once most counters are high, most IDs are admitted
 * at once (at about 255 x CQR_SKETCH_WIDTH distinct pushes).
 *
 * Threading: estimate and add may run from any number of threads at once
 * (relaxed atomics per counter); concurrent adds of IDs that share a
 * counter may each miss the other's increment of it, so the sketch is
 * exact only for a sequence of calls (which is what the digests assume).
 * Ownership: the table owns its sketch (cqr_sketch_create / _free).
 * Errors: create returns 0 or CQR_ENOMEM.
 */
#ifndef CQR_SKETCH_H
#define CQR_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#define CQR_SKETCH_DEPTH 4u
#define CQR_SKETCH_WIDTH (1u << 18)
#define CQR_SKETCH_BYTES ((size_t)CQR_SKETCH_DEPTH * CQR_SKETCH_WIDTH)

typedef struct cqr_sketch {
    uint8_t *c;                      /* DEPTH x WIDTH counters */
    uint64_t seed[CQR_SKETCH_DEPTH]; /* one hash seed per row */
} cqr_sketch_t;

/* A zeroed sketch whose hashes derive from `seed`. */
int cqr_sketch_create(uint64_t seed, cqr_sketch_t **out);
void cqr_sketch_free(cqr_sketch_t *s);

/* The estimated count of `id` (0..255). */
unsigned cqr_sketch_estimate(const cqr_sketch_t *s, uint64_t id);

/* Counts one more push of `id`. */
void cqr_sketch_add(cqr_sketch_t *s, uint64_t id);

#endif
