/* test_client_proto.c -- libcqrps against a scripted peer that misbehaves.
 *
 * The real server never sends a wrong reply id, a truncated reply, a
 * corrupt length prefix or a vector block of the wrong size, so those
 * client paths are driven here by a small scripted peer on a loopback
 * socket: it accepts connections, answers Hello, and answers each request
 * as the test's script says. Every failure must become a typed error on
 * the call (never a crash, a hang or a wrong output), and the client must
 * reconnect for the next call. No cqrps-server is involved.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "testutil.h"
#include "check_main.h"

/* What the peer does with the request after Hello (and after a Describe,
 * which it always answers with a table of dim PEER_DIM). */
typedef enum action {
    A_OK,            /* a correct lookup reply */
    A_TRUNCATE,      /* half of a large lookup reply, then close */
    A_WRONG_ID,      /* a correct reply with another id */
    A_HUGE_LENGTH,   /* a length prefix of 2 GiB */
    A_GARBAGE,       /* a frame that is not a Response */
    A_WRONG_DIM,     /* vectors of another dim */
    A_SHORT_VECTORS, /* one row too few */
    A_UNSOLICITED,   /* answer, then send an extra frame while idle */
    A_SILENT         /* read the request, never answer */
} action_t;

#define PEER_DIM 16

typedef struct peer {
    int lfd;                 /* listening socket */
    uint16_t port;
    char addr[64];
    pthread_t th;
    action_t action;         /* for lookups */
    uint32_t hello_version;  /* protocol version to claim */
    int hello_status;        /* status of the Hello reply */
    atomic_int connections;  /* accepted so far */
    atomic_int stop;         /* set by the test to end the peer */
} peer_t;

static int read_full(int fd, void *p, size_t len)
{
    char *c = p;
    while (len > 0) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (poll(&pfd, 1, 5000) <= 0)
            return -1;
        ssize_t n = recv(fd, c, len, 0);
        if (n <= 0)
            return -1;
        c += n;
        len -= (size_t)n;
    }
    return 0;
}

static void write_full(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t n = send(fd, c, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        c += n;
        len -= (size_t)n;
    }
}

static void send_resp(int fd, Cqrps__V1__Response *r, size_t cut)
{
    size_t len = cqrps__v1__response__get_packed_size(r);
    unsigned char *b = malloc(len + 4);
    b[0] = len >> 24;
    b[1] = len >> 16;
    b[2] = len >> 8;
    b[3] = len;
    cqrps__v1__response__pack(r, b + 4);
    write_full(fd, b, cut ? cut : len + 4);
    free(b);
}

