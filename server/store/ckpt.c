/* ckpt.c -- the server's persistence: restore at start, the checkpoint
 * thread and its request queue, the hooks rpc and the phase runner call
 * (ckpt.h). */
#include "store/ckpt.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "ops/log.h"
#include "ops/opstats.h"
#include "engine/persist.h"
#include "store/store.h"
#include "tables/phase.h"
#include "store/export.h"

/* Per-table pause lines are info level up to this many tables, debug
 * beyond (the summary line always carries the longest pause). */
#define TABLE_LINES_INFO 16
/* After a failed checkpoint the thread tries again by itself, waiting
 * RETRY_MIN_S, then twice as long after each further failure, at most
 * RETRY_MAX_S: a full disk or a read-only remount that clears is noticed
 * within a minute, and a store that keeps failing costs one attempt a
 * minute. */
#define RETRY_MIN_S 1.0
#define RETRY_MAX_S 60.0

/* Someone waiting for the next checkpoint. */
typedef void (*waiter_cb)(void *ud, int rc, const cqr_ckpt_info_t *info,
                          const char *why);

typedef struct waiter {
    waiter_cb cb;             /* called once, on the checkpoint thread */
    void *ud;
    struct waiter *next;
} waiter_t;

struct cqr_ckpt {
    cqr_server_ctx_t *ctx;    /* the server (registry, stats) */
    const cqr_config_t *cfg;  /* borrowed */
    cqr_store_t *store;       /* the data dir; used by one thread at a
                                 time (open, then the checkpoint thread) */
    pthread_t tid;            /* the checkpoint thread */
    int started;              /* tid is running */
    pthread_mutex_t mu;       /* guards everything below */
    pthread_cond_t cv;        /* work for the thread, or stop */
    pthread_cond_t done_cv;   /* a checkpoint finished (run_and_wait) */
    int want;                 /* a checkpoint is requested */
    char reasons[96];         /* triggers of the requested one, for logs */
    waiter_t *waiters;        /* waiting for the requested one */
    waiter_t **wtail;         /* end of that list */
    int stop;                 /* no new requests; exit when idle */
    cqr_ckpt_info_t *gens;    /* generations, newest first (ListCheckpoints
                                 reads this copy: it must not wait for a
                                 running checkpoint on the store's mutex) */
    size_t ngens;
    double retry_at;          /* monotonic time of the next retry after a
                                 failure; 0 = none due */
    /* The checkpoint thread's own (open before it starts): */
    uint32_t streak;          /* consecutive failed checkpoints */
    uint64_t good_gen;        /* last generation written or restored */
    double good_mono;         /* when its checkpoint began (or the restore
                                 ended) */
    uint64_t good_pushes;     /* pushes acknowledged before that moment */
    int exit_failed;          /* the shutdown checkpoint failed (set on
                                 the main thread, by the shutdown hook) */
    cqr_exporter_t *exp;      /* serving exports of the store's
                                 generations (export.h) */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Pushes answered OK so far (every I/O thread). */
static uint64_t pushes_acked(cqr_server_ctx_t *ctx)
{
    cqr_opstat_snap_t snap;
    cqr_opstats_read(ctx->opstats, CQRPS__V1__REQUEST__OP_PUSH - 10, &snap);
    return snap.status[0];
}

/* What the store worked around, for the operator. */
static void store_warn(void *ud, const char *msg)
{
    (void)ud;
    cqr_log(CQR_LOG_WARN, "ckpt", "store: %s", msg);
}

#if defined(__SANITIZE_THREAD__)
/* Debian's librocksdb is not built with ThreadSanitizer: its background
 * threads synchronise through atomics TSan cannot see, so it reports
 * RocksDB against itself (see tests/common/tsan.supp). Only races with
 * a frame inside librocksdb are suppressed; the server's own threads are
 * still checked. The runtime calls this at start (a weak hook). */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:librocksdb.so\n";
}
#endif

/* ---- the generation list --------------------------------------------- */

