/* table_impl.h -- a table's internals.
 *
 * Included by the files of the table module (table.c: create, state,
 * stats, digest; table_config.c; table_known.c: known IDs and growth;
 * table_lookup.c; table_push.c; table_static.c: a cqr table's static set
 * and compactions), by cluster.c and the persist_*.c files,
 * which work on a table's state, and by the engine's own tests, which
 * inspect it. Nothing outside server/engine/ and tests/engine/ includes
 * it. Other modules change a live table only through the functions
 * declared here and in table.h (cluster.c: cqr_table_phase_*); the
 * exporter reads the state under the locks below, and the importer fills
 * in a private table it has just created.
 *
 * Locking: `gate` (a writer-preferring rwlock) is outermost: every push
 * holds it shared for its whole call, an export (persist_export.c) holds
 * it exclusively while it copies the changed state; lookups never take
 * it.
 * `lock` (a writer-preferring rwlock) comes next. Lookups and pushes hold
 * it shared; inserting new known IDs, a phase's begin and commit, and the
 * digest hold it exclusively; an export holds it shared (so that no
 * commit swaps the state under it). `plock` (a mutex) is inner: it guards
 * the phase and export statistics. The push log of a running phase has
 * its own mutex (pushlog.h).
 * Row floats are guarded by their own seqlocks (rows.h).
 *
 * Change tracking (for incremental checkpoints, persist.h): `wepoch` is
 * the current change epoch, starting at 1. Whatever changes a row stamps
 * the row's mark and its page's mark with the epoch (cqr_mark: a relaxed
 * load and, only if different, a relaxed store). An export bumps the
 * epoch while it holds the gate exclusively, so "mark >= S" means
 * "changed at or after the export that returned cursor S". Changes that
 * touch a whole structure (a phase commit, a map rehash) record their
 * epoch in a *_base_epoch field instead.
 */
#ifndef CQR_TABLE_IMPL_H
#define CQR_TABLE_IMPL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "idmap.h"
#include "par.h"
#include "ptrset.h"
#include "pushlog.h"
#include "rows.h"
#include "sketch.h"
#include "table.h"

/* Everything a cluster phase replaces, for the codebook kinds.
 *
 * A cqr table's known IDs live in `ids` (ID -> pointers, about 20 bytes
 * an ID), and, once the table was compacted (cqr_table_compact; tables
 * without eviction only), most of them in the static set `ps` (ptrset.h:
 * no IDs in RAM, about 9 bytes an ID, the IDs themselves in its key file
 * on disk). The two are disjoint; `ids` then holds the IDs registered
 * since the last rebuild (a compaction, or a phase of a compact table).
 * An ID in the map is known; else the static set knows it when the
 * fingerprint at the ID's slot matches (cqr_cqr_find): a never-seen ID
 * matches with probability 2^-fbits and then looks up that slot's
 * pointers (README). */
typedef struct cqr_cbstate {
    uint64_t *seed_p; /* c seeds of the hashed B0 pointers (never change) */
    uint64_t *seed_h; /* c seeds of the B1 hash (each phase draws anew) */
    cqr_rows_t *cb;   /* ncb x c blocks: codebook b, chunk i at cb[b*c+i] */
    cqr_idmap_t ids;  /* cqr: known ID -> c B0 pointers of pw bytes */
    cqr_ptrset_t *ps; /* cqr, compact: the static set; else NULL */
} cqr_cbstate_t;

/* Full tables address rows as block row >> CQR_FULL_BLOCK_SHIFT, row
 * row & (CQR_FULL_BLOCK - 1) in it (and persist one page per block).
 * Block 0 is allocated for CQR_FULL_FIRST rows and doubles as rows come,
 * up to CQR_FULL_BLOCK; the later blocks are whole from the start (the
 * table then already holds a block's rows), so the memory a table takes
 * and is charged for stays within twice its rows (issue 14, item 7). */
#define CQR_FULL_BLOCK_SHIFT 16
#define CQR_FULL_BLOCK (1u << CQR_FULL_BLOCK_SHIFT)
#define CQR_FULL_FIRST 64u
/* Codebook rows per persistence page (one mark per page, persist.h). */
#define CQR_CB_PAGE_SHIFT 16
#define CQR_CB_PAGE (1u << CQR_CB_PAGE_SHIFT)

