/* The request path (server/rpc/rpc.c) with the hand codec of wire.c
 * against the protobuf-c fallback it keeps: through cqr_rpc_handle, a
 * request the fast path serves and the same request forced onto the
 * fallback get byte-identical replies and leave the tables in the same
 * state, whatever the alignment of the request in memory and of the
 * reply in the output buffer, for successes and for every error. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "ops/log.h"
#include "rpc/rpc.h"
#include "rpc/wire.h"
#include "check_main.h"
#include "rpc_call.h"
#include "wire_gen.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_session_t sess;

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_WARN);
    cqr_config_defaults(&cfg);
    cfg.max_batch = 2500;
    cfg.max_frame_bytes = 1u << 20;
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    cqr_session_init(&ctx, &sess, "test:1", 0);
}

static void teardown(void) { cqr_server_ctx_free(&ctx); }

/* A reply: its bytes, and what cqr_rpc_handle returned. */
typedef struct reply {
    uint8_t *data;
    size_t len;
    int rc;
} reply_t;

/* Runs body (copied `shift` bytes into a buffer) through
 * cqr_rpc_handle with `pre` bytes already in the output buffer; checks
 * that those stay and that the reply is what protobuf-c would pack. */
static reply_t run(cqr_session_t *s, const uint8_t *body, size_t len,
                   size_t shift, size_t pre)
{
    uint8_t *mem = malloc(len + shift + 1);
    memcpy(mem + shift, body, len);
    cqr_buf_t out;
    cqr_buf_init(&out);
    ck_assert_int_eq(cqr_buf_reserve(&out, pre + 1), 0);
    for (size_t i = 0; i < pre; i++)
        out.data[i] = (uint8_t)(i * 7 + 1);
    out.len = pre;
    reply_t r;
    r.rc = cqr_rpc_handle(&ctx, s, mem + shift, len, &out);
    free(mem);
    ck_assert(r.rc == 0 || r.rc == CQR_EAUTH || r.rc == CQR_EPROTO);
    for (size_t i = 0; i < pre; i++)
        if (out.data[i] != (uint8_t)(i * 7 + 1))
            ck_abort_msg("byte %zu before the reply changed", i);
    r.len = out.len - pre;
    r.data = malloc(r.len + 1);
    memcpy(r.data, out.data + pre, r.len);
    cqr_buf_free(&out);

    rq_done(rq_unpack_exact(r.data, r.len));
    return r;
}

static Response *unpack_reply(const reply_t *r)
{
    Response *resp = cqrps__v1__response__unpack(NULL, r->len, r->data);
    ck_assert_ptr_nonnull(resp);
    return resp;
}

/* Runs a request on both paths; returns the fast path's reply after
 * checking that the fallback's is byte-identical. twin: the table the
 * fallback's copy goes to (pushes), or NULL for the same table. */
static reply_t both(cqr_session_t *s, gen_t *g, const char *twin)
{
    size_t n;
    uint8_t *mem;
    uint8_t *body = pack_at(&g->q, 0, &n, &mem);
    cqr_wire_data_t d;
    int fast = cqr_wire_decode_data(body, n, &d);
    ck_assert_int_eq(fast, 1);
    size_t shift = (size_t)below(8);
    size_t pre = below(3) == 0 ? (size_t)below(9000) : (size_t)below(8);
    reply_t a = run(s, body, n, shift, pre);
    free(mem);

    if (twin != NULL) {
        g->lk.table = (char *)twin;
        g->ps.table = (char *)twin;
    }
    body = pack_at(&g->q, 0, &n, &mem);
    size_t sn;
    uint8_t *slow = gen_slow_variant(body, n, &sn);
    ck_assert_int_eq(cqr_wire_decode_data(slow, sn, &d), 0);
    reply_t b = run(s, slow, sn, (size_t)below(8), (size_t)below(9000));
    free(slow);
    free(mem);
    ck_assert_int_eq(a.rc, b.rc);
    ck_assert_uint_eq(a.len, b.len);
    ck_assert_mem_eq(a.data, b.data, a.len);
    free(b.data);
    return a;
}

