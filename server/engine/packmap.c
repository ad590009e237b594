/* packmap.c -- the static key-less map: build and the serialised form
 * (see packmap.h). */
#include "packmap.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bigmem.h"
#include "err.h"
#include "par.h"

#define PM_MAGIC 0x4d505143u /* "CQPM" */
#define PM_VERSION 1u
#define PM_HEADER 64u
#define PM_PART_BYTES 48u
/* Seeds tried before a build gives up (a partition that cannot be placed
 * is vanishingly rare; a new seed reshuffles every partition). */
#define PM_MAX_RETRIES 8
/* Internal result of a build step: retry with another seed. */
#define PM_RETRY 1
/* Position seeds a partition tries before the build takes a new seed. */
#define PM_PART_SEEDS 64

const uint32_t cqr_pm_curve[65] = {
    0u, 7185223u, 15329183u, 24447348u, 34555687u,
    45670706u, 57809468u, 70989626u, 85229453u, 100547872u,
    116964496u, 134499666u, 153174487u, 173010880u, 194031623u,
    216260406u, 239721886u, 264441749u, 290446772u, 317764898u,
    346425311u, 376458524u, 407896468u, 440772595u, 475121989u,
    510981490u, 548389827u, 587387768u, 628018286u, 670326740u,
    714361087u, 760172100u, 807813636u, 857342915u, 908820855u,
    962312433u, 1017887114u, 1075619323u, 1135589007u, 1197882262u,
    1262592082u, 1329819213u, 1399673170u, 1472273436u, 1547750885u,
    1626249492u, 1707928409u, 1792964497u, 1881555460u, 1973923757u,
    2070321574u, 2171037209u, 2276403434u, 2386808666u, 2502712212u,
    2624665661u, 2753343875u, 2889591620u, 3034497238u, 3189516314u,
    3356696834u, 3539138203u, 3742102689u, 3976670305u, 4294967295u,
};

int cqr_packmap_init_empty(cqr_packmap_t *pm, uint32_t vbits, uint32_t fbits)
{
    memset(pm, 0, sizeof *pm);
    pm->vbits = vbits;
    pm->fbits = fbits;
    pm->vals = calloc(1, sizeof(uint64_t));
    return pm->vals ? 0 : CQR_ENOMEM;
}

static void pm_arrays_free(cqr_packmap_t *pm)
{
    free(pm->parts);
    cqr_big_free(pm->pilots, pm->npilots ? pm->npilots : 1, 1);
    cqr_big_free(pm->remap, pm->nremap ? pm->nremap : 1, sizeof(uint16_t));
    cqr_big_free(pm->vals, pm->nwords + 1, sizeof(uint64_t));
}

void cqr_packmap_free(cqr_packmap_t *pm)
{
    if (!pm)
        return;
    pm_arrays_free(pm);
    memset(pm, 0, sizeof *pm);
}

uint64_t cqr_packmap_bytes(const cqr_packmap_t *pm)
{
    return (uint64_t)pm->nparts * sizeof(cqr_pm_part_t) + pm->npilots +
           pm->nremap * 2 + (pm->nwords + 1) * 8;
}

/* Allocates pilots, remap and values for the counts in pm (the
 * partitions are there already). */
static int pm_arrays_alloc(cqr_packmap_t *pm)
{
    pm->pilots = cqr_big_calloc(pm->npilots ? pm->npilots : 1, 1);
    pm->remap = cqr_big_calloc(pm->nremap ? pm->nremap : 1,
                               sizeof(uint16_t));
    pm->vals = cqr_big_calloc(pm->nwords + 1, sizeof(uint64_t));
    if (!pm->pilots || !pm->remap || !pm->vals)
        return CQR_ENOMEM;
    return 0;
}

/* ---- Builder ------------------------------------------------------------- */

struct cqr_pm_builder {
    uint64_t n;         /* IDs announced */
    uint64_t added;     /* IDs added */
    uint32_t vbits;     /* value bits, fingerprint included */
    uint32_t fbits;     /* fingerprint bits */
    uint32_t rec;       /* record bytes after the ID */
    size_t stride;      /* bytes of one scratch entry: 8 + rec */
    uint64_t seed;      /* the first seed to try */
    uint8_t *scratch;   /* n entries (anonymous mapping) */
    size_t scratch_len; /* bytes mapped */
    int built;          /* the records are in slot order */
};

