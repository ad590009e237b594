/* multi.c -- multi-table lookups and pushes (cqrps.h, "Several tables in
 * one request"). The same layer as data.c, whose shard split it shares.
 *
 * A call is cut into segments: each part is split per shard (as data.c
 * splits a single-table call), and each shard's share of a part into
 * chunks that respect max_batch and the frame limit (a pooled part only
 * between bags). A connection's segments are then packed, in part order,
 * into as few requests as the server's limits allow (its max_batch in
 * total, its frame limit, its part limit): normally one request per
 * shard. Every request is queued, all are written, and the replies are
 * delivered segment by segment (op.c: deliver_mlookup) into the parts'
 * outputs; a server without parts (max_parts 0 in Hello) gets each
 * segment as a single-table request instead.
 *
 * IDs (and float32 gradients of an unsharded call) go to the socket from
 * the caller's arrays; sharded calls copy them in shard order first, and
 * bfloat16 gradients are narrowed into the operation's buffers.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "proto/bf16.h"

/* Bytes of a frame kept free for the envelope and the headers. */
#define MQ_FRAME_SLACK 512
/* Frame size assumed before a server said its limit. */
#define MQ_DEFAULT_FRAME (16u << 20)
/* Bytes a part costs in a request beyond its payload (key, lengths,
 * pooling; the name is added). */
#define MQ_PART_OVERHEAD (4 * CQR_VARINT_MAX)

/* One part's share on one connection: the whole part when unsharded. */
typedef struct slice {
    const uint64_t *ids;      /* n IDs */
    size_t n;
    const uint32_t *offs;     /* pooled: nbags bag starts into ids (the
                                 first is 0), else NULL */
    size_t nbags;
    uint32_t pooling;         /* the pooling sent */
    const unsigned char *grads; /* push: rows x dim values of esize bytes */
    const uint32_t *pos;      /* sharded plain part: caller row of each
                                 slice row, or NULL */
} slice_t;

/* The requests being built for one connection. */
typedef struct builder {
    cqrps_client_t *c;
    cq_conn_t *conn;
    cq_op_t *op;
    const cqrps_part_t *parts; /* the caller's parts */
    int push;
    int bf16;                 /* this connection's requests are bf16 */
    size_t esize;             /* bytes per gradient or vector value */
    size_t max_parts;         /* the server's part limit; 0: none */
    size_t lim;               /* IDs (bags) per request: the server's */
    size_t part_lim;          /* IDs per segment: also the client's */
    size_t budget;            /* payload bytes per request */
    /* the request being built */
    cq_mseg_t *segs;
    cq_mpart_enc_t *enc;
    const uint64_t **ids;     /* each segment's IDs */
    const unsigned char **gr; /* each segment's gradients */
    size_t *gbytes;
    size_t nsegs, cap;
    size_t nids, nbags, bytes;
} builder_t;

static size_t frame_budget(const cq_conn_t *conn)
{
    size_t fb = conn->info.max_frame_bytes ? conn->info.max_frame_bytes
                                           : MQ_DEFAULT_FRAME;
    return fb > MQ_FRAME_SLACK + 1024 ? fb - MQ_FRAME_SLACK : 1024;
}

static int builder_grow(builder_t *b)
{
    size_t ncap = b->cap ? 2 * b->cap : 16;
    void *p[5] = {realloc(b->segs, ncap * sizeof(*b->segs)), NULL, NULL,
                  NULL, NULL};
    if (p[0])
        b->segs = p[0];
    p[1] = realloc(b->enc, ncap * sizeof(*b->enc));
    if (p[1])
        b->enc = p[1];
    p[2] = realloc(b->ids, ncap * sizeof(*b->ids));
    if (p[2])
        b->ids = p[2];
    p[3] = realloc(b->gr, ncap * sizeof(*b->gr));
    if (p[3])
        b->gr = p[3];
    p[4] = realloc(b->gbytes, ncap * sizeof(*b->gbytes));
    if (p[4])
        b->gbytes = p[4];
    for (int i = 0; i < 5; i++)
        if (!p[i])
            return CQRPS_ENOMEM;
    b->cap = ncap;
    return 0;
}

