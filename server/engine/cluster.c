/* cluster.c -- the cluster-and-rehash phase of cqr tables (DESIGN.md s1).
 *
 * begin   (table held exclusively, short): the table clones the codebooks
 *         and seeds into the phase's private snapshot and starts logging
 *         pushes into the phase's push log (pushlog.h).
 * run     (no lock held for long): copy the known IDs and their pointers
 *         (shared lock), then per chunk: k-means on a sample of the IDs'
 *         snapshot chunk vectors, assignment of every ID to its nearest
 *         centroid, fresh B1 seed and mean residuals. Then replay the
 *         pushes logged so far onto the new state.
 * commit  (table held exclusively): replay the rest of the log; the table
 *         swaps the new state in.
 *
 * Why replay: a push during the phase was computed by the trainer from
 * the live embeddings and applied to them, but the new state is built
 * from the snapshot. Replaying it after the swap keeps its effect, in the
 * order the pushes were acknowledged.
 *
 * The phase never writes the table's fields: it works on its own states
 * (snap, next) and asks the table (cqr_table_phase_*, table_impl.h) for
 * the rest.
 */
#include <assert.h>
#include <float.h>
#include <stdatomic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hash.h"
#include "kmeans.h"
#include "pushlog.h"
#include "table_impl.h"