int cqr_pm_builder_create(uint64_t n, uint32_t vbits, uint32_t fbits,
                          uint32_t rec_bytes, uint64_t seed,
                          cqr_pm_builder_t **out)
{
    if (vbits > CQR_PM_MAX_VBITS || fbits > 57 || fbits > vbits ||
        (vbits - fbits + 7) / 8 > rec_bytes || n > (1ull << 40))
        return CQR_EINVAL;
    cqr_pm_builder_t *b = calloc(1, sizeof *b);
    if (!b)
        return CQR_ENOMEM;
    b->n = n;
    b->vbits = vbits;
    b->fbits = fbits;
    b->rec = rec_bytes;
    b->stride = 8 + (size_t)rec_bytes;
    b->seed = seed;
    b->scratch_len = (n ? n : 1) * b->stride;
    b->scratch = mmap(NULL, b->scratch_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (b->scratch == MAP_FAILED) {
        free(b);
        return CQR_ENOMEM;
    }
    *out = b;
    return 0;
}

void cqr_pm_builder_destroy(cqr_pm_builder_t *b)
{
    if (!b)
        return;
    munmap(b->scratch, b->scratch_len);
    free(b);
}

int cqr_pm_builder_add(cqr_pm_builder_t *b, uint64_t id, const void *rec)
{
    if (b->added == b->n || b->built)
        return CQR_EINVAL;
    uint8_t *e = b->scratch + b->added * b->stride;
    memcpy(e, &id, 8);
    if (b->rec)
        memcpy(e + 8, rec, b->rec);
    b->added++;
    return 0;
}

const uint8_t *cqr_pm_builder_record(const cqr_pm_builder_t *b, uint64_t s,
                                     uint64_t *id)
{
    assert(b->built && s < b->n);
    const uint8_t *e = b->scratch + s * b->stride;
    memcpy(id, e, 8);
    return e + 8;
}

static inline uint64_t entry_id(const cqr_pm_builder_t *b, uint64_t i)
{
    uint64_t id;
    memcpy(&id, b->scratch + i * b->stride, 8);
    return id;
}

static inline uint32_t part_of(uint64_t h, uint32_t nparts)
{
    return (uint32_t)(((unsigned __int128)h * nparts) >> 64);
}

static void swap_entries(uint8_t *a, uint8_t *c, size_t stride)
{
    uint8_t tmp[64];
    while (stride) {
        size_t k = stride < sizeof tmp ? stride : sizeof tmp;
        memcpy(tmp, a, k);
        memcpy(a, c, k);
        memcpy(c, tmp, k);
        a += k;
        c += k;
        stride -= k;
    }
}

/* Sorts the scratch entries by partition in place (American flag sort)
 * and sets every partition's size. CQR_ENOMEM. */
static int sort_by_part(cqr_pm_builder_t *b, cqr_packmap_t *pm)
{
    const uint32_t np = pm->nparts;
    uint64_t *next = calloc(np + 1, sizeof *next);
    uint64_t *end = calloc(np + 1, sizeof *end);
    if (!next || !end) {
        free(next);
        free(end);
        return CQR_ENOMEM;
    }
    for (uint64_t i = 0; i < b->n; i++)
        end[part_of(cqr_pm_hash(pm, entry_id(b, i)), np)]++;
    uint64_t acc = 0;
    for (uint32_t q = 0; q < np; q++) {
        pm->parts[q].n = (uint32_t)(end[q] < UINT32_MAX ? end[q] : 0);
        next[q] = acc;
        acc += end[q];
        end[q] = acc;
    }
    for (uint32_t q = 0; q < np; q++) {
        while (next[q] < end[q]) {
            uint8_t *e = b->scratch + next[q] * b->stride;
            uint32_t r = part_of(cqr_pm_hash(pm, entry_id(b, next[q])), np);
            if (r == q) {
                next[q]++;
                continue;
            }
            swap_entries(e, b->scratch + next[r] * b->stride, b->stride);
            next[r]++;
        }
    }
    free(next);
    free(end);
    return 0;
}

/* Shapes every partition (sizes known) and sizes the arrays. 0, or
 * PM_RETRY if a partition is too large for 16-bit positions. */
static int shape_parts(cqr_packmap_t *pm)
{
    uint64_t slot = 0, vbit = 0, bucket = 0, remap = 0;
    for (uint32_t q = 0; q < pm->nparts; q++) {
        cqr_pm_part_t *p = &pm->parts[q];
        if (p->n >= 64000)
            return PM_RETRY;
        /* 1% of spare positions; small partitions get up to 64 more,
         * or their last keys would have almost nowhere to go. */
        uint32_t spare = p->n / 99 > 64 ? p->n / 99 : (p->n < 64 ? p->n : 64);
        p->m = p->n + spare + 1;
        p->nb = (uint32_t)(p->n / CQR_PM_LAMBDA) + 2;
        p->slot0 = slot;
        p->vbit0 = vbit;
        p->bucket0 = bucket;
        p->remap0 = remap;
        slot += p->n;
        vbit += ((uint64_t)p->n * pm->vbits + 63) / 64 * 64;
        bucket += p->nb;
        remap += p->m - p->n;
    }
    pm->npilots = bucket;
    pm->nremap = remap;
    pm->nwords = vbit / 64;
    return 0;
}

/* One partition's work space (per call, about 40 bytes an ID). */
typedef struct pwork {
    uint64_t *h;        /* n hashes */
    uint64_t *h2;       /* n position hashes */
    uint32_t *bkt;      /* n buckets */
    uint32_t *start;    /* nb + 1: first key of each bucket in `keys` */
    uint32_t *keys;     /* n key indices grouped by bucket */
    uint32_t *pos;      /* max(n, nb): positions (first: fill cursors) */
    uint64_t *taken;    /* m bits: positions in use after placement */
    uint8_t *tmp;       /* n records, for the permutation to slot order */
} pwork_t;

static void pwork_free(pwork_t *w)
{
    free(w->h);
    free(w->h2);
    free(w->bkt);
    free(w->start);
    free(w->keys);
    free(w->pos);
    free(w->taken);
    free(w->tmp);
}

static int pwork_alloc(pwork_t *w, const cqr_pm_part_t *p, size_t stride)
{
    memset(w, 0, sizeof *w);
    size_t n = p->n ? p->n : 1;
    w->h = malloc(n * sizeof *w->h);
    w->h2 = malloc(n * sizeof *w->h2);
    w->bkt = malloc(n * sizeof *w->bkt);
    w->start = calloc((size_t)p->nb + 2, sizeof *w->start);
    w->keys = malloc(n * sizeof *w->keys);
    w->pos = calloc(n > p->nb ? n : p->nb, sizeof *w->pos);
    w->taken = calloc(((size_t)p->m + 63) / 64, sizeof *w->taken);
    w->tmp = malloc(n * stride);
    if (!w->h || !w->h2 || !w->bkt || !w->start || !w->keys || !w->pos ||
        !w->taken || !w->tmp) {
        pwork_free(w);
        return CQR_ENOMEM;
    }
    return 0;
}

/* Groups the partition's keys by bucket (key order within a bucket).
 * CQR_EINVAL on a duplicate ID. */
static int group_buckets(const cqr_packmap_t *pm, const cqr_pm_builder_t *b,
                         const cqr_pm_part_t *p, pwork_t *w)
{
    for (uint32_t j = 0; j < p->n; j++) {
        w->h[j] = cqr_pm_hash(pm, entry_id(b, p->slot0 + j));
        w->bkt[j] = cqr_pm_bucket(p, w->h[j]);
        w->start[w->bkt[j] + 1]++;
    }
    for (uint32_t k = 0; k < p->nb; k++)
        w->start[k + 1] += w->start[k];
    for (uint32_t j = 0; j < p->n; j++)
        w->keys[w->start[w->bkt[j]] + w->pos[w->bkt[j]]++] = j;
    for (uint32_t k = 0; k < p->nb; k++) {
        for (uint32_t a = w->start[k]; a < w->start[k + 1]; a++)
            for (uint32_t c = a + 1; c < w->start[k + 1]; c++)
                if (w->h[w->keys[a]] == w->h[w->keys[c]])
                    return CQR_EINVAL;
    }
    return 0;
}

static inline int bit_get(const uint64_t *bits, uint32_t i)
{
    return (int)((bits[i >> 6] >> (i & 63)) & 1);
}

static inline void bit_set(uint64_t *bits, uint32_t i)
{
    bits[i >> 6] |= 1ULL << (i & 63);
}

static inline void bit_clear(uint64_t *bits, uint32_t i)
{
    bits[i >> 6] &= ~(1ULL << (i & 63));
}

/* ---- Placement with displacement -----------------------------------------
 * Buckets are placed largest first. A bucket takes the first pilot in
 * [0, 256) whose positions are all free; if there is none, it takes the
 * pilot whose colliding buckets are the cheapest to move (sum of their
 * squared sizes; buckets placed in the last few steps are never moved, so
 * that two buckets cannot take turns forever), evicts them (they go back
 * into the queue) and takes their positions. Every pilot then fits in a
 * byte (the idea of PtrHash, Groot Koerkamp 2024). */

#define PM_NONE UINT32_MAX
#define PM_RECENT 4

typedef struct placer {
    const cqr_pm_part_t *p;
    pwork_t *w;
    uint32_t *owner;     /* m: bucket owning each position, or PM_NONE */
    uint32_t *heap;      /* buckets waiting, largest first */
    size_t nheap;
    uint32_t recent[PM_RECENT]; /* the last buckets placed */
    uint32_t nrecent;
    uint64_t evictions;  /* buckets moved so far */
} placer_t;

static inline uint32_t bsize(const pwork_t *w, uint32_t k)
{
    return w->start[k + 1] - w->start[k];
}

/* Heap order: larger buckets first, then lower index. */
static inline int heap_before(const pwork_t *w, uint32_t a, uint32_t b)
{
    uint32_t sa = bsize(w, a), sb = bsize(w, b);
    return sa != sb ? sa > sb : a < b;
}

static void heap_push(placer_t *pl, uint32_t k)
{
    size_t i = pl->nheap++;
    while (i) {
        size_t up = (i - 1) / 2;
        if (!heap_before(pl->w, k, pl->heap[up]))
            break;
        pl->heap[i] = pl->heap[up];
        i = up;
    }
    pl->heap[i] = k;
}

static uint32_t heap_pop(placer_t *pl)
{
    uint32_t top = pl->heap[0], last = pl->heap[--pl->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= pl->nheap)
            break;
        if (c + 1 < pl->nheap && heap_before(pl->w, pl->heap[c + 1],
                                             pl->heap[c]))
            c++;
        if (!heap_before(pl->w, pl->heap[c], last))
            break;
        pl->heap[i] = pl->heap[c];
        i = c;
    }
    if (pl->nheap)
        pl->heap[i] = last;
    return top;
}

