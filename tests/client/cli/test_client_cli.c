/* test_client_cli.c -- the `cqrps` command line against a real server.
 *
 * Runs the built binary (CQR_CLI_BIN) as a user would, with a bounded
 * wait, and checks exit statuses, the human output, the error line
 * format ("cqrps: COMMAND NAME: STATUS: message") and that --json prints
 * exactly one well-formed JSON object (checked by a small RFC 8259
 * validator below).
 */
#include <check.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cqrps_model.h"
#include "testutil.h"
#include "check_main.h"

#ifndef CQR_CLI_BIN
#error "CQR_CLI_BIN must be defined by the build"
#endif

extern char **environ;

static cqr_test_server_t srv;

static void setup(void)
{
    tu_server_start(&srv, NULL);
}

static void teardown(void)
{
    tu_server_stop(&srv);
}

/* ---- Running the CLI ----------------------------------------------------- */

typedef struct run {
    int status;      /* exit code, or -1 if killed */
    char out[65536]; /* stdout */
    char err[8192];  /* stderr */
} run_t;

static void slurp(int fd, char *buf, size_t cap)
{
    lseek(fd, 0, SEEK_SET);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fd);
}

/* Runs CQR_CLI_BIN with args (NULL-terminated); with_addr adds --addr of
 * the suite's server first. Bounded: killed after 30 s. */
static void cli_env(run_t *r, int with_addr, char *const *envp,
                    const char *const *args)
{
    const char *argv[64];
    int argc = 0;
    argv[argc++] = CQR_CLI_BIN;
    if (with_addr) {
        argv[argc++] = "--addr";
        argv[argc++] = srv.addr;
    }
    for (int i = 0; args[i] && argc < 62; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;

    char op[] = "/tmp/cqr-cli-out-XXXXXX", ep[] = "/tmp/cqr-cli-err-XXXXXX";
    int ofd = mkstemp(op), efd = mkstemp(ep);
    ck_assert(ofd >= 0 && efd >= 0);
    unlink(op);
    unlink(ep);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, ofd, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, efd, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null",
                                     O_RDONLY, 0);
    pid_t pid;
    int rc = posix_spawn(&pid, CQR_CLI_BIN, &fa, NULL, (char *const *)argv,
                         envp ? envp : environ);
    posix_spawn_file_actions_destroy(&fa);
    ck_assert_msg(rc == 0, "spawn %s: %s", CQR_CLI_BIN, strerror(rc));
    uint64_t deadline = tu_now_ms() + 30000;
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (tu_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        tu_sleep_ms(2);
    }
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    slurp(ofd, r->out, sizeof(r->out));
    slurp(efd, r->err, sizeof(r->err));
}

/* Runs the CLI against the suite's server with the given arguments. */
#define CLI(r, ...)                                                          \
    cli_env((r), 1, NULL, (const char *const[]){ __VA_ARGS__, NULL })

/* ---- A small JSON validator (RFC 8259) --------------------------------- */

static const char *js_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

static const char *js_value(const char *p, int depth);

static const char *js_string(const char *p)
{
    if (*p++ != '"')
        return NULL;
    while (*p != '"') {
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!isxdigit((unsigned char)p[i]))
                        return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
        p++;
    }
    return p + 1;
}

static const char *js_number(const char *p)
{
    if (*p == '-')
        p++;
    if (*p == '0')
        p++;
    else if (isdigit((unsigned char)*p))
        while (isdigit((unsigned char)*p))
            p++;
    else
        return NULL;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return NULL;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return NULL;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return p;
}

