/* rpc.h -- decode one request, run it on the engine, encode the reply.
 *
 * No sockets here: cqr_rpc_handle takes the body of one frame and appends
 * the body of one Response frame, so tests and the fuzzer drive the whole
 * request path in-process. The connection layer (net/conn.c) adds
 * framing, ordering and backpressure around it. The context, sessions,
 * counters and hooks it works with are in server.h.
 *
 * Inside: rpc.c decodes (wire.c's in-place codec for Lookup and Push,
 * protobuf-c for everything else), dispatches, packs and counts; the
 * operations live in data.c (Lookup, Push), admin.c (tables, phases,
 * checkpoints, Hello) and stats.c (Stats), which share call.h.
 *
 * Threading: cqr_rpc_handle may run on any number of threads at once with
 * the same context, each with its own session. Counters are atomics.
 *
 * Errors: every reply carries a status (the negated CQR_E* code) and a
 * human-readable message; see cqr_rpc_handle for the cases where the
 * connection itself must go.
 */
#ifndef CQR_RPC_H
#define CQR_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "net/frame.h"
#include "rpc/server.h"

/* Handles one request body and appends one encoded Response body to out
 * (no frame header: the caller brackets it with cqr_frame_begin/end).
 * Lookup and Push requests are read in place from body when the hand
 * codec takes them (wire.h), and a LookupReply's vectors are written by
 * the engine straight into out; to align them, out's bytes may be moved
 * within its allocation (cqr_buf_align): offsets into out stay valid,
 * pointers do not. body is only read, and only during the call.
 * Returns:
 *   0           a reply was appended (its status may be an error);
 *   CQR_RPC_DEFERRED  nothing was appended: the reply comes later
 *               through the session's defer (server.h, Deferred
 *               replies);
 *   CQR_EPROTO  the body did not decode: a MALFORMED reply with id 0 was
 *               appended; the caller must send it and close the
 *               connection;
 *   CQR_EAUTH   authentication is on and the session is not
 *               authenticated after this request (a request before Hello,
 *               a wrong token, a bad protocol version): the error reply
 *               was appended; send it and close the connection;
 *   CQR_ENOMEM  not even an error reply could be built; nothing was
 *               appended (out is unchanged); close the connection.
 */
int cqr_rpc_handle(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                   const uint8_t *body, size_t len, cqr_buf_t *out);

/* cqr_rpc_handle's "the reply comes later". */
#define CQR_RPC_DEFERRED 1

/* Appends an error Response body (status -err, request id `id`, message
 * msg or cqr_strerror(err) if msg is NULL) and counts it. For errors the
 * connection layer finds itself (oversize frame, too many connections).
 * CQR_ENOMEM leaves out unchanged. */
int cqr_rpc_error(cqr_server_ctx_t *ctx, cqr_buf_t *out, uint64_t id,
                  int err, const char *msg);

#endif
