/* Cluster phases through the RPC layer, in-process without sockets: the
 * cluster part of the effective config (the reset setting, whose "not
 * said" must reach the server's default, and the k-means tolerance), the
 * progress fields of ClusterStatus, and CancelCluster: a cancelled phase
 * leaves the table as a twin that got the same pushes and no phase. The
 * worker is held in the phase hook where a phase must still be running
 * when the cancel arrives. Compact during and after a phase. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "engine/table.h"
#include "ops/log.h"
#include "rpc/rpc.h"
#include "tables/phase.h"
#include "check_main.h"
#include "phase_hold.h"
#include "rpc_call.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_session_t sess;

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_WARN);
    cqr_config_defaults(&cfg);
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    cqr_session_init(&ctx, &sess, "test:1", 0);
    cqr_phases_set_hook(ctx.phases, cqr_test_phase_hook, NULL);
}

static void teardown(void)
{
    cqr_test_phase_release();
    cqr_server_ctx_free(&ctx);
}

/* rc by address: it is read after the call that writes it. */
static Response *ok(Response *r, const int *rc)
{
    ck_assert_int_eq(*rc, 0);
    if (r->status != 0)
        ck_abort_msg("status %d: %s", r->status, r->message);
    return r;
}

/* Asserts the status and that the message contains `frag`, then frees. */
static void expect(Response *r, const int *rc, int err, const char *frag)
{
    ck_assert_int_eq(*rc, 0);
    if ((int)r->status != -err)
        ck_abort_msg("status %d (%s), want %d", r->status, r->message, -err);
    if (frag != NULL && strstr(r->message, frag) == NULL)
        ck_abort_msg("message '%s' lacks '%s'", r->message, frag);
    rq_done(r);
}

/* A cqr table (dim 8, 2 chunks, 16 rows, seed 42) with cluster config
 * `cl` (may be NULL: not sent); returns the reply. */
static Response *create(const char *name, Cqrps__V1__ClusterConfig *cl,
                        int *rc)
{
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__CQR;
    tc.dim = 8;
    tc.chunks = 2;
    tc.rows = 16;
    tc.seed = 42;
    tc.cluster = cl;
    return rq_create(&ctx, &sess, name, &tc, rc);
}

static void push_some(const char *table, uint64_t first, size_t n)
{
    uint64_t *ids = malloc(n * sizeof *ids);
    float *g = malloc(n * 8 * sizeof *g);
    ck_assert(ids && g);
    for (size_t i = 0; i < n; i++)
        ids[i] = first + i * 7919;
    for (size_t i = 0; i < n * 8; i++)
        g[i] = (float)((i * 37 + first) % 11) * 0.01f - 0.05f;
    int rc;
    rq_done(ok(rq_push(&ctx, &sess, table, ids, n, g, n * 8, NULL, 0, &rc),
               &rc));
    free(ids);
    free(g);
}

