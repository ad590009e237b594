/* rows.h -- a block of parameter rows with their optimizer state.
 *
 * The unit of update: a row of `w` floats (a full table's row, or one
 * chunk of one codebook row). Each row has a sequence counter that makes
 * it a seqlock: a writer (one optimizer step) makes the counter odd,
 * stores the new floats and makes it even again; a reader copies the row
 * and retries if the counter moved. Readers therefore never block each
 * other or writers, and always see a whole row from one step.
 *
 * How the floats are copied (x86-64): a reader loads them with 16-byte
 * vector moves written in inline assembly (not C accesses, so there is no
 * data race in C's sense for the compiler to exploit) between the
 * counter's acquire load and an acquire fence, as in the Linux kernel's
 * seqlock and Boehm's "Can seqlocks get along with programming language
 * memory models?"; a writer holds the counter odd, fences, and steps the
 * row in place with plain C code. A reader racing a writer may copy a torn
 * row, which the counter check then discards. ThreadSanitizer cannot model
 * the fences, and other architectures get no assembly, so TSan builds and
 * non-x86 builds copy the rows as relaxed/acquire atomics instead
 * (CQR_ROWS_ATOMIC): race-free by the letter of C11 and about half as
 * fast (a cqr lookup was 1.8x slower that way).
 *
 * The optimizer state (Adagrad accumulator, Adam moments and step) is
 * touched only by the writer holding the row, or by a caller that holds
 * its table exclusively (digest, snapshot).
 *
 * Ownership: a cqr_rows_t is a value owned by its table (or a phase's
 * private state); init allocates its arrays, free releases them.
 * Errors: only init and clone fail (CQR_ENOMEM, nothing allocated then);
 * a wrong row or optimizer is a programming error and asserts.
 */
#ifndef CQR_ROWS_H
#define CQR_ROWS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "optim.h"

typedef struct cqr_rows {
    uint32_t n;      /* rows */
    uint32_t w;      /* floats per row */
    uint32_t sw;     /* optimizer-state floats per row */
    cqr_optim_kind_t opt; /* optimizer the state is laid out for */
    float *param;    /* n x w parameters */
    float *state;    /* n x sw: Adagrad [acc], Adam [m(w) v(w)]; NULL if
                        sw == 0 */
    uint32_t *step;  /* n Adam step counts; NULL for other optimizers */
    uint32_t *seq;   /* n seqlock counters, odd while a writer holds it;
                        NULL when the owner keeps each row's counter
                        elsewhere (CQR_ROWS_OWN_SEQ: a full table keeps it
                        in the row's map slot, one cache line fewer per
                        lookup) and uses the *_at functions */
} cqr_rows_t;

/* cqr_rows_init_flags: the rows have no counters of their own. */
#define CQR_ROWS_OWN_SEQ 1u

/* Floats of optimizer state per row of width w. */
uint32_t cqr_optim_state_floats(cqr_optim_kind_t opt, uint32_t w);

/* Allocates n zeroed rows. CQR_ENOMEM on failure (r left empty). */
int cqr_rows_init(cqr_rows_t *r, uint32_t n, uint32_t w, cqr_optim_kind_t opt);
/* The same, with CQR_ROWS_* flags. */
int cqr_rows_init_flags(cqr_rows_t *r, uint32_t n, uint32_t w,
                        cqr_optim_kind_t opt, unsigned flags);
void cqr_rows_free(cqr_rows_t *r);

/* Deep copy of src's parameters and state into a fresh dst. Caller
 * excludes writers of src (holds its table exclusively). */
int cqr_rows_clone(cqr_rows_t *dst, const cqr_rows_t *src);

/* Zeroes the optimizer state (not the parameters). Exclusive access. */
void cqr_rows_reset_state(cqr_rows_t *r);

/* Bytes of parameters / optimizer state (state includes step + seq, if
 * the rows have their own counters). */
uint64_t cqr_rows_param_bytes(const cqr_rows_t *r);
uint64_t cqr_rows_state_bytes(const cqr_rows_t *r);

