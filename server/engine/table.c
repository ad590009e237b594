/* table.c -- a table's life: creation and destruction, its codebook
 * states, statistics, digest and schedule. Lookups, pushes, known IDs and
 * configs have files of their own (table_lookup.c, table_push.c,
 * table_known.c, table_config.c); table_impl.h has the struct.
 */
#include "table.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "table_impl.h"

double cqr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- States of the codebook kinds ------------------------------------- */

void cqr_cbstate_free(const cqr_table_t *t, cqr_cbstate_t *st)
{
    if (!st)
        return;
    if (st->cb) {
        for (uint32_t b = 0; b < t->ncb * t->c; b++)
            cqr_rows_free(&st->cb[b]);
    }
    free(st->cb);
    free(st->seed_p);
    free(st->seed_h);
    cqr_idmap_free(&st->ids);
    cqr_ptrset_destroy(st->ps);
    free(st);
}

/* An empty state: seeds zero, codebooks zero, empty map. */
static int cbstate_alloc(const cqr_table_t *t, cqr_cbstate_t **out)
{
    cqr_cbstate_t *st = calloc(1, sizeof *st);
    if (!st)
        return CQR_ENOMEM;
    st->seed_p = calloc(t->c, sizeof(uint64_t));
    st->seed_h = calloc(t->c, sizeof(uint64_t));
    st->cb = calloc((size_t)t->ncb * t->c, sizeof(cqr_rows_t));
    int rc = (!st->seed_p || !st->seed_h || !st->cb) ? CQR_ENOMEM : 0;
    for (uint32_t b = 0; rc == 0 && b < t->ncb * t->c; b++)
        rc = cqr_rows_init(&st->cb[b], t->k, t->w, t->cfg.optim.kind);
    if (rc == 0)
        rc = cqr_idmap_init(&st->ids, t->mvw, 0);
    if (rc) {
        cqr_cbstate_free(t, st);
        return rc;
    }
    *out = st;
    return 0;
}

int cqr_cbstate_clone(const cqr_table_t *t, const cqr_cbstate_t *src,
                      cqr_cbstate_t **out)
{
    cqr_cbstate_t *st = calloc(1, sizeof *st);
    if (!st)
        return CQR_ENOMEM;
    st->seed_p = malloc(t->c * sizeof(uint64_t));
    st->seed_h = malloc(t->c * sizeof(uint64_t));
    st->cb = calloc((size_t)t->ncb * t->c, sizeof(cqr_rows_t));
    int rc = (!st->seed_p || !st->seed_h || !st->cb) ? CQR_ENOMEM : 0;
    if (rc == 0) {
        memcpy(st->seed_p, src->seed_p, t->c * sizeof(uint64_t));
        memcpy(st->seed_h, src->seed_h, t->c * sizeof(uint64_t));
    }
    for (uint32_t b = 0; rc == 0 && b < t->ncb * t->c; b++)
        rc = cqr_rows_clone(&st->cb[b], &src->cb[b]);
    if (rc == 0)
        rc = cqr_idmap_init(&st->ids, t->mvw, 0);
    if (rc) {
        cqr_cbstate_free(t, st);
        return rc;
    }
    *out = st;
    return 0;
}

/* Fresh codebooks: seeds derived from the table seed, values uniform in
 * (-init_scale, init_scale) from a stream per codebook block. */
static int cbstate_create(cqr_table_t *t, cqr_cbstate_t **out)
{
    cqr_cbstate_t *st;
    int rc = cbstate_alloc(t, &st);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < t->c; i++) {
        st->seed_p[i] = cqr_derive_seed(t->cfg.seed, CQR_TAG_SEED_P, i);
        st->seed_h[i] = cqr_derive_seed(t->cfg.seed, CQR_TAG_SEED_H, i);
    }
    for (uint32_t b = 0; b < t->ncb * t->c; b++) {
        cqr_rng_t rng;
        cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, CQR_TAG_CB_INIT, b));
        cqr_rows_t *r = &st->cb[b];
        size_t nf = (size_t)r->n * r->w;
        for (size_t j = 0; j < nf; j++)
            r->param[j] = cqr_rng_sym(&rng, t->cfg.init_scale);
    }
    *out = st;
    return 0;
}

/* ---- Create / destroy -------------------------------------------------- */