struct cqr_table {
    cqr_table_config_t cfg; /* immutable, but for the optimizer's
                               hyperparameters: written under the
                               exclusive lock, read under the lock */
    uint32_t c;             /* chunks (1 for full and hash) */
    uint32_t w;             /* floats per chunk: dim / c */
    uint32_t k;             /* rows per codebook (0 for full) */
    uint32_t ncb;           /* codebooks: 0 full, 1 hash, 2 ce and cqr */
    uint32_t pw;            /* bytes per stored B0 pointer (cqr) */
    uint32_t mvw;           /* cqr: bytes per known-ID map value: c
                               pointers of pw bytes, then (eviction on)
                               the u32 stamp at stamp_off */
    uint32_t stamp_off;     /* cqr with evict_after_phases: where the
                               stamp (phases_done at the ID's last push)
                               sits in a map value; 0 = no stamp */
    pthread_rwlock_t lock;  /* see the file comment */

    cqr_cbstate_t *st;      /* hash/ce/cqr: the live state */

    cqr_idmap_t rowmap;     /* full: ID -> cqr_full_slot_t (row, counter) */
    cqr_rows_t *blocks;     /* full: row blocks of CQR_FULL_BLOCK rows
                               (block 0 may hold fewer: .n rows) */
    size_t nblocks;         /* full: blocks allocated */
    size_t blocks_cap;      /* full: slots in `blocks` */
    uint64_t nrows;         /* full: rows handed out */

    pthread_mutex_t plock;  /* guards the phase and export statistics */
    cqr_phase_t *phase;     /* running phase (set and cleared under the
                               exclusive lock), or NULL */
    cqr_pushlog_t *log;     /* the running phase's push log (pushlog.h;
                               owned by the phase), set and cleared with
                               `phase` */
    uint32_t phases_done;   /* committed phases (exclusive lock) */
    int compact;            /* cqr without eviction: 1 once compacted
                               (cqr_table_compact): phases then build a
                               static set too (exclusive lock) */
    uint64_t rebuilds;      /* static sets built (exclusive lock) */
    int compacting;         /* a compaction runs: no phase may begin
                               (exclusive lock) */
    uint64_t *cmp_new;      /* IDs the map registered while compacting:
                               what stays in it (exclusive lock) */
    size_t cmp_n, cmp_cap;
    int cmp_lost;           /* cmp_new could not grow: the compaction
                               fails (nothing changes) */
    uint64_t examples_at_phase; /* examples_pushed at the last begin */
    double last_inertia;    /* statistics of the last phase (plock) */
    double last_phase_seconds;
    double last_commit_seconds;
    uint64_t examples_prev_phase; /* examples_at_phase before the running
                                     phase began: what a checkpoint taken
                                     during the phase records */

    /* Bounds on the stored values (table_bound.c), under vb_mu: a push
     * whose worst-case step keeps them within the limits skips any
     * per-value check. vb < 0: unknown (the next push rescans). */
    pthread_mutex_t vb_mu;
    double vb;              /* |parameter| */
    double vb_acc;          /* Adagrad accumulator */
    double vb_m;            /* |Adam first moment| */

    struct cqr_par *par;    /* helpers for large lookups/pushes, or NULL */
    struct cqr_budget *budget; /* charged with growth (budget.h), or
                                  NULL; set under the exclusive lock */
    uint64_t charged;       /* bytes charged to budget (exclusive lock) */

    /* Admission and eviction (issue 19). */
    cqr_sketch_t *sketch;   /* push counts of IDs without state of their
                               own (admit_after > 1), or NULL */
    uint32_t skmark;        /* epoch of the sketch's last change (export) */
    uint64_t n_admitted;    /* IDs given state (exclusive lock) */
    uint64_t n_evicted;     /* IDs whose state was freed (exclusive lock) */
    /* Full tables' admission and eviction (table_evict.c). */
    cqr_rows_t *fallback;   /* admit_after > 1: the CQR_FALLBACK_ROWS
                               rows that IDs without a row share (by a
                               hash), trained by their pushes; or NULL */
    uint32_t *fbmark;       /* the fallback rows' change marks */
    uint32_t fbpage;        /* their page's change mark */
    uint64_t fb_seed;       /* seed of the ID -> fallback row hash */
    uint32_t **fstamp;      /* max_ids or ttl_seconds: per block, each
                               row's last push in table-clock seconds
                               (blocks_cap slots); NULL otherwise */
    uint32_t *ffree;        /* rows freed by eviction, reused first (a
                               stack; exclusive lock) */
    size_t nfree;           /* rows in ffree */
    size_t free_cap;        /* slots in ffree */
    uint64_t ttl_hand;      /* the TTL sweep's next row map slot */
    uint32_t clock_fixed;   /* cqr_table_set_clock's time, or 0: the wall
                               clock (relaxed atomic) */

    uint64_t n_lookups;     /* usage counters, relaxed atomics */
    uint64_t n_pushes;
    uint64_t n_examples;

