/* The operations surface of a real cqrps-server on loopback:
 *   - it starts from deploy/cqrps.conf.example (listen and metrics
 *     overridden to port 0, a temporary data dir when the server has
 *     --data-dir) and answers requests;
 *   - /metrics is valid Prometheus text with the documented families and
 *     exact counts after known traffic, and `cqrps stats` (the Stats RPC)
 *     carries the same figures; /readyz and /healthz say 200;
 *   - sd_notify: READY=1 (with MAINPID) reaches a unix datagram socket
 *     named by NOTIFY_SOCKET, by path and as an abstract name, WATCHDOG=1
 *     pings follow when WATCHDOG_USEC is set, STOPPING=1 on SIGTERM;
 *   - a bad config file or an unusable metrics address stop the server
 *     with a clear message.
 * Servers are stopped by PID; every wait is bounded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "testutil.h"
#include "check_main.h"

#ifndef CQR_EXAMPLE_CONF
#error "CQR_EXAMPLE_CONF must be defined by the build"
#endif

#define HTTP_MS 5000

/* ---- helpers ------------------------------------------------------------ */

typedef struct http_reply {
    int status;   /* HTTP status code, -1 on failure */
    char *head;   /* headers (malloc'd, NUL-terminated) */
    char *body;   /* points into head's buffer */
} http_reply_t;

/* One HTTP/1.0 request to 127.0.0.1:port, read to EOF (bounded). */
static http_reply_t http(uint16_t port, const char *method, const char *path)
{
    http_reply_t r = {-1, NULL, NULL};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
                  "connect to metrics port %u: %s", port, strerror(errno));
    char req[256];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: localhost\r\n"
                     "\r\n", method, path);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    uint64_t deadline = tu_now_ms() + HTTP_MS;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int left = (int)(deadline - tu_now_ms());
        ck_assert_msg(left > 0, "HTTP %s %s: no complete reply in %d ms",
                      method, path, HTTP_MS);
        if (poll(&p, 1, left) <= 0)
            continue;
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t got = read(fd, buf + len, cap - len - 1);
        if (got < 0 && errno == EINTR)
            continue;
        ck_assert_int_ge(got, 0);
        if (got == 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    r.head = buf;
    if (sscanf(buf, "HTTP/1.%*d %d", &r.status) != 1)
        r.status = -1;
    char *sep = strstr(buf, "\r\n\r\n");
    r.body = sep ? sep + 4 : buf + len;
    return r;
}

/* The value of the exposition line that starts with `series` + ' ', or
 * -1 when there is none. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}

/* Checks the exposition format: every sample line is NAME[{labels}] VALUE,
 * its family was declared by a # TYPE line, no family is declared
 * twice. */
static void check_exposition(const char *text)
{
    char declared[256][96];
    size_t nd = 0;
    char *copy = strdup(text);
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], type[32];
            ck_assert_int_eq(sscanf(line + 7, "%95s %31s", name, type), 2);
            ck_assert_msg(strcmp(type, "counter") == 0 ||
                              strcmp(type, "gauge") == 0 ||
                              strcmp(type, "histogram") == 0,
                          "bad type in '%s'", line);
            for (size_t i = 0; i < nd; i++)
                ck_assert_msg(strcmp(declared[i], name) != 0,
                              "family %s declared twice", name);
            ck_assert_uint_lt(nd, 256);
            snprintf(declared[nd++], sizeof declared[0], "%s", name);
            continue;
        }
        ck_assert_msg(line[0] != '#', "stray comment '%s'", line);
        size_t nl = strspn(line, "abcdefghijklmnopqrstuvwxyz"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:");
        ck_assert_msg(nl > 0, "no metric name in '%s'", line);
        char name[96];
        snprintf(name, sizeof name, "%.*s", (int)nl, line);
        const char *rest = line + nl;
        if (*rest == '{') {
            rest = strchr(rest, '}');
            ck_assert_msg(rest != NULL, "unclosed labels in '%s'", line);
            rest++;
        }
        ck_assert_msg(*rest == ' ', "no value in '%s'", line);
        char *end;
        strtod(rest + 1, &end);
        ck_assert_msg(end != rest + 1 && *end == '\0', "bad value in '%s'",
                      line);
        /* A histogram's samples belong to the family without suffix. */
        int known = 0;
        for (size_t i = 0; i < nd && !known; i++) {
            size_t dl = strlen(declared[i]);
            if (strncmp(name, declared[i], dl) == 0 &&
                (name[dl] == '\0' || strcmp(name + dl, "_bucket") == 0 ||
                 strcmp(name + dl, "_sum") == 0 ||
                 strcmp(name + dl, "_count") == 0))
                known = 1;
        }
        ck_assert_msg(known, "sample '%s' before its # TYPE line", line);
    }
    free(copy);
}

