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

int cqr_call_defer(cqr_call_t *c, uint32_t op, const char *what,
                   cqr_deferred_t **d)
{
    cqr_deferred_t *x = calloc(1, sizeof *x);
    if (x == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    x->ctx = c->ctx;
    x->id = c->id;
    x->op = op;
    x->t0_ns = cqr_opstats_now_ns();
    cqr_buf_init(&x->reply);
    int rc = c->sess->defer(c->sess, x);
    if (rc != 0) {
        free(x);
        return cqr_call_fail(c, rc, "cannot queue the %s: %s", what,
                             cqr_strerror(rc));
    }
    c->deferred = 1;
    *d = x;
    return 0;
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

int cqr_call_name(cqr_call_t *c, const char *name)
{
    if (name == NULL || name[0] == '\0')
        return cqr_call_fail(c, CQR_EINVAL, "table name is empty");
    if (cqr_registry_name_check(name) != 0)
        return cqr_call_fail(c, CQR_EINVAL, "table name must be 1-%d "
                             "characters of A-Z a-z 0-9 _ - .", CQR_NAME_MAX);
    return 0;
}

int cqr_call_table(cqr_call_t *c, const char *name)
{
    int rc = cqr_call_name(c, name);
    if (rc != 0)
        return rc;
    rc = cqr_registry_get(c->ctx->reg, name, &c->entry);
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
    cqr_data_part_t one;               /* a single-table request's part */
    char table[CQR_WIRE_NAME_MAX + 1]; /* its name, NUL-terminated */
    uint64_t ids[FAST_INLINE];         /* its unaligned IDs, copied */
    uint32_t offsets[FAST_INLINE];     /* its offsets, decoded */
    void *heap;                        /* the same for larger batches and
                                          for multi-table requests */
} fast_req_t;

/* One decoded request, by whichever decoder took it. */
typedef struct decoded {
    fast_req_t fast;          /* the fast decoder's (when req is NULL) */
    pb_alloc_state_t as;      /* alloc's state */
    ProtobufCAllocator alloc; /* req's allocator */
    Request *req;             /* protobuf-c's, or NULL */
    uint64_t id;              /* Request.id */
    uint32_t op_case;         /* Request oneof case */
    int strings_bad;          /* see cqr_call_t */
    const char *bad_field;
} decoded_t;

static int misaligned64(const void *p)
{
    return ((uintptr_t)p & (_Alignof(uint64_t) - 1)) != 0;
}

/* Fills *dp from the wire's part w: the name copied to `name`
 * (NUL-terminated), the IDs used in place when aligned or else copied to
 * *ids, the offsets decoded to *offs (both cursors advance). */
static void fast_part(const cqr_wire_part_t *w, cqr_data_part_t *dp,
                      char *name, uint64_t **ids, uint32_t **offs)
{
    if (w->table_len > 0)
        memcpy(name, w->table, w->table_len);
    name[w->table_len] = '\0';
    dp->table = name;
    dp->ids = NULL;
    if (w->n_ids > 0 && misaligned64(w->ids)) {
        memcpy(*ids, w->ids, w->n_ids * sizeof(uint64_t));
        dp->ids = *ids;
        *ids += w->n_ids;
    } else if (w->n_ids > 0) {
        dp->ids = (const uint64_t *)(const void *)w->ids;
    }
    dp->n_ids = w->n_ids;
    dp->offsets = NULL;
    if (w->n_offsets > 0) {
        cqr_wire_part_offsets(w, *offs);
        dp->offsets = *offs;
        *offs += w->n_offsets;
    }
    dp->n_offsets = w->n_offsets;
    dp->pooling = (int)w->pooling;
}

/* A single-table request: its part in f (large copies on the heap). */
static int fast_single(const cqr_wire_data_t *w, fast_req_t *f)
{
    cqr_wire_part_t one = {w->table, w->table_len, w->ids, w->n_ids,
                           w->offsets, w->offsets_len, w->n_offsets,
                           w->pooling};
    /* Counts are bounded by the frame's size, itself bounded by
     * --max-frame-bytes, like protobuf-c's allocations. */
    size_t nid = misaligned64(w->ids) ? w->n_ids : 0; /* IDs to copy */
    size_t hid = nid > FAST_INLINE ? nid : 0;
    size_t hoff = w->n_offsets > FAST_INLINE ? w->n_offsets : 0;
    if (hid + hoff > 0) {
        f->heap = malloc(hid * sizeof(uint64_t) + hoff * sizeof(uint32_t));
        if (f->heap == NULL)
            return 0;
    }
    uint64_t *ids = hid > 0 ? (uint64_t *)f->heap : f->ids;
    uint32_t *offsets = f->offsets;
    if (hoff > 0) /* after the heap's IDs, if any: 8-aligned */
        offsets = (uint32_t *)(void *)((uint64_t *)f->heap + hid);
    fast_part(&one, &f->one, f->table, &ids, &offsets);
    f->d.parts = &f->one;
    f->d.n_parts = 1;
    return 1;
}

/* A multi-table request: its parts, names and copies in one heap block
 * (parts, then IDs, offsets and names). */
static int fast_multi(const cqr_wire_data_t *w, fast_req_t *f)
{
    const uint8_t *end = w->parts + w->parts_len;
    size_t nid = 0, noff = 0;
    const uint8_t *cur = w->parts;
    for (size_t i = 0; i < w->n_parts; i++) {
        cqr_wire_part_t p;
        cqr_wire_part_next(&cur, end, &p);
        nid += misaligned64(p.ids) ? p.n_ids : 0;
        noff += p.n_offsets;
    }
    const size_t name = CQR_WIRE_NAME_MAX + 1;
    f->heap = malloc(w->n_parts * sizeof(cqr_data_part_t) +
                     nid * sizeof(uint64_t) + noff * sizeof(uint32_t) +
                     w->n_parts * name);
    if (f->heap == NULL)
        return 0;
    cqr_data_part_t *parts = f->heap;
    uint64_t *ids = (uint64_t *)(void *)(parts + w->n_parts);
    uint32_t *offs = (uint32_t *)(void *)(ids + nid);
    char *names = (char *)(offs + noff);
    cur = w->parts;
    for (size_t i = 0; i < w->n_parts; i++) {
        cqr_wire_part_t p;
        cqr_wire_part_next(&cur, end, &p);
        fast_part(&p, &parts[i], names + i * name, &ids, &offs);
    }
    f->d.parts = parts;
    f->d.n_parts = w->n_parts;
    f->d.multi = 1;
    f->d.mixed = w->table_len > 0 || w->n_ids > 0 || w->n_offsets > 0 ||
                 w->pooling != 0;
    return 1;
}

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
    memset(&f->d, 0, sizeof f->d);
    f->d.bf16 = w.bf16;
    f->d.grads = w.grads;
    f->d.grads_len = w.grads_len;
    if (!(w.n_parts == 0 ? fast_single(&w, f) : fast_multi(&w, f)))
        return 0;
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
    q->strings_bad = 0;
    q->bad_field = NULL;
    if (fast_decode(body, len, &q->fast, &q->id, &q->op_case))
        return 1;
    q->req = cqrps__v1__request__unpack(&q->alloc, len, body);
    if (q->req == NULL)
        return 0;
    /* The fast decoder takes no NUL; protobuf-c's strings would hide it. */
    q->strings_bad = !cqr_wire_strings_clean(&cqrps__v1__request__descriptor,
                                             body, len, &q->bad_field);
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

/* protobuf-c's TablePart or single-table fields as a part. */
static void pb_part(cqr_data_part_t *d, char *table, const uint64_t *ids,
                    size_t n_ids, const uint32_t *offsets, size_t n_offsets,
                    int pooling)
{
    d->table = table;
    d->ids = ids;
    d->n_ids = n_ids;
    d->offsets = offsets;
    d->n_offsets = n_offsets;
    d->pooling = pooling;
}

/* The request's Lookup or Push: the fast decoder's, or one filled in
 * from protobuf-c's message (whose arrays are malloc'd, so aligned) into
 * *d, with a single-table request's part in *one. CQR_ENOMEM. */
static int data_of(cqr_call_t *c, cqr_data_req_t *d, cqr_data_part_t *one,
                   const cqr_data_req_t **out)
{
    if (c->fast != NULL) {
        *out = c->fast;
        return 0;
    }
    const Request *q = c->req;
    Cqrps__V1__TablePart **pbp;
    size_t np;
    memset(d, 0, sizeof *d);
    if (q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP) {
        const Cqrps__V1__Lookup *m = q->lookup;
        pb_part(one, m->table, m->ids, m->n_ids, m->offsets, m->n_offsets,
                (int)m->pooling);
        d->bf16 = m->bf16;
        pbp = m->parts;
        np = m->n_parts;
    } else {
        assert(q->op_case == CQRPS__V1__REQUEST__OP_PUSH);
        const Cqrps__V1__Push *m = q->push;
        pb_part(one, m->table, m->ids, m->n_ids, m->offsets, m->n_offsets,
                (int)m->pooling);
        d->grads = m->grads.data;
        d->grads_len = m->grads.len;
        d->bf16 = m->bf16;
        pbp = m->parts;
        np = m->n_parts;
    }
    d->parts = one;
    d->n_parts = 1;
    if (np > 0) {
        cqr_data_part_t *parts = malloc(np * sizeof *parts);
        if (parts == NULL)
            return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
        cqr_call_keep(c, parts);
        for (size_t i = 0; i < np; i++)
            pb_part(&parts[i], pbp[i]->table, pbp[i]->ids, pbp[i]->n_ids,
                    pbp[i]->offsets, pbp[i]->n_offsets,
                    (int)pbp[i]->pooling);
        d->parts = parts;
        d->n_parts = np;
        d->multi = 1;
        d->mixed = one->table[0] != '\0' || one->n_ids > 0 ||
                   one->n_offsets > 0 || one->pooling != 0;
    }
    *out = d;
    return 0;
}

/* The operations a read-only server refuses. */
static int is_write(uint32_t op)
{
    switch (op) {
    case CQRPS__V1__REQUEST__OP_PUSH:
    case CQRPS__V1__REQUEST__OP_CREATE_TABLE:
    case CQRPS__V1__REQUEST__OP_DROP_TABLE:
    case CQRPS__V1__REQUEST__OP_CLUSTER:
    case CQRPS__V1__REQUEST__OP_CANCEL_CLUSTER:
    case CQRPS__V1__REQUEST__OP_CHECKPOINT:
    case CQRPS__V1__REQUEST__OP_UPDATE_OPTIMIZER:
    case CQRPS__V1__REQUEST__OP_EXPORT_TABLE:
    case CQRPS__V1__REQUEST__OP_COMPACT:
        return 1;
    default:
        return 0;
    }
}

static int dispatch(cqr_call_t *c)
{
    const Request *q = c->req;
    if (!c->sess->authed && c->op_case != CQRPS__V1__REQUEST__OP_HELLO)
        return cqr_call_fail(c, CQR_EAUTH,
                             "send Hello with a valid token first");
    if (c->strings_bad && c->bad_field != NULL)
        return cqr_call_fail(c, CQR_EINVAL, "string field '%s' holds a "
                             "NUL byte", c->bad_field);
    if (c->strings_bad)
        return cqr_call_fail(c, CQR_EINVAL, "request uses an encoding this "
                             "server does not accept (a key or length "
                             "over 5 bytes)");
    if (c->ctx->read_only && is_write(c->op_case))
        return cqr_call_fail(c, CQR_EREADONLY, "this server serves exports "
                             "read-only (--serve): lookups only");
    /* Only Lookup and Push come from the fast decoder (q == NULL). */
    if (c->op_case == CQRPS__V1__REQUEST__OP_LOOKUP ||
        c->op_case == CQRPS__V1__REQUEST__OP_PUSH) {
        cqr_data_req_t d;
        cqr_data_part_t one;
        const cqr_data_req_t *m = NULL;
        int rc = data_of(c, &d, &one, &m);
        if (rc != 0)
            return rc;
        return c->op_case == CQRPS__V1__REQUEST__OP_LOOKUP
                   ? cqr_op_lookup(c, m) : cqr_op_push(c, m);
    }
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
    case CQRPS__V1__REQUEST__OP_CANCEL_CLUSTER:
        return cqr_op_cancel_cluster(c, q->cancel_cluster);
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
    case CQRPS__V1__REQUEST__OP_EXPORT_TABLE:
        return cqr_op_export(c, q->export_table);
    case CQRPS__V1__REQUEST__OP_EXPORT_READ:
        return cqr_op_export_read(c, q->export_read);
    case CQRPS__V1__REQUEST__OP_COMPACT:
        return cqr_op_compact(c, q->compact);
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
    for (size_t i = 0; i < c->nentries; i++)
        if (c->entries[i] != NULL)
            cqr_entry_unref(c->entries[i]);
    free(c->entries);
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
    c->strings_bad = q->strings_bad;
    c->bad_field = q->bad_field;
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

/* The reply to a Lookup or Push of more than CQR_WIRE_MAX_PARTS parts,
 * refused before decoding; cqr_rpc_handle's return codes. */
static int too_many_parts(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                          cqr_buf_t *out, size_t parts, uint64_t id,
                          uint32_t op, unsigned *opi, int *status)
{
    *opi = op - 10u;
    atomic_fetch_add_explicit(&ctx->ctr.ops[*opi], 1, memory_order_relaxed);
    char msg[160];
    snprintf(msg, sizeof msg, "request carries %zu table parts; the limit "
             "is %u", parts, CQR_WIRE_MAX_PARTS);
    *status = CQR_ELIMIT;
    int rc = cqr_rpc_error(ctx, out, id, CQR_ELIMIT, msg);
    /* As run_call: an unauthenticated session gets one answer. */
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
    /* A TablePart costs a decoder far more memory than its bytes (a few
     * bytes of frame, a hundred of decoded message): bound them first. */
    uint64_t pid;
    uint32_t pop;
    size_t parts = cqr_wire_count_parts(body, len, &pid, &pop);
    if (parts > CQR_WIRE_MAX_PARTS)
        return too_many_parts(ctx, sess, out, parts, pid, pop, opi, status);
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

/* Encodes a deferred reply: resp (OK, its reply set) when err is 0, else
 * an error with msg; then hands it to the connection layer. */
static void deferred_finish(cqr_deferred_t *d, int err, Response *resp,
                            const char *msg)
{
    cqr_server_ctx_t *ctx = d->ctx;
    size_t mark;
    int rc = cqr_frame_begin(&d->reply, &mark);
    if (rc == 0 && err == 0) {
        resp->id = d->id;
        resp->status = CQRPS__V1__STATUS__OK;
        rc = pack(ctx, resp, &d->reply);
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

void cqr_rpc_checkpoint_done(cqr_deferred_t *d, int err,
                             const cqr_ckpt_info_t *info, const char *msg)
{
    Response resp = CQRPS__V1__RESPONSE__INIT;
    Cqrps__V1__CheckpointReply r;
    if (err == 0) {
        cqr_call_ckpt_reply(&r, info);
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_CHECKPOINT;
        resp.checkpoint = &r;
    }
    deferred_finish(d, err, &resp, msg);
}

void cqr_rpc_export_done(cqr_deferred_t *d, int err,
                         const cqr_export_res_t *res, const char *msg)
{
    Response resp = CQRPS__V1__RESPONSE__INIT;
    Cqrps__V1__ExportReply r;
    if (err == 0) {
        cqr_call_export_reply(&r, res);
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_EXPORTED;
        resp.exported = &r;
    }
    deferred_finish(d, err, &resp, msg);
}

void cqr_rpc_compact_done(cqr_deferred_t *d, int err,
                          const cqr_compact_res_t *res, const char *msg)
{
    Response resp = CQRPS__V1__RESPONSE__INIT;
    Cqrps__V1__CompactReply r;
    if (err == 0) {
        cqr_call_compact_reply(&r, res);
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_COMPACTED;
        resp.compacted = &r;
    }
    deferred_finish(d, err, &resp, msg);
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
