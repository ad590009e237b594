/* cli.c -- `cqrps`, the admin command line of cqrps.
 *
 *   cqrps [--addr HOST:PORT[,...]] [--json] [--timeout MS] COMMAND ...
 *
 * Output: human-readable by default; with --json, exactly one JSON object
 * per command on stdout (also on failure: {"ok": false, ...}), for
 * scripts. Exit status: 0 success, 1 the operation failed (the server's
 * message on stderr as "cqrps: COMMAND NAME: STATUS: message"), 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_print.h"
#include "cqrps.h"

#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* Global options. */
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
} cli_t;

static const char *prog = "cqrps";

static void usage_main(FILE *f)
{
    fprintf(f,
            "usage: cqrps [--addr HOST:PORT[,HOST:PORT...]] [--json] "
            "[--timeout MS]\n"
            "             [--token-file F] [--admin-token-file F] "
            "COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  create NAME --kind full|hash|ce|cqr --dim D [options]\n"
            "  drop NAME             drop a table\n"
            "  list                  list the tables\n"
            "  describe NAME         a table's config and figures\n"
            "  stats                 server counters and tables\n"
            "  cluster NAME [--wait] start a cluster phase (cqr tables)\n"
            "  digest NAME           the table's state digest\n"
            "  checkpoint            take a checkpoint\n"
            "  checkpoints           list the checkpoints\n"
            "\n"
            "The address comes from --addr, else $CQRPS_ADDR, else "
            "127.0.0.1:7070;\n"
            "a comma-separated list means a sharded deployment. Tokens come "
            "from the\n"
            "files (one trailing newline stripped), else from $CQRPS_TOKEN "
            "and\n"
            "$CQRPS_ADMIN_TOKEN; drop, cluster and checkpoint need the admin "
            "token when\n"
            "the server has one. `cqrps COMMAND --help` describes a "
            "command.\n"
            "Exit status: 0 ok, 1 failed, 2 usage.\n");
}

static void usage_create(FILE *f)
{
    fprintf(f,
            "usage: cqrps create NAME --kind full|hash|ce|cqr --dim D "
            "[options]\n"
            "  --chunks C         chunks per embedding (ce, cqr; default 4)\n"
            "  --rows R           rows per codebook (hash, ce, cqr; default "
            "1024)\n"
            "  --seed S           seed of hashing, init and phases (default "
            "0)\n"
            "  --optimizer O      sgd|adagrad|adam (default adam)\n"
            "  --lr X             learning rate (default per optimizer)\n"
            "  --beta1 X, --beta2 X, --eps X   Adam parameters\n"
            "  --weight-decay X   decoupled weight decay\n"
            "  --init-scale X     uniform(-X, X) init (default 1/sqrt(dim))\n"
            "  --cluster-every N  cqr: a phase every N pushed examples\n"
            "  --max-phases M     cqr: at most M scheduled phases\n"
            "  --cluster-iters N  k-means iterations per phase\n"
            "  --cluster-sample N sample points per centroid\n"
            "  --reset-optimizer  zero optimizer state at each phase\n"
            "--chunks and --rows are ignored by kinds that do not use "
            "them.\n");
}

static void usage_cluster(FILE *f)
{
    fprintf(f, "usage: cqrps cluster NAME [--wait] [--wait-timeout MS]\n"
               "  --wait             wait for the phase, progress on "
               "stderr\n"
               "  --wait-timeout MS  give up waiting after MS (default: "
               "none)\n");
}

static void usage_simple(FILE *f, const char *cmd, const char *args,
                         const char *what)
{
    fprintf(f, "usage: cqrps %s%s%s\n  %s\n", cmd, *args ? " " : "", args,
            what);
}

/* ---- Plumbing ---------------------------------------------------------- */

/* Reports a failed operation; returns the exit status. */
static int fail(cli_t *cli, int rc)
{
    const char *msg = cli->c ? cqrps_last_error(cli->c)
                             : cqrps_last_error(NULL);
    if (!msg || !*msg)
        msg = cqrps_strerror(rc);
    fprintf(stderr, "%s: %s%s%s: %s: %s\n", prog, cli->cmd,
            cli->what ? " " : "", cli->what ? cli->what : "",
            cqrps_errname(rc), msg);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 0, &f);
        js_kstr("command", cli->cmd, &f);
        js_kstr("status", cqrps_errname(rc), &f);
        js_key("code", &f);
        printf("%d", rc);
        js_kstr("message", msg, &f);
        fputs("}\n", stdout);
    }
    return EXIT_FAIL;
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: ", prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(try `%s --help`)\n", prog);
    return EXIT_USAGE;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
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