static const char *js_value(const char *p, int depth)
{
    if (depth > 64)
        return NULL;
    p = js_ws(p);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        int obj = *p == '{';
        p = js_ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (obj) {
                p = js_string(js_ws(p));
                if (!p)
                    return NULL;
                p = js_ws(p);
                if (*p++ != ':')
                    return NULL;
            }
            p = js_value(p, depth + 1);
            if (!p)
                return NULL;
            p = js_ws(p);
            if (*p == close)
                return p + 1;
            if (*p++ != ',')
                return NULL;
        }
    }
    if (*p == '"')
        return js_string(p);
    if (!strncmp(p, "true", 4))
        return p + 4;
    if (!strncmp(p, "false", 5))
        return p + 5;
    if (!strncmp(p, "null", 4))
        return p + 4;
    return js_number(p);
}

/* One JSON object, then only a newline. */
static int json_object(const char *s)
{
    const char *p = js_ws(s);
    if (*p != '{')
        return 0;
    p = js_value(p, 0);
    return p && *js_ws(p) == '\0';
}

/* ---- Tests --------------------------------------------------------------- */

START_TEST(test_cli_usage)
{
    run_t *r = malloc(sizeof(*r));
    CLI(r, "--help");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "usage: cqrps"));
    CLI(r, "create", "--help");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "--kind"));
    CLI(r, "cluster", "--help");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "--wait"));
    CLI(r, "help", "drop");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "cqrps drop NAME"));
    CLI(r, "frobnicate");
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "unknown command"));
    CLI(r, "create", "x", "--kind", "cqr"); /* no --dim */
    ck_assert_int_eq(r->status, 2);
    CLI(r, "create", "x", "--kind", "wat", "--dim", "4");
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "--kind"));
    CLI(r, "drop");
    ck_assert_int_eq(r->status, 2);
    free(r);
}
END_TEST

/* create (and its documented error line), list, describe. */
static void cli_tables(run_t *r)
{
    CLI(r, "create", "t1", "--kind", "cqr", "--dim", "16", "--chunks", "4",
        "--rows", "128", "--seed", "7", "--optimizer", "adagrad", "--lr",
        "0.05", "--cluster-every", "100000", "--max-phases", "2");
    ck_assert_msg(r->status == 0, "create: %s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "created table t1"));
    ck_assert_ptr_nonnull(strstr(r->out, "adagrad lr=0.05"));

    /* The documented error line and status. */
    CLI(r, "create", "t1", "--kind", "cqr", "--dim", "16");
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(!strncmp(r->err, "cqrps: create t1: ALREADY_EXISTS: ", 34),
                  "stderr: %s", r->err);
    ck_assert_ptr_nonnull(strstr(r->err, "already exists"));
    ck_assert_str_eq(r->out, "");

    /* --chunks/--rows are ignored by kinds that do not use them. */
    CLI(r, "create", "f1", "--kind", "full", "--dim", "8", "--chunks", "3",
        "--rows", "5", "--optimizer", "sgd");
    ck_assert_msg(r->status == 0, "create full: %s", r->err);

    CLI(r, "list");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "NAME"));
    ck_assert_ptr_nonnull(strstr(r->out, "t1 "));
    ck_assert_ptr_nonnull(strstr(r->out, "f1 "));

    CLI(r, "describe", "t1");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "kind:           cqr"));
    ck_assert_ptr_nonnull(strstr(r->out, "rows:           128"));
    ck_assert_ptr_nonnull(strstr(r->out, "schedule:       every 100000"));
    /* No tuning flag: the server's defaults, as the README says. */
    ck_assert_ptr_nonnull(strstr(r->out, "init_scale:     0.01\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "iters=25 tol=0.001 sample=200 "
                                         "reset_optimizer=yes"));

    CLI(r, "--json", "describe", "t1");
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(json_object(r->out), "not JSON: %s", r->out);
    ck_assert_ptr_nonnull(strstr(r->out, "\"rows\":128"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"lr\":0.05,"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"seed\":7"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"init_scale\":0.01,"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"reset_optimizer\":true"));

    /* The old behaviour is one flag away. */
    CLI(r, "create", "t0", "--kind", "cqr", "--dim", "16",
        "--no-reset-optimizer", "--init-scale", "0.25", "--cluster-tol",
        "0");
    ck_assert_msg(r->status == 0, "create t0: %s", r->err);
    CLI(r, "describe", "t0");
    ck_assert_ptr_nonnull(strstr(r->out, "init_scale:     0.25\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "tol=0 sample=200 "
                                         "reset_optimizer=no"));
    CLI(r, "drop", "t0");
    ck_assert_int_eq(r->status, 0);

    /* Admission and eviction (issue 19): the flags, describe, JSON. */
    CLI(r, "create", "ta", "--kind", "cqr", "--dim", "16", "--admit-after",
        "3", "--evict-after-phases", "2");
    ck_assert_msg(r->status == 0, "create ta: %s", r->err);
    CLI(r, "describe", "ta");
    ck_assert_ptr_nonnull(strstr(r->out, "admission:      after 3 pushes "
                                         "(sketch 1048576 bytes), 0 "
                                         "admitted\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "eviction:       after 2 phases "
                                         "unpushed, 0 evicted\n"));
    CLI(r, "--json", "describe", "ta");
    ck_assert_ptr_nonnull(strstr(r->out, "\"admit_after\":3,"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"evict_after_phases\":2,"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"ids_evicted\":0"));
    /* Options a kind does not take are refused by the server. */
    CLI(r, "create", "tb", "--kind", "cqr", "--dim", "16", "--max-ids",
        "10", "--ttl", "5");
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "INVALID_ARGUMENT"));
    CLI(r, "drop", "ta");
    ck_assert_int_eq(r->status, 0);
}

