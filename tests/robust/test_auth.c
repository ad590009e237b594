/* Token authentication in-process (server/ops/auth.c with server/rpc/rpc.c, no
 * sockets): token files and their permission rules, the constant-time
 * comparison, loopback detection, and every case of the Hello hook as the
 * RPC layer applies it -- including that an unauthenticated session's
 * request is answered and then ends the connection (CQR_EAUTH), and which
 * operations need the admin token. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops/auth.h"
#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "ops/log.h"
#include "rpc/rpc.h"
#include "check_main.h"
#include "rpc_call.h"

static char dir[64];

/* Writes a file of `len` bytes with `mode`; returns its path (static
 * storage, one per name). */
static const char *write_file(const char *name, const void *data,
                              size_t len, mode_t mode)
{
    static char paths[8][128];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 128, "%s/%s", dir, name);
    unlink(p);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
    ck_assert_int_eq(chmod(p, mode), 0);
    return p;
}

static void setup_dir(void)
{
    cqr_log_set_level(CQR_LOG_ERROR);
    snprintf(dir, sizeof dir, "/tmp/cqr-auth-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- token files ------------------------------------------------------ */

static int read_tok(const char *path, uint8_t **tok, size_t *len,
                    char *err, size_t errlen)
{
    return cqr_auth_read_token(path, "--auth-token-file", tok, len, err,
                               errlen);
}

START_TEST(test_token_file_rules)
{
    uint8_t *tok;
    size_t len;
    char err[512];

    /* One trailing newline goes, CRLF too; inner and other bytes stay. */
    const char *p = write_file("a", "abc def\n", 8, 0600);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, 7);
    ck_assert_int_eq(memcmp(tok, "abc def", 7), 0);
    cqr_auth_wipe_free(tok, len);

    p = write_file("b", "x\r\n", 3, 0640);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, 1);
    cqr_auth_wipe_free(tok, len);

    p = write_file("c", "two\n\n", 5, 0400);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, 4); /* "two\n": only one newline stripped */
    cqr_auth_wipe_free(tok, len);

    /* Binary tokens are fine (NUL bytes included). */
    p = write_file("d", "\0\1\2", 3, 0600);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, 3);
    cqr_auth_wipe_free(tok, len);

    /* Refused: readable or writable by others, empty, too long, not a
     * regular file, missing. The message names the option and the file,
     * never the content. */
    p = write_file("e", "secret-in-file\n", 15, 0644);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "--auth-token-file"));
    ck_assert_ptr_nonnull(strstr(err, "chmod 600"));
    ck_assert_ptr_null(strstr(err, "secret-in-file"));
    ck_assert_ptr_null(tok);
    p = write_file("f", "secret", 6, 0602);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), CQR_EINVAL);
    p = write_file("g", "\n", 1, 0600);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "empty"));
    char big[CQR_TOKEN_MAX + 1];
    memset(big, 'k', sizeof big);
    p = write_file("h", big, sizeof big, 0600);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), CQR_EINVAL);
    p = write_file("i", big, CQR_TOKEN_MAX, 0600);
    ck_assert_int_eq(read_tok(p, &tok, &len, err, sizeof err), 0);
    ck_assert_uint_eq(len, CQR_TOKEN_MAX);
    cqr_auth_wipe_free(tok, len);
    ck_assert_int_eq(read_tok(dir, &tok, &len, err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "regular"));
    char missing[128];
    snprintf(missing, sizeof missing, "%s/none", dir);
    ck_assert_int_eq(read_tok(missing, &tok, &len, err, sizeof err),
                     CQR_EIO);
}
END_TEST

START_TEST(test_equal)
{
    const uint8_t *a = (const uint8_t *)"secret-token";
    ck_assert(cqr_auth_equal(a, 12, (const uint8_t *)"secret-token", 12));
    ck_assert(!cqr_auth_equal(a, 12, (const uint8_t *)"secret-tokeN", 12));
    ck_assert(!cqr_auth_equal(a, 12, (const uint8_t *)"secret-toke", 11));
    ck_assert(!cqr_auth_equal(a, 12, (const uint8_t *)"secret-token\0", 13));
    ck_assert(!cqr_auth_equal(a, 12, NULL, 0));
    ck_assert(cqr_auth_equal(NULL, 0, NULL, 0));
}
END_TEST

