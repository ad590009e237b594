/* table_known.c -- a table's known IDs and the growth they cause.
 *
 * An ID becomes known at its first push (full and cqr tables): a full
 * table gives it a row, a cqr table a stored copy of its hashed pointers
 * (which a cluster phase later learns). Known IDs are what grows a table
 * after its creation, so this file also charges that growth to the
 * table's memory budget before allocating (budget.h) and keeps the
 * insertion records that let an export write only the new map slots
 * (persist.h). Everything here runs under the table's exclusive lock.
 */
#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "table_impl.h"

/* ---- Memory budget of growth ------------------------------------------- */

/* Bytes of one full table row: parameters, optimizer state, Adam step
 * and change mark (rows.c, cqr_full_reserve; the row's seqlock counter
 * lives in its map slot). */
static uint64_t full_row_bytes(const cqr_table_t *t)
{
    uint64_t w = t->cfg.dim;
    return w * 4 +
           (uint64_t)cqr_optim_state_floats(t->cfg.optim.kind,
                                            t->cfg.dim) * 4 +
           (t->cfg.optim.kind == CQR_OPT_ADAM ? 4 : 0) + 4 +
           /* eviction: a stamp and a free-stack slot per row */
           (cqr_full_evicts(&t->cfg) ? 8 : 0);
}

/* Rows the blocks of a full table are allocated for. */
static uint64_t full_cap_rows(const cqr_table_t *t)
{
    return t->nblocks == 0
               ? 0
               : t->blocks[0].n + (uint64_t)(t->nblocks - 1) * CQR_FULL_BLOCK;
}

/* Rows the blocks are allocated for once they hold `rows` rows: block 0
 * a power of two from CQR_FULL_FIRST, whole blocks after it. */
static uint64_t full_want_rows(uint64_t rows)
{
    if (rows == 0)
        return 0;
    if (rows > CQR_FULL_BLOCK)
        return (rows + CQR_FULL_BLOCK - 1) & ~(uint64_t)(CQR_FULL_BLOCK - 1);
    uint64_t cap = CQR_FULL_FIRST;
    while (cap < rows)
        cap *= 2;
    return cap;
}

/* What the table grew by since creation. Lock held (either mode). */
static uint64_t grown_locked(const cqr_table_t *t)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return full_cap_rows(t) * full_row_bytes(t) +
               cqr_idmap_bytes(&t->rowmap);
    if (t->cfg.kind == CQR_KIND_CQR && t->st)
        return cqr_idmap_bytes(&t->st->ids) +
               (t->st->ps ? cqr_ptrset_bytes(t->st->ps) : 0);
    return 0;
}

/* The growth the calling thread's last refused charge asked for. */
static _Thread_local uint64_t refused_bytes;

uint64_t cqr_table_refused_bytes(void)
{
    return refused_bytes;
}

/* Charges growth of `bytes` to the budget before allocating it: 0, or
 * CQR_ELIMIT with nothing charged. Exclusive lock held. */
static int grow_charge(cqr_table_t *t, uint64_t bytes)
{
    if (!t->budget || bytes == 0)
        return 0;
    int rc = cqr_budget_charge(t->budget, bytes);
    if (rc == 0)
        t->charged += bytes;
    else
        refused_bytes = bytes;
    return rc;
}

/* Gives back a charge whose allocation failed. Exclusive lock held. */
static void grow_refund(cqr_table_t *t, uint64_t bytes)
{
    if (!t->budget || bytes == 0)
        return;
    cqr_budget_refund(t->budget, bytes);
    t->charged -= bytes;
}

void cqr_table_budget_sync(cqr_table_t *t)
{
    if (!t->budget)
        return;
    uint64_t now = grown_locked(t);
    if (now > t->charged)
        cqr_budget_force(t->budget, now - t->charged);
    else
        cqr_budget_refund(t->budget, t->charged - now);
    t->charged = now;
}

void cqr_table_set_budget(cqr_table_t *t, struct cqr_budget *budget)
{
    pthread_rwlock_wrlock(&t->lock);
    if (t->budget)
        cqr_budget_refund(t->budget, t->charged);
    t->charged = 0;
    t->budget = budget;
    cqr_table_budget_sync(t);
    pthread_rwlock_unlock(&t->lock);
}

uint64_t cqr_table_grown_bytes(cqr_table_t *t)
{
    pthread_rwlock_rdlock(&t->lock);
    uint64_t n = grown_locked(t);
    pthread_rwlock_unlock(&t->lock);
    return n;
}
/* ---- Full tables' rows and the known-ID maps ---------------------------- */

