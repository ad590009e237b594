/* Config and flags: defaults, every bound, sizes with suffixes, listen
 * addresses, clear errors for bad values, --help/--version, and the one
 * option table staying consistent. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/config.h"
#include "config_args.h"
#include "engine/err.h"
#include "check_main.h"


START_TEST(test_defaults)
{
    cqr_config_t c;
    cqr_config_defaults(&c);
    ck_assert_str_eq(c.listen, "127.0.0.1:7070");
    ck_assert_str_eq(c.listen_host, "127.0.0.1");
    ck_assert_uint_eq(c.listen_port, 7070);
    ck_assert_uint_eq(c.threads, 2);
    ck_assert_uint_eq(c.max_frame_bytes, 64u << 20);
    ck_assert_uint_eq(c.max_batch, 1048576);
    ck_assert_uint_eq(c.max_tables, 1024);
    ck_assert_uint_eq(c.max_connections, 1024);
    ck_assert_uint_eq(c.max_pending_bytes, 64u << 20);
    ck_assert_uint_eq(c.max_table_memory, UINT64_C(16) << 30);
    ck_assert_uint_eq(c.cluster_threads, 1);
    ck_assert_uint_eq(c.cluster_workers, 2);
    ck_assert_int_eq(c.log_level, CQR_LOG_INFO);
    ck_assert_int_eq(c.show_help, 0);
    ck_assert_int_eq(c.show_version, 0);
}
END_TEST

START_TEST(test_flags)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--listen", "0.0.0.0:0", "--threads",
                           "4", "--max-frame-bytes=1M", "--max-batch",
                           "1000", "--max-tables", "3", "--max-connections",
                           "10", "--max-pending-bytes", "128KiB",
                           "--max-table-memory", "2g", "--cluster-threads",
                           "2", "--cluster-workers", "1", "--log-level",
                           "debug"), 0);
    ck_assert_str_eq(c.listen_host, "0.0.0.0");
    ck_assert_uint_eq(c.listen_port, 0);
    ck_assert_uint_eq(c.threads, 4);
    ck_assert_uint_eq(c.max_frame_bytes, 1u << 20);
    ck_assert_uint_eq(c.max_batch, 1000);
    ck_assert_uint_eq(c.max_tables, 3);
    ck_assert_uint_eq(c.max_connections, 10);
    ck_assert_uint_eq(c.max_pending_bytes, 128u << 10);
    ck_assert_uint_eq(c.max_table_memory, UINT64_C(2) << 30);
    ck_assert_uint_eq(c.cluster_threads, 2);
    ck_assert_uint_eq(c.cluster_workers, 1);
    ck_assert_int_eq(c.log_level, CQR_LOG_DEBUG);
    /* Parsing twice in one process works (getopt state is reset). */
    ck_assert_int_eq(PARSE(&c, err, "--threads", "3"), 0);
    ck_assert_uint_eq(c.threads, 3);
}
END_TEST

START_TEST(test_bounds)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--threads", "0"), CQR_EINVAL);
    ck_assert_str_eq(err, "--threads: 0 is below the minimum 1");
    ck_assert_uint_eq(c.threads, 2); /* unchanged */
    ck_assert_int_eq(PARSE(&c, err, "--threads", "257"), CQR_EINVAL);
    ck_assert_str_eq(err, "--threads: 257 is above the maximum 256");
    ck_assert_int_eq(PARSE(&c, err, "--threads", "256"), 0);
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "1023"), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "minimum 1024"));
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "1K"), 0);
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "1G"), 0);
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "2G"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-batch", "0"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-tables", "65537"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-connections", "0"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-pending-bytes", "1K"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--cluster-workers", "65"), CQR_EINVAL);
    /* Every row's own default is inside its bounds (defaults() asserts
     * it too) and min <= max. */
    size_t n;
    const cqr_config_option_t *o = cqr_config_options(&n);
    ck_assert_uint_gt(n, 10);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_le(o[i].min, o[i].max);
        ck_assert_ptr_nonnull(o[i].help);
        if (o[i].def != NULL)
            ck_assert_int_eq(cqr_config_set(&c, o[i].name, o[i].def, err,
                                            sizeof err), 0);
    }
}
END_TEST

START_TEST(test_bad_numbers)
{
    cqr_config_t c;
    char err[256];
    const char *bad[] = {"", "-1", "+3", " 3", "3 ", "3x", "0x10", "1.5",
                         "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(PARSE(&c, err, "--max-batch", bad[i]), CQR_EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "--max-batch"));
        ck_assert_ptr_nonnull(strstr(err, "not a non-negative integer"));
    }
    /* Counts take no suffix; sizes do, but only known ones. */
    ck_assert_int_eq(PARSE(&c, err, "--max-batch", "1k"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "1q"), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "not a size"));
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "1MBs"), CQR_EINVAL);
    ck_assert_int_eq(PARSE(&c, err, "--max-table-memory", "20000000T"),
                     CQR_EINVAL); /* overflows 64 bits */
    ck_assert_int_eq(PARSE(&c, err, "--max-frame-bytes", "2mb"), 0);
    ck_assert_uint_eq(c.max_frame_bytes, 2u << 20);
}
END_TEST