/* Refreshes ck->gens from the store (checkpoint thread, or open). */
static void refresh_list(cqr_ckpt_t *ck)
{
    cqr_store_gen_t *g = NULL;
    size_t n = 0;
    if (cqr_store_list(ck->store, &g, &n) != 0) {
        char why[256];
        cqr_store_error(ck->store, why, sizeof why);
        cqr_log(CQR_LOG_WARN, "ckpt", "cannot list generations err=\"%s\"",
                why);
        return;
    }
    cqr_ckpt_info_t *infos = calloc(n ? n : 1, sizeof *infos);
    if (infos == NULL) {
        free(g);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        infos[i].generation = g[i].generation;
        infos[i].unix_time = g[i].unix_time;
        infos[i].bytes = g[i].bytes;
        infos[i].tables = g[i].tables;
    }
    free(g);
    pthread_mutex_lock(&ck->mu);
    cqr_ckpt_info_t *old = ck->gens;
    ck->gens = infos;
    ck->ngens = n;
    pthread_mutex_unlock(&ck->mu);
    free(old);
}

/* ---- one checkpoint ---------------------------------------------------- */

/* Writes a generation of every table in the registry (checkpoint
 * thread). Logs and records it either way. */
static int take(cqr_ckpt_t *ck, const char *reasons, cqr_ckpt_info_t *info,
                char *why, size_t whylen)
{
    cqr_server_ctx_t *ctx = ck->ctx;
    cqr_entry_t **list = NULL;
    size_t n = 0;
    cqr_table_t **tables = NULL;
    const char **names = NULL;
    cqr_store_ckpt_stats_t st;
    memset(&st, 0, sizeof st);
    memset(info, 0, sizeof *info);

    int rc = cqr_registry_list(ctx->reg, &list, &n);
    if (rc == 0) {
        tables = calloc(n ? n : 1, sizeof *tables);
        names = calloc(n ? n : 1, sizeof *names);
        if (tables == NULL || names == NULL)
            rc = CQR_ENOMEM;
    }
    if (rc != 0) {
        snprintf(why, whylen, "cannot list the tables: %s",
                 cqr_strerror(rc));
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        tables[i] = list[i]->table;
        names[i] = list[i]->name;
    }
    /* Every push acknowledged before this point is in the generation
     * (each table's export begins later). */
    uint64_t pushes0 = pushes_acked(ctx);
    double t0 = now_mono();
    uint64_t gen = 0;
    rc = cqr_store_checkpoint(ck->store, tables, names, n, NULL, NULL, &gen,
                              &st);
    if (rc != 0) {
        char serr[400];
        cqr_store_error(ck->store, serr, sizeof serr);
        snprintf(why, whylen, "checkpoint failed: %s: %s", cqr_strerror(rc),
                 serr);
        goto out;
    }
    info->generation = gen;
    info->unix_time = (uint64_t)time(NULL);
    info->bytes = st.bytes_written;
    info->tables = (uint32_t)n;
    info->seconds = st.seconds;
    cqr_log(CQR_LOG_INFO, "ckpt", "done generation=%" PRIu64 " reason=%s "
            "tables=%zu full=%" PRIu32 " bytes=%" PRIu64 " total_bytes=%"
            PRIu64 " seconds=%.3f export=%.3f write=%.3f sync=%.3f "
            "retain=%.3f pause_max=%.6f deleted=%" PRIu32, gen, reasons, n,
            st.tables_full, st.bytes_written, st.bytes_total, st.seconds,
            st.seconds_export, st.seconds_write, st.seconds_sync,
            st.seconds_retain, st.pause_max_seconds,
            st.generations_deleted);
    for (size_t i = 0; i < n; i++) {
        cqr_persist_stats_t ps;
        cqr_persist_stats(tables[i], &ps);
        cqr_log(n <= TABLE_LINES_INFO ? CQR_LOG_INFO : CQR_LOG_DEBUG, "ckpt",
                "table=%s generation=%" PRIu64 " pause=%.6f wait=%.6f "
                "export=%.3f bytes=%" PRIu64, names[i], gen,
                ps.last_pause_seconds, ps.last_wait_seconds,
                ps.last_seconds, ps.last_bytes);
    }
    atomic_store(&ctx->ckpt_stats.pause_max_us,
                 (uint64_t)(st.pause_max_seconds * 1e6));
    cqr_ckpt_stats_record(&ctx->ckpt_stats, 1, gen, st.bytes_written,
                          st.seconds);
    if (ck->streak > 0)
        cqr_log(CQR_LOG_INFO, "ckpt", "checkpoints work again generation=%"
                PRIu64 " after_failures=%" PRIu32, gen, ck->streak);
    ck->streak = 0;
    ck->good_gen = gen;
    ck->good_mono = t0;
    ck->good_pushes = pushes0;
    atomic_store(&ctx->ckpt_stats.failing, 0);
out:
    if (rc != 0) {
        ck->streak++;
        cqr_log(CQR_LOG_ERROR, "ckpt", "failed reason=%s err=%s "
                "consecutive=%" PRIu32 " detail=\"%s\"", reasons,
                cqr_errname(rc), ck->streak, why);
        cqr_ckpt_stats_record(&ctx->ckpt_stats, 0, 0, 0, 0);
        atomic_store(&ctx->ckpt_stats.failing, ck->streak);
    }
    free(tables);
    free(names);
    if (list != NULL || n > 0)
        cqr_registry_list_free(list, n);
    if (rc == 0)
        refresh_list(ck);
    return rc;
}

