/* cli_cmd.c -- the commands of the `cqrps` CLI: the table cli.c runs
 * (see cli.h for the model). A command is its parser, its library call
 * and its two printers; the skeleton does the rest.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_print.h"

/* ---- Usage and arguments ----------------------------------------------- */

static void usage_simple(FILE *f, const cli_command_t *cmd)
{
    fprintf(f, "usage: cqrps %s%s%s\n  %s\n", cmd->name,
            *cmd->args ? " " : "", cmd->args, cmd->what);
}

/* The arguments of a command that takes NAME (cmd->args "NAME") or
 * nothing, and only --help. */
static int parse_simple(cli_t *cli, const cli_command_t *cmd, int argc,
                        char **argv)
{
    static const struct option lo[] = { { "help", no_argument, NULL, 'h' },
                                        { NULL, 0, NULL, 0 } };
    const int want_name = *cmd->args != '\0';
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "+h", lo, NULL)) != -1) {
        if (ch == 'h') {
            cmd->usage(stdout, cmd);
            return -1;
        }
        cmd->usage(stderr, cmd);
        return CLI_EXIT_USAGE;
    }
    if (argc - optind != want_name) {
        cmd->usage(stderr, cmd);
        return CLI_EXIT_USAGE;
    }
    cli->what = want_name ? argv[optind] : NULL;
    return 0;
}

/* ---- create ------------------------------------------------------------ */

static void usage_create(FILE *f, const cli_command_t *cmd)
{
    (void)cmd;
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
            "  --init-scale X     uniform(-X, X) init (default 0.01)\n"
            "  --cluster-every N  cqr: a phase every N pushed examples\n"
            "  --max-phases M     cqr: at most M scheduled phases\n"
            "  --cluster-iters N  k-means iterations per phase, at most "
            "(default 25)\n"
            "  --cluster-tol X    k-means stops when an iteration lowers the "
            "inertia\n"
            "                     by less than X of it (default 1e-3; 0 = "
            "every iteration)\n"
            "  --cluster-sample N sample points per centroid\n"
            "  --reset-optimizer  zero the codebooks' optimizer state at each "
            "phase\n"
            "                     (the default)\n"
            "  --no-reset-optimizer  keep it across phases (the published "
            "code's way)\n"
            "  --admit-after N    full, cqr: an ID gets state of its own at "
            "its N-th push\n"
            "                     (default 1: the first); before, a cqr ID "
            "uses its hashed\n"
            "                     pointers and a full ID shares one of 1024 "
            "fallback rows\n"
            "                     (its pushes train it, its lookups return "
            "it)\n"
            "  --evict-after-phases K  cqr: IDs not pushed during the last K "
            "phases\n"
            "                     lose their learned pointers (default 0: "
            "never)\n"
            "  --max-ids N        full: at most N rows; a new row beyond "
            "frees the least\n"
            "                     recently pushed of 8 sampled (default 0: no "
            "limit)\n"
            "  --ttl S            full: rows not pushed for S seconds are "
            "freed (default 0:\n"
            "                     never); an evicted ID looks up its initial "
            "value again\n"
            "  --compact          cqr: compact the table once its first "
            "phase commits (about\n"
            "                     9 bytes per known ID; see `cqrps compact "
            "--help`)\n"
            "--chunks and --rows are ignored by kinds that do not use "
            "them.\n");
}

enum { O_KIND = 256, O_DIM, O_CHUNKS, O_ROWS, O_SEED, O_OPT, O_LR, O_B1,
       O_B2, O_EPS, O_WD, O_INIT, O_EVERY, O_MAXPH, O_ITERS, O_SAMPLE,
       O_RESET, O_NORESET, O_TOL, O_ADMIT, O_EVICT, O_MAXIDS, O_TTL,
       O_COMPACT };

static const struct option create_options[] = {
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
    { "no-reset-optimizer", no_argument, NULL, O_NORESET },
    { "cluster-tol", required_argument, NULL, O_TOL },
    { "admit-after", required_argument, NULL, O_ADMIT },
    { "evict-after-phases", required_argument, NULL, O_EVICT },
    { "max-ids", required_argument, NULL, O_MAXIDS },
    { "ttl", required_argument, NULL, O_TTL },
    { "compact", no_argument, NULL, O_COMPACT },
    { NULL, 0, NULL, 0 }
};

