/* metrics.c -- /metrics, /healthz and /readyz over libmicrohttpd (see
 * metrics.h). */
#include "ops/metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/table.h"
#include "net/listen.h"
#include "ops/log.h"
#include "tables/compact.h"
#include "tables/phase.h"
#include "tables/registry.h"

/* Concurrent scrapers are few; more connections wait in the backlog. */
#define HTTP_CONNECTIONS 16
/* Seconds an idle HTTP connection stays open. */
#define HTTP_IDLE_TIMEOUT 15

struct cqr_metrics {
    struct MHD_Daemon *daemon; /* its thread serves every request */
    cqr_server_ctx_t *ctx;     /* borrowed */
};

uint64_t cqr_health_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* 1 if live, 0 if not; why[0..whylen) gets a one-line reason either way
 * ("ok", "main loop stalled for 12000 ms"). */
static int health_live(cqr_server_ctx_t *ctx, char *why, size_t whylen)
{
    uint64_t hb = atomic_load(&ctx->heartbeat_ms);
    if (hb == 0) {
        snprintf(why, whylen, "ok (starting)");
        return 1;
    }
    /* The heartbeat stops with the main loop at a signal: a long drain
     * or shutdown checkpoint is not a hang, and killing the process
     * then would lose the checkpoint. */
    if (!atomic_load(&ctx->accepting)) {
        snprintf(why, whylen, "ok (stopping)");
        return 1;
    }
    uint64_t now = cqr_health_now_ms();
    uint64_t age = now > hb ? now - hb : 0;
    if (age > CQR_HEALTH_STALL_MS) {
        snprintf(why, whylen, "main loop stalled for %" PRIu64 " ms", age);
        return 0;
    }
    snprintf(why, whylen, "ok");
    return 1;
}

/* 1 if ready, 0 if not, with a reason in why ("ready", "restoring the
 * checkpoint"). */
static int health_ready(cqr_server_ctx_t *ctx, char *why, size_t whylen)
{
    if (!atomic_load(&ctx->restored)) {
        snprintf(why, whylen, "restoring the checkpoint");
        return 0;
    }
    if (!atomic_load(&ctx->accepting)) {
        snprintf(why, whylen, "not accepting connections (starting or "
                 "stopping)");
        return 0;
    }
    uint64_t failing = atomic_load(&ctx->ckpt_stats.failing);
    if (failing > 0) {
        snprintf(why, whylen, "checkpoints failing (%" PRIu64 " in a row; "
                 "see the log)", failing);
        return 0;
    }
    snprintf(why, whylen, "ready");
    return 1;
}

/* ---- Text buffer ------------------------------------------------------- */

typedef struct text {
    char *p;     /* NUL-terminated */
    size_t len;  /* bytes before the NUL */
    size_t cap;  /* allocated */
    int oom;     /* an append failed; the text is incomplete */
} text_t;

