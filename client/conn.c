/* conn.c -- libcqrps's sockets: connect with a timeout, Hello, the write
 * queue, the poll() pump that writes and reads every connection at once,
 * and failure (see conn.h for the model and the rules).
 *
 * Sockets are non-blocking and every wait is a poll() with a deadline, so
 * no call blocks longer than its timeouts. Non-blocking matters for more
 * than timeouts: while a long pipeline is being written, the server's
 * replies must be read, or a server that stops reading a connection whose
 * replies pile up (backpressure) and a client that only writes would wait
 * for each other forever.
 */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "proto/varint.h"

/* Replies larger than this are a protocol error whatever the server said
 * its frame limit is: a guard against a corrupt length prefix. */
#define CQ_REPLY_MAX_ABS (1u << 30)
/* Free space kept at the end of the read buffer for one recv(). */
#define CQ_READ_CHUNK (256u * 1024u)
/* Slices per sendmsg(). */
#define CQ_IOV_BATCH 64

/* 1 while the connection has bytes to write or replies to read. */
static int conn_busy(const cq_conn_t *conn)
{
    return conn->pcount || conn->nsegs || conn->dst;
}

int cq_fail(cq_net_t *net, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(net->last_error, sizeof(net->last_error), fmt, ap);
    va_end(ap);
    return err;
}

static void conn_init(cq_conn_t *conn, uint32_t index)
{
    memset(conn, 0, sizeof(*conn));
    conn->index = index;
    conn->fd = -1;
    conn->next_id = 1;
}

static void conn_close(cq_conn_t *conn)
{
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    conn->nsegs = conn->seg_pos = conn->seg_off = 0;
    conn->wown_len = 0;
    conn->rlen = 0;
    conn->dst = NULL;
    conn->dst_left = 0;
}

static void conn_free(cq_conn_t *conn)
{
    assert(conn->pcount == 0);
    conn_close(conn);
    free(conn->segs);
    free(conn->wown);
    free(conn->rbuf);
    free(conn->pend);
    memset(conn, 0, sizeof(*conn));
    conn->fd = -1;
}

static void conn_fail(cq_conn_t *conn, int err, const char *msg)
{
    if (conn->dst) {
        cq_op_abandon(conn->dpend.op, err, msg);
        conn->dst = NULL;
    }
    while (conn->pcount > 0) {
        cq_op_abandon(conn->pend[conn->phead].op, err, msg);
        conn->phead = (conn->phead + 1) % conn->pcap;
        conn->pcount--;
    }
    conn->phead = 0;
    conn_close(conn);
}

static void conn_fail_errno(cq_conn_t *conn, const char *what, int e)
{
    char msg[CQ_ERRMSG_MAX];
    snprintf(msg, sizeof(msg), "%s %s: %s", what, conn->addr, strerror(e));
    conn_fail(conn, e == ETIMEDOUT ? CQRPS_ETIMEDOUT : CQRPS_ECONN, msg);
}

/* ---- The connections of a client --------------------------------------- */

int cq_net_init(cq_net_t *net, uint32_t n)
{
    net->conns = calloc(n, sizeof(*net->conns));
    net->pfds = calloc(n, sizeof(*net->pfds));
    net->pconns = calloc(n, sizeof(*net->pconns));
    if (!net->conns || !net->pfds || !net->pconns)
        return cq_fail(net, CQRPS_ENOMEM, "out of memory");
    net->nconns = n;
    for (uint32_t i = 0; i < n; i++)
        conn_init(&net->conns[i], i);
    return 0;
}

void cq_net_fail(cq_net_t *net, int err, const char *msg)
{
    for (uint32_t i = 0; i < net->nconns; i++)
        conn_fail(&net->conns[i], err, msg);
}

