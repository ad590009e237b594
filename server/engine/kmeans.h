/* kmeans.h -- Lloyd's k-means and nearest-centroid assignment over OpenBLAS.
 *
 * Data layout: points and centroids are dense row-major float blocks with
 * an explicit row stride in floats (stride >= d), so a chunk of a wider
 * matrix can be clustered in place without copying.
 *
 * Distances use ||x||^2 - 2 x.c + ||c||^2 with the cross term from
 * cblas_sgemm, computed blockwise: a block of points against a block of
 * centroids, the argmin fused into the block loop, so the n x k distance
 * matrix is never written.
 *
 * Threading: both functions split the points over `threads` threads: the
 * caller and threads - 1 helpers of a par pool (par.h) that lives for the
 * call (1 = the caller alone). OpenBLAS itself must be single-threaded
 * (cqr_blas_init() does that once). Reductions are done per fixed block
 * of points and combined in block order, so a given input, seed and
 * thread count give bit-identical output.
 *
 * Ownership: inputs and outputs are the caller's buffers; nothing is kept
 * after a call returns.
 *
 * Errors: CQR_EINVAL for impossible shapes (n == 0, k == 0, d == 0, stride
 * < d), CQR_ENOMEM when a work buffer cannot be allocated, CQR_ECANCELED
 * when the caller's cancel flag was raised. Nothing is written to the
 * outputs on error, except where stated.
 */
#ifndef CQR_KMEANS_H
#define CQR_KMEANS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Progress of a long engine operation, passed to a cqr_progress_cb. The
 * struct and its strings are valid only during the callback. */
typedef struct cqr_progress {
    const char *stage;   /* "snapshot", "sample", "kmeans", "assign",
                            "residual", "replay", "commit" */
    uint32_t chunk;      /* chunk being processed, 0-based */
    uint32_t chunks;     /* number of chunks in the phase */
    uint32_t iter;       /* k-means iteration done (stage "kmeans") */
    uint32_t iters;      /* k-means iterations at most (the cap; a fit
                            may converge before) */
    double fraction;     /* 0..1 over the whole operation */
    double inertia;      /* mean squared distance to the nearest centroid
                            after the last iteration, or -1 if unknown */
} cqr_progress_t;

/* Called from the thread running the operation; must not call back into
 * the same table. */
typedef void (*cqr_progress_cb)(void *ud, const cqr_progress_t *p);

typedef enum cqr_kmeans_init {
    CQR_KMEANS_INIT_PLUSPLUS = 0, /* k-means++ (D^2 sampling) */
    CQR_KMEANS_INIT_RANDOM = 1    /* k distinct points drawn uniformly */
} cqr_kmeans_init_t;

typedef struct cqr_kmeans_params {
    uint32_t iters;          /* Lloyd iterations at most (>= 1) */
    double tol;              /* stop once an iteration lowers the inertia
                                by less than tol times its previous value
                                (0 = always run `iters` iterations) */
    uint64_t seed;           /* seeds initialisation and re-seeding */
    uint32_t threads;        /* worker threads, >= 1 */
    cqr_kmeans_init_t init;  /* initialisation method */
    const atomic_int *cancel; /* optional: once nonzero, the call stops
                                 within one block of work per thread and
                                 returns CQR_ECANCELED */
    cqr_progress_cb progress; /* optional, called after every iteration
                                 with stage "kmeans" */
    void *progress_ud;       /* passed to progress */
    uint32_t chunk, chunks;  /* copied into the progress reports */
    double frac0, frac1;     /* the reports' fraction runs from frac0 to
                                frac1 as iterations go by (both 0: 0..1) */
} cqr_kmeans_params_t;

/* What a fit did. */
typedef struct cqr_kmeans_result {
    double inertia;          /* final mean squared distance of a point to
                                its nearest centroid */
    uint32_t iters;          /* Lloyd iterations run (<= params.iters) */
    int converged;           /* 1: stopped early by params.tol */
} cqr_kmeans_result_t;

/* Call once per process before any k-means work: pins OpenBLAS to one
 * thread (the engine threads itself) and returns OpenBLAS's core name for
 * the start-up log. Idempotent and thread-safe. */
const char *cqr_blas_init(void);

/* Fits k centroids to n points of dimension d (row stride xstride).
 * Writes k x d centroids (row stride d) to `centroids`; if `assign` is
 * non-NULL, each point's nearest final centroid (n entries, as
 * cqr_kmeans_assign would give); if `res` is non-NULL, what the fit did.
 * If n < k, the first n centroids are distinct points and the rest
 * duplicate points (no centroid is ever NaN). Empty clusters are re-seeded
 * with the point farthest from its centroid. Seeding (k-means++) runs on
 * a uniform subsample when n is much larger than k (see kmeans.c). */
int cqr_kmeans_fit(const float *x, size_t n, size_t d, size_t xstride,
                   size_t k, const cqr_kmeans_params_t *p, float *centroids,
                   uint32_t *assign, cqr_kmeans_result_t *res);

/* Writes, for each of n points (row stride xstride), the index of the
 * nearest of k centroids (row stride d) to assign[i]; ties go to the lower
 * index. If dist2 is non-NULL it receives the squared distance (clamped at
 * 0). Uses p->threads threads and honours p->cancel (the other fields of
 * p are ignored). On CQR_ECANCELED assign and dist2 are partly written. */
int cqr_kmeans_assign(const float *x, size_t n, size_t d, size_t xstride,
                      const float *centroids, size_t k,
                      const cqr_kmeans_params_t *p, uint32_t *assign,
                      float *dist2);

#endif