static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (!*s || errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
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
    int rc = 0;
    if (cli->token_file || !cli->token) {
        rc = cqrps_secret_load(cli->token_file, "CQRPS_TOKEN", &tok,
                               &toklen, msg, sizeof msg);
        if (rc == 0 && msg[0])
            fprintf(stderr, "%s: %s\n", prog, msg);
    }
    if (rc == 0 && (cli->admin_file || !cli->admin)) {
        rc = cqrps_secret_load(cli->admin_file, "CQRPS_ADMIN_TOKEN", &atok,
                               &atoklen, msg, sizeof msg);
        if (rc == 0 && msg[0])
            fprintf(stderr, "%s: %s\n", prog, msg);
    }
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", prog, msg);
        cqrps_secret_free(tok, toklen);
        return EXIT_FAIL;
    }
    if (tok) {
        opt.token = tok;
        opt.token_len = toklen;
    } else if (cli->token) {
        opt.token = cli->token;
        opt.token_len = strlen(cli->token);
    }
    if (atok) {
        opt.admin_token = atok;
        opt.admin_token_len = atoklen;
    } else if (cli->admin) {
        opt.admin_token = cli->admin;
        opt.admin_token_len = strlen(cli->admin);
    }
    opt.client_name = "cqrps-cli";
    rc = cqrps_connect(cli->addr, &opt, &cli->c);
    /* The client copied the tokens. */
    cqrps_secret_free(tok, toklen);
    cqrps_secret_free(atok, atoklen);
    return rc < 0 ? fail(cli, rc) : 0;
}

/* Parses the options of a command that takes at most one NAME and only
 * --help; sets cli->what. */
static int simple_args(cli_t *cli, int argc, char **argv, int want_name,
                       const char *args, const char *what)
{
    static const struct option lo[] = { { "help", no_argument, NULL, 'h' },
                                        { NULL, 0, NULL, 0 } };
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
        if (ch == 'h') {
            usage_simple(stdout, cli->cmd, args, what);
            return -1;
        }
        usage_simple(stderr, cli->cmd, args, what);
        return EXIT_USAGE;
    }
    int left = argc - optind;
    if (left != want_name) {
        usage_simple(stderr, cli->cmd, args, what);
        return EXIT_USAGE;
    }
    cli->what = want_name ? argv[optind] : NULL;
    return 0;
}

/* ---- Commands ---------------------------------------------------------- */

