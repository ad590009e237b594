/* gmf.c -- GMF forward and backward. */
#include "gmf.h"

#include <math.h>
#include <string.h>

#include "metrics.h"

double gmf_dot(const float *a, const float *b, uint32_t dim)
{
    double s = 0;

    for (uint32_t k = 0; k < dim; k++)
        s += (double)a[k] * b[k];
    return s;
}

double gmf_batch(const float *U, const float *I, uint32_t dim,
                 const uint32_t *uslot, const uint32_t *islot,
                 const float *y, size_t n, size_t nu, size_t ni, float *z,
                 float *gU, float *gI)
{
    double loss = 0;

    if (gU)
        memset(gU, 0, nu * dim * sizeof *gU);
    if (gI)
        memset(gI, 0, ni * dim * sizeof *gI);
    if (n == 0)
        return 0;
    for (size_t j = 0; j < n; j++) {
        const float *u = U + (size_t)uslot[j] * dim;
        const float *it = I + (size_t)islot[j] * dim;
        double zj = gmf_dot(u, it, dim);
        double p = 1.0 / (1.0 + exp(-zj));
        float d = (float)((p - y[j]) / (double)n);

        if (z)
            z[j] = (float)zj;
        loss += y[j] > 0.5f ? metric_softplus(-zj) : metric_softplus(zj);
        if (gU) {
            float *g = gU + (size_t)uslot[j] * dim;

            for (uint32_t k = 0; k < dim; k++)
                g[k] += d * it[k];
        }
        if (gI) {
            float *g = gI + (size_t)islot[j] * dim;

            for (uint32_t k = 0; k < dim; k++)
                g[k] += d * u[k];
        }
    }
    return loss / (double)n;
}
