/* conn.h -- I/O threads and client connections.
 *
 * `threads` I/O threads each run their own libuv loop. The acceptor (on
 * the main thread, see main.c) hands every accepted socket to one of them
 * round-robin; the connection then lives on that loop thread for its
 * whole life, and only that thread touches its state.
 *
 * A connection reads frames into one reused buffer (frame.h), runs each
 * request through cqr_rpc_handle on its loop thread and writes the replies
 * in request order. Work per event is bounded: at most a fixed number of
 * frames per read, then the connection yields to the others and continues
 * from an idle callback. Unsent reply bytes are counted: over
 * --max-pending-bytes the connection stops being read until they drain
 * below half; over four times that it is closed.
 *
 * Slow peers: a frame still incomplete --frame-timeout seconds after its
 * first byte, and a connection with no traffic either way for
 * --idle-timeout seconds, are closed (TIMED_OUT); so a client trickling
 * bytes holds one read buffer (sized for its declared frame, but its
 * pages become resident only as bytes arrive) for a bounded time, and one
 * that stops reading holds at most the pending-bytes limit until the idle
 * timeout.
 *
 * Forced disconnects (undecodable request, frame over --max-frame-bytes,
 * connection limit, UNAUTHENTICATED, timeouts) send an error reply first, shut down the write side
 * after it, and discard input until the peer closes or a short deadline
 * passes -- so the peer reads the error instead of a reset. Every forced
 * disconnect is logged with the peer and the reason and counted.
 *
 * Threading: cqr_io_start, cqr_io_hand_off and cqr_io_stop are called
 * from one thread (the main thread). Connections are never freed inside
 * their own callbacks: they are marked closing and freed in the libuv
 * close callback.
 *
 * Deferred replies (rpc.h): a request whose work runs elsewhere
 * (Checkpoint, on the checkpoint thread) reserves a slot in its
 * connection's reply order; later requests are still read and answered,
 * but their replies wait behind the slot, so replies always leave in
 * request order. The worker hands the finished reply back through the
 * thread's async handle. A connection waiting for 16 slots, or holding
 * --max-pending-bytes of replies behind them, stops taking requests until
 * the oldest slot is answered. A connection that closes first abandons
 * its slots; the loop stays up until every abandoned reply came back, so
 * cqr_io_stop waits for running checkpoints that were asked for.
 *
 * Known limit: other requests run on the I/O thread, so a slow one (a
 * huge CreateTable) delays the other connections of that thread.
 */
#ifndef CQR_CONN_H
#define CQR_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "rpc/rpc.h"

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

/* Graceful stop: every thread stops reading, answers the requests it has
 * already received, flushes the replies and closes its connections; what
 * is still open after timeout_ms is closed by force. Joins the threads,
 * checks that every loop closed with no open handle, and frees io. */
void cqr_io_stop(cqr_io_t *io, uint64_t timeout_ms);

/* "1.2.3.4:5" or "[::1]:5" for an IPv4/IPv6 socket address. */
void cqr_format_addr(const struct sockaddr *sa, char *buf, size_t len);

#endif