static int cmd_create(cli_t *cli, int argc, char **argv)
{
    enum { O_KIND = 256, O_DIM, O_CHUNKS, O_ROWS, O_SEED, O_OPT, O_LR,
           O_B1, O_B2, O_EPS, O_WD, O_INIT, O_EVERY, O_MAXPH, O_ITERS,
           O_SAMPLE, O_RESET };
    static const struct option lo[] = {
        { "help", no_argument, NULL, 'h' },
        { "kind", required_argument, NULL, O_KIND },
        { "dim", required_argument, NULL, O_DIM },
        { "chunks", required_argument, NULL, O_CHUNKS },
        { "rows", required_argument, NULL, O_ROWS },
        { "seed", required_argument, NULL, O_SEED },
        { "optimizer", required_argument, NULL, O_OPT },
        { "lr", required_argument, NULL, O_LR },
        { "beta1", required_argument, NULL, O_B1 },
        { "beta2", required_argument, NULL, O_B2 },
        { "eps", required_argument, NULL, O_EPS },
        { "weight-decay", required_argument, NULL, O_WD },
        { "init-scale", required_argument, NULL, O_INIT },
        { "cluster-every", required_argument, NULL, O_EVERY },
        { "max-phases", required_argument, NULL, O_MAXPH },
        { "cluster-iters", required_argument, NULL, O_ITERS },
        { "cluster-sample", required_argument, NULL, O_SAMPLE },
        { "reset-optimizer", no_argument, NULL, O_RESET },
        { NULL, 0, NULL, 0 }
    };
    cqrps_table_config_t cfg;
    cqrps_table_config_init(&cfg, CQRPS_KIND_FULL, 0);
    uint64_t chunks = 4, rows = 1024, v;
    int have_kind = 0, ch, li = -1;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "h", lo, &li)) != -1) {
        const char *a = optarg;
        int bad = 0;
        switch (ch) {
        case 'h':
            usage_create(stdout);
            return 0;
        case O_KIND:
            bad = cqrps_kind_parse(a, &cfg.kind) < 0;
            have_kind = 1;
            break;
        case O_DIM:
            bad = parse_u64(a, UINT32_MAX, &v) < 0 || v == 0;
            cfg.dim = (uint32_t)v;
            break;
        case O_CHUNKS:
            bad = parse_u64(a, UINT32_MAX, &chunks) < 0 || chunks == 0;
            break;
        case O_ROWS:
            bad = parse_u64(a, UINT32_MAX, &rows) < 0 || rows == 0;
            break;
        case O_SEED:
            bad = parse_u64(a, UINT64_MAX, &cfg.seed) < 0;
            break;
        case O_OPT:
            bad = cqrps_optimizer_parse(a, &cfg.optimizer) < 0;
            break;
        case O_LR: bad = parse_float(a, &cfg.lr) < 0; break;
        case O_B1: bad = parse_float(a, &cfg.beta1) < 0; break;
        case O_B2: bad = parse_float(a, &cfg.beta2) < 0; break;
        case O_EPS: bad = parse_float(a, &cfg.eps) < 0; break;
        case O_WD: bad = parse_float(a, &cfg.weight_decay) < 0; break;
        case O_INIT: bad = parse_float(a, &cfg.init_scale) < 0; break;
        case O_EVERY:
            bad = parse_u64(a, UINT64_MAX, &cfg.schedule_every) < 0;
            break;
        case O_MAXPH:
            bad = parse_u64(a, UINT32_MAX, &v) < 0;
            cfg.schedule_max_phases = (uint32_t)v;
            break;
        case O_ITERS:
            bad = parse_u64(a, UINT32_MAX, &v) < 0;
            cfg.cluster_iters = (uint32_t)v;
            break;
        case O_SAMPLE:
            bad = parse_u64(a, UINT32_MAX, &v) < 0;
            cfg.cluster_sample = (uint32_t)v;
            break;
        case O_RESET:
            cfg.reset_optimizer = 1;
            break;
        default:
            usage_create(stderr);
            return EXIT_USAGE;
        }
        if (bad) {
            fprintf(stderr, "%s: create: bad value '%s' for --%s\n", prog,
                    a ? a : "", li >= 0 ? lo[li].name : "?");
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1 || !have_kind || cfg.dim == 0) {
        fprintf(stderr, "%s: create needs NAME, --kind and --dim\n", prog);
        usage_create(stderr);
        return EXIT_USAGE;
    }
    cli->what = argv[optind];
    if (cfg.kind == CQRPS_KIND_CE || cfg.kind == CQRPS_KIND_CQR)
        cfg.chunks = (uint32_t)chunks;
    if (cfg.kind != CQRPS_KIND_FULL)
        cfg.rows = (uint32_t)rows;
    int rc = connect_cli(cli);
    if (rc)
        return rc;
    cqrps_table_info_t info;
    rc = cqrps_create_table(cli->c, cli->what, &cfg, &info);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_key("table", &f);
        js_info(&info);
        fputs("}\n", stdout);
    } else {
        printf("created table %s\n", info.name);
        print_describe(&info);
    }
    return 0;
}

static int cmd_drop(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 1, "NAME", "drop a table");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    rc = cqrps_drop_table(cli->c, cli->what);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_kstr("dropped", cli->what, &f);
        fputs("}\n", stdout);
    } else {
        printf("dropped table %s\n", cli->what);
    }
    return 0;
}

