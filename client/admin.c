/* admin.c -- the RPCs other than lookup and push: tables (and the
 * table-dim cache they fill), cluster phases, stats, digests and
 * checkpoints, each sent to one or every shard and merged (see
 * "Addresses and sharding" in cqrps.h for the rules; the layers are
 * listed in op.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "cqrps.pb-c.h"

/* Default rows per codebook on the server (proto TableConfig.rows), used
 * only to split a default budget over shards. */
#define CQ_DEFAULT_ROWS 1024

typedef Cqrps__V1__Request req_t;
typedef Cqrps__V1__Response resp_t;

/* A Request for operation `op_case`; the caller points the member of the
 * oneof at its message. */
static req_t request(Cqrps__V1__Request__OpCase op_case)
{
    req_t r = CQRPS__V1__REQUEST__INIT;
    r.op_case = op_case;
    return r;
}

/* The reply of shard s if it is of the expected kind, else an error on
 * the client. */
static const resp_t *reply_of(cqrps_client_t *c, const cq_op_t *op,
                              uint32_t s, int reply_case, int *rc)
{
    const resp_t *r = op->resp[s];
    /* Every member of the reply union is a pointer: check one for NULL. */
    if (!r || (int)r->reply_case != reply_case || !r->table) {
        *rc = cq_fail(&c->net, CQRPS_EPROTO, "reply from %s lacks its result",
                      c->net.conns[s].addr);
        return NULL;
    }
    return r;
}

/* ---- Configs and infos ------------------------------------------------- */

typedef struct pb_cfg {
    Cqrps__V1__TableConfig cfg;
    Cqrps__V1__OptimizerConfig opt;
    Cqrps__V1__ClusterSchedule sched;
    Cqrps__V1__ClusterConfig clu;
} pb_cfg_t;

static void cfg_to_pb(const cqrps_table_config_t *in, uint32_t rows,
                      pb_cfg_t *p)
{
    cqrps__v1__table_config__init(&p->cfg);
    cqrps__v1__optimizer_config__init(&p->opt);
    cqrps__v1__cluster_schedule__init(&p->sched);
    cqrps__v1__cluster_config__init(&p->clu);
    p->cfg.kind = (Cqrps__V1__TableKind)in->kind;
    p->cfg.dim = in->dim;
    p->cfg.chunks = in->chunks;
    p->cfg.rows = rows;
    p->cfg.seed = in->seed;
    p->cfg.init_scale = in->init_scale;
    p->opt.kind = (Cqrps__V1__Optimizer)in->optimizer;
    p->opt.lr = in->lr;
    p->opt.beta1 = in->beta1;
    p->opt.beta2 = in->beta2;
    p->opt.eps = in->eps;
    p->opt.weight_decay = in->weight_decay;
    p->sched.every_examples = in->schedule_every;
    p->sched.max_phases = in->schedule_max_phases;
    p->clu.iters = in->cluster_iters;
    p->clu.sample_per_centroid = in->cluster_sample;
    /* The bool for servers that predate `reset` (they read only it: OFF
     * and DEFAULT then both mean their old default, off). */
    p->clu.reset_optimizer = in->reset_optimizer == CQRPS_ON;
    p->clu.reset = in->reset_optimizer == CQRPS_ON
                       ? CQRPS__V1__SETTING__SETTING_ON
                   : in->reset_optimizer == CQRPS_OFF
                       ? CQRPS__V1__SETTING__SETTING_OFF
                       : CQRPS__V1__SETTING__SETTING_DEFAULT;
    p->clu.tolerance = in->cluster_tol;
    p->cfg.admit_after = in->admit_after;
    p->cfg.evict_after_phases = in->evict_after_phases;
    p->cfg.max_ids = in->max_ids;
    p->cfg.ttl_seconds = in->ttl_seconds;
    p->cfg.compact = in->compact != 0;
    p->cfg.optimizer = &p->opt;
    p->cfg.schedule = &p->sched;
    p->cfg.cluster = &p->clu;
}

