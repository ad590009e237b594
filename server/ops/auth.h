/* auth.h -- shared-secret authentication of connections.
 *
 * Two optional bearer tokens, each read once at start from a file:
 *   --auth-token-file   the data-plane token. With it, a connection must
 *                       send Hello with this token before anything else;
 *                       any other request, or a wrong token, gets
 *                       UNAUTHENTICATED and the connection is closed
 *                       (rpc/rpc.c, net/conn.c).
 *   --admin-token-file  the admin token. With it, DropTable, Cluster and
 *                       Checkpoint (and any later restore-like operation)
 *                       need a Hello that carried this token; otherwise
 *                       PERMISSION_DENIED. A Hello that carries a wrong
 *                       admin token is refused like a wrong token. Without
 *                       it, every authenticated connection has admin
 *                       rights.
 * CreateTable needs no admin token: trainers create their own tables, and
 * what a table may cost is bounded by --max-tables, --max-table-memory,
 * --max-dim and --max-rows; destroying data (drop) is what needs admin.
 *
 * Token files: a regular file, not readable or writable by "others"
 * (mode & 0006 == 0; refused otherwise: a secret anyone on the host can
 * read protects nothing), 1..CQR_TOKEN_MAX bytes after one trailing
 * newline ("\n" or "\r\n") is stripped. Tokens are compared in constant
 * time (the time depends on the lengths only) and never logged; the
 * secrets are wiped from memory by cqr_auth_destroy.
 *
 * There is no transport security here: tokens and data cross the network
 * in the clear. Across untrusted networks put the server behind a TLS
 * proxy (docs/SECURITY.md).
 *
 * Threading: cqr_auth_setup and cqr_auth_destroy run on the main thread,
 * before the I/O threads start and after they stopped; the Hello hook it
 * installs only reads the secrets and may run on any thread.
 *
 * Errors: 0 or a negative CQR_E* code with a one-line reason in err.
 */
#ifndef CQR_AUTH_H
#define CQR_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "ops/config.h"
#include "rpc/server.h"

/* Longest token accepted from a file (a Hello carrying more cannot
 * match). */
#define CQR_TOKEN_MAX 4096

typedef struct cqr_auth cqr_auth_t;

/* Reads the token files cfg names and installs the Hello hook in
 * ctx->auth. With no token file configured nothing is installed and *out
 * is NULL (every session is authenticated and admin). Otherwise *out owns
 * the secrets until cqr_auth_destroy, which must come after every session
 * is gone. Errors: CQR_EIO (cannot open or read a file), CQR_EINVAL (not
 * a regular file, readable by others, empty, too long). */
int cqr_auth_setup(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                   cqr_auth_t **out, char *err, size_t errlen);

/* Wipes and frees the secrets; NULL is a no-op. */
void cqr_auth_destroy(cqr_auth_t *a);

/* Reads one token file under the rules above into a malloc'd buffer
 * (*out, *len; free with cqr_auth_wipe_free). `what` names the option in
 * messages ("--auth-token-file"). */
int cqr_auth_read_token(const char *path, const char *what, uint8_t **out,
                        size_t *len, char *err, size_t errlen);

/* Zeroes len bytes at p (not optimised away) and frees p. */
void cqr_auth_wipe_free(uint8_t *p, size_t len);

/* 1 when a and b are equal. Takes time that depends on alen and blen
 * only, never on where the bytes differ. */
int cqr_auth_equal(const uint8_t *a, size_t alen, const uint8_t *b,
                   size_t blen);

/* 1 when every address `host` resolves to (numeric, or a name through
 * getaddrinfo) is a loopback address; 0 otherwise, also for the wildcard
 * addresses and for names that do not resolve. */
int cqr_auth_host_is_loopback(const char *host);

/* Logs a warning when the server listens beyond loopback (cfg->listen
 * and the metrics address) without an auth token. Returns 1 if it
 * warned about the data listener. */
int cqr_auth_warn_exposure(const cqr_config_t *cfg);

#endif
