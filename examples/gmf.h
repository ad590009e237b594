/* gmf.h -- the GMF model's math: p = sigmoid(<u, i>), no biases, BCE.
 *
 * The trainer looks up the distinct users and items of a batch, calls
 * gmf_batch to get the logits, the loss and the gradients with respect to
 * those looked-up rows, and pushes the gradients. Kept apart from the
 * network code so a test can check it against finite differences.
 *
 * Layout: U is nu x dim (row s = the embedding of the s-th distinct user
 * of the batch), I is ni x dim; uslot[j] and islot[j] say which rows the
 * batch's row j uses. Outputs gU and gI have the shapes of U and I.
 */
#ifndef ML_GMF_H
#define ML_GMF_H

#include <stddef.h>
#include <stdint.h>

/* <a, b> over dim floats, accumulated in double. */
double gmf_dot(const float *a, const float *b, uint32_t dim);

/* Forward and backward of the MEAN BCE over the n rows of the batch:
 * writes z[j] = <U[uslot[j]], I[islot[j]]> (if z is non-NULL), returns the
 * mean BCE, and writes into gU and gI (if non-NULL; they are zeroed first)
 * the gradient of the mean loss with respect to each row of U and I: a
 * row used by several batch rows gets the sum of their contributions,
 * dL/dz_j = (sigmoid(z_j) - y_j) / n times the other side's row. */
double gmf_batch(const float *U, const float *I, uint32_t dim,
                 const uint32_t *uslot, const uint32_t *islot,
                 const float *y, size_t n, size_t nu, size_t ni, float *z,
                 float *gU, float *gI);

#endif
