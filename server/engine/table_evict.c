/* table_evict.c -- a full table's admission and eviction (issue 19).
 *
 * Admission (admit_after N > 1): an ID gets a row of its own only at its
 * N-th push (counted in the table's count-min sketch, sketch.h). Until
 * then it shares one of CQR_FALLBACK_ROWS fallback rows, chosen by a
 * seeded hash of the ID: its pushes step that row and its lookups return
 * it, so rare IDs still learn (as hashed rows). At admission its row
 * starts as a copy of its fallback row (its value does not jump).
 *
 * Eviction (max_ids, ttl_seconds): every row keeps the table-clock second
 * of its last push (a stamp). The clock is the wall clock, or a time a
 * caller set (cqr_table_set_clock: tests and replays), so that digests
 * depend on the calls only. A row is freed (its map slot deleted, the row
 * pushed on the free stack and reused by the next new ID) at defined
 * points only, all on the exclusive path that new IDs take:
 *   - ttl_seconds T: a row last pushed T or more seconds ago counts as
 *     gone at once (lookups return the ID's absent value, a push starts
 *     it afresh: cqr_full_expired); it is freed when its ID is pushed
 *     again, or by the sweep that every registration runs over the next
 *     CQR_TTL_SWEEP + 2 x (new IDs) map slots (a clock hand, persisted).
 *   - max_ids N: a new row beyond N frees one first, by sampled LRU:
 *     CQR_EVICT_SAMPLES map slots drawn from the table's eviction stream
 *     (seeded by the table seed and the eviction count, so a restored
 *     table draws the same), and the least recently pushed of their IDs
 *     goes (the first drawn on ties; never an ID of the push being
 *     registered, so a push with more new IDs than N exceeds N until the
 *     next registration). With S samples the victim is among the oldest
 *     fraction q of rows with probability 1 - (1 - q)^S: the oldest 10%
 *     57% of the time and the oldest 25% 90% of the time (S = 8); stamps
 *     are seconds, so within a second the order is the draw's.
 * An evicted ID then looks up its absent value again (its initial value,
 * or its fallback row with admission on), as a never-seen ID does; the
 * sketch still counts its earlier pushes, so admission takes it back at
 * its next push. The ID 0 lives outside the map's slots: only its own
 * pushes (or lookups, which see it expired) evict it.
 *
 * Everything here runs under the table's exclusive lock, but
 * cqr_table_now and cqr_table_set_clock.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "table_impl.h"

/* Map slots a sampled-LRU eviction draws. */
#define CQR_EVICT_SAMPLES 8u
/* Slots probed forward from a drawn slot for an ID. */
#define CQR_EVICT_PROBE 64u
/* Map slots the TTL sweep examines per registration, at least. */
#define CQR_TTL_SWEEP 64u

uint32_t cqr_table_now(const cqr_table_t *t)
{
    uint32_t fixed = __atomic_load_n(&t->clock_fixed, __ATOMIC_RELAXED);
    if (fixed)
        return fixed;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (uint32_t)ts.tv_sec;
}

void cqr_table_set_clock(cqr_table_t *t, uint32_t seconds)
{
    __atomic_store_n(&t->clock_fixed, seconds, __ATOMIC_RELAXED);
}

int cqr_full_fallback_create(cqr_table_t *t)
{
    t->fallback = calloc(1, sizeof *t->fallback);
    t->fbmark = calloc(CQR_FALLBACK_ROWS, sizeof *t->fbmark);
    if (!t->fallback || !t->fbmark)
        return CQR_ENOMEM;
    int rc = cqr_rows_init(t->fallback, CQR_FALLBACK_ROWS, t->cfg.dim,
                           t->cfg.optim.kind);
    if (rc) {
        free(t->fallback);
        t->fallback = NULL;
        return rc;
    }
    t->fb_seed = cqr_derive_seed(t->cfg.seed, CQR_TAG_FALLBACK, 0);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, CQR_TAG_FALLBACK, 1));
    size_t nf = (size_t)CQR_FALLBACK_ROWS * t->cfg.dim;
    for (size_t j = 0; j < nf; j++)
        t->fallback->param[j] = cqr_rng_sym(&rng, t->cfg.init_scale);
    return 0;
}

/* A delete's report of a map slot it changed (cqr_idmap_moved_cb). */
static void slot_moved(void *ud, size_t slot)
{
    cqr_table_t *t = ud;
    cqr_track_slot(t, &t->rowmap, slot);
}

/* Frees the row of `id` (which has one): its map slot is deleted and the
 * row goes on the free stack. */
