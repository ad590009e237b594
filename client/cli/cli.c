/* cli.c -- `cqrps`, the admin command line of cqrps.
 *
 *   cqrps [--addr HOST:PORT[,...]] [--json] [--timeout MS] COMMAND ...
 *   cqrps --version
 *
 * Output: human-readable by default; with --json, exactly one JSON object
 * per command on stdout (also on failure: {"ok": false, ...}), for
 * scripts. Exit status: 0 success, 1 the operation failed (the server's
 * message on stderr as "cqrps: COMMAND NAME: STATUS: message"), 2 usage.
 *
 * Every command runs the same skeleton (run_command): parse its
 * arguments, connect, make one library call, print the result as JSON or
 * text, release it. What differs lives in the command table (cli_cmd.c):
 * its usage, its parser, its call and its two printers.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_print.h"

const char *const cli_prog = "cqrps";

static void usage_main(FILE *f)
{
    fprintf(f,
            "usage: cqrps [--addr HOST:PORT[,HOST:PORT...]] [--json] "
            "[--timeout MS]\n"
            "             [--token-file F] [--admin-token-file F] "
            "COMMAND [ARGS]\n"
            "       cqrps --version\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < cli_ncommands; i++)
        fprintf(f, "  %s\n", cli_commands[i].summary);
    fprintf(f,
            "\n"
            "The address comes from --addr, else $CQRPS_ADDR, else "
            "127.0.0.1:7070;\n"
            "a comma-separated list means a sharded deployment. Tokens come "
            "from the\n"
            "files (one trailing newline stripped), else from $CQRPS_TOKEN "
            "and\n"
            "$CQRPS_ADMIN_TOKEN; drop, cluster, compact and checkpoint need the "
            "admin token when\n"
            "the server has one. `cqrps COMMAND --help` describes a "
            "command.\n"
            "Exit status: 0 ok, 1 failed, 2 usage.\n");
}

/* ---- Plumbing ---------------------------------------------------------- */

int cli_fail(cli_t *cli, int rc)
{
    const char *msg = cli->c ? cqrps_last_error(cli->c)
                             : cqrps_last_error(NULL);
    if (!msg || !*msg)
        msg = cqrps_strerror(rc);
    fprintf(stderr, "%s: %s%s%s: %s: %s\n", cli_prog, cli->cmd,
            cli->what ? " " : "", cli->what ? cli->what : "",
            cqrps_errname(rc), msg);
    if (cli->json) {
        cJSON *o = js_object();
        js_bool(o, "ok", 0);
        js_str(o, "command", cli->cmd);
        js_str(o, "status", cqrps_errname(rc));
        js_i64(o, "code", rc);
        js_str(o, "message", msg);
        js_print(o);
    }
    return CLI_EXIT_FAIL;
}

int cli_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", cli_prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(try `%s --help`)\n", cli_prog);
    return CLI_EXIT_USAGE;
}

int cli_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

double cli_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

int cli_parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (!*s || errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* Loads one secret (file, else environment) unless a deprecated
 * command-line value stands in; a warning goes to stderr. */
static int load_secret(const char *file, const char *cmdline,
                       const char *env, char **out, size_t *len, char *msg,
                       size_t msglen)
{
    if (!file && cmdline)
        return 0;
    int rc = cqrps_secret_load(file, env, out, len, msg, msglen);
    if (rc == 0 && msg[0])
        fprintf(stderr, "%s: %s\n", cli_prog, msg);
    return rc;
}

/* The secret loaded (*tok), else the deprecated command-line value. */
static void use_secret(const char *tok, size_t toklen, const char *cmdline,
                       const void **opt, size_t *optlen)
{
    if (tok) {
        *opt = tok;
        *optlen = toklen;
    } else if (cmdline) {
        *opt = cmdline;
        *optlen = strlen(cmdline);
    }
}

static int connect_cli(cli_t *cli)
{
    cqrps_options_t opt;
    cqrps_options_init(&opt);
    if (cli->timeout) {
        opt.connect_timeout_ms = cli->timeout;
        opt.request_timeout_ms = cli->timeout;
    }
    /* A file wins, then the deprecated command-line value, then the
     * environment. */
    char *tok = NULL, *atok = NULL;
    size_t toklen = 0, atoklen = 0;
    char msg[512] = "";
    int rc = load_secret(cli->token_file, cli->token, "CQRPS_TOKEN", &tok,
                         &toklen, msg, sizeof msg);
    if (rc == 0)
        rc = load_secret(cli->admin_file, cli->admin, "CQRPS_ADMIN_TOKEN",
                         &atok, &atoklen, msg, sizeof msg);
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", cli_prog, msg);
        cqrps_secret_free(tok, toklen);
        return CLI_EXIT_FAIL;
    }
    use_secret(tok, toklen, cli->token, &opt.token, &opt.token_len);
    use_secret(atok, atoklen, cli->admin, &opt.admin_token,
               &opt.admin_token_len);
    opt.client_name = "cqrps-cli";
    rc = cqrps_connect(cli->addr, &opt, &cli->c);
    /* The client copied the tokens. */
    cqrps_secret_free(tok, toklen);
    cqrps_secret_free(atok, atoklen);
    return rc < 0 ? cli_fail(cli, rc) : 0;
}

