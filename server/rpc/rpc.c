/* rpc.c -- the request path (rpc.h): decode, dispatch to an operation,
 * encode and count the reply, and the deferred replies' bookkeeping. */
#include "rpc/rpc.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "ops/log.h"
#include "rpc/call.h"
#include "rpc/wire.h"

/* Vectors travel as raw little-endian float32 and are handed to and from
 * the engine with memcpy; a big-endian host would need a byte swap here. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cqrps-server assumes a little-endian host"
#endif

/* IDs and offsets of a fast-decoded request that fit on the stack when
 * they must be copied (unaligned IDs, varint offsets); more go to the
 * heap. 1,024 IDs are 8 KiB. */
#define FAST_INLINE 1024

_Static_assert(CQR_WIRE_NAME_MAX == CQR_NAME_MAX,
               "the fast decoder takes every valid table name");

/* ---- helpers of the operations (call.h), packing, errors ------------- */

int cqr_call_fail(cqr_call_t *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    return err;
}

void cqr_call_keep(cqr_call_t *c, void *p)
{
    for (size_t i = 0; i < sizeof c->heap / sizeof c->heap[0]; i++)
        if (c->heap[i] == NULL) {
            c->heap[i] = p;
            return;
        }
    assert(!"rpc_call heap slots exhausted");
}

int cqr_call_table(cqr_call_t *c, const char *name)
{
    if (name == NULL || name[0] == '\0')
        return cqr_call_fail(c, CQR_EINVAL, "table name is empty");
    int rc = cqr_registry_get(c->ctx->reg, name, &c->entry);
    if (rc != 0) {
        char clean[CQR_NAME_MAX + 8];
        return cqr_call_fail(c, rc, "no such table '%s'",
                             cqr_log_clean(clean, sizeof clean, name));
    }
    return 0;
}

/* Counts one reply of status err (0 = OK) in the context's counters. */
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

/* ---- decoding ---------------------------------------------------------- */

/* protobuf-c's allocator, told apart from bad input by `oom`. */
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

/* A request the fast decoder read, with the copies the engine needs. */
typedef struct fast_req {
    cqr_data_req_t d;                  /* what the operations see */
    char table[CQR_WIRE_NAME_MAX + 1]; /* the name, NUL-terminated */
    uint64_t ids[FAST_INLINE];         /* unaligned IDs, copied */
    uint32_t offsets[FAST_INLINE];     /* offsets, decoded */
    void *heap;                        /* the same for larger batches */
} fast_req_t;

/* One decoded request, by whichever decoder took it. */
typedef struct decoded {
    fast_req_t fast;          /* the fast decoder's (when req is NULL) */
    pb_alloc_state_t as;      /* alloc's state */
    ProtobufCAllocator alloc; /* req's allocator */
    Request *req;             /* protobuf-c's, or NULL */
    uint64_t id;              /* Request.id */
    uint32_t op_case;         /* Request oneof case */
} decoded_t;

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

    cqr_data_req_t *d = &f->d;
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

/* Lookups and pushes skip protobuf-c; everything else, and any Lookup or
 * Push the fast decoder declines, goes through it. 1: q holds the
 * request (release with decoded_free); 0: the body does not decode (the
 * allocator says whether memory ran out). */
static int decode(const uint8_t *body, size_t len, decoded_t *q)
{
    q->as.oom = 0;
    q->alloc.alloc = pb_alloc;
    q->alloc.free = pb_free;
    q->alloc.allocator_data = &q->as;
    q->req = NULL;
    q->id = 0;
    q->op_case = 0;
    if (fast_decode(body, len, &q->fast, &q->id, &q->op_case))
        return 1;
    q->req = cqrps__v1__request__unpack(&q->alloc, len, body);
    if (q->req == NULL)
        return 0;
    q->id = q->req->id;
    q->op_case = (uint32_t)q->req->op_case;
    return 1;
}

