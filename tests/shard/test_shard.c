/* test_shard.c -- a sharded deployment of three real servers on loopback.
 *
 * - `full` tables through a 3-shard client equal, bit for bit, one server
 *   holding the same IDs (same gradients pushed through both clients, for
 *   every optimizer), and every shard holds its part of the IDs;
 * - create, drop, cluster (and checkpoint) reach every shard; rows of
 *   codebook tables are split so the shards add up to the budget; stats
 *   and table figures are the sums of the shards' own figures;
 * - a shard killed with SIGKILL gives an error naming its address; when it
 *   is restarted on the same port the same client reconnects (no new
 *   client). With --data-dir in the server, the shard is restarted from
 *   its checkpoint and serves exactly the rows it checkpointed.
 * Every server runs on 127.0.0.1 with a port of 0 (a restart reuses the
 * port it had) and is stopped by PID.
 */
#define _GNU_SOURCE
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "check_main.h"

#define NSH 3
#define DIM 8

static cqr_test_server_t sh[NSH], ref;
static char all[sizeof(((cqr_test_server_t *)0)->addr) * NSH + NSH];
static int persist;            /* the server has --data-dir */
static char dirs[NSH][64];     /* each shard's data dir (with persist) */

/* Starts shard i (at `listen`, or on a free port when NULL). */
static void start_shard(int i, const char *listen)
{
    const char *args[4] = {NULL};
    if (persist) {
        args[0] = "--data-dir";
        args[1] = dirs[i];
    }
    int rc = listen ? cqr_test_server_start_at(&sh[i], listen, args,
                                               TU_START_MS)
                    : cqr_test_server_start(&sh[i], args, TU_START_MS);
    ck_assert_msg(rc == 0, "shard %d did not start", i);
}

static void setup(void)
{
    persist = cqr_test_server_has_flag("--data-dir");
    ck_assert_int_ge(persist, 0);
    for (int i = 0; i < NSH; i++) {
        if (persist) {
            snprintf(dirs[i], sizeof dirs[i], "/tmp/cqr-shard-XXXXXX");
            ck_assert_ptr_nonnull(mkdtemp(dirs[i]));
        }
        start_shard(i, NULL);
    }
    tu_server_start(&ref, NULL);
    snprintf(all, sizeof all, "%s,%s,%s", sh[0].addr, sh[1].addr,
             sh[2].addr);
}

static void teardown(void)
{
    for (int i = 0; i < NSH; i++) {
        if (sh[i].pid > 0 && !sh[i].exited)
            tu_server_stop(&sh[i]);
        else
            cqr_test_server_cleanup(&sh[i]);
        if (persist && dirs[i][0]) {
            char cmd[256];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dirs[i]);
            ck_assert_int_eq(system(cmd), 0);
        }
    }
    tu_server_stop(&ref);
}

/* IDs that hash to shard s (of NSH), distinct, from a seed. */
static void ids_on_shard(uint32_t s, uint64_t *ids, size_t n, uint64_t seed)
{
    size_t k = 0;
    for (uint64_t x = seed; k < n; x++)
        if (cqrps_shard_of(x * 2654435761u, NSH) == s)
            ids[k++] = x * 2654435761u;
}

