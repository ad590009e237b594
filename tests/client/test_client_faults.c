/* test_client_faults.c -- bad input, failures and shutdown.
 *
 * "faults": while a well-behaved client pushes and looks up in a thread of
 * its own (checking every value against an in-process mirror), raw
 * sockets send garbage, truncated frames, oversized length prefixes,
 * undecodable and wrongly shaped requests, and the library sends unknown
 * tables, NaN gradients and oversized batches. Each gets its error; the
 * server stays up and the well-behaved client never notices.
 *
 * "lifecycle": request timeouts against a stopped (SIGSTOP) server,
 * reconnection after a restart on the same port, SIGTERM.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "testutil.h"
#include "check_main.h"

#define MAX_FRAME (1 << 20)
#define MAX_BATCH 1000
#define RAW_MS 5000 /* bound of every raw-socket wait */

static cqr_test_server_t srv;

/* ---- Raw sockets --------------------------------------------------------- */

static int raw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void raw_send(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t n = send(fd, c, len, MSG_NOSIGNAL);
        ck_assert_msg(n > 0, "send: %s", strerror(errno));
        c += n;
        len -= (size_t)n;
    }
}

static void raw_send_len(int fd, uint32_t len)
{
    unsigned char b[4] = { len >> 24, len >> 16, len >> 8, len };
    raw_send(fd, b, 4);
}

static void raw_request(int fd, Cqrps__V1__Request *req)
{
    size_t len = cqrps__v1__request__get_packed_size(req);
    unsigned char *buf = malloc(len + 4);
    buf[0] = len >> 24;
    buf[1] = len >> 16;
    buf[2] = len >> 8;
    buf[3] = len;
    cqrps__v1__request__pack(req, buf + 4);
    raw_send(fd, buf, len + 4);
    free(buf);
}

