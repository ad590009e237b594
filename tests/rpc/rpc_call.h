/* rpc_call.h -- requests through cqr_rpc_handle in-process, for the
 * suites that drive the RPC layer without sockets (tests/rpc/test_rpc.c,
 * tests/robust/test_auth.c).
 *
 * Every call packs its request with a fresh id, runs it on the given
 * context and session, and checks what holds for any request: the return
 * code is one cqr_rpc_handle documents for a session that cannot defer
 * (0, CQR_EPROTO or CQR_EAUTH), the reply decodes, and it echoes the id.
 * The caller gets the reply (free it with rq_done) and the return code.
 *
 * Threading: a call may run on any thread; ids come from an atomic
 * counter.
 */
#ifndef CQR_TEST_RPC_CALL_H
#define CQR_TEST_RPC_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.pb-c.h"
#include "rpc/rpc.h"

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

/* Runs the bytes body[0..len) as they are (no id is set). */
Response *rq_raw(cqr_server_ctx_t *ctx, cqr_session_t *s,
                 const uint8_t *body, size_t len, int *rc);

/* Gives q the next id, runs it and checks that the reply echoes it. */
Response *rq_call(cqr_server_ctx_t *ctx, cqr_session_t *s, Request *q,
                  int *rc);

void rq_done(Response *r);

/* Decodes the reply bytes data[0..len), asserting that protobuf-c packs
 * the result to the same bytes (hand-encoded replies are protobuf-c's
 * bytes). Free with rq_done. */
Response *rq_unpack_exact(const uint8_t *data, size_t len);

/* The table config the data-path suites create their tables with: kind,
 * dim and rows as given, seed 7, Adam with lr 0.05 in *o (tc points to
 * it). */
void rq_table_config(Cqrps__V1__TableConfig *tc,
                     Cqrps__V1__OptimizerConfig *o, Cqrps__V1__TableKind kind,
                     uint32_t dim, uint32_t rows);

/* The reply's status as a CQR_E* code (0 for OK); frees the reply. */
int rq_status(Response *r);

/* One request of each operation (the message fields not named are the
 * defaults). */
Response *rq_create(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *name, Cqrps__V1__TableConfig *tc, int *rc);
Response *rq_drop(cqr_server_ctx_t *ctx, cqr_session_t *s, const char *name,
                  int *rc);
Response *rq_describe(cqr_server_ctx_t *ctx, cqr_session_t *s,
                      const char *name, int *rc);
Response *rq_digest(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *table, int *rc);
Response *rq_cluster(cqr_server_ctx_t *ctx, cqr_session_t *s,
                     const char *table, int *rc);
Response *rq_cluster_status(cqr_server_ctx_t *ctx, cqr_session_t *s,
                            const char *table, uint64_t phase, int *rc);
Response *rq_cancel_cluster(cqr_server_ctx_t *ctx, cqr_session_t *s,
                            const char *table, uint64_t phase, int *rc);
/* ListTables, Stats, Checkpoint or ListCheckpoints (no fields). */
Response *rq_simple(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    Cqrps__V1__Request__OpCase op, int *rc);
/* token and admin may be NULL (absent). */
Response *rq_hello(cqr_server_ctx_t *ctx, cqr_session_t *s,
                   uint32_t version, const char *client, const char *token,
                   const char *admin, int *rc);
Response *rq_lookup(cqr_server_ctx_t *ctx, cqr_session_t *s,
                    const char *table, const uint64_t *ids, size_t n,
                    uint32_t *offsets, size_t nb, int mean, int *rc);
/* gfloats floats of gradients at g. */
Response *rq_push(cqr_server_ctx_t *ctx, cqr_session_t *s,
                  const char *table, const uint64_t *ids, size_t n,
                  const float *g, size_t gfloats, uint32_t *offsets,
                  size_t nb, int *rc);

#endif
