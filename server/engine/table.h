/* table.h -- embedding tables: full, hash, ce and cqr (the engine's API).
 *
 * A table maps arbitrary 64-bit IDs to `dim` floats. Kinds (DESIGN.md s1):
 *   full  one row per ID, materialised at the ID's first push; before
 *         that a lookup returns the row's deterministic initial value.
 *   hash  one codebook of `rows` rows, row = hash(id).
 *   ce    two hashed codebooks B0, B1 of `rows` rows, `chunks` chunks:
 *         e(id)[i] = B0[p(id,i)][i] + B1[h(id,i)][i].
 *   cqr   as ce, but cluster phases learn the pointers p(id,i) of every
 *         known ID (an ID that has received a gradient).
 *
 * Threading: every function here is safe to call from any number of
 * threads at once on the same table, except cqr_table_destroy, which the
 * caller must order after every other call on the table. Lookups never
 * wait for each other; pushes to the same codebook row (or full row) are
 * serialised per row; a cluster phase computes on a snapshot without
 * holding the table, and its commit excludes lookups and pushes only for
 * the swap and the replay of the pushes that arrived during the phase.
 *
 * Errors: functions return 0 or a negative CQR_E* code (err.h); on error
 * the table is unchanged and no output is written, unless stated.
 *
 * Determinism: the same config (seed included), the same sequence of
 * calls and the same thread counts give bit-identical tables on every
 * machine (cqr_table_digest proves it).
 */
#ifndef CQR_TABLE_H
#define CQR_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "kmeans.h"
#include "optim.h"

typedef enum cqr_kind {
    CQR_KIND_FULL = 0,
    CQR_KIND_HASH = 1,
    CQR_KIND_CE = 2,
    CQR_KIND_CQR = 3
} cqr_kind_t;

typedef enum cqr_pooling {
    CQR_POOL_SUM = 0,
    CQR_POOL_MEAN = 1
} cqr_pooling_t;

typedef struct cqr_table_config {
    cqr_kind_t kind;        /* table kind */
    uint32_t dim;           /* floats per embedding, 1..CQR_MAX_DIM */
    uint32_t chunks;        /* ce/cqr: chunks, divides dim; 1 otherwise */
    uint32_t rows;          /* hash/ce/cqr: rows per codebook (k),
                               1..CQR_MAX_ROWS; 0 for full */
    uint64_t seed;          /* seeds hashing, init and cluster phases */
    float init_scale;       /* initial values uniform in (-s, s) */
    cqr_optim_config_t optim; /* optimizer and its parameters */
    /* Cluster phases (cqr only). */
    uint32_t cluster_iters;        /* k-means iterations per phase, at
                                      most */
    float cluster_tol;             /* k-means stops once an iteration
                                      lowers the inertia by less than this
                                      fraction; 0 = every iteration runs */
    uint32_t cluster_sample;       /* sample points per centroid */
    uint32_t cluster_threads;      /* worker threads of a phase */
    uint32_t reset_optimizer;      /* 1: zero codebook optimizer state at
                                      each commit; 0: keep it (as the
                                      published code does) */
    uint64_t schedule_every;       /* a phase is due every N pushed
                                      examples; 0 = no schedule */
    uint32_t schedule_max_phases;  /* no schedule after this many phases;
                                      0 = no limit */
    /* Memory per ID (issue 19): admission and eviction. */
    uint32_t admit_after;          /* cqr: an ID gets learned pointers
                                      of its own at its N-th push; before,
                                      it uses its hashed pointers. 0 or 1:
                                      at the first push (no sketch). At
                                      most CQR_MAX_ADMIT_AFTER. full: an
                                      ID gets a row at its N-th push;
                                      before, it shares a hashed row of a
                                      fallback codebook of
                                      CQR_FALLBACK_ROWS rows, which its
                                      pushes train and its lookups return
                                      (table_evict.c) */
    uint32_t evict_after_phases;   /* cqr: an ID not pushed during the
                                      last K phases loses its learned
                                      pointers at the next commit; 0 =
                                      never */
    uint64_t max_ids;              /* full: at most this many rows; a new
                                      row beyond frees the least recently
                                      pushed of a sample (sampled LRU,
                                      table_evict.c); 0 = no limit */
    uint32_t ttl_seconds;          /* full: rows not pushed for this many
                                      seconds (table clock,
                                      cqr_table_set_clock) are gone to
                                      lookups at once and freed at the
                                      next registration of new IDs; 0 =
                                      never */
    uint32_t compact;              /* cqr without evict_after_phases: 1
                                      asks the server to compact the
                                      table (cqr_table_compact) once its
                                      first phase commits; the engine
                                      only keeps and checks it */
} cqr_table_config_t;

