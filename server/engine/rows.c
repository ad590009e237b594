/* rows.c -- parameter rows, seqlocks and the three sparse optimizers. */
#include "rows.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "bigmem.h"
#include "err.h"

#define CQR_ROWS_STACK 1024 /* floats; rows wider than this use the heap */

static void adam_tab_ready(void);

uint32_t cqr_optim_state_floats(cqr_optim_kind_t opt, uint32_t w)
{
    switch (opt) {
    case CQR_OPT_SGD: return 0;
    case CQR_OPT_ADAGRAD: return 1;
    case CQR_OPT_ADAM: return 2 * w;
    }
    assert(!"unknown optimizer");
    return 0;
}

int cqr_rows_init(cqr_rows_t *r, uint32_t n, uint32_t w, cqr_optim_kind_t opt)
{
    return cqr_rows_init_flags(r, n, w, opt, 0);
}

int cqr_rows_init_flags(cqr_rows_t *r, uint32_t n, uint32_t w,
                        cqr_optim_kind_t opt, unsigned flags)
{
    memset(r, 0, sizeof *r);
    assert(w > 0);
    r->n = n;
    r->w = w;
    r->opt = opt;
    r->sw = cqr_optim_state_floats(opt, w);
    if (opt == CQR_OPT_ADAM)
        adam_tab_ready();
    size_t nn = n ? n : 1;
    r->param = cqr_big_calloc(nn * (size_t)w, sizeof(float));
    if (!(flags & CQR_ROWS_OWN_SEQ))
        r->seq = calloc(nn, sizeof(uint32_t));
    if (r->sw)
        r->state = cqr_big_calloc(nn * (size_t)r->sw, sizeof(float));
    if (opt == CQR_OPT_ADAM)
        r->step = calloc(nn, sizeof(uint32_t));
    if (!r->param || (!(flags & CQR_ROWS_OWN_SEQ) && !r->seq) ||
        (r->sw && !r->state) ||
        (opt == CQR_OPT_ADAM && !r->step)) {
        cqr_rows_free(r);
        return CQR_ENOMEM;
    }
    return 0;
}

void cqr_rows_free(cqr_rows_t *r)
{
    size_t nn = r->n ? r->n : 1;
    cqr_big_free(r->param, nn * (size_t)r->w, sizeof(float));
    cqr_big_free(r->state, nn * (size_t)r->sw, sizeof(float));
    free(r->step);
    free(r->seq);
    memset(r, 0, sizeof *r);
}

int cqr_rows_clone(cqr_rows_t *dst, const cqr_rows_t *src)
{
    int rc = cqr_rows_init_flags(dst, src->n, src->w, src->opt,
                                 src->seq ? 0 : CQR_ROWS_OWN_SEQ);
    if (rc)
        return rc;
    memcpy(dst->param, src->param, (size_t)src->n * src->w * sizeof(float));
    if (src->sw)
        memcpy(dst->state, src->state,
               (size_t)src->n * src->sw * sizeof(float));
    if (src->step)
        memcpy(dst->step, src->step, (size_t)src->n * sizeof(uint32_t));
    return 0;
}

void cqr_rows_reset_state(cqr_rows_t *r)
{
    if (r->sw)
        memset(r->state, 0, (size_t)r->n * r->sw * sizeof(float));
    if (r->step)
        memset(r->step, 0, (size_t)r->n * sizeof(uint32_t));
}

uint64_t cqr_rows_param_bytes(const cqr_rows_t *r)
{
    return (uint64_t)r->n * r->w * sizeof(float);
}

