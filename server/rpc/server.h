/* server.h -- what every layer of the daemon shares: the server context,
 * its counters, the sessions of connections and the hooks that
 * authentication and persistence install.
 *
 * The context holds the config, the table registry, the cluster phase
 * runner, the counters, the request statistics and the hooks; main.c
 * owns it, the connection layer (net/), authentication, persistence and
 * the metrics endpoint (ops/, store/) read it, and the RPC layer (rpc.h)
 * answers requests with it. This header names the registry and the phase
 * runner without including them, so that net/ sees no table: whoever
 * calls their functions includes tables/registry.h or tables/phase.h.
 *
 * Threading: the context is set up and torn down on the main thread,
 * with no connection alive; in between, any thread may read it. Counters
 * are relaxed atomics; the readiness flags are atomics. Hooks are
 * installed before the listener opens and stay until it is closed.
 *
 * Ownership: cqr_server_ctx_init creates the registry, the phase runner
 * and the statistics, cqr_server_ctx_free destroys them; cfg is borrowed.
 *
 * Errors: 0 or a negative CQR_E* code (engine/err.h).
 */
#ifndef CQR_SERVER_H
#define CQR_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "net/frame.h"
#include "ops/config.h"
#include "ops/opstats.h"

typedef struct cqr_registry cqr_registry_t; /* tables/registry.h */
typedef struct cqr_phases cqr_phases_t;     /* tables/phase.h */
typedef struct cqr_compacts cqr_compacts_t; /* tables/compact.h */

/* Every counter of the server: X(name, help). The Stats reply lists them
 * by name in its counters map, plus one per status and per operation. */
#define CQR_COUNTER_MAP(X)                                                  \
    X(conn_accepted, "connections accepted")                                \
    X(conn_open, "connections open now")                                    \
    X(conn_rejected_limit, "connections refused over --max-connections")   \
    X(conn_closed, "connections closed, for any reason")                   \
    X(conn_closed_malformed, "closed after an undecodable request")        \
    X(conn_closed_oversize, "closed after a frame over --max-frame-bytes") \
    X(conn_closed_backpressure, "closed over the hard pending-bytes limit")\
    X(conn_closed_read_error, "closed after a socket read error")          \
    X(conn_closed_write_error, "closed after a socket write error")        \
    X(conn_closed_nomem, "closed because a buffer could not be allocated") \
    X(conn_closed_shutdown_timeout, "closed by force at shutdown")         \
    X(conn_closed_auth, "closed after a request without valid Hello")      \
    X(conn_closed_idle, "closed after --idle-timeout without traffic")     \
    X(conn_closed_frame_timeout, "closed with a frame older than "          \
      "--frame-timeout")                                                    \
    X(conn_linger_timeouts, "refused connections that did not close")      \
    X(accept_errors, "accept() failures")                                   \
    X(backpressure_pauses, "times a connection stopped being read")        \
    X(yields, "read batches cut short to serve other connections")         \
    X(requests, "requests handled")                                         \
    X(errors, "replies with a status other than OK")                       \
    X(bytes_in, "request bytes received, headers included")                \
    X(bytes_out, "reply bytes queued, headers included")                   \
    X(frames_malformed, "request bodies that did not decode")              \
    X(frames_oversize, "frames declaring more than --max-frame-bytes")     \
    X(scheduled_phase_errors, "scheduled phases that failed to start")

typedef enum cqr_counter {
#define CQR_CTR_ENUM_(name, help) CQR_CTR_##name,
    CQR_COUNTER_MAP(CQR_CTR_ENUM_)
#undef CQR_CTR_ENUM_
    CQR_CTR__COUNT
} cqr_counter_t;

/* Status codes 0..CQR_STATUS_COUNT-1 (err.h, negated). */
#define CQR_STATUS_COUNT 23
/* Request operations, by the Request oneof's field number - 10 (0..17),
 * plus one slot for "unknown". */
#define CQR_OP_COUNT 19

typedef struct cqr_counters {
    atomic_uint_fast64_t c[CQR_CTR__COUNT];         /* by cqr_counter_t */
    atomic_uint_fast64_t status[CQR_STATUS_COUNT];  /* replies by status */
    atomic_uint_fast64_t ops[CQR_OP_COUNT];         /* requests by op */
} cqr_counters_t;

typedef struct cqr_server_ctx cqr_server_ctx_t;
typedef struct cqr_deferred cqr_deferred_t; /* see Deferred replies */

/* Per-connection state the RPC layer needs; owned by the connection. */
typedef struct cqr_session {
    int authed;       /* may send requests other than Hello */
    int admin;        /* may drop tables, cluster, checkpoint */
    int hello_done;   /* a Hello succeeded */
    char client[64];  /* client_name from Hello, cleaned for logs */
    char peer[64];    /* "127.0.0.1:5555", for logs */
    uint32_t thread;  /* I/O thread index, for logs */
    /* Set by a connection layer that can answer later (net/conn.c):
     * reserves the place of d's reply in the connection's reply order and
     * sets d->done and d->ud. 0 or CQR_ENOMEM. NULL: requests that would
     * be deferred run synchronously instead. Called on the session's
     * thread. */
    int (*defer)(struct cqr_session *sess, cqr_deferred_t *d);
    void *defer_ud;   /* the connection layer's, for defer */
} cqr_session_t;