static void create(const char *name, Cqrps__V1__TableKind kind,
                   uint32_t dim, uint32_t rows)
{
    Cqrps__V1__OptimizerConfig o;
    Cqrps__V1__TableConfig tc;
    rq_table_config(&tc, &o, kind, dim, rows);
    Cqrps__V1__CreateTable ct = CQRPS__V1__CREATE_TABLE__INIT;
    ct.name = (char *)name;
    ct.config = &tc;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.id = 1;
    q.op_case = CQRPS__V1__REQUEST__OP_CREATE_TABLE;
    q.create_table = &ct;
    size_t n;
    uint8_t *mem;
    uint8_t *body = pack_at(&q, 0, &n, &mem);
    reply_t r = run(&sess, body, n, 0, 0);
    free(mem);
    Response *resp = unpack_reply(&r);
    ck_assert_int_eq(resp->status, 0);
    cqrps__v1__response__free_unpacked(resp, NULL);
    free(r.data);
}

/* Tables of every kind and a few dims; the pushes' twins have a "2". */
static const struct {
    const char *name;
    const char *twin;
    Cqrps__V1__TableKind kind;
    uint32_t dim;
} tables[] = {
    {"full3", "full3_2", CQRPS__V1__TABLE_KIND__FULL, 3},
    {"hash1", "hash1_2", CQRPS__V1__TABLE_KIND__HASH, 1},
    {"ce8", "ce8_2", CQRPS__V1__TABLE_KIND__CE, 8},
    {"cqr64", "cqr64_2", CQRPS__V1__TABLE_KIND__CQR, 64},
    {"wide512", "wide512_2", CQRPS__V1__TABLE_KIND__HASH, 512},
};
#define NTABLES (sizeof tables / sizeof tables[0])

static void create_all(void)
{
    for (size_t i = 0; i < NTABLES; i++) {
        create(tables[i].name, tables[i].kind, tables[i].dim, 64);
        create(tables[i].twin, tables[i].kind, tables[i].dim, 64);
    }
}

/* Shapes a random request for table i: IDs from a small set, valid
 * offsets mostly, and gradients of the right size mostly. */
static void shape(gen_t *g, size_t i, int push)
{
    gen_request(g, push);
    size_t n = g->lk.n_ids + g->ps.n_ids;
    for (size_t k = 0; k < n; k++)
        g->ids[k] = below(5) == 0 ? rnd() : below(500);
    size_t nb = g->lk.n_offsets + g->ps.n_offsets;
    if (below(6) != 0) { /* valid bags */
        uint32_t at = 0;
        for (size_t k = 0; k < nb; k++) {
            g->offsets[k] = at;
            at += (uint32_t)below(n - at + 1 > 4 ? 4 : n - at + 1);
        }
    }
    const char *name = below(20) == 0 ? "missing" : tables[i].name;
    g->lk.table = (char *)name;
    g->ps.table = (char *)name;
    if (push) {
        size_t rows = nb ? nb : n;
        size_t gl = rows * tables[i].dim * sizeof(float);
        if (below(15) == 0)
            gl = (size_t)below(gl + 9);
        free(g->grads);
        g->grads = malloc(gl ? gl : 1);
        float *f = malloc(gl + sizeof(float));
        for (size_t k = 0; k < gl / sizeof(float); k++)
            f[k] = (float)((double)(rnd() % 2001) / 1000.0 - 1.0) * 0.01f;
        if (gl >= sizeof(float) && below(25) == 0)
            f[below(gl / sizeof(float))] = INFINITY; /* NON_FINITE */
        memcpy(g->grads, f, gl);
        free(f);
        g->ps.grads.data = g->grads;
        g->ps.grads.len = gl;
    }
}