static double stat_counter(const cqrps_stats_t *st, const char *name)
{
    for (size_t i = 0; i < st->ncounters; i++)
        if (strcmp(st->counters[i].name, name) == 0)
            return st->counters[i].value;
    return -1;
}

/* Starts a server from the example config; *mport gets the metrics
 * port from the second ready line. */
static char data_dir[64];

static void start_from_example(cqr_test_server_t *s, uint16_t *mport)
{
    const char *args[12];
    int n = 0;
    args[n++] = "--config";
    args[n++] = CQR_EXAMPLE_CONF;
    args[n++] = "--metrics-listen";
    args[n++] = "127.0.0.1:0";
    int persist = cqr_test_server_has_flag("--data-dir");
    ck_assert_int_ge(persist, 0);
    if (persist) {
        snprintf(data_dir, sizeof data_dir, "/tmp/cqr-deploy-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(data_dir));
        args[n++] = "--data-dir";
        args[n++] = data_dir;
    }
    args[n] = NULL;
    tu_server_start(s, args);
    char maddr[128];
    ck_assert_int_eq(cqr_test_server_read_line(s, "cqrps-server metrics on ",
                                               maddr, sizeof maddr, 5000), 0);
    const char *colon = strrchr(maddr, ':');
    ck_assert_ptr_nonnull(colon);
    ck_assert(strncmp(maddr, "127.0.0.1:", 10) == 0);
    long p = strtol(colon + 1, NULL, 10);
    ck_assert(p > 0 && p < 65536);
    *mport = (uint16_t)p;
}

static void teardown(void)
{
    if (data_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dir);
        ck_assert_int_eq(system(cmd), 0);
        data_dir[0] = '\0';
    }
}

/* ---- tests ---------------------------------------------------------------- */

#define DIM 8
#define NIDS 500

/* Known traffic: 1 create, 3 pushes, 5 lookups, 1 failed drop, a cqr
 * table with one cluster phase (one more create and push). */
static void send_known_traffic(cqrps_client_t *c)
{
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAGRAD, DIM);
    ck_assert_int_eq(cqrps_create_table(c, "users", &cfg, NULL), 0);
    uint64_t ids[NIDS];
    float g[NIDS * DIM], out[NIDS * DIM];
    uint64_t st = 5;
    for (int i = 0; i < NIDS; i++)
        ids[i] = (uint64_t)i * 7919u;
    for (int k = 0; k < 3; k++) {
        tu_fill(g, NIDS * DIM, &st);
        ck_assert_int_eq(cqrps_push(c, "users", ids, g, NIDS), 0);
    }
    for (int k = 0; k < 5; k++)
        ck_assert_int_eq(cqrps_lookup(c, "users", ids, NIDS, out), 0);
    ck_assert_int_eq(cqrps_drop_table(c, "nope"), CQRPS_ENOTFOUND);

    cqrps_table_config_t qc;
    tu_config(&qc, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, DIM);
    qc.rows = 16;
    qc.chunks = 2;
    ck_assert_int_eq(cqrps_create_table(c, "items", &qc, NULL), 0);
    tu_fill(g, NIDS * DIM, &st);
    ck_assert_int_eq(cqrps_push(c, "items", ids, g, NIDS), 0);
    uint64_t phase;
    ck_assert_int_eq(cqrps_cluster(c, "items", &phase), 0);
    ck_assert_int_eq(cqrps_cluster_wait(c, "items", phase, 60000, NULL), 0);
}

