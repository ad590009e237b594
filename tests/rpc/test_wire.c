/* The server's hand codec (server/rpc/wire.c) against protobuf-c:
 *
 *   - decoding: on random Lookup and Push requests packed by protobuf-c,
 *     the fast decoder finds exactly the fields protobuf-c's unpack finds;
 *   - encoding: the hand-encoded LookupReply and PushReply Responses are
 *     byte-identical to protobuf-c's packing of the same Response;
 *   - malformed or unusual input (truncations, repeats, unknown fields,
 *     wrong wire types, odd names, out-of-range varints, random damage)
 *     makes the fast decoder decline, or else decode as protobuf-c does;
 *   - the frame reader's align hint finds a Push's gradients.
 * The request path that uses the codec is test_rpc_fast.c's. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.pb-c.h"
#include "proto/varint.h"
#include "rpc/wire.h"
#include "check_main.h"
#include "wire_gen.h"

typedef Cqrps__V1__Request Request;
typedef Cqrps__V1__Response Response;

/* Asserts that the fast decoder's part w is protobuf-c's part p. */
static void expect_same_part(const cqr_wire_part_t *w,
                             const Cqrps__V1__TablePart *p)
{
    ck_assert_uint_eq(w->table_len, strlen(p->table));
    if (w->table_len > 0)
        ck_assert_mem_eq(w->table, p->table, w->table_len);
    ck_assert_uint_eq(w->n_ids, p->n_ids);
    if (p->n_ids > 0 && memcmp(w->ids, p->ids, 8 * p->n_ids) != 0)
        ck_abort_msg("a part's IDs differ");
    ck_assert_uint_eq(w->n_offsets, p->n_offsets);
    uint32_t *offs = malloc((p->n_offsets ? p->n_offsets : 1) * 4);
    cqr_wire_part_offsets(w, offs);
    if (p->n_offsets > 0 && memcmp(offs, p->offsets, 4 * p->n_offsets) != 0)
        ck_abort_msg("a part's offsets differ");
    free(offs);
    ck_assert_uint_eq(w->pooling, (uint32_t)p->pooling);
}

