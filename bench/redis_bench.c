/* redis_bench.c -- the baseline: Redis serving the same rows.
 *
 * Redis holds one key per vocabulary ID (the ID's 8 little-endian bytes)
 * whose value is the row, --dim float32 (256 bytes at dim 64). The same
 * IDs (bench_common.h), the same batches and the same duration as
 * cqrps-bench:
 *   lookup  MGET of --batch keys; the reply is decoded into a float array
 *           as a trainer would.
 *   push    MGET of the batch, an SGD step on the client, MSET back: the
 *           cheapest read-modify-write a plain key-value store offers.
 * --conns threads each with their own connection; --depth requests in
 * flight per connection (pipelining). --load writes the rows first (MSET
 * in batches, pipelined); it is skipped when DBSIZE already equals
 * --vocab.
 *
 * Output as cqrps-bench: progress and a summary on stderr; with --json one
 * JSON line (op, emb_per_s, mb_per_s, p50_us, p99_us, p999_us, ... and
 * server CPU seconds per million embeddings with --server-pid).
 */
#include <getopt.h>
#include <hiredis.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"

#define PROG "redis-bench"

typedef struct opts {
    char host[256];   /* server host */
    int port;         /* server port */
    const char *op;   /* lookup or push */
    uint32_t dim;     /* floats per row */
    uint32_t batch;   /* keys per MGET */
    uint32_t conns;   /* connections (one thread each) */
    uint32_t depth;   /* requests in flight per connection */
    uint64_t vocab;   /* keys */
    double zipf;      /* 0 = uniform */
    double seconds;   /* duration */
    int load;         /* write the rows first */
    int server_pid;   /* redis-server's PID for CPU accounting, or 0 */
    int json;         /* print a JSON line */
} opts_t;

static redisContext *connect_to(const opts_t *o)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout(o->host, o->port, tv);
    if (!c || c->err) {
        bench_log(PROG, "connect %s:%d: %s", o->host, o->port,
                  c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    return c;
}

/* The initial row of an ID: deterministic small values. */
static void init_row(uint64_t id, uint32_t dim, float *out)
{
    bench_rng_t r;
    bench_rng_seed(&r, id);
    for (uint32_t j = 0; j < dim; j++)
        out[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.25f;
}

/* A batch's command vector: argv[0] is the command, then keys (MGET) or
 * key/value pairs (MSET). Pointers refer into the caller's key and value
 * buffers. */
typedef struct cmdvec {
    const char **argv; /* 1 + 2 * batch entries */
    size_t *argvlen;   /* same */
} cmdvec_t;

static int cmdvec_init(cmdvec_t *v, uint32_t batch)
{
    v->argv = calloc(1 + 2 * (size_t)batch, sizeof *v->argv);
    v->argvlen = calloc(1 + 2 * (size_t)batch, sizeof *v->argvlen);
    return v->argv && v->argvlen ? 0 : -1;
}

static void cmdvec_free(cmdvec_t *v)
{
    free(v->argv);
    free(v->argvlen);
}

static void set_mget(cmdvec_t *v, const uint64_t *keys, uint32_t n)
{
    v->argv[0] = "MGET";
    v->argvlen[0] = 4;
    for (uint32_t j = 0; j < n; j++) {
        v->argv[1 + j] = (const char *)&keys[j];
        v->argvlen[1 + j] = sizeof(uint64_t);
    }
}

static void set_mset(cmdvec_t *v, const uint64_t *keys, const float *rows,
                     uint32_t n, uint32_t dim)
{
    v->argv[0] = "MSET";
    v->argvlen[0] = 4;
    for (uint32_t j = 0; j < n; j++) {
        v->argv[1 + 2 * j] = (const char *)&keys[j];
        v->argvlen[1 + 2 * j] = sizeof(uint64_t);
        v->argv[2 + 2 * j] = (const char *)(rows + (size_t)j * dim);
        v->argvlen[2 + 2 * j] = (size_t)dim * 4;
    }
}

/* Decodes an MGET reply into n rows; -1 on a wrong shape. A missing key
 * (nil) is an error: the rows were all loaded. */
static int decode_mget(const redisReply *r, uint32_t n, uint32_t dim,
                       float *out)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != n)
        return -1;
    for (uint32_t j = 0; j < n; j++) {
        const redisReply *e = r->element[j];
        if (e->type != REDIS_REPLY_STRING || e->len != (size_t)dim * 4)
            return -1;
        memcpy(out + (size_t)j * dim, e->str, (size_t)dim * 4);
    }
    return 0;
}