static void builder_free(builder_t *b)
{
    free(b->segs);
    free(b->enc);
    free(b->ids);
    free(b->gr);
    free(b->gbytes);
}

/* Queues the segments gathered so far as one request (nothing when there
 * are none). On error nothing is queued. */
static int flush(builder_t *b)
{
    if (b->nsegs == 0)
        return 0;
    cq_mseg_t *segs = cq_op_own(b->op, malloc(b->nsegs * sizeof(*segs)));
    if (!segs)
        return CQRPS_ENOMEM;
    memcpy(segs, b->segs, b->nsegs * sizeof(*segs));
    const uint32_t f_parts = b->push ? CQ_PUSH_PARTS : CQ_LOOKUP_PARTS;
    size_t gtotal = 0, owned = CQ_MULTI_HEAD_MAX + 2;
    uint64_t sub = b->bf16 ? 2 : 0;
    for (size_t k = 0; k < b->nsegs; k++) {
        gtotal += b->gbytes[k];
        sub += cq_mpart_field_len(&b->enc[k]);
        owned += CQ_MPART_HEAD_MAX + b->enc[k].table_len +
                 cq_mpart_tail_max(&b->enc[k]);
    }
    if (b->push && gtotal)
        sub += 1 + cqr_varint_len(gtotal) + gtotal;
    if (cq_conn_reserve(b->conn, owned, 2 + 4 * b->nsegs, 1) < 0)
        return CQRPS_ENOMEM;
    cq_pending_t *pe = cq_conn_push_pending(b->conn);
    size_t off, len;
    unsigned char *p = cq_conn_claim(b->conn, CQ_MULTI_HEAD_MAX, &off);
    len = cq_multi_head(p, b->push, pe->id, sub, gtotal);
    assert(len > 0); /* requests are bounded far below 4 GiB */
    cq_conn_put_claimed(b->conn, off, len);
    for (size_t k = 0; b->push && k < b->nsegs; k++)
        cq_conn_put_ext(b->conn, b->gr[k], b->gbytes[k]);
    for (size_t k = 0; k < b->nsegs; k++) {
        const cq_mpart_enc_t *e = &b->enc[k];
        p = cq_conn_claim(b->conn, CQ_MPART_HEAD_MAX + e->table_len, &off);
        cq_conn_put_claimed(b->conn, off, cq_mpart_head(p, f_parts, e));
        cq_conn_put_ext(b->conn, b->ids[k], e->n * sizeof(uint64_t));
        p = cq_conn_claim(b->conn, cq_mpart_tail_max(e), &off);
        cq_conn_put_claimed(b->conn, off, cq_mpart_tail(p, e));
    }
    p = cq_conn_claim(b->conn, 2, &off);
    cq_conn_put_claimed(b->conn, off, cq_multi_trailer(p, b->push, b->bf16));
    pe->op = b->op;
    pe->kind = b->push ? CQ_P_PUSH : CQ_P_MLOOKUP;
    pe->segs = segs;
    pe->nsegs = b->nsegs;
    b->op->outstanding++;
    b->nsegs = b->nids = b->nbags = b->bytes = 0;
    return 0;
}

