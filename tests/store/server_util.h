/* server_util.h -- helpers of the suites that run cqrps-server with
 * --data-dir (test_server_persist.c, test_server_faults.c): a temporary
 * data dir, servers started on it and killed, tables of every kind and
 * their digests, pushes, the server's log.
 *
 * Each suite includes it once (everything is static to it), after
 * testutil.h and check.h. Helpers fail the running test (ck_assert)
 * instead of returning errors.
 */
#ifndef CQR_TEST_STORE_SERVER_UTIL_H
#define CQR_TEST_STORE_SERVER_UTIL_H

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.h"
#include "testutil.h"

#define DIM 8
#define MAXT 8

static char dir[64];

static inline void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/cqr-spersist-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static inline void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Starts a server on dir with the extra flags (NULL-terminated). */
static inline void start(cqr_test_server_t *s, const char *const *extra)
{
    const char *args[24] = {"--data-dir", dir, "--checkpoint-interval", "0"};
    size_t n = 4;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    tu_server_start(s, args);
}

/* SIGKILL and reap; the log must still be free of sanitizer reports. */
static inline void crash(cqr_test_server_t *s)
{
    ck_assert_int_eq(cqr_test_server_signal(s, SIGKILL), 0);
    ck_assert_int_eq(cqr_test_server_wait(s, TU_STOP_MS), -1);
    int clean = cqr_test_server_clean(s);
    if (!clean)
        cqr_test_server_dump(s, 8192);
    cqr_test_server_cleanup(s);
    ck_assert(clean);
}

typedef struct tables {
    size_t n;
    char name[MAXT][16];
    char digest[MAXT][17];
} tables_t;

static inline void digests(cqrps_client_t *c, tables_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        ck_assert_msg(cqrps_digest(c, t->name[i], t->digest[i]) == 0,
                      "digest %s: %s", t->name[i], cqrps_last_error(c));
}

static inline int same_digests(const tables_t *a, const tables_t *b)
{
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->digest[i], b->digest[i]) != 0)
            return 0;
    return 1;
}

/* A push of n random IDs from [0, range) with random gradients. */
static inline void push(cqrps_client_t *c, const char *table, size_t n,
                 uint64_t range, uint64_t *st)
{
    uint64_t ids[512];
    float g[512 * DIM];
    ck_assert(n <= 512);
    for (size_t i = 0; i < n; i++)
        ids[i] = tu_rand(st) % range;
    tu_fill(g, n * DIM, st);
    ck_assert_msg(cqrps_push(c, table, ids, g, n) == 0, "push %s: %s", table,
                  cqrps_last_error(c));
}

static inline void create(cqrps_client_t *c, tables_t *t, const char *name,
                   cqrps_kind_t kind, cqrps_optimizer_t opt)
{
    cqrps_table_config_t cfg;
    tu_config(&cfg, kind, opt, DIM);
    cfg.rows = 64;
    cfg.chunks = 2;
    if (kind == CQRPS_KIND_CQR)
        cfg.cluster_iters = 5;
    ck_assert_msg(cqrps_create_table(c, name, &cfg, NULL) == 0, "create %s: %s",
                  name, cqrps_last_error(c));
    snprintf(t->name[t->n++], sizeof t->name[0], "%s", name);
}

static inline void cluster(cqrps_client_t *c, const char *table)
{
    uint64_t id;
    ck_assert_msg(cqrps_cluster(c, table, &id) == 0, "cluster: %s",
                  cqrps_last_error(c));
    ck_assert_msg(cqrps_cluster_wait(c, table, id, 60000, NULL) == 0,
                  "cluster wait: %s", cqrps_last_error(c));
}

/* 1 if the server's log contains s. */
static inline int log_has(const cqr_test_server_t *s, const char *what)
{
    FILE *f = fopen(s->err_path, "r");
    ck_assert_ptr_nonnull(f);
    char line[2048];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

#endif
