/* The robustness run: 200 connections to one real cqrps-server at once,
 * driven by one poll() loop of this test --
 *
 *   40 honest trainers  Hello, then push and lookup on their own IDs of a
 *                       full table every ~100 ms, every reply checked
 *                       bit for bit against an in-process engine mirror;
 *   30 garbage senders  random bytes (bad lengths, undecodable bodies);
 *   25 truncated frames a frame header and part of the body, then
 *                       silence (and 10 more that then close their end);
 *   25 tricklers        a valid request, one byte every 100 ms;
 *   35 deaf clients     64 big lookups, a tiny receive buffer, never read;
 *   35 idle clients     connect and say nothing --
 *
 * and afterwards checks that every hostile connection was closed by the
 * server for the right reason (its counters), that the honest trainers
 * never saw an error, that the server still answers exactly (every row of
 * the full table and a hash table compared with the mirror), and that its
 * resident memory stayed bounded: peak VmHWM at most RSS_BOUND_MB above
 * the RSS it had before the run (scaled under sanitizers, whose shadow
 * memory and quarantine inflate RSS). Bounded in time (< 60 s).
 */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cqrps.h"
#include "rawwire.h"
#include "server_proc.h"
#include "engine/table.h"
#include "testutil.h"
#include "check_main.h"

#define N_VALID 40
#define N_GARBAGE 30
#define N_TRUNC 25
#define N_TRUNC_EOF 10
#define N_TRICKLE 25
#define N_DEAF 35
#define N_IDLE 35
#define N_ALL (N_VALID + N_GARBAGE + N_TRUNC + N_TRUNC_EOF + N_TRICKLE + \
               N_DEAF + N_IDLE)

#define DIM 16
#define IDS_PER_CLIENT 64 /* each trainer's own IDs */
#define BATCH 8           /* IDs per push / lookup */
#define RUN_MS 9000       /* trainers' traffic */
#define DEADLINE_MS 40000 /* everything, or the test fails */

/* Peak RSS growth allowed over the pre-run RSS, in MiB: 200 read buffers
 * of 64 KiB (13 MiB), 35 deaf clients' replies held up to the pending
 * limit (--max-pending-bytes 256K; a batch can pass it by one flush, so
 * about 35 x 0.6 MiB = 21 MiB), allocator slack. */
#define RSS_BOUND_MB 64
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_SCALE 4
#else
#define RSS_SCALE 1
#endif

typedef enum kind {
    K_VALID, K_GARBAGE, K_TRUNC, K_TRUNC_EOF, K_TRICKLE, K_DEAF, K_IDLE
} kind_t;

static const char *const kind_names[] = {
    "valid", "garbage", "truncated", "truncated+eof", "trickle", "deaf",
    "idle"};

typedef struct client {
    kind_t kind;
    int fd;             /* -1 once we closed it */
    int server_closed;  /* EOF or reset seen */
    uint64_t next_ms;   /* next action */
    cqr_buf_t out;      /* bytes still to send */
    size_t out_pos;     /* sent of out */
    cqr_buf_t in;       /* bytes received, not yet parsed (valid) */
    uint64_t first_id;  /* valid: its IDs are first_id + [0, 64) */
    uint64_t next_req;  /* valid: request ids */
    int rounds;         /* valid: push+lookup rounds done */
    int waiting;        /* valid: replies outstanding */
    float *expect;      /* valid: the lookup's expected vectors */
    uint64_t expect_id; /* valid: request id of that lookup */
    int errors;         /* valid: bad replies */
    uint64_t rng;       /* this client's randomness */
} client_t;

static client_t cl[N_ALL];
static cqr_table_t *mirror;  /* the full table, in-process */
static cqr_table_t *hmirror; /* the hash table, in-process */

static long rss_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            v = strtol(line + fl + 1, NULL, 10);
    fclose(f);
    return v;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 1024) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    ck_assert_uint_ge(rl.rlim_cur, N_ALL + 64);
}

/* ---- the honest trainers ----------------------------------------------- */

