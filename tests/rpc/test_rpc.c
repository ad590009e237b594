/* RPC dispatch in-process, without sockets: every operation, the values it
 * returns checked against the engine called directly, every error status
 * the server promises, the table registry's refcounting under concurrent
 * drop, cluster phases (by hand and by schedule) and the auth seam. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "ops/log.h"
#include "rpc/rpc.h"
#include "tables/phase.h"
#include "tables/registry.h"
#include "check_main.h"
#include "rpc_call.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_session_t sess;

static void setup_with(void (*tweak)(cqr_config_t *))
{
    cqr_log_set_level(CQR_LOG_WARN);
    cqr_config_defaults(&cfg);
    cfg.max_batch = 1000;
    cfg.max_frame_bytes = 1u << 20;
    if (tweak)
        tweak(&cfg);
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    cqr_session_init(&ctx, &sess, "test:1", 0);
}

static void setup(void) { setup_with(NULL); }
static void teardown(void) { cqr_server_ctx_free(&ctx); }

/* Sends raw bytes; returns the decoded reply (caller frees) and the rc. */
static Response *call_raw(cqr_session_t *s, const uint8_t *body, size_t len,
                          int *rc)
{
    return rq_raw(&ctx, s, body, len, rc);
}

/* A reply of session s: an unauthenticated session's request is
 * answered, then closed. */
static Response *checked(cqr_session_t *s, Response *r, int rc)
{
    ck_assert_int_eq(rc, s->authed ? 0 : CQR_EAUTH);
    ck_assert_ptr_nonnull(r->message);
    return r;
}

static Response *call_as(cqr_session_t *s, Request *q)
{
    int rc;
    Response *r = rq_call(&ctx, s, q, &rc);
    return checked(s, r, rc);
}

static void done(Response *r) { rq_done(r); }

/* Asserts the status and that the message contains `frag`, then frees. */
static void expect(Response *r, int err, const char *frag)
{
    if ((int)r->status != -err)
        ck_abort_msg("status %d (%s), want %d", r->status, r->message, -err);
    if (frag != NULL && strstr(r->message, frag) == NULL)
        ck_abort_msg("message '%s' lacks '%s'", r->message, frag);
    done(r);
}

/* ---- request builders (rpc_call.h), as sess ---------------------------- */

static Response *create(const char *name, Cqrps__V1__TableKind kind,
                        uint32_t dim, uint32_t chunks, uint32_t rows,
                        Cqrps__V1__OptimizerConfig *opt,
                        Cqrps__V1__ClusterSchedule *sched)
{
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = kind;
    tc.dim = dim;
    tc.chunks = chunks;
    tc.rows = rows;
    tc.seed = 42;
    tc.optimizer = opt;
    tc.schedule = sched;
    int rc;
    Response *r = rq_create(&ctx, &sess, name, &tc, &rc);
    return checked(&sess, r, rc);
}

static Response *lookup(const char *table, const uint64_t *ids, size_t n,
                        uint32_t *offsets, size_t nb, int mean)
{
    int rc;
    Response *r = rq_lookup(&ctx, &sess, table, ids, n, offsets, nb, mean,
                            &rc);
    return checked(&sess, r, rc);
}

static Response *push(const char *table, const uint64_t *ids, size_t n,
                      const float *g, size_t gfloats, uint32_t *offsets,
                      size_t nb)
{
    int rc;
    Response *r = rq_push(&ctx, &sess, table, ids, n, g, gfloats, offsets,
                          nb, &rc);
    return checked(&sess, r, rc);
}

static Response *drop(const char *name)
{
    int rc;
    Response *r = rq_drop(&ctx, &sess, name, &rc);
    return checked(&sess, r, rc);
}

static Response *describe(const char *name)
{
    int rc;
    Response *r = rq_describe(&ctx, &sess, name, &rc);
    return checked(&sess, r, rc);
}

static Response *digest(const char *name)
{
    int rc;
    Response *r = rq_digest(&ctx, &sess, name, &rc);
    return checked(&sess, r, rc);
}

static Response *cluster(const char *name)
{
    int rc;
    Response *r = rq_cluster(&ctx, &sess, name, &rc);
    return checked(&sess, r, rc);
}