static void cfg_from_pb(const Cqrps__V1__TableConfig *p,
                        cqrps_table_config_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!p)
        return;
    out->kind = (cqrps_kind_t)p->kind;
    out->dim = p->dim;
    out->chunks = p->chunks;
    out->rows = p->rows;
    out->seed = p->seed;
    out->init_scale = p->init_scale;
    out->admit_after = p->admit_after;
    out->evict_after_phases = p->evict_after_phases;
    out->max_ids = p->max_ids;
    out->ttl_seconds = p->ttl_seconds;
    out->compact = p->compact ? 1 : 0;
    if (p->optimizer) {
        out->optimizer = (cqrps_optimizer_t)p->optimizer->kind;
        out->lr = p->optimizer->lr;
        out->beta1 = p->optimizer->beta1;
        out->beta2 = p->optimizer->beta2;
        out->eps = p->optimizer->eps;
        out->weight_decay = p->optimizer->weight_decay;
    }
    if (p->schedule) {
        out->schedule_every = p->schedule->every_examples;
        out->schedule_max_phases = p->schedule->max_phases;
    }
    if (p->cluster) {
        out->cluster_iters = p->cluster->iters;
        out->cluster_sample = p->cluster->sample_per_centroid;
        out->reset_optimizer =
            p->cluster->reset == CQRPS__V1__SETTING__SETTING_ON ? CQRPS_ON
            : p->cluster->reset == CQRPS__V1__SETTING__SETTING_OFF
                ? CQRPS_OFF
                : (p->cluster->reset_optimizer ? CQRPS_ON : CQRPS_OFF);
        out->cluster_tol = p->cluster->tolerance;
    }
}

static void info_from_pb(const Cqrps__V1__TableInfo *p,
                         cqrps_table_info_t *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", p->name ? p->name : "");
    cfg_from_pb(p->config, &out->config);
    out->known_ids = p->known_ids;
    out->param_bytes = p->param_bytes;
    out->optimizer_bytes = p->optimizer_bytes;
    out->index_bytes = p->index_bytes;
    out->bytes_per_known_id = p->bytes_per_known_id;
    out->phases_done = p->phases_done;
    out->phase_running = p->phase_running ? 1 : 0;
    out->lookups = p->lookups;
    out->pushes = p->pushes;
    out->examples_pushed = p->examples_pushed;
    out->last_inertia = p->last_inertia;
    out->last_phase_seconds = p->last_phase_seconds;
    out->ids_admitted = p->ids_admitted;
    out->ids_evicted = p->ids_evicted;
    out->sketch_bytes = p->sketch_bytes;
    out->serving_generation = p->serving_generation;
    out->compacted = p->compacted ? 1 : 0;
    out->static_ids = p->static_ids;
    out->compacting = p->compacting ? 1 : 0;
}

/* Adds shard `k`'s (0-based, k >= 1) figures of the same table into acc. */
static void info_merge(cqrps_table_info_t *acc, const cqrps_table_info_t *o,
                       uint32_t k)
{
    if (acc->config.kind != CQRPS_KIND_FULL)
        acc->config.rows += o->config.rows;
    acc->known_ids += o->known_ids;
    acc->param_bytes += o->param_bytes;
    acc->optimizer_bytes += o->optimizer_bytes;
    acc->index_bytes += o->index_bytes;
    acc->bytes_per_known_id =
        acc->known_ids ? (double)acc->index_bytes / (double)acc->known_ids
                       : 0.0;
    if (o->phases_done < acc->phases_done)
        acc->phases_done = o->phases_done;
    acc->phase_running |= o->phase_running;
    acc->lookups += o->lookups;
    acc->pushes += o->pushes;
    acc->examples_pushed += o->examples_pushed;
    acc->ids_admitted += o->ids_admitted;
    acc->ids_evicted += o->ids_evicted;
    acc->sketch_bytes += o->sketch_bytes;
    acc->compacted &= o->compacted;
    acc->static_ids += o->static_ids;
    acc->compacting |= o->compacting;
    if (o->serving_generation < acc->serving_generation)
        acc->serving_generation = o->serving_generation;
    acc->last_inertia = (acc->last_inertia * k + o->last_inertia) / (k + 1);
    if (o->last_phase_seconds > acc->last_phase_seconds)
        acc->last_phase_seconds = o->last_phase_seconds;
}

/* Merges every shard's TableInfo reply of `op` into *info (if non-NULL)
 * and caches the table's dim. Returns the first shard's error, if any. */
static int table_replies(cqrps_client_t *c, cq_op_t *op, const char *name,
                         cqrps_table_info_t *info)
{
    int rc = 0;
    cqrps_table_info_t acc;
    for (uint32_t s = 0; s < c->net.nconns; s++) {
        const resp_t *r = reply_of(c, op, s, CQRPS__V1__RESPONSE__REPLY_TABLE,
                                   &rc);
        if (!r)
            return rc;
        cqrps_table_info_t t;
        info_from_pb(r->table, &t);
        if (s == 0)
            acc = t;
        else
            info_merge(&acc, &t, s);
    }
    cq_dims_put(&c->net.dims, name, acc.config.dim);
    if (info)
        *info = acc;
    return 0;
}

