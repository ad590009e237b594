/* main.c -- cqrps-server: flags, the listening socket, the acceptor, the
 * signals and the orderly shutdown.
 *
 * The main thread owns the listening socket and its own libuv loop: it
 * polls the socket, accepts connections and hands each one to an I/O
 * thread (net/iothread.h). SIGINT/SIGTERM stop the acceptor; then the
 * I/O threads drain (bounded by SHUTDOWN_GRACE_MS), running cluster
 * phases finish, the shutdown hook runs (the exit checkpoint, ckpt.h),
 * the tables are freed and every loop is checked closed. A second signal
 * during the drain kills the process the default way.
 *
 * Operations: with --metrics-listen the metrics/health endpoint
 * (metrics.h) starts before anything else and stops last; the main loop's
 * heartbeat timer feeds /healthz and systemd's watchdog; under systemd
 * (notify.h) READY=1 follows the ready line and STOPPING=1 the signal.
 *
 * Exit status: 0 after a clean stop (also for --help/--version), 2 for
 * bad flags, 1 when the server cannot start or its exit checkpoint
 * failed (acknowledged work is not on disk; ckpt.h).
 */
/* accept4 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "engine/err.h"
#include "engine/kmeans.h"
#include "net/iothread.h"
#include "net/listen.h"
#include "ops/auth.h"
#include "ops/config.h"
#include "ops/log.h"
#include "ops/metrics.h"
#include "ops/notify.h"
#include "rpc/server.h"
#include "store/ckpt.h"
#include "tables/compact.h"
#include "tables/serve.h"
#include "tables/phase.h"

/* Time the I/O threads get to answer received requests and flush. */
#define SHUTDOWN_GRACE_MS 5000
/* Connections accepted per poll callback before the loop turns. */
#define ACCEPTS_PER_EVENT 64
/* Pause of the acceptor after running out of file descriptors. */
#define ACCEPT_BACKOFF_MS 100

typedef struct server {
    cqr_config_t cfg;         /* effective config */
    cqr_server_ctx_t ctx;     /* registry, phases, counters, hooks */
    cqr_io_t *io;             /* the I/O threads */
    uv_loop_t loop;           /* main thread's loop */
    uv_poll_t accept_poll;    /* readability of the listening socket */
    uv_timer_t backoff;       /* re-arms accept_poll after EMFILE */
    uv_signal_t sigint, sigterm;
    uv_signal_t sighup;       /* --serve: reload the exports */
    cqr_serve_t *serve;       /* --serve / --serve-dir, or NULL */
    uv_timer_t heartbeat;     /* liveness (/healthz), systemd watchdog */
    int watchdog;             /* systemd asked for WATCHDOG=1 pings */
    cqr_metrics_t *metrics;   /* --metrics-listen endpoint, or NULL */
    char maddr[300];          /* its bound address */
    int listen_fd;            /* owned; -1 once closed */
    int stopping;             /* a signal arrived */
    char addr[300];           /* bound address, "127.0.0.1:7070" */
    cqr_auth_t *auth;         /* token secrets (auth.h), or NULL */
    cqr_ckpt_t *ckpt;         /* persistence (--data-dir), or NULL */
    uv_timer_t ckpt_timer;    /* --checkpoint-interval */
    int ckpt_timer_on;        /* ckpt_timer was initialised */
} server_t;

/* Interval of the heartbeat timer; systemd's watchdog gets pinged at
 * least twice per WatchdogSec. */
#define HEARTBEAT_MS 1000

static void on_heartbeat(uv_timer_t *h)
{
    server_t *s = h->data;
    atomic_store(&s->ctx.heartbeat_ms, cqr_health_now_ms());
    if (s->watchdog)
        cqr_notify("WATCHDOG=1");
}

static void on_accept(uv_poll_t *h, int status, int events);

/* The work goes to the checkpoint thread; the loop only asks. */
static void on_ckpt_timer(uv_timer_t *h)
{
    server_t *s = h->data;
    cqr_ckpt_request(s->ckpt, "interval");
}

static void on_backoff(uv_timer_t *h)
{
    server_t *s = h->data;
    if (!s->stopping)
        uv_poll_start(&s->accept_poll, UV_READABLE, on_accept);
}

