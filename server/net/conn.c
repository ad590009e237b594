/* conn.c -- one client connection (conn.h). */
#include "net/conn.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "engine/err.h"
#include "ops/log.h"
#include "rpc/rpc.h"
#include "rpc/wire.h"

/* Frames handled per read callback (or idle pass) before yielding. */
#define FRAMES_PER_BATCH 32
/* Room offered per read, and the size an idle read buffer shrinks to. */
#define READ_CHUNK (64u * 1024u)
/* Replies are written when this many bytes are batched, and at the end of
 * every batch. */
#define FLUSH_BYTES (256u * 1024u)
/* A reply buffer bigger than this is freed after use, not kept. */
#define TX_KEEP_MAX (1u << 20)
/* How long a connection that got a fatal error reply may take to close. */
#define LINGER_MS 2000
/* Deferred replies a connection may wait for at once; beyond this (or
 * with --max-pending-bytes of later replies held behind them) it stops
 * taking requests until the oldest is answered. */
#define MAX_DEFERRED 16

typedef enum conn_state {
    CONN_OPEN,     /* reading and answering */
    CONN_DRAINING, /* no more reading: answer the frames already received,
                      flush, then close (peer sent EOF, or server stops) */
    CONN_LINGER,   /* done: write side shut down after the last reply,
                      input discarded until EOF or the deadline */
    CONN_CLOSING   /* uv_close called; freed in on_close */
} conn_state_t;

typedef struct conn conn_t;

/* The place of a deferred reply (server.h) in a connection's reply order,
 * with the replies to later requests held until it is sent. Owned by the
 * loop thread; the worker that finishes the request only hands it back
 * through cqr_io_thread_post. Outlives its connection if that closes
 * first (conn == NULL), until the reply arrives. */
typedef struct slot {
    cqr_deferred_t *d;        /* the request; its reply once filled */
    cqr_io_thread_t *io;      /* loop thread it returns to */
    conn_t *conn;             /* owner; NULL once the connection is gone */
    int filled;               /* the reply arrived (loop thread) */
    cqr_buf_t after;          /* framed replies to later requests */
    cqr_list_t link;          /* conn.slots, oldest first */
    cqr_list_t dlink;         /* the thread's list of finished replies */
} slot_t;

struct conn {
    uv_tcp_t tcp;             /* the socket; tcp.data points here */
    uv_shutdown_t shut_req;   /* write-side shutdown when lingering */
    cqr_io_thread_t *io;      /* owning loop thread */
    conn_state_t state;       /* see conn_state_t */
    cqr_frame_reader_t rx;    /* request bytes, reused between reads */
    cqr_buf_t tx;             /* replies of this batch, not yet written */
    cqr_session_t sess;       /* RPC state (auth, names for logs) */
    uint64_t pending;         /* bytes handed to uv_write, not completed */
    uint64_t requests;        /* requests answered, for the close log */
    uint64_t deadline;        /* uv_now() deadline while lingering */
    uint64_t last_active;     /* uv_now() of the last byte received or
                                 reply written (--idle-timeout) */
    uint64_t frame_start;     /* uv_now() when the frame now arriving
                                 started, or reading resumed
                                 (--frame-timeout) */
    int reading;              /* uv_read_start is active */
    int paused;               /* stopped reading over the soft limit */
    int eof;                  /* the peer shut down its write side */
    int counted;              /* counted in conn_open */
    int shut;                 /* uv_shutdown requested */
    const char *why;          /* reason for the close log */
    cqr_list_t all;           /* io->conns */
    cqr_list_t ready;         /* io->ready: frames left to handle */
    cqr_list_t slots;         /* deferred replies not sent yet, in request
                                 order; later replies wait in the last
                                 one's after buffer */
    uint32_t nslots;          /* slots in that list */
    uint64_t held;            /* bytes held in the slots' after buffers */
};

/* One uv_write and the reply bytes it owns, freed in on_write. */
typedef struct write_req {
    uv_write_t req;
    void *data;               /* the reply buffer's allocation (owned;
                                 cqr_buf_detach) */
    size_t unsent;            /* bytes this write adds to conn.pending */
} write_req_t;

