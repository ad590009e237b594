/* rpc_call.c -- in-process requests for the RPC suites (rpc_call.h). */
#include "rpc_call.h"

#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

static atomic_uint_fast64_t next_id = 1;

Response *rq_raw(cqr_server_ctx_t *ctx, cqr_session_t *s,
                 const uint8_t *body, size_t len, int *rc)
{
    cqr_buf_t out;
    cqr_buf_init(&out);
    *rc = cqr_rpc_handle(ctx, s, body, len, &out);
    /* CQR_EAUTH: the reply is there, and the connection would close. */
    ck_assert(*rc == 0 || *rc == CQR_EPROTO || *rc == CQR_EAUTH);
    Response *r = cqrps__v1__response__unpack(NULL, out.len, out.data);
    ck_assert_ptr_nonnull(r);
    cqr_buf_free(&out);
    return r;
}

Response *rq_call(cqr_server_ctx_t *ctx, cqr_session_t *s, Request *q,
                  int *rc)
{
    q->id = atomic_fetch_add(&next_id, 1);
    size_t n = cqrps__v1__request__get_packed_size(q);
    uint8_t *buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(buf);
    cqrps__v1__request__pack(q, buf);
    Response *r = rq_raw(ctx, s, buf, n, rc);
    free(buf);
    ck_assert_uint_eq(r->id, q->id);
    return r;
}

Response *rq_unpack_exact(const uint8_t *data, size_t len)
{
    Response *r = cqrps__v1__response__unpack(NULL, len, data);
    ck_assert_ptr_nonnull(r);
    size_t n = cqrps__v1__response__get_packed_size(r);
    ck_assert_uint_eq(n, len);
    uint8_t *again = malloc(n + 1);
    ck_assert_ptr_nonnull(again);
    cqrps__v1__response__pack(r, again);
    ck_assert_mem_eq(again, data, n);
    free(again);
    return r;
}

void rq_table_config(Cqrps__V1__TableConfig *tc,
                     Cqrps__V1__OptimizerConfig *o, Cqrps__V1__TableKind kind,
                     uint32_t dim, uint32_t rows)
{
    cqrps__v1__optimizer_config__init(o);
    o->kind = CQRPS__V1__OPTIMIZER__ADAM;
    o->lr = 0.05f;
    cqrps__v1__table_config__init(tc);
    tc->kind = kind;
    tc->dim = dim;
    tc->rows = rows;
    tc->seed = 7;
    tc->optimizer = o;
}

void rq_done(Response *r)
{
    cqrps__v1__response__free_unpacked(r, NULL);
}

int rq_status(Response *r)
{
    int st = -(int)r->status;
    rq_done(r);
    return st;
}

Response *rq_create(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *name, Cqrps__V1__TableConfig *tc, int *rc)
{
    Cqrps__V1__CreateTable m = CQRPS__V1__CREATE_TABLE__INIT;
    m.name = (char *)name;
    m.config = tc;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CREATE_TABLE;
    q.create_table = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_drop(cqr_server_ctx_t *ctx, cqr_session_t *s, const char *name,
                  int *rc)
{
    Cqrps__V1__DropTable m = CQRPS__V1__DROP_TABLE__INIT;
    m.name = (char *)name;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_DROP_TABLE;
    q.drop_table = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_describe(cqr_server_ctx_t *ctx, cqr_session_t *s,
                      const char *name, int *rc)
{
    Cqrps__V1__DescribeTable m = CQRPS__V1__DESCRIBE_TABLE__INIT;
    m.name = (char *)name;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE;
    q.describe_table = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_digest(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *table, int *rc)
{
    Cqrps__V1__Digest m = CQRPS__V1__DIGEST__INIT;
    m.table = (char *)table;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_DIGEST;
    q.digest = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_cluster(cqr_server_ctx_t *ctx, cqr_session_t *s,
                     const char *table, int *rc)
{
    Cqrps__V1__Cluster m = CQRPS__V1__CLUSTER__INIT;
    m.table = (char *)table;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CLUSTER;
    q.cluster = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_cluster_status(cqr_server_ctx_t *ctx, cqr_session_t *s,
                            const char *table, uint64_t phase, int *rc)
{
    Cqrps__V1__ClusterStatus m = CQRPS__V1__CLUSTER_STATUS__INIT;
    m.table = (char *)table;
    m.phase_id = phase;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CLUSTER_STATUS;
    q.cluster_status = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_cancel_cluster(cqr_server_ctx_t *ctx, cqr_session_t *s,
                            const char *table, uint64_t phase, int *rc)
{
    Cqrps__V1__CancelCluster m = CQRPS__V1__CANCEL_CLUSTER__INIT;
    m.table = (char *)table;
    m.phase_id = phase;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CANCEL_CLUSTER;
    q.cancel_cluster = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_simple(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    Cqrps__V1__Request__OpCase op, int *rc)
{
    Cqrps__V1__ListTables lt = CQRPS__V1__LIST_TABLES__INIT;
    Cqrps__V1__Stats st = CQRPS__V1__STATS__INIT;
    Cqrps__V1__Checkpoint ck = CQRPS__V1__CHECKPOINT__INIT;
    Cqrps__V1__ListCheckpoints lc = CQRPS__V1__LIST_CHECKPOINTS__INIT;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = op;
    switch (op) {
    case CQRPS__V1__REQUEST__OP_LIST_TABLES: q.list_tables = &lt; break;
    case CQRPS__V1__REQUEST__OP_STATS: q.stats = &st; break;
    case CQRPS__V1__REQUEST__OP_CHECKPOINT: q.checkpoint = &ck; break;
    case CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS:
        q.list_checkpoints = &lc;
        break;
    default: ck_abort();
    }
    return rq_call(ctx, s, &q, rc);
}

Response *rq_hello(cqr_server_ctx_t *ctx, cqr_session_t *s,
                   uint32_t version, const char *client, const char *token,
                   const char *admin, int *rc)
{
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = version;
    h.client_name = (char *)client;
    if (token) {
        h.token.data = (uint8_t *)token;
        h.token.len = strlen(token);
    }
    if (admin) {
        h.admin_token.data = (uint8_t *)admin;
        h.admin_token.len = strlen(admin);
    }
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    q.hello = &h;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_lookup(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *table, const uint64_t *ids, size_t n,
                    uint32_t *offsets, size_t nb, int mean, int *rc)
{
    Cqrps__V1__Lookup m = CQRPS__V1__LOOKUP__INIT;
    m.table = (char *)table;
    m.ids = (uint64_t *)ids;
    m.n_ids = n;
    m.offsets = offsets;
    m.n_offsets = nb;
    m.pooling = mean ? CQRPS__V1__POOLING__MEAN : CQRPS__V1__POOLING__SUM;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    q.lookup = &m;
    return rq_call(ctx, s, &q, rc);
}

Response *rq_push(cqr_server_ctx_t *ctx, cqr_session_t *s,
                  const char *table, const uint64_t *ids, size_t n,
                  const float *g, size_t gfloats, uint32_t *offsets,
                  size_t nb, int *rc)
{
    Cqrps__V1__Push m = CQRPS__V1__PUSH__INIT;
    m.table = (char *)table;
    m.ids = (uint64_t *)ids;
    m.n_ids = n;
    m.grads.data = (uint8_t *)g;
    m.grads.len = gfloats * sizeof(float);
    m.offsets = offsets;
    m.n_offsets = nb;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    q.push = &m;
    return rq_call(ctx, s, &q, rc);
}