static uint64_t dbsize(redisContext *c)
{
    redisReply *r = redisCommand(c, "DBSIZE");
    uint64_t n = r && r->type == REDIS_REPLY_INTEGER ? (uint64_t)r->integer
                                                      : 0;
    if (r)
        freeReplyObject(r);
    return n;
}

/* Loads every row: MSET of 1024 keys, 16 in flight. */
static int load_rows(const opts_t *o)
{
    redisContext *c = connect_to(o);
    if (!c)
        return -1;
    uint64_t have = dbsize(c);
    if (have == o->vocab) {
        bench_log(PROG, "load: %llu keys already there",
                  (unsigned long long)have);
        redisFree(c);
        return 0;
    }
    redisReply *r = redisCommand(c, "FLUSHALL");
    if (r)
        freeReplyObject(r);
    const uint32_t b = 1024, inflight = 16;
    uint64_t *keys = malloc((size_t)inflight * b * sizeof *keys);
    float *rows = malloc((size_t)inflight * b * o->dim * sizeof *rows);
    cmdvec_t v = {0};
    int rc = cmdvec_init(&v, b);
    if (!keys || !rows || rc) {
        rc = -1;
        goto out;
    }
    double t0 = bench_now(), last = t0;
    uint64_t pending = 0, slot = 0;
    for (uint64_t base = 0; base < o->vocab; base += b, slot++) {
        uint32_t n = o->vocab - base < b ? (uint32_t)(o->vocab - base) : b;
        uint64_t *k = keys + (slot % inflight) * b;
        float *rw = rows + (slot % inflight) * (size_t)b * o->dim;
        for (uint32_t j = 0; j < n; j++) {
            k[j] = bench_id(base + j);
            init_row(k[j], o->dim, rw + (size_t)j * o->dim);
        }
        set_mset(&v, k, rw, n, o->dim);
        /* hiredis copies the command into its output buffer here. */
        if (redisAppendCommandArgv(c, 1 + 2 * (int)n, v.argv, v.argvlen) !=
            REDIS_OK) {
            rc = -1;
            goto out;
        }
        if (++pending == inflight) {
            void *rep;
            if (redisGetReply(c, &rep) != REDIS_OK) {
                rc = -1;
                goto out;
            }
            freeReplyObject(rep);
            pending--;
        }
        double now = bench_now();
        if (now - last > 2.0) {
            bench_log(PROG, "load: %.0f%% (%.1f s)",
                      100.0 * (double)base / (double)o->vocab, now - t0);
            last = now;
        }
    }
    while (pending--) {
        void *rep;
        if (redisGetReply(c, &rep) != REDIS_OK) {
            rc = -1;
            goto out;
        }
        freeReplyObject(rep);
    }
    have = dbsize(c);
    bench_log(PROG, "load: %llu keys of %u bytes in %.2f s",
              (unsigned long long)have, o->dim * 4, bench_now() - t0);
    if (have != o->vocab)
        rc = -1;
out:
    if (rc)
        bench_log(PROG, "load failed: %s", c->err ? c->errstr : "bad reply");
    cmdvec_free(&v);
    free(keys);
    free(rows);
    redisFree(c);
    return rc;
}

typedef struct worker {
    pthread_t th;       /* the thread */
    const opts_t *o;    /* options */
    uint32_t idx;       /* thread index */
    double t_end;       /* stop time */
    uint64_t batches;   /* batches completed */
    int rc;             /* first error */
    bench_lat_t lat;    /* per-batch latency, us */
} worker_t;