static void put(text_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(text_t *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2;
        while (cap - t->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (p == NULL) {
            t->oom = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

/* A label value with \, " and newline escaped (exposition format). */
static void put_label(text_t *t, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            put(t, "\\%c", *v);
        else if (*v == '\n')
            put(t, "\\n");
        else
            put(t, "%c", *v);
    }
}

static void head(text_t *t, const char *name, const char *type,
                 const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(text_t *t, const char *name, const char *type,
                const char *help, double v)
{
    head(t, name, type, help);
    put(t, "%s %.17g\n", name, v);
}

/* ---- Families ---------------------------------------------------------- */

static const char *const counter_help[] = {
#define CQR_CTR_HELP_(name, help) help,
    CQR_COUNTER_MAP(CQR_CTR_HELP_)
#undef CQR_CTR_HELP_
};

/* Open file descriptors: the entries of /proc/self/fd but the one that
 * reads it; -1 if it cannot be read. */
static long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* The process families every Prometheus exporter has (the names and
 * meanings of client_golang's and client_python's process collector). */
static void render_process(text_t *t, double start_time)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        one(t, "process_cpu_seconds_total", "counter", "User and system CPU "
            "time spent in seconds.",
            (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) *
                    1e-6);
    long vm_pages = 0, rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &vm_pages, &rss_pages) != 2)
            vm_pages = rss_pages = 0;
        fclose(f);
    }
    double page = (double)sysconf(_SC_PAGESIZE);
    one(t, "process_resident_memory_bytes", "gauge", "Resident memory "
        "size in bytes.", (double)rss_pages * page);
    one(t, "process_virtual_memory_bytes", "gauge", "Virtual memory size "
        "in bytes.", (double)vm_pages * page);
    long fds = open_fds();
    if (fds >= 0)
        one(t, "process_open_fds", "gauge", "Number of open file "
            "descriptors.", (double)fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        one(t, "process_max_fds", "gauge", "Maximum number of open file "
            "descriptors.", (double)rl.rlim_cur);
    one(t, "process_start_time_seconds", "gauge", "Start time of the "
        "process since unix epoch in seconds.", start_time);
}

static void render_server(text_t *t, cqr_server_ctx_t *ctx)
{
    head(t, "cqrps_build_info", "gauge",
         "Version of the server; the value is always 1.");
    put(t, "cqrps_build_info{version=\"%s\",protocol=\"%u\",blas_core=\"",
        CQR_SERVER_VERSION, CQR_PROTOCOL_VERSION);
    put_label(t, ctx->blas_core ? ctx->blas_core : "");
    put(t, "\"} 1\n");

    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    double up = cqr_server_uptime(ctx);
    one(t, "cqrps_uptime_seconds", "gauge", "Seconds since the server "
        "started.", up);
    one(t, "cqrps_start_time_seconds", "gauge", "Start time of the server "
        "since the Unix epoch.",
        (double)rt.tv_sec + (double)rt.tv_nsec * 1e-9 - up);
    char why[128];
    one(t, "cqrps_ready", "gauge", "1 when /readyz answers 200 (restore "
        "finished and the listener accepts).",
        health_ready(ctx, why, sizeof why));
    one(t, "cqrps_restored", "gauge", "1 once the restore at start "
        "finished (or none was needed).", atomic_load(&ctx->restored));
    one(t, "cqrps_io_threads", "gauge", "I/O threads (--threads).",
        ctx->cfg->threads);

    render_process(t, (double)rt.tv_sec + (double)rt.tv_nsec * 1e-9 - up);
}

static void render_counters(text_t *t, cqr_server_ctx_t *ctx)
{
    for (size_t i = 0; i < CQR_CTR__COUNT; i++) {
        const char *nm = cqr_counter_name((cqr_counter_t)i);
        double v = (double)cqr_ctr_get(ctx, (cqr_counter_t)i);
        char name[96];
        /* requests: cqrps_requests_total carries op and status labels. */
        if (strcmp(nm, "requests") == 0)
            continue;
        if (strcmp(nm, "conn_open") == 0) {
            one(t, "cqrps_connections", "gauge", "Client connections open "
                "now.", v);
            continue;
        }
        if (strcmp(nm, "bytes_in") == 0)
            snprintf(name, sizeof name, "cqrps_received_bytes_total");
        else if (strcmp(nm, "bytes_out") == 0)
            snprintf(name, sizeof name, "cqrps_sent_bytes_total");
        else
            snprintf(name, sizeof name, "cqrps_%s_total", nm);
        char help[160];
        snprintf(help, sizeof help, "%c%s.", counter_help[i][0] & ~0x20,
                 counter_help[i] + 1);
        one(t, name, "counter", help, v);
    }
}

static void render_requests(text_t *t, cqr_server_ctx_t *ctx)
{
    cqr_opstat_snap_t snap[CQR_OP_COUNT];
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++)
        cqr_opstats_read(ctx->opstats, op, &snap[op]);

    head(t, "cqrps_requests_total", "counter",
         "Requests answered, by operation and reply status.");
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++)
        for (uint32_t s = 0; s < CQR_STATUS_COUNT; s++) {
            /* Every op's OK series exists from the start, so rate()
             * sees the first requests; other statuses once they occur. */
            if (snap[op].status[s] == 0 &&
                (s != 0 || op == CQR_OP_COUNT - 1))
                continue;
            put(t, "cqrps_requests_total{op=\"%s\",status=\"%s\"} %" PRIu64
                "\n", cqr_op_name(op), cqr_errname(-(int)s),
                snap[op].status[s]);
        }

    const double *bounds = cqr_opstats_bounds();
    head(t, "cqrps_request_duration_seconds", "histogram",
         "Time to decode, execute and encode one request, by operation.");
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++) {
        const cqr_opstat_snap_t *sn = &snap[op];
        const char *on = cqr_op_name(op);
        uint64_t cum = 0;
        for (uint32_t b = 0; b < CQR_LAT_NBOUNDS; b++) {
            cum += sn->bucket[b];
            put(t, "cqrps_request_duration_seconds_bucket{op=\"%s\","
                "le=\"%g\"} %" PRIu64 "\n", on, bounds[b], cum);
        }
        put(t, "cqrps_request_duration_seconds_bucket{op=\"%s\","
            "le=\"+Inf\"} %" PRIu64 "\n", on, sn->count);
        put(t, "cqrps_request_duration_seconds_sum{op=\"%s\"} %.9f\n", on,
            (double)sn->sum_ns * 1e-9);
        put(t, "cqrps_request_duration_seconds_count{op=\"%s\"} %" PRIu64
            "\n", on, sn->count);
    }
}