static Response *cluster_status(const char *name, uint64_t phase)
{
    int rc;
    Response *r = rq_cluster_status(&ctx, &sess, name, phase, &rc);
    return checked(&sess, r, rc);
}

static Response *simple(Cqrps__V1__Request__OpCase op)
{
    int rc;
    Response *r = rq_simple(&ctx, &sess, op, &rc);
    return checked(&sess, r, rc);
}

static Response *hello_as(cqr_session_t *s, uint32_t version,
                          const char *token)
{
    int rc;
    Response *r = rq_hello(&ctx, s, version, "unit test", token, NULL, &rc);
    return checked(s, r, rc);
}

/* The same table built directly on the engine, for reference values. */
static cqr_table_t *engine_twin(cqr_kind_t kind, uint32_t dim,
                                uint32_t chunks, uint32_t rows,
                                cqr_optim_kind_t opt, float lr)
{
    cqr_table_config_t c;
    cqr_table_config_default(&c, kind, dim);
    if (chunks) c.chunks = chunks;
    if (rows) c.rows = rows;
    c.seed = 42;
    c.optim.kind = opt;
    c.optim.lr = lr;
    c.cluster_threads = cfg.cluster_threads;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&c, &t), 0);
    return t;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- tests ------------------------------------------------------------ */

START_TEST(test_hello)
{
    Response *r = hello_as(&sess, 1, NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_HELLO);
    ck_assert_uint_eq(r->hello->protocol_version, 1);
    ck_assert_int_eq(r->hello->admin, 1);
    ck_assert_uint_eq(r->hello->max_frame_bytes, 1u << 20);
    ck_assert_uint_eq(r->hello->max_batch, 1000);
    ck_assert_str_eq(r->hello->server_version, CQR_SERVER_VERSION);
    done(r);
    ck_assert_str_eq(sess.client, "unit?test");
    expect(hello_as(&sess, 2, NULL), CQR_EVERSION, "protocol 1");
    expect(hello_as(&sess, 0, NULL), CQR_EVERSION, NULL);
}
END_TEST

START_TEST(test_create_list_describe_drop)
{
    Response *r = create("emb", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL,
                         NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_TABLE);
    ck_assert_str_eq(r->table->name, "emb");
    ck_assert_int_eq(r->table->config->kind, CQRPS__V1__TABLE_KIND__CQR);
    ck_assert_uint_eq(r->table->config->dim, 8);
    ck_assert_uint_eq(r->table->config->chunks, 2);
    ck_assert_uint_eq(r->table->config->rows, 16);
    ck_assert_uint_eq(r->table->config->seed, 42);
    /* Effective defaults are filled in. */
    ck_assert_int_eq(r->table->config->optimizer->kind,
                     CQRPS__V1__OPTIMIZER__ADAM);
    ck_assert_float_eq_tol(r->table->config->optimizer->lr, 1e-3f, 1e-9f);
    ck_assert_uint_eq(r->table->config->cluster->iters, 25);
    ck_assert_uint_gt(r->table->param_bytes, 0);
    done(r);

    expect(create("emb", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL),
           CQR_EEXIST, "already exists");
    r = create("b.2-x_y", CQRPS__V1__TABLE_KIND__FULL, 4, 7, 99, NULL, NULL);
    ck_assert_int_eq(r->status, 0);
    /* full ignores chunks and rows. */
    ck_assert_uint_eq(r->table->config->chunks, 1);
    ck_assert_uint_eq(r->table->config->rows, 0);
    done(r);

    r = simple(CQRPS__V1__REQUEST__OP_LIST_TABLES);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->tables->n_tables, 2);
    ck_assert_str_eq(r->tables->tables[0]->name, "b.2-x_y"); /* sorted */
    ck_assert_str_eq(r->tables->tables[1]->name, "emb");
    done(r);

    r = describe("emb");
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->table->name, "emb");
    ck_assert_uint_eq(r->table->known_ids, 0);
    done(r);
    expect(describe("nope"), CQR_ENOTFOUND, "no such table 'nope'");
    expect(describe(""), CQR_EINVAL, "empty");

    expect(drop("emb"), 0, NULL);
    expect(drop("emb"), CQR_ENOTFOUND, "no such table");
    expect(describe("emb"), CQR_ENOTFOUND, NULL);
    r = simple(CQRPS__V1__REQUEST__OP_LIST_TABLES);
    ck_assert_uint_eq(r->tables->n_tables, 1);
    done(r);
    /* The name is free again. */
    expect(create("emb", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL),
           0, NULL);
}
END_TEST

