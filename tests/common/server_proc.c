/* server_proc.c -- spawn, watch and stop a real cqrps-server (see .h). */
#define _GNU_SOURCE /* pipe2 */
#include "server_proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CQR_SERVER_BIN
#error "CQR_SERVER_BIN must be defined by the build (path of cqrps-server)"
#endif

#define READY_PREFIX "cqrps-server listening on "
#define MAX_ARGS 64

/* Sanitizer reports that fail a test when they show up in the log. */
static const char *const reports[] = {
    "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
    "WARNING: ThreadSanitizer",
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Reaps the child if it exited; 1 if it did. */
static int reap(cqr_test_server_t *s, int block)
{
    if (s->pid <= 0 || s->exited)
        return 1;
    int st;
    pid_t r;
    do {
        r = waitpid(s->pid, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == s->pid) {
        s->exited = 1;
        s->wait_status = st;
        return 1;
    }
    return 0;
}

static int exit_code(const cqr_test_server_t *s)
{
    if (!s->exited)
        return -2;
    if (WIFEXITED(s->wait_status))
        return WEXITSTATUS(s->wait_status);
    return -1;
}

/* Starts the binary with argv (NULL-terminated), its stdout on a pipe
 * (s->out_fd) and its stderr in a temporary file (s->err_path); the child
 * dies with this thread (PR_SET_PDEATHSIG). 0, or -1 with the reason on
 * stderr. */
static int spawn(cqr_test_server_t *s, const char *const *argv)
{
    snprintf(s->err_path, sizeof(s->err_path), "/tmp/cqr-test-srv-XXXXXX");
    int errfd = mkstemp(s->err_path);
    if (errfd < 0) {
        fprintf(stderr, "server_proc: mkstemp: %s\n", strerror(errno));
        return -1;
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        fprintf(stderr, "server_proc: pipe: %s\n", strerror(errno));
        close(errfd);
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "server_proc: fork: %s\n", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        close(errfd);
        return -1;
    }
    if (pid == 0) {
        /* Child: only async-signal-safe calls until exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127); /* the parent died before prctl */
        dup2(pfd[1], STDOUT_FILENO);
        dup2(errfd, STDERR_FILENO);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    close(errfd);
    s->pid = pid;
    s->out_fd = pfd[0];
    return 0;
}

/* Reads the child's stdout until the ready line (port and address into
 * s, what followed it into s->out_rest), the deadline or the child's end.
 * 0, or -1 with the reason on stderr. */
static int wait_ready(cqr_test_server_t *s, int timeout_ms)
{
    char line[512];
    size_t len = 0;
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(line, '\n', len);
        if (nl) {
            *nl = '\0';
            const char *hp = strstr(line, READY_PREFIX);
            const char *colon = hp ? strrchr(hp, ':') : NULL;
            long port = colon ? strtol(colon + 1, NULL, 10) : 0;
            if (port > 0 && port < 65536) {
                s->port = (uint16_t)port;
                snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%ld", port);
                /* Keep what followed (e.g. the metrics line). */
                size_t rest = len - (size_t)(nl + 1 - line);
                memcpy(s->out_rest, nl + 1, rest);
                s->out_rest_len = rest;
                return 0;
            }
            /* Some other line: skip it. */
            size_t rest = len - (size_t)(nl + 1 - line);
            memmove(line, nl + 1, rest);
            len = rest;
            continue;
        }
        long long left = deadline - now_ms();
        if (left <= 0 || len == sizeof(line)) {
            fprintf(stderr, "server_proc: no ready line from %s within %d "
                            "ms\n", CQR_SERVER_BIN, timeout_ms);
            return -1;
        }
        struct pollfd p = { s->out_fd, POLLIN, 0 };
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            continue; /* the deadline check above ends the loop */
        ssize_t n = read(s->out_fd, line + len, sizeof(line) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "server_proc: %s closed stdout before its "
                            "ready line\n", CQR_SERVER_BIN);
            return -1;
        }
        len += (size_t)n;
    }
}

int cqr_test_server_start_at(cqr_test_server_t *s, const char *listen,
                             const char *const *args, int timeout_ms)
{
    memset(s, 0, sizeof(*s));
    s->out_fd = -1;
    const char *argv[MAX_ARGS + 4];
    int argc = 0;
    argv[argc++] = CQR_SERVER_BIN;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    for (int i = 0; args && args[i] && argc < MAX_ARGS + 3; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    if (spawn(s, argv) != 0)
        return -1;
    if (wait_ready(s, timeout_ms) == 0)
        return 0;
    cqr_test_server_dump(s, 4096);
    cqr_test_server_signal(s, SIGKILL);
    reap(s, 1);
    return -1;
}

int cqr_test_server_has_flag(const char *flag)
{
    FILE *p = popen(CQR_SERVER_BIN " --help", "r");
    if (p == NULL)
        return -1;
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, p))
        if (strstr(line, flag))
            found = 1;
    pclose(p);
    return found;
}

int cqr_test_server_start(cqr_test_server_t *s, const char *const *args,
                          int timeout_ms)
{
    return cqr_test_server_start_at(s, "127.0.0.1:0", args, timeout_ms);
}

