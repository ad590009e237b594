/* secret.c -- tokens from files or the environment (cqrps_secret_load).
 *
 * The tools' single way to obtain a token, so the CLI, the trainer, the
 * benchmark and the Python client agree: a file (trailing newline
 * stripped) wins over the environment variable; nothing on the command
 * line itself. The file is read by the reader the server uses too
 * (proto/secret_file.h); only the wording and the leniency (a warning
 * where the server refuses) are the tools' own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cqrps.h"
#include "proto/secret_file.h"

_Static_assert(CQRPS_SECRET_MAX == CQR_SECRET_MAX,
               "the tools read tokens with the shared reader");

void cqrps_secret_free(char *secret, size_t len)
{
    if (secret == NULL)
        return;
    cqr_secret_wipe(secret, len + 1);
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

/* The shared reader (proto/secret_file.h) in the tools' words: a file
 * that other users can read is loaded, with a warning in msg. */
static int load_file(const char *path, char **out, size_t *len, char *msg,
                     size_t msglen)
{
    cqr_secret_t sec;
    switch (cqr_secret_read(path, 0, &sec)) {
    case CQR_SECRET_OK:
        *out = sec.data;
        *len = sec.len;
        if ((sec.mode & (S_IROTH | S_IWOTH)) != 0)
            snprintf(msg, msglen, "warning: token file '%s' is accessible "
                     "by other users (mode %04o); chmod 600 it", path,
                     sec.mode);
        return 0;
    case CQR_SECRET_OPEN:
        snprintf(msg, msglen, "cannot open token file '%s': %s", path,
                 strerror(sec.err));
        return CQRPS_EIO;
    case CQR_SECRET_STAT:
    case CQR_SECRET_NOT_REGULAR:
    case CQR_SECRET_EXPOSED: /* not asked for */
        snprintf(msg, msglen, "token file '%s' is not a regular file",
                 path);
        return CQRPS_EINVAL;
    case CQR_SECRET_READ:
        snprintf(msg, msglen, "cannot read token file '%s': %s", path,
                 strerror(sec.err));
        return CQRPS_EIO;
    case CQR_SECRET_EMPTY:
        snprintf(msg, msglen, "token file '%s' is empty", path);
        return CQRPS_EINVAL;
    case CQR_SECRET_TOO_LONG:
        snprintf(msg, msglen, "token file '%s' holds more than %d bytes",
                 path, CQRPS_SECRET_MAX);
        return CQRPS_EINVAL;
    case CQR_SECRET_NOMEM:
        snprintf(msg, msglen, "out of memory");
        return CQRPS_ENOMEM;
    }
    snprintf(msg, msglen, "cannot read token file '%s'", path);
    return CQRPS_EINTERNAL; /* not reached: every status is handled */
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