START_TEST(test_create_invalid)
{
    expect(create("t", CQRPS__V1__TABLE_KIND__CQR, 0, 0, 0, NULL, NULL),
           CQR_EINVAL, "dim");
    expect(create("t", CQRPS__V1__TABLE_KIND__CQR, 8, 3, 0, NULL, NULL),
           CQR_EINVAL, "divisible");
    expect(create("t", (Cqrps__V1__TableKind)9, 8, 0, 0, NULL, NULL),
           CQR_EINVAL, "kind");
    expect(create("a b", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 0, NULL, NULL),
           CQR_EINVAL, "table name");
    expect(create("", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 0, NULL, NULL),
           CQR_EINVAL, "table name");
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 8, 0, (1u << 24) + 1,
                  NULL, NULL), CQR_EINVAL, "rows");
    Cqrps__V1__OptimizerConfig o = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    o.kind = (Cqrps__V1__Optimizer)7;
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 0, &o, NULL),
           CQR_EINVAL, "optimizer");
    o.kind = CQRPS__V1__OPTIMIZER__ADAM;
    o.beta1 = 1.5f;
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 0, &o, NULL),
           CQR_EINVAL, "betas");
    /* Nothing was left behind by the failures. */
    Response *r = simple(CQRPS__V1__REQUEST__OP_LIST_TABLES);
    ck_assert_uint_eq(r->tables->n_tables, 0);
    done(r);
    ck_assert_uint_eq(cqr_registry_bytes(ctx.reg), 0);
}
END_TEST

