/* wire.c -- hand codec for the hot path (see wire.h for why). */
#include "wire.h"

#include <string.h>

#include "cqrps.h"

/* Protobuf wire types. */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static size_t tag_put(unsigned char *p, uint32_t field, uint32_t wt)
{
    return cqr_varint_put(p, ((uint64_t)field << 3) | wt);
}

/* The packed bag offsets' bytes, each less base (single and multi-table
 * requests encode them alike). */
static size_t offsets_len(const uint32_t *offsets, size_t nbags,
                          uint32_t base)
{
    size_t len = 0;
    for (size_t b = 0; b < nbags; b++)
        len += cqr_varint_len((uint32_t)(offsets[b] - base));
    return len;
}

/* Largest tail after the IDs: offsets (5 bytes each at most) and the
 * fields around them. */
static size_t tail_max(size_t nbags)
{
    return 2 * CQR_VARINT_MAX + nbags * 5 + 2 * CQR_VARINT_MAX;
}

size_t cq_data_tail_max(const cq_data_req_t *r)
{
    return tail_max(r->nbags);
}

size_t cq_data_encode(const cq_data_req_t *r, unsigned char *head,
                      size_t *head_len, unsigned char *mid, size_t *mid_len,
                      unsigned char *tail, size_t *tail_len)
{
    /* Field numbers inside Lookup and Push. */
    const uint32_t f_offsets = r->push ? 4 : 3;
    const uint32_t f_pooling = r->push ? 5 : 4;
    const size_t ids_bytes = r->n * 8;
    const size_t olen =
        r->nbags ? offsets_len(r->offsets, r->nbags, r->offset_base) : 0;

    uint64_t sub = 1 + cqr_varint_len(r->table_len) + r->table_len +
                   1 + cqr_varint_len(ids_bytes) + ids_bytes;
    if (r->push)
        sub += 1 + cqr_varint_len(r->grads_bytes) + r->grads_bytes;
    if (r->nbags)
        sub += 1 + cqr_varint_len(olen) + olen;
    if (r->pooling)
        sub += 1 + cqr_varint_len(r->pooling);
    const uint32_t f_sub = r->push ? CQ_REQ_PUSH : CQ_REQ_LOOKUP;
    uint64_t body = 1 + cqr_varint_len(r->req_id) +
                    cqr_varint_len((uint64_t)f_sub << 3) +
                    cqr_varint_len(sub) + sub;
    if (body > UINT32_MAX)
        return 0;

    /* head: prefix, Request.id, sub-message header, table, ids header. */
    size_t h = 0;
    head[h++] = (unsigned char)(body >> 24);
    head[h++] = (unsigned char)(body >> 16);
    head[h++] = (unsigned char)(body >> 8);
    head[h++] = (unsigned char)body;
    h += tag_put(head + h, 1, WT_VARINT);
    h += cqr_varint_put(head + h, r->req_id);
    h += tag_put(head + h, f_sub, WT_LEN);
    h += cqr_varint_put(head + h, sub);
    h += tag_put(head + h, 1, WT_LEN);
    h += cqr_varint_put(head + h, r->table_len);
    memcpy(head + h, r->table, r->table_len);
    h += r->table_len;
    h += tag_put(head + h, 2, WT_LEN);
    h += cqr_varint_put(head + h, ids_bytes);
    *head_len = h;

    size_t m = 0;
    if (r->push) {
        m += tag_put(mid + m, 3, WT_LEN);
        m += cqr_varint_put(mid + m, r->grads_bytes);
    }
    *mid_len = m;

    size_t t = 0;
    if (r->nbags) {
        t += tag_put(tail + t, f_offsets, WT_LEN);
        t += cqr_varint_put(tail + t, olen);
        for (size_t b = 0; b < r->nbags; b++)
            t += cqr_varint_put(tail + t,
                               (uint32_t)(r->offsets[b] - r->offset_base));
    }
    if (r->pooling) {
        t += tag_put(tail + t, f_pooling, WT_VARINT);
        t += cqr_varint_put(tail + t, r->pooling);
    }
    *tail_len = t;
    return 4 + (size_t)body;
}

/* ---- Multi-table requests ---------------------------------------------- */

static size_t mpart_offsets_len(const cq_mpart_enc_t *p)
{
    return offsets_len(p->offsets, p->nbags, p->offset_base);
}

size_t cq_mpart_tail_max(const cq_mpart_enc_t *p)
{
    return tail_max(p->nbags);
}