/* Reads exactly len bytes; 0 on success, 1 on EOF, -1 on timeout. */
static int raw_read_full(int fd, void *p, size_t len)
{
    char *c = p;
    uint64_t deadline = tu_now_ms() + RAW_MS;
    while (len > 0) {
        uint64_t now = tu_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t n = recv(fd, c, len, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0 && errno == EINTR)
            continue;
        ck_assert_msg(n > 0, "recv: %s", strerror(errno));
        c += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The next response, or NULL at EOF; fails the test on a timeout. */
static Cqrps__V1__Response *raw_response(int fd)
{
    unsigned char h[4];
    int rc = raw_read_full(fd, h, 4);
    ck_assert_msg(rc >= 0, "no response within %d ms", RAW_MS);
    if (rc == 1)
        return NULL;
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                   (uint32_t)h[2] << 8 | h[3];
    ck_assert_uint_le(len, 64u << 20);
    unsigned char *body = malloc(len ? len : 1);
    ck_assert_int_eq(raw_read_full(fd, body, len), 0);
    Cqrps__V1__Response *r = cqrps__v1__response__unpack(NULL, len, body);
    free(body);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* Sends req and reads its response, which must come. */
static Cqrps__V1__Response *raw_call(int fd, Cqrps__V1__Request *req)
{
    raw_request(fd, req);
    Cqrps__V1__Response *r = raw_response(fd);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* Sends req and asserts its reply's status (and its id, unless id is 0). */
static void raw_expect(int fd, Cqrps__V1__Request *req, uint64_t id,
                       Cqrps__V1__Status status)
{
    Cqrps__V1__Response *r = raw_call(fd, req);
    if (id)
        ck_assert_uint_eq(r->id, id);
    ck_assert_int_eq(r->status, status);
    cqrps__v1__response__free_unpacked(r, NULL);
}

/* Asserts the server closes the connection (within RAW_MS). */
static void raw_expect_eof(int fd)
{
    char b[256];
    int rc;
    /* Drain whatever comes first (an error reply), then EOF. */
    do {
        rc = raw_read_full(fd, b, 1);
    } while (rc == 0);
    ck_assert_msg(rc == 1, "server did not close the connection");
}

static void raw_hello(int fd)
{
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = 1;
    h.client_name = "raw";
    Cqrps__V1__Request req = CQRPS__V1__REQUEST__INIT;
    req.id = 1;
    req.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    req.hello = &h;
    Cqrps__V1__Response *r = raw_call(fd, &req);
    ck_assert_int_eq(r->status, 0);
    cqrps__v1__response__free_unpacked(r, NULL);
}

/* ---- The well-behaved client ------------------------------------------- */

static atomic_int good_stop;
static pthread_t good_thread;
static struct {
    char err[512];
    atomic_ullong rounds;
} good;

static void *good_main(void *arg)
{
    (void)arg;
    cqrps_client_t *c = NULL;
    if (cqrps_connect(srv.addr, NULL, &c) < 0) {
        snprintf(good.err, sizeof(good.err), "connect: %s",
                 cqrps_last_error(NULL));
        return NULL;
    }
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_ADAM, 8);
    cqr_table_config_t ec;
    tu_engine_config(&cfg, &ec);
    cqr_table_t *m = NULL;
    int rc = cqrps_create_table(c, "good", &cfg, NULL);
    if (rc < 0 || cqr_table_create(&ec, &m) != 0) {
        snprintf(good.err, sizeof(good.err), "create: %s",
                 cqrps_last_error(c));
        cqrps_close(c);
        return NULL;
    }
    uint64_t st = 11, ids[50];
    float g[50 * 8], a[50 * 8], b[50 * 8];
    while (!atomic_load(&good_stop)) {
        for (int i = 0; i < 50; i++)
            ids[i] = tu_rand(&st) % 500;
        tu_fill(g, 50 * 8, &st);
        if ((rc = cqrps_push(c, "good", ids, g, 50)) < 0 ||
            (rc = cqrps_lookup(c, "good", ids, 50, a)) < 0) {
            snprintf(good.err, sizeof(good.err), "round %llu: %s: %s",
                     (unsigned long long)atomic_load(&good.rounds), cqrps_errname(rc),
                     cqrps_last_error(c));
            break;
        }
        cqr_table_push(m, ids, g, 50);
        cqr_table_lookup(m, ids, 50, b);
        if (memcmp(a, b, sizeof(a)) != 0) {
            snprintf(good.err, sizeof(good.err), "round %llu: values differ",
                     (unsigned long long)atomic_load(&good.rounds));
            break;
        }
        good.rounds++;
        tu_sleep_ms(1);
    }
    cqr_table_destroy(m);
    cqrps_close(c);
    return NULL;
}

static void faults_setup(void)
{
    static const char *const args[] = { "--max-frame-bytes", "1M",
                                        "--max-batch", "1000", NULL };
    tu_server_start(&srv, args);
    good.err[0] = '\0';
    atomic_store(&good.rounds, 0);
    atomic_store(&good_stop, 0);
    ck_assert_int_eq(pthread_create(&good_thread, NULL, good_main, NULL), 0);
}

static void faults_teardown(void)
{
    tu_server_stop(&srv);
}

/* Every fault test ends by proving the server still answers. */
static void assert_server_up(void)
{
    ck_assert(cqr_test_server_alive(&srv));
    cqrps_client_t *c = tu_connect(srv.addr);
    cqrps_stats_t st;
    ck_assert_int_eq(cqrps_stats(c, &st), 0);
    cqrps_stats_free(&st);
    cqrps_close(c);
}

START_TEST(test_garbage_bytes)
{
    /* A frame whose body is not a Request: an error reply, then close. */
    int fd = raw_connect(srv.port);
    unsigned char junk[16];
    memset(junk, 0xff, sizeof(junk));
    raw_send_len(fd, sizeof(junk));
    raw_send(fd, junk, sizeof(junk));
    Cqrps__V1__Response *r = raw_response(fd);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->status, CQRPS__V1__STATUS__MALFORMED);
    ck_assert(r->message && r->message[0]);
    cqrps__v1__response__free_unpacked(r, NULL);
    raw_expect_eof(fd);
    close(fd);

    /* Text where a length prefix belongs ("GET " = 1.2 GB): closed. */
    fd = raw_connect(srv.port);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(fd, http, strlen(http));
    raw_expect_eof(fd);
    close(fd);
    assert_server_up();
}
END_TEST

START_TEST(test_truncated_frame_then_close)
{
    for (int i = 0; i < 3; i++) {
        int fd = raw_connect(srv.port);
        raw_hello(fd);
        raw_send_len(fd, 100);
        raw_send(fd, "0123456789", 10);
        close(fd);
    }
    /* And a client that sends half a length prefix. */
    int fd = raw_connect(srv.port);
    raw_send(fd, "\0\0", 2);
    close(fd);
    assert_server_up();
}
END_TEST

START_TEST(test_length_over_limit)
{
    int fd = raw_connect(srv.port);
    raw_hello(fd);
    raw_send_len(fd, 2 * MAX_FRAME);
    raw_send(fd, "abcdefgh", 8);
    Cqrps__V1__Response *r = raw_response(fd);
    if (r) { /* an error reply before the close is optional but typed */
        ck_assert_int_eq(r->status, CQRPS__V1__STATUS__LIMIT_EXCEEDED);
        cqrps__v1__response__free_unpacked(r, NULL);
        raw_expect_eof(fd);
    }
    close(fd);
    assert_server_up();
}
END_TEST

/* Raw requests the library never sends (on table bad.t of dim 4): each
 * gets its typed error and the connection stays usable. */
static void raw_bad_requests(uint64_t *ids, float *g)
{
    Cqrps__V1__Response *r;
    int fd = raw_connect(srv.port);
    raw_hello(fd);
    Cqrps__V1__Push push = CQRPS__V1__PUSH__INIT;
    push.table = "bad.t";
    push.n_ids = 4;
    push.ids = ids;
    push.grads.data = (uint8_t *)g;
    push.grads.len = 3 * 4 * sizeof(float); /* 3 rows for 4 IDs */
    Cqrps__V1__Request req = CQRPS__V1__REQUEST__INIT;
    req.id = 2;
    req.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    req.push = &push;
    raw_expect(fd, &req, 2, CQRPS__V1__STATUS__WRONG_DIM);

    /* More IDs than --max-batch in one request. */
    Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
    lk.table = "bad.t";
    lk.n_ids = MAX_BATCH + 1;
    lk.ids = ids;
    req.id = 3;
    req.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    req.lookup = &lk;
    raw_expect(fd, &req, 3, CQRPS__V1__STATUS__LIMIT_EXCEEDED);

    /* Bad pooled offsets straight to the server. */
    uint32_t bad_offs[2] = { 0, 9 };
    lk.n_ids = 4;
    lk.n_offsets = 2;
    lk.offsets = bad_offs;
    req.id = 4;
    raw_expect(fd, &req, 0, CQRPS__V1__STATUS__INVALID_ARGUMENT);

    /* A request with no operation, and a wrong protocol version. */
    Cqrps__V1__Request empty = CQRPS__V1__REQUEST__INIT;
    empty.id = 5;
    r = raw_call(fd, &empty);
    ck_assert_int_ne(r->status, CQRPS__V1__STATUS__OK);
    cqrps__v1__response__free_unpacked(r, NULL);
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = 99;
    req.id = 6;
    req.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    req.hello = &h;
    raw_expect(fd, &req, 0, CQRPS__V1__STATUS__BAD_VERSION);

    /* A decodable error leaves the connection usable. */
    lk.n_ids = 4;
    lk.n_offsets = 0;
    req.id = 7;
    req.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    req.lookup = &lk;
    r = raw_call(fd, &req);
    ck_assert_uint_eq(r->id, 7);
    ck_assert_int_eq(r->status, CQRPS__V1__STATUS__OK);
    ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_LOOKUP);
    ck_assert_uint_eq(r->lookup->vectors.len, 4 * 4 * sizeof(float));
    cqrps__v1__response__free_unpacked(r, NULL);
    close(fd);
}

START_TEST(test_bad_requests_get_typed_errors)
{
    cqrps_client_t *c = tu_connect(srv.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CE, CQRPS_OPT_SGD, 8);
    ck_assert_int_eq(cqrps_create_table(c, "bad.t", &cfg, NULL), 0);
    uint64_t ids[5000];
    float g[5000 * 8], before[4 * 8], after[4 * 8];
    uint64_t st = 2;
    for (int i = 0; i < 5000; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, 5000 * 8, &st);

    /* Unknown table, with its name in the message. */
    ck_assert_int_eq(cqrps_lookup(c, "no.such", ids, 4, before),
                     CQRPS_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), "no.such"));
    ck_assert_int_eq(cqrps_push(c, "no.such", ids, g, 4), CQRPS_ENOTFOUND);

    /* NaN and Inf gradients: refused, nothing applied. */
    ck_assert_int_eq(cqrps_lookup(c, "bad.t", ids, 4, before), 0);
    float keep = g[13];
    g[13] = NAN;
    ck_assert_int_eq(cqrps_push(c, "bad.t", ids, g, 4), CQRPS_ENONFINITE);
    g[13] = INFINITY;
    ck_assert_int_eq(cqrps_push(c, "bad.t", ids, g, 4), CQRPS_ENONFINITE);
    g[13] = keep;
    ck_assert_int_eq(cqrps_lookup(c, "bad.t", ids, 4, after), 0);
    ck_assert_mem_eq(before, after, sizeof(before));

    /* The library splits to the server's max batch (from Hello). */
    cqrps_server_info_t si;
    ck_assert_int_eq(cqrps_server_info(c, &si), 0);
    ck_assert_uint_eq(si.max_batch, MAX_BATCH);
    ck_assert_uint_eq(si.max_frame_bytes, MAX_FRAME);
    ck_assert_int_eq(cqrps_push(c, "bad.t", ids, g, 5000), 0);
    ck_assert_int_eq(cqrps_lookup(c, "bad.t", ids, 5000, g), 0);

    /* More bags than --max-batch (few IDs): split by bags as well. */
    static uint32_t boffs[3000];
    static float pooled[3000 * 8];
    for (uint32_t bg = 0; bg < 3000; bg++)
        boffs[bg] = bg < 10 ? bg : 10;
    ck_assert_int_eq(cqrps_lookup_pooled(c, "bad.t", ids, 10, boffs, 3000,
                                         CQRPS_POOL_SUM, pooled),
                     0);
    ck_assert_int_eq(cqrps_lookup(c, "bad.t", ids, 10, g), 0);
    ck_assert_mem_eq(pooled, g, 10 * 8 * sizeof(float));
    for (size_t i = 10 * 8; i < 3000 * 8; i++)
        ck_assert(pooled[i] == 0.0f);

    /* Malformed pooling arguments are caught before sending. */
    uint32_t offs[2] = { 1, 0 };
    ck_assert_int_eq(cqrps_lookup_pooled(c, "bad.t", ids, 4, offs, 2,
                                         CQRPS_POOL_SUM, after),
                     CQRPS_EINVAL);

    /* The table's dim changed behind the client's cache: WRONG_DIM once,
     * then the new dim is learned. */
    cqrps_client_t *c2 = tu_connect(srv.addr);
    ck_assert_int_eq(cqrps_drop_table(c2, "bad.t"), 0);
    tu_config(&cfg, CQRPS_KIND_CE, CQRPS_OPT_SGD, 4);
    ck_assert_int_eq(cqrps_create_table(c2, "bad.t", &cfg, NULL), 0);
    cqrps_close(c2);
    ck_assert_int_eq(cqrps_push(c, "bad.t", ids, g, 4), CQRPS_EDIM);
    ck_assert_int_eq(cqrps_lookup(c, "bad.t", ids, 4, after), 0);
    uint32_t dim;
    ck_assert_int_eq(cqrps_table_dim(c, "bad.t", &dim), 0);
    ck_assert_uint_eq(dim, 4);
    cqrps_close(c);

    raw_bad_requests(ids, g);
    assert_server_up();
}
END_TEST