/* The parts and the bf16 flag of d against protobuf-c's. */
static void expect_same_parts(const cqr_wire_data_t *d, const Request *q)
{
    int lookup = q->op_case == CQRPS__V1__REQUEST__OP_LOOKUP;
    size_t np = lookup ? q->lookup->n_parts : q->push->n_parts;
    Cqrps__V1__TablePart **pp = lookup ? q->lookup->parts : q->push->parts;
    ck_assert_int_eq(d->bf16, lookup ? q->lookup->bf16 : q->push->bf16);
    ck_assert_uint_eq(d->n_parts, np);
    const uint8_t *cur = d->parts;
    const uint8_t *end = np > 0 ? d->parts + d->parts_len : NULL;
    for (size_t i = 0; i < np; i++) {
        cqr_wire_part_t w;
        cqr_wire_part_next(&cur, end, &w);
        expect_same_part(&w, pp[i]);
    }
    ck_assert_ptr_eq(cur, end);
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
    expect_same_parts(d, q);
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
    for (int iter = 0; iter < 6000; iter++) {
        gen_t g;
        if (iter % 3 == 2)
            gen_multi(&g, iter % 2);
        else
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

/* A Request {id = 7, op {sub}} around hand-made Lookup/Push bytes. */
static size_t wrap(uint8_t *out, uint32_t op, const uint8_t *sub, size_t n)
{
    size_t k = 0;
    out[k++] = 0x08;
    out[k++] = 7;
    k += cqr_varint_put(out + k, (uint64_t)op << 3 | 2);
    k += cqr_varint_put(out + k, n);
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

/* The bytes given as arguments, as a (pointer, length) pair. */
#define BYTES(...)                                                         \
    (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})
#define SUB(op, ...) expect_decline_sub(op, BYTES(__VA_ARGS__))
#define BODY(...) expect_decline(BYTES(__VA_ARGS__))

/* Bytes that are no Lookup or Push the decoder reads at the Request
 * level: other operations, repeats, unknown fields, wrong wire types,
 * odd varints and lengths. */
static void decline_odd_requests(void)
{
    /* Not a Lookup or Push at all. */
    expect_decline(NULL, 0);
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
}

/* Lookup and Push bodies the decoder declines: repeated, unknown or
 * mistyped fields, odd parts, bad ids, offsets, pooling and names. */
static void decline_odd_bodies(void)
{
    const uint32_t L = CQR_WIRE_LOOKUP, P = CQR_WIRE_PUSH;
    SUB(L, 0x0a, 1, 't', 0x0a, 1, 't');      /* table twice */
    SUB(L, 0x12, 0, 0x12, 0);                /* ids twice (concatenated) */
    SUB(L, 0x1a, 0, 0x1a, 0);                /* offsets twice */
    SUB(L, 0x20, 0, 0x20, 1);                /* pooling twice */
    SUB(L, 0x38, 1);                         /* unknown field 7 */
    SUB(L, 0x3a, 0);                         /* unknown field 7 (LEN) */
    SUB(P, 0x40, 1);                         /* unknown field 8 */
    SUB(P, 0x30, 1);                         /* parts as a varint */
    SUB(L, 0x30, 2);                         /* bf16 other than 0/1 */
    SUB(L, 0x30, 1, 0x30, 1);                /* bf16 twice */
    SUB(L, 0x2a, 0, 0x30, 1, 0x2a, 0);       /* parts apart */
    SUB(L, 0x2a, 2, 0x28, 1);                /* a part's unknown field */
    SUB(L, 0x2a, 6, 0x0a, 1, 't', 0x0a, 1, 't'); /* a part's name twice */
    SUB(L, 0x2a, 2, 0x20, 2);                /* a part's bad pooling */
    SUB(L, 0x2a, 3, 0x0a, 1, 0x00);          /* a part's bad name */
    SUB(L, 0x2a, 3, 0x12, 1, 0);             /* a part's odd ids */
    SUB(L, 0x2a, 5, 0x0a, 1, 't');           /* a part runs past */
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
}

/* What the decoder takes at the edges: the longest name, and what
 * protobuf-c reads the same way. */
static void take_edge_cases(void)
{
    const uint32_t L = CQR_WIRE_LOOKUP;
    /* A name of CQR_NAME_MAX bytes is taken, one more is declined. */
    uint8_t sub[200], big[256];
    sub[0] = 0x0a;
    size_t h = 1 + cqr_varint_put(sub + 1, CQR_NAME_MAX);
    memset(sub + h, 'n', CQR_NAME_MAX + 1);
    size_t len = wrap(big, L, sub, h + CQR_NAME_MAX);
    ck_assert_int_eq(check_bytes(big, len), 1);
    h = 1 + cqr_varint_put(sub + 1, CQR_NAME_MAX + 1);
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

START_TEST(test_decline_odd_input)
{
    /* The plain case is taken, so the declines below are about the odd
     * part. */
    const uint8_t ok[] = {0x0a, 1, 't', 0x12, 8, 1, 0, 0, 0, 0, 0, 0, 0,
                          0x1a, 2, 0, 1, 0x20, 1};
    uint8_t buf[64];
    size_t len = wrap(buf, CQR_WIRE_LOOKUP, ok, sizeof ok);
    ck_assert_int_eq(check_bytes(buf, len), 1);
    expect_decline(buf, 0);

    decline_odd_requests();
    decline_odd_bodies();
    take_edge_cases();
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
    for (int iter = 0; iter < 500; iter++) {
        gen_t g;
        /* Multi-table pushes too: protobuf encoders write the gradients
         * (field 3) before the parts (field 6), as libcqrps does. */
        if (iter >= 400)
            gen_multi(&g, 1);
        else
            gen_request(&g, iter % 3 != 0);
        for (size_t i = 0; i < g.ps.n_parts; i++)
            g.part[i].n_ids %= 40;
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
        /* A multi-table reply: no dim, the parts' dims, maybe bf16. */
        uint32_t dims[40];
        size_t nd = below(3) == 0 ? (size_t)below(41) : 0;
        for (size_t i = 0; i < nd; i++)
            dims[i] = (uint32_t)(below(2) ? below(4097) + 1 : rnd_bits());
        int bf16 = (int)below(2);
        if (nd > 0)
            dim = 0;
        lr.dim = dim;
        lr.vectors.data = vec;
        lr.vectors.len = vb;
        lr.dims = dims;
        lr.n_dims = nd;
        lr.bf16 = bf16;
        Response resp = CQRPS__V1__RESPONSE__INIT;
        resp.id = id;
        resp.status = CQRPS__V1__STATUS__OK;
        resp.reply_case = CQRPS__V1__RESPONSE__REPLY_LOOKUP;
        resp.lookup = &lr;
        size_t want = cqrps__v1__response__get_packed_size(&resp);
        uint8_t *a = malloc(want);
        ck_assert_uint_eq(cqrps__v1__response__pack(&resp, a), want);

        size_t tail = cqr_wire_lookup_tail_len(dims, nd, bf16);
        size_t head = cqr_wire_lookup_head_len(id, dim, vb, tail);
        ck_assert_uint_le(head, CQR_WIRE_HEAD_MAX);
        ck_assert_uint_eq(head + vb + tail, want);
        uint8_t *b = malloc(head + vb + tail + 1);
        ck_assert_uint_eq(cqr_wire_lookup_head(b, id, dim, vb, tail), head);
        if (vb > 0)
            memcpy(b + head, vec, vb);
        ck_assert_uint_eq(cqr_wire_lookup_tail(b + head + vb, dims, nd,
                                               bf16), tail);
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
    return s;
}