/* Push counts saturate at 255: the sketch's counters are bytes. */
#define CQR_MAX_ADMIT_AFTER 255u
/* Rows of a full table's fallback codebook (admit_after > 1). */
#define CQR_FALLBACK_ROWS 1024u

#define CQR_MAX_DIM 4096u
#define CQR_MAX_CHUNKS 256u
#define CQR_MAX_ROWS (1u << 24)

typedef struct cqr_table cqr_table_t;

typedef struct cqr_table_stats {
    uint64_t known_ids;        /* IDs that received a gradient (full, cqr;
                                  0 for hash and ce, which do not track) */
    uint64_t param_bytes;      /* parameter floats, in bytes */
    uint64_t optim_bytes;      /* optimizer state, in bytes */
    uint64_t index_bytes;      /* known-ID map, in bytes */
    double bytes_per_known_id; /* index_bytes / known_ids (0 if none) */
    uint64_t lookups;          /* IDs looked up (pooled: every ID) */
    uint64_t pushes;           /* IDs pushed */
    uint64_t examples_pushed;  /* rows of plain pushes + bags of pooled */
    uint32_t phases_done;      /* committed cluster phases */
    uint32_t phase_running;    /* 1 while a phase is between begin and
                                  commit/abort */
    double last_inertia;       /* mean k-means inertia of the last phase */
    double last_phase_seconds; /* wall time of the last phase */
    double last_commit_seconds; /* pause of the last phase's commit */
    uint64_t ids_admitted;     /* IDs given state of their own (full, cqr;
                                  with admit_after <= 1 every new known
                                  ID) */
    uint64_t ids_evicted;      /* IDs whose state was freed (eviction) */
    uint64_t static_ids;       /* cqr, compacted: known IDs in the static
                                  set (the rest were registered since the
                                  last compaction or phase) */
    uint64_t rebuilds;         /* cqr: static sets built (compactions and
                                  phases of a compacted table) */
    uint64_t sketch_bytes;     /* the admission sketch (admit_after > 1) */
} cqr_table_stats_t;

/* The default relative inertia tolerance of a phase's k-means. */
#define CQR_DEFAULT_CLUSTER_TOL 1e-3f

/* The default initial scale: values uniform in (-0.01, 0.01), every kind
 * (before issue 15: 1/sqrt(dim)). */
#define CQR_DEFAULT_INIT_SCALE 0.01f

/* Fills `cfg` with the defaults for `kind` and `dim`: chunks 4 (ce, cqr;
 * fewer if dim is not divisible), rows 1024 (hash, ce, cqr), seed 0,
 * init_scale CQR_DEFAULT_INIT_SCALE, Adam lr 1e-3 betas 0.9/0.999 eps
 * 1e-8, cluster at most 25 iterations with tolerance
 * CQR_DEFAULT_CLUSTER_TOL, 200 samples per centroid, 1 thread, no
 * schedule; cqr tables zero their codebooks' optimizer state at each
 * phase (reset_optimizer 1), the other kinds keep it (they have no
 * phases). */
void cqr_table_config_default(cqr_table_config_t *cfg, cqr_kind_t kind,
                              uint32_t dim);

/* Validates a config. On CQR_EINVAL writes a one-line reason to
 * why[0..whylen) (if why is non-NULL). */
int cqr_table_config_check(const cqr_table_config_t *cfg, char *why,
                           size_t whylen);

/* Memory the table will allocate at creation (codebooks and their
 * optimizer state), for limits checked before allocating. */
uint64_t cqr_table_config_bytes(const cqr_table_config_t *cfg);

struct cqr_budget;

