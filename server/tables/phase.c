#include "tables/phase.h"

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
                               the one worker that dequeued it; NULL
                               until a scheduled phase is begun */
    double t_begin;         /* monotonic seconds at start or notice */
    double t_run;           /* monotonic seconds when run began */
    int cancel;             /* cancel requested (under mu) */
    char cancel_why[64];    /* why, for the error text (under mu) */
    /* Worker-only state for rate-limiting progress lines. */
    double last_log;        /* time of the last progress line */
    char last_stage[16];    /* stage of the last progress line */
    uint32_t last_chunk;    /* chunk of the last progress line */
    cqr_list_t qlink;       /* pm->queue while queued (under mu) */
    cqr_list_t hlink;       /* pm->hist once it has an id (under mu) */
    cqr_list_t alink;       /* pm->active while it holds its table's
                               claim (under mu) */
} job_t;

struct cqr_phases {
    pthread_mutex_t mu;     /* guards everything below and jobs' st */
    pthread_cond_t cv;      /* signals workers: queue non-empty or stop */
    cqr_list_t queue;       /* queued jobs, FIFO */
    cqr_list_t hist;        /* every remembered job, by id */
    cqr_list_t active;      /* jobs holding a claim: at most one per table,
                               from start or notice to their end */
    size_t nhist;           /* length of the history list */
    uint64_t next_id;       /* last phase id handed out */
    int stopping;           /* shutdown began: no new starts */
    int joined;             /* workers joined */
    cqr_phase_counts_t counts; /* stats */
    cqr_phase_hook_cb hook; /* before/after each phase (phase.h); set
                               before any phase starts */
    void *hook_ud;          /* its argument */
    cqr_phase_commit_cb commit_cb; /* after each commit (phase.h) */
    void *commit_ud;        /* its argument */
    atomic_uint_fast64_t *start_errors; /* scheduled phases that could not
                                           begin, or NULL */
    uint32_t nworkers;      /* threads in workers[] */
    pthread_t *workers;     /* the pool */
};

static job_t *hist_job(cqr_list_t *l)
{
    return cqr_container_of(l, job_t, hlink);
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Removes finished records beyond the per-table and total caps, oldest
 * first. Caller holds mu. */
static void prune(cqr_phases_t *pm, uint64_t uid)
{
    size_t of_table = 0;
    for (cqr_list_t *l = pm->hist.next; l != &pm->hist; l = l->next)
        if (hist_job(l)->st.table_uid == uid)
            of_table++;
    cqr_list_t *l = pm->hist.next;
    while (l != &pm->hist && (of_table > CQR_PHASE_HISTORY ||
                              pm->nhist > HISTORY_TOTAL)) {
        job_t *j = hist_job(l);
        l = l->next; /* j may be freed below */
        int finished = j->st.state == CQR_PHASE_DONE ||
                       j->st.state == CQR_PHASE_FAILED;
        int over_table = j->st.table_uid == uid &&
                         of_table > CQR_PHASE_HISTORY;
        if (finished && (over_table || pm->nhist > HISTORY_TOTAL)) {
            if (j->st.table_uid == uid)
                of_table--;
            cqr_list_del(&j->hlink);
            pm->nhist--;
            assert(j->entry == NULL && j->ph == NULL);
            free(j);
        }
    }
}

/* 1 when a phase of the table with this uid is queued or running. Caller
 * holds mu. */
static int claimed(const cqr_phases_t *pm, uint64_t uid)
{
    for (const cqr_list_t *l = pm->active.next; l != &pm->active;
         l = l->next)
        if (cqr_container_of(l, job_t, alink)->st.table_uid == uid)
            return 1;
    return 0;
}

/* A job that claims e's table, or NULL (no memory). */
static job_t *job_new(cqr_phases_t *pm, const cqr_entry_t *e)
{
    job_t *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->pm = pm;
    j->t_begin = now_mono();
    j->st.table_uid = e->uid;
    return j;
}

/* Gives the claiming job j an id, a history record and a place in the
 * queue, with its own reference to e. Caller holds mu. */
static uint64_t enqueue(cqr_phases_t *pm, job_t *j, cqr_entry_t *e,
                        int scheduled)
{
    cqr_entry_ref(e);
    j->entry = e;
    j->st.phase_id = ++pm->next_id;
    snprintf(j->st.table, sizeof j->st.table, "%s", e->name);
    j->st.state = CQR_PHASE_QUEUED;
    j->st.scheduled = scheduled;
    j->st.inertia = -1;
    cqr_list_add_tail(&pm->hist, &j->hlink);
    pm->nhist++;
    cqr_list_add_tail(&pm->queue, &j->qlink);
    pm->counts.started++;
    pm->counts.queued++;
    if (scheduled)
        pm->counts.scheduled++;
    /* Logged before a worker can pick it up, so "queued" always comes
     * before that phase's "done" in the log. */
    cqr_log(CQR_LOG_INFO, "phase", "queued table=%s phase=%" PRIu64
            " scheduled=%d", e->name, j->st.phase_id, scheduled);
    pthread_cond_signal(&pm->cv);
    return j->st.phase_id;
}

static void progress_cb(void *ud, const cqr_progress_t *p)
{
    job_t *j = ud;
    cqr_phases_t *pm = j->pm;

    /* Time left: the rate so far over what is left. The fraction counts
     * planned k-means iterations, so an early stop makes this an upper
     * bound until the first chunk ends. */
    double t = now_mono(), el = t - j->t_run;
    double eta = p->fraction > 0.01 && p->fraction < 1.0
                     ? el * (1.0 - p->fraction) / p->fraction
                     : (p->fraction >= 1.0 ? 0.0 : -1.0);
    pthread_mutex_lock(&pm->mu);
    snprintf(j->st.stage, sizeof j->st.stage, "%s", p->stage);
    j->st.fraction = p->fraction;
    j->st.eta_seconds = eta;
    j->st.chunk = p->chunk + 1;
    j->st.chunks = p->chunks;
    if (strcmp(p->stage, "kmeans") == 0) {
        j->st.iter = p->iter;
        j->st.iters = p->iters;
    }
    else if (strcmp(p->stage, "snapshot") == 0)
        j->st.iter = 0;
    if (p->inertia >= 0)
        j->st.inertia = p->inertia;
    pthread_mutex_unlock(&pm->mu);

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
                "fraction=%.3f eta=%.1f",
                j->st.table, j->st.phase_id, p->stage, p->chunk + 1,
                p->chunks, p->iter, p->iters, p->inertia, p->fraction, eta);
    else
        cqr_log(level, "phase",
                "table=%s phase=%" PRIu64 " stage=%s chunk=%" PRIu32 "/%"
                PRIu32 " fraction=%.3f eta=%.1f",
                j->st.table, j->st.phase_id, p->stage, p->chunk + 1,
                p->chunks, p->fraction, eta);
}

