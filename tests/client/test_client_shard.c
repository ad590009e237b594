/* test_client_shard.c -- a client over two shards against one server
 * holding the same IDs.
 *
 * Plain lookups after identical pushes must be bit-identical for `full`
 * tables (each ID's row lives on exactly one shard and sees the same
 * pushes in the same order); pooled results are sums formed on the
 * shards and merged on the client, so they may differ in the last bits.
 * Create/drop/cluster reach every shard, rows are split, figures summed,
 * and a shard that goes away is named in the error and picked up again
 * when it returns.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "check_main.h"

static cqr_test_server_t s1, s2, ref;
static char both[160];

static void setup(void)
{
    tu_server_start(&s1, NULL);
    tu_server_start(&s2, NULL);
    tu_server_start(&ref, NULL);
    snprintf(both, sizeof(both), "%s,%s", s1.addr, s2.addr);
}

static void teardown(void)
{
    tu_server_stop(&s1);
    tu_server_stop(&s2);
    tu_server_stop(&ref);
}

#define SH_DIM 8

/* Where IDs live is a contract between clients (C, Python, other
 * versions of libcqrps) and the data already on the shards: pinned
 * here, so a change of the mixer or of jump hash cannot pass unnoticed.
 * The values were computed by the implementation of issue 7. */
START_TEST(test_placement_pinned)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a over the placements */
    for (uint32_t n = 1; n <= 9; n++) {
        for (uint64_t i = 0; i < 5000; i++) {
            uint64_t id =
                i < 2500 ? i : (i * 0x9e3779b97f4a7c15ULL) ^ (i << 40);
            h ^= cqrps_shard_of(id, n);
            h *= 0x100000001b3ULL;
        }
    }
    ck_assert_uint_eq(h, 0x2cb94e90f88344b0ULL);
    static const struct {
        uint64_t id;
        uint32_t of3, of7, of1000;
    } pin[] = {
        {0, 0, 0, 0},
        {1, 0, 0, 120},
        {2, 2, 5, 141},
        {12345, 1, 4, 577},
        {UINT64_MAX, 0, 3, 222},
        {1ULL << 63, 1, 1, 901},
        {4242, 0, 4, 706},
    };
    for (size_t k = 0; k < sizeof pin / sizeof pin[0]; k++) {
        ck_assert_uint_eq(cqrps_shard_of(pin[k].id, 3), pin[k].of3);
        ck_assert_uint_eq(cqrps_shard_of(pin[k].id, 7), pin[k].of7);
        ck_assert_uint_eq(cqrps_shard_of(pin[k].id, 1000), pin[k].of1000);
    }
}
END_TEST

