/* test_server_persist.c -- the server with --data-dir, end to end.
 *
 * - Restore is exact: tables of every kind (full, hash, ce, cqr; Adam and
 *   Adagrad), trained and clustered, come back after a restart with the
 *   Digest they had at the checkpoint; the exit checkpoint (SIGTERM)
 *   covers pushes acknowledged after the last explicit one.
 * - Crash safety: 20 times, pushes and checkpoints, then SIGKILL at a
 *   random moment (between pushes, with pushes in flight, or right after
 *   a Checkpoint request was sent); the restarted server holds exactly
 *   the state of the last acknowledged checkpoint, or of the one in
 *   flight if it completed.
 * - The CLI's `checkpoint` and `checkpoints` against such a server.
 * - A damaged newest generation: the server says so and restores the
 *   previous one; with every generation damaged it refuses to start,
 *   unless --allow-empty-restore.
 * Servers run on 127.0.0.1:0 and are stopped by PID; data dirs are
 * temporary directories removed at the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "store/manifest.h"
#include "testutil.h"
#include "check_main.h"
#include "server_util.h"

START_TEST(test_restore_exact)
{
    make_dir();
    /* No exit checkpoint at first: the restart must come from the
     * explicit checkpoint itself. */
    const char *noexit[] = {"--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    start(&s, noexit);
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t t = {0};
    create(c, &t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    create(c, &t, "hash", CQRPS_KIND_HASH, CQRPS_OPT_ADAM);
    create(c, &t, "ce", CQRPS_KIND_CE, CQRPS_OPT_ADAM);
    create(c, &t, "cqr", CQRPS_KIND_CQR, CQRPS_OPT_ADAM);
    create(c, &t, "cqr_ada", CQRPS_KIND_CQR, CQRPS_OPT_ADAGRAD);
    uint64_t st = 42;
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < t.n; i++)
            for (int k = 0; k < 4; k++)
                push(c, t.name[i], 256, 5000, &st);
        /* Phases checkpoint before and after themselves (default on). */
        cluster(c, "cqr");
        cluster(c, "cqr_ada");
    }
    push(c, "cqr", 100, 100000, &st); /* new IDs after the phases */
    uint64_t gen = 0;
    ck_assert_msg(cqrps_checkpoint(c, &gen) == 0, "checkpoint: %s",
                  cqrps_last_error(c));
    ck_assert_uint_gt(gen, 1); /* the phases took some too */
    tables_t want = t;
    digests(c, &want);
    cqrps_close(c);
    tu_server_stop(&s);

    start(&s, noexit);
    c = tu_connect(s.addr);
    tables_t got = t;
    digests(c, &got);
    for (size_t i = 0; i < t.n; i++)
        ck_assert_msg(strcmp(got.digest[i], want.digest[i]) == 0,
                      "table %s: digest %s after restart, %s at checkpoint",
                      t.name[i], got.digest[i], want.digest[i]);
    cqrps_checkpoint_info_t *ck;
    size_t nck;
    ck_assert_int_eq(cqrps_list_checkpoints(c, &ck, &nck), 0);
    ck_assert_uint_ge(nck, 1);
    ck_assert_uint_le(nck, 3); /* --checkpoint-keep 3 */
    ck_assert_uint_ge(ck[0].generation, gen);
    ck_assert_uint_eq(ck[0].tables, t.n);
    cqrps_checkpoint_list_free(ck);

    /* Pushes after the last explicit checkpoint, then SIGTERM with the
     * exit checkpoint off: they are lost (the restore is the checkpoint),
     * which shows the next part tests the exit checkpoint and not luck. */
    for (size_t i = 0; i < t.n; i++)
        push(c, t.name[i], 64, 5000, &st);
    cqrps_close(c);
    tu_server_stop(&s);
    start(&s, NULL);
    c = tu_connect(s.addr);
    digests(c, &got);
    ck_assert(same_digests(&got, &want));

    /* Now with the exit checkpoint (default on): acknowledged pushes
     * after the last explicit checkpoint survive the SIGTERM. */
    for (size_t i = 0; i < t.n; i++)
        push(c, t.name[i], 64, 5000, &st);
    cluster(c, "cqr");
    push(c, "cqr", 64, 5000, &st);
    tables_t after = t;
    digests(c, &after);
    ck_assert(!same_digests(&after, &want));
    cqrps_close(c);
    tu_server_stop(&s);
    start(&s, NULL);
    c = tu_connect(s.addr);
    digests(c, &got);
    for (size_t i = 0; i < t.n; i++)
        ck_assert_msg(strcmp(got.digest[i], after.digest[i]) == 0,
                      "table %s: digest %s after SIGTERM restart, %s before",
                      t.name[i], got.digest[i], after.digest[i]);
    /* The restored tables keep training and clustering. */
    push(c, "cqr", 64, 5000, &st);
    cluster(c, "cqr");
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* Sends a Checkpoint request on a raw connection and returns the socket
 * without reading the reply (the server is killed meanwhile). */