/* Counts and logs a scheduled phase that could not be queued or begun. */
static void start_error(cqr_phases_t *pm, const char *table, int rc)
{
    if (pm->start_errors != NULL)
        atomic_fetch_add_explicit(pm->start_errors, 1,
                                  memory_order_relaxed);
    cqr_log(CQR_LOG_WARN, "phase", "scheduled start failed table=%s "
            "err=%s", table, cqr_errname(rc));
}

/* Begins (when scheduled), runs and commits j on a worker thread; *at
 * names the step that failed. */
static int run_phase(cqr_phases_t *pm, job_t *j, cqr_phase_result_t *res,
                     const char **at)
{
    /* A scheduled phase was queued unbegun (cqr_phases_due): begin it
     * here, off the push path. */
    *at = "begin";
    pthread_mutex_lock(&pm->mu);
    cqr_phase_t *ph = j->ph;
    int cancel = j->cancel;
    pthread_mutex_unlock(&pm->mu);
    if (cancel)
        return CQR_ECANCELED; /* cancelled before it began */
    if (ph == NULL) {
        int rc = cqr_phase_begin(j->entry->table, &ph);
        if (rc != 0) {
            start_error(pm, j->st.table, rc);
            return rc;
        }
        /* Published under mu, where a cancel looks for it. */
        pthread_mutex_lock(&pm->mu);
        j->ph = ph;
        if (j->cancel)
            cqr_phase_cancel(ph);
        pthread_mutex_unlock(&pm->mu);
    }
    if (pm->hook != NULL)
        pm->hook(pm->hook_ud, j->st.table, j->st.phase_id, 0);
    j->last_log = j->t_run = now_mono();
    *at = "run";
    int rc = cqr_phase_run(ph, progress_cb, j);
    if (rc == 0) {
        *at = "commit";
        rc = cqr_phase_commit(ph);
    }
    if (rc == 0)
        cqr_phase_result(ph, res);
    return rc;
}

/* Records the end of j (result rc, failed step `at`, figures res) and
 * releases its claim. Returns the table reference j held, for the caller
 * to drop last, and j's final status in *st (j itself may be pruned). */