/* digest and cluster, on the data pushed through c. */
static void cli_digest_cluster(run_t *r, cqrps_client_t *c)
{
    char hex[17];
    ck_assert_int_eq(cqrps_digest(c, "t1", hex), 0);
    CLI(r, "digest", "t1");
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(strlen(r->out), 17);
    ck_assert_int_eq(strncmp(r->out, hex, 16), 0);
    CLI(r, "--json", "digest", "t1");
    ck_assert(json_object(r->out));
    ck_assert_ptr_nonnull(strstr(r->out, hex));

    CLI(r, "cluster", "t1", "--wait");
    ck_assert_msg(r->status == 0, "cluster: %s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "done"));
    ck_assert_ptr_nonnull(strstr(r->out, "2000 ids assigned"));
    CLI(r, "--json", "cluster", "t1", "--wait");
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(json_object(r->out), "not JSON: %s", r->out);
    ck_assert_ptr_nonnull(strstr(r->out, "\"state\":\"done\""));
    CLI(r, "cluster", "t1");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "started cluster phase"));
    ck_assert_int_eq(cqrps_cluster_wait(c, "t1", 0, 60000, NULL), 0);
    CLI(r, "cluster", "f1");
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "cqrps: cluster f1: UNSUPPORTED: "));
    CLI(r, "--json", "cluster", "f1");
    ck_assert_int_eq(r->status, 1);
    ck_assert(json_object(r->out));
    ck_assert_ptr_nonnull(strstr(r->out, "\"ok\":false"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"status\":\"UNSUPPORTED\""));
}

/* stats, checkpoints, the address from the environment, drop, and a
 * server nobody runs. */
