/* test_server_compact.c -- compactions of cqr tables through the server
 * (Compact, CreateTable's `compact`, issue 19), end to end: real servers
 * on 127.0.0.1:0 with a temporary --data-dir (RocksDB), through libcqrps
 * and the CLI.
 *
 * - Compact over the wire: every ID moves into the static set; lookups of
 *   known and never-seen IDs and the digest stay bit for bit as they
 *   were; describe says so; the log has the start and done lines.
 * - Checkpoint and restart: still compacted, same digest, same lookups.
 * - Refusals: a full table and an eviction table (UNSUPPORTED), an
 *   unknown table (NOT_FOUND), no admin token (PERMISSION_DENIED), and a
 *   `compact` table of the wrong kind at create (INVALID_ARGUMENT).
 * - A compaction while another connection pushes and looks up: both
 *   finish, and the compacted table ends with the digest of an
 *   uncompacted twin that got the same pushes (none is lost).
 * - SIGTERM during a compaction: the server stops it (nothing changes)
 *   and exits 0; the restarted server has the table as it was.
 * - A table created with `compact` compacts itself after its first phase
 *   and keeps the option across a restart.
 * - A `compact` table with a schedule: no scheduled phase is refused
 *   because of the compaction; later phases rebuild the static set.
 * - A sharded client compacts every shard (counts summed).
 * - `cqrps compact` prints the reply and exits 1 with the server's
 *   message on a refusal.
 */
#define _GNU_SOURCE
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"
#include "check_main.h"
#include "server_util.h"

#define NKNOWN 4000u   /* IDs pushed before a compaction */
#define RANGE 1000000u /* they are drawn from [0, RANGE) */

/* A cqr table: 2 chunks of k = 256 (fbits 16: a never-seen ID takes a
 * static slot's pointers with probability 2^-16). */
static void make_cqr(cqrps_client_t *c, const char *name, int compact,
                     uint32_t evict)
{
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM);
    cfg.rows = 256;
    cfg.chunks = 2;
    cfg.cluster_iters = 5;
    cfg.compact = compact;
    cfg.evict_after_phases = evict;
    ck_assert_msg(cqrps_create_table(c, name, &cfg, NULL) == 0,
                  "create %s: %s", name, cqrps_last_error(c));
}

/* Pushes ids[0..n) to table in batches of 500 with gradients from *st. */
static void push_ids(cqrps_client_t *c, const char *table,
                     const uint64_t *ids, size_t n, uint64_t *st)
{
    static float g[500 * DIM];
    for (size_t i = 0; i < n; i += 500) {
        size_t m = n - i < 500 ? n - i : 500;
        tu_fill(g, m * DIM, st);
        ck_assert_msg(cqrps_push(c, table, ids + i, g, m) == 0, "push %s: %s",
                      table, cqrps_last_error(c));
    }
}

/* n distinct-enough random IDs of [0, RANGE) (duplicates are fine). */
static void random_ids(uint64_t *ids, size_t n, uint64_t *st)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = tu_rand(st) % RANGE;
}

static float *lookup_all(cqrps_client_t *c, const char *table,
                         const uint64_t *ids, size_t n)
{
    float *v = malloc(n * DIM * sizeof *v);
    ck_assert_ptr_nonnull(v);
    ck_assert_msg(cqrps_lookup(c, table, ids, n, v) == 0, "lookup %s: %s",
                  table, cqrps_last_error(c));
    return v;
}

static void describe(cqrps_client_t *c, const char *table,
                     cqrps_table_info_t *info)
{
    ck_assert_msg(cqrps_describe_table(c, table, info) == 0, "describe %s: %s",
                  table, cqrps_last_error(c));
}

/* The server's Stats counter `name` (-1 if absent). */
static int64_t stat_count(cqrps_client_t *c, const char *name)
{
    cqrps_stats_t st;
    ck_assert_int_eq(cqrps_stats(c, &st), 0);
    int64_t v = -1;
    for (size_t i = 0; i < st.ncounters; i++)
        if (strcmp(st.counters[i].name, name) == 0)
            v = (int64_t)st.counters[i].count;
    cqrps_stats_free(&st);
    return v;
}