static int info_cmp(const void *a, const void *b)
{
    return strcmp(((const cqrps_table_info_t *)a)->name,
                  ((const cqrps_table_info_t *)b)->name);
}

/* Merges the tables of every shard's list by name into a sorted array
 * (*out owned by the caller; NULL when empty). */
static int merge_tables(cqrps_client_t *c, Cqrps__V1__TableInfo **const *lists,
                        const size_t *counts, uint32_t nlists,
                        cqrps_table_info_t **out, size_t *n)
{
    size_t total = 0;
    for (uint32_t s = 0; s < nlists; s++)
        total += counts[s];
    *out = NULL;
    *n = 0;
    if (total == 0)
        return 0;
    cqrps_table_info_t *arr = calloc(total, sizeof(*arr));
    uint32_t *seen = calloc(total, sizeof(*seen)); /* shards merged in */
    if (!arr || !seen) {
        free(arr);
        free(seen);
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    }
    size_t m = 0;
    for (uint32_t s = 0; s < nlists; s++) {
        for (size_t i = 0; i < counts[s]; i++) {
            cqrps_table_info_t t;
            info_from_pb(lists[s][i], &t);
            size_t k = 0;
            while (k < m && strcmp(arr[k].name, t.name) != 0)
                k++; /* few tables: a linear search is fine */
            if (k == m) {
                arr[m++] = t;
                seen[k] = 1;
            } else {
                info_merge(&arr[k], &t, seen[k]++);
            }
        }
    }
    free(seen);
    qsort(arr, m, sizeof(*arr), info_cmp);
    *out = arr;
    *n = m;
    return 0;
}

void cqrps_table_list_free(cqrps_table_info_t *list)
{
    free(list);
}

/* ---- Tables ------------------------------------------------------------ */

/* Rows of shard s when `rows` (0 = default) are split over nsh shards so
 * that the shards add up to the budget asked for. */
static uint32_t shard_rows(const cqrps_table_config_t *cfg, uint32_t nsh,
                           uint32_t s)
{
    if (nsh == 1 || cfg->kind == CQRPS_KIND_FULL)
        return cfg->rows;
    uint32_t total = cfg->rows ? cfg->rows : CQ_DEFAULT_ROWS;
    uint32_t r = total / nsh + (s < total % nsh ? 1 : 0);
    return r ? r : 1;
}

int cqrps_create_table(cqrps_client_t *c, const char *name,
                       const cqrps_table_config_t *cfg,
                       cqrps_table_info_t *info)
{
    if (!c)
        return CQRPS_EINVAL;
    if (!cfg)
        return cq_fail(&c->net, CQRPS_EINVAL, "config is NULL");
    int rc = cq_check_name(c, name);
    if (rc < 0)
        return rc;
    cq_op_t *op = cq_op_new(CQ_O_RPC, name, c->net.nconns);
    if (!op)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    for (uint32_t s = 0; s < c->net.nconns; s++) {
        pb_cfg_t pc;
        cfg_to_pb(cfg, shard_rows(cfg, c->net.nconns, s), &pc);
        Cqrps__V1__CreateTable msg = CQRPS__V1__CREATE_TABLE__INIT;
        msg.name = (char *)name;
        msg.config = &pc.cfg;
        req_t req = request(CQRPS__V1__REQUEST__OP_CREATE_TABLE);
        req.create_table = &msg;
        if (cq_rpc_send(c, op, s, &req) < 0)
            break;
    }
    cq_pump(&c->net, NULL);
    rc = cq_op_finish(c, op);
    if (rc == 0)
        rc = table_replies(c, op, name, info);
    cq_op_free(op);
    return rc;
}

int cqrps_drop_table(cqrps_client_t *c, const char *name)
{
    if (!c)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, name);
    if (rc < 0)
        return rc;
    Cqrps__V1__DropTable msg = CQRPS__V1__DROP_TABLE__INIT;
    msg.name = (char *)name;
    req_t req = request(CQRPS__V1__REQUEST__OP_DROP_TABLE);
    req.drop_table = &msg;
    cq_op_t *op;
    rc = cq_rpc(c, &req, CQ_RPC_ALL, name, &op);
    cq_dims_drop(&c->net.dims, name);
    cq_op_free(op);
    return rc;
}

