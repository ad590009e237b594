/* store.h -- checkpoints of tables in a RocksDB database (the data dir).
 *
 * A checkpoint is a generation: a numbered, immutable set of tables. Each
 * table is stored as the segments of persist.h; a generation's manifest
 * lists, for every page of every table, the segment versions that rebuild
 * it (a base and the deltas after it). Segments a generation did not
 * change are shared with the generation before, so a checkpoint writes
 * what changed since the previous one, not the table.
 *
 * Key layout (one column family):
 *   "V"                              store format ("cqrps-store 1")
 *   "M" gen(u64 BE)                  a generation's manifest
 *   "S" gen(u64 BE) table "\0" type(u32 BE) index(u32 BE)
 *                                    one segment: page (type, index) of
 *                                    the table as written by generation
 *                                    gen (at most one per page and gen)
 * Big-endian numbers make keys sort by generation, so the segments one
 * generation wrote are one key range.
 *
 * Atomicity: a checkpoint writes its segments, then its manifest, all
 * without RocksDB's WAL, and then flushes the memtables: RocksDB syncs
 * the new SST and blob files and then records them in its own MANIFEST
 * (synced), which is the commit point. Memtables are flushed in the order
 * they were written, so the manifest never becomes durable before a
 * segment it lists; until the flush is recorded, the generation does not
 * exist, and nothing an earlier manifest references has been touched
 * (segment keys carry their generation, so new segments never overwrite
 * live ones). A committed generation lives in SST and blob files only:
 * losing or truncating the WAL (`*.log`) cannot take it back. A crash at
 * any moment leaves every earlier generation intact; the orphaned
 * segments of an unfinished checkpoint (generations above the last
 * manifest) are removed with one range delete at open and before each
 * checkpoint. Retention deletes old manifests and those of their
 * segments that no kept generation references, in one synced batch; it
 * works from the manifests and never scans the segments.
 *
 * Acknowledgement record: after a generation is committed, and before
 * cqr_store_checkpoint returns it, the store records its number in the
 * file CQRPS-ACKED beside RocksDB's files (one text line with a
 * checksum, written to a temporary file, synced, renamed, directory
 * synced). A load reports it (cqr_store_load_info_t.acked) with the
 * newest generation present, so that the caller can tell a generation
 * that vanished (newest < acked: silent loss, e.g. a lost file) from one
 * that is present but damaged (skipped with its reason). Data dirs
 * written before the record existed load as before (acked 0).
 *
 * Storage faults: a checkpoint that fails on a RocksDB error (a full or
 * read-only disk, a background error) leaves the database in an error
 * state that RocksDB keeps until it is reopened; the store closes it and
 * opens it again (replaying what it must) at the next call, so the first
 * checkpoint after the fault clears succeeds. While the database cannot
 * be reopened every call fails with CQR_EIO and says why. Problems that
 * do not stop the store (a format marker or an old SST block it cannot
 * read, a failed clean-up at open, a listing that had to fall back) are
 * reported through opts.warn.
 *
 * Verification: every manifest and segment carries an XXH3 checksum, and
 * the manifest also records each segment's length and checksum, so a
 * damaged, missing or stale segment is detected before its table is
 * used. Loading the latest generation falls back to the newest one that
 * verifies completely and reports the ones it skipped and why; it never
 * returns an empty state when generations exist but none verifies (that
 * is CQR_ECORRUPT). A segment shared by several generations is a single
 * point of failure for all of them; full_every bounds how long a page can
 * go without being rewritten.
 *
 * Code: store.c (open, list, retention and garbage collection),
 * store_write.c (checkpoints), store_read.c (loads), manifest.c (keys and
 * manifests), with the internals they share in store_impl.h.
 *
 * Threading: every function may be called from any thread; calls on one
 * store are serialised by its mutex (a checkpoint blocks a concurrent
 * list or load until it finishes, so an event loop should not call them
 * directly). Callbacks (progress, table delivery) run on the calling
 * thread with that mutex held and must not call cqr_store_* functions.
 * During a checkpoint the tables serve lookups without pause and pushes
 * with the short pause of each table's export (persist.h); the caller
 * must keep the tables alive for the call.
 *
 * Ownership: the store owns its database handle and what it remembers of
 * the last generation it wrote or loaded (the bases of incremental
 * checkpoints); it borrows the tables of a checkpoint for the call. A
 * load hands every table it restores to the table callback, which owns
 * it from then on. Lists are malloc'd for the caller.
 *
 * Errors: 0 or a negative CQR_E* code (err.h): CQR_EIO for RocksDB
 * failures, CQR_ECORRUPT for data that fails verification, CQR_EVERSION
 * for a store or segment format this build does not know, CQR_ENOTFOUND
 * for a generation that does not exist. cqr_store_error() gives the
 * one-line reason of the last failure on the store.
 */