void cq_net_free(cq_net_t *net)
{
    for (uint32_t i = 0; i < net->nconns; i++)
        conn_free(&net->conns[i]);
    free(net->conns);
    free(net->pfds);
    free(net->pconns);
    cq_dims_free(&net->dims);
    net->conns = NULL;
    net->pfds = NULL;
    net->pconns = NULL;
    net->nconns = 0;
}

/* ---- Write queue ------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    void *np = realloc(*p, ncap * elem);
    if (!np)
        return CQRPS_ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

int cq_conn_reserve(cq_conn_t *conn, size_t owned_bytes, size_t segs,
                    size_t pending)
{
    if (grow((void **)&conn->wown, &conn->wown_cap,
             conn->wown_len + owned_bytes, 1) < 0 ||
        grow((void **)&conn->segs, &conn->segs_cap, conn->nsegs + segs,
             sizeof(cq_wseg_t)) < 0)
        return CQRPS_ENOMEM;
    if (conn->pcount + pending > conn->pcap) {
        /* The ring is unwrapped into the new array. */
        size_t ncap = conn->pcap ? conn->pcap : 16;
        while (ncap < conn->pcount + pending)
            ncap *= 2;
        cq_pending_t *np = malloc(ncap * sizeof(*np));
        if (!np)
            return CQRPS_ENOMEM;
        for (size_t i = 0; i < conn->pcount; i++)
            np[i] = conn->pend[(conn->phead + i) % conn->pcap];
        free(conn->pend);
        conn->pend = np;
        conn->pcap = ncap;
        conn->phead = 0;
    }
    return 0;
}

unsigned char *cq_conn_claim(cq_conn_t *conn, size_t len, size_t *off)
{
    assert(conn->wown_len + len <= conn->wown_cap);
    *off = conn->wown_len;
    conn->wown_len += len;
    return conn->wown + *off;
}

void cq_conn_put_claimed(cq_conn_t *conn, size_t off, size_t len)
{
    if (len == 0)
        return;
    cq_wseg_t *last = conn->nsegs ? &conn->segs[conn->nsegs - 1] : NULL;
    if (last && !last->ext && last->off + last->len == off) {
        last->len += len; /* contiguous with the previous owned slice */
    } else {
        assert(conn->nsegs < conn->segs_cap);
        conn->segs[conn->nsegs++] = (cq_wseg_t){ NULL, off, len };
    }
}

void cq_conn_put_ext(cq_conn_t *conn, const void *p, size_t len)
{
    if (len == 0)
        return;
    assert(conn->nsegs < conn->segs_cap);
    conn->segs[conn->nsegs++] = (cq_wseg_t){ p, 0, len };
}

cq_pending_t *cq_conn_push_pending(cq_conn_t *conn)
{
    assert(conn->pcount < conn->pcap);
    if (!conn_busy(conn))
        conn->last_progress_ms = cq_now_ms(); /* idle time is not silence */
    cq_pending_t *p = &conn->pend[(conn->phead + conn->pcount) % conn->pcap];
    conn->pcount++;
    memset(p, 0, sizeof(*p));
    p->id = conn->next_id++;
    return p;
}

int cq_rpc_enqueue(cq_conn_t *conn, cq_op_t *op, Cqrps__V1__Request *req)
{
    /* The id is part of the encoding: set it before sizing. */
    req->id = conn->next_id;
    size_t len = cqrps__v1__request__get_packed_size(req);
    if (len > UINT32_MAX ||
        (conn->info.max_frame_bytes && len > conn->info.max_frame_bytes))
        return CQRPS_ELIMIT;
    if (cq_conn_reserve(conn, 4 + len, 1, 1) < 0)
        return CQRPS_ENOMEM;
    if (!conn_busy(conn))
        conn->last_progress_ms = cq_now_ms();
    size_t off;
    unsigned char *p = cq_conn_claim(conn, 4 + len, &off);
    p[0] = (unsigned char)(len >> 24);
    p[1] = (unsigned char)(len >> 16);
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
    size_t packed = cqrps__v1__request__pack(req, p + 4);
    assert(packed == len);
    (void)packed;
    cq_conn_put_claimed(conn, off, 4 + len);
    cq_pending_t *pe = cq_conn_push_pending(conn);
    assert(pe->id == req->id);
    pe->op = op;
    pe->kind = CQ_P_RPC;
    op->outstanding++;
    return 0;
}

