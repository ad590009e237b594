/* kmeans_kernels.h -- the distance kernels behind kmeans.c (engine-private).
 *
 * Two ways to find each point's nearest centroid:
 *   argmin   after cblas_sgemm wrote a tile of -2 x.c products, the first
 *            minimum of ||c||^2 - 2 x.c per tile row (any width d);
 *   fused    for chunk widths up to CQR_KM_FUSED_MAXD on CPUs with
 *            AVX-512F: the distances computed in registers, 16 points per
 *            vector, with the argmin fused in; no tile is ever written.
 * A scalar argmin is the fallback on every machine; each SIMD version is
 * picked at run time with __builtin_cpu_supports (not target_clones: its
 * ifunc resolver crashes under ThreadSanitizer).
 *
 * Rules: pure functions on the caller's buffers; no allocation, no state;
 * callable from any thread. Ties go to the lower centroid index and NaN
 * never wins.
 */
#ifndef CQR_KMEANS_KERNELS_H
#define CQR_KMEANS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* For each of m tile rows, finds the first minimum of cn[j] + row[j] over
 * j < cb and takes it into (best, bidx) if strictly smaller; j0 is the
 * tile's first centroid, so earlier tiles win ties. */
typedef void (*cqr_km_argmin_fn)(const float *tile, size_t ldt, size_t m,
                                 const float *cn, size_t cb, uint32_t j0,
                                 float *best, uint32_t *bidx);

/* The best argmin kernel of this CPU. */
cqr_km_argmin_fn cqr_km_pick_argmin(void);

/* 1 if this CPU runs AVX2 (kmeans.c's k-means++ kernel needs it). */
int cqr_km_have_avx2(void);

/* ---- fused kernel ----------------------------------------------------- */

#define CQR_KM_FUSED_MAXD 16
/* Points per vector of the fused kernel. */
#define CQR_KM_FL 16

/* For one group of CQR_KM_FL points, transposed and zero-padded to D
 * rows (xt[t * CQR_KM_FL + l] = coordinate t of point l), against `cnt`
 * centroids given as rows of D + 1 floats, [||c||^2, -2 c_0 .. -2 c_D-1]
 * (zero-padded): finds for each lane the first minimum of ||c||^2 - 2 x.c
 * and takes it into (best, bidx) if strictly smaller; j0 is the first
 * centroid's index, so earlier calls win ties. */
typedef void (*cqr_km_fused_fn)(const float *xt, const float *cw, size_t cnt,
                                uint32_t j0, float *best, uint32_t *bidx);

/* The padded width D (4, 8 or 16) the fused kernel uses for width d, or 0
 * when d is too wide for it. */
size_t cqr_km_fused_width(size_t d);

/* The fused kernel for padded width D, or NULL if this CPU has none (or
 * D is not 4, 8 or 16, or CQR_KMEANS_NO_FUSED is set in the environment:
 * benchmarks compare both paths in one run and tests check both). */
cqr_km_fused_fn cqr_km_pick_fused(size_t D);

#if defined(__x86_64__) && defined(__GNUC__)
#define KM_HAVE_AVX2 1
typedef float v8sf __attribute__((vector_size(32)));
typedef int32_t v8si __attribute__((vector_size(32)));

/* Unaligned 8-float load, and "any lane set" of a compare mask. */
#define KM_LOAD8(p)                                                         \
    __extension__({                                                         \
        v8sf v_;                                                            \
        memcpy(&v_, (p), sizeof v_);                                        \
        v_;                                                                 \
    })
#define KM_ANY(m)                                                           \
    __extension__({                                                         \
        uint64_t w_[4];                                                     \
        memcpy(w_, &(m), sizeof w_);                                        \
        (w_[0] | w_[1] | w_[2] | w_[3]) != 0;                               \
    })
#define KM_SEL(m, a, b) (((m) & (a)) | (~(m) & (b)))
#endif

#endif
