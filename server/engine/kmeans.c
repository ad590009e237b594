/* kmeans.c -- Lloyd's k-means and nearest-centroid assignment over OpenBLAS.
 *
 * Where the time goes: with chunk widths of 8-16 floats a point-centroid
 * distance is only 2d flops, so writing the n x k distance matrix would
 * cost more than computing it. Points are taken in blocks of KM_PB rows
 * against blocks of KM_CB centroids: one cblas_sgemm writes the -2 x.c
 * tile (sized to stay in L2), a vectorised pass adds ||c||^2 and keeps a
 * running argmin per point, and the tile is reused for the next block.
 * ||x||^2 is constant per point and not needed for the argmin; the
 * reported squared distance is recomputed exactly as ||x - c||^2 for the
 * winner only (d flops), which also avoids the expanded form's
 * cancellation.
 *
 * Precision: the expanded form loses digits when the data sit far from the
 * origin, so points and centroids are shifted by the centroids' mean
 * first (distances are translation invariant). The shift is applied while
 * copying a point block into a contiguous buffer, which sgemm's packing
 * prefers anyway.
 *
 * Determinism: work is handed out in fixed blocks of points (or clusters)
 * through an atomic counter; each block writes only its own outputs and
 * partial sums, combined in block order; new centroids are per-cluster
 * means in point order after a counting sort. Results therefore do not
 * depend on the thread count or the schedule, which is stronger than the
 * header promises (the tests check it).
 *
 * Points must be finite; a NaN point gives a NaN centroid but never an
 * out-of-range index.
 */
#include "kmeans.h"

#include <assert.h>
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "kmeans_kernels.h"
#include "par.h"

/* Points per tile: with KM_CB centroids a tile is at most 1 MiB. 128-512
 * rows and 256-1024 columns measured within noise of each other on Zen 4
 * at d = 16. */
#define KM_PB 256
/* Centroids per tile; a multiple of 32, the argmin's unroll. */
#define KM_CB 1024
/* More threads than this only cost memory (one tile each). */
#define KM_MAX_THREADS 256
#define KM_NBLOCKS(n) (((n) + KM_PB - 1) / KM_PB)

/* ---- OpenBLAS ------------------------------------------------------- */

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static const char *blas_core = "unknown";

static void blas_init_once(void)
{
    /* The engine runs its own threads; OpenBLAS threads inside each of
     * them would oversubscribe the cores and slow small products. */
    openblas_set_num_threads(1);
    const char *name = openblas_get_corename();
    if (name)
        blas_core = name;
}

const char *cqr_blas_init(void)
{
    pthread_once(&blas_once, blas_init_once);
    return blas_core;
}

/* ---- threads ------------------------------------------------------- */

/* The threads of one engine call: the caller and the helpers of a par
 * pool (par.h) started for the call, so that k-means++ rounds do not pay
 * for thread creation. A pass runs one part per thread; part i uses the
 * scratch ws[i], whichever thread runs it, and every part takes blocks of
 * points (or clusters) from the pass's atomic counter, so the results do
 * not depend on which thread runs which part, nor on how many helpers
 * started. */
typedef struct km_pool {
    cqr_par_t *par;    /* nthreads - 1 helpers, or NULL: all inline */
    uint32_t nthreads; /* parts of every pass */
} km_pool_t;

typedef void (*km_part_fn)(void *ctx, unsigned part);

static int pool_init(km_pool_t *p, uint32_t nthreads)
{
    p->nthreads = nthreads;
    p->par = NULL;
    if (nthreads <= 1)
        return 0;
    int rc = cqr_par_create(nthreads - 1, &p->par);
    if (rc == CQR_EIO) {
        /* A thread that could not start is not an error: the caller runs
         * every part itself and the results are the same. */
        p->par = NULL;
        return 0;
    }
    return rc;
}

/* Runs fn(ctx, i) for every part i < nthreads; returns when all are
 * done. */
static void pool_run(const km_pool_t *p, km_part_fn fn, void *ctx)
{
    cqr_par_run(p->par, p->nthreads, fn, ctx);
}

static void pool_destroy(km_pool_t *p)
{
    cqr_par_destroy(p->par);
    p->par = NULL;
}

/* ---- kernels -------------------------------------------------------- */

typedef float v4sf __attribute__((vector_size(16)));

/* Exact squared distance: partial sums over t mod 4, combined, then the
 * tail. kpp_avx2 keeps this order, so the scalar and AVX2 paths give the
 * same bits (as long as neither is built with FMA contraction). */
static inline float sqdist(const float *a, const float *b, size_t d)
{
    v4sf acc = {0, 0, 0, 0};
    size_t t = 0;
    for (; t + 4 <= d; t += 4) {
        v4sf u, v;
        memcpy(&u, a + t, sizeof u);
        memcpy(&v, b + t, sizeof v);
        acc += (u - v) * (u - v);
    }
    float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; t < d; t++)
        s += (a[t] - b[t]) * (a[t] - b[t]);
    return s;
}