int cqrps_list_tables(cqrps_client_t *c, cqrps_table_info_t **out,
                      size_t *n)
{
    if (!c || !out || !n)
        return CQRPS_EINVAL;
    *out = NULL;
    *n = 0;
    Cqrps__V1__ListTables msg = CQRPS__V1__LIST_TABLES__INIT;
    req_t req = request(CQRPS__V1__REQUEST__OP_LIST_TABLES);
    req.list_tables = &msg;
    cq_op_t *op;
    int rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, NULL, &op);
    Cqrps__V1__TableInfo **lists[c->net.nconns];
    size_t counts[c->net.nconns];
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(c, op, s, CQRPS__V1__RESPONSE__REPLY_TABLES,
                                   &rc);
        if (r) {
            lists[s] = r->tables->tables;
            counts[s] = r->tables->n_tables;
        }
    }
    if (rc == 0)
        rc = merge_tables(c, (Cqrps__V1__TableInfo **const *)lists, counts,
                          c->net.nconns, out, n);
    cq_op_free(op);
    return rc;
}

int cqrps_describe_table(cqrps_client_t *c, const char *name,
                         cqrps_table_info_t *info)
{
    if (!c || !info)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, name);
    if (rc < 0)
        return rc;
    Cqrps__V1__DescribeTable msg = CQRPS__V1__DESCRIBE_TABLE__INIT;
    msg.name = (char *)name;
    req_t req = request(CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE);
    req.describe_table = &msg;
    cq_op_t *op;
    rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, name, &op);
    if (rc == 0)
        rc = table_replies(c, op, name, info);
    cq_op_free(op);
    return rc;
}

int cqrps_update_optimizer(cqrps_client_t *c, const char *table,
                           const cqrps_optimizer_update_t *u,
                           cqrps_table_info_t *info)
{
    const unsigned all = CQRPS_OPT_LR | CQRPS_OPT_BETA1 | CQRPS_OPT_BETA2 |
                         CQRPS_OPT_EPS | CQRPS_OPT_WEIGHT_DECAY;
    if (!c || !u)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    if (u->set & ~all)
        return cq_fail(&c->net, CQRPS_EINVAL, "unknown bits 0x%x in set",
                       u->set & ~all);
    /* The bits are the wire's (UpdateOptimizer.set). */
    Cqrps__V1__OptimizerConfig vals = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    vals.lr = u->lr;
    vals.beta1 = u->beta1;
    vals.beta2 = u->beta2;
    vals.eps = u->eps;
    vals.weight_decay = u->weight_decay;
    Cqrps__V1__UpdateOptimizer msg = CQRPS__V1__UPDATE_OPTIMIZER__INIT;
    msg.table = (char *)table;
    msg.optimizer = &vals;
    msg.set = u->set;
    req_t req = request(CQRPS__V1__REQUEST__OP_UPDATE_OPTIMIZER);
    req.update_optimizer = &msg;
    cq_op_t *op;
    /* Setting values twice is harmless: retried after a lost connection. */
    rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, table, &op);
    if (rc == 0)
        rc = table_replies(c, op, table, info);
    cq_op_free(op);
    return rc;
}

int cqrps_table_dim(cqrps_client_t *c, const char *name, uint32_t *dim)
{
    if (!c || !dim)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, name);
    if (rc < 0)
        return rc;
    if (cq_dims_get(&c->net.dims, name, dim))
        return 0;
    cqrps_table_info_t info;
    rc = cqrps_describe_table(c, name, &info); /* fills the cache */
    if (rc < 0)
        return rc;
    *dim = info.config.dim;
    return 0;
}

/* ---- Cluster phases ---------------------------------------------------- */

static cq_phase_memo_t *memo_find(cqrps_client_t *c, const char *table)
{
    for (size_t i = 0; i < c->nmemos; i++)
        if (strcmp(c->memos[i].table, table) == 0)
            return &c->memos[i];
    return NULL;
}

/* Remembers the per-shard phase ids of a sharded cluster call. */
static void memo_put(cqrps_client_t *c, const char *table, uint64_t id,
                     const uint64_t *ids)
{
    cq_phase_memo_t *m = memo_find(c, table);
    if (!m) {
        if (c->nmemos == c->memos_cap) {
            size_t ncap = c->memos_cap ? c->memos_cap * 2 : 4;
            cq_phase_memo_t *nm = realloc(c->memos, ncap * sizeof(*nm));
            if (!nm)
                return; /* status then asks every shard for `id` */
            c->memos = nm;
            c->memos_cap = ncap;
        }
        m = &c->memos[c->nmemos++];
        memset(m, 0, sizeof(*m));
        snprintf(m->table, sizeof(m->table), "%s", table);
    }
    if (!m->shard_ids)
        m->shard_ids = malloc(c->net.nconns * sizeof(uint64_t));
    if (!m->shard_ids) {
        *m = c->memos[--c->nmemos];
        return;
    }
    memcpy(m->shard_ids, ids, c->net.nconns * sizeof(uint64_t));
    m->id = id;
}

