/* model.h -- serving exports: the file format, its canonical writer and
 * its reader (lookups without a server).
 *
 * An export holds what lookups of one table need and nothing else: the
 * config, the seeds, the codebooks and, for the kinds that keep per-ID
 * state, every known ID with its value (cqr: its c learned B0 pointers;
 * full: its row). Never-seen IDs look up what the training server returns
 * for them (hashed pointers; a full table's deterministic initial row),
 * so the IDs are kept. Optimizer state is never exported.
 *
 * File format (little-endian, version CQR_MODEL_VERSION; every section
 * starts on a 64-byte boundary, so a mapped file can be read in place):
 *   0   u8[8] magic "CQRMODEL"      8  u32 version    12 u32 flags
 *   16  u32 kind   20 u32 dim   24 u32 chunks   28 u32 rows (k)
 *   32  u32 dtype  36 u32 pw (bytes per cqr pointer)
 *   40  f32 init_scale             44 u32 bucket_bits (L)
 *   48  u64 seed   56 u64 generation   64 u64 base_generation
 *   72  u64 nids   80 u64 nremoved     88 u64 file bytes
 *   96  CQR_MODEL_NSECT x {u64 offset, u64 length, u64 XXH3-64}
 *   288 u64 reserved (0)   296 u64 XXH3-64 of bytes 0..296
 * Sections, in this order:
 *   seeds      2c u64: c seeds of the hashed B0 pointers, then c of B1
 *   cb         ncb*c blocks (codebook b, chunk i at b*c+i) of k rows of
 *              w = dim/c values in dtype
 *   cb_scales  int8: one f32 scale per codebook block row; else empty
 *   buckets    2^L + 1 u32: IDs of bucket b are ids[buckets[b] ..
 *              buckets[b+1]); an ID's bucket is the top L bits of
 *              cqr_mix64(id)
 *   ids        nids u64, by bucket, ascending within a bucket
 *   vals       per ID (same order): cqr c pointers of pw bytes; full dim
 *              values in dtype
 *   val_scales int8 full rows: one f32 scale per ID; else empty
 *   removed    delta only: nremoved u64, ascending: IDs the newer
 *              generation no longer knows
 * A full table with admission (admit_after > 1) sets flag
 * CQR_MODEL_FALLBACK: rows is then its number of fallback rows, cb holds
 * them as one block (chunks 1), seeds[0] is the seed of the ID ->
 * fallback row hash (fastrange(cqr_hash_id(id, seed), rows)), and an ID
 * without a row looks up its fallback row instead of its initial one.
 * Rows of a table with ttl_seconds that had expired when the export was
 * made are left out (the server looks them up as absent too).
 * Values in dtype: f32 as is; f16 IEEE binary16 (round to nearest even);
 * int8 q in [-127, 127] with value q * scale, scale = max|x| / 127 of its
 * row (0 for an all-zero row).
 * The layout is a function of the content: the same content always gives
 * the same bytes, so a model rebuilt from a base and deltas can be
 * compared byte for byte with the full export of the same generation.
 *
 * A delta (flag CQR_MODEL_DELTA) from generation G to H carries the
 * seeds and codebooks of H whole (they are small), the IDs whose value
 * differs from G's or that G did not know, and the IDs of G that H no
 * longer knows. Applied to the export of G it gives the export of H.
 *
 * Threading: a cqr_model_t is immutable after open: any number of threads
 * may look it up at once. Lookups never allocate.
 * Ownership: a model owns its mapping or buffer; cqr_model_close frees it.
 * Errors: 0 or a negative CQR_E* (err.h). Open and apply return
 * CQR_ECORRUPT for anything that fails verification (magic, checksums,
 * sizes, structure, pointers out of range), CQR_EVERSION for another
 * format version, CQR_EIO for the file system, CQR_EINVAL for a delta
 * whose base does not match; with a one-line reason in why.
 */
#ifndef CQR_MODEL_H
#define CQR_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define CQR_MODEL_VERSION 1u
#define CQR_MODEL_MAGIC "CQRMODEL"
#define CQR_MODEL_HEADER 320u /* bytes before the first section */
#define CQR_MODEL_NSECT 8u
#define CQR_MODEL_ALIGN 64u
#define CQR_MODEL_DELTA 1u    /* flags: a delta */
#define CQR_MODEL_FALLBACK 2u /* flags: a full table's fallback rows */
/* The seed-derivation tag of a full table's initial rows (table_impl.h's
 * CQR_TAG_FULL_INIT; a test checks they agree). */
#define CQR_MODEL_TAG_FULL_INIT 4u

enum {
    CQR_MSECT_SEEDS = 0,
    CQR_MSECT_CB = 1,
    CQR_MSECT_CB_SCALES = 2,
    CQR_MSECT_BUCKETS = 3,
    CQR_MSECT_IDS = 4,
    CQR_MSECT_VALS = 5,
    CQR_MSECT_VAL_SCALES = 6,
    CQR_MSECT_REMOVED = 7
};