/* The positions of bucket k's keys under `pilot` into q[]; 0 if two of
 * them coincide. */
static int bucket_positions(const placer_t *pl, uint32_t k, uint64_t pilot,
                            uint32_t *q)
{
    const pwork_t *w = pl->w;
    const uint32_t *ks = w->keys + w->start[k];
    uint32_t s = bsize(w, k);
    const uint64_t ph = cqr_pm_pilot_hash(pilot);
    for (uint32_t j = 0; j < s; j++) {
        q[j] = cqr_pm_pos(w->h2[ks[j]], ph, pl->p->m);
        for (uint32_t a = 0; a < j; a++)
            if (q[a] == q[j])
                return 0;
    }
    return 1;
}

static int is_recent(const placer_t *pl, uint32_t k)
{
    /* In a partition of few buckets fewer are protected, or nothing
     * would be left to move. */
    uint32_t window = pl->p->nb / 4 < PM_RECENT ? pl->p->nb / 4 : PM_RECENT;
    for (uint32_t i = 0; i < pl->nrecent && i < window; i++)
        if (pl->recent[(pl->nrecent - 1 - i) % PM_RECENT] == k)
            return 1;
    return 0;
}

/* The cost of taking positions q[0..s): the squared sizes of the distinct
 * buckets there (UINT64_MAX if one of them may not move). */