/* The absolute CLOCK_REALTIME time `mono` (a CLOCK_MONOTONIC time) falls
 * on, for pthread_cond_timedwait. */
static struct timespec deadline_of(double mono)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wait = mono - now_mono();
    if (wait < 0)
        wait = 0;
    double at = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + wait;
    ts.tv_sec = (time_t)at;
    ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
    return ts;
}

/* Adds `reason` to the reasons of the requested checkpoint (ck->mu). */
static void add_reason(cqr_ckpt_t *ck, const char *reason)
{
    if (strstr(ck->reasons, reason) == NULL) {
        size_t l = strlen(ck->reasons);
        snprintf(ck->reasons + l, sizeof ck->reasons - l, "%s%s",
                 l ? "," : "", reason);
    }
}

static void *thread_main(void *arg)
{
    cqr_ckpt_t *ck = arg;
    pthread_mutex_lock(&ck->mu);
    for (;;) {
        while (!ck->want && !ck->stop) {
            if (ck->retry_at > 0 && now_mono() >= ck->retry_at) {
                ck->retry_at = 0;
                ck->want = 1;
                add_reason(ck, "retry");
                break;
            }
            if (ck->retry_at > 0) {
                struct timespec ts = deadline_of(ck->retry_at);
                pthread_cond_timedwait(&ck->cv, &ck->mu, &ts);
            } else {
                pthread_cond_wait(&ck->cv, &ck->mu);
            }
        }
        if (!ck->want)
            break; /* stopping and nothing asked */
        /* Everyone asking from now on waits for the next checkpoint. */
        waiter_t *w = ck->waiters;
        ck->waiters = NULL;
        ck->wtail = &ck->waiters;
        char reasons[sizeof ck->reasons];
        memcpy(reasons, ck->reasons, sizeof reasons);
        ck->reasons[0] = '\0';
        ck->want = 0;
        ck->retry_at = 0;
        pthread_mutex_unlock(&ck->mu);

        cqr_ckpt_info_t info;
        char why[512] = "";
        int rc = take(ck, reasons, &info, why, sizeof why);
        while (w != NULL) {
            waiter_t *next = w->next;
            w->cb(w->ud, rc, &info, why);
            free(w);
            w = next;
        }
        pthread_mutex_lock(&ck->mu);
        if (rc != 0 && !ck->stop) {
            double wait = RETRY_MIN_S;
            for (uint32_t i = 1; i < ck->streak && wait < RETRY_MAX_S; i++)
                wait *= 2;
            if (wait > RETRY_MAX_S)
                wait = RETRY_MAX_S;
            ck->retry_at = now_mono() + wait;
            cqr_log(CQR_LOG_INFO, "ckpt", "retrying in seconds=%.0f", wait);
        }
    }
    pthread_mutex_unlock(&ck->mu);
    return NULL;
}

/* Queues a request for the next checkpoint; cb (may be NULL) is called
 * when it is done. CQR_ESHUTDOWN after close began, CQR_ENOMEM. */