static void cli_stats_drop(run_t *r)
{
    CLI(r, "stats");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "requests:"));
    CLI(r, "--json", "stats");
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(json_object(r->out), "not JSON: %s", r->out);
    ck_assert_ptr_nonnull(strstr(r->out, "\"name\":\"t1\""));
    CLI(r, "--json", "list");
    ck_assert(json_object(r->out));

    /* Checkpoints: not there before the persistence issue, or working. */
    CLI(r, "checkpoint");
    ck_assert(r->status == 0 || (r->status == 1 &&
                                 strstr(r->err, "UNSUPPORTED")));
    CLI(r, "--json", "checkpoints");
    ck_assert(json_object(r->out));

    /* The address from the environment. */
    char envaddr[96];
    snprintf(envaddr, sizeof(envaddr), "CQRPS_ADDR=%s", srv.addr);
    char *envp[] = { envaddr, NULL };
    const char *la[] = { "list", NULL };
    cli_env(r, 0, envp, la);
    ck_assert_msg(r->status == 0, "env list: %s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "t1 "));

    CLI(r, "drop", "t1");
    ck_assert_int_eq(r->status, 0);
    CLI(r, "drop", "t1");
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "cqrps: drop t1: NOT_FOUND: "));
    CLI(r, "--json", "drop", "f1");
    ck_assert_int_eq(r->status, 0);
    ck_assert(json_object(r->out));
    CLI(r, "list");
    ck_assert_ptr_nonnull(strstr(r->out, "no tables"));

    /* Nobody listens: a connection error, named. */
    const char *na[] = { "--addr", "127.0.0.1:1", "list", NULL };
    cli_env(r, 0, NULL, na);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "CONNECTION"));
    ck_assert_ptr_nonnull(strstr(r->err, "127.0.0.1:1"));
}

/* A full table with admission and eviction (issue 19): created through
 * the CLI, pushed through the library, counted in describe. */