static void process(conn_t *c);
static void close_now(conn_t *c, const char *why);

static slot_t *first_slot(const conn_t *c)
{
    cqr_list_t *l = cqr_list_first(&c->slots);
    return l != NULL ? cqr_container_of(l, slot_t, link) : NULL;
}

static slot_t *last_slot(const conn_t *c)
{
    return cqr_list_empty(&c->slots) ?
           NULL : cqr_container_of(c->slots.prev, slot_t, link);
}

/* ---- reading state ---------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Reads when the connection is open, not over its soft limit and has no
 * received frames waiting; lingering connections read to discard. */
static int held_over(const conn_t *c);

static void update_reading(conn_t *c)
{
    int want = (c->state == CONN_OPEN && !c->paused &&
                !cqr_list_linked(&c->ready) && !held_over(c)) ||
               (c->state == CONN_LINGER && !c->eof);
    if (want == c->reading)
        return;
    if (want) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
            close_now(c, "read_start_failed");
            return;
        }
        /* A partial frame's clock restarts: while we did not read, the
         * peer could not finish it. */
        c->frame_start = uv_now(&c->io->loop);
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

/* Queues c for the thread's idle pass (it has frames to handle). */
static void mark_ready(conn_t *c)
{
    if (c->state == CONN_CLOSING || c->state == CONN_LINGER ||
        cqr_list_linked(&c->ready))
        return;
    cqr_list_add_tail(&c->io->ready, &c->ready);
    cqr_io_thread_kick(c->io);
    update_reading(c);
}

static void unmark_ready(conn_t *c)
{
    if (cqr_list_linked(&c->ready))
        cqr_list_del(&c->ready);
}

/* ---- closing ---------------------------------------------------------- */

static void on_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    cqr_io_thread_t *t = c->io;
    cqr_server_ctx_t *ctx = t->ctx;
    assert(c->pending == 0);
    cqr_list_del(&c->all);
    /* Replies still being worked on return to the thread, not to c. */
    for (cqr_list_t *l = cqr_list_pop(&c->slots); l != NULL;
         l = cqr_list_pop(&c->slots)) {
        slot_t *sl = cqr_container_of(l, slot_t, link);
        cqr_buf_free(&sl->after);
        if (sl->filled) {
            cqr_rpc_deferred_release(sl->d, t->index);
            free(sl);
        } else {
            sl->conn = NULL;
        }
    }
    cqr_log(c->counted ? CQR_LOG_INFO : CQR_LOG_DEBUG, "conn",
            "closed peer=%s thread=%" PRIu32 " reason=%s requests=%" PRIu64,
            c->sess.peer, t->index, c->why ? c->why : "-", c->requests);
    if (c->counted)
        cqr_ctr_sub(ctx, CQR_CTR_conn_open, 1);
    cqr_ctr_add(ctx, CQR_CTR_conn_closed, 1);
    cqr_frame_reader_free(&c->rx);
    cqr_buf_free(&c->tx);
    free(c);
    cqr_io_thread_check_exit(t);
}

/* Closes at once: pending writes are cancelled (their callbacks run before
 * on_close). Safe to call more than once and from c's own callbacks. */
static void close_now(conn_t *c, const char *why)
{
    if (c->state == CONN_CLOSING)
        return;
    if (c->why == NULL)
        c->why = why;
    c->state = CONN_CLOSING;
    unmark_ready(c);
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    if (status < 0 && status != UV_ECANCELED && c->state != CONN_CLOSING)
        close_now(c, c->why ? c->why : "shutdown_failed");
    /* Otherwise the peer closes (EOF) or the deadline does. */
}

/* Ends a connection politely: after the queued replies, shut down the
 * write side, discard whatever the peer still sends, and close at its EOF
 * or at the deadline. The peer reads every reply instead of a reset. */
