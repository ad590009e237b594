/* The server's hand codec (server/rpc/wire.c) against protobuf-c, and the
 * request path that uses it (server/rpc/rpc.c) against the protobuf-c
 * fallback it keeps:
 *
 *   - decoding: on random Lookup and Push requests packed by protobuf-c,
 *     the fast decoder finds exactly the fields protobuf-c's unpack finds;
 *   - encoding: the hand-encoded LookupReply and PushReply Responses are
 *     byte-identical to protobuf-c's packing of the same Response;
 *   - malformed or unusual input (truncations, repeats, unknown fields,
 *     wrong wire types, odd names, out-of-range varints, random damage)
 *     makes the fast decoder decline, or else decode as protobuf-c does;
 *   - the frame reader's align hint finds a Push's gradients;
 *   - through cqr_rpc_handle, a request the fast path serves and the
 *     same request forced onto the fallback get byte-identical replies
 *     and leave the tables in the same state, whatever the alignment of
 *     the request in memory and of the reply in the output buffer, for
 *     successes and for every error. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "net/frame.h"
#include "ops/log.h"
#include "tables/registry.h"
#include "rpc/rpc.h"
#include "rpc/wire.h"
#include "check_main.h"

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

/* ---- deterministic randomness ----------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* A value of a random bit length, so every varint width shows up. */
static uint64_t rnd_bits(void)
{
    unsigned bits = (unsigned)below(65);
    if (bits == 0)
        return 0;
    uint64_t v = rnd();
    return bits == 64 ? v : v & ((UINT64_C(1) << bits) - 1);
}

/* ---- random requests --------------------------------------------------- */

/* One random Lookup or Push and the storage its message points to. */
typedef struct gen {
    Request q;
    Cqrps__V1__Lookup lk;
    Cqrps__V1__Push ps;
    char name[CQR_NAME_MAX + 8];
    uint64_t *ids;
    uint32_t *offsets;
    uint8_t *grads;
} gen_t;

static size_t rnd_count(void)
{
    switch (below(5)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return (size_t)below(8);
    case 3: return (size_t)below(300);
    default: return (size_t)below(3000);
    }
}

static void gen_request(gen_t *g, int push)
{
    memset(g, 0, sizeof *g);
    cqrps__v1__request__init(&g->q);
    g->q.id = rnd_bits();
    size_t nl = below(4) == 0 ? below(CQR_NAME_MAX + 1) : below(12);
    for (size_t i = 0; i < nl; i++)
        g->name[i] = (char)(0x20 + below(0x7f - 0x20));
    g->name[nl] = '\0';
    size_t n = rnd_count();
    g->ids = malloc((n ? n : 1) * sizeof *g->ids);
    for (size_t i = 0; i < n; i++)
        g->ids[i] = below(3) == 0 ? rnd() : below(100);
    size_t nb = below(3) == 0 ? rnd_count() : 0;
    g->offsets = malloc((nb ? nb : 1) * sizeof *g->offsets);
    for (size_t i = 0; i < nb; i++)
        g->offsets[i] = (uint32_t)(below(2) ? below(n + 2) : rnd_bits());
    int pooling = (int)below(2);
    if (!push) {
        cqrps__v1__lookup__init(&g->lk);
        g->lk.table = g->name;
        g->lk.ids = g->ids;
        g->lk.n_ids = n;
        g->lk.offsets = g->offsets;
        g->lk.n_offsets = nb;
        g->lk.pooling = (Cqrps__V1__Pooling)pooling;
        g->q.op_case = CQRPS__V1__REQUEST__OP_LOOKUP;
        g->q.lookup = &g->lk;
    } else {
        size_t gl = below(3) == 0 ? below(5000) : (nb ? nb : n) * 4 * 8;
        g->grads = malloc(gl ? gl : 1);
        for (size_t i = 0; i < gl; i++)
            g->grads[i] = (uint8_t)rnd();
        cqrps__v1__push__init(&g->ps);
        g->ps.table = g->name;
        g->ps.ids = g->ids;
        g->ps.n_ids = n;
        g->ps.grads.data = g->grads;
        g->ps.grads.len = gl;
        g->ps.offsets = g->offsets;
        g->ps.n_offsets = nb;
        g->ps.pooling = (Cqrps__V1__Pooling)pooling;
        g->q.op_case = CQRPS__V1__REQUEST__OP_PUSH;
        g->q.push = &g->ps;
    }
}

