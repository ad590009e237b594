/* client.h -- the client object of libcqrps and its generic RPC path
 * (never installed; the layers are listed in op.h).
 *
 * A cqrps_client_t owns its connections (net), copies of the option
 * strings it was given, the live tickets (asynchronous operations) and,
 * for sharded deployments, the per-shard ids of the cluster phases it
 * started. admin.c and data.c build their calls from cq_rpc / cq_op_finish
 * and the queue functions of conn.h.
 *
 * Threading: one thread at a time (cqrps.h).
 * Errors: 0 or a negative CQRPS_E* code; the message of a failed call is
 * in c->net.last_error (cqrps_last_error).
 */
#ifndef CQ_CLIENT_H
#define CQ_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "cqrps.h"
#include "op.h"

struct Cqrps__V1__Request;

/* What a sharded cluster call returned per shard, so status calls ask
 * each shard about its own phase. */
typedef struct cq_phase_memo {
    char table[CQRPS_NAME_MAX + 1];
    uint64_t id;               /* id reported to the caller */
    uint64_t *shard_ids;       /* nconns ids (owned) */
} cq_phase_memo_t;

struct cqrps_client {
    cq_net_t net;              /* connections, errors, the dim cache */
    cqrps_options_t opt;       /* options, pointers into the copies below
                                  (net.opt points here) */
    void *token;               /* copies of the option strings (owned) */
    void *admin_token;
    char *client_name;
    uint64_t next_ticket;
    cq_op_t *tickets;          /* live asynchronous operations */
    cq_phase_memo_t *memos;    /* sharded cluster ids, one per table */
    size_t nmemos, memos_cap;
};

/* ---- data.c: what the multi-table calls (multi.c) share ---- */

/* Groups the IDs by shard. Fills first[nsh + 1] and writes, in shard
 * order, the IDs to sid and their caller positions to spos (n each).
 * CQRPS_ENOMEM. */
int cq_split_ids(const uint64_t *ids, size_t n, uint32_t nsh,
                 size_t *first, uint64_t *sid, uint32_t *spos);

/* The same for bags: first[nsh + 1] and cur[nsh] zeroed by the caller;
 * sid gets the IDs in shard order, bag by bag, and soff[s * nb + b] the
 * start of bag b in shard s's slice. */
void cq_split_bags(const uint64_t *ids, size_t n, const uint32_t *offsets,
                   size_t nb, uint32_t nsh, size_t *first, size_t *cur,
                   uint64_t *sid, uint32_t *soff);

/* Checks a table name (non-empty, at most CQRPS_NAME_MAX bytes). */
int cq_check_name(cqrps_client_t *c, const char *name);

/* Waits until op has every reply, copies its error to the client and
 * returns it; divides a sharded mean pooling. Does not free op. */
int cq_op_finish(cqrps_client_t *c, cq_op_t *op);

/* Starts one data operation described by call: 0 with *opp set (a
 * failure after the start is recorded on *opp and reported by the wait),
 * or a negative code with nothing started. */
typedef int (*cq_start_fn)(cqrps_client_t *c, const void *call,
                           cq_op_t **opp);

/* A synchronous call: starts it, waits for it and frees it. An idempotent
 * call (retry nonzero) is started once more after a lost connection when
 * the options allow reconnecting. */
int cq_call_sync(cqrps_client_t *c, cq_start_fn start, const void *call,
                 int retry);

/* An asynchronous call: starts it and registers it as a ticket, which
 * cqrps_wait finishes. CQRPS_EINVAL without c or ticket. */
int cq_call_ticket(cqrps_client_t *c, cq_start_fn start, const void *call,
                   cqrps_ticket_t *ticket);

/* Connects every shard that is not connected. On a failure, records it
 * on op (the wait reports it, like any later failure) and returns it. */
int cq_connect_all(cqrps_client_t *c, cq_op_t *op);

/* The end of starting a data operation: records rc (a failed enqueue,
 * 0 for none) on op, for the wait to report, and writes what was queued
 * (the queue may point into the caller's arrays). */
void cq_start_done(cqrps_client_t *c, cq_op_t *op, int rc);

/* Lower level of cq_rpc, for requests that differ per shard: connects
 * shard s if needed and queues req there for op. A failure is recorded
 * on op (and returned); whatever was queued before still counts. */
int cq_rpc_send(cqrps_client_t *c, cq_op_t *op, uint32_t s,
                struct Cqrps__V1__Request *req);

/* Flags of cq_rpc. */
enum {
    CQ_RPC_ALL = 1,    /* send to every shard (else shard 0 only) */
    CQ_RPC_RETRY = 2,  /* idempotent: retry once after CQRPS_ECONN */
    CQ_RPC_UNTIMED = 4 /* a long operation the server answers only when
                          done: wait without the request timeout (a dead
                          server still fails the call when its
                          connection closes) */
};

/* Sends req to the shards and waits for every reply. On 0, op->resp[s]
 * holds each shard's reply (shard 0's only without CQ_RPC_ALL); *opp is
 * set in every case and the caller frees it with cq_op_free. */
int cq_rpc(cqrps_client_t *c, struct Cqrps__V1__Request *req, int flags,
           const char *table, cq_op_t **opp);

#endif
