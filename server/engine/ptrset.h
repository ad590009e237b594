/* ptrset.h -- the static set of a cqr table's known IDs: their B0
 * pointers, compact, and what eviction needs to know about them.
 *
 * A rebuild (a cluster phase, or a compaction: rebuild.c) turns the IDs a
 * cqr table knows into a ptrset: a packmap (packmap.h) whose value for an
 * ID is a fingerprint of fbits bits and its c pointers of pbits =
 * ceil(log2 k) bits each, a bit per ID set by the pushes since the build
 * (only when the table evicts: evict_after_phases > 0), and the key file
 * (keyfile.h) with every ID and the epoch of its last push, in slot
 * order, on disk. In RAM that is c x pbits + fbits + 2.45 bits an ID (+1
 * with eviction): 70.5 bits = 8.8 bytes for 4 chunks at k = 65,536.
 *
 * Fingerprints: fbits = clamp(68 - c x pbits, 4, 16), so a value fills
 * about 68 bits when the pointers leave room (16 bits of fingerprint for
 * 4 chunks at k <= 4096) and never less than 4. An ID that is not in the
 * set matches the fingerprint of the slot it lands on with probability
 * 2^-fbits (1/16 at k = 65,536 with 4 chunks): the table then takes it
 * for that slot's ID (cqr_table_* say what follows from it).
 *
 * The set is immutable once built, except for the push marks, which
 * pushes set with relaxed atomic ORs (and stamp a page mark for
 * incremental exports) while lookups and other pushes read the set.
 *
 * Threading: lookups and marks from any thread; building by one thread
 * (with its helpers); readers (cqr_ptrset_reader_*) each belong to one
 * thread. Ownership: a ptrset owns its packmap and marks and one
 * reference to its key file. Errors: 0 or a negative CQR_E* code.
 */
#ifndef CQR_PTRSET_H
#define CQR_PTRSET_H

#include <stddef.h>
#include <stdint.h>

#include "keyfile.h"
#include "packmap.h"

/* Push-mark bits per page mark (one mark per 2^23 IDs: 1 MiB of bits). */
#define CQR_MARK_PAGE_SHIFT 23

typedef struct cqr_ptrset {
    cqr_packmap_t pm;     /* the IDs' fingerprints and pointers */
    uint32_t c;           /* chunks (pointers per ID) */
    uint32_t pbits;       /* bits per pointer */
    uint64_t *marks;      /* pm.n bits: pushed since the build; NULL when
                             the table does not evict */
    uint32_t *mpage;      /* change marks of the marks' pages (persist.h),
                             or NULL */
    uint64_t nmpage;      /* pages of marks */
    cqr_keyfile_t *kf;    /* the IDs and last push epochs (one reference) */
} cqr_ptrset_t;

/* Bits per pointer for k rows, and the fingerprint bits of a set. */
uint32_t cqr_ptr_bits(uint32_t k);
uint32_t cqr_ptrset_fbits(uint32_t c, uint32_t pbits);

/* An empty set (no IDs) for c pointers of pbits bits; with_marks says
 * whether the table evicts. */
int cqr_ptrset_init_empty(cqr_ptrset_t *ps, uint32_t c, uint32_t pbits,
                          int with_marks);
void cqr_ptrset_free(cqr_ptrset_t *ps);

/* Bytes in RAM (packmap, marks and their page marks). */
uint64_t cqr_ptrset_bytes(const cqr_ptrset_t *ps);

/* Pointer i of the value at bit offset vbit. */
static inline uint32_t cqr_ptrset_ptr(const cqr_ptrset_t *ps, uint64_t vbit,
                                      uint32_t i)
{
    if (ps->pbits == 0)
        return 0;
    return (uint32_t)cqr_packmap_bits(
        &ps->pm, vbit + ps->pm.fbits + (uint64_t)i * ps->pbits, ps->pbits);
}

/* Sets the push mark of slot s (relaxed; its page's change mark gets
 * epoch e). No-op without marks. */
static inline void cqr_ptrset_mark(cqr_ptrset_t *ps, uint64_t s, uint32_t e)
{
    if (!ps->marks)
        return;
    uint64_t bit = 1ULL << (s & 63), *w = &ps->marks[s >> 6];
    if (!(__atomic_load_n(w, __ATOMIC_RELAXED) & bit))
        __atomic_fetch_or(w, bit, __ATOMIC_RELAXED);
    uint32_t *pm = &ps->mpage[s >> CQR_MARK_PAGE_SHIFT];
    if (__atomic_load_n(pm, __ATOMIC_RELAXED) != e)
        __atomic_store_n(pm, e, __ATOMIC_RELAXED);
}

/* Whether slot s is marked (relaxed). */
static inline int cqr_ptrset_marked(const cqr_ptrset_t *ps, uint64_t s)
{
    return ps->marks &&
           (__atomic_load_n(&ps->marks[s >> 6], __ATOMIC_RELAXED) >> (s & 63)
            & 1);
}

/* ---- Building ------------------------------------------------------------ */

typedef struct cqr_ptrset_builder cqr_ptrset_builder_t;

/* A builder for exactly n IDs (seed: the packmap's hashing seed). */
int cqr_ptrset_builder_create(uint64_t n, uint32_t c, uint32_t pbits,
                              int with_marks, uint64_t seed,
                              cqr_ptrset_builder_t **out);
/* Adds an ID with its c pointers and the epoch of its last push. */
int cqr_ptrset_builder_add(cqr_ptrset_builder_t *b, uint64_t id,
                           const uint32_t *ptrs, uint32_t last_epoch);
/* Builds the set (over `threads` threads) and writes its key file; the
 * builder is destroyed either way. */
int cqr_ptrset_builder_finish(cqr_ptrset_builder_t *b, unsigned threads,
                              cqr_ptrset_t *out);
void cqr_ptrset_builder_destroy(cqr_ptrset_builder_t *b);

/* ---- Reading every ID in slot order ------------------------------------ */

/* One ID of a set, as a reader returns it. */
typedef struct cqr_ptrset_item {
    uint64_t id;          /* the ID */
    uint64_t slot;        /* its slot */
    uint32_t last_epoch;  /* epoch of its last push, as of the build */
} cqr_ptrset_item_t;

typedef struct cqr_ptrset_reader {
    const cqr_ptrset_t *ps;
    uint64_t next;        /* next slot to return */
    uint64_t buf0;        /* slot of buf's first record */
    uint64_t nbuf;        /* records in buf */
    uint8_t *buf;         /* a block of key file records */
    uint32_t q;           /* partition of `next` */
    int err;              /* the first read error */
} cqr_ptrset_reader_t;

int cqr_ptrset_reader_init(cqr_ptrset_reader_t *r, const cqr_ptrset_t *ps);
/* 1 and the next ID (its pointers into ptrs[0..c)), or 0 at the end or
 * on a read error (then r->err). */
int cqr_ptrset_reader_next(cqr_ptrset_reader_t *r, cqr_ptrset_item_t *it,
                           uint32_t *ptrs);
void cqr_ptrset_reader_free(cqr_ptrset_reader_t *r);

#endif
