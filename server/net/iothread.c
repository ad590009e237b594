/* iothread.c -- the I/O threads (iothread.h): loops, hand-off, sweep,
 * stop. What happens to a connection is conn.c's. */
#include "net/iothread.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine/err.h"
#include "net/conn.h"
#include "ops/log.h"

/* Period of the sweep that enforces linger and shutdown deadlines. */
#define SWEEP_MS 250

/* One accepted socket on its way from the acceptor to a loop thread. */
typedef struct handoff {
    int fd;                   /* owned */
    int reject;               /* answer LIMIT_EXCEEDED and close */
    char peer[64];            /* formatted remote address */
    cqr_list_t link;          /* io_thread.inbox */
} handoff_t;

/* A loop thread: what its connections see (pub), and what only this
 * file touches. */
typedef struct io_thread {
    cqr_io_thread_t pub;      /* iothread.h; first, see thread_of */
    cqr_io_t *io;             /* owner */
    uv_async_t wake;          /* new sockets, the stop request, replies */
    uv_idle_t idle;           /* runs connections on pub.ready */
    uv_timer_t sweep;         /* deadlines and timeouts */
    pthread_t tid;            /* the thread */
    pthread_mutex_t mu;       /* guards inbox, done and the stop request */
    cqr_list_t inbox;         /* sockets to adopt, FIFO (under mu) */
    cqr_list_t done;          /* finished deferred replies (under mu) */
    int stop_req;             /* cqr_io_stop was called (under mu) */
    uint64_t stop_timeout_ms; /* grace period for the stop (under mu) */
    int handles_closed;       /* wake/idle/sweep closed */
} io_thread_t;

struct cqr_io {
    cqr_server_ctx_t *ctx;    /* shared server state */
    uint32_t n;               /* threads */
    uint32_t next;            /* round-robin cursor (acceptor thread) */
    io_thread_t *threads[];   /* n threads */
};

static io_thread_t *thread_of(cqr_io_thread_t *pub)
{
    return cqr_container_of(pub, io_thread_t, pub);
}

/* ---- for the connections (iothread.h) ---------------------------------- */

static void on_idle(uv_idle_t *h)
{
    io_thread_t *t = h->data;
    cqr_conn_run_ready(&t->pub);
    if (cqr_list_empty(&t->pub.ready))
        uv_idle_stop(&t->idle);
}

void cqr_io_thread_kick(cqr_io_thread_t *pub)
{
    io_thread_t *t = thread_of(pub);
    if (!uv_is_active((uv_handle_t *)&t->idle))
        uv_idle_start(&t->idle, on_idle);
}

/* Once stopping and every connection is gone, closes the thread's own
 * handles so uv_run returns. */
void cqr_io_thread_check_exit(cqr_io_thread_t *pub)
{
    io_thread_t *t = thread_of(pub);
    if (!pub->stopping || t->handles_closed ||
        !cqr_list_empty(&pub->conns) || pub->outstanding > 0)
        return;
    t->handles_closed = 1;
    uv_close((uv_handle_t *)&t->wake, NULL);  /* embedded: nothing to free */
    uv_close((uv_handle_t *)&t->idle, NULL);
    uv_close((uv_handle_t *)&t->sweep, NULL);
}

/* The async send happens under mu, so the loop (which needs mu to take
 * the reply, and stays up while it is outstanding) cannot be gone yet. */
void cqr_io_thread_post(cqr_io_thread_t *pub, cqr_list_t *done)
{
    io_thread_t *t = thread_of(pub);
    pthread_mutex_lock(&t->mu);
    cqr_list_add_tail(&t->done, done);
    uv_async_send(&t->wake);
    pthread_mutex_unlock(&t->mu);
}

/* ---- the loop thread --------------------------------------------------- */

static void begin_stop(io_thread_t *t, uint64_t timeout_ms)
{
    t->pub.stopping = 1;
    t->pub.stop_deadline = uv_now(&t->pub.loop) + timeout_ms;
    cqr_conn_stop_all(&t->pub);
}

static void on_wake(uv_async_t *h)
{
    io_thread_t *t = h->data;
    cqr_list_t inbox, done;
    pthread_mutex_lock(&t->mu);
    cqr_list_move(&inbox, &t->inbox);
    cqr_list_move(&done, &t->done);
    int stop = t->stop_req;
    uint64_t timeout = t->stop_timeout_ms;
    pthread_mutex_unlock(&t->mu);

    cqr_conn_take_done(&t->pub, &done);
    for (cqr_list_t *l = cqr_list_pop(&inbox); l != NULL;
         l = cqr_list_pop(&inbox)) {
        handoff_t *hf = cqr_container_of(l, handoff_t, link);
        cqr_conn_open(&t->pub, hf->fd, hf->peer, hf->reject);
        free(hf);
    }
    if (stop && !t->pub.stopping)
        begin_stop(t, timeout);
    cqr_io_thread_check_exit(&t->pub);
}

static void on_sweep(uv_timer_t *h)
{
    io_thread_t *t = h->data;
    cqr_conn_sweep(&t->pub, uv_now(&t->pub.loop));
}

/* Closes a socket that never became a connection, and takes it out of
 * conn_open again. */
