/* table.c -- embedding tables: creation, lookup, push, digest, stats. */
#include "table.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "err.h"
#include "par.h"
#include "hash.h"
#include "table_impl.h"

/* Tags of derived seeds: each use of the table seed gets its own stream. */
enum {
    TAG_SEED_P = 1,
    TAG_SEED_H = 2,
    TAG_CB_INIT = 3,
    TAG_FULL_INIT = 4
};

double cqr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- Per-thread scratch buffers ---------------------------------------
 * Lookups and pushes need work space proportional to the batch. Keeping
 * it per thread avoids a malloc (often an mmap) per call. */

#define SCRATCH_SLOTS 8
#define SCRATCH_DENSE 6 /* the dense aggregation index: see dense_index */
#define SCRATCH_PTRS 7  /* a codebook push's row pointers per ID */

typedef struct scratch {
    void *p[SCRATCH_SLOTS];
    size_t cap[SCRATCH_SLOTS];
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_destroy(void *v)
{
    scratch_t *s = v;
    for (int i = 0; i < SCRATCH_SLOTS; i++)
        free(s->p[i]);
    free(s);
}

static void scratch_key_init(void)
{
    int rc = pthread_key_create(&scratch_key, scratch_destroy);
    assert(rc == 0);
    (void)rc;
}

static scratch_t *scratch_get(void)
{
    pthread_once(&scratch_once, scratch_key_init);
    scratch_t *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    return s;
}

/* This thread's dense aggregation index with at least n entries, every
 * entry UINT32_MAX: its users put back UINT32_MAX in every entry they set
 * before they return. NULL when out of memory. */
static uint32_t *dense_index(size_t n)
{
    scratch_t *s = scratch_get();
    if (!s)
        return NULL;
    size_t bytes = n * sizeof(uint32_t);
    if (s->cap[SCRATCH_DENSE] < bytes) {
        void *p = malloc(bytes);
        if (!p)
            return NULL;
        memset(p, 0xff, bytes);
        free(s->p[SCRATCH_DENSE]);
        s->p[SCRATCH_DENSE] = p;
        s->cap[SCRATCH_DENSE] = bytes;
    }
    return s->p[SCRATCH_DENSE];
}

/* Returns at least `bytes` of this thread's buffer `slot` (contents
 * undefined), or NULL when out of memory. */
static void *scratch(int slot, size_t bytes)
{
    assert(slot != SCRATCH_DENSE);
    scratch_t *s = scratch_get();
    if (!s)
        return NULL;
    if (s->cap[slot] < bytes) {
        size_t want = bytes + bytes / 2 + 64;
        void *p = malloc(want);
        if (!p)
            return NULL;
        free(s->p[slot]);
        s->p[slot] = p;
        s->cap[slot] = want;
    }
    return s->p[slot];
}

/* ---- Config ----------------------------------------------------------- */

static const char *const kind_names[] = {"full", "hash", "ce", "cqr"};
static const char *const optim_names[] = {"sgd", "adagrad", "adam"};

const char *cqr_kind_name(cqr_kind_t kind)
{
    return (unsigned)kind < 4 ? kind_names[kind] : "unknown";
}

int cqr_kind_parse(const char *name, cqr_kind_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (cqr_kind_t)i;
            return 0;
        }
    }
    return CQR_EINVAL;
}

const char *cqr_optim_name(cqr_optim_kind_t kind)
{
    return (unsigned)kind < 3 ? optim_names[kind] : "unknown";
}

int cqr_optim_parse(const char *name, cqr_optim_kind_t *out)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, optim_names[i]) == 0) {
            *out = (cqr_optim_kind_t)i;
            return 0;
        }
    }
    return CQR_EINVAL;
}

void cqr_table_config_default(cqr_table_config_t *cfg, cqr_kind_t kind,
                              uint32_t dim)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = kind;
    cfg->dim = dim;
    cfg->chunks = 1;
    if (kind == CQR_KIND_CE || kind == CQR_KIND_CQR) {
        cfg->chunks = 4;
        while (cfg->chunks > 1 && dim % cfg->chunks)
            cfg->chunks--;
    }
    cfg->rows = kind == CQR_KIND_FULL ? 0 : 1024;
    cfg->init_scale = dim ? 1.0f / sqrtf((float)dim) : 0.0f;
    cfg->optim.kind = CQR_OPT_ADAM;
    cfg->optim.lr = 1e-3f;
    cfg->optim.beta1 = 0.9f;
    cfg->optim.beta2 = 0.999f;
    cfg->optim.eps = 1e-8f;
    cfg->optim.weight_decay = 0.0f;
    cfg->cluster_iters = 25;
    cfg->cluster_sample = 200;
    cfg->cluster_threads = 1;
}

#define WHY(...)                                                             \
    do {                                                                     \
        if (why)                                                             \
            snprintf(why, whylen, __VA_ARGS__);                              \
        return CQR_EINVAL;                                                   \
    } while (0)

