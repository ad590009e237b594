/* Multi-table Lookup and Push through cqr_rpc_handle (in-process): the
 * reply of a request with parts equals the replies of its single-table
 * requests (vectors in part order, dims, bfloat16 rounded to nearest
 * even), on the fast path and the protobuf-c fallback alike; a push with
 * parts equals its single pushes; a bad part refuses the request whole,
 * names the part and changes no table; the part limit, mixed requests
 * and the optimizer update op. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "ops/log.h"
#include "proto/bf16.h"
#include "rpc/rpc.h"
#include "rpc/wire.h"
#include "check_main.h"
#include "rpc_call.h"
#include "wire_gen.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_session_t sess;

static const struct {
    const char *name;
    const char *twin;
    Cqrps__V1__TableKind kind;
    uint32_t dim;
} tables[] = {
    {"full3", "full3_2", CQRPS__V1__TABLE_KIND__FULL, 3},
    {"hash1", "hash1_2", CQRPS__V1__TABLE_KIND__HASH, 1},
    {"ce8", "ce8_2", CQRPS__V1__TABLE_KIND__CE, 8},
    {"cqr16", "cqr16_2", CQRPS__V1__TABLE_KIND__CQR, 16},
};
#define NTABLES (sizeof tables / sizeof tables[0])

static void create(const char *name, Cqrps__V1__TableKind kind, uint32_t dim)
{
    Cqrps__V1__OptimizerConfig o;
    Cqrps__V1__TableConfig tc;
    rq_table_config(&tc, &o, kind, dim,
                    kind == CQRPS__V1__TABLE_KIND__FULL ? 0 : 64);
    int rc;
    ck_assert_int_eq(rq_status(rq_create(&ctx, &sess, name, &tc, &rc)), 0);
}

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_WARN);
    cqr_config_defaults(&cfg);
    cfg.max_batch = 5000;
    cfg.max_frame_bytes = 1u << 20;
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    cqr_session_init(&ctx, &sess, "test:1", 0);
    for (size_t i = 0; i < NTABLES; i++) {
        create(tables[i].name, tables[i].kind, tables[i].dim);
        create(tables[i].twin, tables[i].kind, tables[i].dim);
    }
}

static void teardown(void) { cqr_server_ctx_free(&ctx); }

/* How call() runs a request. */
enum { FAST = 0, SLOW = 1, EITHER = 2 };

/* Runs q on the fast path (asserted: FAST), the fallback (SLOW) or
 * whichever takes it (EITHER); returns the reply and its bytes in *bytes
 * (malloc'd, *nb long) when bytes is non-NULL. */
static Response *call(Request *q, int mode, uint8_t **bytes, size_t *nb)
{
    size_t n = cqrps__v1__request__get_packed_size(q);
    uint8_t *body = malloc(n + 1);
    cqrps__v1__request__pack(q, body);
    cqr_wire_data_t d;
    int slow = mode == SLOW;
    if (mode == FAST)
        ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 1);
    if (slow) {
        size_t sn;
        uint8_t *s = gen_slow_variant(body, n, &sn);
        free(body);
        body = s;
        n = sn;
        ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 0);
    }
    cqr_buf_t out;
    cqr_buf_init(&out);
    ck_assert_int_eq(cqr_rpc_handle(&ctx, &sess, body, n, &out), 0);
    free(body);
    Response *r = rq_unpack_exact(out.data, out.len);
    if (bytes) {
        *bytes = malloc(out.len + 1);
        memcpy(*bytes, out.data, out.len);
        *nb = out.len;
    }
    cqr_buf_free(&out);
    return r;
}

/* A multi-table request of np random parts over the tables (or their
 * twins), valid. */
typedef struct mreq {
    Request q;
    Cqrps__V1__Lookup lk;
    Cqrps__V1__Push ps;
    Cqrps__V1__TablePart part[8], *parts[8];
    size_t tab[8];            /* the table of each part */
    uint64_t ids[8][300];
    uint32_t offs[8][80];
    float *grads;             /* every part's rows, in part order */
    size_t ngrads;            /* floats */
    uint8_t *g16;             /* the same as bfloat16 */
} mreq_t;

