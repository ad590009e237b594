/* cqrps.h -- the client library of cqrps, an embedding parameter server.
 *
 * This is the one installed header of libcqrps. It includes nothing of the
 * server; the wire schema (proto/cqrps.proto) is the contract between the
 * two.
 *
 * Conventions
 *   - Every function that can fail returns 0 on success or a negative
 *     CQRPS_E* code. The codes mirror the server's wire statuses one to one
 *     (wire status N == code -N), so a server error keeps its meaning here.
 *     cqrps_strerror() and cqrps_errname() describe a code.
 *   - cqrps_last_error(c) is the message of the last failed call on c: the
 *     server's own message for a server error, or a description naming the
 *     address for a client-side failure (connect, timeout, lost
 *     connection). A successful call leaves it unchanged, as errno does.
 *   - Ownership: string and array arguments are read during the call only
 *     (the asynchronous *_start calls state their own rule); the client
 *     copies what it keeps. Results go into caller buffers or into structs
 *     the caller passes; arrays the library allocates are freed with the
 *     matching *_free function, and nothing else needs freeing.
 *   - Vectors are row-major float32, n x dim, dim being the table's
 *     dimension (cqrps_table_dim()). The library moves them as raw
 *     little-endian bytes, so it builds only on little-endian hosts.
 *
 * Threads
 *   A cqrps_client_t is used by one thread at a time: open one client per
 *   thread (connections are cheap). Different clients share nothing and
 *   may be used from different threads at once. cqrps_strerror,
 *   cqrps_errname, the *_init, *_name and *_parse helpers and
 *   cqrps_shard_of are thread-safe.
 *
 * Addresses and sharding
 *   An address is "host:port" (IPv4, "[v6]:port" or a host name). A
 *   comma-separated list ("h1:p1,h2:p2") means a sharded deployment: the
 *   client keeps one connection per address, sends each ID to shard
 *   cqrps_shard_of(id, nshards) (jump consistent hash), splits every batch
 *   per shard, sends the parts in parallel and merges the answers in the
 *   caller's order. Create, drop, cluster and checkpoint go to every shard;
 *   a table's rows are split over the shards so that the total budget is
 *   what the config asks for; stats and table figures are summed. The
 *   order of the list matters and must be the same for every client.
 *
 * Connections and failures
 *   A request on a connection the server has dropped reconnects once,
 *   transparently, and sends Hello again (unless reconnect is off). A
 *   connection that fails while requests are in flight fails those
 *   requests with CQRPS_ECONN: a lookup is retried once, a push is not (it
 *   may or may not have been applied; the caller decides). The next call
 *   reconnects, so a restarted server is picked up without restarting the
 *   caller. A server that sends nothing for request_timeout_ms while a call
 *   waits for it fails the call with CQRPS_ETIMEDOUT and the connection is
 *   closed (the next call reconnects).
 *
 * Pipelining
 *   Lookups and pushes larger than max_batch IDs (or than the server's
 *   frame limit) are split into sub-batches that are all written before the
 *   replies are read; the *_start / cqrps_wait pair lets a caller overlap
 *   its own work with a request in flight.
 */
#ifndef CQRPS_H
#define CQRPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CQRPS_API __attribute__((visibility("default")))
#else
#define CQRPS_API
#endif

#define CQRPS_VERSION_MAJOR 0
#define CQRPS_VERSION_MINOR 1
#define CQRPS_VERSION_PATCH 0
#define CQRPS_PROTOCOL_VERSION 1

/* Longest table name the client accepts, in bytes. */
#define CQRPS_NAME_MAX 255

/* ---- Errors ------------------------------------------------------------
 * X(NAME, number, wire status name, message). The numbers are on the wire
 * (proto Status) and never change; new codes are added at the end. */
#define CQRPS_ERRNO_MAP(X)                                                   \
    X(INVAL, 1, "INVALID_ARGUMENT", "invalid argument")                      \
    X(NOMEM, 2, "NO_MEMORY", "out of memory")                                \
    X(NOTFOUND, 3, "NOT_FOUND", "no such table")                             \
    X(EXIST, 4, "ALREADY_EXISTS", "table already exists")                    \
    X(DIM, 5, "WRONG_DIM", "vector length does not match the table")         \
    X(NONFINITE, 6, "NON_FINITE", "gradient contains NaN or Inf")            \
    X(LIMIT, 7, "LIMIT_EXCEEDED", "limit exceeded")                          \
    X(BUSY, 8, "BUSY", "busy, retry later")                                  \
    X(PROTO, 9, "MALFORMED", "malformed request")                            \
    X(AUTH, 10, "UNAUTHENTICATED", "authentication required or failed")      \
    X(PERM, 11, "PERMISSION_DENIED", "admin token required")                 \
    X(IO, 12, "IO_ERROR", "storage I/O error")                               \
    X(CORRUPT, 13, "CORRUPT", "data corrupt")                                \
    X(VERSION, 14, "BAD_VERSION", "unsupported protocol version")            \
    X(UNSUPPORTED, 15, "UNSUPPORTED",                                        \
      "operation not supported by this table kind")                          \
    X(TIMEDOUT, 16, "TIMED_OUT", "timed out")                                \
    X(CONN, 17, "CONNECTION", "connection failed or lost")                   \
    X(SHUTDOWN, 18, "SHUTTING_DOWN", "server is shutting down")              \
    X(INTERNAL, 19, "INTERNAL", "internal error")                            \
    X(NOPHASE, 20, "NO_SUCH_PHASE", "no such cluster phase")               \
    X(CANCELED, 21, "CANCELLED", "cancelled")                                \
    X(READONLY, 22, "READ_ONLY", "server is read-only (serving exports)")

