/* fuzz_rpc.c -- libFuzzer target for request dispatch (server/rpc/rpc.c)
 * against an in-process engine, without sockets.
 *
 * One input is one connection: byte 0 picks the authentication mode
 * (fuzz_common.h), the rest is cut into frames by the frame reader, and
 * each frame body goes through cqr_rpc_handle exactly as conn.c would
 * run it. Small limits keep executions fast and make them reachable:
 * tables of at most 64 dims and 64 rows, 256 IDs per request, 64 KiB
 * frames, 32 MiB of tables.
 *
 * One server context serves every input (issue 14: creating one per
 * input started and joined the phase runner's and the engine helpers'
 * threads each time, most of an execution's cost). After each input the
 * harness drops every table, waits until no phase is queued or running
 * and zeroes the counters and the request statistics, so that an input
 * sees an empty server as before, with no phase history
 * (cqr_phases_forget). What still carries over: table uids keep counting
 * (values in some replies, no decision the server makes), and the
 * threads' scratch buffers, the frame reader's buffer and the reply
 * buffer keep their size (a malloc/free balance that libFuzzer's leak
 * check would otherwise question on every input). There are no engine
 * helpers (--engine-threads 0): a request's at most 256 IDs are below
 * the size that the engine splits over helpers (CQR_PAR_MIN), so they
 * were never used.
 *
 * Checked on every request: cqr_rpc_handle returns one of its documented
 * codes; the reply decodes as a cqrps.v1.Response, fits the frame limit,
 * carries a known status, and echoes the request id when the request
 * decoded; after CQR_EPROTO or CQR_EAUTH (the connection would close) no
 * further frame is handled; with authentication on, nothing but Hello
 * succeeds before a good Hello, and no admin operation succeeds without
 * admin rights. ASan/UBSan and LeakSanitizer check the rest.
 *
 * One thing is filtered, to keep each execution short: a CreateTable
 * asking for more than 30 k-means iterations or 400 samples per centroid
 * is not run (a cluster phase is otherwise awaited at the end of the
 * input); the request still goes through decoding in the harness.
 */
#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ops/auth.h"
#include "ops/config.h"
#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "fuzz_common.h"
#include "engine/kmeans.h"
#include "ops/log.h"
#include "ops/opstats.h"
#include "rpc/rpc.h"
#include "tables/phase.h"
#include "tables/registry.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx; /* every input's server */
/* Every input's frame reader and reply buffer: set up once, emptied per
 * input (a fresh 64 KiB read buffer per input was mapped and poisoned
 * anew by ASan each time). */
static cqr_frame_reader_t rx;
static cqr_buf_t out;
/* Hello hooks of each mode, set up once from token files. */
static cqr_auth_hooks_t hooks[4];

static void write_token(const char *path, const char *tok)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, tok, strlen(tok)) != (ssize_t)strlen(tok))
        abort();
    close(fd);
}

