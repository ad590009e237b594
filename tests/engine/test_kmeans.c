/* test_kmeans.c -- checks k-means and assignment against plain loops.
 *
 * The BLAS path (blockwise sgemm with a fused argmin) is compared with a
 * brute-force double-precision loop; fits are checked on data whose answer
 * is known (planted blobs, n <= k, duplicates), for determinism, and for
 * argument validation.
 */
#include <check.h>
#include <stdatomic.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/kmeans.h"
#include "check_main.h"

/* ---- helpers ---------------------------------------------------------- */

/* The engine's PRNG (hash.h); each test seeds it first. */
static cqr_rng_t rng;

/* Uniform in (0, 1): never 0, so that log() below stays finite. */
static double unif(void)
{
    return ((double)(cqr_rng_next(&rng) >> 11) + 0.5) * 0x1.0p-53;
}

static double gauss(void)
{
    return sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif());
}

static float *alloc_f(size_t count)
{
    float *p = malloc(count * sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

static double dist2_ref(const float *a, const float *b, size_t d)
{
    double s = 0;
    for (size_t t = 0; t < d; t++) {
        double z = (double)a[t] - (double)b[t];
        s += z * z;
    }
    return s;
}

/* Brute-force nearest centroid distance in double. */
static double min_dist2_ref(const float *x, size_t d, const float *c,
                            size_t k, size_t *arg)
{
    double best = INFINITY;
    for (size_t j = 0; j < k; j++) {
        double v = dist2_ref(x, c + j * d, d);
        if (v < best) {
            best = v;
            if (arg)
                *arg = j;
        }
    }
    return best;
}

/* Mean over points of the squared distance to the nearest centroid. */
static double inertia_ref(const float *x, size_t n, size_t d, size_t xs,
                          const float *c, size_t k)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += min_dist2_ref(x + i * xs, d, c, k, NULL);
    return s / (double)n;
}

static int all_finite(const float *v, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static int close_rel(double a, double b, double rel, double abs_tol)
{
    return fabs(a - b) <= rel * fmax(fabs(a), fabs(b)) + abs_tol;
}

/* nc centres uniform in [-5, 5]^d, points = centre + sigma * N(0, I), each
 * centre used n / nc times (balanced, so each is well estimated). */
static void make_blobs(float *x, size_t n, size_t d, float *centres,
                       size_t nc, double sigma)
{
    for (size_t i = 0; i < nc * d; i++)
        centres[i] = (float)(unif() * 10.0 - 5.0);
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++)
            x[i * d + t] = (float)(centres[(i % nc) * d + t] +
                                   sigma * gauss());
}

static cqr_kmeans_params_t params(uint32_t iters, uint64_t seed,
                                  uint32_t threads, cqr_kmeans_init_t init)
{
    cqr_kmeans_params_t p = {
        .iters = iters, .seed = seed, .threads = threads, .init = init,
    };
    return p;
}

/* cqr_kmeans_fit keeping only the inertia (most tests look at nothing
 * else). */
static int fit(const float *x, size_t n, size_t d, size_t xs, size_t k,
               const cqr_kmeans_params_t *p, float *c, double *inertia)
{
    cqr_kmeans_result_t r;
    int rc = cqr_kmeans_fit(x, n, d, xs, k, p, c, NULL, &r);
    if (rc == 0)
        *inertia = r.inertia;
    return rc;
}

/* cqr_kmeans_assign on `threads` threads. */
static int assign(const float *x, size_t n, size_t d, size_t xs,
                  const float *c, size_t k, uint32_t threads, uint32_t *a,
                  float *d2)
{
    cqr_kmeans_params_t p = {.threads = threads};
    return cqr_kmeans_assign(x, n, d, xs, c, k, &p, a, d2);
}

/* ---- tests ------------------------------------------------------------ */

START_TEST(test_blas_init)
{
    const char *a = cqr_blas_init();
    const char *b = cqr_blas_init();
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_gt(strlen(a), 0);
    ck_assert_ptr_eq(a, b);
}
END_TEST

typedef struct progress_log {
    uint32_t calls, last_iter;
    double last_inertia, last_fraction;
    int bad;
} progress_log_t;

static void on_progress(void *ud, const cqr_progress_t *p)
{
    progress_log_t *log = ud;
    if (strcmp(p->stage, "kmeans") != 0 || p->iter != log->last_iter + 1 ||
        p->iters != 25 || p->chunk != 3 || p->chunks != 4 ||
        !(p->inertia >= 0) || p->fraction <= 0 || p->fraction > 1)
        log->bad = 1;
    log->calls++;
    log->last_iter = p->iter;
    log->last_inertia = p->inertia;
    log->last_fraction = p->fraction;
}

/* Planted blobs: every true centre is found, inertia ~ d sigma^2, and the
 * reported inertia matches a brute-force evaluation of the centroids. */
static void check_blobs(cqr_kmeans_init_t init, uint32_t threads)
{
    const size_t nc = 16, d = 8, n = 2000;
    const double sigma = 0.05;
    float *x = alloc_f(n * d), *centres = alloc_f(nc * d);
    float *c = alloc_f(nc * d);
    cqr_rng_seed(&rng, 12345);
    make_blobs(x, n, d, centres, nc, sigma);

    cqr_kmeans_params_t p = params(25, 7, threads, init);
    progress_log_t log = {0};
    p.progress = on_progress;
    p.progress_ud = &log;
    p.chunk = 3;
    p.chunks = 4;
    double inertia = -1;
    ck_assert_int_eq(fit(x, n, d, d, nc, &p, c, &inertia), 0);

    ck_assert_int_eq(log.bad, 0);
    ck_assert_uint_eq(log.calls, 25);
    ck_assert(log.last_fraction == 1.0);
    ck_assert(log.last_inertia == inertia);
    for (size_t j = 0; j < nc; j++) {
        double best = min_dist2_ref(centres + j * d, d, c, nc, NULL);
        ck_assert_msg(sqrt(best) < 0.05, "centre %zu missed by %g", j,
                      sqrt(best));
    }
    double expect = (double)d * sigma * sigma;
    ck_assert_msg(fabs(inertia - expect) < 0.15 * expect,
                  "inertia %g, expected ~%g", inertia, expect);
    ck_assert(close_rel(inertia, inertia_ref(x, n, d, d, c, nc), 1e-4, 0));
    free(x);
    free(centres);
    free(c);
}

START_TEST(test_blobs_plusplus)
{
    check_blobs(CQR_KMEANS_INIT_PLUSPLUS, 2);
}
END_TEST

START_TEST(test_blobs_plusplus_1thread)
{
    check_blobs(CQR_KMEANS_INIT_PLUSPLUS, 1);
}
END_TEST

/* Assignment equals a plain argmin loop; a different index is accepted
 * only where the brute-force distances genuinely tie. */
static void check_assign(size_t n, size_t d, size_t k, size_t xs,
                         uint32_t threads, float offset)
{
    float *x = alloc_f(n * xs), *c = alloc_f(k * d), *dist2 = alloc_f(n);
    uint32_t *a = malloc(n * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < n * xs; i++)
        x[i] = (float)(offset + gauss());
    for (size_t i = 0; i < k * d; i++)
        c[i] = (float)(offset + gauss());
    ck_assert_int_eq(
        assign(x, n, d, xs, c, k, threads, a, dist2), 0);

    size_t mismatches = 0;
    for (size_t i = 0; i < n; i++) {
        size_t ref = 0;
        double best = min_dist2_ref(x + i * xs, d, c, k, &ref);
        ck_assert_uint_lt(a[i], k);
        double got = dist2_ref(x + i * xs, c + a[i] * d, d);
        if (a[i] != ref) {
            mismatches++;
            ck_assert_msg(close_rel(got, best, 1e-4, 1e-6),
                          "n=%zu d=%zu k=%zu point %zu: index %u (%g) vs "
                          "%zu (%g)", n, d, k, i, a[i], got, ref, best);
        }
        ck_assert(dist2[i] >= 0);
        ck_assert_msg(close_rel(dist2[i], got, 1e-4, 1e-5),
                      "dist2 %g vs %g", dist2[i], got);
    }
    /* Near-ties are rare on continuous data. */
    ck_assert_uint_le(mismatches, n / 100 + 1);

    /* dist2 is optional and does not change the assignment. */
    uint32_t *a2 = malloc(n * sizeof *a2);
    ck_assert_ptr_nonnull(a2);
    ck_assert_int_eq(assign(x, n, d, xs, c, k, 1, a2, NULL), 0);
    ck_assert_mem_eq(a, a2, n * sizeof *a);
    free(a2);
    free(a);
    free(x);
    free(c);
    free(dist2);
}

START_TEST(test_assign_vs_brute)
{
    cqr_rng_seed(&rng, 99);
    check_assign(1000, 16, 1024, 16, 1, 0);
    check_assign(1000, 16, 1024, 16, 2, 0);
    check_assign(777, 8, 100, 8, 2, 0);       /* n, k not block multiples */
    check_assign(300, 5, 1, 7, 1, 0);         /* k = 1, stride > d */
    check_assign(2049, 16, 1500, 20, 2, 0);   /* two centroid tiles */
    check_assign(513, 3, 37, 3, 2, 0);        /* odd d, tail lanes */
    check_assign(5, 16, 2000, 16, 3, 0);      /* fewer points than threads */
    check_assign(600, 16, 64, 16, 2, 100.0f); /* far from the origin */
}
END_TEST

/* The same with the sgemm tiles on a CPU that has the fused kernel (on
 * others this repeats the test above). */
START_TEST(test_assign_vs_brute_tiles)
{
    setenv("CQR_KMEANS_NO_FUSED", "1", 1);
    cqr_rng_seed(&rng, 99);
    check_assign(1000, 16, 1024, 16, 1, 0);
    check_assign(777, 8, 100, 8, 2, 0);
    check_assign(513, 3, 37, 3, 2, 0);
    check_assign(600, 16, 64, 16, 2, 100.0f);
    unsetenv("CQR_KMEANS_NO_FUSED");
}
END_TEST

/* Fused widths: every padded width and both sides of each pad. */
START_TEST(test_assign_widths)
{
    cqr_rng_seed(&rng, 21);
    for (size_t d = 1; d <= 17; d++)
        check_assign(300, d, 70, d, 2, 0);
}
END_TEST

/* Easy data converges early under a tolerance; tolerance 0 runs every
 * iteration. The assignment returned is the final centroids' nearest. */
START_TEST(test_early_stop)
{
    const size_t nc = 16, d = 8, n = 4000;
    float *x = alloc_f(n * d), *centres = alloc_f(nc * d);
    float *c = alloc_f(nc * d);
    uint32_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    ck_assert(a && b);
    cqr_rng_seed(&rng, 77);
    make_blobs(x, n, d, centres, nc, 0.05);
    cqr_kmeans_params_t p = params(25, 3, 2, CQR_KMEANS_INIT_PLUSPLUS);
    cqr_kmeans_result_t r;

    p.tol = 1e-4;
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, nc, &p, c, a, &r), 0);
    ck_assert_msg(r.iters >= 1 && r.iters < 25, "iters %u", r.iters);
    ck_assert_int_eq(r.converged, 1);
    ck_assert(close_rel(r.inertia, inertia_ref(x, n, d, d, c, nc), 1e-4, 0));
    ck_assert_int_eq(assign(x, n, d, d, c, nc, 1, b, NULL), 0);
    ck_assert_mem_eq(a, b, n * sizeof *a);

    p.tol = 0;
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, nc, &p, c, a, &r), 0);
    ck_assert_uint_eq(r.iters, 25);
    ck_assert_int_eq(r.converged, 0);

    p.tol = 1.5; /* not a fraction */
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, nc, &p, c, a, &r),
                     CQR_EINVAL);
    free(x);
    free(centres);
    free(c);
    free(a);
    free(b);
}
END_TEST

