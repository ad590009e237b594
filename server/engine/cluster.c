/* cluster.c -- the cluster-and-rehash phase of cqr tables (DESIGN.md s1).
 *
 * begin   (exclusive lock, short): clone the codebooks and seeds into a
 *         private snapshot and start logging pushes.
 * run     (no lock held for long): copy the known IDs and their pointers
 *         (shared lock), then per chunk: k-means on a sample of the IDs'
 *         snapshot chunk vectors, assignment of every ID to its nearest
 *         centroid, fresh B1 seed and mean residuals. Then replay the
 *         pushes logged so far onto the new state.
 * commit  (exclusive lock): replay the rest of the log and swap states.
 *
 * Why replay: a push during the phase was computed by the trainer from
 * the live embeddings and applied to them, but the new state is built
 * from the snapshot. Replaying it after the swap keeps its effect, in the
 * order the pushes were acknowledged.
 */
#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "kmeans.h"
#include "table_impl.h"

struct cqr_phase {
    cqr_table_t *t;          /* the table (outlives the phase) */
    uint32_t phase_no;       /* 1-based */
    cqr_cbstate_t *snap;     /* codebooks and seeds at begin (private) */
    cqr_cbstate_t *next;     /* the state being built (private until
                                commit) */
    int ran;                 /* run finished successfully */
    int committed;           /* commit finished successfully */
    double t_begin;          /* cqr_now() at begin */
    cqr_phase_result_t res;  /* figures so far */
};

int cqr_phase_begin(cqr_table_t *t, cqr_phase_t **out)
{
    if (!t || !out)
        return CQR_EINVAL;
    if (t->cfg.kind != CQR_KIND_CQR)
        return CQR_EUNSUPPORTED;
    cqr_phase_t *ph = calloc(1, sizeof *ph);
    if (!ph)
        return CQR_ENOMEM;
    ph->t = t;
    ph->t_begin = cqr_now();
    pthread_rwlock_wrlock(&t->lock);
    if (t->phase) {
        pthread_rwlock_unlock(&t->lock);
        free(ph);
        return CQR_EBUSY;
    }
    int rc = cqr_cbstate_clone(t, t->st, &ph->snap);
    if (rc) {
        pthread_rwlock_unlock(&t->lock);
        free(ph);
        return rc;
    }
    ph->phase_no = t->phases_done + 1;
    ph->res.phase_no = ph->phase_no;
    t->phase = ph;
    t->examples_prev_phase = t->examples_at_phase;
    t->examples_at_phase = __atomic_load_n(&t->n_examples, __ATOMIC_RELAXED);
    pthread_mutex_lock(&t->plock);
    t->log_count = 0;
    pthread_mutex_unlock(&t->plock);
    pthread_rwlock_unlock(&t->lock);
    *out = ph;
    return 0;
}

/* Chunk i of id's embedding under the snapshot, given its B0 pointer. */
static void snap_chunk(const cqr_table_t *t, const cqr_cbstate_t *snap,
                       uint64_t id, uint32_t i, uint32_t p, float *out)
{
    const uint32_t w = t->w;
    const float *b0 = snap->cb[i].param + (size_t)p * w;
    const float *b1 = snap->cb[t->c + i].param +
                      (size_t)cqr_hash_h(t, snap, id, i) * w;
    for (uint32_t j = 0; j < w; j++)
        out[j] = b0[j] + b1[j];
}

typedef struct known {
    uint64_t id;     /* the ID */
    uint32_t row;    /* its index in the ID list */
} known_t;

static int cmp_known(const void *a, const void *b)
{
    uint64_t x = ((const known_t *)a)->id, y = ((const known_t *)b)->id;
    return x < y ? -1 : x > y;
}

typedef struct progress_ctx {
    cqr_progress_cb cb;  /* the caller's callback */
    void *ud;            /* its argument */
    uint32_t chunks;     /* chunks in the phase */
} progress_ctx_t;

static void report(progress_ctx_t *pc, const char *stage, uint32_t chunk,
                   double fraction, double inertia)
{
    if (!pc->cb)
        return;
    cqr_progress_t p = {.stage = stage, .chunk = chunk, .chunks = pc->chunks,
                        .fraction = fraction, .inertia = inertia};
    pc->cb(pc->ud, &p);
}

/* Nearest of k centroids (k x w) to x, ties to the lower index. For the
 * few IDs first seen during a phase. */