static void cli_full_admit(run_t *r, cqrps_client_t *c)
{
    CLI(r, "create", "fa", "--kind", "full", "--dim", "4", "--admit-after",
        "2", "--max-ids", "3", "--ttl", "3600");
    ck_assert_msg(r->status == 0, "create fa: %s", r->err);
    const uint64_t ids[5] = {11, 12, 13, 14, 15};
    static float g[5 * 4];
    tu_fill(g, 5 * 4, &(uint64_t){3});
    ck_assert_int_eq(cqrps_push(c, "fa", ids, g, 5), 0); /* fallback rows */
    CLI(r, "describe", "fa");
    ck_assert_ptr_nonnull(strstr(r->out, "admission:      after 2 pushes "
                                         "(sketch 1048576 bytes), 0 "
                                         "admitted\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "known_ids:      0\n"));
    /* Admitted one by one (a push's own new IDs are never evicted by
     * it): the 4th and 5th each free the least recently pushed row. */
    for (int j = 0; j < 5; j++)
        ck_assert_int_eq(cqrps_push(c, "fa", ids + j, g + 4 * j, 1), 0);
    CLI(r, "describe", "fa");
    ck_assert_ptr_nonnull(strstr(r->out, "5 admitted\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "eviction:       max_ids 3, ttl "
                                         "3600 s, 2 evicted\n"));
    ck_assert_ptr_nonnull(strstr(r->out, "known_ids:      3\n"));
    CLI(r, "--json", "describe", "fa");
    ck_assert_ptr_nonnull(strstr(r->out, "\"max_ids\":3,"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"ids_evicted\":2"));
    CLI(r, "drop", "fa");
    ck_assert_int_eq(r->status, 0);
}

START_TEST(test_cli_commands)
{
    run_t *r = malloc(sizeof(*r));
    cli_tables(r);

    /* Data through the library, so the phase and digest have work. */
    cqrps_client_t *c = tu_connect(srv.addr);
    enum { N = 2000 };
    uint64_t ids[N];
    static float g[N * 16];
    uint64_t st = 6;
    for (int i = 0; i < N; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, N * 16, &st);
    ck_assert_int_eq(cqrps_push(c, "t1", ids, g, N), 0);
    cli_full_admit(r, c);

    cli_digest_cluster(r, c);
    cli_stats_drop(r);
    cqrps_close(c);
    free(r);
}
END_TEST

/* A cqr table whose phase runs for minutes unless cancelled: every one
 * of 10,000 k-means iterations (tolerance none) on 20,000 IDs, k = 1024. */
static void slow_table(cqrps_client_t *c, const char *name)
{
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, 8);
    cfg.chunks = 2;
    cfg.rows = 1024;
    cfg.cluster_iters = 10000;
    cfg.cluster_sample = 200;
    ck_assert_int_eq(cqrps_create_table(c, name, &cfg, NULL), 0);
    enum { N = 20000 };
    static uint64_t ids[N];
    static float g[N * 8];
    uint64_t st = 9;
    for (int i = 0; i < N; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, N * 8, &st);
    ck_assert_int_eq(cqrps_push(c, name, ids, g, N), 0);
}

/* cluster --cancel: stops a running phase (the table stays as it was),
 * says so in text and JSON, and NO_SUCH_PHASE when nothing runs; SIGTERM
 * cancels a running phase instead of waiting for it (the server exits 0
 * within the stop's bound, and logs the cancel). */
START_TEST(test_cli_cancel)
{
    run_t *r = malloc(sizeof(*r));
    cqrps_client_t *c = tu_connect(srv.addr);
    slow_table(c, "slow");
    char before[17], after[17];
    ck_assert_int_eq(cqrps_digest(c, "slow", before), 0);

    CLI(r, "cluster", "slow", "--cancel");
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "cqrps: cluster slow: NO_SUCH_PHASE: "),
                  "stderr: %s", r->err);
    CLI(r, "cluster", "slow", "--phase", "3");
    ck_assert_int_eq(r->status, 2); /* --phase goes with --cancel */

    CLI(r, "cluster", "slow");
    ck_assert_msg(r->status == 0, "cluster: %s", r->err);
    CLI(r, "cluster", "slow", "--cancel", "--wait");
    ck_assert_msg(r->status == 0, "cancel: %s %s", r->out, r->err);
    ck_assert_msg(strstr(r->out, "cancelled after"), "out: %s", r->out);
    ck_assert_int_eq(cqrps_digest(c, "slow", after), 0);
    ck_assert_str_eq(before, after);
    cqrps_phase_status_t ps;
    ck_assert_int_eq(cqrps_cluster_status(c, "slow", 0, &ps), 0);
    ck_assert_int_eq(ps.state, CQRPS_PHASE_FAILED);
    ck_assert_int_eq(ps.cancelled, 1);

    /* Through the library, and --json of a cancel that does not wait. */
    uint64_t id;
    ck_assert_int_eq(cqrps_cluster(c, "slow", &id), 0);
    CLI(r, "--json", "cluster", "slow", "--cancel");
    ck_assert_msg(r->status == 0, "json cancel: %s", r->err);
    ck_assert_msg(json_object(r->out), "not JSON: %s", r->out);
    ck_assert_ptr_nonnull(strstr(r->out, "\"cancel_requested\":true"));
    ck_assert_int_eq(cqrps_cluster_wait(c, "slow", id, 60000, &ps),
                     CQRPS_ECANCELED);
    ck_assert_int_eq(ps.cancelled, 1);

    cqrps_close(c);

    /* SIGTERM with a phase running, on a server of this test's own (the
     * suite's belongs to the parent process, which alone can reap it). */
    cqr_test_server_t own;
    tu_server_start(&own, NULL);
    c = tu_connect(own.addr);
    slow_table(c, "slow");
    ck_assert_int_eq(cqrps_cluster(c, "slow", &id), 0);
    do {
        ck_assert_int_eq(cqrps_cluster_status(c, "slow", id, &ps), 0);
        tu_sleep_ms(5);
    } while (ps.state == CQRPS_PHASE_QUEUED);
    cqrps_close(c);
    int code = cqr_test_server_stop(&own, TU_STOP_MS);
    if (code != 0)
        cqr_test_server_dump(&own, 8192);
    ck_assert_int_eq(code, 0);
    ck_assert(cqr_test_server_clean(&own));
    char log[65536];
    int fd = open(own.err_path, O_RDONLY);
    ck_assert(fd >= 0);
    slurp(fd, log, sizeof(log));
    ck_assert_msg(strstr(log, "reason=\"server shutting down\""),
                  "no cancel in the log");
    cqr_test_server_cleanup(&own);
    free(r);
}
END_TEST

