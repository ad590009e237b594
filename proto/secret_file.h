/* secret_file.h -- reading a secret (a token) from a file: the one reader
 * behind the server's --auth-token-file and --admin-token-file
 * (server/ops/auth.c) and the tools' --token-file (client/secret.c,
 * cqrps_secret_load).
 *
 * It lives in proto/ because the token file is part of the contract
 * between the server and its clients, like the schema: the same file must
 * mean the same secret to both. Both libraries link cqr_proto already;
 * the server must not link libcqrps, nor libcqrps the server.
 *
 * Format: a regular file (symlinks are followed: Kubernetes mounts
 * secrets through them; the checks look at the file opened); the secret
 * is its bytes after exactly one trailing newline ("\n" or "\r\n") is
 * stripped, any other byte (blanks, NUL) included; 1..CQR_SECRET_MAX
 * bytes.
 *
 * Rules: no messages and no logging here: the status says what went
 * wrong and each side words it (the server refuses a file that other
 * users can read, the tools load it and warn). Every buffer that held the
 * secret is wiped before it is released. Blocking I/O; thread-safe.
 */
#ifndef CQR_PROTO_SECRET_FILE_H
#define CQR_PROTO_SECRET_FILE_H

#include <stddef.h>

/* Longest secret, in bytes (the server's CQR_TOKEN_MAX and the client's
 * CQRPS_SECRET_MAX are this). */
#define CQR_SECRET_MAX 4096

/* What cqr_secret_read found, in the order it checks. */
typedef enum cqr_secret_status {
    CQR_SECRET_OK = 0,
    CQR_SECRET_OPEN,        /* open() failed (errno in err) */
    CQR_SECRET_STAT,        /* fstat() failed (errno in err) */
    CQR_SECRET_NOT_REGULAR, /* not a regular file */
    CQR_SECRET_EXPOSED,     /* the mode has a bit of refuse_mode */
    CQR_SECRET_READ,        /* read() failed (errno in err) */
    CQR_SECRET_EMPTY,       /* nothing left once the newline is gone */
    CQR_SECRET_TOO_LONG,    /* more than CQR_SECRET_MAX bytes */
    CQR_SECRET_NOMEM        /* no memory for the copy */
} cqr_secret_status_t;

typedef struct cqr_secret {
    char *data;    /* on OK: malloc'd, len bytes and a NUL (the caller
                      wipes and frees it); NULL otherwise */
    size_t len;    /* bytes of the secret */
    unsigned mode; /* permission bits (st_mode & 07777) of the file, once
                      fstat succeeded */
    int err;       /* errno of a failed open, fstat or read */
} cqr_secret_t;

/* Reads the secret at path into *out (every field set). A file whose
 * permission bits meet refuse_mode (e.g. S_IROTH | S_IWOTH) is refused
 * before it is read; 0 refuses nothing. */
cqr_secret_status_t cqr_secret_read(const char *path, unsigned refuse_mode,
                                    cqr_secret_t *out);

/* Zeroes n bytes at p in a way the compiler cannot drop. */
void cqr_secret_wipe(void *p, size_t n);

#endif
