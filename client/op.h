/* op.h -- libcqrps's bottom layer: operations, reply delivery, errors and
 * the table-dim cache (never installed).
 *
 * The layers of the library, each using only those below it:
 *   wire    the hand codec of the hot path (pure)
 *   op      this file: what a public call waits for and how a reply
 *           reaches it
 *   conn    sockets: one connection per shard, the write queue, the pump
 *   shard   address lists and the ID-to-shard map
 *   client  the client object: connect and close, tickets, the generic
 *           RPC path
 *   admin   the RPCs other than lookup and push (tables, phases, stats)
 *   data    lookups and pushes (sub-batches, shard split and merge)
 *
 * Model: a public call creates an operation (cq_op_t) and queues one or
 * more requests for it on the connections; each request leaves a pending
 * entry (cq_pending_t) on its connection, in send order. Each reply is
 * handed to its operation by cq_deliver, which counts down until the
 * operation has them all. An operation is freed only when its outstanding
 * count is 0, since pending entries point at it.
 *
 * Threading: everything here runs on the one thread using the client.
 * Errors: an operation keeps its first error (code and message); later
 * ones are dropped.
 */
#ifndef CQ_OP_H
#define CQ_OP_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"
#include "wire.h"

struct Cqrps__V1__Response;

/* Bytes of every error message buffer. */
#define CQ_ERRMSG_MAX 512

/* Milliseconds of a monotonic clock. */
uint64_t cq_now_ms(void);

typedef struct cq_op cq_op_t;

/* What a reply to a pending request means to its operation. */
typedef enum cq_pkind {
    CQ_P_LOOKUP = 0,   /* rows of vectors into op->out */
    CQ_P_POOLED = 1,   /* bags of pooled vectors into op->out */
    CQ_P_PUSH = 2,     /* an acknowledgement */
    CQ_P_RPC = 3,      /* any other reply: unpacked by protobuf-c */
    CQ_P_MLOOKUP = 4   /* a multi-table lookup's vectors, by segment */
} cq_pkind_t;

/* One segment of a multi-table request: rows of one of the operation's
 * parts (the request's part k is segs[k]). */
typedef struct cq_mseg {
    uint32_t part;        /* the operation's part (op->parts) */
    size_t base;          /* first output row (or bag) of the segment */
    size_t count;         /* rows (or bags) its reply carries */
    const uint32_t *pos;  /* sharded plain part: output row of each reply
                             row (owned by op), or NULL: contiguous */
} cq_mseg_t;

typedef struct cq_pending {
    uint64_t id;          /* Request.id the reply must echo */
    cq_op_t *op;          /* the operation it belongs to */
    cq_pkind_t kind;      /* how to deliver the reply */
    size_t base;          /* first output row (or bag) of this request */
    size_t count;         /* rows (or bags) the reply must carry */
    const uint32_t *pos;  /* sharded lookup: output row of each reply row,
                             count entries (owned by op); NULL when the
                             rows are contiguous from base */
    const cq_mseg_t *segs; /* a multi-table operation's request: its
                              segments in part order (owned by op) */
    size_t nsegs;
} cq_pending_t;

/* A multi-table operation's part: where its results go. */
typedef struct cq_mpart {
    const char *table;    /* the table (a copy owned by op) */
    uint32_t dim;         /* its dim as the client knows it */
    float *out;           /* lookup output (caller memory) */
    size_t rows;          /* rows (or bags) of out */
    int accumulate;       /* sharded pooled lookup: add replies */
    uint32_t *bag_div;    /* sharded mean pooling: bag sizes to divide by
                             at the end (owned by op), or NULL */
} cq_mpart_t;

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
    cq_mpart_t *parts;         /* multi-table: nparts parts (owned) */
    size_t nparts;
    void **owned;              /* buffers freed with op (cq_op_own) */
    size_t nowned, owned_cap;
    cq_op_t *next;             /* the client's list of live tickets */
};

/* A new operation on `table` (may be NULL); an RPC operation gets room
 * for nshards replies. NULL when out of memory. */
cq_op_t *cq_op_new(cq_okind_t kind, const char *table, uint32_t nshards);
/* Frees op and what it owns; NULL is a no-op. Requires outstanding 0. */
void cq_op_free(cq_op_t *op);
/* Makes op own p (freed by cq_op_free); returns p, or NULL (and frees
 * p) when out of memory. NULL p is returned as is. */
void *cq_op_own(cq_op_t *op, void *p);
/* Records the first error of an operation; later ones are dropped. */
void cq_op_error(cq_op_t *op, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A pending request of op that will get no reply: records err/msg on op
 * and counts the request as answered. */
void cq_op_abandon(cq_op_t *op, int err, const char *msg);

/* ---- The table-dim cache -------------------------------------------------
 * What the client knows of each table's dim, so a lookup needs no extra
 * round trip; a reply that says the dim is wrong or the table is gone
 * drops the entry. A cache: failing to remember is harmless. */
typedef struct cq_dim {
    char name[CQRPS_NAME_MAX + 1];
    uint32_t dim;
} cq_dim_t;

typedef struct cq_dims {
    cq_dim_t *v;               /* entries (owned) */
    size_t n, cap;
} cq_dims_t;

void cq_dims_put(cq_dims_t *d, const char *name, uint32_t dim);
void cq_dims_drop(cq_dims_t *d, const char *name);
/* 1 and *dim when name is cached, else 0. */
int cq_dims_get(const cq_dims_t *d, const char *name, uint32_t *dim);
void cq_dims_free(cq_dims_t *d);

/* ---- Delivery --------------------------------------------------------- */

/* Where a reply came from. */
typedef struct cq_origin {
    const char *addr;  /* the shard's address, for messages */
    uint32_t shard;    /* its index: the slot of an RPC reply */
    int sharded;       /* more than one shard: server errors name addr */
    cq_dims_t *dims;   /* the client's dim cache, for stale entries */
} cq_origin_t;

/* Hands one reply (frame body and its scanned envelope) to the operation
 * of pending entry p, and counts it. */
void cq_deliver(const cq_origin_t *from, const cq_pending_t *p,
                const cq_resp_hdr_t *h, const unsigned char *body,
                size_t len);

/* Direct receive of a multi-table lookup reply (conn.c): the vectors go
 * from the socket into the parts' outputs, segment by segment.
 * cq_mlookup_direct_bytes gives the float32 vector bytes p's reply must
 * carry when every segment is contiguous in its part's output (no
 * scatter, no accumulation) and the operation has no error yet, else 0.
 * cq_mlookup_direct_dst gives segment k's destination and its *len
 * bytes. cq_deliver_mlookup_direct checks the reply's fields other than
 * the vectors (dim, received before them; tail: the bytes after them)
 * as cq_deliver would, and counts the reply. */
size_t cq_mlookup_direct_bytes(const cq_pending_t *p);
unsigned char *cq_mlookup_direct_dst(const cq_pending_t *p, size_t k,
                                     size_t *len);
void cq_deliver_mlookup_direct(const cq_origin_t *from, const cq_pending_t *p,
                               uint32_t dim, size_t vec_len,
                               const unsigned char *tail, size_t tail_len);

#endif