START_TEST(test_listen)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--listen", "[::1]:0"), 0);
    ck_assert_str_eq(c.listen_host, "::1");
    ck_assert_uint_eq(c.listen_port, 0);
    ck_assert_int_eq(PARSE(&c, err, "--listen", "localhost:65535"), 0);
    ck_assert_str_eq(c.listen_host, "localhost");
    ck_assert_uint_eq(c.listen_port, 65535);
    const char *bad[] = {"7070", ":7070", "host:", "host:65536", "::1:7070",
                         "[::1]7070", "[::1", "host:-1", "host:70a"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(PARSE(&c, err, "--listen", bad[i]), CQR_EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "--listen"));
    }
    /* The failed parses left the last good value. */
    ck_assert_int_eq(PARSE(&c, err, "--listen", "bad"), CQR_EINVAL);
    ck_assert_str_eq(c.listen, "127.0.0.1:7070");
}
END_TEST

START_TEST(test_errors)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--bogus", "1"), CQR_EINVAL);
    ck_assert_str_eq(err, "unknown option '--bogus'");
    ck_assert_int_eq(PARSE(&c, err, "-x"), CQR_EINVAL);
    ck_assert_str_eq(err, "unknown option '-x'");
    ck_assert_int_eq(PARSE(&c, err, "--threads"), CQR_EINVAL);
    ck_assert_str_eq(err, "option '--threads' needs a value");
    ck_assert_int_eq(PARSE(&c, err, "stray"), CQR_EINVAL);
    ck_assert_str_eq(err, "unexpected argument 'stray'");
    ck_assert_int_eq(PARSE(&c, err, "--log-level", "loud"), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "debug, info, warn, error"));
    ck_assert_int_eq(PARSE(&c, err, "--help=yes"), CQR_EINVAL);
    ck_assert_str_eq(err, "option '--help' takes no value");
    ck_assert_int_eq(cqr_config_set(&c, "nope", "1", err, sizeof err),
                     CQR_EINVAL);
}
END_TEST

START_TEST(test_help_version)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--help"), 0);
    ck_assert_int_eq(c.show_help, 1);
    ck_assert_int_eq(PARSE(&c, err, "-h"), 0);
    ck_assert_int_eq(c.show_help, 1);
    ck_assert_int_eq(PARSE(&c, err, "--version"), 0);
    ck_assert_int_eq(c.show_version, 1);
    /* --help text names every option. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cqr_config_usage(f, "cqrps-server");
    fclose(f);
    size_t n;
    const cqr_config_option_t *o = cqr_config_options(&n);
    for (size_t i = 0; i < n; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o[i].name);
        ck_assert_ptr_nonnull(strstr(text, flag));
    }
    free(text);
}
END_TEST

START_TEST(test_format)
{
    cqr_config_t c;
    char err[256];
    ck_assert_int_eq(PARSE(&c, err, "--threads", "7", "--log-level", "warn"),
                     0);
    char line[1024];
    size_t n = cqr_config_format(&c, line, sizeof line);
    ck_assert_uint_eq(n, strlen(line));
    ck_assert_ptr_nonnull(strstr(line, "listen=127.0.0.1:7070 "));
    ck_assert_ptr_nonnull(strstr(line, " threads=7 "));
    ck_assert_ptr_nonnull(strstr(line, " max-frame-bytes=67108864 "));
    ck_assert_ptr_nonnull(strstr(line, " log-level=warn"));
    ck_assert_ptr_null(strstr(line, "help"));
    /* Truncation is safe and reports the full length. */
    char small[8];
    ck_assert_uint_eq(cqr_config_format(&c, small, sizeof small), n);
    ck_assert_uint_eq(strlen(small), 7);
}
END_TEST

START_TEST(test_log_helpers)
{
    cqr_log_level_t lv;
    ck_assert_int_eq(cqr_log_level_parse("warning", &lv), 0);
    ck_assert_int_eq(lv, CQR_LOG_WARN);
    ck_assert_int_eq(cqr_log_level_parse("trace", &lv), -1);
    char buf[8];
    ck_assert_str_eq(cqr_log_clean(buf, sizeof buf, "a b\n=c"), "a?b??c");
    ck_assert_str_eq(cqr_log_clean(buf, sizeof buf, ""), "-");
    ck_assert_str_eq(cqr_log_clean(buf, sizeof buf, "abcdefghij"), "abcd...");
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_flags);
    tcase_add_test(tc, test_bounds);
    tcase_add_test(tc, test_bad_numbers);
    tcase_add_test(tc, test_listen);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_help_version);
    tcase_add_test(tc, test_format);
    tcase_add_test(tc, test_log_helpers);
    suite_add_tcase(s, tc);
    return s;
}
