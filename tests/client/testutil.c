/* testutil.c -- helpers of the client integration suites (see .h). */
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/hash.h"

void tu_server_start(cqr_test_server_t *s, const char *const *args)
{
    int rc = cqr_test_server_start(s, args, TU_START_MS);
    ck_assert_msg(rc == 0, "cqrps-server did not start");
}

void tu_server_stop(cqr_test_server_t *s)
{
    int code = cqr_test_server_stop(s, TU_STOP_MS);
    int clean = cqr_test_server_clean(s);
    if (code != 0 || !clean)
        cqr_test_server_dump(s, 8192);
    cqr_test_server_cleanup(s);
    ck_assert_msg(code == 0, "server exit status %d, not 0", code);
    ck_assert_msg(clean, "sanitizer report in the server's log");
}

void tu_data_server_start(cqr_test_server_t *s, const char *dir,
                          const char *sub, const char *const *extra)
{
    char ddir[256];
    int len = snprintf(ddir, sizeof ddir, "%s/%s", dir, sub);
    ck_assert(len > 0 && (size_t)len < sizeof ddir);
    const char *args[16] = {"--data-dir", ddir};
    size_t n = 2;
    for (size_t i = 0; extra && extra[i]; i++) {
        ck_assert_uint_lt(n, 15);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    tu_server_start(s, args);
}

void tu_rmtree(const char *dir)
{
    char cmd[300];
    int len = snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert(len > 0 && (size_t)len < sizeof cmd);
    ck_assert_int_eq(system(cmd), 0);
}

cqrps_client_t *tu_connect(const char *addr)
{
    cqrps_client_t *c = NULL;
    int rc = cqrps_connect(addr, NULL, &c);
    ck_assert_msg(rc == 0, "connect %s: %s (%s)", addr, cqrps_errname(rc),
                  cqrps_last_error(NULL));
    return c;
}

void tu_config(cqrps_table_config_t *cfg, cqrps_kind_t kind,
               cqrps_optimizer_t opt, uint32_t dim)
{
    cqrps_table_config_init(cfg, kind, dim);
    cfg->chunks = kind == CQRPS_KIND_CE || kind == CQRPS_KIND_CQR ? 4 : 0;
    cfg->rows = kind == CQRPS_KIND_FULL ? 0 : 64;
    cfg->seed = 1234;
    cfg->optimizer = opt;
    cfg->lr = opt == CQRPS_OPT_SGD ? 0.05f : opt == CQRPS_OPT_ADAGRAD ? 0.1f
                                                                      : 0.01f;
    cfg->beta1 = 0.9f;
    cfg->beta2 = 0.999f;
    cfg->eps = 1e-8f;
    cfg->weight_decay = opt == CQRPS_OPT_ADAM ? 0.01f : 0.0f;
    cfg->init_scale = 0.25f;
    cfg->cluster_iters = 10;
    cfg->cluster_sample = 50;
    cfg->cluster_tol = -1.0f; /* every iteration */
    cfg->reset_optimizer = CQRPS_OFF;
}

void tu_create_table(cqrps_client_t *c, const char *name, cqrps_kind_t kind,
                     cqrps_optimizer_t opt, uint32_t dim, uint32_t rows,
                     cqrps_table_config_t *cfg)
{
    cqrps_table_config_t own;
    if (cfg == NULL)
        cfg = &own;
    tu_config(cfg, kind, opt, dim);
    if (rows != 0 && kind != CQRPS_KIND_FULL)
        cfg->rows = rows;
    ck_assert_int_eq(cqrps_create_table(c, name, cfg, NULL), 0);
}

void tu_engine_config(const cqrps_table_config_t *in, cqr_table_config_t *o)
{
    cqr_table_config_default(o, (cqr_kind_t)in->kind, in->dim);
    if (in->chunks && (in->kind == CQRPS_KIND_CE || in->kind == CQRPS_KIND_CQR))
        o->chunks = in->chunks;
    if (in->rows && in->kind != CQRPS_KIND_FULL)
        o->rows = in->rows;
    o->seed = in->seed;
    if (in->init_scale != 0)
        o->init_scale = in->init_scale;
    o->optim.kind = (cqr_optim_kind_t)in->optimizer;
    o->optim.lr = in->lr;
    o->optim.beta1 = in->beta1;
    o->optim.beta2 = in->beta2;
    o->optim.eps = in->eps;
    o->optim.weight_decay = in->weight_decay;
    o->schedule_every = in->schedule_every;
    o->schedule_max_phases = in->schedule_max_phases;
    if (in->cluster_iters)
        o->cluster_iters = in->cluster_iters;
    if (in->cluster_sample)
        o->cluster_sample = in->cluster_sample;
    if (in->reset_optimizer != CQRPS_DEFAULT)
        o->reset_optimizer = in->reset_optimizer == CQRPS_ON;
    if (in->cluster_tol != 0)
        o->cluster_tol = in->cluster_tol > 0 ? in->cluster_tol : 0.0f;
    o->compact = in->compact ? 1u : 0u;
    o->cluster_threads = 1; /* the server's --cluster-threads default */
}

cqr_table_t *tu_mirror(const cqrps_table_config_t *cfg)
{
    cqr_table_config_t ec;
    tu_engine_config(cfg, &ec);
    char why[256] = "";
    ck_assert_msg(cqr_table_config_check(&ec, why, sizeof(why)) == 0,
                  "engine config: %s", why);
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&ec, &t), 0);
    return t;
}

uint64_t tu_rand(uint64_t *s)
{
    /* The engine's PRNG step (cqr_rng_next) on a bare state word. */
    return cqr_mix64(*s += 0x9e3779b97f4a7c15ULL);
}

float tu_randf(uint64_t *s)
{
    return (float)((int)(tu_rand(s) % 2048) - 1024) / 1024.0f;
}

void tu_fill(float *v, size_t n, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        v[i] = tu_randf(s);
}

void tu_push_random(cqrps_client_t *c, const char *table, uint64_t *s,
                    int n, uint32_t dim, uint64_t span)
{
    uint64_t ids[256];
    float *g = malloc(256 * (size_t)dim * sizeof *g);
    ck_assert_ptr_nonnull(g);
    for (int k = 0; k < n; k++) {
        for (int j = 0; j < 256; j++)
            ids[j] = tu_rand(s) % span;
        tu_fill(g, 256 * (size_t)dim, s);
        ck_assert_int_eq(cqrps_push(c, table, ids, g, 256), 0);
    }
    free(g);
}

int tu_same(const float *a, const float *b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            fprintf(stderr, "%s: element %zu differs: %.9g vs %.9g\n", what,
                    i, a[i], b[i]);
            return 0;
        }
    }
    return 1;
}

double tu_maxrel(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fabs((double)b[i]);
        d /= s > 1.0 ? s : 1.0;
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

uint64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void tu_sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}
