/* table_static.c -- a cqr table's static set: walking the known IDs of a
 * state, building a static set from a map, compactions (table_impl.h,
 * ptrset.h).
 *
 * A compaction moves the IDs registered since the last rebuild (the map)
 * into a new static set together with the old set's IDs; pointers and
 * codebooks stay as they are. It holds the table's lock shared while it
 * copies the map (IDs registered since the last rebuild: registrations
 * of new IDs wait that long; lookups and other pushes go on: 11 s for
 * 1e8 IDs), reads the old set's key file without
 * the lock (the set is immutable, and no phase can begin meanwhile:
 * cqr_table_phase_start refuses while `compacting` is set), builds, and
 * takes the lock exclusively again only to install the set and keep in
 * the map only the IDs registered meanwhile (noted as they register:
 * cqr_compact_note), so that the install costs what came in meanwhile,
 * not what moved.
 */
#include <stdlib.h>
#include <string.h>

#include "table_impl.h"

void cqr_known_iter_init(cqr_known_iter_t *it, const cqr_table_t *t,
                         const cqr_cbstate_t *st)
{
    memset(it, 0, sizeof *it);
    it->t = t;
    it->st = st;
    it->in_map = !st->ps || st->ps->pm.n == 0;
    if (!it->in_map) {
        it->rc = cqr_ptrset_reader_init(&it->rd, st->ps);
        if (it->rc)
            it->in_map = 1;
    }
}

int cqr_known_iter_next(cqr_known_iter_t *it, uint64_t *id, uint32_t *ptrs,
                        void **v)
{
    if (it->rc)
        return 0;
    *v = NULL;
    if (!it->in_map) {
        cqr_ptrset_item_t item;
        if (cqr_ptrset_reader_next(&it->rd, &item, ptrs)) {
            *id = item.id;
            return 1;
        }
        it->rc = it->rd.err;
        cqr_ptrset_reader_free(&it->rd);
        it->in_map = 1;
        if (it->rc)
            return 0;
    }
    if (!cqr_idmap_next(&it->st->ids, &it->mpos, id, v))
        return 0;
    for (uint32_t i = 0; i < it->t->c; i++)
        ptrs[i] = cqr_ptr_get(*v, it->t->pw, i);
    return 1;
}

void cqr_known_iter_free(cqr_known_iter_t *it)
{
    if (!it->in_map)
        cqr_ptrset_reader_free(&it->rd);
    it->in_map = 1;
}

uint64_t cqr_state_known(const cqr_cbstate_t *st)
{
    return st->ids.count + (st->ps ? st->ps->pm.n : 0);
}

/* The seed of the static set of rebuild number gen. */
static uint64_t rebuild_seed(const cqr_table_t *t, uint64_t gen)
{
    return cqr_derive_seed(t->cfg.seed, CQR_TAG_REBUILD, gen);
}

static unsigned build_threads(const cqr_table_t *t)
{
    return t->cfg.cluster_threads ? t->cfg.cluster_threads : 1;
}

/* Builds b into a new static set *out. */
static int finish(const cqr_table_t *t, cqr_ptrset_builder_t *b,
                  cqr_ptrset_t **out)
{
    cqr_ptrset_t *ps = calloc(1, sizeof *ps);
    if (!ps) {
        cqr_ptrset_builder_destroy(b);
        return CQR_ENOMEM;
    }
    int rc = cqr_ptrset_builder_finish(b, build_threads(t), ps);
    if (rc) {
        free(ps);
        return rc;
    }
    *out = ps;
    return 0;
}

void cqr_ptrset_destroy(cqr_ptrset_t *ps)
{
    cqr_ptrset_free(ps);
    free(ps);
}

