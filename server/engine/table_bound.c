/* table_bound.c -- bounds on a table's stored values, so that a push
 * whose step would make one of them non-finite is refused whole (issue
 * 14, item 5) without a check per stored value on the common path.
 *
 * Each table keeps upper bounds on |parameter| (vb), on the Adagrad
 * accumulator (vb_acc) and on |Adam's first moment| (vb_m). A push part
 * of n rows of gradients with largest magnitude gmax changes a row by at
 * most a step bound that needs nothing but gmax, n and the optimizer's
 * settings:
 *   every summed gradient  |g| <= a = n * gmax (rows hit repeatedly sum)
 *   SGD      lr * a
 *   Adagrad  lr * |g_j| / (sqrt(acc) + eps) with acc >= mean(g^2):
 *            <= lr * sqrt(w) (1% for rounding) + lr * 1e-18 / eps (acc
 *            may round to 0 for gradients below 1e-19)
 *   Adam     lr / (1 - beta1^t) * |m| / (sqrt(v') + eps)
 *            <= lr * max(vb_m, a) / ((1 - beta1) * eps)
 * and the optimizer state by: Adagrad acc += mean(g^2) <= a^2; Adam's v is
 * a convex mix of g^2, finite while a^2 is. Weight decay only shrinks
 * (lr * weight_decay < 1). The push reserves its step (vb += step, ...)
 * before it applies anything, under the table's gate held shared; when a
 * bound would pass its limit, the caller rescans the stored values with
 * the gate and lock held exclusively (no push in flight, so the bounds
 * become exact maxima) and tries once more; a push that still does not
 * fit is refused with CQR_ENONFINITE. Training with sane gradients never
 * comes near the limits (a step bound of 1 a push takes 1e38 pushes), so
 * the cost is one mutex and a few flops per push part.
 *
 * Limits: parameters |x| <= FLT_MAX for full tables, FLT_MAX / 2 for the
 * codebook kinds (a cqr lookup adds two codebook rows); optimizer state
 * <= FLT_MAX / 2.
 *
 * Threading: reserve and forget under vb_mu; rescan takes the gate and
 * the lock exclusively (in that order, as everywhere).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>

#include "err.h"
#include "table_impl.h"

static double param_limit(const cqr_table_t *t)
{
    return t->cfg.kind == CQR_KIND_FULL ? (double)FLT_MAX
                                        : (double)FLT_MAX / 2;
}

#define STATE_LIMIT ((double)FLT_MAX / 2)

/* The largest change one step of a summed gradient of magnitude <= a can
 * make to a parameter (see the file comment). vb_mu held. */
static double step_bound(const cqr_table_t *t, double a)
{
    const cqr_optim_config_t *o = &t->cfg.optim;
    const double w = t->cfg.kind == CQR_KIND_FULL ? t->cfg.dim : t->w;
    switch (o->kind) {
    case CQR_OPT_SGD:
        return o->lr * a;
    case CQR_OPT_ADAGRAD:
        return o->lr * (1.01 * sqrt(w) + 1e-18 / o->eps);
    case CQR_OPT_ADAM: {
        double m = a > t->vb_m ? a : t->vb_m;
        return o->lr * m / ((1.0 - o->beta1) * o->eps);
    }
    }
    return INFINITY;
}

int cqr_bound_reserve(cqr_table_t *t, float gmax, size_t n)
{
    const double a = (double)n * gmax;
    const double a2 = a * a;
    const cqr_optim_kind_t opt = t->cfg.optim.kind;
    /* A state that overflows whatever is stored (v = g^2 on a fresh
     * row): no rescan helps. */
    if (opt != CQR_OPT_SGD && !(a2 <= STATE_LIMIT))
        return CQR_ENONFINITE;
    int rc = 0;
    pthread_mutex_lock(&t->vb_mu);
    const double step = step_bound(t, a);
    if (t->vb < 0.0) {
        rc = 2;
    } else if (!(t->vb + step <= param_limit(t)) ||
        (opt == CQR_OPT_ADAGRAD && !(t->vb_acc + a2 <= STATE_LIMIT))) {
        rc = 1;
    } else {
        t->vb += step;
        if (opt == CQR_OPT_ADAGRAD)
            t->vb_acc += a2;
        if (opt == CQR_OPT_ADAM && a > t->vb_m)
            t->vb_m = a;
    }
    pthread_mutex_unlock(&t->vb_mu);
    return rc;
}

/* Largest |x| of x[0..n). */
static double absmax(const float *x, size_t n)
{
    float m = 0.0f;
    for (size_t j = 0; j < n; j++) {
        float v = fabsf(x[j]);
        m = v > m ? v : m;
    }
    return m;
}

/* Folds one block of rows into the maxima (parameters, the Adagrad
 * accumulators, Adam's first moments). */
static void scan_rows(const cqr_rows_t *r, double *p, double *acc,
                      double *m)
{
    double x = absmax(r->param, (size_t)r->n * r->w);
    *p = x > *p ? x : *p;
    for (uint32_t row = 0; r->sw && row < r->n; row++) {
        const float *s = r->state + (size_t)row * r->sw;
        if (r->opt == CQR_OPT_ADAGRAD) {
            *acc = s[0] > *acc ? s[0] : *acc;
        } else if (r->opt == CQR_OPT_ADAM) {
            double y = absmax(s, r->w);
            *m = y > *m ? y : *m;
        }
    }
}

void cqr_bound_rescan(cqr_table_t *t)
{
    pthread_rwlock_wrlock(&t->gate);
    pthread_rwlock_wrlock(&t->lock);
    double p = 0.0, acc = 0.0, m = 0.0;
    if (t->cfg.kind == CQR_KIND_FULL) {
        for (size_t b = 0; b < t->nblocks; b++)
            scan_rows(&t->blocks[b], &p, &acc, &m);
    } else if (t->st) {
        for (uint32_t b = 0; b < t->ncb * t->c; b++)
            scan_rows(&t->st->cb[b], &p, &acc, &m);
    }
    pthread_mutex_lock(&t->vb_mu);
    t->vb = p;
    t->vb_acc = acc;
    t->vb_m = m;
    pthread_mutex_unlock(&t->vb_mu);
    pthread_rwlock_unlock(&t->lock);
    pthread_rwlock_unlock(&t->gate);
}

void cqr_bound_forget(cqr_table_t *t)
{
    pthread_mutex_lock(&t->vb_mu);
    t->vb = -1.0;
    pthread_mutex_unlock(&t->vb_mu);
}
