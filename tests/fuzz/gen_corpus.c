/* gen_corpus.c -- writes the seed corpus of the fuzz targets.
 *
 *   fuzz_gen_corpus OUTDIR    # writes OUTDIR/fuzz_rpc and OUTDIR/fuzz_frame
 *
 * Every seed is a valid conversation (or a deliberate, typical mistake):
 * each operation of proto/cqrps.proto with realistic arguments, whole
 * sessions (create, push, lookup, cluster, drop), each authentication
 * mode with right and wrong tokens, and the errors a server must answer
 * (unknown table, wrong gradient size, NaN, bad offsets, limits). The
 * output is deterministic: tests/fuzz/corpus is this program's output,
 * and the test fuzz_corpus_current checks that it still is.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cqrps.pb-c.h"
#include "net/frame.h"
#include "fuzz_common.h"

typedef Cqrps__V1__Request Request;

static const char *outdir;

/* One seed being built: control bytes, then frames. */
static cqr_buf_t seed;
static uint64_t next_id;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_gen_corpus: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void put(const void *p, size_t n)
{
    if (cqr_buf_reserve(&seed, n) != 0)
        die("out of memory");
    memcpy(seed.data + seed.len, p, n);
    seed.len += n;
}

static void begin(uint8_t control)
{
    seed.len = 0;
    next_id = 1;
    put(&control, 1);
}

static void save(const char *target, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(seed.data, 1, seed.len, f) != seed.len ||
        fclose(f) != 0)
        die(path);
}

static void frame(Request *q)
{
    q->id = next_id++;
    size_t mark;
    if (cqr_frame_begin(&seed, &mark) != 0)
        die("out of memory");
    size_t n = cqrps__v1__request__get_packed_size(q);
    if (cqr_buf_reserve(&seed, n) != 0)
        die("out of memory");
    cqrps__v1__request__pack(q, seed.data + seed.len);
    seed.len += n;
    cqr_frame_end(&seed, mark);
}

/* ---- requests ------------------------------------------------------------ */

static void hello(const char *tok, const char *adm)
{
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = 1;
    if (tok) {
        h.token.data = (uint8_t *)tok;
        h.token.len = strlen(tok);
    }
    if (adm) {
        h.admin_token.data = (uint8_t *)adm;
        h.admin_token.len = strlen(adm);
    }
    h.client_name = (char *)"corpus";
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    q.hello = &h;
    frame(&q);
}

static void create(const char *name, Cqrps__V1__TableKind kind, uint32_t dim,
                   uint32_t chunks, uint32_t rows, Cqrps__V1__Optimizer opt,
                   uint64_t every)
{
    Cqrps__V1__OptimizerConfig oc = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    oc.kind = opt;
    oc.lr = 0.05f;
    oc.weight_decay = opt == CQRPS__V1__OPTIMIZER__ADAM ? 0.01f : 0.0f;
    Cqrps__V1__ClusterSchedule cs = CQRPS__V1__CLUSTER_SCHEDULE__INIT;
    cs.every_examples = every;
    cs.max_phases = every ? 2 : 0;
    Cqrps__V1__ClusterConfig cc = CQRPS__V1__CLUSTER_CONFIG__INIT;
    cc.iters = 5;
    cc.sample_per_centroid = 20;
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = kind;
    tc.dim = dim;
    tc.chunks = chunks;
    tc.rows = rows;
    tc.seed = 42;
    tc.optimizer = &oc;
    tc.schedule = &cs;
    tc.cluster = &cc;
    tc.init_scale = 0.25f;
    Cqrps__V1__CreateTable m = CQRPS__V1__CREATE_TABLE__INIT;
    m.name = (char *)name;
    m.config = &tc;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CREATE_TABLE;
    q.create_table = &m;
    frame(&q);
}

static void ids_of(uint64_t *ids, size_t n, uint64_t base)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = base + i * 7919u;
}

static void lookup(const char *table, size_t n, size_t nbags, int mean)
{
    uint64_t ids[64];
    uint32_t offs[16];
    ids_of(ids, n, 3);
    for (size_t b = 0; b < nbags; b++)
        offs[b] = (uint32_t)(b * n / nbags);
    Cqrps__V1__Lookup m = CQRPS__V1__LOOKUP__INIT;
    m.table = (char *)table;
    m.ids = ids;
    m.n_ids = n;
    m.offsets = nbags ? offs : NULL;
    m.n_offsets = nbags;
    m.pooling = mean ? CQRPS__V1__POOLING__MEAN : CQRPS__V1__POOLING__SUM;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    q.lookup = &m;
    frame(&q);
}

/* grads_scale: 0 for NaN gradients; extra: bytes added to the gradient
 * size (a wrong size). */
