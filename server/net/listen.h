/* listen.h -- listening TCP sockets and printable socket addresses.
 *
 * The one getaddrinfo/bind/listen path of the daemon: the client
 * listener (main.c) and the metrics endpoint (metrics.c) both open their
 * sockets here, and every address the server logs or prints ("listening
 * on", a connection's peer) is formatted by cqr_format_addr.
 *
 * Ownership: cqr_listen_open hands the socket to the caller, who closes
 * it (or gives it to something that does, like libmicrohttpd).
 *
 * Errors: 0 or a negative CQR_E* code (err.h). The system's reason goes
 * to the caller's buffer or errno, so that each caller writes its own log
 * line naming its own flag.
 *
 * Threading: none; plain functions over sockets, safe from any thread.
 */
#ifndef CQR_LISTEN_H
#define CQR_LISTEN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Options of cqr_listen_open. */
#define CQR_LISTEN_V6ONLY 1u    /* an IPv6 socket takes IPv6 only */
/* There is deliberately no SO_REUSEPORT: with it, a second process bound
 * to a busy port would share it instead of failing. */

/* Resolves host and port (host numeric or a name, port numeric; 0 picks
 * a free port) and returns in *fd a non-blocking, close-on-exec TCP
 * socket (SO_REUSEADDR, plus `flags`) bound to the first address that
 * binds, listening with a backlog of SOMAXCONN. Errors: CQR_EINVAL when
 * host:port does not resolve (why: the resolver's message), CQR_EIO when
 * no address could be bound and listened on (why: strerror of the last
 * failure). */
int cqr_listen_open(const char *host, uint16_t port, unsigned flags,
                    int *fd, char *why, size_t whylen);

/* Formats the local address of socket fd into buf (the real port when 0
 * was asked). 0, or CQR_EIO when getsockname fails (errno says why). */
int cqr_listen_addr(int fd, char *buf, size_t len);

/* "1.2.3.4:5" or "[::1]:5" for an IPv4/IPv6 socket address, "unknown"
 * for any other family. */
void cqr_format_addr(const struct sockaddr *sa, char *buf, size_t len);

#endif