static uint64_t take_cost(const placer_t *pl, const uint32_t *q, uint32_t s)
{
    uint64_t cost = 0;
    for (uint32_t j = 0; j < s; j++) {
        uint32_t o = pl->owner[q[j]];
        if (o == PM_NONE)
            continue;
        uint32_t a = 0;
        for (; a < j; a++)
            if (pl->owner[q[a]] == o)
                break;
        if (a < j)
            continue; /* counted already */
        if (is_recent(pl, o))
            return UINT64_MAX;
        uint64_t sz = bsize(pl->w, o);
        cost += sz * sz;
    }
    return cost;
}

/* Removes bucket o's keys from their positions and queues it again. */
static void evict(placer_t *pl, uint32_t o)
{
    const pwork_t *w = pl->w;
    for (uint32_t a = w->start[o]; a < w->start[o + 1]; a++) {
        uint32_t x = w->pos[w->keys[a]];
        pl->owner[x] = PM_NONE;
        bit_clear(w->taken, x);
    }
    heap_push(pl, o);
    pl->evictions++;
}

/* The first pilot under which bucket k's keys all find free positions
 * (w->taken), with those positions in q[]; or -1. The common case, kept
 * to one bitmap in L1. */
static int free_pilot(const placer_t *pl, uint32_t k, uint32_t *q)
{
    const pwork_t *w = pl->w;
    const uint32_t *ks = w->keys + w->start[k];
    const uint32_t s = bsize(w, k), m = pl->p->m;
    for (uint32_t pilot = 0; pilot < 256; pilot++) {
        const uint64_t ph = cqr_pm_pilot_hash(pilot);
        uint32_t j = 0;
        for (; j < s; j++) {
            q[j] = cqr_pm_pos(w->h2[ks[j]], ph, m);
            if (bit_get(w->taken, q[j]))
                break;
            uint32_t a = 0;
            while (a < j && q[a] != q[j])
                a++;
            if (a < j)
                break;
        }
        if (j == s)
            return (int)pilot;
    }
    return -1;
}