START_TEST(test_three_shards_equal_one_server)
{
    cqrps_client_t *c = tu_connect(all), *r = tu_connect(ref.addr);
    ck_assert_uint_eq(cqrps_shard_count(c), NSH);
    enum { N = 4000, VOCAB = 1500 };
    uint64_t *ids = malloc(N * sizeof *ids);
    float *g = malloc((size_t)N * DIM * sizeof(float));
    float *a = malloc((size_t)N * DIM * sizeof(float));
    float *b = malloc((size_t)N * DIM * sizeof(float));
    static const cqrps_optimizer_t opts[] = {CQRPS_OPT_SGD, CQRPS_OPT_ADAGRAD,
                                             CQRPS_OPT_ADAM};
    for (size_t o = 0; o < 3; o++) {
        char name[32];
        snprintf(name, sizeof name, "full.%s", cqrps_optimizer_name(opts[o]));
        cqrps_table_config_t cfg;
        tu_config(&cfg, CQRPS_KIND_FULL, opts[o], DIM);
        cfg.seed = 1234 + o;
        ck_assert_int_eq(cqrps_create_table(c, name, &cfg, NULL), 0);
        ck_assert_int_eq(cqrps_create_table(r, name, &cfg, NULL), 0);
        uint64_t st = 77 + o;
        /* Repeated IDs inside a push and across pushes. */
        for (int round = 0; round < 4; round++) {
            for (int i = 0; i < N; i++)
                ids[i] = tu_rand(&st) % VOCAB;
            tu_fill(g, (size_t)N * DIM, &st);
            ck_assert_int_eq(cqrps_push(c, name, ids, g, N), 0);
            ck_assert_int_eq(cqrps_push(r, name, ids, g, N), 0);
        }
        /* Known and never-pushed IDs, in an order that mixes shards. */
        for (int i = 0; i < N; i++)
            ids[i] = i % 3 ? tu_rand(&st) % VOCAB : tu_rand(&st);
        ck_assert_int_eq(cqrps_lookup(c, name, ids, N, a), 0);
        ck_assert_int_eq(cqrps_lookup(r, name, ids, N, b), 0);
        ck_assert(tu_same(a, b, (size_t)N * DIM, name));

        /* The rows are really spread: each shard holds part of them. */
        cqrps_table_info_t ref_info, sum_info;
        ck_assert_int_eq(cqrps_describe_table(r, name, &ref_info), 0);
        ck_assert_int_eq(cqrps_describe_table(c, name, &sum_info), 0);
        ck_assert_uint_eq(sum_info.known_ids, ref_info.known_ids);
        ck_assert_uint_eq(sum_info.pushes, ref_info.pushes);
        uint64_t total = 0;
        for (int s = 0; s < NSH; s++) {
            cqrps_client_t *one = tu_connect(sh[s].addr);
            cqrps_table_info_t ti;
            ck_assert_int_eq(cqrps_describe_table(one, name, &ti), 0);
            ck_assert_msg(ti.known_ids > ref_info.known_ids / 5 &&
                              ti.known_ids < ref_info.known_ids / 2,
                          "shard %d holds %llu of %llu IDs", s,
                          (unsigned long long)ti.known_ids,
                          (unsigned long long)ref_info.known_ids);
            total += ti.known_ids;
            cqrps_close(one);
        }
        ck_assert_uint_eq(total, ref_info.known_ids);
    }
    free(ids);
    free(g);
    free(a);
    free(b);
    cqrps_close(c);
    cqrps_close(r);
}
END_TEST

static double counter(const cqrps_stats_t *st, const char *name)
{
    for (size_t i = 0; i < st->ncounters; i++)
        if (strcmp(st->counters[i].name, name) == 0)
            return st->counters[i].value;
    return 0;
}

/* Stats through c (NSH shards) are the sums of the shards' own figures
 * (one[s] is a client of shard s alone); n IDs were pushed. */
static void stats_are_sums(cqrps_client_t *c, cqrps_client_t *const *one,
                           uint64_t n)
{
    cqrps_stats_t sum, part[NSH];
    for (int s = 0; s < NSH; s++)
        ck_assert_int_eq(cqrps_stats(one[s], &part[s]), 0);
    ck_assert_int_eq(cqrps_stats(c, &sum), 0);
    ck_assert_uint_eq(sum.ntables, 1);
    uint64_t pushes = 0, kids = 0;
    double push_ok = 0, phases = 0;
    for (int s = 0; s < NSH; s++) {
        ck_assert_uint_eq(part[s].ntables, 1);
        pushes += part[s].tables[0].pushes;
        kids += part[s].tables[0].known_ids;
        push_ok += counter(&part[s], "req.push.OK");
        phases += counter(&part[s], "phases_done");
    }
    ck_assert_uint_eq(sum.tables[0].pushes, pushes);
    ck_assert_uint_eq(sum.tables[0].pushes, n);
    ck_assert_uint_eq(sum.tables[0].known_ids, kids);
    ck_assert_double_eq(counter(&sum, "req.push.OK"), push_ok);
    ck_assert_double_eq(counter(&sum, "req.push.OK"), NSH);
    ck_assert_double_eq(counter(&sum, "phases_done"), phases);
    ck_assert_double_eq(phases, NSH);
    ck_assert_double_eq(counter(&sum, "io_threads"),
                        NSH * counter(&part[0], "io_threads"));
    for (int s = 0; s < NSH; s++)
        cqrps_stats_free(&part[s]);
    cqrps_stats_free(&sum);
}