/* cqr_auth_equal's answer for every place a single difference can be,
 * and for prefixes, as the token check relies on it. That it takes the
 * same time wherever the difference is holds by construction (one loop
 * over the longer length, no early exit, auth.c); a wall-clock assertion
 * here would only measure the machine's load. */
START_TEST(test_equal_every_position)
{
    enum { N = 64 };
    uint8_t a[N], b[N];
    for (size_t i = 0; i < N; i++)
        a[i] = (uint8_t)(i * 37u + 1u);
    memcpy(b, a, N);
    ck_assert(cqr_auth_equal(a, N, b, N));
    ck_assert(cqr_auth_equal(a, 0, b, 0));
    for (size_t i = 0; i < N; i++) {
        for (unsigned bit = 0; bit < 8; bit++) {
            b[i] ^= (uint8_t)(1u << bit);
            ck_assert_msg(!cqr_auth_equal(a, N, b, N),
                          "byte %zu bit %u differs but compares equal", i,
                          bit);
            b[i] ^= (uint8_t)(1u << bit);
        }
        /* A strict prefix never matches, nor the other way round. */
        ck_assert(!cqr_auth_equal(a, i, b, N));
        ck_assert(!cqr_auth_equal(a, N, b, i));
    }
    /* Bytes past the shorter end compare as zero, but the length
     * difference alone still makes them unequal. */
    uint8_t z[N + 1];
    memcpy(z, a, N);
    z[N] = 0;
    ck_assert(!cqr_auth_equal(a, N, z, N + 1));
}
END_TEST

START_TEST(test_loopback)
{
    ck_assert(cqr_auth_host_is_loopback("127.0.0.1"));
    ck_assert(cqr_auth_host_is_loopback("127.1.2.3"));
    ck_assert(cqr_auth_host_is_loopback("::1"));
    ck_assert(cqr_auth_host_is_loopback("localhost"));
    ck_assert(!cqr_auth_host_is_loopback("0.0.0.0"));
    ck_assert(!cqr_auth_host_is_loopback("::"));
    ck_assert(!cqr_auth_host_is_loopback(""));
    ck_assert(!cqr_auth_host_is_loopback("10.1.2.3"));
    ck_assert(!cqr_auth_host_is_loopback("192.168.0.1"));
    ck_assert(!cqr_auth_host_is_loopback("no-such-host.invalid"));
}
END_TEST

/* ---- the hook through cqr_rpc_handle ---------------------------------- */

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_auth_t *auth;

#define TOKEN "data-token-0123456789abcdef"
#define ADMIN "admin-token-0123456789abcdef"

/* Sets up a context with the given token files ("" = none). */
static int ctx_with(const char *tok, const char *adm, char *err,
                    size_t errlen)
{
    cqr_config_defaults(&cfg);
    snprintf(cfg.auth_token_file, sizeof cfg.auth_token_file, "%s", tok);
    snprintf(cfg.admin_token_file, sizeof cfg.admin_token_file, "%s", adm);
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    int rc = cqr_auth_setup(&ctx, &cfg, &auth, err, errlen);
    if (rc != 0)
        cqr_server_ctx_free(&ctx);
    return rc;
}

static void ctx_done(void)
{
    cqr_server_ctx_free(&ctx);
    cqr_auth_destroy(auth);
    auth = NULL;
}

/* Status of one request (rpc_call.h), freeing the reply; *rc gets
 * cqr_rpc_handle's result. */
static int status_of(cqr_session_t *s, Request *q, int *rc)
{
    return rq_status(rq_call(&ctx, s, q, rc));
}

static int hello(cqr_session_t *s, const char *tok, const char *adm,
                 int *admin_out, int *rc)
{
    Response *r = rq_hello(&ctx, s, 1, "test", tok, adm, rc);
    int st = -(int)r->status;
    if (admin_out)
        *admin_out = st == 0 && r->hello != NULL && r->hello->admin;
    rq_done(r);
    return st;
}

static int op_list(cqr_session_t *s, int *rc)
{
    return rq_status(rq_simple(&ctx, s, CQRPS__V1__REQUEST__OP_LIST_TABLES,
                               rc));
}