int cqr_test_server_read_line(cqr_test_server_t *s, const char *prefix,
                              char *buf, size_t len, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    size_t plen = strlen(prefix);
    for (;;) {
        char *nl = memchr(s->out_rest, '\n', s->out_rest_len);
        if (nl) {
            *nl = '\0';
            int hit = strncmp(s->out_rest, prefix, plen) == 0;
            if (hit)
                snprintf(buf, len, "%s", s->out_rest + plen);
            size_t rest = s->out_rest_len - (size_t)(nl + 1 - s->out_rest);
            memmove(s->out_rest, nl + 1, rest);
            s->out_rest_len = rest;
            if (hit)
                return 0;
            continue;
        }
        long long left = deadline - now_ms();
        if (left <= 0 || s->out_fd < 0 ||
            s->out_rest_len == sizeof(s->out_rest))
            break;
        struct pollfd p = { s->out_fd, POLLIN, 0 };
        int rc = poll(&p, 1, (int)left);
        if (rc <= 0)
            continue;
        ssize_t n = read(s->out_fd, s->out_rest + s->out_rest_len,
                         sizeof(s->out_rest) - s->out_rest_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        s->out_rest_len += (size_t)n;
    }
    fprintf(stderr, "server_proc: no line '%s...' within %d ms\n", prefix,
            timeout_ms);
    return -1;
}

int cqr_test_server_signal(cqr_test_server_t *s, int sig)
{
    if (s->pid <= 0 || s->exited)
        return -1;
    return kill(s->pid, sig) == 0 ? 0 : -1;
}

/* 1 if every thread of pid is stopped ('T' in /proc/PID/task/TID/stat). */
static int all_stopped(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int stopped = 1;
    struct dirent *e;
    while (stopped && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char sp[96], buf[512];
        snprintf(sp, sizeof(sp), "%s/%.20s/stat", path, e->d_name);
        FILE *f = fopen(sp, "r");
        if (!f)
            continue; /* the thread exited */
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* "tid (comm) S ...": the state follows the last ')'. */
        const char *rp = strrchr(buf, ')');
        if (!rp || rp[1] != ' ' || (rp[2] != 'T' && rp[2] != 't'))
            stopped = 0;
    }
    closedir(d);
    return stopped;
}

int cqr_test_server_pause(cqr_test_server_t *s, int timeout_ms)
{
    if (cqr_test_server_signal(s, SIGSTOP) < 0)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    while (!all_stopped(s->pid)) {
        if (now_ms() >= deadline) {
            fprintf(stderr, "server_proc: pid %d not stopped after %d ms\n",
                    (int)s->pid, timeout_ms);
            return -1;
        }
        sleep_ms(1);
    }
    return 0;
}

int cqr_test_server_resume(cqr_test_server_t *s)
{
    return cqr_test_server_signal(s, SIGCONT);
}

int cqr_test_server_alive(cqr_test_server_t *s)
{
    return s->pid > 0 && !reap(s, 0);
}

int cqr_test_server_wait(cqr_test_server_t *s, int timeout_ms)
{
    if (s->pid <= 0)
        return -1;
    long long deadline = now_ms() + timeout_ms;
    while (!reap(s, 0)) {
        if (now_ms() >= deadline)
            return -2;
        sleep_ms(5);
    }
    return exit_code(s);
}

int cqr_test_server_stop(cqr_test_server_t *s, int timeout_ms)
{
    if (s->pid <= 0)
        return -1;
    if (!s->exited) {
        kill(s->pid, SIGTERM);
        if (cqr_test_server_wait(s, timeout_ms) == -2) {
            fprintf(stderr, "server_proc: pid %d still running %d ms after "
                            "SIGTERM; killing it\n", (int)s->pid,
                    timeout_ms);
            kill(s->pid, SIGKILL);
            reap(s, 1);
        }
    }
    if (s->out_fd >= 0) {
        close(s->out_fd);
        s->out_fd = -1;
    }
    return exit_code(s);
}

/* Reads the whole log (bounded) into a NUL-terminated buffer. */
static char *read_log(const cqr_test_server_t *s, long max_bytes,
                      long *len_out)
{
    FILE *f = fopen(s->err_path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > max_bytes ? size - max_bytes : 0;
    fseek(f, from, SEEK_SET);
    char *buf = malloc((size_t)(size - from) + 1);
    if (!buf) {
        fclose(f);
        return NULL;
    }
    size_t n = fread(buf, 1, (size_t)(size - from), f);
    buf[n] = '\0';
    fclose(f);
    *len_out = (long)n;
    return buf;
}

int cqr_test_server_clean(const cqr_test_server_t *s)
{
    long len;
    /* Reports are at the end of long logs, but read it all (bounded). */
    char *log = read_log(s, 64L << 20, &len);
    if (!log)
        return 1;
    int clean = 1;
    for (size_t i = 0; i < sizeof(reports) / sizeof(reports[0]); i++) {
        const char *hit = strstr(log, reports[i]);
        if (hit) {
            clean = 0;
            const char *start = hit;
            while (start > log && start[-1] != '\n')
                start--;
            fprintf(stderr, "server_proc: sanitizer report in %s:\n%.4000s\n",
                    s->err_path, start);
        }
    }
    free(log);
    return clean;
}

void cqr_test_server_dump(const cqr_test_server_t *s, long max_bytes)
{
    long len;
    char *log = read_log(s, max_bytes, &len);
    if (!log)
        return;
    fprintf(stderr, "---- server log (%s, last %ld bytes) ----\n%s"
                    "---- end of server log ----\n", s->err_path, len, log);
    free(log);
}

void cqr_test_server_cleanup(cqr_test_server_t *s)
{
    if (s->pid > 0 && !s->exited) {
        kill(s->pid, SIGKILL);
        reap(s, 1);
    }
    if (s->out_fd >= 0) {
        close(s->out_fd);
        s->out_fd = -1;
    }
    if (s->err_path[0])
        unlink(s->err_path);
    s->err_path[0] = '\0';
}
