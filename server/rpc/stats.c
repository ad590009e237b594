/* stats.c -- the Stats operation (call.h): the server's figures as one
 * StatsReply, every table's TableInfo and a counters map.
 *
 * The map holds, in this order: every counter (server.h), replies by
 * status ("status.NOT_FOUND"), requests by operation ("op.lookup"), the
 * server's other figures (phases, tables, checkpoints, readiness), then
 * the request statistics, all summable over shards: replies by operation
 * and status ("req.lookup.OK", non-zero ones only) and, per timed
 * operation, its count, total seconds and cumulative latency buckets
 * ("latency.lookup.le.0.0001"), from which `cqrps stats` derives
 * quantiles. The whole-number entries (all but a few seconds) are also in
 * the counts map, as exact 64-bit integers: a double holds integers
 * exactly only up to 2^53.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/err.h"
#include "rpc/call.h"

typedef Cqrps__V1__StatsReply__CountersEntry entry_t;
typedef Cqrps__V1__StatsReply__CountsEntry count_entry_t;

/* Room for a formatted key ("latency.list_checkpoints.le.0.0001"). */
#define KEY_LEN 48

/* The counters map being filled: n entries in one block, with a key
 * slot of KEY_LEN bytes for each. */
typedef struct map {
    entry_t *ents;        /* n entries */
    count_entry_t *cents; /* room for n count entries */
    char *keys;           /* n slots of KEY_LEN bytes, one per entry */
    size_t k;             /* entries filled */
    size_t nc;            /* count entries filled */
    size_t n;             /* entries in the block */
} map_t;

/* A named figure that is not a counter: a count n, or (real) seconds v. */
typedef struct figure {
    const char *name; /* static */
    uint64_t n;       /* the figure, unless real */
    double v;         /* the figure, if real */
    int real;         /* 1: not a whole number */
} figure_t;

/* The server's figures beyond the counters. */
#define NFIGURES 21

/* Adds an entry whose key outlives the reply (a static string). */
static void put(map_t *m, const char *key, double v)
{
    assert(m->k < m->n);
    entry_t *e = &m->ents[m->k++];
    cqrps__v1__stats_reply__counters_entry__init(e);
    e->key = (char *)key;
    e->value = v;
}

/* Adds a whole-number entry: to the counters (as a double) and, exactly,
 * to the counts. */
static void put_count(map_t *m, const char *key, uint64_t v)
{
    put(m, key, (double)v);
    count_entry_t *e = &m->cents[m->nc++];
    cqrps__v1__stats_reply__counts_entry__init(e);
    e->key = (char *)key;
    e->value = v;
}

/* The key slot of the next entry, formatted. */
static char *slot_key(map_t *m, const char *fmt, va_list ap)
{
    char *key = m->keys + m->k * KEY_LEN;
    vsnprintf(key, KEY_LEN, fmt, ap);
    return key;
}