static int send_checkpoint_raw(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    Cqrps__V1__Request req = CQRPS__V1__REQUEST__INIT;
    Cqrps__V1__Checkpoint ckm = CQRPS__V1__CHECKPOINT__INIT;
    req.id = 7;
    req.op_case = CQRPS__V1__REQUEST__OP_CHECKPOINT;
    req.checkpoint = &ckm;
    uint8_t buf[64];
    size_t len = cqrps__v1__request__get_packed_size(&req);
    ck_assert_uint_le(len + 4, sizeof buf);
    cqrps__v1__request__pack(&req, buf + 4);
    uint32_t be = htonl((uint32_t)len);
    memcpy(buf, &be, 4);
    ck_assert_int_eq(send(fd, buf, len + 4, 0), (ssize_t)(len + 4));
    return fd;
}

/* A few rounds of pushes, each followed by an acknowledged checkpoint;
 * *acked becomes the state of the last one. */
static void pushes_and_checkpoints(cqrps_client_t *c, const tables_t *t,
                                   tables_t *acked, uint64_t *st)
{
    int rounds = 1 + (int)(tu_rand(st) % 4);
    for (int r = 0; r < rounds; r++) {
        int pushes = 1 + (int)(tu_rand(st) % 6);
        for (int p = 0; p < pushes; p++)
            push(c, t->name[tu_rand(st) % t->n], 256,
                 r % 2 ? 2000 : 1000000, st);
        /* No push runs now: the digests are the state the checkpoint
         * captures. */
        tables_t now = *t;
        digests(c, &now);
        uint64_t gen;
        ck_assert_msg(cqrps_checkpoint(c, &gen) == 0, "checkpoint: %s",
                      cqrps_last_error(c));
        *acked = now;
    }
}

/* Pushes sent without waiting for their replies. */
static void pushes_in_flight(cqrps_client_t *c, const tables_t *t,
                             uint64_t *st)
{
    static uint64_t ids[4][512];
    static float g[4][512 * DIM];
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 512; i++)
            ids[k][i] = tu_rand(st) % 1000000;
        tu_fill(g[k], 512 * DIM, st);
        cqrps_ticket_t tk;
        ck_assert_int_eq(cqrps_push_start(c, t->name[k % t->n], ids[k], g[k],
                                          512, &tk), 0);
    }
}