    /* Change tracking and export (see the file comment). */
    pthread_rwlock_t gate;  /* pushes shared, export exclusive */
    uint64_t uid;           /* process-unique table number: export
                               cursors are valid for this table only */
    uint32_t wepoch;        /* current change epoch (relaxed atomics) */
    uint32_t *cbmark;       /* hash/ce/cqr: ncb*c*k row marks */
    uint32_t *cbpage;       /* hash/ce/cqr: ncb*c*cbpages page marks */
    uint32_t cbpages;       /* pages per codebook block */
    uint32_t cb_base_epoch; /* codebooks replaced wholesale (a commit) */
    uint32_t **fmark;       /* full: per block, one row mark per row of
                               the block (blocks_cap slots) */
    uint32_t *fpage;        /* full: one page mark per block (blocks_cap) */
    uint32_t map_base_epoch; /* known-ID map replaced or rehashed */
    uint32_t ps_base_epoch; /* cqr: static set replaced (a rebuild) */
    uint32_t map_floor;     /* insertion records older than this epoch
                               were dropped (or never kept) */
    int ins_on;             /* 1 once the table was exported or imported:
                               only then are insertion records kept, so a
                               table never checkpointed pays nothing
                               (relaxed atomic) */
    uint64_t *ins_slot;     /* slots of the IDs inserted into the known-ID
                               map since map_floor, in epoch order */
    uint32_t *ins_epoch;    /* the epoch of each insertion record */
    size_t ins_n;           /* insertion records held */
    size_t ins_cap;         /* slots in ins_slot / ins_epoch */
    double exp_last_pause;  /* export statistics (plock) */
    double exp_max_pause;
    double exp_last_wait;
    double exp_last_seconds;
    uint64_t exp_count;
    uint64_t exp_last_bytes;
};

/* Stamps a change mark with epoch e (push path: no store when the mark
 * already holds e, so hot rows do not bounce cache lines). */
static inline void cqr_mark(uint32_t *m, uint32_t e)
{
    if (__atomic_load_n(m, __ATOMIC_RELAXED) != e)
        __atomic_store_n(m, e, __ATOMIC_RELAXED);
}

/* ---- table_known.c: known IDs and the growth they cause ---- */

/* Registers the IDs of ids[0..n) that the table (full or cqr) does not
 * know yet: a full table gives each a row at its initial value, a cqr
 * table its hashed pointers. Growth is charged to the budget first
 * (CQR_ELIMIT) and recorded for the next export. On error the IDs before
 * the failing one stay registered. Exclusive lock held. */
int cqr_table_add_known(cqr_table_t *t, const uint64_t *ids, size_t n);

/* Sizes the known-ID map (full or cqr) for n IDs at once, charged to the
 * budget like growth. Callers that register many IDs in the order of
 * their hash (an export's IDs) must call it first: a map that grows as
 * they arrive piles them into probe runs that grow with the map, which
 * made building a 1e7-ID table quadratic. Exclusive lock held. */
int cqr_table_reserve_known(cqr_table_t *t, size_t n);

/* Allocates a full table's blocks (rows and marks) for `rows` rows:
 * block 0 grown, blocks appended. Charges nothing (the callers do).
 * Exclusive access (exclusive lock, or a table not yet shared). */
int cqr_full_reserve(cqr_table_t *t, uint64_t rows);

/* Value bounds (table_bound.c; issue 14, item 5). A push part of n rows
 * of gradients whose largest magnitude is gmax reserves its worst-case
 * step under the table's gate (shared): 0 when every stored value stays
 * finite and within the kind's limit; 1 when the bounds are known but
 * the step would pass a limit (a rescan to exact maxima may admit it); 2
 * when the bounds are unknown (a phase commit forgot them: rescan);
 * CQR_ENONFINITE when it cannot fit whatever they are. Nothing is
 * reserved unless 0 is returned. */
int cqr_bound_reserve(cqr_table_t *t, float gmax, size_t n);
/* Recomputes the bounds from the stored values; takes the table's gate
 * and lock exclusively (the caller holds neither). */
void cqr_bound_rescan(cqr_table_t *t);
/* The stored values were replaced (a phase commit): the next push
 * rescans. Exclusive lock held. */
void cqr_bound_forget(cqr_table_t *t);

/* Re-charges the table's budget to its present growth after a structure
 * was replaced wholesale (a phase commit swaps in a new known-ID map).
 * Exclusive lock held. */
void cqr_table_budget_sync(cqr_table_t *t);

/* Whether `id`, which has no state of its own, gets it with the push
 * being made now: its admit_after-th push (the sketch counts the earlier
 * ones). Lock held (either mode). */
static inline int cqr_admit_ok(const cqr_table_t *t, uint64_t id)
{
    return !t->sketch ||
           cqr_sketch_estimate(t->sketch, id) + 1 >= t->cfg.admit_after;
}