static int op_create(cqr_session_t *s, const char *name, int *rc)
{
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__CQR;
    tc.dim = 8;
    tc.rows = 16;
    return rq_status(rq_create(&ctx, s, name, &tc, rc));
}

static int op_drop(cqr_session_t *s, const char *name, int *rc)
{
    return rq_status(rq_drop(&ctx, s, name, rc));
}

static int op_cluster(cqr_session_t *s, const char *name, int *rc)
{
    return rq_status(rq_cluster(&ctx, s, name, rc));
}

static int op_checkpoint(cqr_session_t *s, int *rc)
{
    return rq_status(rq_simple(&ctx, s, CQRPS__V1__REQUEST__OP_CHECKPOINT,
                               rc));
}

START_TEST(test_no_tokens_installs_nothing)
{
    char err[256];
    ck_assert_int_eq(ctx_with("", "", err, sizeof err), 0);
    ck_assert_ptr_null(auth);
    ck_assert_ptr_null(ctx.auth.hello);
    cqr_session_t s;
    cqr_session_init(&ctx, &s, "t:1", 0);
    int rc;
    ck_assert_int_eq(op_list(&s, &rc), 0);
    ck_assert_int_eq(rc, 0);
    ctx_done();
}
END_TEST

START_TEST(test_setup_errors)
{
    char err[512];
    const char *open_file = write_file("open", TOKEN, strlen(TOKEN), 0644);
    ck_assert_int_eq(ctx_with(open_file, "", err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "other users"));
    ck_assert_ptr_null(strstr(err, TOKEN));
    const char *t = write_file("same1", TOKEN, strlen(TOKEN), 0600);
    const char *a = write_file("same2", TOKEN "\n", strlen(TOKEN) + 1, 0600);
    ck_assert_int_eq(ctx_with(t, a, err, sizeof err), CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "same token"));
}
END_TEST

/* Data token only: nothing but a good Hello before; the unauthenticated
 * answer ends the connection; authenticated sessions are admin. */