/* put and put_count with a key formatted into the entry's slot. */
static void putf(map_t *m, double v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void putf_count(map_t *m, uint64_t v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void putf(map_t *m, double v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *key = slot_key(m, fmt, ap);
    va_end(ap);
    put(m, key, v);
}

static void putf_count(map_t *m, uint64_t v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *key = slot_key(m, fmt, ap);
    va_end(ap);
    put_count(m, key, v);
}

static void get_figures(cqr_server_ctx_t *ctx, size_t ntables,
                        figure_t *f)
{
    cqr_phase_counts_t pc;
    cqr_phases_counts(ctx->phases, &pc);
    cqr_ckpt_stats_t *ck = &ctx->ckpt_stats;
    uint64_t crun = 0, cdone = 0, cfail = 0;
    if (ctx->compacts != NULL)
        cqr_compacts_counts(ctx->compacts, &crun, &cdone, &cfail);
    const figure_t all[] = {
        {"phases_started", pc.started, 0, 0},
        {"phases_scheduled", pc.scheduled, 0, 0},
        {"phases_done", pc.done, 0, 0},
        {"phases_failed", pc.failed, 0, 0},
        {"phases_queued", pc.queued, 0, 0},
        {"phases_running", pc.running, 0, 0},
        {"compactions_done", cdone, 0, 0},
        {"compactions_failed", cfail, 0, 0},
        {"compactions_running", crun, 0, 0},
        {"tables", ntables, 0, 0},
        {"table_bytes_reserved", cqr_registry_bytes(ctx->reg), 0, 0},
        {"max_table_memory", ctx->cfg->max_table_memory, 0, 0},
        {"io_threads", ctx->cfg->threads, 0, 0},
        {"checkpoints_ok", atomic_load(&ck->ok), 0, 0},
        {"checkpoints_failed", atomic_load(&ck->failed), 0, 0},
        {"checkpoint_generation", atomic_load(&ck->generation), 0, 0},
        {"checkpoint_last_bytes", atomic_load(&ck->bytes), 0, 0},
        {"checkpoint_last_seconds", 0,
         (double)atomic_load(&ck->duration_us) * 1e-6, 1},
        {"checkpoint_last_pause_seconds", 0,
         (double)atomic_load(&ck->pause_max_us) * 1e-6, 1},
        {"restored", (uint64_t)atomic_load(&ctx->restored), 0, 0},
        {"ready", (uint64_t)(atomic_load(&ctx->restored) &&
                             atomic_load(&ctx->accepting)), 0, 0},
    };
    _Static_assert(sizeof all / sizeof all[0] == NFIGURES,
                   "NFIGURES counts the figures");
    for (size_t i = 0; i < NFIGURES; i++)
        f[i] = all[i];
}

/* Entries the request statistics of snaps add to the map. */
static size_t request_entries(const cqr_opstat_snap_t *snaps)
{
    size_t n = 0;
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++) {
        for (size_t s = 0; s < CQR_STATUS_COUNT; s++)
            n += snaps[op].status[s] != 0;
        if (snaps[op].count != 0)
            n += 2 + CQR_LAT_NBOUNDS;
    }
    return n;
}

/* Every counter, replies by status, requests by operation, then the
 * figures. */
static void put_counters(map_t *m, cqr_server_ctx_t *ctx,
                         const figure_t *figs)
{
    for (size_t i = 0; i < CQR_CTR__COUNT; i++)
        put_count(m, cqr_counter_name((cqr_counter_t)i),
                  cqr_ctr_get(ctx, (cqr_counter_t)i));
    for (size_t i = 0; i < CQR_STATUS_COUNT; i++)
        putf_count(m, atomic_load(&ctx->ctr.status[i]), "status.%s",
                   cqr_errname(-(int)i));
    for (uint32_t i = 0; i < CQR_OP_COUNT; i++)
        putf_count(m, atomic_load(&ctx->ctr.ops[i]), "op.%s",
                   cqr_op_name(i));
    for (size_t i = 0; i < NFIGURES; i++) {
        if (figs[i].real)
            put(m, figs[i].name, figs[i].v);
        else
            put_count(m, figs[i].name, figs[i].n);
    }
}

/* One operation's request statistics. */
static void put_requests(map_t *m, uint32_t op, const cqr_opstat_snap_t *sn)
{
    const char *name = cqr_op_name(op);
    for (size_t s = 0; s < CQR_STATUS_COUNT; s++)
        if (sn->status[s] != 0)
            putf_count(m, sn->status[s], "req.%s.%s", name,
                       cqr_errname(-(int)s));
    if (sn->count == 0)
        return;
    putf_count(m, sn->count, "latency.%s.count", name);
    putf(m, (double)sn->sum_ns * 1e-9, "latency.%s.sum_seconds", name);
    const double *bounds = cqr_opstats_bounds();
    uint64_t cum = 0;
    for (size_t b = 0; b < CQR_LAT_NBOUNDS; b++) {
        cum += sn->bucket[b];
        putf_count(m, cum, "latency.%s.le.%g", name, bounds[b]);
    }
}

int cqr_op_stats(cqr_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    size_t ntables;
    int rc = cqr_call_table_infos(c, &ntables);
    if (rc != 0)
        return rc;

    Cqrps__V1__StatsReply *r = &c->stats;
    cqrps__v1__stats_reply__init(r);
    r->server_version = (char *)CQR_SERVER_VERSION;
    r->uptime_seconds = cqr_server_uptime(ctx);
    r->connections = cqr_ctr_get(ctx, CQR_CTR_conn_open);
    r->requests = cqr_ctr_get(ctx, CQR_CTR_requests);
    r->errors = cqr_ctr_get(ctx, CQR_CTR_errors);
    r->bytes_in = cqr_ctr_get(ctx, CQR_CTR_bytes_in);
    r->bytes_out = cqr_ctr_get(ctx, CQR_CTR_bytes_out);
    r->n_tables = ntables;
    r->tables = c->infos;

    figure_t figs[NFIGURES];
    get_figures(ctx, ntables, figs);
    cqr_opstat_snap_t *snaps = calloc(CQR_OP_COUNT, sizeof *snaps);
    if (snaps == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, snaps);
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++)
        cqr_opstats_read(ctx->opstats, op, &snaps[op]);
    size_t n = CQR_CTR__COUNT + CQR_STATUS_COUNT + CQR_OP_COUNT + NFIGURES +
               request_entries(snaps);

    /* One block: the pointers of both maps, the entries of both, and the
     * formatted keys. */
    size_t size = n * (2 * sizeof(void *) + sizeof(entry_t) +
                       sizeof(count_entry_t) + KEY_LEN);
    uint8_t *blk = malloc(size);
    if (blk == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, blk);
    entry_t **ptrs = (void *)blk;
    count_entry_t **cptrs = (void *)(blk + n * sizeof(void *));
    map_t m = {0};
    m.ents = (void *)(blk + 2 * n * sizeof(void *));
    m.cents = (void *)(m.ents + n);
    m.keys = (char *)(m.cents + n);
    m.n = n;
    put_counters(&m, ctx, figs);
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++)
        put_requests(&m, op, &snaps[op]);
    assert(m.k == n);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &m.ents[i];
    for (size_t i = 0; i < m.nc; i++)
        cptrs[i] = &m.cents[i];
    r->n_counters = n;
    r->counters = ptrs;
    r->n_counts = m.nc;
    r->counts = cptrs;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_STATS;
    c->resp.stats = r;
    return 0;
}