static int enqueue(cqr_ckpt_t *ck, const char *reason, waiter_cb cb,
                   void *ud)
{
    waiter_t *w = NULL;
    if (cb != NULL) {
        w = calloc(1, sizeof *w);
        if (w == NULL)
            return CQR_ENOMEM;
        w->cb = cb;
        w->ud = ud;
    }
    pthread_mutex_lock(&ck->mu);
    if (ck->stop) {
        pthread_mutex_unlock(&ck->mu);
        free(w);
        return CQR_ESHUTDOWN;
    }
    if (w != NULL) {
        *ck->wtail = w;
        ck->wtail = &w->next;
    }
    add_reason(ck, reason);
    ck->want = 1;
    pthread_cond_signal(&ck->cv);
    pthread_mutex_unlock(&ck->mu);
    return 0;
}

void cqr_ckpt_request(cqr_ckpt_t *ck, const char *reason)
{
    if (enqueue(ck, reason, NULL, NULL) != 0)
        cqr_log(CQR_LOG_DEBUG, "ckpt", "request dropped reason=%s", reason);
}

/* ---- waiting for one --------------------------------------------------- */

typedef struct sync_wait {
    cqr_ckpt_t *ck;
    int done;                 /* under ck->mu */
    int rc;
    cqr_ckpt_info_t info;
    char why[512];
} sync_wait_t;

static void sync_cb(void *ud, int rc, const cqr_ckpt_info_t *info,
                    const char *why)
{
    sync_wait_t *sw = ud;
    pthread_mutex_lock(&sw->ck->mu);
    sw->rc = rc;
    sw->info = *info;
    snprintf(sw->why, sizeof sw->why, "%s", why);
    sw->done = 1;
    pthread_cond_broadcast(&sw->ck->done_cv);
    pthread_mutex_unlock(&sw->ck->mu);
}

/* Takes a checkpoint and waits for it (the Checkpoint RPC's synchronous
 * hook, shutdown, before a phase). 0 or an error, with a reason in why. */
static int run_and_wait(cqr_ckpt_t *ck, const char *reason,
                        cqr_ckpt_info_t *info, char *why, size_t whylen)
{
    sync_wait_t sw;
    memset(&sw, 0, sizeof sw);
    sw.ck = ck;
    int rc = enqueue(ck, reason, sync_cb, &sw);
    if (rc != 0) {
        snprintf(why, whylen, "%s", cqr_strerror(rc));
        return rc;
    }
    pthread_mutex_lock(&ck->mu);
    while (!sw.done)
        pthread_cond_wait(&ck->done_cv, &ck->mu);
    pthread_mutex_unlock(&ck->mu);
    if (info != NULL)
        *info = sw.info;
    snprintf(why, whylen, "%s", sw.why);
    return sw.rc;
}

/* ---- hooks --------------------------------------------------------------- */

static int hook_checkpoint(void *ud, cqr_server_ctx_t *ctx,
                           cqr_ckpt_info_t *out, char *why, size_t whylen)
{
    (void)ctx;
    return run_and_wait(ud, "rpc", out, why, whylen);
}

static void async_cb(void *ud, int rc, const cqr_ckpt_info_t *info,
                     const char *why)
{
    cqr_rpc_checkpoint_done(ud, rc, info, why);
}

static int hook_checkpoint_async(void *ud, cqr_server_ctx_t *ctx,
                                 cqr_deferred_t *d)
{
    (void)ctx;
    return enqueue(ud, "rpc", async_cb, d);
}

static int hook_list(void *ud, cqr_server_ctx_t *ctx, cqr_ckpt_info_t **out,
                     size_t *n)
{
    cqr_ckpt_t *ck = ud;
    (void)ctx;
    pthread_mutex_lock(&ck->mu);
    size_t k = ck->ngens;
    cqr_ckpt_info_t *copy = malloc((k ? k : 1) * sizeof *copy);
    if (copy != NULL && k > 0)
        memcpy(copy, ck->gens, k * sizeof *copy);
    pthread_mutex_unlock(&ck->mu);
    if (copy == NULL)
        return CQR_ENOMEM;
    *out = copy;
    *n = k;
    return 0;
}

/* After the drain: the last checkpoint holds every acknowledged push.
 * If it fails, what was acknowledged since the last good generation is
 * not on disk: say how much, and make the exit status say it failed
 * (cqr_ckpt_close). */
