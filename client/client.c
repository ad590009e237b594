/* client.c -- libcqrps's client object: options and names, connect and
 * close, tickets, the end of an operation and the generic RPC path (see
 * client.h; the layers are listed in op.h).
 */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cqrps.pb-c.h"
#include "shard.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libcqrps moves IDs and vectors as raw little-endian bytes"
#endif

/* The message of the last failed cqrps_connect, per thread, because a
 * failed connect has no client to hold it. */
static _Thread_local char tls_connect_error[CQ_ERRMSG_MAX];

/* ---- Names ------------------------------------------------------------- */

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

const char *cqrps_last_error(cqrps_client_t *c)
{
    return c ? c->net.last_error : tls_connect_error;
}

int cq_check_name(cqrps_client_t *c, const char *name)
{
    if (!name || !*name)
        return cq_fail(&c->net, CQRPS_EINVAL, "table name is empty");
    if (strlen(name) > CQRPS_NAME_MAX)
        return cq_fail(&c->net, CQRPS_EINVAL,
                       "table name longer than %d bytes", CQRPS_NAME_MAX);
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
        rc = cq_fail(&c->net, CQRPS_EINVAL, "token length without a token");
        goto fail;
    }
    c->token = dup_bytes(c->opt.token, c->opt.token_len);
    c->admin_token = dup_bytes(c->opt.admin_token, c->opt.admin_token_len);
    c->client_name = c->opt.client_name ? strdup(c->opt.client_name) : NULL;
    if (!c->token || !c->admin_token ||
        (c->opt.client_name && !c->client_name)) {
        rc = cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
        goto fail;
    }
    c->opt.token = c->token;
    c->opt.admin_token = c->admin_token;
    c->opt.client_name = c->client_name;
    c->net.opt = &c->opt;

    rc = cq_parse_addrs(&c->net, addrs);
    if (rc < 0)
        goto fail;
    for (uint32_t i = 0; i < c->net.nconns; i++) {
        rc = cq_conn_ensure(&c->net, &c->net.conns[i]);
        if (rc < 0)
            goto fail;
    }
    *out = c;
    return 0;
fail:
    snprintf(tls_connect_error, sizeof(tls_connect_error), "%s",
             c->net.last_error);
    cqrps_close(c);
    return rc;
}

void cqrps_close(cqrps_client_t *c)
{
    if (!c)
        return;
    /* Pending entries point at tickets: close the sockets first (which
     * drops the entries), then free the tickets. */
    cq_net_fail(&c->net, CQRPS_ECONN, "client closed");
    while (c->tickets) {
        cq_op_t *op = c->tickets;
        c->tickets = op->next;
        cq_op_free(op);
    }
    cq_net_free(&c->net);
    for (size_t i = 0; i < c->nmemos; i++)
        free(c->memos[i].shard_ids);
    free(c->memos);
    free(c->token);
    free(c->admin_token);
    free(c->client_name);
    free(c);
}

uint32_t cqrps_shard_count(const cqrps_client_t *c)
{
    return c ? c->net.nconns : 0;
}

int cqrps_server_info(cqrps_client_t *c, cqrps_server_info_t *info)
{
    if (!c || !info)
        return CQRPS_EINVAL;
    for (uint32_t i = 0; i < c->net.nconns; i++) {
        int rc = cq_conn_ensure(&c->net, &c->net.conns[i]);
        if (rc < 0)
            return rc;
    }
    *info = c->net.conns[0].info;
    for (uint32_t i = 1; i < c->net.nconns; i++) {
        const cqrps_server_info_t *o = &c->net.conns[i].info;
        if (o->max_frame_bytes && o->max_frame_bytes < info->max_frame_bytes)
            info->max_frame_bytes = o->max_frame_bytes;
        if (o->max_batch && o->max_batch < info->max_batch)
            info->max_batch = o->max_batch;
        if (o->max_parts < info->max_parts)
            info->max_parts = o->max_parts;
        info->admin = info->admin && o->admin;
    }
    return 0;
}

/* ---- Operations -------------------------------------------------------- */

