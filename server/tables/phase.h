/* phase.h -- runs cluster phases off the loop threads and remembers them.
 *
 * Two ways in:
 *   - cqr_phases_start (a Cluster RPC, on an I/O thread) begins the phase
 *     on the caller's thread -- cqr_phase_begin is short: it snapshots
 *     the codebooks and starts logging pushes -- and queues it, so the
 *     reply can name a phase that already logs every later push;
 *   - cqr_phases_due (a Push whose table's schedule says a phase is due)
 *     only records the phase as queued and returns: the worker that takes
 *     it begins it. The data path never enters the engine's phase code,
 *     and the dependency points one way, from the request layer down to
 *     the runner. Pushes between the notice and the begin are simply part
 *     of the snapshot.
 * A small pool of worker threads (--cluster-workers) takes queued phases
 * in order and runs cqr_phase_run and cqr_phase_commit, reporting
 * progress to the log and to cqr_phases_status. A table has at most one
 * phase queued or running (its claim); while a phase holds the claim it
 * also holds a reference to the table's registry entry, so dropping the
 * table is safe (the table dies when the phase lets go).
 *
 * Phase ids are unique for the server's life (never reused across tables
 * or drop/re-create). The history keeps the latest few phases of every
 * table (CQR_PHASE_HISTORY) and a bounded number overall.
 *
 * Cancel (cqr_phases_cancel, a CancelCluster RPC): a queued phase is
 * taken off the queue; a running one is told to stop (cqr_phase_cancel:
 * its k-means and assignment look at the flag every block, so it ends
 * within about a second) and is not committed. Either way the engine
 * keeps its live state, which already holds every acknowledged push, and
 * the phase ends FAILED with `cancelled` set.
 *
 * Shutdown (cqr_phases_shutdown): new starts fail with CQR_ESHUTDOWN and
 * due notices are ignored; queued phases are aborted and running ones
 * cancelled as above (SIGTERM does not wait for a long phase), then the
 * workers are joined.
 *
 * Errors: 0 or a negative CQR_E* code, per function below; a due notice
 * never fails (what goes wrong is counted and logged).
 *
 * Threading: every function is safe from any thread; cqr_phases_destroy
 * must come last, after cqr_phases_shutdown.
 */
#ifndef CQR_PHASE_H
#define CQR_PHASE_H

#include <stdatomic.h>
#include <stdint.h>

#include "tables/registry.h"

#define CQR_PHASE_HISTORY 8

typedef struct cqr_phases cqr_phases_t;

typedef enum cqr_phase_state {
    CQR_PHASE_QUEUED = 0,  /* waiting for a worker; begun (pushes are
                              logged) when a Cluster RPC started it, to
                              be begun by the worker when scheduled */
    CQR_PHASE_RUNNING = 1, /* k-means / assignment / commit in progress */
    CQR_PHASE_DONE = 2,    /* committed */
    CQR_PHASE_FAILED = 3   /* aborted or failed; error says why */
} cqr_phase_state_t;

/* A snapshot of one phase (values match ClusterStatusReply). */
typedef struct cqr_phase_status {
    uint64_t phase_id;        /* server-wide id */
    uint64_t table_uid;       /* registry entry uid of the table */
    char table[CQR_NAME_MAX + 1]; /* table name */
    cqr_phase_state_t state;  /* see above */
    int scheduled;            /* 1: started by the table's schedule */
    char stage[16];           /* last progress stage, "" before any */
    uint32_t chunk;           /* chunk in progress, 1-based (0: none) */
    uint32_t chunks;          /* chunks of the table (0 until running) */
    uint32_t iter;            /* k-means iterations done in this chunk */
    uint32_t iters;           /* k-means iterations at most */
    double fraction;          /* 0..1 progress */
    double eta_seconds;       /* estimated time left, -1 if unknown */
    uint32_t kmeans_iters;    /* when done: most iterations of a chunk */
    int cancelled;            /* FAILED because it was cancelled */
    double inertia;           /* last known mean inertia, -1 if none */
    double seconds;           /* total so far (running) or final */
    uint32_t phase_no;        /* the table's own phase number (when done) */
    uint64_t ids_assigned;    /* known IDs given learned pointers */
    uint64_t replayed_pushes; /* pushes replayed at commit */
    double commit_seconds;    /* pause of the commit */
    char error[160];          /* why it failed, "" otherwise */
} cqr_phase_status_t;

