/* admin.c -- the operations on tables, phases and checkpoints, and
 * Hello (call.h): everything but Lookup, Push and Stats.
 *
 * They run on I/O threads like the data operations; the slow parts are
 * elsewhere (a cluster phase on the phase runner's threads, a checkpoint
 * on the persistence thread, whose reply is deferred), except the
 * allocation of a new table, which runs here outside the registry lock.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "ops/log.h"
#include "rpc/call.h"
#include "rpc/wire.h"

/* ---- table info ------------------------------------------------------ */

static void fill_info(cqr_info_block_t *b, const cqr_entry_t *e,
                      cqr_compacts_t *cm)
{
    const cqr_table_config_t *tc = cqr_table_config(e->table);
    cqr_table_stats_t st;
    cqr_table_stats(e->table, &st);
    cqr_optim_config_t o; /* may change at run time: read it whole */
    cqr_table_optim(e->table, &o);

    cqrps__v1__optimizer_config__init(&b->opt);
    b->opt.kind = (Cqrps__V1__Optimizer)o.kind;
    b->opt.lr = o.lr;
    b->opt.beta1 = o.beta1;
    b->opt.beta2 = o.beta2;
    b->opt.eps = o.eps;
    b->opt.weight_decay = o.weight_decay;

    cqrps__v1__cluster_schedule__init(&b->sched);
    b->sched.every_examples = tc->schedule_every;
    b->sched.max_phases = tc->schedule_max_phases;

    cqrps__v1__cluster_config__init(&b->cl);
    b->cl.iters = tc->cluster_iters;
    b->cl.sample_per_centroid = tc->cluster_sample;
    b->cl.reset_optimizer = tc->reset_optimizer != 0;
    b->cl.reset = tc->reset_optimizer ? CQRPS__V1__SETTING__SETTING_ON
                                      : CQRPS__V1__SETTING__SETTING_OFF;
    b->cl.tolerance = tc->cluster_tol > 0 ? tc->cluster_tol : -1.0f;

    cqrps__v1__table_config__init(&b->cfg);
    b->cfg.kind = (Cqrps__V1__TableKind)tc->kind;
    b->cfg.dim = tc->dim;
    b->cfg.chunks = tc->chunks;
    b->cfg.rows = tc->rows;
    b->cfg.seed = tc->seed;
    b->cfg.init_scale = tc->init_scale;
    b->cfg.optimizer = &b->opt;
    b->cfg.schedule = &b->sched;
    b->cfg.cluster = &b->cl;
    b->cfg.admit_after = tc->admit_after > 1 ? tc->admit_after : 0;
    b->cfg.evict_after_phases = tc->evict_after_phases;
    b->cfg.max_ids = tc->max_ids;
    b->cfg.ttl_seconds = tc->ttl_seconds;
    b->cfg.compact = tc->compact != 0;

    cqrps__v1__table_info__init(&b->info);
    /* The name stays valid while the call holds the entry reference. */
    b->info.name = (char *)e->name;
    b->info.config = &b->cfg;
    b->info.known_ids = st.known_ids;
    b->info.param_bytes = st.param_bytes;
    b->info.optimizer_bytes = st.optim_bytes;
    b->info.index_bytes = st.index_bytes;
    b->info.bytes_per_known_id = st.bytes_per_known_id;
    b->info.phases_done = st.phases_done;
    b->info.phase_running = st.phase_running != 0;
    b->info.lookups = st.lookups;
    b->info.pushes = st.pushes;
    b->info.examples_pushed = st.examples_pushed;
    b->info.last_inertia = st.last_inertia;
    b->info.last_phase_seconds = st.last_phase_seconds;
    b->info.ids_admitted = st.ids_admitted;
    b->info.ids_evicted = st.ids_evicted;
    b->info.sketch_bytes = st.sketch_bytes;
    b->info.serving_generation = e->serving_generation;
    b->info.compacted = st.rebuilds > 0;
    b->info.static_ids = st.static_ids;
    b->info.compacting = cm != NULL && cqr_compacts_busy(cm, e->uid);
}

