/* test_server_faults.c -- the server with --data-dir under storage faults
 * (issue 14), end to end.
 *
 * - A damaged newest generation (a bit flipped in its blob file after a
 *   SIGKILL): the server starts from the previous one, says which it
 *   skipped and why, and that the last acknowledged one is damaged.
 * - The WAL files deleted after acknowledged checkpoints: nothing is
 *   lost. The last acknowledged generation vanished without a trace: the
 *   server refuses to start (exit 1) and says so, unless
 *   --accept-older-generation, after which it starts normally again.
 * - A full disk (a tmpfs, as root): checkpoints fail, /readyz and the
 *   metrics say so; when the disk grows, the retries succeed by
 *   themselves. Full again, a SIGTERM's exit checkpoint fails: exit
 *   status 1 and an error line that counts the pushes not on disk; the
 *   restart restores the last good generation.
 * - A disk that turns read-only and writable again (the power-loss
 *   layer's injected EROFS): the same recovery.
 * Servers run on 127.0.0.1:0 and are stopped by PID; data dirs are
 * temporary directories removed at the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/manifest.h"
#include "testutil.h"
#include "check_main.h"
#include "rocks_files.h"
#include "server_util.h"

/* ---- Helpers ------------------------------------------------------------ */

/* GET path from the metrics endpoint: the status code, the body in a
 * static buffer. */
static int http_get(uint16_t port, const char *path, const char **body)
{
    static char buf[1 << 17];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[128];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    size_t len = 0;
    uint64_t deadline = tu_now_ms() + 10000;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int left = (int)(deadline - tu_now_ms());
        ck_assert_msg(left > 0, "GET %s: no reply", path);
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t got = read(fd, buf + len, sizeof buf - 1 - len);
        ck_assert_int_ge(got, 0);
        if (got == 0 || len + (size_t)got == sizeof buf - 1) {
            len += (size_t)got;
            break;
        }
        len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    int status = -1;
    ck_assert_int_eq(sscanf(buf, "HTTP/1.%*d %d", &status), 1);
    char *sep = strstr(buf, "\r\n\r\n");
    *body = sep ? sep + 4 : buf + len;
    return status;
}

/* The value of metric `series` (a line "series value"), or -1. */
static double metric(uint16_t port, const char *series)
{
    const char *body;
    ck_assert_int_eq(http_get(port, "/metrics", &body), 200);
    size_t sl = strlen(series);
    for (const char *p = body; p && *p; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if (strncmp(p, series, sl) == 0 && p[sl] == ' ')
            return strtod(p + sl + 1, NULL);
    }
    return -1;
}

/* The metrics port of a server started with --metrics-listen. */
static uint16_t metrics_port(cqr_test_server_t *s)
{
    char line[128];
    ck_assert_int_eq(cqr_test_server_read_line(s, "cqrps-server metrics on ",
                                               line, sizeof line, 10000), 0);
    char *colon = strrchr(line, ':');
    ck_assert_ptr_nonnull(colon);
    return (uint16_t)atoi(colon + 1);
}

/* Starts a server that must refuse to start; returns its exit status
 * (the log stays for log_has until cqr_test_server_cleanup). */
static int start_refused(cqr_test_server_t *s, const char *const *extra)
{
    const char *args[24] = {"--data-dir", dir, "--checkpoint-interval", "0"};
    size_t n = 4;
    for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    ck_assert_int_ne(cqr_test_server_start(s, args, TU_START_MS), 0);
    return cqr_test_server_wait(s, TU_STOP_MS);
}

/* Deletes generation gen's manifest: it vanishes without a trace. */
static void vanish(uint64_t gen)
{
    char *err = NULL;
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_enable_blob_files(o, 1);
    rocksdb_t *db = rocksdb_open(o, dir, &err);
    ck_assert_msg(db != NULL, "open %s: %s", dir, err ? err : "?");
    uint8_t key[16];
    size_t kl = cqr_key_manifest(key, gen);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    rocksdb_delete(db, wo, (const char *)key, kl, &err);
    ck_assert_ptr_null(err);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_close(db);
    rocksdb_options_destroy(o);
}

/* Two tables, pushes and three checkpoints; d[g] holds the digests of
 * generation g. The server is left running. */