/* Every documented family is in the exposition m. */
static void check_families(const char *m)
{
    static const char *const families[] = {
        "cqrps_build_info", "cqrps_uptime_seconds",
        "cqrps_start_time_seconds", "cqrps_ready", "cqrps_restored",
        "cqrps_connections", "cqrps_conn_accepted_total",
        "cqrps_received_bytes_total", "cqrps_sent_bytes_total",
        "cqrps_errors_total", "cqrps_requests_total",
        "cqrps_request_duration_seconds", "cqrps_tables",
        "cqrps_table_known_ids", "cqrps_table_memory_bytes",
        "cqrps_table_lookup_ids_total", "cqrps_table_push_ids_total",
        "cqrps_table_cluster_phases_total",
        "cqrps_table_cluster_last_inertia",
        "cqrps_table_cluster_last_duration_seconds",
        "cqrps_cluster_phases_started_total",
        "cqrps_cluster_phases_done_total", "cqrps_cluster_phases_running",
        "cqrps_checkpoints_total", "cqrps_checkpoint_generation",
        "cqrps_checkpoint_last_duration_seconds",
        "cqrps_checkpoint_last_bytes", "process_resident_memory_bytes",
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char t[128];
        snprintf(t, sizeof t, "# TYPE %s ", families[i]);
        ck_assert_msg(strstr(m, t) != NULL, "no family %s", families[i]);
    }
}

/* The exposition's exact figures for send_known_traffic. */
static void check_traffic_metrics(const char *m)
{
    ck_assert_double_eq(metric(m, "cqrps_requests_total{op=\"push\","
                                  "status=\"OK\"}"), 4);
    ck_assert_double_eq(metric(m, "cqrps_requests_total{op=\"lookup\","
                                  "status=\"OK\"}"), 5);
    ck_assert_double_eq(metric(m, "cqrps_requests_total{op=\"drop_table\","
                                  "status=\"NOTFOUND\"}"), 1);
    ck_assert_double_eq(metric(m, "cqrps_requests_total{op=\"create_table\","
                                  "status=\"OK\"}"), 2);
    ck_assert_double_eq(metric(m, "cqrps_request_duration_seconds_count"
                                  "{op=\"lookup\"}"), 5);
    ck_assert_double_eq(metric(m, "cqrps_request_duration_seconds_bucket"
                                  "{op=\"lookup\",le=\"+Inf\"}"), 5);
    ck_assert_double_gt(metric(m, "cqrps_request_duration_seconds_sum"
                                  "{op=\"lookup\"}"), 0);
    /* Buckets never decrease. */
    double prev = 0;
    const char *p = m;
    while ((p = strstr(p, "cqrps_request_duration_seconds_bucket{op=\"push\","))
           != NULL) {
        const char *sp = strchr(p, ' ');
        double v = strtod(sp + 1, NULL);
        ck_assert_double_ge(v, prev);
        prev = v;
        p = sp;
    }
    ck_assert_double_eq(prev, 4);
    ck_assert_double_eq(metric(m, "cqrps_table_known_ids{table=\"users\","
                                  "kind=\"full\"}"), NIDS);
    ck_assert_double_gt(metric(m, "cqrps_table_memory_bytes{table=\"users\","
                                  "kind=\"full\",part=\"params\"}"), 0);
    ck_assert_double_gt(metric(m, "cqrps_table_memory_bytes{table=\"items\","
                                  "kind=\"cqr\",part=\"index\"}"), 0);
    ck_assert_double_eq(metric(m, "cqrps_table_lookup_ids_total"
                                  "{table=\"users\"}"), 5 * NIDS);
    ck_assert_double_eq(metric(m, "cqrps_table_cluster_phases_total"
                                  "{table=\"items\"}"), 1);
    ck_assert_double_gt(metric(m, "cqrps_table_cluster_last_inertia"
                                  "{table=\"items\"}"), 0);
    ck_assert_double_eq(metric(m, "cqrps_cluster_phases_done_total"), 1);
    ck_assert_double_eq(metric(m, "cqrps_tables"), 2);
    ck_assert_double_eq(metric(m, "cqrps_connections"), 1);
    ck_assert_double_gt(metric(m, "cqrps_received_bytes_total"), 3 * NIDS * DIM * 4);
    ck_assert_double_eq(metric(m, "cqrps_ready"), 1);
    ck_assert_ptr_nonnull(strstr(m, "cqrps_build_info{version=\"0.1.0\""));
}