static void decoded_free(decoded_t *q)
{
    if (q->req != NULL)
        cqrps__v1__request__free_unpacked(q->req, &q->alloc);
    free(q->fast.heap);
}

/* The reply to a body that did not decode: MALFORMED (close the
 * connection), or NOMEM when that is why. */
static int undecodable(cqr_server_ctx_t *ctx, const decoded_t *q,
                       cqr_buf_t *out, int *status)
{
    atomic_fetch_add_explicit(&ctx->ctr.ops[CQR_OP_COUNT - 1], 1,
                              memory_order_relaxed);
    if (q->as.oom) {
        *status = CQR_ENOMEM;
        return cqr_rpc_error(ctx, out, 0, CQR_ENOMEM,
                             "out of memory decoding the request");
    }
    cqr_ctr_add(ctx, CQR_CTR_frames_malformed, 1);
    *status = CQR_EPROTO;
    int rc = cqr_rpc_error(ctx, out, 0, CQR_EPROTO,
                           "request is not a valid cqrps.v1.Request; "
                           "closing the connection");
    return rc != 0 ? rc : CQR_EPROTO;
}

/* ---- dispatch ---------------------------------------------------------- */

/* The request's Lookup or Push: the fast decoder's, or one filled in
 * from protobuf-c's message (whose arrays are malloc'd, so aligned). */
static const cqr_data_req_t *data_of(const cqr_call_t *c, cqr_data_req_t *d)
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

static int dispatch(cqr_call_t *c)
{
    const Request *q = c->req;
    cqr_data_req_t d;
    if (!c->sess->authed && c->op_case != CQRPS__V1__REQUEST__OP_HELLO)
        return cqr_call_fail(c, CQR_EAUTH,
                             "send Hello with a valid token first");
    /* Only Lookup and Push come from the fast decoder (q == NULL). */
    if (c->op_case == CQRPS__V1__REQUEST__OP_LOOKUP)
        return cqr_op_lookup(c, data_of(c, &d));
    if (c->op_case == CQRPS__V1__REQUEST__OP_PUSH)
        return cqr_op_push(c, data_of(c, &d));
    assert(q != NULL);
    switch (q->op_case) {
    case CQRPS__V1__REQUEST__OP_HELLO:
        return cqr_op_hello(c, q->hello);
    case CQRPS__V1__REQUEST__OP_CREATE_TABLE:
        return cqr_op_create(c, q->create_table);
    case CQRPS__V1__REQUEST__OP_DROP_TABLE:
        return cqr_op_drop(c, q->drop_table);
    case CQRPS__V1__REQUEST__OP_LIST_TABLES:
        return cqr_op_list(c);
    case CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE:
        return cqr_op_describe(c, q->describe_table);
    case CQRPS__V1__REQUEST__OP_CLUSTER:
        return cqr_op_cluster(c, q->cluster);
    case CQRPS__V1__REQUEST__OP_CLUSTER_STATUS:
        return cqr_op_cluster_status(c, q->cluster_status);
    case CQRPS__V1__REQUEST__OP_STATS:
        return cqr_op_stats(c);
    case CQRPS__V1__REQUEST__OP_DIGEST:
        return cqr_op_digest(c, q->digest);
    case CQRPS__V1__REQUEST__OP_CHECKPOINT:
        return cqr_op_checkpoint(c);
    case CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS:
        return cqr_op_list_checkpoints(c);
    case CQRPS__V1__REQUEST__OP_UPDATE_OPTIMIZER:
        return cqr_op_update_optimizer(c, q->update_optimizer);
    default:
        /* Also a newer client's operation: the field is unknown here. */
        return cqr_call_fail(c, CQR_EUNSUPPORTED, "request carries no "
                             "operation this server knows (protocol %u)",
                             CQR_PROTOCOL_VERSION);
    }
}

/* Encodes the reply to the call that dispatch ended with err; *status
 * gets the status sent. cqr_rpc_handle's return codes. */