typedef enum cqrps_err {
    CQRPS_OK = 0,
#define CQRPS_ERR_ENUM_(name, num, wire, msg) CQRPS_E##name = -(num),
    CQRPS_ERRNO_MAP(CQRPS_ERR_ENUM_)
#undef CQRPS_ERR_ENUM_
} cqrps_err_t;

/* Message for a code (0 or negative); "unknown error" for others. Never
 * NULL; the string is static. */
CQRPS_API const char *cqrps_strerror(int err);

/* Wire status name of a code ("NOT_FOUND", "OK"); "UNKNOWN" for others. */
CQRPS_API const char *cqrps_errname(int err);

/* ---- Enums and their names --------------------------------------------- */

typedef enum cqrps_kind {
    CQRPS_KIND_FULL = 0, /* one row per ID: a plain parameter server */
    CQRPS_KIND_HASH = 1, /* hashing trick: one codebook of `rows` rows */
    CQRPS_KIND_CE = 2,   /* compositional: two hashed codebooks, chunked */
    CQRPS_KIND_CQR = 3   /* clustered quotient-remainder (learned pointers) */
} cqrps_kind_t;

typedef enum cqrps_optimizer {
    CQRPS_OPT_SGD = 0,
    CQRPS_OPT_ADAGRAD = 1, /* row-wise Adagrad */
    CQRPS_OPT_ADAM = 2     /* lazy Adam, decoupled weight decay (AdamW) */
} cqrps_optimizer_t;

typedef enum cqrps_pooling {
    CQRPS_POOL_SUM = 0,
    CQRPS_POOL_MEAN = 1
} cqrps_pooling_t;

typedef enum cqrps_phase_state {
    CQRPS_PHASE_QUEUED = 0,
    CQRPS_PHASE_RUNNING = 1,
    CQRPS_PHASE_DONE = 2,
    CQRPS_PHASE_FAILED = 3
} cqrps_phase_state_t;

/* Lower-case names ("cqr", "adam", "mean", "running"); "?" when out of
 * range. The parse functions accept the same names (case-insensitive) and
 * return CQRPS_EINVAL for anything else, leaving *out untouched. */
CQRPS_API const char *cqrps_kind_name(cqrps_kind_t kind);
CQRPS_API int cqrps_kind_parse(const char *name, cqrps_kind_t *out);
CQRPS_API const char *cqrps_optimizer_name(cqrps_optimizer_t opt);
CQRPS_API int cqrps_optimizer_parse(const char *name, cqrps_optimizer_t *out);
CQRPS_API const char *cqrps_pooling_name(cqrps_pooling_t pool);
CQRPS_API int cqrps_pooling_parse(const char *name, cqrps_pooling_t *out);
CQRPS_API const char *cqrps_phase_state_name(cqrps_phase_state_t st);

/* ---- Connecting ---------------------------------------------------------- */

typedef struct cqrps_client cqrps_client_t;

typedef struct cqrps_options {
    uint32_t connect_timeout_ms; /* per address; default 5000 */
    uint32_t request_timeout_ms; /* longest silence of a server while a
                                    call waits for it; 0 = wait forever;
                                    default 30000 */
    const void *token;           /* shared secret sent in Hello, or NULL */
    size_t token_len;            /* bytes of token */
    const void *admin_token;     /* admin secret (drop, cluster,
                                    checkpoint), or NULL */
    size_t admin_token_len;      /* bytes of admin_token */
    const char *client_name;     /* shown in the server's logs, or NULL */
    int reconnect;               /* 1 (default): reconnect once per call
                                    to a server that dropped the
                                    connection; 0: fail with CQRPS_ECONN */
    uint32_t max_batch;          /* IDs per sub-batch of a lookup or push;
                                    default 65536; the server's own limit
                                    (from Hello) wins when smaller */
} cqrps_options_t;

/* Fills *opt with the defaults above. */
CQRPS_API void cqrps_options_init(cqrps_options_t *opt);

/* Connects to every address of `addrs` (see "Addresses and sharding") and
 * says Hello on each. `opt` may be NULL for the defaults; its strings and
 * tokens are copied. On success *out owns a client until cqrps_close. On
 * failure *out is NULL and cqrps_last_error(NULL) gives the reason on the
 * calling thread (CQRPS_EINVAL for a bad address list, CQRPS_ECONN for an
 * unreachable server, CQRPS_EAUTH for a rejected token, ...). */