static void push(const char *table, size_t n, size_t nbags, uint32_t dim,
                 float grads_scale, int extra)
{
    uint64_t ids[64];
    uint32_t offs[16];
    float g[64 * 64 + 1];
    ids_of(ids, n, 3);
    for (size_t b = 0; b < nbags; b++)
        offs[b] = (uint32_t)(b * n / nbags);
    size_t rows = nbags ? nbags : n;
    for (size_t i = 0; i < rows * dim + 1; i++)
        g[i] = grads_scale == 0 ? NAN
                                : grads_scale * (float)((int)(i % 17) - 8);
    Cqrps__V1__Push m = CQRPS__V1__PUSH__INIT;
    m.table = (char *)table;
    m.ids = ids;
    m.n_ids = n;
    m.offsets = nbags ? offs : NULL;
    m.n_offsets = nbags;
    m.grads.data = (uint8_t *)g;
    m.grads.len = rows * dim * sizeof(float) + (size_t)extra;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    q.push = &m;
    frame(&q);
}

static void simple(Cqrps__V1__Request__OpCase op, const char *table)
{
    Request q = CQRPS__V1__REQUEST__INIT;
    Cqrps__V1__DropTable drop = CQRPS__V1__DROP_TABLE__INIT;
    Cqrps__V1__ListTables list = CQRPS__V1__LIST_TABLES__INIT;
    Cqrps__V1__DescribeTable desc = CQRPS__V1__DESCRIBE_TABLE__INIT;
    Cqrps__V1__Cluster cl = CQRPS__V1__CLUSTER__INIT;
    Cqrps__V1__ClusterStatus cs = CQRPS__V1__CLUSTER_STATUS__INIT;
    Cqrps__V1__Stats st = CQRPS__V1__STATS__INIT;
    Cqrps__V1__Digest dg = CQRPS__V1__DIGEST__INIT;
    Cqrps__V1__Checkpoint ck = CQRPS__V1__CHECKPOINT__INIT;
    Cqrps__V1__ListCheckpoints lc = CQRPS__V1__LIST_CHECKPOINTS__INIT;
    q.op_case = op;
    switch (op) {
    case CQRPS__V1__REQUEST__OP_DROP_TABLE:
        drop.name = (char *)table;
        q.drop_table = &drop;
        break;
    case CQRPS__V1__REQUEST__OP_LIST_TABLES:
        q.list_tables = &list;
        break;
    case CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE:
        desc.name = (char *)table;
        q.describe_table = &desc;
        break;
    case CQRPS__V1__REQUEST__OP_CLUSTER:
        cl.table = (char *)table;
        q.cluster = &cl;
        break;
    case CQRPS__V1__REQUEST__OP_CLUSTER_STATUS:
        cs.table = (char *)table;
        q.cluster_status = &cs;
        break;
    case CQRPS__V1__REQUEST__OP_STATS:
        q.stats = &st;
        break;
    case CQRPS__V1__REQUEST__OP_DIGEST:
        dg.table = (char *)table;
        q.digest = &dg;
        break;
    case CQRPS__V1__REQUEST__OP_CHECKPOINT:
        q.checkpoint = &ck;
        break;
    case CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS:
        q.list_checkpoints = &lc;
        break;
    default:
        break;
    }
    frame(&q);
}

/* ---- fuzz_rpc seeds ------------------------------------------------------ */

/* fuzz_rpc seeds: a whole training session per kind and a scheduled
 * cqr table whose pushes start phases. */
static void rpc_session_seeds(void)
{
    const char *T = "fuzz_rpc";
    static const struct {
        const char *name;
        Cqrps__V1__TableKind kind;
        uint32_t chunks, rows;
        Cqrps__V1__Optimizer opt;
    } kinds[] = {
        {"full", CQRPS__V1__TABLE_KIND__FULL, 0, 0,
         CQRPS__V1__OPTIMIZER__ADAM},
        {"hash", CQRPS__V1__TABLE_KIND__HASH, 0, 64,
         CQRPS__V1__OPTIMIZER__SGD},
        {"ce", CQRPS__V1__TABLE_KIND__CE, 4, 32,
         CQRPS__V1__OPTIMIZER__ADAGRAD},
        {"cqr", CQRPS__V1__TABLE_KIND__CQR, 4, 32,
         CQRPS__V1__OPTIMIZER__ADAM},
    };
    char name[64];

    /* A whole training session per kind, without authentication. */
    for (size_t k = 0; k < 4; k++) {
        begin(FUZZ_AUTH_NONE);
        create("t", kinds[k].kind, 16, kinds[k].chunks, kinds[k].rows,
               kinds[k].opt, 0);
        push("t", 32, 0, 16, 0.01f, 0);
        lookup("t", 32, 0, 0);
        push("t", 32, 4, 16, 0.01f, 0);
        lookup("t", 32, 4, 1);
        simple(CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE, "t");
        simple(CQRPS__V1__REQUEST__OP_DIGEST, "t");
        simple(CQRPS__V1__REQUEST__OP_CLUSTER, "t");
        simple(CQRPS__V1__REQUEST__OP_CLUSTER_STATUS, "t");
        simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
        simple(CQRPS__V1__REQUEST__OP_STATS, NULL);
        simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
        snprintf(name, sizeof name, "session-%s", kinds[k].name);
        save(T, name);
    }

    /* A scheduled cqr table: pushes start phases by themselves. */
    begin(FUZZ_AUTH_NONE);
    create("sched", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16,
           CQRPS__V1__OPTIMIZER__SGD, 64);
    for (int i = 0; i < 4; i++)
        push("sched", 64, 0, 8, 0.02f, 0);
    simple(CQRPS__V1__REQUEST__OP_CLUSTER_STATUS, "sched");
    lookup("sched", 64, 0, 0);
    save(T, "session-scheduled");
}