int cqrps_cluster(cqrps_client_t *c, const char *table, uint64_t *phase_id)
{
    if (!c)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    Cqrps__V1__Cluster msg = CQRPS__V1__CLUSTER__INIT;
    msg.table = (char *)table;
    req_t req = request(CQRPS__V1__REQUEST__OP_CLUSTER);
    req.cluster = &msg;
    cq_op_t *op;
    rc = cq_rpc(c, &req, CQ_RPC_ALL, table, &op);
    uint64_t ids[c->net.nconns], maxid = 0;
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(c, op, s,
                                   CQRPS__V1__RESPONSE__REPLY_CLUSTER, &rc);
        if (!r)
            break;
        ids[s] = r->cluster->phase_id;
        if (ids[s] > maxid)
            maxid = ids[s];
    }
    if (rc == 0) {
        if (c->net.nconns > 1)
            memo_put(c, table, maxid, ids);
        if (phase_id)
            *phase_id = maxid;
    }
    cq_op_free(op);
    return rc;
}

static void status_from_pb(const Cqrps__V1__ClusterStatusReply *p,
                           cqrps_phase_status_t *st)
{
    memset(st, 0, sizeof(*st));
    st->phase_id = p->phase_id;
    st->state = (cqrps_phase_state_t)p->state;
    snprintf(st->stage, sizeof(st->stage), "%s", p->stage ? p->stage : "");
    st->fraction = p->fraction;
    st->inertia = p->inertia;
    st->seconds = p->seconds;
    st->ids_assigned = p->ids_assigned;
    st->replayed_pushes = p->replayed_pushes;
    snprintf(st->error, sizeof(st->error), "%s", p->error ? p->error : "");
    st->chunk = p->chunk;
    st->chunks = p->chunks;
    st->iter = p->iter;
    st->iters = p->iters;
    st->eta_seconds = p->eta_seconds;
    st->kmeans_iters = p->kmeans_iters;
    st->cancelled = p->cancelled ? 1 : 0;
}

/* Shard k's (k >= 1) status of the same phase into acc: progress is the
 * mean (divided at the end), time and time left the largest. */
static void status_merge(cqrps_phase_status_t *acc,
                         const cqrps_phase_status_t *one)
{
    acc->fraction += one->fraction;
    acc->inertia += one->inertia;
    if (one->seconds > acc->seconds)
        acc->seconds = one->seconds;
    if (one->eta_seconds < 0 || acc->eta_seconds < 0)
        acc->eta_seconds = -1;
    else if (one->eta_seconds > acc->eta_seconds)
        acc->eta_seconds = one->eta_seconds;
    acc->ids_assigned += one->ids_assigned;
    acc->replayed_pushes += one->replayed_pushes;
    if (one->kmeans_iters > acc->kmeans_iters)
        acc->kmeans_iters = one->kmeans_iters;
    acc->cancelled |= one->cancelled;
    if (acc->stage[0] == '\0' || one->state == CQRPS_PHASE_RUNNING) {
        memcpy(acc->stage, one->stage, sizeof(acc->stage));
        acc->chunk = one->chunk;
        acc->iter = one->iter;
    }
}

/* What the shards said about one phase, beyond the merged status. */
typedef struct phase_tally {
    uint32_t done, queued, failed; /* shards in each state */
    uint32_t first_failed;         /* the first failed shard, if any */
    char error[sizeof(((cqrps_phase_status_t *)0)->error)]; /* its error */
} phase_tally_t;

/* One shard's request about a phase: a ClusterStatus, or a CancelCluster
 * when cancel (both answered by a ClusterStatusReply). */
static int phase_send(cqrps_client_t *c, cq_op_t *op, uint32_t s,
                      const char *table, uint64_t id, int cancel)
{
    if (cancel) {
        Cqrps__V1__CancelCluster msg = CQRPS__V1__CANCEL_CLUSTER__INIT;
        msg.table = (char *)table;
        msg.phase_id = id;
        req_t req = request(CQRPS__V1__REQUEST__OP_CANCEL_CLUSTER);
        req.cancel_cluster = &msg;
        return cq_rpc_send(c, op, s, &req);
    }
    Cqrps__V1__ClusterStatus msg = CQRPS__V1__CLUSTER_STATUS__INIT;
    msg.table = (char *)table;
    msg.phase_id = id;
    req_t req = request(CQRPS__V1__REQUEST__OP_CLUSTER_STATUS);
    req.cluster_status = &msg;
    return cq_rpc_send(c, op, s, &req);
}

