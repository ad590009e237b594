/* opstats.c -- per-thread request counters and latency histograms (see
 * opstats.h). */
#include "ops/opstats.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"

#define CACHE_LINE 64

static const double bounds_s[CQR_LAT_NBOUNDS] = {CQR_LAT_BOUNDS};

/* The same bounds in nanoseconds, so recording compares integers. */
static const uint64_t bounds_ns[CQR_LAT_NBOUNDS] = {
    5000ull,        10000ull,       25000ull,       50000ull,
    100000ull,      250000ull,      500000ull,      1000000ull,
    2500000ull,     5000000ull,     10000000ull,    25000000ull,
    50000000ull,    100000000ull,   250000000ull,   500000000ull,
    1000000000ull,  2500000000ull,  5000000000ull,  10000000000ull,
    30000000000ull,
};

/* One operation's counters in one thread's block. */
typedef struct op_slot {
    atomic_uint_fast64_t sum_ns;                     /* total latency */
    atomic_uint_fast64_t bucket[CQR_LAT_NBOUNDS + 1]; /* see opstats.h */
    atomic_uint_fast64_t status[];                   /* nstatus entries */
} op_slot_t;

struct cqr_opstats {
    uint32_t nthreads;   /* blocks */
    uint32_t nops;       /* slots per block */
    uint32_t nstatus;    /* status counters per slot */
    size_t slot_bytes;   /* bytes of one slot */
    size_t block_bytes;  /* bytes of one thread's block, a multiple of
                            the cache line */
    unsigned char *mem;  /* nthreads blocks, cache-line aligned */
};

static op_slot_t *slot_at(const cqr_opstats_t *s, uint32_t thread,
                          uint32_t op)
{
    return (op_slot_t *)(void *)(s->mem + (size_t)thread * s->block_bytes +
                                 (size_t)op * s->slot_bytes);
}

int cqr_opstats_create(uint32_t nthreads, uint32_t nops, uint32_t nstatus,
                       cqr_opstats_t **out)
{
    assert(nthreads > 0 && nops > 0 && nstatus > 0);
    assert(nops <= CQR_OPSTATS_MAX_OPS && nstatus <= CQR_OPSTATS_MAX_STATUS);
    *out = NULL;
    cqr_opstats_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return CQR_ENOMEM;
    s->nthreads = nthreads;
    s->nops = nops;
    s->nstatus = nstatus;
    s->slot_bytes = sizeof(op_slot_t) +
                    (size_t)nstatus * sizeof(atomic_uint_fast64_t);
    s->block_bytes = ((size_t)nops * s->slot_bytes + CACHE_LINE - 1) /
                     CACHE_LINE * CACHE_LINE;
    size_t total = (size_t)nthreads * s->block_bytes;
    s->mem = aligned_alloc(CACHE_LINE, total);
    if (s->mem == NULL) {
        free(s);
        return CQR_ENOMEM;
    }
    /* All-zero bytes are zero-valued atomics on every platform we build
     * for (lock-free 64-bit atomics). */
    memset(s->mem, 0, total);
    *out = s;
    return 0;
}

void cqr_opstats_destroy(cqr_opstats_t *s)
{
    if (s == NULL)
        return;
    free(s->mem);
    free(s);
}

uint64_t cqr_opstats_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void cqr_opstats_record(cqr_opstats_t *s, uint32_t thread, uint32_t op,
                        uint32_t status, uint64_t ns)
{
    if (s == NULL)
        return;
    assert(op < s->nops);
    if (status >= s->nstatus)
        status = s->nstatus - 1;
    op_slot_t *sl = slot_at(s, thread % s->nthreads, op);
    /* Most requests are fast: scan from the bottom. */
    uint32_t b = 0;
    while (b < CQR_LAT_NBOUNDS && ns > bounds_ns[b])
        b++;
    atomic_fetch_add_explicit(&sl->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sl->sum_ns, ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&sl->status[status], 1, memory_order_relaxed);
}

void cqr_opstats_read(const cqr_opstats_t *s, uint32_t op,
                      cqr_opstat_snap_t *out)
{
    memset(out, 0, sizeof *out);
    if (s == NULL || op >= s->nops)
        return;
    for (uint32_t t = 0; t < s->nthreads; t++) {
        op_slot_t *sl = slot_at(s, t, op);
        out->sum_ns += atomic_load_explicit(&sl->sum_ns,
                                            memory_order_relaxed);
        for (uint32_t b = 0; b <= CQR_LAT_NBOUNDS; b++) {
            uint64_t v = atomic_load_explicit(&sl->bucket[b],
                                              memory_order_relaxed);
            out->bucket[b] += v;
            out->count += v;
        }
        for (uint32_t i = 0; i < s->nstatus; i++)
            out->status[i] += atomic_load_explicit(&sl->status[i],
                                                   memory_order_relaxed);
    }
}

const double *cqr_opstats_bounds(void)
{
    return bounds_s;
}

void cqr_ckpt_stats_record(cqr_ckpt_stats_t *c, int ok, uint64_t generation,
                           uint64_t bytes, double seconds)
{
    if (!ok) {
        atomic_fetch_add_explicit(&c->failed, 1, memory_order_relaxed);
        return;
    }
    uint64_t us = seconds > 0 ? (uint64_t)(seconds * 1e6) : 0;
    atomic_store_explicit(&c->generation, generation, memory_order_relaxed);
    atomic_store_explicit(&c->bytes, bytes, memory_order_relaxed);
    atomic_store_explicit(&c->duration_us, us, memory_order_relaxed);
    atomic_store_explicit(&c->unix_time, (uint64_t)time(NULL),
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&c->total_us, us, memory_order_relaxed);
    /* Last, so a reader that sees the new count sees its figures too
     * (release pairs with the reader's acquire load of ok). */
    atomic_fetch_add_explicit(&c->ok, 1, memory_order_release);
}