START_TEST(test_optimizer_defaults)
{
    /* A present optimizer message sets its kind even when it is SGD (0),
     * and a zero lr means that optimizer's default. */
    Cqrps__V1__OptimizerConfig o = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    o.kind = CQRPS__V1__OPTIMIZER__SGD;
    Response *r = create("s", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, &o, NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(r->table->config->optimizer->kind,
                     CQRPS__V1__OPTIMIZER__SGD);
    ck_assert_float_eq_tol(r->table->config->optimizer->lr, 0.01f, 1e-9f);
    done(r);
    o.kind = CQRPS__V1__OPTIMIZER__ADAGRAD;
    r = create("a", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, &o, NULL);
    ck_assert_float_eq_tol(r->table->config->optimizer->lr, 0.1f, 1e-9f);
    done(r);
    o.lr = 0.5f;
    o.weight_decay = 0.01f;
    r = create("b", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, &o, NULL);
    ck_assert_float_eq_tol(r->table->config->optimizer->lr, 0.5f, 1e-9f);
    ck_assert_float_eq_tol(r->table->config->optimizer->weight_decay, 0.01f,
                           1e-9f);
    done(r);
}
END_TEST

static void tweak_limits(cqr_config_t *c)
{
    c->max_tables = 2;
    c->max_table_memory = 1u << 20;
}

START_TEST(test_table_limits)
{
    /* hash dim 64, 2048 rows with Adam: well over 1 MiB. */
    expect(create("big", CQRPS__V1__TABLE_KIND__HASH, 64, 0, 2048, NULL,
                  NULL), CQR_ELIMIT, "--max-table-memory");
    expect(create("a", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    expect(create("b", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    expect(create("c", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL),
           CQR_ELIMIT, "--max-tables");
    uint64_t used = cqr_registry_bytes(ctx.reg);
    ck_assert_uint_gt(used, 0);
    expect(drop("a"), 0, NULL);
    ck_assert_uint_lt(cqr_registry_bytes(ctx.reg), used);
    expect(create("c", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
}
END_TEST

START_TEST(test_lookup_push_match_engine)
{
    const uint32_t dim = 8;
    Cqrps__V1__OptimizerConfig o = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    o.kind = CQRPS__V1__OPTIMIZER__SGD;
    o.lr = 0.5f;
    expect(create("t", CQRPS__V1__TABLE_KIND__CE, dim, 2, 32, &o, NULL), 0,
           NULL);
    cqr_table_t *twin = engine_twin(CQR_KIND_CE, dim, 2, 32, CQR_OPT_SGD, 0.5f);

    uint64_t ids[5] = {1, 2, 3, 1ull << 63, 2};
    float want[5 * 8];
    ck_assert_int_eq(cqr_table_lookup(twin, ids, 5, want), 0);
    Response *r = lookup("t", ids, 5, NULL, 0, 0);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->lookup->dim, dim);
    ck_assert_uint_eq(r->lookup->vectors.len, sizeof want);
    ck_assert_mem_eq(r->lookup->vectors.data, want, sizeof want);
    done(r);

    float g[5 * 8];
    for (int i = 0; i < 40; i++)
        g[i] = 0.01f * (float)(i - 20);
    r = push("t", ids, 5, g, 40, NULL, 0);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->push->applied, 5);
    done(r);
    ck_assert_int_eq(cqr_table_push(twin, ids, g, 5), 0);
    ck_assert_int_eq(cqr_table_lookup(twin, ids, 5, want), 0);
    r = lookup("t", ids, 5, NULL, 0, 0);
    ck_assert_mem_eq(r->lookup->vectors.data, want, sizeof want);
    done(r);

    /* Pooled: bags {1,2} {3} {} {1<<63, 2}, mean, and a pooled push. */
    uint32_t off[4] = {0, 2, 3, 3};
    float pw[4 * 8];
    ck_assert_int_eq(cqr_table_lookup_pooled(twin, ids, 5, off, 4,
                                             CQR_POOL_MEAN, pw), 0);
    r = lookup("t", ids, 5, off, 4, 1);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->lookup->vectors.len, sizeof pw);
    ck_assert_mem_eq(r->lookup->vectors.data, pw, sizeof pw);
    done(r);
    r = push("t", ids, 5, g, 4 * 8, off, 4);
    ck_assert_int_eq(r->status, 0);
    done(r);
    ck_assert_int_eq(cqr_table_push_pooled(twin, ids, 5, off, 4, CQR_POOL_SUM,
                                           g), 0);

    /* Digest: the same hex as the engine's. */
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(twin, &d), 0);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)d);
    r = digest("t");
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->digest->digest, hex);
    ck_assert_uint_eq(strlen(r->digest->digest), 16);
    done(r);

    /* Empty lookups and pushes are fine. */
    r = lookup("t", NULL, 0, NULL, 0, 0);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->lookup->vectors.len, 0);
    done(r);
    expect(push("t", NULL, 0, NULL, 0, NULL, 0), 0, NULL);

    r = describe("t");
    ck_assert_uint_eq(r->table->lookups, 5 + 5 + 5);
    ck_assert_uint_eq(r->table->pushes, 10);
    done(r);
    cqr_table_destroy(twin);
}
END_TEST

START_TEST(test_data_errors)
{
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    uint64_t ids[3] = {1, 2, 3};
    float g[12] = {0};
    expect(lookup("nope", ids, 3, NULL, 0, 0), CQR_ENOTFOUND,
           "no such table 'nope'");
    expect(push("nope", ids, 3, g, 12, NULL, 0), CQR_ENOTFOUND, NULL);
    expect(digest("nope"), CQR_ENOTFOUND, NULL);
    /* Names outside the documented set are invalid in every request. */
    expect(lookup("a\nb", ids, 3, NULL, 0, 0), CQR_EINVAL,
           "table name must be");

    expect(push("t", ids, 3, g, 11, NULL, 0), CQR_EDIM, "44 bytes");
    expect(push("t", ids, 3, g, 12, (uint32_t[]){0, 1}, 2), CQR_EDIM,
           "2 bags");
    g[5] = NAN;
    expect(push("t", ids, 3, g, 12, NULL, 0), CQR_ENONFINITE, "NaN");
    g[5] = INFINITY;
    expect(push("t", ids, 3, g, 12, NULL, 0), CQR_ENONFINITE, NULL);
    g[5] = 0;

    /* Bad offsets: must start at 0 and not decrease. */
    expect(lookup("t", ids, 3, (uint32_t[]){1, 2}, 2, 0), CQR_EINVAL,
           "offsets");
    expect(lookup("t", ids, 3, (uint32_t[]){0, 2, 1}, 3, 0), CQR_EINVAL,
           "offsets");
    expect(push("t", ids, 3, g, 8, (uint32_t[]){0, 5}, 2), CQR_EINVAL,
           "offsets");

    /* --max-batch is 1000 here. */
    uint64_t *many = calloc(1001, sizeof *many);
    float *mg = calloc(1001 * 4, sizeof *mg);
    expect(lookup("t", many, 1001, NULL, 0, 0), CQR_ELIMIT, "--max-batch");
    expect(push("t", many, 1001, mg, 1001 * 4, NULL, 0), CQR_ELIMIT,
           "--max-batch");
    Response *r = lookup("t", many, 1000, NULL, 0, 0);
    ck_assert_int_eq(r->status, 0);
    done(r);
    free(many);
    free(mg);
}
END_TEST