static void linger(conn_t *c, const char *why)
{
    if (c->state == CONN_CLOSING || c->state == CONN_LINGER)
        return;
    if (c->why == NULL)
        c->why = why;
    c->deadline = uv_now(&c->io->loop) + LINGER_MS;
    if (c->io->stopping && c->deadline > c->io->stop_deadline)
        c->deadline = c->io->stop_deadline;
    if (c->eof) {
        /* The peer sent everything it will: nothing to discard. Close
         * once the replies are out. */
        c->state = CONN_LINGER;
        unmark_ready(c);
        update_reading(c);
        if (c->pending == 0)
            close_now(c, why);
        return;
    }
    c->state = CONN_LINGER;
    unmark_ready(c);
    /* The read buffer is no longer needed; lingering reads use scratch. */
    cqr_frame_reader_free(&c->rx);
    c->shut_req.data = c;
    if (uv_shutdown(&c->shut_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        close_now(c, why);
        return;
    }
    c->shut = 1;
    update_reading(c);
}

/* ---- writing ---------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = cqr_container_of(req, write_req_t, req);
    conn_t *c = req->handle->data;
    cqr_server_ctx_t *ctx = c->io->ctx;
    assert(c->pending >= w->unsent);
    c->pending -= w->unsent;
    free(w->data);
    free(w);

    if (c->state == CONN_CLOSING)
        return;
    if (status >= 0)
        c->last_active = uv_now(&c->io->loop);
    if (status < 0) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_write_error, 1);
        cqr_log(CQR_LOG_INFO, "conn", "write failed peer=%s thread=%" PRIu32
                " err=%s", c->sess.peer, c->io->index, uv_err_name(status));
        close_now(c, "write_error");
        return;
    }
    if (c->state == CONN_LINGER && c->eof && c->pending == 0) {
        close_now(c, c->why);
        return;
    }
    uint64_t soft = ctx->cfg->max_pending_bytes;
    if (c->paused && c->pending <= soft / 2) {
        c->paused = 0;
        mark_ready(c); /* handle buffered frames, then read again */
    }
    if (c->state == CONN_DRAINING && c->pending == 0)
        mark_ready(c); /* let process() decide whether it is done */
}

/* The hard limit of unsent bytes: 4x the soft limit, but never below what
 * a connection that obeys the soft limit can reach (it stops taking
 * requests once over soft, and the batch that crossed it may still add
 * FLUSH_BYTES plus one maximal reply) -- otherwise a small
 * --max-pending-bytes would kill slow readers of big lookups. */
static uint64_t hard_limit(const cqr_config_t *cfg)
{
    uint64_t h = 4 * cfg->max_pending_bytes;
    uint64_t reach = cfg->max_pending_bytes + cfg->max_frame_bytes +
                     FLUSH_BYTES + CQR_FRAME_HEADER;
    return h > reach ? h : reach;
}

/* Sends the batched replies: straight to the socket if it takes them,
 * otherwise as one uv_write that owns the buffer. Applies the
 * pending-bytes limits. */