/* `cqrps stats` (the Stats RPC) carries the same figures, in summable
 * forms. */
static void check_traffic_stats(cqrps_client_t *c)
{
    cqrps_stats_t sts;
    ck_assert_int_eq(cqrps_stats(c, &sts), 0);
    ck_assert_double_eq(stat_counter(&sts, "req.lookup.OK"), 5);
    ck_assert_double_eq(stat_counter(&sts, "req.drop_table.NOTFOUND"), 1);
    ck_assert_double_eq(stat_counter(&sts, "req.push.OK"), 4);
    ck_assert_double_eq(stat_counter(&sts, "latency.lookup.count"), 5);
    ck_assert_double_gt(stat_counter(&sts, "latency.lookup.sum_seconds"), 0);
    ck_assert_double_eq(stat_counter(&sts, "latency.lookup.le.30"), 5);
    ck_assert_double_ge(stat_counter(&sts, "checkpoints_ok"), 0);
    ck_assert_double_eq(stat_counter(&sts, "ready"), 1);
    ck_assert_double_eq(stat_counter(&sts, "phases_done"), 1);
    cqrps_stats_free(&sts);
}

/* With a data dir: a checkpoint's figures appear in /metrics, and a
 * restart (its exit checkpoint) restores a later generation. Restarts the
 * server in *s, with a new client in *c and metrics port in *mport. */
static void checkpoint_and_restart(cqr_test_server_t *s, cqrps_client_t **c,
                                   uint16_t *mport)
{
    uint64_t gen = 0;
    ck_assert_msg(cqrps_checkpoint(*c, &gen) == 0, "checkpoint: %s",
                  cqrps_last_error(*c));
    ck_assert_uint_gt(gen, 0);
    http_reply_t r = http(*mport, "GET", "/metrics");
    const char *m = r.body;
    ck_assert_double_eq(metric(m, "cqrps_checkpoints_enabled"), 1);
    ck_assert_double_ge(metric(m, "cqrps_checkpoints_total"
                                  "{result=\"ok\"}"), 1);
    ck_assert_double_eq(metric(m, "cqrps_checkpoint_generation"),
                        (double)gen);
    ck_assert_double_gt(metric(m, "cqrps_checkpoint_last_bytes"), 0);
    ck_assert_double_gt(metric(m, "cqrps_checkpoint_last_success_"
                                  "timestamp_seconds"), 0);
    cqrps_close(*c);
    *c = NULL;
    tu_server_stop(s); /* SIGTERM: the exit checkpoint */
    const char *args[] = {"--config", CQR_EXAMPLE_CONF,
                          "--metrics-listen", "127.0.0.1:0",
                          "--data-dir", data_dir, NULL};
    tu_server_start(s, args);
    char maddr[128];
    ck_assert_int_eq(cqr_test_server_read_line(
                         s, "cqrps-server metrics on ", maddr,
                         sizeof maddr, 5000), 0);
    *mport = (uint16_t)atoi(strrchr(maddr, ':') + 1);
    free(r.head);
    r = http(*mport, "GET", "/readyz");
    ck_assert_int_eq(r.status, 200);
    free(r.head);
    r = http(*mport, "GET", "/metrics");
    m = r.body;
    ck_assert_double_eq(metric(m, "cqrps_restored"), 1);
    /* The exit checkpoint came after gen; the restore took it. */
    ck_assert_double_gt(metric(m, "cqrps_checkpoint_generation"),
                        (double)gen);
    ck_assert_double_eq(metric(m, "cqrps_table_known_ids{table=\"users\","
                                  "kind=\"full\"}"), NIDS);
    *c = tu_connect(s->addr);
    free(r.head);
}

/* Other paths and methods: 404, 405, HEAD. */
static void check_other_paths(uint16_t mport)
{
    http_reply_t r = http(mport, "GET", "/nope");
    ck_assert_int_eq(r.status, 404);
    free(r.head);
    r = http(mport, "POST", "/metrics");
    ck_assert_int_eq(r.status, 405);
    free(r.head);
    r = http(mport, "HEAD", "/readyz");
    ck_assert_int_eq(r.status, 200);
    free(r.head);
}

