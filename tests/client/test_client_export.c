/* Serving exports end to end: a real server with --data-dir, tables of
 * every kind trained through the client (cqr with phases), checkpoints,
 * `Export` fetched by cqrps_export, and cqrps_model_* lookups compared bit
 * for bit with the server's lookups at that generation; a delta fetched
 * with --since applies to the older export and gives the newer one. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cqrps.h"
#include "cqrps_model.h"
#include "testutil.h"
#include "check_main.h"

enum { DIM = 16, N = 600, SPAN = 4000 };

/* Known and never-seen IDs, and bags over them. */
static uint64_t ids[N];
static uint32_t offs[100];
static size_t nbags;

static void make_probes(void)
{
    for (int j = 0; j < N; j++)
        ids[j] = j % 2 ? (uint64_t)j * 13 % SPAN : (1ull << 50) + (uint64_t)j;
    size_t at = 0;
    nbags = 0;
    while (at < N && nbags < 100) {
        offs[nbags++] = (uint32_t)at;
        at += nbags % 9;
    }
}

/* The server's answers now: plain, pooled sum, pooled mean. */
typedef struct answers {
    float plain[N * DIM];
    float sum[100 * DIM], mean[100 * DIM];
} answers_t;

static void server_answers(cqrps_client_t *c, const char *t, answers_t *a)
{
    ck_assert_int_eq(cqrps_lookup(c, t, ids, N, a->plain), 0);
    size_t n = offs[nbags - 1] + 1;
    ck_assert_int_eq(cqrps_lookup_pooled(c, t, ids, n, offs, nbags,
                                         CQRPS_POOL_SUM, a->sum), 0);
    ck_assert_int_eq(cqrps_lookup_pooled(c, t, ids, n, offs, nbags,
                                         CQRPS_POOL_MEAN, a->mean), 0);
}

static void assert_model_answers(const cqrps_model_t *m, const answers_t *a)
{
    static answers_t b;
    size_t n = offs[nbags - 1] + 1;
    ck_assert_int_eq(cqrps_model_lookup(m, ids, N, b.plain), 0);
    ck_assert_int_eq(cqrps_model_lookup_pooled(m, ids, n, offs, nbags,
                                               CQRPS_POOL_SUM, b.sum), 0);
    ck_assert_int_eq(cqrps_model_lookup_pooled(m, ids, n, offs, nbags,
                                               CQRPS_POOL_MEAN, b.mean), 0);
    ck_assert(tu_same(b.plain, a->plain, N * DIM, "plain"));
    ck_assert(tu_same(b.sum, a->sum, nbags * DIM, "sum"));
    ck_assert(tu_same(b.mean, a->mean, nbags * DIM, "mean"));
}

static cqrps_model_t *open_model(const char *path)
{
    cqrps_model_t *m = NULL;
    int rc = cqrps_model_open(path, &m);
    ck_assert_msg(rc == 0, "open %s: %s", path, cqrps_model_last_error());
    return m;
}

static int files_equal(const char *a, const char *b)
{
    FILE *x = fopen(a, "rb"), *y = fopen(b, "rb");
    int same = x && y;
    while (same) {
        int p = fgetc(x), q = fgetc(y);
        same = p == q;
        if (p == EOF || q == EOF)
            break;
    }
    if (x)
        fclose(x);
    if (y)
        fclose(y);
    return same;
}

/* What an export's progress callback saw; stop_at > 0 stops it at that
 * call. */
typedef struct progress {
    int calls, stop_at, backwards;
    uint64_t last_done, total;
} progress_t;

static int on_progress(void *ud, uint64_t done, uint64_t total)
{
    progress_t *p = ud;
    p->calls++;
    if (done < p->last_done || done > total)
        p->backwards++;
    p->last_done = done;
    p->total = total;
    return p->stop_at && p->calls >= p->stop_at;
}

