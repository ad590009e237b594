/* cqrps_bench.c -- load generator for a running cqrps-server.
 *
 *   cqrps-bench --addr HOST:PORT --op lookup|push --dim D --batch B
 *               --conns N --vocab V [--zipf S] --seconds T [--json]
 *               [--kind cqr|full|ce|hash] [--rows K] [--chunks C]
 *               [--optimizer adam|sgd|adagrad] [--warm 0|1] [--depth P]
 *               [--threads T] [--table NAME] [--keep] [--server-pid PID]
 *               [--token-file F] [--admin-token-file F]
 *               [--tables N] [--calls multi|single|pipelined] [--bf16]
 *               [--compact]
 *
 * Tokens come from the files, else $CQRPS_TOKEN / $CQRPS_ADMIN_TOKEN.
 *
 * What it does:
 *   1. Creates table NAME (dropping an older one of that name unless
 *      --warm 0, which reuses it as it is).
 *   2. Warms it: every vocabulary ID (bench_common.h) is pushed once, so
 *      all V IDs are known (learned pointers for cqr, rows for full). The
 *      warm-up uses pooled pushes (bags of 64 IDs, one small gradient per
 *      bag) so that it moves 8 bytes per ID instead of a whole gradient
 *      row: the server still registers and updates every ID.
 *   2b. With --compact (cqr): compacts the warmed table(s) through the
 *      server (Compact: the known IDs move into the static set, about 9
 *      bytes an ID) before the timed run, and logs how long it took.
 *   3. Runs N connections (one cqrps client each) for T seconds, spread
 *      over T client threads (default: one thread per connection). Each
 *      connection keeps --depth requests in flight (asynchronous
 *      *_start / cqrps_wait; depth 1 is a plain synchronous loop). Every
 *      batch's latency is measured from its start to its wait returning.
 *   4. Prints embeddings/s, MB/s of payload (rows looked up, or gradient
 *      rows pushed), latency p50/p99/p999 per batch, and with --json one
 *      JSON line. With --server-pid, the server's CPU seconds (from
 *      /proc/PID/stat) per million embeddings.
 *
 * Several tables (--tables N > 1, or --bf16, or --calls): N tables
 * NAME_0 .. NAME_{N-1} of the same configuration are created and warmed,
 * and a connection runs steps one after the other (depth 1): a step
 * looks up (pushes) --batch IDs in every table, as one multi-table call
 * (--calls multi, the default: one request per shard), as N synchronous
 * single-table calls (single: N round trips) or as N single-table calls
 * started together and then waited for (pipelined). --bf16 sends the
 * multi-table call's vectors or gradients as bfloat16. Embeddings count
 * every table's IDs; the latency is a step's; the JSON line adds the
 * server's Lookup and Push requests per step (its op.* counters).
 *
 * Progress goes to stderr; the JSON line to stdout.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "cqrps.h"

#define PROG "cqrps-bench"

typedef struct opts {
    const char *addr;        /* server address list */
    const char *op;          /* lookup or push */
    const char *table;       /* table name */
    cqrps_kind_t kind;       /* table kind */
    cqrps_optimizer_t opt;   /* optimizer */
    uint32_t dim;            /* floats per embedding */
    uint32_t rows;           /* codebook rows (0 = server default) */
    uint32_t chunks;         /* chunks (0 = server default) */
    uint32_t batch;          /* IDs per request */
    uint32_t conns;          /* client connections */
    uint32_t threads;        /* client threads (0 = one per connection) */
    uint32_t depth;          /* requests in flight per connection */
    uint64_t vocab;          /* known IDs */
    double zipf;             /* 0 = uniform */
    double seconds;          /* timed duration */
    int warm;                /* create and warm the table */
    int keep;                /* leave the table on the server at exit */
    int server_pid;          /* for CPU accounting, or 0 */
    int json;                /* print a JSON line */
    const char *token_file;  /* --token-file, else $CQRPS_TOKEN */
    const char *admin_file;  /* --admin-token-file, else $CQRPS_ADMIN_TOKEN */
    uint32_t tables;         /* tables per step (1: the classic run) */
    const char *calls;       /* multi, single or pipelined */
    int bf16;                /* multi-table calls in bfloat16 */
    int compact;             /* compact the tables before timing */
    int steps;               /* run steps (several tables, bf16, calls) */
    char (*names)[CQRPS_NAME_MAX + 1]; /* the tables' names */
    char *token;             /* loaded secrets (cqrps_secret_load) */
    size_t token_len;
    char *admin_token;
    size_t admin_token_len;
} opts_t;

