/* Rows (rows.h): seqlocked reads never see a torn row while writers step
 * it; every optimizer step equals a plain reference loop of the math it
 * documents; the AVX2 and plain Adam bodies agree bit for bit; clone,
 * reset and the byte counts. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/rows.h"
#include "check_main.h"

/* With -march=native on a CPU with FMA the compiler may contract a * b + c
 * differently in the engine and here: compare with a tolerance then. */
#ifdef __FMA__
#define EXACT 0
#else
#define EXACT 1
#endif

static void assert_same_floats(const float *a, const float *b, size_t n)
{
    if (EXACT) {
        ck_assert_mem_eq(a, b, n * sizeof *a);
        return;
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_float_eq_tol(a[i], b[i], 1e-6f * (1.0f + fabsf(b[i])));
}

/* ---- seqlocks ------------------------------------------------------------
 * Writers step random rows with SGD, lr 1 and a gradient of -1 in every
 * float: each step adds exactly 1 to each float of the row, so a row read
 * whole from one instant has all its floats equal to a whole number. A
 * torn read (part before a step, part after) has two values. */

enum { SEQ_ROWS = 4, SEQ_WRITERS = 2, SEQ_READERS = 2, SEQ_STEPS = 200000 };

typedef struct seq_ctx {
    cqr_rows_t rows;           /* the rows under test */
    cqr_optim_config_t opt;    /* SGD, lr 1 */
    pthread_barrier_t start;   /* every thread starts at once */
    int writers_left;          /* atomic: readers stop at 0 */
    uint64_t steps[SEQ_ROWS];  /* atomic: steps done per row */
    int torn;                  /* atomic: torn reads seen */
    int backwards;             /* atomic: a row seen going back in time */
} seq_ctx_t;

typedef struct seq_writer {
    seq_ctx_t *c;
    uint64_t seed;
} seq_writer_t;

static void *seq_write(void *arg)
{
    seq_writer_t *wr = arg;
    seq_ctx_t *c = wr->c;
    /* No ck_assert off the test's thread: a failure there cannot unwind
     * the test. Out of memory simply ends the run. */
    float *g = malloc(c->rows.w * sizeof *g);
    if (!g)
        abort();
    for (uint32_t j = 0; j < c->rows.w; j++)
        g[j] = -1.0f;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, wr->seed);
    pthread_barrier_wait(&c->start);
    for (int s = 0; s < SEQ_STEPS; s++) {
        uint32_t row = (uint32_t)cqr_rng_below(&rng, SEQ_ROWS);
        cqr_rows_step(&c->rows, row, g, &c->opt);
        __atomic_fetch_add(&c->steps[row], 1, __ATOMIC_RELAXED);
    }
    free(g);
    __atomic_fetch_sub(&c->writers_left, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* 1 when every float of x[0..w) is the same whole number. */
static int whole_row(const float *x, uint32_t w)
{
    for (uint32_t j = 0; j < w; j++) {
        if (x[j] != x[0] || x[j] != floorf(x[j]))
            return 0;
    }
    return 1;
}

static void *seq_read(void *arg)
{
    seq_ctx_t *c = arg;
    const uint32_t w = c->rows.w;
    float *x = malloc(w * sizeof *x), *y = malloc(w * sizeof *y);
    if (!x || !y)
        abort();
    float last[SEQ_ROWS] = {0};
    pthread_barrier_wait(&c->start);
    for (uint32_t i = 0;
         __atomic_load_n(&c->writers_left, __ATOMIC_ACQUIRE) > 0; i++) {
        uint32_t row = i % SEQ_ROWS;
        cqr_rows_read(&c->rows, row, x);
        if (!whole_row(x, w))
            __atomic_fetch_add(&c->torn, 1, __ATOMIC_RELAXED);
        /* Steps only add: one reader never sees a row go back. */
        if (x[0] < last[row])
            __atomic_fetch_add(&c->backwards, 1, __ATOMIC_RELAXED);
        last[row] = x[0];
        /* Two rows at once, each whole (from its own instant). */
        cqr_rows_read_sum(&c->rows, row, &c->rows, (row + 1) % SEQ_ROWS, y);
        if (!whole_row(y, w))
            __atomic_fetch_add(&c->torn, 1, __ATOMIC_RELAXED);
    }
    free(x);
    free(y);
    return NULL;
}

static void seqlock_run(uint32_t w)
{
    seq_ctx_t c = {.opt = {.kind = CQR_OPT_SGD, .lr = 1.0f},
                   .writers_left = SEQ_WRITERS};
    ck_assert_int_eq(cqr_rows_init(&c.rows, SEQ_ROWS, w, CQR_OPT_SGD), 0);
    pthread_barrier_init(&c.start, NULL, SEQ_WRITERS + SEQ_READERS);
    pthread_t wt[SEQ_WRITERS], rt[SEQ_READERS];
    seq_writer_t wr[SEQ_WRITERS];
    for (int i = 0; i < SEQ_READERS; i++)
        ck_assert_int_eq(pthread_create(&rt[i], NULL, seq_read, &c), 0);
    for (int i = 0; i < SEQ_WRITERS; i++) {
        wr[i] = (seq_writer_t){&c, 100 + (uint64_t)i};
        ck_assert_int_eq(pthread_create(&wt[i], NULL, seq_write, &wr[i]), 0);
    }
    for (int i = 0; i < SEQ_WRITERS; i++)
        pthread_join(wt[i], NULL);
    for (int i = 0; i < SEQ_READERS; i++)
        pthread_join(rt[i], NULL);
    ck_assert_int_eq(c.torn, 0);
    ck_assert_int_eq(c.backwards, 0);
    /* No step was lost: each row holds exactly its number of steps. */
    uint64_t total = 0;
    float *x = malloc(w * sizeof *x);
    for (uint32_t row = 0; row < SEQ_ROWS; row++) {
        cqr_rows_read(&c.rows, row, x);
        ck_assert(whole_row(x, w));
        ck_assert_uint_eq((uint64_t)x[0], c.steps[row]);
        total += c.steps[row];
    }
    ck_assert_uint_eq(total, (uint64_t)SEQ_WRITERS * SEQ_STEPS);
    free(x);
    pthread_barrier_destroy(&c.start);
    cqr_rows_free(&c.rows);
}

/* Widths: odd (32-bit atomics in TSan builds, a scalar tail otherwise),
 * even and wide. */
START_TEST(test_seqlock_no_torn_rows)
{
    const uint32_t widths[] = {7, 16, 130};
    seqlock_run(widths[_i]);
}
END_TEST

/* ---- optimizer steps against plain loops -------------------------------- */

/* A plain copy of rows: parameters, optimizer state, Adam steps. */
typedef struct ref_rows {
    uint32_t n, w, sw;
    float *param, *state;
    uint32_t *step;
} ref_rows_t;

static void ref_init(ref_rows_t *q, const cqr_rows_t *r)
{
    q->n = r->n;
    q->w = r->w;
    q->sw = r->sw;
    q->param = malloc((size_t)r->n * r->w * sizeof(float));
    q->state = calloc((size_t)r->n * (r->sw ? r->sw : 1), sizeof(float));
    q->step = calloc(r->n, sizeof(uint32_t));
    ck_assert(q->param && q->state && q->step);
    memcpy(q->param, r->param, (size_t)r->n * r->w * sizeof(float));
}

static void ref_free(ref_rows_t *q)
{
    free(q->param);
    free(q->state);
    free(q->step);
}

/* The documented step (rows.h, optim.h), one float at a time. */
static void ref_step(ref_rows_t *q, uint32_t row, const float *g,
                     const cqr_optim_config_t *o)
{
    const uint32_t w = q->w;
    float *p = q->param + (size_t)row * w;
    if (o->weight_decay > 0.0f) {
        const float decay = 1.0f - o->lr * o->weight_decay;
        for (uint32_t j = 0; j < w; j++)
            p[j] = p[j] * decay;
    }
    if (o->kind == CQR_OPT_SGD) {
        for (uint32_t j = 0; j < w; j++)
            p[j] = p[j] - o->lr * g[j];
    } else if (o->kind == CQR_OPT_ADAGRAD) {
        /* Row-wise: the mean squared gradient, summed in double. */
        float *acc = q->state + (size_t)row * q->sw;
        double sq = 0.0;
        for (uint32_t j = 0; j < w; j++)
            sq = sq + (double)g[j] * (double)g[j];
        acc[0] = acc[0] + (float)(sq / w);
        const float scale = o->lr / (sqrtf(acc[0]) + o->eps);
        for (uint32_t j = 0; j < w; j++)
            p[j] = p[j] - scale * g[j];
    } else {
        /* Lazy Adam, the row's own step count for bias correction. */
        float *m = q->state + (size_t)row * q->sw, *v = m + w;
        uint32_t t = ++q->step[row];
        const float b1 = o->beta1, b2 = o->beta2;
        const float bc1 = (float)(1.0 - pow(b1, t));
        const float bc2_sqrt = (float)sqrt(1.0 - pow(b2, t));
        const float step_size = o->lr / bc1;
        for (uint32_t j = 0; j < w; j++) {
            m[j] = b1 * m[j] + (1.0f - b1) * g[j];
            v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
            const float denom = sqrtf(v[j]) / bc2_sqrt + o->eps;
            p[j] = p[j] - step_size * (m[j] / denom);
        }
    }
}

static void assert_rows_match(const cqr_rows_t *r, const ref_rows_t *q)
{
    assert_same_floats(r->param, q->param, (size_t)r->n * r->w);
    if (r->sw)
        assert_same_floats(r->state, q->state, (size_t)r->n * r->sw);
    if (r->step)
        ck_assert_mem_eq(r->step, q->step, r->n * sizeof(uint32_t));
}

/* `steps` steps of random rows with random gradients, engine and
 * reference side by side. */
static void compare_steps(const cqr_optim_config_t *o, uint32_t n, uint32_t w,
                          int steps, uint64_t seed)
{
    cqr_rows_t r;
    ck_assert_int_eq(cqr_rows_init(&r, n, w, o->kind), 0);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, seed);
    for (size_t j = 0; j < (size_t)n * w; j++)
        r.param[j] = cqr_rng_sym(&rng, 1.0f);
    ref_rows_t q;
    ref_init(&q, &r);
    float *g = malloc(w * sizeof *g);
    for (int s = 0; s < steps; s++) {
        uint32_t row = (uint32_t)cqr_rng_below(&rng, n);
        for (uint32_t j = 0; j < w; j++)
            g[j] = cqr_rng_sym(&rng, 2.0f);
        cqr_rows_step(&r, row, g, o);
        ref_step(&q, row, g, o);
    }
    assert_rows_match(&r, &q);
    free(g);
    ref_free(&q);
    cqr_rows_free(&r);
}

/* compare_steps over widths with and without a scalar tail or a vector
 * body, each without and with weight decay. */
static void compare_widths(cqr_optim_config_t o, uint64_t seed)
{
    static const uint32_t widths[] = {1, 3, 4, 8, 13, 16, 33, 64};
    for (int wd = 0; wd < 2; wd++) {
        o.weight_decay = wd ? 0.5f : 0.0f;
        for (size_t i = 0; i < sizeof widths / sizeof *widths; i++)
            compare_steps(&o, 5, widths[i], 300, seed + i);
    }
}

START_TEST(test_sgd_matches_reference)
{
    compare_widths((cqr_optim_config_t){.kind = CQR_OPT_SGD, .lr = 0.05f},
                   1);
}
END_TEST

START_TEST(test_adagrad_matches_reference)
{
    compare_widths((cqr_optim_config_t){.kind = CQR_OPT_ADAGRAD, .lr = 0.1f,
                                        .eps = 1e-6f},
                   10);
}
END_TEST

/* The default betas take the precomputed bias corrections, other betas
 * pow() at every step: both equal the reference. */
START_TEST(test_adam_matches_reference)
{
    cqr_optim_config_t o = {.kind = CQR_OPT_ADAM, .lr = 1e-2f, .eps = 1e-8f,
                            .beta1 = 0.9f, .beta2 = 0.999f};
    compare_widths(o, 20);
    o.beta1 = 0.8f;
    o.beta2 = 0.99f;
    compare_widths(o, 20);
}
END_TEST

/* A row stepped past the precomputed table (32768 steps) switches to
 * pow() without a seam. */
START_TEST(test_adam_long_row)
{
    cqr_optim_config_t o = {.kind = CQR_OPT_ADAM, .lr = 1e-3f, .beta1 = 0.9f,
                            .beta2 = 0.999f, .eps = 1e-8f};
    compare_steps(&o, 1, 3, 33000, 40);
}
END_TEST

/* ---- the Adam bodies ---------------------------------------------------- */

START_TEST(test_adam_bodies_agree)
{
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 77);
    enum { W = 70 };
    for (uint32_t w = 1; w <= W; w++) {
        float p0[W], m0[W], v0[W], g[W];
        for (uint32_t j = 0; j < w; j++) {
            p0[j] = cqr_rng_sym(&rng, 1.0f);
            m0[j] = cqr_rng_sym(&rng, 0.1f);
            v0[j] = cqr_rng_unit(&rng) * 0.01f;
            g[j] = cqr_rng_sym(&rng, 3.0f);
        }
        float p[2][W], m[2][W], v[2][W];
        int have[2];
        for (int b = 0; b < 2; b++) {
            memcpy(p[b], p0, sizeof p0);
            memcpy(m[b], m0, sizeof m0);
            memcpy(v[b], v0, sizeof v0);
            int rc = cqr_rows_adam_body((cqr_adam_body_t)b, p[b], m[b], v[b],
                                        g, w, 0.9f, 0.999f, 0.05f, 0.3f,
                                        1e-8f);
            ck_assert(rc == 0 || (b == 1 && rc == CQR_EUNSUPPORTED));
            have[b] = rc == 0;
        }
        ck_assert(have[0]);
        if (!have[1])
            continue; /* no AVX2 here: the plain body is the one in use */
        ck_assert_mem_eq(p[0], p[1], w * sizeof(float));
        ck_assert_mem_eq(m[0], m[1], w * sizeof(float));
        ck_assert_mem_eq(v[0], v[1], w * sizeof(float));
    }
}
END_TEST