/* A raised cancel flag stops fit and assign; a lowered one does not. */
START_TEST(test_cancel)
{
    const size_t n = 3000, d = 8, k = 40;
    float *x = alloc_f(n * d), *c = alloc_f(k * d);
    uint32_t *a = malloc(n * sizeof *a);
    ck_assert_ptr_nonnull(a);
    cqr_rng_seed(&rng, 9);
    for (size_t i = 0; i < n * d; i++)
        x[i] = (float)gauss();
    atomic_int flag = 0;
    cqr_kmeans_params_t p = params(10, 1, 2, CQR_KMEANS_INIT_PLUSPLUS);
    p.cancel = &flag;
    cqr_kmeans_result_t r = {.iters = 999};
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, k, &p, c, a, &r), 0);
    ck_assert_uint_eq(r.iters, 10);
    ck_assert_int_eq(cqr_kmeans_assign(x, n, d, d, c, k, &p, a, NULL), 0);
    atomic_store(&flag, 1);
    r.iters = 999;
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, k, &p, c, a, &r),
                     CQR_ECANCELED);
    ck_assert_uint_eq(r.iters, 999); /* res is not written */
    p.init = CQR_KMEANS_INIT_RANDOM;
    ck_assert_int_eq(cqr_kmeans_fit(x, n, d, d, k, &p, c, a, &r),
                     CQR_ECANCELED);
    ck_assert_int_eq(cqr_kmeans_assign(x, n, d, d, c, k, &p, a, NULL),
                     CQR_ECANCELED);
    free(x);
    free(c);
    free(a);
}
END_TEST

