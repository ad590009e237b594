/* packmap.h -- a static, key-less map from 64-bit IDs to packed values.
 *
 * What it is: a minimal perfect hash function (MPHF) over the n IDs it was
 * built with, which sends each of them to its own slot in [0, n), and the
 * IDs' values bit-packed in slot order, each prefixed with a fingerprint
 * of its ID. The IDs themselves are not stored: that is what makes it
 * small (a cqr table's 4 pointers of 16 bits plus a 4-bit fingerprint
 * cost about 70 bits an ID, where a hash map with keys costs 160 or more).
 * An ID it was not built with also lands on some slot; its fingerprint
 * then matches that slot's with probability 2^-fbits, so a lookup tells
 * "certainly not a member" from "a member (or, rarely, a collision)".
 *
 * The MPHF (our own construction, in the family of PTHash, Pibiri and
 * Trani 2021, and PtrHash, Groot Koerkamp 2024): the IDs are hashed (XXH3,
 * seeded) into partitions of about CQR_PM_PART_KEYS; within a partition
 * into buckets (a skewed split: 60% of the IDs into 30% of the buckets,
 * so that the large buckets are placed while the partition is empty);
 * each bucket has a one-byte pilot p such that every ID x of the bucket
 * lands on a position fastrange(mix(h2(x) ^ mix(p)), m) of its own among the
 * partition's m = n/0.99 positions (small partitions get up to 64
 * more). Buckets are placed largest first; one
 * that finds no free pilot among the 256 takes the pilot whose occupants
 * are cheapest to move and sends them back into the queue, so a pilot
 * always fits in a byte. Positions beyond n (about 1%) are remapped to
 * the free positions below n through a table of 16-bit entries. Cost:
 * 8/lambda bits of pilot (lambda = CQR_PM_LAMBDA IDs per bucket), 0.16
 * bits of remap and 48 bytes of partition header per 50,000 IDs. A
 * lookup reads the partition header (cached), one pilot byte and the
 * value: two cache misses, the same as an open-addressing map with keys
 * and values in one slot.
 *
 * Building is parallel over partitions and deterministic: the same IDs,
 * values, seed and parameters give the same bytes whatever the thread
 * count. The builder keeps its records in an anonymous mapping released
 * when the builder is destroyed: 8 + rec_bytes bytes an ID, plus about
 * 2 MB per building thread.
 *
 * Serialised form (cqr_packmap_write / cqr_packmap_read), little-endian,
 * self-contained so that other programs (exports for serving) can read it:
 *   0   u32 magic "CQPM"        4  u32 format version (1)
 *   8   u64 n (IDs)            16  u64 seed
 *   24  u32 partitions P       28  u32 vbits (bits per value, fingerprint
 *                                           included)
 *   32  u32 fbits (fingerprint) 36 u32 lambda x 16 (informative)
 *   40  u64 pilots             48  u64 remap entries
 *   56  u64 value words
 *   64  P partitions x 48 bytes: u64 slot0, u64 vbit0, u64 bucket0,
 *       u64 remap0, u32 n, u32 m, u32 nb (buckets), u32 pseed (the
 *       partition's own seed: see cqr_pm_h2)
 *   then the pilots (1 byte each) and the remap entries (u16 each), each
 *   array zero-padded to a multiple of 8 bytes, then the value words
 *   (u64).
 * Lookup of an ID: h = XXH3-64 of its 8 little-endian bytes seeded with
 * `seed`; partition q = (h x P) >> 64; then cqr_pm_bucket, cqr_pm_pos
 * and the remap as in cqr_packmap_locate below. The value of position s
 * of partition q starts at bit vbit0(q) + s x vbits of the value words,
 * least significant bit first; its low fbits bits are the fingerprint
 * (cqr_pm_fingerprint), the rest the payload.
 *
 * Threading: a built map is immutable: any number of threads may look up
 * at once. A builder is used by one thread (its build runs helpers).
 * Ownership: cqr_packmap_t owns its arrays (free with cqr_packmap_free);
 * the builder owns its records until destroyed.
 * Errors: 0 or a negative CQR_E* code: CQR_ENOMEM, CQR_EINVAL (a builder
 * given more IDs than announced, or duplicate IDs), CQR_ECORRUPT (read).
 */
#ifndef CQR_PACKMAP_H
#define CQR_PACKMAP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hash.h"

#define CQR_PM_PART_KEYS 50000u  /* IDs per partition, on average */
#define CQR_PM_LAMBDA 3.5        /* IDs per bucket, on average */
#define CQR_PM_MAX_VBITS 8192u   /* bits per value, fingerprint included */

typedef struct cqr_pm_part {
    uint64_t slot0;   /* global slot of the partition's first position */
    uint64_t vbit0;   /* bit offset of its first value (word-aligned) */
    uint64_t bucket0; /* its first pilot */
    uint64_t remap0;  /* its first remap entry */
    uint32_t n;       /* IDs */
    uint32_t m;       /* positions: n / alpha */
    uint32_t nb;      /* buckets */
    uint32_t pseed;   /* the partition's seed of position hashes (a
                         partition that cannot be placed tries the next) */
} cqr_pm_part_t;