/* Appends block b = t->nblocks, allocated for `cap` rows. */
static int full_add_block(cqr_table_t *t, uint32_t cap)
{
    if (t->nblocks == t->blocks_cap) {
        size_t bcap = t->blocks_cap ? 2 * t->blocks_cap : 16;
        cqr_rows_t *nb = realloc(t->blocks, bcap * sizeof *nb);
        if (!nb)
            return CQR_ENOMEM;
        t->blocks = nb;
        uint32_t **nm = realloc(t->fmark, bcap * sizeof *nm);
        if (!nm)
            return CQR_ENOMEM;
        t->fmark = nm;
        uint32_t *np = realloc(t->fpage, bcap * sizeof *np);
        if (!np)
            return CQR_ENOMEM;
        t->fpage = np;
        if (cqr_full_evicts(&t->cfg)) {
            uint32_t **ns = realloc(t->fstamp, bcap * sizeof *ns);
            if (!ns)
                return CQR_ENOMEM;
            t->fstamp = ns;
        }
        t->blocks_cap = bcap;
    }
    size_t b = t->nblocks;
    uint32_t *stamps = NULL;
    if (t->fstamp && !(stamps = calloc(cap, sizeof(uint32_t))))
        return CQR_ENOMEM;
    t->fmark[b] = calloc(cap, sizeof(uint32_t));
    int rc = t->fmark[b] ? cqr_rows_init_flags(&t->blocks[b], cap,
                                               t->cfg.dim, t->cfg.optim.kind,
                                               CQR_ROWS_OWN_SEQ)
                         : CQR_ENOMEM;
    if (rc) {
        free(t->fmark[b]);
        free(stamps);
        return rc;
    }
    if (t->fstamp)
        t->fstamp[b] = stamps;
    t->fpage[b] = 0;
    t->nblocks++;
    return 0;
}

/* Grows block 0 to `cap` rows: a new allocation, the rows and marks
 * copied over (amortised: block 0 doubles). No reader holds the rows
 * (exclusive access). */
static int full_grow_first(cqr_table_t *t, uint32_t cap)
{
    cqr_rows_t *old = &t->blocks[0];
    cqr_rows_t nr;
    uint32_t *nm = calloc(cap, sizeof(uint32_t));
    uint32_t *ns = t->fstamp ? calloc(cap, sizeof(uint32_t)) : NULL;
    int rc = nm && (ns || !t->fstamp)
                 ? cqr_rows_init_flags(&nr, cap, old->w, old->opt,
                                       CQR_ROWS_OWN_SEQ)
                 : CQR_ENOMEM;
    if (rc) {
        free(nm);
        free(ns);
        return rc;
    }
    if (ns) {
        memcpy(ns, t->fstamp[0], (size_t)old->n * sizeof(uint32_t));
        free(t->fstamp[0]);
        t->fstamp[0] = ns;
    }
    memcpy(nr.param, old->param, (size_t)old->n * old->w * sizeof(float));
    if (old->sw)
        memcpy(nr.state, old->state,
               (size_t)old->n * old->sw * sizeof(float));
    if (old->step)
        memcpy(nr.step, old->step, (size_t)old->n * sizeof(uint32_t));
    memcpy(nm, t->fmark[0], (size_t)old->n * sizeof(uint32_t));
    cqr_rows_free(old);
    free(t->fmark[0]);
    *old = nr;
    t->fmark[0] = nm;
    return 0;
}

int cqr_full_reserve(cqr_table_t *t, uint64_t rows)
{
    uint64_t want = full_want_rows(rows);
    if (want <= full_cap_rows(t))
        return 0;
    uint32_t first = want < CQR_FULL_BLOCK ? (uint32_t)want : CQR_FULL_BLOCK;
    int rc = 0;
    if (t->nblocks == 0)
        rc = full_add_block(t, first);
    else if (t->blocks[0].n < first)
        rc = full_grow_first(t, first);
    while (rc == 0 && full_cap_rows(t) < want)
        rc = full_add_block(t, CQR_FULL_BLOCK);
    return rc;
}

/* The whole map counts as changed in epoch e: the next export writes it
 * whole (after a rehash, or when the insertion records cannot grow). */
static void map_all_changed(cqr_table_t *t, uint32_t e)
{
    t->map_base_epoch = e;
    t->ins_n = 0;
}