CQRPS_API int cqrps_connect(const char *addrs, const cqrps_options_t *opt,
                            cqrps_client_t **out);

/* Closes every connection and frees the client, including any ticket not
 * waited for (its output buffer may be partly written). NULL is a no-op. */
CQRPS_API void cqrps_close(cqrps_client_t *c);

/* Message of the last failed call on c (see Conventions); "" if none. With
 * c == NULL: the last failed cqrps_connect of the calling thread. Valid
 * until the next call on c (or the next cqrps_connect of the thread). */
CQRPS_API const char *cqrps_last_error(cqrps_client_t *c);

/* Number of shards (addresses) of the client, and the shard an ID lives
 * on: jump consistent hash of a 64-bit mix of the ID. */
CQRPS_API uint32_t cqrps_shard_count(const cqrps_client_t *c);
CQRPS_API uint32_t cqrps_shard_of(uint64_t id, uint32_t nshards);

/* What the server said in Hello (the first shard's; the limits are the
 * smallest over the shards). */
typedef struct cqrps_server_info {
    char server_version[64];  /* e.g. "0.1.0" */
    uint32_t protocol_version; /* 1 */
    int admin;                 /* 1 if the admin token was accepted */
    uint32_t max_frame_bytes;  /* the server's frame limit */
    uint32_t max_batch;        /* the server's IDs-per-request limit */
    uint32_t max_parts;        /* table parts per request (multi-table
                                  calls); 0: a server without them, to
                                  which those calls send a request per
                                  part */
} cqrps_server_info_t;

CQRPS_API int cqrps_server_info(cqrps_client_t *c, cqrps_server_info_t *info);

/* ---- Tables ------------------------------------------------------------ */

/* Mirrors proto TableConfig. A zero field means "the server's default"
 * (see proto/cqrps.proto); the effective values come back in
 * cqrps_table_info_t.config. */
typedef struct cqrps_table_config {
    cqrps_kind_t kind;           /* table kind */
    uint32_t dim;                /* floats per embedding (required) */
    uint32_t chunks;             /* ce/cqr: chunks, divides dim; 0 = 4 */
    uint32_t rows;               /* rows per codebook (hash: its one
                                    codebook); 0 = default 1024; ignored
                                    by full */
    uint64_t seed;               /* seeds hashing, init, cluster phases */
    cqrps_optimizer_t optimizer; /* optimizer kind (always sent) */
    float lr;                    /* 0 = 0.01 SGD, 0.1 Adagrad, 0.001 Adam */
    float beta1;                 /* Adam; 0 = 0.9 */
    float beta2;                 /* Adam; 0 = 0.999 */
    float eps;                   /* Adam/Adagrad; 0 = 1e-8 */
    float weight_decay;          /* decoupled, applied to touched rows */
    uint64_t schedule_every;     /* cqr: a phase every N pushed examples;
                                    0 = no schedule */
    uint32_t schedule_max_phases; /* stop scheduling after this many; 0 = no
                                     limit */
    uint32_t cluster_iters;      /* k-means iterations at most; 0 = 25 */
    uint32_t cluster_sample;     /* sample points per centroid; 0 = 200 */
    int reset_optimizer;         /* zero the codebooks' optimizer state at
                                    each phase: CQRPS_DEFAULT (0, the
                                    server's), CQRPS_ON (1) or CQRPS_OFF
                                    (2); info gives ON or OFF */
    float init_scale;            /* uniform(-s, s) init; 0 = the server's
                                    default */
    float cluster_tol;           /* k-means stops once an iteration lowers
                                    the inertia by less than this fraction;
                                    0 = the server's default (1e-3), < 0 =
                                    every iteration; info gives -1 for
                                    none */
    /* Memory per ID (issue 19); 0 = off. Sharded: per shard. */
    uint32_t admit_after;        /* full/cqr: an ID gets state of its own
                                    (a row, learned pointers) at its N-th
                                    push (0, 1: the first), 1..255 */
    uint32_t evict_after_phases; /* cqr: IDs not pushed during the last K
                                    phases lose their learned pointers */
    uint64_t max_ids;            /* full: at most N rows; a new one frees
                                    the least recently pushed of a sample */
    uint32_t ttl_seconds;        /* full: rows not pushed for T seconds
                                    are freed */
    int compact;                 /* cqr without evict_after_phases: 1 =
                                    compact the table (cqrps_compact)
                                    once its first phase commits */
} cqrps_table_config_t;

/* Values of a setting whose zero means "the server's default"
 * (cqrps_table_config_t.reset_optimizer). */
#define CQRPS_DEFAULT 0
#define CQRPS_ON 1
#define CQRPS_OFF 2

/* Zeroes *cfg and sets kind and dim: every other field asks for the
 * server's default. The optimizer is always sent, so it is set here to
 * the server's default, Adam. */