uint64_t cq_mpart_len(const cq_mpart_enc_t *p)
{
    const uint64_t ids = (uint64_t)p->n * 8;
    uint64_t len = 0;
    if (p->table_len)
        len += 1 + cqr_varint_len(p->table_len) + p->table_len;
    if (p->n)
        len += 1 + cqr_varint_len(ids) + ids;
    if (p->nbags) {
        size_t ol = mpart_offsets_len(p);
        len += 1 + cqr_varint_len(ol) + ol;
    }
    if (p->pooling)
        len += 1 + cqr_varint_len(p->pooling);
    return len;
}

uint64_t cq_mpart_field_len(const cq_mpart_enc_t *p)
{
    uint64_t len = cq_mpart_len(p);
    return 1 + cqr_varint_len(len) + len;
}

size_t cq_mpart_head(unsigned char *b, uint32_t field,
                     const cq_mpart_enc_t *p)
{
    size_t h = tag_put(b, field, WT_LEN);
    h += cqr_varint_put(b + h, cq_mpart_len(p));
    if (p->table_len) {
        h += tag_put(b + h, 1, WT_LEN);
        h += cqr_varint_put(b + h, p->table_len);
        memcpy(b + h, p->table, p->table_len);
        h += p->table_len;
    }
    if (p->n) {
        h += tag_put(b + h, 2, WT_LEN);
        h += cqr_varint_put(b + h, (uint64_t)p->n * 8);
    }
    return h;
}

size_t cq_mpart_tail(unsigned char *b, const cq_mpart_enc_t *p)
{
    size_t t = 0;
    if (p->nbags) {
        t += tag_put(b + t, 3, WT_LEN);
        t += cqr_varint_put(b + t, mpart_offsets_len(p));
        for (size_t k = 0; k < p->nbags; k++)
            t += cqr_varint_put(b + t,
                                (uint32_t)(p->offsets[k] - p->offset_base));
    }
    if (p->pooling) {
        t += tag_put(b + t, 4, WT_VARINT);
        t += cqr_varint_put(b + t, p->pooling);
    }
    return t;
}

size_t cq_multi_head(unsigned char *b, int push, uint64_t req_id,
                     uint64_t sub, size_t grads_bytes)
{
    const uint32_t f_sub = push ? CQ_REQ_PUSH : CQ_REQ_LOOKUP;
    uint64_t body = 1 + cqr_varint_len(req_id) +
                    cqr_varint_len((uint64_t)f_sub << 3) +
                    cqr_varint_len(sub) + sub;
    if (body > UINT32_MAX)
        return 0;
    size_t h = 0;
    b[h++] = (unsigned char)(body >> 24);
    b[h++] = (unsigned char)(body >> 16);
    b[h++] = (unsigned char)(body >> 8);
    b[h++] = (unsigned char)body;
    h += tag_put(b + h, 1, WT_VARINT);
    h += cqr_varint_put(b + h, req_id);
    h += tag_put(b + h, f_sub, WT_LEN);
    h += cqr_varint_put(b + h, sub);
    if (push && grads_bytes) {
        h += tag_put(b + h, 3, WT_LEN);
        h += cqr_varint_put(b + h, grads_bytes);
    }
    return h;
}

size_t cq_multi_trailer(unsigned char *b, int push, int bf16)
{
    if (!bf16)
        return 0;
    size_t t = tag_put(b, push ? CQ_PUSH_BF16 : CQ_LOOKUP_BF16, WT_VARINT);
    b[t++] = 1;
    return t;
}

/* ---- Decoding ---------------------------------------------------------- */

/* A cursor over [p, end). */
typedef struct cur {
    const unsigned char *p;
    const unsigned char *end;
} cur_t;

static int get_varint(cur_t *c, uint64_t *v)
{
    return cqr_varint_get(&c->p, c->end, CQR_VARINT_MAX, v) ? 0
                                                            : CQRPS_EPROTO;
}

/* Reads one field's key and, for length-delimited fields, its body. Other
 * wire types are skipped and reported through *wt so callers can ignore
 * unknown fields (proto3 forward compatibility). */
