/* data.c -- lookups and pushes: sub-batches, the shard split and merge,
 * tickets.
 *
 * A call is cut into requests that respect both max_batch and the
 * server's frame limit; every request of the call is queued on its
 * connection, then all are written (the pump reads replies meanwhile), and
 * only then are the remaining replies awaited. With one shard the IDs and
 * gradients are sent from the caller's arrays and lookup replies are
 * copied straight into the caller's output. With several, the IDs are
 * grouped per shard first (a counting sort, so each shard's IDs keep the
 * caller's order) and each reply row is scattered to its caller row.
 * The top layer with admin.c (the layers are listed in op.h): a call
 * learns its table's dim through cqrps_table_dim.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "proto/varint.h"

/* Bytes of a frame kept free for everything but the ID and vector
 * payloads (envelope, table name, offsets header). */
#define CQ_FRAME_SLACK 512
/* Frame size assumed before a server said its limit. */
#define CQ_DEFAULT_FRAME (16u << 20)

/* A lookup or push as the caller gave it. */
typedef struct data_call {
    int push;                 /* 0 lookup, 1 push */
    int pooled;               /* offsets/nbags/pooling are meaningful */
    const char *table;
    const uint64_t *ids;
    size_t n;
    const float *grads;       /* push: n (or nbags) rows */
    const uint32_t *offsets;  /* pooled: nbags bag starts */
    size_t nbags;
    cqrps_pooling_t pooling;
    float *out;               /* lookup: n (or nbags) rows */
} data_call_t;

static size_t batch_limit(const cqrps_client_t *c, const cq_conn_t *conn)
{
    size_t mb = c->opt.max_batch;
    if (conn->info.max_batch && conn->info.max_batch < mb)
        mb = conn->info.max_batch;
    return mb ? mb : 1;
}

static size_t frame_budget(const cq_conn_t *conn, size_t tlen)
{
    size_t fb = conn->info.max_frame_bytes ? conn->info.max_frame_bytes
                                           : CQ_DEFAULT_FRAME;
    size_t slack = CQ_FRAME_SLACK + tlen;
    return fb > slack + 1024 ? fb - slack : 1024;
}

/* Queues one request: ids[0..n), and for a push `gbytes` bytes of grads;
 * pooled when nbags > 0 (offsets rebased by offsets[0]). The pending
 * entry gets kind/base/count/pos. On error nothing is queued. */
static int enqueue(cq_conn_t *conn, cq_op_t *op, const data_call_t *d,
                   const uint64_t *ids, size_t n, const float *grads,
                   size_t gbytes, const uint32_t *offsets, size_t nbags,
                   uint32_t pooling, cq_pkind_t kind, size_t base,
                   size_t count, const uint32_t *pos)
{
    cq_data_req_t r;
    memset(&r, 0, sizeof(r));
    r.push = d->push;
    r.table = d->table;
    r.table_len = strlen(d->table);
    r.n = n;
    r.grads_bytes = gbytes;
    r.offsets = offsets;
    r.nbags = nbags;
    r.offset_base = nbags ? offsets[0] : 0;
    r.pooling = pooling;
    const size_t head_max = CQ_DATA_HEAD_MAX + r.table_len;
    const size_t mid_max = 2 * CQR_VARINT_MAX;
    const size_t tail_max = cq_data_tail_max(&r);
    if (cq_conn_reserve(conn, head_max + mid_max + tail_max, 5, 1) < 0)
        return CQRPS_ENOMEM;
    cq_pending_t *pe = cq_conn_push_pending(conn);
    r.req_id = pe->id;
    size_t hoff, moff, toff, hl, ml, tl;
    unsigned char *head = cq_conn_claim(conn, head_max, &hoff);
    unsigned char *mid = cq_conn_claim(conn, mid_max, &moff);
    unsigned char *tail = cq_conn_claim(conn, tail_max, &toff);
    size_t total = cq_data_encode(&r, head, &hl, mid, &ml, tail, &tl);
    assert(total > 0); /* batches are bounded far below 4 GiB */
    (void)total;
    cq_conn_put_claimed(conn, hoff, hl);
    cq_conn_put_ext(conn, ids, n * sizeof(uint64_t));
    cq_conn_put_claimed(conn, moff, ml);
    cq_conn_put_ext(conn, grads, gbytes);
    cq_conn_put_claimed(conn, toff, tl);
    pe->op = op;
    pe->kind = kind;
    pe->base = base;
    pe->count = count;
    pe->pos = pos;
    op->outstanding++;
    return 0;
}

