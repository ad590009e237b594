/* Connections on the real I/O threads over loopback TCP: pipelining in
 * order, the yield after a batch of frames, half-close, undecodable and
 * oversized frames answered then closed without harming another client,
 * the connection-limit refusal, backpressure without loss, and the
 * graceful stop. The acceptor is played by the test: it accepts and hands
 * the socket over exactly as main.c does. */
#define _GNU_SOURCE /* accept4 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "net/iothread.h"
#include "net/listen.h"
#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "ops/log.h"
#include "rpc/server.h"
#include "check_main.h"

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_io_t *io;
static int lfd = -1;
static struct sockaddr_in laddr;

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_ERROR);
    cqr_config_defaults(&cfg);
    cfg.threads = 2;
    cfg.max_frame_bytes = 1u << 20;
    cfg.max_pending_bytes = 64u * 1024;
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    ck_assert_int_eq(cqr_io_start(&ctx, cfg.threads, &io), 0);

    /* The listener main.c would open; the tests accept by hand. */
    char why[128];
    ck_assert_int_eq(cqr_listen_open("127.0.0.1", 0, 0, &lfd, why,
                                     sizeof why), 0);
    /* Blocking accepts: a connection is accepted right after connect(). */
    int fl = fcntl(lfd, F_GETFL);
    ck_assert_int_eq(fcntl(lfd, F_SETFL, fl & ~O_NONBLOCK), 0);
    socklen_t sl = sizeof laddr;
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&laddr, &sl), 0);
}

static void teardown(void)
{
    if (io != NULL)
        cqr_io_stop(io, 2000);
    io = NULL;
    close(lfd);
    cqr_server_ctx_free(&ctx);
}

/* Connects a blocking client and hands the server side to the I/O
 * threads (reject: as the acceptor does over --max-connections). */
static int connect_client_opt(int reject, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&laddr, sizeof laddr), 0);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int sfd = accept4(lfd, (struct sockaddr *)&ss, &sl,
                      SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(sfd, 0);
    char peer[64];
    cqr_format_addr((struct sockaddr *)&ss, peer, sizeof peer);
    cqr_io_hand_off(io, sfd, peer, reject);
    return fd;
}

static int connect_client(void) { return connect_client_opt(0, 0); }

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        ck_assert_int_gt(w, 0);
        p += w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes; returns 0, or -1 on EOF/reset/timeout first. */