static void gen_free(gen_t *g)
{
    free(g->ids);
    free(g->offsets);
    free(g->grads);
}

/* Packs q into a malloc'd buffer, `shift` bytes in (so that its fields
 * land at every alignment); *n gets the body length. */
static uint8_t *pack_at(const Request *q, size_t shift, size_t *n,
                        uint8_t **mem)
{
    *n = cqrps__v1__request__get_packed_size(q);
    *mem = malloc(*n + shift + 1);
    ck_assert_ptr_nonnull(*mem);
    ck_assert_uint_eq(cqrps__v1__request__pack(q, *mem + shift), *n);
    return *mem + shift;
}

/* Asserts that d holds exactly protobuf-c's reading of the same body. */
static void expect_same(const cqr_wire_data_t *d, const Request *q)
{
    ck_assert_uint_eq(d->id, q->id);
    const char *table;
    const uint64_t *ids;
    size_t n_ids, n_offsets;
    const uint32_t *offsets;
    int pooling;
    if (q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP) {
        ck_assert_uint_eq(d->op, CQR_WIRE_LOOKUP);
        table = q->lookup->table;
        ids = q->lookup->ids;
        n_ids = q->lookup->n_ids;
        offsets = q->lookup->offsets;
        n_offsets = q->lookup->n_offsets;
        pooling = (int)q->lookup->pooling;
        ck_assert_ptr_null(d->grads);
        ck_assert_uint_eq(d->grads_len, 0);
    } else {
        ck_assert_int_eq(q->op_case, CQRPS__V1__REQUEST__OP_PUSH);
        ck_assert_uint_eq(d->op, CQR_WIRE_PUSH);
        table = q->push->table;
        ids = q->push->ids;
        n_ids = q->push->n_ids;
        offsets = q->push->offsets;
        n_offsets = q->push->n_offsets;
        pooling = (int)q->push->pooling;
        ck_assert_uint_eq(d->grads_len, q->push->grads.len);
        if (d->grads_len > 0)
            ck_assert_mem_eq(d->grads, q->push->grads.data, d->grads_len);
    }
    ck_assert_uint_eq(d->table_len, strlen(table));
    if (d->table_len > 0)
        ck_assert_mem_eq(d->table, table, d->table_len);
    /* Element loops use plain ifs: every check assertion that passes is
     * logged to a file, which would dominate the run time. */
    ck_assert_uint_eq(d->n_ids, n_ids);
    for (size_t i = 0; i < n_ids; i++) {
        uint64_t v;
        memcpy(&v, d->ids + 8 * i, sizeof v);
        if (v != ids[i])
            ck_abort_msg("id %zu: %llu, protobuf-c %llu", i,
                         (unsigned long long)v, (unsigned long long)ids[i]);
    }
    ck_assert_uint_eq(d->n_offsets, n_offsets);
    uint32_t *offs = malloc((n_offsets ? n_offsets : 1) * sizeof *offs);
    cqr_wire_offsets(d, offs);
    for (size_t i = 0; i < n_offsets; i++)
        if (offs[i] != offsets[i])
            ck_abort_msg("offset %zu: %u, protobuf-c %u", i, offs[i],
                         offsets[i]);
    free(offs);
    ck_assert_int_eq((int)d->pooling, pooling);
}

/* The decoder's contract on any bytes: decline, or read what protobuf-c
 * reads. Returns whether it accepted. */
static int check_bytes(const uint8_t *body, size_t len)
{
    cqr_wire_data_t d;
    int fast = cqr_wire_decode_data(body, len, &d);
    if (!fast)
        return 0;
    Request *q = cqrps__v1__request__unpack(NULL, len, body);
    ck_assert_msg(q != NULL, "fast decoder took bytes protobuf-c refuses");
    expect_same(&d, q);
    cqrps__v1__request__free_unpacked(q, NULL);
    return 1;
}

/* ---- decoding ---------------------------------------------------------- */

START_TEST(test_decode_matches_protobuf)
{
    for (int iter = 0; iter < 4000; iter++) {
        gen_t g;
        gen_request(&g, iter % 2);
        size_t n;
        uint8_t *mem;
        uint8_t *body = pack_at(&g.q, (size_t)below(8), &n, &mem);
        cqr_wire_data_t d;
        ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 1);
        Request *q = cqrps__v1__request__unpack(NULL, n, body);
        ck_assert_ptr_nonnull(q);
        expect_same(&d, q);
        cqrps__v1__request__free_unpacked(q, NULL);
        free(mem);
        gen_free(&g);
    }
}
END_TEST