/* A segment as a single-table request, for a server without parts. */
static int send_single(builder_t *b)
{
    assert(b->nsegs == 1);
    cq_mseg_t *seg = cq_op_own(b->op, malloc(sizeof(*seg)));
    if (!seg)
        return CQRPS_ENOMEM;
    *seg = b->segs[0];
    const cq_mpart_enc_t *e = &b->enc[0];
    cq_data_req_t r;
    memset(&r, 0, sizeof(r));
    r.push = b->push;
    r.table = e->table;
    r.table_len = e->table_len;
    r.n = e->n;
    r.grads_bytes = b->gbytes[0];
    r.offsets = e->offsets;
    r.nbags = e->nbags;
    r.offset_base = e->offset_base;
    r.pooling = e->pooling;
    const size_t head_max = CQ_DATA_HEAD_MAX + r.table_len;
    const size_t mid_max = 2 * CQR_VARINT_MAX;
    const size_t tail_max = cq_data_tail_max(&r);
    if (cq_conn_reserve(b->conn, head_max + mid_max + tail_max, 5, 1) < 0)
        return CQRPS_ENOMEM;
    cq_pending_t *pe = cq_conn_push_pending(b->conn);
    r.req_id = pe->id;
    size_t hoff, moff, toff, hl, ml, tl;
    unsigned char *head = cq_conn_claim(b->conn, head_max, &hoff);
    unsigned char *mid = cq_conn_claim(b->conn, mid_max, &moff);
    unsigned char *tail = cq_conn_claim(b->conn, tail_max, &toff);
    size_t total = cq_data_encode(&r, head, &hl, mid, &ml, tail, &tl);
    assert(total > 0);
    (void)total;
    cq_conn_put_claimed(b->conn, hoff, hl);
    cq_conn_put_ext(b->conn, b->ids[0], e->n * sizeof(uint64_t));
    cq_conn_put_claimed(b->conn, moff, ml);
    cq_conn_put_ext(b->conn, b->gr[0], b->gbytes[0]);
    cq_conn_put_claimed(b->conn, toff, tl);
    pe->op = b->op;
    pe->kind = b->push ? CQ_P_PUSH : CQ_P_MLOOKUP;
    pe->segs = seg;
    pe->nsegs = 1;
    b->op->outstanding++;
    b->nsegs = b->nids = b->nbags = b->bytes = 0;
    return 0;
}

/* Adds a segment of part `part`: IDs ids[0..n), bags offs[0..nb) (offs
 * NULL: plain) and rows of gradients gr, delivered to rows [base, base +
 * count) of the part's output (or to pos). */
static int add_seg(builder_t *b, uint32_t part, const uint64_t *ids,
                   size_t n, const uint32_t *offs, size_t nb,
                   uint32_t pooling, const unsigned char *gr, size_t base,
                   size_t count, const uint32_t *pos)
{
    const cqrps_part_t *cp = &b->parts[part];
    const cq_mpart_t *mp = &b->op->parts[part];
    size_t tlen = strlen(cp->table);
    size_t rowb = (size_t)mp->dim * b->esize;
    size_t bytes = n * 8 + nb * 5 + count * rowb + tlen + MQ_PART_OVERHEAD;
    if (b->nsegs > 0 &&
        (b->nsegs >= b->max_parts || b->nids + n > b->lim ||
         b->nbags + nb > b->lim || b->bytes + bytes > b->budget)) {
        int rc = flush(b);
        if (rc < 0)
            return rc;
    }
    if (b->nsegs == b->cap && builder_grow(b) < 0)
        return CQRPS_ENOMEM;
    size_t k = b->nsegs++;
    b->segs[k] = (cq_mseg_t){.part = part, .base = base, .count = count,
                             .pos = pos};
    b->enc[k] = (cq_mpart_enc_t){.table = cp->table, .table_len = tlen,
                                 .n = n, .offsets = offs, .nbags = nb,
                                 .offset_base = nb ? offs[0] : 0,
                                 .pooling = nb ? pooling : 0};
    b->ids[k] = ids;
    b->gr[k] = gr;
    b->gbytes[k] = b->push ? count * rowb : 0;
    b->nids += n;
    b->nbags += nb;
    b->bytes += bytes;
    return b->max_parts ? 0 : send_single(b);
}