int cqr_table_config_check(const cqr_table_config_t *cfg, char *why,
                           size_t whylen)
{
    if ((unsigned)cfg->kind > CQR_KIND_CQR)
        WHY("unknown table kind %d", (int)cfg->kind);
    if (cfg->dim < 1 || cfg->dim > CQR_MAX_DIM)
        WHY("dim %u out of range 1..%u", cfg->dim, CQR_MAX_DIM);
    int chunked = cfg->kind == CQR_KIND_CE || cfg->kind == CQR_KIND_CQR;
    if (chunked) {
        if (cfg->chunks < 1 || cfg->chunks > CQR_MAX_CHUNKS)
            WHY("chunks %u out of range 1..%u", cfg->chunks, CQR_MAX_CHUNKS);
        if (cfg->dim % cfg->chunks)
            WHY("dim %u is not divisible by chunks %u", cfg->dim, cfg->chunks);
    } else if (cfg->chunks != 1) {
        WHY("chunks must be 1 for kind %s", cqr_kind_name(cfg->kind));
    }
    if (cfg->kind == CQR_KIND_FULL) {
        if (cfg->rows != 0)
            WHY("rows must be 0 for kind full");
    } else if (cfg->rows < 1 || cfg->rows > CQR_MAX_ROWS) {
        WHY("rows %u out of range 1..%u", cfg->rows, CQR_MAX_ROWS);
    }
    if (!(cfg->init_scale >= 0.0f && cfg->init_scale <= 1e3f))
        WHY("init_scale must be in [0, 1000]");
    const cqr_optim_config_t *o = &cfg->optim;
    if ((unsigned)o->kind > CQR_OPT_ADAM)
        WHY("unknown optimizer %d", (int)o->kind);
    if (!(o->lr > 0.0f && o->lr <= 1e6f))
        WHY("learning rate must be in (0, 1e6]");
    if (!(o->weight_decay >= 0.0f && o->weight_decay * o->lr < 1.0f))
        WHY("weight_decay must be >= 0 and lr * weight_decay < 1");
    if (o->kind == CQR_OPT_ADAM &&
        !(o->beta1 >= 0.0f && o->beta1 < 1.0f && o->beta2 >= 0.0f &&
          o->beta2 < 1.0f))
        WHY("Adam betas must be in [0, 1)");
    if (o->kind != CQR_OPT_SGD && !(o->eps > 0.0f && o->eps < 1.0f))
        WHY("eps must be in (0, 1)");
    if (cfg->cluster_iters < 1 || cfg->cluster_iters > 10000)
        WHY("cluster iterations %u out of range 1..10000", cfg->cluster_iters);
    if (cfg->cluster_sample < 1 || cfg->cluster_sample > 100000)
        WHY("cluster sample per centroid %u out of range 1..100000",
            cfg->cluster_sample);
    if (cfg->cluster_threads < 1 || cfg->cluster_threads > 256)
        WHY("cluster threads %u out of range 1..256", cfg->cluster_threads);
    if (cfg->reset_optimizer > 1)
        WHY("reset_optimizer must be 0 or 1");
    return 0;
}

uint64_t cqr_table_config_bytes(const cqr_table_config_t *cfg)
{
    if (cfg->kind == CQR_KIND_FULL)
        return 0;
    uint64_t ncb = cfg->kind == CQR_KIND_HASH ? 1 : 2;
    uint64_t c = cfg->chunks ? cfg->chunks : 1;
    uint64_t w = cfg->dim / c;
    uint64_t per_row = w * 4 + 4 +
                       (uint64_t)cqr_optim_state_floats(cfg->optim.kind,
                                                        (uint32_t)w) * 4 +
                       (cfg->optim.kind == CQR_OPT_ADAM ? 4 : 0);
    return ncb * c * cfg->rows * per_row;
}

/* ---- States of the codebook kinds ------------------------------------- */

uint32_t cqr_hash_p(const cqr_table_t *t, const cqr_cbstate_t *st,
                    uint64_t id, uint32_t i)
{
    return cqr_fastrange(cqr_hash_id(id, st->seed_p[i]), t->k);
}

uint32_t cqr_hash_h(const cqr_table_t *t, const cqr_cbstate_t *st,
                    uint64_t id, uint32_t i)
{
    return cqr_fastrange(cqr_hash_id(id, st->seed_h[i]), t->k);
}

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
    free(st);
}

int cqr_cbstate_alloc(const cqr_table_t *t, cqr_cbstate_t **out)
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
        rc = cqr_idmap_init(&st->ids, t->c * t->pw, 0);
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
        rc = cqr_idmap_init(&st->ids, t->c * t->pw, 0);
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
    int rc = cqr_cbstate_alloc(t, &st);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < t->c; i++) {
        st->seed_p[i] = cqr_derive_seed(t->cfg.seed, TAG_SEED_P, i);
        st->seed_h[i] = cqr_derive_seed(t->cfg.seed, TAG_SEED_H, i);
    }
    for (uint32_t b = 0; b < t->ncb * t->c; b++) {
        cqr_rng_t rng;
        cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, TAG_CB_INIT, b));
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
    static uint64_t uid_counter;
    t->uid = __atomic_add_fetch(&uid_counter, 1, __ATOMIC_RELAXED);
    t->wepoch = 1;

    if (cfg->kind == CQR_KIND_FULL) {
        rc = cqr_idmap_init(&t->rowmap, sizeof(uint32_t), 0);
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

static void log_free(cqr_logent_t *e)
{
    while (e) {
        cqr_logent_t *next = e->next;
        free(e);
        e = next;
    }
}

void cqr_table_destroy(cqr_table_t *t)
{
    if (!t)
        return;
    assert(t->phase == NULL && "destroy a table's phase before the table");
    cqr_cbstate_free(t, t->st);
    for (size_t b = 0; b < t->nblocks; b++) {
        cqr_rows_free(&t->blocks[b]);
        free(t->fmark[b]);
    }
    free(t->blocks);
    free(t->fmark);
    free(t->fpage);
    free(t->cbmark);
    free(t->cbpage);
    free(t->ins_slot);
    free(t->ins_epoch);
    if (t->rowmap.keys)
        cqr_idmap_free(&t->rowmap);
    if (t->budget)
        cqr_budget_refund(t->budget, t->charged);
    log_free(t->log_head);
    pthread_rwlock_destroy(&t->gate);
    pthread_rwlock_destroy(&t->lock);
    pthread_mutex_destroy(&t->plock);
    free(t);
}

const cqr_table_config_t *cqr_table_config(const cqr_table_t *t)
{
    return &t->cfg;
}

/* ---- Memory budget of growth ------------------------------------------- */

/* Bytes of one full row block: parameters, optimizer state, Adam step,
 * seqlock counter and change mark per row (rows.c, cqr_full_add_block). */
static uint64_t full_block_bytes(const cqr_table_t *t)
{
    uint64_t w = t->cfg.dim;
    uint64_t per_row = w * 4 +
                       (uint64_t)cqr_optim_state_floats(t->cfg.optim.kind,
                                                        t->cfg.dim) * 4 +
                       (t->cfg.optim.kind == CQR_OPT_ADAM ? 4 : 0) + 4 + 4;
    return per_row * CQR_FULL_BLOCK;
}

/* What the table grew by since creation. Lock held (either mode). */
static uint64_t grown_locked(const cqr_table_t *t)
{
    if (t->cfg.kind == CQR_KIND_FULL)
        return (uint64_t)t->nblocks * full_block_bytes(t) +
               cqr_idmap_bytes(&t->rowmap);
    if (t->cfg.kind == CQR_KIND_CQR && t->st)
        return cqr_idmap_bytes(&t->st->ids);
    return 0;
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

void cqr_table_set_par(cqr_table_t *t, struct cqr_par *par)
{
    t->par = par;
}

uint64_t cqr_table_grown_bytes(cqr_table_t *t)
{
    pthread_rwlock_rdlock(&t->lock);
    uint64_t n = grown_locked(t);
    pthread_rwlock_unlock(&t->lock);
    return n;
}

/* ---- Full tables ------------------------------------------------------- */

static void full_init_row(const cqr_table_t *t, uint64_t id, float *out)
{
    cqr_rng_t rng;
    cqr_rng_seed(&rng, cqr_derive_seed(t->cfg.seed, TAG_FULL_INIT, id));
    for (uint32_t j = 0; j < t->cfg.dim; j++)
        out[j] = cqr_rng_sym(&rng, t->cfg.init_scale);
}

static inline cqr_rows_t *full_block(const cqr_table_t *t, uint32_t row,
                                     uint32_t *local)
{
    *local = row & (CQR_FULL_BLOCK - 1);
    return &t->blocks[row >> CQR_FULL_BLOCK_SHIFT];
}

int cqr_full_add_block(cqr_table_t *t)
{
    if (t->nblocks == t->blocks_cap) {
        size_t cap = t->blocks_cap ? 2 * t->blocks_cap : 16;
        cqr_rows_t *nb = realloc(t->blocks, cap * sizeof *nb);
        if (!nb)
            return CQR_ENOMEM;
        t->blocks = nb;
        uint32_t **nm = realloc(t->fmark, cap * sizeof *nm);
        if (!nm)
            return CQR_ENOMEM;
        t->fmark = nm;
        uint32_t *np = realloc(t->fpage, cap * sizeof *np);
        if (!np)
            return CQR_ENOMEM;
        t->fpage = np;
        t->blocks_cap = cap;
    }
    size_t b = t->nblocks;
    t->fmark[b] = calloc(CQR_FULL_BLOCK, sizeof(uint32_t));
    if (!t->fmark[b])
        return CQR_ENOMEM;
    int rc = cqr_rows_init(&t->blocks[b], CQR_FULL_BLOCK, t->cfg.dim,
                           t->cfg.optim.kind);
    if (rc) {
        free(t->fmark[b]);
        return rc;
    }
    t->fpage[b] = 0;
    t->nblocks++;
    return 0;
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
    if (m->cap != old_cap || v == m->zero_val) {
        /* The ID 0 lives outside the slots, in the exported meta. */
        if (m->cap != old_cap) {
            t->map_base_epoch = e;
            t->ins_n = 0;
        }
        return;
    }
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
            t->map_base_epoch = e;
            t->ins_n = 0;
            return;
        }
        t->ins_cap = cap;
    }
    t->ins_slot[t->ins_n] = (uint64_t)((const uint8_t *)v - m->vals) / m->vw;
    t->ins_epoch[t->ins_n] = e;
    t->ins_n++;
}