int cqr_table_create(const cqr_table_config_t *cfg, cqr_table_t **out)
{
    if (!cfg || !out)
        return CQR_EINVAL;
    int rc = cqr_table_config_check(cfg, NULL, 0);
    if (rc)
        return rc;
    cqr_table_t *t = calloc(1, sizeof *t);
    if (!t)
        return CQR_ENOMEM;
    t->cfg = *cfg;
    t->c = cfg->chunks;
    t->w = cfg->dim / cfg->chunks;
    t->k = cfg->rows;
    t->ncb = cfg->kind == CQR_KIND_FULL ? 0 : cfg->kind == CQR_KIND_HASH ? 1 : 2;
    t->pw = t->k <= 256 ? 1 : t->k <= 65536 ? 2 : 4;
    t->mvw = t->c * t->pw;
    if (cfg->kind == CQR_KIND_CQR && cfg->evict_after_phases) {
        t->stamp_off = t->mvw;
        t->mvw += 4;
    }

    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* Writer preference: a phase commit must not starve behind a steady
     * stream of lookups. Nobody takes the lock recursively. */
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&t->lock, &attr);
    /* The same for the gate: an export must not starve behind pushes. */
    pthread_rwlock_init(&t->gate, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&t->plock, NULL);
    pthread_mutex_init(&t->vb_mu, NULL);
    t->vb = -1.0; /* unknown: the first push scans the initial values */
    static uint64_t uid_counter;
    t->uid = __atomic_add_fetch(&uid_counter, 1, __ATOMIC_RELAXED);
    t->wepoch = 1;

    if (cfg->admit_after > 1 &&
        (cfg->kind == CQR_KIND_FULL || cfg->kind == CQR_KIND_CQR))
        rc = cqr_sketch_create(cqr_derive_seed(cfg->seed, CQR_TAG_ADMIT, 0),
                               &t->sketch);
    if (rc) {
        cqr_table_destroy(t);
        return rc;
    }
    if (cfg->kind == CQR_KIND_FULL) {
        rc = cqr_idmap_init(&t->rowmap, sizeof(cqr_full_slot_t), 0);
        if (rc == 0 && t->sketch)
            rc = cqr_full_fallback_create(t);
    } else {
        rc = cbstate_create(t, &t->st);
        size_t nb = (size_t)t->ncb * t->c;
        t->cbpages = (t->k + CQR_CB_PAGE - 1) >> CQR_CB_PAGE_SHIFT;
        t->cbmark = calloc(nb * t->k, sizeof(uint32_t));
        t->cbpage = calloc(nb * t->cbpages, sizeof(uint32_t));
        if (rc == 0 && (!t->cbmark || !t->cbpage))
            rc = CQR_ENOMEM;
    }
    if (rc) {
        cqr_table_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void cqr_table_destroy(cqr_table_t *t)
{
    if (!t)
        return;
    assert(t->phase == NULL && "destroy a table's phase before the table");
    cqr_cbstate_free(t, t->st);
    cqr_sketch_free(t->sketch);
    for (size_t b = 0; b < t->nblocks; b++) {
        cqr_rows_free(&t->blocks[b]);
        free(t->fmark[b]);
        if (t->fstamp)
            free(t->fstamp[b]);
    }
    if (t->fallback)
        cqr_rows_free(t->fallback);
    free(t->fallback);
    free(t->fbmark);
    free(t->fstamp);
    free(t->ffree);
    free(t->blocks);
    free(t->fmark);
    free(t->fpage);
    free(t->cbmark);
    free(t->cbpage);
    free(t->ins_slot);
    free(t->cmp_new);
    free(t->ins_epoch);
    if (t->rowmap.slots)
        cqr_idmap_free(&t->rowmap);
    if (t->budget)
        cqr_budget_refund(t->budget, t->charged);
    pthread_rwlock_destroy(&t->gate);
    pthread_rwlock_destroy(&t->lock);
    pthread_mutex_destroy(&t->plock);
    pthread_mutex_destroy(&t->vb_mu);
    free(t);
}

const cqr_table_config_t *cqr_table_config(const cqr_table_t *t)
{
    return &t->cfg;
}

static int by_uid(const void *a, const void *b)
{
    const cqr_table_t *x = *(cqr_table_t *const *)a;
    const cqr_table_t *y = *(cqr_table_t *const *)b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

int cqr_tableset_init(cqr_tableset_t *s, const cqr_part_t *parts, size_t np)
{
    const size_t cap = sizeof s->inl / sizeof s->inl[0];
    s->t = np <= cap ? s->inl : malloc(np * sizeof *s->t);
    if (!s->t)
        return CQR_ENOMEM;
    for (size_t i = 0; i < np; i++)
        s->t[i] = parts[i].t;
    qsort(s->t, np, sizeof *s->t, by_uid);
    size_t n = 0;
    for (size_t i = 0; i < np; i++)
        if (n == 0 || s->t[n - 1] != s->t[i])
            s->t[n++] = s->t[i];
    s->n = n;
    return 0;
}

void cqr_tableset_free(cqr_tableset_t *s)
{
    if (s->t != s->inl)
        free(s->t);
    s->t = NULL;
    s->n = 0;
}

void cqr_tableset_lock(const cqr_tableset_t *s, int gate)
{
    for (size_t i = 0; i < s->n; i++)
        pthread_rwlock_rdlock(gate ? &s->t[i]->gate : &s->t[i]->lock);
}

void cqr_tableset_unlock(const cqr_tableset_t *s, int gate)
{
    for (size_t i = s->n; i-- > 0;)
        pthread_rwlock_unlock(gate ? &s->t[i]->gate : &s->t[i]->lock);
}

void cqr_table_optim(cqr_table_t *t, cqr_optim_config_t *out)
{
    pthread_rwlock_rdlock(&t->lock);
    *out = t->cfg.optim;
    pthread_rwlock_unlock(&t->lock);
}

int cqr_table_update_optim(cqr_table_t *t, const cqr_optim_config_t *next,
                           char *why, size_t whylen)
{
    if (!t || !next)
        return CQR_EINVAL;
    if (next->kind != t->cfg.optim.kind) {
        if (why && whylen)
            snprintf(why, whylen, "the optimizer is %s; its kind cannot "
                     "change", cqr_optim_name(t->cfg.optim.kind));
        return CQR_EINVAL;
    }
    cqr_table_config_t cfg = t->cfg; /* only optim is ever written */
    cfg.optim = *next;
    int rc = cqr_table_config_check(&cfg, why, whylen);
    if (rc)
        return rc;
    /* Pushes step rows with t->cfg.optim under the shared lock (so does
     * a phase's replay), exports copy it under the shared lock, the
     * digest under the exclusive one: the exclusive lock makes the
     * change one step between two pushes. */
    pthread_rwlock_wrlock(&t->lock);
    t->cfg.optim.lr = next->lr; /* not the kind, read without the lock */
    t->cfg.optim.beta1 = next->beta1;
    t->cfg.optim.beta2 = next->beta2;
    t->cfg.optim.eps = next->eps;
    t->cfg.optim.weight_decay = next->weight_decay;
    pthread_rwlock_unlock(&t->lock);
    return 0;
}

void cqr_table_set_par(cqr_table_t *t, struct cqr_par *par)
{
    t->par = par;
}

/* ---- Cluster phases: start, commit, end -------------------------------- */

int cqr_table_phase_start(cqr_table_t *t, cqr_phase_t *ph, cqr_pushlog_t *log,
                          cqr_cbstate_t **snap, uint32_t *phase_no)
{
    pthread_rwlock_wrlock(&t->lock);
    int rc = t->phase || t->compacting ? CQR_EBUSY
                                        : cqr_cbstate_clone(t, t->st, snap);
    if (rc == 0) {
        *phase_no = t->phases_done + 1;
        t->phase = ph;
        t->log = log;
        t->examples_prev_phase = t->examples_at_phase;
        t->examples_at_phase =
            __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED);
    }
    pthread_rwlock_unlock(&t->lock);
    return rc;
}

/* Whether phase phase_no evicts the ID of map value v. */
static int evicted_by(const cqr_table_t *t, const void *v, uint32_t phase_no)
{
    return t->stamp_off &&
           (uint64_t)cqr_stamp_get(t, v) + t->cfg.evict_after_phases <
               phase_no;
}

int cqr_table_known_pointers(cqr_table_t *t, uint32_t phase_no,
                             uint64_t **ids, uint32_t **ptrs,
                             uint32_t **stamps, size_t *n)
{
    const uint32_t c = t->c;
    pthread_rwlock_rdlock(&t->lock);
    size_t count = cqr_state_known(t->st);
    uint64_t *id_out = malloc((count ? count : 1) * sizeof *id_out);
    uint32_t *p_out = malloc((count ? count : 1) * c * sizeof *p_out);
    uint32_t *s_out = NULL;
    if (stamps && t->stamp_off)
        s_out = malloc((count ? count : 1) * sizeof *s_out);
    size_t j = 0;
    int rc = 0;
    if (id_out && p_out && (s_out || !stamps || !t->stamp_off)) {
        cqr_known_iter_t it;
        cqr_known_iter_init(&it, t, t->st);
        uint64_t id;
        void *v;
        while (j < count && cqr_known_iter_next(&it, &id, p_out + j * c, &v)) {
            /* Static set: no stamps (tables that evict have none). */
            if (v && evicted_by(t, v, phase_no))
                continue;
            id_out[j] = id;
            if (s_out)
                s_out[j] = cqr_stamp_get(t, v);
            j++;
        }
        rc = it.rc;
        cqr_known_iter_free(&it);
    } else {
        rc = CQR_ENOMEM;
    }
    pthread_rwlock_unlock(&t->lock);
    if (rc) {
        free(s_out);
        free(id_out);
        free(p_out);
        return rc;
    }
    *ids = id_out;
    *ptrs = p_out;
    if (stamps)
        *stamps = s_out;
    *n = j;
    return 0;
}

/* After a structure was replaced wholesale: the next export writes every
 * codebook row and every slot of the known-ID map (exports exclude this
 * through the lock). Exclusive lock held. */
static void mark_all_changed(cqr_table_t *t)
{
    t->cb_base_epoch = t->map_base_epoch = t->ps_base_epoch =
        __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    t->ins_n = 0;
}

int cqr_table_phase_commit(cqr_table_t *t, cqr_cbstate_t *next,
                           cqr_phase_finish_cb finish, void *ud,
                           double t_begin, cqr_phase_result_t *res)
{
    pthread_rwlock_wrlock(&t->lock);
    double t0 = cqr_now();
    int rc = finish(ud);
    if (rc) {
        pthread_rwlock_unlock(&t->lock);
        return rc;
    }
    cqr_cbstate_t *old = t->st;
    /* The new map holds every known ID but those the phase evicted (the
     * run left them out; a push during the phase brought some back). */
    if (t->stamp_off && old->ids.count > next->ids.count) {
        res->ids_evicted = old->ids.count - next->ids.count;
        t->n_evicted += res->ids_evicted;
    }
    if (next->ps)
        t->rebuilds++;
    t->st = next;
    t->phase = NULL;
    t->log = NULL;
    /* The new known-ID map was sized for the IDs it holds: charge (or
     * refund) the difference. */
    cqr_table_budget_sync(t);
    t->phases_done = res->phase_no;
    cqr_bound_forget(t);
    /* Every codebook row and pointer may have changed. */
    mark_all_changed(t);
    double t1 = cqr_now();
    res->seconds_commit = t1 - t0;
    res->seconds_total = t1 - t_begin;
    pthread_mutex_lock(&t->plock);
    t->last_inertia = res->inertia;
    t->last_phase_seconds = res->seconds_total;
    t->last_commit_seconds = res->seconds_commit;
    pthread_mutex_unlock(&t->plock);
    pthread_rwlock_unlock(&t->lock);
    /* No reader can hold the old state: they all ran under the lock we
     * just held exclusively. */
    cqr_cbstate_free(t, old);
    return 0;
}

void cqr_table_phase_end(cqr_table_t *t, const cqr_phase_t *ph)
{
    pthread_rwlock_wrlock(&t->lock);
    if (t->phase == ph) {
        t->phase = NULL;
        t->log = NULL;
    }
    pthread_rwlock_unlock(&t->lock);
}

/* ---- Stats, digest, schedule ------------------------------------------- */

void cqr_table_stats(cqr_table_t *t, cqr_table_stats_t *s)
{
    memset(s, 0, sizeof *s);
    pthread_rwlock_rdlock(&t->lock);
    if (t->cfg.kind == CQR_KIND_FULL) {
        s->known_ids = t->rowmap.count;
        s->index_bytes = cqr_idmap_bytes(&t->rowmap);
        for (size_t b = 0; b < t->nblocks; b++) {
            s->param_bytes += cqr_rows_param_bytes(&t->blocks[b]);
            s->optim_bytes += cqr_rows_state_bytes(&t->blocks[b]);
        }
        if (t->fallback) {
            s->param_bytes += cqr_rows_param_bytes(t->fallback);
            s->optim_bytes += cqr_rows_state_bytes(t->fallback);
        }
    } else {
        for (uint32_t b = 0; b < t->ncb * t->c; b++) {
            s->param_bytes += cqr_rows_param_bytes(&t->st->cb[b]);
            s->optim_bytes += cqr_rows_state_bytes(&t->st->cb[b]);
        }
        if (t->cfg.kind == CQR_KIND_CQR) {
            s->known_ids = cqr_state_known(t->st);
            s->index_bytes = cqr_idmap_bytes(&t->st->ids);
            if (t->st->ps) {
                s->static_ids = t->st->ps->pm.n;
                s->index_bytes += cqr_ptrset_bytes(t->st->ps);
            }
            s->rebuilds = t->rebuilds;
        }
    }
    s->phases_done = t->phases_done;
    s->phase_running = t->phase != NULL;
    s->ids_admitted = t->n_admitted;
    s->ids_evicted = t->n_evicted;
    s->sketch_bytes = t->sketch ? CQR_SKETCH_BYTES : 0;
    pthread_mutex_lock(&t->plock);
    s->last_inertia = t->last_inertia;
    s->last_phase_seconds = t->last_phase_seconds;
    s->last_commit_seconds = t->last_commit_seconds;
    pthread_mutex_unlock(&t->plock);
    pthread_rwlock_unlock(&t->lock);
    s->bytes_per_known_id = s->known_ids ? (double)s->index_bytes / s->known_ids
                                         : 0.0;
    s->lookups = __atomic_load_n(&t->n_lookups, __ATOMIC_RELAXED);
    s->pushes = __atomic_load_n(&t->n_pushes, __ATOMIC_RELAXED);
    s->examples_pushed = __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED);
}