/* Fills c->infos with every table (for ListTables and Stats). */
int cqr_call_table_infos(cqr_call_t *c, size_t *n)
{
    int rc = cqr_registry_list(c->ctx->reg, &c->list, &c->nlist);
    if (rc != 0)
        return cqr_call_fail(c, rc, "cannot list tables: %s",
                             cqr_strerror(rc));
    *n = c->nlist;
    if (c->nlist == 0)
        return 0;
    c->blocks = calloc(c->nlist, sizeof *c->blocks);
    c->infos = calloc(c->nlist, sizeof *c->infos);
    if (c->blocks == NULL || c->infos == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "cannot list %zu tables",
                             c->nlist);
    for (size_t i = 0; i < c->nlist; i++) {
        fill_info(&c->blocks[i], c->list[i], c->ctx->compacts);
        c->infos[i] = &c->blocks[i].info;
    }
    return 0;
}

int cqr_op_hello(cqr_call_t *c, const Cqrps__V1__Hello *h)
{
    cqr_server_ctx_t *ctx = c->ctx;
    cqr_session_t *s = c->sess;
    if (h->protocol_version != CQR_PROTOCOL_VERSION)
        return cqr_call_fail(c, CQR_EVERSION, "server speaks protocol %u, "
                             "client asked for %" PRIu32, CQR_PROTOCOL_VERSION,
                             h->protocol_version);
    /* Authentication seam: with no hook every session is already authed
     * and admin; the tokens are accepted and ignored. */
    if (ctx->auth.hello != NULL) {
        int rc = ctx->auth.hello(ctx->auth.ud, s, h->token.data,
                                 h->token.len, h->admin_token.data,
                                 h->admin_token.len);
        if (rc != 0) {
            s->authed = 0;
            s->admin = 0;
            cqr_log(CQR_LOG_WARN, "rpc", "hello refused peer=%s thread=%"
                    PRIu32 " reason=%s", s->peer, s->thread,
                    cqr_errname(rc));
            return cqr_call_fail(c, rc, "authentication failed");
        }
        s->authed = 1;
    }
    s->hello_done = 1;
    cqr_log_clean(s->client, sizeof s->client, h->client_name);
    cqr_log(CQR_LOG_INFO, "rpc", "hello peer=%s thread=%" PRIu32
            " client=%s admin=%d", s->peer, s->thread, s->client, s->admin);

    Cqrps__V1__HelloReply *r = &c->r.hello;
    cqrps__v1__hello_reply__init(r);
    r->protocol_version = CQR_PROTOCOL_VERSION;
    r->server_version = (char *)CQR_SERVER_VERSION;
    r->admin = s->admin != 0;
    /* The config bounds keep both within uint32. */
    r->max_frame_bytes = (uint32_t)ctx->cfg->max_frame_bytes;
    r->max_batch = (uint32_t)ctx->cfg->max_batch;
    r->max_parts = CQR_WIRE_MAX_PARTS;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_HELLO;
    c->resp.hello = r;
    return 0;
}

/* The learning rate a zero lr means, per optimizer (proto comment). */
static float default_lr(cqr_optim_kind_t k)
{
    switch (k) {
    case CQR_OPT_SGD: return 0.01f;
    case CQR_OPT_ADAGRAD: return 0.1f;
    case CQR_OPT_ADAM: return 0.001f;
    }
    return 0.001f;
}

/* TableConfig -> engine config: engine defaults for the kind and dim, then
 * every non-zero field of the request. A present optimizer message sets
 * the optimizer kind even when it is SGD (0); an absent one keeps the
 * engine's default (Adam). */
