/* secret.c -- tokens from files or the environment (cqrps_secret_load).
 *
 * The tools' single way to obtain a token, so the CLI, the trainer, the
 * benchmark and the Python client agree: a file (trailing newline
 * stripped) wins over the environment variable; nothing on the command
 * line itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cqrps.h"

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    for (size_t i = 0; i < n; i++)
        v[i] = 0;
}

void cqrps_secret_free(char *secret, size_t len)
{
    if (secret == NULL)
        return;
    wipe(secret, len + 1);
    free(secret);
}

/* Copies n bytes of src into a fresh NUL-terminated buffer. */
static int dup_secret(const char *src, size_t n, char **out, size_t *len)
{
    char *p = malloc(n + 1);
    if (p == NULL)
        return CQRPS_ENOMEM;
    memcpy(p, src, n);
    p[n] = '\0';
    *out = p;
    *len = n;
    return 0;
}

static int load_file(const char *path, char **out, size_t *len, char *msg,
                     size_t msglen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(msg, msglen, "cannot open token file '%s': %s", path,
                 strerror(errno));
        return CQRPS_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(msg, msglen, "token file '%s' is not a regular file",
                 path);
        close(fd);
        return CQRPS_EINVAL;
    }
    /* Room for the limit, a CRLF, and one byte to detect "too long". */
    char buf[CQRPS_SECRET_MAX + 3];
    size_t n = 0;
    while (n < sizeof buf) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(msg, msglen, "cannot read token file '%s': %s", path,
                     strerror(errno));
            close(fd);
            wipe(buf, sizeof buf);
            return CQRPS_EIO;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
    }
    int rc = 0;
    if (n == 0) {
        snprintf(msg, msglen, "token file '%s' is empty", path);
        rc = CQRPS_EINVAL;
    } else if (n > CQRPS_SECRET_MAX) {
        snprintf(msg, msglen, "token file '%s' holds more than %d bytes",
                 path, CQRPS_SECRET_MAX);
        rc = CQRPS_EINVAL;
    } else {
        rc = dup_secret(buf, n, out, len);
        if (rc != 0)
            snprintf(msg, msglen, "out of memory");
        else if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0)
            snprintf(msg, msglen, "warning: token file '%s' is accessible "
                     "by other users (mode %04o); chmod 600 it", path,
                     (unsigned)(st.st_mode & 07777));
    }
    wipe(buf, sizeof buf);
    return rc;
}

int cqrps_secret_load(const char *path, const char *env, char **out,
                      size_t *len, char *msg, size_t msglen)
{
    char dummy[1];
    if (msg == NULL || msglen == 0) {
        msg = dummy;
        msglen = sizeof dummy;
    }
    msg[0] = '\0';
    if (out == NULL || len == NULL) {
        snprintf(msg, msglen, "no place for the secret");
        return CQRPS_EINVAL;
    }
    *out = NULL;
    *len = 0;
    if (path != NULL)
        return load_file(path, out, len, msg, msglen);
    const char *v = env != NULL ? getenv(env) : NULL;
    if (v == NULL || v[0] == '\0')
        return 0;
    size_t n = strlen(v);
    if (n > CQRPS_SECRET_MAX) {
        snprintf(msg, msglen, "$%s holds more than %d bytes", env,
                 CQRPS_SECRET_MAX);
        return CQRPS_EINVAL;
    }
    int rc = dup_secret(v, n, out, len);
    if (rc != 0)
        snprintf(msg, msglen, "out of memory");
    return rc;
}
