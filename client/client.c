/* client.c -- libcqrps's client object: options, errors and names,
 * connect and close, operations and tickets, reply delivery, the
 * table-dim cache and the generic RPC path (see internal.h for the
 * model).
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cqrps.pb-c.h"
#include "internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libcqrps moves IDs and vectors as raw little-endian bytes"
#endif

/* The message of the last failed cqrps_connect, per thread, because a
 * failed connect has no client to hold it. */
static _Thread_local char tls_connect_error[CQ_ERRMSG_MAX];

/* Table-dim cache entries kept per client before it is emptied. */
#define CQ_DIMS_MAX 4096

uint64_t cq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- Errors and names -------------------------------------------------- */

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

static const char *const kind_names[] = { "full", "hash", "ce", "cqr" };
static const char *const opt_names[] = { "sgd", "adagrad", "adam" };
static const char *const pool_names[] = { "sum", "mean" };
static const char *const phase_names[] = { "queued", "running", "done",
                                           "failed" };
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static const char *name_of(const char *const *names, size_t n, int v)
{
    return v >= 0 && (size_t)v < n ? names[v] : "?";
}

static int parse_name(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; s && i < n; i++)
        if (strcasecmp(s, names[i]) == 0)
            return (int)i;
    return CQRPS_EINVAL;
}

const char *cqrps_kind_name(cqrps_kind_t kind)
{
    return name_of(kind_names, NELEM(kind_names), (int)kind);
}

int cqrps_kind_parse(const char *name, cqrps_kind_t *out)
{
    int v = parse_name(kind_names, NELEM(kind_names), name);
    if (v < 0)
        return v;
    *out = (cqrps_kind_t)v;
    return 0;
}

const char *cqrps_optimizer_name(cqrps_optimizer_t opt)
{
    return name_of(opt_names, NELEM(opt_names), (int)opt);
}

int cqrps_optimizer_parse(const char *name, cqrps_optimizer_t *out)
{
    int v = parse_name(opt_names, NELEM(opt_names), name);
    if (v < 0)
        return v;
    *out = (cqrps_optimizer_t)v;
    return 0;
}

const char *cqrps_pooling_name(cqrps_pooling_t pool)
{
    return name_of(pool_names, NELEM(pool_names), (int)pool);
}

int cqrps_pooling_parse(const char *name, cqrps_pooling_t *out)
{
    int v = parse_name(pool_names, NELEM(pool_names), name);
    if (v < 0)
        return v;
    *out = (cqrps_pooling_t)v;
    return 0;
}

const char *cqrps_phase_state_name(cqrps_phase_state_t st)
{
    return name_of(phase_names, NELEM(phase_names), (int)st);
}

int cq_fail(cqrps_client_t *c, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
    va_end(ap);
    return err;
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

const char *cqrps_last_error(cqrps_client_t *c)
{
    return c ? c->last_error : tls_connect_error;
}

int cq_check_name(cqrps_client_t *c, const char *name)
{
    if (!name || !*name)
        return cq_fail(c, CQRPS_EINVAL, "table name is empty");
    if (strlen(name) > CQRPS_NAME_MAX)
        return cq_fail(c, CQRPS_EINVAL, "table name longer than %d bytes",
                       CQRPS_NAME_MAX);
    return 0;
}

/* ---- Options, connect, close ------------------------------------------- */

void cqrps_options_init(cqrps_options_t *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->connect_timeout_ms = 5000;
    opt->request_timeout_ms = 30000;
    opt->reconnect = 1;
    opt->max_batch = 65536;
}

void cqrps_table_config_init(cqrps_table_config_t *cfg, cqrps_kind_t kind,
                             uint32_t dim)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->kind = kind;
    cfg->dim = dim;
    cfg->optimizer = CQRPS_OPT_ADAM;
}

static void *dup_bytes(const void *p, size_t len)
{
    void *d = malloc(len ? len : 1);
    if (d && len)
        memcpy(d, p, len);
    return d;
}