/* ---- blockwise assignment ------------------------------------------- */

/* Per-thread scratch, allocated once per engine call. */
typedef struct km_ws {
    float *xb;      /* KM_PB x d shifted copy of a point block */
    float *tile;    /* KM_PB x ldt products -2 x.c */
    float *best;    /* KM_PB running minima of ||c||^2 - 2 x.c */
    uint32_t *bidx; /* KM_PB running argmins */
    double *acc;    /* d accumulators for a centroid mean */
} km_ws_t;

/* Centroids prepared for assignment passes. */
typedef struct km_cents {
    const float *c;  /* k x d originals, for exact distances */
    float *cs;       /* k x d shifted by mu */
    float *cn;       /* k squared norms of the shifted rows */
    float *mu;       /* d, the centroids' mean */
    size_t k;
    size_t ldt;      /* tile row length: min(k, KM_CB) rounded up to 16 */
    cqr_km_fused_fn fused; /* the fused kernel, or NULL: sgemm tiles */
    size_t D;        /* fused: padded width (4, 8 or 16) */
    float *cw;       /* fused: k rows of D + 1, [cn, -2 cs, 0...] */
} km_cents_t;

/* One assignment pass; blocks of KM_PB points are taken from `next`. */
typedef struct assign_job {
    const float *x;
    size_t n, d, xs;
    const km_cents_t *cents;
    uint32_t *assign;   /* n outputs */
    float *dist2;       /* n outputs or NULL */
    double *bsum;       /* per point block sum of dist2, or NULL */
    km_ws_t *ws;        /* one per thread */
    cqr_km_argmin_fn argmin;
    const atomic_int *cancel; /* the caller's flag, or NULL */
    atomic_size_t next;
} assign_job_t;

/* Whether the caller asked to stop (a relaxed load: the flag only ever
 * goes from 0 to nonzero, and a late look costs one more block). */
static int cancelled(const atomic_int *flag)
{
    return flag && atomic_load_explicit(flag, memory_order_relaxed) != 0;
}

static void cents_prepare(km_cents_t *ct, const float *c, size_t d)
{
    const size_t k = ct->k;
    ct->c = c;
    for (size_t t = 0; t < d; t++) {
        double s = 0;
        for (size_t j = 0; j < k; j++)
            s += c[j * d + t];
        ct->mu[t] = (float)(s / (double)k);
    }
    for (size_t j = 0; j < k; j++) {
        float *r = ct->cs + j * d;
        double s = 0;
        for (size_t t = 0; t < d; t++) {
            r[t] = c[j * d + t] - ct->mu[t];
            s += (double)r[t] * r[t];
        }
        ct->cn[j] = (float)s;
    }
    for (size_t j = 0; ct->fused && j < k; j++) {
        float *w = ct->cw + j * (ct->D + 1);
        w[0] = ct->cn[j];
        for (size_t t = 0; t < ct->D; t++)
            w[1 + t] = t < d ? -2.0f * ct->cs[j * d + t] : 0.0f;
    }
}

/* Centroids per call of the fused kernel: (D + 1) x 512 floats stay in
 * L1 while every lane group of a point block passes over them. */
#define KM_FB 512

/* best/bidx of points [0, m) of a block against all centroids, with the
 * fused kernel: the block is shifted and transposed into groups of
 * CQR_KM_FL lanes (padding lanes and rows are zero and never read
 * back). */
static void fused_block(assign_job_t *job, km_ws_t *w, size_t i0, size_t m)
{
    const km_cents_t *ct = job->cents;
    const size_t d = job->d, D = ct->D, L = CQR_KM_FL;
    const size_t ng = (m + L - 1) / L;
    for (size_t g = 0; g < ng; g++) {
        float *xt = w->xb + g * D * L;
        for (size_t l = 0; l < L; l++) {
            size_t i = g * L + l;
            const float *xr = job->x + (i0 + i) * job->xs;
            for (size_t t = 0; t < D; t++)
                xt[t * L + l] = i < m && t < d ? xr[t] - ct->mu[t] : 0.0f;
        }
    }
    for (size_t i = 0; i < ng * L; i++) {
        w->best[i] = INFINITY;
        w->bidx[i] = 0;
    }
    for (size_t j0 = 0; j0 < ct->k; j0 += KM_FB) {
        size_t cnt = ct->k - j0 < KM_FB ? ct->k - j0 : KM_FB;
        for (size_t g = 0; g < ng; g++)
            ct->fused(w->xb + g * D * L, ct->cw + j0 * (D + 1), cnt,
                      (uint32_t)j0, w->best + g * L, w->bidx + g * L);
    }
}