/* Asks every shard about phase_id of table (each with its own id of a
 * phase this client started) and merges the replies into *acc: progress
 * the mean, phase_id the caller's; *t counts the shards' states. */
static int phase_call(cqrps_client_t *c, const char *table,
                      uint64_t phase_id, int cancel,
                      cqrps_phase_status_t *acc, phase_tally_t *t)
{
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    const cq_phase_memo_t *m = c->net.nconns > 1 ? memo_find(c, table) : NULL;
    cq_op_t *op = cq_op_new(CQ_O_RPC, table, c->net.nconns);
    if (!op)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    for (uint32_t s = 0; s < c->net.nconns; s++) {
        uint64_t id =
            m && phase_id && phase_id == m->id ? m->shard_ids[s] : phase_id;
        if (phase_send(c, op, s, table, id, cancel) < 0)
            break;
    }
    cq_pump(&c->net, NULL);
    rc = cq_op_finish(c, op);
    memset(acc, 0, sizeof(*acc));
    memset(t, 0, sizeof(*t));
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(
            c, op, s, CQRPS__V1__RESPONSE__REPLY_CLUSTER_STATUS, &rc);
        if (!r)
            break;
        cqrps_phase_status_t one;
        status_from_pb(r->cluster_status, &one);
        if (s == 0)
            *acc = one;
        else
            status_merge(acc, &one);
        t->done += one.state == CQRPS_PHASE_DONE;
        t->queued += one.state == CQRPS_PHASE_QUEUED;
        if (one.state == CQRPS_PHASE_FAILED && !t->failed++) {
            t->first_failed = s;
            memcpy(t->error, one.error, sizeof(t->error));
        }
    }
    if (rc == 0 && c->net.nconns > 1) {
        acc->fraction /= c->net.nconns;
        acc->inertia /= c->net.nconns;
        acc->phase_id = phase_id ? phase_id : acc->phase_id;
    }
    cq_op_free(op);
    return rc;
}

int cqrps_cluster_status(cqrps_client_t *c, const char *table,
                         uint64_t phase_id, cqrps_phase_status_t *st)
{
    if (!c || !st)
        return CQRPS_EINVAL;
    cqrps_phase_status_t acc;
    phase_tally_t t;
    int rc = phase_call(c, table, phase_id, 0, &acc, &t);
    if (rc < 0)
        return rc;
    uint32_t n = c->net.nconns;
    if (n > 1) {
        if (t.failed)
            snprintf(acc.error, sizeof(acc.error), "%.60s: %.180s",
                     c->net.conns[t.first_failed].addr, t.error);
        acc.state = t.done == n     ? CQRPS_PHASE_DONE
                    : t.failed      ? CQRPS_PHASE_FAILED
                    : t.queued == n ? CQRPS_PHASE_QUEUED
                                    : CQRPS_PHASE_RUNNING;
    }
    *st = acc;
    return 0;
}

int cqrps_cluster_wait(cqrps_client_t *c, const char *table,
                       uint64_t phase_id, uint32_t timeout_ms,
                       cqrps_phase_status_t *st)
{
    return cqrps_cluster_wait_progress(c, table, phase_id, timeout_ms, st,
                                       NULL, NULL);
}

int cqrps_cluster_wait_progress(cqrps_client_t *c, const char *table,
                                uint64_t phase_id, uint32_t timeout_ms,
                                cqrps_phase_status_t *st,
                                cqrps_phase_progress_cb progress, void *ud)
{
    if (!c)
        return CQRPS_EINVAL;
    cqrps_phase_status_t tmp;
    if (!st)
        st = &tmp;
    uint64_t deadline = timeout_ms ? cq_now_ms() + timeout_ms : 0;
    uint32_t pause = 10;
    for (;;) {
        int rc = cqrps_cluster_status(c, table, phase_id, st);
        if (rc < 0)
            return rc;
        if (progress)
            progress(ud, st);
        if (st->state == CQRPS_PHASE_DONE)
            return 0;
        if (st->state == CQRPS_PHASE_FAILED)
            return cq_fail(&c->net,
                           st->cancelled ? CQRPS_ECANCELED : CQRPS_EINTERNAL,
                           "cluster phase %llu of table %s failed: %s",
                           (unsigned long long)st->phase_id, table,
                           st->error);
        uint64_t now = cq_now_ms();
        if (deadline && now >= deadline)
            return cq_fail(&c->net, CQRPS_ETIMEDOUT,
                           "cluster phase %llu of table %s not done after "
                           "%u ms (%s, %.0f%%)",
                           (unsigned long long)st->phase_id, table,
                           timeout_ms, st->stage, st->fraction * 100.0);
        uint64_t nap = pause;
        if (deadline && now + nap > deadline)
            nap = deadline - now;
        struct timespec ts = { (time_t)(nap / 1000),
                               (long)(nap % 1000) * 1000000L };
        nanosleep(&ts, NULL);
        pause = pause * 2 > 500 ? 500 : pause * 2;
    }
}