typedef enum cqr_dtype {
    CQR_DTYPE_F32 = 0,
    CQR_DTYPE_F16 = 1,
    CQR_DTYPE_INT8 = 2
} cqr_dtype_t;

/* "f32", "f16", "int8" and back (CQR_EINVAL for another name). */
const char *cqr_dtype_name(uint32_t d);
int cqr_dtype_parse(const char *name, cqr_dtype_t *out);
/* Bytes of one value. */
uint32_t cqr_dtype_size(uint32_t d);

/* The header fields of an export. */
typedef struct cqr_model_info {
    uint32_t flags;         /* CQR_MODEL_DELTA or 0 */
    uint32_t kind;          /* cqr_kind_t (table.h) */
    uint32_t dim;           /* floats per embedding */
    uint32_t chunks;        /* c (1 for full and hash) */
    uint32_t rows;          /* k (0 for full) */
    uint32_t dtype;         /* cqr_dtype_t */
    uint32_t pw;            /* bytes per cqr pointer (0 for other kinds) */
    float init_scale;       /* full: initial rows uniform in (-s, s) */
    uint64_t seed;          /* the table seed */
    uint64_t generation;    /* checkpoint generation exported */
    uint64_t base_generation; /* delta: the generation it applies to */
} cqr_model_info_t;

/* Codebooks (ncb) of an export: 0 full (1 with fallback rows), 1 hash,
 * 2 ce and cqr. */
uint32_t cqr_model_ncb(const cqr_model_info_t *h);
/* Bytes of one ID's value in `vals`. */
size_t cqr_model_val_bytes(const cqr_model_info_t *h);

/* What the writer serialises: the values already in dtype. */
typedef struct cqr_model_content {
    cqr_model_info_t h;
    const uint64_t *seeds;     /* 2c */
    const uint8_t *cb;         /* ncb*c*k*w values in dtype */
    const float *cb_scales;    /* int8: ncb*c*k; else NULL */
    size_t nids;
    const uint64_t *ids;       /* nids distinct IDs, any order */
    const uint8_t *vals;       /* nids values, in the order of ids */
    const float *val_scales;   /* int8 full: nids; else NULL */
    size_t nremoved;
    const uint64_t *removed;   /* nremoved distinct IDs, any order */
} cqr_model_content_t;

/* Encodes rows x w floats as dtype into dst (rows*w*cqr_dtype_size
 * bytes) and, for int8, one scale per row into scales. */
void cqr_model_encode(uint32_t dtype, const float *src, size_t rows,
                      uint32_t w, uint8_t *dst, float *scales);

/* Serialises content canonically into a malloc'd image (*out, *len).
 * CQR_EINVAL for an impossible header or a repeated ID, CQR_ENOMEM. */
int cqr_model_write(const cqr_model_content_t *mc, uint8_t **out,
                    size_t *len, char *why, size_t whylen);

/* Writes an image to path: a temporary file beside it, fsync, rename,
 * directory fsync. CQR_EIO with a reason. */
int cqr_model_save_image(const uint8_t *img, size_t len, const char *path,
                         char *why, size_t whylen);

typedef struct cqr_model cqr_model_t;

/* Maps the file at path and verifies it completely. */
int cqr_model_open(const char *path, cqr_model_t **out, char *why,
                   size_t whylen);
/* Verifies an image in memory; the model takes ownership of the malloc'd
 * image (freed on failure too). */
int cqr_model_open_image(uint8_t *img, size_t len, cqr_model_t **out,
                         char *why, size_t whylen);
void cqr_model_close(cqr_model_t *m);

const cqr_model_info_t *cqr_model_info(const cqr_model_t *m);
/* IDs held (full or delta), and the image's bytes (valid while open). */
uint64_t cqr_model_nids(const cqr_model_t *m);
const uint8_t *cqr_model_image(const cqr_model_t *m, size_t *len);

/* Writes n x dim floats: exactly what the training server returned at
 * the exported generation (f32), or within the dtype's bound. A delta
 * cannot be looked up (CQR_EINVAL). */
int cqr_model_lookup(const cqr_model_t *m, const uint64_t *ids, size_t n,
                     float *out);
/* Pooled: as cqr_table_lookup_pooled (table.h), bit for bit. pool: 0 sum,
 * 1 mean. */
int cqr_model_lookup_pooled(const cqr_model_t *m, const uint64_t *ids,
                            size_t n, const uint32_t *offsets, size_t nbags,
                            int pool, float *out);

/* Applies the delta `d` to the full model `base`: *out is a new model
 * (an image in memory), equal to the full export of d's generation.
 * CQR_EINVAL if d is not a delta of base (base generation, kind, shape,
 * seed or dtype differ). */
int cqr_model_apply_delta(const cqr_model_t *base, const cqr_model_t *d,
                          cqr_model_t **out, char *why, size_t whylen);

#endif
