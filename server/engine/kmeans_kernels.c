/* kmeans_kernels.c -- the distance kernels behind kmeans.c (see
 * kmeans_kernels.h).
 *
 * Why a fused kernel: with chunk widths of 4-16 floats a point-centroid
 * distance is 2d flops, too few for sgemm (its tiles are mostly packing
 * and zeroing at K = 8) and the tile it writes costs more to read back
 * than to compute. Keeping 16 points in the lanes of a vector and their
 * coordinates in registers, each centroid costs d fused multiply-adds
 * and one compare-and-select per 16 points, and the argmin is vertical
 * (no shuffles). Four centroids are in flight at once to hide the FMA
 * latency.
 */
#include "kmeans_kernels.h"

#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* Portable version. Each kernel also has an AVX2 copy picked at run time
 * with __builtin_cpu_supports (not target_clones: its ifunc resolver
 * crashes under ThreadSanitizer). Generic 32-byte vectors compiled for
 * baseline x86-64, which is what Debian builds for, run several times
 * slower than these plain loops, hence two bodies. */
static void argmin_scalar(const float *tile, size_t ldt, size_t m,
                          const float *cn, size_t cb, uint32_t j0,
                          float *best, uint32_t *bidx)
{
    for (size_t i = 0; i < m; i++) {
        const float *row = tile + i * ldt;
        for (size_t j = 0; j < cb; j++) {
            if (cn[j] + row[j] < best[i]) {
                best[i] = cn[j] + row[j];
                bidx[i] = j0 + (uint32_t)j;
            }
        }
    }
}

#ifdef KM_HAVE_AVX2
/* (ma, xa) takes (mb, xb) where that pair is smaller, by value and then
 * by index. Strict, so NaN never wins. */
#define KM_PAIR_MIN(ma, xa, mb, xb)                                         \
    do {                                                                    \
        v8si t_ = ((mb) < (ma)) | (((mb) == (ma)) & ((xb) < (xa)));         \
        (ma) = (v8sf)KM_SEL(t_, (v8si)(mb), (v8si)(ma));                    \
        (xa) = KM_SEL(t_, (xb), (xa));                                      \
    } while (0)
/* The same within a lane, where the new index is always the larger. */
#define KM_STEP(mn, ix, v, jb)                                              \
    do {                                                                    \
        v8si t_ = (v) < (mn);                                               \
        (mn) = (v8sf)KM_SEL(t_, (v8si)(v), (v8si)(mn));                     \
        (ix) = KM_SEL(t_, (jb), (ix));                                      \
    } while (0)
#define KM_FOLD(m, x, a, b, c, d, e, f, g, h)                               \
    do {                                                                    \
        v8sf ms_ = __builtin_shufflevector(m, m, a, b, c, d, e, f, g, h);   \
        v8si xs_ = __builtin_shufflevector(x, x, a, b, c, d, e, f, g, h);   \
        KM_PAIR_MIN(m, x, ms_, xs_);                                        \
    } while (0)

/* Four accumulators hide the compare-and-blend latency and record only
 * the iteration's base index (lane and accumulator give the rest); the 32
 * candidates are then folded without branches, since a data-dependent
 * branch per candidate cost a third of the time. */
__attribute__((target("avx2"))) static void
argmin_avx2(const float *tile, size_t ldt, size_t m, const float *cn,
            size_t cb, uint32_t j0, float *best, uint32_t *bidx)
{
    const size_t cv = cb - cb % 32;
    const v8si lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8sf inf = {INFINITY, INFINITY, INFINITY, INFINITY,
                      INFINITY, INFINITY, INFINITY, INFINITY};
    for (size_t i = 0; i < m; i++) {
        const float *row = tile + i * ldt;
        float bv = INFINITY;
        uint32_t bi = 0;
        if (cv > 0) {
            v8sf m0 = inf, m1 = inf, m2 = inf, m3 = inf;
            v8si x0 = lane - lane, x1 = x0, x2 = x0, x3 = x0, jb = x0;
            for (size_t j = 0; j < cv; j += 32, jb += 32) {
                v8sf v0 = KM_LOAD8(row + j) + KM_LOAD8(cn + j);
                v8sf v1 = KM_LOAD8(row + j + 8) + KM_LOAD8(cn + j + 8);
                v8sf v2 = KM_LOAD8(row + j + 16) + KM_LOAD8(cn + j + 16);
                v8sf v3 = KM_LOAD8(row + j + 24) + KM_LOAD8(cn + j + 24);
                KM_STEP(m0, x0, v0, jb);
                KM_STEP(m1, x1, v1, jb);
                KM_STEP(m2, x2, v2, jb);
                KM_STEP(m3, x3, v3, jb);
            }
            x0 += lane;
            x1 += lane + 8;
            x2 += lane + 16;
            x3 += lane + 24;
            KM_PAIR_MIN(m0, x0, m1, x1);
            KM_PAIR_MIN(m2, x2, m3, x3);
            KM_PAIR_MIN(m0, x0, m2, x2);
            KM_FOLD(m0, x0, 4, 5, 6, 7, 0, 1, 2, 3);
            KM_FOLD(m0, x0, 2, 3, 0, 1, 6, 7, 4, 5);
            KM_FOLD(m0, x0, 1, 0, 3, 2, 5, 4, 7, 6);
            bv = m0[0];
            bi = (uint32_t)x0[0];
        }
        for (size_t j = cv; j < cb; j++) {
            if (cn[j] + row[j] < bv) {
                bv = cn[j] + row[j];
                bi = (uint32_t)j;
            }
        }
        if (bv < best[i]) {
            best[i] = bv;
            bidx[i] = j0 + bi;
        }
    }
}