typedef struct cqr_packmap {
    uint64_t n;            /* IDs (slots) */
    uint64_t seed;         /* hashing seed */
    uint32_t nparts;       /* partitions */
    uint32_t vbits;        /* bits per value, fingerprint included */
    uint32_t fbits;        /* fingerprint bits (low bits of a value) */
    cqr_pm_part_t *parts;  /* nparts */
    uint8_t *pilots;       /* npilots */
    uint16_t *remap;       /* nremap */
    uint64_t *vals;        /* nwords (+1 zero word of padding) */
    uint64_t npilots, nremap, nwords; /* array lengths */
} cqr_packmap_t;

/* The hashes of one ID (all derived from one XXH3 of it). */
static inline uint64_t cqr_pm_hash(const cqr_packmap_t *pm, uint64_t id)
{
    return cqr_hash_id(id, pm->seed);
}

static inline uint64_t cqr_pm_fingerprint(uint64_t h, uint32_t fbits)
{
    return fbits ? cqr_mix64(h ^ 0x6a09e667f3bcc909ULL) >> (64 - fbits) : 0;
}

/* The bucket curve: t(u) = 0.1 u + 0.9 (u + (1 - u) ln(1 - u)) at
 * u = i/64, times 2^32 (the last entry is 2^32 - 1). An ID whose bucket hash is u in
 * [0, 1) goes to bucket floor(t(u) nb): the first buckets get many IDs
 * and are placed while the partition is empty, the last ones few, so
 * that a bucket's expected number of pilot tries is about the same at
 * every load (the optimal bucket function of PHOBIC, Hermann et al.
 * 2024, blended with a tenth of the uniform one so that no bucket gets
 * more than about ten times lambda IDs). Integers, so every machine computes the same buckets. */
extern const uint32_t cqr_pm_curve[65];

/* The bucket of hash h in partition q. */
static inline uint32_t cqr_pm_bucket(const cqr_pm_part_t *q, uint64_t h)
{
    uint32_t x = (uint32_t)(cqr_mix64(h ^ 0xbb67ae8584caa73bULL) >> 32);
    uint32_t seg = x >> 26, frac = x & ((1u << 26) - 1);
    uint64_t lo = cqr_pm_curve[seg], hi = cqr_pm_curve[seg + 1];
    uint64_t t = lo + (((hi - lo) * frac) >> 26);
    return (uint32_t)((t * q->nb) >> 32);
}

/* The hash of a pilot, mixed into the position hashes of its bucket. */
static inline uint64_t cqr_pm_pilot_hash(uint64_t pilot)
{
    return cqr_mix64(pilot + 0x3c6ef372fe94f82bULL);
}

/* The position of position hash h2 in a partition of m positions, under
 * the pilot whose hash is ph. Mixed after the XOR: fastrange reads the
 * high bits, and two hashes that share them would otherwise share a
 * position under every pilot. */
static inline uint32_t cqr_pm_pos(uint64_t h2, uint64_t ph, uint32_t m)
{
    return (uint32_t)(((unsigned __int128)cqr_mix64(h2 ^ ph) * m) >> 64);
}

/* The position hash of hash h in a partition of seed pseed. */
static inline uint64_t cqr_pm_h2(uint64_t h, uint32_t pseed)
{
    return cqr_mix64(h ^ 0xa54ff53a5f1d36f1ULL ^
                     (uint64_t)pseed * 0x9e3779b97f4a7c15ULL);
}

/* A lookup in two steps, so that a batch can overlap its misses: begin
 * finds the partition and bucket and starts loading the pilot; locate
 * reads the pilot and returns the slot (and the value's bit offset). */
typedef struct cqr_pm_probe {
    uint64_t h;                 /* the ID's hash */
    const cqr_pm_part_t *part;  /* its partition */
    uint32_t bucket;            /* its bucket in the partition */
} cqr_pm_probe_t;

static inline void cqr_packmap_begin(const cqr_packmap_t *pm, uint64_t id,
                                     cqr_pm_probe_t *pr)
{
    pr->h = cqr_pm_hash(pm, id);
    pr->part = &pm->parts[((unsigned __int128)pr->h * pm->nparts) >> 64];
    pr->bucket = cqr_pm_bucket(pr->part, pr->h);
    __builtin_prefetch(&pm->pilots[pr->part->bucket0 + pr->bucket]);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* see cqr_idmap_prefetch */
}

/* The slot of the probed ID in [0, n); *vbit gets its value's bit offset.
 * Starts loading the value. */
