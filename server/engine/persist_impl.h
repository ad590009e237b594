/* persist_impl.h -- what the persistence files share: the segment
 * framing, the little-endian writer and bounded reader, and the shapes of
 * a table's pages (persist.h has the formats).
 *
 * Included by persist_segment.c (framing, cfg payload), persist_export.c
 * and persist_import.c only.
 *
 * Threading: pure functions over the caller's buffers; the shape helpers
 * read a table's fields, so their callers hold what persist_export.c and
 * persist_import.c say (the table's lock, or a private table).
 * Errors: the writer trusts its caller's sizes (an export sizes every
 * segment first); the reader never reads past its end and instead sets
 * `bad`, which the importer turns into CQR_ECORRUPT.
 */
#ifndef CQR_PERSIST_IMPL_H
#define CQR_PERSIST_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "persist.h"
#include "table_impl.h"

/* Floats, IDs and pointers are copied as raw bytes: the segment format is
 * little-endian, and so must the machine be. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "segments store raw little-endian values");

/* Bytes of a cfg payload: before issue 19 (and for tables without its
 * options), and with the admission and eviction options. */
#define CQR_CFG_BYTES_V1 92u
#define CQR_CFG_BYTES 116u

/* Whether a table's cfg is written long (it uses an issue 19 option). */
static inline int cqr_cfg_long(const cqr_table_config_t *c)
{
    return c->admit_after > 1 || c->evict_after_phases || c->max_ids ||
           c->ttl_seconds || c->compact;
}

/* Bytes of the meta tail of a table with a long cfg. */
#define CQR_META_TAIL_BYTES 32u
/* Bytes of the static tail of a compacted cqr table's meta. */
#define CQR_META_STATIC_BYTES 32u

/* A cqr table's static set (NULL if it was never compacted). Lock held. */
static inline const cqr_ptrset_t *cqr_static_set(const cqr_table_t *t)
{
    return t->cfg.kind == CQR_KIND_CQR ? t->st->ps : NULL;
}

/* Static and keys pages of a static set. */
static inline size_t cqr_static_pages(const cqr_ptrset_t *ps)
{
    return ps ? (cqr_packmap_size(&ps->pm) + CQR_STATIC_PAGE - 1) /
                    CQR_STATIC_PAGE
              : 0;
}

static inline size_t cqr_keys_pages(const cqr_ptrset_t *ps)
{
    return ps ? (ps->pm.n + CQR_KEYS_PAGE - 1) / CQR_KEYS_PAGE : 0;
}

/* ---- Little-endian writer and bounded reader --------------------------- */

typedef struct cqr_wr {
    uint8_t *p; /* next byte to write */
} cqr_wr_t;

static inline void cqr_put(cqr_wr_t *w, const void *src, size_t n)
{
    if (n)
        memcpy(w->p, src, n);
    w->p += n;
}

static inline void cqr_put_u32(cqr_wr_t *w, uint32_t v) { cqr_put(w, &v, 4); }
static inline void cqr_put_u64(cqr_wr_t *w, uint64_t v) { cqr_put(w, &v, 8); }
static inline void cqr_put_f32(cqr_wr_t *w, float v) { cqr_put(w, &v, 4); }
static inline void cqr_put_f64(cqr_wr_t *w, double v) { cqr_put(w, &v, 8); }

typedef struct cqr_rd {
    const uint8_t *p; /* next byte to read */
    size_t n;         /* bytes left */
    int bad;          /* a read ran past the end */
} cqr_rd_t;