/* A slice of plain rows, in chunks. */
static int add_rows(builder_t *b, uint32_t part, const slice_t *s)
{
    const size_t rowb = (size_t)b->op->parts[part].dim * b->esize;
    size_t per = b->budget / (8 + rowb);
    if (per > b->part_lim)
        per = b->part_lim;
    if (per == 0)
        per = 1;
    for (size_t at = 0; at < s->n; at += per) {
        size_t k = s->n - at < per ? s->n - at : per;
        int rc = add_seg(b, part, s->ids + at, k, NULL, 0, 0,
                         s->grads ? s->grads + at * rowb : NULL,
                         s->pos ? 0 : at, k, s->pos ? s->pos + at : NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* A slice of bags, in chunks of whole bags. Bags with no IDs at all are
 * not sent (their outputs were zeroed up front). */
static int add_bags(builder_t *b, uint32_t part, const slice_t *s)
{
    const size_t rowb = (size_t)b->op->parts[part].dim * b->esize;
    size_t b0 = 0;
    while (b0 < s->nbags) {
        const size_t i0 = s->offs[b0];
        size_t b1 = b0 + 1;
        while (b1 < s->nbags) {
            size_t iend = b1 + 1 < s->nbags ? s->offs[b1 + 1] : s->n;
            size_t bytes = (iend - i0) * 8 + (b1 + 1 - b0) * (rowb + 5);
            if (iend - i0 > b->part_lim || b1 + 1 - b0 > b->part_lim ||
                bytes > b->budget)
                break;
            b1++;
        }
        const size_t i1 = b1 < s->nbags ? s->offs[b1] : s->n;
        const cq_mpart_t *mp = &b->op->parts[part];
        if (i1 == i0 && !b->push && !mp->accumulate) {
            /* Only empty bags: zeros, and nothing to send. */
            memset(mp->out + b0 * mp->dim, 0,
                   (b1 - b0) * mp->dim * sizeof(float));
        } else if (i1 > i0) {
            int rc = add_seg(b, part, s->ids + i0, i1 - i0, s->offs + b0,
                             b1 - b0, s->pooling,
                             s->grads ? s->grads + b0 * rowb : NULL, b0,
                             b1 - b0, NULL);
            if (rc < 0)
                return rc;
        }
        b0 = b1;
    }
    return 0;
}

/* ---- the call ------------------------------------------------------- */

typedef struct mcall {
    int push;
    const cqrps_part_t *parts;
    size_t n;
    unsigned flags;
} mcall_t;

static size_t part_rows(const cqrps_part_t *p)
{
    return p->offsets ? p->nbags : p->n;
}

static int check_part(cqrps_client_t *c, const mcall_t *m, size_t i)
{
    const cqrps_part_t *p = &m->parts[i];
    int rc = cq_check_name(c, p->table);
    if (rc < 0)
        return cq_fail(&c->net, rc, "part %zu: %s", i, c->net.last_error);
    const char *why = NULL;
    if (p->n && !p->ids)
        why = "ids is NULL";
    else if (p->n > UINT32_MAX)
        why = "more than 2^32-1 IDs in one part";
    else if (part_rows(p) && m->push && !p->grads)
        why = "grads is NULL";
    else if (part_rows(p) && !m->push && !p->out)
        why = "out is NULL";
    else if (p->offsets && p->n && !p->nbags)
        why = "IDs given but no bags";
    else if (p->offsets && p->nbags > UINT32_MAX)
        why = "too many bags";
    else if (p->offsets && (unsigned)p->pooling > CQRPS_POOL_MEAN)
        why = "unknown pooling";
    else if (p->offsets && p->nbags && p->offsets[0] != 0)
        why = "offsets[0] must be 0";
    for (size_t b = 0; !why && p->offsets && b < p->nbags; b++)
        if (p->offsets[b] > p->n || (b && p->offsets[b] < p->offsets[b - 1]))
            why = "offsets must not decrease and stay <= n";
    if (why)
        return cq_fail(&c->net, CQRPS_EINVAL, "part %zu: %s", i, why);
    return 0;
}

/* The op's parts: tables, dims, outputs; lookups zero what no reply
 * writes (empty pooled parts) or what replies add to (sharded pooled). */
static int setup_parts(cqrps_client_t *c, const mcall_t *m, cq_op_t *op)
{
    op->parts = calloc(m->n ? m->n : 1, sizeof(*op->parts));
    if (!op->parts)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    op->nparts = m->n;
    for (size_t i = 0; i < m->n; i++) {
        const cqrps_part_t *p = &m->parts[i];
        cq_mpart_t *mp = &op->parts[i];
        mp->table = cq_op_own(op, strdup(p->table));
        if (!mp->table)
            return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
        mp->rows = part_rows(p);
        mp->out = p->out;
        if (mp->rows == 0)
            continue;
        int rc = cqrps_table_dim(c, p->table, &mp->dim);
        if (rc < 0)
            return cq_fail(&c->net, rc, "part %zu: %s", i,
                           c->net.last_error);
        const int sharded = c->net.nconns > 1;
        if (!m->push && p->offsets && (p->n == 0 || sharded)) {
            memset(p->out, 0, mp->rows * mp->dim * sizeof(float));
            mp->accumulate = p->n > 0;
        }
        if (!m->push && p->offsets && sharded && p->n &&
            p->pooling == CQRPS_POOL_MEAN) {
            mp->bag_div = cq_op_own(op, malloc(p->nbags * sizeof(uint32_t)));
            if (!mp->bag_div)
                return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
            for (size_t b = 0; b < p->nbags; b++)
                mp->bag_div[b] = (uint32_t)(
                    (b + 1 < p->nbags ? p->offsets[b + 1] : p->n) -
                    p->offsets[b]);
        }
    }
    return 0;
}

/* Gradients as the wire carries them: the caller's floats (no copy), or
 * a bfloat16 copy owned by op. */
static const unsigned char *wire_grads(cq_op_t *op, const float *g,
                                       size_t vals, int bf16)
{
    if (!bf16)
        return (const unsigned char *)g;
    unsigned char *h = cq_op_own(op, malloc(vals ? 2 * vals : 1));
    if (h)
        cqr_bf16_narrow(g, vals, h);
    return h;
}

/* Part i's slices, one per shard (slices[s]); sharded parts are copied in
 * shard order into buffers owned by op. */
static int slice_part(cqrps_client_t *c, const mcall_t *m, cq_op_t *op,
                      size_t i, int bf16, slice_t *sl)
{
    const cqrps_part_t *p = &m->parts[i];
    const uint32_t nsh = c->net.nconns;
    const size_t dim = op->parts[i].dim, rows = part_rows(p);
    memset(sl, 0, nsh * sizeof(*sl));
    if (nsh == 1) {
        sl[0] = (slice_t){.ids = p->ids, .n = p->n, .offs = p->offsets,
                          .nbags = p->offsets ? p->nbags : 0,
                          .pooling = (uint32_t)p->pooling};
        if (m->push) {
            sl[0].grads = wire_grads(op, p->grads, rows * dim, bf16);
            if (!sl[0].grads)
                return CQRPS_ENOMEM;
        }
        return 0;
    }
    size_t *first = cq_op_own(op, calloc(nsh + 1, sizeof(size_t)));
    uint64_t *sid = cq_op_own(op, malloc((p->n ? p->n : 1) * 8));
    if (!first || !sid)
        return CQRPS_ENOMEM;
    float *sg = NULL;
    if (!p->offsets) {
        uint32_t *spos = cq_op_own(op, malloc((p->n ? p->n : 1) * 4));
        if (!spos || cq_split_ids(p->ids, p->n, nsh, first, sid, spos) < 0)
            return CQRPS_ENOMEM;
        if (m->push) {
            sg = cq_op_own(op, malloc((p->n ? p->n : 1) * dim * 4));
            if (!sg)
                return CQRPS_ENOMEM;
            for (size_t k = 0; k < p->n; k++)
                memcpy(sg + k * dim, p->grads + (size_t)spos[k] * dim,
                       dim * sizeof(float));
        }
        for (uint32_t s = 0; s < nsh; s++)
            sl[s] = (slice_t){.ids = sid + first[s],
                              .n = first[s + 1] - first[s],
                              .pos = spos + first[s]};
    } else {
        const size_t nb = p->nbags;
        size_t *cur = cq_op_own(op, calloc(nsh, sizeof(size_t)));
        uint32_t *soff = cq_op_own(op, malloc(nsh * (nb ? nb : 1) * 4));
        if (!cur || !soff)
            return CQRPS_ENOMEM;
        cq_split_bags(p->ids, p->n, p->offsets, nb, nsh, first, cur, sid,
                      soff);
        if (m->push) {
            /* Each shard sees part of a bag: mean scales here and every
             * shard sums. */
            sg = (float *)p->grads;
            if (p->pooling == CQRPS_POOL_MEAN) {
                sg = cq_op_own(op, malloc((nb ? nb : 1) * dim * 4));
                if (!sg)
                    return CQRPS_ENOMEM;
                for (size_t b = 0; b < nb; b++) {
                    size_t end = b + 1 < nb ? p->offsets[b + 1] : p->n;
                    size_t len = end - p->offsets[b];
                    float inv = len ? 1.0f / (float)len : 0.0f;
                    for (size_t k = 0; k < dim; k++)
                        sg[b * dim + k] = p->grads[b * dim + k] * inv;
                }
            }
        }
        for (uint32_t s = 0; s < nsh; s++)
            sl[s] = (slice_t){.ids = sid + first[s],
                              .n = first[s + 1] - first[s],
                              .offs = soff + (size_t)s * nb, .nbags = nb,
                              .pooling = CQRPS_POOL_SUM};
    }
    if (m->push) {
        /* Plain: each shard's rows; pooled: every shard all the bags. */
        const unsigned char *g = wire_grads(op, sg, (p->offsets ? p->nbags
                                                               : p->n) * dim,
                                            bf16);
        if (!g)
            return CQRPS_ENOMEM;
        const size_t esz = bf16 ? 2 : sizeof(float);
        for (uint32_t s = 0; s < nsh; s++)
            sl[s].grads = p->offsets ? g : g + first[s] * dim * esz;
    }
    return 0;
}

/* Queues every request of the call on connection s: its slices of every
 * part, packed into requests. */
static int enqueue_conn(cqrps_client_t *c, const mcall_t *m, cq_op_t *op,
                        uint32_t s, slice_t *const *slices)
{
    cq_conn_t *conn = &c->net.conns[s];
    builder_t b;
    memset(&b, 0, sizeof(b));
    b.c = c;
    b.conn = conn;
    b.op = op;
    b.parts = m->parts;
    b.push = m->push;
    b.max_parts = conn->info.max_parts;
    b.bf16 = (m->flags & CQRPS_BF16) && b.max_parts > 0;
    b.esize = b.bf16 ? 2 : sizeof(float);
    b.lim = conn->info.max_batch ? conn->info.max_batch : UINT32_MAX;
    b.part_lim = c->opt.max_batch < b.lim ? c->opt.max_batch : b.lim;
    if (b.part_lim == 0)
        b.part_lim = 1;
    b.budget = frame_budget(conn);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const slice_t *sl = &slices[i][s];
        if (sl->n == 0)
            continue;
        rc = sl->offs ? add_bags(&b, (uint32_t)i, sl)
                      : add_rows(&b, (uint32_t)i, sl);
    }
    if (rc == 0)
        rc = flush(&b);
    builder_free(&b);
    return rc;
}

static int multi_enqueue(cqrps_client_t *c, const mcall_t *m, cq_op_t *op)
{
    const uint32_t nsh = c->net.nconns;
    /* bfloat16 is sent only to servers that take parts (and so bf16). */
    int bf16 = (m->flags & CQRPS_BF16) != 0;
    for (uint32_t s = 0; s < nsh; s++)
        bf16 = bf16 && c->net.conns[s].info.max_parts > 0;
    slice_t **slices = calloc(m->n, sizeof(*slices));
    if (!slices)
        return CQRPS_ENOMEM;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        slices[i] = cq_op_own(op, malloc(nsh * sizeof(slice_t)));
        rc = slices[i] ? slice_part(c, m, op, i, bf16, slices[i])
                       : CQRPS_ENOMEM;
    }
    for (uint32_t s = 0; rc == 0 && s < nsh; s++) {
        /* Mixed shards (one without bf16) send float32 everywhere. */
        mcall_t ms = *m;
        if (!bf16)
            ms.flags &= ~CQRPS_BF16;
        rc = enqueue_conn(c, &ms, op, s, slices);
    }
    free(slices);
    return rc;
}

/* Validates, connects, queues every request and writes them all. On 0,
 * *opp is an operation whose replies may still be in flight. */
static int multi_start(cqrps_client_t *c, const void *call, cq_op_t **opp)
{
    const mcall_t *m = call;
    *opp = NULL;
    if (!c)
        return CQRPS_EINVAL;
    if (m->flags & ~CQRPS_BF16)
        return cq_fail(&c->net, CQRPS_EINVAL, "unknown flags 0x%x",
                       m->flags & ~CQRPS_BF16);
    if (m->n && !m->parts)
        return cq_fail(&c->net, CQRPS_EINVAL, "parts is NULL");
    if (m->n > UINT32_MAX)
        return cq_fail(&c->net, CQRPS_EINVAL, "too many parts");
    size_t ids = 0;
    for (size_t i = 0; i < m->n; i++) {
        int rc = check_part(c, m, i);
        if (rc < 0)
            return rc;
        ids += m->parts[i].n;
    }
    cq_op_t *op = cq_op_new(CQ_O_DATA, NULL, c->net.nconns);
    if (!op)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    int rc = setup_parts(c, m, op);
    if (rc < 0) {
        cq_op_free(op);
        return rc;
    }
    *opp = op;
    if (ids == 0)
        return 0; /* nothing to send: no round trip */
    if (cq_connect_all(c, op) < 0)
        return 0; /* reported by the wait, like any later failure */
    rc = multi_enqueue(c, m, op);
    cq_start_done(c, op, rc);
    return 0;
}

/* A lookup is retried once after a lost connection (it changes
 * nothing), a push is not. */
static int multi_sync(cqrps_client_t *c, const mcall_t *m)
{
    return cq_call_sync(c, multi_start, m, !m->push);
}

static int multi_ticket(cqrps_client_t *c, const mcall_t *m,
                       cqrps_ticket_t *ticket)
{
    return cq_call_ticket(c, multi_start, m, ticket);
}

int cqrps_lookup_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                       size_t nparts, unsigned flags)
{
    mcall_t m = {0, parts, nparts, flags};
    return multi_sync(c, &m);
}

int cqrps_push_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                     size_t nparts, unsigned flags)
{
    mcall_t m = {1, parts, nparts, flags};
    return multi_sync(c, &m);
}

int cqrps_lookup_multi_start(cqrps_client_t *c, const cqrps_part_t *parts,
                             size_t nparts, unsigned flags,
                             cqrps_ticket_t *ticket)
{
    mcall_t m = {0, parts, nparts, flags};
    return multi_ticket(c, &m, ticket);
}

int cqrps_push_multi_start(cqrps_client_t *c, const cqrps_part_t *parts,
                           size_t nparts, unsigned flags,
                           cqrps_ticket_t *ticket)
{
    mcall_t m = {1, parts, nparts, flags};
    return multi_ticket(c, &m, ticket);
}