/* ---- The skeleton of every command ------------------------------------- */

/* Runs cmd with its arguments (argv[0] is the command's name). */
static int run_command(cli_t *cli, const cli_command_t *cmd, int argc,
                       char **argv)
{
    cli->cmd = cmd->name;
    int rc = cmd->parse(cli, cmd, argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc; /* -1: --help answered */
    cli->t0 = cli_now();
    if ((rc = connect_cli(cli)))
        return rc;
    cli_result_t r;
    memset(&r, 0, sizeof(r));
    rc = cmd->call(cli, &r);
    if (rc < 0)
        return cli_fail(cli, rc);
    if (cli->json) {
        cJSON *o = js_object();
        js_bool(o, "ok", !r.failed);
        cmd->json(cli, &r, o);
        if (js_print(o) < 0)
            r.failed = 1;
    } else {
        cmd->text(cli, &r);
    }
    if (cmd->after)
        cmd->after(cli, &r);
    cqrps_table_list_free(r.tables);
    cqrps_stats_free(&r.stats);
    cqrps_checkpoint_list_free(r.checkpoints);
    return r.failed ? CLI_EXIT_FAIL : 0;
}

static const cli_command_t *find_command(const char *name)
{
    for (size_t i = 0; i < cli_ncommands; i++)
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    return NULL;
}

/* Parses the global options into cli; 0 to go on with argv[optind], -1
 * when --help was answered, or an exit status. */
static int parse_global(cli_t *cli, int argc, char **argv)
{
    static const struct option lo[] = {
        { "addr", required_argument, NULL, 'a' },
        { "json", no_argument, NULL, 'j' },
        { "timeout", required_argument, NULL, 't' },
        { "token-file", required_argument, NULL, 'F' },
        { "admin-token-file", required_argument, NULL, 'G' },
        /* Deprecated: a secret in argv is visible to every user. */
        { "token", required_argument, NULL, 'T' },
        { "admin-token", required_argument, NULL, 'A' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 }
    };
    int ch;
    uint64_t v;
    /* "+": stop at the command; its options are parsed by the command. */
    while ((ch = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
        switch (ch) {
        case 'a': cli->addr = optarg; break;
        case 'j': cli->json = 1; break;
        case 't':
            if (cli_parse_u64(optarg, UINT32_MAX, &v) < 0 || v == 0)
                return cli_usage_error("bad --timeout '%s'", optarg);
            cli->timeout = (uint32_t)v;
            break;
        case 'F': cli->token_file = optarg; break;
        case 'G': cli->admin_file = optarg; break;
        case 'T':
        case 'A':
            fprintf(stderr, "%s: warning: --%s is deprecated: other users "
                    "can read it with ps; use --%s-file FILE or $%s\n",
                    cli_prog, ch == 'T' ? "token" : "admin-token",
                    ch == 'T' ? "token" : "admin-token",
                    ch == 'T' ? "CQRPS_TOKEN" : "CQRPS_ADMIN_TOKEN");
            if (ch == 'T')
                cli->token = optarg;
            else
                cli->admin = optarg;
            break;
        case 'h':
            usage_main(stdout);
            return -1;
        case 'V':
            /* The library's version: the CLI is built with it. */
            printf("%s %d.%d.%d (protocol %d)\n", cli_prog,
                   CQRPS_VERSION_MAJOR, CQRPS_VERSION_MINOR,
                   CQRPS_VERSION_PATCH, CQRPS_PROTOCOL_VERSION);
            return -1;
        default:
            usage_main(stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage_main(stderr);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int main(int argc, char **argv)
{
    cli_t cli;
    memset(&cli, 0, sizeof(cli));
    cli.addr = getenv("CQRPS_ADDR");
    if (!cli.addr || !*cli.addr)
        cli.addr = "127.0.0.1:7070";
    int rc = parse_global(&cli, argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc;
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        const cli_command_t *cmd =
            optind + 1 < argc ? find_command(argv[optind + 1]) : NULL;
        if (cmd) {
            char *hargv[] = { argv[optind + 1], "--help", NULL };
            return run_command(&cli, cmd, 2, hargv);
        }
        usage_main(stdout);
        return 0;
    }
    const cli_command_t *cmd = find_command(name);
    if (!cmd)
        return cli_usage_error("unknown command '%s'", name);
    rc = run_command(&cli, cmd, argc - optind, argv + optind);
    cqrps_close(cli.c);
    return rc;
}
