/* optim.h -- the sparse optimizers' kinds and parameters.
 *
 * The types only, so that rows.h (which steps rows with them) and table.h
 * (whose config carries them) share them without rows.h including the
 * table's API. The steps themselves are cqr_rows_step (rows.h); the names
 * ("sgd", "adagrad", "adam") are cqr_optim_name/cqr_optim_parse (table.h).
 *
 * Threading, ownership, errors: plain values, no functions.
 */
#ifndef CQR_OPTIM_H
#define CQR_OPTIM_H

typedef enum cqr_optim_kind {
    CQR_OPT_SGD = 0,
    CQR_OPT_ADAGRAD = 1, /* row-wise: one accumulator per row */
    CQR_OPT_ADAM = 2     /* lazy Adam, per-row step count, bias corrected,
                            decoupled weight decay (AdamW) */
} cqr_optim_kind_t;

typedef struct cqr_optim_config {
    cqr_optim_kind_t kind; /* which optimizer */
    float lr;              /* learning rate, > 0 */
    float beta1;           /* Adam first-moment decay, [0, 1) */
    float beta2;           /* Adam second-moment decay, [0, 1) */
    float eps;             /* Adam/Adagrad denominator term, > 0 */
    float weight_decay;    /* decoupled decay of touched rows, >= 0 */
} cqr_optim_config_t;

#endif
