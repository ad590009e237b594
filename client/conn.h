/* conn.h -- libcqrps's sockets: a client's connections (one per shard),
 * connect and Hello, the write queue, the poll() pump, failure (never
 * installed; the layers are listed in op.h).
 *
 * Model: requests are queued on a connection (bytes the connection owns,
 * or slices of caller memory), each with a pending entry on the
 * connection's ring, in send order. cq_pump() writes every queued byte and
 * reads replies on all connections at once with poll(), so a long
 * pipeline never deadlocks against a server that stops reading while its
 * replies are not read; each reply goes to its operation (cq_deliver). A
 * connection that fails fails every pending entry on it.
 *
 * Threading: one thread at a time, the one using the client.
 * Ownership: the write queue may point into caller memory: every public
 * call returns only after its queue is empty (cq_pump with op NULL).
 * Errors: 0 or a negative CQRPS_E* code; functions that take the net
 * record a message in net->last_error (cq_fail), queue functions report
 * only the code, and failures of requests in flight are recorded on their
 * operations.
 */
#ifndef CQ_CONN_H
#define CQ_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"
#include "op.h"

struct Cqrps__V1__Request;
struct pollfd;

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
    int dmulti;                /* a multi-table lookup: dst moves from
                                  segment to segment, then to dtail */
    size_t dseg;               /* multi: next segment to receive into */
    uint32_t ddim;             /* multi: the reply's dim field (0: none) */
    size_t dvlen;              /* multi: bytes of vectors */
    unsigned char dtail[512];  /* multi: the reply's fields after the
                                  vectors (dims, bf16) */
    size_t dtail_len, dtail_got; /* their size; how much dst has covered */
    uint64_t last_progress_ms; /* last byte moved, for request timeouts */
    cqrps_server_info_t info;  /* from Hello */
} cq_conn_t;

/* A client's connections and what they need of the client. */
typedef struct cq_net {
    cq_conn_t *conns;          /* one per shard, in address-list order */
    uint32_t nconns;
    const cqrps_options_t *opt; /* the client's options: timeouts,
                                   reconnect, the Hello's tokens and name */
    cq_dims_t dims;            /* the table-dim cache (replies drop stale
                                  entries) */
    char last_error[CQ_ERRMSG_MAX]; /* message of the last failed call */
    struct pollfd *pfds;       /* poll set, nconns entries */
    cq_conn_t **pconns;        /* connection of each poll entry */
} cq_net_t;

/* Records an error message on the net (printf-style); returns err. */
int cq_fail(cq_net_t *net, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Makes room for n unconnected connections (addresses still empty) and
 * the poll set. CQRPS_ENOMEM (recorded). */
int cq_net_init(cq_net_t *net, uint32_t n);
/* Fails every request in flight with err/msg and closes every socket. */
void cq_net_fail(cq_net_t *net, int err, const char *msg);
/* Frees the connections, the poll set and the dim cache. Requires no
 * request in flight (cq_net_fail first). */
void cq_net_free(cq_net_t *net);

/* Makes sure the connection is up (connecting and saying Hello, or
 * reconnecting once if the server dropped it). */
int cq_conn_ensure(cq_net_t *net, cq_conn_t *conn);

/* Queue building. Reserve before appending: an append after a successful
 * reserve cannot fail, so a request is queued whole or not at all. */
int cq_conn_reserve(cq_conn_t *conn, size_t owned_bytes, size_t segs,
                    size_t pending);
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
int cq_pump(cq_net_t *net, cq_op_t *op);

#endif
