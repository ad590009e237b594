/* bf16.h -- bfloat16 on the wire: the one converter of it for the server
 * (server/rpc/data.c) and the client library (client/multi.c).
 *
 * A request may ask for its vectors (Lookup) or carry its gradients
 * (Push) as bfloat16 (proto/cqrps.proto, `bf16`): the upper 16 bits of a
 * float32, little-endian, 2 bytes per value. Narrowing rounds to nearest,
 * ties to even, as PyTorch's float32 -> bfloat16 conversion does; NaN
 * stays NaN (quiet), infinities and signed zeros stay what they are, a
 * finite value too large for bfloat16 becomes infinity (as rounding
 * says). Widening is exact.
 *
 * Rules: header-only and pure (static inline, no allocation, no I/O); the
 * pointers may be unaligned (bytes are moved with memcpy). The array
 * conversions may run in place: narrowing writes 2 bytes per value
 * behind the 4 it reads (so `out` may equal `in`), widening must run
 * from the end when out and in overlap, which cqr_bf16_widen does when
 * they start at the same address.
 */
#ifndef CQR_PROTO_BF16_H
#define CQR_PROTO_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* float32 bits -> bfloat16 bits, rounded to nearest even. */
static inline uint16_t cqr_bf16_from_bits(uint32_t b)
{
    if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0)
        return (uint16_t)((b >> 16) | 0x0040u); /* NaN: keep it quiet */
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}

static inline uint16_t cqr_bf16_from_float(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return cqr_bf16_from_bits(b);
}

static inline float cqr_bf16_to_float(uint16_t h)
{
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* n floats of in -> n bfloat16 at out (2n bytes, little-endian). out may
 * be in itself. */
static inline void cqr_bf16_narrow(const void *in, size_t n, void *out)
{
    const uint8_t *s = (const uint8_t *)in;
    uint8_t *d = (uint8_t *)out;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, s + 4 * i, sizeof b);
        uint16_t h = cqr_bf16_from_bits(b);
        memcpy(d + 2 * i, &h, sizeof h);
    }
}

/* n bfloat16 of in -> n floats at out (4n bytes). out may start where in
 * starts (then the values are widened from the last one down). */
static inline void cqr_bf16_widen(const void *in, size_t n, void *out)
{
    const uint8_t *s = (const uint8_t *)in;
    uint8_t *d = (uint8_t *)out;
    for (size_t k = n; k-- > 0;) {
        uint16_t h;
        memcpy(&h, s + 2 * k, sizeof h);
        uint32_t b = (uint32_t)h << 16;
        memcpy(d + 4 * k, &b, sizeof b);
    }
}

/* Rounds n floats to the nearest bfloat16 values, in place (what a value
 * becomes after a trip through the wire as bfloat16). */
static inline void cqr_bf16_round(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[i] = cqr_bf16_to_float(cqr_bf16_from_float(v[i]));
}

#endif