/* Counters for stats. */
typedef struct cqr_phase_counts {
    uint64_t started;   /* phases begun (by hand or schedule) */
    uint64_t scheduled; /* of those, started by a schedule */
    uint64_t done;      /* committed */
    uint64_t failed;    /* failed or aborted */
    uint64_t queued;    /* waiting now */
    uint64_t running;   /* running now */
} cqr_phase_counts_t;

/* Called on a worker thread around every phase that runs: with after = 0
 * before cqr_phase_run (the phase has begun, so pushes are logged, but
 * the table's live state is still the one before the phase), with
 * after = 1 once the commit succeeded. The worker holds no lock and no
 * table gate during the call, so the hook may wait for a checkpoint
 * (ckpt.c). */
typedef void (*cqr_phase_hook_cb)(void *ud, const char *table,
                                  uint64_t phase_id, int after);

/* Installs the hook (NULL removes it). Call before phases can start
 * (at start-up) or after cqr_phases_shutdown. */
void cqr_phases_set_hook(cqr_phases_t *pm, cqr_phase_hook_cb cb, void *ud);

/* Called on the worker thread after every committed phase, with the
 * table's entry (the worker's reference: valid during the call; take
 * one to keep it), before the hook's after call. */
typedef void (*cqr_phase_commit_cb)(void *ud, cqr_entry_t *e);

/* Installs the commit callback (NULL removes it); as cqr_phases_set_hook,
 * before phases can start. */
void cqr_phases_set_commit_cb(cqr_phases_t *pm, cqr_phase_commit_cb cb,
                              void *ud);

/* Starts `workers` threads. A scheduled phase that cannot begin is
 * counted in *start_errors (may be NULL) and logged. CQR_ENOMEM /
 * CQR_EINTERNAL on failure. */
int cqr_phases_create(uint32_t workers, atomic_uint_fast64_t *start_errors,
                      cqr_phases_t **out);

/* Begins a phase of e's table on the calling thread and queues it.
 * Returns its id in *phase_id. Errors: CQR_EUNSUPPORTED (not a cqr
 * table), CQR_EBUSY (a phase of this table is queued or running),
 * CQR_ESHUTDOWN, CQR_ENOMEM, or any error of cqr_phase_begin. On error
 * nothing was started. Takes its own reference to e. */
int cqr_phases_start(cqr_phases_t *pm, cqr_entry_t *e, uint64_t *phase_id);

/* Tells the runner that e's table's schedule says a phase is due: queues
 * a scheduled phase that a worker begins, unless one of this table is
 * already queued or running or the runner shuts down. Never fails (a
 * phase that cannot be queued or begun is counted and logged); cheap
 * enough for the push path: no engine call, one short lock. Takes its
 * own reference to e when it queues. */
void cqr_phases_due(cqr_phases_t *pm, cqr_entry_t *e);

/* Cancels phase `phase_id` of the table with uid `table_uid` (0: its
 * queued or running phase) and writes its status at that moment to *out
 * (a running phase is still RUNNING there: it ends shortly). `why` goes
 * into the phase's error ("cancelled: <why>"). CQR_ENOPHASE if no such
 * phase is queued or running. */
int cqr_phases_cancel(cqr_phases_t *pm, uint64_t table_uid,
                      uint64_t phase_id, const char *why,
                      cqr_phase_status_t *out);

/* Status of phase `phase_id` of the table with uid `table_uid`, or of its
 * latest phase when phase_id is 0. CQR_ENOPHASE if unknown (or pruned). */
int cqr_phases_status(cqr_phases_t *pm, uint64_t table_uid,
                      uint64_t phase_id, cqr_phase_status_t *out);

void cqr_phases_counts(cqr_phases_t *pm, cqr_phase_counts_t *out);

/* Forgets every finished phase (the history ClusterStatus reads), the
 * counts and the phase ids, as a new runner would have them, keeping the
 * workers: for a test harness that reuses one runner (tests/fuzz/
 * fuzz_rpc.c). CQR_EBUSY, changing nothing, while a phase is queued or
 * running. */
int cqr_phases_forget(cqr_phases_t *pm);

/* See "Shutdown" above. Blocks until the workers have exited. Idempotent. */
void cqr_phases_shutdown(cqr_phases_t *pm);

/* Frees everything; calls cqr_phases_shutdown if needed. NULL is a no-op. */
void cqr_phases_destroy(cqr_phases_t *pm);

#endif