/* ---- Connecting -------------------------------------------------------- */

static int connect_one(const struct addrinfo *ai, uint64_t deadline,
                       int *fd_out)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
                                       SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return errno;
    int e = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            e = errno;
            goto fail;
        }
        for (;;) {
            uint64_t now = cq_now_ms();
            if (now >= deadline) {
                e = ETIMEDOUT;
                goto fail;
            }
            struct pollfd pfd = { fd, POLLOUT, 0 };
            int rc = poll(&pfd, 1, (int)(deadline - now));
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc < 0) {
                e = errno;
                goto fail;
            }
            if (rc > 0)
                break;
        }
        socklen_t sl = sizeof(e);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) < 0)
            e = errno;
        if (e)
            goto fail;
    }
    /* Small requests must not wait for Nagle's timer. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    *fd_out = fd;
    return 0;
fail:
    close(fd);
    return e;
}

static int conn_hello(cq_net_t *net, cq_conn_t *conn)
{
    const cqrps_options_t *opt = net->opt;
    Cqrps__V1__Hello hello = CQRPS__V1__HELLO__INIT;
    hello.protocol_version = CQRPS_PROTOCOL_VERSION;
    hello.token.data = (uint8_t *)opt->token;
    hello.token.len = opt->token_len;
    hello.admin_token.data = (uint8_t *)opt->admin_token;
    hello.admin_token.len = opt->admin_token_len;
    hello.client_name = (char *)(opt->client_name ? opt->client_name : "");
    Cqrps__V1__Request req = CQRPS__V1__REQUEST__INIT;
    req.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    req.hello = &hello;

    cq_op_t *op = cq_op_new(CQ_O_RPC, NULL, net->nconns);
    if (!op)
        return cq_fail(net, CQRPS_ENOMEM, "hello to %s: out of memory",
                       conn->addr);
    int rc = cq_rpc_enqueue(conn, op, &req);
    if (rc < 0) {
        cq_op_free(op);
        return cq_fail(net, rc, "hello to %s: %s", conn->addr,
                       cqrps_strerror(rc));
    }
    cq_pump(net, op);
    rc = op->err;
    if (rc < 0) {
        cq_fail(net, rc, "hello to %s: %s", conn->addr, op->msg);
        goto out;
    }
    Cqrps__V1__Response *resp = op->resp[conn->index];
    if (!resp || resp->reply_case != CQRPS__V1__RESPONSE__REPLY_HELLO) {
        rc = cq_fail(net, CQRPS_EPROTO,
                     "hello to %s: reply without HelloReply", conn->addr);
        goto out;
    }
    Cqrps__V1__HelloReply *hr = resp->hello;
    if (hr->protocol_version != CQRPS_PROTOCOL_VERSION) {
        rc = cq_fail(net, CQRPS_EVERSION,
                     "hello to %s: server speaks protocol %u, client %u",
                     conn->addr, hr->protocol_version,
                     CQRPS_PROTOCOL_VERSION);
        goto out;
    }
    cqrps_server_info_t *in = &conn->info;
    snprintf(in->server_version, sizeof(in->server_version), "%s",
             hr->server_version ? hr->server_version : "");
    in->protocol_version = hr->protocol_version;
    in->admin = hr->admin ? 1 : 0;
    in->max_frame_bytes = hr->max_frame_bytes;
    in->max_batch = hr->max_batch;
    in->max_parts = hr->max_parts;
out:
    cq_op_free(op);
    if (rc < 0 && conn->pcount == 0)
        conn_close(conn);
    return rc;
}

static int conn_open(cq_net_t *net, cq_conn_t *conn)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(conn->host, conn->port, &hints, &res);
    if (g != 0)
        return cq_fail(net, CQRPS_ECONN, "resolve %s: %s", conn->addr,
                       gai_strerror(g));
    uint64_t deadline = cq_now_ms() + net->opt->connect_timeout_ms;
    int e = ENOENT, fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        e = connect_one(ai, deadline, &fd);
        if (e == 0 || e == ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (e == ETIMEDOUT)
        return cq_fail(net, CQRPS_ECONN,
                       "connect to %s: timed out after %u ms", conn->addr,
                       net->opt->connect_timeout_ms);
    if (e != 0)
        return cq_fail(net, CQRPS_ECONN, "connect to %s: %s", conn->addr,
                       strerror(e));
    conn->fd = fd;
    conn->rlen = 0;
    conn->info.max_frame_bytes = 0;
    int rc = conn_hello(net, conn);
    if (rc == 0)
        conn->ever_connected = 1;
    return rc;
}

int cq_conn_ensure(cq_net_t *net, cq_conn_t *conn)
{
    if (conn->fd >= 0 && !conn_busy(conn)) {
        /* An idle connection has nothing to read. If it is readable, the
         * server closed it (EOF or reset) or sent something we never asked
         * for: either way the stream is not one to send on. */
        struct pollfd pfd = { conn->fd, POLLIN, 0 };
        if (poll(&pfd, 1, 0) > 0)
            conn_close(conn);
    }
    if (conn->fd >= 0)
        return 0;
    if (conn->ever_connected && !net->opt->reconnect)
        return cq_fail(net, CQRPS_ECONN,
                       "connection to %s lost and reconnect is off",
                       conn->addr);
    return conn_open(net, conn);
}