/* best/bidx of points [0, m) of a block, with sgemm tiles. */
static void tile_block(assign_job_t *job, km_ws_t *w, size_t i0, size_t m)
{
    const km_cents_t *ct = job->cents;
    const size_t d = job->d, k = ct->k, ldt = ct->ldt;

    for (size_t i = 0; i < m; i++) {
        const float *xr = job->x + (i0 + i) * job->xs;
        for (size_t t = 0; t < d; t++)
            w->xb[i * d + t] = xr[t] - ct->mu[t];
        w->best[i] = INFINITY;
        w->bidx[i] = 0;
    }
    for (size_t j0 = 0; j0 < k; j0 += KM_CB) {
        size_t cb = k - j0 < KM_CB ? k - j0 : KM_CB;
        assert(m >= 1 && m <= KM_PB && d >= 1 && d <= (size_t)INT_MAX);
        assert(cb >= 1 && cb <= ldt && ldt <= (size_t)INT_MAX);
        assert(j0 + cb <= k && k <= UINT32_MAX);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)cb,
                    (int)d, -2.0f, w->xb, (int)d, ct->cs + j0 * d, (int)d,
                    0.0f, w->tile, (int)ldt);
        job->argmin(w->tile, ldt, m, ct->cn + j0, cb, (uint32_t)j0,
                    w->best, w->bidx);
    }
}

static void assign_block(assign_job_t *job, km_ws_t *w, size_t i0, size_t m)
{
    const km_cents_t *ct = job->cents;
    const size_t d = job->d, k = ct->k;
    if (ct->fused)
        fused_block(job, w, i0, m);
    else
        tile_block(job, w, i0, m);
    double s = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t a = w->bidx[i];
        assert(a < k);
        job->assign[i0 + i] = a;
        if (job->dist2 || job->bsum) {
            float dd = sqdist(job->x + (i0 + i) * job->xs, ct->c + a * d, d);
            if (job->dist2)
                job->dist2[i0 + i] = dd;
            s += dd;
        }
    }
    if (job->bsum)
        job->bsum[i0 / KM_PB] = s;
}

static void assign_worker(void *ctx, unsigned part)
{
    assign_job_t *job = ctx;
    size_t b;
    while ((b = atomic_fetch_add_explicit(&job->next, 1,
                                          memory_order_relaxed)) <
           KM_NBLOCKS(job->n)) {
        if (cancelled(job->cancel))
            break;
        size_t i0 = b * KM_PB;
        assign_block(job, &job->ws[part], i0,
                     job->n - i0 < KM_PB ? job->n - i0 : KM_PB);
    }
}

/* Assigns every point to the centroids c; returns the mean of dist2 when
 * job->bsum is set. */
static double assign_pass(assign_job_t *job, km_cents_t *ct,
                          const km_pool_t *pool,
                          const float *c)
{
    cents_prepare(ct, c, job->d);
    atomic_store_explicit(&job->next, 0, memory_order_relaxed);
    pool_run(pool, assign_worker, job);
    double s = 0;
    for (size_t b = 0; job->bsum && b < KM_NBLOCKS(job->n); b++)
        s += job->bsum[b];
    return s / (double)job->n;
}

/* ---- scratch and argument checks ------------------------------------ */

/* All threads' scratch in one 64-byte aligned block (so tile rows start on
 * cache lines): the km_ws_t array, then per thread tile | xb | best |
 * bidx | acc, each rounded up to 64 bytes. Released with free(). */
static km_ws_t *ws_alloc(uint32_t nthreads, size_t d, size_t ldt)
{
    /* xb also holds the fused kernel's transposed block (up to 16
     * padded rows). */
    const size_t dx = d < CQR_KM_FUSED_MAXD ? CQR_KM_FUSED_MAXD : d;
    const size_t sz[5] = {KM_PB * ldt * sizeof(float),
                          KM_PB * dx * sizeof(float), KM_PB * sizeof(float),
                          KM_PB * sizeof(uint32_t), d * sizeof(double)};
    size_t per = 0, head = (nthreads * sizeof(km_ws_t) + 63) / 64 * 64;
    for (int q = 0; q < 5; q++)
        per += (sz[q] + 63) / 64 * 64;
    char *base = aligned_alloc(64, head + nthreads * per);
    km_ws_t *ws = (km_ws_t *)base;
    for (uint32_t t = 0; base && t < nthreads; t++) {
        char *cur = base + head + t * per;
        void *at[5];
        for (int q = 0; q < 5; q++) {
            at[q] = cur;
            cur += (sz[q] + 63) / 64 * 64;
        }
        ws[t].tile = at[0];
        ws[t].xb = at[1];
        ws[t].best = at[2];
        ws[t].bidx = at[3];
        ws[t].acc = at[4];
    }
    return ws;
}