/* Makes the table charge its growth beyond the creation-time bytes (a
 * full table's row blocks and row map, a cqr table's known-ID map) to
 * `budget` (budget.h), which must outlive the table. The growth the table
 * already has is charged at once, even past the limit; from then on a
 * push that needs memory beyond the limit fails with CQR_ELIMIT before
 * allocating (the IDs of that push registered before the refusal keep
 * their initial rows or hashed pointers, which is what a lookup returned
 * for them already; no gradient is applied). Destroying the table refunds
 * the charge. NULL detaches (and refunds). A cluster phase's transient
 * copies are not charged. */
void cqr_table_set_budget(cqr_table_t *t, struct cqr_budget *budget);

struct cqr_par;

/* Lets large lookups and pushes of this table run their independent parts
 * on the helpers of `par` (par.h), which must outlive the table (or be
 * detached with NULL first). Results are bit-identical with and without:
 * a lookup is split by ID ranges; a codebook push by chunks (each chunk's
 * rows still sum their gradients in ID order); a full push steps disjoint
 * rows. Set it before the table is shared between threads. */
void cqr_table_set_par(cqr_table_t *t, struct cqr_par *par);

/* Bytes of growth that the calling thread's last push refused with
 * CQR_ELIMIT asked the budget for (a full table's row block, or a
 * known-ID map's growth); 0 before any. For the error's message. */
uint64_t cqr_table_refused_bytes(void);

/* Bytes the table has grown by since creation (the part a budget is
 * charged with). */
uint64_t cqr_table_grown_bytes(cqr_table_t *t);

/* Sets the table clock that full tables' eviction stamps and expires by
 * (ttl_seconds, max_ids) to `seconds` (Unix time), from now on until set
 * again; 0 goes back to the wall clock (the default). Tests and replays
 * set it so that what is evicted depends on their calls only. Any
 * thread; no lock. */
void cqr_table_set_clock(cqr_table_t *t, uint32_t seconds);

/* Short name of a kind ("full", "hash", "ce", "cqr") and back; parse
 * returns CQR_EINVAL for an unknown name. Same for optimizers ("sgd",
 * "adagrad", "adam"). */
const char *cqr_kind_name(cqr_kind_t kind);
int cqr_kind_parse(const char *name, cqr_kind_t *out);
const char *cqr_optim_name(cqr_optim_kind_t kind);
int cqr_optim_parse(const char *name, cqr_optim_kind_t *out);

/* Creates a table; *out owns it until cqr_table_destroy. */
int cqr_table_create(const cqr_table_config_t *cfg, cqr_table_t **out);
void cqr_table_destroy(cqr_table_t *t);

/* The table's config. Every field is immutable for the table's life but
 * the optimizer's hyperparameters (cqr_table_update_optim): read those
 * through cqr_table_optim. */
const cqr_table_config_t *cqr_table_config(const cqr_table_t *t);

/* The optimizer config in force now (a consistent copy). */
void cqr_table_optim(cqr_table_t *t, cqr_optim_config_t *out);

/* Replaces the optimizer's hyperparameters (lr, betas, eps, weight
 * decay) with next's; the kind must stay (CQR_EINVAL otherwise) and the
 * values must pass cqr_table_config_check (CQR_EINVAL, a one-line reason
 * in why). The optimizer state (moments, step counts) is kept. Pushes
 * that return after this call returns use the new values, pushes that
 * returned before it used the old ones (none uses a mix); a running
 * phase replays the pushes it logged with the values in force at the
 * replay. Exports and the digest include the new values. */
int cqr_table_update_optim(cqr_table_t *t, const cqr_optim_config_t *next,
                           char *why, size_t whylen);

/* Writes n x dim floats to out. Never allocates per ID and never grows the
 * table. */
int cqr_table_lookup(cqr_table_t *t, const uint64_t *ids, size_t n,
                     float *out);

/* Applies n x dim gradients: rows hit more than once in this call get the
 * sum of their gradients and then one optimizer step. CQR_ENONFINITE if
 * any gradient is NaN or Inf (nothing applied). CQR_EBUSY if a cluster
 * phase's push log is full (nothing applied; retry after the phase). */
int cqr_table_push(cqr_table_t *t, const uint64_t *ids, const float *grads,
                   size_t n);