/* Records that an ID was inserted into the known-ID map m (the full
 * table's row map or the live cqr map) and now has value v; old_cap is
 * the map's capacity before the insert. Keeps the insertion records that
 * let an export write only the changed slots; when they would grow past
 * a quarter of the map (or cannot grow), or the map was rehashed, the
 * whole map is marked changed instead. Exclusive lock held. */
static void track_insert(cqr_table_t *t, const cqr_idmap_t *m, size_t old_cap,
                         const void *v)
{
    if (!__atomic_load_n(&t->ins_on, __ATOMIC_RELAXED))
        return; /* never exported: the first export writes the whole map */
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    if (t->map_base_epoch == e)
        return; /* already wholly changed in this epoch */
    const size_t slot = cqr_idmap_index_of(m, v);
    if (m->cap != old_cap || slot == m->cap) {
        /* The ID 0 lives outside the slots, in the exported meta. */
        if (m->cap != old_cap)
            map_all_changed(t, e);
        return;
    }
    cqr_track_slot(t, m, slot);
}

void cqr_track_slot(cqr_table_t *t, const cqr_idmap_t *m, size_t slot)
{
    if (!__atomic_load_n(&t->ins_on, __ATOMIC_RELAXED))
        return;
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    if (t->map_base_epoch == e || slot >= m->cap)
        return; /* wholly changed already; the ID 0 is in the meta */
    if (t->ins_n == t->ins_cap) {
        size_t cap = t->ins_cap ? 2 * t->ins_cap : 1024;
        uint64_t *ns = cap <= (1u << 16) || cap <= m->count / 4
                           ? realloc(t->ins_slot, cap * sizeof *ns) : NULL;
        if (ns)
            t->ins_slot = ns;
        uint32_t *ne = ns ? realloc(t->ins_epoch, cap * sizeof *ne) : NULL;
        if (ne)
            t->ins_epoch = ne;
        if (!ns || !ne) {
            map_all_changed(t, e);
            return;
        }
        t->ins_cap = cap;
    }
    t->ins_slot[t->ins_n] = slot;
    t->ins_epoch[t->ins_n] = e;
    t->ins_n++;
}

/* The free stack holds at most every row: it grows with the rows. */
static int full_free_reserve(cqr_table_t *t, uint64_t rows)
{
    if (!t->fstamp || rows <= t->free_cap)
        return 0;
    uint32_t *nf = realloc(t->ffree, rows * sizeof *nf);
    if (!nf)
        return CQR_ENOMEM;
    t->ffree = nf;
    t->free_cap = rows;
    return 0;
}

/* A row for a new ID: a freed one (*reused = 1) or the next never used
 * (growing the blocks when needed). Exclusive lock held. */
static int full_take_row(cqr_table_t *t, uint32_t *row, int *reused)
{
    *reused = t->nfree > 0;
    if (*reused) {
        *row = t->ffree[--t->nfree];
        return 0;
    }
    if (t->nrows >= UINT32_MAX)
        return CQR_ELIMIT;
    *row = (uint32_t)t->nrows;
    uint64_t have = full_cap_rows(t);
    if (*row >= have) {
        uint64_t bytes = (full_want_rows(t->nrows + 1) - have) *
                         full_row_bytes(t);
        int rc = grow_charge(t, bytes);
        if (rc)
            return rc;
        rc = cqr_full_reserve(t, t->nrows + 1);
        if (rc) {
            grow_refund(t, bytes); /* one step: nothing was allocated */
            return rc;
        }
    }
    int rc = full_free_reserve(t, full_cap_rows(t));
    if (rc)
        return rc;
    t->nrows++;
    return 0;
}

/* Starts row `row` of `id` afresh: parameters from the ID's fallback row
 * (admission on: what its pushes taught so far) or its initial value,
 * optimizer state zero, stamp `now`. Exclusive lock held. */
static void full_row_start(cqr_table_t *t, uint64_t id, uint32_t row,
                           uint32_t now)
{
    uint32_t local;
    cqr_rows_t *blk = cqr_full_block(t, row, &local);
    const size_t b = row >> CQR_FULL_BLOCK_SHIFT;
    float *p = blk->param + (size_t)local * blk->w;
    if (t->fallback)
        memcpy(p, t->fallback->param +
                      (size_t)cqr_full_fb_row(t, id) * blk->w,
               (size_t)blk->w * sizeof(float));
    else
        cqr_full_init_row(t, id, p);
    if (blk->sw)
        memset(blk->state + (size_t)local * blk->sw, 0,
               (size_t)blk->sw * sizeof(float));
    if (blk->step)
        blk->step[local] = 0;
    if (t->fstamp)
        t->fstamp[b][local] = now;
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    cqr_mark(&t->fmark[b][local], e);
    cqr_mark(&t->fpage[b], e);
}