static void serve(peer_t *p, int fd)
{
    for (;;) {
        unsigned char h[4];
        if (read_full(fd, h, 4) < 0)
            return;
        uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
                       (uint32_t)h[2] << 8 | h[3];
        unsigned char *body = malloc(len ? len : 1);
        if (read_full(fd, body, len) < 0) {
            free(body);
            return;
        }
        Cqrps__V1__Request *q = cqrps__v1__request__unpack(NULL, len, body);
        free(body);
        if (!q)
            return;
        Cqrps__V1__Response r = CQRPS__V1__RESPONSE__INIT;
        r.id = q->id;
        if (q->op_case == CQRPS__V1__REQUEST__OP_HELLO) {
            Cqrps__V1__HelloReply hr = CQRPS__V1__HELLO_REPLY__INIT;
            hr.protocol_version = p->hello_version;
            hr.server_version = "fake";
            hr.max_frame_bytes = 64u << 20;
            hr.max_batch = 1u << 20;
            r.status = (Cqrps__V1__Status)p->hello_status;
            if (p->hello_status) {
                r.message = "bad token";
            } else {
                r.reply_case = CQRPS__V1__RESPONSE__REPLY_HELLO;
                r.hello = &hr;
            }
            send_resp(fd, &r, 0);
        } else if (q->op_case == CQRPS__V1__REQUEST__OP_DESCRIBE_TABLE) {
            Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
            tc.dim = PEER_DIM;
            Cqrps__V1__TableInfo ti = CQRPS__V1__TABLE_INFO__INIT;
            ti.name = q->describe_table->name;
            ti.config = &tc;
            r.reply_case = CQRPS__V1__RESPONSE__REPLY_TABLE;
            r.table = &ti;
            send_resp(fd, &r, 0);
        } else if (q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP) {
            size_t n = q->lookup->n_ids;
            size_t rows = p->action == A_SHORT_VECTORS ? n - 1 : n;
            uint32_t dim = p->action == A_WRONG_DIM ? PEER_DIM + 1 : PEER_DIM;
            float *v = calloc(rows * dim, sizeof(float));
            for (size_t i = 0; i < rows * dim; i++)
                v[i] = (float)(i % 977);
            Cqrps__V1__LookupReply lr = CQRPS__V1__LOOKUP_REPLY__INIT;
            lr.dim = dim;
            lr.vectors.data = (uint8_t *)v;
            lr.vectors.len = rows * dim * sizeof(float);
            r.reply_case = CQRPS__V1__RESPONSE__REPLY_LOOKUP;
            r.lookup = &lr;
            if (p->action == A_WRONG_ID)
                r.id += 7;
            switch (p->action) {
            case A_TRUNCATE:
                send_resp(fd, &r, 4 + lr.vectors.len / 2);
                free(v);
                cqrps__v1__request__free_unpacked(q, NULL);
                return; /* and close */
            case A_HUGE_LENGTH: {
                unsigned char big[8] = { 0x80, 0, 0, 0, 1, 2, 3, 4 };
                write_full(fd, big, sizeof(big));
                break;
            }
            case A_GARBAGE: {
                unsigned char junk[12] = { 0, 0, 0, 8, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff };
                write_full(fd, junk, sizeof(junk));
                break;
            }
            case A_SILENT:
                break;
            default:
                send_resp(fd, &r, 0);
                if (p->action == A_UNSOLICITED) {
                    r.id = 424242;
                    send_resp(fd, &r, 0);
                }
            }
            free(v);
        } else {
            r.status = CQRPS__V1__STATUS__UNSUPPORTED;
            r.message = "fake peer";
            send_resp(fd, &r, 0);
        }
        cqrps__v1__request__free_unpacked(q, NULL);
    }
}

static void *peer_main(void *arg)
{
    peer_t *p = arg;
    while (!atomic_load(&p->stop)) {
        struct pollfd pfd = { p->lfd, POLLIN, 0 };
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int fd = accept(p->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&p->connections, 1);
        serve(p, fd);
        close(fd);
    }
    return NULL;
}

static void peer_start(peer_t *p, action_t a)
{
    memset(p, 0, sizeof(*p));
    p->action = a;
    p->hello_version = 1;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(p->lfd, 8), 0);
    socklen_t sl = sizeof(sa);
    getsockname(p->lfd, (struct sockaddr *)&sa, &sl);
    p->port = ntohs(sa.sin_port);
    snprintf(p->addr, sizeof(p->addr), "127.0.0.1:%u", p->port);
    ck_assert_int_eq(pthread_create(&p->th, NULL, peer_main, p), 0);
}

static void peer_stop(peer_t *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->th, NULL);
    close(p->lfd);
}

/* One lookup of n IDs through the peer with action a; returns the code
 * and leaves the message in msg. */
static int lookup_through(action_t a, size_t n, char *msg, size_t msglen,
                          int *connections)
{
    peer_t p;
    peer_start(&p, a);
    cqrps_options_t opt;
    cqrps_options_init(&opt);
    opt.request_timeout_ms = 500;
    cqrps_client_t *c = NULL;
    ck_assert_int_eq(cqrps_connect(p.addr, &opt, &c), 0);
    uint64_t *ids = calloc(n, sizeof(*ids));
    float *out = malloc((n + 1) * PEER_DIM * sizeof(float));
    /* A guard row after the output: nothing may be written there. */
    for (size_t i = 0; i < PEER_DIM; i++)
        out[n * PEER_DIM + i] = -1.0f;
    int rc = cqrps_lookup(c, "t", ids, n, out);
    for (size_t i = 0; i < PEER_DIM; i++)
        ck_assert(out[n * PEER_DIM + i] == -1.0f);
    if (rc == 0)
        for (size_t i = 0; i < n * PEER_DIM; i++)
            ck_assert(out[i] == (float)(i % 977));
    snprintf(msg, msglen, "%s", cqrps_last_error(c));
    /* Whatever happened, the client is still usable and closes cleanly. */
    cqrps_close(c);
    peer_stop(&p);
    if (connections)
        *connections = atomic_load(&p.connections);
    free(ids);
    free(out);
    return rc;
}