static inline uint64_t cqr_packmap_locate(const cqr_packmap_t *pm,
                                          const cqr_pm_probe_t *pr,
                                          uint64_t *vbit)
{
    const cqr_pm_part_t *q = pr->part;
    uint64_t pilot = pm->pilots[q->bucket0 + pr->bucket];
    uint32_t pos = cqr_pm_pos(cqr_pm_h2(pr->h, q->pseed),
                              cqr_pm_pilot_hash(pilot), q->m);
    if (pos >= q->n)
        pos = pm->remap[q->remap0 + (pos - q->n)];
    *vbit = q->vbit0 + (uint64_t)pos * pm->vbits;
    const uint8_t *v = (const uint8_t *)pm->vals + (*vbit >> 3);
    /* Non-temporal: a value is read once, and the values (hundreds of
     * MB) would otherwise push the pilots (8/lambda bits an ID) and the
     * codebooks out of the shared cache. */
    __builtin_prefetch(v, 0, 0);
    __builtin_prefetch(v + ((pm->vbits + 7) >> 3), 0, 0);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return q->slot0 + pos;
}

/* nbits (<= 57) bits at bit offset `bit` of the values. */
static inline uint64_t cqr_packmap_bits(const cqr_packmap_t *pm,
                                        uint64_t bit, uint32_t nbits)
{
    uint64_t w;
    memcpy(&w, (const uint8_t *)pm->vals + (bit >> 3), sizeof w);
    return (w >> (bit & 7)) & ((nbits >= 64 ? 0 : (1ULL << nbits)) - 1);
}

/* Whether the value at vbit carries the fingerprint of hash h. */
static inline int cqr_packmap_fp_ok(const cqr_packmap_t *pm, uint64_t h,
                                    uint64_t vbit)
{
    return cqr_packmap_bits(pm, vbit, pm->fbits) ==
           cqr_pm_fingerprint(h, pm->fbits);
}

/* One-call lookup: the slot of id, its value's bit offset and whether the
 * fingerprint matches (1: a member, or a collision; 0: not a member). */
static inline uint64_t cqr_packmap_lookup(const cqr_packmap_t *pm,
                                          uint64_t id, uint64_t *vbit,
                                          int *fp_ok)
{
    cqr_pm_probe_t pr;
    cqr_packmap_begin(pm, id, &pr);
    uint64_t s = cqr_packmap_locate(pm, &pr, vbit);
    *fp_ok = cqr_packmap_fp_ok(pm, pr.h, *vbit);
    return s;
}

/* An empty map (n = 0): every lookup is "not a member". */
int cqr_packmap_init_empty(cqr_packmap_t *pm, uint32_t vbits, uint32_t fbits);
void cqr_packmap_free(cqr_packmap_t *pm);

/* Bytes held in RAM. */
uint64_t cqr_packmap_bytes(const cqr_packmap_t *pm);

/* ---- Building ------------------------------------------------------------
 * create (n IDs announced, values of vbits - fbits payload bits, records
 * of rec_bytes bytes per ID carried along), add each ID with its record
 * (the first ceil((vbits - fbits) / 8) bytes of a record are the payload,
 * least significant bit first; the rest travels with it), build, then
 * read the records back in slot order (cqr_pm_builder_record), then
 * destroy. */
typedef struct cqr_pm_builder cqr_pm_builder_t;

int cqr_pm_builder_create(uint64_t n, uint32_t vbits, uint32_t fbits,
                          uint32_t rec_bytes, uint64_t seed,
                          cqr_pm_builder_t **out);
/* Adds one ID (at most n in all: CQR_EINVAL beyond). */
int cqr_pm_builder_add(cqr_pm_builder_t *b, uint64_t id, const void *rec);
/* Builds over `threads` threads (1 = the caller alone) into *pm. Fails
 * with CQR_EINVAL if fewer IDs than announced were added or an ID was
 * added twice; retries internally with derived seeds if a partition
 * cannot be placed (pm->seed says which seed was used). */
int cqr_pm_builder_build(cqr_pm_builder_t *b, unsigned threads,
                         cqr_packmap_t *pm);
/* After a successful build: the ID and record of slot s. */
const uint8_t *cqr_pm_builder_record(const cqr_pm_builder_t *b, uint64_t s,
                                     uint64_t *id);
void cqr_pm_builder_destroy(cqr_pm_builder_t *b);

/* ---- Serialised form ---------------------------------------------------- */

/* Bytes of the serialised form. */
uint64_t cqr_packmap_size(const cqr_packmap_t *pm);
/* Writes cqr_packmap_size(pm) bytes to out. CQR_ENOMEM. */
int cqr_packmap_write(const cqr_packmap_t *pm, uint8_t *out);
/* Writes bytes [off, off + len) of the serialised form to out (a page of
 * a checkpoint; off + len <= cqr_packmap_size(pm)). CQR_ENOMEM. */
int cqr_packmap_write_range(const cqr_packmap_t *pm, uint64_t off,
                            uint64_t len, uint8_t *out);
/* Reads a serialised map, verifying every size and offset so that no
 * lookup can leave its arrays (a damaged pilot or value only gives wrong
 * values). CQR_ECORRUPT, CQR_EVERSION, CQR_ENOMEM. */
int cqr_packmap_read(const uint8_t *in, size_t len, cqr_packmap_t *pm);

#endif
