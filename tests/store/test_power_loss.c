/* test_power_loss.c -- power loss, not only SIGKILL (issue 14, item 10).
 *
 * The server runs with the power-loss layer (powerloss.c, LD_PRELOAD) over
 * its data dir. A calibration run counts the sync points of a fixed
 * workload: the restore at start, two checkpoints with pushes before each,
 * more pushes and the exit checkpoint of a SIGTERM. Then, for every sync
 * point N of that run, the same workload runs again from the same data
 * dir with the layer set to lose, at the N-th sync point, every write not
 * yet durable and to kill the server. The restarted server (without the
 * layer) must restore exactly the state of the last checkpoint it
 * acknowledged, or of the one in flight at the crash if that one had
 * committed; a server that refuses to start (an acknowledged generation
 * lost) fails the test with its log.
 *
 * Servers run on 127.0.0.1:0 and are stopped by PID; data dirs are
 * temporary directories removed at the end. Under AddressSanitizer the
 * layer loads before the sanitizer's runtime, which ASan accepts with
 * verify_asan_link_order=0; every 4th sync point is crashed there, to
 * keep the run short.
 */
#define _GNU_SOURCE
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "check_main.h"
#include "server_util.h"

#ifndef CQR_POWERLOSS_LIB
#error "CQR_POWERLOSS_LIB must be defined by the build"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define STRIDE 4
#else
#define STRIDE 1
#endif

static char base[64], work[64], shadow[64], plog[64];

/* Runs a shell command made from fmt; fails the test if it fails. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    ck_assert_msg(system(cmd) == 0, "%s", cmd);
}

/* Digests without failing the test (the server may be gone): 0 or -1. */
static int try_digests(cqrps_client_t *c, tables_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        if (cqrps_digest(c, t->name[i], t->digest[i]) != 0)
            return -1;
    }
    return 0;
}

static int try_push(cqrps_client_t *c, const char *table, uint64_t *st)
{
    uint64_t ids[256];
    float g[256 * DIM];
    for (size_t i = 0; i < 256; i++)
        ids[i] = tu_rand(st) % 200000;
    tu_fill(g, 256 * DIM, st);
    return cqrps_push(c, table, ids, g, 256);
}

/* What one run of the workload got acknowledged. */
typedef struct run {
    tables_t acked;       /* the state of the last acknowledged checkpoint */
    tables_t inflight;    /* the state of the checkpoint in flight */
    int have_inflight;
    int crashed;          /* the layer crashed the server */
    int started;          /* the server printed its ready line */
    int acks;             /* checkpoints acknowledged (exit one included) */
} run_t;

/* The workload, with the layer crashing at sync point n (0: never). */
static void workload(long n, const tables_t *start_state, run_t *r)
{
    memset(r, 0, sizeof *r);
    r->acked = *start_state;
    sh("rm -rf '%s' '%s' '%s' && cp -a '%s' '%s' && mkdir -m 0700 '%s'",
       work, shadow, plog, base, work, shadow);
    char at[32];
    snprintf(at, sizeof at, "%ld", n);
    setenv("CQR_PL_DIR", work, 1);
    setenv("CQR_PL_SHADOW", shadow, 1);
    setenv("CQR_PL_LOG", plog, 1);
    setenv("CQR_PL_CRASH_AT", at, 1);
    setenv("LD_PRELOAD", CQR_POWERLOSS_LIB, 1);
    const char *args[] = {"--data-dir", work, "--checkpoint-interval", "0",
                          NULL};
    cqr_test_server_t s;
    r->started = cqr_test_server_start(&s, args, TU_START_MS) == 0;
    unsetenv("LD_PRELOAD");
    unsetenv("CQR_PL_DIR");
    uint64_t st = 1000 + (uint64_t)n;
    cqrps_client_t *c = NULL;
    if (r->started && cqrps_connect(s.addr, NULL, &c) != 0)
        c = NULL; /* crashed at once */
    if (c != NULL) {
        int ok = 1;
        for (int round = 0; round < 2 && ok; round++) {
            ok = try_push(c, "full", &st) == 0 &&
                 try_push(c, round ? "hash" : "cqr", &st) == 0;
            tables_t now = *start_state;
            ok = ok && try_digests(c, &now) == 0;
            if (!ok)
                break;
            r->inflight = now;
            r->have_inflight = 1;
            uint64_t gen;
            ok = cqrps_checkpoint(c, &gen) == 0;
            if (ok) {
                r->acked = now;
                r->have_inflight = 0;
                r->acks++;
            }
        }
        tables_t last = *start_state;
        ok = ok && try_push(c, "cqr", &st) == 0 &&
             try_digests(c, &last) == 0;
        cqrps_close(c);
        if (ok) {
            r->inflight = last;
            r->have_inflight = 1;
        }
        int rc = cqr_test_server_stop(&s, 60000);
        if (ok && rc == 0) {
            r->acked = last; /* the exit checkpoint */
            r->have_inflight = 0;
            r->acks++;
        }
    }
    cqr_test_server_cleanup(&s);
    FILE *f = fopen(plog, "r");
    char line[512];
    while (f != NULL && fgets(line, sizeof line, f)) {
        if (strncmp(line, "crash ", 6) == 0)
            r->crashed = 1;
    }
    if (f != NULL)
        fclose(f);
}