/* Divides each bag's row of out by its size (a sharded mean pooling). */
static void cq_bags_divide(float *out, uint32_t dim, const uint32_t *div,
                           size_t nbags)
{
    for (size_t b = 0; b < nbags; b++) {
        if (div[b] <= 1)
            continue;
        float inv = 1.0f / (float)div[b];
        float *row = out + b * dim;
        for (uint32_t k = 0; k < dim; k++)
            row[k] *= inv;
    }
}

int cq_op_finish(cqrps_client_t *c, cq_op_t *op)
{
    cq_pump(&c->net, op);
    if (op->err) {
        snprintf(c->net.last_error, sizeof(c->net.last_error), "%s",
                 op->msg);
        return op->err;
    }
    /* Sharded mean pooling: the shards summed, the client divides. */
    if (op->bag_div)
        cq_bags_divide(op->out, op->dim, op->bag_div, op->nbags);
    for (size_t i = 0; i < op->nparts; i++)
        if (op->parts[i].bag_div)
            cq_bags_divide(op->parts[i].out, op->parts[i].dim,
                           op->parts[i].bag_div, op->parts[i].rows);
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
        return cq_fail(&c->net, CQRPS_EINVAL, "unknown ticket %llu",
                       (unsigned long long)ticket);
    cq_op_t *op = *pp;
    *pp = op->next;
    int rc = cq_op_finish(c, op);
    cq_op_free(op);
    return rc;
}

int cq_call_sync(cqrps_client_t *c, cq_start_fn start, const void *call,
                 int retry)
{
    int tries = retry && c && c->opt.reconnect ? 2 : 1;
    int rc = 0;
    for (int t = 0; t < tries; t++) {
        cq_op_t *op;
        rc = start(c, call, &op);
        if (rc == 0) {
            rc = cq_op_finish(c, op);
            cq_op_free(op);
        }
        if (rc != CQRPS_ECONN)
            break;
    }
    return rc;
}

int cq_call_ticket(cqrps_client_t *c, cq_start_fn start, const void *call,
                   cqrps_ticket_t *ticket)
{
    if (!c || !ticket)
        return CQRPS_EINVAL;
    *ticket = 0;
    cq_op_t *op;
    int rc = start(c, call, &op);
    if (rc < 0)
        return rc;
    op->ticket = c->next_ticket++;
    op->next = c->tickets;
    c->tickets = op;
    *ticket = op->ticket;
    return 0;
}

int cq_connect_all(cqrps_client_t *c, cq_op_t *op)
{
    for (uint32_t s = 0; s < c->net.nconns; s++) {
        int rc = cq_conn_ensure(&c->net, &c->net.conns[s]);
        if (rc < 0) {
            cq_op_error(op, rc, "%s", c->net.last_error);
            return rc;
        }
    }
    return 0;
}

void cq_start_done(cqrps_client_t *c, cq_op_t *op, int rc)
{
    if (rc < 0)
        cq_op_error(op, rc, "%s", cqrps_strerror(rc));
    cq_pump(&c->net, NULL);
}

/* ---- Generic RPC ------------------------------------------------------- */

int cq_rpc_send(cqrps_client_t *c, cq_op_t *op, uint32_t s,
                Cqrps__V1__Request *req)
{
    cq_conn_t *conn = &c->net.conns[s];
    int rc = cq_conn_ensure(&c->net, conn);
    if (rc < 0) {
        cq_op_error(op, rc, "%s", c->net.last_error);
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
    const uint32_t timeout = c->opt.request_timeout_ms;
    if (flags & CQ_RPC_UNTIMED)
        c->opt.request_timeout_ms = 0;
    for (int t = 0; t < tries; t++) {
        cq_op_t *op = cq_op_new(CQ_O_RPC, table, c->net.nconns);
        if (!op)
            return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
        uint32_t n = (flags & CQ_RPC_ALL) ? c->net.nconns : 1;
        for (uint32_t s = 0; s < n; s++)
            if (cq_rpc_send(c, op, s, req) < 0)
                break;
        cq_pump(&c->net, NULL);
        rc = cq_op_finish(c, op);
        *opp = op;
        if (rc != CQRPS_ECONN || t + 1 == tries)
            break;
        cq_op_free(op);
        *opp = NULL;
    }
    c->opt.request_timeout_ms = timeout;
    return rc;
}