static void flush(conn_t *c)
{
    cqr_server_ctx_t *ctx = c->io->ctx;
    if (c->tx.len == 0 || c->state == CONN_CLOSING)
        return;
    uv_stream_t *s = (uv_stream_t *)&c->tcp;
    cqr_ctr_add(ctx, CQR_CTR_bytes_out, c->tx.len);

    size_t off = 0;
    if (uv_stream_get_write_queue_size(s) == 0 && c->pending == 0) {
        uv_buf_t b = uv_buf_init((char *)c->tx.data, (unsigned)c->tx.len);
        int r = uv_try_write(s, &b, 1);
        if (r >= 0) {
            off = (size_t)r;
        } else if (r != UV_EAGAIN) {
            cqr_ctr_add(ctx, CQR_CTR_conn_closed_write_error, 1);
            cqr_log(CQR_LOG_INFO, "conn", "write failed peer=%s thread=%"
                    PRIu32 " err=%s", c->sess.peer, c->io->index,
                    uv_err_name(r));
            c->tx.len = 0;
            close_now(c, "write_error");
            return;
        }
    }
    if (off == c->tx.len) {
        /* All written: keep the buffer for the next batch unless a big
         * reply grew it. */
        c->tx.len = 0;
        if (c->tx.cap > TX_KEEP_MAX)
            cqr_buf_free(&c->tx);
        return;
    }

    write_req_t *w = malloc(sizeof *w);
    if (w == NULL) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_nomem, 1);
        c->tx.len = 0;
        close_now(c, "nomem");
        return;
    }
    w->unsent = c->tx.len - off;
    uv_buf_t b = uv_buf_init((char *)c->tx.data + off, (unsigned)w->unsent);
    w->data = cqr_buf_detach(&c->tx); /* the write owns the bytes now */
    int r = uv_write(&w->req, s, &b, 1, on_write);
    if (r != 0) {
        free(w->data);
        free(w);
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_write_error, 1);
        close_now(c, "write_error");
        return;
    }
    c->pending += w->unsent;

    uint64_t soft = ctx->cfg->max_pending_bytes;
    uint64_t hard = hard_limit(ctx->cfg);
    if (c->pending > hard) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_backpressure, 1);
        cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
                " reason=backpressure pending=%" PRIu64 " hard_limit=%"
                PRIu64, c->sess.peer, c->io->index, c->pending, hard);
        close_now(c, "backpressure");
        return;
    }
    if (c->pending > soft && !c->paused) {
        c->paused = 1;
        cqr_ctr_add(ctx, CQR_CTR_backpressure_pauses, 1);
        cqr_log(CQR_LOG_DEBUG, "conn", "paused peer=%s thread=%" PRIu32
                " pending=%" PRIu64, c->sess.peer, c->io->index, c->pending);
        update_reading(c);
    }
}

/* Appends a framed error reply to tx; 0 or CQR_ENOMEM. */
static int queue_error(conn_t *c, int err, const char *msg)
{
    size_t mark;
    int rc = cqr_frame_begin(&c->tx, &mark);
    if (rc != 0)
        return rc;
    rc = cqr_rpc_error(c->io->ctx, &c->tx, 0, err, msg);
    if (rc != 0) {
        c->tx.len = mark;
        return rc;
    }
    cqr_frame_end(&c->tx, mark);
    return 0;
}

/* Sends an error reply and ends the connection; logs and counts why. */
static void fail(conn_t *c, cqr_counter_t ctr, const char *why, int err,
                 const char *msg)
{
    cqr_server_ctx_t *ctx = c->io->ctx;
    cqr_ctr_add(ctx, ctr, 1);
    cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
            " reason=%s detail=\"%s\"", c->sess.peer, c->io->index, why,
            msg);
    if (queue_error(c, err, msg) != 0) {
        close_now(c, why);
        return;
    }
    flush(c);
    linger(c, why);
}

/* Ends the connection after the replies already queued: counts `ctr`,
 * logs "closing ... reason=<why><extra>", sends what is queued, then
 * lingers (the peer reads every reply) or closes at once. */
static void give_up(conn_t *c, cqr_counter_t ctr, const char *why,
                    const char *extra, int lingering)
{
    cqr_ctr_add(c->io->ctx, ctr, 1);
    cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
            " reason=%s%s", c->sess.peer, c->io->index, why, extra);
    flush(c);
    if (lingering)
        linger(c, why);
    else
        close_now(c, why);
}

/* ---- deferred replies -------------------------------------------------- */

/* Too many replies waiting behind deferred ones: take no more requests
 * until the oldest is answered (bounds what a connection can hold). */
static int held_over(const conn_t *c)
{
    return !cqr_list_empty(&c->slots) &&
           (c->nslots >= MAX_DEFERRED ||
            c->held >= c->io->ctx->cfg->max_pending_bytes);
}

/* Any thread: the worker finished d; hand its slot back to the loop
 * (which stays up while the slot is outstanding). */
static void on_deferred_done(cqr_deferred_t *d)
{
    slot_t *sl = d->ud;
    cqr_io_thread_post(sl->io, &sl->dlink);
}