/* Many more points than KM_SEED_MIN: seeding runs on a subsample and
 * Lloyd on every point; every planted centre still gets a centroid (k is
 * 4 per blob, so that an unlucky seeding cannot leave one out). */
START_TEST(test_seed_subsample)
{
    const size_t nc = 16, k = 64, d = 4, n = 100000;
    float *x = alloc_f(n * d), *centres = alloc_f(nc * d);
    float *c = alloc_f(k * d);
    cqr_rng_seed(&rng, 5150);
    make_blobs(x, n, d, centres, nc, 0.05);
    cqr_kmeans_params_t p = params(25, 4, 2, CQR_KMEANS_INIT_PLUSPLUS);
    p.tol = 1e-4;
    double in;
    ck_assert_int_eq(fit(x, n, d, d, k, &p, c, &in), 0);
    ck_assert(all_finite(c, k * d));
    ck_assert(in < (double)d * 0.05 * 0.05);
    for (size_t j = 0; j < nc; j++) {
        double best = min_dist2_ref(centres + j * d, d, c, k, NULL);
        ck_assert_msg(sqrt(best) < 0.15, "centre %zu missed by %g", j,
                      sqrt(best));
    }
    free(x);
    free(centres);
    free(c);
}
END_TEST

/* Exact ties go to the lower index. */
START_TEST(test_assign_ties)
{
    const size_t d = 4, k = 6, n = 3;
    float c[6 * 4] = {0};
    for (size_t j = 0; j < k; j++)
        for (size_t t = 0; t < d; t++)
            c[j * d + t] = (float)(j * 10 + t);
    memcpy(c + 4 * d, c + 1 * d, d * sizeof(float)); /* c4 == c1 */
    memcpy(c + 5 * d, c + 1 * d, d * sizeof(float)); /* c5 == c1 */
    float x[3 * 4];
    memcpy(x, c + 1 * d, d * sizeof(float));
    memcpy(x + d, c + 1 * d, d * sizeof(float));
    x[d] += 0.25f;
    memcpy(x + 2 * d, c + 3 * d, d * sizeof(float));
    uint32_t a[3];
    float d2[3];
    ck_assert_int_eq(assign(x, n, d, d, c, k, 2, a, d2), 0);
    ck_assert_uint_eq(a[0], 1);
    ck_assert_uint_eq(a[1], 1);
    ck_assert_uint_eq(a[2], 3);
    ck_assert(d2[0] == 0.0f && d2[2] == 0.0f);
    ck_assert(fabsf(d2[1] - 0.0625f) < 1e-6f);

    /* The same across the vector lanes of the argmin: copies of c3 at
     * 40 and 70 land in other lanes and accumulators. */
    const size_t kb = 100;
    float *cb = alloc_f(kb * d);
    cqr_rng_seed(&rng, 6);
    for (size_t i = 0; i < kb * d; i++)
        cb[i] = (float)gauss();
    memcpy(cb + 40 * d, cb + 3 * d, d * sizeof(float));
    memcpy(cb + 70 * d, cb + 3 * d, d * sizeof(float));
    ck_assert_int_eq(assign(cb + 40 * d, 1, d, d, cb, kb, 1, a,
                                       NULL), 0);
    ck_assert_uint_eq(a[0], 3);
    free(cb);
}
END_TEST

