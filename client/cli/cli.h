/* cli.h -- the command model of the `cqrps` CLI (client/cli/).
 *
 * A command is a row of the table cli_commands (cli_cmd.c): a name, its
 * usage, a parser for its arguments, one library call that fills a
 * cli_result_t, and two printers (JSON members, human text). cli.c runs
 * every command through the same skeleton: parse, connect, call, print,
 * release; a failed call is reported by cli_fail in the one error format.
 *
 * Rules: a parser returns 0 to go on, -1 when it answered --help (exit
 * 0) or an exit status (CLI_EXIT_USAGE) after printing why. A call
 * returns 0 or a negative CQRPS_E* code (the library's message is then
 * reported); it may set result->failed when the call worked but the
 * command did not (a phase that failed or timed out): "ok" is false and
 * the exit status 1. The skeleton frees what a result owns (tables,
 * stats, checkpoints). Output goes to stdout, diagnostics to stderr.
 * Single-threaded; not part of libcqrps.
 */
#ifndef CQRPS_CLI_H
#define CQRPS_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "cqrps.h"

#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2

/* The program's name in messages. */
extern const char *const cli_prog;

/* Global options and the state of the command being run. */
typedef struct cli {
    const char *addr;   /* address list */
    int json;           /* --json */
    uint32_t timeout;   /* --timeout MS, 0 = library defaults */
    const char *token_file; /* --token-file, else $CQRPS_TOKEN */
    const char *admin_file; /* --admin-token-file, else $CQRPS_ADMIN_TOKEN */
    const char *token;  /* deprecated --token T (shown by ps), or NULL */
    const char *admin;  /* deprecated --admin-token T, or NULL */
    const char *cmd;    /* command, for messages */
    const char *what;   /* the command's object (table name), or NULL */
    cqrps_client_t *c;  /* connection, once made */
    double t0;          /* CLOCK_MONOTONIC seconds before connecting */
    /* Arguments of the commands that take more than a NAME. */
    cqrps_table_config_t cfg; /* create */
    int wait;           /* cluster --wait */
    uint64_t wait_ms;   /* cluster --wait-timeout MS, 0 = none */
    int cancel;         /* cluster --cancel */
    uint64_t phase;     /* cluster --cancel --phase ID, 0 = the current */
    const char *out;    /* export --out FILE */
    cqrps_export_opts_t exp; /* export --since, --generation, --dtype */
} cli_t;

/* What a command's call returned, for its printers. */
typedef struct cli_result {
    int failed;                    /* the command failed after its call */
    cqrps_table_info_t info;       /* create, describe */
    cqrps_table_info_t *tables;    /* list (owned) */
    size_t ntables;
    cqrps_stats_t stats;           /* stats (owned) */
    char digest[17];               /* digest */
    uint64_t id;                   /* cluster: phase; checkpoint: gen */
    cqrps_checkpoint_info_t *checkpoints; /* checkpoints (owned) */
    size_t ncheckpoints;
    int waited;                    /* cluster --wait ran */
    int cancelled;                 /* cluster --cancel was taken */
    int timed_out;                 /* ... and gave up */
    cqrps_phase_status_t phase;    /* ... and its last status */
    cqrps_server_info_t server;    /* ping: what the servers said */
    double seconds;                /* ping: connect and Hello, all shards */
    cqrps_export_info_t exported;  /* export */
    cqrps_compact_info_t compacted; /* compact */
} cli_result_t;

typedef struct cli_command cli_command_t;
struct cli_command {
    const char *name;
    const char *summary; /* its line in the main usage */
    const char *args;  /* usage_simple: the arguments ("NAME", "") */
    const char *what;  /* usage_simple: what it does */
    /* Writes the command's usage to f (`cqrps COMMAND --help`). */
    void (*usage)(FILE *f, const cli_command_t *cmd);
    /* Parses argv (argv[0] is the command); sets cli->what. */
    int (*parse)(cli_t *cli, const cli_command_t *cmd, int argc,
                 char **argv);
    /* The library call on cli->c. */
    int (*call)(cli_t *cli, cli_result_t *r);
    /* Adds the JSON members after "ok" to obj (js_* of cli_print.h). */
    void (*json)(const cli_t *cli, const cli_result_t *r, cJSON *obj);
    /* The human-readable output. */
    void (*text)(const cli_t *cli, const cli_result_t *r);
    /* NULL, or what follows the output (a failure's explanation). */
    void (*after)(const cli_t *cli, const cli_result_t *r);
};

/* The commands, in the order of the main usage (cli_cmd.c). */
extern const cli_command_t cli_commands[];
extern const size_t cli_ncommands;

/* Reports a failed library call (stderr, and the JSON object with
 * --json); returns the exit status. */
int cli_fail(cli_t *cli, int rc);
/* "cqrps: <fmt with arg>" and a hint on stderr; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *fmt, const char *arg);
/* Strict number parsing: 0, or -1 for anything but a whole number in
 * [0, max] (resp. a finite float). */
int cli_parse_u64(const char *s, uint64_t max, uint64_t *out);
int cli_parse_float(const char *s, float *out);
/* CLOCK_MONOTONIC in seconds. */
double cli_now(void);

#endif