int cqrps_cluster_cancel(cqrps_client_t *c, const char *table,
                         uint64_t phase_id, cqrps_phase_status_t *st)
{
    if (!c)
        return CQRPS_EINVAL;
    cqrps_phase_status_t acc;
    phase_tally_t t;
    int rc = phase_call(c, table, phase_id, 1, &acc, &t);
    if (rc == 0 && st)
        *st = acc;
    return rc;
}

/* ---- Stats and digests ------------------------------------------------- */

void cqrps_stats_free(cqrps_stats_t *st)
{
    if (!st)
        return;
    free(st->tables);
    for (size_t i = 0; i < st->ncounters; i++)
        free(st->counters[i].name);
    free(st->counters);
    memset(st, 0, sizeof(*st));
}

static int counter_cmp(const void *a, const void *b)
{
    return strcmp(((const cqrps_counter_t *)a)->name,
                  ((const cqrps_counter_t *)b)->name);
}

/* The counter called key in st->counters (room for it was allocated),
 * added if new; NULL when out of memory. */
static cqrps_counter_t *counter_slot(cqrps_stats_t *st, const char *key)
{
    if (!key)
        key = "";
    for (size_t k = 0; k < st->ncounters; k++)
        if (strcmp(st->counters[k].name, key) == 0)
            return &st->counters[k];
    cqrps_counter_t *n = &st->counters[st->ncounters];
    n->name = strdup(key);
    if (!n->name)
        return NULL;
    st->ncounters++;
    return n;
}

int cqrps_stats(cqrps_client_t *c, cqrps_stats_t *st)
{
    if (!c || !st)
        return CQRPS_EINVAL;
    memset(st, 0, sizeof(*st));
    Cqrps__V1__Stats msg = CQRPS__V1__STATS__INIT;
    req_t req = request(CQRPS__V1__REQUEST__OP_STATS);
    req.stats = &msg;
    cq_op_t *op;
    int rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, NULL, &op);
    Cqrps__V1__TableInfo **lists[c->net.nconns];
    size_t counts[c->net.nconns], ncnt = 0;
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(c, op, s, CQRPS__V1__RESPONSE__REPLY_STATS,
                                   &rc);
        if (!r)
            break;
        const Cqrps__V1__StatsReply *p = r->stats;
        if (s == 0) {
            snprintf(st->server_version, sizeof(st->server_version), "%s",
                     p->server_version ? p->server_version : "");
            st->uptime_seconds = p->uptime_seconds;
        } else if (p->uptime_seconds < st->uptime_seconds) {
            st->uptime_seconds = p->uptime_seconds;
        }
        st->connections += p->connections;
        st->requests += p->requests;
        st->errors += p->errors;
        st->bytes_in += p->bytes_in;
        st->bytes_out += p->bytes_out;
        lists[s] = p->tables;
        counts[s] = p->n_tables;
        ncnt += p->n_counters + p->n_counts;
    }
    if (rc == 0)
        rc = merge_tables(c, (Cqrps__V1__TableInfo **const *)lists, counts,
                          c->net.nconns, &st->tables, &st->ntables);
    if (rc == 0 && ncnt) {
        st->counters = calloc(ncnt, sizeof(*st->counters));
        if (!st->counters)
            rc = cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
        for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
            const Cqrps__V1__StatsReply *p = op->resp[s]->stats;
            for (size_t i = 0; rc == 0 && i < p->n_counters; i++) {
                cqrps_counter_t *k = counter_slot(st, p->counters[i]->key);
                if (!k)
                    rc = cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
                else
                    k->value += p->counters[i]->value;
            }
            /* Exact counts (a newer server): summed as integers. */
            for (size_t i = 0; rc == 0 && i < p->n_counts; i++) {
                cqrps_counter_t *k = counter_slot(st, p->counts[i]->key);
                if (!k) {
                    rc = cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
                } else {
                    uint64_t v = p->counts[i]->value;
                    k->count = k->count > UINT64_MAX - v ? UINT64_MAX
                                                         : k->count + v;
                    k->is_count = 1;
                }
            }
        }
        for (size_t k = 0; rc == 0 && k < st->ncounters; k++)
            if (st->counters[k].is_count)
                st->counters[k].value = (double)st->counters[k].count;
        if (rc == 0)
            qsort(st->counters, st->ncounters, sizeof(*st->counters),
                  counter_cmp);
    }
    if (rc < 0)
        cqrps_stats_free(st);
    cq_op_free(op);
    return rc;
}