static void hook_shutdown(void *ud, cqr_server_ctx_t *ctx)
{
    cqr_ckpt_t *ck = ud;
    if (!ctx->cfg->checkpoint_on_exit)
        return;
    cqr_log(CQR_LOG_INFO, "ckpt", "shutdown checkpoint");
    cqr_ckpt_info_t info;
    char why[512];
    if (run_and_wait(ck, "shutdown", &info, why, sizeof why) == 0)
        return;
    /* The checkpoint thread is idle now: its fields are stable (the
     * waiter's hand-off ordered them before us). */
    uint64_t pushes = pushes_acked(ctx) - ck->good_pushes;
    double age = now_mono() - ck->good_mono;
    ck->exit_failed = 1;
    cqr_log(CQR_LOG_ERROR, "ckpt", "shutdown checkpoint failed: work "
            "acknowledged since generation=%" PRIu64 " is not on disk "
            "pushes=%" PRIu64 " seconds=%.0f (and any table created, "
            "dropped or clustered meanwhile); exiting with status 1 "
            "detail=\"%s\"", ck->good_gen, pushes, age, why);
}

/* Phase worker thread, holding nothing: before the phase runs, wait for
 * a checkpoint of the state it starts from; after the commit, ask for
 * one of the result without holding up the worker. */
static void hook_phase(void *ud, const char *table, uint64_t phase_id,
                       int after)
{
    cqr_ckpt_t *ck = ud;
    if (after) {
        cqr_ckpt_request(ck, "after_phase");
        return;
    }
    cqr_ckpt_info_t info;
    char why[512];
    if (run_and_wait(ck, "before_phase", &info, why, sizeof why) != 0)
        cqr_log(CQR_LOG_WARN, "ckpt", "checkpoint before phase failed "
                "table=%s phase=%" PRIu64 " detail=\"%s\"", table, phase_id,
                why);
}

/* ---- restore ------------------------------------------------------------ */

typedef struct restore {
    cqr_ckpt_t *ck;
    uint64_t known_ids;       /* summed over the tables */
    char why[512];            /* why a table could not be registered */
} restore_t;

static int restore_table(void *ud, const char *name, cqr_table_t *t)
{
    restore_t *r = ud;
    cqr_server_ctx_t *ctx = r->ck->ctx;
    const cqr_table_config_t *cfg = cqr_table_config(t);
    cqr_entry_t *e;
    char why[256] = "";
    int rc = cqr_registry_reserve(ctx->reg, name, cqr_table_config_bytes(cfg),
                                  &e, why, sizeof why);
    if (rc != 0) {
        snprintf(r->why, sizeof r->why, "table %s: %s", name,
                 why[0] ? why : cqr_strerror(rc));
        cqr_table_destroy(t);
        return rc;
    }
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    cqr_registry_publish(ctx->reg, e, t);
    cqr_entry_unref(e);
    r->known_ids += st.known_ids;
    cqr_log(CQR_LOG_INFO, "ckpt", "restored table=%s kind=%s dim=%" PRIu32
            " known_ids=%" PRIu64 " phases_done=%" PRIu32, name,
            cqr_kind_name(cfg->kind), cfg->dim, st.known_ids,
            st.phases_done);
    return 0;
}

/* The restored generation against the acknowledgement record (store.h):
 * a newer acknowledged generation that is present but damaged was
 * skipped with its reason, and the server starts; one that vanished
 * without a trace (a lost file) is a silent loss, and the server refuses
 * to start unless --accept-older-generation. Either way the loss is an
 * error line and a metric. 0 or CQR_ECORRUPT. */