/* Gives `id` a row initialised to its deterministic initial value.
 * Exclusive lock held. */
static int full_new_row(cqr_table_t *t, uint64_t id)
{
    if (t->nrows >= UINT32_MAX)
        return CQR_ELIMIT;
    uint32_t row = (uint32_t)t->nrows;
    size_t b = row >> CQR_FULL_BLOCK_SHIFT;
    if (b == t->nblocks) {
        uint64_t bytes = full_block_bytes(t);
        int rc = grow_charge(t, bytes);
        if (rc)
            return rc;
        rc = cqr_full_add_block(t);
        if (rc) {
            grow_refund(t, bytes);
            return rc;
        }
    }
    void *v;
    int inserted;
    size_t old_cap = t->rowmap.cap;
    /* The ID 0 lives beside the map's arrays: it never grows them. */
    uint64_t mgrow = id ? cqr_idmap_grow_bytes(&t->rowmap) : 0;
    int rc = grow_charge(t, mgrow);
    if (rc)
        return rc;
    rc = cqr_idmap_insert(&t->rowmap, id, &v, &inserted);
    if (rc) {
        grow_refund(t, mgrow);
        return rc;
    }
    assert(inserted);
    memcpy(v, &row, sizeof row);
    track_insert(t, &t->rowmap, old_cap, v);
    uint32_t local;
    cqr_rows_t *blk = full_block(t, row, &local);
    float *p = blk->param + (size_t)local * blk->w;
    full_init_row(t, id, p);
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    cqr_mark(&t->fmark[b][local], e);
    cqr_mark(&t->fpage[b], e);
    t->nrows++;
    return 0;
}

static inline int full_find(const cqr_table_t *t, uint64_t id, uint32_t *row)
{
    const void *v = cqr_idmap_find(&t->rowmap, id);
    if (!v)
        return 0;
    memcpy(row, v, sizeof *row);
    return 1;
}

/* ---- Lookup ------------------------------------------------------------ */

/* Pointers of `id` in state st: learned (stored) for known cqr IDs,
 * hashed otherwise. */
/* Returns 0 for a cqr ID the table does not know (its learned pointers
 * are then the hashed ones), 1 otherwise. */
static inline int cb_pointers(const cqr_table_t *t, const cqr_cbstate_t *st,
                              uint64_t id, uint32_t *p, uint32_t *h)
{
    const uint8_t *v = NULL;
    if (t->cfg.kind == CQR_KIND_CQR)
        v = cqr_idmap_find(&st->ids, id);
    for (uint32_t i = 0; i < t->c; i++) {
        if (t->ncb == 2)
            p[i] = v ? cqr_ptr_get(v, t->pw, i) : cqr_hash_p(t, st, id, i);
        h[i] = cqr_hash_h(t, st, id, i);
    }
    return v != NULL || t->cfg.kind != CQR_KIND_CQR;
}

/* IDs per group of the lookup pipeline. The known-ID map and the rows of a
 * full table are far larger than the caches: every probe and row is a miss
 * to memory. Requesting a whole group's lines before using the first one
 * overlaps those misses (about 4x faster gathers at 1e6 IDs). */
#define LOOKUP_GROUP 16

/* Full tables: a three-stage pipeline over groups of LOOKUP_GROUP IDs.
 * While group g's rows are copied, group g+1's map values are read and
 * its rows requested, and group g+2's map slots requested: every miss to
 * memory is in flight a whole group before it is needed. */