/* Authentication hook (auth.h installs it). When `hello` is NULL the
 * server requires nothing: every session starts authenticated with admin
 * rights. Otherwise sessions start unauthenticated (authenticated without
 * admin rights when `open` is set), every request but Hello gets
 * UNAUTHENTICATED until a Hello succeeds, and `hello` decides: it returns
 * 0 and sets sess->admin, or CQR_EAUTH. A session left unauthenticated
 * after any request is closed (cqr_rpc_handle returns CQR_EAUTH). Called
 * on I/O threads. */
typedef struct cqr_auth_hooks {
    int (*hello)(void *ud, cqr_session_t *sess, const uint8_t *token,
                 size_t token_len, const uint8_t *admin_token,
                 size_t admin_len);
    void *ud;
    int open;  /* no shared token: Hello only grants admin rights */
} cqr_auth_hooks_t;

/* Checkpoint hooks (ckpt.h installs them). NULL functions make
 * Checkpoint and ListCheckpoints answer UNSUPPORTED. Whoever takes a
 * checkpoint (these hooks, a timer, a phase, shutdown) records it once
 * with cqr_ckpt_stats_record(&ctx->ckpt_stats, ...) for the metrics; the
 * RPC layer does not. `checkpoint_async` is used when the session can
 * defer its reply (see "Deferred replies" below): it returns 0 and later
 * calls cqr_rpc_checkpoint_done(d, ...) exactly once from any thread, or
 * fails and never calls it. `checkpoint` (blocking) serves sessions that
 * cannot defer (in-process tests, the fuzzer). `list` must not block on
 * a running checkpoint (it runs on an I/O thread). `on_shutdown` runs
 * once after the I/O threads drained and the phases finished, before the
 * tables are destroyed (checkpoint on SIGTERM). */
typedef struct cqr_ckpt_info {
    uint64_t generation; /* increasing checkpoint number */
    uint64_t unix_time;  /* when it finished */
    uint64_t bytes;      /* size on disk */
    uint32_t tables;     /* tables it holds */
    double seconds;      /* how long it took (Checkpoint only) */
} cqr_ckpt_info_t;

typedef struct cqr_ckpt_hooks {
    int (*checkpoint)(void *ud, cqr_server_ctx_t *ctx, cqr_ckpt_info_t *out,
                      char *why, size_t whylen);
    int (*checkpoint_async)(void *ud, cqr_server_ctx_t *ctx,
                            cqr_deferred_t *d);
    /* *out is malloc'd (the caller frees it); *n may be 0. */
    int (*list)(void *ud, cqr_server_ctx_t *ctx, cqr_ckpt_info_t **out,
                size_t *n);
    void (*on_shutdown)(void *ud, cqr_server_ctx_t *ctx);
    void *ud;
} cqr_ckpt_hooks_t;

/* Export hooks (store/export.h installs them with persistence). NULL
 * functions make Export and ExportRead answer UNSUPPORTED. `build` runs
 * an export to its end on the calling thread (sessions that cannot
 * defer); `build_async` returns 0 and later calls cqr_rpc_export_done(d,
 * ...) exactly once from another thread, or fails and never calls it.
 * `read` copies up to *n bytes of an export file at `off` into buf (an
 * I/O thread calls it: a pread of at most a chunk). */
typedef struct cqr_export_req {
    char table[256];      /* table name */
    uint64_t generation;  /* 0 = the newest checkpoint */
    uint64_t since;       /* 0 = full; else a delta from this generation */
    uint32_t dtype;       /* cqr_dtype_t (engine/model.h) */
} cqr_export_req_t;

typedef struct cqr_export_res {
    char file[320];       /* the export's name in the exports folder */
    uint64_t generation, base_generation, bytes, ids, checksum;
    double seconds;
} cqr_export_res_t;

typedef struct cqr_export_hooks {
    int (*build)(void *ud, const cqr_export_req_t *req, cqr_export_res_t *res,
                 char *why, size_t whylen);
    int (*build_async)(void *ud, const cqr_export_req_t *req,
                       cqr_deferred_t *d);
    int (*read)(void *ud, const char *file, uint64_t off, uint8_t *buf,
                size_t *n, uint64_t *total, char *why, size_t whylen);
    void *ud;
} cqr_export_hooks_t;