/* session.defer: reserves d's place after every reply queued so far. */
static int conn_defer(cqr_session_t *sess, cqr_deferred_t *d)
{
    conn_t *c = sess->defer_ud;
    slot_t *sl = calloc(1, sizeof *sl);
    if (sl == NULL)
        return CQR_ENOMEM;
    sl->d = d;
    sl->io = c->io;
    sl->conn = c;
    cqr_buf_init(&sl->after);
    d->done = on_deferred_done;
    d->ud = sl;
    cqr_list_add_tail(&c->slots, &sl->link);
    c->nslots++;
    c->io->outstanding++;
    return 0;
}

/* Moves the filled slots at the head of c's list, with the replies held
 * behind them, to tx in request order, and sends them. */
static void deliver(conn_t *c)
{
    /* A connection on its way out sends nothing more. */
    int drop = c->state == CONN_LINGER || c->state == CONN_CLOSING;
    int closing = 0;
    for (slot_t *sl = first_slot(c); sl != NULL && sl->filled;
         sl = first_slot(c)) {
        cqr_list_del(&sl->link);
        c->nslots--;
        c->held -= sl->after.len;
        cqr_buf_t *r = &sl->d->reply;
        int ok = !drop && !closing && r->len > 0 &&
                 cqr_buf_reserve(&c->tx, r->len + sl->after.len) == 0;
        if (ok) {
            memcpy(c->tx.data + c->tx.len, r->data, r->len);
            c->tx.len += r->len;
            if (sl->after.len > 0)
                memcpy(c->tx.data + c->tx.len, sl->after.data,
                       sl->after.len);
            c->tx.len += sl->after.len;
            c->requests++;
        } else if (!drop) {
            closing = 1;
        }
        cqr_buf_free(&sl->after);
        cqr_rpc_deferred_release(sl->d, c->io->index);
        free(sl);
    }
    if (closing) {
        give_up(c, CQR_CTR_conn_closed_nomem, "nomem", " (deferred reply)",
                0);
        return;
    }
    if (drop)
        return;
    c->last_active = uv_now(&c->io->loop);
    flush(c);
    /* Held frames, reading, or the end of a drain: process() decides. */
    if (c->state == CONN_OPEN || c->state == CONN_DRAINING)
        mark_ready(c);
}

void cqr_conn_take_done(cqr_io_thread_t *t, cqr_list_t *done)
{
    for (cqr_list_t *l = cqr_list_pop(done); l != NULL;
         l = cqr_list_pop(done)) {
        slot_t *sl = cqr_container_of(l, slot_t, dlink);
        assert(t->outstanding > 0);
        t->outstanding--;
        sl->filled = 1;
        if (sl->conn == NULL) {
            /* Its connection closed meanwhile. */
            cqr_rpc_deferred_release(sl->d, t->index);
            free(sl);
            continue;
        }
        if (sl == first_slot(sl->conn))
            deliver(sl->conn);
    }
}

/* ---- frames ----------------------------------------------------------- */

/* Answers one received frame: its reply goes to tx, or behind the last
 * deferred reply. 0: go on; -1: the connection is ending (closed or
 * lingering), take no more frames. */
static int answer(conn_t *c, const uint8_t *body, size_t len)
{
    cqr_server_ctx_t *ctx = c->io->ctx;
    /* Behind a deferred reply, replies wait in its slot. */
    slot_t *last = last_slot(c);
    cqr_buf_t *dst = last != NULL ? &last->after : &c->tx;
    size_t before = dst->len;
    size_t mark;
    if (cqr_frame_begin(dst, &mark) != 0) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_nomem, 1);
        close_now(c, "nomem");
        return -1;
    }
    int rc = cqr_rpc_handle(ctx, &c->sess, body, len, dst);
    if (rc == CQR_RPC_DEFERRED) {
        dst->len = mark; /* its reply goes in the new slot */
        return 0;
    }
    if (rc == CQR_ENOMEM) {
        dst->len = mark;
        give_up(c, CQR_CTR_conn_closed_nomem, "nomem", "", 0);
        return -1;
    }
    cqr_frame_end(dst, mark);
    if (dst != &c->tx)
        c->held += dst->len - before;
    c->requests++;
    if (rc == CQR_EPROTO) {
        char extra[32];
        snprintf(extra, sizeof extra, " bytes=%zu", len);
        give_up(c, CQR_CTR_conn_closed_malformed, "malformed", extra, 1);
        return -1;
    }
    if (rc == CQR_EAUTH) {
        /* The UNAUTHENTICATED (or version) reply is queued: send it and
         * end the connection, as for a malformed request. */
        give_up(c, CQR_CTR_conn_closed_auth, "unauthenticated", "", 1);
        return -1;
    }
    if (c->tx.len >= FLUSH_BYTES)
        flush(c);
    return 0;
}