static void full_lookup(const cqr_table_t *t, const uint64_t *ids, size_t n,
                        float *out)
{
    const uint32_t dim = t->cfg.dim;
    int64_t rows[2][LOOKUP_GROUP];
    const size_t ngroups = (n + LOOKUP_GROUP - 1) / LOOKUP_GROUP;
    for (size_t k = 0; k < 2 * LOOKUP_GROUP && k < n; k++)
        cqr_idmap_prefetch(&t->rowmap, ids[k]);
    for (size_t g = 0; g <= ngroups; g++) {
        /* Stage 2 for group g: find rows, request them. */
        if (g < ngroups) {
            size_t base = g * LOOKUP_GROUP;
            size_t m = n - base < LOOKUP_GROUP ? n - base : LOOKUP_GROUP;
            int64_t *r = rows[g & 1];
            for (size_t j = 0; j < m; j++) {
                if (base + j + 2 * LOOKUP_GROUP < n)
                    cqr_idmap_prefetch(&t->rowmap,
                                       ids[base + j + 2 * LOOKUP_GROUP]);
                uint32_t row, local = 0;
                r[j] = -1;
                if (full_find(t, ids[base + j], &row)) {
                    r[j] = row;
                    cqr_rows_prefetch(full_block(t, row, &local), local);
                }
            }
        }
        /* Stage 3 for group g-1: copy its rows. */
        if (g > 0) {
            size_t base = (g - 1) * LOOKUP_GROUP;
            size_t m = n - base < LOOKUP_GROUP ? n - base : LOOKUP_GROUP;
            const int64_t *r = rows[(g - 1) & 1];
            for (size_t j = 0; j < m; j++) {
                float *o = out + (base + j) * dim;
                if (r[j] >= 0) {
                    uint32_t local;
                    const cqr_rows_t *blk =
                        full_block(t, (uint32_t)r[j], &local);
                    cqr_rows_read(blk, local, o);
                } else
                    full_init_row(t, ids[base + j], o);
            }
        }
    }
}

static void lookup_locked(cqr_table_t *t, const uint64_t *ids, size_t n,
                          float *out)
{
    if (t->cfg.kind == CQR_KIND_FULL) {
        full_lookup(t, ids, n, out);
        return;
    }
    const uint32_t dim = t->cfg.dim;
    const cqr_cbstate_t *st = t->st;
    const int cqr = t->cfg.kind == CQR_KIND_CQR;
    uint32_t p[CQR_MAX_CHUNKS], h[CQR_MAX_CHUNKS];
    /* The codebooks are small and stay cached; the map is not: keep its
     * probes one group ahead. */
    for (size_t j = 0; cqr && j < n && j < LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&st->ids, ids[j]);
    for (size_t j = 0; j < n; j++) {
        if (cqr && j + LOOKUP_GROUP < n)
            cqr_idmap_prefetch(&st->ids, ids[j + LOOKUP_GROUP]);
        float *o = out + j * dim;
        cb_pointers(t, st, ids[j], p, h);
        for (uint32_t i = 0; i < t->c; i++) {
            float *oc = o + (size_t)i * t->w;
            if (t->ncb == 2)
                cqr_rows_read_sum(&st->cb[i], p[i], &st->cb[t->c + i], h[i],
                                  oc);
            else
                cqr_rows_read(&st->cb[i], h[i], oc);
        }
    }
}

/* Splitting work over helpers: below PAR_MIN IDs a call runs alone;
 * above, lookups go in parts of about PAR_PART IDs (more parts than
 * threads, so that a late helper still finds work). */
#define PAR_MIN 512
#define PAR_PART 256

typedef struct lookup_job {
    cqr_table_t *t;
    const uint64_t *ids;
    float *out;
    size_t n;
    unsigned parts;
} lookup_job_t;

static void part_range(size_t n, unsigned parts, unsigned i, size_t *b,
                       size_t *e)
{
    *b = n * i / parts;
    *e = n * (i + 1) / parts;
}

/* Parts of about PAR_PART for a split of n items of t's call by ranges,
 * or 0 when the call runs alone (no helpers, or fewer than PAR_MIN). */
static unsigned range_parts(const cqr_table_t *t, size_t n)
{
    if (!cqr_par_helpers(t->par) || n < PAR_MIN)
        return 0;
    return (unsigned)((n + PAR_PART - 1) / PAR_PART);
}

static void lookup_part(void *arg, unsigned i)
{
    lookup_job_t *j = arg;
    size_t b, e;
    part_range(j->n, j->parts, i, &b, &e);
    lookup_locked(j->t, j->ids + b, e - b,
                  j->out + b * (size_t)j->t->cfg.dim);
}

int cqr_table_lookup(cqr_table_t *t, const uint64_t *ids, size_t n,
                     float *out)
{
    if (!t || (n && (!ids || !out)))
        return CQR_EINVAL;
    pthread_rwlock_rdlock(&t->lock);
    unsigned parts = range_parts(t, n);
    if (parts) {
        lookup_job_t j = {t, ids, out, n, parts};
        cqr_par_run(t->par, j.parts, lookup_part, &j);
    } else
        lookup_locked(t, ids, n, out);
    pthread_rwlock_unlock(&t->lock);
    __atomic_fetch_add(&t->n_lookups, n, __ATOMIC_RELAXED);
    return 0;
}

/* ---- Push -------------------------------------------------------------- */

/* Sums gradients by row key in first-seen order (deterministic). Keys
 * below `dense` (codebook pushes: codebook x k + row, a few thousand to
 * a few hundred thousand keys) find their sum through a dense index, the
 * others through a small hash table. */
typedef struct agg {
    uint64_t *hkeys; /* hash slots: key, or UINT64_MAX when empty */
    uint32_t *hidx;  /* slot -> unique index */
    size_t mask;     /* slots - 1 (a power of two) */
    uint32_t *didx;  /* dense: key -> unique index, UINT32_MAX if none */
    uint64_t *ukeys; /* unique keys in first-seen order */
    float *acc;      /* nu x w summed gradients */
    size_t nu;       /* unique keys so far */
    uint32_t w;      /* floats per row */
} agg_t;

/* Keys up to this many use the dense index (4 MiB of it per thread). */
#define AGG_DENSE_MAX ((size_t)1 << 20)

/* Sets up a for at most maxent additions; keys < dense_keys (if not 0)
 * go through the dense index. */