static int check_acked(cqr_ckpt_t *ck, const cqr_store_load_info_t *li)
{
    const cqr_config_t *cfg = ck->cfg;
    uint64_t got = li->generation, acked = li->acked;
    if (acked == 0 || got >= acked)
        return 0;
    if (cfg->restore_generation != 0) {
        cqr_log(CQR_LOG_WARN, "ckpt", "restoring generation=%" PRIu64
                " as asked (--restore-generation); the last acknowledged "
                "one is generation=%" PRIu64, got, acked);
        return 0;
    }
    atomic_store(&ck->ctx->ckpt_stats.restore_missing, acked - got);
    if (li->newest >= acked) {
        cqr_log(CQR_LOG_ERROR, "ckpt", "the last acknowledged generation=%"
                PRIu64 " is damaged (see the skipped generations); "
                "restoring generation=%" PRIu64 ": work acknowledged after "
                "it is lost", acked, got);
        return 0;
    }
    cqr_log(CQR_LOG_ERROR, "ckpt", "the last acknowledged generation=%"
            PRIu64 " is missing from dir=%s (newest present=%" PRIu64
            "): it vanished without an error (a lost, truncated or "
            "replaced file?); the newest that loads is generation=%" PRIu64
            " and work acknowledged after it is lost", acked, cfg->data_dir,
            li->newest, got);
    if (!cfg->accept_older_generation) {
        cqr_log(CQR_LOG_ERROR, "ckpt", "refusing to start from an older "
                "generation than acknowledged; --accept-older-generation "
                "on starts from generation=%" PRIu64, got);
        return CQR_ECORRUPT;
    }
    int rc = cqr_store_set_acked(ck->store, got);
    char serr[400] = "";
    if (rc != 0)
        cqr_store_error(ck->store, serr, sizeof serr);
    cqr_log(CQR_LOG_WARN, "ckpt", "accepted generation=%" PRIu64 " in "
            "place of acknowledged generation=%" PRIu64
            " (--accept-older-generation)%s%s", got, acked,
            rc ? "; cannot rewrite the record: " : "", serr);
    return 0;
}

/* Loads the generation the config asks for; 0 or a logged error. */
static int restore(cqr_ckpt_t *ck)
{
    const cqr_config_t *cfg = ck->cfg;
    restore_t r;
    memset(&r, 0, sizeof r);
    r.ck = ck;
    cqr_store_load_info_t li;
    memset(&li, 0, sizeof li);
    double t0 = now_mono();
    uint64_t want = cfg->restore_generation;
    cqr_log(CQR_LOG_INFO, "ckpt", "restoring dir=%s generation=%s",
            cfg->data_dir, want ? "chosen" : "latest");
    int rc = cqr_store_load(ck->store, want, restore_table, &r, NULL, NULL,
                            &li);
    if (li.skipped > 0)
        cqr_log(CQR_LOG_ERROR, "ckpt", "skipped damaged generations count=%"
                PRIu32 " detail=\"%s\"", li.skipped, li.why);
    atomic_store(&ck->ctx->ckpt_stats.restore_skipped, li.skipped);
    if (rc != 0) {
        char serr[400];
        cqr_store_error(ck->store, serr, sizeof serr);
        if (r.why[0] != '\0') {
            /* Every table verified, but one does not fit this server. */
            cqr_log(CQR_LOG_ERROR, "ckpt", "cannot restore: %s (raise "
                    "--max-tables or --max-table-memory)", r.why);
            return rc;
        }
        if (rc == CQR_ECORRUPT && want == 0 && cfg->allow_empty_restore) {
            cqr_log(CQR_LOG_WARN, "ckpt", "no generation in dir=%s loads "
                    "err=\"%s\"; starting with no tables "
                    "(--allow-empty-restore)", cfg->data_dir, serr);
            return 0;
        }
        if (want != 0)
            cqr_log(CQR_LOG_ERROR, "ckpt", "cannot restore generation=%"
                    PRIu64 " dir=%s err=%s detail=\"%s\" (see "
                    "'cqrps checkpoints'; omit --restore-generation for "
                    "the latest)", want, cfg->data_dir, cqr_errname(rc),
                    serr);
        else
            cqr_log(CQR_LOG_ERROR, "ckpt", "cannot restore dir=%s err=%s "
                    "detail=\"%s\": checkpoints exist but none loads; "
                    "refusing to start empty (--allow-empty-restore "
                    "starts with no tables)", cfg->data_dir,
                    cqr_errname(rc), serr);
        return rc;
    }
    rc = check_acked(ck, &li);
    if (rc != 0)
        return rc;
    ck->good_gen = li.generation;
    ck->good_mono = now_mono();
    if (li.generation == 0) {
        cqr_log(CQR_LOG_INFO, "ckpt", "no checkpoint in dir=%s; starting "
                "with no tables", cfg->data_dir);
        return 0;
    }
    atomic_store(&ck->ctx->ckpt_stats.generation, li.generation);
    cqr_log(CQR_LOG_INFO, "ckpt", "restored generation=%" PRIu64
            " tables=%" PRIu32 " known_ids=%" PRIu64 " bytes=%" PRIu64
            " seconds=%.3f load_seconds=%.3f skipped=%" PRIu32
            " acknowledged=%" PRIu64, li.generation, li.tables, r.known_ids,
            li.bytes, now_mono() - t0, li.seconds, li.skipped, li.acked);
    return 0;
}

