/* auth.c -- token files, the Hello hook, the exposure warning. */
#include "ops/auth.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "engine/err.h"
#include "ops/log.h"
#include "proto/secret_file.h"

struct cqr_auth {
    uint8_t *token;       /* data-plane token, or NULL (no token needed) */
    size_t token_len;     /* its bytes */
    uint8_t *admin;       /* admin token, or NULL (authenticated = admin) */
    size_t admin_len;     /* its bytes */
};

int cqr_auth_equal(const uint8_t *a, size_t alen, const uint8_t *b,
                   size_t blen)
{
    /* Compare over the longer length so that the loop's length does not
     * depend on where a mismatch is; bytes beyond a string's end are
     * compared as zero and the length difference is folded in. The
     * volatile accumulator keeps the compiler from stopping early. */
    size_t n = alen > blen ? alen : blen;
    volatile uint8_t diff = (uint8_t)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        uint8_t x = i < alen ? a[i] : 0;
        uint8_t y = i < blen ? b[i] : 0;
        diff |= (uint8_t)(x ^ y);
    }
    return diff == 0;
}

void cqr_auth_wipe_free(uint8_t *p, size_t len)
{
    if (p == NULL)
        return;
    volatile uint8_t *v = p;
    for (size_t i = 0; i < len; i++)
        v[i] = 0;
    free(p);
}

_Static_assert(CQR_TOKEN_MAX == CQR_SECRET_MAX,
               "the server reads tokens with the shared reader");

int cqr_auth_read_token(const char *path, const char *what, uint8_t **out,
                        size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    /* The shared reader (proto/secret_file.h); the server refuses a file
     * that other users can read or write instead of warning. */
    cqr_secret_t sec;
    switch (cqr_secret_read(path, S_IROTH | S_IWOTH, &sec)) {
    case CQR_SECRET_OK:
        *out = (uint8_t *)sec.data;
        *len = sec.len;
        return 0;
    case CQR_SECRET_OPEN:
        snprintf(err, errlen, "%s: cannot open '%s': %s", what, path,
                 strerror(sec.err));
        return CQR_EIO;
    case CQR_SECRET_STAT:
        snprintf(err, errlen, "%s: cannot stat '%s': %s", what, path,
                 strerror(sec.err));
        return CQR_EIO;
    case CQR_SECRET_NOT_REGULAR:
        snprintf(err, errlen, "%s: '%s' is not a regular file", what, path);
        return CQR_EINVAL;
    case CQR_SECRET_EXPOSED:
        snprintf(err, errlen, "%s: '%s' is accessible by other users (mode "
                 "%04o); refusing a secret anyone can read: chmod 600 it "
                 "(or 640 for a group; Kubernetes: defaultMode 0400)",
                 what, path, sec.mode);
        return CQR_EINVAL;
    case CQR_SECRET_READ:
        snprintf(err, errlen, "%s: cannot read '%s': %s", what, path,
                 strerror(sec.err));
        return CQR_EIO;
    case CQR_SECRET_EMPTY:
        snprintf(err, errlen, "%s: '%s' is empty", what, path);
        return CQR_EINVAL;
    case CQR_SECRET_TOO_LONG:
        snprintf(err, errlen, "%s: '%s' holds more than the 4096 bytes a "
                 "token may have", what, path);
        return CQR_EINVAL;
    case CQR_SECRET_NOMEM:
        snprintf(err, errlen, "%s: out of memory", what);
        return CQR_ENOMEM;
    }
    snprintf(err, errlen, "%s: cannot read '%s'", what, path);
    return CQR_EINTERNAL; /* not reached: every status is handled above */
}

/* The Hello hook (rpc/server.h): decides sess->admin, or refuses. */
static int auth_hello(void *ud, cqr_session_t *sess, const uint8_t *token,
                      size_t token_len, const uint8_t *admin_token,
                      size_t admin_len)
{
    const cqr_auth_t *a = ud;
    /* Both comparisons always run, so the time does not tell which of
     * the two tokens was wrong. */
    int tok_ok = 1;
    if (a->token != NULL)
        tok_ok = cqr_auth_equal(token, token_len, a->token, a->token_len);
    int admin_ok = 0;
    int admin_bad = 0;
    if (a->admin != NULL) {
        admin_ok = cqr_auth_equal(admin_token, admin_len, a->admin,
                                  a->admin_len);
        /* A wrong admin token is refused rather than quietly ignored:
         * the caller meant to be admin, and guesses cost a connection. */
        admin_bad = admin_len > 0 && !admin_ok;
    } else {
        admin_ok = 1; /* no admin token: authenticated means admin */
    }
    if (!tok_ok || admin_bad) {
        sess->admin = 0;
        return CQR_EAUTH;
    }
    sess->admin = admin_ok;
    return 0;
}