START_TEST(test_crash_safety)
{
    make_dir();
    uint64_t st = 20260101;
    cqr_test_server_t s;
    start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t t = {0};
    create(c, &t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    create(c, &t, "cqr", CQRPS_KIND_CQR, CQRPS_OPT_ADAM);
    create(c, &t, "hash", CQRPS_KIND_HASH, CQRPS_OPT_ADAGRAD);
    /* The state of the last acknowledged checkpoint. */
    uint64_t gen0;
    ck_assert_int_eq(cqrps_checkpoint(c, &gen0), 0);
    tables_t acked = t;
    digests(c, &acked);
    uint64_t t0 = tu_now_ms();
    int kinds[3] = {0, 0, 0};
    int completed = 0; /* checkpoints in flight that made it */

    for (int it = 0; it < 20; it++) {
        /* Pushes and acknowledged checkpoints. */
        pushes_and_checkpoints(c, &t, &acked, &st);
        int kind = (int)(tu_rand(&st) % 3);
        kinds[kind]++;
        tables_t inflight = acked;
        int have_inflight = 0;
        int raw = -1;
        if (kind == 0) {
            /* Between pushes: the next ones are acknowledged and lost. */
            push(c, "full", 128, 1000000, &st);
            tu_sleep_ms((unsigned)(tu_rand(&st) % 20));
        } else if (kind == 1) {
            /* Pushes in flight, replies not awaited. */
            pushes_in_flight(c, &t, &st);
            tu_sleep_ms((unsigned)(tu_rand(&st) % 5));
        } else {
            /* A checkpoint in flight: its state is `inflight`. */
            push(c, "cqr", 256, 1000000, &st);
            push(c, "full", 256, 1000000, &st);
            digests(c, &inflight);
            have_inflight = 1;
            raw = send_checkpoint_raw(s.port);
            /* Often in the middle of writing it, sometimes before it
             * starts, sometimes after it finished. */
            unsigned us = (unsigned)(tu_rand(&st) % 60000);
            usleep(us);
        }
        cqrps_close(c);
        crash(&s);
        if (raw >= 0)
            close(raw);

        start(&s, NULL);
        c = tu_connect(s.addr);
        tables_t got = t;
        digests(c, &got);
        if (same_digests(&got, &acked)) {
            /* the last acknowledged checkpoint */
        } else if (have_inflight && same_digests(&got, &inflight)) {
            acked = inflight; /* the one in flight completed */
            completed++;
        } else {
            for (size_t i = 0; i < t.n; i++)
                fprintf(stderr, "iteration %d kind %d table %s: got %s, "
                        "acked %s, in flight %s\n", it, kind, t.name[i],
                        got.digest[i], acked.digest[i],
                        have_inflight ? inflight.digest[i] : "-");
            cqr_test_server_dump(&s, 4096);
            ck_abort_msg("iteration %d: restored state is neither the last "
                         "acknowledged checkpoint nor the one in flight", it);
        }
    }
    fprintf(stderr, "crash safety: 20 kills (between pushes %d, pushes in "
            "flight %d, checkpoint in flight %d, of which completed %d) in "
            "%.1f s\n", kinds[0], kinds[1], kinds[2], completed,
            (double)(tu_now_ms() - t0) / 1000.0);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* Runs the CLI against addr and returns its stdout (static buffer). */
static const char *cli(const char *addr, const char *cmd)
{
    static char out[4096];
    char line[512];
    snprintf(line, sizeof line, "%s --addr %s %s", CQR_CLI_BIN, addr, cmd);
    FILE *p = popen(line, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ck_assert_int_eq(pclose(p), 0);
    return out;
}

START_TEST(test_cli_checkpoints)
{
    make_dir();
    cqr_test_server_t s;
    start(&s, NULL);
    const char *o = cli(s.addr, "checkpoints");
    ck_assert_msg(strstr(o, "no checkpoints") != NULL, "got: %s", o);
    o = cli(s.addr, "checkpoint");
    ck_assert_msg(strcmp(o, "checkpoint generation 1\n") == 0, "got: %s", o);
    o = cli(s.addr, "checkpoint");
    ck_assert_msg(strcmp(o, "checkpoint generation 2\n") == 0, "got: %s", o);
    o = cli(s.addr, "--json checkpoint");
    ck_assert_msg(strstr(o, "\"generation\":3") != NULL, "got: %s", o);
    o = cli(s.addr, "checkpoints");
    ck_assert_msg(strstr(o, "GENERATION") != NULL, "got: %s", o);
    /* Newest first, one line each. */
    const char *g3 = strstr(o, "   3 "), *g2 = strstr(o, "   2 ");
    ck_assert_msg(g3 != NULL && g2 != NULL && g3 < g2, "got: %s", o);
    o = cli(s.addr, "--json checkpoints");
    ck_assert_msg(strstr(o, "\"generation\":1") != NULL, "got: %s", o);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* Flips a byte of generation gen's manifest in the closed database. */
static void damage_manifest(uint64_t gen)
{
    char *err = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_t *db = rocksdb_open(o, dir, &err);
    ck_assert_msg(db != NULL, "open %s: %s", dir, err ? err : "?");
    uint8_t key[16];
    size_t kl = cqr_key_manifest(key, gen);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    size_t vl = 0;
    char *v = rocksdb_get(db, ro, (const char *)key, kl, &vl, &err);
    ck_assert_msg(v != NULL && vl > 40, "manifest of generation %" PRIu64
                  " not found", gen);
    v[vl / 2] ^= 0x5a;
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    rocksdb_put(db, wo, (const char *)key, kl, v, vl, &err);
    ck_assert_msg(err == NULL, "put: %s", err ? err : "");
    rocksdb_free(v);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_readoptions_destroy(ro);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
}

START_TEST(test_damaged_generation_falls_back)
{
    make_dir();
    const char *noexit[] = {"--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    start(&s, noexit);
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t t = {0};
    create(c, &t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    create(c, &t, "cqr", CQRPS_KIND_CQR, CQRPS_OPT_ADAM);
    uint64_t st = 5;
    push(c, "full", 200, 10000, &st);
    push(c, "cqr", 200, 10000, &st);
    uint64_t g1, g2;
    ck_assert_int_eq(cqrps_checkpoint(c, &g1), 0);
    tables_t first = t;
    digests(c, &first);
    push(c, "full", 200, 10000, &st);
    push(c, "cqr", 200, 10000, &st);
    ck_assert_int_eq(cqrps_checkpoint(c, &g2), 0);
    ck_assert_uint_eq(g2, g1 + 1);
    cqrps_close(c);
    tu_server_stop(&s);

    /* The newest generation is damaged: the previous one is restored,
     * and the log says why. */
    damage_manifest(g2);
    start(&s, noexit);
    c = tu_connect(s.addr);
    tables_t got = t;
    digests(c, &got);
    ck_assert(same_digests(&got, &first));
    cqrps_close(c);
    tu_server_stop(&s);
    /* tu_server_stop removed the log: start again to read it. */
    start(&s, noexit);
    ck_assert(log_has(&s, "skipped damaged generations"));
    ck_assert(log_has(&s, "restored generation=1 "));
    tu_server_stop(&s);

    /* Asking for the damaged one by number: a clear refusal. */
    char gs[32];
    snprintf(gs, sizeof gs, "%" PRIu64, g2);
    const char *args[] = {"--data-dir", dir, "--restore-generation", gs,
                          NULL};
    ck_assert_int_ne(cqr_test_server_start(&s, args, TU_START_MS), 0);
    ck_assert_int_eq(cqr_test_server_wait(&s, TU_STOP_MS), 1);
    ck_assert(log_has(&s, "cannot restore generation="));
    cqr_test_server_cleanup(&s);

    /* Every generation damaged: refuse to start, never start empty... */
    damage_manifest(g1);
    const char *plain[] = {"--data-dir", dir, NULL};
    ck_assert_int_ne(cqr_test_server_start(&s, plain, TU_START_MS), 0);
    ck_assert_int_eq(cqr_test_server_wait(&s, TU_STOP_MS), 1);
    ck_assert(log_has(&s, "refusing to start empty"));
    cqr_test_server_cleanup(&s);
    /* ...unless told to. */
    const char *allow[] = {"--allow-empty-restore", "on", NULL};
    start(&s, allow);
    c = tu_connect(s.addr);
    cqrps_table_info_t *tl;
    size_t nt;
    ck_assert_int_eq(cqrps_list_tables(c, &tl, &nt), 0);
    ck_assert_uint_eq(nt, 0);
    cqrps_table_list_free(tl);
    cqrps_close(c);
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("server_persist");
    TCase *tc = tcase_create("restore");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_restore_exact);
    tcase_add_test(tc, test_cli_checkpoints);
    tcase_add_test(tc, test_damaged_generation_falls_back);
    tcase_add_test(tc, test_crash_safety);
    suite_add_tcase(s, tc);
    return s;
}