static int reply(cqr_call_t *c, int err, int *status)
{
    cqr_server_ctx_t *ctx = c->ctx;
    if (err != 0) {
        *status = err;
        return cqr_rpc_error(ctx, c->out, c->id, err,
                             c->msg[0] ? c->msg : NULL);
    }
    *status = 0;
    if (c->deferred)
        return CQR_RPC_DEFERRED; /* statistics come with the reply */
    if (c->appended) {
        count_status(ctx, 0);
        return 0;
    }
    c->resp.status = CQRPS__V1__STATUS__OK;
    int rc = pack(ctx, &c->resp, c->out);
    if (rc == 0) {
        count_status(ctx, 0);
    } else if (rc == CQR_ELIMIT) {
        snprintf(c->msg, sizeof c->msg, "reply of %zu bytes exceeds "
                 "--max-frame-bytes %" PRIu64,
                 cqrps__v1__response__get_packed_size(&c->resp),
                 ctx->cfg->max_frame_bytes);
        rc = cqr_rpc_error(ctx, c->out, c->id, CQR_ELIMIT, c->msg);
    } else if (rc == CQR_ENOMEM) {
        rc = cqr_rpc_error(ctx, c->out, c->id, CQR_ENOMEM,
                           "out of memory encoding the reply");
    }
    *status = rc;
    return rc;
}

static void call_release(cqr_call_t *c)
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

/* Runs the decoded request q and appends its reply; cqr_rpc_handle's
 * return codes. */
static int run_call(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                    const decoded_t *q, cqr_buf_t *out, int *status)
{
    cqr_call_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        *status = CQR_ENOMEM;
        return cqr_rpc_error(ctx, out, q->id, CQR_ENOMEM, NULL);
    }
    c->ctx = ctx;
    c->sess = sess;
    c->req = q->req;
    c->fast = q->req == NULL ? &q->fast.d : NULL;
    c->id = q->id;
    c->op_case = q->op_case;
    c->out = out;
    cqrps__v1__response__init(&c->resp);
    c->resp.id = q->id;

    size_t before = out->len;
    int err = dispatch(c);
    /* Only an OK reply is appended by its operation. */
    assert(out->len == before || (err == 0 && c->appended));
    (void)before;
    int rc = reply(c, err, status);
    call_release(c);
    free(c);
    /* With authentication on, a session that is still (or again) not
     * authenticated after this request -- anything before Hello, a wrong
     * token, a bad protocol version -- has had its one answer. */
    if (rc == 0 && ctx->auth.hello != NULL && !sess->authed)
        return CQR_EAUTH;
    return rc;
}

/* The request path proper; *opi and *status receive the operation slot
 * and the status sent, for cqr_rpc_handle's statistics. */
static int handle(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                  const uint8_t *body, size_t len, cqr_buf_t *out,
                  unsigned *opi, int *status)
{
    cqr_ctr_add(ctx, CQR_CTR_requests, 1);
    *opi = CQR_OP_COUNT - 1;
    decoded_t q;
    if (!decode(body, len, &q))
        return undecodable(ctx, &q, out, status);
    unsigned op = q.op_case - 10u;
    *opi = op < CQR_OP_COUNT - 1 ? op : CQR_OP_COUNT - 1;
    atomic_fetch_add_explicit(&ctx->ctr.ops[*opi], 1, memory_order_relaxed);
    int rc = run_call(ctx, sess, &q, out, status);
    decoded_free(&q);
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

/* ---- deferred replies (server.h) --------------------------------------- */

void cqr_rpc_checkpoint_done(cqr_deferred_t *d, int err,
                             const cqr_ckpt_info_t *info, const char *msg)
{
    cqr_server_ctx_t *ctx = d->ctx;
    size_t mark;
    int rc = cqr_frame_begin(&d->reply, &mark);
    if (rc == 0 && err == 0) {
        Response resp = CQRPS__V1__RESPONSE__INIT;
        Cqrps__V1__CheckpointReply r;
        cqr_call_ckpt_reply(&r, info);
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
