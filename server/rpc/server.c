/* server.c -- the server context, its names and sessions (server.h). */
#include "rpc/server.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "ops/log.h"
#include "tables/compact.h"
#include "tables/phase.h"
#include "tables/registry.h"

static const char *const counter_names[] = {
#define CQR_CTR_NAME_(name, help) #name,
    CQR_COUNTER_MAP(CQR_CTR_NAME_)
#undef CQR_CTR_NAME_
};

static const char *const op_names[CQR_OP_COUNT] = {
    "hello", "create_table", "drop_table", "list_tables", "describe_table",
    "lookup", "push", "cluster", "cluster_status", "stats", "digest",
    "checkpoint", "list_checkpoints", "update_optimizer", "cancel_cluster",
    "export", "export_read", "compact", "unknown"};

const char *cqr_counter_name(cqr_counter_t c)
{
    assert(c < CQR_CTR__COUNT);
    return counter_names[c];
}

const char *cqr_op_name(uint32_t op)
{
    assert(op < CQR_OP_COUNT);
    return op_names[op];
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double cqr_server_uptime(const cqr_server_ctx_t *ctx)
{
    return now_mono() - ctx->start_mono;
}

/* Phase worker, after a commit: a table created with `compact` is
 * compacted once (later phases rebuild its static set themselves). */
static void on_commit(void *ud, cqr_entry_t *e)
{
    cqr_server_ctx_t *ctx = ud;
    if (!cqr_table_config(e->table)->compact)
        return;
    cqr_table_stats_t st;
    cqr_table_stats(e->table, &st);
    if (st.rebuilds > 0)
        return; /* compacted already */
    char why[256] = "";
    int rc = cqr_compacts_start(ctx->compacts, e, "first_phase", NULL, NULL,
                                why, sizeof why);
    if (rc != 0)
        cqr_log(CQR_LOG_WARN, "compact", "cannot start the compaction of "
                "%s after its phase err=%s detail=\"%s\"", e->name,
                cqr_errname(rc), why);
}

int cqr_server_ctx_init(cqr_server_ctx_t *ctx, const cqr_config_t *cfg)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->cfg = cfg;
    ctx->start_mono = now_mono();
    ctx->blas_core = "";
    /* One block per I/O thread, and one for sessions of other threads
     * (tests, tools) so that they never share an I/O thread's lines. */
    int rc = cqr_opstats_create(cfg->threads + 1, CQR_OP_COUNT,
                                CQR_STATUS_COUNT, &ctx->opstats);
    if (rc != 0)
        return rc;
    rc = cqr_registry_create(cfg->max_tables, cfg->max_table_memory,
                             cfg->engine_threads, &ctx->reg);
    if (rc != 0)
        goto fail_opstats;
    /* The runner counts the scheduled phases it could not begin. */
    rc = cqr_phases_create(cfg->cluster_workers,
                           &ctx->ctr.c[CQR_CTR_scheduled_phase_errors],
                           &ctx->phases);
    if (rc != 0)
        goto fail_registry;
    rc = cqr_compacts_create(&ctx->compacts);
    if (rc != 0)
        goto fail_phases;
    cqr_phases_set_commit_cb(ctx->phases, on_commit, ctx);
    return 0;

fail_phases:
    cqr_phases_destroy(ctx->phases);
    ctx->phases = NULL;
fail_registry:
    cqr_registry_destroy(ctx->reg);
    ctx->reg = NULL;
fail_opstats:
    cqr_opstats_destroy(ctx->opstats);
    ctx->opstats = NULL;
    return rc;
}

void cqr_server_ctx_free(cqr_server_ctx_t *ctx)
{
    /* Phases hold table references: finish them before the tables go. */
    cqr_phases_destroy(ctx->phases);
    ctx->phases = NULL;
    /* After the phases: none can start another compaction then. */
    cqr_compacts_destroy(ctx->compacts);
    ctx->compacts = NULL;
    cqr_registry_destroy(ctx->reg);
    ctx->reg = NULL;
    cqr_opstats_destroy(ctx->opstats);
    ctx->opstats = NULL;
}

void cqr_session_init(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                      const char *peer, uint32_t thread)
{
    memset(sess, 0, sizeof *sess);
    int open = ctx->auth.hello == NULL;
    sess->authed = open || ctx->auth.open;
    sess->admin = open;
    snprintf(sess->client, sizeof sess->client, "-");
    snprintf(sess->peer, sizeof sess->peer, "%s", peer ? peer : "-");
    sess->thread = thread;
}