/* A cqr map value's stamp (phases_done at the ID's last push). */
static inline uint32_t cqr_stamp_get(const cqr_table_t *t, const void *v)
{
    uint32_t s;
    memcpy(&s, (const uint8_t *)v + t->stamp_off, 4);
    return s;
}

static inline void cqr_stamp_set(const cqr_table_t *t, void *v, uint32_t s)
{
    memcpy((uint8_t *)v + t->stamp_off, &s, 4);
}

/* Whether a push of `id` (known: the table knows it; v: its map value,
 * or NULL if it has none, as for IDs of the static set) must take
 * the exclusive path first (cqr_table_add_known): an ID to admit now, or
 * (eviction on) an ID whose stamp is older than the current phase. Lock
 * held (either mode). */
static inline int cqr_needs_known(const cqr_table_t *t, int known,
                                  const void *v, uint64_t id)
{
    if (!known)
        return cqr_admit_ok(t, id);
    return t->stamp_off && v && cqr_stamp_get(t, v) != t->phases_done;
}

/* ---- table_static.c: a cqr table's static set ---- */

/* Walks the known IDs of a cqr state: the static set's in slot order
 * (from its key file), then the map's. The state must not change
 * meanwhile (a lock, or a private state). */
typedef struct cqr_known_iter {
    const cqr_table_t *t;
    const cqr_cbstate_t *st;
    cqr_ptrset_reader_t rd;  /* over the static set */
    size_t mpos;             /* position in the map */
    int in_map;              /* the static set is done */
    int rc;                  /* the first error (key file reads) */
} cqr_known_iter_t;

void cqr_known_iter_init(cqr_known_iter_t *it, const cqr_table_t *t,
                         const cqr_cbstate_t *st);
/* 1 and the next ID with its c pointers (and *v its map value, or NULL
 * for the static set's IDs); 0 at the end or on an error (it->rc). */
int cqr_known_iter_next(cqr_known_iter_t *it, uint64_t *id, uint32_t *ptrs,
                        void **v);
void cqr_known_iter_free(cqr_known_iter_t *it);

/* Known IDs of a cqr state: the static set's and the map's. */
uint64_t cqr_state_known(const cqr_cbstate_t *st);

/* Moves every ID of a private state's map (its pointers as they are) into
 * a new static set, built with the seed of rebuild number gen; replaces
 * any static set it had. On error the state is unchanged. CQR_ENOMEM,
 * CQR_EIO (the key file). */
int cqr_state_make_static(const cqr_table_t *t, cqr_cbstate_t *st,
                          uint64_t gen);

/* Frees a static set and the set itself (NULL: nothing). */
void cqr_ptrset_destroy(cqr_ptrset_t *ps);

/* Notes that the live map registered `id` while a compaction runs (it
 * stays in the map when the compaction installs). Exclusive lock held. */
void cqr_compact_note(cqr_table_t *t, uint64_t id);

/* ---- table_evict.c: a full table's admission and eviction ---- */

/* The table clock in seconds: cqr_table_set_clock's time if set, else
 * the wall clock (CLOCK_REALTIME, so that stamps survive a restart). */
uint32_t cqr_table_now(const cqr_table_t *t);

/* Whether a full table keeps last-push stamps (max_ids or ttl_seconds). */
static inline int cqr_full_evicts(const cqr_table_config_t *c)
{
    return c->kind == CQR_KIND_FULL && (c->max_ids || c->ttl_seconds);
}

/* Allocates a new full table's fallback rows (admit_after > 1) at their
 * deterministic initial values. Exclusive access. CQR_ENOMEM. */
int cqr_full_fallback_create(cqr_table_t *t);

/* Registers the IDs of a full push that need the exclusive path: IDs
 * whose row expired (ttl_seconds) are evicted first; IDs without a row
 * get one if admitted now (beyond max_ids rows the least recently
 * pushed row of a sample is evicted first, never one of ids[]); then a
 * bounded TTL sweep frees expired rows. Exclusive lock held. Errors as
 * cqr_table_add_known. */
int cqr_full_add_known(cqr_table_t *t, const uint64_t *ids, size_t n);

/* Rebuilds the free-row stack of an imported full table that evicts:
 * the rows below nrows that no map slot holds. CQR_ENOMEM, or
 * CQR_ECORRUPT if two IDs hold one row. */
int cqr_full_free_rebuild(cqr_table_t *t);

/* Gives `id` a row (a freed one first) starting from its fallback row
 * (admission on) or its initial value, stamped `now`. Exclusive lock
 * held (table_known.c). */
int cqr_full_new_row(cqr_table_t *t, uint64_t id, uint32_t now);

/* Records that slot `slot` of the known-ID map m changed (an insert, a
 * delete, a stamp): the next export writes it (table_known.c).
 * Exclusive lock held. */