/* One gauge or counter family with a value per table. */
typedef struct tfam {
    const char *name;
    const char *type;
    const char *help;
} tfam_t;

/* The per-table families, in the order of put_table_sample's cases. */
static const tfam_t table_fams[] = {
    {"cqrps_table_known_ids", "gauge",
     "IDs that received a gradient (full and cqr tables)."},
    {"cqrps_table_memory_bytes", "gauge",
     "Memory of a table by part: params (codebooks or rows), optimizer "
     "state, index (known-ID map)."},
    {"cqrps_table_lookup_ids_total", "counter", "IDs looked up."},
    {"cqrps_table_push_ids_total", "counter", "IDs pushed."},
    {"cqrps_table_examples_pushed_total", "counter",
     "Rows of plain pushes plus bags of pooled pushes."},
    {"cqrps_table_cluster_phases_total", "counter",
     "Committed cluster phases of the table."},
    {"cqrps_table_cluster_phase_running", "gauge",
     "1 while a cluster phase of the table runs."},
    {"cqrps_table_cluster_last_inertia", "gauge",
     "Mean k-means inertia of the table's last cluster phase."},
    {"cqrps_table_cluster_last_duration_seconds", "gauge",
     "Wall time of the table's last cluster phase."},
    {"cqrps_table_cluster_last_commit_seconds", "gauge",
     "Push pause of the table's last phase commit."},
    {"cqrps_table_ids_admitted_total", "counter",
     "IDs given state of their own (admit_after; full and cqr tables)."},
    {"cqrps_table_ids_evicted_total", "counter",
     "IDs whose state was freed (evict_after_phases, max_ids, "
     "ttl_seconds)."},
    {"cqrps_table_serving_generation", "gauge",
     "--serve: the checkpoint generation of the export the table serves."},
    {"cqrps_table_static_ids", "gauge",
     "Known IDs of a compacted cqr table in its static set (the rest are "
     "in its map)."},
    {"cqrps_table_compacted", "gauge",
     "1 once a cqr table has been compacted (Compact, or compact on)."},
};