/* The pilot whose occupied positions are cheapest to free (see
 * take_cost), or -1 if every pilot is blocked. */
static int cheapest_pilot(const placer_t *pl, uint32_t k, uint32_t *q)
{
    uint64_t best = UINT64_MAX;
    int best_p = -1;
    for (uint32_t pilot = 0; pilot < 256; pilot++) {
        if (!bucket_positions(pl, k, pilot, q))
            continue;
        uint64_t cost = take_cost(pl, q, bsize(pl->w, k));
        if (cost < best) {
            best = cost;
            best_p = (int)pilot;
        }
    }
    if (best_p >= 0)
        bucket_positions(pl, k, (uint64_t)best_p, q);
    return best_p;
}

/* Places bucket k. 0, or PM_RETRY if every pilot is blocked. */
static int place_bucket(placer_t *pl, uint32_t k, uint8_t *pilot_out)
{
    pwork_t *w = pl->w;
    uint32_t s = bsize(w, k), q[256];
    if (s > 256)
        return PM_RETRY;
    int pilot = free_pilot(pl, k, q);
    if (pilot < 0) {
        pilot = cheapest_pilot(pl, k, q);
        if (pilot < 0)
            return PM_RETRY;
        for (uint32_t j = 0; j < s; j++)
            if (pl->owner[q[j]] != PM_NONE)
                evict(pl, pl->owner[q[j]]);
    }
    const uint32_t *ks = w->keys + w->start[k];
    for (uint32_t j = 0; j < s; j++) {
        pl->owner[q[j]] = k;
        bit_set(w->taken, q[j]);
        w->pos[ks[j]] = q[j];
    }
    *pilot_out = (uint8_t)pilot;
    pl->recent[pl->nrecent++ % PM_RECENT] = k;
    return 0;
}

/* Places every bucket of the partition; pilots into pm. */
static int place_all(cqr_packmap_t *pm, const cqr_pm_part_t *p, pwork_t *w)
{
    placer_t pl = {.p = p, .w = w};
    pl.owner = malloc((size_t)p->m * sizeof *pl.owner);
    pl.heap = malloc((size_t)p->nb * sizeof *pl.heap);
    if (!pl.owner || !pl.heap) {
        free(pl.owner);
        free(pl.heap);
        return CQR_ENOMEM;
    }
    memset(pl.owner, 0xff, (size_t)p->m * sizeof *pl.owner);
    for (uint32_t k = 0; k < p->nb; k++)
        if (bsize(w, k))
            heap_push(&pl, k);
    int rc = 0;
    uint8_t *pilots = pm->pilots + p->bucket0;
    while (pl.nheap && rc == 0) {
        uint32_t k = heap_pop(&pl);
        rc = place_bucket(&pl, k, &pilots[k]);
        /* A partition that keeps moving buckets around gets a new seed. */
        if (pl.evictions > 4 * (uint64_t)p->n + 256)
            rc = PM_RETRY;
    }
    free(pl.owner);
    free(pl.heap);
    return rc;
}

/* Writes nbits (<= 64) of v at bit offset `bit` (bits there are zero). */
static inline void put_bits(uint64_t *words, uint64_t bit, uint64_t v,
                            uint32_t nbits)
{
    if (nbits == 0)
        return;
    if (nbits < 64)
        v &= (1ULL << nbits) - 1;
    uint32_t off = (uint32_t)(bit & 63);
    words[bit >> 6] |= v << off;
    if (off + nbits > 64)
        words[(bit >> 6) + 1] |= v >> (64 - off);
}

/* Packs fingerprint and payload of key j at its position. */
static void put_value(const cqr_packmap_t *pm, const cqr_pm_builder_t *b,
                      const cqr_pm_part_t *p, const pwork_t *w, uint32_t j)
{
    uint64_t bit = p->vbit0 + (uint64_t)w->pos[j] * pm->vbits;
    put_bits(pm->vals, bit, cqr_pm_fingerprint(w->h[j], pm->fbits),
             pm->fbits);
    bit += pm->fbits;
    const uint8_t *rec = b->scratch + (p->slot0 + j) * b->stride + 8;
    uint32_t left = pm->vbits - pm->fbits;
    for (uint32_t o = 0; left; o += 32) {
        uint32_t k = left < 32 ? left : 32;
        uint32_t piece = 0;
        memcpy(&piece, rec + o / 8, (k + 7) / 8);
        put_bits(pm->vals, bit, piece, k);
        bit += k;
        left -= k;
    }
}