static int cmd_list(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 0, "", "list the tables");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    cqrps_table_info_t *t;
    size_t n;
    rc = cqrps_list_tables(cli->c, &t, &n);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_key("tables", &f);
        putchar('[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                putchar(',');
            js_info(&t[i]);
        }
        fputs("]}\n", stdout);
    } else if (n == 0) {
        printf("no tables\n");
    } else {
        print_table_rows(t, n);
    }
    cqrps_table_list_free(t);
    return 0;
}

static int cmd_describe(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 1, "NAME",
                         "a table's config and figures");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    cqrps_table_info_t info;
    rc = cqrps_describe_table(cli->c, cli->what, &info);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_key("table", &f);
        js_info(&info);
        fputs("}\n", stdout);
    } else {
        print_describe(&info);
    }
    return 0;
}

static int cmd_stats(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 0, "",
                         "server counters and tables");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    cqrps_stats_t st;
    rc = cqrps_stats(cli->c, &st);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_kstr("server_version", st.server_version, &f);
        js_ku64("shards", cqrps_shard_count(cli->c), &f);
        js_kdbl("uptime_seconds", st.uptime_seconds, &f);
        js_ku64("connections", st.connections, &f);
        js_ku64("requests", st.requests, &f);
        js_ku64("errors", st.errors, &f);
        js_ku64("bytes_in", st.bytes_in, &f);
        js_ku64("bytes_out", st.bytes_out, &f);
        js_key("tables", &f);
        putchar('[');
        for (size_t i = 0; i < st.ntables; i++) {
            if (i)
                putchar(',');
            js_info(&st.tables[i]);
        }
        putchar(']');
        js_key("counters", &f);
        int g = 1;
        putchar('{');
        for (size_t i = 0; i < st.ncounters; i++)
            js_kdbl(st.counters[i].name, st.counters[i].value, &g);
        fputs("}}\n", stdout);
    } else {
        char bi[32], bo[32];
        human_bytes(st.bytes_in, bi, sizeof(bi));
        human_bytes(st.bytes_out, bo, sizeof(bo));
        printf("server:      cqrps-server %s (%u shard%s)\n",
               st.server_version, cqrps_shard_count(cli->c),
               cqrps_shard_count(cli->c) == 1 ? "" : "s");
        printf("uptime:      %.1f s\n", st.uptime_seconds);
        printf("connections: %" PRIu64 "\n", st.connections);
        printf("requests:    %" PRIu64 " (%" PRIu64 " errors)\n",
               st.requests, st.errors);
        printf("traffic:     %s in, %s out\n", bi, bo);
        print_latency(&st);
        if (st.ncounters) {
            printf("counters:\n");
            /* Histogram buckets are summarised above (--json has them). */
            for (size_t i = 0; i < st.ncounters; i++)
                if (!(strncmp(st.counters[i].name, "latency.", 8) == 0 &&
                      strstr(st.counters[i].name, ".le.") != NULL))
                    printf("  %-36s %.6g\n", st.counters[i].name,
                           st.counters[i].value);
        }
        if (st.ntables) {
            printf("tables:\n");
            print_table_rows(st.tables, st.ntables);
        }
    }
    cqrps_stats_free(&st);
    return 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int cmd_cluster(cli_t *cli, int argc, char **argv)
{
    static const struct option lo[] = {
        { "help", no_argument, NULL, 'h' },
        { "wait", no_argument, NULL, 'w' },
        { "wait-timeout", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 }
    };
    int wait = 0, ch;
    uint64_t wait_ms = 0;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "hw", lo, NULL)) != -1) {
        switch (ch) {
        case 'h':
            usage_cluster(stdout);
            return 0;
        case 'w':
            wait = 1;
            break;
        case 't':
            if (parse_u64(optarg, UINT32_MAX, &wait_ms) < 0)
                return usage_error("bad --wait-timeout '%s'", optarg);
            break;
        default:
            usage_cluster(stderr);
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        usage_cluster(stderr);
        return EXIT_USAGE;
    }
    cli->what = argv[optind];
    int rc = connect_cli(cli);
    if (rc)
        return rc;
    uint64_t id;
    rc = cqrps_cluster(cli->c, cli->what, &id);
    if (rc < 0)
        return fail(cli, rc);
    if (!wait) {
        if (cli->json) {
            int f = 1;
            putchar('{');
            js_kbool("ok", 1, &f);
            js_kstr("table", cli->what, &f);
            js_ku64("phase_id", id, &f);
            fputs("}\n", stdout);
        } else {
            printf("started cluster phase %" PRIu64 " of table %s\n", id,
                   cli->what);
        }
        return 0;
    }
    /* Poll here rather than in cqrps_cluster_wait, to show progress. */
    const int tty = isatty(STDERR_FILENO);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double start = (double)now.tv_sec + now.tv_nsec * 1e-9;
    char last_stage[32] = "";
    cqrps_phase_status_t st;
    unsigned pause = 20;
    for (;;) {
        rc = cqrps_cluster_status(cli->c, cli->what, id, &st);
        if (rc < 0)
            return fail(cli, rc);
        if (st.state == CQRPS_PHASE_DONE || st.state == CQRPS_PHASE_FAILED)
            break;
        if (tty) {
            fprintf(stderr, "\rcluster %s phase %" PRIu64 ": %-10s %5.1f%%",
                    cli->what, id, st.stage, st.fraction * 100.0);
        } else if (strcmp(st.stage, last_stage) != 0) {
            fprintf(stderr, "cluster %s phase %" PRIu64 ": %s %.1f%%\n",
                    cli->what, id, st.stage, st.fraction * 100.0);
        }
        snprintf(last_stage, sizeof(last_stage), "%s", st.stage);
        clock_gettime(CLOCK_MONOTONIC, &now);
        double el = (double)now.tv_sec + now.tv_nsec * 1e-9 - start;
        if (wait_ms && el * 1000.0 >= (double)wait_ms) {
            if (tty)
                fputc('\n', stderr);
            fprintf(stderr, "%s: cluster %s: TIMED_OUT: phase %" PRIu64
                            " not done after %" PRIu64 " ms\n",
                    prog, cli->what, id, wait_ms);
            if (cli->json) {
                int f = 1;
                putchar('{');
                js_kbool("ok", 0, &f);
                js_kstr("status", "TIMED_OUT", &f);
                js_key("phase", &f);
                js_phase(&st);
                fputs("}\n", stdout);
            }
            return EXIT_FAIL;
        }
        sleep_ms(pause);
        pause = pause * 2 > 250 ? 250 : pause * 2;
    }
    if (tty)
        fprintf(stderr, "\rcluster %s phase %" PRIu64 ": %-10s %5.1f%%\n",
                cli->what, id, cqrps_phase_state_name(st.state), 100.0);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", st.state == CQRPS_PHASE_DONE, &f);
        js_kstr("table", cli->what, &f);
        js_key("phase", &f);
        js_phase(&st);
        fputs("}\n", stdout);
    } else if (st.state == CQRPS_PHASE_DONE) {
        printf("cluster phase %" PRIu64 " of table %s done in %.3f s: "
               "inertia %g, %" PRIu64 " ids assigned, %" PRIu64
               " pushes replayed\n",
               id, cli->what, st.seconds, st.inertia, st.ids_assigned,
               st.replayed_pushes);
    }
    if (st.state == CQRPS_PHASE_FAILED) {
        fprintf(stderr, "%s: cluster %s: phase %" PRIu64 " failed: %s\n",
                prog, cli->what, id, st.error);
        return EXIT_FAIL;
    }
    return 0;
}

