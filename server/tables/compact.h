/* compact.h -- runs compactions of cqr tables off the loop threads.
 *
 * A compaction (cqr_table_compact, engine/table.h) moves a cqr table's
 * known IDs from its map into a static set of about 9 bytes an ID. It
 * takes tens of seconds for 1e7 IDs, so the server never runs it on an
 * I/O thread: cqr_compacts_start runs it on a thread of its own (the
 * Compact RPC, whose reply is deferred until it is done, and a table
 * created with `compact`, after its first phase commits). Lookups and
 * pushes of every table go on meanwhile; the engine holds the table's
 * lock exclusively only while it copies the map and while it installs
 * the new set. cqr_compacts_run runs one on the calling thread, for
 * sessions that cannot defer a reply (in-process tests, the fuzzer).
 *
 * A table has at most one compaction at a time here (its claim, by
 * registry uid): a second request gets CQR_EBUSY at once. The engine
 * refuses a compaction while a phase runs (CQR_EBUSY) and a phase while
 * a compaction runs (a Cluster RPC gets CQR_EBUSY; the push path does
 * not queue a scheduled phase while its table compacts, so the phase
 * is queued at the first push after the compaction).
 *
 * Logs ("compact" module): "compaction of <table> started", then
 * "compaction of <table> done: N IDs moved in S s" or "compaction of
 * <table> failed: ...", and a line per stage in between (the map
 * copied, the old static set read back, the new one built). Shutdown
 * stops a running compaction (the engine gives up at its next stage:
 * nothing changes) and waits for it (cqr_compacts_shutdown), so the exit
 * checkpoint holds the table as it was.
 *
 * Ownership: a running compaction holds a reference to its table's
 * registry entry, so dropping the table is safe (the table dies when the
 * compaction lets go).
 *
 * Errors: 0 or a negative CQR_E* code (engine/err.h); every refusal also
 * writes a one-line reason for the client.
 *
 * Threading: every function is safe from any thread; cqr_compacts_destroy
 * must come last. The done callback runs on the compaction's thread.
 */
#ifndef CQR_COMPACT_H
#define CQR_COMPACT_H

#include <stddef.h>
#include <stdint.h>

#include "tables/registry.h"

typedef struct cqr_compacts cqr_compacts_t;

/* What a compaction did (values match CompactReply). */
typedef struct cqr_compact_res {
    uint64_t moved_ids;   /* IDs moved from the map into the static set */
    uint64_t known_ids;   /* known IDs after it */
    uint64_t static_ids;  /* of those, in the static set */
    uint64_t index_bytes; /* the table's per-ID state after it */
    double seconds;       /* wall time */
} cqr_compact_res_t;

/* Called once when a started compaction ends: rc 0 with *res, or an
 * error with a one-line reason in msg. */
typedef void (*cqr_compact_cb)(void *ud, int rc, const cqr_compact_res_t *res,
                               const char *msg);

int cqr_compacts_create(cqr_compacts_t **out);

/* 0 if e's table can be compacted at all; CQR_EUNSUPPORTED with a reason
 * for kinds other than cqr and tables with evict_after_phases. */
int cqr_compact_check(const cqr_entry_t *e, char *why, size_t whylen);

/* Claims e's table and starts its compaction on a new thread, which
 * calls cb (may be NULL) when it ends. `reason` (a static string:
 * "request", "first_phase") goes into the log. Errors, nothing started
 * and cb never called: CQR_EUNSUPPORTED (cqr_compact_check), CQR_EBUSY
 * (a compaction or phase of this table runs), CQR_ESHUTDOWN, CQR_ENOMEM.
 * Takes its own reference to e. */
int cqr_compacts_start(cqr_compacts_t *cm, cqr_entry_t *e,
                       const char *reason, cqr_compact_cb cb, void *ud,
                       char *why, size_t whylen);

/* Claims e's table and compacts it on the calling thread. The errors of
 * cqr_compacts_start, and those of the compaction (CQR_ENOMEM,
 * CQR_EIO). */
int cqr_compacts_run(cqr_compacts_t *cm, cqr_entry_t *e, const char *reason,
                     cqr_compact_res_t *res, char *why, size_t whylen);

/* 1 while a compaction of the table with registry uid `uid` runs. */
int cqr_compacts_busy(cqr_compacts_t *cm, uint64_t uid);

/* Compactions running now and finished since creation (for stats). */
void cqr_compacts_counts(cqr_compacts_t *cm, uint64_t *running,
                         uint64_t *done, uint64_t *failed);

/* New starts fail with CQR_ESHUTDOWN and running compactions are asked to
 * stop (at their next stage), without waiting: called when the stop
 * signal comes, so that their replies go out while connections drain.
 * NULL is a no-op. */
void cqr_compacts_stop(cqr_compacts_t *cm);

/* New starts fail with CQR_ESHUTDOWN; running compactions are asked to
 * stop (CQR_ECANCELED at their next stage); waits for them to end and
 * joins their threads. Idempotent. */
void cqr_compacts_shutdown(cqr_compacts_t *cm);

/* cqr_compacts_shutdown, then frees. NULL is a no-op. */
void cqr_compacts_destroy(cqr_compacts_t *cm);

#endif