/* Remaps positions >= n to the free positions below n, in order. */
static void remap_positions(cqr_packmap_t *pm, const cqr_pm_part_t *p,
                            pwork_t *w)
{
    uint32_t free_pos = 0;
    uint16_t *rm = pm->remap + p->remap0;
    for (uint32_t q = p->n; q < p->m; q++) {
        if (!bit_get(w->taken, q))
            continue;
        while (bit_get(w->taken, free_pos))
            free_pos++;
        rm[q - p->n] = (uint16_t)free_pos++;
    }
    for (uint32_t j = 0; j < p->n; j++)
        if (w->pos[j] >= p->n)
            w->pos[j] = rm[w->pos[j] - p->n];
}

/* Builds partition q: pilots, remap, values, and its records in slot
 * order. 0, CQR_ENOMEM, CQR_EINVAL (duplicate IDs) or PM_RETRY. */
static int build_part(cqr_packmap_t *pm, cqr_pm_builder_t *b, uint32_t q)
{
    const cqr_pm_part_t *p = &pm->parts[q];
    pwork_t w;
    int rc = pwork_alloc(&w, p, b->stride);
    if (rc)
        return rc;
    rc = group_buckets(pm, b, p, &w);
    /* Seeds of position hashes, tried in turn: a placement that fails
     * (rarely) costs one partition's work, not the whole build's. */
    for (uint32_t ps = 0; rc == 0 || rc == PM_RETRY; ps++) {
        if (ps == PM_PART_SEEDS)
            break;
        pm->parts[q].pseed = ps;
        for (uint32_t j = 0; j < p->n; j++)
            w.h2[j] = cqr_pm_h2(w.h[j], ps);
        memset(w.taken, 0, ((size_t)p->m + 63) / 64 * sizeof *w.taken);
        rc = place_all(pm, p, &w);
        if (rc != PM_RETRY)
            break;
    }
    if (rc == 0) {
        remap_positions(pm, p, &w);
        for (uint32_t j = 0; j < p->n; j++)
            put_value(pm, b, p, &w, j);
        uint8_t *base = b->scratch + p->slot0 * b->stride;
        for (uint32_t j = 0; j < p->n; j++)
            memcpy(w.tmp + (size_t)w.pos[j] * b->stride,
                   base + (size_t)j * b->stride, b->stride);
        memcpy(base, w.tmp, (size_t)p->n * b->stride);
    }
    pwork_free(&w);
    return rc;
}

typedef struct build_job {
    cqr_packmap_t *pm;
    cqr_pm_builder_t *b;
    int rc;             /* first error (atomic) */
} build_job_t;

static void build_one(void *arg, unsigned q)
{
    build_job_t *j = arg;
    if (__atomic_load_n(&j->rc, __ATOMIC_RELAXED))
        return;
    int rc = build_part(j->pm, j->b, q);
    if (rc) {
        int zero = 0;
        __atomic_compare_exchange_n(&j->rc, &zero, rc, 0, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
    }
}

/* One attempt with pm->seed. PM_RETRY asks for another seed. */
static int build_attempt(cqr_pm_builder_t *b, unsigned threads,
                         cqr_packmap_t *pm)
{
    int rc = sort_by_part(b, pm);
    if (rc == 0)
        rc = shape_parts(pm);
    if (rc == 0)
        rc = pm_arrays_alloc(pm);
    if (rc)
        return rc;
    build_job_t j = {.pm = pm, .b = b};
    cqr_par_t *par = NULL;
    if (threads > 1)
        rc = cqr_par_create(threads - 1, &par);
    if (rc == 0) {
        cqr_par_run(par, pm->nparts, build_one, &j);
        rc = j.rc;
    }
    cqr_par_destroy(par);
    return rc;
}

int cqr_pm_builder_build(cqr_pm_builder_t *b, unsigned threads,
                         cqr_packmap_t *pm)
{
    if (b->added != b->n || b->built)
        return CQR_EINVAL;
    int rc = PM_RETRY;
    for (int attempt = 0; attempt < PM_MAX_RETRIES && rc == PM_RETRY;
         attempt++) {
        memset(pm, 0, sizeof *pm);
        if (b->n == 0) {
            rc = cqr_packmap_init_empty(pm, b->vbits, b->fbits);
            break;
        }
        pm->n = b->n;
        pm->vbits = b->vbits;
        pm->fbits = b->fbits;
        pm->seed = attempt ? cqr_derive_seed(b->seed, 0x504d, attempt)
                           : b->seed;
        pm->nparts = (uint32_t)((b->n + CQR_PM_PART_KEYS - 1) /
                                CQR_PM_PART_KEYS);
        pm->parts = calloc(pm->nparts, sizeof *pm->parts);
        if (!pm->parts)
            return CQR_ENOMEM;
        rc = build_attempt(b, threads ? threads : 1, pm);
        if (rc)
            cqr_packmap_free(pm);
    }
    if (rc == 0)
        b->built = 1;
    return rc == PM_RETRY ? CQR_ENOMEM : rc;
}

/* ---- Serialised form ----------------------------------------------------- */

static uint64_t pad8(uint64_t v)
{
    return (v + 7) & ~(uint64_t)7;
}

uint64_t cqr_packmap_size(const cqr_packmap_t *pm)
{
    return PM_HEADER + (uint64_t)pm->nparts * PM_PART_BYTES +
           pad8(pm->npilots) + pad8(pm->nremap * 2) + pm->nwords * 8;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
    return p + 4;
}

static uint8_t *put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
    return p + 8;
}