/* What create's options set beyond the config. */
typedef struct create_args {
    uint64_t chunks, rows; /* applied only to the kinds that use them */
    int have_kind;
} create_args_t;

/* Applies option ch (argument a) to cfg/ca; 1 when a's value is bad. */
static int create_option(int ch, const char *a, cqrps_table_config_t *cfg,
                         create_args_t *ca)
{
    uint64_t v = 0;
    int bad = 0;
    switch (ch) {
    case O_KIND:
        bad = cqrps_kind_parse(a, &cfg->kind) < 0;
        ca->have_kind = 1;
        break;
    case O_DIM:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0 || v == 0;
        cfg->dim = (uint32_t)v;
        break;
    case O_CHUNKS:
        bad = cli_parse_u64(a, UINT32_MAX, &ca->chunks) < 0 || ca->chunks == 0;
        break;
    case O_ROWS:
        bad = cli_parse_u64(a, UINT32_MAX, &ca->rows) < 0 || ca->rows == 0;
        break;
    case O_SEED: bad = cli_parse_u64(a, UINT64_MAX, &cfg->seed) < 0; break;
    case O_OPT: bad = cqrps_optimizer_parse(a, &cfg->optimizer) < 0; break;
    case O_LR: bad = cli_parse_float(a, &cfg->lr) < 0; break;
    case O_B1: bad = cli_parse_float(a, &cfg->beta1) < 0; break;
    case O_B2: bad = cli_parse_float(a, &cfg->beta2) < 0; break;
    case O_EPS: bad = cli_parse_float(a, &cfg->eps) < 0; break;
    case O_WD: bad = cli_parse_float(a, &cfg->weight_decay) < 0; break;
    case O_INIT: bad = cli_parse_float(a, &cfg->init_scale) < 0; break;
    case O_EVERY:
        bad = cli_parse_u64(a, UINT64_MAX, &cfg->schedule_every) < 0;
        break;
    case O_MAXPH:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0;
        cfg->schedule_max_phases = (uint32_t)v;
        break;
    case O_ITERS:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0;
        cfg->cluster_iters = (uint32_t)v;
        break;
    case O_SAMPLE:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0;
        cfg->cluster_sample = (uint32_t)v;
        break;
    case O_RESET: cfg->reset_optimizer = CQRPS_ON; break;
    case O_NORESET: cfg->reset_optimizer = CQRPS_OFF; break;
    case O_TOL:
        /* 0 here is "every iteration", which the wire spells < 0. */
        bad = cli_parse_float(a, &cfg->cluster_tol) < 0 ||
              !(cfg->cluster_tol >= 0.0f && cfg->cluster_tol < 1.0f);
        if (cfg->cluster_tol == 0.0f)
            cfg->cluster_tol = -1.0f;
        break;
    case O_ADMIT:
        bad = cli_parse_u64(a, 255, &v) < 0;
        cfg->admit_after = (uint32_t)v;
        break;
    case O_EVICT:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0;
        cfg->evict_after_phases = (uint32_t)v;
        break;
    case O_MAXIDS: bad = cli_parse_u64(a, UINT64_MAX, &cfg->max_ids) < 0; break;
    case O_TTL:
        bad = cli_parse_u64(a, UINT32_MAX, &v) < 0;
        cfg->ttl_seconds = (uint32_t)v;
        break;
    case O_COMPACT: cfg->compact = 1; break;
    }
    return bad;
}

static int parse_create(cli_t *cli, const cli_command_t *cmd, int argc,
                        char **argv)
{
    const struct option *lo = create_options;
    cqrps_table_config_t *cfg = &cli->cfg;
    cqrps_table_config_init(cfg, CQRPS_KIND_FULL, 0);
    create_args_t ca = { 4, 1024, 0 };
    int ch, li = -1;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "h", lo, &li)) != -1) {
        if (ch == 'h') {
            cmd->usage(stdout, cmd);
            return -1;
        }
        if (ch < O_KIND || ch > O_COMPACT) {
            cmd->usage(stderr, cmd);
            return CLI_EXIT_USAGE;
        }
        if (create_option(ch, optarg, cfg, &ca)) {
            fprintf(stderr, "%s: create: bad value '%s' for --%s\n",
                    cli_prog, optarg ? optarg : "",
                    li >= 0 ? lo[li].name : "?");
            return CLI_EXIT_USAGE;
        }
    }
    if (argc - optind != 1 || !ca.have_kind || cfg->dim == 0) {
        fprintf(stderr, "%s: create needs NAME, --kind and --dim\n",
                cli_prog);
        cmd->usage(stderr, cmd);
        return CLI_EXIT_USAGE;
    }
    cli->what = argv[optind];
    if (cfg->kind == CQRPS_KIND_CE || cfg->kind == CQRPS_KIND_CQR)
        cfg->chunks = (uint32_t)ca.chunks;
    if (cfg->kind != CQRPS_KIND_FULL)
        cfg->rows = (uint32_t)ca.rows;
    return 0;
}