CQRPS_API void cqrps_table_config_init(cqrps_table_config_t *cfg,
                                       cqrps_kind_t kind, uint32_t dim);

/* Mirrors proto TableInfo. Sharded: summed over the shards (rows too);
 * phases_done is the smallest, phase_running is set if any shard runs a
 * phase, last_inertia is the mean, last_phase_seconds the largest. */
typedef struct cqrps_table_info {
    char name[CQRPS_NAME_MAX + 1]; /* table name */
    cqrps_table_config_t config;   /* effective config, defaults filled */
    uint64_t known_ids;            /* IDs that received a gradient */
    uint64_t param_bytes;          /* codebooks / rows */
    uint64_t optimizer_bytes;      /* optimizer state */
    uint64_t index_bytes;          /* known-ID map (pointers) */
    double bytes_per_known_id;     /* index_bytes / known_ids */
    uint32_t phases_done;          /* committed cluster phases */
    int phase_running;             /* 1 while a phase runs */
    uint64_t lookups;              /* IDs looked up */
    uint64_t pushes;               /* IDs pushed */
    uint64_t examples_pushed;      /* rows of plain pushes + bags */
    double last_inertia;           /* k-means inertia of the last phase */
    double last_phase_seconds;     /* wall time of the last phase */
    uint64_t ids_admitted;         /* IDs given state of their own */
    uint64_t ids_evicted;          /* IDs whose state was freed */
    uint64_t sketch_bytes;         /* the admission sketch */
    uint64_t serving_generation;   /* --serve: the export generation the
                                      table serves (0: a training table);
                                      sharded: the smallest */
    int compacted;                 /* cqr: compacted at least once
                                      (sharded: every shard) */
    uint64_t static_ids;           /* known IDs in the static set; the
                                      rest are in the map */
    int compacting;                /* a compaction runs (any shard) */
} cqrps_table_info_t;

/* Creates a table on every shard; fills *info (if non-NULL) with the
 * effective config. CQRPS_EEXIST if it exists. Sharded: a failure on one
 * shard may leave the table on others (drop it to clean up). */
CQRPS_API int cqrps_create_table(cqrps_client_t *c, const char *name,
                                 const cqrps_table_config_t *cfg,
                                 cqrps_table_info_t *info);

/* Drops a table on every shard. CQRPS_ENOTFOUND if it does not exist. */
CQRPS_API int cqrps_drop_table(cqrps_client_t *c, const char *name);

/* Lists the tables: *out is an array of *n entries (sorted by name) to be
 * freed with cqrps_table_list_free; with no tables *out is NULL, *n 0. */
CQRPS_API int cqrps_list_tables(cqrps_client_t *c, cqrps_table_info_t **out,
                                size_t *n);
CQRPS_API void cqrps_table_list_free(cqrps_table_info_t *list);

CQRPS_API int cqrps_describe_table(cqrps_client_t *c, const char *name,
                                   cqrps_table_info_t *info);

/* The table's dim. Cached per client after the first call (create and
 * describe fill the cache too); a reply showing another dim (the table
 * was dropped and created again) drops the cache entry and fails that
 * call with CQRPS_EDIM. */
CQRPS_API int cqrps_table_dim(cqrps_client_t *c, const char *name,
                              uint32_t *dim);

/* Which hyperparameters a cqrps_optimizer_update_t changes. */
#define CQRPS_OPT_LR 1u
#define CQRPS_OPT_BETA1 2u
#define CQRPS_OPT_BETA2 4u
#define CQRPS_OPT_EPS 8u
#define CQRPS_OPT_WEIGHT_DECAY 16u

/* New values for some of a table's optimizer hyperparameters; the
 * optimizer's kind and its state (moments, step counts) stay. */
typedef struct cqrps_optimizer_update {
    unsigned set;        /* CQRPS_OPT_* bits of the fields to change */
    float lr;            /* > 0 */
    float beta1;         /* [0, 1) */
    float beta2;         /* [0, 1) */
    float eps;           /* > 0 */
    float weight_decay;  /* >= 0 */
} cqrps_optimizer_update_t;

/* Changes the hyperparameters of a table's optimizer while it trains
 * (an LR schedule): pushes applied after the reply use them. Any client
 * may call it (it is a trainer's operation, not an admin one). The new
 * values are part of the table's config: describe shows them and
 * checkpoints keep them. *info (if non-NULL) receives the table as
 * described afterwards. CQRPS_EINVAL for a value out of range (nothing
 * changes), CQRPS_ENOTFOUND. Sharded: every shard (a failure on one
 * may leave others changed; the call can simply be repeated). */
CQRPS_API int cqrps_update_optimizer(cqrps_client_t *c, const char *table,
                                     const cqrps_optimizer_update_t *u,
                                     cqrps_table_info_t *info);

/* ---- Lookups and pushes ------------------------------------------------ */

/* Writes n x dim floats to out: the embeddings of ids[0..n). n == 0 is a
 * no-op. */