/* 1 when process() must stop before the next frame although more may be
 * there: paused over the soft limit, its batch used up (a yield), or too
 * much held behind deferred replies (deliver() comes back when a slot is
 * answered). */
static int must_yield(conn_t *c, int handled)
{
    if (c->paused)
        return 1;
    if (handled == FRAMES_PER_BATCH) {
        cqr_ctr_add(c->io->ctx, CQR_CTR_yields, 1);
        return 1;
    }
    return held_over(c);
}

/* Rejects a frame declaring more than --max-frame-bytes and ends the
 * connection. */
static void oversize(conn_t *c, size_t len)
{
    cqr_server_ctx_t *ctx = c->io->ctx;
    char msg[160];
    snprintf(msg, sizeof msg, "frame of %zu bytes exceeds "
             "--max-frame-bytes %" PRIu64, len, ctx->cfg->max_frame_bytes);
    flush(c);
    fail(c, CQR_CTR_conn_closed_oversize, "oversize", CQR_ELIMIT, msg);
    cqr_ctr_add(ctx, CQR_CTR_frames_oversize, 1);
}

/* Handles up to FRAMES_PER_BATCH received frames, then flushes. Leaves c
 * on the ready list if it stopped with frames left. */
static void process(conn_t *c)
{
    int handled = 0;
    int more = 0; /* stopped with complete frames possibly left */

    unmark_ready(c);
    while (c->state == CONN_OPEN || c->state == CONN_DRAINING) {
        if (must_yield(c, handled)) {
            more = 1;
            break;
        }
        const uint8_t *body;
        size_t len;
        int rc = cqr_frame_next(&c->rx, &body, &len);
        if (rc == 0)
            break;
        if (rc == CQR_ELIMIT) {
            oversize(c, len);
            return;
        }
        handled++;
        /* Bytes after this frame belong to the next one, which cannot be
         * older than the read that brought them. */
        c->frame_start = uv_now(&c->io->loop);
        if (answer(c, body, len) != 0)
            return;
    }
    flush(c);
    if (c->state == CONN_CLOSING || c->state == CONN_LINGER)
        return;
    if (more) {
        if (!c->paused && !held_over(c))
            mark_ready(c);
    } else if (c->state == CONN_DRAINING && c->tx.len == 0 &&
               cqr_list_empty(&c->slots)) {
        /* Every received frame is answered. */
        if (c->pending == 0)
            linger(c, c->eof ? "eof" : "shutdown");
        /* else on_write comes back here when the replies are out */
    }
    update_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    (void)suggested;
    if (c->state == CONN_LINGER) {
        *buf = uv_buf_init((char *)c->io->scratch, sizeof c->io->scratch);
        return;
    }
    uint8_t *p;
    size_t n;
    if (cqr_frame_reader_space(&c->rx, &p, &n) != 0) {
        *buf = uv_buf_init(NULL, 0); /* on_read gets UV_ENOBUFS */
        return;
    }
    /* uv_buf_t holds an unsigned length; a frame is at most 1 GiB. */
    *buf = uv_buf_init((char *)p, n > UINT32_MAX ? UINT32_MAX : (unsigned)n);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    cqr_server_ctx_t *ctx = c->io->ctx;
    (void)buf;
    if (nread == 0 || c->state == CONN_CLOSING)
        return;
    if (c->state == CONN_LINGER) {
        /* Discarding. EOF (or an error) means the peer is done. */
        if (nread < 0) {
            c->eof = 1;
            close_now(c, c->why);
        }
        return;
    }
    if (nread == UV_EOF) {
        c->eof = 1;
        c->state = CONN_DRAINING;
        process(c);
        return;
    }
    if (nread == UV_ENOBUFS) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_nomem, 1);
        cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
                " reason=nomem (read buffer)", c->sess.peer, c->io->index);
        close_now(c, "nomem");
        return;
    }
    if (nread < 0) {
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_read_error, 1);
        cqr_log(CQR_LOG_INFO, "conn", "read failed peer=%s thread=%" PRIu32
                " err=%s", c->sess.peer, c->io->index,
                uv_err_name((int)nread));
        close_now(c, "read_error");
        return;
    }
    uint64_t now = uv_now(&c->io->loop);
    if (cqr_frame_reader_pending(&c->rx) == 0)
        c->frame_start = now; /* these bytes start a new frame */
    c->last_active = now;
    cqr_frame_reader_commit(&c->rx, (size_t)nread);
    cqr_ctr_add(ctx, CQR_CTR_bytes_in, (uint64_t)nread);
    process(c);
}