static int read_all(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Appends one framed request to b. */
static void frame_req(cqr_buf_t *b, Request *q)
{
    size_t mark;
    ck_assert_int_eq(cqr_frame_begin(b, &mark), 0);
    size_t n = cqrps__v1__request__get_packed_size(q);
    ck_assert_int_eq(cqr_buf_reserve(b, n), 0);
    cqrps__v1__request__pack(q, b->data + b->len);
    b->len += n;
    cqr_frame_end(b, mark);
}

static Response *read_resp(int fd)
{
    uint8_t h[4];
    if (read_all(fd, h, 4) != 0)
        return NULL;
    uint32_t n = cqr_frame_get_len(h);
    uint8_t *body = malloc(n ? n : 1);
    ck_assert_int_eq(read_all(fd, body, n), 0);
    Response *r = cqrps__v1__response__unpack(NULL, n, body);
    free(body);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* 1 if the peer closed: recv returns 0 (or a reset). */
static int at_eof(int fd)
{
    uint8_t b;
    ssize_t r = recv(fd, &b, 1, 0);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

static void req_describe(cqr_buf_t *b, uint64_t id, const char *name)
{
    Cqrps__V1__DescribeTable m = CQRPS__V1__DESCRIBE_TABLE__INIT;
    m.name = (char *)name;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.id = id;
    q.op_case = CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE;
    q.describe_table = &m;
    frame_req(b, &q);
}

static void req_lookup(cqr_buf_t *b, uint64_t id, const char *table,
                       uint64_t *ids, size_t n)
{
    Cqrps__V1__Lookup m = CQRPS__V1__LOOKUP__INIT;
    m.table = (char *)table;
    m.ids = ids;
    m.n_ids = n;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.id = id;
    q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    q.lookup = &m;
    frame_req(b, &q);
}

static void create_table(int fd, const char *name, uint32_t dim)
{
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__HASH;
    tc.dim = dim;
    tc.rows = 64;
    Cqrps__V1__CreateTable ct = CQRPS__V1__CREATE_TABLE__INIT;
    ct.name = (char *)name;
    ct.config = &tc;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.id = 7;
    q.op_case = CQRPS__V1__REQUEST__OP_CREATE_TABLE;
    q.create_table = &ct;
    cqr_buf_t b;
    cqr_buf_init(&b);
    frame_req(&b, &q);
    write_all(fd, b.data, b.len);
    cqr_buf_free(&b);
    Response *r = read_resp(fd);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->id, 7);
    ck_assert_int_eq(r->status, 0);
    cqrps__v1__response__free_unpacked(r, NULL);
}

/* One describe round trip: the connection works. */
static void ping(int fd, const char *table)
{
    cqr_buf_t b;
    cqr_buf_init(&b);
    req_describe(&b, 99, table);
    write_all(fd, b.data, b.len);
    cqr_buf_free(&b);
    Response *r = read_resp(fd);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->id, 99);
    ck_assert_int_eq(r->status, 0);
    cqrps__v1__response__free_unpacked(r, NULL);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

START_TEST(test_pipelined_in_order)
{
    int fd = connect_client();
    create_table(fd, "t", 4);
    /* 1000 small requests in one write: more than one batch, so the
     * connection yields between batches; replies stay in order. */
    cqr_buf_t b;
    cqr_buf_init(&b);
    uint64_t ids[3] = {1, 2, 3};
    for (uint64_t i = 1; i <= 1000; i++) {
        if (i % 3 == 0)
            req_describe(&b, i, i % 2 ? "t" : "missing");
        else
            req_lookup(&b, i, "t", ids, 3);
    }
    write_all(fd, b.data, b.len);
    cqr_buf_free(&b);
    for (uint64_t i = 1; i <= 1000; i++) {
        Response *r = read_resp(fd);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->id, i);
        if (i % 3 == 0 && i % 2 == 0)
            ck_assert_int_eq(r->status, CQRPS__V1__STATUS__NOT_FOUND);
        else
            ck_assert_int_eq(r->status, 0);
        cqrps__v1__response__free_unpacked(r, NULL);
    }
    ck_assert_uint_gt(cqr_ctr_get(&ctx, CQR_CTR_yields), 0);
    close(fd);
}
END_TEST

START_TEST(test_byte_at_a_time)
{
    int fd = connect_client();
    create_table(fd, "t", 4);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    cqr_buf_t b;
    cqr_buf_init(&b);
    req_describe(&b, 5, "t");
    for (size_t i = 0; i < b.len; i++) {
        write_all(fd, b.data + i, 1);
        usleep(200);
    }
    cqr_buf_free(&b);
    Response *r = read_resp(fd);
    ck_assert_uint_eq(r->id, 5);
    ck_assert_int_eq(r->status, 0);
    cqrps__v1__response__free_unpacked(r, NULL);
    close(fd);
}
END_TEST

START_TEST(test_half_close)
{
    int fd = connect_client();
    create_table(fd, "t", 4);
    cqr_buf_t b;
    cqr_buf_init(&b);
    for (uint64_t i = 1; i <= 50; i++)
        req_describe(&b, i, "t");
    /* Plus half a frame, which is dropped at EOF. */
    write_all(fd, b.data, b.len);
    write_all(fd, b.data, 3);
    cqr_buf_free(&b);
    shutdown(fd, SHUT_WR);
    for (uint64_t i = 1; i <= 50; i++) {
        Response *r = read_resp(fd);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->id, i);
        cqrps__v1__response__free_unpacked(r, NULL);
    }
    ck_assert(at_eof(fd));
    close(fd);
}
END_TEST

START_TEST(test_malformed_closes_only_that_connection)
{
    int good = connect_client();
    create_table(good, "t", 4);
    int bad = connect_client();
    ping(bad, "t");
    /* A valid request, then junk, then another valid request that must
     * never be answered. */
    cqr_buf_t b;
    cqr_buf_init(&b);
    req_describe(&b, 1, "t");
    size_t mark;
    ck_assert_int_eq(cqr_frame_begin(&b, &mark), 0);
    ck_assert_int_eq(cqr_buf_reserve(&b, 3), 0);
    memcpy(b.data + b.len, "\x0a\x7f\x01", 3);
    b.len += 3;
    cqr_frame_end(&b, mark);
    req_describe(&b, 2, "t");
    write_all(bad, b.data, b.len);
    cqr_buf_free(&b);

    Response *r = read_resp(bad);
    ck_assert_uint_eq(r->id, 1);
    ck_assert_int_eq(r->status, 0);
    cqrps__v1__response__free_unpacked(r, NULL);
    r = read_resp(bad);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->id, 0);
    ck_assert_int_eq(r->status, CQRPS__V1__STATUS__MALFORMED);
    cqrps__v1__response__free_unpacked(r, NULL);
    ck_assert(at_eof(bad));
    close(bad);

    ping(good, "t");
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_closed_malformed), 1);
    close(good);
}
END_TEST

START_TEST(test_oversize_rejected)
{
    int good = connect_client();
    create_table(good, "t", 4);
    int bad = connect_client();
    /* Declares 512 MiB (over the 1 MiB limit) and keeps sending body
     * bytes: the reply still arrives (no reset), then EOF. */
    uint8_t h[4];
    cqr_frame_put_len(h, 512u << 20);
    write_all(bad, h, 4);
    uint8_t junk[4096];
    memset(junk, 0x55, sizeof junk);
    for (int i = 0; i < 16; i++)
        write_all(bad, junk, sizeof junk);
    Response *r = read_resp(bad);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->id, 0);
    ck_assert_int_eq(r->status, CQRPS__V1__STATUS__LIMIT_EXCEEDED);
    ck_assert_ptr_nonnull(strstr(r->message, "--max-frame-bytes"));
    cqrps__v1__response__free_unpacked(r, NULL);
    shutdown(bad, SHUT_WR); /* the server closes at our EOF */
    ck_assert(at_eof(bad));
    close(bad);
    ping(good, "t");
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_frames_oversize), 1);
    close(good);
}
END_TEST