static uint32_t nearest(const float *cent, uint32_t k, uint32_t w,
                        const float *x)
{
    uint32_t best = 0;
    float bd = FLT_MAX;
    for (uint32_t r = 0; r < k; r++) {
        float d = 0.0f;
        for (uint32_t j = 0; j < w; j++) {
            float e = x[j] - cent[(size_t)r * w + j];
            d += e * e;
        }
        if (d < bd) {
            bd = d;
            best = r;
        }
    }
    return best;
}

/* Applies logged pushes to the new state. IDs the new map does not hold
 * yet (first pushed during the phase) are assigned the centroid nearest
 * to their snapshot embedding first. Caller excludes concurrent use of
 * ph->next. */
static int replay(cqr_phase_t *ph, cqr_logent_t *e)
{
    cqr_table_t *t = ph->t;
    float *x = malloc(t->w * sizeof(float));
    if (!x)
        return CQR_ENOMEM;
    int rc = 0;
    while (e) {
        for (size_t j = 0; j < e->n && rc == 0; j++) {
            uint64_t id = e->ids[j];
            if (cqr_idmap_find(&ph->next->ids, id))
                continue;
            void *v;
            int inserted;
            rc = cqr_idmap_insert(&ph->next->ids, id, &v, &inserted);
            if (rc)
                break;
            for (uint32_t i = 0; i < t->c; i++) {
                snap_chunk(t, ph->snap, id, i, cqr_hash_p(t, ph->snap, id, i),
                           x);
                cqr_ptr_set(v, t->pw, i,
                            nearest(ph->next->cb[i].param, t->k, t->w, x));
            }
        }
        if (rc)
            break;
        cqr_cb_apply(t, ph->next, e->ids, e->grads, e->n);
        ph->res.replayed_pushes++;
        cqr_logent_t *done = e;
        e = e->next;
        free(done);
    }
    while (e) { /* on error, free what was not replayed */
        cqr_logent_t *done = e;
        e = e->next;
        free(done);
    }
    free(x);
    return rc;
}

/* Takes the whole log. plock must not be held. */
static cqr_logent_t *take_log(cqr_table_t *t)
{
    pthread_mutex_lock(&t->plock);
    cqr_logent_t *e = t->log_head;
    t->log_head = t->log_tail = NULL;
    t->log_bytes = 0;
    pthread_mutex_unlock(&t->plock);
    return e;
}

