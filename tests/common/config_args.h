/* config_args.h -- parsing a command line in tests of the server's config
 * (tests/ops/test_config.c, tests/deploy/test_deploy_config.c). */
#ifndef CQR_TEST_CONFIG_ARGS_H
#define CQR_TEST_CONFIG_ARGS_H

#include <stdarg.h>
#include <stddef.h>

#include "ops/config.h"

/* Parses a NULL-terminated list of arguments (argv[0] added) on top of
 * the defaults; err gets the message. */
static inline int cqr_test_parse_args(cqr_config_t *cfg, char *err,
                                      size_t errlen, ...)
{
    char *argv[32];
    int argc = 0;
    static char prog[] = "cqrps-server";
    argv[argc++] = prog;
    va_list ap;
    va_start(ap, errlen);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL && argc < 31)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    cqr_config_defaults(cfg);
    err[0] = '\0';
    return cqr_config_parse_args(cfg, argc, argv, err, errlen);
}

/* PARSE(cfg, err, "--flag", "value", ...) with err a char array. */
#define PARSE(cfg, err, ...) \
    cqr_test_parse_args(cfg, err, sizeof err, __VA_ARGS__, (char *)NULL)

#endif