static int map_config(cqr_call_t *c, const Cqrps__V1__TableConfig *in,
                      cqr_table_config_t *cfg)
{
    if ((unsigned)in->kind > CQR_KIND_CQR)
        return cqr_call_fail(c, CQR_EINVAL, "unknown table kind %d",
                             (int)in->kind);
    if (in->dim == 0 || in->dim > CQR_MAX_DIM)
        return cqr_call_fail(c, CQR_EINVAL, "dim must be 1..%u, not %" PRIu32,
                             CQR_MAX_DIM, in->dim);
    if (in->dim > c->ctx->cfg->max_dim)
        return cqr_call_fail(c, CQR_ELIMIT, "dim %" PRIu32 " is over this "
                             "server's limit %" PRIu32 " (--max-dim)", in->dim,
                             c->ctx->cfg->max_dim);
    cqr_kind_t kind = (cqr_kind_t)in->kind;
    cqr_table_config_default(cfg, kind, in->dim);

    /* chunks and rows are ignored by the kinds that do not use them. */
    if (in->chunks != 0 && (kind == CQR_KIND_CE || kind == CQR_KIND_CQR))
        cfg->chunks = in->chunks;
    if (in->rows != 0 && kind != CQR_KIND_FULL)
        cfg->rows = in->rows;
    cfg->seed = in->seed;
    if (in->init_scale != 0)
        cfg->init_scale = in->init_scale;
    if (in->optimizer != NULL) {
        const Cqrps__V1__OptimizerConfig *o = in->optimizer;
        if ((unsigned)o->kind > CQR_OPT_ADAM)
            return cqr_call_fail(c, CQR_EINVAL, "unknown optimizer %d",
                                 (int)o->kind);
        cfg->optim.kind = (cqr_optim_kind_t)o->kind;
        cfg->optim.lr = o->lr != 0 ? o->lr : default_lr(cfg->optim.kind);
        if (o->beta1 != 0)
            cfg->optim.beta1 = o->beta1;
        if (o->beta2 != 0)
            cfg->optim.beta2 = o->beta2;
        if (o->eps != 0)
            cfg->optim.eps = o->eps;
        cfg->optim.weight_decay = o->weight_decay;
    }
    if (in->schedule != NULL) {
        cfg->schedule_every = in->schedule->every_examples;
        cfg->schedule_max_phases = in->schedule->max_phases;
    }
    if (in->cluster != NULL) {
        if (in->cluster->iters != 0)
            cfg->cluster_iters = in->cluster->iters;
        if (in->cluster->sample_per_centroid != 0)
            cfg->cluster_sample = in->cluster->sample_per_centroid;
        /* "0 = default" cannot say "off" for a bool whose default is
         * on: reset says it, reset_optimizer = true (older clients) says
         * on, and nothing leaves the default. */
        const Cqrps__V1__ClusterConfig *cl = in->cluster;
        if (cl->reset == CQRPS__V1__SETTING__SETTING_ON ||
            (cl->reset == CQRPS__V1__SETTING__SETTING_DEFAULT &&
             cl->reset_optimizer))
            cfg->reset_optimizer = 1;
        else if (cl->reset == CQRPS__V1__SETTING__SETTING_OFF)
            cfg->reset_optimizer = 0;
        else if (cl->reset != CQRPS__V1__SETTING__SETTING_DEFAULT)
            return cqr_call_fail(c, CQR_EINVAL, "unknown reset setting %d",
                                 (int)cl->reset);
        if (cl->tolerance < 0)
            cfg->cluster_tol = 0.0f; /* every iteration */
        else if (cl->tolerance > 0)
            cfg->cluster_tol = cl->tolerance;
    }
    if (in->admit_after != 0)
        cfg->admit_after = in->admit_after;
    cfg->evict_after_phases = in->evict_after_phases;
    cfg->max_ids = in->max_ids;
    cfg->ttl_seconds = in->ttl_seconds;
    cfg->compact = in->compact ? 1u : 0u;
    /* The wire has no per-table thread count: the operator decides. */
    cfg->cluster_threads = c->ctx->cfg->cluster_threads;

    char why[256] = "";
    int rc = cqr_table_config_check(cfg, why, sizeof why);
    if (rc != 0)
        return cqr_call_fail(c, rc, "invalid table config: %s",
                             why[0] ? why : cqr_strerror(rc));
    /* Valid for the engine; now this server's own limit. */
    if (kind != CQR_KIND_FULL && cfg->rows > c->ctx->cfg->max_rows)
        return cqr_call_fail(c, CQR_ELIMIT, "%" PRIu32 " rows per codebook is "
                             "over this server's limit %" PRIu32
                             " (--max-rows)", cfg->rows,
                             c->ctx->cfg->max_rows);
    return 0;
}

