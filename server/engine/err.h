/* err.h -- the one error enum of cqrps.
 *
 * Rules: 0 is success, every failure is a negative CQR_E* value. The wire
 * status code of a response is the negated value (0 = OK, 3 = NOT_FOUND,
 * ...), so proto/cqrps.proto's Status enum maps one to one onto this table.
 * Never renumber an entry: the numbers are on the wire. Add new ones at the
 * end. cqr_strerror() never returns NULL.
 *
 * Threading: pure functions; the strings they return are static.
 */
#ifndef CQR_ERR_H
#define CQR_ERR_H

/* X(NAME, number, message) */
#define CQR_ERRNO_MAP(X)                                                     \
    X(OK, 0, "success")                                                      \
    X(INVAL, 1, "invalid argument")                                          \
    X(NOMEM, 2, "out of memory")                                             \
    X(NOTFOUND, 3, "no such table")                                          \
    X(EXIST, 4, "table already exists")                                      \
    X(DIM, 5, "vector length does not match the table")                      \
    X(NONFINITE, 6, "gradient contains NaN or Inf")                          \
    X(LIMIT, 7, "limit exceeded")                                            \
    X(BUSY, 8, "busy, retry later")                                          \
    X(PROTO, 9, "malformed request")                                         \
    X(AUTH, 10, "authentication required or failed")                         \
    X(PERM, 11, "admin token required")                                      \
    X(IO, 12, "storage I/O error")                                           \
    X(CORRUPT, 13, "data corrupt")                                           \
    X(VERSION, 14, "unsupported protocol version")                           \
    X(UNSUPPORTED, 15, "operation not supported by this table kind")         \
    X(TIMEDOUT, 16, "timed out")                                             \
    X(CONN, 17, "connection failed or lost")                                 \
    X(SHUTDOWN, 18, "server is shutting down")                               \
    X(INTERNAL, 19, "internal error")                                        \
    X(NOPHASE, 20, "no such cluster phase")                                  \
    X(CANCELED, 21, "cancelled")                                             \
    X(READONLY, 22, "server is read-only (serving exports)")

typedef enum cqr_err {
#define CQR_ERR_ENUM_(name, num, msg) CQR_E##name = -(num),
    CQR_ERRNO_MAP(CQR_ERR_ENUM_)
#undef CQR_ERR_ENUM_
} cqr_err_t;

#define CQR_OK CQR_EOK

/* Human-readable message for an error code (0 or negative). Unknown codes
 * give "unknown error". */
const char *cqr_strerror(int err);

/* Upper-case symbolic name ("NOTFOUND") for an error code, for logs and
 * the --json output of the tools. */
const char *cqr_errname(int err);

#endif