static int agg_init(agg_t *a, size_t maxent, uint32_t w, size_t dense_keys)
{
    a->didx = NULL;
    a->hkeys = NULL;
    a->hidx = NULL;
    a->mask = 0;
    if (dense_keys > 0 && dense_keys <= AGG_DENSE_MAX) {
        a->didx = dense_index(dense_keys);
        if (!a->didx)
            return CQR_ENOMEM;
    } else {
        size_t slots = 16;
        while (slots < 2 * maxent)
            slots <<= 1;
        a->hkeys = scratch(0, slots * sizeof(uint64_t));
        a->hidx = scratch(1, slots * sizeof(uint32_t));
        if (!a->hkeys || !a->hidx)
            return CQR_ENOMEM;
        memset(a->hkeys, 0xff, slots * sizeof(uint64_t));
        a->mask = slots - 1;
    }
    a->ukeys = scratch(2, maxent * sizeof(uint64_t));
    a->acc = scratch(3, maxent * (size_t)w * sizeof(float));
    if (!a->ukeys || !a->acc)
        return CQR_ENOMEM;
    a->nu = 0;
    a->w = w;
    return 0;
}

/* Puts the dense index back to all UINT32_MAX (k: rows per codebook, as
 * in cb_add). Must follow every dense use of agg_init that added keys. */
static void agg_done(agg_t *a, uint32_t k)
{
    if (!a->didx)
        return;
    for (size_t u = 0; u < a->nu; u++)
        a->didx[(a->ukeys[u] >> 32) * k + (uint32_t)a->ukeys[u]] =
            UINT32_MAX;
}

static inline void acc_add(float *acc, const float *g, uint32_t w)
{
    uint32_t j = 0;
    for (; j + 4 <= w; j += 4)
        cqr_f4_store(acc + j, cqr_f4_load(acc + j) + cqr_f4_load(g + j));
    for (; j < w; j++)
        acc[j] += g[j];
}

static inline void agg_new(agg_t *a, uint64_t key, const float *g)
{
    a->ukeys[a->nu] = key;
    memcpy(a->acc + a->nu * a->w, g, a->w * sizeof(float));
    a->nu++;
}

/* Dense: `pos` is the key's dense position. */
static inline void agg_add_dense(agg_t *a, size_t pos, uint64_t key,
                                 const float *g)
{
    uint32_t u = a->didx[pos];
    if (u != UINT32_MAX) {
        acc_add(a->acc + (size_t)u * a->w, g, a->w);
        return;
    }
    a->didx[pos] = (uint32_t)a->nu;
    agg_new(a, key, g);
}

static void agg_add(agg_t *a, uint64_t key, const float *g)
{
    size_t s = (size_t)cqr_mix64(key) & a->mask;
    while (a->hkeys[s] != UINT64_MAX && a->hkeys[s] != key)
        s = (s + 1) & a->mask;
    if (a->hkeys[s] == key) {
        acc_add(a->acc + (size_t)a->hidx[s] * a->w, g, a->w);
        return;
    }
    a->hkeys[s] = key;
    a->hidx[s] = (uint32_t)a->nu;
    agg_new(a, key, g);
}

/* A codebook push's key (codebook index, row) and its dense position. */
static inline void cb_add(agg_t *a, uint32_t k, uint32_t blk, uint32_t row,
                          const float *g)
{
    uint64_t key = (uint64_t)blk << 32 | row;
    if (a->didx)
        agg_add_dense(a, (size_t)blk * k + row, key, g);
    else
        agg_add(a, key, g);
}

/* Keys of a codebook push: every (codebook, row). */
static inline size_t cb_dense_keys(const cqr_table_t *t)
{
    return (size_t)t->ncb * t->c * t->k;
}

static inline int cb_prefetch(const cqr_table_t *t)
{
    return t->cfg.kind == CQR_KIND_CQR;
}

/* A codebook push runs in two passes, each split over the helpers when
 * there are any: resolve (by ID ranges) finds every ID's row in each
 * codebook, ptrs[j * nb + blk] for the nb = ncb x c codebooks (learned
 * pointers first, then hashed ones); apply (by chunks) sums the
 * gradients per row and steps the rows. The map is probed once per ID
 * whatever the number of parts. */
static size_t cb_resolve_range(const cqr_table_t *t, const cqr_cbstate_t *st,
                               const uint64_t *ids, size_t b, size_t e,
                               uint32_t *ptrs)
{
    const uint32_t nb = t->ncb * t->c;
    uint32_t p[CQR_MAX_CHUNKS], h[CQR_MAX_CHUNKS];
    size_t unknown = 0;
    for (size_t j = b; cb_prefetch(t) && j < e && j < b + LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&st->ids, ids[j]);
    for (size_t j = b; j < e; j++) {
        if (cb_prefetch(t) && j + LOOKUP_GROUP < e)
            cqr_idmap_prefetch(&st->ids, ids[j + LOOKUP_GROUP]);
        unknown += !cb_pointers(t, st, ids[j], p, h);
        uint32_t *out = ptrs + j * nb;
        if (t->ncb == 2) {
            memcpy(out, p, t->c * sizeof *p);
            memcpy(out + t->c, h, t->c * sizeof *h);
        } else {
            memcpy(out, h, t->c * sizeof *h);
        }
    }
    return unknown;
}

/* Applies a push's gradients to the codebooks of chunks [c0, c1): sums
 * them per row in `a` (set up for those chunks, empty), steps each row
 * once, marks them, and empties a's dense index again. */
static void cb_apply_chunks(cqr_table_t *t, cqr_cbstate_t *st,
                            const uint32_t *ptrs, const float *grads,
                            size_t n, uint32_t c0, uint32_t c1, agg_t *a)
{
    const uint32_t dim = t->cfg.dim, nb = t->ncb * t->c;
    for (size_t j = 0; j < n; j++) {
        const float *g = grads + j * dim;
        const uint32_t *pj = ptrs + j * nb;
        for (uint32_t i = c0; i < c1; i++) {
            const float *gc = g + (size_t)i * t->w;
            cb_add(a, t->k, i, pj[i], gc);
            if (t->ncb == 2)
                cb_add(a, t->k, t->c + i, pj[t->c + i], gc);
        }
    }
    /* Marks are the table's, whichever state is stepped: a phase's
     * replay onto its private state stamps them too, harmlessly, since
     * its commit marks every codebook changed anyway. */
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    for (size_t u = 0; u < a->nu; u++) {
        uint32_t blk = (uint32_t)(a->ukeys[u] >> 32);
        uint32_t row = (uint32_t)a->ukeys[u];
        cqr_rows_step(&st->cb[blk], row, a->acc + u * a->w, &t->cfg.optim);
        cqr_mark(&t->cbmark[(size_t)blk * t->k + row], e);
        cqr_mark(&t->cbpage[(size_t)blk * t->cbpages +
                            (row >> CQR_CB_PAGE_SHIFT)], e);
    }
    agg_done(a, t->k);
}