/* Appends a varint. */
static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* A Request {id = 7, op {sub}} around hand-made Lookup/Push bytes. */
static size_t wrap(uint8_t *out, uint32_t op, const uint8_t *sub, size_t n)
{
    size_t k = 0;
    out[k++] = 0x08;
    out[k++] = 7;
    k += put_varint(out + k, (uint64_t)op << 3 | 2);
    k += put_varint(out + k, n);
    memcpy(out + k, sub, n);
    return k + n;
}

/* Asserts that the fast decoder declines sub (wrapped in op). */
static void expect_decline_sub(uint32_t op, const uint8_t *sub, size_t n)
{
    uint8_t buf[256];
    ck_assert_uint_le(n + 16, sizeof buf);
    size_t len = wrap(buf, op, sub, n);
    cqr_wire_data_t d;
    ck_assert_msg(cqr_wire_decode_data(buf, len, &d) == 0,
                  "fast decoder took an odd %s (%zu bytes, first %02x)",
                  op == CQR_WIRE_PUSH ? "Push" : "Lookup", n,
                  n ? sub[0] : 0);
}

static void expect_decline(const uint8_t *body, size_t n)
{
    cqr_wire_data_t d;
    ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 0);
}

#define SUB(op, ...)                                                       \
    do {                                                                   \
        const uint8_t b_[] = {__VA_ARGS__};                                \
        expect_decline_sub(op, b_, sizeof b_);                             \
    } while (0)

#define BODY(...)                                                          \
    do {                                                                   \
        const uint8_t b_[] = {__VA_ARGS__};                                \
        expect_decline(b_, sizeof b_);                                     \
    } while (0)