int cqr_table_cluster_due(cqr_table_t *t)
{
    const cqr_table_config_t *c = &t->cfg;
    if (c->kind != CQR_KIND_CQR || c->schedule_every == 0)
        return 0;
    pthread_rwlock_rdlock(&t->lock);
    uint64_t ex = __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED);
    int due = t->phase == NULL &&
              (c->schedule_max_phases == 0 ||
               t->phases_done < c->schedule_max_phases) &&
              ex - t->examples_at_phase >= c->schedule_every;
    pthread_rwlock_unlock(&t->lock);
    return due;
}

static void digest_u64(XXH3_state_t *x, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    XXH3_64bits_update(x, b, sizeof b);
}

static void digest_f32(XXH3_state_t *x, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    digest_u64(x, u);
}

static void digest_rows(XXH3_state_t *x, const cqr_rows_t *r)
{
    digest_u64(x, r->n);
    digest_u64(x, r->w);
    XXH3_64bits_update(x, r->param, (size_t)r->n * r->w * sizeof(float));
    if (r->sw)
        XXH3_64bits_update(x, r->state, (size_t)r->n * r->sw * sizeof(float));
    if (r->step)
        XXH3_64bits_update(x, r->step, (size_t)r->n * sizeof(uint32_t));
}

/* Order-independent digest of a map: the sum of one hash per entry, so
 * two maps with the same contents digest alike whatever their slot
 * layout. entry_extra adds a full table's row to its ID's hash. */
