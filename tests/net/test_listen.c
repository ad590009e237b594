/* The listen helper (server/net/listen.c): a socket on 127.0.0.1 port 0
 * is bound, listening, non-blocking and close-on-exec, and reports its
 * real port; a client can connect to it; the options are set; addresses
 * format as the logs show them; failures come back as the documented
 * codes with a reason. (Resolving a name is getaddrinfo's: not tested
 * here, so that no suite depends on DNS.) */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/err.h"
#include "net/listen.h"
#include "check_main.h"

/* The port of a formatted "host:port" address. */
static unsigned port_of(const char *addr)
{
    const char *c = strrchr(addr, ':');
    ck_assert_ptr_nonnull(c);
    return (unsigned)strtoul(c + 1, NULL, 10);
}

static int sockopt(int fd, int level, int name)
{
    int v = -1;
    socklen_t l = sizeof v;
    ck_assert_int_eq(getsockopt(fd, level, name, &v, &l), 0);
    return v;
}

START_TEST(test_open_loopback)
{
    char why[128] = "", addr[64];
    int fd = -1;
    ck_assert_int_eq(cqr_listen_open("127.0.0.1", 0, 0, &fd, why,
                                     sizeof why), 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(cqr_listen_addr(fd, addr, sizeof addr), 0);
    ck_assert_int_eq(strncmp(addr, "127.0.0.1:", 10), 0);
    unsigned port = port_of(addr);
    ck_assert_uint_gt(port, 0);
    ck_assert(fcntl(fd, F_GETFL) & O_NONBLOCK);
    ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    ck_assert_int_eq(sockopt(fd, SOL_SOCKET, SO_ACCEPTCONN), 1);
    ck_assert_int_ne(sockopt(fd, SOL_SOCKET, SO_REUSEADDR), 0);
    ck_assert_int_eq(sockopt(fd, SOL_SOCKET, SO_REUSEPORT), 0);

    /* A client gets through to the reported port. */
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(c, (struct sockaddr *)&sa, sizeof sa), 0);
    close(c);

    /* The same port again, without SO_REUSEPORT: in use. */
    int fd2 = -1;
    ck_assert_int_eq(cqr_listen_open("127.0.0.1", (uint16_t)port, 0, &fd2,
                                     why, sizeof why), CQR_EIO);
    ck_assert_str_eq(why, strerror(EADDRINUSE));
    close(fd);
}
END_TEST

START_TEST(test_flags)
{
    char why[128], addr[64];
    int fd = -1;
    ck_assert_int_eq(cqr_listen_open("127.0.0.1", 0, CQR_LISTEN_V6ONLY,
                                     &fd, why, sizeof why), 0);
    /* Never SO_REUSEPORT (issue 14): a second listener on a busy port,
     * whatever its flags, fails instead of sharing the port. */
    ck_assert_int_eq(sockopt(fd, SOL_SOCKET, SO_REUSEPORT), 0);
    ck_assert_int_eq(cqr_listen_addr(fd, addr, sizeof addr), 0);
    int fd2 = -1;
    ck_assert_int_eq(cqr_listen_open("127.0.0.1", (uint16_t)port_of(addr),
                                     CQR_LISTEN_V6ONLY, &fd2, why,
                                     sizeof why), CQR_EIO);
    ck_assert_str_eq(why, strerror(EADDRINUSE));
    close(fd);
}
END_TEST

START_TEST(test_errors)
{
    char why[128] = "";
    int fd = -1;
    /* An address that is not this host's (TEST-NET-1) cannot be bound. */
    ck_assert_int_eq(cqr_listen_open("192.0.2.1", 0, 0, &fd, why,
                                     sizeof why), CQR_EIO);
    ck_assert_str_eq(why, strerror(EADDRNOTAVAIL));
    ck_assert_int_eq(fd, -1);
    char addr[64];
    ck_assert_int_eq(cqr_listen_addr(-1, addr, sizeof addr), CQR_EIO);
}
END_TEST

/* cqr_format_addr of the numeric address `host` (IPv4 or IPv6). */
static void format(const char *host, uint16_t port, char *buf, size_t len)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
    } else {
        ck_assert_int_eq(inet_pton(AF_INET6, host, &a6->sin6_addr), 1);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
    }
    cqr_format_addr((struct sockaddr *)&ss, buf, len);
}

START_TEST(test_format)
{
    char buf[64];
    format("10.1.2.3", 7070, buf, sizeof buf);
    ck_assert_str_eq(buf, "10.1.2.3:7070");
    format("::1", 9100, buf, sizeof buf);
    ck_assert_str_eq(buf, "[::1]:9100");
    format("fe80::1:2", 1, buf, sizeof buf);
    ck_assert_str_eq(buf, "[fe80::1:2]:1");
    struct sockaddr other;
    memset(&other, 0, sizeof other);
    other.sa_family = AF_UNIX;
    cqr_format_addr(&other, buf, sizeof buf);
    ck_assert_str_eq(buf, "unknown");
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("listen");
    TCase *tc = tcase_create("listen");
    tcase_add_test(tc, test_open_loopback);
    tcase_add_test(tc, test_flags);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_format);
    suite_add_tcase(s, tc);
    return s;
}