int cqr_auth_setup(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                   cqr_auth_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->auth_token_file[0] == '\0' && cfg->admin_token_file[0] == '\0')
        return 0;
    cqr_auth_t *a = calloc(1, sizeof *a);
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return CQR_ENOMEM;
    }
    int rc = 0;
    if (cfg->auth_token_file[0] != '\0')
        rc = cqr_auth_read_token(cfg->auth_token_file, "--auth-token-file",
                                 &a->token, &a->token_len, err, errlen);
    if (rc == 0 && cfg->admin_token_file[0] != '\0')
        rc = cqr_auth_read_token(cfg->admin_token_file,
                                 "--admin-token-file", &a->admin,
                                 &a->admin_len, err, errlen);
    if (rc == 0 && a->token != NULL && a->admin != NULL &&
        cqr_auth_equal(a->token, a->token_len, a->admin, a->admin_len)) {
        snprintf(err, errlen, "--admin-token-file holds the same token as "
                 "--auth-token-file: every client would be admin");
        rc = CQR_EINVAL;
    }
    if (rc != 0) {
        cqr_auth_destroy(a);
        return rc;
    }
    /* Short tokens can be guessed; say so without refusing (tests and
     * some operators use short ones on purpose). */
    if (a->token != NULL && a->token_len < 16)
        cqr_log(CQR_LOG_WARN, "auth", "auth token is short bytes=%zu "
                "(use 32 random bytes, e.g. openssl rand -hex 32)",
                a->token_len);
    if (a->admin != NULL && a->admin_len < 16)
        cqr_log(CQR_LOG_WARN, "auth", "admin token is short bytes=%zu "
                "(use 32 random bytes, e.g. openssl rand -hex 32)",
                a->admin_len);
    cqr_log(CQR_LOG_INFO, "auth", "tokens loaded auth=%s admin=%s",
            a->token ? "required" : "off", a->admin ? "required" : "off");
    ctx->auth.hello = auth_hello;
    ctx->auth.ud = a;
    /* With only an admin token, the data plane stays open: sessions start
     * authenticated, and Hello can only add admin rights. */
    ctx->auth.open = a->token == NULL;
    *out = a;
    return 0;
}

void cqr_auth_destroy(cqr_auth_t *a)
{
    if (a == NULL)
        return;
    cqr_auth_wipe_free(a->token, a->token_len);
    cqr_auth_wipe_free(a->admin, a->admin_len);
    free(a);
}

static int addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        /* ::ffff:127.x.y.z */
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
               in6->sin6_addr.s6_addr[12] == 127;
    }
    return 0;
}

int cqr_auth_host_is_loopback(const char *host)
{
    if (host == NULL || host[0] == '\0')
        return 0; /* the wildcard */
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host, "0", &hints, &res) != 0)
        return 0;
    int all = res != NULL;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        if (!addr_is_loopback(ai->ai_addr))
            all = 0;
    freeaddrinfo(res);
    return all;
}

int cqr_auth_warn_exposure(const cqr_config_t *cfg)
{
    int warned = 0;
    if (cfg->auth_token_file[0] == '\0' &&
        !cqr_auth_host_is_loopback(cfg->listen_host)) {
        cqr_log(CQR_LOG_WARN, "auth", "listening beyond loopback without "
                "authentication listen=%s: anyone who can reach it can "
                "read, train and drop every table; set --auth-token-file "
                "(and --admin-token-file), and use a TLS proxy across "
                "untrusted networks", cfg->listen);
        warned = 1;
    }
    if (cfg->metrics.text[0] != '\0' &&
        !cqr_auth_host_is_loopback(cfg->metrics.host))
        cqr_log(CQR_LOG_INFO, "auth", "metrics endpoint has no "
                "authentication metrics=%s: it shows table names and "
                "counters to anyone who can reach it", cfg->metrics.text);
    return warned;
}
