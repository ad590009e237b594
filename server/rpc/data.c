/* data.c -- the data operations, Lookup and Push (call.h).
 *
 * Both take their request in place (cqr_data_req_t, from either decoder)
 * and append their OK reply to the output themselves: a lookup's vectors
 * are written by the engine straight into the reply, a push's gradients
 * are read where they lie in the request frame. Neither goes through
 * protobuf-c on its way out.
 */
#include <assert.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "rpc/call.h"
#include "rpc/wire.h"

/* Room for the reply's fixed fields, so a reply's payload may use up to
 * max-frame-bytes minus this and the whole reply still fits a frame. */
#define REPLY_SLACK 256

/* A data request's table and sizes, once open_batch checked them. */
typedef struct batch {
    cqr_table_t *t;     /* the table (c->entry holds the reference) */
    uint32_t dim;       /* its dimension */
    uint64_t bytes;     /* the reply's vectors or the gradients: rows x
                           dim x 4 */
} batch_t;

/* Looks up the request's table (a reference in c->entry) and checks the
 * batch's sizes against the limits. */
static int open_batch(cqr_call_t *c, const cqr_data_req_t *m, batch_t *b)
{
    int rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    b->t = c->entry->table;
    b->dim = cqr_table_config(b->t)->dim;
    const cqr_config_t *cfg = c->ctx->cfg;
    if (m->n_ids > cfg->max_batch)
        return cqr_call_fail(c, CQR_ELIMIT, "%zu IDs in one request; the "
                             "limit is %" PRIu64 " (--max-batch)", m->n_ids,
                             cfg->max_batch);
    if (m->n_offsets > cfg->max_batch)
        return cqr_call_fail(c, CQR_ELIMIT, "%zu bags in one request; the "
                             "limit is %" PRIu64 " (--max-batch)",
                             m->n_offsets, cfg->max_batch);
    uint64_t rows = m->n_offsets > 0 ? m->n_offsets : m->n_ids;
    /* rows <= 2^30 and dim <= 4096: no overflow in 64 bits. */
    b->bytes = rows * (uint64_t)b->dim * sizeof(float);
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

int cqr_op_lookup(cqr_call_t *c, const cqr_data_req_t *m)
{
    batch_t b;
    int rc = open_batch(c, m, &b);
    if (rc != 0)
        return rc;
    if (b.bytes > c->ctx->cfg->max_frame_bytes - REPLY_SLACK)
        return cqr_call_fail(c, CQR_ELIMIT, "reply would carry %" PRIu64
                             " bytes of vectors, over --max-frame-bytes %"
                             PRIu64 "; split the batch", b.bytes,
                             c->ctx->cfg->max_frame_bytes);
    if ((unsigned)m->pooling > CQR_POOL_MEAN)
        return cqr_call_fail(c, CQR_EINVAL, "unknown pooling %d",
                             m->pooling);

    /* The OK reply is encoded straight into out: its header (wire.h),
     * then the vectors, which the engine writes in place -- no buffer of
     * their own, no copy by protobuf-c. out->len moves only once the
     * engine succeeded, so a failure leaves nothing behind. */
    cqr_buf_t *out = c->out;
    size_t start = out->len;
    size_t head = cqr_wire_lookup_head_len(c->id, b.dim, (size_t)b.bytes);
    size_t size = head + (size_t)b.bytes;
    assert(head <= CQR_WIRE_HEAD_MAX && size <= c->ctx->cfg->max_frame_bytes);
    if (cqr_buf_reserve(out, size + _Alignof(float) - 1) != 0)
        return cqr_call_fail(c, CQR_ENOMEM, "cannot allocate %" PRIu64
                             " bytes for the reply", b.bytes);
    size_t lag = 0;
    float *vec = NULL;
    if (b.bytes > 0)
        vec = place_vectors(out, start + head, b.bytes, &lag);
    if (m->n_offsets > 0)
        rc = cqr_table_lookup_pooled(b.t, m->ids, m->n_ids, m->offsets,
                                     m->n_offsets,
                                     (cqr_pooling_t)m->pooling, vec);
    else if (m->n_ids > 0)
        rc = cqr_table_lookup(b.t, m->ids, m->n_ids, vec);
    if (rc == CQR_EINVAL && m->n_offsets > 0)
        return cqr_call_fail(c, rc, "offsets must start at 0, never "
                             "decrease and stay within the %zu IDs",
                             m->n_ids);
    if (rc != 0)
        return cqr_call_fail(c, rc, "lookup failed: %s", cqr_strerror(rc));

    uint8_t *p = out->data + start;
    if (lag != 0)
        memmove(p + head, p + head + lag, (size_t)b.bytes);
    size_t w = cqr_wire_lookup_head(p, c->id, b.dim, (size_t)b.bytes);
    assert(w == head);
    (void)w;
    out->len = start + size;
    c->appended = 1;
    return 0;
}

int cqr_op_push(cqr_call_t *c, const cqr_data_req_t *m)
{
    batch_t b;
    int rc = open_batch(c, m, &b);
    if (rc != 0)
        return rc;
    if ((unsigned)m->pooling > CQR_POOL_MEAN)
        return cqr_call_fail(c, CQR_EINVAL, "unknown pooling %d",
                             m->pooling);
    if ((uint64_t)m->grads_len != b.bytes)
        return cqr_call_fail(c, CQR_EDIM, "grads has %zu bytes; %zu %s x "
                             "dim %" PRIu32 " x 4 = %" PRIu64 " expected",
                             m->grads_len,
                             m->n_offsets > 0 ? m->n_offsets : m->n_ids,
                             m->n_offsets > 0 ? "bags" : "IDs", b.dim,
                             b.bytes);

    /* The gradients are used where they lie -- in the request frame
     * (fast decoder) or in protobuf-c's copy -- when float-aligned; the
     * frame's layout decides, so otherwise they are copied once. */
    const float *g = NULL;
    if (((uintptr_t)m->grads & (_Alignof(float) - 1)) == 0) {
        g = (const float *)(const void *)m->grads;
    } else {
        float *copy = malloc(b.bytes);
        if (copy == NULL)
            return cqr_call_fail(c, CQR_ENOMEM, "cannot copy gradients");
        memcpy(copy, m->grads, b.bytes);
        cqr_call_keep(c, copy);
        g = copy;
    }
    if (m->n_offsets > 0)
        rc = cqr_table_push_pooled(b.t, m->ids, m->n_ids, m->offsets,
                                   m->n_offsets, (cqr_pooling_t)m->pooling,
                                   g);
    else if (m->n_ids > 0)
        rc = cqr_table_push(b.t, m->ids, g, m->n_ids);
    switch (rc) {
    case 0:
        break;
    case CQR_ENONFINITE:
        return cqr_call_fail(c, rc, "gradients contain NaN or Inf; "
                             "nothing applied");
    case CQR_EBUSY:
        return cqr_call_fail(c, rc, "a cluster phase's push log is full; "
                             "nothing applied, retry after the phase");
    case CQR_ELIMIT:
        return cqr_call_fail(c, rc, "push needs memory for new IDs of "
                             "table '%s' but the tables hold %" PRIu64
                             " of %" PRIu64 " bytes (--max-table-memory); "
                             "nothing applied", c->entry->name,
                             cqr_registry_bytes(c->ctx->reg),
                             c->ctx->cfg->max_table_memory);
    case CQR_EINVAL:
        if (m->n_offsets > 0)
            return cqr_call_fail(c, rc, "offsets must start at 0, never "
                                 "decrease and stay within the %zu IDs",
                                 m->n_ids);
        /* fall through */
    default:
        return cqr_call_fail(c, rc, "push failed: %s", cqr_strerror(rc));
    }
    /* The reply is small, but hand-encoding it keeps protobuf-c off the
     * push path entirely. */
    cqr_buf_t *out = c->out;
    if (cqr_buf_reserve(out, CQR_WIRE_HEAD_MAX) != 0)
        return cqr_call_fail(c, CQR_ENOMEM,
                             "out of memory encoding the reply");
    out->len += cqr_wire_push_reply(out->data + out->len, c->id, m->n_ids);
    c->appended = 1;
    /* A schedule that says a phase is due only tells the phase runner,
     * which begins the phase on its own thread (phase.h). */
    if (cqr_table_cluster_due(b.t))
        cqr_phases_due(c->ctx->phases, c->entry);
    return 0;
}