/* Same input, seed and threads give bit-identical centroids; here also
 * across thread counts, which the implementation guarantees. */
START_TEST(test_determinism)
{
    const size_t n = 5000, d = 16, k = 300;
    float *x = alloc_f(n * d), *centres = alloc_f(40 * d);
    float *c1 = alloc_f(k * d), *c2 = alloc_f(k * d);
    cqr_rng_seed(&rng, 4242);
    make_blobs(x, n, d, centres, 40, 0.5);
    for (int init = 0; init <= 1; init++) {
        cqr_kmeans_params_t p = params(10, 77, 2, (cqr_kmeans_init_t)init);
        double in1, in2;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c1, &in1), 0);
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c2, &in2), 0);
        ck_assert_mem_eq(c1, c2, k * d * sizeof(float));
        ck_assert(in1 == in2);
        p.threads = 1;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c2, &in2), 0);
        ck_assert_mem_eq(c1, c2, k * d * sizeof(float));
        ck_assert(in1 == in2);
        p.threads = 3;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c2, &in2), 0);
        ck_assert_mem_eq(c1, c2, k * d * sizeof(float));
        /* A different seed gives a different fit. */
        p.seed = 78;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c2, &in2), 0);
        ck_assert(memcmp(c1, c2, k * d * sizeof(float)) != 0);
        ck_assert(close_rel(in1, inertia_ref(x, n, d, d, c1, k), 1e-4, 0));
    }
    free(x);
    free(centres);
    free(c1);
    free(c2);
}
END_TEST

