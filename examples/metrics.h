/* metrics.h -- validation metrics of the GMF trainer.
 *
 * Both take scores as logits (z, with p = sigmoid(z)) so the log-loss is
 * computed without rounding p to 0 or 1. Labels are 0 or 1.
 * Neither function allocates except metric_auc (a sort buffer); both are
 * thread-safe.
 */
#ifndef ML_METRICS_H
#define ML_METRICS_H

#include <stddef.h>

/* log(1 + exp(x)) without overflow. */
double metric_softplus(double x);

/* Mean binary cross-entropy of sigmoid(z[j]) against y[j] over n > 0
 * rows: the true mean, -mean(y log p + (1-y) log(1-p)). */
double metric_logloss(const float *z, const float *y, size_t n);

/* Exact ROC AUC, tie-aware: ranks by score with tied scores given their
 * average rank (the Mann-Whitney statistic), so AUC = P(score of a random
 * positive > score of a random negative) + P(tie) / 2. Ranking by z or by
 * sigmoid(z) is the same except where float rounding of sigmoid makes
 * new ties; we rank z. Returns 0.5 when all labels are equal (undefined
 * AUC), and -1 when out of memory. */
double metric_auc(const float *z, const float *y, size_t n);

#endif
