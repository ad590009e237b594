/* op.c -- operations, reply delivery, the error table and the table-dim
 * cache: the bottom of libcqrps (see op.h for the layers and the model).
 */
#include "op.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cqrps.pb-c.h"
#include "proto/bf16.h"
#include "proto/varint.h"

/* Table-dim cache entries kept per client before it is emptied. */
#define CQ_DIMS_MAX 4096

uint64_t cq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- Errors ------------------------------------------------------------ */

const char *cqrps_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define CQ_MSG_(name, num, wire, msg)                                        \
    case CQRPS_E##name:                                                      \
        return msg;
        CQRPS_ERRNO_MAP(CQ_MSG_)
#undef CQ_MSG_
    default:
        return "unknown error";
    }
}

const char *cqrps_errname(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define CQ_NAME_(name, num, wire, msg)                                       \
    case CQRPS_E##name:                                                      \
        return wire;
        CQRPS_ERRNO_MAP(CQ_NAME_)
#undef CQ_NAME_
    default:
        return "UNKNOWN";
    }
}

/* ---- Operations -------------------------------------------------------- */

cq_op_t *cq_op_new(cq_okind_t kind, const char *table, uint32_t nshards)
{
    cq_op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->kind = kind;
    if (table)
        snprintf(op->table, sizeof(op->table), "%s", table);
    if (kind == CQ_O_RPC) {
        op->resp = calloc(nshards, sizeof(*op->resp));
        if (!op->resp) {
            free(op);
            return NULL;
        }
        op->nresp = nshards;
    }
    return op;
}

void cq_op_free(cq_op_t *op)
{
    if (!op)
        return;
    assert(op->outstanding == 0);
    for (uint32_t i = 0; op->resp && i < op->nresp; i++)
        if (op->resp[i])
            cqrps__v1__response__free_unpacked(op->resp[i], NULL);
    free(op->resp);
    free(op->bag_div);
    for (size_t i = 0; i < op->nowned; i++)
        free(op->owned[i]);
    free(op->owned);
    free(op->parts);
    for (size_t i = 0; i < sizeof(op->scratch) / sizeof(op->scratch[0]); i++)
        free(op->scratch[i]);
    free(op);
}

void *cq_op_own(cq_op_t *op, void *p)
{
    if (!p)
        return NULL;
    if (op->nowned == op->owned_cap) {
        size_t ncap = op->owned_cap ? 2 * op->owned_cap : 8;
        void **n = realloc(op->owned, ncap * sizeof(*n));
        if (!n) {
            free(p);
            return NULL;
        }
        op->owned = n;
        op->owned_cap = ncap;
    }
    op->owned[op->nowned++] = p;
    return p;
}

void cq_op_error(cq_op_t *op, int err, const char *fmt, ...)
{
    if (op->err)
        return;
    op->err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->msg, sizeof(op->msg), fmt, ap);
    va_end(ap);
}

void cq_op_abandon(cq_op_t *op, int err, const char *msg)
{
    cq_op_error(op, err, "%s", msg);
    assert(op->outstanding > 0);
    op->outstanding--;
}

/* ---- Table-dim cache --------------------------------------------------- */

void cq_dims_put(cq_dims_t *d, const char *name, uint32_t dim)
{
    for (size_t i = 0; i < d->n; i++) {
        if (strcmp(d->v[i].name, name) == 0) {
            d->v[i].dim = dim;
            return;
        }
    }
    if (d->n >= CQ_DIMS_MAX)
        d->n = 0; /* a client that cycles through many tables */
    if (d->n == d->cap) {
        size_t ncap = d->cap ? d->cap * 2 : 8;
        cq_dim_t *nd = realloc(d->v, ncap * sizeof(*nd));
        if (!nd)
            return; /* a cache: failing to remember is harmless */
        d->v = nd;
        d->cap = ncap;
    }
    snprintf(d->v[d->n].name, sizeof(d->v[d->n].name), "%s", name);
    d->v[d->n].dim = dim;
    d->n++;
}