/* A chunk of a wider matrix (stride > d) clusters like a packed copy. */
START_TEST(test_stride)
{
    const size_t n = 3000, d = 4, xs = 12, k = 50;
    float *wide = alloc_f(n * xs), *packed = alloc_f(n * d);
    float *c1 = alloc_f(k * d), *c2 = alloc_f(k * d);
    cqr_rng_seed(&rng, 5);
    for (size_t i = 0; i < n * xs; i++)
        wide[i] = (float)gauss();
    for (size_t i = 0; i < n; i++)
        memcpy(packed + i * d, wide + i * xs + 4, d * sizeof(float));
    cqr_kmeans_params_t p = params(8, 1, 2, CQR_KMEANS_INIT_PLUSPLUS);
    double in1, in2;
    ck_assert_int_eq(fit(wide + 4, n, d, xs, k, &p, c1, &in1), 0);
    ck_assert_int_eq(fit(packed, n, d, d, k, &p, c2, &in2), 0);
    ck_assert_mem_eq(c1, c2, k * d * sizeof(float));
    ck_assert(in1 == in2);
    free(wide);
    free(packed);
    free(c1);
    free(c2);
}
END_TEST

/* More centroids than one tile, with both inits. */
START_TEST(test_large_k)
{
    const size_t n = 4000, d = 8, k = 1100;
    float *x = alloc_f(n * d), *c = alloc_f(k * d);
    cqr_rng_seed(&rng, 8);
    for (size_t i = 0; i < n * d; i++)
        x[i] = (float)gauss();
    for (int init = 0; init <= 1; init++) {
        cqr_kmeans_params_t p = params(5, 3, 2, (cqr_kmeans_init_t)init);
        double in;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c, &in), 0);
        ck_assert(all_finite(c, k * d));
        ck_assert(close_rel(in, inertia_ref(x, n, d, d, c, k), 1e-4, 0));
    }
    free(x);
    free(c);
}
END_TEST