static uint64_t digest_map(const cqr_table_t *t, const cqr_idmap_t *m)
{
    uint64_t sum = 0;
    size_t pos = 0;
    uint64_t id;
    void *v;
    XXH3_state_t *x = XXH3_createState();
    assert(x);
    while (cqr_idmap_next(m, &pos, &id, &v)) {
        XXH3_64bits_reset(x);
        digest_u64(x, id);
        if (t->cfg.kind == CQR_KIND_FULL) {
            uint32_t local;
            const cqr_rows_t *b =
                cqr_full_block(t, ((const cqr_full_slot_t *)v)->row, &local);
            XXH3_64bits_update(x, b->param + (size_t)local * b->w,
                               b->w * sizeof(float));
            if (b->sw)
                XXH3_64bits_update(x, b->state + (size_t)local * b->sw,
                                   b->sw * sizeof(float));
            if (b->step)
                digest_u64(x, b->step[local]);
            if (t->fstamp)
                digest_u64(x, t->fstamp[((const cqr_full_slot_t *)v)->row >>
                                        CQR_FULL_BLOCK_SHIFT][local]);
        } else {
            XXH3_64bits_update(x, v, m->vw);
        }
        sum += XXH3_64bits_digest(x);
    }
    XXH3_freeState(x);
    return sum;
}

