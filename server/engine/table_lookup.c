/* table_lookup.c -- lookups: plain and pooled, every kind.
 *
 * A lookup takes the table's lock shared, never grows the table and never
 * waits for other lookups; rows are copied with their seqlocks (rows.h).
 * Large lookups are split by ID ranges over the table's helpers (par.h).
 */
#include <pthread.h>
#include <string.h>

#include "scratch.h"
#include "table_impl.h"

/* Full tables: a three-stage pipeline over groups of CQR_LOOKUP_GROUP IDs.
 * While group g's rows are copied, group g+1's map values are read and
 * its rows requested, and group g+2's map slots requested: every miss to
 * memory is in flight a whole group before it is needed. */
static void full_lookup(const cqr_table_t *t, const uint64_t *ids, size_t n,
                        float *out)
{
    enum { G = CQR_LOOKUP_GROUP };
    const uint32_t dim = t->cfg.dim;
    int64_t rows[2][G];
    const size_t ngroups = (n + G - 1) / G;
    for (size_t k = 0; k < 2 * G && k < n; k++)
        cqr_idmap_prefetch(&t->rowmap, ids[k]);
    for (size_t g = 0; g <= ngroups; g++) {
        /* Stage 2 for group g: find rows, request them. */
        if (g < ngroups) {
            size_t base = g * G;
            size_t m = n - base < G ? n - base : G;
            int64_t *r = rows[g & 1];
            for (size_t j = 0; j < m; j++) {
                if (base + j + 2 * G < n)
                    cqr_idmap_prefetch(&t->rowmap, ids[base + j + 2 * G]);
                uint32_t row, local = 0;
                r[j] = -1;
                if (cqr_full_find(t, ids[base + j], &row)) {
                    r[j] = row;
                    cqr_rows_prefetch(cqr_full_block(t, row, &local), local);
                }
            }
        }
        /* Stage 3 for group g-1: copy its rows. */
        if (g > 0) {
            size_t base = (g - 1) * G;
            size_t m = n - base < G ? n - base : G;
            const int64_t *r = rows[(g - 1) & 1];
            for (size_t j = 0; j < m; j++) {
                float *o = out + (base + j) * dim;
                if (r[j] >= 0) {
                    uint32_t local;
                    const cqr_rows_t *blk =
                        cqr_full_block(t, (uint32_t)r[j], &local);
                    cqr_rows_read(blk, local, o);
                } else
                    cqr_full_init_row(t, ids[base + j], o);
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
    for (size_t j = 0; cqr && j < n && j < CQR_LOOKUP_GROUP; j++)
        cqr_idmap_prefetch(&st->ids, ids[j]);
    for (size_t j = 0; j < n; j++) {
        if (cqr && j + CQR_LOOKUP_GROUP < n)
            cqr_idmap_prefetch(&st->ids, ids[j + CQR_LOOKUP_GROUP]);
        float *o = out + j * dim;
        cqr_cb_pointers(t, st, ids[j], p, h);
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

typedef struct lookup_job {
    cqr_table_t *t;
    const uint64_t *ids;
    float *out;
    size_t n;
    unsigned parts;
} lookup_job_t;

static void lookup_part(void *arg, unsigned i)
{
    lookup_job_t *j = arg;
    size_t b, e;
    cqr_part_range(j->n, j->parts, i, &b, &e);
    lookup_locked(j->t, j->ids + b, e - b,
                  j->out + b * (size_t)j->t->cfg.dim);
}

int cqr_table_lookup(cqr_table_t *t, const uint64_t *ids, size_t n,
                     float *out)
{
    if (!t || (n && (!ids || !out)))
        return CQR_EINVAL;
    pthread_rwlock_rdlock(&t->lock);
    unsigned parts = cqr_range_parts(t, n);
    if (parts) {
        lookup_job_t j = {t, ids, out, n, parts};
        cqr_par_run(t->par, j.parts, lookup_part, &j);
    } else
        lookup_locked(t, ids, n, out);
    pthread_rwlock_unlock(&t->lock);
    __atomic_fetch_add(&t->n_lookups, n, __ATOMIC_RELAXED);
    return 0;
}

int cqr_table_lookup_pooled(cqr_table_t *t, const uint64_t *ids, size_t n,
                            const uint32_t *offsets, size_t nbags,
                            cqr_pooling_t pool, float *out)
{
    if (!t || (n && !ids) || (nbags && !out) || (unsigned)pool > CQR_POOL_MEAN)
        return CQR_EINVAL;
    int rc = cqr_bags_check(offsets, nbags, n);
    if (rc)
        return rc;
    if (nbags == 0 && n > 0)
        return CQR_EINVAL;
    const uint32_t dim = t->cfg.dim;
    float *rows = cqr_scratch(CQR_SCRATCH_POOL_ROWS,
                              (n ? n : 1) * dim * sizeof(float));
    if (!rows)
        return CQR_ENOMEM;
    rc = cqr_table_lookup(t, ids, n, rows);
    if (rc)
        return rc;
    for (size_t b = 0; b < nbags; b++) {
        float *o = out + b * dim;
        memset(o, 0, dim * sizeof(float));
        size_t lo = offsets[b], hi = cqr_bag_end(offsets, nbags, n, b);
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