/* The sample(s) of family f (an index into table_fams) for table e. */
static void put_table_sample(text_t *t, size_t f, const cqr_entry_t *e,
                             const cqr_table_stats_t *s)
{
    const char *fn = table_fams[f].name;
    const char *kind = cqr_kind_name(cqr_table_config(e->table)->kind);
    /* Names are [A-Za-z0-9_.-] (registry.h): no escaping. */
    const char *tn = e->name;
    switch (f) {
    case 0:
        put(t, "%s{table=\"%s\",kind=\"%s\"} %" PRIu64 "\n", fn, tn, kind,
            s->known_ids);
        break;
    case 1:
        put(t, "%s{table=\"%s\",kind=\"%s\",part=\"params\"} %" PRIu64 "\n",
            fn, tn, kind, s->param_bytes);
        put(t, "%s{table=\"%s\",kind=\"%s\",part=\"optimizer\"} %" PRIu64
            "\n", fn, tn, kind, s->optim_bytes);
        put(t, "%s{table=\"%s\",kind=\"%s\",part=\"index\"} %" PRIu64 "\n",
            fn, tn, kind, s->index_bytes);
        break;
    case 2:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn, s->lookups);
        break;
    case 3:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn, s->pushes);
        break;
    case 4:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn,
            s->examples_pushed);
        break;
    case 5:
        put(t, "%s{table=\"%s\"} %" PRIu32 "\n", fn, tn, s->phases_done);
        break;
    case 6:
        put(t, "%s{table=\"%s\"} %" PRIu32 "\n", fn, tn, s->phase_running);
        break;
    case 7:
        put(t, "%s{table=\"%s\"} %.17g\n", fn, tn, s->last_inertia);
        break;
    case 8:
        put(t, "%s{table=\"%s\"} %.17g\n", fn, tn, s->last_phase_seconds);
        break;
    case 9:
        put(t, "%s{table=\"%s\"} %.17g\n", fn, tn, s->last_commit_seconds);
        break;
    case 10:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn, s->ids_admitted);
        break;
    case 11:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn, s->ids_evicted);
        break;
    case 12:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn,
            e->serving_generation);
        break;
    case 13:
        put(t, "%s{table=\"%s\"} %" PRIu64 "\n", fn, tn, s->static_ids);
        break;
    case 14:
        put(t, "%s{table=\"%s\"} %d\n", fn, tn, s->rebuilds > 0);
        break;
    }
}