struct cqr_server_ctx {
    const cqr_config_t *cfg;  /* borrowed; outlives the context */
    cqr_registry_t *reg;      /* tables by name */
    cqr_phases_t *phases;     /* cluster phase runner */
    cqr_compacts_t *compacts; /* compactions of cqr tables (their own
                                 threads) */
    cqr_counters_t ctr;       /* every counter */
    double start_mono;        /* CLOCK_MONOTONIC seconds at init */
    const char *blas_core;    /* OpenBLAS core name, for Stats/logs */
    cqr_auth_hooks_t auth;    /* zeroed = no authentication */
    cqr_ckpt_hooks_t ckpt;    /* zeroed = checkpoints unsupported */
    cqr_export_hooks_t exp;   /* zeroed = exports unsupported */
    cqr_opstats_t *opstats;   /* requests by op and status, latency; one
                                 block per I/O thread (opstats.h) */
    cqr_ckpt_stats_t ckpt_stats; /* figures of the checkpoints taken; the
                                    persistence module records them */
    /* Readiness (/readyz) and liveness (/healthz), see metrics.h. */
    atomic_int restore_async; /* set by persistence before the ready line
                                 when it restores in the background; it
                                 then sets `restored` itself */
    atomic_int restored;      /* 1 once the restore finished (main sets
                                 it before the ready line unless
                                 restore_async) */
    atomic_int accepting;     /* 1 while the listener accepts */
    int read_only;            /* --serve: writes answer READ_ONLY (set
                                 before the listener opens) */
    atomic_uint_fast64_t heartbeat_ms; /* main loop's last tick (monotonic
                                          ms); 0 before it runs */
};

/* Creates the registry, the phase runner, the compaction runner and the
 * request statistics (cfg->threads blocks plus one for other threads)
 * from cfg, and has a table created with `compact` compacted once a
 * phase of it commits while it is not compacted yet. cfg is borrowed
 * and must outlive the context. Hooks start zeroed. */
int cqr_server_ctx_init(cqr_server_ctx_t *ctx, const cqr_config_t *cfg);

/* Finishes phases (cqr_phases_shutdown) and compactions
 * (cqr_compacts_shutdown), then destroys the tables. Every session must
 * be gone. */
void cqr_server_ctx_free(cqr_server_ctx_t *ctx);

/* Seconds since cqr_server_ctx_init (CLOCK_MONOTONIC). */
double cqr_server_uptime(const cqr_server_ctx_t *ctx);

static inline void cqr_ctr_add(cqr_server_ctx_t *ctx, cqr_counter_t c,
                               uint64_t n)
{
    atomic_fetch_add_explicit(&ctx->ctr.c[c], n, memory_order_relaxed);
}

static inline void cqr_ctr_sub(cqr_server_ctx_t *ctx, cqr_counter_t c,
                               uint64_t n)
{
    atomic_fetch_sub_explicit(&ctx->ctr.c[c], n, memory_order_relaxed);
}

static inline uint64_t cqr_ctr_get(cqr_server_ctx_t *ctx, cqr_counter_t c)
{
    return atomic_load_explicit(&ctx->ctr.c[c], memory_order_relaxed);
}

const char *cqr_counter_name(cqr_counter_t c);

/* Lower-case name of request operation op (0..CQR_OP_COUNT-1): "lookup",
 * ..., "unknown" (the last slot: undecodable or unknown requests). */
const char *cqr_op_name(uint32_t op);

/* Sets up a session for a new connection. */
void cqr_session_init(cqr_server_ctx_t *ctx, cqr_session_t *sess,
                      const char *peer, uint32_t thread);

/* ---- Deferred replies ----------------------------------------------
 * A request whose work must not run on an I/O thread (Checkpoint) is
 * answered later. When the session has `defer`, cqr_rpc_handle reserves
 * the reply's place through it, hands the work off, appends nothing and
 * returns CQR_RPC_DEFERRED (rpc.h). The worker finishes with
 * cqr_rpc_checkpoint_done (any thread), which encodes the framed reply
 * into d->reply and calls d->done(d) exactly once; the connection layer
 * then sends d->reply in its place and calls cqr_rpc_deferred_release on
 * the session's thread (which records the request's latency). */
struct cqr_deferred {
    cqr_server_ctx_t *ctx;  /* the server */
    uint64_t id;            /* request id the reply echoes */
    uint32_t op;            /* operation slot, for the statistics */
    uint64_t t0_ns;         /* when the request was decoded */
    int status;             /* status sent (set before done) */
    cqr_buf_t reply;        /* the framed reply (header + body), set
                               before done; empty if even an error reply
                               could not be built (close the connection) */
    void (*done)(cqr_deferred_t *d); /* set by the session's defer */
    void *ud;               /* the connection layer's */
};

/* Finishes a deferred Checkpoint: err 0 with *info, or an error with a
 * message (NULL: cqr_strerror). Encodes the reply, then calls d->done. */
void cqr_rpc_checkpoint_done(cqr_deferred_t *d, int err,
                             const cqr_ckpt_info_t *info, const char *msg);

/* Finishes a deferred Export: err 0 with *res, or an error with a
 * message (NULL: cqr_strerror). Encodes the reply, then calls d->done. */
void cqr_rpc_export_done(cqr_deferred_t *d, int err,
                         const cqr_export_res_t *res, const char *msg);

/* Records d's latency in the statistics block `thread` and frees d. */
void cqr_rpc_deferred_release(cqr_deferred_t *d, uint32_t thread);

#endif