static void mreq_make(mreq_t *m, size_t np, int push, int twin)
{
    memset(m, 0, sizeof *m);
    cqrps__v1__request__init(&m->q);
    cqrps__v1__lookup__init(&m->lk);
    cqrps__v1__push__init(&m->ps);
    size_t rows = 0;
    for (size_t i = 0; i < np; i++) {
        Cqrps__V1__TablePart *p = &m->part[i];
        cqrps__v1__table_part__init(p);
        m->tab[i] = (size_t)below(NTABLES);
        p->table = (char *)(twin ? tables[m->tab[i]].twin
                                 : tables[m->tab[i]].name);
        size_t n = (size_t)below(300);
        for (size_t k = 0; k < n; k++)
            m->ids[i][k] = below(4) == 0 ? rnd() : below(400);
        p->ids = m->ids[i];
        p->n_ids = n;
        if (below(2) && n > 0) {
            size_t nb = 1 + (size_t)below(80);
            uint32_t at = 0;
            for (size_t b = 0; b < nb; b++) {
                m->offs[i][b] = at;
                at += (uint32_t)below(n - at + 1 > 8 ? 8 : n - at + 1);
            }
            p->offsets = m->offs[i];
            p->n_offsets = nb;
            p->pooling = (Cqrps__V1__Pooling)below(2);
            rows += nb * tables[m->tab[i]].dim;
        } else {
            rows += n * tables[m->tab[i]].dim;
        }
        m->parts[i] = p;
    }
    /* Two floats of slack: a test sends more bytes than the parts need. */
    m->grads = calloc(rows + 2, sizeof(float));
    m->g16 = malloc((rows ? rows : 1) * 2);
    for (size_t k = 0; k < rows; k++)
        m->grads[k] = (float)((double)(rnd() % 2001) / 1000.0 - 1.0) * 0.01f;
    cqr_bf16_narrow(m->grads, rows, m->g16);
    m->ngrads = rows;
    if (push) {
        m->ps.parts = m->parts;
        m->ps.n_parts = np;
        m->ps.grads.data = (uint8_t *)m->grads;
        m->ps.grads.len = rows * sizeof(float);
        m->q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
        m->q.push = &m->ps;
    } else {
        m->lk.parts = m->parts;
        m->lk.n_parts = np;
        m->q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
        m->q.lookup = &m->lk;
    }
}

static void mreq_free(mreq_t *m)
{
    free(m->grads);
    free(m->g16);
}

/* The single-table request of part i of m (lookup or push). */
static Response *single(const mreq_t *m, size_t i, int push, int twin,
                        const float *g)
{
    const Cqrps__V1__TablePart *p = m->parts[i];
    const char *name = twin ? tables[m->tab[i]].twin : tables[m->tab[i]].name;
    int rc;
    size_t rows = p->n_offsets ? p->n_offsets : p->n_ids;
    if (push) {
        Cqrps__V1__Push ps = CQRPS__V1__PUSH__INIT;
        ps.table = (char *)name;
        ps.ids = p->ids;
        ps.n_ids = p->n_ids;
        ps.offsets = p->offsets;
        ps.n_offsets = p->n_offsets;
        ps.pooling = p->pooling;
        ps.grads.data = (uint8_t *)g;
        ps.grads.len = rows * tables[m->tab[i]].dim * sizeof(float);
        Request q = CQRPS__V1__REQUEST__INIT;
        q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
        q.push = &ps;
        return rq_call(&ctx, &sess, &q, &rc);
    }
    if (p->n_offsets > 0)
        return rq_lookup(&ctx, &sess, name, p->ids, p->n_ids, p->offsets,
                         p->n_offsets, p->pooling, &rc);
    return rq_lookup(&ctx, &sess, name, p->ids, p->n_ids, NULL, 0, 0, &rc);
}

