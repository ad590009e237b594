/* rows.h -- a block of parameter rows with their optimizer state.
 *
 * The unit of update: a row of `w` floats (a full table's row, or one
 * chunk of one codebook row). Each row has a sequence counter that makes
 * it a seqlock: a writer (one optimizer step) makes the counter odd,
 * stores the new floats and makes it even again; a reader copies the row
 * and retries if the counter moved. Readers therefore never block each
 * other or writers, always see a whole row from one step, and the floats
 * are accessed only through relaxed atomics, so there is no data race.
 *
 * The optimizer state (Adagrad accumulator, Adam moments and step) is
 * touched only by the writer holding the row, or by a caller that holds
 * its table exclusively (digest, snapshot).
 */
#ifndef CQR_ROWS_H
#define CQR_ROWS_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

typedef struct cqr_rows {
    uint32_t n;      /* rows */
    uint32_t w;      /* floats per row */
    uint32_t sw;     /* optimizer-state floats per row */
    cqr_optim_kind_t opt; /* optimizer the state is laid out for */
    float *param;    /* n x w parameters */
    float *state;    /* n x sw: Adagrad [acc], Adam [m(w) v(w)]; NULL if
                        sw == 0 */
    uint32_t *step;  /* n Adam step counts; NULL for other optimizers */
    uint32_t *seq;   /* n seqlock counters, odd while a writer holds it */
} cqr_rows_t;

/* Floats of optimizer state per row of width w. */
uint32_t cqr_optim_state_floats(cqr_optim_kind_t opt, uint32_t w);

/* Allocates n zeroed rows. CQR_ENOMEM on failure (r left empty). */
int cqr_rows_init(cqr_rows_t *r, uint32_t n, uint32_t w, cqr_optim_kind_t opt);
void cqr_rows_free(cqr_rows_t *r);

/* Deep copy of src's parameters and state into a fresh dst. Caller
 * excludes writers of src (holds its table exclusively). */
int cqr_rows_clone(cqr_rows_t *dst, const cqr_rows_t *src);

/* Zeroes the optimizer state (not the parameters). Exclusive access. */
void cqr_rows_reset_state(cqr_rows_t *r);

/* Bytes of parameters / optimizer state (state includes step + seq). */
uint64_t cqr_rows_param_bytes(const cqr_rows_t *r);
uint64_t cqr_rows_state_bytes(const cqr_rows_t *r);

/* Starts loading row `row`'s parameters and counter (a hint). */
static inline void cqr_rows_prefetch(const cqr_rows_t *r, uint32_t row)
{
    const char *p = (const char *)(r->param + (size_t)row * r->w);
    for (size_t b = 0; b < (size_t)r->w * sizeof(float); b += 64)
        __builtin_prefetch(p + b);
    __builtin_prefetch(&r->seq[row]);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* see cqr_idmap_prefetch */
}

/* Starts loading everything an optimizer step of `row` touches. */
static inline void cqr_rows_prefetch_step(const cqr_rows_t *r, uint32_t row)
{
    cqr_rows_prefetch(r, row);
    if (r->sw) {
        const char *s = (const char *)(r->state + (size_t)row * r->sw);
        for (size_t b = 0; b < (size_t)r->sw * sizeof(float); b += 64)
            __builtin_prefetch(s + b, 1);
    }
    if (r->step)
        __builtin_prefetch(&r->step[row], 1);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Copies row `row` to out[0..w): a consistent row, lock-free. */
void cqr_rows_read(const cqr_rows_t *r, uint32_t row, float *out);

/* Adds row `row` to out[0..w): reads it consistently first. */
void cqr_rows_read_add(const cqr_rows_t *r, uint32_t row, float *out);

/* Stores `val` as row `row`'s parameters without touching state; for
 * initialisation by a caller with exclusive access. */
void cqr_rows_set(cqr_rows_t *r, uint32_t row, const float *val);

/* One optimizer step of row `row` with gradient g[0..w) (already summed
 * over the push). Holds the row's seqlock for the step. */
void cqr_rows_step(cqr_rows_t *r, uint32_t row, const float *g,
                   const cqr_optim_config_t *o);

#endif