static cqr_entry_t *finish(cqr_phases_t *pm, job_t *j, int rc,
                           const char *at, const cqr_phase_result_t *res,
                           cqr_phase_status_t *st)
{
    double total = now_mono() - j->t_begin;
    pthread_mutex_lock(&pm->mu);
    j->ph = NULL;
    cqr_entry_t *e = j->entry;
    j->entry = NULL;
    cqr_list_del(&j->alink);
    if (rc == 0) {
        j->st.state = CQR_PHASE_DONE;
        j->st.fraction = 1.0;
        j->st.inertia = res->inertia;
        j->st.seconds = res->seconds_total > 0 ? res->seconds_total : total;
        j->st.phase_no = res->phase_no;
        j->st.ids_assigned = res->ids_assigned;
        j->st.replayed_pushes = res->replayed_pushes;
        j->st.commit_seconds = res->seconds_commit;
        j->st.kmeans_iters = res->kmeans_iters_max;
        j->st.chunk = j->st.chunks; /* all done (replay reports chunk 1) */
        j->st.eta_seconds = 0;
        pm->counts.done++;
    } else {
        j->st.state = CQR_PHASE_FAILED;
        j->st.seconds = total;
        j->st.eta_seconds = -1;
        if (rc == CQR_ECANCELED) {
            j->st.cancelled = 1;
            snprintf(j->st.error, sizeof j->st.error, "cancelled: %s",
                     j->cancel_why);
        } else if (rc == CQR_ENONFINITE) {
            snprintf(j->st.error, sizeof j->st.error, "%s failed: the "
                     "phase would make values NaN or Inf (k-means inertia, "
                     "centroids or residuals overflow); the table keeps its "
                     "previous state", at);
        } else {
            snprintf(j->st.error, sizeof j->st.error, "%s failed: %s", at,
                     cqr_strerror(rc));
        }
        pm->counts.failed++;
    }
    pm->counts.running--;
    *st = j->st;
    prune(pm, st->table_uid); /* may free j */
    pthread_mutex_unlock(&pm->mu);
    return e;
}

