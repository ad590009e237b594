/* pushlog.c -- the pushes of a running cluster phase (see pushlog.h). */
#include "pushlog.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

/* One logged push: the entry, its IDs and its gradients in one block. */
typedef struct cqr_pushlog_ent logent_t;
struct cqr_pushlog_ent {
    logent_t *next;      /* FIFO order */
    size_t n;            /* IDs */
    size_t bytes;        /* the block's size */
    uint64_t *ids;       /* n IDs (same allocation as the entry) */
    float *grads;        /* n x dim gradients (same allocation) */
};

struct cqr_pushlog {
    pthread_mutex_t mu;  /* guards head, tail, bytes and reserved */
    logent_t *head;      /* oldest push not yet replayed, or NULL */
    logent_t *tail;      /* newest push */
    uint64_t bytes;      /* bytes held by the entries */
    uint64_t reserved;   /* bytes of reserved, unpublished entries (a
                            replay does not reset them) */
    uint64_t max;        /* the limit: CQR_PUSHLOG_MAX_BYTES, or less
                            in tests */
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
    log->max = CQR_PUSHLOG_MAX_BYTES;
    *out = log;
    return 0;
}

void cqr_pushlog_set_max(cqr_pushlog_t *log, uint64_t max)
{
    pthread_mutex_lock(&log->mu);
    log->max = max;
    pthread_mutex_unlock(&log->mu);
}

void cqr_pushlog_destroy(cqr_pushlog_t *log)
{
    if (!log)
        return;
    free_entries(log->head);
    pthread_mutex_destroy(&log->mu);
    free(log);
}

int cqr_pushlog_reserve(cqr_pushlog_t *log, const uint64_t *ids,
                        const float *grads, size_t n, logent_t **out)
{
    size_t gbytes = n * log->dim * sizeof(float);
    size_t bytes = sizeof(logent_t) + n * sizeof(uint64_t) + gbytes;
    *out = NULL;
    pthread_mutex_lock(&log->mu);
    int rc = log->bytes + log->reserved + bytes > log->max ? CQR_EBUSY : 0;
    if (rc == 0)
        log->reserved += bytes;
    pthread_mutex_unlock(&log->mu);
    if (rc)
        return rc;
    logent_t *e = malloc(bytes);
    if (!e) {
        pthread_mutex_lock(&log->mu);
        log->reserved -= bytes;
        pthread_mutex_unlock(&log->mu);
        return CQR_ENOMEM;
    }
    e->next = NULL;
    e->n = n;
    e->bytes = bytes;
    e->ids = (uint64_t *)(e + 1);
    e->grads = (float *)(e->ids + n);
    memcpy(e->ids, ids, n * sizeof(uint64_t));
    memcpy(e->grads, grads, gbytes);
    *out = e;
    return 0;
}

void cqr_pushlog_publish(cqr_pushlog_t *log, logent_t *e)
{
    pthread_mutex_lock(&log->mu);
    log->reserved -= e->bytes;
    if (log->tail)
        log->tail->next = e;
    else
        log->head = e;
    log->tail = e;
    log->bytes += e->bytes;
    pthread_mutex_unlock(&log->mu);
}

void cqr_pushlog_cancel(cqr_pushlog_t *log, logent_t *e)
{
    pthread_mutex_lock(&log->mu);
    log->reserved -= e->bytes;
    pthread_mutex_unlock(&log->mu);
    free(e);
}

int cqr_pushlog_append(cqr_pushlog_t *log, const uint64_t *ids,
                       const float *grads, size_t n)
{
    logent_t *e;
    int rc = cqr_pushlog_reserve(log, ids, grads, n, &e);
    if (rc == 0)
        cqr_pushlog_publish(log, e);
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