START_TEST(test_compact_restart)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    make_cqr(c, "c", 0, 0);
    uint64_t st = 7;
    static uint64_t known[NKNOWN], never[NKNOWN];
    random_ids(known, NKNOWN, &st);
    for (size_t i = 0; i < NKNOWN; i++)
        never[i] = RANGE + tu_rand(&st) % RANGE; /* never pushed */
    push_ids(c, "c", known, NKNOWN, &st);
    cluster(c, "c"); /* learned pointers, then IDs new since the phase */
    static uint64_t later[1000];
    random_ids(later, 1000, &st);
    push_ids(c, "c", later, 1000, &st);

    cqrps_table_info_t before, after;
    describe(c, "c", &before);
    ck_assert(!before.compacted && before.static_ids == 0);
    char d0[17], d1[17];
    ck_assert_int_eq(cqrps_digest(c, "c", d0), 0);
    float *k0 = lookup_all(c, "c", known, NKNOWN);
    float *l0 = lookup_all(c, "c", later, 1000);

    cqrps_compact_info_t ci;
    ck_assert_msg(cqrps_compact(c, "c", &ci) == 0, "compact: %s",
                  cqrps_last_error(c));
    ck_assert_uint_eq(ci.moved_ids, before.known_ids);
    ck_assert_uint_eq(ci.known_ids, before.known_ids);
    ck_assert_uint_eq(ci.static_ids, before.known_ids);
    ck_assert(ci.index_bytes < before.index_bytes);
    ck_assert(ci.seconds >= 0);
    describe(c, "c", &after);
    ck_assert(after.compacted && !after.compacting);
    ck_assert_uint_eq(after.static_ids, before.known_ids);
    ck_assert_uint_eq(after.known_ids, before.known_ids);
    ck_assert_uint_eq(after.index_bytes, ci.index_bytes);
    ck_assert_int_eq(cqrps_digest(c, "c", d1), 0);
    ck_assert_str_eq(d0, d1);
    float *k1 = lookup_all(c, "c", known, NKNOWN);
    float *l1 = lookup_all(c, "c", later, 1000);
    ck_assert(tu_same(k1, k0, NKNOWN * DIM, "known after compact"));
    ck_assert(tu_same(l1, l0, 1000 * DIM, "later after compact"));
    float *n1 = lookup_all(c, "c", never, NKNOWN);
    ck_assert(log_has(&s, "compaction of c started"));
    ck_assert_int_eq(stat_count(c, "compactions_done"), 1);
    ck_assert_int_eq(stat_count(c, "compactions_running"), 0);
    ck_assert_int_eq(stat_count(c, "compactions_failed"), 0);
    ck_assert(log_has(&s, "compaction of c done: "));

    /* Checkpoint, restart: the same table, compacted. */
    ck_assert_int_eq(cqrps_checkpoint(c, NULL), 0);
    cqrps_close(c);
    tu_server_stop(&s);
    start(&s, NULL);
    c = tu_connect(s.addr);
    cqrps_table_info_t restored;
    describe(c, "c", &restored);
    ck_assert(restored.compacted);
    ck_assert_uint_eq(restored.static_ids, after.static_ids);
    ck_assert_uint_eq(restored.known_ids, after.known_ids);
    ck_assert_int_eq(cqrps_digest(c, "c", d1), 0);
    ck_assert_str_eq(d0, d1);
    float *k2 = lookup_all(c, "c", known, NKNOWN);
    float *n2 = lookup_all(c, "c", never, NKNOWN);
    ck_assert(tu_same(k2, k0, NKNOWN * DIM, "known after restart"));
    ck_assert(tu_same(n2, n1, NKNOWN * DIM, "never-seen after restart"));
    free(k0), free(l0), free(k1), free(l1), free(n1), free(k2), free(n2);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