int cqr_state_make_static(const cqr_table_t *t, cqr_cbstate_t *st,
                          uint64_t gen)
{
    cqr_ptrset_builder_t *b = NULL;
    int rc = cqr_ptrset_builder_create(st->ids.count, t->c,
                                       cqr_ptr_bits(t->k), 0,
                                       rebuild_seed(t, gen), &b);
    size_t pos = 0;
    uint64_t id;
    void *v;
    uint32_t p[CQR_MAX_CHUNKS];
    while (rc == 0 && cqr_idmap_next(&st->ids, &pos, &id, &v)) {
        for (uint32_t i = 0; i < t->c; i++)
            p[i] = cqr_ptr_get(v, t->pw, i);
        rc = cqr_ptrset_builder_add(b, id, p, 0);
    }
    cqr_ptrset_t *ps = NULL;
    if (rc) {
        cqr_ptrset_builder_destroy(b);
        return rc;
    }
    if ((rc = finish(t, b, &ps)) != 0)
        return rc;
    cqr_idmap_t fresh;
    if ((rc = cqr_idmap_init(&fresh, st->ids.vw, 0)) != 0) {
        cqr_ptrset_destroy(ps);
        return rc;
    }
    cqr_idmap_free(&st->ids);
    st->ids = fresh;
    cqr_ptrset_destroy(st->ps);
    st->ps = ps;
    return 0;
}

/* ---- Compactions -------------------------------------------------------- */

void cqr_compact_note(cqr_table_t *t, uint64_t id)
{
    if (t->cmp_lost)
        return;
    if (t->cmp_n == t->cmp_cap) {
        size_t cap = t->cmp_cap ? 2 * t->cmp_cap : 1024;
        uint64_t *nn = realloc(t->cmp_new, cap * sizeof *nn);
        if (!nn) {
            t->cmp_lost = 1;
            return;
        }
        t->cmp_new = nn;
        t->cmp_cap = cap;
    }
    t->cmp_new[t->cmp_n++] = id;
}

/* The map that stays once the compaction installs: the IDs registered
 * while it ran (cmp_new), with their values. Every other ID of map m was
 * in it when the compaction began and is in the new static set. */
static int map_rest(const cqr_table_t *t, const cqr_idmap_t *m,
                    cqr_idmap_t *out)
{
    if (t->cmp_lost)
        return CQR_ENOMEM;
    int rc = cqr_idmap_init(out, m->vw, 0);
    const size_t n = t->cmp_n;
    if (rc == 0 && n)
        rc = cqr_idmap_reserve(out, n + n / 8 + 16);
    for (size_t j = 0; rc == 0 && j < n; j++) {
        const void *v = cqr_idmap_find(m, t->cmp_new[j]);
        void *nv;
        int inserted;
        if (!v)
            continue; /* cannot happen: nothing deletes while compacting */
        rc = cqr_idmap_insert(out, t->cmp_new[j], &nv, &inserted);
        if (rc == 0)
            memcpy(nv, v, m->vw);
    }
    if (rc)
        cqr_idmap_free(out);
    return rc;
}

static void compact_end(cqr_table_t *t)
{
    t->compacting = 0;
    free(t->cmp_new);
    t->cmp_new = NULL;
    t->cmp_n = t->cmp_cap = 0;
    t->cmp_lost = 0;
}

/* The first step, under the shared lock (no registrations meanwhile): a
 * builder holding the map's IDs (*nm of them) for nstatic more. */
static int compact_start(cqr_table_t *t, uint64_t nstatic, uint64_t gen,
                         cqr_ptrset_builder_t **b, size_t *nm)
{
    const cqr_idmap_t *m = &t->st->ids;
    *nm = m->count;
    int rc = cqr_ptrset_builder_create(nstatic + m->count, t->c,
                                       cqr_ptr_bits(t->k), 0,
                                       rebuild_seed(t, gen), b);
    size_t pos = 0;
    uint64_t id;
    void *v;
    uint32_t p[CQR_MAX_CHUNKS];
    while (rc == 0 && cqr_idmap_next(m, &pos, &id, &v)) {
        for (uint32_t i = 0; i < t->c; i++)
            p[i] = cqr_ptr_get(v, t->pw, i);
        rc = cqr_ptrset_builder_add(*b, id, p, 0);
    }
    if (rc) {
        cqr_ptrset_builder_destroy(*b);
        *b = NULL;
    }
    return rc;
}

/* A compaction's progress callback (cqr_table_compact_ex). */
typedef struct compact_prog {
    cqr_compact_progress_cb cb;
    void *ud;
} compact_prog_t;

static int report(const compact_prog_t *pr, const char *stage, uint64_t done,
                  uint64_t total)
{
    return pr->cb && pr->cb(pr->ud, stage, done, total) ? CQR_ECANCELED : 0;
}

