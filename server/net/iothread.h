/* iothread.h -- the I/O threads: a libuv loop each, the hand-off of
 * accepted sockets, the sweep of deadlines and the graceful stop.
 *
 * `threads` I/O threads each run their own libuv loop. The acceptor (on
 * the main thread, see main.c) hands every accepted socket to one of them
 * round-robin; the connection (conn.h) then lives on that loop thread for
 * its whole life, and only that thread touches its state. Besides its
 * connections, a loop has three handles: an async handle that brings new
 * sockets, the stop request and finished deferred replies; an idle handle
 * that runs connections which yielded with frames left; and a sweep timer
 * (every 250 ms) that enforces the connections' deadlines and timeouts.
 *
 * Stop (cqr_io_stop): every thread stops reading, answers the requests it
 * has already received, flushes the replies and closes its connections;
 * what is still open after the grace period is closed by force. The loop
 * stays up until every deferred reply it waits for came back (a running
 * checkpoint that was asked for), then closes its handles, and the
 * thread checks that its loop closed with no handle left.
 *
 * Threading: cqr_io_start, cqr_io_hand_off and cqr_io_stop are called
 * from one thread (the main thread). The second half of this header is
 * for the connection layer (conn.c), on the loop thread, except
 * cqr_io_thread_post (any thread).
 *
 * Errors: 0 or a negative CQR_E* code.
 */
#ifndef CQR_IOTHREAD_H
#define CQR_IOTHREAD_H

#include <stdint.h>
#include <uv.h>

#include "net/list.h"
#include "rpc/server.h"

typedef struct cqr_io cqr_io_t;

/* Starts `nthreads` I/O threads. Errors: CQR_ENOMEM, CQR_EINTERNAL (a loop
 * or thread could not start); nothing is left running on error. */
int cqr_io_start(cqr_server_ctx_t *ctx, uint32_t nthreads, cqr_io_t **out);

/* Gives an accepted, connected socket to the next I/O thread. Takes
 * ownership of fd in every case. `peer` is the formatted remote address.
 * With reject set the connection only receives a LIMIT_EXCEEDED reply
 * (too many connections) and is closed. Counts the connection in
 * conn_open (unless rejected) right away, so the acceptor's limit check
 * sees it. */
void cqr_io_hand_off(cqr_io_t *io, int fd, const char *peer, int reject);

/* Graceful stop (see above) within timeout_ms, then joins the threads,
 * checks that every loop closed with no open handle, and frees io. */
void cqr_io_stop(cqr_io_t *io, uint64_t timeout_ms);

/* ---- For the connection layer ------------------------------------------
 * One loop thread as its connections see it. iothread.c sets the fields
 * and conn.c only reads them, except the two lists, `outstanding` and
 * `scratch`, which are the connection layer's. */

/* Bytes of discarded input read at once from a lingering connection. */
#define CQR_IO_SCRATCH (64u * 1024u)

typedef struct cqr_io_thread {
    cqr_server_ctx_t *ctx;    /* shared server state */
    uint32_t index;           /* 0-based, for logs */
    uv_loop_t loop;           /* this thread's loop */
    int stopping;             /* a stop began (the loop thread's view) */
    uint64_t stop_deadline;   /* uv_now() deadline of that stop */
    cqr_list_t conns;         /* every connection of this thread */
    cqr_list_t ready;         /* connections with frames left to handle;
                                 cqr_io_thread_kick runs them */
    uint64_t outstanding;     /* deferred replies that have not come back;
                                 the loop stays up until it is 0 */
    uint8_t scratch[CQR_IO_SCRATCH]; /* discarded input of lingering
                                        connections */
} cqr_io_thread_t;

/* Runs cqr_conn_run_ready from the idle handle soon: a connection was
 * put on t->ready. */
void cqr_io_thread_kick(cqr_io_thread_t *t);

/* A connection closed or a deferred reply came back: a stopping thread
 * with no connection and nothing outstanding closes its handles, so that
 * its loop ends. */
void cqr_io_thread_check_exit(cqr_io_thread_t *t);

/* Any thread: hands the link of a finished deferred reply back to t's
 * loop, which gives it to cqr_conn_take_done. */
void cqr_io_thread_post(cqr_io_thread_t *t, cqr_list_t *done);

#endif