START_TEST(test_admin_reaches_every_shard)
{
    cqrps_client_t *c = tu_connect(all);
    cqrps_client_t *one[NSH];
    for (int s = 0; s < NSH; s++)
        one[s] = tu_connect(sh[s].addr);

    /* Create: every shard, rows split to the budget (34 + 33 + 33). */
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM);
    cfg.rows = 100;
    cfg.chunks = 2;
    cqrps_table_info_t info;
    ck_assert_int_eq(cqrps_create_table(c, "emb", &cfg, &info), 0);
    ck_assert_uint_eq(info.config.rows, 100);
    uint32_t rows = 0;
    for (int s = 0; s < NSH; s++) {
        ck_assert_int_eq(cqrps_describe_table(one[s], "emb", &info), 0);
        rows += info.config.rows;
        ck_assert(info.config.rows == 33 || info.config.rows == 34);
    }
    ck_assert_uint_eq(rows, 100);

    enum { N = 6000 };
    static uint64_t ids[N];
    static float g[N * DIM];
    uint64_t st = 9;
    for (int i = 0; i < N; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, (size_t)N * DIM, &st);
    ck_assert_int_eq(cqrps_push(c, "emb", ids, g, N), 0);

    /* Cluster: a phase on every shard, each assigning its own IDs. */
    uint64_t phase;
    cqrps_phase_status_t ps;
    ck_assert_int_eq(cqrps_cluster(c, "emb", &phase), 0);
    ck_assert_int_eq(cqrps_cluster_wait(c, "emb", phase, 120000, &ps), 0);
    ck_assert_int_eq(ps.state, CQRPS_PHASE_DONE);
    ck_assert_uint_eq(ps.ids_assigned, N);
    uint64_t known = 0;
    for (int s = 0; s < NSH; s++) {
        ck_assert_int_eq(cqrps_describe_table(one[s], "emb", &info), 0);
        ck_assert_uint_eq(info.phases_done, 1);
        known += info.known_ids;
    }
    ck_assert_uint_eq(known, N);

    stats_are_sums(c, one, N);

    /* Checkpoint: every shard takes one, or every shard says it has no
     * persistence. */
    uint64_t gen = 0;
    int rc = cqrps_checkpoint(c, &gen);
    if (persist) {
        ck_assert_msg(rc == 0, "checkpoint: %s", cqrps_last_error(c));
        cqrps_checkpoint_info_t *ck;
        size_t nck;
        ck_assert_int_eq(cqrps_list_checkpoints(c, &ck, &nck), 0);
        int seen[NSH] = {0};
        for (size_t i = 0; i < nck; i++)
            seen[ck[i].shard] = 1;
        for (int s = 0; s < NSH; s++)
            ck_assert_msg(seen[s], "shard %d lists no checkpoint", s);
        cqrps_checkpoint_list_free(ck);
    } else {
        ck_assert_int_eq(rc, CQRPS_EUNSUPPORTED);
    }

    /* Drop: gone everywhere. */
    ck_assert_int_eq(cqrps_drop_table(c, "emb"), 0);
    for (int s = 0; s < NSH; s++)
        ck_assert_int_eq(cqrps_describe_table(one[s], "emb", &info),
                         CQRPS_ENOTFOUND);
    for (int s = 0; s < NSH; s++)
        cqrps_close(one[s]);
    cqrps_close(c);
}
END_TEST