START_TEST(test_refusals)
{
    make_dir();
    char adm[128];
    snprintf(adm, sizeof adm, "%s/admin.token", dir);
    FILE *f = fopen(adm, "w");
    ck_assert_ptr_nonnull(f);
    fputs("s3cret-admin\n", f);
    fclose(f);
    ck_assert_int_eq(chmod(adm, 0600), 0);
    const char *extra[] = {"--admin-token-file", adm, NULL};
    cqr_test_server_t s;
    start(&s, extra);
    cqrps_options_t o;
    cqrps_options_init(&o);
    o.admin_token = "s3cret-admin";
    o.admin_token_len = strlen("s3cret-admin");
    cqrps_client_t *c = NULL;
    ck_assert_int_eq(cqrps_connect(s.addr, &o, &c), 0);
    tables_t t = {0};
    create(c, &t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    make_cqr(c, "evict", 0, 2);
    make_cqr(c, "ok", 0, 0);

    ck_assert_int_eq(cqrps_compact(c, "full", NULL), CQRPS_EUNSUPPORTED);
    ck_assert(strstr(cqrps_last_error(c), "only cqr tables") != NULL);
    ck_assert_int_eq(cqrps_compact(c, "evict", NULL), CQRPS_EUNSUPPORTED);
    ck_assert(strstr(cqrps_last_error(c), "evict") != NULL);
    ck_assert_int_eq(cqrps_compact(c, "nosuch", NULL), CQRPS_ENOTFOUND);
    /* `compact` where it cannot apply: refused at create. */
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAM, DIM);
    cfg.compact = 1;
    ck_assert_int_eq(cqrps_create_table(c, "fullc", &cfg, NULL),
                     CQRPS_EINVAL);
    ck_assert(strstr(cqrps_last_error(c), "compact") != NULL);
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM);
    cfg.compact = 1;
    cfg.evict_after_phases = 3;
    ck_assert_int_eq(cqrps_create_table(c, "evc", &cfg, NULL), CQRPS_EINVAL);
    cqrps_close(c);

    /* Without the admin token: refused, and nothing happened. */
    c = tu_connect(s.addr);
    ck_assert_int_eq(cqrps_compact(c, "ok", NULL), CQRPS_EPERM);
    ck_assert(strstr(cqrps_last_error(c), "admin") != NULL);
    cqrps_table_info_t info;
    describe(c, "ok", &info);
    ck_assert(!info.compacted);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* The compaction's own connection, on a thread. */
typedef struct compactor {
    const char *addr;
    const char *table;
    int rc;
    cqrps_compact_info_t info;
    int done; /* under mu */
    pthread_mutex_t mu;
} compactor_t;

static void *compact_main(void *arg)
{
    compactor_t *k = arg;
    cqrps_client_t *c = NULL;
    k->rc = cqrps_connect(k->addr, NULL, &c);
    if (k->rc == 0)
        k->rc = cqrps_compact(c, k->table, &k->info);
    cqrps_close(c);
    pthread_mutex_lock(&k->mu);
    k->done = 1;
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

static int compactor_done(compactor_t *k)
{
    pthread_mutex_lock(&k->mu);
    int d = k->done;
    pthread_mutex_unlock(&k->mu);
    return d;
}

START_TEST(test_concurrent)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    make_cqr(c, "a", 0, 0);
    make_cqr(c, "b", 0, 0); /* the uncompacted twin */
    enum { N = 60000 };
    uint64_t *ids = malloc(N * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    uint64_t st = 11, sa = 5, sb = 5;
    random_ids(ids, N, &st);
    push_ids(c, "a", ids, N, &sa);
    push_ids(c, "b", ids, N, &sb);
    cqrps_table_info_t ia;
    describe(c, "a", &ia);

    compactor_t k = {.addr = s.addr, .table = "a"};
    pthread_mutex_init(&k.mu, NULL);
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, compact_main, &k), 0);
    /* Pushes of known IDs to both tables and lookups of a, until the
     * compaction has answered (at least 20 rounds either way). */
    static float v[500 * DIM];
    size_t rounds = 0;
    while (rounds < 20 || !compactor_done(&k)) {
        const uint64_t *b = ids + (tu_rand(&st) % (N / 500)) * 500;
        push_ids(c, "a", b, 500, &sa);
        push_ids(c, "b", b, 500, &sb);
        ck_assert_int_eq(cqrps_lookup(c, "a", b, 500, v), 0);
        rounds++;
    }
    pthread_join(tid, NULL);
    pthread_mutex_destroy(&k.mu);
    ck_assert_msg(k.rc == 0, "compact rc=%d", k.rc);
    fprintf(stderr, "concurrent: compaction of %" PRIu64 " IDs took %.3f s; "
            "%zu rounds of pushes and lookups\n", k.info.moved_ids,
            k.info.seconds, rounds);
    ck_assert_uint_eq(k.info.known_ids, ia.known_ids);
    ck_assert_uint_eq(k.info.static_ids, ia.known_ids);

    char da[17], db[17];
    ck_assert_int_eq(cqrps_digest(c, "a", da), 0);
    ck_assert_int_eq(cqrps_digest(c, "b", db), 0);
    ck_assert_str_eq(da, db);
    float *va = lookup_all(c, "a", ids, 5000);
    float *vb = lookup_all(c, "b", ids, 5000);
    ck_assert(tu_same(va, vb, 5000 * DIM, "compacted vs twin"));
    free(va);
    free(vb);
    free(ids);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* SIGTERM while a compaction runs (when it is still running by then):
 * the compaction stops (nothing changes), the server exits 0, and its
 * exit checkpoint holds the table as it was; a compaction that was over
 * is in the checkpoint. */