START_TEST(test_lookup_equals_singles)
{
    for (int iter = 0; iter < 200; iter++) {
        mreq_t m;
        size_t np = 1 + (size_t)below(8);
        mreq_make(&m, np, 0, 0);
        int bf16 = iter % 3 == 2;
        m.lk.bf16 = bf16;
        uint8_t *fb, *sb;
        size_t fn, sn;
        Response *fast = call(&m.q, 0, &fb, &fn);
        Response *slow = call(&m.q, 1, &sb, &sn);
        ck_assert_uint_eq(fn, sn);
        ck_assert_mem_eq(fb, sb, fn);
        free(fb);
        free(sb);
        ck_assert_int_eq(fast->status, 0);
        const Cqrps__V1__LookupReply *lr = fast->lookup;
        ck_assert_uint_eq(lr->dim, 0);
        ck_assert_uint_eq(lr->n_dims, np);
        ck_assert_int_eq(lr->bf16, bf16);
        size_t at = 0; /* bytes */
        for (size_t i = 0; i < np; i++) {
            ck_assert_uint_eq(lr->dims[i], tables[m.tab[i]].dim);
            Response *one = single(&m, i, 0, 0, NULL);
            ck_assert_int_eq(one->status, 0);
            size_t nv = one->lookup->vectors.len / sizeof(float);
            if (!bf16) {
                ck_assert_uint_le(at + nv * 4, lr->vectors.len);
                if (nv && memcmp(lr->vectors.data + at,
                                 one->lookup->vectors.data, nv * 4) != 0)
                    ck_abort_msg("part %zu's vectors differ", i);
                at += nv * 4;
            } else {
                uint8_t *h = malloc(nv * 2 + 1);
                cqr_bf16_narrow(one->lookup->vectors.data, nv, h);
                ck_assert_uint_le(at + nv * 2, lr->vectors.len);
                if (nv && memcmp(lr->vectors.data + at, h, nv * 2) != 0)
                    ck_abort_msg("part %zu's bf16 vectors differ", i);
                free(h);
                at += nv * 2;
            }
            rq_done(one);
        }
        ck_assert_uint_eq(at, lr->vectors.len);
        rq_done(fast);
        rq_done(slow);
        mreq_free(&m);
    }
}
END_TEST

/* A table's lookup reply over every part's IDs, for comparing twins. */
static void expect_twins_equal(const mreq_t *m, size_t np)
{
    for (size_t i = 0; i < np; i++) {
        const Cqrps__V1__TablePart *p = m->parts[i];
        int rc;
        Response *a = rq_lookup(&ctx, &sess, tables[m->tab[i]].name, p->ids,
                                p->n_ids, NULL, 0, 0, &rc);
        Response *b = rq_lookup(&ctx, &sess, tables[m->tab[i]].twin, p->ids,
                                p->n_ids, NULL, 0, 0, &rc);
        ck_assert_int_eq(a->status, 0);
        ck_assert_uint_eq(a->lookup->vectors.len, b->lookup->vectors.len);
        if (a->lookup->vectors.len &&
            memcmp(a->lookup->vectors.data, b->lookup->vectors.data,
                   a->lookup->vectors.len) != 0)
            ck_abort_msg("twins differ after part %zu", i);
        rq_done(a);
        rq_done(b);
    }
}

START_TEST(test_push_equals_singles)
{
    for (int iter = 0; iter < 150; iter++) {
        mreq_t m;
        size_t np = 1 + (size_t)below(8);
        mreq_make(&m, np, 1, 0);
        int bf16 = iter % 3 == 2;
        float *g = m.grads;
        if (bf16) {
            /* The same push with bfloat16 gradients: the singles get
             * the values widened back. */
            m.ps.bf16 = 1;
            m.ps.grads.data = m.g16;
            m.ps.grads.len = m.ngrads * 2;
            g = malloc((m.ngrads ? m.ngrads : 1) * sizeof(float));
            cqr_bf16_widen(m.g16, m.ngrads, g);
        }
        Response *r = call(&m.q, (int)below(2), NULL, NULL);
        ck_assert_int_eq(r->status, 0);
        uint64_t ids = 0;
        for (size_t i = 0; i < np; i++)
            ids += m.parts[i]->n_ids;
        ck_assert_uint_eq(r->push->applied, ids);
        rq_done(r);
        const float *gi = g;
        for (size_t i = 0; i < np; i++) {
            ck_assert_int_eq(rq_status(single(&m, i, 1, 1, gi)), 0);
            const Cqrps__V1__TablePart *p = m.parts[i];
            gi += (p->n_offsets ? p->n_offsets : p->n_ids) *
                  tables[m.tab[i]].dim;
        }
        expect_twins_equal(&m, np);
        if (bf16)
            free(g);
        mreq_free(&m);
    }
}
END_TEST