void cq_dims_drop(cq_dims_t *d, const char *name)
{
    for (size_t i = 0; i < d->n; i++) {
        if (strcmp(d->v[i].name, name) == 0) {
            d->v[i] = d->v[--d->n];
            return;
        }
    }
}

int cq_dims_get(const cq_dims_t *d, const char *name, uint32_t *dim)
{
    for (size_t i = 0; i < d->n; i++) {
        if (strcmp(d->v[i].name, name) == 0) {
            *dim = d->v[i].dim;
            return 1;
        }
    }
    return 0;
}

void cq_dims_free(cq_dims_t *d)
{
    free(d->v);
    memset(d, 0, sizeof(*d));
}

/* ---- Reply delivery ---------------------------------------------------- */

static void deliver_vectors(const cq_origin_t *from, const cq_pending_t *p,
                            const cq_resp_hdr_t *h)
{
    cq_op_t *op = p->op;
    uint32_t dim;
    const unsigned char *vec;
    size_t vlen;
    if (h->reply_field != CQ_RESP_LOOKUP ||
        cq_lookup_reply_decode(h->reply, h->reply_len, &dim, &vec, &vlen) <
            0) {
        cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                    from->addr);
        return;
    }
    if (dim != op->dim) {
        cq_dims_drop(from->dims, op->table);
        cq_op_error(op, CQRPS_EDIM,
                    "table %s has dim %u on %s, the client expected %u "
                    "(dropped and created again?)",
                    op->table, dim, from->addr, op->dim);
        return;
    }
    const size_t row = (size_t)dim * sizeof(float);
    if (vlen != p->count * row) {
        cq_op_error(op, CQRPS_EPROTO,
                    "lookup reply from %s carries %zu bytes, expected %zu",
                    from->addr, vlen, p->count * row);
        return;
    }
    float *out = op->out;
    if (op->accumulate) {
        float *dst = out + p->base * dim;
        for (size_t i = 0; i < p->count * dim; i++) {
            float v;
            memcpy(&v, vec + i * sizeof(float), sizeof(v));
            dst[i] += v;
        }
    } else if (p->pos) {
        for (size_t j = 0; j < p->count; j++)
            memcpy(out + (size_t)p->pos[j] * dim, vec + j * row, row);
    } else {
        memcpy(out + p->base * dim, vec, vlen);
    }
}

/* Rows (vectors) of a multi-table reply into the operation's parts:
 * segment by segment, float32 or bfloat16, copied, scattered (sharded
 * plain parts) or added (sharded pooled parts). The reply was checked. */
static void mlookup_copy(cq_op_t *op, const cq_mseg_t *sg,
                         const unsigned char *v, int bf16)
{
    const cq_mpart_t *pt = &op->parts[sg->part];
    const size_t dim = pt->dim, esize = bf16 ? 2 : sizeof(float);
    const size_t row = dim * esize;
    if (pt->accumulate) {
        float *dst = pt->out + sg->base * dim;
        for (size_t i = 0; i < sg->count * dim; i++) {
            float x;
            if (bf16) {
                uint16_t b;
                memcpy(&b, v + 2 * i, sizeof(b));
                x = cqr_bf16_to_float(b);
            } else {
                memcpy(&x, v + 4 * i, sizeof(x));
            }
            dst[i] += x;
        }
    } else if (sg->pos) {
        for (size_t j = 0; j < sg->count; j++) {
            float *dst = pt->out + (size_t)sg->pos[j] * dim;
            if (bf16)
                cqr_bf16_widen(v + j * row, dim, dst);
            else
                memcpy(dst, v + j * row, row);
        }
    } else if (bf16) {
        cqr_bf16_widen(v, sg->count * dim, pt->out + sg->base * dim);
    } else {
        memcpy(pt->out + sg->base * dim, v, sg->count * row);
    }
}

/* Checks a multi-table lookup reply's fields r (scanned) against p's
 * segments: one dim per segment (the dims field, or a single-table
 * reply's dim for a request of one segment sent to a server without
 * parts), each the part's, and vectors of exactly their size. 0 if they
 * match; else the operation gets the error and -1. */