int cqrps_connect(const char *addrs, const cqrps_options_t *opt,
                  cqrps_client_t **out)
{
    tls_connect_error[0] = '\0';
    if (!out) {
        snprintf(tls_connect_error, sizeof(tls_connect_error),
                 "cqrps_connect: out is NULL");
        return CQRPS_EINVAL;
    }
    *out = NULL;
    cqrps_client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(tls_connect_error, sizeof(tls_connect_error),
                 "out of memory");
        return CQRPS_ENOMEM;
    }
    int rc = 0;
    if (opt)
        c->opt = *opt;
    else
        cqrps_options_init(&c->opt);
    if (c->opt.max_batch == 0)
        c->opt.max_batch = 65536;
    if (c->opt.connect_timeout_ms == 0)
        c->opt.connect_timeout_ms = 5000;
    c->next_ticket = 1;
    /* Keep copies: the caller's buffers are read during this call only. */
    if ((c->opt.token_len && !c->opt.token) ||
        (c->opt.admin_token_len && !c->opt.admin_token)) {
        rc = cq_fail(c, CQRPS_EINVAL, "token length without a token");
        goto fail;
    }
    c->token = dup_bytes(c->opt.token, c->opt.token_len);
    c->admin_token = dup_bytes(c->opt.admin_token, c->opt.admin_token_len);
    c->client_name = c->opt.client_name ? strdup(c->opt.client_name) : NULL;
    if (!c->token || !c->admin_token ||
        (c->opt.client_name && !c->client_name)) {
        rc = cq_fail(c, CQRPS_ENOMEM, "out of memory");
        goto fail;
    }
    c->opt.token = c->token;
    c->opt.admin_token = c->admin_token;
    c->opt.client_name = c->client_name;

    rc = cq_parse_addrs(c, addrs);
    if (rc < 0)
        goto fail;
    for (uint32_t i = 0; i < c->nconns; i++) {
        rc = cq_conn_ensure(c, &c->conns[i]);
        if (rc < 0)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    snprintf(tls_connect_error, sizeof(tls_connect_error), "%s",
             c->last_error);
    cqrps_close(c);
    return rc;
}

void cqrps_close(cqrps_client_t *c)
{
    if (!c)
        return;
    /* Pending entries point at tickets: close the sockets first (which
     * drops the entries), then free the tickets. */
    for (uint32_t i = 0; i < c->nconns; i++)
        cq_conn_fail(c, &c->conns[i], CQRPS_ECONN, "client closed");
    while (c->tickets) {
        cq_op_t *op = c->tickets;
        c->tickets = op->next;
        cq_op_free(op);
    }
    for (uint32_t i = 0; i < c->nconns; i++)
        cq_conn_free(&c->conns[i]);
    for (size_t i = 0; i < c->nmemos; i++)
        free(c->memos[i].shard_ids);
    free(c->memos);
    free(c->dims);
    free(c->conns);
    free(c->pfds);
    free(c->pconns);
    free(c->token);
    free(c->admin_token);
    free(c->client_name);
    free(c);
}

uint32_t cqrps_shard_count(const cqrps_client_t *c)
{
    return c ? c->nconns : 0;
}

int cqrps_server_info(cqrps_client_t *c, cqrps_server_info_t *info)
{
    if (!c || !info)
        return CQRPS_EINVAL;
    for (uint32_t i = 0; i < c->nconns; i++) {
        int rc = cq_conn_ensure(c, &c->conns[i]);
        if (rc < 0)
            return rc;
    }
    *info = c->conns[0].info;
    for (uint32_t i = 1; i < c->nconns; i++) {
        const cqrps_server_info_t *o = &c->conns[i].info;
        if (o->max_frame_bytes && o->max_frame_bytes < info->max_frame_bytes)
            info->max_frame_bytes = o->max_frame_bytes;
        if (o->max_batch && o->max_batch < info->max_batch)
            info->max_batch = o->max_batch;
        info->admin = info->admin && o->admin;
    }
    return 0;
}

/* ---- Operations -------------------------------------------------------- */

