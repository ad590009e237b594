/* internal.h -- the state shared by libcqrps's modules (never installed).
 *
 * Modules: client.c (lifecycle, errors, operations and tickets, reply
 * delivery, the table-dim cache), conn.c (sockets: connect, Hello, the
 * write queue, the poll() pump, failure), wire.c (hot-path codec), data.c
 * (lookups and pushes: sub-batches, shard split and merge), admin.c (the
 * other RPCs, merged over shards), shard.c (address lists, jump hash).
 *
 * Model: a client has one connection per shard. A public call creates an
 * operation (cq_op_t) and enqueues one or more requests for it on the
 * connections; each request leaves a pending entry (cq_pending_t) on its
 * connection, in send order. cq_pump() writes every queued byte and reads
 * replies on all connections at once with poll(), so a long pipeline never
 * deadlocks against a server that stops reading while its replies are not
 * read; each reply is handed to its operation, which counts down until it
 * has them all. A connection that fails fails every pending entry on it.
 *
 * Rules: everything here runs on the one thread using the client. A
 * pending entry points at its operation, so an operation is freed only
 * when its outstanding count is 0. The write queue may point into caller
 * memory: every public call returns only after its queue is empty.
 */
#ifndef CQ_INTERNAL_H
#define CQ_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"
#include "wire.h"

struct Cqrps__V1__Request;
struct Cqrps__V1__Response;

#define CQ_ERRMSG_MAX 512

typedef struct cq_op cq_op_t;

/* What a reply to a pending request means to its operation. */
typedef enum cq_pkind {
    CQ_P_LOOKUP = 0,   /* rows of vectors into op->out */
    CQ_P_POOLED = 1,   /* bags of pooled vectors into op->out */
    CQ_P_PUSH = 2,     /* an acknowledgement */
    CQ_P_RPC = 3       /* any other reply: unpacked by protobuf-c */
} cq_pkind_t;

typedef struct cq_pending {
    uint64_t id;          /* Request.id the reply must echo */
    cq_op_t *op;          /* the operation it belongs to */
    cq_pkind_t kind;      /* how to deliver the reply */
    size_t base;          /* first output row (or bag) of this request */
    size_t count;         /* rows (or bags) the reply must carry */
    const uint32_t *pos;  /* sharded lookup: output row of each reply row,
                             count entries (owned by op); NULL when the
                             rows are contiguous from base */
} cq_pending_t;

/* A slice of the write queue: caller memory (ext) or bytes of the
 * connection's own buffer (at off; an offset, because the buffer may
 * move while the queue grows). */
typedef struct cq_wseg {
    const void *ext;      /* external bytes, or NULL for owned */
    size_t off;           /* owned: offset into wown */
    size_t len;           /* bytes */
} cq_wseg_t;

typedef struct cq_conn {
    uint32_t index;            /* shard index */
    char addr[280];            /* "host:port" as given, for messages */
    char host[256];            /* host part, brackets removed */
    char port[8];              /* port part */
    int fd;                    /* socket, -1 when not connected */
    int ever_connected;        /* a Hello has succeeded once */
    uint64_t next_id;          /* next Request.id */
    /* write queue */
    cq_wseg_t *segs;           /* queued slices, in order */
    size_t nsegs, segs_cap;
    size_t seg_pos;            /* first slice not fully written */
    size_t seg_off;            /* bytes of segs[seg_pos] already written */
    unsigned char *wown;       /* bytes owned by the queue */
    size_t wown_len, wown_cap;
    /* read side */
    unsigned char *rbuf;       /* received bytes, frames at the front */
    size_t rlen, rcap;
    /* requests sent, replies not yet read: a ring */
    cq_pending_t *pend;
    size_t phead, pcount, pcap;
    /* Direct receive: the vectors of a large, contiguous lookup reply go
     * from the socket straight into the caller's output (conn.c). */
    unsigned char *dst;        /* where the rest of the frame goes, or NULL */
    size_t dst_left;           /* bytes of it still to receive */
    cq_pending_t dpend;        /* the request it answers (off the ring) */
    uint64_t last_progress_ms; /* last byte moved, for request timeouts */
    cqrps_server_info_t info;  /* from Hello */
} cq_conn_t;

/* An operation: one public call, or one ticket. */
typedef enum cq_okind {
    CQ_O_DATA = 0,  /* lookup or push, maybe pooled */
    CQ_O_RPC = 1    /* admin RPC: collects one Response per shard */
} cq_okind_t;

struct cq_op {
    cqrps_ticket_t ticket;     /* 0 for synchronous calls */
    cq_okind_t kind;
    size_t outstanding;        /* pending requests not yet answered */
    int err;                   /* first error, 0 if none */
    char msg[CQ_ERRMSG_MAX];   /* its message */
    char table[CQRPS_NAME_MAX + 1]; /* the table, for messages and the
                                       dim cache */
    uint32_t dim;              /* the table's dim as the client knows it */
    float *out;                /* lookup output (caller memory) */
    int accumulate;            /* sharded pooled lookup: add replies into
                                  out instead of copying */
    size_t nbags;              /* pooled: bags */
    uint32_t *bag_div;         /* sharded mean pooling: bag sizes to
                                  divide by at the end (owned) */
    void *scratch[3];          /* per-shard copies (owned) */
    struct Cqrps__V1__Response **resp; /* RPC: one reply per shard */
    uint32_t nresp;            /* entries of resp */
    cq_op_t *next;             /* the client's list of live tickets */
};

/* Table-dim cache entry. */
typedef struct cq_dim {
    char name[CQRPS_NAME_MAX + 1];
    uint32_t dim;
} cq_dim_t;