static void drop_handoff(cqr_server_ctx_t *ctx, handoff_t *hf)
{
    close(hf->fd);
    if (!hf->reject)
        cqr_ctr_sub(ctx, CQR_CTR_conn_open, 1);
    free(hf);
}

static void *io_thread_main(void *arg)
{
    io_thread_t *t = arg;
    uv_run(&t->pub.loop, UV_RUN_DEFAULT);
    /* Sockets handed over after the stop never reached cqr_conn_open. */
    cqr_list_t inbox;
    pthread_mutex_lock(&t->mu);
    cqr_list_move(&inbox, &t->inbox);
    pthread_mutex_unlock(&t->mu);
    for (cqr_list_t *l = cqr_list_pop(&inbox); l != NULL;
         l = cqr_list_pop(&inbox))
        drop_handoff(t->pub.ctx, cqr_container_of(l, handoff_t, link));
    int rc = uv_loop_close(&t->pub.loop);
    if (rc != 0)
        cqr_log(CQR_LOG_ERROR, "conn", "loop did not close thread=%" PRIu32
                " err=%s", t->pub.index, uv_err_name(rc));
    assert(rc == 0 && "a handle leaked on an I/O loop");
    return NULL;
}

static void thread_free(io_thread_t *t)
{
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static int thread_start(cqr_io_t *io, uint32_t index, io_thread_t **out)
{
    io_thread_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return CQR_ENOMEM;
    t->io = io;
    t->pub.ctx = io->ctx;
    t->pub.index = index;
    cqr_list_init(&t->pub.conns);
    cqr_list_init(&t->pub.ready);
    cqr_list_init(&t->inbox);
    cqr_list_init(&t->done);
    pthread_mutex_init(&t->mu, NULL);
    if (uv_loop_init(&t->pub.loop) != 0) {
        thread_free(t);
        return CQR_EINTERNAL;
    }
    uv_async_init(&t->pub.loop, &t->wake, on_wake);
    t->wake.data = t;
    uv_idle_init(&t->pub.loop, &t->idle);
    t->idle.data = t;
    uv_timer_init(&t->pub.loop, &t->sweep);
    t->sweep.data = t;
    uv_timer_start(&t->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    /* The sweep timer must not keep a stopping loop alive by itself; it is
     * closed in cqr_io_thread_check_exit like the others. */
    if (pthread_create(&t->tid, NULL, io_thread_main, t) != 0) {
        uv_close((uv_handle_t *)&t->wake, NULL);
        uv_close((uv_handle_t *)&t->idle, NULL);
        uv_close((uv_handle_t *)&t->sweep, NULL);
        uv_run(&t->pub.loop, UV_RUN_DEFAULT);
        uv_loop_close(&t->pub.loop);
        thread_free(t);
        return CQR_EINTERNAL;
    }
    *out = t;
    return 0;
}

/* ---- the acceptor's side (iothread.h) ---------------------------------- */

int cqr_io_start(cqr_server_ctx_t *ctx, uint32_t nthreads, cqr_io_t **out)
{
    assert(nthreads >= 1);
    cqr_io_t *io = calloc(1, sizeof *io + nthreads * sizeof(io_thread_t *));
    if (io == NULL)
        return CQR_ENOMEM;
    io->ctx = ctx;
    for (uint32_t i = 0; i < nthreads; i++) {
        int rc = thread_start(io, i, &io->threads[i]);
        if (rc != 0) {
            io->n = i;
            cqr_io_stop(io, 0);
            return rc;
        }
        io->n = i + 1;
    }
    *out = io;
    return 0;
}

void cqr_io_hand_off(cqr_io_t *io, int fd, const char *peer, int reject)
{
    cqr_server_ctx_t *ctx = io->ctx;
    if (!reject) {
        cqr_ctr_add(ctx, CQR_CTR_conn_accepted, 1);
        cqr_ctr_add(ctx, CQR_CTR_conn_open, 1);
    }
    io_thread_t *t = io->threads[io->next++ % io->n];
    handoff_t *hf = calloc(1, sizeof *hf);
    if (hf == NULL) {
        close(fd);
        if (!reject)
            cqr_ctr_sub(ctx, CQR_CTR_conn_open, 1);
        cqr_log(CQR_LOG_WARN, "conn", "dropping peer=%s reason=nomem", peer);
        return;
    }
    hf->fd = fd;
    hf->reject = reject;
    snprintf(hf->peer, sizeof hf->peer, "%s", peer);
    pthread_mutex_lock(&t->mu);
    int stopped = t->stop_req;
    if (!stopped)
        cqr_list_add_tail(&t->inbox, &hf->link);
    pthread_mutex_unlock(&t->mu);
    if (stopped) {
        drop_handoff(ctx, hf);
        return;
    }
    uv_async_send(&t->wake);
}

void cqr_io_stop(cqr_io_t *io, uint64_t timeout_ms)
{
    if (io == NULL)
        return;
    for (uint32_t i = 0; i < io->n; i++) {
        io_thread_t *t = io->threads[i];
        pthread_mutex_lock(&t->mu);
        t->stop_req = 1;
        t->stop_timeout_ms = timeout_ms;
        pthread_mutex_unlock(&t->mu);
        uv_async_send(&t->wake);
    }
    for (uint32_t i = 0; i < io->n; i++) {
        pthread_join(io->threads[i]->tid, NULL);
        thread_free(io->threads[i]);
    }
    free(io);
}