/* ---- fused (AVX-512F) ------------------------------------------------- */

/* One lane group against cnt centroids, with D a constant in each caller
 * below, so that the coordinate loops unroll and x stays in registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
fused_avx512(const float *xt, const size_t D, const float *cw, size_t cnt,
             uint32_t j0, float *best, uint32_t *bidx)
{
    __m512 x[CQR_KM_FUSED_MAXD];
    const size_t S = D + 1;
#pragma GCC unroll 16
    for (size_t t = 0; t < D; t++)
        x[t] = _mm512_loadu_ps(xt + t * CQR_KM_FL);
    __m512 bv = _mm512_loadu_ps(best);
    __m512i bi = _mm512_loadu_si512(bidx);
    size_t j = 0;
    for (; j + 4 <= cnt; j += 4) {
        const float *c = cw + j * S;
        __m512 a0 = _mm512_set1_ps(c[0]), a1 = _mm512_set1_ps(c[S]);
        __m512 a2 = _mm512_set1_ps(c[2 * S]), a3 = _mm512_set1_ps(c[3 * S]);
#pragma GCC unroll 16
        for (size_t t = 0; t < D; t++) {
            a0 = _mm512_fmadd_ps(x[t], _mm512_set1_ps(c[1 + t]), a0);
            a1 = _mm512_fmadd_ps(x[t], _mm512_set1_ps(c[S + 1 + t]), a1);
            a2 = _mm512_fmadd_ps(x[t], _mm512_set1_ps(c[2 * S + 1 + t]), a2);
            a3 = _mm512_fmadd_ps(x[t], _mm512_set1_ps(c[3 * S + 1 + t]), a3);
        }
        /* Pairs first, by value then index (a strict compare: the earlier
         * centroid keeps a tie, NaN never wins), then into the best. */
        const int jj = (int)(j0 + j);
        __mmask16 m01 = _mm512_cmp_ps_mask(a1, a0, _CMP_LT_OQ);
        __mmask16 m23 = _mm512_cmp_ps_mask(a3, a2, _CMP_LT_OQ);
        __m512 v01 = _mm512_mask_mov_ps(a0, m01, a1);
        __m512 v23 = _mm512_mask_mov_ps(a2, m23, a3);
        __m512i i01 = _mm512_mask_mov_epi32(_mm512_set1_epi32(jj), m01,
                                            _mm512_set1_epi32(jj + 1));
        __m512i i23 = _mm512_mask_mov_epi32(_mm512_set1_epi32(jj + 2), m23,
                                            _mm512_set1_epi32(jj + 3));
        __mmask16 mq = _mm512_cmp_ps_mask(v23, v01, _CMP_LT_OQ);
        __m512 vq = _mm512_mask_mov_ps(v01, mq, v23);
        __m512i iq = _mm512_mask_mov_epi32(i01, mq, i23);
        __mmask16 mb = _mm512_cmp_ps_mask(vq, bv, _CMP_LT_OQ);
        bv = _mm512_mask_mov_ps(bv, mb, vq);
        bi = _mm512_mask_mov_epi32(bi, mb, iq);
    }
    for (; j < cnt; j++) {
        const float *c = cw + j * S;
        __m512 a = _mm512_set1_ps(c[0]);
#pragma GCC unroll 16
        for (size_t t = 0; t < D; t++)
            a = _mm512_fmadd_ps(x[t], _mm512_set1_ps(c[1 + t]), a);
        __mmask16 mb = _mm512_cmp_ps_mask(a, bv, _CMP_LT_OQ);
        bv = _mm512_mask_mov_ps(bv, mb, a);
        bi = _mm512_mask_mov_epi32(bi, mb, _mm512_set1_epi32((int)(j0 + j)));
    }
    _mm512_storeu_ps(best, bv);
    _mm512_storeu_si512(bidx, bi);
}

__attribute__((target("avx512f"))) static void
fused4(const float *xt, const float *cw, size_t cnt, uint32_t j0,
       float *best, uint32_t *bidx)
{
    fused_avx512(xt, 4, cw, cnt, j0, best, bidx);
}

__attribute__((target("avx512f"))) static void
fused8(const float *xt, const float *cw, size_t cnt, uint32_t j0,
       float *best, uint32_t *bidx)
{
    fused_avx512(xt, 8, cw, cnt, j0, best, bidx);
}

__attribute__((target("avx512f"))) static void
fused16(const float *xt, const float *cw, size_t cnt, uint32_t j0,
        float *best, uint32_t *bidx)
{
    fused_avx512(xt, 16, cw, cnt, j0, best, bidx);
}
#endif

int cqr_km_have_avx2(void)
{
#ifdef KM_HAVE_AVX2
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

cqr_km_argmin_fn cqr_km_pick_argmin(void)
{
#ifdef KM_HAVE_AVX2
    if (cqr_km_have_avx2())
        return argmin_avx2;
#endif
    return argmin_scalar;
}

size_t cqr_km_fused_width(size_t d)
{
    return d <= 4 ? 4 : d <= 8 ? 8 : d <= CQR_KM_FUSED_MAXD ? 16 : 0;
}

cqr_km_fused_fn cqr_km_pick_fused(size_t D)
{
#ifdef KM_HAVE_AVX2
    if (getenv("CQR_KMEANS_NO_FUSED") || !__builtin_cpu_supports("avx512f"))
        return NULL;
    switch (D) {
    case 4: return fused4;
    case 8: return fused8;
    case 16: return fused16;
    default: return NULL;
    }
#else
    (void)D;
    return NULL;
#endif
}