static void on_accept(uv_poll_t *h, int status, int events)
{
    server_t *s = h->data;
    (void)events;
    if (status < 0) {
        cqr_log(CQR_LOG_ERROR, "server", "listen poll failed err=%s",
                uv_err_name(status));
        return;
    }
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            cqr_ctr_add(&s->ctx, CQR_CTR_accept_errors, 1);
            cqr_log(CQR_LOG_WARN, "server", "accept failed err=%s",
                    strerror(errno));
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* The pending connection stays in the backlog; retry
                 * later instead of spinning on a readable socket. */
                uv_poll_stop(&s->accept_poll);
                uv_timer_start(&s->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
            }
            return;
        }
        char peer[64];
        cqr_format_addr((struct sockaddr *)&ss, peer, sizeof peer);
        int reject = cqr_ctr_get(&s->ctx, CQR_CTR_conn_open) >=
                     s->cfg.max_connections;
        if (reject)
            cqr_ctr_add(&s->ctx, CQR_CTR_conn_rejected_limit, 1);
        cqr_io_hand_off(s->io, fd, peer, reject);
    }
}

static void on_listen_closed(uv_handle_t *h)
{
    server_t *s = h->data;
    /* The poll handle is gone: the fd can be closed now. */
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
    }
}

static void on_sighup(uv_signal_t *h, int signum)
{
    server_t *s = h->data;
    (void)signum;
    cqr_serve_reload(s->serve);
}

static void on_signal(uv_signal_t *h, int signum)
{
    server_t *s = h->data;
    if (s->stopping)
        return;
    s->stopping = 1;
    cqr_log(CQR_LOG_INFO, "server", "stopping signal=%s",
            signum == SIGTERM ? "SIGTERM" : "SIGINT");
    /* /readyz turns 503 and systemd learns we are on our way out (the
     * drain and the shutdown checkpoint may take a while). */
    atomic_store(&s->ctx.accepting, 0);
    cqr_notify("STOPPING=1\nSTATUS=draining connections, then the "
               "shutdown checkpoint");
    /* A running compaction stops at its next stage (the table stays as
     * it was); its reply then goes out while the connections drain. */
    cqr_compacts_stop(s->ctx.compacts);
    uv_timer_stop(&s->heartbeat);
    uv_close((uv_handle_t *)&s->heartbeat, NULL);
    if (s->ckpt_timer_on) {
        uv_timer_stop(&s->ckpt_timer);
        uv_close((uv_handle_t *)&s->ckpt_timer, NULL);
    }
    /* Stop accepting at once; the I/O threads drain after uv_run. */
    uv_poll_stop(&s->accept_poll);
    uv_close((uv_handle_t *)&s->accept_poll, on_listen_closed);
    uv_timer_stop(&s->backoff);
    uv_close((uv_handle_t *)&s->backoff, NULL);
    /* Closing the signal handles restores the default action: a second
     * Ctrl-C during a long drain kills the process. */
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
}

/* Creates, binds and listens; fills s->addr with the bound address (the
 * real port when 0 was asked). Logs and returns -1 on failure. */
static int open_listener(server_t *s)
{
    char why[256];
    int fd = -1;
    int rc = cqr_listen_open(s->cfg.listen_host, s->cfg.listen_port, 0, &fd,
                             why, sizeof why);
    if (rc == CQR_EINVAL) {
        cqr_log(CQR_LOG_ERROR, "server", "cannot resolve listen=%s err=\"%s\"",
                s->cfg.listen, why);
        return -1;
    }
    if (rc != 0) {
        cqr_log(CQR_LOG_ERROR, "server", "cannot listen listen=%s err=\"%s\"",
                s->cfg.listen, why);
        return -1;
    }
    if (cqr_listen_addr(fd, s->addr, sizeof s->addr) != 0) {
        cqr_log(CQR_LOG_ERROR, "server", "getsockname failed err=\"%s\"",
                strerror(errno));
        close(fd);
        return -1;
    }
    s->listen_fd = fd;
    return 0;
}

/* The first log lines: version, BLAS core, effective config. */
static void log_start(server_t *s)
{
    const char *core = cqr_blas_init();
    s->ctx.blas_core = core;
    cqr_log(CQR_LOG_INFO, "server", "starting version=%s protocol=%u "
            "pid=%ld blas_core=%s", CQR_SERVER_VERSION, CQR_PROTOCOL_VERSION,
            (long)getpid(), core);
    char line[1024];
    cqr_config_format(&s->cfg, line, sizeof line);
    cqr_log(CQR_LOG_INFO, "config", "%s", line);
    if (s->cfg.config_path[0] != '\0')
        cqr_log(CQR_LOG_INFO, "config", "read file=%s", s->cfg.config_path);
}