CQRPS_API int cqrps_lookup(cqrps_client_t *c, const char *table,
                           const uint64_t *ids, size_t n, float *out);

/* Pushes n x dim gradients (row j for ids[j]). CQRPS_ENONFINITE if a
 * gradient is NaN or Inf. A push split into sub-batches is applied per
 * sub-batch: on error some sub-batches may have been applied; on
 * CQRPS_ECONN, unknown ones. */
CQRPS_API int cqrps_push(cqrps_client_t *c, const char *table,
                         const uint64_t *ids, const float *grads, size_t n);

/* Pooled (embedding-bag) variants. Bag b is ids[offsets[b] ..
 * offsets[b+1]) and the last bag runs to n; offsets[0] == 0 and offsets
 * must not decrease. The lookup writes nbags x dim pooled vectors (an
 * empty bag gives zeros). The push takes nbags x dim gradients of the
 * pooled outputs: every ID of bag b receives g_b (sum) or g_b / |bag|
 * (mean). A bag is never split between sub-batches. Sharded, a bag's IDs
 * are pooled per shard and summed by the client (mean divides there). */
CQRPS_API int cqrps_lookup_pooled(cqrps_client_t *c, const char *table,
                                  const uint64_t *ids, size_t n,
                                  const uint32_t *offsets, size_t nbags,
                                  cqrps_pooling_t pooling, float *out);
CQRPS_API int cqrps_push_pooled(cqrps_client_t *c, const char *table,
                                const uint64_t *ids, size_t n,
                                const uint32_t *offsets, size_t nbags,
                                cqrps_pooling_t pooling,
                                const float *bag_grads);

/* Asynchronous variants, for a trainer that overlaps its own work with a
 * request in flight. A *_start call writes every request to the sockets
 * and returns a ticket; ids, grads and offsets may be reused as soon as
 * it returns. `out` must stay valid until cqrps_wait(ticket) returns: any
 * later call on the client may read replies into it, and it is complete
 * when cqrps_wait returns 0. Every ticket is waited for exactly once (or
 * freed by cqrps_close). On a start error no ticket is created. */
typedef uint64_t cqrps_ticket_t;

CQRPS_API int cqrps_lookup_start(cqrps_client_t *c, const char *table,
                                 const uint64_t *ids, size_t n, float *out,
                                 cqrps_ticket_t *ticket);
CQRPS_API int cqrps_push_start(cqrps_client_t *c, const char *table,
                               const uint64_t *ids, const float *grads,
                               size_t n, cqrps_ticket_t *ticket);
CQRPS_API int cqrps_lookup_pooled_start(cqrps_client_t *c, const char *table,
                                        const uint64_t *ids, size_t n,
                                        const uint32_t *offsets, size_t nbags,
                                        cqrps_pooling_t pooling, float *out,
                                        cqrps_ticket_t *ticket);
CQRPS_API int cqrps_push_pooled_start(cqrps_client_t *c, const char *table,
                                      const uint64_t *ids, size_t n,
                                      const uint32_t *offsets, size_t nbags,
                                      cqrps_pooling_t pooling,
                                      const float *bag_grads,
                                      cqrps_ticket_t *ticket);

/* Waits for every reply of the ticket and returns its result (the first
 * error of its sub-batches). CQRPS_EINVAL for an unknown ticket. */
CQRPS_API int cqrps_wait(cqrps_client_t *c, cqrps_ticket_t ticket);

/* ---- Several tables in one request -------------------------------------
 * A trainer with many sparse features looks up (and pushes) every table
 * of a step at once: one Lookup and one Push request per shard carry a
 * part per table, answered in one reply in part order. Each part is plain
 * (one row per ID) or pooled (bags, as cqrps_lookup_pooled), with its own
 * table and dim. The results equal those of one single-table call per
 * part, in part order, bit for bit (also when a table appears in several
 * parts: its parts are applied one after the other).
 *
 * A request the server refuses is refused whole: the message names the
 * part ("part 2: no such table 'x'") and a refused push applies nothing
 * of any part. What is not atomic: a call larger than one request
 * (max_batch IDs per part, the server's part and frame limits) is sent
 * as several requests, and a sharded call sends one request per shard;
 * each request is applied or refused on its own (as for cqrps_push). */

/* One table's share of a multi-table call. */
typedef struct cqrps_part {
    const char *table;        /* table name */
    const uint64_t *ids;      /* n IDs */
    size_t n;
    const uint32_t *offsets;  /* NULL: a plain part (n rows); else a
                                 pooled part: nbags bag starts, with the
                                 rules of cqrps_lookup_pooled */
    size_t nbags;             /* pooled: bags */
    cqrps_pooling_t pooling;  /* pooled: how a bag pools */
    float *out;               /* lookup: n (plain) or nbags (pooled) x dim
                                 floats, dim being the part's table's */
    const float *grads;       /* push: n or nbags x dim floats */
} cqrps_part_t;

