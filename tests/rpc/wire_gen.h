/* wire_gen.h -- random Lookup and Push requests for the suites of the
 * RPC layer (test_wire.c: the codec against protobuf-c; test_rpc_fast.c:
 * the request path with and without it).
 *
 * The randomness is a fixed xorshift sequence, so every run of a suite
 * sees the same requests. Not thread-safe (one sequence per process).
 * Allocation failures abort the test (check's assertions).
 */
#ifndef CQR_TEST_WIRE_GEN_H
#define CQR_TEST_WIRE_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.pb-c.h"
#include "tables/registry.h"

/* The next value of the sequence. */
uint64_t rnd(void);

/* Uniform in [0, n); 0 when n is 0. */
uint64_t below(uint64_t n);

/* A value of a random bit length, so every varint width shows up. */
uint64_t rnd_bits(void);

/* Most table parts gen_multi makes. */
#define GEN_PARTS 5

/* One random Lookup or Push and the storage its message points to. */
typedef struct gen {
    Cqrps__V1__Request q;
    Cqrps__V1__Lookup lk;
    Cqrps__V1__Push ps;
    char name[CQR_NAME_MAX + 8];
    uint64_t *ids;
    uint32_t *offsets;
    uint8_t *grads;
    /* gen_multi's parts */
    Cqrps__V1__TablePart part[GEN_PARTS];
    Cqrps__V1__TablePart *parts[GEN_PARTS];
    char pname[GEN_PARTS][16];
    uint64_t *pids[GEN_PARTS];
    uint32_t *poffs[GEN_PARTS];
} gen_t;

/* Fills g with a random Lookup (push 0) or Push (push 1): any name of
 * printable ASCII, IDs, offsets, pooling and gradients of random sizes,
 * valid or not. Release with gen_free. */
void gen_request(gen_t *g, int push);
void gen_free(gen_t *g);

/* The same with 1..GEN_PARTS table parts of random names, IDs, offsets
 * and pooling, a random bf16 flag, and (mostly) no table fields beside
 * them. Release with gen_free. */
void gen_multi(gen_t *g, int push);

/* Packs q into a malloc'd buffer *mem, `shift` bytes in (so that its
 * fields land at every alignment); returns the body, *n its length. */
uint8_t *pack_at(const Cqrps__V1__Request *q, size_t shift, size_t *n,
                 uint8_t **mem);

/* The same request as body[0..len) with an unknown field (99, a
 * varint) appended, which protobuf-c skips and the fast decoder declines:
 * the request on the fallback path. malloc'd, *n long. */
uint8_t *gen_slow_variant(const uint8_t *body, size_t len, size_t *n);

#endif
