/* wire_gen.c -- random requests for the RPC suites (wire_gen.h). */
#include "wire_gen.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* A value of a random bit length, so every varint width shows up. */
uint64_t rnd_bits(void)
{
    unsigned bits = (unsigned)below(65);
    if (bits == 0)
        return 0;
    uint64_t v = rnd();
    return bits == 64 ? v : v & ((UINT64_C(1) << bits) - 1);
}

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

void gen_request(gen_t *g, int push)
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

void gen_multi(gen_t *g, int push)
{
    gen_request(g, push);
    size_t np = 1 + (size_t)below(GEN_PARTS);
    for (size_t i = 0; i < np; i++) {
        Cqrps__V1__TablePart *p = &g->part[i];
        cqrps__v1__table_part__init(p);
        size_t nl = (size_t)below(12);
        for (size_t k = 0; k < nl; k++)
            g->pname[i][k] = (char)(0x20 + below(0x7f - 0x20));
        g->pname[i][nl] = '\0';
        size_t n = (size_t)below(3) == 0 ? (size_t)below(2000)
                                         : (size_t)below(20);
        g->pids[i] = malloc((n ? n : 1) * sizeof(uint64_t));
        for (size_t k = 0; k < n; k++)
            g->pids[i][k] = below(2) ? rnd() : below(100);
        size_t nb = below(2) ? (size_t)below(n + 2) : 0;
        g->poffs[i] = malloc((nb ? nb : 1) * sizeof(uint32_t));
        for (size_t k = 0; k < nb; k++)
            g->poffs[i][k] = (uint32_t)(below(4) ? below(n + 1) : rnd_bits());
        p->table = g->pname[i];
        p->ids = g->pids[i];
        p->n_ids = n;
        p->offsets = g->poffs[i];
        p->n_offsets = nb;
        p->pooling = (Cqrps__V1__Pooling)below(2);
        g->parts[i] = p;
    }
    int mixed = below(8) == 0;
    protobuf_c_boolean bf16 = below(2) != 0;
    if (!push) {
        g->lk.parts = g->parts;
        g->lk.n_parts = np;
        g->lk.bf16 = bf16;
        if (!mixed) {
            g->lk.table = (char *)"";
            g->lk.n_ids = g->lk.n_offsets = 0;
            g->lk.pooling = 0;
        }
    } else {
        g->ps.parts = g->parts;
        g->ps.n_parts = np;
        g->ps.bf16 = bf16;
        if (!mixed) {
            g->ps.table = (char *)"";
            g->ps.n_ids = g->ps.n_offsets = 0;
            g->ps.pooling = 0;
        }
    }
}

void gen_free(gen_t *g)
{
    free(g->ids);
    free(g->offsets);
    free(g->grads);
    for (size_t i = 0; i < GEN_PARTS; i++) {
        free(g->pids[i]);
        free(g->poffs[i]);
    }
}

/* Packs q into a malloc'd buffer, `shift` bytes in (so that its fields
 * land at every alignment); *n gets the body length. */
uint8_t *pack_at(const Cqrps__V1__Request *q, size_t shift, size_t *n,
                        uint8_t **mem)
{
    *n = cqrps__v1__request__get_packed_size(q);
    *mem = malloc(*n + shift + 1);
    ck_assert_ptr_nonnull(*mem);
    ck_assert_uint_eq(cqrps__v1__request__pack(q, *mem + shift), *n);
    return *mem + shift;
}

uint8_t *gen_slow_variant(const uint8_t *body, size_t len, size_t *n)
{
    uint8_t *p = malloc(len + 3);
    ck_assert_ptr_nonnull(p);
    memcpy(p, body, len);
    p[len] = 0x98; /* field 99, varint */
    p[len + 1] = 0x06;
    p[len + 2] = 0x01;
    *n = len + 3;
    return p;
}