int cqr_op_create(cqr_call_t *c, const Cqrps__V1__CreateTable *m)
{
    cqr_server_ctx_t *ctx = c->ctx;
    int rc = cqr_call_name(c, m->name);
    if (rc != 0)
        return rc;
    if (m->config == NULL)
        return cqr_call_fail(c, CQR_EINVAL, "CreateTable needs a config");
    cqr_table_config_t cfg;
    rc = map_config(c, m->config, &cfg);
    if (rc != 0)
        return rc;

    uint64_t bytes = cqr_table_config_bytes(&cfg);
    cqr_entry_t *e;
    rc = cqr_registry_reserve(ctx->reg, m->name, bytes, &e, c->msg,
                              sizeof c->msg);
    if (rc != 0)
        return rc;
    /* Allocate outside the registry lock: a big table takes a while. */
    cqr_table_t *t;
    rc = cqr_table_create(&cfg, &t);
    if (rc != 0) {
        cqr_registry_cancel(ctx->reg, e);
        return cqr_call_fail(c, rc, "cannot create table '%s': %s", m->name,
                             cqr_strerror(rc));
    }
    cqr_registry_publish(ctx->reg, e, t);
    c->entry = e;

    cqr_log(CQR_LOG_INFO, "rpc", "created table=%s kind=%s dim=%" PRIu32
            " chunks=%" PRIu32 " rows=%" PRIu32 " optimizer=%s bytes=%"
            PRIu64 " compact=%u peer=%s", e->name, cqr_kind_name(cfg.kind),
            cfg.dim, cfg.chunks, cfg.rows, cqr_optim_name(cfg.optim.kind),
            bytes, cfg.compact, c->sess->peer);
    fill_info(&c->one, e, c->ctx->compacts);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
    c->resp.table = &c->one.info;
    return 0;
}

static int need_admin(cqr_call_t *c)
{
    if (c->sess->admin)
        return 0;
    return cqr_call_fail(c, CQR_EPERM, "this operation needs the admin token");
}

int cqr_op_drop(cqr_call_t *c, const Cqrps__V1__DropTable *m)
{
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    rc = cqr_call_name(c, m->name);
    if (rc != 0)
        return rc;
    char clean[CQR_NAME_MAX + 8];
    rc = cqr_registry_remove(c->ctx->reg, m->name);
    if (rc != 0)
        return cqr_call_fail(c, rc, "no such table '%s'",
                             cqr_log_clean(clean, sizeof clean, m->name));
    cqr_log(CQR_LOG_INFO, "rpc", "dropped table=%s peer=%s",
            cqr_log_clean(clean, sizeof clean, m->name), c->sess->peer);
    return 0;
}

int cqr_op_list(cqr_call_t *c)
{
    size_t n;
    int rc = cqr_call_table_infos(c, &n);
    if (rc != 0)
        return rc;
    cqrps__v1__list_tables_reply__init(&c->tables);
    c->tables.n_tables = n;
    c->tables.tables = c->infos;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLES;
    c->resp.tables = &c->tables;
    return 0;
}

int cqr_op_describe(cqr_call_t *c, const Cqrps__V1__DescribeTable *m)
{
    int rc = cqr_call_table(c, m->name);
    if (rc != 0)
        return rc;
    fill_info(&c->one, c->entry, c->ctx->compacts);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
    c->resp.table = &c->one.info;
    return 0;
}

/* Bits of UpdateOptimizer.set (proto/cqrps.proto). */
enum {
    SET_LR = 1,
    SET_BETA1 = 2,
    SET_BETA2 = 4,
    SET_EPS = 8,
    SET_WEIGHT_DECAY = 16,
    SET_ALL = 31
};

/* A data operation, not an admin one: learning-rate schedules run in
 * every trainer, which should not need the admin secret (that one drops
 * tables and starts phases); the change is bounded by the same checks
 * as a CreateTable's config. */
int cqr_op_update_optimizer(cqr_call_t *c, const Cqrps__V1__UpdateOptimizer *m)
{
    int rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    if (m->set & ~(uint32_t)SET_ALL)
        return cqr_call_fail(c, CQR_EINVAL, "unknown bits 0x%" PRIx32
                             " in set", m->set & ~(uint32_t)SET_ALL);
    cqr_table_t *t = c->entry->table;
    cqr_optim_config_t o;
    cqr_table_optim(t, &o);
    const Cqrps__V1__OptimizerConfig *v = m->optimizer;
    if (v == NULL && m->set != 0)
        return cqr_call_fail(c, CQR_EINVAL, "set names fields but the "
                             "request carries no optimizer values");
    if (m->set & SET_LR)
        o.lr = v->lr;
    if (m->set & SET_BETA1)
        o.beta1 = v->beta1;
    if (m->set & SET_BETA2)
        o.beta2 = v->beta2;
    if (m->set & SET_EPS)
        o.eps = v->eps;
    if (m->set & SET_WEIGHT_DECAY)
        o.weight_decay = v->weight_decay;
    char why[256] = "";
    rc = cqr_table_update_optim(t, &o, why, sizeof why);
    if (rc != 0)
        return cqr_call_fail(c, rc, "%s", why[0] ? why : cqr_strerror(rc));
    cqr_log(CQR_LOG_INFO, "rpc", "optimizer updated table=%s lr=%g "
            "beta1=%g beta2=%g eps=%g weight_decay=%g", c->entry->name,
            (double)o.lr, (double)o.beta1, (double)o.beta2, (double)o.eps,
            (double)o.weight_decay);
    fill_info(&c->one, c->entry, c->ctx->compacts);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
    c->resp.table = &c->one.info;
    return 0;
}