static void valid_round(client_t *c)
{
    uint64_t ids[BATCH];
    float g[BATCH * DIM];
    for (int i = 0; i < BATCH; i++)
        ids[i] = c->first_id + tu_rand(&c->rng) % IDS_PER_CLIENT;
    tu_fill(g, BATCH * DIM, &c->rng);
    /* The mirror gets the push now: only this client touches its IDs, so
     * the server's rows for them are the mirror's once the push is
     * answered, however the 40 trainers interleave. */
    ck_assert_int_eq(cqr_table_push(mirror, ids, g, BATCH), 0);
    rw_push(&c->out, c->next_req++, "full", ids, BATCH, g, DIM);
    for (int i = 0; i < BATCH; i++)
        ids[i] = c->first_id + tu_rand(&c->rng) % IDS_PER_CLIENT;
    ck_assert_int_eq(cqr_table_lookup(mirror, ids, BATCH, c->expect), 0);
    c->expect_id = c->next_req;
    rw_lookup(&c->out, c->next_req++, "full", ids, BATCH);
    c->waiting = 2;
    c->rounds++;
}

/* Parses complete replies out of c->in. */
static void valid_replies(client_t *c)
{
    size_t pos = 0;
    while (c->in.len - pos >= 4) {
        uint32_t len = cqr_frame_get_len(c->in.data + pos);
        if (c->in.len - pos - 4 < len)
            break;
        rw_response_t *r = cqrps__v1__response__unpack(
            NULL, len, c->in.data + pos + 4);
        pos += 4 + len;
        if (r == NULL || r->status != 0) {
            fprintf(stderr, "valid client: bad reply: %s\n",
                    r ? r->message : "undecodable");
            c->errors++;
        } else if (r->id == c->expect_id) {
            if (r->reply_case != CQRPS__V1__RESPONSE__REPLY_LOOKUP ||
                r->lookup->vectors.len != BATCH * DIM * sizeof(float) ||
                memcmp(r->lookup->vectors.data, c->expect,
                       BATCH * DIM * sizeof(float)) != 0) {
                fprintf(stderr, "valid client: lookup differs from the "
                        "mirror\n");
                c->errors++;
            }
        }
        rw_free(r);
        c->waiting--;
    }
    memmove(c->in.data, c->in.data + pos, c->in.len - pos);
    c->in.len -= pos;
}

/* ---- setting up each kind ---------------------------------------------- */

static void start_client(client_t *c, kind_t kind, int idx, uint16_t port,
                         uint64_t now)
{
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->rng = 0x5eed0000u + (uint64_t)idx;
    cqr_buf_init(&c->out);
    cqr_buf_init(&c->in);
    c->fd = rw_connect(port);
    ck_assert_msg(c->fd >= 0, "connect %d failed", idx);
    if (kind == K_DEAF)
        rw_set_rcvbuf(c->fd, 4096);
    rw_set_nonblock(c->fd);
    c->next_ms = now;
    switch (kind) {
    case K_VALID:
        c->first_id = (uint64_t)(idx + 1) << 32;
        c->next_req = 1;
        c->expect = malloc(BATCH * DIM * sizeof(float));
        ck_assert_ptr_nonnull(c->expect);
        rw_hello(&c->out, c->next_req++, NULL, NULL);
        c->waiting = 1;
        break;
    case K_GARBAGE: {
        /* Half start with a plausible small length, half with anything. */
        size_t n = 64 + tu_rand(&c->rng) % 4096;
        ck_assert_int_eq(cqr_buf_reserve(&c->out, n), 0);
        for (size_t i = 0; i < n; i++)
            c->out.data[i] = (uint8_t)tu_rand(&c->rng);
        if (idx % 2 == 0)
            cqr_frame_put_len(c->out.data, (uint32_t)(n - 4));
        c->out.len = n;
        break;
    }
    case K_TRUNC:
    case K_TRUNC_EOF: {
        uint64_t ids[256];
        for (int i = 0; i < 256; i++)
            ids[i] = (uint64_t)i;
        rw_lookup(&c->out, 1, "hash", ids, 256);
        c->out.len /= 2; /* header and half the body */
        break;
    }
    case K_TRICKLE: {
        uint64_t ids[16];
        for (int i = 0; i < 16; i++)
            ids[i] = (uint64_t)i;
        rw_lookup(&c->out, 1, "hash", ids, 16);
        break;
    }
    case K_DEAF: {
        uint64_t ids[1000];
        for (int i = 0; i < 1000; i++)
            ids[i] = (uint64_t)i * 7;
        for (int i = 0; i < 64; i++)
            rw_lookup(&c->out, (uint64_t)i + 1, "hash", ids, 1000);
        break;
    }
    case K_IDLE:
        break;
    }
}

