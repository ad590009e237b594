/* hash.h -- seeded hashing, seed derivation and a small PRNG.
 *
 * Everything here is a pure function of its inputs and gives the same
 * result on every machine: IDs are hashed as their little-endian bytes
 * with XXH3 (xxhash, Debian's libxxhash), and the PRNG is splitmix64.
 */
#ifndef CQR_HASH_H
#define CQR_HASH_H

#include <stdint.h>
#include <string.h>
/* Inlined: an 8-byte XXH3 is a few multiplies, cheaper than the call
 * through the shared library, and lookups hash every ID once per chunk. */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* The splitmix64 finaliser: a fast bijective 64-bit mixer. */
static inline uint64_t cqr_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* A seed for purpose `tag`, index `i`, derived from a table seed. */
static inline uint64_t cqr_derive_seed(uint64_t seed, uint64_t tag, uint64_t i)
{
    return cqr_mix64(cqr_mix64(seed ^ cqr_mix64(tag + 0x9e3779b97f4a7c15ULL))
                     + i);
}

static inline uint64_t cqr_hash_id(uint64_t id, uint64_t seed)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(id >> (8 * i));
    return XXH3_64bits_withSeed(b, sizeof b, seed);
}

/* Maps a 64-bit hash uniformly onto [0, n) without a division. */
static inline uint32_t cqr_fastrange(uint64_t h, uint32_t n)
{
    return (uint32_t)(((unsigned __int128)h * n) >> 64);
}

typedef struct cqr_rng {
    uint64_t s; /* splitmix64 state */
} cqr_rng_t;

static inline void cqr_rng_seed(cqr_rng_t *r, uint64_t seed)
{
    r->s = seed;
}

static inline uint64_t cqr_rng_next(cqr_rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return cqr_mix64(r->s);
}

/* Uniform in [0, 1) with 24 bits: exact as a float. */
static inline float cqr_rng_unit(cqr_rng_t *r)
{
    return (float)(cqr_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform in [-s, s). */
static inline float cqr_rng_sym(cqr_rng_t *r, float s)
{
    return (2.0f * cqr_rng_unit(r) - 1.0f) * s;
}

#endif