/* Adds the old static set's IDs to the builder (no lock: immutable). */
static int compact_static(const cqr_ptrset_t *ps, cqr_ptrset_builder_t *b,
                          const compact_prog_t *pr)
{
    const uint64_t n = ps ? ps->pm.n : 0;
    if (n == 0)
        return report(pr, "static", 0, 0);
    cqr_ptrset_reader_t rd;
    int rc = cqr_ptrset_reader_init(&rd, ps);
    cqr_ptrset_item_t it;
    uint32_t p[CQR_MAX_CHUNKS];
    uint64_t done = 0;
    while (rc == 0 && cqr_ptrset_reader_next(&rd, &it, p)) {
        rc = cqr_ptrset_builder_add(b, it.id, p, 0);
        if (rc == 0 && (++done & ((1u << 20) - 1)) == 0)
            rc = report(pr, "static", done, n);
    }
    if (rc == 0)
        rc = rd.err;
    cqr_ptrset_reader_free(&rd);
    return rc ? rc : report(pr, "static", n, n);
}

/* The last step, lock held exclusively: the new set in, the moved IDs out
 * of the map. On error nothing changes. */
static int compact_install(cqr_table_t *t, cqr_ptrset_t *ps, uint64_t gen,
                           cqr_ptrset_t **old)
{
    cqr_cbstate_t *st = t->st;
    cqr_idmap_t rest;
    int rc = map_rest(t, &st->ids, &rest);
    if (rc)
        return rc;
    cqr_idmap_free(&st->ids);
    st->ids = rest;
    *old = st->ps;
    st->ps = ps;
    t->compact = 1;
    t->rebuilds = gen;
    /* The static set is new and every map slot moved: the next export
     * writes both whole. */
    t->ps_base_epoch = t->map_base_epoch =
        __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    t->ins_n = 0;
    cqr_table_budget_sync(t);
    return 0;
}

int cqr_table_compact_ex(cqr_table_t *t, cqr_compact_progress_cb progress,
                         void *ud, uint64_t *moved)
{
    if (!t)
        return CQR_EINVAL;
    if (t->cfg.kind != CQR_KIND_CQR || t->cfg.evict_after_phases)
        return CQR_EUNSUPPORTED;
    const compact_prog_t pr = {progress, ud};
    /* The map is copied under the shared lock: lookups and pushes of
     * known IDs go on, registrations (exclusive) wait. `compacting` is
     * read under the exclusive lock only (and here, by the compare and
     * swap that keeps a second compaction out). */
    pthread_rwlock_rdlock(&t->lock);
    int idle = 0;
    if (t->phase || !__atomic_compare_exchange_n(&t->compacting, &idle, 1, 0,
                                                 __ATOMIC_ACQ_REL,
                                                 __ATOMIC_ACQUIRE)) {
        pthread_rwlock_unlock(&t->lock);
        return CQR_EBUSY;
    }
    const cqr_ptrset_t *ps0 = t->st->ps;
    const uint64_t gen = t->rebuilds + 1;
    cqr_ptrset_builder_t *b = NULL;
    size_t nm = 0;
    int rc = compact_start(t, ps0 ? ps0->pm.n : 0, gen, &b, &nm);
    pthread_rwlock_unlock(&t->lock);
    if (rc == 0)
        rc = report(&pr, "map", nm, nm);
    if (rc == 0)
        rc = compact_static(ps0, b, &pr);
    cqr_ptrset_t *ps = NULL, *old = NULL;
    if (rc == 0)
        rc = finish(t, b, &ps);
    else
        cqr_ptrset_builder_destroy(b); /* NULL after a failed start */
    if (rc == 0)
        rc = report(&pr, "built", ps->pm.n, ps->pm.n);
    pthread_rwlock_wrlock(&t->lock);
    if (rc == 0)
        rc = compact_install(t, ps, gen, &old);
    compact_end(t);
    pthread_rwlock_unlock(&t->lock);
    if (rc)
        cqr_ptrset_destroy(ps);
    cqr_ptrset_destroy(old);
    if (rc == 0 && moved)
        *moved = nm;
    return rc;
}

int cqr_table_compact(cqr_table_t *t, uint64_t *moved)
{
    return cqr_table_compact_ex(t, NULL, NULL, moved);
}