static int call_create(cli_t *cli, cli_result_t *r)
{
    return cqrps_create_table(cli->c, cli->what, &cli->cfg, &r->info);
}

static void json_info(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    (void)cli;
    js_add(o, "table", js_info(&r->info));
}

static void text_create(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    printf("created table %s\n", r->info.name);
    print_describe(&r->info);
}

/* ---- drop, list, describe ---------------------------------------------- */

static int call_drop(cli_t *cli, cli_result_t *r)
{
    (void)r;
    return cqrps_drop_table(cli->c, cli->what);
}

static void json_drop(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    (void)r;
    js_str(o, "dropped", cli->what);
}

static void text_drop(const cli_t *cli, const cli_result_t *r)
{
    (void)r;
    printf("dropped table %s\n", cli->what);
}

static int call_list(cli_t *cli, cli_result_t *r)
{
    return cqrps_list_tables(cli->c, &r->tables, &r->ntables);
}

/* "KEY":[infos...] */
static void json_infos(cJSON *o, const char *key, const cqrps_table_info_t *t,
                       size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        cJSON *info = js_info(&t[i]);
        if (!info || !cJSON_AddItemToArray(a, info)) {
            cJSON_Delete(info);
            cJSON_Delete(a);
            a = NULL;
        }
    }
    js_add(o, key, a);
}

static void json_list(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    (void)cli;
    json_infos(o, "tables", r->tables, r->ntables);
}

static void text_list(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    if (r->ntables == 0)
        printf("no tables\n");
    else
        print_table_rows(r->tables, r->ntables);
}

static int call_describe(cli_t *cli, cli_result_t *r)
{
    return cqrps_describe_table(cli->c, cli->what, &r->info);
}

static void text_describe(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    print_describe(&r->info);
}

/* ---- stats ------------------------------------------------------------- */

static int call_stats(cli_t *cli, cli_result_t *r)
{
    return cqrps_stats(cli->c, &r->stats);
}

static void json_stats(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    const cqrps_stats_t *st = &r->stats;
    js_str(o, "server_version", st->server_version);
    js_u64(o, "shards", cqrps_shard_count(cli->c));
    js_dbl(o, "uptime_seconds", st->uptime_seconds);
    js_u64(o, "connections", st->connections);
    js_u64(o, "requests", st->requests);
    js_u64(o, "errors", st->errors);
    js_u64(o, "bytes_in", st->bytes_in);
    js_u64(o, "bytes_out", st->bytes_out);
    json_infos(o, "tables", st->tables, st->ntables);
    /* Counts exactly (2^53 + 1 stays 2^53 + 1), others as doubles. */
    cJSON *cs = js_object();
    for (size_t i = 0; i < st->ncounters; i++)
        js_counter(cs, &st->counters[i]);
    js_add(o, "counters", cs);
}

static void text_stats(const cli_t *cli, const cli_result_t *r)
{
    const cqrps_stats_t *st = &r->stats;
    const uint32_t shards = cqrps_shard_count(cli->c);
    char bi[32], bo[32];
    human_bytes(st->bytes_in, bi, sizeof(bi));
    human_bytes(st->bytes_out, bo, sizeof(bo));
    printf("server:      cqrps-server %s (%u shard%s)\n",
           st->server_version, shards, shards == 1 ? "" : "s");
    printf("uptime:      %.1f s\n", st->uptime_seconds);
    printf("connections: %" PRIu64 "\n", st->connections);
    printf("requests:    %" PRIu64 " (%" PRIu64 " errors)\n", st->requests,
           st->errors);
    printf("traffic:     %s in, %s out\n", bi, bo);
    print_latency(st);
    if (st->ncounters) {
        printf("counters:\n");
        /* Histogram buckets are summarised above (--json has them). */
        for (size_t i = 0; i < st->ncounters; i++) {
            char v[32];
            if (strncmp(st->counters[i].name, "latency.", 8) == 0 &&
                strstr(st->counters[i].name, ".le.") != NULL)
                continue;
            counter_text(&st->counters[i], v, sizeof(v));
            printf("  %-36s %s\n", st->counters[i].name, v);
        }
    }
    if (st->ntables) {
        printf("tables:\n");
        print_table_rows(st->tables, st->ntables);
    }
}