/* Every table's digest, to show that a refused push changed nothing. */
static void digests(char out[NTABLES][32])
{
    for (size_t i = 0; i < NTABLES; i++) {
        int rc;
        Response *r = rq_digest(&ctx, &sess, tables[i].name, &rc);
        ck_assert_int_eq(r->status, 0);
        snprintf(out[i], 32, "%s", r->digest->digest);
        rq_done(r);
    }
}

/* q is refused on both paths with err and a message holding frag. */
static void expect_refused(Request *q, int err, const char *frag)
{
    for (int slow = 0; slow < 2; slow++) {
        Response *r = call(q, slow ? SLOW : EITHER, NULL, NULL);
        ck_assert_int_eq(-(int)r->status, err);
        if (strstr(r->message, frag) == NULL)
            ck_abort_msg("message '%s' lacks '%s'", r->message, frag);
        rq_done(r);
    }
}

START_TEST(test_refusals)
{
    mreq_t m;
    do {
        mreq_make(&m, 6, 1, 0);
        if (m.parts[2]->n_ids > 0 && m.parts[4]->n_ids > 10)
            break;
        mreq_free(&m);
    } while (1);
    char before[NTABLES][32], after[NTABLES][32];
    digests(before);

    /* Unknown table. */
    m.part[3].table = (char *)"nosuch";
    expect_refused(&m.q, CQR_ENOTFOUND, "part 3: no such table 'nosuch'");
    m.part[3].table = (char *)tables[m.tab[3]].name;
    /* Non-finite gradient of part 4 (its first row). */
    size_t at = 0;
    for (size_t i = 0; i < 4; i++)
        at += (m.parts[i]->n_offsets ? m.parts[i]->n_offsets
                                     : m.parts[i]->n_ids) *
              tables[m.tab[i]].dim;
    m.grads[at] = NAN;
    expect_refused(&m.q, CQR_ENONFINITE, "part 4: gradients contain NaN");
    m.grads[at] = 0.0f;
    /* Gradients too short: part 5's run past them; too long. */
    m.ps.grads.len -= 4;
    expect_refused(&m.q, CQR_EDIM, "part 5: grads has");
    m.ps.grads.len += 8;
    expect_refused(&m.q, CQR_EDIM, "left over after the last part");
    m.ps.grads.len -= 4;
    /* Bad offsets of part 2. */
    uint32_t bad[2] = {1, 0};
    const uint32_t *ko = m.part[2].offsets;
    size_t kn = m.part[2].n_offsets;
    size_t krows = kn ? kn : m.part[2].n_ids;
    if (krows == 2) {
        m.part[2].offsets = bad;
        m.part[2].n_offsets = 2;
        expect_refused(&m.q, CQR_EINVAL, "part 2: offsets must start at 0");
        m.part[2].offsets = (uint32_t *)ko;
        m.part[2].n_offsets = kn;
    }
    /* Unknown pooling. */
    m.part[1].pooling = (Cqrps__V1__Pooling)7;
    expect_refused(&m.q, CQR_EINVAL, "part 1: unknown pooling 7");
    m.part[1].pooling = 0;
    /* Over --max-batch in total (5000), each part under it. */
    uint64_t *many = calloc(2600, sizeof *many);
    const uint64_t *kids = m.part[0].ids;
    size_t kcount = m.part[0].n_ids;
    m.part[0].ids = many;
    m.part[0].n_ids = 2600;
    m.part[1].ids = many;
    m.part[1].n_ids = 2600;
    expect_refused(&m.q, CQR_ELIMIT, "IDs in one request (all parts)");
    free(many);
    (void)kids;
    (void)kcount;
    mreq_free(&m);

    /* Table fields beside parts. */
    mreq_make(&m, 2, 0, 0);
    m.lk.table = (char *)"ce8";
    expect_refused(&m.q, CQR_EINVAL, "or parts, not both");
    mreq_free(&m);
    digests(after);
    for (size_t i = 0; i < NTABLES; i++)
        ck_assert_str_eq(before[i], after[i]);
}
END_TEST