static int cmd_digest(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 1, "NAME",
                         "the table's state digest (16 hex digits)");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    char hex[17];
    rc = cqrps_digest(cli->c, cli->what, hex);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_kstr("table", cli->what, &f);
        js_kstr("digest", hex, &f);
        fputs("}\n", stdout);
    } else {
        printf("%s\n", hex);
    }
    return 0;
}

static int cmd_checkpoint(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 0, "", "take a checkpoint");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    uint64_t gen = 0;
    rc = cqrps_checkpoint(cli->c, &gen);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_ku64("generation", gen, &f);
        fputs("}\n", stdout);
    } else {
        printf("checkpoint generation %" PRIu64 "\n", gen);
    }
    return 0;
}

static int cmd_checkpoints(cli_t *cli, int argc, char **argv)
{
    int rc = simple_args(cli, argc, argv, 0, "", "list the checkpoints");
    if (rc)
        return rc < 0 ? 0 : rc;
    if ((rc = connect_cli(cli)))
        return rc;
    cqrps_checkpoint_info_t *cp;
    size_t n;
    rc = cqrps_list_checkpoints(cli->c, &cp, &n);
    if (rc < 0)
        return fail(cli, rc);
    if (cli->json) {
        int f = 1;
        putchar('{');
        js_kbool("ok", 1, &f);
        js_key("checkpoints", &f);
        putchar('[');
        for (size_t i = 0; i < n; i++) {
            int g = 1;
            printf("%s{", i ? "," : "");
            js_ku64("shard", cp[i].shard, &g);
            js_ku64("generation", cp[i].generation, &g);
            js_ku64("unix_time", cp[i].unix_time, &g);
            js_ku64("bytes", cp[i].bytes, &g);
            js_ku64("tables", cp[i].tables, &g);
            putchar('}');
        }
        fputs("]}\n", stdout);
    } else if (n == 0) {
        printf("no checkpoints\n");
    } else {
        printf("%-5s %10s %-20s %12s %6s\n", "SHARD", "GENERATION", "TIME",
               "BYTES", "TABLES");
        for (size_t i = 0; i < n; i++) {
            char tb[32] = "?";
            time_t t = (time_t)cp[i].unix_time;
            struct tm tm;
            if (gmtime_r(&t, &tm))
                strftime(tb, sizeof(tb), "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("%-5u %10" PRIu64 " %-20s %12" PRIu64 " %6u\n",
                   cp[i].shard, cp[i].generation, tb, cp[i].bytes,
                   cp[i].tables);
        }
    }
    cqrps_checkpoint_list_free(cp);
    return 0;
}