START_TEST(test_reply_too_big)
{
    /* 1000 IDs x dim 512 x 4 = 2 MB of vectors > 1 MiB frames. */
    expect(create("wide", CQRPS__V1__TABLE_KIND__HASH, 512, 0, 4, NULL,
                  NULL), 0, NULL);
    uint64_t *ids = calloc(1000, sizeof *ids);
    expect(lookup("wide", ids, 1000, NULL, 0, 0), CQR_ELIMIT,
           "--max-frame-bytes");
    expect(lookup("wide", ids, 500, NULL, 0, 0), 0, NULL);
    free(ids);
}
END_TEST

START_TEST(test_undecodable)
{
    int rc;
    /* Field 1 as a length-delimited field claiming more bytes than
     * exist: invalid. */
    const uint8_t junk[] = {0x0a, 0x7f, 0x01};
    Response *r = call_raw(&sess, junk, sizeof junk, &rc);
    ck_assert_int_eq(rc, CQR_EPROTO);
    ck_assert_int_eq(r->status, -CQR_EPROTO);
    ck_assert_uint_eq(r->id, 0);
    ck_assert_ptr_nonnull(strstr(r->message, "not a valid"));
    done(r);
    const uint8_t junk2[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    r = call_raw(&sess, junk2, sizeof junk2, &rc);
    ck_assert_int_eq(rc, CQR_EPROTO);
    done(r);
    /* A zero-length body is a valid empty Request with no operation: an
     * error reply, but the connection stays. */
    r = call_raw(&sess, junk, 0, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(r->status, -CQR_EUNSUPPORTED);
    done(r);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_frames_malformed), 2);
}
END_TEST

START_TEST(test_checkpoint_unsupported)
{
    expect(simple(CQRPS__V1__REQUEST__OP_CHECKPOINT), CQR_EUNSUPPORTED,
           "checkpoints need a server started with --data-dir");
    expect(simple(CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS), CQR_EUNSUPPORTED,
           "checkpoints need a server started with --data-dir");
}
END_TEST

START_TEST(test_stats)
{
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    expect(describe("nope"), CQR_ENOTFOUND, NULL);
    Response *r = simple(CQRPS__V1__REQUEST__OP_STATS);
    ck_assert_int_eq(r->status, 0);
    Cqrps__V1__StatsReply *s = r->stats;
    ck_assert_str_eq(s->server_version, CQR_SERVER_VERSION);
    ck_assert_uint_eq(s->requests, 3);
    ck_assert_uint_eq(s->errors, 1);
    ck_assert_uint_eq(s->n_tables, 1);
    ck_assert_str_eq(s->tables[0]->name, "t");
    int seen_nf = 0, seen_op = 0, seen_ctr = 0;
    for (size_t i = 0; i < s->n_counters; i++) {
        const char *k = s->counters[i]->key;
        double v = s->counters[i]->value;
        if (strcmp(k, "status.NOTFOUND") == 0) {
            ck_assert(v == 1.0);
            seen_nf = 1;
        }
        if (strcmp(k, "op.create_table") == 0) {
            ck_assert(v == 1.0);
            seen_op = 1;
        }
        if (strcmp(k, "frames_oversize") == 0)
            seen_ctr = 1;
    }
    ck_assert(seen_nf && seen_op && seen_ctr);
    done(r);
}
END_TEST