START_TEST(test_shard_killed_and_restarted)
{
    cqrps_client_t *c = tu_connect(all);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAGRAD, DIM);
    ck_assert_int_eq(cqrps_create_table(c, "t", &cfg, NULL), 0);

    /* 300 IDs per shard, pushed and read back. */
    enum { PER = 300, N = PER * NSH };
    uint64_t ids[N];
    static float g[N * DIM], before[N * DIM], after[N * DIM];
    for (uint32_t s = 0; s < NSH; s++)
        ids_on_shard(s, ids + s * PER, PER, 1000 + s);
    uint64_t st = 3;
    tu_fill(g, (size_t)N * DIM, &st);
    ck_assert_int_eq(cqrps_push(c, "t", ids, g, N), 0);
    ck_assert_int_eq(cqrps_lookup(c, "t", ids, N, before), 0);
    char digest1[17] = "";
    if (persist) {
        uint64_t gen;
        ck_assert_msg(cqrps_checkpoint(c, &gen) == 0, "checkpoint: %s",
                      cqrps_last_error(c));
        /* Shard 1's own state at its checkpoint. */
        cqrps_client_t *one = tu_connect(sh[1].addr);
        ck_assert_int_eq(cqrps_digest(one, "t", digest1), 0);
        cqrps_close(one);
    }

    /* Shard 1 dies without a word. */
    char listen1[64];
    snprintf(listen1, sizeof listen1, "127.0.0.1:%u", sh[1].port);
    ck_assert_int_eq(cqr_test_server_signal(&sh[1], SIGKILL), 0);
    ck_assert_int_eq(cqr_test_server_wait(&sh[1], TU_STOP_MS), -1);

    /* A lookup that needs it fails, naming its address. */
    int rc = cqrps_lookup(c, "t", ids, N, after);
    ck_assert_int_eq(rc, CQRPS_ECONN);
    ck_assert_msg(strstr(cqrps_last_error(c), sh[1].addr) != NULL,
                  "error '%s' does not name %s", cqrps_last_error(c),
                  sh[1].addr);
    /* It keeps failing, with the name, while the shard is down (each
     * call tries to reconnect once), for pushes too. */
    rc = cqrps_lookup(c, "t", ids + PER, PER, after + PER * DIM);
    ck_assert_int_eq(rc, CQRPS_ECONN);
    ck_assert(strstr(cqrps_last_error(c), sh[1].addr) != NULL);
    rc = cqrps_push(c, "t", ids, g, N);
    ck_assert_int_eq(rc, CQRPS_ECONN);
    ck_assert(strstr(cqrps_last_error(c), sh[1].addr) != NULL);

    /* Restarted on its port: the same client picks it up. */
    cqr_test_server_cleanup(&sh[1]);
    start_shard(1, listen1);
    if (persist) {
        /* From its checkpoint: exactly the rows it had. */
        ck_assert_msg(cqrps_lookup(c, "t", ids, N, after) == 0,
                      "after restart: %s", cqrps_last_error(c));
        ck_assert(tu_same(after, before, (size_t)N * DIM,
                          "restored shard"));
        char digest[17];
        cqrps_client_t *one = tu_connect(sh[1].addr);
        ck_assert_int_eq(cqrps_digest(one, "t", digest), 0);
        cqrps_close(one);
        ck_assert_str_eq(digest, digest1);
        /* And training goes on across all shards. */
        ck_assert_int_eq(cqrps_push(c, "t", ids, g, N), 0);
    } else {
        /* No persistence: the shard came back empty. The client
         * reconnects and reports the shard's own answer. */
        rc = cqrps_lookup(c, "t", ids, N, after);
        ck_assert_int_eq(rc, CQRPS_ENOTFOUND);
        ck_assert_msg(strstr(cqrps_last_error(c), sh[1].addr) != NULL,
                      "error '%s' does not name %s", cqrps_last_error(c),
                      sh[1].addr);
        /* Re-created on that shard, the table serves again through the
         * same client: the other shards kept their rows. */
        cqrps_client_t *one = tu_connect(sh[1].addr);
        ck_assert_int_eq(cqrps_create_table(one, "t", &cfg, NULL), 0);
        cqrps_close(one);
        ck_assert_int_eq(cqrps_lookup(c, "t", ids, N, after), 0);
        ck_assert(tu_same(after, before, (size_t)PER * DIM, "shard 0"));
        ck_assert(tu_same(after + 2 * PER * DIM, before + 2 * PER * DIM,
                          (size_t)PER * DIM, "shard 2"));
        ck_assert_int_eq(cqrps_push(c, "t", ids, g, N), 0);
    }
    cqrps_close(c);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("three_shards");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_three_shards_equal_one_server);
    tcase_add_test(tc, test_admin_reaches_every_shard);
    tcase_add_test(tc, test_shard_killed_and_restarted);
    suite_add_tcase(s, tc);
    return s;
}