/* Runs one dequeued job to its end on a worker thread. */
static void run_job(cqr_phases_t *pm, job_t *j)
{
    cqr_phase_result_t res;
    memset(&res, 0, sizeof res);
    const char *at = "begin";
    int rc = run_phase(pm, j, &res, &at);
    /* Taken under mu, where a cancel looks for it. Uncommitted: the
     * engine keeps its live state and stops logging. */
    pthread_mutex_lock(&pm->mu);
    cqr_phase_t *ph = j->ph;
    j->ph = NULL;
    pthread_mutex_unlock(&pm->mu);
    cqr_phase_destroy(ph);
    cqr_phase_status_t st;
    cqr_entry_t *e = finish(pm, j, rc, at, &res, &st);

    if (rc == 0)
        cqr_log(CQR_LOG_INFO, "phase",
                "done table=%s phase=%" PRIu64 " phase_no=%" PRIu32
                " scheduled=%d seconds=%.3f snapshot=%.3f kmeans=%.3f "
                "assign=%.3f commit_pause=%.4f inertia=%.6g ids=%" PRIu64
                " sample=%" PRIu64 " kmeans_iters=%" PRIu32 "/%" PRIu32
                " replayed=%" PRIu64,
                st.table, st.phase_id, st.phase_no, st.scheduled,
                st.seconds, res.seconds_snapshot, res.seconds_kmeans,
                res.seconds_assign, res.seconds_commit, res.inertia,
                res.ids_assigned, res.sample_size, res.kmeans_iters_max,
                st.iters, res.replayed_pushes);
    else if (rc == CQR_ECANCELED)
        cqr_log(CQR_LOG_INFO, "phase", "cancelled table=%s phase=%" PRIu64
                " seconds=%.3f reason=\"%s\"", st.table, st.phase_id,
                st.seconds, st.error + strlen("cancelled: "));
    else if (strcmp(at, "begin") != 0) /* begin failures: start_error */
        cqr_log(CQR_LOG_WARN, "phase",
                "failed table=%s phase=%" PRIu64 " at=%s err=%s "
                "seconds=%.3f", st.table, st.phase_id, at,
                cqr_errname(rc), st.seconds);
    if (rc == 0 && pm->commit_cb != NULL)
        pm->commit_cb(pm->commit_ud, e);
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

void cqr_phases_set_commit_cb(cqr_phases_t *pm, cqr_phase_commit_cb cb,
                              void *ud)
{
    pthread_mutex_lock(&pm->mu);
    pm->commit_cb = cb;
    pm->commit_ud = ud;
    pthread_mutex_unlock(&pm->mu);
}

static void *worker_main(void *arg)
{
    cqr_phases_t *pm = arg;
    pthread_mutex_lock(&pm->mu);
    for (;;) {
        while (cqr_list_empty(&pm->queue) && !pm->stopping)
            pthread_cond_wait(&pm->cv, &pm->mu);
        cqr_list_t *l = cqr_list_pop(&pm->queue);
        if (l == NULL)
            break; /* stopping and nothing queued */
        job_t *j = cqr_container_of(l, job_t, qlink);
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

int cqr_phases_create(uint32_t workers, atomic_uint_fast64_t *start_errors,
                      cqr_phases_t **out)
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
    cqr_list_init(&pm->queue);
    cqr_list_init(&pm->hist);
    cqr_list_init(&pm->active);
    pm->start_errors = start_errors;
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

int cqr_phases_forget(cqr_phases_t *pm)
{
    pthread_mutex_lock(&pm->mu);
    if (!cqr_list_empty(&pm->queue) || !cqr_list_empty(&pm->active) ||
        pm->counts.running > 0) {
        pthread_mutex_unlock(&pm->mu);
        return CQR_EBUSY;
    }
    while (!cqr_list_empty(&pm->hist)) {
        job_t *j = hist_job(pm->hist.next);
        assert(j->entry == NULL && j->ph == NULL);
        cqr_list_del(&j->hlink);
        free(j);
    }
    pm->nhist = 0;
    pm->next_id = 0;
    memset(&pm->counts, 0, sizeof pm->counts);
    pthread_mutex_unlock(&pm->mu);
    return 0;
}

int cqr_phases_start(cqr_phases_t *pm, cqr_entry_t *e, uint64_t *phase_id)
{
    /* A cheap refusal first, so a Cluster RPC on a wrong table costs no
     * snapshot. The engine re-checks it. */
    if (cqr_table_config(e->table)->kind != CQR_KIND_CQR)
        return CQR_EUNSUPPORTED;
    job_t *j = job_new(pm, e);
    if (j == NULL)
        return CQR_ENOMEM;
    pthread_mutex_lock(&pm->mu);
    int rc = pm->stopping ? CQR_ESHUTDOWN : 0;
    if (rc == 0 && claimed(pm, e->uid))
        rc = CQR_EBUSY;
    if (rc == 0)
        cqr_list_add_tail(&pm->active, &j->alink);
    pthread_mutex_unlock(&pm->mu);
    if (rc != 0) {
        free(j);
        return rc;
    }
    /* The table is claimed: begin (a snapshot) outside the lock. */
    rc = cqr_phase_begin(e->table, &j->ph);
    pthread_mutex_lock(&pm->mu);
    if (rc == 0 && pm->stopping)
        rc = CQR_ESHUTDOWN; /* shutdown raced with us: abort, no commit */
    if (rc != 0) {
        cqr_list_del(&j->alink);
        pthread_mutex_unlock(&pm->mu);
        cqr_phase_destroy(j->ph);
        free(j);
        return rc;
    }
    *phase_id = enqueue(pm, j, e, 0);
    pthread_mutex_unlock(&pm->mu);
    return 0;
}

void cqr_phases_due(cqr_phases_t *pm, cqr_entry_t *e)
{
    /* Most notices find the phase already queued: no allocation then. */
    pthread_mutex_lock(&pm->mu);
    int skip = pm->stopping || claimed(pm, e->uid);
    pthread_mutex_unlock(&pm->mu);
    if (skip)
        return;
    job_t *j = job_new(pm, e);
    if (j == NULL) {
        start_error(pm, e->name, CQR_ENOMEM);
        return;
    }
    pthread_mutex_lock(&pm->mu);
    skip = pm->stopping || claimed(pm, e->uid);
    if (!skip) {
        cqr_list_add_tail(&pm->active, &j->alink);
        enqueue(pm, j, e, 1);
    }
    pthread_mutex_unlock(&pm->mu);
    if (skip)
        free(j);
}

int cqr_phases_status(cqr_phases_t *pm, uint64_t table_uid,
                      uint64_t phase_id, cqr_phase_status_t *out)
{
    int rc = CQR_ENOPHASE;
    pthread_mutex_lock(&pm->mu);
    for (cqr_list_t *l = pm->hist.prev; l != &pm->hist; l = l->prev) {
        const job_t *j = hist_job(l);
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

/* Ends a job taken off the queue without running it: cancelled, for
 * `why`. No other thread can reach it through the queue any more, and a
 * second cancel finds j->cancel set. */
static void abort_queued(cqr_phases_t *pm, job_t *j, const char *why)
{
    cqr_phase_destroy(j->ph); /* NULL for a scheduled one */
    pthread_mutex_lock(&pm->mu);
    j->ph = NULL;
    cqr_entry_t *e = j->entry;
    j->entry = NULL;
    cqr_list_del(&j->alink);
    j->st.state = CQR_PHASE_FAILED;
    j->st.cancelled = 1;
    j->st.eta_seconds = -1;
    j->st.seconds = now_mono() - j->t_begin;
    snprintf(j->st.error, sizeof j->st.error, "cancelled: %s", why);
    pm->counts.queued--;
    pm->counts.failed++;
    /* Copy before unlocking: a worker may prune the record now. */
    cqr_phase_status_t st = j->st;
    pthread_mutex_unlock(&pm->mu);
    cqr_log(CQR_LOG_INFO, "phase", "cancelled table=%s phase=%" PRIu64
            " queued=1 reason=\"%s\"", st.table, st.phase_id, why);
    cqr_entry_unref(e);
}

/* Asks running job j to stop. Caller holds mu. */
static void cancel_running(job_t *j, const char *why)
{
    if (j->cancel)
        return;
    j->cancel = 1;
    snprintf(j->cancel_why, sizeof j->cancel_why, "%s", why);
    if (j->ph != NULL)
        cqr_phase_cancel(j->ph);
}

int cqr_phases_cancel(cqr_phases_t *pm, uint64_t table_uid,
                      uint64_t phase_id, const char *why,
                      cqr_phase_status_t *out)
{
    pthread_mutex_lock(&pm->mu);
    job_t *j = NULL;
    for (cqr_list_t *l = pm->active.next; l != &pm->active; l = l->next) {
        job_t *a = cqr_container_of(l, job_t, alink);
        /* Id 0: claimed by a start that has not queued it yet. */
        if (a->st.table_uid == table_uid && a->st.phase_id != 0 &&
            (phase_id == 0 || a->st.phase_id == phase_id)) {
            j = a;
            break;
        }
    }
    if (j == NULL) {
        pthread_mutex_unlock(&pm->mu);
        return CQR_ENOPHASE;
    }
    *out = j->st;
    out->seconds = now_mono() - j->t_begin;
    int queued = j->st.state == CQR_PHASE_QUEUED && !j->cancel;
    if (queued) {
        j->cancel = 1;
        cqr_list_del(&j->qlink);
    } else {
        cancel_running(j, why);
    }
    pthread_mutex_unlock(&pm->mu);
    if (queued)
        abort_queued(pm, j, why);
    else
        cqr_log(CQR_LOG_INFO, "phase", "cancel requested table=%s phase=%"
                PRIu64 " stage=%s fraction=%.3f", out->table, out->phase_id,
                out->stage, out->fraction);
    return 0;
}

void cqr_phases_shutdown(cqr_phases_t *pm)
{
    pthread_mutex_lock(&pm->mu);
    if (pm->joined) {
        pthread_mutex_unlock(&pm->mu);
        return;
    }
    pm->stopping = 1;
    /* Take the queued jobs away from the workers and abort them; tell the
     * running ones to stop (queued ones are the rest of active). */
    cqr_list_t queued;
    cqr_list_move(&queued, &pm->queue);
    for (cqr_list_t *l = queued.next; l != &queued; l = l->next)
        cqr_container_of(l, job_t, qlink)->cancel = 1;
    uint64_t running = pm->counts.running;
    for (cqr_list_t *l = pm->active.next; l != &pm->active; l = l->next) {
        job_t *a = cqr_container_of(l, job_t, alink);
        if (a->st.state == CQR_PHASE_RUNNING)
            cancel_running(a, "server shutting down");
    }
    pthread_cond_broadcast(&pm->cv);
    pthread_mutex_unlock(&pm->mu);

    for (cqr_list_t *l = cqr_list_pop(&queued); l != NULL;
         l = cqr_list_pop(&queued))
        abort_queued(pm, cqr_container_of(l, job_t, qlink),
                     "server shutting down");
    if (running > 0)
        cqr_log(CQR_LOG_INFO, "phase", "cancelling running phases "
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
    for (cqr_list_t *l = cqr_list_pop(&pm->hist); l != NULL;
         l = cqr_list_pop(&pm->hist)) {
        job_t *j = hist_job(l);
        assert(j->entry == NULL && j->ph == NULL);
        free(j);
    }
    pthread_cond_destroy(&pm->cv);
    pthread_mutex_destroy(&pm->mu);
    free(pm->workers);
    free(pm);
}