void cqr_track_slot(cqr_table_t *t, const cqr_idmap_t *m, size_t slot);

/* B0 pointer j of a stored pointer array. */
static inline uint32_t cqr_ptr_get(const uint8_t *v, uint32_t pw, uint32_t j)
{
    switch (pw) {
    case 1: return v[j];
    case 2: return (uint32_t)v[2 * j] | (uint32_t)v[2 * j + 1] << 8;
    default:
        return (uint32_t)v[4 * j] | (uint32_t)v[4 * j + 1] << 8 |
               (uint32_t)v[4 * j + 2] << 16 | (uint32_t)v[4 * j + 3] << 24;
    }
}

static inline void cqr_ptr_set(uint8_t *v, uint32_t pw, uint32_t j, uint32_t p)
{
    for (uint32_t b = 0; b < pw; b++)
        v[pw * j + b] = (uint8_t)(p >> (8 * b));
}

/* ---- table.c: the tables of a multi-table call ---- */

/* The distinct tables of a call's parts in lock order (by uid): calls
 * that hold several tables' gates or locks take them in this order, so
 * no two wait on each other in a cycle. A table of several parts is
 * locked once (rwlocks are not recursive). */
typedef struct cqr_tableset {
    cqr_table_t **t;        /* n distinct tables, by uid */
    size_t n;
    cqr_table_t *inl[8];    /* storage for small sets */
} cqr_tableset_t;

/* CQR_ENOMEM (nothing to free then). */
int cqr_tableset_init(cqr_tableset_t *s, const cqr_part_t *parts, size_t np);
void cqr_tableset_free(cqr_tableset_t *s);
/* Takes every table's gate (gate != 0) or lock, shared, in order; unlock
 * releases them in reverse order. */
void cqr_tableset_lock(const cqr_tableset_t *s, int gate);
void cqr_tableset_unlock(const cqr_tableset_t *s, int gate);

/* ---- table.c: codebook states ---- */

/* Deep copy of src's seeds and codebooks; the copy's ID map is empty. */
int cqr_cbstate_clone(const cqr_table_t *t, const cqr_cbstate_t *src,
                      cqr_cbstate_t **out);
void cqr_cbstate_free(const cqr_table_t *t, cqr_cbstate_t *st);

/* ---- table_push.c ---- */

/* Applies a push to state st (codebook kinds) with optimizer config o:
 * gradients of the same codebook row summed, then one step per row. The
 * IDs' pointers are read from st->ids (hashed if absent). Caller
 * guarantees st is not freed meanwhile (shared table lock, or st is
 * private). */
void cqr_cb_apply(cqr_table_t *t, cqr_cbstate_t *st,
                  const cqr_optim_config_t *o, const uint64_t *ids,
                  const float *grads, size_t n);

/* Monotonic seconds (table.c). */
double cqr_now(void);

/* ---- table.c: what a cluster phase asks of its table (cluster.c) ----
 * A phase never writes a table's fields: it starts, reads the known IDs,
 * commits or ends through these. */

/* Starts phase ph of t: snapshots the codebooks and seeds into *snap
 * (the phase's own copy), attaches `log` so that every push from now on
 * is also logged there, records the schedule (a checkpoint taken during
 * the phase keeps the pre-phase one) and gives the phase its number
 * (committed phases + 1). CQR_EBUSY if a phase of t is running, or the
 * clone's error; nothing changes then. */
int cqr_table_phase_start(cqr_table_t *t, cqr_phase_t *ph, cqr_pushlog_t *log,
                          cqr_cbstate_t **snap, uint32_t *phase_no);

/* Copies the known IDs of a cqr table and their B0 pointers: *ids (n
 * IDs) and *ptrs (n x c pointers), which the caller frees. Pointers change
 * only at commits, so during a phase the copy is exact. With eviction on
 * (evict_after_phases K) the copy leaves out the IDs that phase phase_no
 * evicts (stamp + K < phase_no), and *stamps (if non-NULL) gets the
 * stamps of those copied (NULL when the table keeps none). CQR_ENOMEM. */
int cqr_table_known_pointers(cqr_table_t *t, uint32_t phase_no,
                             uint64_t **ids, uint32_t **ptrs,
                             uint32_t **stamps, size_t *n);

/* Called by a commit with the table held exclusively, before the swap:
 * the replay of the last logged pushes onto the new state. */
typedef int (*cqr_phase_finish_cb)(void *ud);