START_TEST(test_rpc_fast_matches_fallback)
{
    create_all();
    uint64_t lookups0 = ctx.ctr.ops[CQR_WIRE_LOOKUP - 10];
    uint64_t pushes0 = ctx.ctr.ops[CQR_WIRE_PUSH - 10];
    size_t ok = 0, errors = 0, nlookups = 0, npushes = 0;
    for (int iter = 0; iter < 1500; iter++) {
        size_t i = (size_t)below(NTABLES);
        int push = below(2) == 0;
        gen_t g;
        shape(&g, i, push);
        /* Pushes go to twin tables, so both paths apply them once. */
        const char *twin = NULL;
        if (push && strcmp(g.ps.table, tables[i].name) == 0)
            twin = tables[i].twin;
        reply_t r = both(&sess, &g, twin);
        ck_assert_int_eq(r.rc, 0);
        Response *resp = unpack_reply(&r);
        ck_assert_uint_eq(resp->id, g.q.id);
        if (resp->status == 0)
            ok++;
        else
            errors++;
        cqrps__v1__response__free_unpacked(resp, NULL);
        free(r.data);
        if (push)
            npushes += 2;
        else
            nlookups += 2;

        /* The twins agree after the push: look the IDs up in both. */
        if (push) {
            gen_t lk;
            memset(&lk, 0, sizeof lk);
            cqrps__v1__lookup__init(&lk.lk);
            cqrps__v1__request__init(&lk.q);
            lk.q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
            lk.q.lookup = &lk.lk;
            lk.lk.ids = g.ids;
            lk.lk.n_ids = g.ps.n_ids;
            reply_t v[2];
            for (int t = 0; t < 2; t++) {
                lk.lk.table = (char *)(t ? tables[i].twin : tables[i].name);
                size_t n;
                uint8_t *mem;
                uint8_t *body = pack_at(&lk.q, 0, &n, &mem);
                v[t] = run(&sess, body, n, 0, 0);
                free(mem);
            }
            nlookups += 2;
            ck_assert_uint_eq(v[0].len, v[1].len);
            ck_assert_mem_eq(v[0].data, v[1].data, v[0].len);
            free(v[0].data);
            free(v[1].data);
        }
        gen_free(&g);
    }
    ck_assert_uint_gt(ok, 300);
    ck_assert_uint_gt(errors, 100);
    /* Both paths count their operation. */
    ck_assert_uint_eq(ctx.ctr.ops[CQR_WIRE_LOOKUP - 10] - lookups0,
                      nlookups);
    ck_assert_uint_eq(ctx.ctr.ops[CQR_WIRE_PUSH - 10] - pushes0, npushes);
    ck_assert_uint_eq(cqr_ctr_get(&ctx, CQR_CTR_frames_malformed), 0);
}
END_TEST

/* Reply placement: for every alignment of the output buffer's end, and
 * with more bytes before the reply than it has vectors (the engine then
 * writes further on and the vectors are moved), the bytes are the same. */
START_TEST(test_rpc_reply_alignment)
{
    create_all();
    uint64_t ids[40];
    for (size_t k = 0; k < 40; k++)
        ids[k] = k * 977;
    uint32_t offsets[3] = {0, 10, 10};
    for (size_t i = 0; i < NTABLES; i++) {
        for (int pooled = 0; pooled < 2; pooled++) {
            Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
            lk.table = (char *)tables[i].name;
            lk.ids = ids;
            lk.n_ids = 40;
            lk.offsets = pooled ? offsets : NULL;
            lk.n_offsets = pooled ? 3 : 0;
            lk.pooling = CQRPS__V1__POOLING__MEAN;
            Request q = CQRPS__V1__REQUEST__INIT;
            q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
            q.lookup = &lk;
            for (uint64_t id = 0; id < 300; id += 37) {
                q.id = id;
                size_t n;
                uint8_t *mem;
                uint8_t *body = pack_at(&q, 0, &n, &mem);
                reply_t ref = run(&sess, body, n, 0, 0);
                ck_assert_int_eq(ref.rc, 0);
                static const size_t pres[] = {1, 2, 3, 4, 5, 6, 7, 100,
                                              1001, 70001, 262147};
                for (size_t k = 0; k < sizeof pres / sizeof pres[0]; k++) {
                    reply_t r = run(&sess, body, n, k % 8, pres[k]);
                    ck_assert_uint_eq(r.len, ref.len);
                    ck_assert_mem_eq(r.data, ref.data, r.len);
                    free(r.data);
                }
                free(ref.data);
                free(mem);
            }
        }
    }
}
END_TEST

/* Requests of the fast path meet the same checks as any other: before
 * Hello with authentication on, over the limits, engine failures. */
static int stub_hello(void *ud, cqr_session_t *s, const uint8_t *token,
                      size_t token_len, const uint8_t *admin_token,
                      size_t admin_len)
{
    (void)ud;
    (void)token;
    (void)admin_token;
    (void)admin_len;
    s->admin = 0;
    return token_len > 0 ? 0 : CQR_EAUTH;
}

static void expect_both(cqr_session_t *s, Request *q, int rc, int err,
                        const char *frag)
{
    size_t n;
    uint8_t *mem;
    uint8_t *body = pack_at(q, 0, &n, &mem);
    cqr_wire_data_t d;
    ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 1);
    size_t sn;
    uint8_t *slow = gen_slow_variant(body, n, &sn);
    reply_t a = run(s, body, n, 3, 5);
    reply_t b = run(s, slow, sn, 1, 2);
    ck_assert_int_eq(a.rc, rc);
    ck_assert_int_eq(b.rc, rc);
    ck_assert_uint_eq(a.len, b.len);
    ck_assert_mem_eq(a.data, b.data, a.len);
    Response *resp = unpack_reply(&a);
    ck_assert_int_eq((int)resp->status, -err);
    ck_assert_uint_eq(resp->id, q->id);
    if (frag != NULL && strstr(resp->message, frag) == NULL)
        ck_abort_msg("message '%s' lacks '%s'", resp->message, frag);
    cqrps__v1__response__free_unpacked(resp, NULL);
    free(a.data);
    free(b.data);
    free(slow);
    free(mem);
}

