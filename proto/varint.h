/* varint.h -- the protobuf base-128 varint, the one codec of it for the
 * server's and the client's hand-written wire code (server/rpc/wire.c,
 * client/wire.c, client/conn.c).
 *
 * Rules: header-only and pure (static inline, no allocation, no I/O), so
 * both libraries inline it on their hot paths without a link dependency.
 * The encoder writes the minimal encoding protobuf writes, so hand-encoded
 * bytes equal protobuf-c's (tests/rpc/test_wire.c and
 * tests/client/test_client_rpc.c compare them). The decoder never reads
 * past `end`; which inputs it declines beyond "truncated or longer than
 * max bytes" is each caller's policy (the server also refuses a tenth
 * byte above 1, protobuf-c silently drops those bits).
 */
#ifndef CQR_PROTO_VARINT_H
#define CQR_PROTO_VARINT_H

#include <stddef.h>
#include <stdint.h>

/* Longest encoding of a 64-bit varint. */
#define CQR_VARINT_MAX 10

/* Bytes of v's encoding (1..CQR_VARINT_MAX). */
static inline size_t cqr_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes v at p (room for cqr_varint_len(v) bytes); returns the bytes
 * written. */
static inline size_t cqr_varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Reads a varint of at most max bytes (capped at CQR_VARINT_MAX) from
 * [*p, end) into *v and advances *p past it. Returns 1, or 0 when the
 * input ends first or the varint is longer than max (then *p is left
 * somewhere inside it and *v is untouched). Bits beyond 64 are dropped. */
static inline int cqr_varint_get(const uint8_t **p, const uint8_t *end,
                                 unsigned max, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned i = 0; i < max && i < CQR_VARINT_MAX; i++) {
        if (*p >= end)
            return 0;
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            *v = x;
            return 1;
        }
    }
    return 0;
}

#endif