START_TEST(test_well_behaved_client_unaffected)
{
    /* Runs last in its case: the faults above happened meanwhile. Let it
     * run a while longer, then stop it. */
    uint64_t deadline = tu_now_ms() + 10000;
    while (atomic_load(&good.rounds) < 100 && tu_now_ms() < deadline &&
           !good.err[0])
        tu_sleep_ms(5);
    atomic_store(&good_stop, 1);
    pthread_join(good_thread, NULL);
    ck_assert_msg(good.err[0] == '\0', "well-behaved client: %s", good.err);
    ck_assert_msg(atomic_load(&good.rounds) >= 100, "only %llu rounds",
                  (unsigned long long)atomic_load(&good.rounds));
    cqrps_client_t *c = tu_connect(srv.addr);
    cqrps_stats_t st;
    ck_assert_int_eq(cqrps_stats(c, &st), 0);
    double malformed = 0;
    for (size_t i = 0; i < st.ncounters; i++)
        if (!strcmp(st.counters[i].name, "conn_closed_malformed"))
            malformed = st.counters[i].value;
    ck_assert_msg(malformed >= 1, "the server counted no malformed close");
    cqrps_stats_free(&st);
    cqrps_close(c);
}
END_TEST

/* ---- Lifecycle ----------------------------------------------------------- */