/* Polls ClusterStatus until the phase ends; returns the final reply. */
static Response *wait_phase(const char *table, uint64_t phase)
{
    double t0 = now();
    for (;;) {
        Response *r = cluster_status(table, phase);
        ck_assert_int_eq(r->status, 0);
        int st = r->cluster_status->state;
        if (st == CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE ||
            st == CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__FAILED)
            return r;
        done(r);
        ck_assert_msg(now() - t0 < 60, "phase did not finish");
        usleep(2000);
    }
}

static void push_some(const char *table, uint32_t dim, uint64_t first,
                      size_t n)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    float *g = malloc(n * dim * sizeof *g);
    for (size_t i = 0; i < n; i++)
        ids[i] = first + i * 7919;
    for (size_t i = 0; i < n * dim; i++)
        g[i] = (float)((i * 37) % 11) * 0.01f - 0.05f;
    expect(push(table, ids, n, g, n * dim, NULL, 0), 0, NULL);
    free(ids);
    free(g);
}

START_TEST(test_cluster)
{
    expect(create("h", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    expect(cluster("h"), CQR_EUNSUPPORTED, "only cqr tables");
    expect(cluster("nope"), CQR_ENOTFOUND, NULL);
    expect(create("c", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL, NULL), 0,
           NULL);
    expect(cluster_status("c", 0), CQR_ENOPHASE, "no cluster phase");
    push_some("c", 8, 1, 500);

    Response *r = cluster("c");
    ck_assert_int_eq(r->status, 0);
    uint64_t id = r->cluster->phase_id;
    ck_assert_uint_gt(id, 0);
    done(r);

    r = wait_phase("c", id);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE);
    ck_assert_uint_eq(r->cluster_status->phase_id, id);
    ck_assert_uint_eq(r->cluster_status->ids_assigned, 500);
    ck_assert(r->cluster_status->fraction == 1.0);
    ck_assert_str_eq(r->cluster_status->error, "");
    done(r);
    r = cluster_status("c", 0); /* latest */
    ck_assert_uint_eq(r->cluster_status->phase_id, id);
    done(r);
    expect(cluster_status("c", id + 100), CQR_ENOPHASE, "no phase");
    expect(cluster_status("h", id), CQR_ENOPHASE, NULL);

    r = describe("c");
    ck_assert_uint_eq(r->table->phases_done, 1);
    ck_assert_int_eq(r->table->phase_running, 0);
    done(r);

    /* A second phase gets a new id. */
    r = cluster("c");
    ck_assert_int_eq(r->status, 0);
    uint64_t id2 = r->cluster->phase_id;
    ck_assert_uint_gt(id2, id);
    done(r);
    done(wait_phase("c", id2));
}
END_TEST

START_TEST(test_cluster_busy_and_drop)
{
    expect(create("c", CQRPS__V1__TABLE_KIND__CQR, 16, 4, 64, NULL, NULL), 0,
           NULL);
    for (int k = 0; k < 5; k++)
        push_some("c", 16, 1 + (uint64_t)k * 100000, 1000);
    Response *r = cluster("c");
    ck_assert_int_eq(r->status, 0);
    uint64_t id = r->cluster->phase_id;
    done(r);
    /* Busy while queued or running (it may already be done on a fast
     * machine, so accept both). */
    r = cluster("c");
    ck_assert(r->status == CQRPS__V1__STATUS__BUSY ||
              r->status == CQRPS__V1__STATUS__OK);
    done(r);
    /* Dropping while the phase holds the table is safe; the phase
     * finishes on its own reference and the table dies after it. */
    expect(drop("c"), 0, NULL);
    expect(cluster_status("c", id), CQR_ENOTFOUND, NULL);
    /* teardown waits for the phase and frees everything (ASan checks). */
}
END_TEST

START_TEST(test_schedule)
{
    Cqrps__V1__ClusterSchedule sc = CQRPS__V1__CLUSTER_SCHEDULE__INIT;
    sc.every_examples = 100;
    sc.max_phases = 1;
    Response *r = create("s", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL, &sc);
    ck_assert_uint_eq(r->table->config->schedule->every_examples, 100);
    done(r);
    push_some("s", 8, 1, 99);
    expect(cluster_status("s", 0), CQR_ENOPHASE, NULL);
    push_some("s", 8, 5, 1); /* the 100th example */
    r = wait_phase("s", 0);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE);
    done(r);
    push_some("s", 8, 1000, 300); /* max_phases reached: no more */
    r = describe("s");
    ck_assert_uint_eq(r->table->phases_done, 1);
    done(r);
    cqr_phase_counts_t pc;
    cqr_phases_counts(ctx.phases, &pc);
    ck_assert_uint_eq(pc.scheduled, 1);
    ck_assert_uint_eq(pc.done, 1);
}
END_TEST