START_TEST(export_matches_server)
{
    char dir[] = "/tmp/cqr_test_export_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char p1[160], p2[160], pd[160], pr[160];
    const char *keep[] = {"--checkpoint-keep", "0", NULL};
    cqr_test_server_t s;
    tu_data_server_start(&s, dir, "data", keep);
    cqrps_client_t *c = tu_connect(s.addr);
    make_probes();
    static answers_t a1, a2;
    static const char *const names[] = {"f", "h", "e", "q"};
    for (int kind = 0; kind <= CQRPS_KIND_CQR; kind++) {
        const char *t = names[kind];
        tu_create_table(c, t, (cqrps_kind_t)kind, CQRPS_OPT_ADAM, DIM, 128,
                        NULL);
        uint64_t rs = 99 + (uint64_t)kind;
        tu_push_random(c, t, &rs, 6, DIM, SPAN);
        for (int ph = 0; kind == CQRPS_KIND_CQR && ph < 2; ph++) {
            uint64_t id;
            ck_assert_int_eq(cqrps_cluster(c, t, &id), 0);
            ck_assert_int_eq(cqrps_cluster_wait(c, t, id, 60000, NULL), 0);
            tu_push_random(c, t, &rs, 2, DIM, SPAN);
        }
        uint64_t g1, g2;
        ck_assert_int_eq(cqrps_checkpoint(c, &g1), 0);
        server_answers(c, t, &a1);
        tu_push_random(c, t, &rs, 3, DIM, SPAN);
        if (kind == CQRPS_KIND_CQR) {
            uint64_t id;
            ck_assert_int_eq(cqrps_cluster(c, t, &id), 0);
            ck_assert_int_eq(cqrps_cluster_wait(c, t, id, 60000, NULL), 0);
        }
        ck_assert_int_eq(cqrps_checkpoint(c, &g2), 0);
        server_answers(c, t, &a2);
        /* Training goes on after the checkpoint: the export is g2's. */
        tu_push_random(c, t, &rs, 1, DIM, SPAN);

        snprintf(p1, sizeof p1, "%s/%s.1.cqrm", dir, t);
        snprintf(p2, sizeof p2, "%s/%s.2.cqrm", dir, t);
        snprintf(pd, sizeof pd, "%s/%s.d.cqrm", dir, t);
        snprintf(pr, sizeof pr, "%s/%s.r.cqrm", dir, t);
        cqrps_export_opts_t o = {.generation = g1};
        cqrps_export_info_t info;
        ck_assert_msg(cqrps_export(c, t, &o, p1, &info) == 0,
                      "export %s g%llu (g2 %llu): %s", t,
                      (unsigned long long)g1, (unsigned long long)g2,
                      cqrps_last_error(c));
        ck_assert_uint_eq(info.generation, g1);
        o.generation = 0;
        ck_assert_int_eq(cqrps_export(c, t, &o, p2, &info), 0);
        ck_assert_uint_eq(info.generation, g2);
        o.since = g1;
        ck_assert_int_eq(cqrps_export(c, t, &o, pd, &info), 0);
        ck_assert_uint_eq(info.base_generation, g1);

        cqrps_model_t *m1 = open_model(p1), *m2 = open_model(p2), *r2;
        assert_model_answers(m1, &a1);
        assert_model_answers(m2, &a2);
        ck_assert_int_eq(cqrps_model_apply_delta(m1, pd, &r2), 0);
        assert_model_answers(r2, &a2);
        ck_assert_int_eq(cqrps_model_save(r2, pr), 0);
        ck_assert(files_equal(pr, p2));
        cqrps_model_t *bad = NULL;
        ck_assert_int_eq(cqrps_model_apply_delta(m2, pd, &bad), CQRPS_EINVAL);
        ck_assert_ptr_nonnull(strstr(cqrps_model_last_error(), "generation"));
        cqrps_model_close(m1);
        cqrps_model_close(m2);
        cqrps_model_close(r2);
        unlink(p1);
        unlink(p2);
        unlink(pd);
        unlink(pr);
    }
    /* A truncated file is refused with a reason. */
    snprintf(p1, sizeof p1, "%s/x.cqrm", dir);
    cqrps_export_opts_t o = {.dtype = "int8"};
    ck_assert_int_eq(cqrps_export(c, "q", &o, p1, NULL), 0);
    ck_assert_int_eq(truncate(p1, 1000), 0);
    cqrps_model_t *m = NULL;
    ck_assert_int_eq(cqrps_model_open(p1, &m), CQRPS_ECORRUPT);
    ck_assert(cqrps_model_last_error()[0] != '\0');
    unlink(p1);
    /* Progress: called per chunk up to the file's size; a nonzero return
     * stops the fetch with CANCELED and leaves no file, not even the
     * temporary one. */
    progress_t pg = {0};
    o = (cqrps_export_opts_t){.progress = on_progress, .progress_ud = &pg};
    cqrps_export_info_t xi;
    ck_assert_int_eq(cqrps_export(c, "q", &o, p1, &xi), 0);
    ck_assert_int_ge(pg.calls, 1);
    ck_assert_uint_eq(pg.last_done, xi.bytes);
    ck_assert_uint_eq(pg.total, xi.bytes);
    ck_assert_int_eq(pg.backwards, 0);
    unlink(p1);
    pg = (progress_t){.stop_at = 1};
    ck_assert_int_eq(cqrps_export(c, "q", &o, p1, NULL), CQRPS_ECANCELED);
    ck_assert_int_eq(pg.calls, 1);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), "stopped"));
    ck_assert_int_ne(access(p1, F_OK), 0);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", p1);
    ck_assert_int_ne(access(tmp, F_OK), 0);
    /* Unknown tables and generations are errors, not files. */
    ck_assert_int_eq(cqrps_export(c, "nope", NULL, p1, NULL), CQRPS_ENOTFOUND);
    o = (cqrps_export_opts_t){.generation = 999};
    ck_assert_int_eq(cqrps_export(c, "q", &o, p1, NULL), CQRPS_ENOTFOUND);
    ck_assert_int_ne(access(p1, F_OK), 0);
    cqrps_close(c);
    tu_server_stop(&s);
    tu_rmtree(dir);
}
END_TEST

START_TEST(export_needs_data_dir)
{
    cqr_test_server_t s;
    tu_server_start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    tu_create_table(c, "q", CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM, 0, NULL);
    ck_assert_int_eq(cqrps_export(c, "q", NULL, "/tmp/cqr_never.cqrm", NULL),
                     CQRPS_EUNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), "--data-dir"));
    cqrps_close(c);
    tu_server_stop(&s);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_export");
    TCase *tc = tcase_create("export");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, export_matches_server);
    tcase_add_test(tc, export_needs_data_dir);
    suite_add_tcase(s, tc);
    return s;
}