static void usage(void)
{
    fprintf(stderr,
        "usage: cqrps-bench --addr HOST:PORT --op lookup|push [--dim 64]\n"
        "  [--batch 1024] [--conns 1] [--vocab 1e6] [--zipf S] [--seconds 5]\n"
        "  [--json] [--kind cqr|full|ce|hash] [--rows K] [--chunks C]\n"
        "  [--optimizer adam|sgd|adagrad] [--warm 1|0] [--depth 1]\n"
        "  [--threads N] [--table NAME] [--keep] [--server-pid PID]\n"
        "  [--token-file F] [--admin-token-file F]\n"
        "  [--tables N] [--calls multi|single|pipelined] [--bf16]\n"
        "  [--compact]\n"
        "Tokens come from the files, else $CQRPS_TOKEN and "
        "$CQRPS_ADMIN_TOKEN.\n");
}

/* A token from `path`, else $env; logs the failure or the warning. */
static int load_secret(const char *path, const char *env, char **out,
                       size_t *len)
{
    char msg[512];
    int rc = cqrps_secret_load(path, env, out, len, msg, sizeof msg);
    if (msg[0])
        bench_log(PROG, "%s", msg);
    return rc;
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.op = "lookup", .table = "bench", .kind = CQRPS_KIND_CQR,
                  .opt = CQRPS_OPT_ADAM, .dim = 64, .batch = 1024, .conns = 1,
                  .depth = 1, .vocab = 1000000, .seconds = 5.0, .warm = 1,
                  .tables = 1, .calls = "multi"};
    static const struct option lo[] = {
        {"addr", 1, 0, 'a'},    {"op", 1, 0, 'o'},      {"table", 1, 0, 'T'},
        {"kind", 1, 0, 'k'},    {"optimizer", 1, 0, 'O'}, {"dim", 1, 0, 'd'},
        {"rows", 1, 0, 'r'},    {"chunks", 1, 0, 'c'},  {"batch", 1, 0, 'b'},
        {"conns", 1, 0, 'n'},   {"threads", 1, 0, 't'}, {"depth", 1, 0, 'p'},
        {"vocab", 1, 0, 'v'},   {"zipf", 1, 0, 'z'},    {"seconds", 1, 0, 's'},
        {"warm", 1, 0, 'w'},    {"keep", 0, 0, 'K'},    {"server-pid", 1, 0, 'P'},
        {"json", 0, 0, 'j'},    {"help", 0, 0, 'h'},
        {"token-file", 1, 0, 'F'}, {"admin-token-file", 1, 0, 'G'},
        {"tables", 1, 0, 'N'},  {"calls", 1, 0, 'C'},   {"bf16", 0, 0, 'B'},
        {"compact", 0, 0, 'X'}, {0, 0, 0, 0}};
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'a': o->addr = optarg; break;
        case 'o': o->op = optarg; break;
        case 'T': o->table = optarg; break;
        case 'k':
            if (cqrps_kind_parse(optarg, &o->kind))
                return -1;
            break;
        case 'O':
            if (cqrps_optimizer_parse(optarg, &o->opt))
                return -1;
            break;
        case 'd': case 'r': case 'c': case 'b': case 'n': case 't': case 'p':
        case 'v': case 'N':
            if (bench_parse_count(optarg, &v))
                return -1;
            if (ch == 'd') o->dim = (uint32_t)v;
            if (ch == 'r') o->rows = (uint32_t)v;
            if (ch == 'c') o->chunks = (uint32_t)v;
            if (ch == 'b') o->batch = (uint32_t)v;
            if (ch == 'n') o->conns = (uint32_t)v;
            if (ch == 't') o->threads = (uint32_t)v;
            if (ch == 'p') o->depth = (uint32_t)v;
            if (ch == 'v') o->vocab = v;
            if (ch == 'N') o->tables = (uint32_t)v;
            break;
        case 'C': o->calls = optarg; o->steps = 1; break;
        case 'B': o->bf16 = 1; break;
        case 'X': o->compact = 1; break;
        case 'z': o->zipf = atof(optarg); break;
        case 's': o->seconds = atof(optarg); break;
        case 'w': o->warm = atoi(optarg) != 0; break;
        case 'K': o->keep = 1; break;
        case 'P': o->server_pid = atoi(optarg); break;
        case 'j': o->json = 1; break;
        case 'F': o->token_file = optarg; break;
        case 'G': o->admin_file = optarg; break;
        default: return -1;
        }
    }
    if (load_secret(o->token_file, "CQRPS_TOKEN", &o->token,
                    &o->token_len) ||
        load_secret(o->admin_file, "CQRPS_ADMIN_TOKEN", &o->admin_token,
                    &o->admin_token_len))
        return -1;
    if (!o->addr || (strcmp(o->op, "lookup") && strcmp(o->op, "push")) ||
        !o->dim || !o->batch || !o->conns || !o->depth || !o->vocab ||
        o->seconds <= 0 || !o->tables || o->tables > 1024 ||
        (strcmp(o->calls, "multi") && strcmp(o->calls, "single") &&
         strcmp(o->calls, "pipelined")))
        return -1;
    if (!o->threads || o->threads > o->conns)
        o->threads = o->conns;
    o->steps |= o->tables > 1 || o->bf16;
    if (o->steps) {
        if (o->depth != 1 || (o->bf16 && strcmp(o->calls, "multi"))) {
            bench_log(PROG, "steps run at depth 1; --bf16 needs --calls "
                      "multi");
            return -1;
        }
        o->threads = o->conns; /* one connection per thread */
    }
    o->names = calloc(o->tables, sizeof *o->names);
    if (!o->names)
        return -1;
    for (uint32_t i = 0; i < o->tables; i++) {
        int w = o->tables == 1
                    ? snprintf(o->names[i], sizeof o->names[i], "%s",
                               o->table)
                    : snprintf(o->names[i], sizeof o->names[i], "%s_%u",
                               o->table, i);
        if (w < 0 || (size_t)w >= sizeof o->names[i])
            return -1;
    }
    return 0;
}

