/* pushlog.h -- the pushes that arrive during a cluster phase, kept for
 * replay onto the phase's new state.
 *
 * A phase builds its new state from a snapshot taken at its begin, while
 * pushes go on against the live state. Each push acknowledged meanwhile
 * is also copied here and later replayed, in acknowledgement order, onto
 * the new state, so that none is lost when the phase swaps it in
 * (DESIGN.md s4b).
 *
 * Ownership: a phase creates its log and destroys it (cluster.c); while
 * the phase runs its table points at the log and appends every push to it
 * (table_push.c). Entries are copies of the caller's arrays; a replay
 * frees what it replays, destroy frees the rest.
 *
 * Threading: append and replay may run at the same time from any threads
 * (a mutex guards the list; a replay detaches what is there and runs
 * without it, and pushes appended meanwhile wait for the next replay).
 * Destroy must be ordered after every other call.
 *
 * Errors: 0 or a negative CQR_E* code (err.h). Append returns CQR_EBUSY
 * when the log already holds CQR_PUSHLOG_MAX_BYTES (the push is refused
 * and must be retried after the phase) and CQR_ENOMEM; nothing is logged
 * then.
 */
#ifndef CQR_PUSHLOG_H
#define CQR_PUSHLOG_H

#include <stddef.h>
#include <stdint.h>

/* Bytes the log may hold between two replays; beyond it pushes get
 * CQR_EBUSY until the phase replays (run, commit) or ends. */
#define CQR_PUSHLOG_MAX_BYTES (1ull << 30)

typedef struct cqr_pushlog cqr_pushlog_t;

/* A log for pushes of `dim` floats per ID. CQR_ENOMEM on failure. */
int cqr_pushlog_create(uint32_t dim, cqr_pushlog_t **out);

/* Lowers the log's limit (CQR_PUSHLOG_MAX_BYTES) to max bytes: for the
 * tests of what a full log refuses. */
void cqr_pushlog_set_max(cqr_pushlog_t *log, uint64_t max);

/* Frees the log and the pushes it still holds. NULL is a no-op. */
void cqr_pushlog_destroy(cqr_pushlog_t *log);

/* Copies a push of n IDs and n x dim gradients to the end of the log. */
int cqr_pushlog_append(cqr_pushlog_t *log, const uint64_t *ids,
                       const float *grads, size_t n);

/* The two halves of append, for a push of several tables that must be
 * logged in every table's log or in none (table_push.c): reserve copies
 * the push into an entry that counts against the log's limit (CQR_EBUSY,
 * CQR_ENOMEM; nothing reserved then) but is not in the log yet; publish
 * appends it (it cannot fail), cancel frees it. Every reserved entry is
 * published or cancelled, on the log it was reserved on. */
typedef struct cqr_pushlog_ent cqr_pushlog_ent_t;
int cqr_pushlog_reserve(cqr_pushlog_t *log, const uint64_t *ids,
                        const float *grads, size_t n,
                        cqr_pushlog_ent_t **out);
void cqr_pushlog_publish(cqr_pushlog_t *log, cqr_pushlog_ent_t *e);
void cqr_pushlog_cancel(cqr_pushlog_t *log, cqr_pushlog_ent_t *e);

/* Called by a replay for each logged push, oldest first; returns 0 or a
 * negative CQR_E* code, which stops the replay. */
typedef int (*cqr_pushlog_fn)(void *ud, const uint64_t *ids,
                              const float *grads, size_t n);

/* Takes every push logged so far out of the log and calls fn on each,
 * oldest first; *replayed (if non-NULL) is increased by the pushes fn
 * accepted. On the first error of fn the pushes not yet replayed are
 * dropped and that error is returned (the phase has failed). */
int cqr_pushlog_replay(cqr_pushlog_t *log, cqr_pushlog_fn fn, void *ud,
                       uint64_t *replayed);

#endif