/* The header and partition table of the serialised form. */
static void write_head(const cqr_packmap_t *pm, uint8_t *out)
{
    _Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
                   "the serialised form is little-endian");
    uint8_t *p = out;
    p = put_u32(p, PM_MAGIC);
    p = put_u32(p, PM_VERSION);
    p = put_u64(p, pm->n);
    p = put_u64(p, pm->seed);
    p = put_u32(p, pm->nparts);
    p = put_u32(p, pm->vbits);
    p = put_u32(p, pm->fbits);
    p = put_u32(p, (uint32_t)(CQR_PM_LAMBDA * 16));
    p = put_u64(p, pm->npilots);
    p = put_u64(p, pm->nremap);
    p = put_u64(p, pm->nwords);
    for (uint32_t q = 0; q < pm->nparts; q++) {
        const cqr_pm_part_t *r = &pm->parts[q];
        p = put_u64(p, r->slot0);
        p = put_u64(p, r->vbit0);
        p = put_u64(p, r->bucket0);
        p = put_u64(p, r->remap0);
        p = put_u32(p, r->n);
        p = put_u32(p, r->m);
        p = put_u32(p, r->nb);
        p = put_u32(p, r->pseed);
    }
    assert((uint64_t)(p - out) == PM_HEADER + (uint64_t)pm->nparts *
                                                  PM_PART_BYTES);
}

/* One contiguous piece of the serialised form: `len` bytes from src, then
 * `pad` zero bytes. */
typedef struct piece {
    const void *src;
    uint64_t len, pad;
} piece_t;

int cqr_packmap_write_range(const cqr_packmap_t *pm, uint64_t off,
                            uint64_t len, uint8_t *out)
{
    const uint64_t hl = PM_HEADER + (uint64_t)pm->nparts * PM_PART_BYTES;
    uint8_t *head = malloc(hl);
    if (!head)
        return CQR_ENOMEM;
    write_head(pm, head);
    const piece_t pc[4] = {
        {head, hl, 0},
        {pm->pilots, pm->npilots, pad8(pm->npilots) - pm->npilots},
        {pm->remap, pm->nremap * 2, pad8(pm->nremap * 2) - pm->nremap * 2},
        {pm->vals, pm->nwords * 8, 0},
    };
    uint64_t at = 0; /* offset of the current piece */
    for (int i = 0; i < 4 && len; i++) {
        const uint64_t size = pc[i].len + pc[i].pad;
        if (off < at + size) {
            uint64_t in = off - at, k = size - in < len ? size - in : len;
            uint64_t data = in < pc[i].len ? pc[i].len - in : 0;
            if (data > k)
                data = k;
            if (data)
                memcpy(out, (const uint8_t *)pc[i].src + in, data);
            memset(out + data, 0, k - data);
            out += k;
            off += k;
            len -= k;
        }
        at += size;
    }
    free(head);
    return 0;
}

int cqr_packmap_write(const cqr_packmap_t *pm, uint8_t *out)
{
    return cqr_packmap_write_range(pm, 0, cqr_packmap_size(pm), out);
}

typedef struct rd {
    const uint8_t *p;
    uint64_t left;
} rd_t;

static int take(rd_t *r, void *dst, uint64_t n)
{
    if (n > r->left)
        return CQR_ECORRUPT;
    if (n && dst)
        memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return 0;
}

