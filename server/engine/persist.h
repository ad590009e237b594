/* persist.h -- export and import of a table's complete state, as segments.
 *
 * Files: persist_segment.c (the framing and the cfg payload),
 * persist_export.c, persist_import.c; persist_impl.h is what they share.
 *
 * A table's state is a set of pages, each exported as one self-checking
 * byte string (a segment):
 *   cfg          the config (always written)
 *   meta         counters, seeds, schedule, map shape (always written)
 *   cb    b*P+p  rows [p*CQR_CB_PAGE, ...) of codebook block b (hash, ce,
 *                cqr; block b = codebook b/c, chunk b%c; P pages a block)
 *   rows  b      full table row block b (CQR_FULL_BLOCK rows; with
 *                max_ids or ttl_seconds each row also carries its u32
 *                last-push stamp, after the steps)
 *   map   p      slots [p*CQR_MAP_PAGE, ...) of the known-ID map (full:
 *                ID -> row; cqr: ID -> pointers, and with eviction the
 *                stamp), copied slot for slot
 *   sketch 0     the admission sketch's counters (admit_after > 1;
 *                always a base, written when it changed)
 *   fallback 0   a full table's fallback rows (admit_after > 1;
 *                CQR_FALLBACK_ROWS rows, a base or a delta as rows)
 *   static p     a compacted cqr table (cqr_table_compact): bytes
 *                [p*CQR_STATIC_PAGE, ...) of its static set's serialised
 *                packmap (packmap.h); always bases, written when a
 *                rebuild replaced the set
 *   keys   p     the static set's IDs in slot order (u64 each), IDs
 *                [p*CQR_KEYS_PAGE, ...); as static pages
 * A compacted table's meta ends with a static tail (CQR_META_STATIC_BYTES:
 * u64 bytes of the serialised set, u64 its IDs, u64 rebuilds, u64
 * reserved); tables that were never compacted write neither the tail nor
 * these pages, so their checkpoints are as before, and checkpoints
 * written before them load unchanged. The static set is restored byte
 * for byte, so that IDs it was not built with look up after a restore
 * what they looked up before (cqr_table_compact).
 * The cfg payload has two lengths: CQR_CFG_BYTES_V1 (92, before issue
 * 19; also written by tables with no admission or eviction option, so
 * that their checkpoints stay as they were) and CQR_CFG_BYTES (116: the
 * options appended; its last u32, once reserved, holds flags: bit 0 the
 * `compact` option, which also makes the cfg long). A table whose cfg is
 * the long one has a longer meta
 * too (its admission and eviction counters, the TTL sweep's hand).
 * Checkpoints written before
 * issue 19 therefore load unchanged.
 * A page's segment is either complete (a base) or a delta: the rows or
 * slots that changed since an earlier export of the same table, which the
 * importer applies over the page's previous version. Rebuilding a page
 * therefore takes its last base and every later delta, in order; the
 * store (store.h) keeps those chains.
 *
 * Segment format (little-endian, version CQR_SEGMENT_VERSION):
 *   0  u32 magic "CQRS"   4 u16 version   6 u8 page type   7 u8 flags
 *   8  u32 page index    12 u32 reserved  16 u64 payload length
 *   24 u64 checksum: XXH3-64 of the payload, seeded with the XXH3-64 of
 *          bytes 0..24 (so the header is covered too)
 * then the payload. A segment is verified before anything of it is used.
 *
 * Incremental exports: cqr_table_export with since = 0 exports every
 * page as a base. With since = the cursor returned by the previous
 * export (or import) of the same table object, it exports only pages
 * changed since then, as deltas when few rows changed. Rows are tracked
 * individually (a 4-byte change mark per row and per page, stamped by
 * pushes), and new known IDs by insertion records, so a checkpoint after
 * touching 1% of a table writes about 1% of it. Two things change whole
 * structures and make the next export write them completely: a cluster
 * phase commit (every codebook row and every pointer of the cqr map), and
 * a rehash of a known-ID map when it grows (every slot moves; geometric
 * growth keeps this rare). A phase commit sizes the new cqr map for the
 * IDs it holds, at the growth threshold, so the first new ID after a
 * phase rehashes it: after a phase, two checkpoints write the whole map.
 *
 * Consistency and pause: an export first plans (which pages, how big)
 * and allocates and faults in its buffers while pushes go on; then it
 * takes the table's gate exclusively, which waits for the pushes in
 * flight and holds new ones back (lookups are never held back), copies
 * the changed pages into those buffers, and releases it; checksums are
 * computed afterwards. The exported state therefore contains every push
 * acknowledged before the export began and no part of any later push.
 * The pause pushes see is the copy (memcpy speed); it is measured and
 * reported (cqr_export_t, cqr_persist_stats).
 * A first export copies the whole table, so it holds the table's size in
 * memory until cqr_export_free.
 *
 * During a cluster phase an export captures the live state, which is the
 * table as if the phase had not begun (pushes during a phase are applied
 * to the live state); its meta records the schedule as it was before the
 * phase's begin, so a restored table runs that phase again when due. The
 * commit then marks everything changed.
 *
 * Threading: cqr_table_export may run concurrently with any other table
 * call, except destroy. One cursor chain per table: exporting the same
 * table to two consumers works, but the consumer with the older cursor
 * may get complete (not incremental) maps. Importers are single-threaded
 * objects.
 *
 * Errors: 0 or a negative CQR_E* code (err.h). Import returns CQR_ECORRUPT
 * for anything that fails verification (bad magic, checksum, impossible
 * sizes, missing or repeated pages, out-of-range pointers) and
 * CQR_EVERSION for a segment format it does not know.
 */