/* Sends what is due; returns without blocking. */
static void send_some(client_t *c, uint64_t now)
{
    if (c->fd < 0 || c->server_closed || now < c->next_ms)
        return;
    size_t left = c->out.len - c->out_pos;
    if (left == 0)
        return;
    size_t n = left;
    if (c->kind == K_TRICKLE) {
        n = 1;
        c->next_ms = now + 100;
    }
    ssize_t w = send(c->fd, c->out.data + c->out_pos, n, MSG_NOSIGNAL);
    if (w > 0)
        c->out_pos += (size_t)w;
    else if (w < 0 && errno != EAGAIN && errno != EINTR)
        c->server_closed = 1;
    if (c->out_pos == c->out.len) {
        c->out.len = c->out_pos = 0;
        if (c->kind == K_TRUNC_EOF)
            shutdown(c->fd, SHUT_WR);
    }
}

/* Reads what arrived (not for deaf clients). */
static void recv_some(client_t *c)
{
    for (;;) {
        if (c->kind == K_VALID) {
            if (cqr_buf_reserve(&c->in, 65536) != 0)
                ck_abort_msg("out of memory");
            ssize_t r = recv(c->fd, c->in.data + c->in.len, 65536, 0);
            if (r > 0) {
                c->in.len += (size_t)r;
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EINTR))
                c->server_closed = 1;
            valid_replies(c);
            return;
        }
        uint8_t buf[4096];
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r > 0)
            continue;
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            c->server_closed = 1;
        return;
    }
}

/* Stats counter `name` of the server. */
static double counter(cqrps_client_t *c, const char *name)
{
    cqrps_stats_t st;
    ck_assert_int_eq(cqrps_stats(c, &st), 0);
    double v = -1;
    for (size_t i = 0; i < st.ncounters; i++)
        if (strcmp(st.counters[i].name, name) == 0)
            v = st.counters[i].value;
    cqrps_stats_free(&st);
    return v;
}

/* The two tables and their in-process mirrors; returns the server's RSS
 * (KiB) after a little warm-up, the baseline of the bound. */
static long make_tables(cqr_test_server_t *s)
{
    cqrps_client_t *adm = tu_connect(s->addr);
    cqrps_table_config_t fc, hc;
    tu_config(&fc, CQRPS_KIND_FULL, CQRPS_OPT_ADAM, DIM);
    tu_config(&hc, CQRPS_KIND_HASH, CQRPS_OPT_SGD, DIM);
    hc.rows = 4096;
    ck_assert_int_eq(cqrps_create_table(adm, "full", &fc, NULL), 0);
    ck_assert_int_eq(cqrps_create_table(adm, "hash", &hc, NULL), 0);
    mirror = tu_mirror(&fc);
    hmirror = tu_mirror(&hc);
    /* Warm the server's allocator a little before the baseline. */
    uint64_t wids[256];
    float wv[256 * DIM];
    for (int i = 0; i < 256; i++)
        wids[i] = (uint64_t)i;
    ck_assert_int_eq(cqrps_lookup(adm, "hash", wids, 256, wv), 0);
    cqrps_close(adm);
    tu_sleep_ms(200);
    long base_kb = rss_kb(s->pid, "VmRSS");
    ck_assert_int_gt(base_kb, 0);
    return base_kb;
}

/* 200 connections at once, the kinds interleaved so every I/O thread
 * gets some of each. */
static void start_all(uint16_t port, uint64_t t0)
{
    struct { kind_t k; int n; } mix[] = {
        {K_VALID, N_VALID}, {K_GARBAGE, N_GARBAGE}, {K_TRUNC, N_TRUNC},
        {K_TRUNC_EOF, N_TRUNC_EOF}, {K_TRICKLE, N_TRICKLE},
        {K_DEAF, N_DEAF}, {K_IDLE, N_IDLE}};
    int left[7];
    for (int k = 0; k < 7; k++)
        left[k] = mix[k].n;
    int idx = 0;
    while (idx < N_ALL)
        for (int k = 0; k < 7; k++)
            if (left[k]-- > 0) {
                start_client(&cl[idx], mix[k].k, idx, port, t0);
                idx++;
            }
}

/* One pass over the clients: trainers run their rounds (and finish after
 * RUN_MS), everyone sends what it has. 1 while anyone is still busy. */