START_TEST(test_decline_odd_input)
{
    const uint32_t L = CQR_WIRE_LOOKUP, P = CQR_WIRE_PUSH;
    /* The plain case is taken, so the declines below are about the odd
     * part. */
    const uint8_t ok[] = {0x0a, 1, 't', 0x12, 8, 1, 0, 0, 0, 0, 0, 0, 0,
                          0x1a, 2, 0, 1, 0x20, 1};
    uint8_t buf[64];
    size_t len = wrap(buf, L, ok, sizeof ok);
    ck_assert_int_eq(check_bytes(buf, len), 1);

    /* Not a Lookup or Push at all. */
    expect_decline(NULL, 0);
    expect_decline(buf, 0);
    BODY(0x08, 0x05);                        /* only an id */
    BODY(0x52, 0x00);                        /* Hello {} */
    BODY(0x6a, 0x00);                        /* ListTables {} */
    /* Request level: repeats, unknown fields, wrong wire types. */
    BODY(0x08, 1, 0x08, 2, 0x7a, 0);         /* id twice */
    BODY(0x7a, 0, 0x7a, 0);                  /* Lookup twice */
    BODY(0x7a, 0, 0x82, 0x01, 0);            /* Lookup then Push */
    BODY(0x7a, 0, 0x10, 1);                  /* unknown field 2 */
    BODY(0x7a, 0, 0xf8, 0x07, 1);            /* unknown field 127 */
    BODY(0x09, 1, 0, 0, 0, 0, 0, 0, 0, 0x7a, 0); /* id as fixed64 */
    BODY(0x78, 0);                           /* Lookup as a varint */
    BODY(0x88, 0x00, 1, 0x7a, 0);            /* padded key */
    BODY(0xfa, 0x80, 0x00, 0);               /* padded two-byte key */
    BODY(0x00, 0x7a, 0);                     /* field 0 */
    /* Varints: 11 bytes, a tenth byte over 1, truncated, lengths. */
    BODY(0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
         0x00, 0x7a, 0);
    BODY(0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02,
         0x7a, 0);
    BODY(0x7a, 0, 0x08, 0x80);               /* id cut short */
    BODY(0x7a, 5, 0x0a, 1, 't');             /* Lookup runs past the end */
    BODY(0x7a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00); /* 6-byte length */
    BODY(0x7a);                              /* no length */

    /* Inside Lookup and Push. */
    SUB(L, 0x0a, 1, 't', 0x0a, 1, 't');      /* table twice */
    SUB(L, 0x12, 0, 0x12, 0);                /* ids twice (concatenated) */
    SUB(L, 0x1a, 0, 0x1a, 0);                /* offsets twice */
    SUB(L, 0x20, 0, 0x20, 1);                /* pooling twice */
    SUB(L, 0x30, 1);                         /* unknown field 6 */
    SUB(L, 0x2a, 0);                         /* unknown field 5 (LEN) */
    SUB(P, 0x30, 1);                         /* unknown field 6 */
    SUB(L, 0x11, 1, 0, 0, 0, 0, 0, 0, 0);   /* ids unpacked (fixed64) */
    SUB(L, 0x18, 1);                         /* offsets unpacked */
    SUB(P, 0x20, 1);                         /* offsets unpacked */
    SUB(L, 0x08, 1);                         /* table as a varint */
    SUB(L, 0x22, 1, 0);                      /* pooling as LEN */
    SUB(P, 0x1d, 0, 0, 0, 0);                /* grads as fixed32 */
    SUB(L, 0x12, 7, 1, 2, 3, 4, 5, 6, 7);    /* ids not a multiple of 8 */
    SUB(L, 0x12, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9);
    SUB(L, 0x1a, 1, 0x80);                   /* offsets end mid-varint */
    SUB(L, 0x1a, 6, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00); /* 6 bytes */
    SUB(L, 0x1a, 5, 0xff, 0xff, 0xff, 0xff, 0x1f); /* > UINT32_MAX */
    SUB(L, 0x20, 2);                         /* unknown pooling */
    SUB(P, 0x28, 2);
    SUB(L, 0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0x01);                               /* pooling -1 */
    SUB(L, 0x0a, 2, 'a', 0x00);              /* NUL in the name */
    SUB(L, 0x0a, 3, 'a', '\n', 'b');         /* control character */
    SUB(L, 0x0a, 2, 0xc3, 0xa9);             /* not ASCII */
    SUB(L, 0x0a, 1, 0x7f);                   /* DEL */
    SUB(L, 0x0a, 5, 't');                    /* name runs past the end */
    SUB(L, 0x12, 0x80);                      /* length cut short */

    /* A name of CQR_NAME_MAX bytes is taken, one more is declined. */
    uint8_t sub[200], big[256];
    sub[0] = 0x0a;
    size_t h = 1 + put_varint(sub + 1, CQR_NAME_MAX);
    memset(sub + h, 'n', CQR_NAME_MAX + 1);
    len = wrap(big, L, sub, h + CQR_NAME_MAX);
    ck_assert_int_eq(check_bytes(big, len), 1);
    h = 1 + put_varint(sub + 1, CQR_NAME_MAX + 1);
    expect_decline_sub(L, sub, h + CQR_NAME_MAX + 1);

    /* What protobuf-c reads the same way is taken: fields in any order,
     * an empty Lookup, non-minimal varint values, a 10-byte id. */
    const uint8_t any_order[] = {0x82, 0x01, 7, 0x28, 1, 0x1a, 0, 0x0a, 1,
                                 'x', 0x08, 0x80, 0x01};
    ck_assert_int_eq(check_bytes(any_order, sizeof any_order), 1);
    const uint8_t empty[] = {0x7a, 0};
    ck_assert_int_eq(check_bytes(empty, sizeof empty), 1);
    const uint8_t padded_vals[] = {0x08, 0x81, 0x00, 0x7a, 7, 0x20, 0x81,
                                   0x00, 0x1a, 2, 0x80, 0x00};
    ck_assert_int_eq(check_bytes(padded_vals, sizeof padded_vals), 1);
    const uint8_t id_max[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                              0xff, 0xff, 0xff, 0x01, 0x7a, 0};
    ck_assert_int_eq(check_bytes(id_max, sizeof id_max), 1);
    cqr_wire_data_t d;
    ck_assert_int_eq(cqr_wire_decode_data(id_max, sizeof id_max, &d), 1);
    ck_assert_uint_eq(d.id, UINT64_MAX);
}
END_TEST

/* Random damage to valid requests: every prefix, and bytes flipped,
 * dropped or inserted. The fast decoder may take a damaged request only
 * if protobuf-c reads the same fields from it. */
