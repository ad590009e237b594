/* admit_util.h -- the table helpers the admission and eviction suites
 * share (test_admit.c for the codebook kinds, test_admit_full.c for full
 * tables).
 *
 * Rules: for the test's main thread; every helper fails the running check
 * test (ck_assert) instead of returning an error. Tables are the caller's
 * (cqr_table_destroy). Every table has ADMIT_DIM dimensions.
 */
#ifndef CQR_TEST_ADMIT_UTIL_H
#define CQR_TEST_ADMIT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "chain.h"
#include "engine/table.h"

enum { ADMIT_DIM = 8 };

/* A table of kind with SGD at lr 0.1, the seed given, 64 rows per
 * codebook (the codebook kinds), and the admission options: admit_after,
 * evict_after_phases, max_ids and ttl_seconds. */
cqr_table_t *admit_make(cqr_kind_t kind, uint64_t seed, uint32_t admit,
                        uint32_t evict, uint64_t max_ids, uint32_t ttl);

/* Pushes ids[0..n) once, each with gradient g in every dimension. */
void admit_push_ids(cqr_table_t *t, const uint64_t *ids, size_t n, float g);

/* Pushes id once with gradient 0.5. */
void admit_push_one(cqr_table_t *t, uint64_t id);

cqr_table_stats_t admit_stats(cqr_table_t *t);

uint64_t admit_digest(cqr_table_t *t);

/* A round of the restore tests: exports t into c (incrementally) and
 * imports it again; the import digests as t does and has t's
 * ids_admitted, ids_evicted and known_ids. prev (the import of the round
 * before, since put through the same calls as t; or NULL) must digest as
 * t does too, and is destroyed. Returns the new import. */
cqr_table_t *admit_restore(chain_t *c, cqr_table_t *t, cqr_table_t *prev);

#endif