/* fuzz_rpc seeds: every operation alone, on an empty server. */
static void rpc_op_seeds(void)
{
    const char *T = "fuzz_rpc";
    char name[64];

    /* Every operation alone, on an empty server. */
    static const struct {
        Cqrps__V1__Request__OpCase op;
        const char *name;
    } ops[] = {
        {CQRPS__V1__REQUEST__OP_DROP_TABLE, "drop"},
        {CQRPS__V1__REQUEST__OP_LIST_TABLES, "list"},
        {CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE, "describe"},
        {CQRPS__V1__REQUEST__OP_CLUSTER, "cluster"},
        {CQRPS__V1__REQUEST__OP_CLUSTER_STATUS, "cluster-status"},
        {CQRPS__V1__REQUEST__OP_STATS, "stats"},
        {CQRPS__V1__REQUEST__OP_DIGEST, "digest"},
        {CQRPS__V1__REQUEST__OP_CHECKPOINT, "checkpoint"},
        {CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS, "list-checkpoints"},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        begin(FUZZ_AUTH_NONE);
        simple(ops[i].op, "t");
        snprintf(name, sizeof name, "op-%s", ops[i].name);
        save(T, name);
    }
    begin(FUZZ_AUTH_NONE);
    hello(NULL, NULL);
    save(T, "op-hello");
    begin(FUZZ_AUTH_NONE);
    create("c", CQRPS__V1__TABLE_KIND__CQR, 32, 4, 64,
           CQRPS__V1__OPTIMIZER__ADAM, 0);
    save(T, "op-create");
}