static int mlookup_check(const cq_origin_t *from, const cq_pending_t *p,
                         const cq_lookup_reply_t *r)
{
    cq_op_t *op = p->op;
    if (r->dims_len == 0 && p->nsegs != 1) {
        cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                    from->addr);
        return -1;
    }
    const unsigned char *dp = r->dims, *dend = r->dims + r->dims_len;
    const size_t esize = r->bf16 ? 2 : sizeof(float);
    size_t total = 0;
    int wrong = 0;
    for (size_t k = 0; k < p->nsegs; k++) {
        const cq_mpart_t *pt = &op->parts[p->segs[k].part];
        uint64_t dim = r->dim;
        if (r->dims_len && !cqr_varint_get(&dp, dend, 5, &dim)) {
            cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                        from->addr);
            return -1;
        }
        if (dim != pt->dim) {
            /* Every stale dim is forgotten, so one retry suffices; the
             * error names the first. */
            cq_dims_drop(from->dims, pt->table);
            if (!wrong++)
                cq_op_error(op, CQRPS_EDIM,
                            "part %u: table %s has dim %llu on %s, the "
                            "client expected %u (dropped and created "
                            "again?)",
                            (unsigned)p->segs[k].part, pt->table,
                            (unsigned long long)dim, from->addr, pt->dim);
        }
        total += p->segs[k].count * pt->dim * esize;
    }
    if (wrong)
        return -1;
    if (dp != dend || total != r->vec_len) {
        cq_op_error(op, CQRPS_EPROTO,
                    "lookup reply from %s carries %zu bytes, expected %zu",
                    from->addr, r->vec_len, total);
        return -1;
    }
    return 0;
}

/* A multi-table lookup's reply: checked, then its vectors copied into
 * the parts, segment by segment. */
static void deliver_mlookup(const cq_origin_t *from, const cq_pending_t *p,
                            const cq_resp_hdr_t *h)
{
    cq_op_t *op = p->op;
    cq_lookup_reply_t r;
    if (h->reply_field != CQ_RESP_LOOKUP ||
        cq_lookup_reply_scan(h->reply, h->reply_len, &r) < 0) {
        cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                    from->addr);
        return;
    }
    if (mlookup_check(from, p, &r) < 0)
        return;
    const size_t esize = r.bf16 ? 2 : sizeof(float);
    const unsigned char *v = r.vec;
    for (size_t k = 0; k < p->nsegs; k++) {
        mlookup_copy(op, &p->segs[k], v, r.bf16);
        v += p->segs[k].count * op->parts[p->segs[k].part].dim * esize;
    }
}

size_t cq_mlookup_direct_bytes(const cq_pending_t *p)
{
    const cq_op_t *op = p->op;
    if (p->kind != CQ_P_MLOOKUP || op->err)
        return 0;
    size_t total = 0;
    for (size_t k = 0; k < p->nsegs; k++) {
        const cq_mseg_t *sg = &p->segs[k];
        const cq_mpart_t *pt = &op->parts[sg->part];
        if (sg->pos || pt->accumulate)
            return 0;
        total += sg->count * pt->dim * sizeof(float);
    }
    return total;
}

unsigned char *cq_mlookup_direct_dst(const cq_pending_t *p, size_t k,
                                     size_t *len)
{
    const cq_mseg_t *sg = &p->segs[k];
    const cq_mpart_t *pt = &p->op->parts[sg->part];
    *len = sg->count * pt->dim * sizeof(float);
    return (unsigned char *)(pt->out + sg->base * pt->dim);
}

void cq_deliver_mlookup_direct(const cq_origin_t *from, const cq_pending_t *p,
                               uint32_t dim, size_t vec_len,
                               const unsigned char *tail, size_t tail_len)
{
    cq_op_t *op = p->op;
    assert(op->outstanding > 0);
    cq_lookup_reply_t r;
    if (cq_lookup_reply_scan(tail, tail_len, &r) < 0 || r.vec_len != 0 ||
        r.bf16) {
        cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                    from->addr);
    } else {
        if (r.dim == 0)
            r.dim = dim;
        r.vec_len = vec_len;
        (void)mlookup_check(from, p, &r);
    }
    op->outstanding--;
}

