/* The config file (--config): every option settable with the same parser
 * and bounds as its flag, flags overriding the file wherever --config
 * stands, comments and quoting, and errors that name FILE:LINE. Also
 * --metrics-listen's forms and --print-config round-tripping through a
 * file. No sockets. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops/config.h"
#include "config_args.h"
#include "engine/err.h"
#include "check_main.h"

static char path[64];

/* Writes text to a fresh temporary file (path). */
static void write_file(const char *text)
{
    snprintf(path, sizeof path, "/tmp/cqr-conf-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t n = strlen(text);
    ck_assert_int_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
}

static void teardown(void)
{
    if (path[0])
        unlink(path);
    path[0] = '\0';
}


/* Loads text as a file on top of the defaults. */
static int load(cqr_config_t *cfg, const char *text, char *err,
                size_t errlen)
{
    teardown();
    write_file(text);
    cqr_config_defaults(cfg);
    err[0] = '\0';
    return cqr_config_load_file(cfg, path, err, errlen);
}

START_TEST(test_file_sets_options)
{
    cqr_config_t c;
    char err[512];
    ck_assert_int_eq(load(&c,
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "listen = 0.0.0.0:7171\n"
        "threads=3\n"
        "  max-frame-bytes   =   8M   # trailing comment\n"
        "max-batch = 4096\n"
        "max-table-memory = \"2G\"\n"
        "log-level = warn\n"
        "metrics-listen = 9100\r\n",
        err, sizeof err), 0);
    ck_assert_str_eq(c.listen_host, "0.0.0.0");
    ck_assert_uint_eq(c.listen_port, 7171);
    ck_assert_uint_eq(c.threads, 3);
    ck_assert_uint_eq(c.max_frame_bytes, 8u << 20);
    ck_assert_uint_eq(c.max_batch, 4096);
    ck_assert_uint_eq(c.max_table_memory, 2ull << 30);
    ck_assert_int_eq(c.log_level, CQR_LOG_WARN);
    ck_assert_str_eq(c.metrics.text, "127.0.0.1:9100");
    ck_assert_str_eq(c.metrics.host, "127.0.0.1");
    ck_assert_uint_eq(c.metrics.port, 9100);
}
END_TEST

START_TEST(test_flags_override_file)
{
    cqr_config_t c;
    char err[512];
    write_file("threads = 3\nmax-batch = 77\nlisten = 127.0.0.1:9999\n");
    /* The flag wins even when it comes before --config. */
    ck_assert_int_eq(PARSE(&c, err, "--threads", "5", "--config", path),
                     0);
    ck_assert_uint_eq(c.threads, 5);
    ck_assert_uint_eq(c.max_batch, 77);
    ck_assert_uint_eq(c.listen_port, 9999);
    ck_assert_str_eq(c.config_path, path);
    ck_assert_int_eq(PARSE(&c, err, "--config", path, "--listen",
                           "127.0.0.1:0"), 0);
    ck_assert_uint_eq(c.listen_port, 0);
    ck_assert_uint_eq(c.threads, 3);
    /* --config=FILE works too; twice is an error. */
    char eq[96];
    snprintf(eq, sizeof eq, "--config=%s", path);
    ck_assert_int_eq(PARSE(&c, err, eq), 0);
    ck_assert_uint_eq(c.max_batch, 77);
    ck_assert_int_eq(PARSE(&c, err, "--config", path, "--config", path),
                     CQR_EINVAL);
    ck_assert_str_eq(err, "--config given twice");
    /* A bad flag is reported as before, whether or not a file is read. */
    ck_assert_int_eq(PARSE(&c, err, "--config", path, "--threads", "0"),
                     CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "--threads: 0 is below the minimum"));
}
END_TEST

/* err must start with "PATH:LINE: " and contain want. */
static void expect_error(const char *text, int line, const char *want)
{
    cqr_config_t c;
    char err[512];
    ck_assert_int_eq(load(&c, text, err, sizeof err), CQR_EINVAL);
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0,
                  "error '%s' does not start with '%s'", err, prefix);
    ck_assert_msg(strstr(err, want) != NULL, "error '%s' lacks '%s'", err,
                  want);
}

START_TEST(test_file_errors)
{
    expect_error("threads = 2\nthread = 3\n", 2,
                 "unknown option 'thread'");
    expect_error("max_batch = 3\n", 1,
                 "unknown option 'max_batch' (did you mean 'max-batch'?)");
    expect_error("# ok\nthreads = 0\n", 2,
                 "--threads: 0 is below the minimum 1");
    expect_error("threads = 257\n", 1, "above the maximum 256");
    expect_error("max-frame-bytes = 1q\n", 1, "not a size");
    expect_error("listen = 7070\n", 1, "--listen: '7070' is not HOST:PORT");
    expect_error("log-level = loud\n", 1, "debug, info, warn, error");
    expect_error("threads\n", 1, "expected 'name = value'");
    expect_error("= 3\n", 1, "missing option name");
    expect_error("threads =\n", 1, "'threads' needs a value");
    expect_error("threads = 2\nthreads = 3\n", 2,
                 "'threads' is set twice (first on line 1)");
    expect_error("help = 1\n", 1, "only be given on the command line");
    expect_error("config = /etc/x\n", 1, "only be given on the command line");
    expect_error("print-config =\n", 1, "only be given on the command line");
    expect_error("listen = \"127.0.0.1:1\n", 1, "missing closing");
    expect_error("listen = \"127.0.0.1:1\" x\n", 1, "unexpected text");
    expect_error("metrics-listen = 70000\n", 1, "not 0..65535");
}
END_TEST