/* cqrps export as the README shows it, on a server of this test's own
 * with a data dir: checkpoint, export (text and --json), the progress
 * lines of a file over 16 MiB on stderr, and a file whose lookups are the
 * server's. */
START_TEST(test_cli_export)
{
    run_t *r = malloc(sizeof(*r));
    char dir[] = "/tmp/cqr-cli-export-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char data[128], out[160], js[160];
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(out, sizeof out, "%s/items.cqrm", dir);
    snprintf(js, sizeof js, "%s/items.f16.cqrm", dir);
    const char *args[] = {"--data-dir", data, NULL};
    cqr_test_server_t own;
    tu_server_start(&own, args);
    cqrps_client_t *c = tu_connect(own.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAM, 16);
    ck_assert_int_eq(cqrps_create_table(c, "items", &cfg, NULL), 0);
    enum { B = 8192, ROUNDS = 30 }; /* 245,760 IDs: a 20 MB export */
    static uint64_t ids[B];
    static float g[B * 16];
    uint64_t st = 11;
    tu_fill(g, B * 16, &st);
    for (int k = 0; k < ROUNDS; k++) {
        for (int i = 0; i < B; i++)
            ids[i] = (uint64_t)k * B + (uint64_t)i + 1;
        ck_assert_int_eq(cqrps_push(c, "items", ids, g, B), 0);
    }
    cli_env(r, 0, NULL, (const char *const[]){"--addr", own.addr,
                                              "checkpoint", NULL});
    ck_assert_msg(r->status == 0, "checkpoint: %s", r->err);
    cli_env(r, 0, NULL, (const char *const[]){"--addr", own.addr, "export",
                                              "items", "--out", out, NULL});
    ck_assert_msg(r->status == 0, "export: %s", r->err);
    ck_assert_msg(strstr(r->out, "exported items generation 1 to "),
                  "stdout: %s", r->out);
    ck_assert_msg(strstr(r->err, "cqrps export: fetched") &&
                      strstr(r->err, "(100%)"), "stderr: %s", r->err);
    cqrps_model_t *m = NULL;
    ck_assert_int_eq(cqrps_model_open(out, &m), 0);
    static float want[B * 16], got[B * 16];
    ck_assert_int_eq(cqrps_lookup(c, "items", ids, B, want), 0);
    ck_assert_int_eq(cqrps_model_lookup(m, ids, B, got), 0);
    ck_assert(tu_same(got, want, B * 16, "export against the server"));
    cqrps_model_close(m);
    cli_env(r, 0, NULL, (const char *const[]){"--addr", own.addr, "--json",
                                              "export", "items", "--out", js,
                                              "--dtype", "f16", NULL});
    ck_assert_msg(r->status == 0, "json export: %s", r->err);
    ck_assert_msg(json_object(r->out), "not JSON: %s", r->out);
    ck_assert_ptr_nonnull(strstr(r->out, "\"dtype\":\"f16\""));
    ck_assert_ptr_nonnull(strstr(r->out, "\"generation\":1"));
    cqrps_close(c);
    tu_server_stop(&own);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(r);
}
END_TEST

START_TEST(test_json_validator_itself)
{
    ck_assert(json_object("{\"a\":[1,-2.5e3,true,null,\"x\\n\"]}\n"));
    ck_assert(!json_object("{\"a\":1,}"));
    ck_assert(!json_object("{\"a\":nan}"));
    ck_assert(!json_object("{\"a\":1} {}"));
    ck_assert(!json_object("[1]"));
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_cli");
    TCase *tc = tcase_create("cli");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_json_validator_itself);
    tcase_add_test(tc, test_cli_usage);
    tcase_add_test(tc, test_cli_commands);
    tcase_add_test(tc, test_cli_cancel);
    tcase_add_test(tc, test_cli_export);
    suite_add_tcase(s, tc);
    return s;
}