START_TEST(test_request_timeout_then_recovery)
{
    cqr_test_server_t s;
    tu_server_start(&s, NULL);
    cqrps_options_t opt;
    cqrps_options_init(&opt);
    opt.request_timeout_ms = 300;
    cqrps_client_t *c = NULL;
    ck_assert_int_eq(cqrps_connect(s.addr, &opt, &c), 0);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_HASH, CQRPS_OPT_SGD, 4);
    ck_assert_int_eq(cqrps_create_table(c, "to", &cfg, NULL), 0);
    uint64_t ids[3] = { 1, 2, 3 };
    float out[12];

    ck_assert_int_eq(cqr_test_server_pause(&s, 5000), 0);
    uint64_t t0 = tu_now_ms();
    int rc = cqrps_lookup(c, "to", ids, 3, out);
    uint64_t dt = tu_now_ms() - t0;
    ck_assert_int_eq(cqr_test_server_resume(&s), 0);
    ck_assert_int_eq(rc, CQRPS_ETIMEDOUT);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), s.addr));
    /* One timeout per try: the lookup is retried once at most. */
    ck_assert_msg(dt >= 250 && dt < 3000, "timed out after %llu ms",
                  (unsigned long long)dt);
    /* The next call reconnects. */
    ck_assert_int_eq(cqrps_lookup(c, "to", ids, 3, out), 0);
    cqrps_close(c);
    tu_server_stop(&s);
}
END_TEST