/* Commits a phase: with the table held exclusively, calls finish(ud);
 * then swaps `next` in as the live state (the table owns it from then on),
 * ends the phase (no more logging), re-charges the budget for the new
 * known-ID map, counts res->phase_no as done, marks every codebook row
 * and pointer changed for the next export, and records res->inertia and
 * the timings, which it also writes to res->seconds_commit and
 * res->seconds_total (from t_begin). The old state is freed after the
 * lock is released. If finish fails nothing changes and its error is
 * returned (the caller still owns next). */
int cqr_table_phase_commit(cqr_table_t *t, cqr_cbstate_t *next,
                           cqr_phase_finish_cb finish, void *ud,
                           double t_begin, cqr_phase_result_t *res);

/* Ends phase ph without a commit, if it is t's running phase: pushes are
 * no longer logged and the table keeps its live state. After it returns
 * no push touches the phase's log. */
void cqr_table_phase_end(cqr_table_t *t, const cqr_phase_t *ph);

/* Tags of seeds derived from the table seed (cqr_derive_seed): each use
 * of the seed gets its own stream. Never renumber: tables and phases
 * would no longer be what their checkpoints and digests say. */
enum {
    CQR_TAG_SEED_P = 1,    /* the hashed B0 pointers, per chunk */
    CQR_TAG_SEED_H = 2,    /* the B1 hash of a new table, per chunk */
    CQR_TAG_CB_INIT = 3,   /* initial codebook values, per block */
    CQR_TAG_FULL_INIT = 4, /* a full table row's initial value, per ID */
    CQR_TAG_ADMIT = 5,     /* the admission sketch's hashes */
    CQR_TAG_FALLBACK = 6,  /* a full table's fallback rows: hash, init */
    CQR_TAG_EVICT = 7,     /* a full table's eviction samples */
    CQR_TAG_SAMPLE = 16,   /* a phase's sample of known IDs */
    CQR_TAG_KMEANS = 17,   /* a phase's k-means seeding, per chunk */
    CQR_TAG_RESEED = 18,   /* a phase's new B1 hash, per chunk */
    CQR_TAG_REBUILD = 19   /* a static set's hashing, per rebuild */
};

/* IDs per group of the lookup and push pipelines. The known-ID map and
 * the rows of a full table are far larger than the caches: every probe
 * and row is a miss to memory. Requesting a whole group's lines before
 * using the first one overlaps those misses (about 4x faster gathers at
 * 1e6 IDs). */
#define CQR_LOOKUP_GROUP 16
/* cqr_cqr_resolve's distance: pilots are requested 2 x this many IDs
 * ahead of their use, values this many. 32 rather than 16 (when the
 * pipeline ran in groups of this size): at 1e8 compacted IDs the pilot's
 * miss was not over a group later (lookups 3.59 against 2.26 M/s, pushes
 * 0.91 against 0.39, one thread, one run each; at 1e7 in the map 6.36 /
 * 5.76 against 5.89 / 5.36). */
#define CQR_RESOLVE_GROUP 32

/* Splitting work over helpers: below CQR_PAR_MIN IDs a call runs alone;
 * above, lookups and a push's resolve pass go in parts of about
 * CQR_PAR_PART IDs (more parts than threads, so that a late helper still
 * finds work). */
#define CQR_PAR_MIN 512
#define CQR_PAR_PART 256

/* Items [*b, *e) of part i when n items are split into `parts`. */
static inline void cqr_part_range(size_t n, unsigned parts, unsigned i,
                                  size_t *b, size_t *e)
{
    *b = n * i / parts;
    *e = n * (i + 1) / parts;
}

/* Parts of about CQR_PAR_PART for a split of n items of t's call by
 * ranges, or 0 when the call runs alone (no helpers, or fewer than
 * CQR_PAR_MIN). */
static inline unsigned cqr_range_parts(const cqr_table_t *t, size_t n)
{
    if (!cqr_par_helpers(t->par) || n < CQR_PAR_MIN)
        return 0;
    return (unsigned)((n + CQR_PAR_PART - 1) / CQR_PAR_PART);
}

/* The hashed B0 pointer and the B1 row of `id` in chunk i of state st. */
static inline uint32_t cqr_hash_p(const cqr_table_t *t,
                                  const cqr_cbstate_t *st, uint64_t id,
                                  uint32_t i)
{
    return cqr_fastrange(cqr_hash_id(id, st->seed_p[i]), t->k);
}

static inline uint32_t cqr_hash_h(const cqr_table_t *t,
                                  const cqr_cbstate_t *st, uint64_t id,
                                  uint32_t i)
{
    return cqr_fastrange(cqr_hash_id(id, st->seed_h[i]), t->k);
}

/* cqr tables: the B0 pointers p[0..c) of `id` in state st; returns 1 if
 * the table knows it (the static set's fingerprint at its slot matches,
 * or the map holds it), else 0 and its hashed pointers. *vout gets its
 * map value (NULL for the static set's IDs and unknown IDs). */