/* ---- the thread's calls ----------------------------------------------- */

void cqr_conn_open(cqr_io_thread_t *t, int fd, const char *peer,
                   int reject)
{
    cqr_server_ctx_t *ctx = t->ctx;
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        cqr_log(CQR_LOG_WARN, "conn", "dropping peer=%s thread=%" PRIu32
                " reason=nomem", peer, t->index);
        close(fd);
        if (!reject)
            cqr_ctr_sub(ctx, CQR_CTR_conn_open, 1);
        cqr_ctr_add(ctx, CQR_CTR_conn_closed_nomem, 1);
        return;
    }
    c->io = t;
    c->tcp.data = c;
    c->counted = !reject;
    c->last_active = c->frame_start = uv_now(&t->loop);
    cqr_session_init(ctx, &c->sess, peer, t->index);
    c->sess.defer = conn_defer;
    c->sess.defer_ud = c;
    cqr_frame_reader_init(&c->rx, ctx->cfg->max_frame_bytes, READ_CHUNK);
    /* A large push arrives in several reads: place it so that its
     * gradients land aligned and the engine reads them in place. */
    c->rx.align = cqr_wire_align_hint;
    cqr_buf_init(&c->tx);
    uv_tcp_init(&t->loop, &c->tcp);
    cqr_list_init(&c->slots);
    cqr_list_add_tail(&t->conns, &c->all);
    if (uv_tcp_open(&c->tcp, fd) != 0) {
        close(fd); /* not owned by the handle when open failed */
        close_now(c, "open_failed");
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);

    if (reject) {
        char msg[128];
        snprintf(msg, sizeof msg, "server has its maximum of %" PRIu32
                 " connections (--max-connections)",
                 ctx->cfg->max_connections);
        cqr_log(CQR_LOG_WARN, "conn", "refused peer=%s thread=%" PRIu32
                " reason=max_connections", c->sess.peer, t->index);
        if (queue_error(c, CQR_ELIMIT, msg) != 0) {
            close_now(c, "nomem");
            return;
        }
        flush(c);
        linger(c, "max_connections");
        return;
    }
    cqr_log(CQR_LOG_INFO, "conn", "accepted peer=%s thread=%" PRIu32,
            c->sess.peer, t->index);
    c->state = CONN_OPEN;
    if (t->stopping) {
        c->state = CONN_DRAINING;
        linger(c, "shutdown");
        return;
    }
    update_reading(c);
}

/* Slow and silent peers (called by the sweep for open connections):
 *   --frame-timeout  a frame whose first byte came more than that long
 *                    ago and is still incomplete while we read: a client
 *                    trickling bytes holds one read buffer for at most
 *                    this long;
 *   --idle-timeout   nothing received and no reply written for that
 *                    long: an abandoned connection, or a peer that stopped
 *                    reading its replies (then it is closed at once, since
 *                    an error reply could not reach it either). */