/* fuzz_rpc seeds: each authentication mode, right and wrong tokens. */
static void rpc_auth_seeds(void)
{
    const char *T = "fuzz_rpc";

    /* Authentication, each mode. */
    begin(FUZZ_AUTH_BOTH);
    hello(FUZZ_TOKEN, FUZZ_ADMIN);
    create("t", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    push("t", 8, 0, 8, 0.5f, 0);
    lookup("t", 8, 0, 0);
    simple(CQRPS__V1__REQUEST__OP_CHECKPOINT, NULL);
    simple(CQRPS__V1__REQUEST__OP_LIST_CHECKPOINTS, NULL);
    simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
    save(T, "auth-both-admin");
    begin(FUZZ_AUTH_BOTH);
    hello(FUZZ_TOKEN, NULL);
    create("t", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    simple(CQRPS__V1__REQUEST__OP_CLUSTER, "t");
    simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
    lookup("t", 4, 0, 0);
    save(T, "auth-both-data-only");
    begin(FUZZ_AUTH_BOTH);
    simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
    save(T, "auth-before-hello");
    begin(FUZZ_AUTH_BOTH);
    hello("fuzz-data-tokem", NULL);
    simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
    save(T, "auth-wrong-token");
    begin(FUZZ_AUTH_BOTH);
    hello(FUZZ_TOKEN, "fuzz-admin-tokem");
    save(T, "auth-wrong-admin");
    begin(FUZZ_AUTH_ADMIN);
    create("t", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
    hello(NULL, FUZZ_ADMIN);
    simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
    save(T, "auth-admin-only");
    begin(FUZZ_AUTH_DATA);
    hello(FUZZ_TOKEN, NULL);
    create("t", CQRPS__V1__TABLE_KIND__HASH, 4, 0, 8,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    simple(CQRPS__V1__REQUEST__OP_DROP_TABLE, "t");
    hello("nope", NULL);
    simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
    save(T, "auth-data-rehello");
}

/* fuzz_rpc seeds: errors, limits and malformed frames. */
static void rpc_error_seeds(void)
{
    const char *T = "fuzz_rpc";
    char name[64];

    /* The errors a server must answer (and keep the connection). */
    begin(FUZZ_AUTH_NONE);
    create("e", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    lookup("missing", 4, 0, 0);
    push("e", 4, 0, 8, 0.1f, 4);   /* gradients one float too long */
    push("e", 4, 0, 8, 0.0f, 0);   /* NaN */
    push("e", 4, 0, 4, 0.1f, 0);   /* wrong dim */
    push("e", 0, 0, 8, 0.1f, 0);   /* no IDs, so no gradients (NULL) */
    lookup("e", 16, 3, 0);
    create("e", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0); /* exists */
    create("bad name!", CQRPS__V1__TABLE_KIND__HASH, 8, 0, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0);
    create("big", CQRPS__V1__TABLE_KIND__HASH, 65, 0, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0); /* over max-dim */
    create("rows", CQRPS__V1__TABLE_KIND__CQR, 8, 2, 65,
           CQRPS__V1__OPTIMIZER__SGD, 0); /* over max-rows */
    create("chunks", CQRPS__V1__TABLE_KIND__CE, 8, 3, 16,
           CQRPS__V1__OPTIMIZER__SGD, 0); /* 3 does not divide 8 */
    simple(CQRPS__V1__REQUEST__OP_CLUSTER, "e"); /* not a cqr table */
    save(T, "errors");

    /* Memory: a full table grows with every new ID. */
    begin(FUZZ_AUTH_NONE);
    create("f", CQRPS__V1__TABLE_KIND__FULL, 64, 0, 0,
           CQRPS__V1__OPTIMIZER__ADAM, 0);
    push("f", 64, 0, 64, 0.01f, 0);
    simple(CQRPS__V1__REQUEST__OP_STATS, NULL);
    save(T, "full-growth");

    /* Many tables: the table limit. */
    begin(FUZZ_AUTH_NONE);
    for (int i = 0; i < 9; i++) {
        snprintf(name, sizeof name, "t%d", i);
        create(name, CQRPS__V1__TABLE_KIND__HASH, 4, 0, 4,
               CQRPS__V1__OPTIMIZER__SGD, 0);
    }
    simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
    save(T, "table-limit");

    /* Not a request at all, and an empty body. */
    begin(FUZZ_AUTH_NONE);
    {
        uint8_t junk[] = {0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f};
        put(junk, sizeof junk);
    }
    save(T, "malformed");
    begin(FUZZ_AUTH_NONE);
    {
        uint8_t empty[] = {0, 0, 0, 0};
        put(empty, sizeof empty);
    }
    simple(CQRPS__V1__REQUEST__OP_LIST_TABLES, NULL);
    save(T, "empty-body");
}

static void rpc_seeds(void)
{
    rpc_session_seeds();
    rpc_op_seeds();
    rpc_auth_seeds();
    rpc_error_seeds();
}

/* ---- fuzz_frame seeds ---------------------------------------------------- */

static void frame_seeds(void)
{
    const char *T = "fuzz_frame";
    /* Real conversations, with a 4 KiB limit and a few read patterns. */
    for (int pattern = 0; pattern < 3; pattern++) {
        begin(255);
        uint8_t cut = (uint8_t)(pattern * 77);
        put(&cut, 1);
        create("t", CQRPS__V1__TABLE_KIND__CQR, 16, 4, 32,
               CQRPS__V1__OPTIMIZER__ADAM, 0);
        push("t", 32, 0, 16, 0.01f, 0);
        lookup("t", 32, 4, 1);
        simple(CQRPS__V1__REQUEST__OP_STATS, NULL);
        char name[32];
        snprintf(name, sizeof name, "conversation-%d", pattern);
        save(T, name);
    }
    /* Empty bodies back to back. */
    begin(0);
    put("\1", 1);
    for (int i = 0; i < 8; i++)
        put("\0\0\0\0", 4);
    save(T, "empty-bodies");
    /* A frame over a 16-byte limit after a good one. */
    begin(0);
    put("\2", 1);
    put("\0\0\0\3abc", 7);
    put("\0\0\1\0", 4);
    put("0123456789", 10);
    save(T, "oversize");
    /* A header split, then a truncated body. */
    begin(3);
    put("\5", 1);
    put("\0\0\0\x20", 4);
    put("partial body", 12);
    save(T, "truncated");
    /* A length near 4 GiB. */
    begin(9);
    put("\7", 1);
    put("\xff\xff\xff\xfe", 4);
    save(T, "huge-length");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    char path[4096];
    mkdir(outdir, 0755);
    snprintf(path, sizeof path, "%s/fuzz_rpc", outdir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path);
    snprintf(path, sizeof path, "%s/fuzz_frame", outdir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path);
    cqr_buf_init(&seed);
    rpc_seeds();
    frame_seeds();
    cqr_buf_free(&seed);
    return 0;
}