int cqr_full_new_row(cqr_table_t *t, uint64_t id, uint32_t now)
{
    uint32_t row;
    int reused;
    int rc = full_take_row(t, &row, &reused);
    if (rc)
        return rc;
    void *v;
    int inserted;
    size_t old_cap = t->rowmap.cap;
    /* The ID 0 lives beside the map's arrays: it never grows them. */
    uint64_t mgrow = id ? cqr_idmap_grow_bytes(&t->rowmap) : 0;
    rc = grow_charge(t, mgrow);
    if (rc == 0) {
        rc = cqr_idmap_insert(&t->rowmap, id, &v, &inserted);
        if (rc)
            grow_refund(t, mgrow);
    }
    if (rc) {
        /* Give the row back: to the free stack, or unused at the end. */
        if (reused)
            t->ffree[t->nfree++] = row;
        else
            t->nrows--;
        return rc;
    }
    assert(inserted);
    ((cqr_full_slot_t *)v)->row = row; /* counter 0: zero-filled */
    track_insert(t, &t->rowmap, old_cap, v);
    full_row_start(t, id, row, now);
    t->n_admitted++;
    return 0;
}

/* A cqr ID's turn in cqr_table_add_known: admitted now (a stored copy of
 * its hashed pointers), or its stamp brought up to the current phase. */
static int cqr_known_one(cqr_table_t *t, uint64_t id)
{
    cqr_idmap_t *m = &t->st->ids;
    /* The static set's IDs (compact tables, which never evict) are
     * known: nothing to do. */
    if (t->st->ps && t->st->ps->pm.n) {
        uint64_t vbit;
        int ok;
        cqr_packmap_lookup(&t->st->ps->pm, id, &vbit, &ok);
        if (ok)
            return 0;
    }
    void *v = cqr_idmap_find(m, id);
    if (v) {
        if (t->stamp_off && cqr_stamp_get(t, v) != t->phases_done) {
            cqr_stamp_set(t, v, t->phases_done);
            track_insert(t, m, m->cap, v); /* the slot changed */
        }
        return 0;
    }
    if (!cqr_admit_ok(t, id))
        return 0;
    int inserted;
    size_t old_cap = m->cap;
    uint64_t mgrow = id != 0 ? cqr_idmap_grow_bytes(m) : 0;
    int rc = grow_charge(t, mgrow);
    if (rc)
        return rc;
    rc = cqr_idmap_insert(m, id, &v, &inserted);
    if (rc) {
        grow_refund(t, mgrow);
        return rc;
    }
    for (uint32_t i = 0; i < t->c; i++)
        cqr_ptr_set(v, t->pw, i, cqr_hash_p(t, t->st, id, i));
    if (t->stamp_off)
        cqr_stamp_set(t, v, t->phases_done);
    t->n_admitted++;
    track_insert(t, m, old_cap, v);
    if (t->compacting)
        cqr_compact_note(t, id);
    return 0;
}

int cqr_table_reserve_known(cqr_table_t *t, size_t n)
{
    cqr_idmap_t *m = t->cfg.kind == CQR_KIND_FULL ? &t->rowmap
                     : t->cfg.kind == CQR_KIND_CQR ? &t->st->ids
                                                    : NULL;
    if (!m)
        return 0;
    const size_t old_cap = m->cap;
    const uint64_t bytes = cqr_idmap_reserve_bytes(m, n);
    int rc = grow_charge(t, bytes);
    if (rc)
        return rc;
    rc = cqr_idmap_reserve(m, n);
    if (rc) {
        grow_refund(t, bytes);
        return rc;
    }
    if (m->cap != old_cap && __atomic_load_n(&t->ins_on, __ATOMIC_RELAXED))
        map_all_changed(t, __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED));
    return 0;
}

int cqr_table_add_known(cqr_table_t *t, const uint64_t *ids, size_t n)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return cqr_full_add_known(t, ids, n);
    for (size_t j = 0; j < n; j++) {
        int rc = cqr_known_one(t, ids[j]);
        if (rc)
            return rc;
    }
    return 0;
}