typedef struct command {
    const char *name;
    int (*run)(cli_t *cli, int argc, char **argv);
} command_t;

static const command_t commands[] = {
    { "create", cmd_create },       { "drop", cmd_drop },
    { "list", cmd_list },           { "describe", cmd_describe },
    { "stats", cmd_stats },         { "cluster", cmd_cluster },
    { "digest", cmd_digest },       { "checkpoint", cmd_checkpoint },
    { "checkpoints", cmd_checkpoints },
};

int main(int argc, char **argv)
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
        { NULL, 0, NULL, 0 }
    };
    cli_t cli;
    memset(&cli, 0, sizeof(cli));
    cli.addr = getenv("CQRPS_ADDR");
    if (!cli.addr || !*cli.addr)
        cli.addr = "127.0.0.1:7070";
    int ch;
    uint64_t v;
    /* "+": stop at the command; its options are parsed by the command. */
    while ((ch = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
        switch (ch) {
        case 'a': cli.addr = optarg; break;
        case 'j': cli.json = 1; break;
        case 't':
            if (parse_u64(optarg, UINT32_MAX, &v) < 0 || v == 0)
                return usage_error("bad --timeout '%s'", optarg);
            cli.timeout = (uint32_t)v;
            break;
        case 'F': cli.token_file = optarg; break;
        case 'G': cli.admin_file = optarg; break;
        case 'T':
        case 'A':
            fprintf(stderr, "%s: warning: --%s is deprecated: other users "
                    "can read it with ps; use --%s-file FILE or $%s\n",
                    prog, ch == 'T' ? "token" : "admin-token",
                    ch == 'T' ? "token" : "admin-token",
                    ch == 'T' ? "CQRPS_TOKEN" : "CQRPS_ADMIN_TOKEN");
            if (ch == 'T')
                cli.token = optarg;
            else
                cli.admin = optarg;
            break;
        case 'h':
            usage_main(stdout);
            return 0;
        default:
            usage_main(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage_main(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        if (optind + 1 < argc) {
            char *hargv[] = { argv[optind + 1], "--help", NULL };
            name = argv[optind + 1];
            for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]);
                 i++)
                if (strcmp(commands[i].name, name) == 0) {
                    cli.cmd = name;
                    return commands[i].run(&cli, 2, hargv);
                }
        }
        usage_main(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0) {
            cli.cmd = name;
            int rc = commands[i].run(&cli, argc - optind, argv + optind);
            cqrps_close(cli.c);
            return rc;
        }
    }
    return usage_error("unknown command '%s'", name);
}
