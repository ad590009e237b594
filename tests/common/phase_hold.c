/* phase_hold.c -- see phase_hold.h. */
#include "phase_hold.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t hmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hcv = PTHREAD_COND_INITIALIZER;
static const char *hold_table; /* phases of this table are held ... */
static int held;               /* ... while this is set */
static int waiting;            /* a worker waits in the hook */

void cqr_test_phase_hook(void *ud, const char *table, uint64_t phase_id,
                         int after)
{
    (void)ud;
    (void)phase_id;
    pthread_mutex_lock(&hmu);
    if (!after && hold_table != NULL && strcmp(table, hold_table) == 0) {
        waiting = 1;
        pthread_cond_broadcast(&hcv);
        while (held)
            pthread_cond_wait(&hcv, &hmu);
        waiting = 0;
    }
    pthread_mutex_unlock(&hmu);
}

static void set_hold(const char *table, int on)
{
    pthread_mutex_lock(&hmu);
    hold_table = table;
    held = on;
    pthread_cond_broadcast(&hcv);
    pthread_mutex_unlock(&hmu);
}

void cqr_test_phase_hold(const char *table)
{
    set_hold(table, 1);
}

void cqr_test_phase_wait_held(void)
{
    pthread_mutex_lock(&hmu);
    while (!waiting)
        pthread_cond_wait(&hcv, &hmu);
    pthread_mutex_unlock(&hmu);
}

void cqr_test_phase_release(void)
{
    set_hold(NULL, 0);
}