static void render_tables(text_t *t, cqr_server_ctx_t *ctx)
{
    cqr_entry_t **list = NULL;
    size_t n = 0;
    if (cqr_registry_list(ctx->reg, &list, &n) != 0)
        n = 0;
    one(t, "cqrps_tables", "gauge", "Tables that exist.", (double)n);
    one(t, "cqrps_table_bytes_reserved", "gauge", "Creation-time bytes of "
        "all tables, charged against --max-table-memory.",
        (double)cqr_registry_bytes(ctx->reg));
    one(t, "cqrps_max_table_memory_bytes", "gauge", "The "
        "--max-table-memory limit.", (double)ctx->cfg->max_table_memory);

    cqr_table_stats_t *st = n ? calloc(n, sizeof *st) : NULL;
    if (n > 0 && st == NULL) {
        t->oom = 1;
        cqr_registry_list_free(list, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        cqr_table_stats(list[i]->table, &st[i]);
    for (size_t f = 0; f < sizeof table_fams / sizeof table_fams[0]; f++) {
        head(t, table_fams[f].name, table_fams[f].type, table_fams[f].help);
        for (size_t i = 0; i < n; i++)
            put_table_sample(t, f, list[i], &st[i]);
    }
    free(st);
    if (n > 0)
        cqr_registry_list_free(list, n);
}

static void render_phases(text_t *t, cqr_server_ctx_t *ctx)
{
    cqr_phase_counts_t pc;
    cqr_phases_counts(ctx->phases, &pc);
    one(t, "cqrps_cluster_phases_started_total", "counter",
        "Cluster phases begun, by hand or by a schedule.",
        (double)pc.started);
    one(t, "cqrps_cluster_phases_scheduled_total", "counter",
        "Cluster phases begun by a table's schedule.", (double)pc.scheduled);
    one(t, "cqrps_cluster_phases_done_total", "counter",
        "Cluster phases committed.", (double)pc.done);
    one(t, "cqrps_cluster_phases_failed_total", "counter",
        "Cluster phases that failed or were aborted.", (double)pc.failed);
    one(t, "cqrps_cluster_phases_queued", "gauge",
        "Cluster phases waiting for a worker.", (double)pc.queued);
    one(t, "cqrps_cluster_phases_running", "gauge",
        "Cluster phases running now.", (double)pc.running);
    uint64_t crun = 0, cdone = 0, cfail = 0;
    if (ctx->compacts != NULL)
        cqr_compacts_counts(ctx->compacts, &crun, &cdone, &cfail);
    one(t, "cqrps_compactions_done_total", "counter",
        "Compactions of cqr tables finished (Compact, or compact on).",
        (double)cdone);
    one(t, "cqrps_compactions_failed_total", "counter",
        "Compactions of cqr tables that failed.", (double)cfail);
    one(t, "cqrps_compactions_running", "gauge",
        "Compactions of cqr tables running now.", (double)crun);
}

static void render_checkpoints(text_t *t, cqr_server_ctx_t *ctx)
{
    cqr_ckpt_stats_t *c = &ctx->ckpt_stats;
    /* Acquire pairs with the recorder's release: the figures below are
     * at least as new as the count. */
    uint64_t ok = atomic_load_explicit(&c->ok, memory_order_acquire);
    head(t, "cqrps_checkpoints_total", "counter",
         "Checkpoints taken, by result.");
    put(t, "cqrps_checkpoints_total{result=\"ok\"} %" PRIu64 "\n", ok);
    put(t, "cqrps_checkpoints_total{result=\"failed\"} %" PRIu64 "\n",
        (uint64_t)atomic_load(&c->failed));
    one(t, "cqrps_checkpoints_enabled", "gauge",
        "1 when the server has a data dir and takes checkpoints.",
        ctx->ckpt.checkpoint != NULL);
    one(t, "cqrps_checkpoint_generation", "gauge",
        "Generation of the last checkpoint written (or restored).",
        (double)atomic_load(&c->generation));
    one(t, "cqrps_checkpoint_last_bytes", "gauge",
        "Bytes the last successful checkpoint wrote.",
        (double)atomic_load(&c->bytes));
    one(t, "cqrps_checkpoint_last_duration_seconds", "gauge",
        "Duration of the last successful checkpoint.",
        (double)atomic_load(&c->duration_us) * 1e-6);
    one(t, "cqrps_checkpoint_last_pause_seconds", "gauge",
        "Longest push pause of any table in the last successful "
        "checkpoint (the copy of its changed pages).",
        (double)atomic_load(&c->pause_max_us) * 1e-6);
    one(t, "cqrps_checkpoint_duration_seconds_total", "counter",
        "Summed duration of the successful checkpoints.",
        (double)atomic_load(&c->total_us) * 1e-6);
    one(t, "cqrps_checkpoint_last_success_timestamp_seconds", "gauge",
        "When the last successful checkpoint finished (Unix time; 0: "
        "none yet).", (double)atomic_load(&c->unix_time));
    one(t, "cqrps_checkpoint_failing", "gauge",
        "Checkpoints failed in a row since the last success (0: healthy; "
        "retried by themselves).", (double)atomic_load(&c->failing));
    one(t, "cqrps_restore_skipped_generations", "gauge",
        "Damaged generations the restore at start skipped.",
        (double)atomic_load(&c->restore_skipped));
    one(t, "cqrps_restore_missing_generations", "gauge",
        "Acknowledged generations the restore at start could not bring "
        "back (0: nothing acknowledged was lost).",
        (double)atomic_load(&c->restore_missing));
}

/* The /metrics body: malloc'd, NUL-terminated text in *text (length in
 * *len), for the caller to free. CQR_ENOMEM on failure. */
static int render(cqr_server_ctx_t *ctx, char **text, size_t *len)
{
    text_t t = {malloc(16384), 0, 16384, 0};
    if (t.p == NULL)
        return CQR_ENOMEM;
    t.p[0] = '\0';
    render_server(&t, ctx);
    render_counters(&t, ctx);
    render_requests(&t, ctx);
    render_tables(&t, ctx);
    render_phases(&t, ctx);
    render_checkpoints(&t, ctx);
    if (t.oom) {
        free(t.p);
        return CQR_ENOMEM;
    }
    *text = t.p;
    *len = t.len;
    return 0;
}

/* ---- HTTP -------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned code,
                             const char *ctype, char *body, size_t len,
                             enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, mode);
    if (r == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned code,
                                  const char *msg)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s\n", msg);
    if (n < 0)
        return MHD_NO;
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    return reply(conn, code, "text/plain; charset=utf-8", buf, len,
                 MHD_RESPMEM_MUST_COPY);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version,
                                  const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    cqr_metrics_t *m = cls;
    (void)version;
    (void)upload_data;
    (void)req_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
        strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "only GET and HEAD");
    /* A GET with a body: ignore the body, answer once it is read. */
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    char why[160];
    if (strcmp(url, "/metrics") == 0) {
        char *text;
        size_t len;
        if (render(m->ctx, &text, &len) != 0)
            return reply_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                              "out of memory");
        return reply(conn, MHD_HTTP_OK,
                     "text/plain; version=0.0.4; charset=utf-8", text, len,
                     MHD_RESPMEM_MUST_FREE);
    }
    if (strcmp(url, "/healthz") == 0) {
        int ok = health_live(m->ctx, why, sizeof why);
        return reply_text(conn, ok ? MHD_HTTP_OK
                                   : MHD_HTTP_SERVICE_UNAVAILABLE, why);
    }
    if (strcmp(url, "/readyz") == 0) {
        int ok = health_ready(m->ctx, why, sizeof why);
        return reply_text(conn, ok ? MHD_HTTP_OK
                                   : MHD_HTTP_SERVICE_UNAVAILABLE, why);
    }
    if (strcmp(url, "/") == 0)
        return reply_text(conn, MHD_HTTP_OK,
                          "cqrps-server: /metrics /healthz /readyz");
    return reply_text(conn, MHD_HTTP_NOT_FOUND,
                      "not found; try /metrics, /healthz or /readyz");
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    cqr_log(CQR_LOG_WARN, "metrics", "http: %s", msg);
}