/* Starts loading row `row`'s parameters and counter (a hint). */
static inline void cqr_rows_prefetch(const cqr_rows_t *r, uint32_t row)
{
    const char *p = (const char *)(r->param + (size_t)row * r->w);
    for (size_t b = 0; b < (size_t)r->w * sizeof(float); b += 64)
        __builtin_prefetch(p + b);
    if (r->seq)
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

#if defined(__SANITIZE_THREAD__) || !defined(__x86_64__)
#define CQR_ROWS_ATOMIC 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CQR_ROWS_ATOMIC 1
#endif
#endif

/* Out-of-line parts of the readers: the atomic copies of TSan builds and
 * the back-off while a writer holds a row. */
void cqr_rows_read_atomic(const cqr_rows_t *r, uint32_t row,
                          const uint32_t *seq, float *out);
void cqr_rows_read_add_atomic(const cqr_rows_t *r, uint32_t row, float *out);
void cqr_rows_backoff(unsigned *spins);

/* Four floats at any float alignment; GCC and clang vector extension
 * (SSE moves on x86-64, wider with -march). */
typedef float cqr_f4 __attribute__((vector_size(16)));

static inline cqr_f4 cqr_f4_load(const float *p)
{
    cqr_f4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void cqr_f4_store(float *p, cqr_f4 v)
{
    memcpy(p, &v, sizeof v);
}

#ifndef CQR_ROWS_ATOMIC
/* Loads of floats that a writer may be storing at the same time. They are
 * made in inline assembly, so that they are not C accesses: the compiler
 * can neither assume them race-free nor merge, repeat or tear them in C's
 * name; the hardware gives whatever bytes are there, and the seqlock's
 * re-check discards a torn copy (the kernel's seqlock, and the "atomic
 * memcpy" of C++ proposal P1478, do the same). */
static inline cqr_f4 cqr_f4_load_shared(const float *p)
{
    cqr_f4 v;
    __asm__("movups %1, %0"
            : "=x"(v)
            : "m"(*(const struct { char b[16]; } *)(const void *)p));
    return v;
}

static inline float cqr_f1_load_shared(const float *p)
{
    float v;
    __asm__("movss %1, %0" : "=x"(v) : "m"(*p));
    return v;
}

/* dst = a (+ b when b), a and b being shared rows: the body of a
 * seqlock read. */
static inline void cqr_rows_copy_plain(float *dst, const float *a,
                                       const float *b, uint32_t w)
{
    uint32_t j = 0;
    if (b) {
        for (; j + 4 <= w; j += 4)
            cqr_f4_store(dst + j, cqr_f4_load_shared(a + j) +
                                      cqr_f4_load_shared(b + j));
        for (; j < w; j++)
            dst[j] = cqr_f1_load_shared(a + j) + cqr_f1_load_shared(b + j);
    } else {
        for (; j + 4 <= w; j += 4)
            cqr_f4_store(dst + j, cqr_f4_load_shared(a + j));
        for (; j < w; j++)
            dst[j] = cqr_f1_load_shared(a + j);
    }
}
#endif

/* Copies row `row`, whose counter is *seq, to out[0..w): a consistent
 * row, lock-free. */
static inline void cqr_rows_read_at(const cqr_rows_t *r, uint32_t row,
                                    const uint32_t *seq, float *out)
{
#ifdef CQR_ROWS_ATOMIC
    cqr_rows_read_atomic(r, row, seq, out);
#else
    const float *p = r->param + (size_t)row * r->w;
    for (unsigned spins = 0;; cqr_rows_backoff(&spins)) {
        uint32_t s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (s & 1)
            continue;
        cqr_rows_copy_plain(out, p, NULL, r->w);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seq, __ATOMIC_RELAXED) == s)
            return;
    }
#endif
}

/* Copies row `row` (of rows with their own counters) to out[0..w). */
static inline void cqr_rows_read(const cqr_rows_t *r, uint32_t row,
                                 float *out)
{
    cqr_rows_read_at(r, row, &r->seq[row], out);
}

/* out[0..w) = row ra of a + row rb of b, each row consistent (the two
 * rows may come from different instants, as two separate reads would).
 * a and b have the same width. */
static inline void cqr_rows_read_sum(const cqr_rows_t *a, uint32_t ra,
                                     const cqr_rows_t *b, uint32_t rb,
                                     float *out)
{
#ifdef CQR_ROWS_ATOMIC
    cqr_rows_read_atomic(a, ra, &a->seq[ra], out);
    cqr_rows_read_add_atomic(b, rb, out);
#else
    const float *pa = a->param + (size_t)ra * a->w;
    const float *pb = b->param + (size_t)rb * b->w;
    const uint32_t *qa = &a->seq[ra], *qb = &b->seq[rb];
    for (unsigned spins = 0;; cqr_rows_backoff(&spins)) {
        uint32_t sa = __atomic_load_n(qa, __ATOMIC_ACQUIRE);
        uint32_t sb = __atomic_load_n(qb, __ATOMIC_ACQUIRE);
        if ((sa | sb) & 1)
            continue;
        cqr_rows_copy_plain(out, pa, pb, a->w);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(qa, __ATOMIC_RELAXED) == sa &&
            __atomic_load_n(qb, __ATOMIC_RELAXED) == sb)
            return;
    }
#endif
}

/* One optimizer step of row `row` with gradient g[0..w) (already summed
 * over the push). Holds the row's seqlock for the step. */
void cqr_rows_step(cqr_rows_t *r, uint32_t row, const float *g,
                   const cqr_optim_config_t *o);
/* The same for a row whose counter is *seq. */
void cqr_rows_step_at(cqr_rows_t *r, uint32_t row, uint32_t *seq,
                      const float *g, const cqr_optim_config_t *o);

/* The bodies of an Adam row step: cqr_rows_step runs the AVX2 one where
 * the CPU has AVX2, the plain one elsewhere, and both must give the same
 * bits (the tests check it through this function). */
typedef enum cqr_adam_body {
    CQR_ADAM_BODY_PLAIN = 0,
    CQR_ADAM_BODY_AVX2 = 1
} cqr_adam_body_t;

/* Runs one Adam body over w floats: m = b1 m + (1 - b1) g, v = b2 v +
 * (1 - b2) g^2, p -= step_size m / (sqrt(v) / bc2_sqrt + eps).
 * CQR_EUNSUPPORTED if this build or CPU lacks that body (nothing is
 * written then), else 0. */
int cqr_rows_adam_body(cqr_adam_body_t body, float *p, float *m, float *v,
                       const float *g, uint32_t w, float b1, float b2,
                       float step_size, float bc2_sqrt, float eps);

#endif