typedef struct cb_job {
    cqr_table_t *t;
    cqr_cbstate_t *st;
    const float *grads;
    size_t n;
    uint32_t *ptrs;
    const agg_t *base; /* the caller's scratch, split between the parts */
    unsigned parts;
} cb_job_t;

static void cb_apply_part(void *arg, unsigned i)
{
    cb_job_t *j = arg;
    const cqr_table_t *t = j->t;
    uint32_t c0 = (uint32_t)((uint64_t)t->c * i / j->parts);
    uint32_t c1 = (uint32_t)((uint64_t)t->c * (i + 1) / j->parts);
    /* Chunks [c0, c1) add at most n x ncb x (c1 - c0) rows: their slice of
     * the caller's keys and sums; the dense index is shared, since the
     * parts' codebooks (hence positions) are disjoint. */
    agg_t a = *j->base;
    size_t off = j->n * t->ncb * c0;
    a.ukeys += off;
    a.acc += off * a.w;
    a.nu = 0;
    cb_apply_chunks(j->t, j->st, j->ptrs, j->grads, j->n, c0, c1, &a);
}

/* This thread's room for a push's rows per ID: every codebook's row of
 * each ID (codebook kinds), or each ID's row (full). */
static uint32_t *id_rows(const cqr_table_t *t, size_t n)
{
    size_t per = t->ncb ? (size_t)t->ncb * t->c : 1;
    return scratch(SCRATCH_PTRS, (n ? n : 1) * per * sizeof(uint32_t));
}

static size_t resolve_rows(cqr_table_t *t, const cqr_cbstate_t *st,
                           const uint64_t *ids, size_t n, uint32_t *rows);

/* The apply pass over resolved rows. */
static void cb_apply_resolved(cqr_table_t *t, cqr_cbstate_t *st,
                              uint32_t *ptrs, const float *grads, size_t n)
{
    agg_t a;
    int rc = agg_init(&a, n * t->c * t->ncb, t->w, cb_dense_keys(t));
    assert(rc == 0 && "out of memory for push scratch");
    (void)rc;
    unsigned helpers = cqr_par_helpers(t->par);
    if (helpers && n >= PAR_MIN && t->c >= 2 && a.didx) {
        cb_job_t j = {.t = t, .st = st, .grads = grads, .n = n, .ptrs = ptrs,
                      .base = &a,
                      .parts = helpers + 1 < t->c ? helpers + 1 : t->c};
        cqr_par_run(t->par, j.parts, cb_apply_part, &j);
    } else
        cb_apply_chunks(t, st, ptrs, grads, n, 0, t->c, &a);
}

void cqr_cb_apply(cqr_table_t *t, cqr_cbstate_t *st, const uint64_t *ids,
                  const float *grads, size_t n)
{
    uint32_t *ptrs = id_rows(t, n);
    assert(ptrs && "out of memory for push scratch");
    resolve_rows(t, st, ids, n, ptrs);
    cb_apply_resolved(t, st, ptrs, grads, n);
}

/* Steps the summed rows [u0, u1) of a full push. */
static void full_step_range(cqr_table_t *t, const agg_t *a, size_t u0,
                            size_t u1)
{
    const uint32_t e = __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    /* Rows are random over the whole table: prefetch a few steps ahead
     * (a step touches the row, its Adam moments, counters and mark). */
    enum { STEP_AHEAD = 8 };
    for (size_t u = u0; u < u1; u++) {
        uint32_t local, row = (uint32_t)a->ukeys[u];
        if (u + STEP_AHEAD < u1) {
            uint32_t nl, nrow = (uint32_t)a->ukeys[u + STEP_AHEAD];
            const cqr_rows_t *nb = full_block(t, nrow, &nl);
            cqr_rows_prefetch_step(nb, nl);
            __builtin_prefetch(&t->fmark[nrow >> CQR_FULL_BLOCK_SHIFT][nl], 1);
        }
        cqr_rows_t *blk = full_block(t, row, &local);
        cqr_rows_step(blk, local, a->acc + u * a->w, &t->cfg.optim);
        cqr_mark(&t->fmark[row >> CQR_FULL_BLOCK_SHIFT][local], e);
        cqr_mark(&t->fpage[row >> CQR_FULL_BLOCK_SHIFT], e);
    }
}

typedef struct full_job {
    cqr_table_t *t;
    const agg_t *a;
    unsigned parts;
} full_job_t;

static void full_part(void *arg, unsigned i)
{
    full_job_t *j = arg;
    size_t b, e;
    part_range(j->a->nu, j->parts, i, &b, &e);
    full_step_range(j->t, j->a, b, e);
}

/* Finds the rows of ids[b, e) into rows[]; returns how many are
 * unknown (their rows[] entry is UINT32_MAX). */
static size_t full_resolve_range(const cqr_table_t *t, const uint64_t *ids,
                                 size_t b, size_t e, uint32_t *rows)
{
    size_t unknown = 0;
    for (size_t j = b; j < e && j < b + LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&t->rowmap, ids[j]);
    for (size_t j = b; j < e; j++) {
        if (j + LOOKUP_GROUP < e)
            cqr_idmap_prefetch(&t->rowmap, ids[j + LOOKUP_GROUP]);
        if (!full_find(t, ids[j], &rows[j])) {
            rows[j] = UINT32_MAX;
            unknown++;
        }
    }
    return unknown;
}

/* The resolve pass of a push, for every kind: finds the rows of every
 * ID (codebook kinds: in state st) into rows[], split over the helpers by
 * ID ranges, and returns how many IDs the table does not know (full and
 * cqr; a cqr ID's learned pointers are then its hashed ones). */
typedef struct resolve_job {
    cqr_table_t *t;
    const cqr_cbstate_t *st;
    const uint64_t *ids;
    uint32_t *rows;
    size_t n;
    unsigned parts;
    size_t unknown; /* atomic */
} resolve_job_t;