START_TEST(test_shutdown_during)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    make_cqr(c, "big", 0, 0);
    enum { N = 400000 };
    uint64_t *ids = malloc(N * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    for (size_t i = 0; i < N; i++)
        ids[i] = i * 7919u;
    uint64_t st = 13;
    push_ids(c, "big", ids, N, &st);
    free(ids);
    char d0[17], d1[17];
    ck_assert_int_eq(cqrps_digest(c, "big", d0), 0);

    compactor_t k = {.addr = s.addr, .table = "big"};
    pthread_mutex_init(&k.mu, NULL);
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, compact_main, &k), 0);
    /* Until it runs (or is over already: then the stop is plain). */
    cqrps_table_info_t info;
    uint64_t t0 = tu_now_ms();
    do {
        describe(c, "big", &info);
    } while (!info.compacting && !info.compacted && !compactor_done(&k) &&
             tu_now_ms() - t0 < 30000);
    fprintf(stderr, "shutdown_during: SIGTERM %s the compaction\n",
            info.compacting ? "during" : "after");
    cqrps_close(c);
    tu_server_stop(&s); /* exit status 0, clean log */
    pthread_join(tid, NULL);
    pthread_mutex_destroy(&k.mu);
    /* A compaction the stop caught is stopped (CANCELLED, nothing
     * changed); one past its last stage by then completes and is in the
     * exit checkpoint (its reply may be lost when the connections close
     * first: the client then sees the connection closed). */
    fprintf(stderr, "shutdown_during: compact rc=%d\n", k.rc);
    if (k.rc == 0)
        ck_assert_uint_eq(k.info.static_ids, N);
    else
        ck_assert_msg(k.rc == CQRPS_ECANCELED || k.rc == CQRPS_ECONN ||
                          k.rc == CQRPS_ESHUTDOWN,
                      "compact rc=%d", k.rc);

    start(&s, NULL);
    c = tu_connect(s.addr);
    describe(c, "big", &info);
    if (k.rc == 0)
        ck_assert(info.compacted);
    ck_assert_uint_eq(info.static_ids, info.compacted ? N : 0);
    ck_assert_uint_eq(info.known_ids, N);
    ck_assert_int_eq(cqrps_digest(c, "big", d1), 0);
    ck_assert_str_eq(d0, d1);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* Waits (bounded) until describe says the table is compacted. */
static void wait_compacted(cqrps_client_t *c, const char *table,
                           cqrps_table_info_t *info)
{
    uint64_t t0 = tu_now_ms();
    for (;;) {
        describe(c, table, info);
        if (info->compacted && !info->compacting)
            return;
        ck_assert_msg(tu_now_ms() - t0 < 60000, "%s not compacted after its "
                      "phase", table);
        tu_sleep_ms(20);
    }
}