/* Auth seam: a hook that wants token "s3cret"; admin never granted. */
static int test_auth(void *ud, cqr_session_t *s, const uint8_t *tok,
                     size_t len, const uint8_t *admin, size_t alen)
{
    (void)ud;
    (void)admin;
    (void)alen;
    if (len != 6 || memcmp(tok, "s3cret", 6) != 0)
        return CQR_EAUTH;
    s->admin = 0;
    return 0;
}

START_TEST(test_auth_hook)
{
    expect(create("t", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8, NULL, NULL), 0,
           NULL);
    ctx.auth.hello = test_auth;
    cqr_session_t s2;
    cqr_session_init(&ctx, &s2, "test:2", 0);
    Cqrps__V1__DescribeTable m = CQRPS__V1__DESCRIBE_TABLE__INIT;
    m.name = (char *)"t";
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE;
    q.describe_table = &m;
    expect(call_as(&s2, &q), CQR_EAUTH, "Hello");
    expect(hello_as(&s2, 1, "wrong"), CQR_EAUTH, NULL);
    expect(call_as(&s2, &q), CQR_EAUTH, NULL);
    Response *r = hello_as(&s2, 1, "s3cret");
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(r->hello->admin, 0);
    done(r);
    expect(call_as(&s2, &q), 0, NULL);
    Cqrps__V1__DropTable d = CQRPS__V1__DROP_TABLE__INIT;
    d.name = (char *)"t";
    Request q2 = CQRPS__V1__REQUEST__INIT;
    q2.op_case = CQRPS__V1__REQUEST__OP_DROP_TABLE;
    q2.drop_table = &d;
    expect(call_as(&s2, &q2), CQR_EPERM, "admin");
    ctx.auth.hello = NULL;
}
END_TEST

/* Concurrency: lookups and pushes on several threads while another
 * thread drops and re-creates the table; every reply is OK or NOT_FOUND,
 * and nothing is used after free (ASan/TSan). */
static atomic_int stop_flag;

static void *hammer(void *arg)
{
    cqr_session_t s;
    cqr_session_init(&ctx, &s, "hammer", (uint32_t)(uintptr_t)arg);
    uint64_t ids[16];
    float g[16 * 8];
    for (int i = 0; i < 16; i++)
        ids[i] = (uint64_t)i * 13 + (uintptr_t)arg;
    for (int i = 0; i < 16 * 8; i++)
        g[i] = 0.001f;
    int iter = 0;
    while (!atomic_load(&stop_flag) && iter++ < 20000) {
        Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
        Cqrps__V1__Push ps = CQRPS__V1__PUSH__INIT;
        Request q = CQRPS__V1__REQUEST__INIT;
        if (iter % 2) {
            lk.table = (char *)"shared";
            lk.ids = ids;
            lk.n_ids = 16;
            q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
            q.lookup = &lk;
        } else {
            ps.table = (char *)"shared";
            ps.ids = ids;
            ps.n_ids = 16;
            ps.grads.data = (uint8_t *)g;
            ps.grads.len = sizeof g;
            q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
            q.push = &ps;
        }
        size_t n = cqrps__v1__request__get_packed_size(&q);
        uint8_t buf[2048];
        ck_assert_uint_le(n, sizeof buf);
        cqrps__v1__request__pack(&q, buf);
        cqr_buf_t out;
        cqr_buf_init(&out);
        ck_assert_int_eq(cqr_rpc_handle(&ctx, &s, buf, n, &out), 0);
        Response *r = cqrps__v1__response__unpack(NULL, out.len, out.data);
        ck_assert_ptr_nonnull(r);
        ck_assert(r->status == CQRPS__V1__STATUS__OK ||
                  r->status == CQRPS__V1__STATUS__NOT_FOUND ||
                  r->status == CQRPS__V1__STATUS__BUSY);
        cqrps__v1__response__free_unpacked(r, NULL);
        cqr_buf_free(&out);
    }
    return NULL;
}