static void check_timeouts(conn_t *c, uint64_t now)
{
    const cqr_config_t *cfg = c->io->ctx->cfg;
    char msg[160];
    uint64_t frame_ms = (uint64_t)cfg->frame_timeout * 1000;
    if (frame_ms > 0 && c->reading &&
        cqr_frame_reader_pending(&c->rx) > 0 &&
        now - c->frame_start >= frame_ms) {
        snprintf(msg, sizeof msg, "request frame incomplete after %" PRIu32
                 " s (--frame-timeout); %zu bytes received",
                 cfg->frame_timeout, cqr_frame_reader_pending(&c->rx));
        fail(c, CQR_CTR_conn_closed_frame_timeout, "frame_timeout",
             CQR_ETIMEDOUT, msg);
        return;
    }
    uint64_t idle_ms = (uint64_t)cfg->idle_timeout * 1000;
    /* A connection waiting for a deferred reply (a long checkpoint) is
     * not idle. */
    if (idle_ms > 0 && cqr_list_empty(&c->slots) &&
        now - c->last_active >= idle_ms) {
        if (c->pending > 0) {
            cqr_ctr_add(c->io->ctx, CQR_CTR_conn_closed_idle, 1);
            cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
                    " reason=idle_timeout detail=\"replies not read\" "
                    "pending=%" PRIu64, c->sess.peer, c->io->index,
                    c->pending);
            close_now(c, "idle_timeout");
            return;
        }
        snprintf(msg, sizeof msg, "connection idle for %" PRIu32 " s "
                 "(--idle-timeout)", cfg->idle_timeout);
        fail(c, CQR_CTR_conn_closed_idle, "idle_timeout", CQR_ETIMEDOUT,
             msg);
    }
}

void cqr_conn_sweep(cqr_io_thread_t *t, uint64_t now)
{
    for (cqr_list_t *l = t->conns.next; l != &t->conns;) {
        conn_t *c = cqr_container_of(l, conn_t, all);
        l = l->next;
        if (c->state == CONN_CLOSING)
            continue;
        if (t->stopping && now >= t->stop_deadline) {
            cqr_ctr_add(t->ctx, CQR_CTR_conn_closed_shutdown_timeout, 1);
            cqr_log(CQR_LOG_WARN, "conn", "closing peer=%s thread=%" PRIu32
                    " reason=shutdown_timeout pending=%" PRIu64,
                    c->sess.peer, t->index, c->pending);
            close_now(c, "shutdown_timeout");
        } else if (c->state == CONN_LINGER && now >= c->deadline) {
            cqr_ctr_add(t->ctx, CQR_CTR_conn_linger_timeouts, 1);
            cqr_log(CQR_LOG_DEBUG, "conn", "linger over peer=%s thread=%"
                    PRIu32, c->sess.peer, t->index);
            close_now(c, c->why);
        } else if (c->state == CONN_OPEN) {
            check_timeouts(c, now);
        }
    }
}

void cqr_conn_run_ready(cqr_io_thread_t *t)
{
    /* Run each connection that was ready at the start of this pass once;
     * ones that yield again go to the back for the next pass. */
    cqr_list_t batch;
    cqr_list_move(&batch, &t->ready);
    for (cqr_list_t *l = cqr_list_pop(&batch); l != NULL;
         l = cqr_list_pop(&batch))
        process(cqr_container_of(l, conn_t, ready));
}

void cqr_conn_stop_all(cqr_io_thread_t *t)
{
    for (cqr_list_t *l = t->conns.next; l != &t->conns;) {
        conn_t *c = cqr_container_of(l, conn_t, all);
        l = l->next; /* c may be unlinked below */
        if (c->state == CONN_OPEN) {
            c->state = CONN_DRAINING;
            mark_ready(c); /* answer what was received, then finish */
        } else if (c->state == CONN_LINGER && c->deadline > t->stop_deadline) {
            c->deadline = t->stop_deadline;
        }
    }
}