int cqr_op_cluster(cqr_call_t *c, const Cqrps__V1__Cluster *m)
{
    int rc = need_admin(c);
    if (rc == 0)
        rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_entry_t *e = c->entry;
    uint64_t id = 0;
    rc = cqr_phases_start(c->ctx->phases, e, &id);
    switch (rc) {
    case 0:
        break;
    case CQR_EUNSUPPORTED:
        return cqr_call_fail(c, rc, "table '%s' is a %s table; only cqr "
                             "tables have cluster phases", e->name,
                             cqr_kind_name(cqr_table_config(e->table)->kind));
    case CQR_EBUSY:
        return cqr_call_fail(c, rc, "a cluster phase of table '%s' is "
                             "already queued or running", e->name);
    default:
        return cqr_call_fail(c, rc, "cannot start a phase: %s",
                             cqr_strerror(rc));
    }
    cqr_log(CQR_LOG_INFO, "rpc", "cluster table=%s phase=%" PRIu64
            " peer=%s", e->name, id, c->sess->peer);
    Cqrps__V1__ClusterReply *r = &c->r.cluster;
    cqrps__v1__cluster_reply__init(r);
    r->phase_id = id;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CLUSTER;
    c->resp.cluster = r;
    return 0;
}

/* A ClusterStatusReply of st. */
static int status_reply(cqr_call_t *c, const cqr_phase_status_t *st)
{
    Cqrps__V1__ClusterStatusReply *r = &c->r.cstatus;
    cqrps__v1__cluster_status_reply__init(r);
    r->phase_id = st->phase_id;
    r->state = (Cqrps__V1__ClusterStatusReply__State)st->state;
    r->fraction = st->fraction;
    r->inertia = st->inertia;
    r->seconds = st->seconds;
    r->ids_assigned = st->ids_assigned;
    r->replayed_pushes = st->replayed_pushes;
    r->chunk = st->chunk;
    r->chunks = st->chunks;
    r->iter = st->iter;
    r->iters = st->iters;
    r->eta_seconds = st->eta_seconds;
    r->kmeans_iters = st->kmeans_iters;
    r->cancelled = st->cancelled != 0;
    /* Strings must outlive packing: copy them into the call. */
    char *buf = malloc(sizeof st->stage + sizeof st->error);
    if (buf == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, buf);
    memcpy(buf, st->stage, sizeof st->stage);
    memcpy(buf + sizeof st->stage, st->error, sizeof st->error);
    r->stage = buf;
    r->error = buf + sizeof st->stage;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CLUSTER_STATUS;
    c->resp.cluster_status = r;
    return 0;
}

int cqr_op_cluster_status(cqr_call_t *c,
                             const Cqrps__V1__ClusterStatus *m)
{
    int rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_phase_status_t st;
    rc = cqr_phases_status(c->ctx->phases, c->entry->uid, m->phase_id, &st);
    if (rc != 0) {
        if (m->phase_id == 0)
            return cqr_call_fail(c, rc, "table '%s' has run no cluster phase",
                                 c->entry->name);
        return cqr_call_fail(c, rc, "no phase %" PRIu64 " of table '%s' "
                             "(unknown or too old)", m->phase_id,
                             c->entry->name);
    }
    return status_reply(c, &st);
}

int cqr_op_cancel_cluster(cqr_call_t *c, const Cqrps__V1__CancelCluster *m)
{
    int rc = need_admin(c);
    if (rc == 0)
        rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_phase_status_t st;
    rc = cqr_phases_cancel(c->ctx->phases, c->entry->uid, m->phase_id,
                           "by request", &st);
    if (rc != 0) {
        if (m->phase_id == 0)
            return cqr_call_fail(c, rc, "table '%s' has no cluster phase "
                                 "queued or running", c->entry->name);
        return cqr_call_fail(c, rc, "phase %" PRIu64 " of table '%s' is not "
                             "queued or running", m->phase_id,
                             c->entry->name);
    }
    cqr_log(CQR_LOG_INFO, "rpc", "cancel cluster table=%s phase=%" PRIu64
            " peer=%s", c->entry->name, st.phase_id, c->sess->peer);
    return status_reply(c, &st);
}

