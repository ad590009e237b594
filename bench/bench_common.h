/* bench_common.h -- helpers shared by the cqrps benchmark programs.
 *
 * Every benchmark draws its IDs the same way, so that cqrps, Redis and the
 * in-process engine see the same keys: the vocabulary of V known IDs is
 * bench_id(0) .. bench_id(V - 1), a bijective 64-bit mix of the rank (IDs
 * are arbitrary hashed feature values in production, never small dense
 * integers). Rank r is drawn uniformly or from a Zipf law of exponent s
 * (rank 0 the most frequent).
 *
 * Latencies are collected per thread in a growable array of microseconds
 * and merged at the end; percentiles are nearest-rank over the sorted
 * samples.
 *
 * Nothing here is thread-safe unless stated: each thread owns its
 * generators and its latency array.
 */
#ifndef CQR_BENCH_COMMON_H
#define CQR_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/hash.h"

/* Monotonic seconds. Thread-safe. */
double bench_now(void);

/* CPU seconds used so far by this process (all threads) and by the calling
 * thread. On a machine shared with other work, rates per CPU-second stay
 * meaningful where rates per wall-second do not. */
double bench_cpu_now(void);
double bench_thread_cpu_now(void);

/* The ID of vocabulary rank r (a bijection on 64-bit integers, never 0). */
uint64_t bench_id(uint64_t rank);

/* The engine's splitmix64 generator (engine/hash.h), seeded so that
 * small seeds (0, 1, 2, ...) start far apart. */
typedef cqr_rng_t bench_rng_t;

void bench_rng_seed(bench_rng_t *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng_t *r);
/* Uniform in [0, 1). */
double bench_rng_unit(bench_rng_t *r);
/* Uniform in [0, n). */
uint64_t bench_rng_below(bench_rng_t *r, uint64_t n);

/* Rank sampler over [0, n): uniform when s == 0, else Zipf with exponent
 * s > 0 by rejection-inversion (Hormann and Derflinger), O(1) per draw for
 * any n. */
typedef struct bench_ranks {
    uint64_t n;      /* vocabulary size */
    double s;        /* exponent; 0 = uniform */
    double h_x1;     /* rejection-inversion constants */
    double h_n;
    double sconst;
} bench_ranks_t;

void bench_ranks_init(bench_ranks_t *z, uint64_t n, double s);
uint64_t bench_ranks_draw(bench_ranks_t *z, bench_rng_t *r);

/* Fills ids[0..n) with the IDs of n drawn ranks. */
void bench_draw_ids(bench_ranks_t *z, bench_rng_t *r, uint64_t *ids,
                    size_t n);

/* Latency samples in microseconds. */
typedef struct bench_lat {
    double *us;  /* samples */
    size_t n;    /* samples held */
    size_t cap;  /* capacity */
} bench_lat_t;

void bench_lat_add(bench_lat_t *l, double us);
/* Appends every sample of src to dst. */
void bench_lat_merge(bench_lat_t *dst, const bench_lat_t *src);
/* Sorts the samples; then bench_lat_pct gives the p-quantile (0..1), or 0
 * with no samples. */
void bench_lat_sort(bench_lat_t *l);
double bench_lat_pct(const bench_lat_t *l, double p);
void bench_lat_free(bench_lat_t *l);

/* Resident set size of this process and its peak, in bytes (from
 * /proc/self/status: VmRSS, VmHWM). 0 if unknown. */
uint64_t bench_rss_bytes(void);
uint64_t bench_peak_rss_bytes(void);

/* CPU seconds (user + system) of process `pid` from /proc/<pid>/stat; < 0
 * if unreadable. */
double bench_proc_cpu_seconds(int pid);

/* Parses "123", "1e6", "4k", "2M", "1G" (decimal suffixes) into *out;
 * returns 0 or -1. */
int bench_parse_count(const char *s, uint64_t *out);

/* Progress line on stderr, prefixed with the program name. */
void bench_log(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* OpenBLAS's core name ("Prescott", "Haswell", ...). */
const char *bench_blas_core(void);

#endif