START_TEST(test_compact_option)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    make_cqr(c, "p", 1, 0);
    cqrps_table_info_t info;
    describe(c, "p", &info);
    ck_assert(info.config.compact && !info.compacted);
    uint64_t st = 3;
    static uint64_t ids[NKNOWN];
    random_ids(ids, NKNOWN, &st);
    push_ids(c, "p", ids, NKNOWN, &st);
    describe(c, "p", &info);
    ck_assert(!info.compacted); /* nothing before the first phase */
    cluster(c, "p");
    wait_compacted(c, "p", &info);
    ck_assert_uint_eq(info.static_ids, info.known_ids);
    ck_assert(log_has(&s, "compaction of p started reason=first_phase"));
    char d0[17], d1[17];
    ck_assert_int_eq(cqrps_digest(c, "p", d0), 0);
    float *v0 = lookup_all(c, "p", ids, NKNOWN);

    /* Restart: the option and the compacted state stay. */
    ck_assert_int_eq(cqrps_checkpoint(c, NULL), 0);
    cqrps_close(c);
    tu_server_stop(&s);
    start(&s, NULL);
    c = tu_connect(s.addr);
    cqrps_table_info_t r;
    describe(c, "p", &r);
    ck_assert(r.config.compact && r.compacted);
    ck_assert_uint_eq(r.static_ids, info.static_ids);
    ck_assert_int_eq(cqrps_digest(c, "p", d1), 0);
    ck_assert_str_eq(d0, d1);
    float *v1 = lookup_all(c, "p", ids, NKNOWN);
    ck_assert(tu_same(v1, v0, NKNOWN * DIM, "compact option restart"));
    free(v0);
    free(v1);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* A `compact` table with a schedule: phases fall due while the first
 * compaction runs; none is refused (the push path waits for the end of
 * the compaction), later phases rebuild the static set. */
START_TEST(test_compact_schedule)
{
    cqr_test_server_t s;
    tu_server_start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM);
    cfg.rows = 256;
    cfg.chunks = 2;
    cfg.cluster_iters = 3;
    cfg.compact = 1;
    cfg.schedule_every = 100000;
    cfg.schedule_max_phases = 3;
    ck_assert_int_eq(cqrps_create_table(c, "sch", &cfg, NULL), 0);
    enum { N = 400000 };
    uint64_t *ids = malloc(N * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    for (size_t i = 0; i < N; i++)
        ids[i] = i * 7919u;
    uint64_t st = 17;
    push_ids(c, "sch", ids, N, &st);
    /* Phases and compactions finish; then one more push lets a phase
     * that fell due during the last compaction be queued. */
    cqrps_table_info_t info;
    uint64_t t0 = tu_now_ms();
    do {
        tu_sleep_ms(20);
        push_ids(c, "sch", ids, 500, &st);
        describe(c, "sch", &info);
        ck_assert_msg(tu_now_ms() - t0 < 120000, "phases: %u",
                      info.phases_done);
    } while (info.phases_done < 3 || info.phase_running || info.compacting);
    ck_assert(info.compacted);
    ck_assert_uint_eq(info.static_ids, info.known_ids);
    ck_assert_int_eq(stat_count(c, "scheduled_phase_errors"), 0);
    ck_assert_int_eq(stat_count(c, "compactions_done"), 1);
    free(ids);
    cqrps_close(c);
    tu_server_stop(&s);
}
END_TEST