static int cents_alloc(km_cents_t *ct, size_t k, size_t d)
{
    ct->k = k;
    ct->ldt = ((k < KM_CB ? k : KM_CB) + 15) / 16 * 16;
    ct->D = cqr_km_fused_width(d);
    ct->fused = ct->D ? cqr_km_pick_fused(ct->D) : NULL;
    ct->cs = malloc(k * d * sizeof(float));
    ct->cn = malloc(k * sizeof(float));
    ct->mu = malloc(d * sizeof(float));
    ct->cw = ct->fused ? malloc(k * (ct->D + 1) * sizeof(float)) : NULL;
    return ct->cs && ct->cn && ct->mu && (!ct->fused || ct->cw)
               ? 0 : CQR_ENOMEM;
}

static void cents_free(km_cents_t *ct)
{
    free(ct->cw);
    free(ct->cs);
    free(ct->cn);
    free(ct->mu);
}

/* Shapes shared by fit and assign. d <= INT_MAX keeps BLAS's int
 * arguments exact; k <= UINT32_MAX keeps indices in uint32_t; the size
 * products below bound every buffer this file allocates (at most n + 8
 * rows of d floats, n size_t, k x d doubles) and prove that the caller's
 * rows are addressable. */
static int check_shapes(const float *x, size_t n, size_t d, size_t xstride,
                        size_t k, uint32_t threads)
{
    size_t tmp;
    if (!x || n == 0 || d == 0 || k == 0 || xstride < d || threads == 0 ||
        d > (size_t)INT_MAX || k > UINT32_MAX)
        return CQR_EINVAL;
    if (__builtin_mul_overflow(n - 1, xstride, &tmp) || tmp + d < tmp ||
        __builtin_mul_overflow(n + 8, d * sizeof(double), &tmp) ||
        n + 8 < n || __builtin_mul_overflow(k, d * sizeof(double), &tmp))
        return CQR_EINVAL;
    return 0;
}

static uint32_t clamp_threads(uint32_t threads, size_t n)
{
    size_t t = threads;
    if (t > KM_NBLOCKS(n))
        t = KM_NBLOCKS(n);
    return (uint32_t)(t > KM_MAX_THREADS ? KM_MAX_THREADS : t);
}

int cqr_kmeans_assign(const float *x, size_t n, size_t d, size_t xstride,
                      const float *centroids, size_t k,
                      const cqr_kmeans_params_t *p, uint32_t *assign,
                      float *dist2)
{
    if (!p)
        return CQR_EINVAL;
    int rc = check_shapes(x, n, d, xstride, k, p->threads);
    if (rc)
        return rc;
    if (!centroids || !assign)
        return CQR_EINVAL;

    const uint32_t nthreads = clamp_threads(p->threads, n);
    km_cents_t ct = {0};
    km_ws_t *ws = NULL;
    km_pool_t pool = {0};

    rc = CQR_ENOMEM;
    if (cents_alloc(&ct, k, d) ||
        !(ws = ws_alloc(nthreads, d, ct.ldt)) || pool_init(&pool, nthreads))
        goto out;
    rc = 0;

    cqr_blas_init();
    assign_job_t job = {
        .x = x, .n = n, .d = d, .xs = xstride, .cents = &ct,
        .assign = assign, .dist2 = dist2, .ws = ws,
        .argmin = cqr_km_pick_argmin(), .cancel = p->cancel,
    };
    assign_pass(&job, &ct, &pool, centroids);
    if (cancelled(p->cancel))
        rc = CQR_ECANCELED;
out:
    pool_destroy(&pool);
    free(ws);
    cents_free(&ct);
    return rc;
}

/* ---- fit ------------------------------------------------------------ */

typedef struct fit fit_t;

struct fit {
    const float *x;
    size_t n, d, xs, k;
    float *c;             /* k x d centroids (the caller's output) */
    uint32_t *assign;     /* nearest centroid (k-means++: nearest seed);
                             padded to whole groups of 8 */
    float *dist2;         /* squared distance to it; padded likewise */
    double *bsum;         /* per point block sum of dist2 */
    size_t *perm;         /* n: points sorted by cluster */
    size_t *off;          /* k + 1 cluster offsets into perm */
    float *cc;            /* k-means++: seed-to-newest-seed distances */
    float *xt;            /* k-means++, AVX2: points transposed by 8 */
    size_t seed_j;        /* k-means++: index of the newest seed */
    int (*kpp)(fit_t *f, size_t i0, size_t i1);
    km_ws_t *ws;
    atomic_size_t next;   /* next block of points or clusters */
};

/* One k-means++ round over points [i0, i1): D = min(D, ||x - c_j||^2).
 * A point whose nearest seed a has ||c_j - c_a|| >= 2 sqrt(D) cannot get
 * closer to c_j (triangle inequality; Raff, "Exact acceleration of
 * k-means++ and k-means||", 2021) and is skipped; on clustered data that
 * is most points late in the seeding. Returns whether any D changed. */