/* Tokens, the metrics endpoint, the restore, the listener and the I/O
 * threads, in that order. 0, or the exit status after logging why: 2 for
 * a token file that cannot be used (a configuration error, like a bad
 * flag: restarting does not help, and systemd's RestartPreventExitStatus
 * keys on it), 1 for the rest. */
static int open_all(server_t *s)
{
    /* Tokens are read once, before any connection can arrive. */
    char aerr[600];
    int rc = cqr_auth_setup(&s->ctx, &s->cfg, &s->auth, aerr, sizeof aerr);
    if (rc != 0) {
        cqr_log(CQR_LOG_ERROR, "auth", "cannot load tokens: %s", aerr);
        return rc == CQR_ENOMEM ? 1 : 2;
    }
    cqr_auth_warn_exposure(&s->cfg);

    /* The metrics endpoint comes first, so /healthz answers (and /readyz
     * says 503) during a long restore. */
    if (s->cfg.metrics.text[0] != '\0' &&
        cqr_metrics_start(&s->ctx, &s->cfg.metrics, &s->metrics, s->maddr,
                          sizeof s->maddr) != 0)
        return 1;

    /* The restore finishes before the listener opens: the ready line and
     * /readyz 200 mean the tables are back. */
    if (s->cfg.data_dir[0] != '\0' &&
        cqr_ckpt_open(&s->ctx, &s->cfg, &s->ckpt) != 0)
        return 1;
    /* Serving mode: the exports are tables before the ready line. */
    if ((s->cfg.serve[0] != '\0' || s->cfg.serve_dir[0] != '\0') &&
        cqr_serve_open(&s->ctx, &s->cfg, &s->serve) != 0) {
        cqr_log(CQR_LOG_ERROR, "serve", "cannot load the exports");
        return 1;
    }

    if (open_listener(s) != 0)
        return 1;
    if (cqr_io_start(&s->ctx, s->cfg.threads, &s->io) != 0) {
        cqr_log(CQR_LOG_ERROR, "server", "cannot start I/O threads");
        close(s->listen_fd);
        return 1;
    }
    return 0;
}

/* The main loop's handles: the acceptor, the signals, the heartbeat and
 * the checkpoint timer. */
static void start_loop(server_t *s)
{
    uv_loop_init(&s->loop);
    uv_poll_init_socket(&s->loop, &s->accept_poll, s->listen_fd);
    s->accept_poll.data = s;
    uv_timer_init(&s->loop, &s->backoff);
    s->backoff.data = s;
    uv_signal_init(&s->loop, &s->sigint);
    s->sigint.data = s;
    uv_signal_init(&s->loop, &s->sigterm);
    s->sigterm.data = s;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_init(&s->loop, &s->sighup);
    s->sighup.data = s;
    uv_signal_start(&s->sighup, on_sighup, SIGHUP);
    uv_poll_start(&s->accept_poll, UV_READABLE, on_accept);
    uint64_t wd_usec = cqr_notify_watchdog_usec();
    s->watchdog = wd_usec > 0;
    uint64_t beat = HEARTBEAT_MS;
    if (s->watchdog && wd_usec / 2000 < beat)
        beat = wd_usec / 2000 > 0 ? wd_usec / 2000 : 1;
    uv_timer_init(&s->loop, &s->heartbeat);
    s->heartbeat.data = s;
    uv_timer_start(&s->heartbeat, on_heartbeat, beat, beat);
    if (s->ckpt != NULL && s->cfg.checkpoint_interval > 0) {
        uint64_t ms = (uint64_t)s->cfg.checkpoint_interval * 1000;
        uv_timer_init(&s->loop, &s->ckpt_timer);
        s->ckpt_timer.data = s;
        uv_timer_start(&s->ckpt_timer, on_ckpt_timer, ms, ms);
        s->ckpt_timer_on = 1;
    }
}