static int act(uint64_t now, uint64_t t0)
{
    int hostile_open = 0, valid_open = 0;
    for (int i = 0; i < N_ALL; i++) {
        client_t *c = &cl[i];
        if (c->kind == K_VALID && c->fd >= 0) {
            int quiet = c->waiting == 0 && c->out.len == 0;
            if (now - t0 >= RUN_MS && (quiet || c->server_closed)) {
                close(c->fd);
                c->fd = -1;
            } else if (quiet && !c->server_closed && now >= c->next_ms) {
                valid_round(c);
                c->next_ms = now + 80 + tu_rand(&c->rng) % 40;
            }
        }
        send_some(c, now);
        if (c->kind != K_VALID && c->kind != K_DEAF && c->fd >= 0 &&
            !c->server_closed)
            hostile_open++;
    }
    for (int i = 0; i < N_ALL; i++)
        if (cl[i].kind == K_VALID && cl[i].fd >= 0)
            valid_open++;
    return hostile_open > 0 || valid_open > 0;
}

/* Drives every client until the trainers are done and the server closed
 * every hostile one; returns the peak RSS (KiB) seen meanwhile. */
static long drive(const cqr_test_server_t *s, uint64_t t0, long peak_kb)
{
    struct pollfd pfd[N_ALL];
    for (;;) {
        uint64_t now = rw_now_ms();
        ck_assert_msg(now - t0 < DEADLINE_MS, "run took too long");
        if (!act(now, t0))
            break;
        for (int i = 0; i < N_ALL; i++) {
            client_t *c = &cl[i];
            /* Deaf clients are never read: fd -1 makes poll skip them. */
            pfd[i].fd = c->fd >= 0 && !c->server_closed && c->kind != K_DEAF
                            ? c->fd : -1;
            pfd[i].events = POLLIN;
            pfd[i].revents = 0;
        }
        poll(pfd, N_ALL, 20);
        for (int i = 0; i < N_ALL; i++)
            if (pfd[i].revents != 0)
                recv_some(&cl[i]);
        long r = rss_kb(s->pid, "VmRSS");
        if (r > peak_kb)
            peak_kb = r;
    }
    return peak_kb;
}

/* Every trainer stayed connected and got right answers; every hostile
 * client but the deaf ones was closed. Frees the clients' buffers and
 * returns the trainers' rounds. */
static int check_clients(void)
{
    /* Deaf clients are not drained here: with their tiny receive window
     * the kernel would trickle the server's queued replies for a long
     * time. That the server closed them is in its counters (and
     * conn_open falls to 1). */
    int rounds = 0, errors = 0;
    for (int i = 0; i < N_ALL; i++) {
        client_t *c = &cl[i];
        if (c->kind == K_VALID) {
            rounds += c->rounds;
            errors += c->errors;
            ck_assert_msg(!c->server_closed, "trainer %d was disconnected",
                          i);
        } else if (c->kind != K_DEAF) {
            ck_assert_msg(c->server_closed, "%s client %d not closed",
                          kind_names[c->kind], i);
        }
        /* Deaf clients stay open until the server has closed them. */
        if (c->fd >= 0 && c->kind != K_DEAF) {
            close(c->fd);
            c->fd = -1;
        }
        cqr_buf_free(&c->out);
        cqr_buf_free(&c->in);
        free(c->expect);
    }
    ck_assert_int_eq(errors, 0);
    ck_assert_int_ge(rounds, N_VALID * 20);
    return rounds;
}

/* Exact answers afterwards: every trainer ID and 4096 hash IDs. */
static void check_answers(cqrps_client_t *c)
{
    size_t n = (size_t)N_VALID * IDS_PER_CLIENT;
    size_t cap = n > 4096 ? n : 4096;
    uint64_t *ids = malloc(cap * sizeof *ids);
    float *got = malloc(cap * DIM * sizeof *got);
    float *want = malloc(cap * DIM * sizeof *want);
    ck_assert(ids && got && want);
    size_t k = 0;
    for (int i = 0; i < N_ALL; i++)
        if (cl[i].kind == K_VALID)
            for (uint64_t j = 0; j < IDS_PER_CLIENT; j++)
                ids[k++] = cl[i].first_id + j;
    ck_assert_uint_eq(k, n);
    ck_assert_int_eq(cqrps_lookup(c, "full", ids, n, got), 0);
    ck_assert_int_eq(cqr_table_lookup(mirror, ids, n, want), 0);
    ck_assert(tu_same(got, want, n * DIM, "full table after the run"));
    for (size_t i = 0; i < 4096; i++)
        ids[i] = i * 31 + 5;
    ck_assert_int_eq(cqrps_lookup(c, "hash", ids, 4096, got), 0);
    ck_assert_int_eq(cqr_table_lookup(hmirror, ids, 4096, want), 0);
    ck_assert(tu_same(got, want, 4096 * DIM, "hash table after the run"));
    free(ids);
    free(got);
    free(want);
}