/* ---- The pump ---------------------------------------------------------- */

static uint32_t reply_limit(const cq_conn_t *conn)
{
    uint64_t lim = 64u << 20;
    if ((uint64_t)conn->info.max_frame_bytes * 2 > lim)
        lim = (uint64_t)conn->info.max_frame_bytes * 2;
    return lim > CQ_REPLY_MAX_ABS ? CQ_REPLY_MAX_ABS : (uint32_t)lim;
}

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}

/* Handles one frame body. Returns -1 if the connection failed. */
static int conn_frame(cq_net_t *net, cq_conn_t *conn,
                      const unsigned char *body, size_t len)
{
    char msg[CQ_ERRMSG_MAX];
    cq_resp_hdr_t h;
    if (cq_resp_scan(body, len, &h) < 0) {
        snprintf(msg, sizeof(msg), "malformed reply from %s", conn->addr);
        conn_fail(conn, CQRPS_EPROTO, msg);
        return -1;
    }
    if (conn->pcount == 0 || conn->pend[conn->phead].id != h.id) {
        snprintf(msg, sizeof(msg),
                 "reply id %llu from %s does not match the request sent",
                 (unsigned long long)h.id, conn->addr);
        conn_fail(conn, CQRPS_EPROTO, msg);
        return -1;
    }
    cq_pending_t p = conn->pend[conn->phead];
    conn->phead = (conn->phead + 1) % conn->pcap;
    conn->pcount--;
    const cq_origin_t from = { conn->addr, conn->index, net->nconns > 1,
                               &net->dims };
    cq_deliver(&from, &p, &h, body, len);
    return 0;
}

/* Replies at least this large may be received directly. */
#define CQ_DIRECT_MIN (64u * 1024u)

static int hdr_varint(const unsigned char **p, const unsigned char *end,
                      uint64_t *v)
{
    return cqr_varint_get(p, end, CQR_VARINT_MAX, v) ? 0 : -1;
}

/* The Response envelope of a frame whose body starts at f (have bytes
 * received): id, status, message, then the reply as the last field. On
 * an OK reply to the pending request pe whose LookupReply runs to the end
 * of the frame (fend), returns its first byte; else NULL. */