#ifndef CQR_STORE_H
#define CQR_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/table.h"

typedef struct cqr_store cqr_store_t;

/* Reports a problem the store worked around, for the caller's log (a
 * full sentence without a trailing period). Runs on the calling thread,
 * with the store's mutex held: it must not call cqr_store_* functions. */
typedef void (*cqr_store_warn_cb)(void *ud, const char *msg);

typedef struct cqr_store_opts {
    uint32_t keep;        /* generations kept after each checkpoint, >= 1
                             (default 3); 0 = keep all */
    uint32_t max_chain;   /* deltas a page may accumulate before its base
                             is rewritten (default 8) */
    uint32_t full_every;  /* every N-th generation is written completely,
                             sharing nothing (0 = never; default 0) */
    int create;           /* create the database if missing (default 1) */
    uint64_t batch_bytes; /* segment bytes per write batch (default 32 MiB) */
    cqr_store_warn_cb warn; /* may be NULL (default) */
    void *warn_ud;        /* its argument */
} cqr_store_opts_t;

void cqr_store_opts_default(cqr_store_opts_t *o);

/* Progress of a long checkpoint or load; valid during the callback. */
typedef struct cqr_store_progress {
    const char *stage;    /* checkpoint: "export", "write", "sync",
                             "retain"; load: "read", "verify" */
    const char *table;    /* table being processed, or NULL */
    uint32_t table_no;    /* 0-based */
    uint32_t tables;      /* tables in the operation */
    uint64_t bytes_done;  /* bytes written or read so far, all tables */
    uint64_t bytes_total; /* known total (load), or so far (checkpoint) */
    double fraction;      /* 0..1 over the whole operation (estimate) */
} cqr_store_progress_t;

typedef void (*cqr_store_progress_cb)(void *ud, const cqr_store_progress_t *p);

/* Opens (creating, with o->create) the database in `dir`, reads the
 * acknowledgement record, finds the latest generation and deletes
 * orphaned segments of unfinished checkpoints. Only what prevents every
 * load fails the open (RocksDB refuses the database, the generations
 * cannot be listed at all, a store format this build does not read); the
 * rest is reported through o->warn. o may be NULL (defaults). On failure
 * writes a reason to why[0..whylen) if why is non-NULL. */
int cqr_store_open(const char *dir, const cqr_store_opts_t *o,
                   cqr_store_t **out, char *why, size_t whylen);

/* Closes the store (waits for nothing: no call may be running). */
void cqr_store_close(cqr_store_t *s);

/* Copies the reason of the last failure (or "") to buf[0..len). */
void cqr_store_error(cqr_store_t *s, char *buf, size_t len);

typedef struct cqr_store_ckpt_stats {
    uint64_t generation;       /* the new generation */
    uint32_t tables;           /* tables in it */
    uint32_t tables_full;      /* tables written completely (no base) */
    uint64_t segments_written; /* segments this checkpoint wrote */
    uint64_t segments_shared;  /* pages taken unchanged from the base */
    uint64_t bytes_written;    /* segment bytes written */
    uint64_t bytes_total;      /* segment bytes the generation references */
    uint64_t bytes_full;       /* what complete exports would have written */
    double seconds;            /* the whole call */
    double seconds_export;     /* exports (copies and checksums) */
    double seconds_write;      /* RocksDB writes */
    double seconds_sync;       /* memtable flush and manifest sync */
    double seconds_retain;     /* retention and garbage collection */
    double pause_max_seconds;  /* longest push pause of any table */
    double pause_total_seconds; /* sum over tables */
    uint32_t generations_deleted; /* by retention */
    uint64_t segments_deleted;    /* by garbage collection */
} cqr_store_ckpt_stats_t;

/* Writes a new generation holding tables[0..n) under names[0..n)
 * (unique, 1..255 bytes). Each table is exported incrementally against
 * what this store last wrote or loaded for it, written, and released
 * before the next is exported (memory: the largest table's changes). On
 * success *generation (if non-NULL) is the new generation, durable and in
 * the acknowledgement record before the call returns, and retention
 * (opts.keep) has run. On failure no generation is acknowledged and the
 * previous ones are untouched (a generation that committed before a
 * later step failed may survive, complete, as the newest). After a
 * failure on a RocksDB error the next call reopens the database first.
 * cb (may be NULL) reports progress; stats may be NULL. */
