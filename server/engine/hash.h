/* hash.h -- the one mixer, the one PRNG, seeded hashing and seed
 * derivation of the code base.
 *
 * One of each primitive: the engine (tables, k-means, the known-ID map),
 * the benchmarks and the client library's shard placement all use the
 * mixer and the PRNG from here, so that a sequence drawn in one place can
 * be reproduced in another. Header-only (static inline): a user needs the
 * xxhash headers and nothing to link.
 *
 * Determinism: everything here is a pure function of its inputs (the PRNG
 * of its state) and gives the same result on every machine: IDs are
 * hashed as their little-endian bytes with XXH3 (xxhash, Debian's
 * libxxhash), the mixer is splitmix64's finaliser and the PRNG splitmix64.
 * Changing any of them changes every table's initial values, every
 * cluster phase and the checkpoints' meaning: never do.
 *
 * Threading: the functions are pure and safe from any thread; a cqr_rng_t
 * is a plain value owned by one thread at a time.
 *
 * Errors: none; nothing here allocates or fails.
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

/* The ID's 8 little-endian bytes are written with one store: XXH3 reads
 * them back as two 32-bit words, and eight byte stores cannot be
 * forwarded to those loads (the core waits for them to reach the cache:
 * half of the lookup pipeline's time at 1e8 IDs went there). */
static inline uint64_t cqr_hash_id(uint64_t id, uint64_t seed)
{
    uint8_t b[8];
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(b, &id, sizeof b);
#else
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(id >> (8 * i));
#endif
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

/* Uniform in [0, 1) with 53 bits: exact as a double. */
static inline double cqr_rng_double(cqr_rng_t *r)
{
    return (double)(cqr_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, bound) by multiply-shift (no division); the bias,
 * bound / 2^64, is far below anything a sampler here can notice. */
static inline uint64_t cqr_rng_below(cqr_rng_t *r, uint64_t bound)
{
    return (uint64_t)(((unsigned __int128)cqr_rng_next(r) * bound) >> 64);
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