int cqr_phase_run(cqr_phase_t *ph, cqr_progress_cb cb, void *ud)
{
    if (!ph || ph->ran || ph->committed)
        return CQR_EINVAL;
    cqr_table_t *t = ph->t;
    const uint32_t c = t->c, w = t->w, k = t->k;
    const cqr_table_config_t *cfg = &t->cfg;
    progress_ctx_t pc = {.cb = cb, .ud = ud, .chunks = c};
    uint64_t *ids = NULL;
    uint32_t *ptrs = NULL, *assign = NULL;
    known_t *sample = NULL;
    float *xs = NULL, *xa = NULL;
    double *sums = NULL;
    uint32_t *counts = NULL;
    int rc = 0;

    /* The known IDs and their current pointers. Pointers change only at
     * commits, and this phase is the only one, so the copy is exact. */
    report(&pc, "snapshot", 0, 0.0, -1.0);
    pthread_rwlock_rdlock(&t->lock);
    size_t n = t->st->ids.count;
    ids = malloc((n ? n : 1) * sizeof *ids);
    ptrs = malloc((n ? n : 1) * c * sizeof *ptrs);
    if (ids && ptrs) {
        size_t pos = 0, j = 0;
        uint64_t id;
        void *v;
        while (cqr_idmap_next(&t->st->ids, &pos, &id, &v)) {
            ids[j] = id;
            for (uint32_t i = 0; i < c; i++)
                ptrs[j * c + i] = cqr_ptr_get(v, t->pw, i);
            j++;
        }
        assert(j == n);
    }
    pthread_rwlock_unlock(&t->lock);
    if (!ids || !ptrs) {
        rc = CQR_ENOMEM;
        goto out;
    }
    ph->res.seconds_snapshot = cqr_now() - ph->t_begin;

    rc = cqr_cbstate_clone(t, ph->snap, &ph->next);
    if (rc)
        goto out;
    if (cfg->reset_optimizer) {
        for (uint32_t b = 0; b < 2 * c; b++)
            cqr_rows_reset_state(&ph->next->cb[b]);
    }

    /* A uniform sample chosen by hashing each ID with the phase's seed:
     * the same IDs are chosen whatever the map's slot order, and sorting
     * them by ID makes the k-means input order canonical too. */
    size_t target = (size_t)k * cfg->cluster_sample;
    size_t m = 0;
    sample = malloc((n ? n : 1) * sizeof *sample);
    if (!sample) {
        rc = CQR_ENOMEM;
        goto out;
    }
    if (n <= target) {
        for (size_t j = 0; j < n; j++)
            sample[m++] = (known_t){ids[j], (uint32_t)j};
    } else {
        uint64_t sseed = cqr_derive_seed(cfg->seed, CQR_TAG_SAMPLE, ph->phase_no);
        unsigned __int128 thr = ((unsigned __int128)target << 64) / n;
        for (size_t j = 0; j < n; j++) {
            if ((unsigned __int128)cqr_hash_id(ids[j], sseed) < thr)
                sample[m++] = (known_t){ids[j], (uint32_t)j};
        }
    }
    qsort(sample, m, sizeof *sample, cmp_known);
    ph->res.sample_size = m;

    if (n > 0) {
        xs = malloc(m * (size_t)w * sizeof(float));
        xa = malloc(n * (size_t)w * sizeof(float));
        assign = malloc(n * sizeof *assign);
        sums = malloc((size_t)k * w * sizeof(double));
        counts = malloc((size_t)k * sizeof *counts);
        if (!xs || !xa || !assign || !sums || !counts) {
            rc = CQR_ENOMEM;
            goto out;
        }
    }
    /* Room for an eighth more IDs: sized exactly at the growth threshold,
     * the first new ID after the commit would rehash the whole map (and
     * make the next checkpoints rewrite it). */
    rc = cqr_idmap_reserve(&ph->next->ids, n + n / 8 + 16);
    if (rc)
        goto out;
    /* Every known ID enters the new map now; its pointers are filled in
     * chunk by chunk below. */
    for (size_t j = 0; j < n; j++) {
        void *v;
        int inserted;
        rc = cqr_idmap_insert(&ph->next->ids, ids[j], &v, &inserted);
        if (rc)
            goto out;
    }

    double inertia_sum = 0.0;
    for (uint32_t i = 0; i < c && n > 0; i++) {
        double t0 = cqr_now();
        for (size_t s = 0; s < m; s++) {
            size_t j = sample[s].row;
            snap_chunk(t, ph->snap, ids[j], i, ptrs[j * c + i],
                       xs + s * w);
        }
        float *cent = ph->next->cb[i].param; /* B0[:, i] := centroids */
        cqr_kmeans_params_t kp = {
            .iters = cfg->cluster_iters,
            .seed = cqr_derive_seed(cfg->seed, CQR_TAG_KMEANS,
                                    (uint64_t)ph->phase_no * CQR_MAX_CHUNKS + i),
            .threads = cfg->cluster_threads,
            .init = CQR_KMEANS_INIT_PLUSPLUS,
            .progress = cb,
            .progress_ud = ud,
            .chunk = i,
            .chunks = c,
        };
        double inertia = 0.0;
        rc = cqr_kmeans_fit(xs, m, w, w, k, &kp, cent, &inertia);
        if (rc)
            goto out;
        inertia_sum += inertia;
        double t1 = cqr_now();
        ph->res.seconds_kmeans += t1 - t0;

        report(&pc, "assign", i, (i + 0.5) / c, inertia);
        for (size_t j = 0; j < n; j++)
            snap_chunk(t, ph->snap, ids[j], i, ptrs[j * c + i], xa + j * w);
        rc = cqr_kmeans_assign(xa, n, w, w, cent, k, cfg->cluster_threads,
                               assign, NULL);
        if (rc)
            goto out;
        for (size_t j = 0; j < n; j++) {
            uint8_t *v = cqr_idmap_find(&ph->next->ids, ids[j]);
            assert(v);
            cqr_ptr_set(v, t->pw, i, assign[j]);
        }

        /* B1[:, i] := mean residual per row of a freshly seeded hash;
         * rows no ID hashes to become zero (never 0/0). */
        ph->next->seed_h[i] = cqr_derive_seed(
            cfg->seed, CQR_TAG_RESEED, (uint64_t)ph->phase_no * CQR_MAX_CHUNKS + i);
        memset(sums, 0, (size_t)k * w * sizeof(double));
        memset(counts, 0, (size_t)k * sizeof *counts);
        for (size_t j = 0; j < n; j++) {
            uint32_t r = cqr_hash_h(t, ph->next, ids[j], i);
            const float *x = xa + j * w;
            const float *ct = cent + (size_t)assign[j] * w;
            double *sr = sums + (size_t)r * w;
            for (uint32_t d = 0; d < w; d++)
                sr[d] += (double)x[d] - ct[d];
            counts[r]++;
        }
        float *b1 = ph->next->cb[c + i].param;
        for (uint32_t r = 0; r < k; r++) {
            for (uint32_t d = 0; d < w; d++)
                b1[(size_t)r * w + d] =
                    counts[r] ? (float)(sums[(size_t)r * w + d] / counts[r])
                              : 0.0f;
        }
        ph->res.seconds_assign += cqr_now() - t1;
        report(&pc, "residual", i, (i + 1.0) / c, inertia);
    }
    ph->res.ids_assigned = n;
    ph->res.inertia = c ? inertia_sum / c : 0.0;

    /* Replay what was pushed meanwhile, so the commit's pause covers only
     * the pushes that arrive from now on. */
    report(&pc, "replay", 0, 1.0, ph->res.inertia);
    rc = replay(ph, take_log(t));
    if (rc)
        goto out;
    ph->ran = 1;
out:
    free(ids);
    free(ptrs);
    free(sample);
    free(xs);
    free(xa);
    free(assign);
    free(sums);
    free(counts);
    return rc;
}