/* Plain rows ids[0..n) on one connection, in sub-batches. `base` is the
 * output row of ids[0] when the rows are contiguous (pos == NULL); with
 * pos, row j of the slice goes to caller row pos[j]. */
static int enqueue_rows(cqrps_client_t *c, cq_conn_t *conn, cq_op_t *op,
                        const data_call_t *d, const uint64_t *ids, size_t n,
                        const float *grads, size_t base, const uint32_t *pos)
{
    const size_t row = (size_t)op->dim * sizeof(float);
    size_t per = frame_budget(conn, strlen(d->table)) / (8 + row);
    size_t lim = batch_limit(c, conn);
    if (per > lim)
        per = lim;
    if (per == 0)
        per = 1;
    for (size_t s = 0; s < n; s += per) {
        size_t k = n - s < per ? n - s : per;
        int rc = enqueue(conn, op, d, ids + s, k,
                         d->push ? grads + s * op->dim : NULL,
                         d->push ? k * row : 0, NULL, 0, 0,
                         d->push ? CQ_P_PUSH : CQ_P_LOOKUP, base + s, k,
                         pos ? pos + s : NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Bags [0, nbags) over ids[0..n) with bag starts offs (offs[0] == 0) on
 * one connection, in sub-batches of whole bags. */
static int enqueue_bags(cqrps_client_t *c, cq_conn_t *conn, cq_op_t *op,
                        const data_call_t *d, const uint64_t *ids, size_t n,
                        const uint32_t *offs, size_t nbags,
                        const float *bag_grads, uint32_t pooling)
{
    const size_t row = (size_t)op->dim * sizeof(float);
    const size_t budget = frame_budget(conn, strlen(d->table));
    const size_t lim = batch_limit(c, conn);
    size_t b0 = 0;
    while (b0 < nbags) {
        const size_t i0 = offs[b0];
        size_t b1 = b0 + 1;
        for (;;) {
            if (b1 >= nbags)
                break;
            size_t iend = b1 + 1 < nbags ? offs[b1 + 1] : n;
            size_t bytes = (iend - i0) * 8 + (b1 + 1 - b0) * (row + 5);
            /* The server bounds IDs and bags per request alike. */
            if (iend - i0 > lim || b1 + 1 - b0 > lim || bytes > budget)
                break;
            b1++;
        }
        const size_t i1 = b1 < nbags ? offs[b1] : n;
        const size_t nb = b1 - b0;
        if (i1 == i0) {
            /* Only empty bags: nothing to send. A lookup's rows are zero
             * (accumulating outputs were zeroed up front). */
            if (!d->push && !op->accumulate)
                memset(op->out + b0 * op->dim, 0, nb * row);
        } else {
            int rc = enqueue(conn, op, d, ids + i0, i1 - i0,
                             d->push ? bag_grads + b0 * op->dim : NULL,
                             d->push ? nb * row : 0, offs + b0, nb, pooling,
                             d->push ? CQ_P_PUSH : CQ_P_POOLED, b0, nb,
                             NULL);
            if (rc < 0)
                return rc;
        }
        b0 = b1;
    }
    return 0;
}

int cq_split_ids(const uint64_t *ids, size_t n, uint32_t nsh,
                 size_t *first, uint64_t *sid, uint32_t *spos)
{
    uint32_t *sh = malloc((n ? n : 1) * sizeof(*sh));
    size_t *fill = calloc(nsh, sizeof(*fill));
    if (!sh || !fill) {
        free(sh);
        free(fill);
        return CQRPS_ENOMEM;
    }
    memset(first, 0, (nsh + 1) * sizeof(*first));
    for (size_t j = 0; j < n; j++) {
        sh[j] = cqrps_shard_of(ids[j], nsh);
        first[sh[j] + 1]++;
    }
    for (uint32_t s = 0; s < nsh; s++)
        first[s + 1] += first[s];
    for (size_t j = 0; j < n; j++) {
        size_t k = first[sh[j]] + fill[sh[j]]++;
        sid[k] = ids[j];
        spos[k] = (uint32_t)j;
    }
    free(sh);
    free(fill);
    return 0;
}

static int check_call(cqrps_client_t *c, const data_call_t *d)
{
    int rc = cq_check_name(c, d->table);
    if (rc < 0)
        return rc;
    if (d->n && !d->ids)
        return cq_fail(&c->net, CQRPS_EINVAL, "ids is NULL");
    if (d->n > UINT32_MAX)
        return cq_fail(&c->net, CQRPS_EINVAL,
                       "more than 2^32-1 IDs in one call");
    size_t rows = d->pooled ? d->nbags : d->n;
    if (rows && d->push && !d->grads)
        return cq_fail(&c->net, CQRPS_EINVAL, "grads is NULL");
    if (rows && !d->push && !d->out)
        return cq_fail(&c->net, CQRPS_EINVAL, "out is NULL");
    if (d->pooled) {
        if (d->n && !d->nbags)
            return cq_fail(&c->net, CQRPS_EINVAL, "IDs given but no bags");
        if (d->nbags && !d->offsets)
            return cq_fail(&c->net, CQRPS_EINVAL, "offsets is NULL");
        if (d->nbags > UINT32_MAX)
            return cq_fail(&c->net, CQRPS_EINVAL, "too many bags");
        if ((unsigned)d->pooling > CQRPS_POOL_MEAN)
            return cq_fail(&c->net, CQRPS_EINVAL, "unknown pooling %d",
                           (int)d->pooling);
        /* The split below relies on these; the server checks them too. */
        if (d->nbags && d->offsets[0] != 0)
            return cq_fail(&c->net, CQRPS_EINVAL, "offsets[0] must be 0");
        for (size_t b = 0; b < d->nbags; b++)
            if (d->offsets[b] > d->n ||
                (b && d->offsets[b] < d->offsets[b - 1]))
                return cq_fail(&c->net, CQRPS_EINVAL,
                               "offsets must not decrease and stay <= n "
                               "(bag %zu)", b);
    }
    return 0;
}

void cq_split_bags(const uint64_t *ids, size_t n, const uint32_t *offsets,
                   size_t nb, uint32_t nsh, size_t *first, size_t *cur,
                   uint64_t *sid, uint32_t *soff)
{
    /* Count per shard, then place the IDs bag by bag, so each shard's
     * slice keeps the bags in order and soff holds its bag starts. */
    for (size_t j = 0; j < n; j++)
        first[cqrps_shard_of(ids[j], nsh) + 1]++;
    for (uint32_t s = 0; s < nsh; s++)
        first[s + 1] += first[s];
    for (size_t b = 0; b < nb; b++) {
        for (uint32_t s = 0; s < nsh; s++)
            soff[(size_t)s * nb + b] = (uint32_t)cur[s];
        size_t end = b + 1 < nb ? offsets[b + 1] : n;
        for (size_t j = offsets[b]; j < end; j++) {
            uint32_t s = cqrps_shard_of(ids[j], nsh);
            sid[first[s] + cur[s]++] = ids[j];
        }
    }
}

/* Sharded pooled call: per-shard IDs and bag starts, pooled by SUM on the
 * shards and merged (summed, then divided for mean) by the client. */
static int start_sharded_bags(cqrps_client_t *c, cq_op_t *op,
                              const data_call_t *d)
{
    const uint32_t nsh = c->net.nconns;
    const size_t nb = d->nbags, dim = op->dim;
    const int mean_push = d->push && d->pooling == CQRPS_POOL_MEAN;
    uint64_t *sid = op->scratch[0] = malloc(d->n * sizeof(uint64_t));
    uint32_t *soff = op->scratch[1] = malloc(nsh * nb * sizeof(uint32_t));
    float *sgrads = NULL;
    if (mean_push)
        sgrads = op->scratch[2] = malloc(nb * dim * sizeof(float));
    size_t *first = calloc(nsh + 1, sizeof(size_t));
    size_t *cur = calloc(nsh, sizeof(size_t));
    int rc = CQRPS_ENOMEM;
    if (!sid || !soff || (mean_push && !sgrads) || !first || !cur)
        goto out;

    cq_split_bags(d->ids, d->n, d->offsets, nb, nsh, first, cur, sid, soff);

    const float *bg = d->grads;
    if (mean_push) {
        /* Each shard sees part of a bag: scale here, push as a sum. */
        for (size_t b = 0; b < nb; b++) {
            size_t end = b + 1 < nb ? d->offsets[b + 1] : d->n;
            size_t len = end - d->offsets[b];
            float inv = len ? 1.0f / (float)len : 0.0f;
            for (size_t k = 0; k < dim; k++)
                sgrads[b * dim + k] = d->grads[b * dim + k] * inv;
        }
        bg = sgrads;
    }
    if (!d->push) {
        op->accumulate = 1;
        memset(d->out, 0, nb * dim * sizeof(float));
        if (d->pooling == CQRPS_POOL_MEAN) {
            op->bag_div = malloc(nb * sizeof(uint32_t));
            if (!op->bag_div)
                goto out;
            for (size_t b = 0; b < nb; b++)
                op->bag_div[b] = (uint32_t)(
                    (b + 1 < nb ? d->offsets[b + 1] : d->n) - d->offsets[b]);
        }
    }
    rc = 0;
    for (uint32_t s = 0; rc == 0 && s < nsh; s++) {
        size_t cnt = first[s + 1] - first[s];
        if (cnt)
            rc = enqueue_bags(c, &c->net.conns[s], op, d, sid + first[s], cnt,
                              soff + (size_t)s * nb, nb, bg,
                              CQRPS_POOL_SUM);
    }
out:
    free(first);
    free(cur);
    return rc;
}

static int start_sharded_rows(cqrps_client_t *c, cq_op_t *op,
                              const data_call_t *d)
{
    const uint32_t nsh = c->net.nconns;
    const size_t dim = op->dim;
    uint64_t *sid = op->scratch[0] = malloc(d->n * sizeof(uint64_t));
    uint32_t *spos = op->scratch[1] = malloc(d->n * sizeof(uint32_t));
    float *sgrads = NULL;
    if (d->push)
        sgrads = op->scratch[2] = malloc(d->n * dim * sizeof(float));
    size_t *first = malloc((nsh + 1) * sizeof(size_t));
    if (!sid || !spos || (d->push && !sgrads) || !first) {
        free(first);
        return CQRPS_ENOMEM;
    }
    int rc = cq_split_ids(d->ids, d->n, nsh, first, sid, spos);
    if (rc == 0 && d->push)
        for (size_t k = 0; k < d->n; k++)
            memcpy(sgrads + k * dim, d->grads + (size_t)spos[k] * dim,
                   dim * sizeof(float));
    for (uint32_t s = 0; rc == 0 && s < nsh; s++) {
        size_t cnt = first[s + 1] - first[s];
        if (cnt)
            rc = enqueue_rows(c, &c->net.conns[s], op, d, sid + first[s], cnt,
                              d->push ? sgrads + first[s] * dim : NULL, 0,
                              spos + first[s]);
    }
    free(first);
    return rc;
}

/* Validates, connects, queues every request and writes them all. On 0,
 * *opp is an operation whose replies may still be in flight. */
static int data_start(cqrps_client_t *c, const void *call, cq_op_t **opp)
{
    const data_call_t *d = call;
    *opp = NULL;
    if (!c)
        return CQRPS_EINVAL;
    int rc = check_call(c, d);
    if (rc < 0)
        return rc;
    /* Nothing to send or write: no round trip, not even for the dim. */
    const int empty = d->pooled ? d->nbags == 0 : d->n == 0;
    uint32_t dim = 0;
    if (!empty) {
        rc = cqrps_table_dim(c, d->table, &dim);
        if (rc < 0)
            return rc;
    }
    cq_op_t *op = cq_op_new(CQ_O_DATA, d->table, c->net.nconns);
    if (!op)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    op->dim = dim;
    op->out = d->out;
    op->nbags = d->nbags;
    *opp = op;

    if (empty)
        return 0;
    if (d->pooled && d->n == 0) {
        /* Only empty bags: zeros out, nothing to push. */
        if (!d->push && d->nbags)
            memset(d->out, 0, d->nbags * dim * sizeof(float));
        return 0;
    }
    if (d->n == 0)
        return 0;
    if (cq_connect_all(c, op) < 0)
        return 0; /* reported by the wait, like any later failure */
    if (c->net.nconns == 1 && d->pooled)
        rc = enqueue_bags(c, &c->net.conns[0], op, d, d->ids, d->n, d->offsets,
                          d->nbags, d->grads, (uint32_t)d->pooling);
    else if (c->net.nconns == 1)
        rc = enqueue_rows(c, &c->net.conns[0], op, d, d->ids, d->n, d->grads,
                          0, NULL);
    else if (d->pooled)
        rc = start_sharded_bags(c, op, d);
    else
        rc = start_sharded_rows(c, op, d);
    cq_start_done(c, op, rc);
    return 0;
}

/* A lookup is retried once after a lost connection (it changes
 * nothing), a push is not. */
static int data_sync(cqrps_client_t *c, const data_call_t *d)
{
    return cq_call_sync(c, data_start, d, !d->push);
}

static int data_ticket(cqrps_client_t *c, const data_call_t *d,
                       cqrps_ticket_t *ticket)
{
    return cq_call_ticket(c, data_start, d, ticket);
}

/* A plain call: n rows. */
static data_call_t plain_call(int push, const char *table,
                              const uint64_t *ids, size_t n,
                              const float *grads, float *out)
{
    data_call_t d = { .push = push, .table = table, .ids = ids, .n = n,
                      .grads = grads, .out = out };
    return d;
}

/* A pooled call: nbags bags over n IDs. */
static data_call_t pooled_call(int push, const char *table,
                               const uint64_t *ids, size_t n,
                               const uint32_t *offsets, size_t nbags,
                               cqrps_pooling_t pooling, const float *grads,
                               float *out)
{
    data_call_t d = { .push = push, .pooled = 1, .table = table,
                      .ids = ids, .n = n, .grads = grads,
                      .offsets = offsets, .nbags = nbags,
                      .pooling = pooling, .out = out };
    return d;
}

int cqrps_lookup(cqrps_client_t *c, const char *table, const uint64_t *ids,
                 size_t n, float *out)
{
    data_call_t d = plain_call(0, table, ids, n, NULL, out);
    return data_sync(c, &d);
}

int cqrps_push(cqrps_client_t *c, const char *table, const uint64_t *ids,
               const float *grads, size_t n)
{
    data_call_t d = plain_call(1, table, ids, n, grads, NULL);
    return data_sync(c, &d);
}

int cqrps_lookup_pooled(cqrps_client_t *c, const char *table,
                        const uint64_t *ids, size_t n,
                        const uint32_t *offsets, size_t nbags,
                        cqrps_pooling_t pooling, float *out)
{
    data_call_t d = pooled_call(0, table, ids, n, offsets, nbags,
                                pooling, NULL, out);
    return data_sync(c, &d);
}

int cqrps_push_pooled(cqrps_client_t *c, const char *table,
                      const uint64_t *ids, size_t n, const uint32_t *offsets,
                      size_t nbags, cqrps_pooling_t pooling,
                      const float *bag_grads)
{
    data_call_t d = pooled_call(1, table, ids, n, offsets, nbags,
                                pooling, bag_grads, NULL);
    return data_sync(c, &d);
}

int cqrps_lookup_start(cqrps_client_t *c, const char *table,
                       const uint64_t *ids, size_t n, float *out,
                       cqrps_ticket_t *ticket)
{
    data_call_t d = plain_call(0, table, ids, n, NULL, out);
    return data_ticket(c, &d, ticket);
}

int cqrps_push_start(cqrps_client_t *c, const char *table,
                     const uint64_t *ids, const float *grads, size_t n,
                     cqrps_ticket_t *ticket)
{
    data_call_t d = plain_call(1, table, ids, n, grads, NULL);
    return data_ticket(c, &d, ticket);
}

int cqrps_lookup_pooled_start(cqrps_client_t *c, const char *table,
                              const uint64_t *ids, size_t n,
                              const uint32_t *offsets, size_t nbags,
                              cqrps_pooling_t pooling, float *out,
                              cqrps_ticket_t *ticket)
{
    data_call_t d = pooled_call(0, table, ids, n, offsets, nbags,
                                pooling, NULL, out);
    return data_ticket(c, &d, ticket);
}

int cqrps_push_pooled_start(cqrps_client_t *c, const char *table,
                            const uint64_t *ids, size_t n,
                            const uint32_t *offsets, size_t nbags,
                            cqrps_pooling_t pooling, const float *bag_grads,
                            cqrps_ticket_t *ticket)
{
    data_call_t d = pooled_call(1, table, ids, n, offsets, nbags,
                                pooling, bag_grads, NULL);
    return data_ticket(c, &d, ticket);
}