uint64_t cqr_rows_state_bytes(const cqr_rows_t *r)
{
    return (uint64_t)r->n * r->sw * sizeof(float) +
           (r->step ? (uint64_t)r->n * sizeof(uint32_t) : 0) +
           (r->seq ? (uint64_t)r->n * sizeof(uint32_t) : 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void cqr_rows_backoff(unsigned *spins)
{
    if (++*spins > 64)
        sched_yield();
    else
        cpu_relax();
}

/* ---- TSan builds: the floats as atomics --------------------------------
 *
 * Row floats are accessed as 64-bit atomic words when the width is even
 * (rows then start 8-byte aligned in their calloc'd block), else as 32-bit
 * atomic floats. Readers and writers of a block use the same width, so a
 * float is only ever accessed by atomics of one size. */
static inline int row_wide(const cqr_rows_t *r)
{
    return !(r->w & 1);
}

static inline void row_load_atomic(const cqr_rows_t *r, const float *p,
                                   float *out, int order)
{
    if (row_wide(r)) {
        /* out may be only float-aligned: memcpy each word into it. */
        const uint64_t *q = (const uint64_t *)(const void *)p;
        for (uint32_t j = 0; j < r->w / 2; j++) {
            uint64_t v = __atomic_load_n(&q[j], order);
            memcpy(out + 2 * j, &v, sizeof v);
        }
    } else {
        for (uint32_t j = 0; j < r->w; j++)
            __atomic_load(&p[j], &out[j], order);
    }
}

#ifdef CQR_ROWS_ATOMIC
static inline void row_store_atomic(const cqr_rows_t *r, float *p,
                                    const float *val)
{
    if (row_wide(r)) {
        uint64_t *q = (uint64_t *)(void *)p;
        for (uint32_t j = 0; j < r->w / 2; j++) {
            uint64_t v;
            memcpy(&v, val + 2 * j, sizeof v);
            __atomic_store_n(&q[j], v, __ATOMIC_RELEASE);
        }
    } else {
        /* __atomic_store's value argument is not const-qualified. */
        for (uint32_t j = 0; j < r->w; j++) {
            float v = val[j];
            __atomic_store(&p[j], &v, __ATOMIC_RELEASE);
        }
    }
}
#endif

/* Writers store the words with release and we load them with acquire: a
 * reader that sees any word of a step in progress is then guaranteed to
 * see the odd counter that step set, so the re-check catches it. No
 * standalone fences, which ThreadSanitizer cannot model. */
static void row_copy_atomic(const cqr_rows_t *r, uint32_t row,
                            const uint32_t *seq, float *out)
{
    const float *p = r->param + (size_t)row * r->w;
    for (unsigned spins = 0;; cqr_rows_backoff(&spins)) {
        uint32_t s1 = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        if (!(s1 & 1)) {
            row_load_atomic(r, p, out, __ATOMIC_ACQUIRE);
            if (__atomic_load_n(seq, __ATOMIC_RELAXED) == s1)
                return;
        }
    }
}

void cqr_rows_read_atomic(const cqr_rows_t *r, uint32_t row,
                          const uint32_t *seq, float *out)
{
    assert(row < r->n);
    row_copy_atomic(r, row, seq, out);
}

void cqr_rows_read_add_atomic(const cqr_rows_t *r, uint32_t row, float *out)
{
    assert(row < r->n);
    float stackbuf[CQR_ROWS_STACK];
    float *tmp = r->w <= CQR_ROWS_STACK ? stackbuf : malloc(r->w * sizeof(float));
    assert(tmp);
    row_copy_atomic(r, row, &r->seq[row], tmp);
    for (uint32_t j = 0; j < r->w; j++)
        out[j] += tmp[j];
    if (tmp != stackbuf)
        free(tmp);
}

/* ---- the writer's side -------------------------------------------------
 *
 * A writer holds the row's counter odd while it loads and stores the
 * floats; with plain copies the release fence after taking the counter
 * keeps the new floats from becoming visible before the odd counter. */
#ifdef CQR_ROWS_ATOMIC
static inline void row_load(const cqr_rows_t *r, const float *p, float *out)
{
    /* Only writers store to p, and we hold the row: relaxed suffices. */
    row_load_atomic(r, p, out, __ATOMIC_RELAXED);
}
#endif

/* One Adam step of w floats. Restrict pointers and no errno from sqrtf
 * (-fno-math-errno) let the compiler vectorise it; each float still gets
 * exactly the scalar operations in the scalar order (no FMA contraction:
 * neither body is compiled with FMA enabled). */
static inline __attribute__((always_inline)) void
adam_row_body(float *restrict p, float *restrict m, float *restrict v,
              const float *restrict g, uint32_t w, float b1, float b2,
              float step_size, float bc2_sqrt, float eps)
{
    for (uint32_t j = 0; j < w; j++) {
        m[j] = b1 * m[j] + (1.0f - b1) * g[j];
        v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
        const float denom = sqrtf(v[j]) / bc2_sqrt + eps;
        p[j] -= step_size * (m[j] / denom);
    }
}

typedef void (*adam_row_fn)(float *restrict p, float *restrict m,
                            float *restrict v, const float *restrict g,
                            uint32_t w, float b1, float b2, float step_size,
                            float bc2_sqrt, float eps);

static void adam_row_base(float *restrict p, float *restrict m,
                          float *restrict v, const float *restrict g,
                          uint32_t w, float b1, float b2, float step_size,
                          float bc2_sqrt, float eps)
{
    adam_row_body(p, m, v, g, w, b1, b2, step_size, bc2_sqrt, eps);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The same body with 8-wide vectors, picked at run time (the division and
 * square root dominate a codebook push's steps; Debian builds for
 * baseline x86-64, where they are 4 wide). */
__attribute__((target("avx2"))) static void
adam_row_avx2(float *restrict p, float *restrict m, float *restrict v,
              const float *restrict g, uint32_t w, float b1, float b2,
              float step_size, float bc2_sqrt, float eps)
{
    adam_row_body(p, m, v, g, w, b1, b2, step_size, bc2_sqrt, eps);
}
#define ROWS_HAVE_AVX2 1
#endif

static adam_row_fn adam_row = adam_row_base;

int cqr_rows_adam_body(cqr_adam_body_t body, float *p, float *m, float *v,
                       const float *g, uint32_t w, float b1, float b2,
                       float step_size, float bc2_sqrt, float eps)
{
    adam_row_fn fn = NULL;
    if (body == CQR_ADAM_BODY_PLAIN)
        fn = adam_row_base;
#ifdef ROWS_HAVE_AVX2
    if (body == CQR_ADAM_BODY_AVX2 && __builtin_cpu_supports("avx2"))
        fn = adam_row_avx2;
#endif
    if (!fn)
        return CQR_EUNSUPPORTED;
    fn(p, m, v, g, w, b1, b2, step_size, bc2_sqrt, eps);
    return 0;
}

/* Adam's bias corrections (float)(1 - b1^t) and (float)sqrt(1 - b2^t),
 * bit-identical to computing them with pow() at every step: for the
 * default betas they are computed once, with the same expressions, for
 * t < ADAM_TAB (two pow() calls per row step were about a tenth of a
 * push). Other betas, and older rows, call pow() as before. */
#define ADAM_TAB 32768u
static float adam_tab_bc1[ADAM_TAB], adam_tab_bc2[ADAM_TAB];
static pthread_once_t adam_once = PTHREAD_ONCE_INIT;

static void adam_bias_exact(float b1, float b2, uint32_t t, float *bc1,
                            float *bc2_sqrt)
{
    *bc1 = (float)(1.0 - pow(b1, t));
    *bc2_sqrt = (float)sqrt(1.0 - pow(b2, t));
}

static void adam_tab_init(void)
{
#ifdef ROWS_HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        adam_row = adam_row_avx2;
#endif
    for (uint32_t t = 1; t < ADAM_TAB; t++)
        adam_bias_exact(0.9f, 0.999f, t, &adam_tab_bc1[t], &adam_tab_bc2[t]);
}

static void adam_tab_ready(void)
{
    pthread_once(&adam_once, adam_tab_init);
}

static inline void adam_bias(float b1, float b2, uint32_t t, float *bc1,
                             float *bc2_sqrt)
{
    if (b1 == 0.9f && b2 == 0.999f && t < ADAM_TAB) {
        /* cqr_rows_init ran adam_tab_init before any row existed. */
        *bc1 = adam_tab_bc1[t];
        *bc2_sqrt = adam_tab_bc2[t];
        return;
    }
    adam_bias_exact(b1, b2, t, bc1, bc2_sqrt);
}


/* Takes the row for a writer; returns the (even) counter it found. */
static uint32_t row_lock(uint32_t *seq)
{
    for (unsigned spins = 0;; cqr_rows_backoff(&spins)) {
        uint32_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
        if (!(s & 1) &&
            __atomic_compare_exchange_n(seq, &s, s + 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED)) {
#ifndef CQR_ROWS_ATOMIC
            __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
            return s;
        }
    }
}

/* Releases the row: only its holder stores the counter while it is odd,
 * so a release store (a plain move on x86) of s0 + 2 suffices. */
static void row_unlock(uint32_t *seq, uint32_t s0)
{
    __atomic_store_n(seq, s0 + 2, __ATOMIC_RELEASE);
}

void cqr_rows_step(cqr_rows_t *r, uint32_t row, const float *g,
                   const cqr_optim_config_t *o)
{
    cqr_rows_step_at(r, row, &r->seq[row], g, o);
}

void cqr_rows_step_at(cqr_rows_t *r, uint32_t row, uint32_t *seq,
                      const float *g, const cqr_optim_config_t *o)
{
    assert(row < r->n);
    assert(o->kind == r->opt);
    const uint32_t w = r->w;
    float *p = r->param + (size_t)row * w;
#ifdef CQR_ROWS_ATOMIC
    /* TSan builds: step a copy, store it back as atomics. */
    float stackbuf[CQR_ROWS_STACK];
    float *np = w <= CQR_ROWS_STACK ? stackbuf : malloc(w * sizeof(float));
    assert(np);
    const uint32_t s0 = row_lock(seq);
    row_load(r, p, np);
#else
    /* Readers discard whatever they copy while the counter is odd: step
     * the row in place. */
    float *np = p;
    const uint32_t s0 = row_lock(seq);
#endif
    const float lr = o->lr;
    if (o->weight_decay > 0.0f) {
        const float decay = 1.0f - lr * o->weight_decay;
        for (uint32_t j = 0; j < w; j++)
            np[j] *= decay;
    }
    switch (o->kind) {
    case CQR_OPT_SGD:
        for (uint32_t j = 0; j < w; j++)
            np[j] -= lr * g[j];
        break;
    case CQR_OPT_ADAGRAD: {
        /* Row-wise Adagrad: one accumulator of the mean squared gradient
         * per row (as in DLRM's row-wise Adagrad). */
        float *acc = r->state + (size_t)row * r->sw;
        double s = 0.0;
        for (uint32_t j = 0; j < w; j++)
            s += (double)g[j] * g[j];
        acc[0] += (float)(s / w);
        const float scale = lr / (sqrtf(acc[0]) + o->eps);
        for (uint32_t j = 0; j < w; j++)
            np[j] -= scale * g[j];
        break;
    }
    case CQR_OPT_ADAM: {
        /* Lazy Adam: the row's own step count drives bias correction, so
         * a row untouched for a while is not over-corrected. */
        float *m = r->state + (size_t)row * r->sw;
        float *v = m + w;
        uint32_t t = ++r->step[row];
        const float b1 = o->beta1, b2 = o->beta2;
        float bc1, bc2_sqrt;
        adam_bias(b1, b2, t, &bc1, &bc2_sqrt);
        adam_row(np, m, v, g, w, b1, b2, lr / bc1, bc2_sqrt, o->eps);
        break;
    }
    }
#ifdef CQR_ROWS_ATOMIC
    row_store_atomic(r, p, np);
    row_unlock(seq, s0);
    if (np != stackbuf)
        free(np);
#else
    row_unlock(seq, s0);
#endif
}