/* ---- cluster ----------------------------------------------------------- */

static void usage_cluster(FILE *f, const cli_command_t *cmd)
{
    (void)cmd;
    fprintf(f, "usage: cqrps cluster NAME [--wait] [--wait-timeout MS]\n"
               "       cqrps cluster NAME --cancel [--phase ID] [--wait]\n"
               "  --wait             wait for the phase, progress on "
               "stderr\n"
               "                     (chunk, stage, fraction, time left)\n"
               "  --wait-timeout MS  give up waiting after MS (default: "
               "none)\n"
               "  --cancel           stop the table's queued or running "
               "phase: the table\n"
               "                     stays as if it never ran (pushes made "
               "meanwhile stay)\n"
               "  --phase ID         --cancel only that phase\n");
}

static int parse_cluster(cli_t *cli, const cli_command_t *cmd, int argc,
                         char **argv)
{
    static const struct option lo[] = {
        { "help", no_argument, NULL, 'h' },
        { "wait", no_argument, NULL, 'w' },
        { "wait-timeout", required_argument, NULL, 't' },
        { "cancel", no_argument, NULL, 'c' },
        { "phase", required_argument, NULL, 'p' },
        { NULL, 0, NULL, 0 }
    };
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "hw", lo, NULL)) != -1) {
        switch (ch) {
        case 'h':
            cmd->usage(stdout, cmd);
            return -1;
        case 'w':
            cli->wait = 1;
            break;
        case 't':
            if (cli_parse_u64(optarg, UINT32_MAX, &cli->wait_ms) < 0)
                return cli_usage_error("bad --wait-timeout '%s'", optarg);
            break;
        case 'c':
            cli->cancel = 1;
            break;
        case 'p':
            if (cli_parse_u64(optarg, UINT64_MAX, &cli->phase) < 0 ||
                cli->phase == 0)
                return cli_usage_error("bad --phase '%s'", optarg);
            break;
        default:
            cmd->usage(stderr, cmd);
            return CLI_EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        cmd->usage(stderr, cmd);
        return CLI_EXIT_USAGE;
    }
    if (cli->phase && !cli->cancel)
        return cli_usage_error("%s goes with --cancel", "--phase");
    cli->what = argv[optind];
    return 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* "chunk 2/4 kmeans iter 5/25  47.3%  eta 12 s" for st. */
static void progress_line(const cqrps_phase_status_t *st, char *buf,
                          size_t len)
{
    int n = 0;
    if (st->chunks)
        n = snprintf(buf, len, "chunk %u/%u ", st->chunk ? st->chunk : 1,
                     st->chunks);
    n += snprintf(buf + n, len - (size_t)n, "%s",
                  st->stage[0] ? st->stage
                               : cqrps_phase_state_name(st->state));
    if (strcmp(st->stage, "kmeans") == 0 && st->iters)
        n += snprintf(buf + n, len - (size_t)n, " iter %u/%u", st->iter,
                      st->iters);
    n += snprintf(buf + n, len - (size_t)n, " %5.1f%%", st->fraction * 100);
    if (st->eta_seconds >= 0)
        snprintf(buf + n, len - (size_t)n, "  eta %.0f s", st->eta_seconds);
}

/* Polls phase r->id until it is done, failed or --wait-timeout passed,
 * with progress on stderr (here rather than in cqrps_cluster_wait, to
 * show it): on a terminal one line redrawn, else a line per chunk or
 * stage change. */
static int wait_phase(cli_t *cli, cli_result_t *r)
{
    const int tty = isatty(STDERR_FILENO);
    const double start = cli_now();
    char last[32] = "", line[128];
    uint32_t last_chunk = 0;
    cqrps_phase_status_t *st = &r->phase;
    unsigned pause = 20;
    r->waited = 1;
    for (;;) {
        int rc = cqrps_cluster_status(cli->c, cli->what, r->id, st);
        if (rc < 0)
            return rc;
        if (st->state == CQRPS_PHASE_DONE || st->state == CQRPS_PHASE_FAILED)
            break;
        progress_line(st, line, sizeof(line));
        if (tty)
            fprintf(stderr, "\rcluster %s phase %" PRIu64 ": %-60s",
                    cli->what, r->id, line);
        else if (strcmp(st->stage, last) != 0 || st->chunk != last_chunk)
            fprintf(stderr, "cluster %s phase %" PRIu64 ": %s\n", cli->what,
                    r->id, line);
        snprintf(last, sizeof(last), "%s", st->stage);
        last_chunk = st->chunk;
        double el = cli_now() - start;
        if (cli->wait_ms && el * 1000.0 >= (double)cli->wait_ms) {
            if (tty)
                fputc('\n', stderr);
            fprintf(stderr, "%s: cluster %s: TIMED_OUT: phase %" PRIu64
                            " not done after %" PRIu64 " ms\n",
                    cli_prog, cli->what, r->id, cli->wait_ms);
            r->timed_out = 1;
            r->failed = 1;
            return 0;
        }
        sleep_ms(pause);
        pause = pause * 2 > 250 ? 250 : pause * 2;
    }
    if (tty)
        fprintf(stderr, "\rcluster %s phase %" PRIu64 ": %-60s\n", cli->what,
                r->id, st->cancelled ? "cancelled"
                                     : cqrps_phase_state_name(st->state));
    /* Waiting for a phase one cancelled succeeds when it ended cancelled. */
    r->failed = cli->cancel ? !(st->state == CQRPS_PHASE_FAILED &&
                                st->cancelled)
                            : st->state != CQRPS_PHASE_DONE;
    return 0;
}

static int call_cluster(cli_t *cli, cli_result_t *r)
{
    int rc;
    if (cli->cancel) {
        rc = cqrps_cluster_cancel(cli->c, cli->what, cli->phase, &r->phase);
        if (rc < 0)
            return rc;
        r->cancelled = 1;
        r->id = r->phase.phase_id;
    } else {
        rc = cqrps_cluster(cli->c, cli->what, &r->id);
        if (rc < 0)
            return rc;
    }
    return cli->wait ? wait_phase(cli, r) : 0;
}

static void json_cluster(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    if (r->timed_out) {
        js_str(o, "status", "TIMED_OUT");
    } else {
        js_str(o, "table", cli->what);
        if (r->cancelled)
            js_bool(o, "cancel_requested", 1);
        if (!r->waited && !r->cancelled) {
            js_u64(o, "phase_id", r->id);
            return;
        }
    }
    js_add(o, "phase", js_phase(&r->phase));
}

static void text_cluster(const cli_t *cli, const cli_result_t *r)
{
    const cqrps_phase_status_t *st = &r->phase;
    char line[128];
    if (r->cancelled && !r->waited) {
        progress_line(st, line, sizeof(line));
        printf("cancel requested for cluster phase %" PRIu64 " of table %s "
               "(was %s: %s)\n", r->id, cli->what,
               cqrps_phase_state_name(st->state), line);
    } else if (r->cancelled && !r->timed_out && st->cancelled) {
        printf("cluster phase %" PRIu64 " of table %s cancelled after "
               "%.3f s: the table is as before the phase\n", r->id,
               cli->what, st->seconds);
    } else if (!r->waited)
        printf("started cluster phase %" PRIu64 " of table %s\n", r->id,
               cli->what);
    else if (!r->timed_out && st->state == CQRPS_PHASE_DONE)
        printf("cluster phase %" PRIu64 " of table %s done in %.3f s: "
               "inertia %g, %" PRIu64 " ids assigned, %u k-means "
               "iterations at most, %" PRIu64 " pushes replayed\n",
               r->id, cli->what, st->seconds, st->inertia, st->ids_assigned,
               st->kmeans_iters, st->replayed_pushes);
}

static void after_cluster(const cli_t *cli, const cli_result_t *r)
{
    if (r->waited && !r->timed_out && r->phase.state == CQRPS_PHASE_FAILED &&
        r->failed)
        fprintf(stderr, "%s: cluster %s: phase %" PRIu64 " failed: %s\n",
                cli_prog, cli->what, r->id, r->phase.error);
    else if (r->waited && !r->timed_out && r->failed)
        fprintf(stderr, "%s: cluster %s: phase %" PRIu64 " ended %s before "
                "the cancel took effect\n", cli_prog, cli->what, r->id,
                cqrps_phase_state_name(r->phase.state));
}

/* ---- digest, checkpoint, checkpoints ----------------------------------- */

static int call_digest(cli_t *cli, cli_result_t *r)
{
    return cqrps_digest(cli->c, cli->what, r->digest);
}

static void json_digest(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    js_str(o, "table", cli->what);
    js_str(o, "digest", r->digest);
}

static void text_digest(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    printf("%s\n", r->digest);
}

static int call_checkpoint(cli_t *cli, cli_result_t *r)
{
    return cqrps_checkpoint(cli->c, &r->id);
}

static void json_checkpoint(const cli_t *cli, const cli_result_t *r,
                            cJSON *o)
{
    (void)cli;
    js_u64(o, "generation", r->id);
}

static void text_checkpoint(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    printf("checkpoint generation %" PRIu64 "\n", r->id);
}

static int call_compact(cli_t *cli, cli_result_t *r)
{
    return cqrps_compact(cli->c, cli->what, &r->compacted);
}

static void json_compact(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    js_str(o, "table", cli->what);
    js_u64(o, "moved_ids", r->compacted.moved_ids);
    js_u64(o, "known_ids", r->compacted.known_ids);
    js_u64(o, "static_ids", r->compacted.static_ids);
    js_u64(o, "index_bytes", r->compacted.index_bytes);
    js_dbl(o, "seconds", r->compacted.seconds);
}

static void text_compact(const cli_t *cli, const cli_result_t *r)
{
    const cqrps_compact_info_t *x = &r->compacted;
    printf("compacted %s: %" PRIu64 " IDs moved in %.3f s; %" PRIu64
           " known IDs, %" PRIu64 " in the static set; index %" PRIu64
           " bytes (%.2f B/known id)\n", cli->what, x->moved_ids,
           x->seconds, x->known_ids, x->static_ids, x->index_bytes,
           x->known_ids ? (double)x->index_bytes / (double)x->known_ids
                        : 0.0);
}

static int call_checkpoints(cli_t *cli, cli_result_t *r)
{
    return cqrps_list_checkpoints(cli->c, &r->checkpoints,
                                  &r->ncheckpoints);
}

static void json_checkpoints(const cli_t *cli, const cli_result_t *r,
                             cJSON *o)
{
    (void)cli;
    const cqrps_checkpoint_info_t *cp = r->checkpoints;
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < r->ncheckpoints; i++) {
        cJSON *e = js_object();
        js_u64(e, "shard", cp[i].shard);
        js_u64(e, "generation", cp[i].generation);
        js_u64(e, "unix_time", cp[i].unix_time);
        js_u64(e, "bytes", cp[i].bytes);
        js_u64(e, "tables", cp[i].tables);
        if (!e || !cJSON_AddItemToArray(a, e)) {
            cJSON_Delete(e);
            cJSON_Delete(a);
            a = NULL;
        }
    }
    js_add(o, "checkpoints", a);
}