START_TEST(test_sharded_full_table_equals_one_server)
{
    cqrps_client_t *c = tu_connect(both), *r = tu_connect(ref.addr);
    ck_assert_uint_eq(cqrps_shard_count(c), 2);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAGRAD, SH_DIM);
    ck_assert_int_eq(cqrps_create_table(c, "sh.full", &cfg, NULL), 0);
    ck_assert_int_eq(cqrps_create_table(r, "sh.full", &cfg, NULL), 0);

    enum { N = 3000, NB = 200 };
    uint64_t *ids = malloc(N * sizeof(*ids));
    float *g = malloc(N * SH_DIM * sizeof(float));
    float *a = malloc(N * SH_DIM * sizeof(float));
    float *b = malloc(N * SH_DIM * sizeof(float));
    uint32_t offs[NB];
    uint64_t st = 21;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            ids[i] = tu_rand(&st) % 1000;
        tu_fill(g, N * SH_DIM, &st);
        ck_assert_int_eq(cqrps_push(c, "sh.full", ids, g, N), 0);
        ck_assert_int_eq(cqrps_push(r, "sh.full", ids, g, N), 0);
    }
    for (int i = 0; i < N; i++)
        ids[i] = i % 2 ? tu_rand(&st) % 1000 : tu_rand(&st);
    ck_assert_int_eq(cqrps_lookup(c, "sh.full", ids, N, a), 0);
    ck_assert_int_eq(cqrps_lookup(r, "sh.full", ids, N, b), 0);
    ck_assert(tu_same(a, b, (size_t)N * SH_DIM, "sharded lookup"));

    /* Tickets over shards. */
    cqrps_ticket_t t;
    memset(a, 0, N * SH_DIM * sizeof(float));
    ck_assert_int_eq(cqrps_lookup_start(c, "sh.full", ids, N, a, &t), 0);
    ck_assert_int_eq(cqrps_wait(c, t), 0);
    ck_assert(tu_same(a, b, (size_t)N * SH_DIM, "sharded ticket"));

    /* Pooled lookups (bags span both shards) and pooled pushes. */
    for (int p = 0; p < 2; p++) {
        cqrps_pooling_t pool = p ? CQRPS_POOL_MEAN : CQRPS_POOL_SUM;
        size_t n = 0;
        for (int bg = 0; bg < NB; bg++) {
            offs[bg] = (uint32_t)n;
            n += tu_rand(&st) % 12; /* empty bags too */
        }
        for (size_t i = 0; i < n; i++)
            ids[i] = tu_rand(&st) % 1000;
        tu_fill(g, NB * SH_DIM, &st);
        ck_assert_int_eq(
            cqrps_push_pooled(c, "sh.full", ids, n, offs, NB, pool, g), 0);
        ck_assert_int_eq(
            cqrps_push_pooled(r, "sh.full", ids, n, offs, NB, pool, g), 0);
        ck_assert_int_eq(
            cqrps_lookup_pooled(c, "sh.full", ids, n, offs, NB, pool, a), 0);
        ck_assert_int_eq(
            cqrps_lookup_pooled(r, "sh.full", ids, n, offs, NB, pool, b), 0);
        double d = tu_maxrel(a, b, NB * SH_DIM);
        ck_assert_msg(d < 1e-5, "pooled %s differs by %g",
                      cqrps_pooling_name(pool), d);
    }
    /* Plain lookups after pooled pushes: a mean push scales on the client
     * when sharded, so allow the last bits. */
    for (int i = 0; i < 1000; i++)
        ids[i] = (uint64_t)i;
    ck_assert_int_eq(cqrps_lookup(c, "sh.full", ids, 1000, a), 0);
    ck_assert_int_eq(cqrps_lookup(r, "sh.full", ids, 1000, b), 0);
    ck_assert_msg(tu_maxrel(a, b, 1000 * SH_DIM) < 1e-5,
                  "after pooled pushes");

    /* Figures are sums over the shards; each shard holds a part. */
    cqrps_table_info_t ic, ir;
    ck_assert_int_eq(cqrps_describe_table(c, "sh.full", &ic), 0);
    ck_assert_int_eq(cqrps_describe_table(r, "sh.full", &ir), 0);
    ck_assert_uint_eq(ic.known_ids, ir.known_ids);
    ck_assert_uint_eq(ic.pushes, ir.pushes);
    ck_assert(ic.param_bytes >= ir.param_bytes); /* each shard reserves */
    cqrps_client_t *one = tu_connect(s1.addr);
    cqrps_table_info_t i1;
    ck_assert_int_eq(cqrps_describe_table(one, "sh.full", &i1), 0);
    ck_assert(i1.known_ids > 0 && i1.known_ids < ic.known_ids);
    cqrps_close(one);

    ck_assert_int_eq(cqrps_drop_table(c, "sh.full"), 0);
    ck_assert_int_eq(cqrps_describe_table(c, "sh.full", &ic),
                     CQRPS_ENOTFOUND);
    ck_assert_int_eq(cqrps_drop_table(r, "sh.full"), 0);
    free(ids);
    free(g);
    free(a);
    free(b);
    cqrps_close(c);
    cqrps_close(r);
}
END_TEST

