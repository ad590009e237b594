/* compact.c -- compactions of cqr tables off the loop threads
 * (compact.h). */
#include "tables/compact.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "net/list.h"
#include "ops/log.h"

typedef struct job {
    cqr_compacts_t *cm;     /* owner */
    cqr_entry_t *entry;     /* reference held while it runs */
    uint64_t uid;           /* the table's registry uid (its claim) */
    const char *reason;     /* static, for the log */
    cqr_compact_cb cb;      /* NULL or called at the end */
    void *ud;               /* its argument */
    pthread_t tid;          /* a started job's thread */
    int threaded;           /* tid is set: join it */
    cqr_list_t link;        /* cm->active while it runs, then cm->ended
                               until joined (under mu) */
} job_t;

struct cqr_compacts {
    pthread_mutex_t mu;     /* guards everything below */
    pthread_cond_t cv;      /* signalled when a job ends */
    cqr_list_t active;      /* running jobs: their tables' claims */
    cqr_list_t ended;       /* finished threaded jobs, not joined yet */
    int stopping;           /* shutdown began: no new starts, and
                               running ones stop (atomic writes under
                               mu; read without it by progress) */
    uint64_t running, done, failed; /* counts */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cqr_compacts_create(cqr_compacts_t **out)
{
    cqr_compacts_t *cm = calloc(1, sizeof *cm);
    if (cm == NULL)
        return CQR_ENOMEM;
    pthread_mutex_init(&cm->mu, NULL);
    pthread_cond_init(&cm->cv, NULL);
    cqr_list_init(&cm->active);
    cqr_list_init(&cm->ended);
    *out = cm;
    return 0;
}

int cqr_compact_check(const cqr_entry_t *e, char *why, size_t whylen)
{
    const cqr_table_config_t *tc = cqr_table_config(e->table);
    if (tc->kind != CQR_KIND_CQR) {
        snprintf(why, whylen, "table '%s' is a %s table; only cqr tables "
                 "keep per-ID pointers to compact", e->name,
                 cqr_kind_name(tc->kind));
        return CQR_EUNSUPPORTED;
    }
    if (tc->evict_after_phases) {
        snprintf(why, whylen, "table '%s' evicts IDs (evict_after_phases "
                 "%" PRIu32 "), which needs the map layout; compaction "
                 "is for tables without eviction", e->name,
                 tc->evict_after_phases);
        return CQR_EUNSUPPORTED;
    }
    return 0;
}

/* 1 if a job of uid is in cm->active. Caller holds mu. */
static int claimed(const cqr_compacts_t *cm, uint64_t uid)
{
    for (const cqr_list_t *l = cm->active.next; l != &cm->active;
         l = l->next)
        if (cqr_container_of(l, job_t, link)->uid == uid)
            return 1;
    return 0;
}

/* Joins and frees the finished threaded jobs. Caller holds mu. */
static void reap(cqr_compacts_t *cm)
{
    for (cqr_list_t *l = cqr_list_pop(&cm->ended); l != NULL;
         l = cqr_list_pop(&cm->ended)) {
        job_t *j = cqr_container_of(l, job_t, link);
        pthread_join(j->tid, NULL);
        free(j);
    }
}

/* Checks e and claims its table with a new job. */
static int claim(cqr_compacts_t *cm, cqr_entry_t *e, const char *reason,
                 job_t **out, char *why, size_t whylen)
{
    int rc = cqr_compact_check(e, why, whylen);
    if (rc != 0)
        return rc;
    job_t *j = calloc(1, sizeof *j);
    if (j == NULL) {
        snprintf(why, whylen, "out of memory");
        return CQR_ENOMEM;
    }
    pthread_mutex_lock(&cm->mu);
    reap(cm);
    if (__atomic_load_n(&cm->stopping, __ATOMIC_RELAXED))
        rc = CQR_ESHUTDOWN;
    else if (claimed(cm, e->uid))
        rc = CQR_EBUSY;
    if (rc == 0) {
        cqr_entry_ref(e);
        j->cm = cm;
        j->entry = e;
        j->uid = e->uid;
        j->reason = reason;
        cqr_list_add_tail(&cm->active, &j->link);
        cm->running++;
    }
    pthread_mutex_unlock(&cm->mu);
    if (rc == CQR_ESHUTDOWN)
        snprintf(why, whylen, "the server is shutting down");
    else if (rc == CQR_EBUSY)
        snprintf(why, whylen, "a compaction of table '%s' is already "
                 "running", e->name);
    if (rc != 0) {
        free(j);
        return rc;
    }
    *out = j;
    return 0;
}

/* A compaction's progress (cqr_table_compact_ex): one log line per stage
 * (and per 2^20 IDs of an old static set read back), with the time since
 * it began; asks the engine to stop once the server shuts down. */
typedef struct prog {
    const job_t *j;
    double t0;
} prog_t;

static int progress(void *ud, const char *stage, uint64_t done,
                    uint64_t total)
{
    const prog_t *p = ud;
    cqr_log(CQR_LOG_INFO, "compact", "compaction of %s: %s %" PRIu64
            "/%" PRIu64 " IDs at %.1f s", p->j->entry->name, stage, done,
            total, now_mono() - p->t0);
    return __atomic_load_n(&p->j->cm->stopping, __ATOMIC_RELAXED);
}

/* The compaction itself, on whichever thread runs j. */
static int compact(job_t *j, cqr_compact_res_t *res, char *why,
                   size_t whylen)
{
    cqr_entry_t *e = j->entry;
    cqr_table_stats_t st;
    cqr_table_stats(e->table, &st);
    cqr_log(CQR_LOG_INFO, "compact", "compaction of %s started reason=%s "
            "known_ids=%" PRIu64 " static_ids=%" PRIu64 " index_bytes=%"
            PRIu64, e->name, j->reason, st.known_ids, st.static_ids,
            st.index_bytes);
    double t0 = now_mono();
    uint64_t moved = 0;
    prog_t pr = {j, t0};
    int rc = cqr_table_compact_ex(e->table, progress, &pr, &moved);
    double secs = now_mono() - t0;
    if (rc == CQR_ECANCELED)
        snprintf(why, whylen, "compaction of table '%s' stopped: the server "
                 "is shutting down (nothing changed)", e->name);
    else if (rc == CQR_EBUSY)
        snprintf(why, whylen, "a cluster phase or a compaction of table "
                 "'%s' is running; try again when it is done", e->name);
    else if (rc == CQR_EUNSUPPORTED)
        cqr_compact_check(e, why, whylen);
    else if (rc != 0)
        snprintf(why, whylen, "compaction of table '%s' failed: %s",
                 e->name, cqr_strerror(rc));
    if (rc != 0) {
        cqr_log(CQR_LOG_WARN, "compact", "compaction of %s failed err=%s "
                "seconds=%.3f detail=\"%s\"", e->name, cqr_errname(rc),
                secs, why);
        return rc;
    }
    cqr_table_stats(e->table, &st);
    memset(res, 0, sizeof *res);
    res->moved_ids = moved;
    res->known_ids = st.known_ids;
    res->static_ids = st.static_ids;
    res->index_bytes = st.index_bytes;
    res->seconds = secs;
    cqr_log(CQR_LOG_INFO, "compact", "compaction of %s done: %" PRIu64
            " IDs moved in %.3f s known_ids=%" PRIu64 " static_ids=%" PRIu64
            " index_bytes=%" PRIu64 " bytes_per_id=%.2f", e->name, moved,
            secs, st.known_ids, st.static_ids, st.index_bytes,
            st.bytes_per_known_id);
    return 0;
}

/* Releases j's claim (and, unless threaded, j). Returns its entry for
 * the caller to drop last. */
static cqr_entry_t *release(job_t *j, int rc)
{
    cqr_compacts_t *cm = j->cm;
    cqr_entry_t *e = j->entry;
    pthread_mutex_lock(&cm->mu);
    cqr_list_del(&j->link);
    cm->running--;
    if (rc == 0)
        cm->done++;
    else
        cm->failed++;
    if (j->threaded)
        cqr_list_add_tail(&cm->ended, &j->link);
    pthread_cond_broadcast(&cm->cv);
    pthread_mutex_unlock(&cm->mu);
    if (!j->threaded)
        free(j);
    return e;
}

static void *job_main(void *arg)
{
    job_t *j = arg;
    cqr_compact_res_t res;
    memset(&res, 0, sizeof res);
    char why[256] = "";
    int rc = compact(j, &res, why, sizeof why);
    /* The callback answers the client: after it, a Describe must see the
     * claim gone, so release first (j stays until joined). */
    cqr_compact_cb cb = j->cb;
    void *ud = j->ud;
    cqr_entry_t *e = release(j, rc);
    if (cb != NULL)
        cb(ud, rc, &res, why);
    cqr_entry_unref(e); /* last: may destroy a dropped table */
    return NULL;
}

int cqr_compacts_start(cqr_compacts_t *cm, cqr_entry_t *e,
                       const char *reason, cqr_compact_cb cb, void *ud,
                       char *why, size_t whylen)
{
    job_t *j = NULL;
    int rc = claim(cm, e, reason, &j, why, whylen);
    if (rc != 0)
        return rc;
    j->cb = cb;
    j->ud = ud;
    /* Published before the thread can end (release reads it). */
    j->threaded = 1;
    pthread_mutex_lock(&cm->mu);
    rc = pthread_create(&j->tid, NULL, job_main, j) == 0 ? 0 : CQR_ENOMEM;
    pthread_mutex_unlock(&cm->mu);
    if (rc != 0) {
        j->threaded = 0;
        snprintf(why, whylen, "cannot start a compaction thread");
        cqr_entry_unref(release(j, rc));
    }
    return rc;
}

int cqr_compacts_run(cqr_compacts_t *cm, cqr_entry_t *e, const char *reason,
                     cqr_compact_res_t *res, char *why, size_t whylen)
{
    job_t *j = NULL;
    int rc = claim(cm, e, reason, &j, why, whylen);
    if (rc != 0)
        return rc;
    rc = compact(j, res, why, whylen);
    cqr_entry_unref(release(j, rc));
    return rc;
}

int cqr_compacts_busy(cqr_compacts_t *cm, uint64_t uid)
{
    pthread_mutex_lock(&cm->mu);
    int b = claimed(cm, uid);
    pthread_mutex_unlock(&cm->mu);
    return b;
}

void cqr_compacts_counts(cqr_compacts_t *cm, uint64_t *running,
                         uint64_t *done, uint64_t *failed)
{
    pthread_mutex_lock(&cm->mu);
    *running = cm->running;
    *done = cm->done;
    *failed = cm->failed;
    pthread_mutex_unlock(&cm->mu);
}

void cqr_compacts_stop(cqr_compacts_t *cm)
{
    if (cm == NULL)
        return;
    pthread_mutex_lock(&cm->mu);
    __atomic_store_n(&cm->stopping, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&cm->mu);
}

void cqr_compacts_shutdown(cqr_compacts_t *cm)
{
    pthread_mutex_lock(&cm->mu);
    __atomic_store_n(&cm->stopping, 1, __ATOMIC_RELAXED);
    if (cm->running > 0)
        cqr_log(CQR_LOG_INFO, "compact", "stopping %" PRIu64
                " compaction(s)", cm->running);
    while (cm->running > 0)
        pthread_cond_wait(&cm->cv, &cm->mu);
    reap(cm);
    pthread_mutex_unlock(&cm->mu);
}

void cqr_compacts_destroy(cqr_compacts_t *cm)
{
    if (cm == NULL)
        return;
    cqr_compacts_shutdown(cm);
    assert(cqr_list_empty(&cm->active));
    pthread_cond_destroy(&cm->cv);
    pthread_mutex_destroy(&cm->mu);
    free(cm);
}