START_TEST(test_rpc_fast_path_checks)
{
    create_all();
    uint64_t *ids = calloc(3000, sizeof *ids);
    float *g = calloc(3000 * 512, sizeof *g);
    Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
    Cqrps__V1__Push ps = CQRPS__V1__PUSH__INIT;
    Request ql = CQRPS__V1__REQUEST__INIT, qp = CQRPS__V1__REQUEST__INIT;
    ql.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    ql.lookup = &lk;
    ql.id = 77;
    qp.op_case = CQRPS__V1__REQUEST__OP_PUSH;
    qp.push = &ps;
    qp.id = UINT64_MAX;
    lk.table = (char *)"ce8";
    lk.ids = ids;
    ps.table = (char *)"ce8";
    ps.ids = ids;
    ps.grads.data = (uint8_t *)g;

    /* Limits: --max-batch 2500, --max-frame-bytes 1 MiB. */
    lk.n_ids = 2501;
    expect_both(&sess, &ql, 0, CQR_ELIMIT, "--max-batch");
    ps.n_ids = 2501;
    ps.grads.len = 2501 * 8 * sizeof(float);
    expect_both(&sess, &qp, 0, CQR_ELIMIT, "--max-batch");
    lk.table = (char *)"wide512";
    lk.n_ids = 600; /* 1.2 MB of vectors */
    expect_both(&sess, &ql, 0, CQR_ELIMIT, "--max-frame-bytes");
    /* Engine failures after the reply's room was reserved. */
    lk.table = (char *)"ce8";
    lk.n_ids = 5;
    lk.offsets = (uint32_t[]){1, 2};
    lk.n_offsets = 2;
    expect_both(&sess, &ql, 0, CQR_EINVAL, "offsets must start at 0");
    lk.offsets = NULL;
    lk.n_offsets = 0;
    ps.n_ids = 5;
    ps.grads.len = 5 * 8 * sizeof(float);
    g[3] = INFINITY;
    expect_both(&sess, &qp, 0, CQR_ENONFINITE, "NaN or Inf");
    g[3] = 0;
    ps.grads.len -= 4;
    expect_both(&sess, &qp, 0, CQR_EDIM, "grads has 156 bytes");
    ps.grads.len += 4;
    lk.table = (char *)"";
    expect_both(&sess, &ql, 0, CQR_EINVAL, "table name is empty");
    lk.table = (char *)"no_such";
    expect_both(&sess, &ql, 0, CQR_ENOTFOUND, "no such table 'no_such'");
    lk.table = (char *)"ce8";
    /* Pushes of more than FAST_INLINE IDs, aligned or not. */
    ps.n_ids = 2000;
    ps.grads.len = 2000 * 8 * sizeof(float);
    expect_both(&sess, &qp, 0, 0, NULL);
    ps.offsets = (uint32_t[]){0, 1000, 1999};
    ps.n_offsets = 3;
    ps.grads.len = 3 * 8 * sizeof(float);
    ps.pooling = CQRPS__V1__POOLING__MEAN;
    expect_both(&sess, &qp, 0, 0, NULL);

    /* Authentication on: a Lookup before Hello is refused and the
     * connection must close, on either path. */
    ctx.auth.hello = stub_hello;
    cqr_session_t s2;
    cqr_session_init(&ctx, &s2, "test:2", 0);
    expect_both(&s2, &ql, CQR_EAUTH, CQR_EAUTH, "send Hello");
    expect_both(&s2, &qp, CQR_EAUTH, CQR_EAUTH, "send Hello");
    ctx.auth.hello = NULL;
    free(ids);
    free(g);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("rpc_fast");
    TCase *rpc = tcase_create("rpc");
    tcase_set_timeout(rpc, 240);
    tcase_add_checked_fixture(rpc, setup, teardown);
    tcase_add_test(rpc, test_rpc_fast_matches_fallback);
    tcase_add_test(rpc, test_rpc_reply_alignment);
    tcase_add_test(rpc, test_rpc_fast_path_checks);
    suite_add_tcase(s, rpc);
    return s;
}
