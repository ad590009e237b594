/* call.h -- one request in flight inside the RPC layer. Only the files
 * of rpc/ include it: rpc.c decodes and dispatches, the operations live
 * in data.c, admin.c and stats.c.
 *
 * Rules for an operation (cqr_op_*): it runs on the session's thread and
 * either fills c->resp (its reply message lives in the call) and returns
 * 0, or appends its own OK reply to c->out and sets c->appended (Lookup,
 * Push), or returns a negative CQR_E* code with a message set through
 * cqr_call_fail. It never appends an error reply itself: rpc.c encodes
 * and counts every reply. What a reply points to is released after
 * packing: the table references in c->entry and c->list, the blocks
 * cqr_call_keep took and c->blocks / c->infos.
 *
 * Ownership: the call owns what it keeps (table references, kept
 * blocks) until rpc.c releases it after encoding the reply; the request
 * it reads is borrowed for the call's duration.
 *
 * Threading: a call belongs to one thread; the context it points to is
 * shared (server.h).
 */
#ifndef CQR_CALL_H
#define CQR_CALL_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.pb-c.h"
#include "rpc/rpc.h"
#include "tables/compact.h"
#include "tables/phase.h"
#include "tables/registry.h"

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

/* Storage for a TableInfo and the messages it points to. */
typedef struct cqr_info_block {
    Cqrps__V1__TableInfo info;
    Cqrps__V1__TableConfig cfg;
    Cqrps__V1__OptimizerConfig opt;
    Cqrps__V1__ClusterSchedule sched;
    Cqrps__V1__ClusterConfig cl;
} cqr_info_block_t;

/* One table's part of a Lookup or Push as the operations see it,
 * whichever decoder read it (wire.h's from the frame, or protobuf-c's),
 * so that both share every check and message. */
typedef struct cqr_data_part {
    const char *table;        /* NUL-terminated */
    const uint64_t *ids;      /* n_ids, 8-byte aligned */
    size_t n_ids;
    const uint32_t *offsets;  /* n_offsets bag starts */
    size_t n_offsets;
    int pooling;              /* the Pooling value received */
} cqr_data_part_t;

/* A Lookup or Push: its parts (one for a single-table request, taken
 * from the request's own table fields) and its gradients. */
typedef struct cqr_data_req {
    const cqr_data_part_t *parts; /* n_parts */
    size_t n_parts;
    int multi;                /* the parts came in `parts`: the reply
                                 gives each part's dim */
    int mixed;                /* table fields beside `parts`: refused */
    int bf16;                 /* vectors / gradients as bfloat16 */
    const uint8_t *grads;     /* Push: grads_len bytes, any alignment */
    size_t grads_len;
} cqr_data_req_t;

/* Everything one request needs until its reply is encoded: the reply
 * messages live here (no allocation for the common replies), and the
 * references and buffers they point into are released after packing. */
typedef struct cqr_call {
    cqr_server_ctx_t *ctx;
    cqr_session_t *sess;
    const Request *req;       /* protobuf-c's request, or NULL when the
                                 fast decoder read it (then `fast`) */
    const cqr_data_req_t *fast; /* the fast decoder's Lookup or Push */
    uint64_t id;              /* Request.id */
    uint32_t op_case;         /* Request oneof case (field number) */
    int strings_bad;          /* a string field holds a NUL byte (or the
                                 body could not be checked): refused */
    const char *bad_field;    /* that field's name (static), or NULL */
    cqr_buf_t *out;           /* where the reply goes */
    int appended;             /* the operation appended its OK reply to
                                 out itself (Lookup, Push): nothing to
                                 pack */
    Response resp;
    char msg[512];            /* reply message; "" = cqr_strerror */
    cqr_entry_t *entry;       /* table reference, released at the end */
    cqr_entry_t **entries;    /* a multi-table request's references, one
                                 per part (NULL = not taken), nentries
                                 slots, malloc'd, released at the end */
    size_t nentries;
    cqr_entry_t **list;       /* ListTables/Stats references */
    size_t nlist;
    union {
        Cqrps__V1__HelloReply hello;
        Cqrps__V1__ClusterReply cluster;
        Cqrps__V1__ClusterStatusReply cstatus;
        Cqrps__V1__DigestReply digest;
        Cqrps__V1__CheckpointReply ckpt;
        Cqrps__V1__ExportReply exp;
        Cqrps__V1__ExportChunk chunk;
        Cqrps__V1__CompactReply compact;
    } r;
    Cqrps__V1__ListTablesReply tables;
    Cqrps__V1__StatsReply stats;
    Cqrps__V1__ListCheckpointsReply ckpts;
    cqr_info_block_t one;     /* CreateTable/DescribeTable reply */
    cqr_info_block_t *blocks; /* ListTables/Stats: nlist blocks */
    Cqrps__V1__TableInfo **infos; /* pointers into blocks */
    int deferred;             /* the reply comes later (Checkpoint) */
    void *heap[4];            /* freed after packing */
    char text[64];            /* small strings the reply points to */
} cqr_call_t;