int cqr_store_checkpoint(cqr_store_t *s, cqr_table_t *const *tables,
                         const char *const *names, size_t n,
                         cqr_store_progress_cb cb, void *ud,
                         uint64_t *generation, cqr_store_ckpt_stats_t *stats);

typedef struct cqr_store_gen {
    uint64_t generation; /* generation number */
    uint64_t unix_time;  /* when it was written, seconds since the epoch */
    uint32_t tables;     /* tables in it */
    uint64_t bytes;      /* segment bytes it references (to load it) */
    uint64_t bytes_new;  /* segment bytes written by its checkpoint */
    uint64_t segments;   /* segments it references */
    int ok;              /* 1: its manifest verifies (segments are
                            verified by a load) */
} cqr_store_gen_t;

/* All generations, newest first; *gens is malloc'd (free() it), NULL
 * when there are none. */
int cqr_store_list(cqr_store_t *s, cqr_store_gen_t **gens, size_t *n);

/* Receives one restored table and owns it from then on, whatever it
 * returns; a non-zero return stops the load (the remaining tables are
 * destroyed) and cqr_store_load returns that value. */
typedef int (*cqr_store_table_cb)(void *ud, const char *name,
                                  cqr_table_t *t);

typedef struct cqr_store_load_info {
    uint64_t generation;  /* the generation loaded; 0: the store is empty */
    uint32_t tables;      /* tables delivered */
    uint64_t bytes;       /* segment bytes read */
    double seconds;       /* the whole call */
    uint32_t skipped;     /* newer generations that could not be read
                             (checksum, or RocksDB's read error) */
    char why[512];        /* "generation 7: table users: rows/3: checksum
                             mismatch; ..." for the skipped ones */
    uint64_t newest;      /* the highest generation present, loadable or
                             not (0: none) */
    uint64_t acked;       /* the last acknowledged generation on record
                             (0: none, e.g. a data dir of an older build) */
} cqr_store_load_info_t;

/* Restores a generation: `generation` 0 loads the newest one that
 * verifies completely (falling back past damaged ones, reported in
 * info); any other value loads exactly that one (CQR_ENOTFOUND if it
 * does not exist, CQR_ECORRUPT if it does not verify). Every table of the
 * generation is rebuilt and verified before the first is delivered to
 * cb, so cb sees either a whole generation or nothing. An empty store
 * returns 0 with info->generation 0. Later checkpoints of the delivered
 * tables are incremental against the loaded generation. info may be
 * NULL. */
int cqr_store_load(cqr_store_t *s, uint64_t generation,
                   cqr_store_table_cb cb, void *ud,
                   cqr_store_progress_cb pcb, void *pud,
                   cqr_store_load_info_t *info);

/* Rebuilds table `name` of a generation (0: the newest) into a private
 * table (*out, the caller's), leaving the store's bases alone: the live
 * tables' next checkpoints stay incremental. For exports (table_model.h).
 * *gen_out (if non-NULL) gets the generation read. CQR_ENOTFOUND (no
 * checkpoint, no such generation or table), CQR_ECORRUPT, CQR_EIO,
 * CQR_ENOMEM; cqr_store_error() says why. */
int cqr_store_read_table(cqr_store_t *s, uint64_t generation,
                         const char *name, cqr_table_t **out,
                         uint64_t *gen_out);

/* Rewrites the acknowledgement record to `generation` (which may be
 * older than the one recorded): the operator accepted to go on from an
 * older generation, and the next start must not report the loss again.
 * CQR_EIO with a reason. */
int cqr_store_set_acked(cqr_store_t *s, uint64_t generation);

/* Keeps the newest `keep` generations (>= 1), deletes the older ones and
 * every segment no remaining generation (nor the base of the next
 * incremental checkpoint) references. *deleted (if non-NULL) gets the
 * number of generations deleted. */
int cqr_store_retain(cqr_store_t *s, uint32_t keep, uint32_t *deleted);

/* Segment keys held (a scan of every segment: slow on a big store, for
 * diagnostics and tests) and the bytes of the database's live SST and
 * blob files (cheap; either output may be NULL). */
int cqr_store_usage(cqr_store_t *s, uint64_t *segments, uint64_t *bytes);

#endif