/* Binds the endpoint's socket like the client listener (listen.h), with
 * IPV6_V6ONLY. Never SO_REUSEPORT (libmicrohttpd's
 * LISTENING_ADDRESS_REUSE set it when it bound the socket itself): a
 * second server given the same port would bind it too and take half of
 * the scrapes; a busy port must stop the server instead. 0, or the error
 * after logging it. */
static int open_socket(const cqr_addr_t *addr, int *fd, char *bound,
                       size_t boundlen)
{
    char why[256];
    int rc = cqr_listen_open(addr->host, addr->port,
                             CQR_LISTEN_V6ONLY, fd,
                             why, sizeof why);
    if (rc == CQR_EINVAL) {
        cqr_log(CQR_LOG_ERROR, "metrics", "cannot resolve metrics-listen=%s "
                "err=\"%s\"", addr->text, why);
        return CQR_EINVAL;
    }
    /* The real address (and port, when 0 was asked) from the socket. */
    if (rc == 0 && cqr_listen_addr(*fd, bound, boundlen) != 0) {
        close(*fd);
        rc = CQR_EIO;
    }
    if (rc != 0) {
        cqr_log(CQR_LOG_ERROR, "metrics", "cannot listen metrics-listen=%s "
                "err=\"%s\" (another process holds the port, or the "
                "address is not local)", addr->text, why);
        return CQR_EIO;
    }
    return 0;
}

int cqr_metrics_start(cqr_server_ctx_t *ctx, const cqr_addr_t *addr,
                      cqr_metrics_t **out, char *bound, size_t boundlen)
{
    *out = NULL;
    int fd = -1;
    int rc = open_socket(addr, &fd, bound, boundlen);
    if (rc != 0)
        return rc;
    cqr_metrics_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        close(fd);
        return CQR_ENOMEM;
    }
    m->ctx = ctx;
    int family = AF_UNSPEC;
    socklen_t fl = sizeof family;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &fl);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* From here the daemon owns fd: it closes it when it stops, and when
     * it fails to start. */
    m->daemon = MHD_start_daemon(
        flags, addr->port, NULL, NULL, on_request, m,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, (void *)NULL,
        MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT,
        MHD_OPTION_END);
    if (m->daemon == NULL) {
        cqr_log(CQR_LOG_ERROR, "metrics", "cannot listen metrics-listen=%s "
                "(address in use or not local?)", addr->text);
        free(m);
        return CQR_EIO;
    }
    cqr_log(CQR_LOG_INFO, "metrics", "listening addr=%s paths=/metrics,"
            "/healthz,/readyz", bound);
    *out = m;
    return 0;
}

void cqr_metrics_stop(cqr_metrics_t *m)
{
    if (m == NULL)
        return;
    MHD_stop_daemon(m->daemon);
    free(m);
}
