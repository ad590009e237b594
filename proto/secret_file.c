/* secret_file.c -- the token-file reader of server and tools (see the
 * header for the format and the rules). */
#include "proto/secret_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void cqr_secret_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    for (size_t i = 0; i < n; i++)
        v[i] = 0;
}

/* Reads up to cap bytes of fd into buf; *n is set to the bytes read.
 * Returns 0 or the errno of a failed read. */
static int read_all(int fd, char *buf, size_t cap, size_t *n)
{
    *n = 0;
    while (*n < cap) {
        ssize_t r = read(fd, buf + *n, cap - *n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        if (r == 0)
            break;
        *n += (size_t)r;
    }
    return 0;
}

/* Checks the opened file and reads the secret into buf (cap bytes);
 * *n is the secret's length, newline stripped. */
static cqr_secret_status_t read_fd(int fd, unsigned refuse_mode, char *buf,
                                   size_t cap, size_t *n, cqr_secret_t *out)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        out->err = errno;
        return CQR_SECRET_STAT;
    }
    out->mode = (unsigned)(st.st_mode & 07777);
    if (!S_ISREG(st.st_mode))
        return CQR_SECRET_NOT_REGULAR;
    if ((out->mode & refuse_mode) != 0)
        return CQR_SECRET_EXPOSED;
    out->err = read_all(fd, buf, cap, n);
    if (out->err != 0)
        return CQR_SECRET_READ;
    /* Exactly one trailing newline goes (what `echo` and editors add);
     * any other byte, blanks included, is part of the secret. */
    if (*n > 0 && buf[*n - 1] == '\n') {
        (*n)--;
        if (*n > 0 && buf[*n - 1] == '\r')
            (*n)--;
    }
    if (*n == 0)
        return CQR_SECRET_EMPTY;
    if (*n > CQR_SECRET_MAX)
        return CQR_SECRET_TOO_LONG;
    return CQR_SECRET_OK;
}

cqr_secret_status_t cqr_secret_read(const char *path, unsigned refuse_mode,
                                    cqr_secret_t *out)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        out->err = errno;
        return CQR_SECRET_OPEN;
    }
    /* Room for the limit, a CRLF, and one byte to tell "too long". */
    char buf[CQR_SECRET_MAX + 3];
    size_t n = 0;
    cqr_secret_status_t st = read_fd(fd, refuse_mode, buf, sizeof buf, &n,
                                     out);
    close(fd);
    if (st == CQR_SECRET_OK) {
        out->data = malloc(n + 1);
        if (out->data == NULL) {
            st = CQR_SECRET_NOMEM;
        } else {
            memcpy(out->data, buf, n);
            out->data[n] = '\0';
            out->len = n;
        }
    }
    cqr_secret_wipe(buf, sizeof buf);
    return st;
}
