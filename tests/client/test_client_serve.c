/* The read-only serving server (`cqrps-server --serve`, `--serve-dir`):
 * it answers lookups (plain, pooled, multi-table) exactly as the training
 * server did at the exported generation, refuses every write with
 * READ_ONLY, and reloads (a new delta in its folder, SIGHUP) under a
 * lookup load without failing a request. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cqrps.h"
#include "testutil.h"
#include "check_main.h"

enum { DIM = 8, N = 300, SPAN = 3000 };

static uint64_t ids[N];

/* Lookups of both tables in one multi-table request: q plain, f pooled
 * (bags of 3). */
static int multi_lookup(cqrps_client_t *c, float *q, float *f)
{
    static uint32_t offs[N / 3];
    for (size_t b = 0; b < N / 3; b++)
        offs[b] = (uint32_t)(3 * b);
    cqrps_part_t parts[2] = {
        {.table = "q", .ids = ids, .n = N, .out = q},
        {.table = "f", .ids = ids, .n = N, .offsets = offs, .nbags = N / 3,
         .pooling = CQRPS_POOL_MEAN, .out = f}};
    return cqrps_lookup_multi(c, parts, 2, 0);
}

typedef struct answers {
    float q[N * DIM], f[N / 3 * DIM];
} answers_t;

/* The load: lookups until told to stop, each table's answer equal to
 * one of the two generations'. */
typedef struct load {
    const char *addr;
    const answers_t *a1, *a2;
    atomic_int stop;
    atomic_long ok, failed, wrong, saw2;
} load_t;

static void *load_main(void *arg)
{
    load_t *l = arg;
    cqrps_client_t *c = NULL;
    if (cqrps_connect(l->addr, NULL, &c) != 0) {
        atomic_fetch_add(&l->failed, 1);
        return NULL;
    }
    static answers_t got;
    while (!atomic_load(&l->stop)) {
        if (multi_lookup(c, got.q, got.f) != 0) {
            atomic_fetch_add(&l->failed, 1);
            continue;
        }
        /* Each table swaps in one step; a request of two tables may see
         * one swapped and the other not yet. */
        int q1 = memcmp(got.q, l->a1->q, sizeof got.q) == 0;
        int q2 = memcmp(got.q, l->a2->q, sizeof got.q) == 0;
        int f1 = memcmp(got.f, l->a1->f, sizeof got.f) == 0;
        int f2 = memcmp(got.f, l->a2->f, sizeof got.f) == 0;
        if (q2 && f2)
            atomic_store(&l->saw2, 1);
        atomic_fetch_add((q1 || q2) && (f1 || f2) ? &l->ok : &l->wrong, 1);
    }
    cqrps_close(c);
    return NULL;
}