/* Ready: the flags /readyz reads, the ready line, systemd's READY=1. */
static void announce(server_t *s)
{
    cqr_log(CQR_LOG_INFO, "server", "listening addr=%s threads=%" PRIu32,
            s->addr, s->cfg.threads);
    /* Readiness: a restore that runs before this point has finished;
     * one that runs in the background set restore_async and sets
     * `restored` itself. */
    if (!atomic_load(&s->ctx.restore_async))
        atomic_store(&s->ctx.restored, 1);
    atomic_store(&s->ctx.heartbeat_ms, cqr_health_now_ms());
    atomic_store(&s->ctx.accepting, 1);
    /* The ready line: the socket is listening, connections queue in the
     * backlog even before the loop turns. The metrics line comes second,
     * so tools that wait for the first keep working. */
    printf("cqrps-server listening on %s\n", s->addr);
    if (s->metrics != NULL)
        printf("cqrps-server metrics on %s\n", s->maddr);
    fflush(stdout);
    char state[400];
    snprintf(state, sizeof state, "READY=1\nSTATUS=listening on %s\n"
             "MAINPID=%ld", s->addr, (long)getpid());
    if (cqr_notify(state) < 0)
        cqr_log(CQR_LOG_WARN, "server", "cannot notify systemd socket=%s "
                "err=\"%s\"", getenv("NOTIFY_SOCKET"), strerror(errno));
}

/* After the main loop: drain the I/O threads, finish the phases, run the
 * shutdown hook (the exit checkpoint), check the loop closed. */
static int shut_down(server_t *s)
{
    cqr_io_stop(s->io, SHUTDOWN_GRACE_MS);
    s->io = NULL;
    cqr_serve_close(s->serve); /* no reload after the last request */
    s->serve = NULL;
    cqr_log(CQR_LOG_INFO, "server", "connections closed");
    cqr_phases_shutdown(s->ctx.phases);
    /* The exit checkpoint holds what a running compaction makes. */
    cqr_compacts_shutdown(s->ctx.compacts);
    if (s->ctx.ckpt.on_shutdown != NULL)
        s->ctx.ckpt.on_shutdown(s->ctx.ckpt.ud, &s->ctx);
    int rc = uv_loop_close(&s->loop);
    if (rc != 0) {
        cqr_log(CQR_LOG_ERROR, "server", "main loop did not close err=%s",
                uv_err_name(rc));
        return 1;
    }
    return 0;
}

static int run(server_t *s)
{
    log_start(s);
    int rc = open_all(s);
    if (rc != 0)
        return rc;
    start_loop(s);
    announce(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return shut_down(s);
}

int main(int argc, char **argv)
{
    static server_t s; /* large (config strings); not on the stack */
    s.listen_fd = -1;
    cqr_config_defaults(&s.cfg);
    char err[512];
    if (cqr_config_parse_args(&s.cfg, argc, argv, err, sizeof err) != 0) {
        fprintf(stderr, "cqrps-server: %s\nTry 'cqrps-server --help'.\n",
                err);
        return 2;
    }
    if (s.cfg.show_help) {
        cqr_config_usage(stdout, "cqrps-server");
        return 0;
    }
    if (s.cfg.show_version) {
        printf("cqrps-server %s (protocol %u)\n", CQR_SERVER_VERSION,
               CQR_PROTOCOL_VERSION);
        return 0;
    }
    if (s.cfg.print_config) {
        cqr_config_write(&s.cfg, stdout);
        return 0;
    }
    if ((s.cfg.serve[0] != '\0' || s.cfg.serve_dir[0] != '\0') &&
        (s.cfg.data_dir[0] != '\0' ||
         (s.cfg.serve[0] != '\0' && s.cfg.serve_dir[0] != '\0'))) {
        fprintf(stderr, "cqrps-server: --serve and --serve-dir exclude each "
                "other and --data-dir (a serving server trains nothing)\n");
        return 2;
    }
    cqr_log_set_level(s.cfg.log_level);
    cqr_log_set_format(s.cfg.log_format);
    cqr_log_detect_journal(); /* "<N>" priorities when stderr is journald */
    /* A peer that vanishes must give EPIPE on write, not kill us. */
    signal(SIGPIPE, SIG_IGN);

    if (cqr_server_ctx_init(&s.ctx, &s.cfg) != 0) {
        cqr_log(CQR_LOG_ERROR, "server", "cannot initialise");
        return 1;
    }
    int rc = run(&s);
    /* The endpoint reads the context: it goes first. It stayed up
     * through the drain and the shutdown hook, answering /readyz 503. */
    cqr_metrics_stop(s.metrics);
    s.metrics = NULL;
    /* After the endpoint (it reads the hooks) and the exit checkpoint;
     * a failed exit checkpoint lost acknowledged work: status 1. */
    if (cqr_ckpt_close(s.ckpt) != 0 && rc == 0)
        rc = 1;
    s.ckpt = NULL;
    cqr_server_ctx_free(&s.ctx);
    cqr_auth_destroy(s.auth); /* every session is gone */
    cqr_log(CQR_LOG_INFO, "server", "exit status=%d", rc);
    return rc;
}
