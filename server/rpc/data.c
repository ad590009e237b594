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
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "proto/bf16.h"
#include "rpc/call.h"
#include "rpc/wire.h"

/* Room for the reply's fixed fields, so a reply's payload may use up to
 * max-frame-bytes minus this and the whole reply still fits a frame. */
#define REPLY_SLACK 256

/* A request's parts, opened: each part's table (a reference in c->entry
 * for a single-table request, in c->entries for a multi-table one), as
 * the engine's parts, with its dim, and the sizes of the whole. */
typedef struct batch {
    cqr_part_t *pp;        /* n engine parts (out / grads set later) */
    uint32_t *dims;        /* n dims */
    size_t n;
    uint64_t vals;         /* floats of every part's vectors or
                              gradients (rows x dim, summed) */
    uint64_t ids;          /* IDs of every part */
    cqr_part_t one;        /* storage for a single-table request */
    uint32_t one_dim;
} batch_t;

/* Sets the reply message for part i of m, prefixed with "part i: " in a
 * multi-table request, and returns err. */
static int part_fail(cqr_call_t *c, const cqr_data_req_t *m, size_t i,
                     int err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int part_fail(cqr_call_t *c, const cqr_data_req_t *m, size_t i,
                     int err, const char *fmt, ...)
{
    char text[sizeof c->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (m->multi)
        return cqr_call_fail(c, err, "part %zu: %s", i, text);
    return cqr_call_fail(c, err, "%s", text);
}

/* Looks up part i's table into *e and checks its pooling. */
static int open_part(cqr_call_t *c, const cqr_data_req_t *m, size_t i,
                     cqr_entry_t **e)
{
    const cqr_data_part_t *d = &m->parts[i];
    int rc = cqr_call_table(c, d->table);
    if (rc != 0) {
        if (!m->multi)
            return rc;
        char msg[sizeof c->msg];
        snprintf(msg, sizeof msg, "%s", c->msg);
        return part_fail(c, m, i, rc, "%s", msg);
    }
    *e = c->entry;
    if (m->multi)
        c->entry = NULL; /* the reference moves to c->entries[i] */
    if ((unsigned)d->pooling > CQR_POOL_MEAN)
        return part_fail(c, m, i, CQR_EINVAL, "unknown pooling %d",
                         d->pooling);
    return 0;
}

/* Opens every part of m into *b (tables, dims, sizes) and checks the
 * request's sizes against the limits. */
static int open_batch(cqr_call_t *c, const cqr_data_req_t *m, batch_t *b)
{
    const cqr_config_t *cfg = c->ctx->cfg;
    memset(b, 0, sizeof *b);
    if (m->mixed)
        return cqr_call_fail(c, CQR_EINVAL, "a request carries one table "
                             "(table, ids, offsets, pooling) or parts, not "
                             "both");
    if (m->n_parts > CQR_WIRE_MAX_PARTS)
        return cqr_call_fail(c, CQR_ELIMIT, "request carries %zu table "
                             "parts; the limit is %u", m->n_parts,
                             CQR_WIRE_MAX_PARTS);
    b->n = m->n_parts;
    b->pp = &b->one;
    b->dims = &b->one_dim;
    if (m->multi) {
        b->pp = calloc(b->n, sizeof *b->pp);
        b->dims = calloc(b->n, sizeof *b->dims);
        c->entries = calloc(b->n, sizeof *c->entries);
        if (b->pp)
            cqr_call_keep(c, b->pp);
        if (b->dims)
            cqr_call_keep(c, b->dims);
        if (!b->pp || !b->dims || !c->entries)
            return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
        c->nentries = b->n;
    }
    uint64_t bags = 0;
    for (size_t i = 0; i < b->n; i++) {
        const cqr_data_part_t *d = &m->parts[i];
        cqr_entry_t *e = NULL;
        int rc = open_part(c, m, i, &e);
        if (m->multi)
            c->entries[i] = e;
        if (rc != 0)
            return rc;
        cqr_part_t *p = &b->pp[i];
        p->t = e->table;
        p->ids = d->ids;
        p->n = d->n_ids;
        if (d->n_offsets > 0) {
            p->offsets = d->offsets;
            p->nbags = d->n_offsets;
            p->pool = (cqr_pooling_t)d->pooling;
        }
        b->dims[i] = cqr_table_config(p->t)->dim;
        b->ids += d->n_ids;
        bags += d->n_offsets;
        /* rows <= 2^30 and dim <= 4096 per part, parts <= 1024: no
         * overflow in 64 bits. */
        b->vals += (uint64_t)(d->n_offsets > 0 ? d->n_offsets : d->n_ids) *
                   b->dims[i];
    }
    const char *all = m->multi ? " (all parts)" : "";
    if (b->ids > cfg->max_batch)
        return cqr_call_fail(c, CQR_ELIMIT, "%" PRIu64 " IDs in one "
                             "request%s; the limit is %" PRIu64
                             " (--max-batch)", b->ids, all, cfg->max_batch);
    if (bags > cfg->max_batch)
        return cqr_call_fail(c, CQR_ELIMIT, "%" PRIu64 " bags in one "
                             "request%s; the limit is %" PRIu64
                             " (--max-batch)", bags, all, cfg->max_batch);
    return 0;
}

/* The table of part i (for messages). */
static const char *part_table(const cqr_call_t *c, size_t i)
{
    return c->entries != NULL ? c->entries[i]->name : c->entry->name;
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
    const uint64_t fbytes = b.vals * sizeof(float); /* what the engine
                                                       writes */
    const uint64_t bytes = m->bf16 ? b.vals * 2 : fbytes; /* on the wire */
    const uint32_t dim = m->multi ? 0 : b.dims[0];
    const size_t tail = cqr_wire_lookup_tail_len(b.dims, m->multi ? b.n : 0,
                                                 m->bf16);
    if (bytes + tail > c->ctx->cfg->max_frame_bytes - REPLY_SLACK)
        return cqr_call_fail(c, CQR_ELIMIT, "reply would carry %" PRIu64
                             " bytes of vectors, over --max-frame-bytes %"
                             PRIu64 "; split the batch", bytes,
                             c->ctx->cfg->max_frame_bytes);

    /* The OK reply is encoded straight into out: its header (wire.h),
     * the vectors, which the engine writes in place -- no buffer of their
     * own, no copy by protobuf-c -- and the dims (multi-table) and bf16
     * fields. bfloat16 vectors are written as float32 first and narrowed
     * in place. out->len moves only once the engine succeeded, so a
     * failure leaves nothing behind. */
    cqr_buf_t *out = c->out;
    size_t start = out->len;
    size_t head = cqr_wire_lookup_head_len(c->id, dim, (size_t)bytes, tail);
    size_t size = head + (size_t)bytes + tail;
    assert(head <= CQR_WIRE_HEAD_MAX);
    if (cqr_buf_reserve(out, head + (size_t)fbytes + tail +
                                 _Alignof(float) - 1) != 0)
        return cqr_call_fail(c, CQR_ENOMEM, "cannot allocate %" PRIu64
                             " bytes for the reply", fbytes);
    size_t lag = 0;
    float *vec = NULL;
    if (fbytes > 0)
        vec = place_vectors(out, start + head, fbytes, &lag);
    size_t at = 0; /* floats before part i */
    for (size_t i = 0; i < b.n && vec != NULL; i++) {
        b.pp[i].out = vec + at;
        at += (b.pp[i].offsets ? b.pp[i].nbags : b.pp[i].n) * b.dims[i];
    }
    size_t bad = 0;
    rc = cqr_tables_lookup(b.pp, b.n, &bad);
    if (rc == CQR_EINVAL && b.pp[bad].offsets)
        return part_fail(c, m, bad, rc, "offsets must start at 0, never "
                         "decrease and stay within the %zu IDs",
                         b.pp[bad].n);
    if (rc != 0)
        return part_fail(c, m, bad, rc, "lookup failed: %s",
                         cqr_strerror(rc));

    uint8_t *p = out->data + start;
    if (m->bf16 && fbytes > 0)
        cqr_bf16_narrow(p + head + lag, (size_t)b.vals, p + head + lag);
    if (lag != 0)
        memmove(p + head, p + head + lag, (size_t)bytes);
    size_t w = cqr_wire_lookup_head(p, c->id, dim, (size_t)bytes, tail);
    assert(w == head);
    w = cqr_wire_lookup_tail(p + head + bytes, b.dims, m->multi ? b.n : 0,
                             m->bf16);
    assert(w == tail);
    (void)w;
    out->len = start + size;
    c->appended = 1;
    return 0;
}

/* The gradients of the request as float32, float-aligned: where they lie
 * when they can be used in place, else a copy (widened from bfloat16
 * when the request says so). Checks their size against the parts'. */
static int push_grads(cqr_call_t *c, const cqr_data_req_t *m,
                      const batch_t *b, const float **g)
{
    const uint64_t esize = m->bf16 ? 2 : sizeof(float);
    if ((uint64_t)m->grads_len != b->vals * esize) {
        if (!m->multi)
            return cqr_call_fail(c, CQR_EDIM, "grads has %zu bytes; %zu %s "
                                 "x dim %" PRIu32 " x %" PRIu64 " = %"
                                 PRIu64 " expected", m->grads_len,
                                 b->pp[0].offsets ? b->pp[0].nbags
                                                  : b->pp[0].n,
                                 b->pp[0].offsets ? "bags" : "IDs",
                                 b->dims[0], esize, b->vals * esize);
        /* Name the first part whose gradients are not all there. */
        uint64_t upto = 0;
        for (size_t i = 0; i < b->n; i++) {
            const cqr_part_t *p = &b->pp[i];
            size_t rows = p->offsets ? p->nbags : p->n;
            upto += (uint64_t)rows * b->dims[i] * esize;
            if (upto > m->grads_len)
                return part_fail(c, m, i, CQR_EDIM, "grads has %zu bytes; "
                                 "this part's %zu %s x dim %" PRIu32
                                 " x %" PRIu64 " run past them (parts 0..%zu "
                                 "need %" PRIu64 ")", m->grads_len, rows,
                                 p->offsets ? "bags" : "IDs", b->dims[i],
                                 esize, i, upto);
        }
        return part_fail(c, m, b->n - 1, CQR_EDIM, "grads has %zu bytes; "
                         "%" PRIu64 " are left over after the last part",
                         m->grads_len, m->grads_len - b->vals * esize);
    }
    /* The gradients are used where they lie -- in the request frame
     * (fast decoder) or in protobuf-c's copy -- when float32 and
     * float-aligned; the frame's layout decides, so otherwise they are
     * copied once. */
    if (!m->bf16 && ((uintptr_t)m->grads & (_Alignof(float) - 1)) == 0) {
        *g = (const float *)(const void *)m->grads;
        return 0;
    }
    float *copy = malloc(b->vals ? b->vals * sizeof(float) : 1);
    if (copy == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "cannot copy gradients");
    if (m->bf16)
        cqr_bf16_widen(m->grads, (size_t)b->vals, copy);
    else
        memcpy(copy, m->grads, m->grads_len);
    cqr_call_keep(c, copy);
    *g = copy;
    return 0;
}

int cqr_op_push(cqr_call_t *c, const cqr_data_req_t *m)
{
    batch_t b;
    int rc = open_batch(c, m, &b);
    if (rc != 0)
        return rc;
    const float *g = NULL;
    rc = push_grads(c, m, &b, &g);
    if (rc != 0)
        return rc;
    size_t at = 0; /* floats before part i */
    for (size_t i = 0; i < b.n && g != NULL; i++) {
        b.pp[i].grads = g + at;
        at += (b.pp[i].offsets ? b.pp[i].nbags : b.pp[i].n) * b.dims[i];
    }
    size_t bad = 0;
    rc = cqr_tables_push(b.pp, b.n, &bad);
    switch (rc) {
    case 0:
        break;
    case CQR_ENONFINITE:
        return part_fail(c, m, bad, rc, "gradients contain NaN or Inf, "
                         "or their step could make a stored value NaN, "
                         "Inf or too large; nothing applied");
    case CQR_EBUSY:
        return part_fail(c, m, bad, rc, "a cluster phase's push log is "
                         "full; nothing applied, retry after the phase");
    case CQR_ELIMIT:
        return part_fail(c, m, bad, rc, "push needs %" PRIu64 " more "
                         "bytes for new IDs of table '%s' but the tables "
                         "hold %" PRIu64 " of %" PRIu64 " bytes "
                         "(--max-table-memory); nothing applied",
                         cqr_table_refused_bytes(), part_table(c, bad),
                         cqr_registry_bytes(c->ctx->reg),
                         c->ctx->cfg->max_table_memory);
    case CQR_EINVAL:
        if (b.pp[bad].offsets)
            return part_fail(c, m, bad, rc, "offsets must start at 0, never "
                             "decrease and stay within the %zu IDs",
                             b.pp[bad].n);
        /* fall through */
    default:
        return part_fail(c, m, bad, rc, "push failed: %s", cqr_strerror(rc));
    }
    /* The reply is small, but hand-encoding it keeps protobuf-c off the
     * push path entirely. */
    cqr_buf_t *out = c->out;
    if (cqr_buf_reserve(out, CQR_WIRE_HEAD_MAX) != 0)
        return cqr_call_fail(c, CQR_ENOMEM,
                             "out of memory encoding the reply");
    out->len += cqr_wire_push_reply(out->data + out->len, c->id, b.ids);
    c->appended = 1;
    /* A schedule that says a phase is due only tells the phase runner,
     * which begins the phase on its own thread (phase.h). Not while the
     * table compacts (the engine would refuse the begin): the first push
     * after the compaction finds the phase still due. */
    for (size_t i = 0; i < b.n; i++) {
        cqr_entry_t *e = c->entries != NULL ? c->entries[i] : c->entry;
        if (cqr_table_cluster_due(e->table) &&
            !cqr_compacts_busy(c->ctx->compacts, e->uid))
            cqr_phases_due(c->ctx->phases, e);
    }
    return 0;
}