START_TEST(test_example_config_serves_and_exports_metrics)
{
    cqr_test_server_t s;
    uint16_t mport;
    start_from_example(&s, &mport);

    /* Ready as soon as the ready lines are out. */
    http_reply_t r = http(mport, "GET", "/readyz");
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "ready\n");
    free(r.head);
    r = http(mport, "GET", "/healthz");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strncmp(r.body, "ok", 2) == 0);
    free(r.head);

    cqrps_client_t *c = tu_connect(s.addr);
    send_known_traffic(c);
    r = http(mport, "GET", "/metrics");
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.head, "Content-Type: text/plain; "
                                         "version=0.0.4"));
    check_exposition(r.body);
    check_families(r.body);
    check_traffic_metrics(r.body);
    check_traffic_stats(c);
    free(r.head);
    if (data_dir[0])
        checkpoint_and_restart(&s, &c, &mport);
    check_other_paths(mport);

    cqrps_close(c);
    tu_server_stop(&s);
}
END_TEST

/* A scraper on its own thread (no check asserts off the main thread):
 * GETs /metrics until told to stop; counts good and bad replies. */
typedef struct scraper {
    uint16_t port;
    volatile int stop;   /* set by the main thread, read after join too */
    int ok, bad;         /* written by the scraper, read after join */
} scraper_t;

static void *scrape_loop(void *arg)
{
    scraper_t *sc = arg;
    for (int i = 0; i < 2000 && !__atomic_load_n(&sc->stop, __ATOMIC_ACQUIRE);
         i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(sc->port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            sc->bad++;
            if (fd >= 0)
                close(fd);
            continue;
        }
        static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
        char buf[4096];
        int first = 1, good = 0;
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
            for (;;) {
                struct pollfd p = {fd, POLLIN, 0};
                if (poll(&p, 1, HTTP_MS) <= 0)
                    break;
                ssize_t n = read(fd, buf, sizeof buf - 1);
                if (n <= 0) {
                    good = !first;
                    break;
                }
                buf[n] = '\0';
                if (first && strncmp(buf, "HTTP/1.0 200", 12) != 0 &&
                    strncmp(buf, "HTTP/1.1 200", 12) != 0)
                    break;
                first = 0;
            }
        }
        close(fd);
        if (good)
            sc->ok++;
        else
            sc->bad++;
    }
    return NULL;
}

/* Scrapes race with table creation, pushes, phases and drops: every
 * scrape succeeds and the server (under TSan in CI) reports no race. */
START_TEST(test_scrape_under_traffic)
{
    const char *args[] = {"--metrics-listen", "127.0.0.1:0", NULL};
    cqr_test_server_t s;
    tu_server_start(&s, args);
    char maddr[128];
    ck_assert_int_eq(cqr_test_server_read_line(&s, "cqrps-server metrics on ",
                                               maddr, sizeof maddr, 5000), 0);
    scraper_t sc = {(uint16_t)atoi(strrchr(maddr, ':') + 1), 0, 0, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, scrape_loop, &sc), 0);

    cqrps_client_t *c = tu_connect(s.addr);
    uint64_t ids[NIDS];
    float g[NIDS * DIM];
    uint64_t st = 11;
    for (int i = 0; i < NIDS; i++)
        ids[i] = tu_rand(&st);
    for (int round = 0; round < 12; round++) {
        char name[32];
        snprintf(name, sizeof name, "t%d", round);
        cqrps_table_config_t cfg;
        tu_config(&cfg, round % 2 ? CQRPS_KIND_CQR : CQRPS_KIND_FULL,
                  CQRPS_OPT_ADAM, DIM);
        cfg.rows = 16;
        cfg.chunks = 2;
        ck_assert_int_eq(cqrps_create_table(c, name, &cfg, NULL), 0);
        tu_fill(g, NIDS * DIM, &st);
        ck_assert_int_eq(cqrps_push(c, name, ids, g, NIDS), 0);
        if (round % 2) {
            uint64_t phase;
            ck_assert_int_eq(cqrps_cluster(c, name, &phase), 0);
        }
        if (round >= 2) {
            /* Drop an older table, maybe while its phase runs. */
            snprintf(name, sizeof name, "t%d", round - 2);
            ck_assert_int_eq(cqrps_drop_table(c, name), 0);
        }
        tu_sleep_ms(20);
    }
    __atomic_store_n(&sc.stop, 1, __ATOMIC_RELEASE);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(sc.bad == 0 && sc.ok > 0, "scrapes: %d ok, %d failed",
                  sc.ok, sc.bad);
    cqrps_close(c);
    tu_server_stop(&s);
}
END_TEST