/* Sync points of the last workload, by kind ("dir", "sst", "log", ...):
 * counts into kinds[] named by names[]; returns the total. */
static long count_syncs(const char **names, long *kinds, int nk)
{
    FILE *f = fopen(plog, "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    long total = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "sync ", 5) != 0)
            continue;
        total++;
        for (int k = 0; k < nk; k++) {
            if (strstr(line, names[k])) {
                kinds[k]++;
                break;
            }
        }
    }
    fclose(f);
    return total;
}

/* The data dir after the crash restores the acknowledged state, or the
 * one in flight; returns 1 if it was the one in flight. */
static int check_restore(long n, const run_t *r)
{
    snprintf(dir, sizeof dir, "%s", work);
    const char *args[] = {"--data-dir", work, "--checkpoint-interval", "0",
                          "--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    if (cqr_test_server_start(&s, args, TU_START_MS) != 0) {
        cqr_test_server_cleanup(&s);
        ck_abort_msg("sync point %ld: the server does not start after the "
                     "power loss", n);
    }
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t got = r->acked;
    int rc = try_digests(c, &got);
    cqrps_close(c);
    int which = rc == 0 && same_digests(&got, &r->acked) ? 0
                : rc == 0 && r->have_inflight &&
                        same_digests(&got, &r->inflight)
                    ? 1
                    : -1;
    if (which < 0) {
        cqr_test_server_dump(&s, 4096);
        ck_abort_msg("sync point %ld: restored state is neither the last "
                     "acknowledged checkpoint nor the one in flight", n);
    }
    tu_server_stop(&s);
    return which;
}

START_TEST(test_power_loss)
{
    char tmpl[] = "/tmp/cqr-powerloss-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    snprintf(base, sizeof base, "%s/base", tmpl);
    snprintf(work, sizeof work, "%s/work", tmpl);
    snprintf(shadow, sizeof shadow, "%s/shadow", tmpl);
    snprintf(plog, sizeof plog, "%s/log", tmpl);

    /* The data dir every run starts from: three tables, generation 1. */
    snprintf(dir, sizeof dir, "%s", base);
    ck_assert_int_eq(mkdir(base, 0700), 0);
    const char *noexit[] = {"--checkpoint-on-exit", "off", NULL};
    cqr_test_server_t s;
    start(&s, noexit);
    cqrps_client_t *c = tu_connect(s.addr);
    tables_t t0 = {0};
    create(c, &t0, "full", CQRPS_KIND_FULL, CQRPS_OPT_ADAM);
    create(c, &t0, "cqr", CQRPS_KIND_CQR, CQRPS_OPT_ADAM);
    create(c, &t0, "hash", CQRPS_KIND_HASH, CQRPS_OPT_ADAGRAD);
    uint64_t st = 9;
    push(c, "full", 256, 200000, &st);
    push(c, "cqr", 256, 200000, &st);
    uint64_t gen;
    ck_assert_int_eq(cqrps_checkpoint(c, &gen), 0);
    digests(c, &t0);
    cqrps_close(c);
    tu_server_stop(&s);

    /* Calibration: the sync points of a run without a crash. */
    uint64_t t_start = tu_now_ms();
    run_t r;
    workload(0, &t0, &r);
    ck_assert(r.started && !r.crashed && r.acks == 3);
    const char *names[] = {"dir", ".sst", ".blob", ".log", "MANIFEST",
                           "CQRPS-ACKED", ".dbtmp", "OPTIONS"};
    long kinds[8] = {0};
    long total = count_syncs(names, kinds, 8);
    ck_assert_int_gt(total, 10);
    check_restore(0, &r);

    long crashed = 0, at_start = 0, inflight_won = 0, acked_sum = 0;
    for (long n = 1; n <= total; n += STRIDE) {
        workload(n, &t0, &r);
        if (!r.crashed)
            continue; /* this run had fewer sync points */
        crashed++;
        at_start += !r.started;
        acked_sum += r.acks;
        inflight_won += check_restore(n, &r);
    }
    printf("power loss: %ld sync points per run (dir %ld, sst %ld, blob %ld, "
           "wal %ld, MANIFEST %ld, ack record %ld, other %ld); crashed at "
           "%ld of them (%ld during the restore at start), %ld checkpoints "
           "acknowledged before the crashes, %ld in-flight ones found "
           "committed; %.1f s\n", total, kinds[0], kinds[1], kinds[2],
           kinds[3], kinds[4], kinds[5], kinds[6] + kinds[7], crashed,
           at_start, acked_sum, inflight_won,
           (double)(tu_now_ms() - t_start) / 1000.0);
    ck_assert_int_ge(crashed, (total / STRIDE) * 3 / 4);
    sh("rm -rf '%s'", tmpl);
}
END_TEST

