#include "rpc/rpc.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "ops/log.h"
#include "rpc/wire.h"

/* Vectors travel as raw little-endian float32 and are handed to and from
 * the engine with memcpy; a big-endian host would need a byte swap here. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cqrps-server assumes a little-endian host"
#endif

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

/* Room for the reply's fixed fields, so a reply's payload may use up to
 * max-frame-bytes minus this and the whole reply still fits a frame. */
#define REPLY_SLACK 256

/* IDs and offsets of a fast-decoded request that fit on the stack when
 * they must be copied (unaligned IDs, varint offsets); more go to the
 * heap. 1,024 IDs are 8 KiB. */
#define FAST_INLINE 1024

_Static_assert(CQR_WIRE_NAME_MAX == CQR_NAME_MAX,
               "the fast decoder takes every valid table name");

static const char *const counter_names[] = {
#define CQR_CTR_NAME_(name, help) #name,
    CQR_COUNTER_MAP(CQR_CTR_NAME_)
#undef CQR_CTR_NAME_
};

static const char *const op_names[CQR_OP_COUNT] = {
    "hello", "create_table", "drop_table", "list_tables", "describe_table",
    "lookup", "push", "cluster", "cluster_status", "stats", "digest",
    "checkpoint", "list_checkpoints", "unknown"};

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
    if (rc != 0) {
        cqr_opstats_destroy(ctx->opstats);
        ctx->opstats = NULL;
        return rc;
    }
    rc = cqr_phases_create(cfg->cluster_workers, &ctx->phases);
    if (rc != 0) {
        cqr_registry_destroy(ctx->reg);
        ctx->reg = NULL;
        cqr_opstats_destroy(ctx->opstats);
        ctx->opstats = NULL;
        return rc;
    }
    return 0;
}