static const unsigned char *direct_envelope(const cq_pending_t *pe,
                                            const unsigned char *f,
                                            const unsigned char *end,
                                            const unsigned char *fend)
{
    const unsigned char *p = f;
    uint64_t key, v, id = 0, status = 0, sublen;
    int have_id = 0;
    for (;;) {
        if (hdr_varint(&p, end, &key) < 0)
            return NULL;
        if (key == (1 << 3 | 0) || key == (2 << 3 | 0)) {
            if (hdr_varint(&p, end, &v) < 0)
                return NULL;
            if (key >> 3 == 1) {
                id = v;
                have_id = 1;
            } else {
                status = v;
            }
        } else if (key == (3 << 3 | 2)) {
            if (hdr_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return NULL;
            p += v;
        } else if (key == ((uint64_t)CQ_RESP_LOOKUP << 3 | 2)) {
            break;
        } else {
            return NULL;
        }
    }
    if (hdr_varint(&p, end, &sublen) < 0 || sublen != (uint64_t)(fend - p))
        return NULL;
    if (!have_id || id != pe->id || status != 0)
        return NULL;
    return p;
}

/* Takes the pending request pe off the ring for a direct receive. */
static void direct_take(cq_conn_t *conn, const cq_pending_t *pe, int multi)
{
    conn->dpend = *pe;
    conn->dmulti = multi;
    conn->dseg = 0;
    conn->dtail_len = conn->dtail_got = 0;
    conn->phead = (conn->phead + 1) % conn->pcap;
    conn->pcount--;
}

/* A single-table lookup: LookupReply is dim, then the vectors up to the
 * end of the frame. */
static int direct_begin_one(cq_conn_t *conn, const cq_pending_t *pe,
                            const unsigned char *p, const unsigned char *end,
                            const unsigned char *fend)
{
    const cq_op_t *op = pe->op;
    uint64_t key, dim, vlen;
    if (hdr_varint(&p, end, &key) < 0 || key != (1 << 3 | 0) ||
        hdr_varint(&p, end, &dim) < 0)
        return 0;
    if (hdr_varint(&p, end, &key) < 0 || key != (2 << 3 | 2) ||
        hdr_varint(&p, end, &vlen) < 0 || vlen != (uint64_t)(fend - p))
        return 0;
    const size_t row = (size_t)op->dim * sizeof(float);
    if (dim != op->dim || vlen != pe->count * row)
        return 0;
    unsigned char *dst = (unsigned char *)(op->out + pe->base * op->dim);
    size_t got = (size_t)(end - p);
    memcpy(dst, p, got);
    direct_take(conn, pe, 0);
    conn->dst = dst + got;
    conn->dst_left = (size_t)vlen - got;
    return 1;
}

/* Moves a multi-table direct receive to its next region with bytes to
 * come: segment dseg's output, then the tail (the fields after the
 * vectors). 0 when every region is full. */
static int direct_next(cq_conn_t *conn)
{
    if (!conn->dmulti)
        return 0;
    while (conn->dseg < conn->dpend.nsegs) {
        size_t len;
        unsigned char *d = cq_mlookup_direct_dst(&conn->dpend, conn->dseg++,
                                                 &len);
        if (len > 0) {
            conn->dst = d;
            conn->dst_left = len;
            return 1;
        }
    }
    if (conn->dtail_got < conn->dtail_len) {
        conn->dst = conn->dtail + conn->dtail_got;
        conn->dst_left = conn->dtail_len - conn->dtail_got;
        conn->dtail_got = conn->dtail_len;
        return 1;
    }
    return 0;
}

/* A multi-table lookup whose segments are contiguous in their parts:
 * LookupReply is an optional dim, the vectors, then a short tail (dims,
 * bf16) that is received into conn->dtail and checked at the end. */
static int direct_begin_multi(cq_conn_t *conn, const cq_pending_t *pe,
                              const unsigned char *p, const unsigned char *end,
                              const unsigned char *fend)
{
    const size_t want = cq_mlookup_direct_bytes(pe);
    uint64_t key, dim = 0, vlen;
    if (want == 0 || hdr_varint(&p, end, &key) < 0)
        return 0;
    if (key == (1 << 3 | 0)) {
        if (hdr_varint(&p, end, &dim) < 0 || dim > UINT32_MAX ||
            hdr_varint(&p, end, &key) < 0)
            return 0;
    }
    if (key != (2 << 3 | 2) || hdr_varint(&p, end, &vlen) < 0 ||
        vlen != want || vlen > (uint64_t)(fend - p) ||
        (size_t)(fend - p) - vlen > sizeof(conn->dtail))
        return 0;
    direct_take(conn, pe, 1);
    conn->ddim = (uint32_t)dim;
    conn->dvlen = (size_t)vlen;
    conn->dtail_len = (size_t)(fend - p) - (size_t)vlen;
    /* The bytes already here go where the socket's next ones would. */
    conn->dst = NULL;
    conn->dst_left = 0;
    for (size_t got = (size_t)(end - p); got > 0;) {
        if (conn->dst_left == 0 && !direct_next(conn))
            break; /* cannot happen: the frame is not complete */
        size_t n = got < conn->dst_left ? got : conn->dst_left;
        memcpy(conn->dst, p, n);
        p += n;
        got -= n;
        conn->dst += n;
        conn->dst_left -= n;
    }
    if (conn->dst_left == 0 && !direct_next(conn)) {
        conn->dst = conn->dtail; /* nothing left: finish on the next read */
        conn->dst_left = 0;
    }
    return 1;
}

/* Tries to switch to direct receive for the frame starting at f (have
 * bytes of its body received, flen in total): only for the next pending
 * request if it is a plain lookup whose rows are contiguous in the
 * caller's output, or a multi-table lookup whose segments are, and only
 * if the received prefix shows an OK Response whose LookupReply carries
 * exactly the vectors of the expected size in float32 (the layout
 * protobuf encoders produce: fields in number order). Anything else, or a
 * prefix too short to tell, returns 0 and the frame takes the ordinary
 * path. On 1, the frame's bytes after the vectors' start are copied to
 * the output and the rest will be received there. */
static int direct_begin(cq_conn_t *conn, const unsigned char *f,
                        size_t have, uint32_t flen)
{
    if (conn->pcount == 0 || flen < CQ_DIRECT_MIN)
        return 0;
    const cq_pending_t *pe = &conn->pend[conn->phead];
    const cq_op_t *op = pe->op;
    const unsigned char *end = f + have, *fend = f + flen;
    if (pe->kind == CQ_P_LOOKUP && !pe->pos && !op->accumulate && !op->err) {
        const unsigned char *p = direct_envelope(pe, f, end, fend);
        return p ? direct_begin_one(conn, pe, p, end, fend) : 0;
    }
    if (pe->kind == CQ_P_MLOOKUP) {
        const unsigned char *p = direct_envelope(pe, f, end, fend);
        return p ? direct_begin_multi(conn, pe, p, end, fend) : 0;
    }
    return 0;
}

/* One non-blocking recv() into buf: the bytes received (> 0), or -1 when
 * there is nothing more to read now (EAGAIN) or the connection failed
 * (closed by the server, or a read error: conn_fail has run). */
static ssize_t conn_recv(cq_conn_t *conn, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(conn->fd, buf, len, MSG_DONTWAIT);
        if (n > 0)
            return n;
        if (n == 0) {
            char msg[CQ_ERRMSG_MAX];
            snprintf(msg, sizeof(msg),
                     "connection to %s closed by the server", conn->addr);
            conn_fail(conn, CQRPS_ECONN, msg);
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_fail_errno(conn, "read from", errno);
        return -1;
    }
}

/* Receives into the caller's output; completes the request when done. */
static void direct_read(cq_net_t *net, cq_conn_t *conn)
{
    for (;;) {
        while (conn->dst_left > 0) {
            ssize_t n = conn_recv(conn, conn->dst, conn->dst_left);
            if (n < 0)
                return;
            conn->dst += n;
            conn->dst_left -= (size_t)n;
            conn->last_progress_ms = cq_now_ms();
        }
        if (!direct_next(conn))
            break;
    }
    conn->dst = NULL;
    assert(conn->dpend.op->outstanding > 0);
    if (conn->dmulti) {
        const cq_origin_t from = { conn->addr, conn->index, net->nconns > 1,
                                   &net->dims };
        cq_deliver_mlookup_direct(&from, &conn->dpend, conn->ddim,
                                  conn->dvlen, conn->dtail, conn->dtail_len);
    } else {
        conn->dpend.op->outstanding--;
    }
}

static void conn_read(cq_net_t *net, cq_conn_t *conn)
{
    char msg[CQ_ERRMSG_MAX];
    /* A bounded number of reads per wakeup keeps the shards fair. */
    for (int rounds = 0; rounds < 8 && conn->fd >= 0; rounds++) {
        if (conn->dst) {
            direct_read(net, conn);
            if (conn->dst || conn->fd < 0)
                return; /* drained (or failed) mid-frame */
            continue;
        }
        size_t want = conn->rlen + CQ_READ_CHUNK;
        if (conn->rlen >= 4) {
            uint32_t flen = be32(conn->rbuf);
            if (flen > reply_limit(conn)) {
                snprintf(msg, sizeof(msg),
                         "reply of %u bytes from %s exceeds the limit", flen,
                         conn->addr);
                conn_fail(conn, CQRPS_EPROTO, msg);
                return;
            }
            if ((size_t)flen + 4 > want)
                want = (size_t)flen + 4;
        }
        if (want > conn->rcap) {
            unsigned char *nb = realloc(conn->rbuf, want);
            if (!nb) {
                snprintf(msg, sizeof(msg), "out of memory reading from %s",
                         conn->addr);
                conn_fail(conn, CQRPS_ENOMEM, msg);
                return;
            }
            conn->rbuf = nb;
            conn->rcap = want;
        }
        ssize_t n = conn_recv(conn, conn->rbuf + conn->rlen,
                              conn->rcap - conn->rlen);
        if (n < 0)
            return;
        conn->rlen += (size_t)n;
        conn->last_progress_ms = cq_now_ms();

        size_t pos = 0;
        while (conn->rlen - pos >= 4) {
            uint32_t flen = be32(conn->rbuf + pos);
            if (flen > reply_limit(conn)) {
                snprintf(msg, sizeof(msg),
                         "reply of %u bytes from %s exceeds the limit", flen,
                         conn->addr);
                conn_fail(conn, CQRPS_EPROTO, msg);
                return;
            }
            if (conn->rlen - pos - 4 < flen) {
                /* An incomplete large lookup reply: finish it in place. */
                if (direct_begin(conn, conn->rbuf + pos + 4,
                                 conn->rlen - pos - 4, flen))
                    conn->rlen = pos;
                break;
            }
            if (conn_frame(net, conn, conn->rbuf + pos + 4, flen) < 0)
                return;
            pos += 4 + (size_t)flen;
        }
        if (pos > 0) {
            memmove(conn->rbuf, conn->rbuf + pos, conn->rlen - pos);
            conn->rlen -= pos;
        }
        if ((size_t)n < CQ_READ_CHUNK / 2)
            return; /* drained, most likely; poll() tells for sure */
    }
}

static void conn_write(cq_conn_t *conn)
{
    while (conn->fd >= 0 && conn->seg_pos < conn->nsegs) {
        struct iovec iov[CQ_IOV_BATCH];
        int niov = 0;
        for (size_t i = conn->seg_pos; i < conn->nsegs && niov < CQ_IOV_BATCH;
             i++) {
            const cq_wseg_t *s = &conn->segs[i];
            const unsigned char *base =
                s->ext ? (const unsigned char *)s->ext : conn->wown + s->off;
            size_t skip = i == conn->seg_pos ? conn->seg_off : 0;
            iov[niov].iov_base = (void *)(base + skip);
            iov[niov].iov_len = s->len - skip;
            niov++;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)niov;
        ssize_t n = sendmsg(conn->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_fail_errno(conn, "write to", errno);
            return;
        }
        conn->last_progress_ms = cq_now_ms();
        size_t left = (size_t)n;
        while (left > 0) {
            const cq_wseg_t *s = &conn->segs[conn->seg_pos];
            size_t rest = s->len - conn->seg_off;
            if (left >= rest) {
                left -= rest;
                conn->seg_pos++;
                conn->seg_off = 0;
            } else {
                conn->seg_off += left;
                left = 0;
            }
        }
    }
    if (conn->seg_pos == conn->nsegs) {
        conn->nsegs = conn->seg_pos = conn->seg_off = 0;
        conn->wown_len = 0;
    }
}

static int pump_done(const cq_net_t *net, const cq_op_t *op)
{
    if (op)
        return op->outstanding == 0;
    for (uint32_t i = 0; i < net->nconns; i++)
        if (net->conns[i].fd >= 0 && net->conns[i].nsegs > 0)
            return 0;
    return 1;
}

int cq_pump(cq_net_t *net, cq_op_t *op)
{
    const uint32_t rt = net->opt->request_timeout_ms;
    while (!pump_done(net, op)) {
        nfds_t nfds = 0;
        uint64_t now = cq_now_ms();
        int timeout = -1;
        for (uint32_t i = 0; i < net->nconns; i++) {
            cq_conn_t *conn = &net->conns[i];
            if (conn->fd < 0 || !conn_busy(conn))
                continue;
            net->pfds[nfds].fd = conn->fd;
            net->pfds[nfds].events = POLLIN | (conn->nsegs ? POLLOUT : 0);
            net->pfds[nfds].revents = 0;
            net->pconns[nfds] = conn;
            nfds++;
            if (rt) {
                uint64_t dl = conn->last_progress_ms + rt;
                int left = dl > now ? (int)(dl - now) : 0;
                if (timeout < 0 || left < timeout)
                    timeout = left;
            }
        }
        /* Every pending entry lives on an open connection, and a failed
         * connection counts its entries down, so an unfinished op always
         * has something to wait for. */
        assert(nfds > 0);
        if (nfds == 0)
            return CQRPS_EINTERNAL;
        int rc = poll(net->pfds, nfds, timeout);
        if (rc < 0 && errno != EINTR) {
            for (nfds_t k = 0; k < nfds; k++)
                conn_fail_errno(net->pconns[k], "poll on", errno);
            continue;
        }
        for (nfds_t k = 0; rc > 0 && k < nfds; k++) {
            cq_conn_t *conn = net->pconns[k];
            short re = net->pfds[k].revents;
            if (re & (POLLIN | POLLERR | POLLHUP))
                conn_read(net, conn);
            if (conn->fd >= 0 && (re & POLLOUT))
                conn_write(conn);
        }
        if (rt) {
            now = cq_now_ms();
            for (nfds_t k = 0; k < nfds; k++) {
                cq_conn_t *conn = net->pconns[k];
                if (conn->fd >= 0 && conn_busy(conn) &&
                    now >= conn->last_progress_ms + rt) {
                    char msg[CQ_ERRMSG_MAX];
                    snprintf(msg, sizeof(msg),
                             "no reply from %s within %u ms", conn->addr, rt);
                    conn_fail(conn, CQRPS_ETIMEDOUT, msg);
                }
            }
        }
    }
    return 0;
}