/* digest_map's sum over the static set's IDs, which hash as they would
 * in the map (a compaction does not change a table's digest). Lock
 * held. */
static uint64_t digest_static(const cqr_table_t *t)
{
    const cqr_ptrset_t *ps = t->st->ps;
    if (!ps || ps->pm.n == 0)
        return 0;
    cqr_ptrset_reader_t rd;
    if (cqr_ptrset_reader_init(&rd, ps))
        return 0; /* out of memory: the digest cannot be computed */
    XXH3_state_t *x = XXH3_createState();
    assert(x);
    uint64_t sum = 0;
    uint8_t v[CQR_MAX_CHUNKS * 4];
    uint32_t p[CQR_MAX_CHUNKS];
    cqr_ptrset_item_t it;
    while (cqr_ptrset_reader_next(&rd, &it, p)) {
        for (uint32_t i = 0; i < t->c; i++)
            cqr_ptr_set(v, t->pw, i, p[i]);
        XXH3_64bits_reset(x);
        digest_u64(x, it.id);
        XXH3_64bits_update(x, v, t->st->ids.vw);
        sum += XXH3_64bits_digest(x);
    }
    /* A key file that cannot be read gives a digest no table has. */
    if (rd.err)
        sum ^= 0x9e3779b97f4a7c15ULL;
    XXH3_freeState(x);
    cqr_ptrset_reader_free(&rd);
    return sum;
}

