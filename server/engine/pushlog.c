/* pushlog.c -- the pushes of a running cluster phase (see pushlog.h). */
#include "pushlog.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* One logged push: the entry, its IDs and its gradients in one block. */
typedef struct logent {
    struct logent *next; /* FIFO order */
    size_t n;            /* IDs */
    uint64_t *ids;       /* n IDs (same allocation as the entry) */
    float *grads;        /* n x dim gradients (same allocation) */
} logent_t;

struct cqr_pushlog {
    pthread_mutex_t mu;  /* guards head, tail and bytes */
    logent_t *head;      /* oldest push not yet replayed, or NULL */
    logent_t *tail;      /* newest push */
    uint64_t bytes;      /* bytes held by the entries */
    uint32_t dim;        /* floats per ID (immutable) */
};

static void free_entries(logent_t *e)
{
    while (e) {
        logent_t *next = e->next;
        free(e);
        e = next;
    }
}

int cqr_pushlog_create(uint32_t dim, cqr_pushlog_t **out)
{
    cqr_pushlog_t *log = calloc(1, sizeof *log);
    if (!log)
        return CQR_ENOMEM;
    pthread_mutex_init(&log->mu, NULL);
    log->dim = dim;
    *out = log;
    return 0;
}

void cqr_pushlog_destroy(cqr_pushlog_t *log)
{
    if (!log)
        return;
    free_entries(log->head);
    pthread_mutex_destroy(&log->mu);
    free(log);
}

int cqr_pushlog_append(cqr_pushlog_t *log, const uint64_t *ids,
                       const float *grads, size_t n)
{
    size_t gbytes = n * log->dim * sizeof(float);
    size_t bytes = sizeof(logent_t) + n * sizeof(uint64_t) + gbytes;
    pthread_mutex_lock(&log->mu);
    int rc = log->bytes + bytes > CQR_PUSHLOG_MAX_BYTES ? CQR_EBUSY : 0;
    logent_t *e = rc ? NULL : malloc(bytes);
    if (rc == 0 && !e)
        rc = CQR_ENOMEM;
    if (rc == 0) {
        e->next = NULL;
        e->n = n;
        e->ids = (uint64_t *)(e + 1);
        e->grads = (float *)(e->ids + n);
        memcpy(e->ids, ids, n * sizeof(uint64_t));
        memcpy(e->grads, grads, gbytes);
        if (log->tail)
            log->tail->next = e;
        else
            log->head = e;
        log->tail = e;
        log->bytes += bytes;
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

int cqr_pushlog_replay(cqr_pushlog_t *log, cqr_pushlog_fn fn, void *ud,
                       uint64_t *replayed)
{
    pthread_mutex_lock(&log->mu);
    logent_t *e = log->head;
    log->head = log->tail = NULL;
    log->bytes = 0;
    pthread_mutex_unlock(&log->mu);
    int rc = 0;
    while (e && rc == 0) {
        rc = fn(ud, e->ids, e->grads, e->n);
        if (rc == 0 && replayed)
            ++*replayed;
        logent_t *done = e;
        e = e->next;
        free(done);
    }
    free_entries(e); /* on error: what was not replayed */
    return rc;
}