START_TEST(test_sharded_admin)
{
    cqrps_client_t *c = tu_connect(both);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_HASH, CQRPS_OPT_SGD, 4);
    cfg.rows = 101;
    cqrps_table_info_t info;
    ck_assert_int_eq(cqrps_create_table(c, "sh.hash", &cfg, &info), 0);
    ck_assert_uint_eq(info.config.rows, 101); /* 51 + 50 */
    cqrps_client_t *one = tu_connect(s2.addr);
    ck_assert_int_eq(cqrps_describe_table(one, "sh.hash", &info), 0);
    ck_assert_uint_eq(info.config.rows, 50);
    ck_assert_int_eq(cqrps_create_table(c, "sh.hash", &cfg, NULL),
                     CQRPS_EEXIST);
    /* Sharded errors name the shard that answered. */
    ck_assert(strstr(cqrps_last_error(c), s1.addr) ||
              strstr(cqrps_last_error(c), s2.addr));

    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, 8);
    ck_assert_int_eq(cqrps_create_table(c, "sh.cqr", &cfg, NULL), 0);
    enum { N = 4000 };
    uint64_t ids[N];
    static float g[N * 8];
    uint64_t st = 8;
    for (int i = 0; i < N; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, N * 8, &st);
    ck_assert_int_eq(cqrps_push(c, "sh.cqr", ids, g, N), 0);

    cqrps_table_info_t *list;
    size_t n;
    ck_assert_int_eq(cqrps_list_tables(c, &list, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(list[0].name, "sh.cqr");
    ck_assert_str_eq(list[1].name, "sh.hash");
    ck_assert_uint_eq(list[0].known_ids, N);
    cqrps_table_list_free(list);

    cqrps_stats_t stats;
    ck_assert_int_eq(cqrps_stats(c, &stats), 0);
    ck_assert_uint_eq(stats.ntables, 2);
    ck_assert(stats.connections >= 2);
    cqrps_stats_free(&stats);

    char d1[17], d2[17];
    ck_assert_int_eq(cqrps_digest(c, "sh.cqr", d1), 0);
    ck_assert_uint_eq(strlen(d1), 16);
    ck_assert_int_eq(cqrps_digest(c, "sh.cqr", d2), 0);
    ck_assert_str_eq(d1, d2);

    /* A phase on every shard, followed as one. */
    uint64_t phase;
    cqrps_phase_status_t ps;
    ck_assert_int_eq(cqrps_cluster(c, "sh.cqr", &phase), 0);
    ck_assert_int_eq(cqrps_cluster_wait(c, "sh.cqr", phase, 60000, &ps), 0);
    ck_assert_int_eq(ps.state, CQRPS_PHASE_DONE);
    ck_assert_uint_eq(ps.ids_assigned, N);
    ck_assert_int_eq(cqrps_describe_table(c, "sh.cqr", &info), 0);
    ck_assert_uint_eq(info.phases_done, 1);
    ck_assert_int_eq(cqrps_describe_table(one, "sh.cqr", &info), 0);
    ck_assert_uint_eq(info.phases_done, 1);
    cqrps_close(one);

    /* A shard goes away: the error names it. It comes back (empty, no
     * persistence yet): the client reconnects and says so per shard. */
    char s2listen[64];
    snprintf(s2listen, sizeof(s2listen), "127.0.0.1:%u", s2.port);
    tu_server_stop(&s2);
    float out[10 * 8];
    ck_assert_int_eq(cqrps_lookup(c, "sh.cqr", ids, 10, out), CQRPS_ECONN);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), s2listen));
    ck_assert_int_eq(
        cqr_test_server_start_at(&s2, s2listen, NULL, TU_START_MS), 0);
    ck_assert_int_eq(cqrps_lookup(c, "sh.cqr", ids, 10, out),
                     CQRPS_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), s2listen));
    /* Clean up what remains on the first shard. */
    ck_assert_int_eq(cqrps_drop_table(c, "sh.cqr"), CQRPS_ENOTFOUND);
    ck_assert_int_eq(cqrps_drop_table(c, "sh.hash"), CQRPS_ENOTFOUND);
    cqrps_table_info_t *l2;
    ck_assert_int_eq(cqrps_list_tables(c, &l2, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(l2);
    cqrps_close(c);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_shard");
    TCase *tc = tcase_create("shard");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, test_sharded_full_table_equals_one_server);
    tcase_add_test(tc, test_sharded_admin);
    suite_add_tcase(s, tc);
    TCase *pl = tcase_create("placement");
    tcase_add_test(pl, test_placement_pinned);
    suite_add_tcase(s, pl);
    return s;
}