/* A message "part K: ..." of a multi-table request names the request's
 * part K: *k gets it and *rest what follows; 0 if m is not such. */
static int part_prefix(const char *m, int mlen, size_t *k, int *rest)
{
    int i = 5;
    if (mlen < 8 || memcmp(m, "part ", 5) != 0)
        return 0;
    size_t v = 0;
    while (i < mlen && m[i] >= '0' && m[i] <= '9' && v < 100000)
        v = v * 10 + (size_t)(m[i++] - '0');
    if (i == 5 || i + 1 >= mlen || m[i] != ':' || m[i + 1] != ' ')
        return 0;
    *k = v;
    *rest = i + 2;
    return 1;
}

/* A reply with a non-OK status: the server's message (or the code's).
 * In a multi-table request the part the server names is the request's:
 * the message names the caller's part instead. */
static void deliver_status(const cq_origin_t *from, const cq_pending_t *p,
                           const cq_resp_hdr_t *h)
{
    cq_op_t *op = p->op;
    int err = h->status > 0x7fff ? CQRPS_EINTERNAL : -(int)h->status;
    int mlen = h->msg_len > 400 ? 400 : (int)h->msg_len;
    const char *m = h->msg;
    if (mlen == 0) {
        m = cqrps_strerror(err);
        mlen = (int)strlen(m);
    }
    char buf[CQ_ERRMSG_MAX];
    size_t k;
    int rest;
    const cq_mpart_t *named = NULL;
    if (p->segs && part_prefix(m, mlen, &k, &rest) && k < p->nsegs) {
        named = &op->parts[p->segs[k].part];
        snprintf(buf, sizeof(buf), "part %u: %.*s",
                 (unsigned)p->segs[k].part, mlen - rest, m + rest);
        m = buf;
        mlen = (int)strlen(buf);
    }
    if (from->sharded)
        cq_op_error(op, err, "%s: %.*s", from->addr, mlen, m);
    else
        cq_op_error(op, err, "%.*s", mlen, m);
    if (err != CQRPS_EDIM && err != CQRPS_ENOTFOUND)
        return;
    if (op->table[0])
        cq_dims_drop(from->dims, op->table);
    for (size_t i = 0; i < op->nparts; i++)
        if (!named || named == &op->parts[i])
            cq_dims_drop(from->dims, op->parts[i].table);
}

/* An RPC reply, unpacked by protobuf-c into the shard's slot. */
static void deliver_rpc(const cq_origin_t *from, cq_op_t *op,
                        const unsigned char *body, size_t len)
{
    Cqrps__V1__Response *r = cqrps__v1__response__unpack(NULL, len, body);
    if (!r) {
        cq_op_error(op, CQRPS_EPROTO, "undecodable reply from %s",
                    from->addr);
        return;
    }
    assert(from->shard < op->nresp);
    if (op->resp[from->shard])
        cqrps__v1__response__free_unpacked(op->resp[from->shard], NULL);
    op->resp[from->shard] = r;
}

void cq_deliver(const cq_origin_t *from, const cq_pending_t *p,
                const cq_resp_hdr_t *h, const unsigned char *body,
                size_t len)
{
    cq_op_t *op = p->op;
    assert(op->outstanding > 0);
    if (h->status != 0) {
        deliver_status(from, p, h);
    } else {
        switch (p->kind) {
        case CQ_P_LOOKUP:
        case CQ_P_POOLED:
            if (!op->err)
                deliver_vectors(from, p, h);
            break;
        case CQ_P_MLOOKUP:
            if (!op->err)
                deliver_mlookup(from, p, h);
            break;
        case CQ_P_PUSH: {
            uint64_t applied;
            if (h->reply_field != CQ_RESP_PUSH ||
                cq_push_reply_decode(h->reply, h->reply_len, &applied) < 0)
                cq_op_error(op, CQRPS_EPROTO, "malformed push reply from %s",
                            from->addr);
            break;
        }
        case CQ_P_RPC:
            deliver_rpc(from, op, body, len);
            break;
        }
    }
    op->outstanding--;
}