/* Installs the hooks of one mode (through the real token files path). */
static void make_hooks(int mode, const char *tok_path, const char *adm_path)
{
    cqr_config_t c;
    cqr_config_defaults(&c);
    if (mode == FUZZ_AUTH_BOTH || mode == FUZZ_AUTH_DATA)
        snprintf(c.auth_token_file, sizeof c.auth_token_file, "%s",
                 tok_path);
    if (mode == FUZZ_AUTH_BOTH || mode == FUZZ_AUTH_ADMIN)
        snprintf(c.admin_token_file, sizeof c.admin_token_file, "%s",
                 adm_path);
    cqr_server_ctx_t tmp;
    memset(&tmp, 0, sizeof tmp);
    cqr_auth_t *a = NULL;
    char err[512];
    if (cqr_auth_setup(&tmp, &c, &a, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_rpc: %s\n", err);
        abort();
    }
    /* The secrets live as long as the process (a is never freed). */
    hooks[mode] = tmp.auth;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cqr_log_set_level(CQR_LOG_ERROR);
    cqr_blas_init(); /* one OpenBLAS thread, as the server runs it */
    cqr_config_defaults(&cfg);
    cfg.threads = 1;
    cfg.max_frame_bytes = 64 * 1024;
    cfg.max_batch = 256;
    cfg.max_tables = 8;
    cfg.max_dim = 64;
    cfg.max_rows = 64;
    cfg.max_table_memory = 32u << 20;
    cfg.cluster_workers = 1;
    cfg.cluster_threads = 1;
    cfg.engine_threads = 0;
    if (cqr_server_ctx_init(&ctx, &cfg) != 0)
        abort();
    cqr_frame_reader_init(&rx, cfg.max_frame_bytes, 64 * 1024);
    cqr_buf_init(&out);
    /* server_reset's short sleeps while a phase ends: without this the
     * kernel may stretch each by its default 50 us slack. */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

    char dir[] = "/tmp/cqr-fuzz-XXXXXX";
    if (mkdtemp(dir) == NULL)
        abort();
    char tok[64], adm[64];
    snprintf(tok, sizeof tok, "%s/token", dir);
    snprintf(adm, sizeof adm, "%s/admin", dir);
    write_token(tok, FUZZ_TOKEN "\n");
    write_token(adm, FUZZ_ADMIN "\n");
    for (int m = FUZZ_AUTH_BOTH; m <= FUZZ_AUTH_DATA; m++)
        make_hooks(m, tok, adm);
    unlink(tok);
    unlink(adm);
    rmdir(dir);
    return 0;
}

/* 1 for the operations that need admin rights. */
static int admin_op(Cqrps__V1__Request__OpCase op)
{
    return op == CQRPS__V1__REQUEST__OP_DROP_TABLE ||
           op == CQRPS__V1__REQUEST__OP_CLUSTER ||
           op == CQRPS__V1__REQUEST__OP_CHECKPOINT ||
           op == CQRPS__V1__REQUEST__OP_COMPACT;
}

/* A CreateTable whose phases would be slow (see the file comment). */
static int too_slow(const Cqrps__V1__Request *q)
{
    if (q->op_case != CQRPS__V1__REQUEST__OP_CREATE_TABLE ||
        q->create_table == NULL || q->create_table->config == NULL ||
        q->create_table->config->cluster == NULL)
        return 0;
    const Cqrps__V1__ClusterConfig *cc = q->create_table->config->cluster;
    return cc->iters > 30 || cc->sample_per_centroid > 400;
}

/* Puts the server back to empty after an input: every table dropped and
 * freed (once the phases that hold them are over), counters zeroed. */
static void server_reset(void)
{
    cqr_entry_t **list;
    size_t n;
    if (cqr_registry_list(ctx.reg, &list, &n) != 0)
        abort();
    for (size_t i = 0; i < n; i++)
        (void)cqr_registry_remove(ctx.reg, list[i]->name);
    cqr_registry_list_free(list, n);
    /* Once no phase is queued or running, their history and ids go too. */
    while (cqr_phases_forget(ctx.phases) != 0)
        nanosleep(&(struct timespec){0, 20000}, NULL);
    /* The phases' last references go just after their counts do. */
    while (cqr_registry_bytes(ctx.reg) != 0)
        nanosleep(&(struct timespec){0, 20000}, NULL);
    memset(&ctx.ctr, 0, sizeof ctx.ctr);
    /* The request statistics start from zero as well: carried over, every
     * operation any earlier input ran stayed in each Stats reply (a few
     * hundred formatted entries, the costliest request by far). */
    cqr_opstats_destroy(ctx.opstats);
    if (cqr_opstats_create(cfg.threads + 1, CQR_OP_COUNT, CQR_STATUS_COUNT,
                           &ctx.opstats) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0] & 3;
    data++;
    size--;

    memset(&ctx.auth, 0, sizeof ctx.auth);
    if (mode != FUZZ_AUTH_NONE)
        ctx.auth = hooks[mode];
    cqr_session_t sess;
    cqr_session_init(&ctx, &sess, "fuzz:1", 0);

    rx.len = rx.pos = 0; /* whatever the last input left unparsed */
    uint8_t *p;
    size_t room;
    if (cqr_frame_reader_space(&rx, &p, &room) != 0)
        abort();
    /* Feed everything at once (fuzz_frame covers split reads); frames
     * past the first read's room are simply not reached. */
    size_t n = size < room ? size : room;
    memcpy(p, data, n);
    cqr_frame_reader_commit(&rx, n);

    for (;;) {
        const uint8_t *body;
        size_t len;
        int rc = cqr_frame_next(&rx, &body, &len);
        if (rc != 1)
            break; /* no complete frame, or one over the limit */
        Cqrps__V1__Request *q = cqrps__v1__request__unpack(NULL, len, body);
        if (q != NULL && too_slow(q)) {
            cqrps__v1__request__free_unpacked(q, NULL);
            continue;
        }
        int was_authed = sess.authed;
        int was_admin = sess.admin;

        out.len = 0;
        rc = cqr_rpc_handle(&ctx, &sess, body, len, &out);
        assert(rc == 0 || rc == CQR_EPROTO || rc == CQR_EAUTH ||
               rc == CQR_ENOMEM);
        if (rc == CQR_ENOMEM) {
            assert(out.len == 0);
        } else {
            assert(out.len <= cfg.max_frame_bytes);
            Cqrps__V1__Response *r =
                cqrps__v1__response__unpack(NULL, out.len, out.data);
            assert(r != NULL);
            assert((unsigned)r->status < CQR_STATUS_COUNT);
            assert(r->message != NULL);
            if (q == NULL) {
                assert(rc == CQR_EPROTO);
                assert(r->status == CQRPS__V1__STATUS__MALFORMED);
                assert(r->id == 0);
            } else {
                assert(rc != CQR_EPROTO);
                assert(r->id == q->id);
                int hello = q->op_case == CQRPS__V1__REQUEST__OP_HELLO;
                /* Only Hello may succeed before authentication. */
                if (!was_authed && !hello)
                    assert(r->status == CQRPS__V1__STATUS__UNAUTHENTICATED);
                /* Admin operations need admin rights. */
                if (admin_op(q->op_case) && !was_admin)
                    assert(r->status != CQRPS__V1__STATUS__OK);
                /* An unauthenticated session ends the connection. */
                if (mode != FUZZ_AUTH_NONE && !sess.authed)
                    assert(rc == CQR_EAUTH);
                if (mode == FUZZ_AUTH_NONE)
                    assert(rc == 0 && sess.authed && sess.admin);
            }
            cqrps__v1__response__free_unpacked(r, NULL);
        }
        if (q != NULL)
            cqrps__v1__request__free_unpacked(q, NULL);
        if (rc != 0)
            break; /* the connection closes */
    }
    server_reset();
    return 0;
}