/* ---- The layer itself ----------------------------------------------------
 * A child (this binary, --layer-child DIR) runs under the layer with the
 * crash at sync point 5 and makes, in this order: a file "a" with
 * "hello", synced, and the directory synced (durable); " world" appended
 * to "a" (not synced); "b" created and synced (its name not); "t" created,
 * synced and renamed over "a" (not durable); the old file "pre" unlinked;
 * "p" (old, "pppp") overwritten at offset 0; then the directory's fsync,
 * the 5th sync point, crashes. What must be left: "a" = "hello", no "b",
 * no "t", "pre" = "old", "p" = "pppp". */
static void put(const char *d, const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", d, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static int has(const char *d, const char *name, const char *text)
{
    char p[256], buf[64] = "";
    snprintf(p, sizeof p, "%s/%s", d, name);
    FILE *f = fopen(p, "r");
    if (f == NULL)
        return text == NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return text != NULL && strcmp(buf, text) == 0;
}

static int layer_child(const char *d)
{
    char a[256], b[256], t[256], pre[256], p[256];
    snprintf(a, sizeof a, "%s/a", d);
    snprintf(b, sizeof b, "%s/b", d);
    snprintf(t, sizeof t, "%s/t", d);
    snprintf(pre, sizeof pre, "%s/pre", d);
    snprintf(p, sizeof p, "%s/p", d);
    int fa = open(a, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int dfd = open(d, O_RDONLY | O_DIRECTORY);
    if (fa < 0 || dfd < 0 || write(fa, "hello", 5) != 5 || fsync(fa) ||
        fsync(dfd) || write(fa, " world", 6) != 6)
        return 2;
    int fb = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int ft = open(t, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fb < 0 || ft < 0 || write(fb, "bee", 3) != 3 || fsync(fb) ||
        write(ft, "new", 3) != 3 || fsync(ft) || rename(t, a) ||
        unlink(pre))
        return 3;
    int fp = open(p, O_WRONLY);
    if (fp < 0 || pwrite(fp, "XX", 2, 0) != 2)
        return 4;
    fsync(dfd); /* the 5th sync point: never returns */
    return 5;
}

START_TEST(test_layer)
{
    char tmpl[] = "/tmp/cqr-pllayer-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    char d[64], shd[64], lg[64];
    snprintf(d, sizeof d, "%s/d", tmpl);
    snprintf(shd, sizeof shd, "%s/shadow", tmpl);
    snprintf(lg, sizeof lg, "%s/log", tmpl);
    ck_assert_int_eq(mkdir(d, 0700), 0);
    ck_assert_int_eq(mkdir(shd, 0700), 0);
    put(d, "pre", "old");
    put(d, "p", "pppp");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setenv("CQR_PL_DIR", d, 1);
        setenv("CQR_PL_SHADOW", shd, 1);
        setenv("CQR_PL_LOG", lg, 1);
        setenv("CQR_PL_CRASH_AT", "5", 1);
        setenv("LD_PRELOAD", CQR_POWERLOSS_LIB, 1);
        execl("/proc/self/exe", "test_power_loss", "--layer-child", d,
              (char *)NULL);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the child was not crashed by the layer (status %d)",
                  status);
    /* What the crash must leave (text NULL: no such file). */
    static const struct {
        const char *name, *text;
    } left[] = {{"a", "hello"}, {"b", NULL}, {"t", NULL}, {"pre", "old"},
                {"p", "pppp"}};
    for (size_t i = 0; i < sizeof left / sizeof left[0]; i++)
        ck_assert_msg(has(d, left[i].name, left[i].text),
                      "%s after the crash: want %s", left[i].name,
                      left[i].text ? left[i].text : "no file");
    sh("grep -q '^crash 5 dir' '%s' && rm -rf '%s'", lg, tmpl);
}
END_TEST

Suite *cqr_test_suite(void)
{
    /* The layer loads before an ASan build's runtime (children inherit
     * this). */
    const char *asan = getenv("ASAN_OPTIONS");
    char ao[512];
    snprintf(ao, sizeof ao, "%s%sverify_asan_link_order=0", asan ? asan : "",
             asan && asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", ao, 1);
    Suite *s = suite_create("power_loss");
    TCase *tc = tcase_create("power_loss");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_layer);
    tcase_add_test(tc, test_power_loss);
    suite_add_tcase(s, tc);
    return s;
}

int cqr_test_child(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--layer-child") == 0)
        return layer_child(argv[2]);
    return -1;
}
