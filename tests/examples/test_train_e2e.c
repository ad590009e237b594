/* test_train_e2e.c -- cqrps-train-gmf end to end: a real cqrps-server on
 * 127.0.0.1:0 (tests/common/server_proc), the trainer run as a child
 * process, bounded in time and killed by PID on timeout. Checks the last
 * line, the learning, the TSV, the memory report, and that the trainer
 * dropped its tables. */
#define _GNU_SOURCE
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cqrps.h"
#include "server_proc.h"
#include "check_main.h"

static cqr_test_server_t g_srv;

static void setup(void)
{
    ck_assert_int_eq(cqr_test_server_start(&g_srv, NULL, 10000), 0);
}

static void teardown(void)
{
    int clean = cqr_test_server_clean(&g_srv);

    ck_assert_int_eq(cqr_test_server_stop(&g_srv, 10000), 0);
    cqr_test_server_cleanup(&g_srv);
    ck_assert(clean);
}

/* Runs the trainer with argv (NULL-terminated, argv[0] ignored), stdout to
 * a temporary file read back into *out (malloc'd), stderr inherited. Kills
 * it after timeout_s. Returns its exit code, or -1 if it was killed. */
static int run_trainer(char *const *argv, int timeout_s, char **out)
{
    char path[] = "/tmp/cqrps-train-e2e-XXXXXX";
    int fd = mkstemp(path);
    pid_t pid;
    int status = 0, waited = 0;
    double t0 = (double)time(NULL);

    ck_assert_int_ge(fd, 0);
    unlink(path);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(fd, STDOUT_FILENO);
        execv(CQR_TRAINER_BIN, argv);
        _exit(127);
    }
    while (!waited) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid) {
            waited = 1;
            break;
        }
        if ((double)time(NULL) - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        usleep(20000);
    }
    off_t len = lseek(fd, 0, SEEK_END);
    *out = calloc(1, (size_t)len + 1);
    ck_assert_ptr_nonnull(*out);
    ck_assert_int_eq(pread(fd, *out, (size_t)len, 0), len);
    close(fd);
    if (!waited || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}

/* The last non-empty line of s (in place). */
static const char *last_line(char *s)
{
    size_t n = strlen(s);

    while (n > 0 && s[n - 1] == '\n')
        s[--n] = 0;
    char *nl = strrchr(s, '\n');
    return nl ? nl + 1 : s;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    int n = 0, c;

    if (!f)
        return -1;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

START_TEST(cqr_synthetic_learns)
{
    char tsv[] = "/tmp/cqrps-train-e2e-tsv-XXXXXX";
    int tfd = mkstemp(tsv);
    char *out = NULL;
    double auc = -1, ll = -1;
    cqrps_client_t *c;
    cqrps_table_info_t *tabs = NULL;
    size_t ntabs = 99;

    ck_assert_int_ge(tfd, 0);
    close(tfd);
    unlink(tsv); /* the trainer creates it and writes the header */
    char *const argv[] = {
        "cqrps-train-gmf", "--addr", g_srv.addr, "--synthetic",
        "--kind", "cqr", "--ppd", "64", "--seed", "1", "--epochs", "2",
        "--init-scale", "0.01", "--tsv", tsv, NULL,
    };
    int rc = run_trainer(argv, 120, &out);

    if (rc != 0)
        fprintf(stderr, "trainer output:\n%s\n", out);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(strstr(out, "epoch=1/2 "));
    ck_assert_ptr_nonnull(strstr(out, "epoch=2/2 "));
    ck_assert_ptr_nonnull(strstr(out, "cluster epoch=1 table="));
    ck_assert_ptr_nonnull(strstr(out, "memory table="));
    ck_assert_ptr_nonnull(strstr(out, "memory_total kind=cqr"));
    const char *last = last_line(out);
    ck_assert_int_eq(sscanf(last, "best_auc=%lf best_logloss=%lf", &auc, &ll),
                     2);
    ck_assert_msg(auc > 0.5 && auc <= 1.0, "best_auc=%f", auc);
    ck_assert_msg(ll > 0 && ll < 0.6932, "best_logloss=%f", ll);
    /* Header + one line per epoch. */
    ck_assert_int_eq(count_lines(tsv), 3);
    unlink(tsv);
    free(out);

    /* Without --keep, the trainer dropped both tables. */
    ck_assert_int_eq(cqrps_connect(g_srv.addr, NULL, &c), 0);
    ck_assert_int_eq(cqrps_list_tables(c, &tabs, &ntabs), 0);
    ck_assert_uint_eq(ntabs, 0);
    cqrps_table_list_free(tabs);
    cqrps_close(c);
}
END_TEST

START_TEST(hash_keep_and_prefix)
{
    char *out = NULL;
    cqrps_client_t *c;
    cqrps_table_info_t info;
    char *const argv[] = {
        "cqrps-train-gmf", "--addr", g_srv.addr, "--synthetic",
        "--kind", "hash", "--ppd", "32", "--seed", "2", "--epochs", "1",
        "--table-prefix", "e2e", "--keep", "--quiet", NULL,
    };
    int rc = run_trainer(argv, 120, &out);

    ck_assert_int_eq(rc, 0);
    /* --quiet: no per-epoch lines, still memory and the last line. */
    ck_assert_ptr_null(strstr(out, "epoch="));
    ck_assert_ptr_nonnull(strstr(out, "memory_total kind=hash ppd=32"));
    ck_assert_ptr_nonnull(strstr(last_line(out), "best_auc="));
    free(out);
    ck_assert_int_eq(cqrps_connect(g_srv.addr, NULL, &c), 0);
    ck_assert_int_eq(cqrps_describe_table(c, "e2e.user", &info), 0);
    ck_assert_uint_eq(info.config.rows, 32);
    ck_assert_uint_eq(info.config.dim, 32);
    ck_assert_int_eq(cqrps_describe_table(c, "e2e.item", &info), 0);
    ck_assert_int_eq(cqrps_drop_table(c, "e2e.user"), 0);
    ck_assert_int_eq(cqrps_drop_table(c, "e2e.item"), 0);
    cqrps_close(c);
}
END_TEST

START_TEST(bad_usage_and_dead_server)
{
    char *out = NULL;
    char *const noargs[] = {"cqrps-train-gmf", NULL};
    char *const badkind[] = {
        "cqrps-train-gmf", "--addr", g_srv.addr, "--synthetic", "--kind",
        "nope", "--ppd", "8", "--seed", "1", NULL,
    };
    char *const dead[] = {
        "cqrps-train-gmf", "--addr", "127.0.0.1:1", "--synthetic", "--kind",
        "cqr", "--ppd", "8", "--seed", "1", NULL,
    };

    ck_assert_int_eq(run_trainer(noargs, 30, &out), 2);
    free(out);
    ck_assert_int_eq(run_trainer(badkind, 30, &out), 2);
    free(out);
    ck_assert_int_eq(run_trainer(dead, 30, &out), 1);
    free(out);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("train_e2e");
    TCase *t = tcase_create("trainer");

    /* The server is started per test in the test's own (main) thread:
     * CK_FORK=no is how ctest runs it. */
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 240);
    tcase_add_test(t, cqr_synthetic_learns);
    tcase_add_test(t, hash_keep_and_prefix);
    tcase_add_test(t, bad_usage_and_dead_server);
    suite_add_tcase(s, t);
    return s;
}
