/* notify.c -- sd_notify over a unix datagram socket (see notify.h). */
#include "ops/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "engine/err.h"

int cqr_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 1;
    size_t plen = strlen(path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    /* Only absolute paths and abstract names are valid (as in
     * libsystemd); anything else is a misconfiguration. */
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sa.sun_path)
        return CQR_EIO;
    memcpy(sa.sun_path, path, plen);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: leading NUL, no terminator */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                  plen + (path[0] == '@' ? 0 : 1));

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return CQR_EIO;
    size_t len = strlen(state);
    ssize_t n;
    do {
        n = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&sa,
                   salen);
    } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : CQR_EIO;
}

uint64_t cqr_notify_watchdog_usec(void)
{
    const char *us = getenv("WATCHDOG_USEC");
    if (us == NULL || us[0] == '\0')
        return 0;
    const char *pid = getenv("WATCHDOG_PID");
    if (pid != NULL && pid[0] != '\0' &&
        strtoll(pid, NULL, 10) != (long long)getpid())
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(us, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    return (uint64_t)v;
}