static void full_evict(cqr_table_t *t, uint64_t id)
{
    const cqr_full_slot_t *sl = cqr_full_find(t, id);
    uint32_t row = sl->row;
    /* The ID 0 lives in the meta, which every export writes whole. */
    cqr_idmap_delete(&t->rowmap, id, slot_moved, t);
    assert(t->nfree < t->free_cap);
    t->ffree[t->nfree++] = row;
    t->n_evicted++;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Whether `id` is one of the sorted ids[0..n). */
static int in_sorted(const uint64_t *ids, size_t n, uint64_t id)
{
    return bsearch(&id, ids, n, sizeof *ids, cmp_u64) != NULL;
}

static uint32_t row_stamp(const cqr_table_t *t, uint32_t row)
{
    return t->fstamp[row >> CQR_FULL_BLOCK_SHIFT][row & (CQR_FULL_BLOCK - 1)];
}

/* Sampled LRU (see the file comment): frees one row whose ID is not in
 * the sorted keep[0..nkeep). 1 if it did, 0 if no draw found one. */
static int evict_lru(cqr_table_t *t, const uint64_t *keep, size_t nkeep)
{
    const cqr_idmap_t *m = &t->rowmap;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, CQR_TAG_EVICT,
                                       t->n_evicted));
    uint64_t best = 0;
    uint64_t best_stamp = UINT64_MAX;
    for (unsigned s = 0; s < CQR_EVICT_SAMPLES; s++) {
        size_t i = (size_t)cqr_rng_below(&rng, m->cap);
        for (unsigned q = 0; q < CQR_EVICT_PROBE; q++, i = (i + 1) % m->cap) {
            uint64_t id = cqr_idmap_key_at(m, i);
            if (id == 0)
                continue;
            if (in_sorted(keep, nkeep, id))
                break;
            const cqr_full_slot_t *sl =
                (const cqr_full_slot_t *)(void *)cqr_idmap_val_at(m, i);
            uint32_t st = row_stamp(t, sl->row);
            if (st < best_stamp) {
                best_stamp = st;
                best = id;
            }
            break;
        }
    }
    if (best_stamp == UINT64_MAX)
        return 0;
    full_evict(t, best);
    return 1;
}

/* The TTL sweep: examines up to `budget` map slots from the hand and
 * frees the expired rows among them (none of keep[]). */
static void ttl_sweep(cqr_table_t *t, size_t budget, uint32_t now,
                      const uint64_t *keep, size_t nkeep)
{
    const cqr_idmap_t *m = &t->rowmap;
    if (budget > m->cap)
        budget = m->cap;
    size_t i = (size_t)(t->ttl_hand % m->cap);
    for (size_t q = 0; q < budget; q++) {
        uint64_t id = cqr_idmap_key_at(m, i);
        if (id != 0 && !in_sorted(keep, nkeep, id)) {
            const cqr_full_slot_t *sl =
                (const cqr_full_slot_t *)(void *)cqr_idmap_val_at(m, i);
            if (cqr_full_expired(t, sl->row, now)) {
                /* A later slot may move into this one: look again. */
                full_evict(t, id);
                continue;
            }
        }
        i = (i + 1) % m->cap;
    }
    t->ttl_hand = i;
}

/* Admits the IDs of ids[0..n) that have no row and whose push this is
 * their admit_after-th, freeing a row first when max_ids is reached. */
static int admit_all(cqr_table_t *t, const uint64_t *ids, size_t n,
                     const uint64_t *keep, size_t nkeep, uint32_t now,
                     size_t *admitted)
{
    const uint64_t max_ids = t->cfg.max_ids;
    for (size_t j = 0; j < n; j++) {
        if (cqr_full_find(t, ids[j]) || !cqr_admit_ok(t, ids[j]))
            continue;
        while (max_ids && t->rowmap.count >= max_ids &&
               evict_lru(t, keep, nkeep))
            ;
        int rc = cqr_full_new_row(t, ids[j], now);
        if (rc)
            return rc;
        (*admitted)++;
    }
    return 0;
}

int cqr_full_add_known(cqr_table_t *t, const uint64_t *ids, size_t n)
{
    const int evicts = cqr_full_evicts(&t->cfg);
    const uint32_t now = evicts ? cqr_table_now(t) : 0;
    uint64_t *keep = NULL;
    if (evicts && n) {
        /* IDs whose row expired start afresh. */
        for (size_t j = 0; t->cfg.ttl_seconds && j < n; j++) {
            const cqr_full_slot_t *sl = cqr_full_find(t, ids[j]);
            if (sl && cqr_full_expired(t, sl->row, now))
                full_evict(t, ids[j]);
        }
        keep = malloc(n * sizeof *keep);
        if (!keep)
            return CQR_ENOMEM;
        memcpy(keep, ids, n * sizeof *keep);
        qsort(keep, n, sizeof *keep, cmp_u64);
    }
    size_t admitted = 0;
    int rc = admit_all(t, ids, n, keep, evicts ? n : 0, now, &admitted);
    if (rc == 0 && t->cfg.ttl_seconds && t->rowmap.cap)
        ttl_sweep(t, CQR_TTL_SWEEP + 2 * admitted, now, keep, n);
    free(keep);
    return rc;
}

int cqr_full_free_rebuild(cqr_table_t *t)
{
    if (!t->fstamp)
        return 0;
    if (t->nrows > t->free_cap) {
        uint32_t *nf = realloc(t->ffree, t->nrows * sizeof *nf);
        if (!nf)
            return CQR_ENOMEM;
        t->ffree = nf;
        t->free_cap = t->nrows;
    }
    uint8_t *used = calloc(t->nrows ? t->nrows : 1, 1);
    if (!used)
        return CQR_ENOMEM;
    size_t pos = 0;
    uint64_t id;
    void *v;
    while (cqr_idmap_next(&t->rowmap, &pos, &id, &v)) {
        uint32_t row = ((const cqr_full_slot_t *)v)->row;
        if (used[row]) { /* two IDs, one row: the free stack would overflow */
            free(used);
            return CQR_ECORRUPT;
        }
        used[row] = 1;
    }
    /* Lowest rows on top: reused first. */
    t->nfree = 0;
    for (uint64_t r = t->nrows; r-- > 0;)
        if (!used[r])
            t->ffree[t->nfree++] = (uint32_t)r;
    free(used);
    return 0;
}