void cqr_server_ctx_free(cqr_server_ctx_t *ctx)
{
    /* Phases hold table references: finish them before the tables go. */
    cqr_phases_destroy(ctx->phases);
    ctx->phases = NULL;
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

/* ---- protobuf-c allocator that tells OOM from bad input -------------- */

typedef struct pb_alloc_state {
    int oom; /* an allocation failed during unpack */
} pb_alloc_state_t;

static void *pb_alloc(void *ud, size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        ((pb_alloc_state_t *)ud)->oom = 1;
    return p;
}

static void pb_free(void *ud, void *p)
{
    (void)ud;
    free(p);
}

/* ---- one call ------------------------------------------------------- */

/* Storage for a TableInfo and the messages it points to. */
typedef struct info_block {
    Cqrps__V1__TableInfo info;
    Cqrps__V1__TableConfig cfg;
    Cqrps__V1__OptimizerConfig opt;
    Cqrps__V1__ClusterSchedule sched;
    Cqrps__V1__ClusterConfig cl;
} info_block_t;

/* A Lookup or Push as the handlers see it, whichever decoder read it
 * (wire.h's from the frame, or protobuf-c's), so that both share every
 * check and message. */
typedef struct data_req {
    const char *table;        /* NUL-terminated */
    const uint64_t *ids;      /* n_ids, 8-byte aligned */
    size_t n_ids;
    const uint32_t *offsets;  /* n_offsets bag starts */
    size_t n_offsets;
    int pooling;              /* the Pooling value received */
    const uint8_t *grads;     /* Push: grads_len bytes, any alignment */
    size_t grads_len;
} data_req_t;

/* Everything one request needs until its reply is encoded: the reply
 * messages live here (no allocation for the common replies), and the
 * references and buffers they point into are released after packing. */
typedef struct rpc_call {
    cqr_server_ctx_t *ctx;
    cqr_session_t *sess;
    const Request *req;       /* protobuf-c's request, or NULL when the
                                 fast decoder read it (then `fast`) */
    const data_req_t *fast;   /* the fast decoder's Lookup or Push */
    uint64_t id;              /* Request.id */
    uint32_t op_case;         /* Request oneof case (field number) */
    cqr_buf_t *out;           /* where the reply goes */
    int appended;             /* the handler appended its OK reply to out
                                 itself (Lookup, Push): nothing to pack */
    Response resp;
    char msg[512];            /* reply message; "" = cqr_strerror */
    cqr_entry_t *entry;       /* table reference, released at the end */
    cqr_entry_t **list;       /* ListTables/Stats references */
    size_t nlist;
    union {
        Cqrps__V1__HelloReply hello;
        Cqrps__V1__ClusterReply cluster;
        Cqrps__V1__ClusterStatusReply cstatus;
        Cqrps__V1__DigestReply digest;
        Cqrps__V1__CheckpointReply ckpt;
    } r;
    Cqrps__V1__ListTablesReply tables;
    Cqrps__V1__StatsReply stats;
    Cqrps__V1__ListCheckpointsReply ckpts;
    info_block_t one;         /* CreateTable/DescribeTable reply */
    info_block_t *blocks;     /* ListTables/Stats: nlist blocks */
    Cqrps__V1__TableInfo **infos; /* pointers into blocks */
    int deferred;             /* the reply comes later (Checkpoint) */
    void *heap[4];            /* freed after packing */
    char text[64];            /* small strings the reply points to */
} rpc_call_t;

static int fail(rpc_call_t *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Sets the reply message and returns err, for `return fail(...)`. */
static int fail(rpc_call_t *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    return err;
}

static void keep_heap(rpc_call_t *c, void *p)
{
    for (size_t i = 0; i < sizeof c->heap / sizeof c->heap[0]; i++)
        if (c->heap[i] == NULL) {
            c->heap[i] = p;
            return;
        }
    assert(!"rpc_call heap slots exhausted");
}

/* Looks up a table by name into c->entry, with the standard message. */
static int get_table(rpc_call_t *c, const char *name)
{
    if (name == NULL || name[0] == '\0')
        return fail(c, CQR_EINVAL, "table name is empty");
    int rc = cqr_registry_get(c->ctx->reg, name, &c->entry);
    if (rc != 0) {
        char clean[CQR_NAME_MAX + 8];
        return fail(c, rc, "no such table '%s'",
                    cqr_log_clean(clean, sizeof clean, name));
    }
    return 0;
}

/* ---- table info ------------------------------------------------------ */

static void fill_info(info_block_t *b, const cqr_entry_t *e)
{
    const cqr_table_config_t *tc = cqr_table_config(e->table);
    cqr_table_stats_t st;
    cqr_table_stats(e->table, &st);

    cqrps__v1__optimizer_config__init(&b->opt);
    b->opt.kind = (Cqrps__V1__Optimizer)tc->optim.kind;
    b->opt.lr = tc->optim.lr;
    b->opt.beta1 = tc->optim.beta1;
    b->opt.beta2 = tc->optim.beta2;
    b->opt.eps = tc->optim.eps;
    b->opt.weight_decay = tc->optim.weight_decay;

    cqrps__v1__cluster_schedule__init(&b->sched);
    b->sched.every_examples = tc->schedule_every;
    b->sched.max_phases = tc->schedule_max_phases;

    cqrps__v1__cluster_config__init(&b->cl);
    b->cl.iters = tc->cluster_iters;
    b->cl.sample_per_centroid = tc->cluster_sample;
    b->cl.reset_optimizer = tc->reset_optimizer != 0;

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
}

/* Fills c->infos with every table (for ListTables and Stats). */
static int fill_all_infos(rpc_call_t *c, size_t *n)
{
    int rc = cqr_registry_list(c->ctx->reg, &c->list, &c->nlist);
    if (rc != 0)
        return fail(c, rc, "cannot list tables: %s", cqr_strerror(rc));
    *n = c->nlist;
    if (c->nlist == 0)
        return 0;
    c->blocks = calloc(c->nlist, sizeof *c->blocks);
    c->infos = calloc(c->nlist, sizeof *c->infos);
    if (c->blocks == NULL || c->infos == NULL)
        return fail(c, CQR_ENOMEM, "cannot list %zu tables", c->nlist);
    for (size_t i = 0; i < c->nlist; i++) {
        fill_info(&c->blocks[i], c->list[i]);
        c->infos[i] = &c->blocks[i].info;
    }
    return 0;
}

/* ---- handlers -------------------------------------------------------- */

static int do_hello(rpc_call_t *c, const Cqrps__V1__Hello *h)
{
    cqr_server_ctx_t *ctx = c->ctx;
    cqr_session_t *s = c->sess;
    if (h->protocol_version != CQR_PROTOCOL_VERSION)
        return fail(c, CQR_EVERSION, "server speaks protocol %u, client "
                    "asked for %" PRIu32, CQR_PROTOCOL_VERSION,
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
            return fail(c, rc, "authentication failed");
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
static int map_config(rpc_call_t *c, const Cqrps__V1__TableConfig *in,
                      cqr_table_config_t *cfg)
{
    if ((unsigned)in->kind > CQR_KIND_CQR)
        return fail(c, CQR_EINVAL, "unknown table kind %d", (int)in->kind);
    if (in->dim == 0 || in->dim > CQR_MAX_DIM)
        return fail(c, CQR_EINVAL, "dim must be 1..%u, not %" PRIu32,
                    CQR_MAX_DIM, in->dim);
    if (in->dim > c->ctx->cfg->max_dim)
        return fail(c, CQR_ELIMIT, "dim %" PRIu32 " is over this server's "
                    "limit %" PRIu32 " (--max-dim)", in->dim,
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
            return fail(c, CQR_EINVAL, "unknown optimizer %d", (int)o->kind);
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
        cfg->reset_optimizer = in->cluster->reset_optimizer ? 1 : 0;
    }
    /* The wire has no per-table thread count: the operator decides. */
    cfg->cluster_threads = c->ctx->cfg->cluster_threads;

    char why[256] = "";
    int rc = cqr_table_config_check(cfg, why, sizeof why);
    if (rc != 0)
        return fail(c, rc, "invalid table config: %s",
                    why[0] ? why : cqr_strerror(rc));
    /* Valid for the engine; now this server's own limit. */
    if (kind != CQR_KIND_FULL && cfg->rows > c->ctx->cfg->max_rows)
        return fail(c, CQR_ELIMIT, "%" PRIu32 " rows per codebook is over "
                    "this server's limit %" PRIu32 " (--max-rows)",
                    cfg->rows, c->ctx->cfg->max_rows);
    return 0;
}

static int do_create(rpc_call_t *c, const Cqrps__V1__CreateTable *m)
{
    cqr_server_ctx_t *ctx = c->ctx;
    if (cqr_registry_name_check(m->name) != 0)
        return fail(c, CQR_EINVAL, "table name must be 1-%d characters of "
                    "A-Z a-z 0-9 _ - .", CQR_NAME_MAX);
    if (m->config == NULL)
        return fail(c, CQR_EINVAL, "CreateTable needs a config");
    cqr_table_config_t cfg;
    int rc = map_config(c, m->config, &cfg);
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
        return fail(c, rc, "cannot create table '%s': %s", m->name,
                    cqr_strerror(rc));
    }
    cqr_registry_publish(ctx->reg, e, t);
    c->entry = e;

    cqr_log(CQR_LOG_INFO, "rpc", "created table=%s kind=%s dim=%" PRIu32
            " chunks=%" PRIu32 " rows=%" PRIu32 " optimizer=%s bytes=%"
            PRIu64 " peer=%s", e->name, cqr_kind_name(cfg.kind), cfg.dim,
            cfg.chunks, cfg.rows, cqr_optim_name(cfg.optim.kind), bytes,
            c->sess->peer);
    fill_info(&c->one, e);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
    c->resp.table = &c->one.info;
    return 0;
}

static int need_admin(rpc_call_t *c)
{
    if (c->sess->admin)
        return 0;
    return fail(c, CQR_EPERM, "this operation needs the admin token");
}

static int do_drop(rpc_call_t *c, const Cqrps__V1__DropTable *m)
{
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    char clean[CQR_NAME_MAX + 8];
    rc = cqr_registry_remove(c->ctx->reg, m->name);
    if (rc != 0)
        return fail(c, rc, "no such table '%s'",
                    cqr_log_clean(clean, sizeof clean, m->name));
    cqr_log(CQR_LOG_INFO, "rpc", "dropped table=%s peer=%s",
            cqr_log_clean(clean, sizeof clean, m->name), c->sess->peer);
    return 0;
}

static int do_list(rpc_call_t *c)
{
    size_t n;
    int rc = fill_all_infos(c, &n);
    if (rc != 0)
        return rc;
    cqrps__v1__list_tables_reply__init(&c->tables);
    c->tables.n_tables = n;
    c->tables.tables = c->infos;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLES;
    c->resp.tables = &c->tables;
    return 0;
}

static int do_describe(rpc_call_t *c, const Cqrps__V1__DescribeTable *m)
{
    int rc = get_table(c, m->name);
    if (rc != 0)
        return rc;
    fill_info(&c->one, c->entry);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
    c->resp.table = &c->one.info;
    return 0;
}

/* Checks a batch's sizes against the limits and computes the vector
 * bytes of its reply or gradient (rows x dim x 4). */
static int batch_limits(rpc_call_t *c, size_t n_ids, size_t n_offsets,
                        uint32_t dim, uint64_t *vec_bytes)
{
    const cqr_config_t *cfg = c->ctx->cfg;
    if (n_ids > cfg->max_batch)
        return fail(c, CQR_ELIMIT, "%zu IDs in one request; the limit is %"
                    PRIu64 " (--max-batch)", n_ids, cfg->max_batch);
    if (n_offsets > cfg->max_batch)
        return fail(c, CQR_ELIMIT, "%zu bags in one request; the limit is %"
                    PRIu64 " (--max-batch)", n_offsets, cfg->max_batch);
    uint64_t rows = n_offsets > 0 ? n_offsets : n_ids;
    /* rows <= 2^30 and dim <= 4096: no overflow in 64 bits. */
    *vec_bytes = rows * (uint64_t)dim * sizeof(float);
    return 0;
}

/* Where the engine writes a lookup's vectors, which go at offset `at` of
 * out: there if that address is float-aligned. Otherwise the buffer's
 * bytes are shifted within its allocation (cqr_buf_align) when they are
 * fewer than the vectors -- the usual case, out holding little more than
 * this reply's frame header -- or else the engine writes *lag bytes
 * further on and the caller moves the vectors into place. out must have
 * room for at + bytes + alignof(float) - 1 bytes. */
static float *place_vectors(cqr_buf_t *out, size_t at, uint64_t bytes,
                            size_t *lag)
{
    const size_t fa = _Alignof(float);
    size_t mis = (uintptr_t)(out->data + at) & (fa - 1);
    *lag = 0;
    if (mis != 0 && out->len <= bytes)
        cqr_buf_align(out, at, fa);
    else if (mis != 0)
        *lag = fa - mis;
    return (float *)(void *)(out->data + at + *lag);
}

static int do_lookup(rpc_call_t *c, const data_req_t *m)
{
    int rc = get_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_table_t *t = c->entry->table;
    uint32_t dim = cqr_table_config(t)->dim;
    uint64_t bytes = 0;
    rc = batch_limits(c, m->n_ids, m->n_offsets, dim, &bytes);
    if (rc != 0)
        return rc;
    if (bytes > c->ctx->cfg->max_frame_bytes - REPLY_SLACK)
        return fail(c, CQR_ELIMIT, "reply would carry %" PRIu64 " bytes of "
                    "vectors, over --max-frame-bytes %" PRIu64
                    "; split the batch", bytes, c->ctx->cfg->max_frame_bytes);
    if ((unsigned)m->pooling > CQR_POOL_MEAN)
        return fail(c, CQR_EINVAL, "unknown pooling %d", m->pooling);

    /* The OK reply is encoded straight into out: its header (wire.h),
     * then the vectors, which the engine writes in place -- no buffer of
     * their own, no copy by protobuf-c. out->len moves only once the
     * engine succeeded, so a failure leaves nothing behind. */
    cqr_buf_t *out = c->out;
    size_t start = out->len;
    size_t head = cqr_wire_lookup_head_len(c->id, dim, (size_t)bytes);
    size_t size = head + (size_t)bytes;
    assert(head <= CQR_WIRE_HEAD_MAX && size <= c->ctx->cfg->max_frame_bytes);
    if (cqr_buf_reserve(out, size + _Alignof(float) - 1) != 0)
        return fail(c, CQR_ENOMEM, "cannot allocate %" PRIu64
                    " bytes for the reply", bytes);
    size_t lag = 0;
    float *vec = NULL;
    if (bytes > 0)
        vec = place_vectors(out, start + head, bytes, &lag);
    if (m->n_offsets > 0)
        rc = cqr_table_lookup_pooled(t, m->ids, m->n_ids, m->offsets,
                                     m->n_offsets,
                                     (cqr_pooling_t)m->pooling, vec);
    else if (m->n_ids > 0)
        rc = cqr_table_lookup(t, m->ids, m->n_ids, vec);
    if (rc == CQR_EINVAL && m->n_offsets > 0)
        return fail(c, rc, "offsets must start at 0, never decrease and "
                    "stay within the %zu IDs", m->n_ids);
    if (rc != 0)
        return fail(c, rc, "lookup failed: %s", cqr_strerror(rc));

    uint8_t *p = out->data + start;
    if (lag != 0)
        memmove(p + head, p + head + lag, (size_t)bytes);
    size_t w = cqr_wire_lookup_head(p, c->id, dim, (size_t)bytes);
    assert(w == head);
    (void)w;
    out->len = start + size;
    c->appended = 1;
    return 0;
}

static void maybe_schedule(rpc_call_t *c)
{
    cqr_entry_t *e = c->entry;
    if (!cqr_table_cluster_due(e->table))
        return;
    uint64_t id;
    int rc = cqr_phases_start(c->ctx->phases, e, 1, &id);
    /* BUSY: another thread's push started it first. */
    if (rc != 0 && rc != CQR_EBUSY && rc != CQR_ESHUTDOWN) {
        cqr_ctr_add(c->ctx, CQR_CTR_scheduled_phase_errors, 1);
        cqr_log(CQR_LOG_WARN, "phase", "scheduled start failed table=%s "
                "err=%s", e->name, cqr_errname(rc));
    }
}

static int do_push(rpc_call_t *c, const data_req_t *m)
{
    int rc = get_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_table_t *t = c->entry->table;
    uint32_t dim = cqr_table_config(t)->dim;
    uint64_t bytes = 0;
    rc = batch_limits(c, m->n_ids, m->n_offsets, dim, &bytes);
    if (rc != 0)
        return rc;
    if ((unsigned)m->pooling > CQR_POOL_MEAN)
        return fail(c, CQR_EINVAL, "unknown pooling %d", m->pooling);
    if ((uint64_t)m->grads_len != bytes)
        return fail(c, CQR_EDIM, "grads has %zu bytes; %zu %s x dim %"
                    PRIu32 " x 4 = %" PRIu64 " expected", m->grads_len,
                    m->n_offsets > 0 ? m->n_offsets : m->n_ids,
                    m->n_offsets > 0 ? "bags" : "IDs", dim, bytes);

    /* The gradients are used where they lie -- in the request frame
     * (fast decoder) or in protobuf-c's copy -- when float-aligned; the
     * frame's layout decides, so otherwise they are copied once. */
    const float *g = NULL;
    if (((uintptr_t)m->grads & (_Alignof(float) - 1)) == 0) {
        g = (const float *)(const void *)m->grads;
    } else {
        float *copy = malloc(bytes);
        if (copy == NULL)
            return fail(c, CQR_ENOMEM, "cannot copy gradients");
        memcpy(copy, m->grads, bytes);
        keep_heap(c, copy);
        g = copy;
    }
    if (m->n_offsets > 0)
        rc = cqr_table_push_pooled(t, m->ids, m->n_ids, m->offsets,
                                   m->n_offsets, (cqr_pooling_t)m->pooling,
                                   g);
    else if (m->n_ids > 0)
        rc = cqr_table_push(t, m->ids, g, m->n_ids);
    switch (rc) {
    case 0:
        break;
    case CQR_ENONFINITE:
        return fail(c, rc, "gradients contain NaN or Inf; nothing applied");
    case CQR_EBUSY:
        return fail(c, rc, "a cluster phase's push log is full; nothing "
                    "applied, retry after the phase");
    case CQR_ELIMIT:
        return fail(c, rc, "push needs memory for new IDs of table '%s' "
                    "but the tables hold %" PRIu64 " of %" PRIu64 " bytes "
                    "(--max-table-memory); nothing applied", c->entry->name,
                    cqr_registry_bytes(c->ctx->reg),
                    c->ctx->cfg->max_table_memory);
    case CQR_EINVAL:
        if (m->n_offsets > 0)
            return fail(c, rc, "offsets must start at 0, never decrease "
                        "and stay within the %zu IDs", m->n_ids);
        /* fall through */
    default:
        return fail(c, rc, "push failed: %s", cqr_strerror(rc));
    }
    /* The reply is small, but hand-encoding it keeps protobuf-c off the
     * push path entirely. */
    cqr_buf_t *out = c->out;
    if (cqr_buf_reserve(out, CQR_WIRE_HEAD_MAX) != 0)
        return fail(c, CQR_ENOMEM, "out of memory encoding the reply");
    out->len += cqr_wire_push_reply(out->data + out->len, c->id, m->n_ids);
    c->appended = 1;
    maybe_schedule(c);
    return 0;
}

static int do_cluster(rpc_call_t *c, const Cqrps__V1__Cluster *m)
{
    int rc = need_admin(c);
    if (rc == 0)
        rc = get_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_entry_t *e = c->entry;
    uint64_t id = 0;
    rc = cqr_phases_start(c->ctx->phases, e, 0, &id);
    switch (rc) {
    case 0:
        break;
    case CQR_EUNSUPPORTED:
        return fail(c, rc, "table '%s' is a %s table; only cqr tables have "
                    "cluster phases", e->name,
                    cqr_kind_name(cqr_table_config(e->table)->kind));
    case CQR_EBUSY:
        return fail(c, rc, "a cluster phase of table '%s' is already queued "
                    "or running", e->name);
    default:
        return fail(c, rc, "cannot start a phase: %s", cqr_strerror(rc));
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

static int do_cluster_status(rpc_call_t *c,
                             const Cqrps__V1__ClusterStatus *m)
{
    int rc = get_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_phase_status_t st;
    rc = cqr_phases_status(c->ctx->phases, c->entry->uid, m->phase_id, &st);
    if (rc != 0) {
        if (m->phase_id == 0)
            return fail(c, rc, "table '%s' has run no cluster phase",
                        c->entry->name);
        return fail(c, rc, "no phase %" PRIu64 " of table '%s' (unknown or "
                    "too old)", m->phase_id, c->entry->name);
    }
    Cqrps__V1__ClusterStatusReply *r = &c->r.cstatus;
    cqrps__v1__cluster_status_reply__init(r);
    r->phase_id = st.phase_id;
    r->state = (Cqrps__V1__ClusterStatusReply__State)st.state;
    r->fraction = st.fraction;
    r->inertia = st.inertia;
    r->seconds = st.seconds;
    r->ids_assigned = st.ids_assigned;
    r->replayed_pushes = st.replayed_pushes;
    /* Strings must outlive packing: copy them into the call. */
    char *buf = malloc(sizeof st.stage + sizeof st.error);
    if (buf == NULL)
        return fail(c, CQR_ENOMEM, "out of memory");
    keep_heap(c, buf);
    memcpy(buf, st.stage, sizeof st.stage);
    memcpy(buf + sizeof st.stage, st.error, sizeof st.error);
    r->stage = buf;
    r->error = buf + sizeof st.stage;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CLUSTER_STATUS;
    c->resp.cluster_status = r;
    return 0;
}

static int do_stats(rpc_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    size_t ntables;
    int rc = fill_all_infos(c, &ntables);
    if (rc != 0)
        return rc;

    Cqrps__V1__StatsReply *r = &c->stats;
    cqrps__v1__stats_reply__init(r);
    r->server_version = (char *)CQR_SERVER_VERSION;
    r->uptime_seconds = now_mono() - ctx->start_mono;
    r->connections = cqr_ctr_get(ctx, CQR_CTR_conn_open);
    r->requests = cqr_ctr_get(ctx, CQR_CTR_requests);
    r->errors = cqr_ctr_get(ctx, CQR_CTR_errors);
    r->bytes_in = cqr_ctr_get(ctx, CQR_CTR_bytes_in);
    r->bytes_out = cqr_ctr_get(ctx, CQR_CTR_bytes_out);
    r->n_tables = ntables;
    r->tables = c->infos;

    cqr_phase_counts_t pc;
    cqr_phases_counts(ctx->phases, &pc);
    struct { const char *name; double v; } extra[] = {
        {"phases_started", (double)pc.started},
        {"phases_scheduled", (double)pc.scheduled},
        {"phases_done", (double)pc.done},
        {"phases_failed", (double)pc.failed},
        {"phases_queued", (double)pc.queued},
        {"phases_running", (double)pc.running},
        {"tables", (double)ntables},
        {"table_bytes_reserved", (double)cqr_registry_bytes(ctx->reg)},
        {"max_table_memory", (double)ctx->cfg->max_table_memory},
        {"io_threads", (double)ctx->cfg->threads},
        {"checkpoints_ok", (double)atomic_load(&ctx->ckpt_stats.ok)},
        {"checkpoints_failed", (double)atomic_load(&ctx->ckpt_stats.failed)},
        {"checkpoint_generation",
         (double)atomic_load(&ctx->ckpt_stats.generation)},
        {"checkpoint_last_bytes", (double)atomic_load(&ctx->ckpt_stats.bytes)},
        {"checkpoint_last_seconds",
         (double)atomic_load(&ctx->ckpt_stats.duration_us) * 1e-6},
        {"checkpoint_last_pause_seconds",
         (double)atomic_load(&ctx->ckpt_stats.pause_max_us) * 1e-6},
        {"restored", (double)atomic_load(&ctx->restored)},
        {"ready", (double)(atomic_load(&ctx->restored) &&
                           atomic_load(&ctx->accepting))},
    };
    size_t nextra = sizeof extra / sizeof extra[0];

    /* Request statistics, all summable over shards: replies by operation
     * and status ("req.lookup.OK", non-zero ones only) and, per timed
     * operation, its count, total seconds and cumulative latency buckets
     * ("latency.lookup.le.0.0001"), from which `cqrps stats` derives
     * quantiles. */
    cqr_opstat_snap_t *snaps = calloc(CQR_OP_COUNT, sizeof *snaps);
    if (snaps == NULL)
        return fail(c, CQR_ENOMEM, "out of memory");
    keep_heap(c, snaps);
    size_t nreq = 0;
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++) {
        cqr_opstats_read(ctx->opstats, op, &snaps[op]);
        for (size_t s = 0; s < CQR_STATUS_COUNT; s++)
            nreq += snaps[op].status[s] != 0;
        if (snaps[op].count != 0)
            nreq += 2 + CQR_LAT_NBOUNDS;
    }
    size_t n = CQR_CTR__COUNT + CQR_STATUS_COUNT + CQR_OP_COUNT + nextra +
               nreq;

    /* One block: entries, pointers, and the "status.X"/"op.X" keys. */
    size_t keylen = 48;
    size_t size = n * sizeof(Cqrps__V1__StatsReply__CountersEntry) +
                  n * sizeof(void *) + n * keylen;
    uint8_t *blk = malloc(size);
    if (blk == NULL)
        return fail(c, CQR_ENOMEM, "out of memory");
    keep_heap(c, blk);
    Cqrps__V1__StatsReply__CountersEntry **ptrs = (void *)blk;
    Cqrps__V1__StatsReply__CountersEntry *ents =
        (void *)(blk + n * sizeof(void *));
    char *keys = (char *)(ents + n);
    size_t k = 0;
    for (size_t i = 0; i < CQR_CTR__COUNT; i++, k++) {
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        ents[k].key = (char *)counter_names[i];
        ents[k].value = (double)cqr_ctr_get(ctx, (cqr_counter_t)i);
    }
    for (size_t i = 0; i < CQR_STATUS_COUNT; i++, k++) {
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        snprintf(keys + k * keylen, keylen, "status.%s",
                 cqr_errname(-(int)i));
        ents[k].key = keys + k * keylen;
        ents[k].value = (double)atomic_load(&ctx->ctr.status[i]);
    }
    for (size_t i = 0; i < CQR_OP_COUNT; i++, k++) {
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        snprintf(keys + k * keylen, keylen, "op.%s", op_names[i]);
        ents[k].key = keys + k * keylen;
        ents[k].value = (double)atomic_load(&ctx->ctr.ops[i]);
    }
    for (size_t i = 0; i < nextra; i++, k++) {
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        ents[k].key = (char *)extra[i].name;
        ents[k].value = extra[i].v;
    }
    const double *bounds = cqr_opstats_bounds();
    for (uint32_t op = 0; op < CQR_OP_COUNT; op++) {
        const cqr_opstat_snap_t *sn = &snaps[op];
        for (size_t s = 0; s < CQR_STATUS_COUNT; s++) {
            if (sn->status[s] == 0)
                continue;
            cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
            snprintf(keys + k * keylen, keylen, "req.%s.%s", op_names[op],
                     cqr_errname(-(int)s));
            ents[k].key = keys + k * keylen;
            ents[k].value = (double)sn->status[s];
            k++;
        }
        if (sn->count == 0)
            continue;
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        snprintf(keys + k * keylen, keylen, "latency.%s.count", op_names[op]);
        ents[k].key = keys + k * keylen;
        ents[k].value = (double)sn->count;
        k++;
        cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
        snprintf(keys + k * keylen, keylen, "latency.%s.sum_seconds",
                 op_names[op]);
        ents[k].key = keys + k * keylen;
        ents[k].value = (double)sn->sum_ns * 1e-9;
        k++;
        uint64_t cum = 0;
        for (size_t b = 0; b < CQR_LAT_NBOUNDS; b++, k++) {
            cum += sn->bucket[b];
            cqrps__v1__stats_reply__counters_entry__init(&ents[k]);
            snprintf(keys + k * keylen, keylen, "latency.%s.le.%g",
                     op_names[op], bounds[b]);
            ents[k].key = keys + k * keylen;
            ents[k].value = (double)cum;
        }
    }
    assert(k == n);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &ents[i];
    r->n_counters = n;
    r->counters = ptrs;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_STATS;
    c->resp.stats = r;
    return 0;
}

static int do_digest(rpc_call_t *c, const Cqrps__V1__Digest *m)
{
    int rc = get_table(c, m->table);
    if (rc != 0)
        return rc;
    uint64_t d;
    rc = cqr_table_digest(c->entry->table, &d);
    if (rc != 0)
        return fail(c, rc, "digest failed: %s", cqr_strerror(rc));
    snprintf(c->text, sizeof c->text, "%016" PRIx64, d);
    cqrps__v1__digest_reply__init(&c->r.digest);
    c->r.digest.digest = c->text;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_DIGEST;
    c->resp.digest = &c->r.digest;
    return 0;
}

#define NO_CKPT_MSG "checkpoints need a server started with --data-dir"

static void count_status(cqr_server_ctx_t *ctx, int err);
static int pack(cqr_server_ctx_t *ctx, const Response *resp, cqr_buf_t *out);

/* The Checkpoint reply's fields from info. */
static void fill_ckpt_reply(Cqrps__V1__CheckpointReply *r,
                            const cqr_ckpt_info_t *info)
{
    cqrps__v1__checkpoint_reply__init(r);
    r->generation = info->generation;
    r->seconds = info->seconds;
    r->bytes = info->bytes;
}

/* Hands the checkpoint to the persistence thread; the connection sends
 * the reply in its place when it finishes (rpc.h, Deferred replies). */
static int defer_checkpoint(rpc_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    cqr_deferred_t *d = calloc(1, sizeof *d);
    if (d == NULL)
        return fail(c, CQR_ENOMEM, "out of memory");
    d->ctx = ctx;
    d->id = c->id;
    d->op = (uint32_t)CQRPS__V1__REQUEST__OP_CHECKPOINT - 10u;
    d->t0_ns = cqr_opstats_now_ns();
    cqr_buf_init(&d->reply);
    int rc = c->sess->defer(c->sess, d);
    if (rc != 0) {
        free(d);
        return fail(c, rc, "cannot queue the checkpoint: %s",
                    cqr_strerror(rc));
    }
    /* From here the slot is reserved: every outcome goes through it. */
    c->deferred = 1;
    rc = ctx->ckpt.checkpoint_async(ctx->ckpt.ud, ctx, d);
    if (rc != 0)
        cqr_rpc_checkpoint_done(d, rc, NULL, NULL);
    return 0;
}

void cqr_rpc_checkpoint_done(cqr_deferred_t *d, int err,
                             const cqr_ckpt_info_t *info, const char *msg)
{
    cqr_server_ctx_t *ctx = d->ctx;
    size_t mark;
    int rc = cqr_frame_begin(&d->reply, &mark);
    if (rc == 0 && err == 0) {
        Response resp = CQRPS__V1__RESPONSE__INIT;
        Cqrps__V1__CheckpointReply r;
        fill_ckpt_reply(&r, info);
        resp.id = d->id;
        resp.status = CQRPS__V1__STATUS__OK;
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CHECKPOINT;
        resp.checkpoint = &r;
        rc = pack(ctx, &resp, &d->reply);
        if (rc == 0)
            count_status(ctx, 0);
        else
            err = rc;
    }
    if (rc == 0 && err != 0) {
        rc = cqr_rpc_error(ctx, &d->reply, d->id, err,
                           msg != NULL && msg[0] != '\0' ? msg : NULL);
    }
    if (rc == 0)
        cqr_frame_end(&d->reply, mark);
    else
        cqr_buf_free(&d->reply); /* not even an error: close */
    d->status = rc == 0 ? err : rc;
    d->done(d);
}

void cqr_rpc_deferred_release(cqr_deferred_t *d, uint32_t thread)
{
    if (d == NULL)
        return;
    cqr_opstats_record(d->ctx->opstats, thread, d->op, (uint32_t)-d->status,
                       cqr_opstats_now_ns() - d->t0_ns);
    cqr_buf_free(&d->reply);
    free(d);
}

static int do_checkpoint(rpc_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    if (ctx->ckpt.checkpoint_async != NULL && c->sess->defer != NULL)
        return defer_checkpoint(c);
    if (ctx->ckpt.checkpoint == NULL)
        return fail(c, CQR_EUNSUPPORTED, NO_CKPT_MSG);
    cqr_ckpt_info_t info;
    memset(&info, 0, sizeof info);
    rc = ctx->ckpt.checkpoint(ctx->ckpt.ud, ctx, &info, c->msg,
                              sizeof c->msg);
    if (rc != 0)
        return rc;
    Cqrps__V1__CheckpointReply *r = &c->r.ckpt;
    fill_ckpt_reply(r, &info);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CHECKPOINT;
    c->resp.checkpoint = r;
    return 0;
}

static int do_list_checkpoints(rpc_call_t *c)
{
    cqr_server_ctx_t *ctx = c->ctx;
    if (ctx->ckpt.list == NULL)
        return fail(c, CQR_EUNSUPPORTED, NO_CKPT_MSG);
    cqr_ckpt_info_t *infos = NULL;
    size_t n = 0;
    int rc = ctx->ckpt.list(ctx->ckpt.ud, ctx, &infos, &n);
    if (rc != 0)
        return fail(c, rc, "cannot list checkpoints: %s", cqr_strerror(rc));
    keep_heap(c, infos);
    size_t size = n * (sizeof(Cqrps__V1__CheckpointInfo) + sizeof(void *));
    uint8_t *blk = malloc(size ? size : 1);
    if (blk == NULL)
        return fail(c, CQR_ENOMEM, "out of memory");
    keep_heap(c, blk);
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

/* The request's Lookup or Push: the fast decoder's, or one filled in
 * from protobuf-c's message (whose arrays are malloc'd, so aligned). */
static const data_req_t *data_of(const rpc_call_t *c, data_req_t *d)
{
    if (c->fast != NULL)
        return c->fast;
    const Request *q = c->req;
    memset(d, 0, sizeof *d);
    if (q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP) {
        const Cqrps__V1__Lookup *m = q->lookup;
        d->table = m->table;
        d->ids = m->ids;
        d->n_ids = m->n_ids;
        d->offsets = m->offsets;
        d->n_offsets = m->n_offsets;
        d->pooling = (int)m->pooling;
    } else {
        assert(q->op_case == CQRPS__V1__REQUEST__OP_PUSH);
        const Cqrps__V1__Push *m = q->push;
        d->table = m->table;
        d->ids = m->ids;
        d->n_ids = m->n_ids;
        d->offsets = m->offsets;
        d->n_offsets = m->n_offsets;
        d->pooling = (int)m->pooling;
        d->grads = m->grads.data;
        d->grads_len = m->grads.len;
    }
    return d;
}

static int dispatch(rpc_call_t *c)
{
    const Request *q = c->req;
    data_req_t d;
    if (!c->sess->authed && c->op_case != CQRPS__V1__REQUEST__OP_HELLO)
        return fail(c, CQR_EAUTH, "send Hello with a valid token first");
    /* Only Lookup and Push come from the fast decoder (q == NULL). */
    if (c->op_case == CQRPS__V1__REQUEST__OP_LOOKUP)
        return do_lookup(c, data_of(c, &d));
    if (c->op_case == CQRPS__V1__REQUEST__OP_PUSH)
        return do_push(c, data_of(c, &d));
    assert(q != NULL);
    switch (q->op_case) {
    case CQRPS__V1__REQUEST__OP_HELLO:
        return do_hello(c, q->hello);
    case CQRPS__V1__REQUEST__OP_CREATE_TABLE:
        return do_create(c, q->create_table);
    case CQRPS__V1__REQUEST__OP_DROP_TABLE:
        return do_drop(c, q->drop_table);
    case CQRPS__V1__REQUEST__OP_LIST_TABLES:
        return do_list(c);
    case CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE:
        return do_describe(c, q->describe_table);
    case CQRPS__V1__REQUEST__OP_CLUSTER:
        return do_cluster(c, q->cluster);
    case CQRPS__V1__REQUEST__OP_CLUSTER_STATUS:
        return do_cluster_status(c, q->cluster_status);
    case CQRPS__V1__REQUEST__OP_STATS:
        return do_stats(c);
    case CQRPS__V1__REQUEST__OP_DIGEST:
        return do_digest(c, q->digest);
    case CQRPS__V1__REQUEST__OP_CHECKPOINT:
        return do_checkpoint(c);
    case CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS:
        return do_list_checkpoints(c);
    default:
        /* Also a newer client's operation: the field is unknown here. */
        return fail(c, CQR_EUNSUPPORTED, "request carries no operation this "
                    "server knows (protocol %u)", CQR_PROTOCOL_VERSION);
    }
}

static void count_status(cqr_server_ctx_t *ctx, int err)
{
    unsigned s = (unsigned)-err;
    if (s < CQR_STATUS_COUNT)
        atomic_fetch_add_explicit(&ctx->ctr.status[s], 1,
                                  memory_order_relaxed);
    if (err != 0)
        cqr_ctr_add(ctx, CQR_CTR_errors, 1);
}

/* Packs resp after out->len. CQR_ENOMEM / CQR_ELIMIT leave out alone. */
static int pack(cqr_server_ctx_t *ctx, const Response *resp, cqr_buf_t *out)
{
    size_t size = cqrps__v1__response__get_packed_size(resp);
    if (size > ctx->cfg->max_frame_bytes)
        return CQR_ELIMIT;
    int rc = cqr_buf_reserve(out, size);
    if (rc != 0)
        return rc;
    size_t w = cqrps__v1__response__pack(resp, out->data + out->len);
    assert(w == size);
    out->len += w;
    return 0;
}

int cqr_rpc_error(cqr_server_ctx_t *ctx, cqr_buf_t *out, uint64_t id,
                  int err, const char *msg)
{
    Response resp = CQRPS__V1__RESPONSE__INIT;
    resp.id = id;
    resp.status = (Cqrps__V1__Status)-err;
    resp.message = (char *)(msg != NULL ? msg : cqr_strerror(err));
    count_status(ctx, err);
    return pack(ctx, &resp, out);
}

static void call_release(rpc_call_t *c)
{
    for (size_t i = 0; i < sizeof c->heap / sizeof c->heap[0]; i++)
        free(c->heap[i]);
    free(c->blocks);
    free(c->infos);
    if (c->list != NULL || c->nlist > 0)
        cqr_registry_list_free(c->list, c->nlist);
    if (c->entry != NULL)
        cqr_entry_unref(c->entry);
}

/* A request the fast decoder read, with the copies the engine needs. */
typedef struct fast_req {
    data_req_t d;                      /* what the handlers see */
    char table[CQR_WIRE_NAME_MAX + 1]; /* the name, NUL-terminated */
    uint64_t ids[FAST_INLINE];         /* unaligned IDs, copied */
    uint32_t offsets[FAST_INLINE];     /* offsets, decoded */
    void *heap;                        /* the same for larger batches */
} fast_req_t;

/* Reads a Lookup or Push with the hand decoder (wire.h), straight from
 * the frame: the gradients stay there, and the IDs too when they are
 * 8-byte aligned. 1: f->d, *id and *op_case are set, and f->heap must be
 * freed. 0: anything else, or no memory for the copies: decode with
 * protobuf-c, which handles (and reports) both; f->heap is NULL. */
static int fast_decode(const uint8_t *body, size_t len, fast_req_t *f,
                       uint64_t *id, uint32_t *op_case)
{
    cqr_wire_data_t w;
    f->heap = NULL;
    if (!cqr_wire_decode_data(body, len, &w))
        return 0;
    /* Counts are bounded by the frame's size, itself bounded by
     * --max-frame-bytes, like protobuf-c's allocations. */
    size_t nid = ((uintptr_t)w.ids & (_Alignof(uint64_t) - 1)) != 0 ?
                 w.n_ids : 0; /* IDs to copy */
    size_t hid = nid > FAST_INLINE ? nid : 0;
    size_t hoff = w.n_offsets > FAST_INLINE ? w.n_offsets : 0;
    if (hid + hoff > 0) {
        f->heap = malloc(hid * sizeof(uint64_t) + hoff * sizeof(uint32_t));
        if (f->heap == NULL)
            return 0;
    }
    uint64_t *ids = hid > 0 ? (uint64_t *)f->heap : f->ids;
    uint32_t *offsets = f->offsets;
    if (hoff > 0) /* after the heap's IDs, if any: 8-aligned */
        offsets = (uint32_t *)(void *)((uint64_t *)f->heap + hid);

    data_req_t *d = &f->d;
    memset(d, 0, sizeof *d);
    if (w.table_len > 0)
        memcpy(f->table, w.table, w.table_len);
    f->table[w.table_len] = '\0';
    d->table = f->table;
    if (nid > 0) {
        memcpy(ids, w.ids, nid * sizeof(uint64_t));
        d->ids = ids;
    } else if (w.n_ids > 0) {
        d->ids = (const uint64_t *)(const void *)w.ids;
    }
    d->n_ids = w.n_ids;
    if (w.n_offsets > 0) {
        cqr_wire_offsets(&w, offsets);
        d->offsets = offsets;
    }
    d->n_offsets = w.n_offsets;
    d->pooling = (int)w.pooling;
    d->grads = w.grads;
    d->grads_len = w.grads_len;
    *id = w.id;
    *op_case = w.op;
    return 1;
}

/* The request path proper; *opi and *status receive the operation slot
 * and the status sent, for cqr_rpc_handle's statistics. */
static int handle(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                  const uint8_t *body, size_t len, cqr_buf_t *out,
                  unsigned *opi, int *status)
{
    cqr_ctr_add(ctx, CQR_CTR_requests, 1);
    *opi = CQR_OP_COUNT - 1;

    /* Lookups and pushes skip protobuf-c; everything else, and any
     * Lookup or Push the fast decoder declines, goes through it. */
    fast_req_t fast;
    pb_alloc_state_t as = {0};
    ProtobufCAllocator alloc = {pb_alloc, pb_free, &as};
    Request *req = NULL;
    uint64_t id = 0;
    uint32_t op_case = 0;
    if (!fast_decode(body, len, &fast, &id, &op_case)) {
        req = cqrps__v1__request__unpack(&alloc, len, body);
        if (req == NULL) {
            atomic_fetch_add_explicit(&ctx->ctr.ops[CQR_OP_COUNT - 1], 1,
                                      memory_order_relaxed);
            if (as.oom) {
                *status = CQR_ENOMEM;
                return cqr_rpc_error(ctx, out, 0, CQR_ENOMEM,
                                     "out of memory decoding the request");
            }
            cqr_ctr_add(ctx, CQR_CTR_frames_malformed, 1);
            *status = CQR_EPROTO;
            int rc = cqr_rpc_error(ctx, out, 0, CQR_EPROTO,
                                   "request is not a valid "
                                   "cqrps.v1.Request; closing the "
                                   "connection");
            return rc != 0 ? rc : CQR_EPROTO;
        }
        id = req->id;
        op_case = (uint32_t)req->op_case;
    }
    unsigned op = op_case - 10u;
    *opi = op < CQR_OP_COUNT - 1 ? op : CQR_OP_COUNT - 1;
    atomic_fetch_add_explicit(&ctx->ctr.ops[*opi], 1, memory_order_relaxed);

    rpc_call_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        *status = CQR_ENOMEM;
        int rc = cqr_rpc_error(ctx, out, id, CQR_ENOMEM, NULL);
        if (req != NULL)
            cqrps__v1__request__free_unpacked(req, &alloc);
        free(fast.heap);
        return rc;
    }
    c->ctx = ctx;
    c->sess = sess;
    c->req = req;
    c->fast = req == NULL ? &fast.d : NULL;
    c->id = id;
    c->op_case = op_case;
    c->out = out;
    cqrps__v1__response__init(&c->resp);
    c->resp.id = id;

    int rc;
    size_t before = out->len;
    int err = dispatch(c);
    /* Only an OK reply is appended by its handler. */
    assert(out->len == before || (err == 0 && c->appended));
    (void)before;
    if (err == 0 && c->deferred) {
        rc = CQR_RPC_DEFERRED; /* statistics come with the reply */
        *status = 0;
    } else if (err == 0 && c->appended) {
        count_status(ctx, 0);
        rc = 0;
        *status = 0;
    } else if (err == 0) {
        c->resp.status = CQRPS__V1__STATUS__OK;
        rc = pack(ctx, &c->resp, out);
        if (rc == 0) {
            count_status(ctx, 0);
        } else if (rc == CQR_ELIMIT) {
            snprintf(c->msg, sizeof c->msg, "reply of %zu bytes exceeds "
                     "--max-frame-bytes %" PRIu64,
                     cqrps__v1__response__get_packed_size(&c->resp),
                     ctx->cfg->max_frame_bytes);
            rc = cqr_rpc_error(ctx, out, id, CQR_ELIMIT, c->msg);
        } else if (rc == CQR_ENOMEM) {
            rc = cqr_rpc_error(ctx, out, id, CQR_ENOMEM,
                               "out of memory encoding the reply");
        }
        *status = rc;
    } else {
        *status = err;
        rc = cqr_rpc_error(ctx, out, id, err, c->msg[0] ? c->msg : NULL);
    }
    call_release(c);
    free(c);
    if (req != NULL)
        cqrps__v1__request__free_unpacked(req, &alloc);
    free(fast.heap);
    /* With authentication on, a session that is still (or again) not
     * authenticated after this request -- anything before Hello, a wrong
     * token, a bad protocol version -- has had its one answer. */
    if (rc == 0 && ctx->auth.hello != NULL && !sess->authed)
        return CQR_EAUTH;
    return rc;
}

int cqr_rpc_handle(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                   const uint8_t *body, size_t len, cqr_buf_t *out)
{
    uint64_t t0 = cqr_opstats_now_ns();
    unsigned opi = CQR_OP_COUNT - 1;
    int status = 0;
    int rc = handle(ctx, sess, body, len, out, &opi, &status);
    if (rc != CQR_RPC_DEFERRED)
        cqr_opstats_record(ctx->opstats, sess->thread, opi,
                           (uint32_t)-status, cqr_opstats_now_ns() - t0);
    return rc;
}