START_TEST(test_damaged_requests)
{
    size_t taken = 0, declined = 0;
    for (int iter = 0; iter < 3000; iter++) {
        gen_t g;
        gen_request(&g, iter % 2);
        /* Small messages, so that damage hits their structure. */
        g.lk.n_ids = g.lk.n_ids % 6;
        g.ps.n_ids = g.ps.n_ids % 6;
        g.lk.n_offsets = g.lk.n_offsets % 4;
        g.ps.n_offsets = g.ps.n_offsets % 4;
        g.ps.grads.len = g.ps.grads.len % 24;
        g.name[below(6)] = '\0';
        size_t n;
        uint8_t *mem;
        uint8_t *body = pack_at(&g.q, 0, &n, &mem);
        uint8_t *buf = malloc(n + 16);
        if (iter % 10 == 0) {
            for (size_t cut = 0; cut < n; cut++)
                check_bytes(body, cut);
        }
        for (int k = 0; k < 20; k++) {
            memcpy(buf, body, n);
            size_t len = n;
            size_t at = (size_t)below(n);
            switch (below(4)) {
            case 0: buf[at] = (uint8_t)rnd(); break;
            case 1: buf[at] ^= (uint8_t)(1u << below(8)); break;
            case 2:
                memmove(buf + at, buf + at + 1, n - at - 1);
                len--;
                break;
            default:
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = (uint8_t)rnd();
                len++;
                break;
            }
            if (check_bytes(buf, len))
                taken++;
            else
                declined++;
        }
        free(buf);
        free(mem);
        gen_free(&g);
    }
    /* Both outcomes happen, so the property was exercised. */
    ck_assert_uint_gt(taken, 100);
    ck_assert_uint_gt(declined, 100);
}
END_TEST

/* The frame reader's hint names exactly where a Push's gradients start,
 * as soon as the fields before them have arrived, and nothing else. */
START_TEST(test_align_hint)
{
    for (int iter = 0; iter < 400; iter++) {
        gen_t g;
        gen_request(&g, iter % 3 != 0);
        g.lk.n_ids %= 40;
        g.ps.n_ids %= 40;
        size_t n;
        uint8_t *mem;
        uint8_t *body = pack_at(&g.q, 0, &n, &mem);
        cqr_wire_data_t d;
        ck_assert_int_eq(cqr_wire_decode_data(body, n, &d), 1);
        size_t want = d.grads != NULL ? (size_t)(d.grads - body) : SIZE_MAX;
        for (size_t avail = 0; avail <= n; avail++) {
            size_t h = cqr_wire_align_hint(body, avail);
            if (avail >= want && want != SIZE_MAX) {
                if (h != want)
                    ck_abort_msg("hint %zu, grads at %zu", h, want);
            } else if (h != SIZE_MAX) {
                ck_abort_msg("hint %zu with %zu bytes, grads at %zu", h,
                             avail, want);
            }
        }
        free(mem);
        gen_free(&g);
    }
}
END_TEST

/* ---- encoding ---------------------------------------------------------- */

/* Vector sizes around every varint width of the lengths. */
static size_t rnd_vec_bytes(void)
{
    static const size_t edges[] = {0, 1, 4, 120, 127, 128, 129, 16370,
                                   16383, 16384, 16390, 2097140, 2097151,
                                   2097152, 2097160};
    if (below(2) == 0)
        return edges[below(sizeof edges / sizeof edges[0])];
    return (size_t)below(70000);
}

START_TEST(test_lookup_reply_bytes)
{
    uint8_t *vec = malloc(2097160);
    for (size_t i = 0; i < 2097160; i++)
        vec[i] = (uint8_t)(i * 31 + 7);
    for (int iter = 0; iter < 600; iter++) {
        uint64_t id = rnd_bits();
        uint32_t dim = below(3) == 0 ? (uint32_t)rnd_bits() :
                                       (uint32_t)below(4097);
        size_t vb = rnd_vec_bytes();
        Cqrps__V1__LookupReply lr = CQRPS__V1__LOOKUP_REPLY__INIT;
        lr.dim = dim;
        lr.vectors.data = vec;
        lr.vectors.len = vb;
        Response resp = CQRPS__V1__RESPONSE__INIT;
        resp.id = id;
        resp.status = CQRPS__V1__STATUS__OK;
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_LOOKUP;
        resp.lookup = &lr;
        size_t want = cqrps__v1__response__get_packed_size(&resp);
        uint8_t *a = malloc(want);
        ck_assert_uint_eq(cqrps__v1__response__pack(&resp, a), want);

        size_t head = cqr_wire_lookup_head_len(id, dim, vb);
        ck_assert_uint_le(head, CQR_WIRE_HEAD_MAX);
        ck_assert_uint_eq(head + vb, want);
        uint8_t *b = malloc(head + vb + 1);
        ck_assert_uint_eq(cqr_wire_lookup_head(b, id, dim, vb), head);
        if (vb > 0)
            memcpy(b + head, vec, vb);
        ck_assert_mem_eq(a, b, want);
        free(a);
        free(b);
    }
    free(vec);
}
END_TEST