/* Flags of the multi-table calls. */
#define CQRPS_BF16 1u /* vectors (lookup) or gradients (push) travel as
                         bfloat16: half the bytes; the server rounds its
                         vectors to nearest-even, the client its
                         gradients; the caller's arrays stay float32 */

/* Looks up every part (`out` of each) / pushes every part (`grads`).
 * nparts == 0 is a no-op. Unknown flags: CQRPS_EINVAL. */
CQRPS_API int cqrps_lookup_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                                 size_t nparts, unsigned flags);
CQRPS_API int cqrps_push_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                               size_t nparts, unsigned flags);

/* Asynchronous variants (the *_start rules above: the parts array, IDs,
 * offsets and gradients may be reused when the call returns; every part's
 * `out` must stay valid until cqrps_wait returns). */
CQRPS_API int cqrps_lookup_multi_start(cqrps_client_t *c,
                                       const cqrps_part_t *parts,
                                       size_t nparts, unsigned flags,
                                       cqrps_ticket_t *ticket);
CQRPS_API int cqrps_push_multi_start(cqrps_client_t *c,
                                     const cqrps_part_t *parts,
                                     size_t nparts, unsigned flags,
                                     cqrps_ticket_t *ticket);

/* ---- De-duplicating a batch (no client, thread-safe) -------------------
 * A trainer looks each distinct ID of a batch up once, hands every
 * occurrence its row, and pushes each distinct ID once with the sum of its
 * occurrences' gradients (what nn.Embedding with a sparse optimizer does).
 * These three calls do that on the caller's buffers, with no sort. */

/* Writes the distinct IDs of ids[0..n) to uniq[0..*nuniq) in order of
 * first occurrence, and for every j the index inverse[j] of ids[j] in
 * uniq (so uniq[inverse[j]] == ids[j]). uniq and inverse hold n entries
 * each. A batch without repeats comes out unchanged: *nuniq == n, uniq ==
 * ids and inverse[j] == j. `work` (may be NULL) is a buffer of at least
 * cqrps_dedup_work_bytes(n) bytes for the probe table, which the call
 * overwrites; with NULL the call allocates it. CQRPS_EINVAL for NULL
 * buffers, a work buffer too small or n >= 2^32 - 1; CQRPS_ENOMEM if the
 * table (8 to 16 bytes per ID) cannot be allocated. */
CQRPS_API int cqrps_dedup(const uint64_t *ids, size_t n, uint64_t *uniq,
                          uint32_t *inverse, size_t *nuniq, void *work,
                          size_t work_bytes);

/* Bytes of the work buffer cqrps_dedup needs for n IDs (0 when n is too
 * large). */
CQRPS_API size_t cqrps_dedup_work_bytes(size_t n);

/* Row j of out (n x dim floats) = row inverse[j] of rows (nuniq x dim):
 * the lookup of the distinct IDs given back to every occurrence. rows may
 * be out itself (the distinct rows looked up into the first nuniq rows of
 * the output): then inverse must be in first-occurrence order, as
 * cqrps_dedup makes it, and the rows spread in place with no second
 * buffer. CQRPS_EINVAL if an index is >= nuniq, or, in place, not in
 * first-occurrence order (out is then partly written). */
CQRPS_API int cqrps_dedup_expand(const float *rows, size_t nuniq, size_t dim,
                                 const uint32_t *inverse, size_t n,
                                 float *out);

/* Row r of out (nuniq x dim floats) = the sum of the rows j of grads
 * (n x dim) with inverse[j] == r, added in order of j: the gradient to
 * push for uniq[r]. inverse must be in first-occurrence order, as
 * cqrps_dedup makes it (the first time index r appears, every index below
 * r has appeared); anything else, or an index >= nuniq, or an index in
 * [0, nuniq) that never appears, is CQRPS_EINVAL (out partly written). */
CQRPS_API int cqrps_dedup_sum(const float *grads, size_t n, size_t dim,
                              const uint32_t *inverse, size_t nuniq,
                              float *out);

/* ---- Cluster phases (cqr tables) --------------------------------------- */

typedef struct cqrps_phase_status {
    uint64_t phase_id;          /* the phase reported on */
    cqrps_phase_state_t state;  /* queued, running, done, failed */
    char stage[32];             /* "kmeans", "assign", ... */
    double fraction;            /* 0..1 progress */
    double inertia;             /* mean k-means inertia */
    double seconds;             /* wall time so far or in total */
    uint64_t ids_assigned;      /* known IDs given learned pointers */
    uint64_t replayed_pushes;   /* pushes logged during the phase */
    char error[256];            /* why a failed phase failed */
    uint32_t chunk;             /* chunk in progress, 1-based (0: none) */
    uint32_t chunks;            /* chunks of the table */
    uint32_t iter;              /* k-means iterations done in the chunk */
    uint32_t iters;             /* k-means iterations at most */
    double eta_seconds;         /* estimated time left, -1 if unknown */
    uint32_t kmeans_iters;      /* when done: most iterations of a chunk */
    int cancelled;              /* failed because it was cancelled */
} cqrps_phase_status_t;