static inline int cqr_cqr_find(const cqr_table_t *t, const cqr_cbstate_t *st,
                               uint64_t id, uint32_t *p, const uint8_t **vout)
{
    const cqr_ptrset_t *ps = st->ps;
    /* The map first: an ID registered after the static set was built
     * may match a fingerprint of it, and keeps its own pointers. */
    const uint8_t *v = st->ids.count ? cqr_idmap_find(&st->ids, id) : NULL;
    *vout = v;
    if (!v && ps && ps->pm.n) {
        uint64_t vbit;
        int ok;
        cqr_packmap_lookup(&ps->pm, id, &vbit, &ok);
        if (ok) {
            for (uint32_t i = 0; i < t->c; i++)
                p[i] = cqr_ptrset_ptr(ps, vbit, i);
            return 1;
        }
    }
    for (uint32_t i = 0; i < t->c; i++)
        p[i] = v ? cqr_ptr_get(v, t->pw, i) : cqr_hash_p(t, st, id, i);
    return v != NULL;
}

/* Whether a cqr state knows `id`. */
static inline int cqr_cqr_known(const cqr_table_t *t, const cqr_cbstate_t *st,
                                uint64_t id)
{
    uint32_t p[CQR_MAX_CHUNKS];
    const uint8_t *v;
    return cqr_cqr_find(t, st, id, p, &v);
}

/* Called by cqr_cqr_resolve for ID j: its B0 pointers p (valid during the
 * call), whether the table knows it and its map value (as cqr_cqr_find). */
typedef void (*cqr_ptrs_fn)(void *ud, size_t j, const uint32_t *p, int known,
                            const uint8_t *v);

/* cqr tables: cqr_cqr_find for ids[0..n) in a three-stage software
 * pipeline, one ID at a time: while ID j's pointers are used, ID j +
 * CQR_RESOLVE_GROUP's static value is requested and ID j + 2 x
 * CQR_RESOLVE_GROUP's pilot and map slot, so that every miss to memory is
 * in flight well before it is needed, and the requests are spread among
 * the work rather than issued a group at a time (the same throughput or
 * better at 1e8 compacted IDs, and half the p999 through the server).
 * The distance hardly matters beyond 8 IDs: at 1e8 the two misses an ID
 * themselves bound the rate (static-set lookups alone: 11-14 M/s at
 * distances 8 to 64 in one process, 7.8 without prefetching). */
static inline void cqr_cqr_resolve(const cqr_table_t *t,
                                   const cqr_cbstate_t *st,
                                   const uint64_t *ids, size_t n,
                                   cqr_ptrs_fn fn, void *ud)
{
    enum { D = CQR_RESOLVE_GROUP, R = 4 * CQR_RESOLVE_GROUP };
    const cqr_ptrset_t *ps = st->ps;
    const int stat = ps && ps->pm.n > 0;
    const cqr_idmap_t *d = st->ids.count ? &st->ids : NULL;
    cqr_pm_probe_t pr[R]; /* ring: the probe of ID i at i % R */
    uint64_t vb[R];       /* and its value's bit offset */
    uint32_t p[CQR_MAX_CHUNKS];
    /* Step k begins ID k, locates ID k - D and uses ID k - 2 x D. */
    for (size_t k = 0; k < n + 2 * D; k++) {
        if (k < n) {
            if (stat)
                cqr_packmap_begin(&ps->pm, ids[k], &pr[k % R]);
            if (d)
                cqr_idmap_prefetch(d, ids[k]);
        }
        if (stat && k >= D && k - D < n)
            cqr_packmap_locate(&ps->pm, &pr[(k - D) % R], &vb[(k - D) % R]);
        if (k < 2 * D)
            continue;
        const size_t j = k - 2 * D;
        const uint64_t id = ids[j];
        const uint8_t *v = d ? cqr_idmap_find(d, id) : NULL;
        if (!v && stat &&
            cqr_packmap_fp_ok(&ps->pm, pr[j % R].h, vb[j % R])) {
            for (uint32_t i = 0; i < t->c; i++)
                p[i] = cqr_ptrset_ptr(ps, vb[j % R], i);
            fn(ud, j, p, 1, NULL);
            continue;
        }
        for (uint32_t i = 0; i < t->c; i++)
            p[i] = v ? cqr_ptr_get(v, t->pw, i) : cqr_hash_p(t, st, id, i);
        fn(ud, j, p, v != NULL, v);
    }
}

/* The B0 pointers p[0..c) and B1 rows h[0..c) of `id` in state st:
 * learned (stored) pointers for known cqr IDs, hashed otherwise (p is
 * left alone for hash tables). Returns 0 for a cqr ID the table does not
 * know, 1 otherwise; *vout gets its map value (cqr_cqr_find). */
