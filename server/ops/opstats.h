/* opstats.h -- request counts by operation and status, request latency
 * histograms, and the figures of the last checkpoint.
 *
 * Recording must cost nothing a client can see: every I/O thread writes
 * its own cache-line-aligned block of counters (index = the session's
 * thread), so recording is two clock reads and three uncontended relaxed
 * atomic adds, with no lock and no shared cache line. Readers (the
 * metrics endpoint, the Stats RPC) sum the blocks; a reading taken while
 * requests run is a consistent-enough snapshot for monitoring (each
 * counter is exact, the sum of buckets may trail the status counts by
 * the requests in flight).
 *
 * Latency is the time cqr_rpc_handle spends on one request: decoding,
 * the engine call and encoding the reply. Time in socket buffers is not
 * included (bytes_in/bytes_out and the connection counters cover it).
 *
 * Buckets are fixed (CQR_LAT_BOUNDS, in seconds, as Prometheus reports
 * them); bucket i counts requests with latency <= bound i and > bound
 * i-1, and the last one counts everything slower than the last bound.
 *
 * Threading: cqr_opstats_record and cqr_ckpt_stats_record may run on any
 * thread at any time; two threads that share an index only share cache
 * lines (the counters stay exact). create/destroy once, at start and end.
 */
#ifndef CQR_OPSTATS_H
#define CQR_OPSTATS_H

#include <stdatomic.h>
#include <stdint.h>

/* Upper bounds of the latency buckets in seconds (+Inf is implicit). */
#define CQR_LAT_BOUNDS                                                     \
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,      \
        1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
#define CQR_LAT_NBOUNDS 21
/* Most statuses and operations a table can hold (asserted at create). */
#define CQR_OPSTATS_MAX_STATUS 32
#define CQR_OPSTATS_MAX_OPS 32

typedef struct cqr_opstats cqr_opstats_t;

/* One operation's figures summed over every thread. */
typedef struct cqr_opstat_snap {
    uint64_t status[CQR_OPSTATS_MAX_STATUS]; /* replies by status code */
    uint64_t bucket[CQR_LAT_NBOUNDS + 1];    /* per bucket, not cumulative;
                                                the last is > the last
                                                bound */
    uint64_t count;                          /* requests timed */
    uint64_t sum_ns;                         /* their total latency */
} cqr_opstat_snap_t;

/* Blocks for `nthreads` recording threads, `nops` operations and
 * `nstatus` statuses. CQR_ENOMEM on failure; *out is NULL then. */
int cqr_opstats_create(uint32_t nthreads, uint32_t nops, uint32_t nstatus,
                       cqr_opstats_t **out);
void cqr_opstats_destroy(cqr_opstats_t *s);

/* CLOCK_MONOTONIC in nanoseconds (the clock recording uses). */
uint64_t cqr_opstats_now_ns(void);

/* Counts one request of operation `op` answered with status `status`
 * (0..nstatus-1; others are clamped to the last) that took `ns`.
 * `thread` picks the block (taken modulo the blocks). s may be NULL. */
void cqr_opstats_record(cqr_opstats_t *s, uint32_t thread, uint32_t op,
                        uint32_t status, uint64_t ns);

/* Sums the blocks of operation `op` into *out. */
void cqr_opstats_read(const cqr_opstats_t *s, uint32_t op,
                      cqr_opstat_snap_t *out);

/* Bucket bounds in seconds: CQR_LAT_NBOUNDS entries. */
const double *cqr_opstats_bounds(void);

/* ---- Checkpoints ------------------------------------------------------- */

/* Figures of the checkpoints the server took, for the metrics endpoint
 * and Stats. The persistence module records every checkpoint it takes,
 * whatever triggered it (RPC, interval, cluster phase, SIGTERM), with
 * cqr_ckpt_stats_record; nobody else writes here. */
typedef struct cqr_ckpt_stats {
    atomic_uint_fast64_t ok;          /* checkpoints that succeeded */
    atomic_uint_fast64_t failed;      /* checkpoints that failed */
    atomic_uint_fast64_t generation;  /* generation of the last success
                                         (or the one restored at start) */
    atomic_uint_fast64_t bytes;       /* bytes the last success wrote */
    atomic_uint_fast64_t duration_us; /* duration of the last success */
    atomic_uint_fast64_t unix_time;   /* when the last success finished */
    atomic_uint_fast64_t total_us;    /* summed duration of successes */
    atomic_uint_fast64_t pause_max_us; /* longest push pause of any table
                                          in the last success (set before
                                          it is recorded) */
    atomic_uint_fast64_t failing;     /* checkpoints failed in a row since
                                         the last success; 0 = healthy */
    atomic_uint_fast64_t restore_skipped; /* damaged generations the
                                             restore at start skipped */
    atomic_uint_fast64_t restore_missing; /* acknowledged generations the
                                             restore at start could not
                                             bring back (acknowledged minus
                                             restored; 0 = none lost) */
} cqr_ckpt_stats_t;

/* Records one checkpoint: ok = 1 with its generation, bytes written and
 * duration, or ok = 0 (the other arguments are ignored). */
void cqr_ckpt_stats_record(cqr_ckpt_stats_t *c, int ok, uint64_t generation,
                           uint64_t bytes, double seconds);

#endif