/* ---- open and close ------------------------------------------------------ */

static void ckpt_free(cqr_ckpt_t *ck)
{
    if (ck->store != NULL)
        cqr_store_close(ck->store);
    free(ck->gens);
    pthread_cond_destroy(&ck->done_cv);
    pthread_cond_destroy(&ck->cv);
    pthread_mutex_destroy(&ck->mu);
    free(ck);
}

int cqr_ckpt_open(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                  cqr_ckpt_t **out)
{
    cqr_ckpt_t *ck = calloc(1, sizeof *ck);
    if (ck == NULL)
        return CQR_ENOMEM;
    ck->ctx = ctx;
    ck->cfg = cfg;
    ck->wtail = &ck->waiters;
    pthread_mutex_init(&ck->mu, NULL);
    pthread_cond_init(&ck->cv, NULL);
    pthread_cond_init(&ck->done_cv, NULL);

    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = cfg->checkpoint_keep;
    o.warn = store_warn;
    char why[512] = "";
    double t0 = now_mono();
    int rc = cqr_store_open(cfg->data_dir, &o, &ck->store, why, sizeof why);
    if (rc != 0) {
        cqr_log(CQR_LOG_ERROR, "ckpt", "cannot open the data dir dir=%s "
                "err=%s detail=\"%s\"", cfg->data_dir, cqr_errname(rc), why);
        ck->store = NULL;
        ckpt_free(ck);
        return rc;
    }
    cqr_log(CQR_LOG_INFO, "ckpt", "opened dir=%s keep=%" PRIu32
            " interval=%" PRIu32 " on_phase=%s on_exit=%s seconds=%.3f",
            cfg->data_dir, cfg->checkpoint_keep, cfg->checkpoint_interval,
            cfg->checkpoint_on_phase ? "on" : "off",
            cfg->checkpoint_on_exit ? "on" : "off", now_mono() - t0);
    rc = restore(ck);
    if (rc == 0)
        refresh_list(ck);
    if (rc == 0 && pthread_create(&ck->tid, NULL, thread_main, ck) != 0)
        rc = CQR_EINTERNAL;
    if (rc != 0) {
        /* Tables restored so far stay in the registry; the server exits
         * and frees them. */
        ckpt_free(ck);
        return rc;
    }
    ck->started = 1;
    if (cqr_exporter_create(ctx, ck->store, cfg->data_dir, &ck->exp) != 0)
        cqr_log(CQR_LOG_WARN, "ckpt", "exports unavailable: out of memory");
    ctx->ckpt.checkpoint = hook_checkpoint;
    ctx->ckpt.checkpoint_async = hook_checkpoint_async;
    ctx->ckpt.list = hook_list;
    ctx->ckpt.on_shutdown = hook_shutdown;
    ctx->ckpt.ud = ck;
    if (cfg->checkpoint_on_phase)
        cqr_phases_set_hook(ctx->phases, hook_phase, ck);
    *out = ck;
    return 0;
}

int cqr_ckpt_close(cqr_ckpt_t *ck)
{
    if (ck == NULL)
        return 0;
    cqr_server_ctx_t *ctx = ck->ctx;
    cqr_phases_set_hook(ctx->phases, NULL, NULL);
    memset(&ctx->ckpt, 0, sizeof ctx->ckpt);
    cqr_exporter_destroy(ck->exp);
    pthread_mutex_lock(&ck->mu);
    ck->stop = 1;
    pthread_cond_signal(&ck->cv);
    pthread_mutex_unlock(&ck->mu);
    if (ck->started)
        pthread_join(ck->tid, NULL);
    assert(ck->waiters == NULL);
    int rc = ck->exit_failed ? CQR_EIO : 0;
    ckpt_free(ck);
    return rc;
}