static inline int cqr_cb_pointers_v(const cqr_table_t *t,
                                    const cqr_cbstate_t *st, uint64_t id,
                                    uint32_t *p, uint32_t *h,
                                    const uint8_t **vout)
{
    int known = 1;
    *vout = NULL;
    if (t->cfg.kind == CQR_KIND_CQR)
        known = cqr_cqr_find(t, st, id, p, vout);
    else if (t->ncb == 2)
        for (uint32_t i = 0; i < t->c; i++)
            p[i] = cqr_hash_p(t, st, id, i);
    for (uint32_t i = 0; i < t->c; i++)
        h[i] = cqr_hash_h(t, st, id, i);
    return known;
}

static inline int cqr_cb_pointers(const cqr_table_t *t,
                                  const cqr_cbstate_t *st, uint64_t id,
                                  uint32_t *p, uint32_t *h)
{
    const uint8_t *v;
    return cqr_cb_pointers_v(t, st, id, p, h, &v);
}

/* Full tables: the block holding row `row`, and the row's index in it. */
static inline cqr_rows_t *cqr_full_block(const cqr_table_t *t, uint32_t row,
                                         uint32_t *local)
{
    *local = row & (CQR_FULL_BLOCK - 1);
    return &t->blocks[row >> CQR_FULL_BLOCK_SHIFT];
}

/* Full tables: the value of a row map slot. The row's seqlock counter
 * lives beside the ID and the row index, so that a lookup touches the
 * slot's line and the row's own lines only (rows.h, CQR_ROWS_OWN_SEQ). */
typedef struct cqr_full_slot {
    uint32_t row;   /* the ID's row */
    uint32_t seq;   /* the row's seqlock counter (rows.h) */
} cqr_full_slot_t;

/* Full tables: the slot of `id`, or NULL if the table does not know it.
 * Lock held (either mode); valid until the lock is released. */
static inline cqr_full_slot_t *cqr_full_find(const cqr_table_t *t,
                                             uint64_t id)
{
    return cqr_idmap_find(&t->rowmap, id);
}

/* Full tables: the deterministic initial value of `id`'s row (what a
 * lookup of an unknown ID returns, and what its row starts from). */
static inline void cqr_full_init_row(const cqr_table_t *t, uint64_t id,
                                     float *out)
{
    cqr_rng_t rng;
    cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, CQR_TAG_FULL_INIT, id));
    for (uint32_t j = 0; j < t->cfg.dim; j++)
        out[j] = cqr_rng_sym(&rng, t->cfg.init_scale);
}

/* Full tables with admission: the fallback row of `id`. */
static inline uint32_t cqr_full_fb_row(const cqr_table_t *t, uint64_t id)
{
    return cqr_fastrange(cqr_hash_id(id, t->fb_seed), CQR_FALLBACK_ROWS);
}

/* Full tables: what a lookup of an ID without a row returns: its
 * fallback row (admission on) or its initial value. Lock held. */
static inline void cqr_full_absent_row(const cqr_table_t *t, uint64_t id,
                                       float *out)
{
    if (t->fallback)
        cqr_rows_read(t->fallback, cqr_full_fb_row(t, id), out);
    else
        cqr_full_init_row(t, id, out);
}

/* Full tables: whether row `row` was last pushed ttl_seconds or more
 * before `now` (never without ttl_seconds). Lock held. */
static inline int cqr_full_expired(const cqr_table_t *t, uint32_t row,
                                   uint32_t now)
{
    if (!t->cfg.ttl_seconds)
        return 0;
    uint32_t s = __atomic_load_n(
        &t->fstamp[row >> CQR_FULL_BLOCK_SHIFT][row & (CQR_FULL_BLOCK - 1)],
        __ATOMIC_RELAXED);
    return (uint64_t)s + t->cfg.ttl_seconds <= now;
}

/* Pooled calls: 0 if the bag offsets are valid for n IDs (offsets[0] ==
 * 0, none decreasing, none past n), else CQR_EINVAL. */
static inline int cqr_bags_check(const uint32_t *offsets, size_t nbags,
                                 size_t n)
{
    if (nbags == 0)
        return 0;
    if (!offsets || offsets[0] != 0)
        return CQR_EINVAL;
    for (size_t b = 1; b < nbags; b++) {
        if (offsets[b] < offsets[b - 1] || offsets[b] > n)
            return CQR_EINVAL;
    }
    return 0;
}

/* End of bag b: the next bag's offset, or n for the last bag. */
static inline size_t cqr_bag_end(const uint32_t *offsets, size_t nbags,
                                 size_t n, size_t b)
{
    return b + 1 < nbags ? offsets[b + 1] : n;
}

#endif
