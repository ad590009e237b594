/* store_impl.h -- the store's internals, shared by store.c (open, list,
 * retention), store_write.c (checkpoints) and store_read.c (loads) only.
 * Nothing outside server/store/ includes this; the public contract is
 * store.h.
 *
 * Threading: every function here expects the caller to hold s->mu (the
 * public entry points take it) except cqr_store_now().
 *
 * Ownership: the store owns its RocksDB handles and its bases (one per
 * table name of the generation last written or loaded, each holding its
 * own manifest table); cqr_store_bases_adopt() hands a new set over to it.
 * Manifests read with cqr_store_man_read() belong to the caller
 * (cqr_manifest_free).
 *
 * Errors: 0 or a negative CQR_E* code. Functions that fail with the
 * store's error set (cqr_store_fail, cqr_store_fail_db) say so; the
 * others write their reason to a caller's buffer and leave s->err alone,
 * so that the caller can decide whether the failure is the store's
 * (CQR_EIO) or one generation's (CQR_ECORRUPT, skipped by a load).
 */
#ifndef CQR_STORE_IMPL_H
#define CQR_STORE_IMPL_H

#include <pthread.h>
#include <rocksdb/c.h>
#include <stddef.h>
#include <stdint.h>

#include "store/manifest.h"
#include "store/store.h"

/* What the next checkpoint of a table is incremental against: the
 * table object (uid) and its cursor, and the pages as last stored. */
typedef struct cqr_store_base {
    uint64_t uid;       /* cqr_table_uid() of the table it was taken from */
    uint32_t cursor;    /* the export cursor of that table (persist.h) */
    cqr_mtable_t man;   /* its pages as stored (owned) */
} cqr_store_base_t;

struct cqr_store {
    rocksdb_t *db;       /* NULL while a reopen fails */
    char *dir;           /* the data dir (reopen, acknowledgement record) */
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wo_nowal; /* segments: no WAL, flushed later */
    rocksdb_writeoptions_t *wo_sync;  /* manifests and deletions */
    rocksdb_readoptions_t *ro;        /* verify_checksums */
    rocksdb_flushoptions_t *fo;       /* wait */
    cqr_store_opts_t o;
    pthread_mutex_t mu;  /* serialises every call */
    uint64_t last_gen;   /* highest manifest present */
    uint64_t acked;      /* the acknowledgement record (0: none) */
    int broken;          /* a RocksDB write failed: reopen before use */
    cqr_store_base_t *bases; /* per table name */
    size_t nbases;
    char err[512];       /* last failure (mu) */
};

/* Reports a problem the store worked around through opts.warn. */
void cqr_store_warn(cqr_store_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reopens the database if a failure left it in an error state (or
 * closed); 0, or CQR_EIO with the store's error set. Every entry point
 * that touches the database calls it first. */
int cqr_store_ready(cqr_store_t *s);

/* Reads the acknowledgement record into s->acked (0 when there is none;
 * an unreadable or damaged one is reported through opts.warn and counts
 * as none). Always 0. */
int cqr_store_ack_read(cqr_store_t *s);

/* Writes the acknowledgement record (store.h) for generation gen: temp
 * file, fsync, rename, directory fsync. CQR_EIO with the store's error
 * set. */
int cqr_store_ack_write(cqr_store_t *s, uint64_t gen);

/* Records a formatted reason as the store's last failure; returns rc. */
int cqr_store_fail(cqr_store_t *s, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Takes a RocksDB error string: records "what: dberr" and frees it.
 * Returns CQR_EIO. */
int cqr_store_fail_db(cqr_store_t *s, char *dberr, const char *what);

/* Monotonic seconds, for the durations of stats and load info. */
double cqr_store_now(void);

/* The base of table `name`, or NULL. */
cqr_store_base_t *cqr_store_base_find(cqr_store_t *s, const char *name);

/* Replaces the bases by nb[0..n): each nb[i].man takes g->tables[i]
 * (left zeroed in g), and the store owns nb from then on. */
void cqr_store_bases_adopt(cqr_store_t *s, cqr_store_base_t *nb,
                           cqr_manifest_t *g, size_t n);

/* Reads and decodes manifest `gen` into g (the caller frees it). On
 * failure writes the reason to why (not to the store's error):
 * CQR_ENOTFOUND if absent, CQR_EIO, CQR_ECORRUPT, CQR_EVERSION,
 * CQR_ENOMEM. */
int cqr_store_man_read(cqr_store_t *s, uint64_t gen, cqr_manifest_t *g,
                       char *why, size_t whylen);

/* Generation numbers of all manifests, ascending; *gens is malloc'd (NULL
 * when there are none). CQR_ENOMEM, or CQR_EIO with the store's error
 * set. With `partial`, a scan that fails (a damaged SST block in the
 * manifests' key range) falls back to probing the generations around the
 * acknowledged one, which yields the newest generations but maybe not
 * all (reported through opts.warn); retention, which must know every
 * generation, never asks for that. */
int cqr_store_man_list(cqr_store_t *s, int partial, uint64_t **gens,
                       size_t *n);

/* Removes every segment of generations above the last manifest: the
 * orphans of a checkpoint that did not commit. Sets the store's error (and
 * `broken`) on failure. */
int cqr_store_drop_orphans(cqr_store_t *s);

/* Keeps the newest `keep` generations (0: all) and garbage-collects the
 * rest; either output may be NULL. CQR_EIO or CQR_ENOMEM, with the
 * store's error set (except when the list of manifests ran out of
 * memory). */
int cqr_store_retain_locked(cqr_store_t *s, uint32_t keep,
                            uint32_t *gens_deleted, uint64_t *segs_deleted);

#endif