struct cqr_phase {
    cqr_table_t *t;          /* the table (outlives the phase) */
    uint32_t phase_no;       /* 1-based */
    cqr_cbstate_t *snap;     /* codebooks and seeds at begin (private) */
    cqr_cbstate_t *next;     /* the state being built (private until
                                commit) */
    cqr_pushlog_t *log;      /* pushes during the phase (owned) */
    int ran;                 /* run finished successfully */
    int committed;           /* commit finished successfully */
    atomic_int cancel;       /* raised by cqr_phase_cancel (any thread) */
    double t_begin;          /* cqr_now() at begin */
    cqr_phase_result_t res;  /* figures so far */
    cqr_optim_config_t optim; /* the optimizer config of the replay
                                 running now */
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
    int rc = cqr_pushlog_create(t->cfg.dim, &ph->log);
    if (rc == 0)
        rc = cqr_table_phase_start(t, ph, ph->log, &ph->snap, &ph->phase_no);
    if (rc) {
        cqr_pushlog_destroy(ph->log);
        free(ph);
        return rc;
    }
    ph->res.phase_no = ph->phase_no;
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

static void report(const progress_ctx_t *pc, const char *stage,
                   uint32_t chunk, double fraction, double inertia)
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

/* Replays one logged push onto the new state (a cqr_pushlog_fn). IDs the
 * new map does not hold yet (first pushed during the phase, or evicted by
 * the run and pushed since) are assigned the centroid nearest to their
 * snapshot embedding first. Caller excludes concurrent use of ph->next
 * and holds the table's lock (either mode). */
static int replay_push(void *ud, const uint64_t *ids, const float *grads,
                       size_t n)
{
    cqr_phase_t *ph = ud;
    cqr_table_t *t = ph->t;
    float x[CQR_MAX_DIM];
    for (size_t j = 0; j < n; j++) {
        uint64_t id = ids[j];
        uint32_t pk[CQR_MAX_CHUNKS];
        const uint8_t *cv;
        if (cqr_cqr_find(t, ph->next, id, pk, &cv)) {
            if (t->stamp_off && cv) /* pushed during this phase */
                cqr_stamp_set(t, (void *)cv, ph->phase_no - 1);
            continue;
        }
        /* With admission, an ID the live table has not admitted (the
         * caller holds its lock) keeps its hashed pointers. */
        if (t->sketch && !cqr_cqr_known(t, t->st, id))
            continue;
        void *v;
        int inserted;
        int rc = cqr_idmap_insert(&ph->next->ids, id, &v, &inserted);
        if (rc)
            return rc;
        for (uint32_t i = 0; i < t->c; i++) {
            snap_chunk(t, ph->snap, id, i, cqr_hash_p(t, ph->snap, id, i), x);
            cqr_ptr_set(v, t->pw, i,
                        nearest(ph->next->cb[i].param, t->k, t->w, x));
        }
        if (t->stamp_off)
            cqr_stamp_set(t, v, ph->phase_no - 1);
    }
    cqr_cb_apply(t, ph->next, &ph->optim, ids, grads, n);
    return 0;
}

/* Replays what the log holds now with ph->optim, which the caller sets
 * to the optimizer config in force (an update may change it while the
 * phase runs). */
static int replay(cqr_phase_t *ph)
{
    return cqr_pushlog_replay(ph->log, replay_push, ph,
                              &ph->res.replayed_pushes);
}

/* replay from run. With admission replay_push reads the live map: the
 * table's lock shared, taken before the log's mutex as pushes take them. */
static int replay_shared(cqr_phase_t *ph)
{
    if (!ph->t->sketch)
        return replay(ph);
    pthread_rwlock_rdlock(&ph->t->lock);
    int rc = replay(ph);
    pthread_rwlock_unlock(&ph->t->lock);
    return rc;
}

/* ---- run ----------------------------------------------------------------
 * The work of cqr_phase_run, on arrays that live for one run. */
typedef struct run {
    cqr_phase_t *ph;     /* the phase */
    progress_ctx_t pc;   /* progress reports */
    size_t n;            /* known IDs */
    uint64_t *ids;       /* the n known IDs */
    uint32_t *ptrs;      /* n x c their pointers in the snapshot */
    uint32_t *stamps;    /* n their stamps (eviction on), else NULL */
    known_t *sample;     /* m sampled IDs, sorted by ID */
    size_t m;
    float *xs;           /* m x w: a chunk of the sampled IDs' vectors */
    uint32_t *sassign;   /* m: each sampled ID's centroid (k-means) */
    float *xa;           /* n x w: a chunk of every ID's vector */
    uint32_t *assign;    /* n: each ID's centroid in the chunk */
    double *sums;        /* k x w: residual sums per B1 row */
    uint32_t *counts;    /* k: IDs per B1 row */
} run_t;

static void run_free(run_t *r)
{
    free(r->ids);
    free(r->ptrs);
    free(r->stamps);
    free(r->sample);
    free(r->xs);
    free(r->sassign);
    free(r->xa);
    free(r->assign);
    free(r->sums);
    free(r->counts);
}

/* A uniform sample chosen by hashing each ID with the phase's seed: the
 * same IDs are chosen whatever the map's slot order, and sorting them by
 * ID makes the k-means input order canonical too. */
static int run_sample(run_t *r)
{
    const cqr_phase_t *ph = r->ph;
    const cqr_table_config_t *cfg = &ph->t->cfg;
    const size_t n = r->n;
    size_t target = (size_t)ph->t->k * cfg->cluster_sample;
    r->sample = malloc((n ? n : 1) * sizeof *r->sample);
    if (!r->sample)
        return CQR_ENOMEM;
    size_t m = 0;
    if (n <= target) {
        for (size_t j = 0; j < n; j++)
            r->sample[m++] = (known_t){r->ids[j], (uint32_t)j};
    } else {
        uint64_t sseed =
            cqr_derive_seed(cfg->seed, CQR_TAG_SAMPLE, ph->phase_no);
        unsigned __int128 thr = ((unsigned __int128)target << 64) / n;
        for (size_t j = 0; j < n; j++) {
            if ((unsigned __int128)cqr_hash_id(r->ids[j], sseed) < thr)
                r->sample[m++] = (known_t){r->ids[j], (uint32_t)j};
        }
    }
    qsort(r->sample, m, sizeof *r->sample, cmp_known);
    r->m = m;
    return 0;
}

/* The chunk buffers, and every known ID entered into the new map (its
 * pointers are filled in chunk by chunk). */
static int run_prepare(run_t *r)
{
    const cqr_table_t *t = r->ph->t;
    const size_t n = r->n, w = t->w, k = t->k;
    if (n > 0) {
        r->xs = malloc(r->m * w * sizeof(float));
        r->sassign = malloc(r->m * sizeof *r->sassign);
        r->xa = malloc(n * w * sizeof(float));
        r->assign = malloc(n * sizeof *r->assign);
        r->sums = malloc(k * w * sizeof(double));
        r->counts = malloc(k * sizeof *r->counts);
        if (!r->xs || !r->sassign || !r->xa || !r->assign || !r->sums ||
            !r->counts)
            return CQR_ENOMEM;
    }
    cqr_idmap_t *ids = &r->ph->next->ids;
    /* Room for an eighth more IDs: sized exactly at the growth threshold,
     * the first new ID after the commit would rehash the whole map (and
     * make the next checkpoints rewrite it). */
    int rc = cqr_idmap_reserve(ids, n + n / 8 + 16);
    for (size_t j = 0; j < n && rc == 0; j++) {
        void *v;
        int inserted;
        rc = cqr_idmap_insert(ids, r->ids[j], &v, &inserted);
        if (rc == 0 && r->stamps)
            cqr_stamp_set(t, v, r->stamps[j]);
    }
    return rc;
}

/* Where chunk i's k-means ends in the phase's 0..1 progress: the share
 * of its distance work planned for k-means (m points, up to iters + 1
 * passes) against the assignment of the other known IDs (one pass). */
static double kmeans_share(const run_t *r)
{
    double wk = (double)r->m * (r->ph->t->cfg.cluster_iters + 1);
    double wa = r->m == r->n ? 0.0 : (double)r->n;
    return wk / (wk + wa + 1.0);
}

/* B0[:, i] := the k-means centroids of the sample's chunk i; sets
 * *inertia to the final inertia. */
static int run_kmeans(run_t *r, uint32_t i, double *inertia)
{
    cqr_phase_t *ph = r->ph;
    const cqr_table_t *t = ph->t;
    const cqr_table_config_t *cfg = &t->cfg;
    const uint32_t c = t->c, w = t->w;
    double t0 = cqr_now();
    for (size_t s = 0; s < r->m; s++) {
        size_t j = r->sample[s].row;
        snap_chunk(t, ph->snap, r->ids[j], i, r->ptrs[j * c + i],
                   r->xs + s * w);
    }
    cqr_kmeans_params_t kp = {
        .iters = cfg->cluster_iters,
        .tol = cfg->cluster_tol,
        .seed = cqr_derive_seed(cfg->seed, CQR_TAG_KMEANS,
                                (uint64_t)ph->phase_no * CQR_MAX_CHUNKS + i),
        .threads = cfg->cluster_threads,
        .init = CQR_KMEANS_INIT_PLUSPLUS,
        .cancel = &ph->cancel,
        .progress = r->pc.cb,
        .progress_ud = r->pc.ud,
        .chunk = i,
        .chunks = c,
        .frac0 = (double)i / c,
        .frac1 = (i + kmeans_share(r)) / c,
    };
    cqr_kmeans_result_t kr;
    int rc = cqr_kmeans_fit(r->xs, r->m, w, w, t->k, &kp,
                            ph->next->cb[i].param, r->sassign, &kr);
    if (rc)
        return rc;
    *inertia = kr.inertia;
    ph->res.kmeans_iters_sum += kr.iters;
    if (kr.iters > ph->res.kmeans_iters_max)
        ph->res.kmeans_iters_max = kr.iters;
    ph->res.seconds_kmeans += cqr_now() - t0;
    return 0;
}

/* Known IDs per assignment call: progress and a cancel check between
 * slices (the k-means cancel flag is also checked within each). */
#define ASSIGN_SLICE ((size_t)1 << 18)

/* Every known ID's pointer in chunk i := its nearest centroid. When the
 * sample holds every known ID, k-means' final pass already computed that
 * (against the same final centroids), and only the vectors are moved to
 * the ID order. */
static int run_assign(run_t *r, uint32_t i, double inertia)
{
    cqr_phase_t *ph = r->ph;
    const cqr_table_t *t = ph->t;
    const uint32_t c = t->c, w = t->w;
    const float *cent = ph->next->cb[i].param;
    if (r->m == r->n) {
        for (size_t s = 0; s < r->m; s++) {
            size_t j = r->sample[s].row;
            r->assign[j] = r->sassign[s];
            memcpy(r->xa + j * w, r->xs + s * w, w * sizeof(float));
        }
    } else {
        cqr_kmeans_params_t kp = {.threads = t->cfg.cluster_threads,
                                  .cancel = &ph->cancel};
        const double f0 = (i + kmeans_share(r)) / c, f1 = (i + 1.0) / c;
        for (size_t j = 0; j < r->n; j++)
            snap_chunk(t, ph->snap, r->ids[j], i, r->ptrs[j * c + i],
                       r->xa + j * w);
        for (size_t a = 0; a < r->n; a += ASSIGN_SLICE) {
            size_t len = r->n - a < ASSIGN_SLICE ? r->n - a : ASSIGN_SLICE;
            report(&r->pc, "assign", i, f0 + (f1 - f0) * a / r->n, inertia);
            int rc = cqr_kmeans_assign(r->xa + a * w, len, w, w, cent, t->k,
                                       &kp, r->assign + a, NULL);
            if (rc)
                return rc;
        }
    }
    for (size_t j = 0; j < r->n; j++) {
        uint8_t *v = cqr_idmap_find(&ph->next->ids, r->ids[j]);
        assert(v);
        cqr_ptr_set(v, t->pw, i, r->assign[j]);
    }
    return 0;
}

/* B1[:, i] := mean residual per row of a freshly seeded hash; rows no ID
 * hashes to become zero (never 0/0). */
static void run_residual(run_t *r, uint32_t i)
{
    cqr_phase_t *ph = r->ph;
    const cqr_table_t *t = ph->t;
    const uint32_t c = t->c, w = t->w, k = t->k;
    const float *cent = ph->next->cb[i].param;
    ph->next->seed_h[i] = cqr_derive_seed(
        t->cfg.seed, CQR_TAG_RESEED,
        (uint64_t)ph->phase_no * CQR_MAX_CHUNKS + i);
    memset(r->sums, 0, (size_t)k * w * sizeof(double));
    memset(r->counts, 0, (size_t)k * sizeof *r->counts);
    for (size_t j = 0; j < r->n; j++) {
        uint32_t row = cqr_hash_h(t, ph->next, r->ids[j], i);
        const float *x = r->xa + j * w;
        const float *ct = cent + (size_t)r->assign[j] * w;
        double *sr = r->sums + (size_t)row * w;
        for (uint32_t d = 0; d < w; d++)
            sr[d] += (double)x[d] - ct[d];
        r->counts[row]++;
    }
    float *b1 = ph->next->cb[c + i].param;
    for (uint32_t row = 0; row < k; row++) {
        for (uint32_t d = 0; d < w; d++)
            b1[(size_t)row * w + d] =
                r->counts[row] ? (float)(r->sums[(size_t)row * w + d] /
                                         r->counts[row])
                               : 0.0f;
    }
}

/* Chunk i: k-means, assignment, residuals. */
/* 1 if every x[0..n) is finite and |x| <= FLT_MAX / 2. */
static int within_half_max(const float *x, size_t n)
{
    int ok = 1;
    for (size_t j = 0; j < n; j++)
        ok &= fabsf(x[j]) <= FLT_MAX / 2;
    return ok;
}

static int run_chunk(run_t *r, uint32_t i, double *inertia)
{
    const uint32_t c = r->ph->t->c;
    int rc = run_kmeans(r, i, inertia);
    if (rc)
        return rc;
    double t1 = cqr_now();
    rc = run_assign(r, i, *inertia);
    if (rc)
        return rc;
    run_residual(r, i);
    r->ph->res.seconds_assign += cqr_now() - t1;
    /* A phase never publishes a value a lookup could not serve: every
     * new codebook value within FLT_MAX / 2 (so B0 + B1 stays finite),
     * and a finite inertia (k-means' sums overflow first). Else the phase
     * fails and the table keeps its state (issue 14, item 5). */
    const cqr_cbstate_t *nx = r->ph->next;
    const size_t cb = (size_t)r->ph->t->k * r->ph->t->w;
    if (!isfinite(*inertia) || !within_half_max(nx->cb[i].param, cb) ||
        !within_half_max(nx->cb[c + i].param, cb))
        return CQR_ENONFINITE;
    report(&r->pc, "residual", i, (i + 1.0) / c, *inertia);
    return 0;
}

/* The new state: the snapshot's codebooks (B0 and B1 are overwritten
 * chunk by chunk), with their optimizer state unless the config resets
 * it. */
static int run_next_state(cqr_phase_t *ph)
{
    const cqr_table_t *t = ph->t;
    int rc = cqr_cbstate_clone(t, ph->snap, &ph->next);
    if (rc)
        return rc;
    if (t->cfg.reset_optimizer) {
        for (uint32_t b = 0; b < 2 * t->c; b++)
            cqr_rows_reset_state(&ph->next->cb[b]);
    }
    return 0;
}

/* A compacted table's phase: the IDs it assigned go into a static set
 * of the new state (the IDs the replay registers go to its map). */
static int run_static(run_t *r)
{
    cqr_table_t *t = r->ph->t;
    pthread_rwlock_rdlock(&t->lock);
    const int compact = t->compact;
    const uint64_t gen = t->rebuilds + 1;
    pthread_rwlock_unlock(&t->lock);
    if (!compact)
        return 0;
    report(&r->pc, "static", 0, 1.0, r->ph->res.inertia);
    free(r->ids); /* the run's copies: the new map holds everything */
    free(r->ptrs);
    r->ids = NULL;
    r->ptrs = NULL;
    return cqr_state_make_static(t, r->ph->next, gen);
}

int cqr_phase_run(cqr_phase_t *ph, cqr_progress_cb cb, void *ud)
{
    if (!ph || ph->ran || ph->committed)
        return CQR_EINVAL;
    cqr_table_t *t = ph->t;
    const uint32_t c = t->c;
    run_t r = {.ph = ph, .pc = {.cb = cb, .ud = ud, .chunks = c}};

    report(&r.pc, "snapshot", 0, 0.0, -1.0);
    int rc = cqr_table_known_pointers(t, ph->phase_no, &r.ids, &r.ptrs,
                                      &r.stamps, &r.n);
    if (rc)
        goto out;
    ph->res.seconds_snapshot = cqr_now() - ph->t_begin;
    rc = run_next_state(ph);
    if (rc == 0)
        rc = run_sample(&r);
    if (rc)
        goto out;
    ph->res.sample_size = r.m;
    rc = run_prepare(&r);
    if (rc)
        goto out;

    double inertia_sum = 0.0;
    for (uint32_t i = 0; i < c && r.n > 0; i++) {
        double inertia = 0.0;
        rc = atomic_load(&ph->cancel) ? CQR_ECANCELED
                                      : run_chunk(&r, i, &inertia);
        if (rc)
            goto out;
        inertia_sum += inertia;
    }
    ph->res.ids_assigned = r.n;
    ph->res.inertia = c ? inertia_sum / c : 0.0;
    rc = run_static(&r);
    if (rc)
        goto out;

    /* Replay what was pushed meanwhile, so the commit's pause covers only
     * the pushes that arrive from now on. */
    report(&r.pc, "replay", 0, 1.0, ph->res.inertia);
    cqr_table_optim(ph->t, &ph->optim);
    rc = atomic_load(&ph->cancel) ? CQR_ECANCELED : replay_shared(ph);
    if (rc == 0)
        ph->ran = 1;
out:
    run_free(&r);
    return rc;
}

/* The commit's work under the table's exclusive lock (a
 * cqr_phase_finish_cb): the pushes logged since the run's replay. */
static int commit_finish(void *ud)
{
    cqr_phase_t *ph = ud;
    ph->optim = ph->t->cfg.optim; /* exclusive lock held */
    return replay(ph);
}

int cqr_phase_commit(cqr_phase_t *ph)
{
    if (!ph || !ph->ran || ph->committed)
        return CQR_EINVAL;
    if (atomic_load(&ph->cancel))
        return CQR_ECANCELED;
    int rc = cqr_table_phase_commit(ph->t, ph->next, commit_finish, ph,
                                    ph->t_begin, &ph->res);
    if (rc)
        return rc;
    ph->next = NULL; /* the table's live state now */
    ph->committed = 1;
    return 0;
}

void cqr_phase_cancel(cqr_phase_t *ph)
{
    atomic_store(&ph->cancel, 1);
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
    if (!ph->committed)
        cqr_table_phase_end(t, ph);
    cqr_pushlog_destroy(ph->log);
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