static void text_checkpoints(const cli_t *cli, const cli_result_t *r)
{
    (void)cli;
    const cqrps_checkpoint_info_t *cp = r->checkpoints;
    if (r->ncheckpoints == 0) {
        printf("no checkpoints\n");
        return;
    }
    printf("%-5s %10s %-20s %12s %6s\n", "SHARD", "GENERATION", "TIME",
           "BYTES", "TABLES");
    for (size_t i = 0; i < r->ncheckpoints; i++) {
        char tb[32] = "?";
        time_t t = (time_t)cp[i].unix_time;
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(tb, sizeof(tb), "%Y-%m-%dT%H:%M:%SZ", &tm);
        printf("%-5u %10" PRIu64 " %-20s %12" PRIu64 " %6u\n", cp[i].shard,
               cp[i].generation, tb, cp[i].bytes, cp[i].tables);
    }
}

/* ---- export ------------------------------------------------------------ */

static void usage_export(FILE *f, const cli_command_t *cmd)
{
    (void)cmd;
    fprintf(f, "usage: cqrps export TABLE --out FILE [--since GENERATION]\n"
               "                    [--generation G] [--dtype f32|f16|int8]\n"
               "  --out FILE         where the export goes (written whole, "
               "then renamed)\n"
               "  --since G          a delta from checkpoint generation G "
               "(apply it to\n"
               "                     the export of G)\n"
               "  --generation G     the checkpoint generation to export "
               "(default: newest)\n"
               "  --dtype D          f32 (default: lookups exactly the "
               "server's), f16, int8\n"
               "Exports a checkpoint generation: run `cqrps checkpoint` "
               "first for the\ncurrent state. Read it with cqrps_model.h or "
               "cqrps.serving (Python).\n");
}