static size_t resolve_range(const resolve_job_t *j, size_t b, size_t e)
{
    if (j->t->cfg.kind == CQR_KIND_FULL)
        return full_resolve_range(j->t, j->ids, b, e, j->rows);
    return cb_resolve_range(j->t, j->st, j->ids, b, e, j->rows);
}

static void resolve_part(void *arg, unsigned i)
{
    resolve_job_t *j = arg;
    size_t b, e;
    part_range(j->n, j->parts, i, &b, &e);
    size_t u = resolve_range(j, b, e);
    if (u)
        __atomic_fetch_add(&j->unknown, u, __ATOMIC_RELAXED);
}

static size_t resolve_rows(cqr_table_t *t, const cqr_cbstate_t *st,
                           const uint64_t *ids, size_t n, uint32_t *rows)
{
    resolve_job_t j = {t, st, ids, rows, n, range_parts(t, n), 0};
    if (!j.parts)
        return resolve_range(&j, 0, n);
    cqr_par_run(t->par, j.parts, resolve_part, &j);
    return j.unknown;
}

/* Sums the gradients per row (first-seen order), then steps each row. */
static void full_apply_rows(cqr_table_t *t, const uint32_t *rows,
                            const float *grads, size_t n)
{
    agg_t a;
    const uint32_t dim = t->cfg.dim;
    int rc = agg_init(&a, n, dim, 0);
    assert(rc == 0 && "out of memory for push scratch");
    (void)rc;
    for (size_t j = 0; j < n; j++) {
        assert(rows[j] != UINT32_MAX);
        agg_add(&a, rows[j], grads + j * dim);
    }
    /* The rows are distinct: parts step disjoint rows. */
    unsigned parts = range_parts(t, a.nu);
    if (parts) {
        full_job_t j = {t, &a, parts};
        cqr_par_run(t->par, j.parts, full_part, &j);
    } else
        full_step_range(t, &a, 0, a.nu);
}

/* Registers the IDs not yet known. Exclusive lock held. */
static int add_known(cqr_table_t *t, const uint64_t *ids, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        if (t->cfg.kind == CQR_KIND_FULL) {
            uint32_t row;
            if (!full_find(t, ids[j], &row)) {
                int rc = full_new_row(t, ids[j]);
                if (rc)
                    return rc;
            }
            continue;
        }
        void *v;
        int inserted;
        size_t old_cap = t->st->ids.cap;
        uint64_t mgrow = 0;
        if (ids[j] != 0 && !cqr_idmap_find(&t->st->ids, ids[j]))
            mgrow = cqr_idmap_grow_bytes(&t->st->ids);
        int rc = grow_charge(t, mgrow);
        if (rc)
            return rc;
        rc = cqr_idmap_insert(&t->st->ids, ids[j], &v, &inserted);
        if (rc) {
            grow_refund(t, mgrow);
            return rc;
        }
        if (inserted) {
            for (uint32_t i = 0; i < t->c; i++)
                cqr_ptr_set(v, t->pw, i, cqr_hash_p(t, t->st, ids[j], i));
            track_insert(t, &t->st->ids, old_cap, v);
        }
    }
    return 0;
}

/* Copies a push into the running phase's log. plock held. */
static int log_append(cqr_table_t *t, const uint64_t *ids,
                      const float *grads, size_t n)
{
    size_t gbytes = n * t->cfg.dim * sizeof(float);
    size_t bytes = sizeof(cqr_logent_t) + n * sizeof(uint64_t) + gbytes;
    if (t->log_bytes + bytes > CQR_PHASE_LOG_MAX_BYTES)
        return CQR_EBUSY;
    cqr_logent_t *e = malloc(bytes);
    if (!e)
        return CQR_ENOMEM;
    e->next = NULL;
    e->n = n;
    e->ids = (uint64_t *)(e + 1);
    e->grads = (float *)(e->ids + n);
    memcpy(e->ids, ids, n * sizeof(uint64_t));
    memcpy(e->grads, grads, gbytes);
    if (t->log_tail)
        t->log_tail->next = e;
    else
        t->log_head = e;
    t->log_tail = e;
    t->log_bytes += bytes;
    t->log_count++;
    return 0;
}