START_TEST(test_concurrent_drop)
{
    Cqrps__V1__ClusterSchedule sc = CQRPS__V1__CLUSTER_SCHEDULE__INIT;
    sc.every_examples = 400; /* phases start and get dropped mid-way too */
    pthread_t th[3];
    atomic_store(&stop_flag, 0);
    expect(create("shared", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL, &sc),
           0, NULL);
    for (uintptr_t i = 0; i < 3; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, (void *)i), 0);
    for (int k = 0; k < 30; k++) {
        usleep(2000);
        expect(drop("shared"), 0, NULL);
        expect(create("shared", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL,
                      &sc), 0, NULL);
    }
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
}
END_TEST

/* Mutated requests (bytes flipped, truncated, extended) never crash the
 * dispatcher, and always get one decodable reply. A cheap stand-in for
 * the libFuzzer target until it exists. */
START_TEST(test_mutations)
{
    expect(create("m", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16, NULL, NULL), 0,
           NULL);
    uint64_t ids[4] = {1, 2, 3, 4};
    float g[32] = {0};
    uint32_t off[2] = {0, 2};
    Cqrps__V1__Push ps = CQRPS__V1__PUSH__INIT;
    ps.table = (char *)"m";
    ps.ids = ids;
    ps.n_ids = 4;
    ps.grads.data = (uint8_t *)g;
    ps.grads.len = 2 * 8 * sizeof(float);
    ps.offsets = off;
    ps.n_offsets = 2;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.id = 5;
    q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    q.push = &ps;
    uint8_t base[512];
    size_t n = cqrps__v1__request__get_packed_size(&q);
    ck_assert_uint_le(n, sizeof base);
    cqrps__v1__request__pack(&q, base);

    uint64_t rng = 0x9e3779b97f4a7c15ull;
    uint8_t buf[600];
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, base, n);
        size_t len = n;
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        int flips = 1 + (int)(rng % 4);
        for (int f = 0; f < flips; f++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            buf[(rng >> 8) % len] = (uint8_t)(rng >> 40);
        }
        if (rng % 5 == 0)
            len = (size_t)((rng >> 20) % n);
        else if (rng % 5 == 1) {
            memcpy(buf + n, base, 40);
            len = n + 40;
        }
        int rc;
        Response *r = call_raw(&sess, buf, len, &rc);
        ck_assert(rc == 0 || r->status == CQRPS__V1__STATUS__MALFORMED);
        done(r);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("rpc");
    TCase *tc = tcase_create("rpc");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_hello);
    tcase_add_test(tc, test_create_list_describe_drop);
    tcase_add_test(tc, test_create_invalid);
    tcase_add_test(tc, test_optimizer_defaults);
    tcase_add_test(tc, test_lookup_push_match_engine);
    tcase_add_test(tc, test_data_errors);
    tcase_add_test(tc, test_reply_too_big);
    tcase_add_test(tc, test_undecodable);
    tcase_add_test(tc, test_checkpoint_unsupported);
    tcase_add_test(tc, test_stats);
    tcase_add_test(tc, test_cluster);
    tcase_add_test(tc, test_cluster_busy_and_drop);
    tcase_add_test(tc, test_schedule);
    tcase_add_test(tc, test_auth_hook);
    tcase_add_test(tc, test_concurrent_drop);
    tcase_add_test(tc, test_mutations);
    suite_add_tcase(s, tc);
    return s;
}

static void setup_limits(void) { setup_with(tweak_limits); }

Suite *cqr_test_suite(void)
{
    Suite *s = suite();
    TCase *lim = tcase_create("table_limits");
    tcase_add_checked_fixture(lim, setup_limits, teardown);
    tcase_add_test(lim, test_table_limits);
    suite_add_tcase(s, lim);
    return s;
}