static int parse_export(cli_t *cli, const cli_command_t *cmd, int argc,
                        char **argv)
{
    static const struct option lo[] = {
        { "help", no_argument, NULL, 'h' },
        { "out", required_argument, NULL, 'o' },
        { "since", required_argument, NULL, 's' },
        { "generation", required_argument, NULL, 'g' },
        { "dtype", required_argument, NULL, 'd' },
        { NULL, 0, NULL, 0 }
    };
    int ch;
    optind = 0;
    while ((ch = getopt_long(argc, argv, "ho:", lo, NULL)) != -1) {
        switch (ch) {
        case 'h':
            cmd->usage(stdout, cmd);
            return -1;
        case 'o':
            cli->out = optarg;
            break;
        case 's':
            if (cli_parse_u64(optarg, UINT64_MAX, &cli->exp.since) < 0 ||
                cli->exp.since == 0)
                return cli_usage_error("bad --since '%s'", optarg);
            break;
        case 'g':
            if (cli_parse_u64(optarg, UINT64_MAX, &cli->exp.generation) < 0)
                return cli_usage_error("bad --generation '%s'", optarg);
            break;
        case 'd':
            if (strcmp(optarg, "f32") && strcmp(optarg, "f16") &&
                strcmp(optarg, "int8"))
                return cli_usage_error("bad --dtype '%s' (f32, f16, int8)",
                                       optarg);
            cli->exp.dtype = optarg;
            break;
        default:
            cmd->usage(stderr, cmd);
            return CLI_EXIT_USAGE;
        }
    }
    if (argc - optind != 1 || !cli->out) {
        cmd->usage(stderr, cmd);
        return CLI_EXIT_USAGE;
    }
    cli->what = argv[optind];
    return 0;
}

