/* table_impl.h -- a table's internals, shared by table.c and cluster.c
 * only. Nothing outside the engine includes this.
 *
 * Locking: `lock` (a writer-preferring rwlock) is the outer lock. Lookups
 * and pushes hold it shared; inserting new known IDs, a phase's begin and
 * commit, and the digest hold it exclusively. `plock` (a mutex) is inner:
 * it guards the push log of a running phase and the phase statistics.
 * Row floats are guarded by their own seqlocks (rows.h).
 */
#ifndef CQR_TABLE_IMPL_H
#define CQR_TABLE_IMPL_H

#include <pthread.h>
#include <stdint.h>

#include "idmap.h"
#include "rows.h"
#include "table.h"

/* Everything a cluster phase replaces, for the codebook kinds. */
typedef struct cqr_cbstate {
    uint64_t *seed_p; /* c seeds of the hashed B0 pointers (never change) */
    uint64_t *seed_h; /* c seeds of the B1 hash (each phase draws anew) */
    cqr_rows_t *cb;   /* ncb x c blocks: codebook b, chunk i at cb[b*c+i] */
    cqr_idmap_t ids;  /* cqr: known ID -> c B0 pointers of pw bytes */
} cqr_cbstate_t;

/* One push logged during a phase, replayed onto the new state. */
typedef struct cqr_logent {
    struct cqr_logent *next; /* FIFO order */
    size_t n;                /* IDs */
    uint64_t *ids;           /* n IDs (same allocation as the entry) */
    float *grads;            /* n x dim gradients (same allocation) */
} cqr_logent_t;

#define CQR_FULL_BLOCK_SHIFT 16
#define CQR_FULL_BLOCK (1u << CQR_FULL_BLOCK_SHIFT)
/* Pushes logged during one phase, at most; beyond it pushes get
 * CQR_EBUSY until the phase commits. */
#define CQR_PHASE_LOG_MAX_BYTES (1ull << 30)

struct cqr_table {
    cqr_table_config_t cfg; /* immutable */
    uint32_t c;             /* chunks (1 for full and hash) */
    uint32_t w;             /* floats per chunk: dim / c */
    uint32_t k;             /* rows per codebook (0 for full) */
    uint32_t ncb;           /* codebooks: 0 full, 1 hash, 2 ce and cqr */
    uint32_t pw;            /* bytes per stored B0 pointer (cqr) */
    pthread_rwlock_t lock;  /* see the file comment */

    cqr_cbstate_t *st;      /* hash/ce/cqr: the live state */

    cqr_idmap_t rowmap;     /* full: ID -> uint32 row index */
    cqr_rows_t *blocks;     /* full: row blocks of CQR_FULL_BLOCK rows */
    size_t nblocks;         /* full: blocks allocated */
    size_t blocks_cap;      /* full: slots in `blocks` */
    uint64_t nrows;         /* full: rows handed out */

    pthread_mutex_t plock;  /* guards the log and the phase statistics */
    cqr_phase_t *phase;     /* running phase (set and cleared under the
                               exclusive lock), or NULL */
    cqr_logent_t *log_head; /* pushes logged during the phase */
    cqr_logent_t *log_tail;
    uint64_t log_bytes;     /* bytes held by the log */
    uint64_t log_count;     /* pushes logged in this phase in all */
    uint32_t phases_done;   /* committed phases (exclusive lock) */
    uint64_t examples_at_phase; /* examples_pushed at the last begin */
    double last_inertia;    /* statistics of the last phase (plock) */
    double last_phase_seconds;
    double last_commit_seconds;

    uint64_t n_lookups;     /* usage counters, relaxed atomics */
    uint64_t n_pushes;
    uint64_t n_examples;
};

/* B0 pointer j of a stored pointer array. */
static inline uint32_t cqr_ptr_get(const uint8_t *v, uint32_t pw, uint32_t j)
{
    switch (pw) {
    case 1: return v[j];
    case 2: return (uint32_t)v[2 * j] | (uint32_t)v[2 * j + 1] << 8;
    default:
        return (uint32_t)v[4 * j] | (uint32_t)v[4 * j + 1] << 8 |
               (uint32_t)v[4 * j + 2] << 16 | (uint32_t)v[4 * j + 3] << 24;
    }
}

static inline void cqr_ptr_set(uint8_t *v, uint32_t pw, uint32_t j, uint32_t p)
{
    for (uint32_t b = 0; b < pw; b++)
        v[pw * j + b] = (uint8_t)(p >> (8 * b));
}

/* The hashed B0 pointer and the B1 row of `id` in chunk i of state st. */
uint32_t cqr_hash_p(const cqr_table_t *t, const cqr_cbstate_t *st,
                    uint64_t id, uint32_t i);
uint32_t cqr_hash_h(const cqr_table_t *t, const cqr_cbstate_t *st,
                    uint64_t id, uint32_t i);

/* Allocates an empty state (seeds zero, codebooks zero, empty map). */
int cqr_cbstate_alloc(const cqr_table_t *t, cqr_cbstate_t **out);
/* Deep copy of src's seeds and codebooks; the copy's ID map is empty. */
int cqr_cbstate_clone(const cqr_table_t *t, const cqr_cbstate_t *src,
                      cqr_cbstate_t **out);
void cqr_cbstate_free(const cqr_table_t *t, cqr_cbstate_t *st);

/* Applies a push to state st (codebook kinds): gradients of the same
 * codebook row summed, then one step per row. The IDs' pointers are read
 * from st->ids (hashed if absent). Caller guarantees st is not freed
 * meanwhile (shared table lock, or st is private). */
void cqr_cb_apply(cqr_table_t *t, cqr_cbstate_t *st, const uint64_t *ids,
                  const float *grads, size_t n);

/* Monotonic seconds. */
double cqr_now(void);

#endif