int cqr_op_digest(cqr_call_t *c, const Cqrps__V1__Digest *m)
{
    int rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    uint64_t d;
    rc = cqr_table_digest(c->entry->table, &d);
    if (rc != 0)
        return cqr_call_fail(c, rc, "digest failed: %s", cqr_strerror(rc));
    snprintf(c->text, sizeof c->text, "%016" PRIx64, d);
    cqrps__v1__digest_reply__init(&c->r.digest);
    c->r.digest.digest = c->text;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_DIGEST;
    c->resp.digest = &c->r.digest;
    return 0;
}

#define NO_CKPT_MSG "checkpoints need a server started with --data-dir"

void cqr_call_ckpt_reply(Cqrps__V1__CheckpointReply *r,
                         const cqr_ckpt_info_t *info)
{
    cqrps__v1__checkpoint_reply__init(r);
    r->generation = info->generation;
    r->seconds = info->seconds;
    r->bytes = info->bytes;
}

/* Hands the checkpoint to the persistence thread; the connection sends
 * the reply in its place when it finishes (server.h, Deferred
 * replies). */
static int defer_checkpoint(cqr_call_t *c)
{
    cqr_deferred_t *d;
    int rc = cqr_call_defer(
        c, (uint32_t)CQRPS__V1__REQUEST__OP_CHECKPOINT - 10u, "checkpoint",
        &d);
    if (rc != 0)
        return rc;
    /* From here the slot is reserved: every outcome goes through it. */
    cqr_server_ctx_t *ctx = c->ctx;
    rc = ctx->ckpt.checkpoint_async(ctx->ckpt.ud, ctx, d);
    if (rc != 0)
        cqr_rpc_checkpoint_done(d, rc, NULL, NULL);
    return 0;
}

int cqr_op_checkpoint(cqr_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    if (ctx->ckpt.checkpoint_async != NULL && c->sess->defer != NULL)
        return defer_checkpoint(c);
    if (ctx->ckpt.checkpoint == NULL)
        return cqr_call_fail(c, CQR_EUNSUPPORTED, NO_CKPT_MSG);
    cqr_ckpt_info_t info;
    memset(&info, 0, sizeof info);
    rc = ctx->ckpt.checkpoint(ctx->ckpt.ud, ctx, &info, c->msg,
                              sizeof c->msg);
    if (rc != 0)
        return rc;
    Cqrps__V1__CheckpointReply *r = &c->r.ckpt;
    cqr_call_ckpt_reply(r, &info);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CHECKPOINT;
    c->resp.checkpoint = r;
    return 0;
}

int cqr_op_list_checkpoints(cqr_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    if (ctx->ckpt.list == NULL)
        return cqr_call_fail(c, CQR_EUNSUPPORTED, NO_CKPT_MSG);
    cqr_ckpt_info_t *infos = NULL;
    size_t n = 0;
    int rc = ctx->ckpt.list(ctx->ckpt.ud, ctx, &infos, &n);
    if (rc != 0)
        return cqr_call_fail(c, rc, "cannot list checkpoints: %s",
                             cqr_strerror(rc));
    cqr_call_keep(c, infos);
    size_t size = n * (sizeof(Cqrps__V1__CheckpointInfo) + sizeof(void *));
    uint8_t *blk = malloc(size ? size : 1);
    if (blk == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, blk);
    Cqrps__V1__CheckpointInfo **ptrs = (void *)blk;
    Cqrps__V1__CheckpointInfo *ci = (void *)(blk + n * sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        cqrps__v1__checkpoint_info__init(&ci[i]);
        ci[i].generation = infos[i].generation;
        ci[i].unix_time = infos[i].unix_time;
        ci[i].bytes = infos[i].bytes;
        ci[i].tables = infos[i].tables;
        ptrs[i] = &ci[i];
    }
    cqrps__v1__list_checkpoints_reply__init(&c->ckpts);
    c->ckpts.n_checkpoints = n;
    c->ckpts.checkpoints = ptrs;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CHECKPOINTS;
    c->resp.checkpoints = &c->ckpts;
    return 0;
}