/* Pooled (embedding-bag) variants. Bag b is ids[offsets[b] ..
 * offsets[b+1]) and the last bag runs to n; offsets[0] == 0 and offsets
 * must not decrease (CQR_EINVAL otherwise). Lookup writes nbags x dim
 * pooled vectors (an empty bag pools to zeros). Push takes nbags x dim
 * gradients of the pooled outputs: every ID of bag b receives g_b (sum) or
 * g_b / |bag| (mean). */
int cqr_table_lookup_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                            const uint32_t *offsets, size_t nbags,
                            cqr_pooling_t pool, float *out);
int cqr_table_push_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                          const uint32_t *offsets, size_t nbags,
                          cqr_pooling_t pool, const float *bag_grads);

/* ---- Several tables in one call -----------------------------------------
 * One request of a trainer carries a part per table (DESIGN.md s4b). The
 * parts of a call give the same results as the single-table calls above,
 * one per part in part order (a table may appear in several parts: they
 * are applied one after the other). A lookup's parts run on the helpers
 * (par.h) at once; a push applies its parts in order, each split over the
 * helpers as a single push is. */
typedef struct cqr_part {
    cqr_table_t *t;           /* the part's table */
    const uint64_t *ids;      /* n IDs */
    size_t n;
    const uint32_t *offsets;  /* NULL: a plain part (n rows); else a
                                 pooled part of nbags bags (as
                                 cqr_table_lookup_pooled) */
    size_t nbags;
    cqr_pooling_t pool;       /* pooled parts */
    float *out;               /* lookup: n or nbags rows of t's dim */
    const float *grads;       /* push: n or nbags rows of t's dim */
} cqr_part_t;

/* Looks up every part. Every part is checked before any is looked up: on
 * error *bad (if non-NULL) is the index of the failing part and nothing
 * is written. The lookup of each table is consistent (no phase commit in
 * the middle of a part). */
int cqr_tables_lookup(const cqr_part_t *parts, size_t nparts, size_t *bad);

/* Pushes every part, all or nothing: on any error (CQR_EINVAL,
 * CQR_ENONFINITE, CQR_EBUSY, CQR_ELIMIT, CQR_ENOMEM) *bad (if non-NULL) is
 * the failing part's index and no gradient of any part is applied. (As
 * for a single push, IDs a full or cqr table registered for the request
 * before a CQR_ELIMIT or CQR_ENOMEM stay known at their initial values.)
 * An export sees the push whole or not at all. */
int cqr_tables_push(const cqr_part_t *parts, size_t nparts, size_t *bad);

void cqr_table_stats(cqr_table_t *t, cqr_table_stats_t *st);

/* A 64-bit digest of the table's complete state: config, seeds,
 * codebooks, optimizer state, known IDs and their pointers or rows, phase
 * counters. Equal digests mean equal tables. Excludes the usage counters
 * (lookups, pushes). */
int cqr_table_digest(cqr_table_t *t, uint64_t *out);

/* 1 when the table's schedule says a phase is due now (enough examples
 * pushed since the last phase, phase limit not reached, none running). */
int cqr_table_cluster_due(cqr_table_t *t);

/* ---- Cluster phases (cqr tables) -------------------------------------
 *
 * A phase is begin -> run -> commit (or destroy to abort):
 *   begin   short; snapshots the codebooks and starts logging pushes.
 *           CQR_EUNSUPPORTED for kinds other than cqr, CQR_EBUSY if a
 *           phase of this table is already running.
 *   run     long; k-means and the assignment of every known ID on the
 *           snapshot, on the calling thread plus cluster_threads - 1
 *           workers. Holds no table lock for long; lookups and pushes go
 *           on against the live state (pushes are also logged).
 *   commit  short; replays the logged pushes onto the new state and swaps
 *           it in. After commit every push acknowledged before commit
 *           returned is reflected in the table.
 * cqr_phase_destroy frees the phase; if it was not committed the table
 * keeps its live state and stops logging. Exactly one thread drives a
 * phase.
 *
 * Cancel: cqr_phase_cancel may be called from any thread while the phase
 * exists (the caller keeps it alive). run then stops within one block of
 * k-means or assignment work per thread (milliseconds) and returns
 * CQR_ECANCELED, and commit refuses with CQR_ECANCELED; destroying the
 * phase then leaves the table as if the phase had never begun, with every
 * push made meanwhile applied (they were applied to the live state). Only
 * the schedule's count of examples restarts at the cancelled phase's
 * begin, so a cancelled scheduled phase is not retried at once. */