#define NB 64 /* pre-drawn batches per thread */

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    const opts_t *o = w->o;
    const uint32_t b = o->batch, dim = o->dim;
    const int push = !strcmp(o->op, "push");
    const uint32_t depth = push ? 1 : o->depth;
    redisContext *c = connect_to(o);
    uint64_t *ids = malloc((size_t)NB * b * sizeof *ids);
    float *rows = malloc((size_t)b * dim * sizeof *rows);
    float *grad = malloc((size_t)b * dim * sizeof *grad);
    double *sent = calloc(depth, sizeof *sent);
    cmdvec_t v = {0};
    if (!c || !ids || !rows || !grad || !sent || cmdvec_init(&v, b)) {
        w->rc = -1;
        goto out;
    }
    bench_rng_t r;
    bench_rng_seed(&r, 1000 + w->idx);
    bench_ranks_t z;
    bench_ranks_init(&z, o->vocab, o->zipf);
    bench_draw_ids(&z, &r, ids, (size_t)NB * b);
    for (size_t j = 0; j < (size_t)b * dim; j++)
        grad[j] = (float)(bench_rng_unit(&r) - 0.5) * 0.01f;
    uint64_t issued = 0, done = 0;
    for (;;) {
        /* Fill the pipeline while time remains. */
        while (issued - done < depth && bench_now() < w->t_end) {
            set_mget(&v, ids + (issued % NB) * b, b);
            sent[issued % depth] = bench_now();
            if (redisAppendCommandArgv(c, 1 + (int)b, v.argv, v.argvlen) !=
                REDIS_OK) {
                w->rc = -1;
                goto out;
            }
            issued++;
        }
        if (done == issued)
            break;
        redisReply *rep;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK) {
            w->rc = -1;
            goto out;
        }
        int bad = decode_mget(rep, b, dim, rows);
        freeReplyObject(rep);
        if (bad) {
            w->rc = -1;
            goto out;
        }
        if (push) {
            /* SGD on the client, then write the rows back. */
            for (size_t j = 0; j < (size_t)b * dim; j++)
                rows[j] -= 0.01f * grad[j];
            set_mset(&v, ids + (done % NB) * b, rows, b, dim);
            rep = redisCommandArgv(c, 1 + 2 * (int)b, v.argv, v.argvlen);
            int ok = rep && rep->type == REDIS_REPLY_STATUS;
            if (rep)
                freeReplyObject(rep);
            if (!ok) {
                w->rc = -1;
                goto out;
            }
        }
        bench_lat_add(&w->lat, (bench_now() - sent[done % depth]) * 1e6);
        done++;
        w->batches++;
    }
out:
    if (w->rc)
        bench_log(PROG, "connection %u failed: %s", w->idx,
                  c && c->err ? c->errstr : "bad reply");
    if (c)
        redisFree(c);
    cmdvec_free(&v);
    free(ids);
    free(rows);
    free(grad);
    free(sent);
    return NULL;
}

static int parse_addr(const char *s, opts_t *o)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof o->host)
        return -1;
    memcpy(o->host, s, (size_t)(colon - s));
    o->host[colon - s] = 0;
    o->port = atoi(colon + 1);
    return o->port > 0 && o->port < 65536 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr,
        "usage: cqrps-redis-bench --addr HOST:PORT --op lookup|push [--dim 64]\n"
        "  [--batch 1024] [--conns 1] [--depth 1] [--vocab 1e6] [--zipf S]\n"
        "  [--seconds 5] [--load] [--server-pid PID] [--json]\n");
}

/* The options into o (defaults first); 0, or -1 when they are wrong. */
static int parse_opts(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.op = "lookup", .dim = 64, .batch = 1024, .conns = 1,
                  .depth = 1, .vocab = 1000000, .seconds = 5.0};
    int have_addr = 0;
    static const struct option lo[] = {
        {"addr", 1, 0, 'a'},   {"op", 1, 0, 'o'},      {"dim", 1, 0, 'd'},
        {"batch", 1, 0, 'b'},  {"conns", 1, 0, 'n'},   {"depth", 1, 0, 'p'},
        {"vocab", 1, 0, 'v'},  {"zipf", 1, 0, 'z'},    {"seconds", 1, 0, 's'},
        {"load", 0, 0, 'l'},   {"server-pid", 1, 0, 'P'}, {"json", 0, 0, 'j'},
        {0, 0, 0, 0}};
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'a':
            if (parse_addr(optarg, o))
                return -1;
            have_addr = 1;
            break;
        case 'o': o->op = optarg; break;
        case 'd': case 'b': case 'n': case 'p': case 'v':
            if (bench_parse_count(optarg, &v) || !v)
                return -1;
            if (ch == 'd') o->dim = (uint32_t)v;
            if (ch == 'b') o->batch = (uint32_t)v;
            if (ch == 'n') o->conns = (uint32_t)v;
            if (ch == 'p') o->depth = (uint32_t)v;
            if (ch == 'v') o->vocab = v;
            break;
        case 'z': o->zipf = atof(optarg); break;
        case 's': o->seconds = atof(optarg); break;
        case 'l': o->load = 1; break;
        case 'P': o->server_pid = atoi(optarg); break;
        case 'j': o->json = 1; break;
        default: return -1;
        }
    }
    if (!have_addr || (strcmp(o->op, "lookup") && strcmp(o->op, "push")))
        return -1;
    return 0;
}