/* Starts a phase and returns at once with its id. CQRPS_EUNSUPPORTED for
 * kinds other than cqr, CQRPS_EBUSY if one is running. Sharded: a phase
 * starts on every shard; the id names the set for this client. */
CQRPS_API int cqrps_cluster(cqrps_client_t *c, const char *table,
                            uint64_t *phase_id);

/* Status of a phase (phase_id 0 = the latest). Sharded: done when every
 * shard is done, failed if any failed; progress is the mean. */
CQRPS_API int cqrps_cluster_status(cqrps_client_t *c, const char *table,
                                   uint64_t phase_id,
                                   cqrps_phase_status_t *st);

/* Polls cqrps_cluster_status with a growing interval (10 ms to 500 ms)
 * until the phase is done (0), failed (CQRPS_EINTERNAL, or CQRPS_ECANCELED
 * when it was cancelled; the phase's error in cqrps_last_error) or
 * timeout_ms passed (CQRPS_ETIMEDOUT; timeout_ms 0 = no limit). *st (if
 * non-NULL) holds the last status. */
CQRPS_API int cqrps_cluster_wait(cqrps_client_t *c, const char *table,
                                 uint64_t phase_id, uint32_t timeout_ms,
                                 cqrps_phase_status_t *st);

/* The same, calling progress(ud, st) after every poll (from this thread;
 * progress may be NULL). */
typedef void (*cqrps_phase_progress_cb)(void *ud,
                                        const cqrps_phase_status_t *st);
CQRPS_API int cqrps_cluster_wait_progress(cqrps_client_t *c,
                                          const char *table,
                                          uint64_t phase_id,
                                          uint32_t timeout_ms,
                                          cqrps_phase_status_t *st,
                                          cqrps_phase_progress_cb progress,
                                          void *ud);

/* Cancels the table's queued or running phase (phase_id 0: whichever it
 * is). The table keeps its state as if the phase never ran; pushes made
 * during it stay applied. Returns once the server took the request, with
 * the phase's status then in *st (if non-NULL); a running phase ends
 * within about a second (cqrps_cluster_wait returns CQRPS_ECANCELED).
 * CQRPS_ENOPHASE if nothing is queued or running. Needs admin rights.
 * Sharded: sent to every shard, and every shard that has such a phase
 * cancels it; the first shard's error (e.g. CQRPS_ENOPHASE where its part
 * had already ended) is returned. */
CQRPS_API int cqrps_cluster_cancel(cqrps_client_t *c, const char *table,
                                   uint64_t phase_id,
                                   cqrps_phase_status_t *st);

/* ---- Server state ------------------------------------------------------ */

typedef struct cqrps_counter {
    char *name;     /* counter name */
    double value;   /* its value (for a count: count, rounded beyond 2^53) */
    uint64_t count; /* a count's exact value (requests, bytes, ...) */
    int is_count;   /* 1 if this counter is a whole-number count */
} cqrps_counter_t;

/* Mirrors proto StatsReply; sharded: summed (uptime is the smallest,
 * tables and counters are merged by name). */
typedef struct cqrps_stats {
    char server_version[64];    /* the first shard's version */
    double uptime_seconds;      /* since the server started */
    uint64_t connections;       /* open connections */
    uint64_t requests;          /* requests served */
    uint64_t errors;            /* error replies sent */
    uint64_t bytes_in;          /* bytes received */
    uint64_t bytes_out;         /* bytes sent */
    cqrps_table_info_t *tables; /* ntables entries, by name */
    size_t ntables;
    cqrps_counter_t *counters;  /* ncounters entries, by name */
    size_t ncounters;
} cqrps_stats_t;

/* Fills *st; release it with cqrps_stats_free (also after an error, on a
 * zeroed struct, it is safe). */
CQRPS_API int cqrps_stats(cqrps_client_t *c, cqrps_stats_t *st);
CQRPS_API void cqrps_stats_free(cqrps_stats_t *st);

/* The table's state digest as 16 hex digits and a NUL. Equal digests mean
 * equal tables. Sharded: a digest of the shards' digests, in shard
 * order. */
CQRPS_API int cqrps_digest(cqrps_client_t *c, const char *table,
                           char hex[17]);

/* ---- Checkpoints ------------------------------------------------------- */

typedef struct cqrps_checkpoint_info {
    uint64_t generation; /* increasing per server */
    uint64_t unix_time;  /* when it was taken */
    uint64_t bytes;      /* size on disk */
    uint32_t tables;     /* tables it holds */
    uint32_t shard;      /* index of the address it lives on */
} cqrps_checkpoint_info_t;

/* Takes a checkpoint on every shard; *generation (if non-NULL) is the
 * first shard's. Servers without persistence answer CQRPS_EUNSUPPORTED.
 * Waits for the reply without request_timeout_ms: a first checkpoint of a
 * large table takes minutes; a lost connection still ends the wait. */
CQRPS_API int cqrps_checkpoint(cqrps_client_t *c, uint64_t *generation);