static void three_checkpoints(cqr_test_server_t *s, tables_t *t,
                              tables_t d[4])
{
    cqrps_client_t *c = tu_connect(s->addr);
    create(c, t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    create(c, t, "cqr", CQRPS_KIND_CQR, CQRPS_OPT_ADAM);
    uint64_t st = 77;
    for (uint64_t g = 1; g <= 3; g++) {
        for (int k = 0; k < 4; k++) {
            push(c, "full", 512, 100000, &st);
            push(c, "cqr", 512, 100000, &st);
        }
        d[g] = *t;
        digests(c, &d[g]);
        uint64_t gen;
        ck_assert_int_eq(cqrps_checkpoint(c, &gen), 0);
        ck_assert_uint_eq(gen, g);
    }
    cqrps_close(c);
}

static void expect_state(const cqr_test_server_t *s, const tables_t *want)
{
    cqrps_client_t *c = tu_connect(s->addr);
    tables_t got = *want;
    digests(c, &got);
    cqrps_close(c);
    ck_assert_msg(same_digests(&got, want), "restored state differs");
}

/* ---- 1. A damaged newest generation ------------------------------------- */

START_TEST(test_damaged_newest_starts)
{
    make_dir();
    const char *noexit[] = {"--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    start(&s, noexit);
    tables_t t = {0}, d[4];
    three_checkpoints(&s, &t, d);
    crash(&s);
    char blob[256];
    ck_assert(find_file(dir, ".blob", 1, blob, sizeof blob));
    struct stat sb;
    ck_assert_int_eq(stat(blob, &sb), 0);
    int fd = open(blob, O_RDWR);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, sb.st_size / 2), 1);
    b ^= 0x10;
    ck_assert_int_eq(pwrite(fd, &b, 1, sb.st_size / 2), 1);
    close(fd);

    start(&s, noexit);
    expect_state(&s, &d[2]);
    ck_assert(log_has(&s, "skipped damaged generations count=1"));
    ck_assert(log_has(&s, "generation 3: table"));
    ck_assert(log_has(&s, "acknowledged generation=3 is damaged"));
    ck_assert(log_has(&s, "restored generation=2 "));
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* ---- 2. Lost WAL files, a vanished generation --------------------------- */

START_TEST(test_wal_lost_and_vanished)
{
    make_dir();
    const char *noexit[] = {"--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    start(&s, noexit);
    tables_t t = {0}, d[4];
    three_checkpoints(&s, &t, d);
    crash(&s);
    /* Every WAL file goes: the acknowledged generations stay. */
    DIR *dd = opendir(dir);
    struct dirent *e;
    while ((e = readdir(dd)) != NULL) {
        size_t nl = strlen(e->d_name);
        if (nl > 4 && strcmp(e->d_name + nl - 4, ".log") == 0) {
            char p[sizeof dir + 256];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            ck_assert_int_eq(unlink(p), 0);
        }
    }
    closedir(dd);
    start(&s, noexit);
    expect_state(&s, &d[3]);
    ck_assert(log_has(&s, "restored generation=3 "));
    tu_server_stop(&s);

    /* Generation 3 vanishes without a trace: a refusal that says why. */
    vanish(3);
    ck_assert_int_eq(start_refused(&s, noexit), 1);
    ck_assert(log_has(&s, "acknowledged generation=3 is missing"));
    ck_assert(log_has(&s, "--accept-older-generation on starts from "
                          "generation=2"));
    cqr_test_server_cleanup(&s);

    /* The operator accepts generation 2; the metric says what was lost. */
    const char *accept[] = {"--checkpoint-on-exit", "off",
                            "--accept-older-generation", "on",
                            "--metrics-listen", "127.0.0.1:0", NULL};
    start(&s, accept);
    uint16_t mport = metrics_port(&s);
    expect_state(&s, &d[2]);
    ck_assert(log_has(&s, "accepted generation=2"));
    ck_assert(metric(mport, "cqrps_restore_missing_generations") == 1.0);
    tu_server_stop(&s);
    /* ...once: the next start is a normal one. */
    start(&s, noexit);
    expect_state(&s, &d[2]);
    ck_assert(!log_has(&s, "is missing"));
    tu_server_stop(&s);
    remove_dir();
}
END_TEST

/* ---- 3, 4. A full disk -------------------------------------------------- */

#define BIG_DIM 256
#define BIG_IDS 4096

/* Pushes a gradient to every ID of table "big"; counts the pushes. */
static void push_all(cqrps_client_t *c, uint64_t *st, int *pushes)
{
    static uint64_t ids[512];
    static float g[512 * BIG_DIM];
    for (uint64_t lo = 0; lo < BIG_IDS; lo += 512) {
        for (int i = 0; i < 512; i++)
            ids[i] = lo + (uint64_t)i;
        tu_fill(g, 512 * BIG_DIM, st);
        ck_assert_msg(cqrps_push(c, "big", ids, g, 512) == 0, "push: %s",
                      cqrps_last_error(c));
        (*pushes)++;
    }
}

/* Waits until the metric `series` equals v (bounded). */
static void wait_metric(uint16_t mport, const char *series, double v,
                        unsigned ms)
{
    uint64_t end = tu_now_ms() + ms;
    while (metric(mport, series) != v) {
        ck_assert_msg(tu_now_ms() < end, "%s never became %g", series, v);
        tu_sleep_ms(100);
    }
}

/* The tmpfs of test_disk_full, unmounted by the teardown if the test
 * fails before it does ("" when none). */
static char g_mnt[32];

static void unmount_left(void)
{
    if (g_mnt[0] == '\0')
        return;
    umount2(g_mnt, MNT_DETACH);
    rmdir(g_mnt);
    g_mnt[0] = '\0';
}

START_TEST(test_disk_full)
{
    if (geteuid() != 0) {
        printf("SKIP test_disk_full: not root (needs a tmpfs mount)\n");
        return;
    }
    char mnt[32];
    snprintf(mnt, sizeof mnt, "/tmp/cqr-sfaults-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(mnt));
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=24m,mode=0700") != 0) {
        printf("SKIP test_disk_full: cannot mount a tmpfs (%s)\n",
               strerror(errno));
        rmdir(mnt);
        return;
    }
    snprintf(g_mnt, sizeof g_mnt, "%s", mnt);
    snprintf(dir, sizeof dir, "%s/data", mnt);
    const char *args[] = {"--checkpoint-keep", "0", "--metrics-listen",
                          "127.0.0.1:0", NULL};
    cqr_test_server_t s;
    start(&s, args);
    uint16_t mport = metrics_port(&s);
    cqrps_client_t *c = tu_connect(s.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_SGD, BIG_DIM);
    ck_assert_int_eq(cqrps_create_table(c, "big", &cfg, NULL), 0);
    tables_t t = {1, {"big"}, {""}};
    uint64_t st = 3;
    int pushes = 0, ok = 0, rc = 0;
    uint64_t gen = 0;
    /* Each checkpoint rewrites the whole table (4 MB): 24 MB fill up. */
    for (int i = 0; i < 20 && rc == 0; i++) {
        push_all(c, &st, &pushes);
        rc = cqrps_checkpoint(c, &gen);
        ok += rc == 0;
    }
    ck_assert_int_ne(rc, 0);
    ck_assert_int_gt(ok, 0);
    ck_assert_msg(strstr(cqrps_last_error(c), "No space") != NULL,
                  "checkpoint error: %s", cqrps_last_error(c));
    const char *body;
    ck_assert(metric(mport, "cqrps_checkpoint_failing") >= 1);
    ck_assert_int_eq(http_get(mport, "/readyz", &body), 503);
    ck_assert_msg(strstr(body, "checkpoint") != NULL, "readyz: %s", body);

    /* The disk grows: the retries succeed by themselves. */
    ck_assert_int_eq(mount(NULL, mnt, NULL, MS_REMOUNT, "size=256m"), 0);
    wait_metric(mport, "cqrps_checkpoint_failing", 0, 90000);
    ck_assert_int_eq(http_get(mport, "/readyz", &body), 200);
    ck_assert(log_has(&s, "checkpoints work again"));
    ck_assert_int_eq(cqrps_checkpoint(c, &gen), 0);
    tables_t good = t;
    digests(c, &good);

    /* Full again (a file takes the rest), pushes, SIGTERM: the exit
     * checkpoint fails, and the exit status and the log say so. */
    char filler[128];
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    int fd = open(filler, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    static char zeros[1 << 16];
    while (write(fd, zeros, sizeof zeros) > 0)
        ;
    close(fd);
    pushes = 0;
    push_all(c, &st, &pushes);
    push_all(c, &st, &pushes);
    ck_assert_int_ne(cqrps_checkpoint(c, &gen), 0);
    cqrps_close(c);
    ck_assert_int_eq(cqr_test_server_stop(&s, 60000), 1);
    ck_assert(log_has(&s, "shutdown checkpoint failed"));
    char want[64];
    snprintf(want, sizeof want, "pushes=%d ", pushes);
    ck_assert_msg(log_has(&s, want), "the log does not say %s", want);
    ck_assert(cqr_test_server_clean(&s));
    cqr_test_server_cleanup(&s);

    /* The restart restores the last good generation. */
    ck_assert_int_eq(unlink(filler), 0);
    start(&s, NULL);
    expect_state(&s, &good);
    tu_server_stop(&s);
    ck_assert_int_eq(umount2(mnt, MNT_DETACH), 0);
    rmdir(mnt);
    g_mnt[0] = '\0';
}
END_TEST

/* A disk that turns read-only and back (the power-loss layer fails every
 * change under the data dir with EROFS while a control file exists: a
 * read-only remount is refused while RocksDB holds files open for
 * writing): checkpoints fail and say so, and the first retry after the
 * disk is writable again succeeds. */
START_TEST(test_read_only_recovers)
{
    make_dir();
    char ctl[128], shd[128];
    snprintf(ctl, sizeof ctl, "%s.fail", dir);
    snprintf(shd, sizeof shd, "%s.shadow", dir);
    ck_assert_int_eq(mkdir(shd, 0700), 0);
    setenv("CQR_PL_DIR", dir, 1);
    setenv("CQR_PL_SHADOW", shd, 1);
    setenv("CQR_PL_FAIL", ctl, 1);
    setenv("LD_PRELOAD", CQR_POWERLOSS_LIB, 1);
    const char *asan = getenv("ASAN_OPTIONS");
    char ao[512];
    snprintf(ao, sizeof ao, "%s%sverify_asan_link_order=0", asan ? asan : "",
             asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", ao, 1);
    const char *args[] = {"--metrics-listen", "127.0.0.1:0", NULL};
    cqr_test_server_t s;
    start(&s, args);
    unsetenv("LD_PRELOAD");
    unsetenv("CQR_PL_DIR");
    uint16_t mport = metrics_port(&s);
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t t = {0};
    create(c, &t, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    uint64_t st = 4, gen;
    push(c, "full", 512, 100000, &st);
    ck_assert_int_eq(cqrps_checkpoint(c, &gen), 0);

    FILE *f = fopen(ctl, "w");
    ck_assert_ptr_nonnull(f);
    fputs("EROFS\n", f);
    fclose(f);
    push(c, "full", 512, 100000, &st);
    ck_assert_int_ne(cqrps_checkpoint(c, &gen), 0);
    ck_assert_msg(strstr(cqrps_last_error(c), "Read-only") != NULL,
                  "checkpoint error: %s", cqrps_last_error(c));
    const char *body;
    ck_assert(metric(mport, "cqrps_checkpoint_failing") >= 1);
    ck_assert_int_eq(http_get(mport, "/readyz", &body), 503);

    ck_assert_int_eq(unlink(ctl), 0);
    wait_metric(mport, "cqrps_checkpoint_failing", 0, 90000);
    ck_assert_int_eq(http_get(mport, "/readyz", &body), 200);
    push(c, "full", 512, 100000, &st);
    ck_assert_int_eq(cqrps_checkpoint(c, &gen), 0);
    tables_t want = t;
    digests(c, &want);
    cqrps_close(c);
    tu_server_stop(&s);
    start(&s, NULL);
    expect_state(&s, &want);
    tu_server_stop(&s);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", shd);
    ck_assert_int_eq(system(cmd), 0);
    remove_dir();
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("server_faults");
    TCase *tc = tcase_create("faults");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, NULL, unmount_left);
    tcase_add_test(tc, test_damaged_newest_starts);
    tcase_add_test(tc, test_wal_lost_and_vanished);
    tcase_add_test(tc, test_disk_full);
    tcase_add_test(tc, test_read_only_recovers);
    suite_add_tcase(s, tc);
    return s;
}