START_TEST(test_token_required)
{
    char err[256];
    const char *t = write_file("tok", TOKEN "\n", strlen(TOKEN) + 1, 0600);
    ck_assert_int_eq(ctx_with(t, "", err, sizeof err), 0);
    int rc, admin;

    cqr_session_t s;
    cqr_session_init(&ctx, &s, "t:1", 0);
    ck_assert_int_eq(op_list(&s, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);

    cqr_session_init(&ctx, &s, "t:2", 0);
    ck_assert_int_eq(hello(&s, "wrong", NULL, NULL, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);
    cqr_session_init(&ctx, &s, "t:3", 0);
    ck_assert_int_eq(hello(&s, NULL, NULL, NULL, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);
    /* A prefix, or the token plus the newline the file had, is wrong. */
    cqr_session_init(&ctx, &s, "t:4", 0);
    ck_assert_int_eq(hello(&s, "data-token", NULL, NULL, &rc), CQR_EAUTH);
    cqr_session_init(&ctx, &s, "t:5", 0);
    ck_assert_int_eq(hello(&s, TOKEN "\n", NULL, NULL, &rc), CQR_EAUTH);

    /* A bad protocol version before authenticating also ends it. */
    cqr_session_init(&ctx, &s, "t:6", 0);
    {
        Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
        h.protocol_version = 99;
        h.token.data = (uint8_t *)TOKEN;
        h.token.len = strlen(TOKEN);
        Request q = CQRPS__V1__REQUEST__INIT;
        q.op_case = CQRPS__V1__REQUEST__OP_HELLO;
        q.hello = &h;
        ck_assert_int_eq(status_of(&s, &q, &rc), CQR_EVERSION);
        ck_assert_int_eq(rc, CQR_EAUTH);
    }

    cqr_session_init(&ctx, &s, "t:7", 0);
    ck_assert_int_eq(hello(&s, TOKEN, NULL, &admin, &rc), 0);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(admin, 1); /* no admin token: authenticated = admin */
    ck_assert_int_eq(op_create(&s, "t", &rc), 0);
    ck_assert_int_eq(op_drop(&s, "t", &rc), 0);
    /* A second, wrong Hello drops the rights and ends the connection. */
    ck_assert_int_eq(hello(&s, "wrong", NULL, NULL, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);
    ck_assert_int_eq(s.authed, 0);
    ck_assert_int_eq(s.admin, 0);
    ctx_done();
}
END_TEST

/* Both tokens: the data token gives the data plane (CreateTable
 * included); drop, cluster and checkpoint need the admin token; a wrong
 * admin token is refused outright. */
START_TEST(test_admin_required)
{
    char err[256];
    const char *t = write_file("tok", TOKEN, strlen(TOKEN), 0600);
    const char *a = write_file("adm", ADMIN "\n", strlen(ADMIN) + 1, 0600);
    ck_assert_int_eq(ctx_with(t, a, err, sizeof err), 0);
    int rc, admin;

    cqr_session_t s;
    cqr_session_init(&ctx, &s, "t:1", 0);
    ck_assert_int_eq(hello(&s, TOKEN, NULL, &admin, &rc), 0);
    ck_assert_int_eq(admin, 0);
    ck_assert_int_eq(op_create(&s, "t", &rc), 0);
    ck_assert_int_eq(op_list(&s, &rc), 0);
    ck_assert_int_eq(op_drop(&s, "t", &rc), CQR_EPERM);
    ck_assert_int_eq(rc, 0); /* refused, but the connection stays */
    ck_assert_int_eq(op_cluster(&s, "t", &rc), CQR_EPERM);
    ck_assert_int_eq(op_checkpoint(&s, &rc), CQR_EPERM);
    /* Drop is refused whether or not the table exists. */
    ck_assert_int_eq(op_drop(&s, "nope", &rc), CQR_EPERM);

    cqr_session_t s2;
    cqr_session_init(&ctx, &s2, "t:2", 0);
    ck_assert_int_eq(hello(&s2, TOKEN, "wrong-admin", NULL, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);
    /* The admin token alone is not the data token. */
    cqr_session_init(&ctx, &s2, "t:3", 0);
    ck_assert_int_eq(hello(&s2, ADMIN, ADMIN, NULL, &rc), CQR_EAUTH);

    cqr_session_init(&ctx, &s2, "t:4", 0);
    ck_assert_int_eq(hello(&s2, TOKEN, ADMIN, &admin, &rc), 0);
    ck_assert_int_eq(admin, 1);
    ck_assert_int_eq(op_cluster(&s2, "t", &rc), 0);
    /* No persistence here: UNSUPPORTED, past the admin check. */
    ck_assert_int_eq(op_checkpoint(&s2, &rc), CQR_EUNSUPPORTED);
    /* The phase may still hold the table: drop only unregisters it. */
    ck_assert_int_eq(op_drop(&s2, "t", &rc), 0);
    ctx_done();
}
END_TEST

/* Admin token only: the data plane is open without Hello; Hello with the
 * admin token adds admin rights. */
START_TEST(test_admin_only)
{
    char err[256];
    const char *a = write_file("adm", ADMIN, strlen(ADMIN), 0600);
    ck_assert_int_eq(ctx_with("", a, err, sizeof err), 0);
    int rc, admin;
    cqr_session_t s;
    cqr_session_init(&ctx, &s, "t:1", 0);
    ck_assert_int_eq(op_create(&s, "t", &rc), 0);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(op_drop(&s, "t", &rc), CQR_EPERM);
    ck_assert_int_eq(hello(&s, NULL, NULL, &admin, &rc), 0);
    ck_assert_int_eq(admin, 0);
    ck_assert_int_eq(hello(&s, NULL, ADMIN, &admin, &rc), 0);
    ck_assert_int_eq(admin, 1);
    ck_assert_int_eq(op_drop(&s, "t", &rc), 0);
    ck_assert_int_eq(hello(&s, NULL, "guess", NULL, &rc), CQR_EAUTH);
    ck_assert_int_eq(rc, CQR_EAUTH);
    ctx_done();
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("auth");
    tcase_add_checked_fixture(tc, setup_dir, teardown_dir);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_token_file_rules);
    tcase_add_test(tc, test_equal);
    tcase_add_test(tc, test_equal_every_position);
    tcase_add_test(tc, test_loopback);
    tcase_add_test(tc, test_no_tokens_installs_nothing);
    tcase_add_test(tc, test_setup_errors);
    tcase_add_test(tc, test_token_required);
    tcase_add_test(tc, test_admin_required);
    tcase_add_test(tc, test_admin_only);
    suite_add_tcase(s, tc);
    return s;
}