START_TEST(test_connection_limit_refusal)
{
    int fd = connect_client_opt(1, 0);
    Response *r = read_resp(fd);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->status, CQRPS__V1__STATUS__LIMIT_EXCEEDED);
    ck_assert_ptr_nonnull(strstr(r->message, "--max-connections"));
    cqrps__v1__response__free_unpacked(r, NULL);
    ck_assert(at_eof(fd));
    close(fd);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_open), 0);
}
END_TEST

typedef struct sender {
    int fd;
    cqr_buf_t *b;
} sender_t;

static void *send_thread(void *arg)
{
    sender_t *s = arg;
    write_all(s->fd, s->b->data, s->b->len);
    return NULL;
}

START_TEST(test_backpressure_no_loss)
{
    /* A client that does not read while it sends 300 lookups with 128 KiB
     * replies: the server pauses the connection (soft limit 64 KiB),
     * never closes it, and every reply arrives in order once the client
     * reads. */
    int fd = connect_client_opt(0, 16 * 1024);
    create_table(fd, "wide", 128);
    uint64_t ids[256];
    for (int i = 0; i < 256; i++)
        ids[i] = (uint64_t)i;
    cqr_buf_t b;
    cqr_buf_init(&b);
    for (uint64_t i = 1; i <= 300; i++)
        req_lookup(&b, i, "wide", ids, 256);
    sender_t s = {fd, &b};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, send_thread, &s), 0);
    double t0 = now();
    while (cqr_ctr_get(&ctx, CQR_CTR_backpressure_pauses) == 0 &&
           now() - t0 < 10)
        usleep(1000);
    ck_assert_uint_gt(cqr_ctr_get(&ctx, CQR_CTR_backpressure_pauses), 0);
    for (uint64_t i = 1; i <= 300; i++) {
        Response *r = read_resp(fd);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->id, i);
        ck_assert_int_eq(r->status, 0);
        ck_assert_uint_eq(r->lookup->vectors.len, 256 * 128 * 4);
        cqrps__v1__response__free_unpacked(r, NULL);
    }
    pthread_join(th, NULL);
    cqr_buf_free(&b);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_closed_backpressure), 0);
    close(fd);
}
END_TEST

START_TEST(test_graceful_stop)
{
    int a = connect_client();
    create_table(a, "t", 4);
    int idle = connect_client();
    ping(idle, "t");
    /* Requests already sent are answered before the stop closes. */
    cqr_buf_t b;
    cqr_buf_init(&b);
    for (uint64_t i = 1; i <= 20; i++)
        req_describe(&b, i, "t");
    write_all(a, b.data, b.len);
    cqr_buf_free(&b);
    usleep(50 * 1000);
    double t0 = now();
    cqr_io_stop(io, 2000);
    io = NULL;
    ck_assert(now() - t0 < 3.0);
    for (uint64_t i = 1; i <= 20; i++) {
        Response *r = read_resp(a);
        ck_assert_ptr_nonnull(r);
        ck_assert_uint_eq(r->id, i);
        cqrps__v1__response__free_unpacked(r, NULL);
    }
    ck_assert(at_eof(a));
    ck_assert(at_eof(idle));
    close(a);
    close(idle);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_open), 0);
}
END_TEST

START_TEST(test_many_clients)
{
    enum { N = 24 };
    int fds[N];
    fds[0] = connect_client();
    create_table(fds[0], "t", 4);
    for (int i = 1; i < N; i++)
        fds[i] = connect_client();
    for (int round = 0; round < 5; round++)
        for (int i = 0; i < N; i++)
            ping(fds[i], "t");
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_open), N);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    double t0 = now();
    while (cqr_ctr_get(&ctx, CQR_CTR_conn_open) != 0 && now() - t0 < 10)
        usleep(1000);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_conn_open), 0);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("conn");
    TCase *tc = tcase_create("conn");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_pipelined_in_order);
    tcase_add_test(tc, test_byte_at_a_time);
    tcase_add_test(tc, test_half_close);
    tcase_add_test(tc, test_malformed_closes_only_that_connection);
    tcase_add_test(tc, test_oversize_rejected);
    tcase_add_test(tc, test_connection_limit_refusal);
    tcase_add_test(tc, test_backpressure_no_loss);
    tcase_add_test(tc, test_graceful_stop);
    tcase_add_test(tc, test_many_clients);
    suite_add_tcase(s, tc);
    return s;
}
