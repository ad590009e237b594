/* cqrps_model.h -- serving without a server: lookups from an export.
 *
 * `cqrps export TABLE --out FILE` (or cqrps_export) writes a table of a
 * checkpoint generation as one file holding what lookups need: config,
 * seeds, codebooks and the known IDs' pointers (cqr) or rows (full),
 * never the optimizer state. A float32 export looks up bit for bit what
 * the training server returned at that generation, for every kind and
 * for IDs it never saw; float16 and int8 exports are within the bounds
 * stated in README.md ("Serving"). A delta export (--since G) applied to
 * the export of G gives the export of the newer generation exactly.
 *
 * The file is versioned, checksummed per section and verified completely
 * at open (a damaged, truncated or foreign file is refused with
 * CQRPS_ECORRUPT, another format version with CQRPS_EVERSION; the reason
 * is in cqrps_model_last_error()). It is mapped, not read: opening costs
 * one pass of checksums, and the pages stay in the page cache.
 *
 * Threads: a model is immutable: any number of threads may look it up at
 * once. Lookups never allocate. cqrps_model_last_error() is per thread.
 * Errors: 0 or a negative CQRPS_E* code (cqrps.h).
 */
#ifndef CQRPS_MODEL_H
#define CQRPS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cqrps_model cqrps_model_t;

typedef struct cqrps_model_info {
    cqrps_kind_t kind;        /* table kind */
    uint32_t dim;             /* floats per embedding */
    uint32_t chunks;          /* ce/cqr chunks (1 otherwise) */
    uint32_t rows;            /* rows per codebook (0 for full) */
    const char *dtype;        /* "f32", "f16" or "int8" (static) */
    int is_delta;             /* 1: a delta (apply it; no lookups) */
    uint64_t generation;      /* checkpoint generation it holds */
    uint64_t base_generation; /* a delta: the generation it applies to */
    uint64_t ids;             /* IDs with their own value in the file */
    uint64_t bytes;           /* file bytes */
} cqrps_model_info_t;

/* Opens and verifies the export at path; *out owns it until
 * cqrps_model_close. CQRPS_EIO, CQRPS_ECORRUPT, CQRPS_EVERSION,
 * CQRPS_ENOMEM. */
CQRPS_API int cqrps_model_open(const char *path, cqrps_model_t **out);
CQRPS_API void cqrps_model_close(cqrps_model_t *m);

/* The reason of the calling thread's last failed cqrps_model_* call. */
CQRPS_API const char *cqrps_model_last_error(void);

CQRPS_API int cqrps_model_info(const cqrps_model_t *m,
                               cqrps_model_info_t *out);

/* n x dim floats into out. CQRPS_EINVAL for a delta or NULL buffers. */
CQRPS_API int cqrps_model_lookup(const cqrps_model_t *m, const uint64_t *ids,
                                 size_t n, float *out);
/* Pooled (as cqrps_lookup_pooled): bag b is ids[offsets[b] ..
 * offsets[b+1]), the last bag runs to n; nbags x dim floats into out. */
CQRPS_API int cqrps_model_lookup_pooled(const cqrps_model_t *m,
                                        const uint64_t *ids, size_t n,
                                        const uint32_t *offsets, size_t nbags,
                                        cqrps_pooling_t pooling, float *out);

/* Applies the delta export at delta_path to base: *out is a new model
 * (in memory) equal to the full export of the delta's generation; base is
 * unchanged. CQRPS_EINVAL if the delta's base generation is not base's
 * (or it is of another table). */
CQRPS_API int cqrps_model_apply_delta(const cqrps_model_t *base,
                                      const char *delta_path,
                                      cqrps_model_t **out);

/* Writes the model as an export file (atomically: a temporary file,
 * fsync, rename). A model rebuilt from deltas saves to the same bytes as
 * the full export of its generation. */
CQRPS_API int cqrps_model_save(const cqrps_model_t *m, const char *path);

#ifdef __cplusplus
}
#endif

#endif