START_TEST(serve_dir_reload_under_load)
{
    char dir[] = "/tmp/cqr_test_serve_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char sdir[128], path[256];
    snprintf(sdir, sizeof sdir, "%s/serve", dir);
    ck_assert_int_eq(mkdir(sdir, 0755), 0);
    for (int j = 0; j < N; j++)
        ids[j] = j % 3 ? (uint64_t)j * 7 % SPAN : (1ull << 40) + (uint64_t)j;

    /* Training: two tables, g1, then more training and g2. */
    const char *keep[] = {"--checkpoint-keep", "0", NULL};
    cqr_test_server_t tr;
    tu_data_server_start(&tr, dir, "data", keep);
    cqrps_client_t *c = tu_connect(tr.addr);
    tu_create_table(c, "q", CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM, 64, NULL);
    cqrps_table_config_t cfg;
    tu_create_table(c, "f", CQRPS_KIND_FULL, CQRPS_OPT_ADAM, DIM, 0, &cfg);
    uint64_t rs = 5, g1, g2, phase;
    tu_push_random(c, "q", &rs, 4, DIM, SPAN);
    tu_push_random(c, "f", &rs, 4, DIM, SPAN);
    ck_assert_int_eq(cqrps_cluster(c, "q", &phase), 0);
    ck_assert_int_eq(cqrps_cluster_wait(c, "q", phase, 60000, NULL), 0);
    ck_assert_int_eq(cqrps_checkpoint(c, &g1), 0);
    static answers_t a1, a2, got;
    ck_assert_int_eq(multi_lookup(c, a1.q, a1.f), 0);
    cqrps_export_opts_t o = {0};
    snprintf(path, sizeof path, "%s/q.g%llu.f32.cqrm", sdir,
             (unsigned long long)g1);
    ck_assert_int_eq(cqrps_export(c, "q", &o, path, NULL), 0);
    snprintf(path, sizeof path, "%s/f.g%llu.f32.cqrm", sdir,
             (unsigned long long)g1);
    ck_assert_int_eq(cqrps_export(c, "f", &o, path, NULL), 0);
    tu_push_random(c, "q", &rs, 2, DIM, SPAN);
    tu_push_random(c, "f", &rs, 2, DIM, SPAN);
    ck_assert_int_eq(cqrps_checkpoint(c, &g2), 0);
    ck_assert_int_eq(multi_lookup(c, a2.q, a2.f), 0);

    /* The serving server answers g1 exactly and refuses writes. */
    const char *sargs[] = {"--serve-dir", sdir, "--serve-poll-ms", "0", NULL};
    cqr_test_server_t sv;
    tu_server_start(&sv, sargs);
    cqrps_client_t *r = tu_connect(sv.addr);
    ck_assert_int_eq(multi_lookup(r, got.q, got.f), 0);
    ck_assert(tu_same(got.q, a1.q, N * DIM, "q at g1"));
    ck_assert(tu_same(got.f, a1.f, N / 3 * DIM, "f at g1"));
    float gr[DIM] = {0};
    ck_assert_int_eq(cqrps_push(r, "q", ids, gr, 1), CQRPS_EREADONLY);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(r), "read-only"));
    ck_assert_int_eq(cqrps_create_table(r, "new", &cfg, NULL),
                     CQRPS_EREADONLY);
    ck_assert_int_eq(cqrps_drop_table(r, "q"), CQRPS_EREADONLY);
    ck_assert_int_eq(cqrps_cluster(r, "q", &phase), CQRPS_EREADONLY);
    ck_assert_int_eq(cqrps_checkpoint(r, &phase), CQRPS_EREADONLY);
    cqrps_table_info_t ti;
    ck_assert_int_eq(cqrps_describe_table(r, "q", &ti), 0);
    ck_assert_uint_eq(ti.serving_generation, g1);
    ck_assert_int_eq(cqrps_describe_table(c, "q", &ti), 0);
    ck_assert_uint_eq(ti.serving_generation, 0);

    /* Reload under load: deltas g1 -> g2 appear, then SIGHUP. */
    load_t l = {.addr = sv.addr, .a1 = &a1, .a2 = &a2};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, load_main, &l), 0);
    tu_sleep_ms(200);
    o.since = g1;
    snprintf(path, sizeof path, "%s/q.g%llu.from%llu.f32.cqrm", sdir,
             (unsigned long long)g2, (unsigned long long)g1);
    ck_assert_int_eq(cqrps_export(c, "q", &o, path, NULL), 0);
    snprintf(path, sizeof path, "%s/f.g%llu.from%llu.f32.cqrm", sdir,
             (unsigned long long)g2, (unsigned long long)g1);
    ck_assert_int_eq(cqrps_export(c, "f", &o, path, NULL), 0);
    ck_assert_int_eq(cqr_test_server_signal(&sv, SIGHUP), 0);
    for (int w = 0; w < 600 && !atomic_load(&l.saw2); w++)
        tu_sleep_ms(50);
    tu_sleep_ms(200);
    atomic_store(&l.stop, 1);
    pthread_join(th, NULL);
    ck_assert_int_eq(atomic_load(&l.failed), 0);
    ck_assert_int_eq(atomic_load(&l.wrong), 0);
    ck_assert_int_ne(atomic_load(&l.saw2), 0);
    ck_assert_int_gt(atomic_load(&l.ok), 0);
    ck_assert_int_eq(multi_lookup(r, got.q, got.f), 0);
    ck_assert(tu_same(got.q, a2.q, N * DIM, "q at g2"));
    ck_assert(tu_same(got.f, a2.f, N / 3 * DIM, "f at g2"));
    ck_assert_int_eq(cqrps_describe_table(r, "f", &ti), 0);
    ck_assert_uint_eq(ti.serving_generation, g2);
    cqrps_close(r);
    tu_server_stop(&sv);
    cqrps_close(c);
    tu_server_stop(&tr);
    tu_rmtree(dir);
}
END_TEST