typedef struct cqr_phase cqr_phase_t;

typedef struct cqr_phase_result {
    uint32_t phase_no;          /* 1 for the table's first phase */
    uint64_t ids_assigned;      /* known IDs given learned pointers */
    uint64_t sample_size;       /* points k-means ran on, per chunk */
    double inertia;             /* mean over chunks of the final inertia */
    uint64_t replayed_pushes;   /* pushes logged during the phase */
    uint32_t kmeans_iters_max;  /* k-means iterations of the chunk that
                                   ran the most (<= cluster_iters) */
    uint32_t kmeans_iters_sum;  /* k-means iterations over all chunks */
    uint64_t ids_evicted;       /* known IDs the commit dropped
                                   (evict_after_phases) */
    double seconds_snapshot;    /* begin + copying the known IDs */
    double seconds_kmeans;      /* k-means on the sample, all chunks */
    double seconds_assign;      /* assignment + residuals, all chunks */
    double seconds_commit;      /* the pause of the commit */
    double seconds_total;       /* begin to end of commit */
} cqr_phase_result_t;

int cqr_phase_begin(cqr_table_t *t, cqr_phase_t **out);
int cqr_phase_run(cqr_phase_t *ph, cqr_progress_cb cb, void *ud);
int cqr_phase_commit(cqr_phase_t *ph);
void cqr_phase_cancel(cqr_phase_t *ph);
void cqr_phase_result(const cqr_phase_t *ph, cqr_phase_result_t *res);
void cqr_phase_destroy(cqr_phase_t *ph);

/* begin + run + commit + destroy on the calling thread; fills res if
 * non-NULL. */
int cqr_table_cluster(cqr_table_t *t, cqr_progress_cb cb, void *ud,
                      cqr_phase_result_t *res);

/* ---- Compact per-ID state (cqr tables without eviction) ----------------
 * A cqr table keeps the IDs it registers in a map of about 20 bytes an
 * ID. A compaction moves them into a static set of about 9 bytes an ID
 * (ptrset.h: a minimal perfect hash with the packed pointers and a
 * fingerprint per ID; the IDs themselves go to a key file on disk): what
 * every known ID looks up stays exactly as it was. From the first
 * compaction on, every phase of the table builds a static set of the
 * IDs it assigned as well, and IDs registered since the last rebuild
 * stay in the map until the next one. A never-seen ID that matches the
 * fingerprint of the slot it lands on (probability 2^-fbits: 1/16 with 4
 * chunks at k = 65,536) looks up that slot's pointers rather than its
 * hashed ones, stably until the next rebuild, and is not counted as
 * known; a push of it does not register it then (README).
 * Runs on the calling thread (the build on cluster_threads threads);
 * lookups and pushes go on meanwhile, except while the map is copied and
 * while the new set is installed. *moved gets the IDs moved from the map
 * (may be NULL). CQR_EUNSUPPORTED for other kinds and for tables with
 * evict_after_phases; CQR_EBUSY while a phase or compaction runs;
 * CQR_ENOMEM, CQR_EIO (the key file). */
int cqr_table_compact(cqr_table_t *t, uint64_t *moved);

/* Progress of a compaction: called on the compacting thread, without the
 * table's lock, at each stage ("map": the map's IDs copied; "static": the
 * old static set's IDs read, every 2^20 and at the end; "built": the new
 * set built, about to install) with the IDs done of the total. A nonzero
 * return stops the compaction: CQR_ECANCELED, nothing changes. Lookups
 * and pushes of the table (new IDs included) may run meanwhile, from any
 * thread (the callback itself too). */
typedef int (*cqr_compact_progress_cb)(void *ud, const char *stage,
                                       uint64_t done, uint64_t total);

/* cqr_table_compact with a progress callback (NULL: none). */
int cqr_table_compact_ex(cqr_table_t *t, cqr_compact_progress_cb progress,
                         void *ud, uint64_t *moved);

#endif