/* More than CQR_WIRE_MAX_PARTS parts are refused before decoding. */
START_TEST(test_part_limit)
{
    size_t np = CQR_WIRE_MAX_PARTS + 1;
    Cqrps__V1__TablePart *part = calloc(np, sizeof *part);
    Cqrps__V1__TablePart **parts = calloc(np, sizeof *parts);
    for (size_t i = 0; i < np; i++) {
        cqrps__v1__table_part__init(&part[i]);
        part[i].table = (char *)"hash1";
        parts[i] = &part[i];
    }
    Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
    lk.parts = parts;
    lk.n_parts = np;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
    q.lookup = &lk;
    q.id = 99;
    uint64_t ops0 = ctx.ctr.ops[CQR_WIRE_LOOKUP - 10];
    expect_refused(&q, CQR_ELIMIT, "1025 table parts; the limit is 1024");
    ck_assert_uint_eq(ctx.ctr.ops[CQR_WIRE_LOOKUP - 10] - ops0, 2);
    lk.n_parts = CQR_WIRE_MAX_PARTS;
    Response *r = call(&q, 0, NULL, NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_uint_eq(r->lookup->n_dims, CQR_WIRE_MAX_PARTS);
    rq_done(r);
    free(parts);
    free(part);
}
END_TEST

/* The optimizer update: values, bits, errors, and the step it changes. */
START_TEST(test_update_optimizer)
{
    Cqrps__V1__OptimizerConfig o = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    o.kind = CQRPS__V1__OPTIMIZER__SGD;
    o.lr = 0.5f;
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__FULL;
    tc.dim = 2;
    tc.optimizer = &o;
    int rc;
    ck_assert_int_eq(rq_status(rq_create(&ctx, &sess, "sgd", &tc, &rc)), 0);

    Cqrps__V1__OptimizerConfig v = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    v.lr = 0.125f;
    v.weight_decay = 123.0f; /* not in `set`: ignored */
    Cqrps__V1__UpdateOptimizer u = CQRPS__V1__UPDATE_OPTIMIZER__INIT;
    u.table = (char *)"sgd";
    u.optimizer = &v;
    u.set = 1;
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_UPDATE_OPTIMIZER;
    q.update_optimizer = &u;
    Response *r = rq_call(&ctx, &sess, &q, &rc);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_TABLE);
    ck_assert(r->table->config->optimizer->lr == 0.125f);
    ck_assert(r->table->config->optimizer->weight_decay == 0.0f);
    rq_done(r);

    uint64_t id = 42;
    float w0[2], w1[2], g[2] = {1.0f, -3.0f};
    r = rq_lookup(&ctx, &sess, "sgd", &id, 1, NULL, 0, 0, &rc);
    memcpy(w0, r->lookup->vectors.data, sizeof w0);
    rq_done(r);
    ck_assert_int_eq(rq_status(rq_push(&ctx, &sess, "sgd", &id, 1, g, 2,
                                       NULL, 0, &rc)), 0);
    r = rq_lookup(&ctx, &sess, "sgd", &id, 1, NULL, 0, 0, &rc);
    memcpy(w1, r->lookup->vectors.data, sizeof w1);
    rq_done(r);
    ck_assert(w1[0] == w0[0] - 0.125f * g[0]);
    ck_assert(w1[1] == w0[1] - 0.125f * g[1]);

    v.lr = -1.0f;
    r = rq_call(&ctx, &sess, &q, &rc);
    ck_assert_int_eq(-(int)r->status, CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(r->message, "learning rate"));
    rq_done(r);
    u.set = 64;
    ck_assert_int_eq(rq_status(rq_call(&ctx, &sess, &q, &rc)), CQR_EINVAL);
    u.set = 1;
    u.table = (char *)"nosuch";
    ck_assert_int_eq(rq_status(rq_call(&ctx, &sess, &q, &rc)),
                     CQR_ENOTFOUND);
    u.table = (char *)"sgd";
    u.optimizer = NULL;
    ck_assert_int_eq(rq_status(rq_call(&ctx, &sess, &q, &rc)), CQR_EINVAL);
    r = rq_describe(&ctx, &sess, "sgd", &rc);
    ck_assert(r->table->config->optimizer->lr == 0.125f);
    rq_done(r);
    /* Counted as its own operation. */
    ck_assert_uint_eq(ctx.ctr.ops[CQRPS__V1__REQUEST__OP_UPDATE_OPTIMIZER -
                                  10], 5);
}
END_TEST

