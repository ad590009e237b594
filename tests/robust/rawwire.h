/* rawwire.h -- a raw-socket client for tests that break the protocol on
 * purpose (partial frames, garbage, never reading), speaking the frames
 * and messages of proto/cqrps.proto directly.
 *
 * Helpers fail the running check test on unexpected errors; functions
 * that wait take a timeout in ms and say whether it was reached.
 */
#ifndef CQR_TEST_RAWWIRE_H
#define CQR_TEST_RAWWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.pb-c.h"
#include "net/frame.h"

typedef Cqrps__V1__Request rw_request_t;
typedef Cqrps__V1__Response rw_response_t;

/* A TCP connection to 127.0.0.1:port (blocking, TCP_NODELAY); -1 if the
 * connect failed. */
int rw_connect(uint16_t port);

/* Makes fd non-blocking (for poll-driven clients). */
void rw_set_nonblock(int fd);

/* Sets a small receive buffer (before connecting data flows), so a
 * client that never reads fills the server's pending bytes quickly. */
void rw_set_rcvbuf(int fd, int bytes);

/* Writes all n bytes (blocking fd); 0, or -1 if the peer went away. */
int rw_write_all(int fd, const void *p, size_t n);

/* Appends q (with id) as one frame to b. */
void rw_frame(cqr_buf_t *b, rw_request_t *q, uint64_t id);

/* Request builders: each appends one framed request to b. */
void rw_hello(cqr_buf_t *b, uint64_t id, const char *token,
              const char *admin_token);
void rw_create(cqr_buf_t *b, uint64_t id, const char *name,
               Cqrps__V1__TableKind kind, uint32_t dim, uint32_t rows);
void rw_lookup(cqr_buf_t *b, uint64_t id, const char *table,
               const uint64_t *ids, size_t n);
void rw_push(cqr_buf_t *b, uint64_t id, const char *table,
             const uint64_t *ids, size_t n, const float *grads,
             uint32_t dim);
void rw_list(cqr_buf_t *b, uint64_t id);

/* Reads one response whose first byte arrives within timeout_ms (the
 * rest of it may take longer: nothing is consumed unless a whole frame
 * is read); NULL on EOF, error or timeout (*eof, if non-NULL, says
 * whether the peer closed). Free with rw_free. */
rw_response_t *rw_read(int fd, int timeout_ms, int *eof);
void rw_free(rw_response_t *r);

/* Sends the frames in b and reads one reply per frame; returns the last
 * reply (the earlier ones must be OK) or NULL. */
rw_response_t *rw_call(int fd, cqr_buf_t *b, int timeout_ms);

/* 1 once the peer has closed (EOF or reset) within timeout_ms, reading
 * and discarding whatever comes before; 0 on timeout. */
int rw_wait_closed(int fd, int timeout_ms);

/* Milliseconds of a monotonic clock. */
uint64_t rw_now_ms(void);

#endif
