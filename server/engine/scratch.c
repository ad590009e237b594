/* scratch.c -- per-thread work buffers (see scratch.h). */
#include "scratch.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct scratch {
    void *p[CQR_SCRATCH_SLOTS];     /* the buffers */
    size_t cap[CQR_SCRATCH_SLOTS];  /* their sizes in bytes */
    uint32_t *dense;                /* the dense index, all UINT32_MAX */
    size_t dense_bytes;             /* its size in bytes */
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_destroy(void *v)
{
    scratch_t *s = v;
    for (int i = 0; i < CQR_SCRATCH_SLOTS; i++)
        free(s->p[i]);
    free(s->dense);
    free(s);
}

static void scratch_key_init(void)
{
    int rc = pthread_key_create(&scratch_key, scratch_destroy);
    assert(rc == 0);
    (void)rc;
}

static scratch_t *scratch_get(void)
{
    pthread_once(&scratch_once, scratch_key_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    return s;
}

uint32_t *cqr_scratch_dense(size_t n)
{
    scratch_t *s = scratch_get();
    if (!s)
        return NULL;
    size_t bytes = n * sizeof(uint32_t);
    if (s->dense_bytes < bytes) {
        void *p = malloc(bytes);
        if (!p)
            return NULL;
        memset(p, 0xff, bytes);
        free(s->dense);
        s->dense = p;
        s->dense_bytes = bytes;
    }
    return s->dense;
}

void *cqr_scratch(enum cqr_scratch_slot slot, size_t bytes)
{
    assert((unsigned)slot < CQR_SCRATCH_SLOTS);
    scratch_t *s = scratch_get();
    if (!s)
        return NULL;
    if (s->cap[slot] < bytes) {
        size_t want = bytes + bytes / 2 + 64;
        void *p = malloc(want);
        if (!p)
            return NULL;
        free(s->p[slot]);
        s->p[slot] = p;
        s->cap[slot] = want;
    }
    return s->p[slot];
}
