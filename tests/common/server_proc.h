/* server_proc.h -- a real cqrps-server for integration tests.
 *
 * A test starts the server binary (path from CMake: CQR_SERVER_BIN) on a
 * port of 0, learns the real port from the ready line it prints on stdout
 * ("cqrps-server listening on HOST:PORT"), talks to it, and stops it by
 * PID. Everything is bounded in time: the start waits for the ready line
 * at most timeout_ms, the stop sends SIGTERM, waits at most timeout_ms and
 * then SIGKILLs. The server's stderr goes to a temporary file, so a test
 * can check that no sanitizer report appeared (cqr_test_server_clean) and
 * print the log when something failed.
 *
 * The server is started with PR_SET_PDEATHSIG, so it dies with the thread
 * that started it if the test crashes or is killed by ctest's timeout:
 * start and stop servers from the test's main thread.
 *
 * Functions return 0 on success and -1 on failure, with the reason
 * printed on stderr. Not thread-safe: one thread drives a given server.
 */
#ifndef CQR_TEST_SERVER_PROC_H
#define CQR_TEST_SERVER_PROC_H

#include <stdint.h>
#include <sys/types.h>

typedef struct cqr_test_server {
    pid_t pid;             /* server process, 0 when not running */
    uint16_t port;         /* the port it listens on */
    char addr[64];         /* "127.0.0.1:PORT", for cqrps_connect */
    int out_fd;            /* read end of its stdout, -1 if closed */
    char err_path[128];    /* its stderr, a temporary file */
    int exited;            /* 1 once it was reaped */
    int wait_status;       /* waitpid() status once reaped */
    char out_rest[512];    /* stdout read past the ready line, for
                              cqr_test_server_read_line */
    size_t out_rest_len;   /* bytes in out_rest */
} cqr_test_server_t;

/* 1 if `cqrps-server --help` lists `flag` (features other issues add,
 * such as --data-dir), 0 if not, -1 if --help could not be run. */
int cqr_test_server_has_flag(const char *flag);

/* Starts the server on 127.0.0.1:0 with the extra flags in args (a
 * NULL-terminated list, or NULL). */
int cqr_test_server_start(cqr_test_server_t *s, const char *const *args,
                          int timeout_ms);

/* The same with an explicit --listen address (e.g. to restart a server on
 * the port it had). */
int cqr_test_server_start_at(cqr_test_server_t *s, const char *listen,
                             const char *const *args, int timeout_ms);

/* Sends SIGTERM, waits up to timeout_ms for the exit, then SIGKILLs and
 * reaps. Returns the exit code (0..255) if the server exited by itself,
 * or -1 if it was killed by a signal (SIGKILL included) or was not
 * running. */
int cqr_test_server_stop(cqr_test_server_t *s, int timeout_ms);

/* Reads the server's stdout after the ready line until a line starting
 * with `prefix` (e.g. "cqrps-server metrics on "), skipping others, and
 * copies the rest of that line to buf[0..len). 0, or -1 when no such
 * line came within timeout_ms. */
int cqr_test_server_read_line(cqr_test_server_t *s, const char *prefix,
                              char *buf, size_t len, int timeout_ms);

/* Sends sig without waiting (e.g. SIGKILL to simulate a crash, SIGSTOP). */
int cqr_test_server_signal(cqr_test_server_t *s, int sig);

/* SIGSTOP, then waits (up to timeout_ms) until every thread of the
 * server is stopped: kill() returns before a multi-threaded process has
 * stopped, and a test that expects silence must not race the last
 * replies. cqr_test_server_resume sends SIGCONT. */
int cqr_test_server_pause(cqr_test_server_t *s, int timeout_ms);
int cqr_test_server_resume(cqr_test_server_t *s);

/* Waits up to timeout_ms for the process to exit by itself; returns like
 * cqr_test_server_stop, or -2 if it is still running. */
int cqr_test_server_wait(cqr_test_server_t *s, int timeout_ms);

/* 1 while the process has not exited. */
int cqr_test_server_alive(cqr_test_server_t *s);

/* 1 if the server's stderr holds no sanitizer report; else prints the
 * report's lines and returns 0. */
int cqr_test_server_clean(const cqr_test_server_t *s);

/* Prints the last max_bytes of the server's stderr to our stderr. */
void cqr_test_server_dump(const cqr_test_server_t *s, long max_bytes);

/* Stops the server if it still runs (SIGKILL) and removes the log file. */
void cqr_test_server_cleanup(cqr_test_server_t *s);

#endif