START_TEST(test_push_reply_bytes)
{
    for (int iter = 0; iter < 3000; iter++) {
        uint64_t id = rnd_bits(), applied = rnd_bits();
        if (iter < 4) {
            id = iter & 1 ? UINT64_MAX : 0;
            applied = iter & 2 ? UINT64_MAX : 0;
        }
        Cqrps__V1__PushReply pr = CQRPS__V1__PUSH_REPLY__INIT;
        pr.applied = applied;
        Response resp = CQRPS__V1__RESPONSE__INIT;
        resp.id = id;
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_PUSH;
        resp.push = &pr;
        uint8_t a[64], b[64];
        size_t want = cqrps__v1__response__get_packed_size(&resp);
        ck_assert_uint_le(want, sizeof a);
        cqrps__v1__response__pack(&resp, a);
        size_t got = cqr_wire_push_reply(b, id, applied);
        ck_assert_uint_le(got, CQR_WIRE_HEAD_MAX);
        ck_assert_uint_eq(got, want);
        ck_assert_mem_eq(a, b, want);
    }
}
END_TEST

/* ---- through cqr_rpc_handle -------------------------------------------- */

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

    Response *resp = cqrps__v1__response__unpack(NULL, r.len, r.data);
    ck_assert_ptr_nonnull(resp);
    size_t n = cqrps__v1__response__get_packed_size(resp);
    ck_assert_uint_eq(n, r.len);
    uint8_t *again = malloc(n + 1);
    cqrps__v1__response__pack(resp, again);
    ck_assert_mem_eq(again, r.data, n);
    free(again);
    cqrps__v1__response__free_unpacked(resp, NULL);
    return r;
}

static Response *unpack_reply(const reply_t *r)
{
    Response *resp = cqrps__v1__response__unpack(NULL, r->len, r->data);
    ck_assert_ptr_nonnull(resp);
    return resp;
}

/* The same request as `body`, with an unknown field that protobuf-c
 * skips and the fast decoder declines: the fallback path. */
static uint8_t *slow_variant(const uint8_t *body, size_t len, size_t *n)
{
    uint8_t *p = malloc(len + 3);
    memcpy(p, body, len);
    p[len] = 0x98; /* field 99, varint */
    p[len + 1] = 0x06;
    p[len + 2] = 0x01;
    *n = len + 3;
    return p;
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
    uint8_t *slow = slow_variant(body, n, &sn);
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
    Cqrps__V1__OptimizerConfig o = CQRPS__V1__OPTIMIZER_CONFIG__INIT;
    o.kind = CQRPS__V1__OPTIMIZER__ADAM;
    o.lr = 0.05f;
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = kind;
    tc.dim = dim;
    tc.rows = rows;
    tc.seed = 7;
    tc.optimizer = &o;
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
    uint8_t *slow = slow_variant(body, n, &sn);
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
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("codec");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_decode_matches_protobuf);
    tcase_add_test(tc, test_decline_odd_input);
    tcase_add_test(tc, test_damaged_requests);
    tcase_add_test(tc, test_align_hint);
    tcase_add_test(tc, test_lookup_reply_bytes);
    tcase_add_test(tc, test_push_reply_bytes);
    suite_add_tcase(s, tc);
    TCase *rpc = tcase_create("rpc");
    tcase_set_timeout(rpc, 240);
    tcase_add_checked_fixture(rpc, setup, teardown);
    tcase_add_test(rpc, test_rpc_fast_matches_fallback);
    tcase_add_test(rpc, test_rpc_reply_alignment);
    tcase_add_test(rpc, test_rpc_fast_path_checks);
    suite_add_tcase(s, rpc);
    return s;
}