/* A sharded client compacts every shard: the counts are summed. */
START_TEST(test_sharded)
{
    cqr_test_server_t s1, s2;
    tu_server_start(&s1, NULL);
    tu_server_start(&s2, NULL);
    char addrs[160];
    snprintf(addrs, sizeof addrs, "%s,%s", s1.addr, s2.addr);
    cqrps_client_t *c = tu_connect(addrs);
    ck_assert_uint_eq(cqrps_shard_count(c), 2);
    make_cqr(c, "sh", 0, 0);
    uint64_t st = 21;
    static uint64_t ids[NKNOWN];
    for (size_t i = 0; i < NKNOWN; i++)
        ids[i] = i * 104729u; /* distinct */
    push_ids(c, "sh", ids, NKNOWN, &st);
    char d0[17], d1[17];
    ck_assert_int_eq(cqrps_digest(c, "sh", d0), 0);
    cqrps_compact_info_t ci;
    ck_assert_msg(cqrps_compact(c, "sh", &ci) == 0, "compact: %s",
                  cqrps_last_error(c));
    ck_assert_uint_eq(ci.moved_ids, NKNOWN);
    ck_assert_uint_eq(ci.known_ids, NKNOWN);
    ck_assert_uint_eq(ci.static_ids, NKNOWN);
    cqrps_table_info_t info;
    describe(c, "sh", &info);
    ck_assert(info.compacted);
    ck_assert_uint_eq(info.static_ids, NKNOWN);
    ck_assert_int_eq(cqrps_digest(c, "sh", d1), 0);
    ck_assert_str_eq(d0, d1);
    /* Each shard compacted its own part. */
    cqrps_client_t *one = tu_connect(s1.addr);
    describe(one, "sh", &info);
    ck_assert(info.compacted && info.static_ids > 0 &&
              info.static_ids < NKNOWN);
    cqrps_close(one);
    cqrps_close(c);
    tu_server_stop(&s1);
    tu_server_stop(&s2);
}
END_TEST

/* Runs the CLI; returns its exit status, output in out. */
static int cli(const char *addr, const char *cmd, char *out, size_t len)
{
    char line[512];
    snprintf(line, sizeof line, "%s --addr %s %s 2>&1", CQR_CLI_BIN, addr,
             cmd);
    FILE *p = popen(line, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

START_TEST(test_cli_compact)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    make_cqr(c, "t", 0, 0);
    uint64_t st = 9;
    static uint64_t ids[1000];
    random_ids(ids, 1000, &st);
    push_ids(c, "t", ids, 1000, &st);
    cqrps_table_info_t info;
    describe(c, "t", &info);
    tables_t t = {0};
    create(c, &t, "f", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    cqrps_close(c);

    char out[4096], want[128];
    ck_assert_int_eq(cli(s.addr, "compact t", out, sizeof out), 0);
    snprintf(want, sizeof want, "compacted t: %" PRIu64 " IDs moved in ",
             info.known_ids);
    ck_assert_msg(strstr(out, want) != NULL, "%s", out);
    ck_assert_int_eq(cli(s.addr, "--json compact t", out, sizeof out), 0);
    ck_assert_msg(strstr(out, "\"ok\":true") && strstr(out, "\"moved_ids\":0")
                  && strstr(out, "\"static_ids\":"), "%s", out);
    ck_assert_int_eq(cli(s.addr, "describe t", out, sizeof out), 0);
    ck_assert_msg(strstr(out, "compaction:     compacted") != NULL, "%s",
                  out);
    ck_assert_int_eq(cli(s.addr, "compact f", out, sizeof out), 1);
    ck_assert_msg(strstr(out, "UNSUPPORTED") && strstr(out, "only cqr"),
                  "%s", out);
    ck_assert_int_eq(cli(s.addr, "create g --kind full --dim 4 --compact",
                         out, sizeof out), 1);
    ck_assert_msg(strstr(out, "INVALID_ARGUMENT") != NULL, "%s", out);
    ck_assert_int_eq(cli(s.addr, "create h --kind cqr --dim 4 --compact",
                         out, sizeof out), 0);
    ck_assert_msg(strstr(out, "compact on") != NULL, "%s", out);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("server_compact");
    TCase *tc = tcase_create("compact");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_compact_restart);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_compact_option);
    tcase_add_test(tc, test_cli_compact);
    tcase_add_test(tc, test_sharded);
    suite_add_tcase(s, tc);
    TCase *tt = tcase_create("concurrent");
    tcase_set_timeout(tt, 300);
    tcase_add_test(tt, test_concurrent);
    tcase_add_test(tt, test_shutdown_during);
    tcase_add_test(tt, test_compact_schedule);
    suite_add_tcase(s, tt);
    return s;
}