static int get_field(cur_t *c, uint32_t *field, uint32_t *wt, uint64_t *v,
                     const unsigned char **body, size_t *body_len)
{
    uint64_t key;
    if (get_varint(c, &key) < 0)
        return CQRPS_EPROTO;
    *field = (uint32_t)(key >> 3);
    *wt = (uint32_t)(key & 7);
    if (*field == 0 || (key >> 3) > 0x1fffffff)
        return CQRPS_EPROTO;
    switch (*wt) {
    case WT_VARINT:
        return get_varint(c, v);
    case WT_I64:
        if (c->end - c->p < 8)
            return CQRPS_EPROTO;
        c->p += 8;
        return 0;
    case WT_I32:
        if (c->end - c->p < 4)
            return CQRPS_EPROTO;
        c->p += 4;
        return 0;
    case WT_LEN: {
        uint64_t len;
        if (get_varint(c, &len) < 0 || len > (uint64_t)(c->end - c->p))
            return CQRPS_EPROTO;
        *body = c->p;
        *body_len = (size_t)len;
        c->p += len;
        return 0;
    }
    default:
        return CQRPS_EPROTO; /* groups are not proto3 */
    }
}

int cq_resp_scan(const unsigned char *buf, size_t len, cq_resp_hdr_t *h)
{
    cur_t c = { buf, buf + len };
    memset(h, 0, sizeof(*h));
    h->msg = "";
    while (c.p < c.end) {
        uint32_t f, wt;
        uint64_t v = 0;
        const unsigned char *body = NULL;
        size_t blen = 0;
        if (get_field(&c, &f, &wt, &v, &body, &blen) < 0)
            return CQRPS_EPROTO;
        if (f == 1 && wt == WT_VARINT) {
            h->id = v;
        } else if (f == 2 && wt == WT_VARINT) {
            h->status = (uint32_t)v;
        } else if (f == 3 && wt == WT_LEN) {
            h->msg = (const char *)body;
            h->msg_len = blen;
        } else if (f >= 10 && f < 64 && wt == WT_LEN) {
            /* A oneof: the last one seen wins, as in protobuf. */
            h->reply_field = f;
            h->reply = body;
            h->reply_len = blen;
        }
    }
    return 0;
}

int cq_lookup_reply_decode(const unsigned char *buf, size_t len,
                           uint32_t *dim, const unsigned char **vec,
                           size_t *vec_len)
{
    cur_t c = { buf, buf + len };
    *dim = 0;
    *vec = buf;
    *vec_len = 0;
    while (c.p < c.end) {
        uint32_t f, wt;
        uint64_t v = 0;
        const unsigned char *body = NULL;
        size_t blen = 0;
        if (get_field(&c, &f, &wt, &v, &body, &blen) < 0)
            return CQRPS_EPROTO;
        if (f == 1 && wt == WT_VARINT) {
            if (v > UINT32_MAX)
                return CQRPS_EPROTO;
            *dim = (uint32_t)v;
        } else if (f == 2 && wt == WT_LEN) {
            *vec = body;
            *vec_len = blen;
        }
    }
    return 0;
}

int cq_lookup_reply_scan(const unsigned char *buf, size_t len,
                         cq_lookup_reply_t *r)
{
    cur_t c = { buf, buf + len };
    memset(r, 0, sizeof(*r));
    r->vec = buf;
    r->dims = buf;
    while (c.p < c.end) {
        uint32_t f, wt;
        uint64_t v = 0;
        const unsigned char *body = NULL;
        size_t blen = 0;
        if (get_field(&c, &f, &wt, &v, &body, &blen) < 0)
            return CQRPS_EPROTO;
        if (f == 1 && wt == WT_VARINT) {
            if (v > UINT32_MAX)
                return CQRPS_EPROTO;
            r->dim = (uint32_t)v;
        } else if (f == 2 && wt == WT_LEN) {
            r->vec = body;
            r->vec_len = blen;
        } else if (f == 3 && wt == WT_LEN) {
            r->dims = body;
            r->dims_len = blen;
        } else if (f == 4 && wt == WT_VARINT) {
            r->bf16 = v != 0;
        }
    }
    return 0;
}

int cq_push_reply_decode(const unsigned char *buf, size_t len,
                         uint64_t *applied)
{
    cur_t c = { buf, buf + len };
    *applied = 0;
    while (c.p < c.end) {
        uint32_t f, wt;
        uint64_t v = 0;
        const unsigned char *body = NULL;
        size_t blen = 0;
        if (get_field(&c, &f, &wt, &v, &body, &blen) < 0)
            return CQRPS_EPROTO;
        if (f == 1 && wt == WT_VARINT)
            *applied = v;
    }
    return 0;
}