START_TEST(test_good_peer_small_and_large)
{
    char msg[512];
    ck_assert_int_eq(lookup_through(A_OK, 10, msg, sizeof(msg), NULL), 0);
    /* Large enough for the direct receive into the output. */
    ck_assert_int_eq(lookup_through(A_OK, 50000, msg, sizeof(msg), NULL), 0);
}
END_TEST

START_TEST(test_truncated_reply)
{
    char msg[512];
    int conns = 0;
    /* Small (buffered) and large (direct receive) replies cut short. The
     * lookup is retried once after the lost connection, so the peer sees
     * two connections and the call still fails. */
    ck_assert_int_eq(lookup_through(A_TRUNCATE, 10, msg, sizeof(msg), &conns),
                     CQRPS_ECONN);
    ck_assert_ptr_nonnull(strstr(msg, "127.0.0.1:"));
    ck_assert_int_eq(conns, 2);
    ck_assert_int_eq(lookup_through(A_TRUNCATE, 50000, msg, sizeof(msg),
                                    NULL),
                     CQRPS_ECONN);
}
END_TEST

START_TEST(test_protocol_violations)
{
    char msg[512];
    const action_t bad[] = { A_WRONG_ID, A_HUGE_LENGTH, A_GARBAGE,
                             A_SHORT_VECTORS };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (size_t n = 10; n <= 50000; n += 49990) {
            int rc = lookup_through(bad[i], n, msg, sizeof(msg), NULL);
            ck_assert_msg(rc == CQRPS_EPROTO, "action %d n %zu: %s (%s)",
                          (int)bad[i], n, cqrps_errname(rc), msg);
        }
    }
    ck_assert_int_eq(lookup_through(A_WRONG_DIM, 10, msg, sizeof(msg), NULL),
                     CQRPS_EDIM);
    ck_assert_ptr_nonnull(strstr(msg, "dim 17"));
    ck_assert_int_eq(
        lookup_through(A_WRONG_DIM, 50000, msg, sizeof(msg), NULL),
        CQRPS_EDIM);
    ck_assert_int_eq(lookup_through(A_SILENT, 10, msg, sizeof(msg), NULL),
                     CQRPS_ETIMEDOUT);
    ck_assert_ptr_nonnull(strstr(msg, "500 ms"));
}
END_TEST

START_TEST(test_unsolicited_frame_means_reconnect)
{
    peer_t p;
    peer_start(&p, A_UNSOLICITED);
    cqrps_client_t *c = NULL;
    ck_assert_int_eq(cqrps_connect(p.addr, NULL, &c), 0);
    uint64_t ids[4] = { 1, 2, 3, 4 };
    float out[4 * PEER_DIM];
    ck_assert_int_eq(cqrps_lookup(c, "t", ids, 4, out), 0);
    tu_sleep_ms(50); /* the extra frame arrives while the client is idle */
    /* The next call sees a stream it cannot trust and starts a new one;
     * the peer serves one connection at a time, so close the first. */
    ck_assert_int_eq(cqrps_lookup(c, "t", ids, 4, out), 0);
    ck_assert_int_eq(atomic_load(&p.connections), 2);
    cqrps_close(c);
    peer_stop(&p);
}
END_TEST

START_TEST(test_hello_failures)
{
    peer_t p;
    cqrps_client_t *c = (cqrps_client_t *)&p; /* must be reset to NULL */
    peer_start(&p, A_OK);
    p.hello_version = 2;
    ck_assert_int_eq(cqrps_connect(p.addr, NULL, &c), CQRPS_EVERSION);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(NULL), "protocol 2"));
    peer_stop(&p);

    peer_start(&p, A_OK);
    p.hello_status = CQRPS__V1__STATUS__UNAUTHENTICATED;
    cqrps_options_t opt;
    cqrps_options_init(&opt);
    opt.token = "secret";
    opt.token_len = 6;
    ck_assert_int_eq(cqrps_connect(p.addr, &opt, &c), CQRPS_EAUTH);
    ck_assert_ptr_nonnull(strstr(cqrps_last_error(NULL), "bad token"));
    peer_stop(&p);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_proto");
    TCase *tc = tcase_create("proto");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_good_peer_small_and_large);
    tcase_add_test(tc, test_truncated_reply);
    tcase_add_test(tc, test_protocol_violations);
    tcase_add_test(tc, test_unsolicited_frame_means_reconnect);
    tcase_add_test(tc, test_hello_failures);
    suite_add_tcase(s, tc);
    return s;
}