/* The example file stays in sync with the option table: --print-config
 * of the example (plus overrides) succeeds, i.e. every line parses. */
START_TEST(test_example_config_parses)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --config %s --print-config",
             CQR_SERVER_BIN_PATH, CQR_EXAMPLE_CONF);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char line[512];
    int lines = 0, metrics_on = 0;
    while (fgets(line, sizeof line, p)) {
        lines++;
        if (strcmp(line, "metrics-listen = 127.0.0.1:7071\n") == 0)
            metrics_on = 1;
    }
    ck_assert_int_eq(pclose(p), 0);
    ck_assert_int_gt(lines, 10);
    ck_assert(metrics_on);
}
END_TEST

/* A unix datagram socket for NOTIFY_SOCKET: by path, or abstract. */
static int notify_socket(int abstract, char *env, size_t envlen)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    socklen_t len;
    if (abstract) {
        int n = snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1,
                         "cqr-notify-%d", (int)getpid());
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                          (size_t)n);
        snprintf(env, envlen, "@%s", sa.sun_path + 1);
    } else {
        snprintf(sa.sun_path, sizeof sa.sun_path, "/tmp/cqr-notify-%d.sock",
                 (int)getpid());
        unlink(sa.sun_path);
        len = sizeof sa;
        snprintf(env, envlen, "%s", sa.sun_path);
    }
    ck_assert_msg(bind(fd, (struct sockaddr *)&sa, len) == 0, "bind: %s",
                  strerror(errno));
    return fd;
}

/* Receives datagrams until one contains `want` (returns it in buf) or
 * timeout_ms pass (fails the test). */
static void expect_datagram(int fd, const char *want, char *buf, size_t len,
                            int timeout_ms)
{
    uint64_t deadline = tu_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int left = (int)(deadline - tu_now_ms());
        ck_assert_msg(left > 0, "no '%s' from the server within %d ms", want,
                      timeout_ms);
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t n = recv(fd, buf, len - 1, 0);
        if (n < 0)
            continue;
        buf[n] = '\0';
        if (strstr(buf, want))
            return;
    }
}

static void notify_round(int abstract)
{
    char env[128], buf[512];
    int fd = notify_socket(abstract, env, sizeof env);
    setenv("NOTIFY_SOCKET", env, 1);
    setenv("WATCHDOG_USEC", "200000", 1); /* pings every 100 ms */
    cqr_test_server_t s;
    tu_server_start(&s, NULL);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    expect_datagram(fd, "READY=1", buf, sizeof buf, 5000);
    char pid[32];
    snprintf(pid, sizeof pid, "MAINPID=%d", (int)s.pid);
    ck_assert_msg(strstr(buf, pid) != NULL, "READY without %s: %s", pid, buf);
    ck_assert_ptr_nonnull(strstr(buf, "STATUS=listening on 127.0.0.1:"));
    expect_datagram(fd, "WATCHDOG=1", buf, sizeof buf, 5000);
    ck_assert_int_eq(kill(s.pid, SIGTERM), 0);
    expect_datagram(fd, "STOPPING=1", buf, sizeof buf, 5000);
    /* A second SIGTERM would kill it the default way: wait instead. */
    int code = cqr_test_server_wait(&s, TU_STOP_MS);
    int clean = cqr_test_server_clean(&s);
    if (code != 0 || !clean)
        cqr_test_server_dump(&s, 8192);
    cqr_test_server_stop(&s, TU_STOP_MS); /* closes its stdout */
    cqr_test_server_cleanup(&s);
    ck_assert_int_eq(code, 0);
    ck_assert(clean);
    close(fd);
    if (!abstract) {
        char path[108];
        snprintf(path, sizeof path, "/tmp/cqr-notify-%d.sock", (int)getpid());
        unlink(path);
    }
}