#ifndef CQR_PERSIST_H
#define CQR_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

#define CQR_SEGMENT_VERSION 1
#define CQR_SEGMENT_HEADER 32
#define CQR_MAP_PAGE (1u << 16) /* map slots per page */

typedef enum cqr_page_type {
    CQR_PAGE_CFG = 1,
    CQR_PAGE_META = 2,
    CQR_PAGE_CB = 3,
    CQR_PAGE_ROWS = 4,
    CQR_PAGE_MAP = 5,
    CQR_PAGE_SKETCH = 6,  /* the admission sketch (admit_after > 1) */
    CQR_PAGE_FALLBACK = 7, /* a full table's fallback rows (admit_after
                              > 1) */
    CQR_PAGE_STATIC = 8,  /* a compacted cqr table's static set */
    CQR_PAGE_KEYS = 9     /* the static set's IDs */
} cqr_page_type_t;

/* Bytes of the static set's serialised form per static page, and IDs per
 * keys page. */
#define CQR_STATIC_PAGE (1u << 24)
#define CQR_KEYS_PAGE (1u << 20)

/* "cfg", "meta", "cb", "rows", "map", "sketch", "fallback", "static",
 * "keys" (or "?"). */
const char *cqr_page_type_name(uint32_t type);

typedef enum cqr_seg_kind {
    CQR_SEG_UNCHANGED = 0, /* page unchanged since `since`: no data */
    CQR_SEG_BASE = 1,      /* the complete page */
    CQR_SEG_DELTA = 2      /* changes over the page's previous version */
} cqr_seg_kind_t;

typedef struct cqr_segment {
    uint32_t type;       /* cqr_page_type_t */
    uint32_t index;      /* page index within its type */
    cqr_seg_kind_t kind; /* unchanged, base or delta */
    uint8_t *data;       /* the encoded segment (header + payload), owned
                            by the export; NULL when unchanged */
    size_t len;          /* bytes at data */
    uint64_t hash;       /* the segment's checksum (header bytes 24..32) */
    uint64_t items;      /* rows or slots carried */
} cqr_segment_t;

/* Called by cqr_table_export for each changed page before it decides
 * between base and delta: return 1 to force a base (e.g. the consumer
 * has no version of the page, or its delta chain is long). Called with
 * the table's gate held: must be quick and must not call into the
 * table. */
typedef int (*cqr_force_base_cb)(void *ud, uint32_t type, uint32_t index);