int cqr_table_digest(cqr_table_t *t, uint64_t *out)
{
    if (!t || !out)
        return CQR_EINVAL;
    XXH3_state_t *x = XXH3_createState();
    if (!x)
        return CQR_ENOMEM;
    XXH3_64bits_reset(x);
    const cqr_table_config_t *c = &t->cfg;
    digest_u64(x, c->kind);
    digest_u64(x, c->dim);
    digest_u64(x, c->chunks);
    digest_u64(x, c->rows);
    digest_u64(x, c->seed);
    digest_f32(x, c->init_scale);
    digest_u64(x, c->optim.kind);
    digest_f32(x, c->optim.lr);
    digest_f32(x, c->optim.beta1);
    digest_f32(x, c->optim.beta2);
    digest_f32(x, c->optim.eps);
    digest_f32(x, c->optim.weight_decay);
    digest_u64(x, c->cluster_iters);
    digest_u64(x, c->cluster_sample);
    digest_f32(x, c->cluster_tol);
    digest_u64(x, c->reset_optimizer);
    digest_u64(x, c->schedule_every);
    digest_u64(x, c->schedule_max_phases);
    /* Tables without admission or eviction digest as they did before. */
    if (c->admit_after > 1 || c->evict_after_phases || c->max_ids ||
        c->ttl_seconds) {
        digest_u64(x, c->admit_after);
        digest_u64(x, c->evict_after_phases);
        digest_u64(x, c->max_ids);
        digest_u64(x, c->ttl_seconds);
    }
    if (c->compact)
        digest_u64(x, c->compact);

    pthread_rwlock_wrlock(&t->lock);
    digest_u64(x, t->phases_done);
    if (t->sketch)
        XXH3_64bits_update(x, t->sketch->c, CQR_SKETCH_BYTES);
    if (c->kind == CQR_KIND_FULL) {
        digest_u64(x, t->rowmap.count);
        digest_u64(x, digest_map(t, &t->rowmap));
        if (t->fallback)
            digest_rows(x, t->fallback);
    } else {
        for (uint32_t i = 0; i < t->c; i++) {
            digest_u64(x, t->st->seed_p[i]);
            digest_u64(x, t->st->seed_h[i]);
        }
        for (uint32_t b = 0; b < t->ncb * t->c; b++)
            digest_rows(x, &t->st->cb[b]);
        digest_u64(x, cqr_state_known(t->st));
        digest_u64(x, digest_map(t, &t->st->ids) + digest_static(t));
    }
    pthread_rwlock_unlock(&t->lock);
    *out = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return 0;
}