START_TEST(test_sd_notify_path)
{
    notify_round(0);
}
END_TEST

START_TEST(test_sd_notify_abstract)
{
    notify_round(1);
}
END_TEST

/* The log of a server that must fail to start, after the harness gave
 * up on it. */
static char *failed_start_log(const char *const *args)
{
    cqr_test_server_t s;
    ck_assert_int_eq(cqr_test_server_start(&s, args, 5000), -1);
    FILE *f = fopen(s.err_path, "r");
    ck_assert_ptr_nonnull(f);
    char *log = calloc(1, 65536);
    size_t n = fread(log, 1, 65535, f);
    log[n] = '\0';
    fclose(f);
    cqr_test_server_cleanup(&s);
    return log;
}

START_TEST(test_bad_config_and_metrics_address)
{
    char conf[] = "/tmp/cqr-bad-XXXXXX";
    int fd = mkstemp(conf);
    ck_assert_int_ge(fd, 0);
    const char *text = "threads = 2\nmax-batch = lots\n";
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    const char *args[] = {"--config", conf, NULL};
    char *log = failed_start_log(args);
    char want[128];
    snprintf(want, sizeof want, "%s:2: --max-batch: 'lots' is not a", conf);
    ck_assert_msg(strstr(log, want) != NULL, "log lacks '%s':\n%s", want,
                  log);
    free(log);
    unlink(conf);

    /* A metrics port already taken: the server refuses to start rather
     * than run unmonitored. */
    int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(busy, 1), 0);
    socklen_t sl = sizeof sa;
    getsockname(busy, (struct sockaddr *)&sa, &sl);
    char maddr[64];
    snprintf(maddr, sizeof maddr, "127.0.0.1:%u", ntohs(sa.sin_port));
    const char *args2[] = {"--metrics-listen", maddr, NULL};
    log = failed_start_log(args2);
    ck_assert_msg(strstr(log, "cannot listen metrics-listen=") != NULL,
                  "log lacks the metrics bind error:\n%s", log);
    free(log);
    close(busy);
}
END_TEST

/* Issue 14, item 8: the metrics listener of a running server does not
 * share its port (no SO_REUSEPORT), so a second server given the same
 * --metrics-listen refuses to start instead of splitting the scrapes. */
START_TEST(test_second_server_same_metrics_port)
{
    const char *args[] = {"--metrics-listen", "127.0.0.1:0", NULL};
    cqr_test_server_t s;
    tu_server_start(&s, args);
    char maddr[128];
    ck_assert_int_eq(cqr_test_server_read_line(&s, "cqrps-server metrics on ",
                                               maddr, sizeof maddr, 5000), 0);
    maddr[strcspn(maddr, "\r\n")] = '\0';
    const char *args2[] = {"--metrics-listen", maddr, NULL};
    char *log = failed_start_log(args2);
    ck_assert_msg(strstr(log, "cannot listen metrics-listen=") != NULL &&
                  strstr(log, "in use") != NULL,
                  "log lacks the metrics bind error:\n%s", log);
    free(log);
    /* The first server still answers its scrapes. */
    http_reply_t r = http((uint16_t)atoi(strrchr(maddr, ':') + 1), "GET",
                          "/metrics");
    ck_assert_int_eq(r.status, 200);
    free(r.head);
    tu_server_stop(&s);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("deploy_server");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_example_config_serves_and_exports_metrics);
    tcase_add_test(tc, test_example_config_parses);
    tcase_add_test(tc, test_scrape_under_traffic);
    tcase_add_test(tc, test_sd_notify_path);
    tcase_add_test(tc, test_sd_notify_abstract);
    tcase_add_test(tc, test_bad_config_and_metrics_address);
    tcase_add_test(tc, test_second_server_same_metrics_port);
    suite_add_tcase(s, tc);
    return s;
}