/* Checks that every partition's ranges lie inside the arrays and fit
 * together, so that lookups stay in bounds whatever the bytes say. */
static int check_parts(const cqr_packmap_t *pm)
{
    uint64_t slot = 0, bucket = 0, remap = 0, vbit = 0;
    for (uint32_t q = 0; q < pm->nparts; q++) {
        const cqr_pm_part_t *r = &pm->parts[q];
        if (r->slot0 != slot || r->bucket0 != bucket || r->remap0 != remap ||
            r->vbit0 != vbit)
            return CQR_ECORRUPT;
        if (r->m <= r->n || r->m > 65536 || r->nb < 1)
            return CQR_ECORRUPT;
        slot += r->n;
        bucket += r->nb;
        remap += r->m - r->n;
        vbit += ((uint64_t)r->n * pm->vbits + 63) / 64 * 64;
    }
    if (slot != pm->n || bucket != pm->npilots || remap != pm->nremap ||
        vbit != pm->nwords * 64)
        return CQR_ECORRUPT;
    for (uint32_t q = 0; q < pm->nparts; q++) {
        const cqr_pm_part_t *r = &pm->parts[q];
        for (uint32_t i = 0; i < r->m - r->n; i++)
            if (pm->remap[r->remap0 + i] >= r->n)
                return CQR_ECORRUPT;
    }
    return 0;
}

/* The header's counts, checked against the bytes available. */
static int read_header(rd_t *r, cqr_packmap_t *pm, size_t len)
{
    uint32_t magic = 0, version = 0, lambda16 = 0;
    int rc = take(r, &magic, 4);
    rc = rc ? rc : take(r, &version, 4);
    if (rc || magic != PM_MAGIC)
        return CQR_ECORRUPT;
    if (version != PM_VERSION)
        return CQR_EVERSION;
    rc = take(r, &pm->n, 8);
    rc = rc ? rc : take(r, &pm->seed, 8);
    rc = rc ? rc : take(r, &pm->nparts, 4);
    rc = rc ? rc : take(r, &pm->vbits, 4);
    rc = rc ? rc : take(r, &pm->fbits, 4);
    rc = rc ? rc : take(r, &lambda16, 4);
    rc = rc ? rc : take(r, &pm->npilots, 8);
    rc = rc ? rc : take(r, &pm->nremap, 8);
    rc = rc ? rc : take(r, &pm->nwords, 8);
    if (rc || pm->vbits > CQR_PM_MAX_VBITS || pm->fbits > 57 ||
        pm->fbits > pm->vbits || pm->n > (1ull << 40) ||
        pm->nparts > pm->n || (pm->n && !pm->nparts) ||
        pm->npilots > len || pm->nremap > len / 2 || pm->nwords > len / 8 ||
        (uint64_t)pm->nparts * PM_PART_BYTES > len)
        return CQR_ECORRUPT;
    return 0;
}

int cqr_packmap_read(const uint8_t *in, size_t len, cqr_packmap_t *pm)
{
    memset(pm, 0, sizeof *pm);
    rd_t r = {in, len};
    int rc = read_header(&r, pm, len);
    if (rc)
        return rc;
    if (cqr_packmap_size(pm) != len)
        return CQR_ECORRUPT;
    pm->parts = calloc(pm->nparts ? pm->nparts : 1, sizeof *pm->parts);
    if (!pm->parts || pm_arrays_alloc(pm)) {
        cqr_packmap_free(pm);
        return CQR_ENOMEM;
    }
    for (uint32_t q = 0; q < pm->nparts; q++) {
        cqr_pm_part_t *p = &pm->parts[q];
        take(&r, &p->slot0, 8);
        take(&r, &p->vbit0, 8);
        take(&r, &p->bucket0, 8);
        take(&r, &p->remap0, 8);
        take(&r, &p->n, 4);
        take(&r, &p->m, 4);
        take(&r, &p->nb, 4);
        take(&r, &p->pseed, 4);
    }
    take(&r, pm->pilots, pm->npilots);
    take(&r, NULL, pad8(pm->npilots) - pm->npilots);
    take(&r, pm->remap, pm->nremap * 2);
    take(&r, NULL, pad8(pm->nremap * 2) - pm->nremap * 2);
    rc = take(&r, pm->vals, pm->nwords * 8);
    if (rc == 0 && r.left != 0)
        rc = CQR_ECORRUPT;
    if (rc == 0)
        rc = check_parts(pm);
    if (rc)
        cqr_packmap_free(pm);
    return rc;
}