/* What an old client sends -- one table, no parts, no bf16 -- is answered
 * as before: a Lookup reply of dim and vectors only (no dims, no bf16
 * field), a Push reply of the IDs applied, on both decoders; the bytes are
 * those of protobuf-c packing exactly those fields. */
static void expect_old_reply(Request *q, int mode, uint32_t dim, size_t n)
{
    uint8_t *bytes = NULL;
    size_t nb = 0;
    Response *r = call(q, mode, &bytes, &nb);
    ck_assert_int_eq(r->status, 0);
    Response e = CQRPS__V1__RESPONSE__INIT;
    e.id = q->id;
    e.message = (char *)"";
    Cqrps__V1__LookupReply lr = CQRPS__V1__LOOKUP_REPLY__INIT;
    Cqrps__V1__PushReply pr = CQRPS__V1__PUSH_REPLY__INIT;
    if (q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP) {
        ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_LOOKUP);
        ck_assert_uint_eq(r->lookup->n_dims, 0);
        ck_assert(!r->lookup->bf16);
        ck_assert_uint_eq(r->lookup->vectors.len, n * dim * sizeof(float));
        lr.dim = dim;
        lr.vectors = r->lookup->vectors;
        e.reply_case = CQRPS__V1__RESPONSE__REPLY_LOOKUP;
        e.lookup = &lr;
    } else {
        ck_assert_int_eq(r->reply_case, CQRPS__V1__RESPONSE__REPLY_PUSH);
        pr.applied = r->push->applied;
        e.reply_case = CQRPS__V1__RESPONSE__REPLY_PUSH;
        e.push = &pr;
    }
    size_t m = cqrps__v1__response__get_packed_size(&e);
    ck_assert_uint_eq(m, nb);
    uint8_t *want = malloc(m + 1);
    cqrps__v1__response__pack(&e, want);
    ck_assert_mem_eq(want, bytes, m);
    free(want);
    free(bytes);
    rq_done(r);
}

START_TEST(test_old_requests_unchanged)
{
    uint64_t ids[40];
    for (size_t k = 0; k < 40; k++)
        ids[k] = k * 7 + 1;
    for (size_t t = 0; t < NTABLES; t++) {
        const uint32_t dim = tables[t].dim;
        for (int mode = FAST; mode <= SLOW; mode++) {
            Cqrps__V1__Lookup lk = CQRPS__V1__LOOKUP__INIT;
            lk.table = (char *)tables[t].name;
            lk.ids = ids;
            lk.n_ids = 40;
            Request q = CQRPS__V1__REQUEST__INIT;
            q.id = 77 + t;
            q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
            q.lookup = &lk;
            expect_old_reply(&q, mode, dim, 40);

            float *g = calloc(40 * dim, sizeof *g);
            for (size_t k = 0; k < 40 * dim; k++)
                g[k] = 0.001f * (float)(k % 13);
            Cqrps__V1__Push ps = CQRPS__V1__PUSH__INIT;
            ps.table = (char *)tables[t].name;
            ps.ids = ids;
            ps.n_ids = 40;
            ps.grads.data = (uint8_t *)g;
            ps.grads.len = 40 * dim * sizeof(float);
            q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
            q.push = &ps;
            expect_old_reply(&q, mode, dim, 40);
            free(g);
        }
    }
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("rpc_multi");
    TCase *tc = tcase_create("multi");
    tcase_set_timeout(tc, 240);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_lookup_equals_singles);
    tcase_add_test(tc, test_push_equals_singles);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_part_limit);
    tcase_add_test(tc, test_update_optimizer);
    tcase_add_test(tc, test_old_requests_unchanged);
    suite_add_tcase(s, tc);
    return s;
}