static cqrps_client_t *open_client(const opts_t *o, const char *name)
{
    cqrps_options_t co;
    cqrps_options_init(&co);
    co.client_name = name;
    co.token = o->token;
    co.token_len = o->token_len;
    co.admin_token = o->admin_token;
    co.admin_token_len = o->admin_token_len;
    cqrps_client_t *c = NULL;
    int rc = cqrps_connect(o->addr, &co, &c);
    if (rc) {
        bench_log(PROG, "connect %s: %s", o->addr, cqrps_last_error(NULL));
        return NULL;
    }
    return c;
}

static int create_table(cqrps_client_t *c, const opts_t *o,
                        const char *name)
{
    cqrps_table_config_t cfg;
    cqrps_table_config_init(&cfg, o->kind, o->dim);
    cfg.rows = o->rows;
    cfg.chunks = o->chunks;
    cfg.optimizer = o->opt;
    cfg.seed = 42;
    int rc = cqrps_drop_table(c, name);
    /* Without the admin token the drop is refused; the create below then
     * says whether an old table is in the way. */
    if (rc == CQRPS_EPERM)
        bench_log(PROG, "drop %s: %s (continuing)", name,
                  cqrps_last_error(c));
    else if (rc && rc != CQRPS_ENOTFOUND) {
        bench_log(PROG, "drop %s: %s", name, cqrps_last_error(c));
        return rc;
    }
    cqrps_table_info_t info;
    rc = cqrps_create_table(c, name, &cfg, &info);
    if (rc) {
        bench_log(PROG, "create %s: %s", name, cqrps_last_error(c));
        return rc;
    }
    bench_log(PROG, "table %s: kind=%s dim=%u chunks=%u rows=%u optimizer=%s",
              name, cqrps_kind_name(info.config.kind), info.config.dim,
              info.config.chunks, info.config.rows,
              cqrps_optimizer_name(info.config.optimizer));
    return 0;
}

/* ---- warm-up ------------------------------------------------------------ */

#define WARM_BAG 64u      /* IDs per bag */
#define WARM_REQ 65536u   /* IDs per request */

typedef struct warmer {
    pthread_t th;          /* the thread */
    const opts_t *o;       /* options */
    const char *table;     /* the table warmed */
    uint64_t lo, hi;       /* rank range [lo, hi) */
    uint64_t done;         /* IDs pushed (relaxed atomic) */
    int rc;                /* first error */
} warmer_t;