/* n <= k: every point is a centroid, nothing is NaN, inertia is 0. */
static void check_few_points(size_t n, size_t k, int dup)
{
    const size_t d = 4;
    float *x = alloc_f(n * d), *c = alloc_f(k * d);
    for (size_t i = 0; i < n * d; i++)
        x[i] = (float)gauss();
    if (dup && n > 1)
        memcpy(x + d, x, d * sizeof(float));
    for (int init = 0; init <= 1; init++) {
        cqr_kmeans_params_t p = params(5, 11, 2, (cqr_kmeans_init_t)init);
        double in = -1;
        ck_assert_int_eq(fit(x, n, d, d, k, &p, c, &in), 0);
        ck_assert(all_finite(c, k * d));
        ck_assert(in == 0.0);
        for (size_t i = 0; i < n; i++) {
            int found = 0;
            for (size_t j = 0; j < k && !found; j++)
                found = memcmp(x + i * d, c + j * d, d * sizeof(float)) == 0;
            ck_assert_msg(found, "point %zu has no centroid", i);
        }
        /* Every centroid is a point. */
        for (size_t j = 0; j < k; j++) {
            size_t arg = 0;
            ck_assert(min_dist2_ref(c + j * d, d, x, n, &arg) == 0.0);
        }
    }
    free(x);
    free(c);
}

START_TEST(test_fewer_points_than_k)
{
    cqr_rng_seed(&rng, 31);
    check_few_points(10, 32, 0);
    check_few_points(10, 32, 1);
    check_few_points(1, 5, 0);
    check_few_points(7, 7, 0);
}
END_TEST

/* Mostly duplicate points with random init: several initial centroids
 * coincide, so clusters start empty and must be re-seeded. */
START_TEST(test_empty_cluster_reseed)
{
    const size_t n = 200, d = 4, k = 20, ndup = 150;
    float *x = alloc_f(n * d), *c = alloc_f(k * d);
    cqr_rng_seed(&rng, 17);
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++)
            x[i * d + t] = i < ndup ? 1.0f : (float)(3.0 * gauss());
    double mean[4] = {0};
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++)
            mean[t] += x[i * d + t] / (double)n;
    float meanf[4];
    for (size_t t = 0; t < d; t++)
        meanf[t] = (float)mean[t];
    double trivial = inertia_ref(x, n, d, d, meanf, 1);

    cqr_kmeans_params_t p = params(20, 2, 2, CQR_KMEANS_INIT_RANDOM);
    double in = -1;
    ck_assert_int_eq(fit(x, n, d, d, k, &p, c, &in), 0);
    ck_assert(all_finite(c, k * d));
    ck_assert(in <= trivial);
    ck_assert(close_rel(in, inertia_ref(x, n, d, d, c, k), 1e-4, 1e-9));
    /* Without re-seeding, the duplicates would leave about k * 3/4
     * centroids stacked on one point; re-seeding spreads them out. */
    size_t distinct = 0;
    for (size_t j = 0; j < k; j++) {
        int seen = 0;
        for (size_t q = 0; q < j && !seen; q++)
            seen = memcmp(c + j * d, c + q * d, d * sizeof(float)) == 0;
        distinct += !seen;
    }
    ck_assert_uint_eq(distinct, k);
    ck_assert(in < 0.25 * trivial);
    free(x);
    free(c);
}
END_TEST

/* k = 1: the centroid is the mean. */
START_TEST(test_k1_mean)
{
    const size_t n = 1000, d = 6;
    float *x = alloc_f(n * d), c[6];
    cqr_rng_seed(&rng, 3);
    double mean[6] = {0};
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) {
            x[i * d + t] = (float)(gauss() + (double)t);
            mean[t] += x[i * d + t];
        }
    cqr_kmeans_params_t p = params(3, 1, 2, CQR_KMEANS_INIT_PLUSPLUS);
    double in;
    ck_assert_int_eq(fit(x, n, d, d, 1, &p, c, &in), 0);
    for (size_t t = 0; t < d; t++)
        ck_assert(fabs(c[t] - mean[t] / (double)n) < 1e-5);
    free(x);
}
END_TEST