static int kpp_scalar(fit_t *f, size_t i0, size_t i1)
{
    const float *cj = f->c + f->seed_j * f->d;
    int changed = 0;
    for (size_t i = i0; i < i1; i++) {
        if (!(f->cc[f->assign[i]] < f->dist2[i] * 4.0f))
            continue;
        float dd = sqdist(f->x + i * f->xs, cj, f->d);
        if (dd < f->dist2[i]) {
            f->dist2[i] = dd;
            f->assign[i] = (uint32_t)f->seed_j;
            changed = 1;
        }
    }
    return changed;
}

#ifdef KM_HAVE_AVX2
/* The same with one point per lane, reading the transposed copy xt; a
 * group of 8 is skipped without touching its rows when no lane needs it.
 * Same operations in the same order as kpp_scalar and sqdist. */
__attribute__((target("avx2"))) static int kpp_avx2(fit_t *f, size_t i0,
                                                    size_t i1)
{
    const float *cj = f->c + f->seed_j * f->d;
    const size_t d = f->d;
    const int32_t j = (int32_t)f->seed_j;
    const v8si jv = {j, j, j, j, j, j, j, j};
    int changed = 0;
    for (size_t g = i0 / 8; g < (i1 + 7) / 8; g++) {
        float *dp = f->dist2 + g * 8, ccl[8];
        uint32_t *np = f->assign + g * 8;
        v8sf dv = KM_LOAD8(dp);
        for (int l = 0; l < 8; l++)
            ccl[l] = f->cc[np[l]];
        v8si need = KM_LOAD8(ccl) < dv * 4.0f;
        if (!KM_ANY(need))
            continue;
        const float *p = f->xt + g * d * 8;
        v8sf a0 = {0, 0, 0, 0, 0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
        size_t t = 0;
        for (; t + 4 <= d; t += 4, p += 32) {
            v8sf z0 = KM_LOAD8(p) - cj[t], z1 = KM_LOAD8(p + 8) - cj[t + 1];
            v8sf z2 = KM_LOAD8(p + 16) - cj[t + 2];
            v8sf z3 = KM_LOAD8(p + 24) - cj[t + 3];
            a0 += z0 * z0;
            a1 += z1 * z1;
            a2 += z2 * z2;
            a3 += z3 * z3;
        }
        v8sf acc = (a0 + a1) + (a2 + a3);
        for (; t < d; t++, p += 8)
            acc += (KM_LOAD8(p) - cj[t]) * (KM_LOAD8(p) - cj[t]);
        v8si m = (acc < dv) & need, nv;
        if (!KM_ANY(m))
            continue;
        memcpy(&nv, np, sizeof nv);
        dv = (v8sf)KM_SEL(m, (v8si)acc, (v8si)dv);
        nv = KM_SEL(m, jv, nv);
        memcpy(dp, &dv, sizeof dv);
        memcpy(np, &nv, sizeof nv);
        changed = 1;
    }
    return changed;
}
#endif

static void kpp_worker(void *ctx, unsigned part)
{
    fit_t *f = ctx;
    size_t b;
    (void)part;
    while ((b = atomic_fetch_add_explicit(&f->next, 1,
                                          memory_order_relaxed)) <
           KM_NBLOCKS(f->n)) {
        size_t i0 = b * KM_PB, i1 = f->n - i0 < KM_PB ? f->n : i0 + KM_PB;
        if (!f->kpp(f, i0, i1))
            continue;
        /* Four partial sums in a fixed order: deterministic, and shorter
         * dependency chains. */
        double s[4] = {0, 0, 0, 0};
        size_t i = i0;
        for (; i + 4 <= i1; i += 4)
            for (int l = 0; l < 4; l++)
                s[l] += f->dist2[i + l];
        for (; i < i1; i++)
            s[0] += f->dist2[i];
        f->bsum[b] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

/* k-means++: each next seed is point i with probability D(i) / sum D.
 * CQR_ECANCELED if the caller's flag rises (checked every round). */
static int init_plusplus(fit_t *f, const km_pool_t *pool, cqr_rng_t *rng,
                         const atomic_int *cancel)
{
    const size_t n = f->n, d = f->d, nb = KM_NBLOCKS(n);
    for (size_t i = 0; i < (n + 7) / 8 * 8; i++) {
        f->dist2[i] = INFINITY;
        f->assign[i] = 0;
    }
    f->kpp = kpp_scalar;
#ifdef KM_HAVE_AVX2
    /* Padding lanes are zero and never counted: sums and walks stop at n. */
    for (size_t g = 0; f->xt && g < (n + 7) / 8; g++)
        for (size_t t = 0; t < d; t++)
            for (size_t l = 0, i = g * 8; l < 8; l++, i++)
                f->xt[(g * d + t) * 8 + l] = i < n ? f->x[i * f->xs + t] : 0;
    if (f->xt)
        f->kpp = kpp_avx2;
#endif

    size_t pick = cqr_rng_below(rng, n);
    for (size_t j = 0;; j++) {
        memcpy(f->c + j * d, f->x + pick * f->xs, d * sizeof(float));
        if (j + 1 == f->k)
            return 0;
        if (cancelled(cancel))
            return CQR_ECANCELED;
        /* cc[j] = 0 makes round 0 compute every distance. */
        for (size_t t = 0; t < j; t++)
            f->cc[t] = sqdist(f->c + t * d, f->c + j * d, d);
        f->cc[j] = 0;
        f->seed_j = j;
        atomic_store_explicit(&f->next, 0, memory_order_relaxed);
        pool_run(pool, kpp_worker, f);

        double total = 0, r, acc = 0;
        size_t last = 0;
        for (size_t b = 0; b < nb; b++) {
            total += f->bsum[b];
            last = f->bsum[b] > 0 ? b : last;
        }
        if (!(total > 0)) {
            /* Fewer distinct points than k: the rest repeat points, become
             * empty clusters, and Lloyd re-seeds them. */
            pick = cqr_rng_below(rng, n);
            continue;
        }
        /* Walk the block sums, then the points, in the order the sums
         * were formed. The chosen block always has mass; if rounding runs
         * past its end, its last positive point is taken. Points with
         * D = 0 (seeds and their duplicates) are never picked. */
        r = cqr_rng_double(rng) * total;
        size_t b = 0;
        while (b < last && acc + f->bsum[b] <= r)
            acc += f->bsum[b++];
        size_t i = b * KM_PB, i1 = n - i < KM_PB ? n : i + KM_PB;
        for (pick = SIZE_MAX; i < i1; i++) {
            if (f->dist2[i] > 0) {
                pick = i;
                if ((acc += f->dist2[i]) > r)
                    break;
            }
        }
        assert(pick < n);
    }
}

/* k distinct point indices, uniformly (partial Fisher-Yates). */
static void init_random(fit_t *f, cqr_rng_t *rng)
{
    for (size_t i = 0; i < f->n; i++)
        f->perm[i] = i;
    for (size_t j = 0; j < f->k; j++) {
        size_t r = j + cqr_rng_below(rng, f->n - j), tmp = f->perm[j];
        f->perm[j] = f->perm[r];
        f->perm[r] = tmp;
        memcpy(f->c + j * f->d, f->x + f->perm[j] * f->xs,
               f->d * sizeof(float));
    }
}

/* New centroid = mean of its points, summed in double in point order;
 * clusters are handed out in blocks of 64. */
static void mean_worker(void *ctx, unsigned part)
{
    fit_t *f = ctx;
    double *acc = f->ws[part].acc;
    const size_t d = f->d;
    size_t b;
    while ((b = atomic_fetch_add_explicit(&f->next, 1,
                                          memory_order_relaxed)) * 64 <
           f->k) {
        size_t j1 = f->k - b * 64 < 64 ? f->k : b * 64 + 64;
        for (size_t j = b * 64; j < j1; j++) {
            size_t lo = f->off[j], hi = f->off[j + 1];
            if (lo == hi)
                continue;
            memset(acc, 0, d * sizeof *acc);
            for (size_t q = lo; q < hi; q++)
                for (size_t t = 0; t < d; t++)
                    acc[t] += f->x[f->perm[q] * f->xs + t];
            for (size_t t = 0; t < d; t++)
                f->c[j * d + t] = (float)(acc[t] / (double)(hi - lo));
        }
    }
}

/* Lloyd's update: counting sort by cluster, means, then each empty
 * cluster (in index order) takes the point farthest from its centroid,
 * ties to the lower index. A scan per empty cluster is O(n), the order of
 * the argmin alone, and empty clusters are rare after k-means++. */
static void update_centroids(fit_t *f, const km_pool_t *pool)
{
    const size_t k = f->k, n = f->n;
    memset(f->off, 0, (k + 1) * sizeof *f->off);
    for (size_t i = 0; i < n; i++)
        f->off[f->assign[i] + 1]++;
    for (size_t j = 0; j < k; j++)
        f->off[j + 1] += f->off[j];
    /* Placing with off[a]++ leaves off[j] at the start of j + 1; a shift
     * by one restores the starts without a second array. */
    for (size_t i = 0; i < n; i++)
        f->perm[f->off[f->assign[i]]++] = i;
    for (size_t j = k; j-- > 1;)
        f->off[j] = f->off[j - 1];
    f->off[0] = 0;

    atomic_store_explicit(&f->next, 0, memory_order_relaxed);
    pool_run(pool, mean_worker, f);

    for (size_t j = 0; j < k; j++) {
        if (f->off[j] != f->off[j + 1])
            continue;
        size_t far = 0;
        for (size_t i = 1; i < n; i++)
            far = f->dist2[i] > f->dist2[far] ? i : far;
        memcpy(f->c + j * f->d, f->x + far * f->xs, f->d * sizeof(float));
        f->dist2[far] = -1; /* taken; dist2 is rewritten by the next pass */
    }
}

static void report(const cqr_kmeans_params_t *p, uint32_t iter, double in)
{
    if (!p->progress)
        return;
    double f0 = p->frac0, f1 = p->frac1;
    if (f0 == 0 && f1 == 0)
        f1 = 1;
    cqr_progress_t pr = {
        .stage = "kmeans", .chunk = p->chunk, .chunks = p->chunks,
        .iter = iter, .iters = p->iters,
        .fraction = f0 + (f1 - f0) * (double)iter / (double)p->iters,
        .inertia = in,
    };
    p->progress(p->progress_ud, &pr);
}

/* k-means++ seeding costs k rounds over its points, which for large n
 * and k costs more than the Lloyd iterations after it; seeding from a
 * uniform subsample of KM_SEED_PER_CENTROID points per centroid (at least
 * KM_SEED_MIN) loses little, since Lloyd then runs on every point. Below
 * that size every point takes part, as before. */
#define KM_SEED_PER_CENTROID 16
#define KM_SEED_MIN 65536

/* Seeds f's centroids by k-means++ on a uniform subsample of m < n points
 * (partial Fisher-Yates over perm), copied into `sub` (m x d). */
static int init_plusplus_sub(fit_t *f, const km_pool_t *pool, cqr_rng_t *rng,
                             const atomic_int *cancel, size_t m, float *sub)
{
    const float *x = f->x;
    const size_t n = f->n, xs = f->xs, d = f->d;
    for (size_t i = 0; i < n; i++)
        f->perm[i] = i;
    for (size_t j = 0; j < m; j++) {
        size_t r = j + cqr_rng_below(rng, n - j), tmp = f->perm[j];
        f->perm[j] = f->perm[r];
        f->perm[r] = tmp;
    }
    for (size_t j = 0; j < m; j++)
        memcpy(sub + j * d, x + f->perm[j] * xs, d * sizeof(float));
    f->x = sub;
    f->n = m;
    f->xs = d;
    int rc = init_plusplus(f, pool, rng, cancel);
    f->x = x;
    f->n = n;
    f->xs = xs;
    return rc;
}

/* The points k-means++ seeds from: all n, or a subsample of
 * KM_SEED_PER_CENTROID per centroid (at least KM_SEED_MIN). */
static size_t seed_count(int plusplus, size_t n, size_t k)
{
    size_t nseed = n;
    if (plusplus && k <= SIZE_MAX / KM_SEED_PER_CENTROID) {
        size_t m = k * KM_SEED_PER_CENTROID;
        m = m < KM_SEED_MIN ? KM_SEED_MIN : m;
        nseed = m < n ? m : n;
    }
    return nseed;
}

/* Allocates what a fit works in: f's arrays (xt when transpose), the
 * centroid layout, the per-thread scratch, the pool and the seeding
 * subsample (when nseed < n). CQR_ENOMEM leaves the rest to fit_free. */
static int fit_alloc(fit_t *f, km_cents_t *ct, km_pool_t *pool, float **sub,
                     size_t nseed, int transpose, uint32_t nthreads)
{
    const size_t n = f->n, d = f->d, k = f->k, npad = (n + 7) / 8 * 8;
    f->assign = malloc(npad * sizeof *f->assign);
    f->dist2 = malloc(npad * sizeof *f->dist2);
    f->bsum = malloc(KM_NBLOCKS(n) * sizeof *f->bsum);
    f->perm = malloc(n * sizeof *f->perm);
    f->off = malloc((k + 1) * sizeof *f->off);
    f->cc = malloc(k * sizeof *f->cc);
    f->xt = transpose ? malloc(npad * d * sizeof(float)) : NULL;
    *sub = nseed < n ? malloc(nseed * d * sizeof(float)) : NULL;
    if (!f->assign || !f->dist2 || !f->bsum || !f->perm || !f->off ||
        !f->cc || (transpose && !f->xt) || (nseed < n && !*sub) ||
        cents_alloc(ct, k, d) ||
        !(f->ws = ws_alloc(nthreads, d, ct->ldt)) || pool_init(pool, nthreads))
        return CQR_ENOMEM;
    return 0;
}

static void fit_free(fit_t *f, km_cents_t *ct, km_pool_t *pool, float *sub)
{
    pool_destroy(pool);
    free(sub);
    free(f->ws);
    cents_free(ct);
    free(f->xt);
    free(f->cc);
    free(f->off);
    free(f->perm);
    free(f->bsum);
    free(f->dist2);
    free(f->assign);
}

/* Seeds the centroids: k-means++ (on the subsample sub of nseed points
 * when nseed < n) or k distinct random points. */
static int seed_centroids(fit_t *f, const km_pool_t *pool, cqr_rng_t *rng,
                          const cqr_kmeans_params_t *p, int plusplus,
                          size_t nseed, float *sub)
{
    if (plusplus && nseed < f->n)
        return init_plusplus_sub(f, pool, rng, p->cancel, nseed, sub);
    if (plusplus)
        return init_plusplus(f, pool, rng, p->cancel);
    init_random(f, rng);
    return 0;
}

/* Lloyd iterations from seeded centroids of inertia `in`, at most
 * p->iters and until a cancel: update, then assign against the new
 * centroids, so the reported inertia is exact and the last pass is the
 * final assignment. Lloyd never raises the inertia (re-seeding an empty
 * cluster lowers it too), so a small relative decrease means the
 * centroids have settled (*converged). Returns the last inertia; *iters
 * counts the iterations run. */
static double lloyd(fit_t *f, assign_job_t *job, km_cents_t *ct,
                    const km_pool_t *pool, const cqr_kmeans_params_t *p,
                    double in, uint32_t *iters, int *converged)
{
    for (uint32_t it = 1; it <= p->iters && !cancelled(p->cancel); it++) {
        double prev = in;
        update_centroids(f, pool);
        in = assign_pass(job, ct, pool, f->c);
        *iters = it;
        report(p, it, in);
        if (p->tol > 0 && !(prev - in > p->tol * prev)) {
            *converged = 1;
            break;
        }
    }
    return in;
}

int cqr_kmeans_fit(const float *x, size_t n, size_t d, size_t xstride,
                   size_t k, const cqr_kmeans_params_t *p, float *centroids,
                   uint32_t *assign, cqr_kmeans_result_t *res)
{
    if (!p || !centroids || p->iters == 0 ||
        (p->init != CQR_KMEANS_INIT_PLUSPLUS &&
         p->init != CQR_KMEANS_INIT_RANDOM) ||
        !(p->tol >= 0 && p->tol < 1))
        return CQR_EINVAL;
    int rc = check_shapes(x, n, d, xstride, k, p->threads);
    if (rc)
        return rc;

    const uint32_t nthreads = clamp_threads(p->threads, n);
    const int plusplus = p->init == CQR_KMEANS_INIT_PLUSPLUS && n > k;
    const int transpose = plusplus && cqr_km_have_avx2();
    const size_t nseed = seed_count(plusplus, n, k);
    fit_t f = {.x = x, .n = n, .d = d, .xs = xstride, .k = k,
               .c = centroids};
    km_cents_t ct = {0};
    km_pool_t pool = {0};
    float *sub = NULL;
    rc = fit_alloc(&f, &ct, &pool, &sub, nseed, transpose, nthreads);
    if (rc)
        goto out;

    /* Nothing fails past this point but a cancel, so outputs are written
     * only now. */
    cqr_blas_init();
    cqr_rng_t rng;
    cqr_rng_seed(&rng, p->seed);
    assign_job_t job = {
        .x = x, .n = n, .d = d, .xs = xstride, .cents = &ct,
        .assign = f.assign, .dist2 = f.dist2, .bsum = f.bsum, .ws = f.ws,
        .argmin = cqr_km_pick_argmin(), .cancel = p->cancel,
    };
    double in;
    uint32_t iters = 0;
    int converged = 0;
    if (n <= k) {
        /* Every point is its own centroid (inertia 0 is optimal); the
         * surplus centroids repeat points, so none is ever NaN. */
        for (size_t j = 0; j < k; j++)
            memcpy(centroids + j * d, x + (j % n) * xstride,
                   d * sizeof(float));
        in = assign_pass(&job, &ct, &pool, centroids);
        converged = 1;
        report(p, p->iters, in);
    } else {
        rc = seed_centroids(&f, &pool, &rng, p, plusplus, nseed, sub);
        if (rc)
            goto out;
        in = assign_pass(&job, &ct, &pool, centroids);
        in = lloyd(&f, &job, &ct, &pool, p, in, &iters, &converged);
    }
    if (cancelled(p->cancel)) {
        rc = CQR_ECANCELED;
        goto out;
    }
    if (assign)
        memcpy(assign, f.assign, n * sizeof *assign);
    if (res)
        *res = (cqr_kmeans_result_t){.inertia = in, .iters = iters,
                                     .converged = converged};
out:
    fit_free(&f, &ct, &pool, sub);
    return rc;
}
