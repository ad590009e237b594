/* par.h -- a small pool of helper threads that share one call's work.
 *
 * One request of a trainer (a lookup or push of a thousand IDs or more) is
 * served by one I/O thread; on a machine with idle cores its independent
 * parts can run on helpers at the same time. cqr_par_run(pool, parts, fn,
 * arg) runs fn(arg, 0) .. fn(arg, parts - 1) and returns when all have
 * finished. The caller takes part in the work: parts are claimed one at a
 * time by whichever thread is free first, so a call never waits for a busy
 * or slow helper to start (if no helper wakes in time, the caller simply
 * runs every part), and several callers may share one pool.
 *
 * The parts must be independent (disjoint outputs). A part runs on
 * another thread while the caller keeps whatever locks it holds: the
 * caller's locks cover the helpers' reads and writes for the call.
 *
 * The engine has this one pool: tables share their large calls on it
 * (cqr_table_set_par), and k-means starts one for each of its calls
 * (kmeans.h).
 *
 * Threading: cqr_par_run may be called from any number of threads at
 * once; create and destroy are ordered before and after every run.
 * Ownership: the creator owns the pool; fn and arg stay the caller's and
 * are used only until cqr_par_run returns.
 * Errors: only cqr_par_create fails (CQR_ENOMEM, CQR_EIO); a run cannot.
 */
#ifndef CQR_PAR_H
#define CQR_PAR_H

typedef struct cqr_par cqr_par_t;

/* A pool of `helpers` threads (0 is valid: every call runs inline).
 * CQR_ENOMEM / CQR_EIO (thread creation) on failure. */
int cqr_par_create(unsigned helpers, cqr_par_t **out);

/* Stops and joins the helpers. No call may be running. NULL is a no-op. */
void cqr_par_destroy(cqr_par_t *p);

/* Helper threads of p (0 for NULL). */
unsigned cqr_par_helpers(const cqr_par_t *p);

/* Runs fn(arg, i) for every i < parts (see above). p may be NULL. */
void cqr_par_run(cqr_par_t *p, unsigned parts,
                 void (*fn)(void *arg, unsigned part), void *arg);

#endif