int cqr_phase_commit(cqr_phase_t *ph)
{
    if (!ph || !ph->ran || ph->committed)
        return CQR_EINVAL;
    cqr_table_t *t = ph->t;
    pthread_rwlock_wrlock(&t->lock);
    double t0 = cqr_now();
    int rc = replay(ph, take_log(t));
    if (rc) {
        pthread_rwlock_unlock(&t->lock);
        return rc;
    }
    cqr_cbstate_t *old = t->st;
    t->st = ph->next;
    ph->next = NULL;
    t->phase = NULL;
    /* The new known-ID map was sized for the IDs it holds: charge (or
     * refund) the difference. */
    cqr_table_budget_sync(t);
    t->phases_done = ph->phase_no;
    /* Every codebook row and pointer may have changed: the next export
     * writes them all (exports exclude commits through the lock). */
    t->cb_base_epoch = t->map_base_epoch =
        __atomic_load_n(&t->wepoch, __ATOMIC_RELAXED);
    t->ins_n = 0;
    double t1 = cqr_now();
    ph->res.seconds_commit = t1 - t0;
    ph->res.seconds_total = t1 - ph->t_begin;
    pthread_mutex_lock(&t->plock);
    t->last_inertia = ph->res.inertia;
    t->last_phase_seconds = ph->res.seconds_total;
    t->last_commit_seconds = ph->res.seconds_commit;
    pthread_mutex_unlock(&t->plock);
    pthread_rwlock_unlock(&t->lock);
    /* No reader can hold the old state: they all ran under the lock we
     * just held exclusively. */
    cqr_cbstate_free(t, old);
    ph->committed = 1;
    return 0;
}

void cqr_phase_result(const cqr_phase_t *ph, cqr_phase_result_t *res)
{
    *res = ph->res;
}

void cqr_phase_destroy(cqr_phase_t *ph)
{
    if (!ph)
        return;
    cqr_table_t *t = ph->t;
    if (!ph->committed) {
        pthread_rwlock_wrlock(&t->lock);
        if (t->phase == ph)
            t->phase = NULL;
        cqr_logent_t *e = take_log(t);
        pthread_rwlock_unlock(&t->lock);
        while (e) {
            cqr_logent_t *done = e;
            e = e->next;
            free(done);
        }
    }
    cqr_cbstate_free(t, ph->snap);
    cqr_cbstate_free(t, ph->next);
    free(ph);
}

int cqr_table_cluster(cqr_table_t *t, cqr_progress_cb cb, void *ud,
                      cqr_phase_result_t *res)
{
    cqr_phase_t *ph;
    int rc = cqr_phase_begin(t, &ph);
    if (rc)
        return rc;
    rc = cqr_phase_run(ph, cb, ud);
    if (rc == 0)
        rc = cqr_phase_commit(ph);
    if (rc == 0 && res)
        cqr_phase_result(ph, res);
    cqr_phase_destroy(ph);
    return rc;
}