static int push_impl(cqr_table_t *t, const uint64_t *ids, const float *grads,
                     size_t n, uint64_t examples)
{
    /* A float is NaN or Inf exactly when its exponent bits are all ones:
     * an integer test that vectorises, with no branch per float. */
    const size_t nf = n * t->cfg.dim;
    uint32_t nonfinite = 0;
    for (size_t j = 0; j < nf; j++) {
        uint32_t b;
        memcpy(&b, &grads[j], sizeof b);
        nonfinite |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (nonfinite)
        return CQR_ENONFINITE;
    const int track = t->cfg.kind == CQR_KIND_FULL ||
                      t->cfg.kind == CQR_KIND_CQR;
    /* Reserve this thread's scratch now, so that the apply below cannot
     * fail halfway through a push. */
    agg_t a;
    int rc = t->cfg.kind == CQR_KIND_FULL
                 ? agg_init(&a, n, t->cfg.dim, 0)
                 : agg_init(&a, n * t->c * t->ncb, t->w, cb_dense_keys(t));
    if (rc)
        return rc;
    uint32_t *rows = id_rows(t, n);
    if (!rows)
        return CQR_ENOMEM;
    const int full = t->cfg.kind == CQR_KIND_FULL;
    /* The gate makes the push one step for an export: wholly before its
     * copy or wholly after it, counters included. */
    pthread_rwlock_rdlock(&t->gate);
    for (;;) {
        /* Finding every ID's rows (the map probes: cache misses, split
         * over the helpers) also tells whether some are new. */
        pthread_rwlock_rdlock(&t->lock);
        size_t unknown = resolve_rows(t, t->st, ids, n, rows);
        if (!track || unknown == 0)
            break;
        /* New IDs: register them exclusively, then apply under the
         * shared lock. A phase commit in between may swap in a map
         * without them, hence the loop. */
        pthread_rwlock_unlock(&t->lock);
        pthread_rwlock_wrlock(&t->lock);
        rc = add_known(t, ids, n);
        pthread_rwlock_unlock(&t->lock);
        if (rc)
            goto out;
    }
    if (t->phase) {
        pthread_mutex_lock(&t->plock);
        rc = log_append(t, ids, grads, n);
        pthread_mutex_unlock(&t->plock);
        if (rc) {
            pthread_rwlock_unlock(&t->lock);
            goto out;
        }
    }
    if (full)
        full_apply_rows(t, rows, grads, n);
    else
        cb_apply_resolved(t, t->st, rows, grads, n);
    pthread_rwlock_unlock(&t->lock);
    __atomic_fetch_add(&t->n_pushes, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&t->n_examples, examples, __ATOMIC_RELAXED);
out:
    pthread_rwlock_unlock(&t->gate);
    return rc;
}

int cqr_table_push(cqr_table_t *t, const uint64_t *ids, const float *grads,
                   size_t n)
{
    if (!t || (n && (!ids || !grads)))
        return CQR_EINVAL;
    if (n == 0)
        return 0;
    return push_impl(t, ids, grads, n, n);
}

/* ---- Pooled ------------------------------------------------------------ */

static int check_offsets(const uint32_t *offsets, size_t nbags, size_t n)
{
    if (nbags == 0)
        return 0;
    if (!offsets || offsets[0] != 0)
        return CQR_EINVAL;
    for (size_t b = 1; b < nbags; b++) {
        if (offsets[b] < offsets[b - 1] || offsets[b] > n)
            return CQR_EINVAL;
    }
    return 0;
}

static inline size_t bag_end(const uint32_t *offsets, size_t nbags, size_t n,
                             size_t b)
{
    return b + 1 < nbags ? offsets[b + 1] : n;
}

int cqr_table_lookup_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                            const uint32_t *offsets, size_t nbags,
                            cqr_pooling_t pool, float *out)
{
    if (!t || (n && !ids) || (nbags && !out) || (unsigned)pool > CQR_POOL_MEAN)
        return CQR_EINVAL;
    int rc = check_offsets(offsets, nbags, n);
    if (rc)
        return rc;
    if (nbags == 0 && n > 0)
        return CQR_EINVAL;
    const uint32_t dim = t->cfg.dim;
    float *rows = scratch(4, (n ? n : 1) * dim * sizeof(float));
    if (!rows)
        return CQR_ENOMEM;
    rc = cqr_table_lookup(t, ids, n, rows);
    if (rc)
        return rc;
    for (size_t b = 0; b < nbags; b++) {
        float *o = out + b * dim;
        memset(o, 0, dim * sizeof(float));
        size_t lo = offsets[b], hi = bag_end(offsets, nbags, n, b);
        for (size_t j = lo; j < hi; j++) {
            const float *r = rows + j * dim;
            for (uint32_t d = 0; d < dim; d++)
                o[d] += r[d];
        }
        if (pool == CQR_POOL_MEAN && hi > lo) {
            float inv = 1.0f / (float)(hi - lo);
            for (uint32_t d = 0; d < dim; d++)
                o[d] *= inv;
        }
    }
    return 0;
}

int cqr_table_push_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                          const uint32_t *offsets, size_t nbags,
                          cqr_pooling_t pool, const float *bag_grads)
{
    if (!t || (n && !ids) || (nbags && !bag_grads) ||
        (unsigned)pool > CQR_POOL_MEAN)
        return CQR_EINVAL;
    int rc = check_offsets(offsets, nbags, n);
    if (rc)
        return rc;
    if (nbags == 0)
        return n ? CQR_EINVAL : 0;
    const uint32_t dim = t->cfg.dim;
    for (size_t j = 0; j < nbags * dim; j++) {
        if (!isfinite(bag_grads[j]))
            return CQR_ENONFINITE;
    }
    if (n == 0)
        return 0;
    float *g = scratch(5, n * dim * sizeof(float));
    if (!g)
        return CQR_ENOMEM;
    for (size_t b = 0; b < nbags; b++) {
        size_t lo = offsets[b], hi = bag_end(offsets, nbags, n, b);
        float scale = pool == CQR_POOL_MEAN && hi > lo
                          ? 1.0f / (float)(hi - lo) : 1.0f;
        const float *gb = bag_grads + b * dim;
        for (size_t j = lo; j < hi; j++) {
            for (uint32_t d = 0; d < dim; d++)
                g[j * dim + d] = gb[d] * scale;
        }
    }
    return push_impl(t, ids, g, n, nbags);
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
    } else {
        for (uint32_t b = 0; b < t->ncb * t->c; b++) {
            s->param_bytes += cqr_rows_param_bytes(&t->st->cb[b]);
            s->optim_bytes += cqr_rows_state_bytes(&t->st->cb[b]);
        }
        if (t->cfg.kind == CQR_KIND_CQR) {
            s->known_ids = t->st->ids.count;
            s->index_bytes = cqr_idmap_bytes(&t->st->ids);
        }
    }
    s->phases_done = t->phases_done;
    s->phase_running = t->phase != NULL;
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
            uint32_t row, local;
            memcpy(&row, v, sizeof row);
            const cqr_rows_t *b = full_block(t, row, &local);
            XXH3_64bits_update(x, b->param + (size_t)local * b->w,
                               b->w * sizeof(float));
            if (b->sw)
                XXH3_64bits_update(x, b->state + (size_t)local * b->sw,
                                   b->sw * sizeof(float));
            if (b->step)
                digest_u64(x, b->step[local]);
        } else {
            XXH3_64bits_update(x, v, m->vw);
        }
        sum += XXH3_64bits_digest(x);
    }
    XXH3_freeState(x);
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
    digest_u64(x, c->reset_optimizer);
    digest_u64(x, c->schedule_every);
    digest_u64(x, c->schedule_max_phases);

    pthread_rwlock_wrlock(&t->lock);
    digest_u64(x, t->phases_done);
    if (c->kind == CQR_KIND_FULL) {
        digest_u64(x, t->rowmap.count);
        digest_u64(x, digest_map(t, &t->rowmap));
    } else {
        for (uint32_t i = 0; i < t->c; i++) {
            digest_u64(x, t->st->seed_p[i]);
            digest_u64(x, t->st->seed_h[i]);
        }
        for (uint32_t b = 0; b < t->ncb * t->c; b++)
            digest_rows(x, &t->st->cb[b]);
        digest_u64(x, t->st->ids.count);
        digest_u64(x, digest_map(t, &t->st->ids));
    }
    pthread_rwlock_unlock(&t->lock);
    *out = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return 0;
}
