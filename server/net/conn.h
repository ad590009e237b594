/* conn.h -- one client connection on its loop thread (iothread.h): read
 * frames, hand each to the RPC layer, write the replies in order, and
 * hold the peer to its limits.
 *
 * A connection reads frames into one reused buffer (frame.h), runs each
 * request through cqr_rpc_handle on its loop thread and writes the
 * replies in request order. Work per event is bounded: at most a fixed
 * number of frames per read, then the connection yields to the others
 * and continues from the thread's idle handle. Unsent reply bytes are
 * counted: over --max-pending-bytes the connection stops being read until
 * they drain below half; over four times that it is closed.
 *
 * States (one enum): OPEN reads and answers; DRAINING reads no more but
 * answers what it received (the peer sent EOF, or the server stops);
 * LINGER has sent its last reply, shut its write side and discards input
 * until EOF or a deadline; CLOSING waits for libuv's close callback,
 * which frees it. A connection is never freed inside its own callbacks.
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
 * connection limit, UNAUTHENTICATED, timeouts) send an error reply first,
 * shut down the write side after it, and discard input until the peer
 * closes or a short deadline passes -- so the peer reads the error
 * instead of a reset. Every forced disconnect is logged with the peer and
 * the reason and counted.
 *
 * Deferred replies (server.h): a request whose work runs elsewhere
 * (Checkpoint, on the checkpoint thread) reserves a slot in its
 * connection's reply order; later requests are still read and answered,
 * but their replies wait behind the slot, so replies always leave in
 * request order. The worker hands the finished reply back through the
 * thread (cqr_io_thread_post). A connection waiting for 16 slots, or
 * holding --max-pending-bytes of replies behind them, stops taking
 * requests until the oldest slot is answered. A connection that closes
 * first abandons its slots; the thread keeps them (t->outstanding) until
 * their replies came back.
 *
 * Known limit: other requests run on the I/O thread, so a slow one (a
 * huge CreateTable) delays the other connections of that thread.
 *
 * Errors: nothing is returned; whatever goes wrong with a connection
 * ends that connection (logged and counted), never another one.
 *
 * Ownership: a connection owns its socket, buffers and session, and is
 * freed in libuv's close callback; its deferred slots outlive it when
 * their replies are still out (the thread then owns them).
 *
 * Threading: everything here runs on the connection's loop thread; the
 * I/O thread calls these functions from its handles' callbacks.
 */
#ifndef CQR_CONN_H
#define CQR_CONN_H

#include <stdint.h>

#include "net/iothread.h"

/* Adopts an accepted socket (owned from here on) as a connection of t.
 * With reject set it only gets a LIMIT_EXCEEDED reply and is closed; an
 * accepted one was already counted in conn_open by the acceptor. */
void cqr_conn_open(cqr_io_thread_t *t, int fd, const char *peer,
                   int reject);

/* Runs each connection that was on t->ready at the start of the call
 * once; ones that yield again are ready for the next pass. */
void cqr_conn_run_ready(cqr_io_thread_t *t);

/* Enforces the deadlines at time `now` (uv_now): the stop's grace period,
 * the linger deadline, --frame-timeout and --idle-timeout. */
void cqr_conn_sweep(cqr_io_thread_t *t, uint64_t now);

/* The thread began to stop (t->stopping, t->stop_deadline are set): open
 * connections drain, lingering ones end by the stop's deadline. */
void cqr_conn_stop_all(cqr_io_thread_t *t);

/* Deferred replies that came back (links cqr_io_thread_post handed
 * over): each is sent in its place, or dropped if its connection went. */
void cqr_conn_take_done(cqr_io_thread_t *t, cqr_list_t *done);

#endif
