#include "tables/phase.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "ops/log.h"

/* Records kept overall, finished ones beyond this are pruned oldest
 * first (queued and running ones are never pruned). */
#define HISTORY_TOTAL 1024
/* Progress lines at info level: at most one per this many seconds, so a
 * short phase logs only "queued" and "done" and a long one shows it is
 * alive. Stage and chunk changes are logged at debug level. */
#define LOG_EVERY_SECONDS 2.0

typedef struct job {
    cqr_phase_status_t st;  /* guarded by pm->mu */
    cqr_phases_t *pm;       /* owner */
    cqr_entry_t *entry;     /* reference held while queued or running;
                               NULL once finished */
    cqr_phase_t *ph;        /* engine phase; owned by the queue, then by
                               the one worker that dequeued it */
    double t_begin;         /* monotonic seconds at begin */
    /* Worker-only state for rate-limiting progress lines. */
    double last_log;        /* time of the last progress line */
    char last_stage[16];    /* stage of the last progress line */
    uint32_t last_chunk;    /* chunk of the last progress line */
    struct job *qnext;      /* queue link (under mu) */
    struct job *hprev, *hnext; /* history list, oldest first (under mu) */
} job_t;

struct cqr_phases {
    pthread_mutex_t mu;     /* guards everything below and jobs' st */
    pthread_cond_t cv;      /* signals workers: queue non-empty or stop */
    job_t *qhead, *qtail;   /* queued jobs, FIFO */
    job_t *hhead, *htail;   /* every remembered job, by id */
    size_t nhist;           /* length of the history list */
    uint64_t next_id;       /* last phase id handed out */
    int stopping;           /* shutdown began: no new starts */
    int joined;             /* workers joined */
    cqr_phase_counts_t counts; /* stats */
    cqr_phase_hook_cb hook; /* before/after each phase (phase.h); set
                               before any phase starts */
    void *hook_ud;          /* its argument */
    uint32_t nworkers;      /* threads in workers[] */
    pthread_t *workers;     /* the pool */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Removes finished records beyond the per-table and total caps, oldest
 * first. Caller holds mu; returns jobs to free after unlocking (their
 * entries are already NULL). */
static void prune(cqr_phases_t *pm, uint64_t uid)
{
    size_t of_table = 0;
    for (job_t *j = pm->htail; j != NULL; j = j->hprev)
        if (j->st.table_uid == uid)
            of_table++;
    job_t *j = pm->hhead;
    while (j != NULL && (of_table > CQR_PHASE_HISTORY ||
                         pm->nhist > HISTORY_TOTAL)) {
        job_t *next = j->hnext;
        int finished = j->st.state == CQR_PHASE_DONE ||
                       j->st.state == CQR_PHASE_FAILED;
        int over_table = j->st.table_uid == uid &&
                         of_table > CQR_PHASE_HISTORY;
        if (finished && (over_table || pm->nhist > HISTORY_TOTAL)) {
            if (j->st.table_uid == uid)
                of_table--;
            if (j->hprev) j->hprev->hnext = j->hnext;
            else pm->hhead = j->hnext;
            if (j->hnext) j->hnext->hprev = j->hprev;
            else pm->htail = j->hprev;
            pm->nhist--;
            assert(j->entry == NULL && j->ph == NULL);
            free(j);
        }
        j = next;
    }
}

static void progress_cb(void *ud, const cqr_progress_t *p)
{
    job_t *j = ud;
    cqr_phases_t *pm = j->pm;

    pthread_mutex_lock(&pm->mu);
    snprintf(j->st.stage, sizeof j->st.stage, "%s", p->stage);
    j->st.fraction = p->fraction;
    if (p->inertia >= 0)
        j->st.inertia = p->inertia;
    pthread_mutex_unlock(&pm->mu);

    double t = now_mono();
    int changed = strcmp(j->last_stage, p->stage) != 0 ||
                  j->last_chunk != p->chunk;
    cqr_log_level_t level = CQR_LOG_INFO;
    if (t - j->last_log < LOG_EVERY_SECONDS) {
        if (!changed || !cqr_log_enabled(CQR_LOG_DEBUG))
            return;
        level = CQR_LOG_DEBUG;
    } else {
        j->last_log = t;
    }
    j->last_chunk = p->chunk;
    snprintf(j->last_stage, sizeof j->last_stage, "%s", p->stage);
    if (strcmp(p->stage, "kmeans") == 0)
        cqr_log(level, "phase",
                "table=%s phase=%" PRIu64 " stage=%s chunk=%" PRIu32 "/%"
                PRIu32 " iter=%" PRIu32 "/%" PRIu32 " inertia=%.6g "
                "fraction=%.3f",
                j->st.table, j->st.phase_id, p->stage, p->chunk + 1,
                p->chunks, p->iter, p->iters, p->inertia, p->fraction);
    else
        cqr_log(level, "phase",
                "table=%s phase=%" PRIu64 " stage=%s chunk=%" PRIu32 "/%"
                PRIu32 " fraction=%.3f",
                j->st.table, j->st.phase_id, p->stage, p->chunk + 1,
                p->chunks, p->fraction);
}

/* Runs one dequeued job to its end on a worker thread. */
static void run_job(cqr_phases_t *pm, job_t *j)
{
    if (pm->hook != NULL)
        pm->hook(pm->hook_ud, j->st.table, j->st.phase_id, 0);
    j->last_log = now_mono();
    int rc = cqr_phase_run(j->ph, progress_cb, j);
    const char *failed_at = "run";
    if (rc == 0) {
        failed_at = "commit";
        rc = cqr_phase_commit(j->ph);
    }
    cqr_phase_result_t res;
    memset(&res, 0, sizeof res);
    if (rc == 0)
        cqr_phase_result(j->ph, &res);
    /* Uncommitted: the engine keeps its live state and stops logging. */
    cqr_phase_destroy(j->ph);
    double total = now_mono() - j->t_begin;

    pthread_mutex_lock(&pm->mu);
    j->ph = NULL;
    cqr_entry_t *e = j->entry;
    j->entry = NULL;
    if (rc == 0) {
        j->st.state = CQR_PHASE_DONE;
        j->st.fraction = 1.0;
        j->st.inertia = res.inertia;
        j->st.seconds = res.seconds_total > 0 ? res.seconds_total : total;
        j->st.phase_no = res.phase_no;
        j->st.ids_assigned = res.ids_assigned;
        j->st.replayed_pushes = res.replayed_pushes;
        j->st.commit_seconds = res.seconds_commit;
        pm->counts.done++;
    } else {
        j->st.state = CQR_PHASE_FAILED;
        j->st.seconds = total;
        snprintf(j->st.error, sizeof j->st.error, "%s failed: %s",
                 failed_at, cqr_strerror(rc));
        pm->counts.failed++;
    }
    pm->counts.running--;
    cqr_phase_status_t st = j->st;
    prune(pm, st.table_uid); /* may free j */
    pthread_mutex_unlock(&pm->mu);

    if (rc == 0)
        cqr_log(CQR_LOG_INFO, "phase",
                "done table=%s phase=%" PRIu64 " phase_no=%" PRIu32
                " scheduled=%d seconds=%.3f snapshot=%.3f kmeans=%.3f "
                "assign=%.3f commit_pause=%.4f inertia=%.6g ids=%" PRIu64
                " sample=%" PRIu64 " replayed=%" PRIu64,
                st.table, st.phase_id, st.phase_no, st.scheduled,
                st.seconds, res.seconds_snapshot, res.seconds_kmeans,
                res.seconds_assign, res.seconds_commit, res.inertia,
                res.ids_assigned, res.sample_size, res.replayed_pushes);
    else
        cqr_log(CQR_LOG_WARN, "phase",
                "failed table=%s phase=%" PRIu64 " at=%s err=%s "
                "seconds=%.3f", st.table, st.phase_id, failed_at,
                cqr_errname(rc), st.seconds);
    if (rc == 0 && pm->hook != NULL)
        pm->hook(pm->hook_ud, st.table, st.phase_id, 1);
    /* Last: may destroy a dropped table. */
    cqr_entry_unref(e);
}

void cqr_phases_set_hook(cqr_phases_t *pm, cqr_phase_hook_cb cb, void *ud)
{
    pthread_mutex_lock(&pm->mu);
    pm->hook = cb;
    pm->hook_ud = ud;
    pthread_mutex_unlock(&pm->mu);
}

static void *worker_main(void *arg)
{
    cqr_phases_t *pm = arg;
    pthread_mutex_lock(&pm->mu);
    for (;;) {
        while (pm->qhead == NULL && !pm->stopping)
            pthread_cond_wait(&pm->cv, &pm->mu);
        if (pm->qhead == NULL)
            break; /* stopping and nothing queued */
        job_t *j = pm->qhead;
        pm->qhead = j->qnext;
        if (pm->qhead == NULL)
            pm->qtail = NULL;
        j->qnext = NULL;
        j->st.state = CQR_PHASE_RUNNING;
        pm->counts.queued--;
        pm->counts.running++;
        pthread_mutex_unlock(&pm->mu);
        run_job(pm, j);
        pthread_mutex_lock(&pm->mu);
    }
    pthread_mutex_unlock(&pm->mu);
    return NULL;
}

int cqr_phases_create(uint32_t workers, cqr_phases_t **out)
{
    assert(workers >= 1);
    cqr_phases_t *pm = calloc(1, sizeof *pm);
    if (pm == NULL)
        return CQR_ENOMEM;
    pm->workers = calloc(workers, sizeof *pm->workers);
    if (pm->workers == NULL) {
        free(pm);
        return CQR_ENOMEM;
    }
    pthread_mutex_init(&pm->mu, NULL);
    pthread_cond_init(&pm->cv, NULL);
    for (uint32_t i = 0; i < workers; i++) {
        if (pthread_create(&pm->workers[i], NULL, worker_main, pm) != 0) {
            pm->nworkers = i;
            cqr_phases_destroy(pm);
            return CQR_EINTERNAL;
        }
        pm->nworkers = i + 1;
    }
    *out = pm;
    return 0;
}

int cqr_phases_start(cqr_phases_t *pm, cqr_entry_t *e, int scheduled,
                     uint64_t *phase_id)
{
    /* Cheap refusals first, so a Cluster RPC on a wrong table costs no
     * snapshot. The engine re-checks both. */
    if (cqr_table_config(e->table)->kind != CQR_KIND_CQR)
        return CQR_EUNSUPPORTED;
    pthread_mutex_lock(&pm->mu);
    int stopping = pm->stopping;
    pthread_mutex_unlock(&pm->mu);
    if (stopping)
        return CQR_ESHUTDOWN;

    job_t *j = calloc(1, sizeof *j);
    if (j == NULL)
        return CQR_ENOMEM;
    j->pm = pm;
    j->t_begin = now_mono();
    int rc = cqr_phase_begin(e->table, &j->ph);
    if (rc != 0) {
        free(j);
        return rc;
    }

    pthread_mutex_lock(&pm->mu);
    if (pm->stopping) {
        /* Shutdown raced with us: abort without commit. */
        pthread_mutex_unlock(&pm->mu);
        cqr_phase_destroy(j->ph);
        free(j);
        return CQR_ESHUTDOWN;
    }
    cqr_entry_ref(e);
    j->entry = e;
    j->st.phase_id = ++pm->next_id;
    j->st.table_uid = e->uid;
    snprintf(j->st.table, sizeof j->st.table, "%s", e->name);
    j->st.state = CQR_PHASE_QUEUED;
    j->st.scheduled = scheduled;
    j->st.inertia = -1;
    j->hprev = pm->htail;
    if (pm->htail) pm->htail->hnext = j;
    else pm->hhead = j;
    pm->htail = j;
    pm->nhist++;
    if (pm->qtail) pm->qtail->qnext = j;
    else pm->qhead = j;
    pm->qtail = j;
    pm->counts.started++;
    pm->counts.queued++;
    if (scheduled)
        pm->counts.scheduled++;
    uint64_t id = j->st.phase_id;
    /* Logged before a worker can pick it up, so "queued" always comes
     * before that phase's "done" in the log. */
    cqr_log(CQR_LOG_INFO, "phase", "queued table=%s phase=%" PRIu64
            " scheduled=%d", e->name, id, scheduled);
    pthread_cond_signal(&pm->cv);
    pthread_mutex_unlock(&pm->mu);
    *phase_id = id;
    return 0;
}

int cqr_phases_status(cqr_phases_t *pm, uint64_t table_uid,
                      uint64_t phase_id, cqr_phase_status_t *out)
{
    int rc = CQR_ENOPHASE;
    pthread_mutex_lock(&pm->mu);
    for (job_t *j = pm->htail; j != NULL; j = j->hprev) {
        if (j->st.table_uid != table_uid)
            continue;
        if (phase_id != 0 && j->st.phase_id != phase_id)
            continue;
        *out = j->st;
        if (j->st.state == CQR_PHASE_QUEUED ||
            j->st.state == CQR_PHASE_RUNNING)
            out->seconds = now_mono() - j->t_begin;
        rc = 0;
        break;
    }
    pthread_mutex_unlock(&pm->mu);
    return rc;
}

void cqr_phases_counts(cqr_phases_t *pm, cqr_phase_counts_t *out)
{
    pthread_mutex_lock(&pm->mu);
    *out = pm->counts;
    pthread_mutex_unlock(&pm->mu);
}

void cqr_phases_shutdown(cqr_phases_t *pm)
{
    pthread_mutex_lock(&pm->mu);
    if (pm->joined) {
        pthread_mutex_unlock(&pm->mu);
        return;
    }
    pm->stopping = 1;
    /* Take the queued jobs away from the workers and abort them. */
    job_t *q = pm->qhead;
    pm->qhead = pm->qtail = NULL;
    uint64_t running = pm->counts.running;
    pthread_cond_broadcast(&pm->cv);
    pthread_mutex_unlock(&pm->mu);

    while (q != NULL) {
        job_t *next = q->qnext;
        cqr_phase_destroy(q->ph);
        pthread_mutex_lock(&pm->mu);
        q->ph = NULL;
        q->qnext = NULL;
        cqr_entry_t *e = q->entry;
        q->entry = NULL;
        q->st.state = CQR_PHASE_FAILED;
        snprintf(q->st.error, sizeof q->st.error,
                 "aborted: server shutting down");
        pm->counts.queued--;
        pm->counts.failed++;
        /* Copy before unlocking: a worker may prune the record now. */
        cqr_phase_status_t st = q->st;
        pthread_mutex_unlock(&pm->mu);
        cqr_log(CQR_LOG_INFO, "phase", "aborted table=%s phase=%" PRIu64
                " reason=shutdown", st.table, st.phase_id);
        cqr_entry_unref(e);
        q = next;
    }
    if (running > 0)
        cqr_log(CQR_LOG_INFO, "phase", "waiting for running phases "
                "count=%" PRIu64, running);
    for (uint32_t i = 0; i < pm->nworkers; i++)
        pthread_join(pm->workers[i], NULL);
    pthread_mutex_lock(&pm->mu);
    pm->joined = 1;
    pthread_mutex_unlock(&pm->mu);
}

void cqr_phases_destroy(cqr_phases_t *pm)
{
    if (pm == NULL)
        return;
    cqr_phases_shutdown(pm);
    job_t *j = pm->hhead;
    while (j != NULL) {
        job_t *next = j->hnext;
        assert(j->entry == NULL && j->ph == NULL);
        free(j);
        j = next;
    }
    pthread_cond_destroy(&pm->cv);
    pthread_mutex_destroy(&pm->mu);
    free(pm->workers);
    free(pm);
}