/* Once the server has closed every hostile connection (the deaf ones
 * last: they stay busy while the server still reads their requests),
 * only c's is left, and each kind was closed for its reason. */
static void check_closes(cqrps_client_t *c)
{
    double open_now = -1;
    for (int tries = 0; tries < 300; tries++) {
        open_now = counter(c, "conn_open");
        if (open_now == 1)
            break;
        tu_sleep_ms(100);
    }
    ck_assert_double_eq(open_now, 1);
    static const char *const reasons[] = {
        "conn_closed_malformed", "conn_closed_oversize",
        "conn_closed_frame_timeout", "conn_closed_idle",
        "conn_closed_backpressure", "conn_closed_read_error",
        "conn_closed_write_error", "conn_closed_nomem", "conn_closed"};
    fprintf(stderr, "test_robust: server closes:");
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        fprintf(stderr, " %s=%.0f", reasons[i], counter(c, reasons[i]));
    fprintf(stderr, "\n");
    ck_assert_double_gt(counter(c, "conn_closed_malformed") +
                            counter(c, "conn_closed_oversize"), 0);
    ck_assert_double_ge(counter(c, "conn_closed_frame_timeout"),
                        N_TRUNC + N_TRICKLE);
    ck_assert_double_ge(counter(c, "conn_closed_idle"), N_IDLE);
    /* A deaf client is closed by the idle timeout, the hard pending
     * limit, or -- when the server was still reading its requests as we
     * stopped sending them mid-frame -- the frame timeout. */
    ck_assert_double_ge(counter(c, "conn_closed_idle") +
                            counter(c, "conn_closed_backpressure") +
                            counter(c, "conn_closed_frame_timeout"),
                        N_IDLE + N_DEAF + N_TRUNC + N_TRICKLE);
}

START_TEST(test_robust_200)
{
    raise_nofile();
    cqr_test_server_t s;
    const char *args[] = {"--threads", "2", "--idle-timeout", "4",
                          "--frame-timeout", "2", "--max-frame-bytes", "1M",
                          "--max-pending-bytes", "256K",
                          "--log-level", "warn", NULL};
    tu_server_start(&s, args);
    long base_kb = make_tables(&s);

    uint64_t t0 = rw_now_ms();
    start_all(s.port, t0);
    long peak_kb = drive(&s, t0, base_kb);
    uint64_t run_ms = rw_now_ms() - t0;
    int rounds = check_clients();

    cqrps_client_t *c = tu_connect(s.addr);
    check_answers(c);
    check_closes(c);
    for (int i = 0; i < N_ALL; i++)
        if (cl[i].fd >= 0)
            close(cl[i].fd);
    cqrps_close(c);

    long hwm_kb = rss_kb(s.pid, "VmHWM");
    if (hwm_kb > peak_kb)
        peak_kb = hwm_kb;
    long end_kb = rss_kb(s.pid, "VmRSS");
    long bound_kb = (long)RSS_BOUND_MB * 1024 * RSS_SCALE;
    fprintf(stderr, "test_robust: %d connections, %d trainer rounds, "
            "%llu ms; server RSS before %ld KiB, peak %ld KiB (+%ld), "
            "after %ld KiB; bound +%ld KiB\n", N_ALL, rounds,
            (unsigned long long)run_ms, base_kb, peak_kb, peak_kb - base_kb,
            end_kb, bound_kb);
    ck_assert_msg(peak_kb - base_kb <= bound_kb,
                  "server RSS grew by %ld KiB, over the %ld KiB bound",
                  peak_kb - base_kb, bound_kb);

    cqr_table_destroy(mirror);
    cqr_table_destroy(hmirror);
    tu_server_stop(&s);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("robust");
    TCase *tc = tcase_create("robust");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_robust_200);
    suite_add_tcase(s, tc);
    return s;
}