static char *digest_of(const char *table)
{
    int rc;
    Response *r = ok(rq_digest(&ctx, &sess, table, &rc), &rc);
    char *d = strdup(r->digest->digest);
    rq_done(r);
    return d;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The final status of a phase (the caller frees the reply). */
static Response *wait_phase(const char *table, uint64_t phase)
{
    double t0 = now();
    for (;;) {
        int rc;
        Response *r = ok(rq_cluster_status(&ctx, &sess, table, phase, &rc),
                         &rc);
        int st = r->cluster_status->state;
        if (st == CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE ||
            st == CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__FAILED)
            return r;
        rq_done(r);
        ck_assert_msg(now() - t0 < 60, "phase did not finish");
        usleep(2000);
    }
}

/* ---- tests ------------------------------------------------------------ */

/* The reset setting: unsaid (no cluster message, or one with neither
 * field) is the server's default; the older bool says on; ON and OFF
 * decide; replies say ON or OFF and mirror it in the bool. The tolerance:
 * 0 is the default, negative none (-1 in replies). */
START_TEST(test_cluster_config)
{
    cqr_table_config_t def;
    cqr_table_config_default(&def, CQR_KIND_CQR, 8);
    const Cqrps__V1__Setting def_reset = def.reset_optimizer
                                             ? CQRPS__V1__SETTING__SETTING_ON
                                             : CQRPS__V1__SETTING__SETTING_OFF;
    int rc;
    /* The documented defaults (README, "Defaults"). */
    ck_assert_uint_eq(def.reset_optimizer, 1);
    Response *r = ok(create("none", NULL, &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset, def_reset);
    ck_assert_float_eq(r->table->config->init_scale, 0.01f);
    ck_assert_uint_eq(r->table->config->cluster->iters, 25);
    ck_assert_uint_eq(r->table->config->cluster->sample_per_centroid, 200);
    ck_assert_int_eq(r->table->config->cluster->reset_optimizer,
                     def.reset_optimizer);
    ck_assert_float_eq(r->table->config->cluster->tolerance,
                       CQR_DEFAULT_CLUSTER_TOL);
    rq_done(r);

    Cqrps__V1__ClusterConfig cl = CQRPS__V1__CLUSTER_CONFIG__INIT;
    r = ok(create("empty", &cl, &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset, def_reset);
    rq_done(r);

    cl.reset_optimizer = 1; /* an older client asking for it */
    r = ok(create("bool", &cl, &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset,
                     CQRPS__V1__SETTING__SETTING_ON);
    ck_assert_int_eq(r->table->config->cluster->reset_optimizer, 1);
    rq_done(r);

    cl.reset_optimizer = 0;
    cl.reset = CQRPS__V1__SETTING__SETTING_OFF;
    cl.tolerance = -1.0f;
    r = ok(create("off", &cl, &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset,
                     CQRPS__V1__SETTING__SETTING_OFF);
    ck_assert_int_eq(r->table->config->cluster->reset_optimizer, 0);
    ck_assert_float_eq(r->table->config->cluster->tolerance, -1.0f);
    rq_done(r);

    cl.reset = CQRPS__V1__SETTING__SETTING_ON;
    cl.tolerance = 0.05f;
    r = ok(create("on", &cl, &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset,
                     CQRPS__V1__SETTING__SETTING_ON);
    ck_assert_float_eq(r->table->config->cluster->tolerance, 0.05f);
    rq_done(r);
    /* Describe reports the same. */
    r = ok(rq_describe(&ctx, &sess, "on", &rc), &rc);
    ck_assert_int_eq(r->table->config->cluster->reset,
                     CQRPS__V1__SETTING__SETTING_ON);
    rq_done(r);

    cl.tolerance = 1.5f;
    expect(create("bad", &cl, &rc), &rc, CQR_EINVAL, "tolerance");
    cl.tolerance = 0;
    cl.reset = (Cqrps__V1__Setting)7;
    expect(create("bad", &cl, &rc), &rc, CQR_EINVAL, "reset");
}
END_TEST

/* A finished phase reports its chunks, the iterations it used and no time
 * left. */
START_TEST(test_status_progress)
{
    int rc;
    rq_done(ok(create("c", NULL, &rc), &rc));
    push_some("c", 1, 600);
    Response *r = ok(rq_cluster(&ctx, &sess, "c", &rc), &rc);
    uint64_t id = r->cluster->phase_id;
    rq_done(r);
    r = wait_phase("c", id);
    const Cqrps__V1__ClusterStatusReply *st = r->cluster_status;
    ck_assert_int_eq(st->state, CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE);
    ck_assert_uint_eq(st->chunks, 2);
    ck_assert_uint_eq(st->chunk, 2);
    ck_assert_uint_eq(st->iters, 25);
    ck_assert_uint_ge(st->kmeans_iters, 1);
    ck_assert_uint_le(st->kmeans_iters, 25);
    ck_assert(st->eta_seconds == 0.0);
    ck_assert_int_eq(st->cancelled, 0);
    rq_done(r);
}
END_TEST

/* CancelCluster on a running phase (held before its run), with pushes
 * made while it runs: the phase ends FAILED and cancelled, and the table
 * equals a twin that got the same pushes and no phase. */
START_TEST(test_cancel)
{
    int rc;
    rq_done(ok(create("c", NULL, &rc), &rc));
    rq_done(ok(create("twin", NULL, &rc), &rc));
    push_some("c", 1, 600);
    push_some("twin", 1, 600);
    expect(rq_cancel_cluster(&ctx, &sess, "c", 0, &rc), &rc, CQR_ENOPHASE,
           "no cluster phase queued or running");
    expect(rq_cancel_cluster(&ctx, &sess, "nope", 0, &rc), &rc, CQR_ENOTFOUND,
           NULL);

    cqr_test_phase_hold("c");
    Response *r = ok(rq_cluster(&ctx, &sess, "c", &rc), &rc);
    uint64_t id = r->cluster->phase_id;
    rq_done(r);
    cqr_test_phase_wait_held();
    push_some("c", 5, 300); /* during the phase: logged and applied */
    push_some("twin", 5, 300);
    expect(rq_cancel_cluster(&ctx, &sess, "c", id + 1, &rc), &rc,
           CQR_ENOPHASE, "not queued or running");
    r = ok(rq_cancel_cluster(&ctx, &sess, "c", id, &rc), &rc);
    ck_assert_int_eq(r->reply_case,
                     CQRPS__V1__RESPONSE__REPLY_CLUSTER_STATUS);
    ck_assert_uint_eq(r->cluster_status->phase_id, id);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__RUNNING);
    rq_done(r);
    cqr_test_phase_release();

    r = wait_phase("c", id);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__FAILED);
    ck_assert_int_eq(r->cluster_status->cancelled, 1);
    ck_assert_str_eq(r->cluster_status->error, "cancelled: by request");
    rq_done(r);
    char *dc = digest_of("c"), *dt = digest_of("twin");
    ck_assert_str_eq(dc, dt);
    free(dc);
    free(dt);
    r = ok(rq_describe(&ctx, &sess, "c", &rc), &rc);
    ck_assert_uint_eq(r->table->phases_done, 0);
    ck_assert_int_eq(r->table->phase_running, 0);
    rq_done(r);
    expect(rq_cancel_cluster(&ctx, &sess, "c", 0, &rc), &rc, CQR_ENOPHASE,
           NULL);

    /* The next phase runs and commits as the table's first. */
    r = ok(rq_cluster(&ctx, &sess, "c", &rc), &rc);
    id = r->cluster->phase_id;
    rq_done(r);
    r = wait_phase("c", id);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE);
    rq_done(r);
}
END_TEST

/* A session without admin rights may not cancel (the auth seam). */
static int deny_admin(void *ud, cqr_session_t *s, const uint8_t *tok,
                      size_t toklen, const uint8_t *adm, size_t admlen)
{
    (void)ud;
    (void)tok;
    (void)toklen;
    (void)adm;
    (void)admlen;
    s->admin = 0;
    return 0;
}

START_TEST(test_cancel_needs_admin)
{
    int rc;
    rq_done(ok(create("c", NULL, &rc), &rc));
    ctx.auth.hello = deny_admin;
    cqr_session_t s2;
    cqr_session_init(&ctx, &s2, "test:2", 0);
    Response *r = rq_hello(&ctx, &s2, 1, "t", "x", NULL, &rc);
    ck_assert_int_eq(r->status, 0);
    rq_done(r);
    r = rq_cancel_cluster(&ctx, &s2, "c", 0, &rc);
    ck_assert_int_eq(r->status, -CQR_EPERM);
    rq_done(r);
    ctx.auth.hello = NULL;
}
END_TEST

static Response *rq_compact(const char *table, int *rc)
{
    Cqrps__V1__Compact m = CQRPS__V1__COMPACT__INIT;
    m.table = (char *)table;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_COMPACT;
    q.compact = &m;
    return rq_call(&ctx, &sess, &q, rc);
}

/* Compact while a phase of the table runs: BUSY with a clear message;
 * after it, the compaction runs on the calling thread (a session that
 * cannot defer) and changes neither the digest nor the lookups. */
START_TEST(test_compact_during_phase)
{
    int rc;
    rq_done(ok(create("k", NULL, &rc), &rc));
    push_some("k", 1, 600);
    cqr_test_phase_hold("k");
    Response *r = ok(rq_cluster(&ctx, &sess, "k", &rc), &rc);
    uint64_t id = r->cluster->phase_id;
    rq_done(r);
    cqr_test_phase_wait_held();
    expect(rq_compact("k", &rc), &rc, CQR_EBUSY, "cluster phase of table "
           "'k' is running");
    cqr_test_phase_release();
    r = wait_phase("k", id);
    ck_assert_int_eq(r->cluster_status->state,
                     CQRPS__V1__CLUSTER_STATUS_REPLY__STATE__DONE);
    rq_done(r);

    char *d0 = digest_of("k");
    uint64_t ids[64];
    for (size_t i = 0; i < 64; i++)
        ids[i] = 1 + i * 7919 * 20; /* 30 known, 34 never pushed */
    r = ok(rq_lookup(&ctx, &sess, "k", ids, 64, NULL, 0, 0, &rc), &rc);
    ck_assert_uint_eq(r->lookup->vectors.len, 64 * 8 * sizeof(float));
    float v0[64 * 8];
    memcpy(v0, r->lookup->vectors.data, sizeof v0);
    rq_done(r);

    r = ok(rq_compact("k", &rc), &rc);
    ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_COMPACTED);
    ck_assert_uint_eq(r->compacted->moved_ids, 600);
    ck_assert_uint_eq(r->compacted->known_ids, 600);
    ck_assert_uint_eq(r->compacted->static_ids, 600);
    rq_done(r);
    r = ok(rq_describe(&ctx, &sess, "k", &rc), &rc);
    ck_assert(r->table->compacted && !r->table->compacting);
    ck_assert_uint_eq(r->table->static_ids, 600);
    rq_done(r);
    char *d1 = digest_of("k");
    ck_assert_str_eq(d0, d1);
    r = ok(rq_lookup(&ctx, &sess, "k", ids, 64, NULL, 0, 0, &rc), &rc);
    ck_assert(memcmp(r->lookup->vectors.data, v0, sizeof v0) == 0);
    rq_done(r);
    free(d0);
    free(d1);
    /* A hash table and a missing one. */
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__HASH;
    tc.dim = 8;
    rq_done(ok(rq_create(&ctx, &sess, "h", &tc, &rc), &rc));
    expect(rq_compact("h", &rc), &rc, CQR_EUNSUPPORTED, "hash table");
    expect(rq_compact("nope", &rc), &rc, CQR_ENOTFOUND, NULL);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("rpc_phase");
    TCase *tc = tcase_create("phase");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_cluster_config);
    tcase_add_test(tc, test_status_progress);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_cancel_needs_admin);
    tcase_add_test(tc, test_compact_during_phase);
    suite_add_tcase(s, tc);
    return s;
}