int cqrps_digest(cqrps_client_t *c, const char *table, char hex[17])
{
    if (!c || !hex)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    Cqrps__V1__Digest msg = CQRPS__V1__DIGEST__INIT;
    msg.table = (char *)table;
    req_t req = request(CQRPS__V1__REQUEST__OP_DIGEST);
    req.digest = &msg;
    cq_op_t *op;
    rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, table, &op);
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a over the shards' digests */
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(c, op, s, CQRPS__V1__RESPONSE__REPLY_DIGEST,
                                   &rc);
        if (!r)
            break;
        const char *d = r->digest->digest ? r->digest->digest : "";
        if (c->net.nconns == 1) {
            snprintf(hex, 17, "%s", d);
            break;
        }
        for (const char *p = d; *p; p++) {
            h ^= (unsigned char)*p;
            h *= 0x100000001b3ULL;
        }
        h ^= ',';
        h *= 0x100000001b3ULL;
    }
    if (rc == 0 && c->net.nconns > 1)
        snprintf(hex, 17, "%016llx", (unsigned long long)h);
    cq_op_free(op);
    return rc;
}

/* ---- Checkpoints ------------------------------------------------------- */

int cqrps_checkpoint(cqrps_client_t *c, uint64_t *generation)
{
    if (!c)
        return CQRPS_EINVAL;
    Cqrps__V1__Checkpoint msg = CQRPS__V1__CHECKPOINT__INIT;
    req_t req = request(CQRPS__V1__REQUEST__OP_CHECKPOINT);
    req.checkpoint = &msg;
    cq_op_t *op;
    /* A first checkpoint of a large table takes minutes and the server
     * sends nothing meanwhile. */
    int rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_UNTIMED, NULL, &op);
    const resp_t *r = NULL;
    if (rc == 0)
        r = reply_of(c, op, 0, CQRPS__V1__RESPONSE__REPLY_CHECKPOINT, &rc);
    if (r && generation)
        *generation = r->checkpoint->generation;
    cq_op_free(op);
    return rc;
}

void cqrps_checkpoint_list_free(cqrps_checkpoint_info_t *list)
{
    free(list);
}

int cqrps_list_checkpoints(cqrps_client_t *c, cqrps_checkpoint_info_t **out,
                           size_t *n)
{
    if (!c || !out || !n)
        return CQRPS_EINVAL;
    *out = NULL;
    *n = 0;
    Cqrps__V1__ListCheckpoints msg = CQRPS__V1__LIST_CHECKPOINTS__INIT;
    req_t req = request(CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS);
    req.list_checkpoints = &msg;
    cq_op_t *op;
    int rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_RETRY, NULL, &op);
    size_t total = 0;
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const resp_t *r = reply_of(
            c, op, s, CQRPS__V1__RESPONSE__REPLY_CHECKPOINTS, &rc);
        if (r)
            total += r->checkpoints->n_checkpoints;
    }
    if (rc == 0 && total) {
        cqrps_checkpoint_info_t *arr = calloc(total, sizeof(*arr));
        if (!arr) {
            rc = cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
        } else {
            size_t k = 0;
            for (uint32_t s = 0; s < c->net.nconns; s++) {
                const Cqrps__V1__ListCheckpointsReply *p =
                    op->resp[s]->checkpoints;
                for (size_t i = 0; i < p->n_checkpoints; i++, k++) {
                    arr[k].generation = p->checkpoints[i]->generation;
                    arr[k].unix_time = p->checkpoints[i]->unix_time;
                    arr[k].bytes = p->checkpoints[i]->bytes;
                    arr[k].tables = p->checkpoints[i]->tables;
                    arr[k].shard = s;
                }
            }
            *out = arr;
            *n = total;
        }
    }
    cq_op_free(op);
    return rc;
}