/* The checkpoints of every shard, in shard order; free with
 * cqrps_checkpoint_list_free. */
CQRPS_API int cqrps_list_checkpoints(cqrps_client_t *c,
                                     cqrps_checkpoint_info_t **out,
                                     size_t *n);
CQRPS_API void cqrps_checkpoint_list_free(cqrps_checkpoint_info_t *list);

/* ---- Compaction ---------------------------------------------------------
 * Moves a cqr table's known IDs from its map (about 20 bytes an ID) into
 * a static set (about 9 bytes an ID) on the server; lookups of known IDs
 * and the digest stay as they were. The server runs it on a thread of
 * its own and keeps serving lookups and pushes; the call returns when it
 * is done (tens of seconds for 1e7 IDs: it waits without
 * request_timeout_ms). Needs admin rights. CQRPS_EUNSUPPORTED for other
 * kinds and tables with evict_after_phases, CQRPS_EBUSY while a phase or
 * compaction of the table runs. Sharded: every shard, the counts summed,
 * seconds the longest. */
typedef struct cqrps_compact_info {
    uint64_t moved_ids;   /* IDs moved from the map into the static set */
    uint64_t known_ids;   /* known IDs after it */
    uint64_t static_ids;  /* of those, in the static set */
    uint64_t index_bytes; /* per-ID state after it */
    double seconds;       /* the server's wall time */
} cqrps_compact_info_t;

/* out may be NULL. */
CQRPS_API int cqrps_compact(cqrps_client_t *c, const char *table,
                            cqrps_compact_info_t *out);

/* ---- Serving exports ----------------------------------------------------
 * The server writes a table of a checkpoint generation as a serving
 * export (read it with cqrps_model.h) into its data dir and the client
 * fetches it in chunks into out_path (written to out_path.tmp, checked
 * against the server's checksum, fsynced, renamed). Needs admin rights
 * and a server with --data-dir (CQRPS_EUNSUPPORTED otherwise). One shard
 * only: a sharded client gets CQRPS_EUNSUPPORTED (export each shard's
 * part through a client of that shard). Waits without
 * request_timeout_ms for the build. */
/* Called after each fetched chunk with the bytes fetched and the file's
 * size; returning nonzero stops the fetch (cqrps_export then returns
 * CQRPS_ECANCELED and leaves no file). */
typedef int (*cqrps_export_progress_fn)(void *ud, uint64_t done,
                                        uint64_t total);

typedef struct cqrps_export_opts {
    uint64_t generation; /* 0 = the newest checkpoint */
    uint64_t since;      /* 0 = full; else a delta from this generation */
    const char *dtype;   /* NULL or "f32" (exact), "f16", "int8" */
    cqrps_export_progress_fn progress; /* NULL or the fetch's progress */
    void *progress_ud;   /* passed to progress */
} cqrps_export_opts_t;

typedef struct cqrps_export_info {
    uint64_t generation;      /* exported */
    uint64_t base_generation; /* a delta's base (0 for a full export) */
    uint64_t bytes;           /* file size */
    uint64_t ids;             /* IDs with their own value in the file */
    double build_seconds;     /* the server's build */
    char file[320];           /* its name in the server's exports folder */
} cqrps_export_info_t;

/* opts and info may be NULL. */
CQRPS_API int cqrps_export(cqrps_client_t *c, const char *table,
                           const cqrps_export_opts_t *opts,
                           const char *out_path, cqrps_export_info_t *info);

/* ---- Secrets ----------------------------------------------------------- */

/* Longest token cqrps_secret_load accepts (the server's limit too). */
#define CQRPS_SECRET_MAX 4096

/* Loads a token for cqrps_options_t.token / admin_token the way every
 * cqrps tool does, so that secrets stay off command lines (where `ps`
 * shows them to every user):
 *   - from the file `path` when it is non-NULL: its bytes, less one
 *     trailing newline ("\n" or "\r\n");
 *   - else from the environment variable `env` (e.g. "CQRPS_TOKEN") when
 *     it is set and non-empty;
 *   - else no token: *out = NULL, *len = 0, and 0 is returned.
 * *out is malloc'd (NUL-terminated for convenience; *len excludes the
 * NUL): release it with cqrps_secret_free, which wipes it first.
 * msg[0..msglen) receives the reason of a failure, or on success a
 * warning for the caller to print ("" if none): a file other users can
 * read is still loaded, but the warning says to chmod it.
 * Errors: CQRPS_EIO (cannot open or read the file), CQRPS_EINVAL (not a
 * regular file, empty, longer than CQRPS_SECRET_MAX), CQRPS_ENOMEM. */
CQRPS_API int cqrps_secret_load(const char *path, const char *env,
                                char **out, size_t *len, char *msg,
                                size_t msglen);

/* Zeroes and frees a secret from cqrps_secret_load; NULL is a no-op. */
CQRPS_API void cqrps_secret_free(char *secret, size_t len);

#ifdef __cplusplus
}
#endif

#endif