/* What a sharded cluster call returned per shard, so status calls ask
 * each shard about its own phase. */
typedef struct cq_phase_memo {
    char table[CQRPS_NAME_MAX + 1];
    uint64_t id;               /* id reported to the caller */
    uint64_t *shard_ids;       /* nconns ids (owned) */
} cq_phase_memo_t;

struct cqrps_client {
    cq_conn_t *conns;          /* one per shard */
    uint32_t nconns;
    cqrps_options_t opt;       /* options, pointers into the copies below */
    void *token;               /* copies of the option strings (owned) */
    void *admin_token;
    char *client_name;
    uint32_t max_batch;        /* effective IDs per sub-batch */
    uint64_t next_ticket;
    cq_op_t *tickets;          /* live asynchronous operations */
    char last_error[CQ_ERRMSG_MAX];
    cq_dim_t *dims;            /* the table-dim cache */
    size_t ndims, dims_cap;
    cq_phase_memo_t *memos;    /* sharded cluster ids, one per table */
    size_t nmemos, memos_cap;
    struct pollfd *pfds;       /* poll set, nconns entries */
    cq_conn_t **pconns;        /* connection of each poll entry */
};

/* ---- client.c ---------------------------------------------------------- */
uint64_t cq_now_ms(void);
/* Records an error on the client (printf-style); returns err. */
int cq_fail(cqrps_client_t *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Records the first error of an operation; later ones are dropped. */
void cq_op_error(cq_op_t *op, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
cq_op_t *cq_op_new(cqrps_client_t *c, cq_okind_t kind, const char *table);
void cq_op_free(cq_op_t *op);
/* Waits until op has every reply, copies its error to the client and
 * returns it. Does not free op. */
int cq_op_finish(cqrps_client_t *c, cq_op_t *op);
/* Hands one reply (frame body and its scanned envelope) to the
 * operation of pending entry p, and counts it. */
void cq_deliver(cqrps_client_t *c, cq_conn_t *conn, const cq_pending_t *p,
                const cq_resp_hdr_t *h, const unsigned char *body,
                size_t len);
int cq_check_name(cqrps_client_t *c, const char *name);
void cq_dim_put(cqrps_client_t *c, const char *name, uint32_t dim);
void cq_dim_drop(cqrps_client_t *c, const char *name);
/* Lower level of cq_rpc, for requests that differ per shard: connects
 * shard s if needed and queues req there for op. A failure is recorded
 * on op (and returned); whatever was queued before still counts. */
int cq_rpc_send(cqrps_client_t *c, cq_op_t *op, uint32_t s,
                struct Cqrps__V1__Request *req);
/* Flags of cq_rpc. */
#define CQ_RPC_ALL 1   /* send to every shard (else shard 0 only) */
#define CQ_RPC_RETRY 2 /* idempotent: retry once after CQRPS_ECONN */
/* Sends req to the shards and waits for every reply. On 0, op->resp[s]
 * holds each shard's reply (shard 0's only without CQ_RPC_ALL); *opp is
 * set in every case and the caller frees it with cq_op_free. */
int cq_rpc(cqrps_client_t *c, struct Cqrps__V1__Request *req, int flags,
           const char *table, cq_op_t **opp);

/* ---- conn.c ------------------------------------------------------------ */
void cq_conn_init(cq_conn_t *conn, uint32_t index);
void cq_conn_free(cq_conn_t *conn);
/* Makes sure the connection is up (connecting and saying Hello, or
 * reconnecting once if the server dropped it). Errors go to the client. */
int cq_conn_ensure(cqrps_client_t *c, cq_conn_t *conn);
void cq_conn_close(cq_conn_t *conn);
/* Fails every pending request with err/msg and closes the socket. */
void cq_conn_fail(cqrps_client_t *c, cq_conn_t *conn, int err,
                  const char *msg);
/* Queue building. Reserve before appending: an append after a successful
 * reserve cannot fail, so a request is queued whole or not at all. */
int cq_conn_reserve(cq_conn_t *conn, size_t owned_bytes, size_t segs,
                    size_t pending);
void cq_conn_put_owned(cq_conn_t *conn, const void *p, size_t len);
/* Claims len reserved bytes to encode into in place; *off is their
 * offset, for cq_conn_put_claimed once they are written. */
unsigned char *cq_conn_claim(cq_conn_t *conn, size_t len, size_t *off);
void cq_conn_put_claimed(cq_conn_t *conn, size_t off, size_t len);
void cq_conn_put_ext(cq_conn_t *conn, const void *p, size_t len);
/* Records a request on the ring; returns its entry for the caller to
 * fill. Requires a successful reserve. */
cq_pending_t *cq_conn_push_pending(cq_conn_t *conn);
/* Queues req (its id is set here) on conn for op as an RPC and counts it
 * as outstanding. CQRPS_ENOMEM or CQRPS_ELIMIT (frame too large); on error
 * nothing is queued. */
int cq_rpc_enqueue(cq_conn_t *conn, cq_op_t *op,
                   struct Cqrps__V1__Request *req);
/* Pumps every connection until op has all its replies (op != NULL) or
 * every write queue is empty (op == NULL). Returns 0; failures are
 * recorded on the operations of the failed connections. */
int cq_pump(cqrps_client_t *c, cq_op_t *op);

/* ---- shard.c ----------------------------------------------------------- */
/* Splits "h1:p1,h2:p2" into conns; *n is set to the count. */
int cq_parse_addrs(cqrps_client_t *c, const char *addrs);

#endif