/* --serve FILE: a damaged file refuses the start; a good one serves. */
START_TEST(serve_files)
{
    char dir[] = "/tmp/cqr_test_servef_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    cqr_test_server_t tr;
    tu_data_server_start(&tr, dir, "data", NULL);
    cqrps_client_t *c = tu_connect(tr.addr);
    tu_create_table(c, "items", CQRPS_KIND_CE, CQRPS_OPT_ADAM, DIM, 32, NULL);
    uint64_t rs = 9, g;
    tu_push_random(c, "items", &rs, 2, DIM, SPAN);
    ck_assert_int_eq(cqrps_checkpoint(c, &g), 0);
    static float want[N * DIM], got[N * DIM];
    for (int j = 0; j < N; j++)
        ids[j] = (uint64_t)j * 11;
    ck_assert_int_eq(cqrps_lookup(c, "items", ids, N, want), 0);
    snprintf(path, sizeof path, "%s/items.cqrm", dir);
    ck_assert_int_eq(cqrps_export(c, "items", NULL, path, NULL), 0);
    cqrps_close(c);
    tu_server_stop(&tr);

    const char *sargs[] = {"--serve", path, NULL};
    cqr_test_server_t sv;
    tu_server_start(&sv, sargs);
    cqrps_client_t *r = tu_connect(sv.addr);
    ck_assert_int_eq(cqrps_lookup(r, "items", ids, N, got), 0);
    ck_assert(tu_same(got, want, N * DIM, "served"));
    cqrps_close(r);
    tu_server_stop(&sv);

    ck_assert_int_eq(truncate(path, 500), 0);
    cqr_test_server_t bad;
    ck_assert_int_ne(cqr_test_server_start(&bad, sargs, 10000), 0);
    cqr_test_server_stop(&bad, 5000);
    tu_rmtree(dir);
}
END_TEST

/* A sharded table served as the README says: each shard exported through
 * a client of that shard alone (a client of both answers UNSUPPORTED),
 * each file on its own serving server, and a client of the serving
 * servers in the training order looks up what the training shards did. */
START_TEST(serve_sharded)
{
    char dir[] = "/tmp/cqr_test_serves_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[2][256], addrs[256];
    cqr_test_server_t tr[2], sv[2];
    for (int k = 0; k < 2; k++) {
        char sub[16];
        snprintf(sub, sizeof sub, "data%d", k);
        /* Each shard's file is items.cqrm (it names the table), so each
         * in its own folder, as on its own host. */
        snprintf(path[k], sizeof path[k], "%s/s%d", dir, k);
        ck_assert_int_eq(mkdir(path[k], 0755), 0);
        strcat(path[k], "/items.cqrm");
        tu_data_server_start(&tr[k], dir, sub, NULL);
    }
    snprintf(addrs, sizeof addrs, "%s,%s", tr[0].addr, tr[1].addr);
    cqrps_client_t *c = tu_connect(addrs);
    tu_create_table(c, "items", CQRPS_KIND_FULL, CQRPS_OPT_ADAM, DIM, 0, NULL);
    uint64_t rs = 13, g;
    tu_push_random(c, "items", &rs, 3, DIM, SPAN);
    ck_assert_int_eq(cqrps_checkpoint(c, &g), 0);
    static float want[N * DIM], got[N * DIM];
    for (int j = 0; j < N; j++)
        ids[j] = j % 2 ? (uint64_t)j * 7 % SPAN : (1ull << 41) + (uint64_t)j;
    ck_assert_int_eq(cqrps_lookup(c, "items", ids, N, want), 0);
    ck_assert_int_eq(cqrps_export(c, "items", NULL, path[0], NULL),
                     CQRPS_EUNSUPPORTED);
    for (int k = 0; k < 2; k++) {
        cqrps_client_t *one = tu_connect(tr[k].addr);
        ck_assert_int_eq(cqrps_export(one, "items", NULL, path[k], NULL), 0);
        cqrps_close(one);
        const char *sargs[] = {"--serve", path[k], NULL};
        tu_server_start(&sv[k], sargs);
    }
    snprintf(addrs, sizeof addrs, "%s,%s", sv[0].addr, sv[1].addr);
    cqrps_client_t *r = tu_connect(addrs);
    int rc = cqrps_lookup(r, "items", ids, N, got);
    ck_assert_msg(rc == 0, "lookup: %d %s", rc, cqrps_last_error(r));
    ck_assert(tu_same(got, want, N * DIM, "served by shard"));
    cqrps_close(r);
    cqrps_close(c);
    for (int k = 0; k < 2; k++) {
        tu_server_stop(&sv[k]);
        tu_server_stop(&tr[k]);
    }
    tu_rmtree(dir);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_serve");
    TCase *tc = tcase_create("serve");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, serve_dir_reload_under_load);
    tcase_add_test(tc, serve_files);
    tcase_add_test(tc, serve_sharded);
    suite_add_tcase(s, tc);
    return s;
}
