/* par.c -- helper threads sharing one call's parts (see par.h). */
#include "par.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

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
    unsigned queued;      /* jobs in the list (atomic: spinners read it) */
    unsigned sleepers;    /* helpers in pthread_cond_wait (pool mutex) */
    int stop;             /* (atomic: spinners read it) */
    unsigned nthreads;
    pthread_t *threads;
};

/* How long an idle helper keeps looking for work before it sleeps. A
 * futex wake-up took longer than a whole part on the 2-core VMs this was
 * measured on, so a helper that slept between a trainer's requests
 * arrived after the caller had done the work itself; one that spins
 * across the gap between requests picks parts up within a microsecond.
 * The spin yields the CPU on every round, so a runnable thread (the
 * trainer's client on a small machine) is not kept waiting. */
#define SPIN_NS 300000

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether work (or stop) showed up within SPIN_NS, without the mutex. */
static int spin_for_work(cqr_par_t *p)
{
    uint64_t t0 = now_ns();
    for (unsigned i = 0;; i++) {
        if (__atomic_load_n(&p->queued, __ATOMIC_ACQUIRE) ||
            __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
            return 1;
        if ((i & 63) == 63) {
            if (now_ns() - t0 > SPIN_NS)
                return 0;
            sched_yield();
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

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
    __atomic_store_n(&p->queued, p->queued - 1, __ATOMIC_RELEASE);
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
        while (!p->stop && !p->head) {
            pthread_mutex_unlock(&p->mu);
            int found = spin_for_work(p);
            pthread_mutex_lock(&p->mu);
            if (found || p->stop || p->head)
                continue;
            p->sleepers++;
            pthread_cond_wait(&p->work, &p->mu);
            p->sleepers--;
        }
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
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
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
    __atomic_store_n(&p->queued, p->queued + 1, __ATOMIC_RELEASE);
    /* One helper per part beyond the caller's first; spinning helpers
     * see the job without a wake-up. */
    unsigned wake = parts - 1 < p->sleepers ? parts - 1 : p->sleepers;
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
