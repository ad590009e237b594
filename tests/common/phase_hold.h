/* phase_hold.h -- a cluster-phase hook for tests that need a phase to
 * stay queued or running: the worker that is about to run a phase of the
 * held table waits inside the hook until the test releases it.
 *
 * Install cqr_test_phase_hook with cqr_phases_set_hook (its ud is not
 * used). One hold at a time: the state is file-level.
 * Threading: the hook runs on phase workers; hold, wait and release on
 * the test's thread; a mutex and a condition variable link them.
 */
#ifndef CQR_TEST_PHASE_HOLD_H
#define CQR_TEST_PHASE_HOLD_H

#include <stdint.h>

/* The hook (cqr_phase_hook_cb): holds the worker before a phase of the
 * held table while the hold lasts. */
void cqr_test_phase_hook(void *ud, const char *table, uint64_t phase_id,
                         int after);

/* Holds the phases of table that begin from now on. */
void cqr_test_phase_hold(const char *table);

/* Waits until a worker is held in the hook. */
void cqr_test_phase_wait_held(void);

/* Ends the hold: a held worker goes on, later phases are not held. */
void cqr_test_phase_release(void);

#endif