static void *warm_main(void *arg)
{
    warmer_t *w = arg;
    const opts_t *o = w->o;
    cqrps_client_t *c = open_client(o, "cqrps-bench-warm");
    uint64_t *ids = malloc(2 * (size_t)WARM_REQ * sizeof *ids);
    uint32_t *offs = malloc(WARM_REQ / WARM_BAG * sizeof *offs);
    float *g = malloc(WARM_REQ / WARM_BAG * (size_t)o->dim * sizeof *g);
    if (!c || !ids || !offs || !g) {
        w->rc = CQRPS_ENOMEM;
        goto out;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 5 + w->lo);
    for (size_t j = 0; j < WARM_REQ / WARM_BAG * (size_t)o->dim; j++)
        g[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.02f;
    for (uint32_t b = 0; b < WARM_REQ / WARM_BAG; b++)
        offs[b] = b * WARM_BAG;
    /* Two requests in flight: one being answered while the next is
     * written. */
    cqrps_ticket_t tk[2] = {0, 0};
    int live[2] = {0, 0};
    unsigned slot = 0;
    for (uint64_t base = w->lo; base < w->hi; base += WARM_REQ, slot ^= 1) {
        size_t n = w->hi - base < WARM_REQ ? (size_t)(w->hi - base) : WARM_REQ;
        if (live[slot]) {
            int rc = cqrps_wait(c, tk[slot]);
            live[slot] = 0;
            if (rc) {
                w->rc = rc;
                goto fail;
            }
        }
        uint64_t *bi = ids + (size_t)slot * WARM_REQ;
        for (size_t j = 0; j < n; j++)
            bi[j] = bench_id(base + j);
        size_t nbags = (n + WARM_BAG - 1) / WARM_BAG;
        int rc = cqrps_push_pooled_start(c, w->table, bi, n, offs, nbags,
                                         CQRPS_POOL_SUM, g, &tk[slot]);
        if (rc) {
            w->rc = rc;
            goto fail;
        }
        live[slot] = 1;
        __atomic_fetch_add(&w->done, n, __ATOMIC_RELAXED);
    }
    for (unsigned s = 0; s < 2; s++) {
        if (live[s]) {
            int rc = cqrps_wait(c, tk[s]);
            live[s] = 0;
            if (rc && !w->rc)
                w->rc = rc;
        }
    }
fail:
    if (w->rc)
        bench_log(PROG, "warm: %s", cqrps_last_error(c));
out:
    cqrps_close(c);
    free(ids);
    free(offs);
    free(g);
    return NULL;
}

static int warm_table(const opts_t *o, const char *table, double *secs)
{
    uint32_t nw = o->conns < 2 ? 2 : o->conns; /* keep the server busy */
    warmer_t *ws = calloc(nw, sizeof *ws);
    if (!ws)
        return CQRPS_ENOMEM;
    double t0 = bench_now(), last = t0;
    for (uint32_t i = 0; i < nw; i++) {
        ws[i] = (warmer_t){.o = o, .table = table, .lo = o->vocab * i / nw,
                           .hi = o->vocab * (i + 1) / nw};
        pthread_create(&ws[i].th, NULL, warm_main, &ws[i]);
    }
    /* Report progress while the warmers run. */
    for (;;) {
        uint64_t done = 0;
        for (uint32_t i = 0; i < nw; i++)
            done += __atomic_load_n(&ws[i].done, __ATOMIC_RELAXED);
        if (done >= o->vocab)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        double now = bench_now();
        if (now - last >= 2.0) {
            bench_log(PROG, "warm: %.0f%% (%llu / %llu IDs, %.1f s)",
                      100.0 * (double)done / (double)o->vocab,
                      (unsigned long long)done,
                      (unsigned long long)o->vocab, now - t0);
            last = now;
        }
        int failed = 0;
        for (uint32_t i = 0; i < nw; i++)
            failed |= __atomic_load_n(&ws[i].rc, __ATOMIC_RELAXED) != 0;
        if (failed)
            break;
    }
    int rc = 0;
    for (uint32_t i = 0; i < nw; i++) {
        pthread_join(ws[i].th, NULL);
        if (ws[i].rc && !rc)
            rc = ws[i].rc;
    }
    free(ws);
    *secs = bench_now() - t0;
    if (!rc)
        bench_log(PROG, "warm: %llu IDs known in %.2f s (%.2f M IDs/s)",
                  (unsigned long long)o->vocab, *secs,
                  (double)o->vocab / *secs / 1e6);
    return rc;
}

/* ---- timed run ---------------------------------------------------------- */

#define NB 64 /* pre-drawn batches per connection */

typedef struct inflight {
    uint32_t conn;          /* connection index within the thread */
    cqrps_ticket_t ticket;  /* its ticket */
    double t_start;         /* when it was started */
    float *out;             /* lookup output buffer */
} inflight_t;

typedef struct worker {
    pthread_t th;           /* the thread */
    const opts_t *o;        /* options */
    uint32_t idx;           /* thread index */
    uint32_t nconns;        /* connections this thread drives */
    double t_end;           /* stop time */
    uint64_t batches;       /* batches completed */
    int rc;                 /* first error */
    bench_lat_t lat;        /* per-batch latency, us */
} worker_t;

/* What a classic worker drives: its connections, NB batches of IDs per
 * connection, one gradient, and the ring of in-flight requests with an
 * output buffer per slot. */
typedef struct wstate {
    cqrps_client_t **cs;
    uint64_t *ids;
    uint64_t *next;         /* batch counter per connection */
    float *grads;
    float *outs;
    inflight_t *q;
} wstate_t;

/* Allocates st, connects and draws the IDs and the gradient; 0 or the
 * error (st is then partly set: wstate_free it either way). */
static int wstate_open(const worker_t *w, wstate_t *st)
{
    const opts_t *o = w->o;
    const size_t b = o->batch, rowsz = (size_t)b * o->dim;
    const uint32_t nc = w->nconns, slots = nc * o->depth;
    st->cs = calloc(nc, sizeof *st->cs);
    st->ids = malloc((size_t)nc * NB * b * sizeof *st->ids);
    st->next = calloc(nc, sizeof *st->next);
    st->grads = malloc(rowsz * sizeof *st->grads);
    st->outs = malloc((size_t)slots * rowsz * sizeof *st->outs);
    st->q = calloc(slots, sizeof *st->q);
    if (!st->cs || !st->ids || !st->next || !st->grads || !st->outs ||
        !st->q)
        return CQRPS_ENOMEM;
    for (uint32_t i = 0; i < nc; i++) {
        st->cs[i] = open_client(o, "cqrps-bench");
        if (!st->cs[i])
            return CQRPS_ECONN;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 1000 + w->idx);
    bench_ranks_t z;
    bench_ranks_init(&z, o->vocab, o->zipf);
    bench_draw_ids(&z, &r, st->ids, (size_t)nc * NB * b);
    for (size_t j = 0; j < rowsz; j++)
        st->grads[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.01f;
    for (uint32_t s = 0; s < slots; s++)
        st->q[s].out = st->outs + (size_t)s * rowsz;
    return 0;
}

static void wstate_free(wstate_t *st, uint32_t nc)
{
    if (st->cs)
        for (uint32_t i = 0; i < nc; i++)
            cqrps_close(st->cs[i]);
    free(st->cs);
    free(st->ids);
    free(st->next);
    free(st->grads);
    free(st->outs);
    free(st->q);
}

/* Starts the next batch of connection e->conn in slot e (into e->out);
 * 0 or the error, said in the log. */
static int start_batch(const opts_t *o, const wstate_t *st, int push,
                       inflight_t *e)
{
    const size_t b = o->batch;
    const uint64_t *bi =
        st->ids + ((size_t)e->conn * NB + st->next[e->conn]++ % NB) * b;
    e->t_start = bench_now();
    int rc = push ? cqrps_push_start(st->cs[e->conn], o->table, bi,
                                     st->grads, b, &e->ticket)
                  : cqrps_lookup_start(st->cs[e->conn], o->table, bi, b,
                                       e->out, &e->ticket);
    if (rc)
        bench_log(PROG, "start: %s", cqrps_last_error(st->cs[e->conn]));
    return rc;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    const opts_t *o = w->o;
    const int push = !strcmp(o->op, "push");
    const uint32_t nc = w->nconns, slots = nc * o->depth;
    wstate_t st = {0};
    w->rc = wstate_open(w, &st);
    if (w->rc)
        goto out;
    inflight_t *q = st.q;

    /* q is a FIFO ring of in-flight requests: wait for the oldest, then
     * start the next one on the same connection. */
    size_t head = 0, count = 0;
    /* Issue the initial window, connection by connection. */
    for (uint32_t s = 0; s < slots && bench_now() < w->t_end; s++) {
        inflight_t *e = &q[(head + count) % slots];
        e->conn = s % nc;
        w->rc = start_batch(o, &st, push, e);
        if (w->rc)
            goto out;
        count++;
    }
    while (count) {
        inflight_t *e = &q[head];
        int rc = cqrps_wait(st.cs[e->conn], e->ticket);
        double now = bench_now();
        if (rc) {
            w->rc = rc;
            bench_log(PROG, "%s: %s", o->op, cqrps_last_error(st.cs[e->conn]));
            goto out;
        }
        bench_lat_add(&w->lat, (now - e->t_start) * 1e6);
        w->batches++;
        head = (head + 1) % slots;
        count--;
        if (now >= w->t_end)
            continue;
        /* Reuse the finished slot (its output buffer is free again) as the
         * tail of the ring. */
        inflight_t done = *e;
        inflight_t *n = &q[(head + count) % slots];
        n->out = done.out;
        n->conn = done.conn;
        w->rc = start_batch(o, &st, push, n);
        if (w->rc)
            goto out;
        count++;
    }
out:
    wstate_free(&st, nc);
    return NULL;
}

/* ---- steps over several tables ------------------------------------------ */

/* One step: batch IDs in every table, as the options' calls say. */
static int run_step(cqrps_client_t *c, const opts_t *o, int push,
                    cqrps_part_t *parts, cqrps_ticket_t *tk)
{
    const uint32_t n = o->tables;
    if (!strcmp(o->calls, "multi")) {
        unsigned fl = o->bf16 ? CQRPS_BF16 : 0;
        return push ? cqrps_push_multi(c, parts, n, fl)
                    : cqrps_lookup_multi(c, parts, n, fl);
    }
    int rc = 0;
    if (!strcmp(o->calls, "single")) {
        for (uint32_t i = 0; i < n && !rc; i++)
            rc = push ? cqrps_push(c, parts[i].table, parts[i].ids,
                                   parts[i].grads, parts[i].n)
                      : cqrps_lookup(c, parts[i].table, parts[i].ids,
                                     parts[i].n, parts[i].out);
        return rc;
    }
    uint32_t started = 0;
    for (; started < n && !rc; started++)
        rc = push ? cqrps_push_start(c, parts[started].table,
                                     parts[started].ids, parts[started].grads,
                                     parts[started].n, &tk[started])
                  : cqrps_lookup_start(c, parts[started].table,
                                       parts[started].ids, parts[started].n,
                                       parts[started].out, &tk[started]);
    if (rc)
        started--; /* the failed start holds no ticket */
    for (uint32_t i = 0; i < started; i++) {
        int w = cqrps_wait(c, tk[i]);
        if (w && !rc)
            rc = w;
    }
    return rc;
}

/* A connection running steps (depth 1) until t_end. */
static void *step_main(void *arg)
{
    worker_t *w = arg;
    const opts_t *o = w->o;
    const int push = !strcmp(o->op, "push");
    const uint32_t nt = o->tables;
    const size_t b = o->batch, rowsz = b * o->dim;
    cqrps_client_t *c = open_client(o, "cqrps-bench");
    uint64_t *ids = malloc((size_t)NB * nt * b * sizeof *ids);
    float *grads = malloc(nt * rowsz * sizeof *grads);
    float *outs = malloc(nt * rowsz * sizeof *outs);
    cqrps_part_t *parts = calloc(nt, sizeof *parts);
    cqrps_ticket_t *tk = calloc(nt, sizeof *tk);
    if (!c || !ids || !grads || !outs || !parts || !tk) {
        w->rc = c ? CQRPS_ENOMEM : CQRPS_ECONN;
        goto out;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 1000 + w->idx);
    bench_ranks_t z;
    bench_ranks_init(&z, o->vocab, o->zipf);
    bench_draw_ids(&z, &r, ids, (size_t)NB * nt * b);
    for (size_t j = 0; j < nt * rowsz; j++)
        grads[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.01f;
    for (uint64_t step = 0; bench_now() < w->t_end; step++) {
        const uint64_t *base = ids + (size_t)(step % NB) * nt * b;
        for (uint32_t i = 0; i < nt; i++)
            parts[i] = (cqrps_part_t){.table = o->names[i],
                                      .ids = base + (size_t)i * b, .n = b,
                                      .out = outs + (size_t)i * rowsz,
                                      .grads = grads + (size_t)i * rowsz};
        double t0 = bench_now();
        int rc = run_step(c, o, push, parts, tk);
        if (rc) {
            w->rc = rc;
            bench_log(PROG, "%s: %s", o->op, cqrps_last_error(c));
            goto out;
        }
        bench_lat_add(&w->lat, (bench_now() - t0) * 1e6);
        w->batches++;
    }
out:
    cqrps_close(c);
    free(ids);
    free(grads);
    free(outs);
    free(parts);
    free(tk);
    return NULL;
}

/* The server's Lookup and Push requests so far (summed over shards), or
 * -1. */
static double data_requests(cqrps_client_t *admin)
{
    cqrps_stats_t st;
    memset(&st, 0, sizeof st);
    double n = -1;
    if (!cqrps_stats(admin, &st)) {
        n = 0;
        for (size_t i = 0; i < st.ncounters; i++)
            if (!strcmp(st.counters[i].name, "op.lookup") ||
                !strcmp(st.counters[i].name, "op.push"))
                n += st.counters[i].value;
    }
    cqrps_stats_free(&st);
    return n;
}

/* Creates and warms the tables (with --warm; the seconds it took in
 * *warm_s) and checks the first one's dim; its description in *info.
 * 0, or 1 after saying why. */
static int prepare_tables(cqrps_client_t *admin, const opts_t *o,
                          double *warm_s, cqrps_table_info_t *info)
{
    *warm_s = 0.0;
    int rc = 0;
    for (uint32_t i = 0; i < o->tables && o->warm && !rc; i++) {
        double s = 0;
        rc = create_table(admin, o, o->names[i]);
        if (!rc)
            rc = warm_table(o, o->names[i], &s);
        *warm_s += s;
        if (rc) {
            bench_log(PROG, "warm-up failed: %s", cqrps_strerror(rc));
            return 1;
        }
    }
    memset(info, 0, sizeof *info);
    rc = cqrps_describe_table(admin, o->names[0], info);
    if (rc) {
        bench_log(PROG, "describe %s: %s", o->names[0],
                  cqrps_last_error(admin));
        return 1;
    }
    if (info->config.dim != o->dim) {
        bench_log(PROG, "table %s has dim %u, not %u", o->names[0],
                  info->config.dim, o->dim);
        return 1;
    }
    return 0;
}

/* --compact: compacts every table through the server before timing; the
 * seconds it took (the servers' longest per table, summed over tables)
 * in *secs, the first table's new description in *info. 0, or 1 after
 * saying why. */
static int compact_tables(cqrps_client_t *admin, const opts_t *o,
                          double *secs, cqrps_table_info_t *info)
{
    *secs = 0.0;
    for (uint32_t i = 0; i < o->tables; i++) {
        cqrps_compact_info_t ci;
        double t0 = bench_now();
        bench_log(PROG, "compact: %s ...", o->names[i]);
        if (cqrps_compact(admin, o->names[i], &ci)) {
            bench_log(PROG, "compact %s: %s", o->names[i],
                      cqrps_last_error(admin));
            return 1;
        }
        bench_log(PROG, "compact: %s: %llu IDs moved in %.2f s (server; "
                  "%.2f s wall), %llu in the static set, index %.2f B/ID",
                  o->names[i], (unsigned long long)ci.moved_ids, ci.seconds,
                  bench_now() - t0, (unsigned long long)ci.static_ids,
                  ci.known_ids ? (double)ci.index_bytes / ci.known_ids : 0);
        *secs += ci.seconds;
    }
    if (cqrps_describe_table(admin, o->names[0], info)) {
        bench_log(PROG, "describe %s: %s", o->names[0],
                  cqrps_last_error(admin));
        return 1;
    }
    return 0;
}

/* What the workers did, with the server's counters around them. */
typedef struct run {
    int rc;               /* the first worker error, or 0 */
    uint64_t batches;
    bench_lat_t lat;      /* every worker's latencies (owned) */
    double seconds;       /* wall time of the run */
    double cpu;           /* server CPU seconds, -1 unknown */
    double req_per_step;  /* Lookup/Push requests per step, -1 unknown */
} run_t;

/* Runs the worker threads for o->seconds and gathers what they did. 0,
 * or 1 when out of memory. */
static int run_workers(cqrps_client_t *admin, opts_t *o, run_t *r)
{
    memset(r, 0, sizeof *r);
    worker_t *ws = calloc(o->threads, sizeof *ws);
    if (!ws)
        return 1;
    double req0 = data_requests(admin);
    double cpu0 = o->server_pid ? bench_proc_cpu_seconds(o->server_pid) : -1;
    double t0 = bench_now();
    for (uint32_t i = 0; i < o->threads; i++) {
        uint32_t nc = o->conns / o->threads + (i < o->conns % o->threads);
        ws[i] = (worker_t){.o = o, .idx = i, .nconns = nc,
                           .t_end = t0 + o->seconds};
        pthread_create(&ws[i].th, NULL, o->steps ? step_main : worker_main,
                       &ws[i]);
    }
    for (uint32_t i = 0; i < o->threads; i++) {
        pthread_join(ws[i].th, NULL);
        if (ws[i].rc && !r->rc)
            r->rc = ws[i].rc;
        r->batches += ws[i].batches;
        bench_lat_merge(&r->lat, &ws[i].lat);
        bench_lat_free(&ws[i].lat);
    }
    r->seconds = bench_now() - t0;
    double cpu1 = o->server_pid ? bench_proc_cpu_seconds(o->server_pid) : -1;
    double req1 = data_requests(admin);
    r->cpu = cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1;
    r->req_per_step = req0 >= 0 && req1 >= 0 && r->batches
                          ? (req1 - req0) / (double)r->batches : -1;
    free(ws);
    return 0;
}

/* The figures of a run: the log line, and the JSON line with --json. */
static void report(const opts_t *o, run_t *r, const cqrps_table_info_t *info,
                   double warm_s, double compact_s)
{
    bench_lat_sort(&r->lat);
    double el = r->seconds, cpu = r->cpu;
    double emb = (double)r->batches * o->batch * o->tables / el;
    double mb = emb * o->dim * 4 / 1e6;
    double p50 = bench_lat_pct(&r->lat, 0.5),
           p99 = bench_lat_pct(&r->lat, 0.99),
           p999 = bench_lat_pct(&r->lat, 0.999);
    double cpu_per_m = cpu >= 0 && r->batches
                           ? cpu / (emb * el / 1e6) : -1;
    bench_log(PROG,
              "%s kind=%s dim=%u batch=%u conns=%u depth=%u vocab=%llu "
              "zipf=%g: %.3f M emb/s, %.0f MB/s, p50 %.1f us p99 %.1f us "
              "p999 %.1f us, server %.3f CPU-s per M emb (%.2f cores)",
              o->op, cqrps_kind_name(o->kind), o->dim, o->batch, o->conns,
              o->depth, (unsigned long long)o->vocab, o->zipf, emb / 1e6, mb,
              p50, p99, p999, cpu_per_m, cpu >= 0 ? cpu / el : -1);
    if (o->steps)
        bench_log(PROG, "%u table(s) per step, %s calls%s: %.1f steps/s, "
                  "%.2f Lookup/Push requests per step (server counters)",
                  o->tables, o->calls, o->bf16 ? ", bf16" : "",
                  (double)r->batches / el, r->req_per_step);
    if (o->json)
        printf("{\"bench\":\"cqrps\",\"op\":\"%s\",\"kind\":\"%s\","
               "\"optimizer\":\"%s\",\"dim\":%u,\"batch\":%u,\"conns\":%u,"
               "\"threads\":%u,\"depth\":%u,\"vocab\":%llu,\"zipf\":%g,"
               "\"known_ids\":%llu,\"seconds\":%.3f,\"emb_per_s\":%.1f,"
               "\"mb_per_s\":%.2f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
               "\"p999_us\":%.2f,\"server_cpu_s\":%.3f,"
               "\"server_cpu_s_per_m\":%.4f,\"server_cores\":%.3f,"
               "\"warm_seconds\":%.3f,\"blas_core\":\"%s\","
               "\"tables\":%u,\"calls\":\"%s\",\"bf16\":%s,"
               "\"steps_per_s\":%.2f,\"requests_per_step\":%.3f,"
               "\"compacted\":%s,\"compact_seconds\":%.3f,"
               "\"index_bytes\":%llu,\"bytes_per_known_id\":%.3f}\n",
               o->op, cqrps_kind_name(o->kind), cqrps_optimizer_name(o->opt),
               o->dim, o->batch, o->conns, o->threads, o->depth,
               (unsigned long long)o->vocab, o->zipf,
               (unsigned long long)info->known_ids, el, emb, mb, p50, p99,
               p999, cpu, cpu_per_m, cpu >= 0 ? cpu / el : -1, warm_s,
               bench_blas_core(), o->tables, o->steps ? o->calls : "classic",
               o->bf16 ? "true" : "false", (double)r->batches / el,
               r->req_per_step, info->compacted ? "true" : "false",
               compact_s, (unsigned long long)info->index_bytes,
               info->bytes_per_known_id);
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    bench_log(PROG, "OpenBLAS core: %s", bench_blas_core());
    cqrps_client_t *admin = open_client(&o, "cqrps-bench-admin");
    if (!admin)
        return 1;
    cqrps_server_info_t si;
    if (!cqrps_server_info(admin, &si))
        bench_log(PROG, "server %s, protocol %u, max_batch %u, max_frame %u",
                  si.server_version, si.protocol_version, si.max_batch,
                  si.max_frame_bytes);
    double warm_s;
    cqrps_table_info_t info;
    if (prepare_tables(admin, &o, &warm_s, &info)) {
        cqrps_close(admin);
        return 1;
    }
    double compact_s = 0.0;
    if (o.compact && compact_tables(admin, &o, &compact_s, &info)) {
        cqrps_close(admin);
        return 1;
    }
    bench_log(PROG,
              "%s: %u connection(s) on %u thread(s), depth %u, batch %u, "
              "%.1f s, known IDs %llu",
              o.op, o.conns, o.threads, o.depth, o.batch, o.seconds,
              (unsigned long long)info.known_ids);
    if (o.steps)
        bench_log(PROG, "steps of %u table(s), %s calls%s", o.tables,
                  o.calls, o.bf16 ? ", bfloat16" : "");

    run_t r;
    if (run_workers(admin, &o, &r)) {
        cqrps_close(admin);
        return 1;
    }
    for (uint32_t i = 0; i < o.tables && !o.keep && o.warm; i++)
        cqrps_drop_table(admin, o.names[i]);
    free(o.names);
    cqrps_close(admin);
    cqrps_secret_free(o.token, o.token_len);
    cqrps_secret_free(o.admin_token, o.admin_token_len);
    o.token = o.admin_token = NULL;
    if (r.rc) {
        bench_log(PROG, "%s failed: %s", o.op, cqrps_strerror(r.rc));
        bench_lat_free(&r.lat);
        return 1;
    }
    report(&o, &r, &info, warm_s, compact_s);
    bench_lat_free(&r.lat);
    fflush(stdout);
    return 0;
}