START_TEST(test_bad_args)
{
    float x[8 * 4] = {0}, c[4 * 4];
    uint32_t a[8];
    float d2[8];
    double in = 123;
    for (size_t i = 0; i < 16; i++)
        c[i] = 42.0f;
    cqr_kmeans_params_t p = params(5, 1, 1, CQR_KMEANS_INIT_PLUSPLUS);

    ck_assert_int_eq(fit(NULL, 8, 4, 4, 2, &p, c, &in),
                     CQR_EINVAL);
    ck_assert_int_eq(fit(x, 0, 4, 4, 2, &p, c, &in), CQR_EINVAL);
    ck_assert_int_eq(fit(x, 8, 0, 4, 2, &p, c, &in), CQR_EINVAL);
    ck_assert_int_eq(fit(x, 8, 4, 3, 2, &p, c, &in), CQR_EINVAL);
    ck_assert_int_eq(fit(x, 8, 4, 4, 0, &p, c, &in), CQR_EINVAL);
    ck_assert_int_eq(fit(x, 8, 4, 4, 2, NULL, c, &in),
                     CQR_EINVAL);
    ck_assert_int_eq(fit(x, 8, 4, 4, 2, &p, NULL, &in),
                     CQR_EINVAL);
    ck_assert_int_eq(fit(x, SIZE_MAX / 2, 4, 4, 2, &p, c, &in),
                     CQR_EINVAL);
    cqr_kmeans_params_t q = p;
    q.iters = 0;
    ck_assert_int_eq(fit(x, 8, 4, 4, 2, &q, c, &in), CQR_EINVAL);
    q = p;
    q.threads = 0;
    ck_assert_int_eq(fit(x, 8, 4, 4, 2, &q, c, &in), CQR_EINVAL);
    q = p;
    q.init = (cqr_kmeans_init_t)7;
    ck_assert_int_eq(fit(x, 8, 4, 4, 2, &q, c, &in), CQR_EINVAL);
    /* Nothing is written on error. */
    ck_assert(in == 123);
    for (size_t i = 0; i < 16; i++)
        ck_assert(c[i] == 42.0f);

    ck_assert_int_eq(assign(NULL, 8, 4, 4, c, 2, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 0, 4, 4, c, 2, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 0, 4, c, 2, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 4, 2, c, 2, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 4, 4, NULL, 2, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 4, 4, c, 0, 1, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 4, 4, c, 2, 0, a, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(assign(x, 8, 4, 4, c, 2, 1, NULL, d2),
                     CQR_EINVAL);
    ck_assert_int_eq(
        assign(x, 8, 4, 4, c, (size_t)UINT32_MAX + 2, 1, a, d2),
        CQR_EINVAL);
}
END_TEST

static Suite *kmeans_suite(void)
{
    Suite *s = suite_create("kmeans");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_blas_init);
    tcase_add_test(tc, test_blobs_plusplus);
    tcase_add_test(tc, test_blobs_plusplus_1thread);
    tcase_add_test(tc, test_assign_vs_brute);
    tcase_add_test(tc, test_assign_vs_brute_tiles);
    tcase_add_test(tc, test_assign_widths);
    tcase_add_test(tc, test_early_stop);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_seed_subsample);
    tcase_add_test(tc, test_assign_ties);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_stride);
    tcase_add_test(tc, test_large_k);
    tcase_add_test(tc, test_fewer_points_than_k);
    tcase_add_test(tc, test_empty_cluster_reseed);
    tcase_add_test(tc, test_k1_mean);
    tcase_add_test(tc, test_bad_args);
    suite_add_tcase(s, tc);
    return s;
}

Suite *cqr_test_suite(void)
{
    cqr_blas_init();
    return kmeans_suite();
}