/* The next n bytes, or NULL (and bad set) if fewer are left. */
static inline const uint8_t *cqr_take(cqr_rd_t *r, size_t n)
{
    if (r->bad || n > r->n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->n -= n;
    return p;
}

/* Copies the next n bytes to dst (zeros past the end). */
static inline void cqr_get(cqr_rd_t *r, void *dst, size_t n)
{
    const uint8_t *p = cqr_take(r, n);
    if (p)
        memcpy(dst, p, n);
    else
        memset(dst, 0, n);
}

static inline uint32_t cqr_get_u32(cqr_rd_t *r)
{
    uint32_t v;
    cqr_get(r, &v, 4);
    return v;
}

static inline uint64_t cqr_get_u64(cqr_rd_t *r)
{
    uint64_t v;
    cqr_get(r, &v, 8);
    return v;
}

/* Floats travel as their bit patterns. */
static inline float cqr_get_f32(cqr_rd_t *r)
{
    uint32_t bits = cqr_get_u32(r);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static inline double cqr_get_f64(cqr_rd_t *r)
{
    uint64_t bits = cqr_get_u64(r);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* ---- persist_segment.c ------------------------------------------------- */

/* Writes the header and checksum of a segment whose type, index, kind,
 * len and payload are filled in. */
void cqr_seg_seal(cqr_segment_t *sg);

/* Parses and checks a segment's header; with `sum`, verifies the
 * checksum before trusting any field beyond the magic and length, so that
 * a damaged version byte reads as damage, not as a newer format. Outputs
 * may be NULL. CQR_ECORRUPT, CQR_EVERSION. */
int cqr_seg_header(const uint8_t *data, size_t len, int sum, uint32_t *type,
                   uint32_t *index, cqr_seg_kind_t *kind, uint64_t *hash);

/* The cfg payload: CQR_CFG_BYTES bytes when cqr_cfg_long, else
 * CQR_CFG_BYTES_V1. get reads the options if r holds them (a short
 * payload leaves them at 0: none). */
void cqr_cfg_put(cqr_wr_t *w, const cqr_table_config_t *c);
void cqr_cfg_get(cqr_rd_t *r, cqr_table_config_t *c);

/* ---- Shapes ------------------------------------------------------------- */

/* Bytes of one row in a rows payload: parameters, optimizer state and
 * (Adam) the step count. */
static inline size_t cqr_row_bytes(const cqr_table_t *t, uint32_t w)
{
    uint32_t sw = cqr_optim_state_floats(t->cfg.optim.kind, w);
    return (size_t)w * 4 + (size_t)sw * 4 +
           (t->cfg.optim.kind == CQR_OPT_ADAM ? 4 : 0);
}

/* The known-ID map an export writes (NULL for hash and ce). */
static inline cqr_idmap_t *cqr_tracked_map(cqr_table_t *t)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return &t->rowmap;
    if (t->cfg.kind == CQR_KIND_CQR)
        return &t->st->ids;
    return NULL;
}

/* Bytes of a map value in segments: a full table's row index only (the
 * row's seqlock counter beside it in the slot is not state); a cqr
 * table's pointers. */
static inline uint32_t cqr_map_pvw(const cqr_table_t *t, const cqr_idmap_t *m)
{
    return t->cfg.kind == CQR_KIND_FULL ? 4 : m->vw;
}

/* Map pages of a map of `cap` slots, and the slots of page p. */
static inline size_t cqr_map_pages(size_t cap)
{
    return (cap + CQR_MAP_PAGE - 1) / CQR_MAP_PAGE;
}

static inline uint32_t cqr_page_slots(size_t cap, size_t p)
{
    size_t lo = p * CQR_MAP_PAGE;
    return (uint32_t)(cap - lo < CQR_MAP_PAGE ? cap - lo : CQR_MAP_PAGE);
}

/* Rows of full row page b, and of codebook page p. */
static inline uint32_t cqr_full_page_rows(const cqr_table_t *t, size_t b)
{
    uint64_t lo = (uint64_t)b * CQR_FULL_BLOCK;
    return (uint32_t)(t->nrows - lo < CQR_FULL_BLOCK ? t->nrows - lo
                                                      : CQR_FULL_BLOCK);
}

static inline uint32_t cqr_cb_page_rows(const cqr_table_t *t, uint32_t p)
{
    uint32_t lo = p * CQR_CB_PAGE;
    return t->k - lo < CQR_CB_PAGE ? t->k - lo : CQR_CB_PAGE;
}

#endif
