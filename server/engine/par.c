/* par.c -- helper threads sharing one call's parts (see par.h). */
#include "par.h"

#include <pthread.h>
#include <stdlib.h>

#include "err.h"

/* One call of cqr_par_run, on its caller's stack. */
typedef struct job {
    void (*fn)(void *arg, unsigned part);
    void *arg;
    unsigned parts;
    unsigned next;      /* next unclaimed part (atomic) */
    unsigned users;     /* helpers inside the job (pool mutex) */
    int queued;         /* in the pool's list (pool mutex) */
    struct job *prev_q, *next_q;
} job_t;

struct cqr_par {
    pthread_mutex_t mu;
    pthread_cond_t work;  /* helpers: a job was queued, or stop */
    pthread_cond_t left;  /* callers: a helper left a job */
    job_t *head, *tail;   /* jobs with parts left to claim */
    int stop;
    unsigned nthreads;
    pthread_t *threads;
};

static void unqueue(cqr_par_t *p, job_t *j)
{
    if (!j->queued)
        return;
    if (j->prev_q)
        j->prev_q->next_q = j->next_q;
    else
        p->head = j->next_q;
    if (j->next_q)
        j->next_q->prev_q = j->prev_q;
    else
        p->tail = j->prev_q;
    j->queued = 0;
}

/* Claims and runs parts of j until none is left. */
static void work_on(job_t *j)
{
    for (;;) {
        unsigned i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (i >= j->parts)
            return;
        j->fn(j->arg, i);
    }
}

static void *helper_main(void *arg)
{
    cqr_par_t *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->head)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->stop)
            break;
        job_t *j = p->head;
        j->users++;
        pthread_mutex_unlock(&p->mu);
        work_on(j);
        pthread_mutex_lock(&p->mu);
        /* Every part is claimed now: no one else should pick it up. */
        unqueue(p, j);
        if (--j->users == 0)
            pthread_cond_broadcast(&p->left);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int cqr_par_create(unsigned helpers, cqr_par_t **out)
{
    cqr_par_t *p = calloc(1, sizeof *p);
    if (!p)
        return CQR_ENOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->left, NULL);
    if (helpers) {
        p->threads = calloc(helpers, sizeof *p->threads);
        if (!p->threads) {
            cqr_par_destroy(p);
            return CQR_ENOMEM;
        }
    }
    for (unsigned i = 0; i < helpers; i++) {
        if (pthread_create(&p->threads[i], NULL, helper_main, p) != 0) {
            cqr_par_destroy(p);
            return CQR_EIO;
        }
        p->nthreads++;
    }
    *out = p;
    return 0;
}

void cqr_par_destroy(cqr_par_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->left);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

unsigned cqr_par_helpers(const cqr_par_t *p)
{
    return p ? p->nthreads : 0;
}

void cqr_par_run(cqr_par_t *p, unsigned parts,
                 void (*fn)(void *arg, unsigned part), void *arg)
{
    if (!p || p->nthreads == 0 || parts < 2) {
        for (unsigned i = 0; i < parts; i++)
            fn(arg, i);
        return;
    }
    job_t j = {.fn = fn, .arg = arg, .parts = parts};
    pthread_mutex_lock(&p->mu);
    j.prev_q = p->tail;
    if (p->tail)
        p->tail->next_q = &j;
    else
        p->head = &j;
    p->tail = &j;
    j.queued = 1;
    /* One helper per part beyond the caller's first. */
    unsigned wake = parts - 1 < p->nthreads ? parts - 1 : p->nthreads;
    for (unsigned i = 0; i < wake; i++)
        pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);

    work_on(&j);

    /* Every part is claimed; wait for the helpers still running theirs. */
    pthread_mutex_lock(&p->mu);
    unqueue(p, &j);
    while (j.users > 0)
        pthread_cond_wait(&p->left, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