/* Sets the reply message and returns err, for `return cqr_call_fail(...)`. */
int cqr_call_fail(cqr_call_t *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reserves the reply of a request answered later (Checkpoint, Export):
 * *d gets the slot, with op's statistics index; from here every outcome
 * must finish through d (cqr_rpc_*_done). Fails (the call's message names
 * `what`) when the slot cannot be had. */
int cqr_call_defer(cqr_call_t *c, uint32_t op, const char *what,
                   cqr_deferred_t **d);

/* Frees p after the reply is packed (at most four blocks per call). */
void cqr_call_keep(cqr_call_t *c, void *p);

/* CQR_EINVAL with the standard message unless name is a valid table name
 * (registry.h): every request that names a table checks it this way. */
int cqr_call_name(cqr_call_t *c, const char *name);

/* Looks up a table by name into c->entry, with the standard messages:
 * CQR_EINVAL for an invalid name, CQR_ENOTFOUND for a missing table. */
int cqr_call_table(cqr_call_t *c, const char *name);

/* Fills c->infos with every table (ListTables, Stats); *n gets their
 * number. */
int cqr_call_table_infos(cqr_call_t *c, size_t *n);

/* The Checkpoint reply's fields from info. */
void cqr_call_ckpt_reply(Cqrps__V1__CheckpointReply *r,
                         const cqr_ckpt_info_t *info);

/* The Export reply's fields from res (the strings point into res). */
void cqr_call_export_reply(Cqrps__V1__ExportReply *r,
                           const cqr_export_res_t *res);

/* The Compact reply's fields from res. */
void cqr_call_compact_reply(Cqrps__V1__CompactReply *r,
                            const cqr_compact_res_t *res);

/* Finishes a deferred Compact: err 0 with *res, or an error with a
 * message (NULL: cqr_strerror). Encodes the reply, then calls d->done;
 * any thread (rpc.c). */
void cqr_rpc_compact_done(cqr_deferred_t *d, int err,
                          const cqr_compact_res_t *res, const char *msg);

/* ---- operations -------------------------------------------------------
 * data.c */
int cqr_op_lookup(cqr_call_t *c, const cqr_data_req_t *m);
int cqr_op_push(cqr_call_t *c, const cqr_data_req_t *m);
/* admin.c */
int cqr_op_hello(cqr_call_t *c, const Cqrps__V1__Hello *h);
int cqr_op_create(cqr_call_t *c, const Cqrps__V1__CreateTable *m);
int cqr_op_drop(cqr_call_t *c, const Cqrps__V1__DropTable *m);
int cqr_op_list(cqr_call_t *c);
int cqr_op_describe(cqr_call_t *c, const Cqrps__V1__DescribeTable *m);
int cqr_op_cluster(cqr_call_t *c, const Cqrps__V1__Cluster *m);
int cqr_op_cluster_status(cqr_call_t *c, const Cqrps__V1__ClusterStatus *m);
int cqr_op_cancel_cluster(cqr_call_t *c, const Cqrps__V1__CancelCluster *m);
int cqr_op_digest(cqr_call_t *c, const Cqrps__V1__Digest *m);
int cqr_op_checkpoint(cqr_call_t *c);
int cqr_op_list_checkpoints(cqr_call_t *c);
int cqr_op_update_optimizer(cqr_call_t *c,
                            const Cqrps__V1__UpdateOptimizer *m);
/* export.c */
int cqr_op_export(cqr_call_t *c, const Cqrps__V1__Export *m);
int cqr_op_export_read(cqr_call_t *c, const Cqrps__V1__ExportRead *m);
/* compact.c */
int cqr_op_compact(cqr_call_t *c, const Cqrps__V1__Compact *m);
/* stats.c */
int cqr_op_stats(cqr_call_t *c);

#endif