/* Ctrl-C during an export: the first stops the fetch at the next chunk
 * (no partial file is left), a second quits at once. */
static volatile sig_atomic_t export_stop;

static void on_export_sigint(int sig)
{
    if (export_stop) {
        signal(sig, SIG_DFL);
        raise(sig);
    }
    export_stop = 1;
}

/* The fetch's progress on stderr, a line per tenth of a file of at least
 * 16 MiB (the build's time is in the server's log and the result). */
static int export_progress(void *ud, uint64_t done, uint64_t total)
{
    unsigned *last = ud;
    if (export_stop) {
        fprintf(stderr, "cqrps export: stopped at %" PRIu64 " of %" PRIu64
                " bytes\n", done, total);
        return 1;
    }
    unsigned tenth = total ? (unsigned)(done * 10 / total) : 10;
    if (total >= (16u << 20) && tenth > *last) {
        *last = tenth;
        fprintf(stderr, "cqrps export: fetched %.1f of %.1f MB (%u%%)\n",
                (double)done / 1e6, (double)total / 1e6, tenth * 10);
    }
    return 0;
}

static int call_export(cli_t *cli, cli_result_t *r)
{
    unsigned last = 0;
    struct sigaction sa = {.sa_handler = on_export_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    export_stop = 0;
    sigaction(SIGINT, &sa, &old);
    cli->exp.progress = export_progress;
    cli->exp.progress_ud = &last;
    int rc = cqrps_export(cli->c, cli->what, &cli->exp, cli->out,
                          &r->exported);
    sigaction(SIGINT, &old, NULL);
    return rc;
}

static void json_export(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    const cqrps_export_info_t *x = &r->exported;
    js_str(o, "table", cli->what);
    js_str(o, "out", cli->out);
    js_u64(o, "generation", x->generation);
    js_u64(o, "base_generation", x->base_generation);
    js_u64(o, "bytes", x->bytes);
    js_u64(o, "ids", x->ids);
    js_dbl(o, "build_seconds", x->build_seconds);
    js_str(o, "dtype", cli->exp.dtype ? cli->exp.dtype : "f32");
}

static void text_export(const cli_t *cli, const cli_result_t *r)
{
    const cqrps_export_info_t *x = &r->exported;
    char from[48] = "";
    if (x->base_generation)
        snprintf(from, sizeof from, " (delta from %" PRIu64 ")",
                 x->base_generation);
    printf("exported %s generation %" PRIu64 "%s to %s: %" PRIu64
           " bytes, %" PRIu64 " IDs, built in %.3f s\n", cli->what,
           x->generation, from, cli->out, x->bytes, x->ids,
           x->build_seconds);
}

/* ---- ping -------------------------------------------------------------- */

/* Connect and Hello on every shard happened in the skeleton (timed from
 * before it); what the servers said is the answer. */
static int call_ping(cli_t *cli, cli_result_t *r)
{
    int rc = cqrps_server_info(cli->c, &r->server);
    r->seconds = cli_now() - cli->t0;
    return rc;
}

static void json_ping(const cli_t *cli, const cli_result_t *r, cJSON *o)
{
    js_str(o, "server_version", r->server.server_version);
    js_u64(o, "protocol_version", r->server.protocol_version);
    js_u64(o, "shards", cqrps_shard_count(cli->c));
    js_bool(o, "admin", r->server.admin);
    js_u64(o, "max_frame_bytes", r->server.max_frame_bytes);
    js_u64(o, "max_batch", r->server.max_batch);
    js_dbl(o, "seconds", r->seconds);
}

static void text_ping(const cli_t *cli, const cli_result_t *r)
{
    const uint32_t shards = cqrps_shard_count(cli->c);
    printf("pong from %s: cqrps-server %s (protocol %u), %u shard%s, "
           "admin %s, %.3f ms\n",
           cli->addr, r->server.server_version, r->server.protocol_version,
           shards, shards == 1 ? "" : "s", r->server.admin ? "yes" : "no",
           r->seconds * 1e3);
}

/* ---- The table --------------------------------------------------------- */

const cli_command_t cli_commands[] = {
    { "create", "create NAME --kind full|hash|ce|cqr --dim D [options]", NULL,
      NULL, usage_create, parse_create, call_create, json_info, text_create,
      NULL },
    { "drop", "drop NAME             drop a table", "NAME", "drop a table",
      usage_simple, parse_simple, call_drop, json_drop, text_drop, NULL },
    { "list", "list                  list the tables", "",
      "list the tables", usage_simple, parse_simple, call_list, json_list,
      text_list, NULL },
    { "describe", "describe NAME         a table's config and figures",
      "NAME", "a table's config and figures", usage_simple, parse_simple,
      call_describe, json_info, text_describe, NULL },
    { "stats", "stats                 server counters and tables", "",
      "server counters and tables", usage_simple, parse_simple, call_stats,
      json_stats, text_stats, NULL },
    { "cluster", "cluster NAME [--wait|--cancel] start (or stop) a cluster "
      "phase (cqr tables)",
      NULL, NULL, usage_cluster, parse_cluster, call_cluster, json_cluster,
      text_cluster, after_cluster },
    { "digest", "digest NAME           the table's state digest", "NAME",
      "the table's state digest (16 hex digits)", usage_simple, parse_simple,
      call_digest, json_digest, text_digest, NULL },
    { "compact", "compact NAME          compact a cqr table's per-ID state",
      "NAME", "move a cqr table's known IDs into its static set (about 9 "
      "bytes an ID;\n  lookups and the digest stay as they were; the server "
      "keeps serving meanwhile;\n  needs the admin token)", usage_simple,
      parse_simple, call_compact, json_compact, text_compact, NULL },
    { "checkpoint", "checkpoint            take a checkpoint", "",
      "take a checkpoint", usage_simple, parse_simple, call_checkpoint,
      json_checkpoint, text_checkpoint, NULL },
    { "checkpoints", "checkpoints           list the checkpoints", "",
      "list the checkpoints", usage_simple, parse_simple, call_checkpoints,
      json_checkpoints, text_checkpoints, NULL },
    { "export", "export TABLE --out FILE [--since G] [--dtype D] a serving "
      "export", NULL, NULL, usage_export, parse_export, call_export,
      json_export, text_export, NULL },
    { "ping", "ping                  connect to every shard, say who answered",
      "", "connect and Hello to every shard: version, protocol, admin "
      "rights, time", usage_simple, parse_simple, call_ping, json_ping,
      text_ping, NULL },
};

const size_t cli_ncommands = sizeof(cli_commands) / sizeof(cli_commands[0]);