cq_op_t *cq_op_new(cqrps_client_t *c, cq_okind_t kind, const char *table)
{
    cq_op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->kind = kind;
    if (table)
        snprintf(op->table, sizeof(op->table), "%s", table);
    if (kind == CQ_O_RPC) {
        op->resp = calloc(c->nconns, sizeof(*op->resp));
        if (!op->resp) {
            free(op);
            return NULL;
        }
        op->nresp = c->nconns;
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
    for (size_t i = 0; i < sizeof(op->scratch) / sizeof(op->scratch[0]); i++)
        free(op->scratch[i]);
    free(op);
}

int cq_op_finish(cqrps_client_t *c, cq_op_t *op)
{
    cq_pump(c, op);
    if (op->err) {
        snprintf(c->last_error, sizeof(c->last_error), "%s", op->msg);
        return op->err;
    }
    if (op->bag_div) {
        /* Sharded mean pooling: the shards summed, the client divides. */
        for (size_t b = 0; b < op->nbags; b++) {
            if (op->bag_div[b] <= 1)
                continue;
            float inv = 1.0f / (float)op->bag_div[b];
            float *row = op->out + b * op->dim;
            for (uint32_t k = 0; k < op->dim; k++)
                row[k] *= inv;
        }
    }
    return 0;
}

int cqrps_wait(cqrps_client_t *c, cqrps_ticket_t ticket)
{
    if (!c)
        return CQRPS_EINVAL;
    cq_op_t **pp = &c->tickets;
    while (*pp && (*pp)->ticket != ticket)
        pp = &(*pp)->next;
    if (!*pp || ticket == 0)
        return cq_fail(c, CQRPS_EINVAL, "unknown ticket %llu",
                       (unsigned long long)ticket);
    cq_op_t *op = *pp;
    *pp = op->next;
    int rc = cq_op_finish(c, op);
    cq_op_free(op);
    return rc;
}

/* ---- Reply delivery ---------------------------------------------------- */

static void deliver_vectors(cqrps_client_t *c, cq_conn_t *conn,
                            const cq_pending_t *p, const cq_resp_hdr_t *h)
{
    cq_op_t *op = p->op;
    uint32_t dim;
    const unsigned char *vec;
    size_t vlen;
    if (h->reply_field != CQ_RESP_LOOKUP ||
        cq_lookup_reply_decode(h->reply, h->reply_len, &dim, &vec, &vlen) <
            0) {
        cq_op_error(op, CQRPS_EPROTO, "malformed lookup reply from %s",
                    conn->addr);
        return;
    }
    if (dim != op->dim) {
        cq_dim_drop(c, op->table);
        cq_op_error(op, CQRPS_EDIM,
                    "table %s has dim %u on %s, the client expected %u "
                    "(dropped and created again?)",
                    op->table, dim, conn->addr, op->dim);
        return;
    }
    const size_t row = (size_t)dim * sizeof(float);
    if (vlen != p->count * row) {
        cq_op_error(op, CQRPS_EPROTO,
                    "lookup reply from %s carries %zu bytes, expected %zu",
                    conn->addr, vlen, p->count * row);
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

void cq_deliver(cqrps_client_t *c, cq_conn_t *conn, const cq_pending_t *p,
                const cq_resp_hdr_t *h, const unsigned char *body,
                size_t len)
{
    cq_op_t *op = p->op;
    assert(op->outstanding > 0);
    if (h->status != 0) {
        int err = h->status > 0x7fff ? CQRPS_EINTERNAL : -(int)h->status;
        int mlen = h->msg_len > 400 ? 400 : (int)h->msg_len;
        const char *m = h->msg;
        if (mlen == 0) {
            m = cqrps_strerror(err);
            mlen = (int)strlen(m);
        }
        if (c->nconns > 1)
            cq_op_error(op, err, "%s: %.*s", conn->addr, mlen, m);
        else
            cq_op_error(op, err, "%.*s", mlen, m);
        if ((err == CQRPS_EDIM || err == CQRPS_ENOTFOUND) && op->table[0])
            cq_dim_drop(c, op->table);
    } else {
        switch (p->kind) {
        case CQ_P_LOOKUP:
        case CQ_P_POOLED:
            if (!op->err)
                deliver_vectors(c, conn, p, h);
            break;
        case CQ_P_PUSH: {
            uint64_t applied;
            if (h->reply_field != CQ_RESP_PUSH ||
                cq_push_reply_decode(h->reply, h->reply_len, &applied) < 0)
                cq_op_error(op, CQRPS_EPROTO, "malformed push reply from %s",
                            conn->addr);
            break;
        }
        case CQ_P_RPC: {
            Cqrps__V1__Response *r =
                cqrps__v1__response__unpack(NULL, len, body);
            if (!r) {
                cq_op_error(op, CQRPS_EPROTO, "undecodable reply from %s",
                            conn->addr);
                break;
            }
            assert(conn->index < op->nresp);
            if (op->resp[conn->index])
                cqrps__v1__response__free_unpacked(op->resp[conn->index],
                                                   NULL);
            op->resp[conn->index] = r;
            break;
        }
        }
    }
    op->outstanding--;
}

/* ---- Table-dim cache --------------------------------------------------- */

void cq_dim_put(cqrps_client_t *c, const char *name, uint32_t dim)
{
    for (size_t i = 0; i < c->ndims; i++) {
        if (strcmp(c->dims[i].name, name) == 0) {
            c->dims[i].dim = dim;
            return;
        }
    }
    if (c->ndims >= CQ_DIMS_MAX)
        c->ndims = 0; /* a client that cycles through many tables */
    if (c->ndims == c->dims_cap) {
        size_t ncap = c->dims_cap ? c->dims_cap * 2 : 8;
        cq_dim_t *nd = realloc(c->dims, ncap * sizeof(*nd));
        if (!nd)
            return; /* a cache: failing to remember is harmless */
        c->dims = nd;
        c->dims_cap = ncap;
    }
    snprintf(c->dims[c->ndims].name, sizeof(c->dims[c->ndims].name), "%s",
             name);
    c->dims[c->ndims].dim = dim;
    c->ndims++;
}

void cq_dim_drop(cqrps_client_t *c, const char *name)
{
    for (size_t i = 0; i < c->ndims; i++) {
        if (strcmp(c->dims[i].name, name) == 0) {
            c->dims[i] = c->dims[--c->ndims];
            return;
        }
    }
}

int cqrps_table_dim(cqrps_client_t *c, const char *name, uint32_t *dim)
{
    if (!c || !dim)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, name);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < c->ndims; i++) {
        if (strcmp(c->dims[i].name, name) == 0) {
            *dim = c->dims[i].dim;
            return 0;
        }
    }
    cqrps_table_info_t info;
    rc = cqrps_describe_table(c, name, &info); /* fills the cache */
    if (rc < 0)
        return rc;
    *dim = info.config.dim;
    return 0;
}

/* ---- Generic RPC ------------------------------------------------------- */

int cq_rpc_send(cqrps_client_t *c, cq_op_t *op, uint32_t s,
                Cqrps__V1__Request *req)
{
    cq_conn_t *conn = &c->conns[s];
    int rc = cq_conn_ensure(c, conn);
    if (rc < 0) {
        cq_op_error(op, rc, "%s", c->last_error);
        return rc;
    }
    rc = cq_rpc_enqueue(conn, op, req);
    if (rc < 0)
        cq_op_error(op, rc, "request to %s: %s", conn->addr,
                    rc == CQRPS_ELIMIT ? "request larger than the server's "
                                         "frame limit"
                                       : cqrps_strerror(rc));
    return rc;
}

int cq_rpc(cqrps_client_t *c, Cqrps__V1__Request *req, int flags,
           const char *table, cq_op_t **opp)
{
    int tries = (flags & CQ_RPC_RETRY) && c->opt.reconnect ? 2 : 1;
    int rc = 0;
    *opp = NULL;
    for (int t = 0; t < tries; t++) {
        cq_op_t *op = cq_op_new(c, CQ_O_RPC, table);
        if (!op)
            return cq_fail(c, CQRPS_ENOMEM, "out of memory");
        uint32_t n = (flags & CQ_RPC_ALL) ? c->nconns : 1;
        for (uint32_t s = 0; s < n; s++)
            if (cq_rpc_send(c, op, s, req) < 0)
                break;
        cq_pump(c, NULL);
        rc = cq_op_finish(c, op);
        *opp = op;
        if (rc != CQRPS_ECONN || t + 1 == tries)
            break;
        cq_op_free(op);
        *opp = NULL;
    }
    return rc;
}