/* ---- clone, reset, bytes ------------------------------------------------ */

START_TEST(test_clone_reset_bytes)
{
    cqr_optim_config_t o = {.kind = CQR_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f,
                            .beta2 = 0.999f, .eps = 1e-8f};
    cqr_rows_t r, c;
    ck_assert_int_eq(cqr_rows_init(&r, 10, 6, CQR_OPT_ADAM), 0);
    ck_assert_uint_eq(r.sw, 12);
    ck_assert_uint_eq(cqr_optim_state_floats(CQR_OPT_SGD, 6), 0);
    ck_assert_uint_eq(cqr_optim_state_floats(CQR_OPT_ADAGRAD, 6), 1);
    ck_assert_uint_eq(cqr_rows_param_bytes(&r), 10 * 6 * 4);
    /* State floats, Adam steps and seqlock counters. */
    ck_assert_uint_eq(cqr_rows_state_bytes(&r), 10 * 12 * 4 + 10 * 4 + 10 * 4);
    float g[6] = {1, -2, 3, -4, 5, -6};
    cqr_rows_step(&r, 3, g, &o);
    cqr_rows_step(&r, 3, g, &o);
    ck_assert_int_eq(cqr_rows_clone(&c, &r), 0);
    ck_assert_mem_eq(c.param, r.param, 10 * 6 * sizeof(float));
    ck_assert_mem_eq(c.state, r.state, 10 * 12 * sizeof(float));
    ck_assert_mem_eq(c.step, r.step, 10 * sizeof(uint32_t));
    ck_assert_uint_eq(c.step[3], 2);
    float before[60];
    memcpy(before, c.param, sizeof before);
    cqr_rows_reset_state(&c);
    ck_assert_mem_eq(c.param, before, sizeof before);
    for (int j = 0; j < 10 * 12; j++)
        ck_assert(c.state[j] == 0.0f);
    ck_assert_uint_eq(c.step[3], 0);
    /* The original is untouched by its clone's reset. */
    ck_assert_uint_eq(r.step[3], 2);
    cqr_rows_free(&c);
    cqr_rows_free(&r);
    ck_assert_ptr_null(r.param);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("rows");
    TCase *tc = tcase_create("seqlock");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_seqlock_no_torn_rows, 0, 3);
    suite_add_tcase(s, tc);
    tc = tcase_create("optim");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sgd_matches_reference);
    tcase_add_test(tc, test_adagrad_matches_reference);
    tcase_add_test(tc, test_adam_matches_reference);
    tcase_add_test(tc, test_adam_long_row);
    tcase_add_test(tc, test_adam_bodies_agree);
    tcase_add_test(tc, test_clone_reset_bytes);
    suite_add_tcase(s, tc);
    return s;
}