START_TEST(test_reconnect_after_restart)
{
    cqr_test_server_t a, b;
    tu_server_start(&a, NULL);
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%u", a.port);
    cqrps_client_t *c = tu_connect(a.addr);
    cqrps_options_t opt;
    cqrps_options_init(&opt);
    opt.reconnect = 0;
    cqrps_client_t *noreco = NULL;
    ck_assert_int_eq(cqrps_connect(a.addr, &opt, &noreco), 0);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_SGD, 4);
    ck_assert_int_eq(cqrps_create_table(c, "rc", &cfg, NULL), 0);
    tu_server_stop(&a);

    /* Down: a clear error naming the address. */
    cqrps_table_info_t info;
    ck_assert_int_eq(cqrps_describe_table(c, "rc", &info), CQRPS_ECONN);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(c), listen));

    /* Back on the same port (empty: no persistence yet): the same client
     * reconnects by itself. */
    ck_assert_int_eq(cqr_test_server_start_at(&b, listen, NULL, TU_START_MS),
                     0);
    ck_assert_int_eq(cqrps_describe_table(c, "rc", &info), CQRPS_ENOTFOUND);
    ck_assert_int_eq(cqrps_create_table(c, "rc", &cfg, NULL), 0);
    uint64_t ids[2] = { 5, 6 };
    float out[8];
    ck_assert_int_eq(cqrps_lookup(c, "rc", ids, 2, out), 0);
    /* With reconnect off, the lost connection stays an error. */
    ck_assert_int_eq(cqrps_describe_table(noreco, "rc", &info), CQRPS_ECONN);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(noreco), "reconnect"));
    cqrps_close(noreco);
    cqrps_close(c);
    tu_server_stop(&b);
}
END_TEST

START_TEST(test_sigterm_exits_zero_promptly)
{
    cqr_test_server_t s;
    tu_server_start(&s, NULL);
    cqrps_client_t *c = tu_connect(s.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_ADAM, 8);
    ck_assert_int_eq(cqrps_create_table(c, "term", &cfg, NULL), 0);
    uint64_t ids[100];
    float g[800];
    uint64_t st = 4;
    for (int i = 0; i < 100; i++)
        ids[i] = tu_rand(&st);
    tu_fill(g, 800, &st);
    ck_assert_int_eq(cqrps_push(c, "term", ids, g, 100), 0);
    /* The client stays connected while the server is told to stop. */
    uint64_t t0 = tu_now_ms();
    ck_assert_int_eq(cqr_test_server_signal(&s, SIGTERM), 0);
    int code = cqr_test_server_wait(&s, 5000);
    uint64_t dt = tu_now_ms() - t0;
    ck_assert_msg(code == 0, "exit status %d after SIGTERM", code);
    ck_assert_msg(dt < 5000, "took %llu ms", (unsigned long long)dt);
    ck_assert_int_eq(cqrps_push(c, "term", ids, g, 1), CQRPS_ECONN);
    cqrps_close(c);
    tu_server_stop(&s); /* reaps, checks the sanitizer log */
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_faults");
    TCase *f = tcase_create("faults");
    tcase_add_unchecked_fixture(f, faults_setup, faults_teardown);
    tcase_set_timeout(f, 60);
    tcase_add_test(f, test_garbage_bytes);
    tcase_add_test(f, test_truncated_frame_then_close);
    tcase_add_test(f, test_length_over_limit);
    tcase_add_test(f, test_bad_requests_get_typed_errors);
    tcase_add_test(f, test_well_behaved_client_unaffected);
    suite_add_tcase(s, f);

    TCase *l = tcase_create("lifecycle");
    tcase_set_timeout(l, 60);
    tcase_add_test(l, test_request_timeout_then_recovery);
    tcase_add_test(l, test_reconnect_after_restart);
    tcase_add_test(l, test_sigterm_exits_zero_promptly);
    suite_add_tcase(s, l);

    return s;
}