typedef struct cqr_export_opts {
    uint32_t since;              /* 0: export everything as bases; else a
                                    cursor from this table's previous
                                    export or import */
    cqr_force_base_cb force_base; /* may be NULL */
    void *ud;                    /* its argument */
} cqr_export_opts_t;

typedef struct cqr_export {
    uint64_t uid;          /* the table's process-unique number */
    uint32_t since;        /* the since it was made with */
    uint32_t cursor;       /* pass as since to the next export */
    cqr_kind_t kind;       /* table kind, for summaries */
    uint32_t dim;          /* embedding width */
    uint64_t known_ids;    /* known IDs at the export */
    uint32_t phases_done;  /* committed phases at the export */
    size_t nseg;           /* every page of the table, in page order:
                              cfg, meta, cb..., rows..., map... */
    cqr_segment_t *seg;
    uint64_t bytes;        /* sum of len over the segments */
    uint64_t full_bytes;   /* what a complete export would have been */
    double prepare_seconds; /* planning and faulting in the buffers
                               (before the gate; pushes go on) */
    double wait_seconds;   /* waiting for the gate (pushes in flight) */
    double pause_seconds;  /* gate held: pushes held back this long */
    double seconds;        /* the whole call */
} cqr_export_t;

/* Exports table t. On success *out owns the copies (cqr_export_free).
 * The table is never changed, except that its insertion records older
 * than opts->since are dropped (the caller, by passing since, says it no
 * longer needs them). CQR_EINVAL if since is newer than the table's
 * epoch (a cursor from another table). */
int cqr_table_export(cqr_table_t *t, const cqr_export_opts_t *opts,
                     cqr_export_t **out);
void cqr_export_free(cqr_export_t *x);

/* The table's process-unique number (cursors are valid for it only). */
uint64_t cqr_table_uid(const cqr_table_t *t);

/* Export statistics of a table (cumulative over its life). */
typedef struct cqr_persist_stats {
    uint64_t exports;          /* exports done */
    double last_pause_seconds; /* gate hold of the last export */
    double max_pause_seconds;  /* longest gate hold */
    double last_wait_seconds;  /* gate wait of the last export */
    double last_seconds;       /* the last export call */
    uint64_t last_bytes;       /* bytes of the last export */
} cqr_persist_stats_t;

void cqr_persist_stats(cqr_table_t *t, cqr_persist_stats_t *st);

/* ---- Import ----------------------------------------------------------
 * Feed segments in this order: cfg, meta, then for each page its base
 * followed by its deltas in export order (pages in any order). finish
 * checks that every page has its base and returns the table, ready to
 * use, with a cursor: exporting it with since = cursor writes only what
 * changed after the import. Segments are copied, not kept. */
typedef struct cqr_import cqr_import_t;

int cqr_import_begin(cqr_import_t **out);
/* Verifies and applies one segment. After an error the importer can
 * only be aborted. */
int cqr_import_segment(cqr_import_t *im, const uint8_t *data, size_t len);
/* On success *out owns the table; the importer is freed either way. */
int cqr_import_finish(cqr_import_t *im, cqr_table_t **out, uint32_t *cursor);
void cqr_import_abort(cqr_import_t *im);

/* A one-line reason for the last error of an importer ("" if none);
 * valid until the importer is freed. */
const char *cqr_import_error(const cqr_import_t *im);

/* Reads a segment's header without verifying the checksum: CQR_ECORRUPT
 * if len is too short, the magic is wrong, the payload length disagrees
 * with len or a field is impossible; CQR_EVERSION for another format
 * version. Outputs may be NULL. */
int cqr_segment_peek(const uint8_t *data, size_t len, uint32_t *type,
                     uint32_t *index, cqr_seg_kind_t *kind);
/* As peek, and verifies the checksum first (a damaged version byte is
 * CQR_ECORRUPT); *hash (if non-NULL) gets the checksum. */
int cqr_segment_verify(const uint8_t *data, size_t len, uint64_t *hash);

#endif