START_TEST(test_file_io_errors)
{
    cqr_config_t c;
    char err[512];
    cqr_config_defaults(&c);
    ck_assert_int_eq(cqr_config_load_file(&c, "/nonexistent/cqrps.conf",
                                          err, sizeof err), CQR_EIO);
    ck_assert_ptr_nonnull(strstr(err, "cannot read '/nonexistent/cqrps.conf'"));
    /* Through the flags: the parse fails with the same message. */
    ck_assert_int_eq(PARSE(&c, err, "--config", "/nonexistent/cqrps.conf"),
                     CQR_EIO);
    /* A line over 4 KiB and a NUL byte are refused. */
    char *big = malloc(6000);
    memset(big, 'x', 5998);
    big[5998] = '\n';
    big[5999] = '\0';
    ck_assert_int_eq(load(&c, big, err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, ":1: line longer than"));
    free(big);
    teardown();
    snprintf(path, sizeof path, "/tmp/cqr-conf-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_eq(write(fd, "threads = 2\nthr\0eads = 3\n", 25), 25);
    close(fd);
    cqr_config_defaults(&c);
    ck_assert_int_eq(cqr_config_load_file(&c, path, err, sizeof err),
                     CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, ":2: NUL byte"));
}
END_TEST

START_TEST(test_quoting_and_comments)
{
    cqr_config_t c;
    char err[512];
    /* '#' without a blank before it is part of the value (and fails
     * here as a bad count); in quotes it is kept. */
    ck_assert_int_eq(load(&c, "max-batch = 12#3\n", err, sizeof err),
                     CQR_EINVAL);
    ck_assert_int_eq(load(&c, "log-level = \"error\" # loud enough\n", err,
                          sizeof err), 0);
    ck_assert_int_eq(c.log_level, CQR_LOG_ERROR);
    /* "--name = value" is accepted as a courtesy to flag habits. */
    ck_assert_int_eq(load(&c, "--threads = 4\n", err, sizeof err), 0);
    ck_assert_uint_eq(c.threads, 4);
    /* metrics-listen: off, a port, HOST:PORT, [v6]:PORT, empty. */
    ck_assert_int_eq(load(&c, "metrics-listen = off\n", err, sizeof err), 0);
    ck_assert_str_eq(c.metrics.text, "");
    ck_assert_int_eq(load(&c, "metrics-listen = 0.0.0.0:0\n", err,
                          sizeof err), 0);
    ck_assert_str_eq(c.metrics.host, "0.0.0.0");
    ck_assert_uint_eq(c.metrics.port, 0);
    ck_assert_int_eq(load(&c, "metrics-listen = [::1]:9\n", err, sizeof err),
                     0);
    ck_assert_str_eq(c.metrics.host, "::1");
    ck_assert_int_eq(load(&c, "metrics-listen = \"\"\n", err, sizeof err),
                     0);
    ck_assert_str_eq(c.metrics.text, "");
}
END_TEST

/* Every option a file may hold: --print-config writes it, and reading
 * that output back gives the same effective config. */
START_TEST(test_print_config_round_trip)
{
    cqr_config_t a, b;
    char err[512];
    ck_assert_int_eq(PARSE(&a, err, "--threads", "7", "--metrics-listen",
                           "127.0.0.1:0", "--max-batch", "999",
                           "--log-level", "debug", "--listen", "[::1]:5"),
                     0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cqr_config_write(&a, f);
    fclose(f);
    /* Every option of the table but the command-line-only ones. */
    size_t n;
    const cqr_config_option_t *o = cqr_config_options(&n);
    for (size_t i = 0; i < n; i++) {
        if (o[i].type == CQR_CT_FLAG || strcmp(o[i].name, "config") == 0)
            continue;
        char key[80];
        snprintf(key, sizeof key, "\n%s = ", o[i].name);
        ck_assert_msg(strstr(text, key) != NULL, "%s missing from:\n%s",
                      o[i].name, text);
    }
    ck_assert_int_eq(load(&b, text, err, sizeof err), 0);
    char la[2048], lb[2048];
    cqr_config_format(&a, la, sizeof la);
    cqr_config_format(&b, lb, sizeof lb);
    ck_assert_str_eq(la, lb);
    free(text);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("deploy_config");
    TCase *tc = tcase_create("config_file");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_file_sets_options);
    tcase_add_test(tc, test_flags_override_file);
    tcase_add_test(tc, test_file_errors);
    tcase_add_test(tc, test_file_io_errors);
    tcase_add_test(tc, test_quoting_and_comments);
    tcase_add_test(tc, test_print_config_round_trip);
    suite_add_tcase(s, tc);
    return s;
}
