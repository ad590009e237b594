/* rawwire.c -- see rawwire.h. */
#include "rawwire.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

uint64_t rw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int rw_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void rw_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    ck_assert_int_ge(fl, 0);
    ck_assert_int_eq(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

void rw_set_rcvbuf(int fd, int bytes)
{
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

int rw_write_all(int fd, const void *p, size_t n)
{
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t w = send(fd, q, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        q += w;
        n -= (size_t)w;
    }
    return 0;
}

void rw_frame(cqr_buf_t *b, rw_request_t *q, uint64_t id)
{
    q->id = id;
    size_t mark;
    ck_assert_int_eq(cqr_frame_begin(b, &mark), 0);
    size_t n = cqrps__v1__request__get_packed_size(q);
    ck_assert_int_eq(cqr_buf_reserve(b, n), 0);
    cqrps__v1__request__pack(q, b->data + b->len);
    b->len += n;
    cqr_frame_end(b, mark);
}

void rw_hello(cqr_buf_t *b, uint64_t id, const char *token,
              const char *admin_token)
{
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = 1;
    if (token != NULL) {
        h.token.data = (uint8_t *)token;
        h.token.len = strlen(token);
    }
    if (admin_token != NULL) {
        h.admin_token.data = (uint8_t *)admin_token;
        h.admin_token.len = strlen(admin_token);
    }
    h.client_name = (char *)"rawwire";
    rw_request_t q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    q.hello = &h;
    rw_frame(b, &q, id);
}

void rw_create(cqr_buf_t *b, uint64_t id, const char *name,
               Cqrps__V1__TableKind kind, uint32_t dim, uint32_t rows)
{
    Cqrps__V1__OptimizerConfig oc = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    oc.kind = CQRPS__V1__OPTIMIZER__SGD;
    oc.lr = 0.5f;
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = kind;
    tc.dim = dim;
    tc.rows = rows;
    tc.seed = 11;
    tc.optimizer = &oc;
    Cqrps__V1__CreateTable m = CQRPS__V1__CREATE_TABLE__INIT;
    m.name = (char *)name;
    m.config = &tc;
    rw_request_t q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_CREATE_TABLE;
    q.create_table = &m;
    rw_frame(b, &q, id);
}

void rw_lookup(cqr_buf_t *b, uint64_t id, const char *table,
               const uint64_t *ids, size_t n)
{
    Cqrps__V1__Lookup m = CQRPS__V1__LOOKUP__INIT;
    m.table = (char *)table;
    m.ids = (uint64_t *)ids;
    m.n_ids = n;
    rw_request_t q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    q.lookup = &m;
    rw_frame(b, &q, id);
}

void rw_push(cqr_buf_t *b, uint64_t id, const char *table,
             const uint64_t *ids, size_t n, const float *grads, uint32_t dim)
{
    Cqrps__V1__Push m = CQRPS__V1__PUSH__INIT;
    m.table = (char *)table;
    m.ids = (uint64_t *)ids;
    m.n_ids = n;
    m.grads.data = (uint8_t *)grads;
    m.grads.len = n * dim * sizeof(float);
    rw_request_t q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    q.push = &m;
    rw_frame(b, &q, id);
}

void rw_list(cqr_buf_t *b, uint64_t id)
{
    Cqrps__V1__ListTables m = CQRPS__V1__LIST_TABLES__INIT;
    rw_request_t q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_LIST_TABLES;
    q.list_tables = &m;
    rw_frame(b, &q, id);
}

/* Reads exactly n bytes before the deadline: 1, 0 on EOF/error, -1 on
 * timeout. */
static int read_n(int fd, uint8_t *p, size_t n, uint64_t deadline)
{
    while (n > 0) {
        uint64_t now = rw_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return -1;
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            return 0;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

/* Once a reply has begun to arrive, the rest gets this long: a timeout in
 * the middle of a frame would lose the stream's framing. */
#define REST_OF_FRAME_MS 10000

rw_response_t *rw_read(int fd, int timeout_ms, int *eof)
{
    if (eof)
        *eof = 0;
    /* Wait for the first byte without consuming anything. */
    uint64_t deadline = rw_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = rw_now_ms();
        if (now >= deadline)
            return NULL;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return NULL;
        break;
    }
    deadline = rw_now_ms() + REST_OF_FRAME_MS;
    uint8_t hdr[4];
    int rc = read_n(fd, hdr, 4, deadline);
    if (rc <= 0) {
        if (eof)
            *eof = rc == 0;
        return NULL;
    }
    uint32_t len = cqr_frame_get_len(hdr);
    ck_assert_uint_le(len, 1u << 30);
    uint8_t *body = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(body);
    rc = read_n(fd, body, len, deadline);
    if (rc <= 0) {
        free(body);
        if (eof)
            *eof = rc == 0;
        return NULL;
    }
    rw_response_t *r = cqrps__v1__response__unpack(NULL, len, body);
    free(body);
    ck_assert_ptr_nonnull(r);
    return r;
}

void rw_free(rw_response_t *r)
{
    if (r != NULL)
        cqrps__v1__response__free_unpacked(r, NULL);
}

rw_response_t *rw_call(int fd, cqr_buf_t *b, int timeout_ms)
{
    /* Count the frames first: every one gets one reply. */
    size_t nframes = 0;
    for (size_t off = 0; off + 4 <= b->len;
         off += 4 + cqr_frame_get_len(b->data + off))
        nframes++;
    if (rw_write_all(fd, b->data, b->len) != 0)
        return NULL;
    b->len = 0;
    rw_response_t *last = NULL;
    for (size_t i = 0; i < nframes; i++) {
        rw_free(last);
        last = rw_read(fd, timeout_ms, NULL);
        if (last == NULL)
            return NULL;
        if (i + 1 < nframes)
            ck_assert_msg(last->status == 0, "status %d: %s",
                          (int)last->status, last->message);
    }
    return last;
}

int rw_wait_closed(int fd, int timeout_ms)
{
    uint64_t deadline = rw_now_ms() + (uint64_t)timeout_ms;
    uint8_t buf[4096];
    for (;;) {
        uint64_t now = rw_now_ms();
        if (now >= deadline)
            return 0;
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return 0;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            return 1;
    }
}