/* The figures of a run: the log line, and the JSON line with --json. */
static void report(const opts_t *o, bench_lat_t *all, uint64_t batches,
                   double el, double cpu0, double cpu1)
{
    bench_lat_sort(all);
    double emb = (double)batches * o->batch / el;
    double mb = emb * o->dim * 4 / 1e6;
    double p50 = bench_lat_pct(all, 0.5), p99 = bench_lat_pct(all, 0.99),
           p999 = bench_lat_pct(all, 0.999);
    double cpu_per_m = cpu0 >= 0 && cpu1 >= 0 && batches
                           ? (cpu1 - cpu0) / ((double)batches * o->batch / 1e6)
                           : -1;
    bench_log(PROG,
              "%s dim=%u batch=%u conns=%u depth=%u vocab=%llu: %.3f M emb/s, "
              "%.0f MB/s, p50 %.1f us p99 %.1f us p999 %.1f us, server %.3f "
              "CPU-s per M emb",
              o->op, o->dim, o->batch, o->conns, o->depth,
              (unsigned long long)o->vocab, emb / 1e6, mb, p50, p99, p999,
              cpu_per_m);
    if (o->json)
        printf("{\"bench\":\"redis\",\"op\":\"%s\",\"dim\":%u,\"batch\":%u,"
               "\"conns\":%u,\"depth\":%u,\"vocab\":%llu,\"zipf\":%g,"
               "\"seconds\":%.3f,\"emb_per_s\":%.1f,\"mb_per_s\":%.2f,"
               "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
               "\"server_cpu_s_per_m\":%.4f,\"blas_core\":\"%s\"}\n",
               o->op, o->dim, o->batch, o->conns, o->depth,
               (unsigned long long)o->vocab, o->zipf, el, emb, mb, p50, p99,
               p999, cpu_per_m, bench_blas_core());
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o)) {
        usage();
        return 2;
    }
    bench_log(PROG, "OpenBLAS core: %s", bench_blas_core());
    if (o.load && load_rows(&o))
        return 1;
    bench_log(PROG, "%s: %u connection(s), depth %u, batch %u, %.1f s", o.op,
              o.conns, o.depth, o.batch, o.seconds);
    worker_t *ws = calloc(o.conns, sizeof *ws);
    if (!ws)
        return 1;
    double cpu0 = o.server_pid ? bench_proc_cpu_seconds(o.server_pid) : -1;
    double t0 = bench_now();
    for (uint32_t i = 0; i < o.conns; i++) {
        ws[i] = (worker_t){.o = &o, .idx = i, .t_end = t0 + o.seconds};
        pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
    }
    uint64_t batches = 0;
    int rc = 0;
    bench_lat_t all = {0};
    for (uint32_t i = 0; i < o.conns; i++) {
        pthread_join(ws[i].th, NULL);
        rc |= ws[i].rc;
        batches += ws[i].batches;
        bench_lat_merge(&all, &ws[i].lat);
        bench_lat_free(&ws[i].lat);
    }
    double el = bench_now() - t0;
    double cpu1 = o.server_pid ? bench_proc_cpu_seconds(o.server_pid) : -1;
    free(ws);
    if (!rc)
        report(&o, &all, batches, el, cpu0, cpu1);
    bench_lat_free(&all);
    fflush(stdout);
    return rc ? 1 : 0;
}
