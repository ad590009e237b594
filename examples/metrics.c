/* metrics.c -- log-loss and tie-aware AUC. */
#include "metrics.h"

#include <math.h>
#include <stdlib.h>

double metric_softplus(double x)
{
    return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x));
}

double metric_logloss(const float *z, const float *y, size_t n)
{
    double s = 0;

    if (n == 0)
        return 0;
    /* -log sigmoid(z) = softplus(-z); -log(1 - sigmoid(z)) = softplus(z). */
    for (size_t j = 0; j < n; j++)
        s += y[j] > 0.5f ? metric_softplus(-(double)z[j])
                         : metric_softplus((double)z[j]);
    return s / (double)n;
}

typedef struct scored {
    float z; /* score */
    float y; /* label */
} scored_t;

static int cmp_scored(const void *a, const void *b)
{
    float x = ((const scored_t *)a)->z, w = ((const scored_t *)b)->z;

    return (x > w) - (x < w);
}

double metric_auc(const float *z, const float *y, size_t n)
{
    scored_t *v;
    double npos = 0, nneg = 0, rank_sum = 0;

    if (n == 0)
        return 0.5;
    v = malloc(n * sizeof *v);
    if (!v)
        return -1;
    for (size_t j = 0; j < n; j++) {
        v[j].z = z[j];
        v[j].y = y[j];
    }
    qsort(v, n, sizeof *v, cmp_scored);
    /* Walk runs of equal scores; every row of a run gets the run's mean
     * rank (1-based). */
    for (size_t a = 0; a < n;) {
        size_t b = a;
        double pos_in_run = 0, avg_rank;

        while (b < n && v[b].z == v[a].z)
            b++;
        avg_rank = ((double)a + 1 + (double)b) / 2.0;
        for (size_t j = a; j < b; j++)
            pos_in_run += v[j].y > 0.5f;
        rank_sum += pos_in_run * avg_rank;
        npos += pos_in_run;
        nneg += (double)(b - a) - pos_in_run;
        a = b;
    }
    free(v);
    if (npos == 0 || nneg == 0)
        return 0.5;
    return (rank_sum - npos * (npos + 1) / 2.0) / (npos * nneg);
}
