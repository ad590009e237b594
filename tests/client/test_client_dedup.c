/* test_client_dedup.c -- cqrps_dedup, cqrps_dedup_expand, cqrps_dedup_sum
 * against plain reference loops (no server).
 *
 * The reference de-duplication is the quadratic one: scan the distinct
 * IDs found so far. The reference sum adds every occurrence into a zeroed
 * row in order of j, the order the library promises, so the sums are
 * compared bit for bit.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.h"
#include "check_main.h"
#include "engine/hash.h"

typedef struct dd {
    size_t n;
    uint64_t *uniq;
    uint32_t *inverse;
    size_t nuniq;
} dd_t;

static void dd_run(const uint64_t *ids, size_t n, dd_t *d)
{
    d->n = n;
    d->uniq = malloc((n ? n : 1) * sizeof(uint64_t));
    d->inverse = malloc((n ? n : 1) * sizeof(uint32_t));
    ck_assert_ptr_nonnull(d->uniq);
    ck_assert_ptr_nonnull(d->inverse);
    ck_assert_int_eq(cqrps_dedup(ids, n, d->uniq, d->inverse, &d->nuniq,
                                 NULL, 0), 0);
}

static void dd_free(dd_t *d)
{
    free(d->uniq);
    free(d->inverse);
}

/* The quadratic reference: distinct IDs in first-occurrence order. */
static void check_against_reference(const uint64_t *ids, size_t n,
                                    const dd_t *d)
{
    uint64_t *ref = malloc((n ? n : 1) * sizeof(uint64_t));
    ck_assert_ptr_nonnull(ref);
    size_t nref = 0;
    for (size_t j = 0; j < n; j++) {
        size_t r = 0;
        while (r < nref && ref[r] != ids[j])
            r++;
        if (r == nref)
            ref[nref++] = ids[j];
        ck_assert_uint_eq(d->inverse[j], r);
    }
    ck_assert_uint_eq(d->nuniq, nref);
    if (nref)
        ck_assert_int_eq(memcmp(d->uniq, ref, nref * sizeof(uint64_t)), 0);
    free(ref);
}

START_TEST(test_dedup_matches_reference)
{
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 42);
    /* Draws from small and large ranges: many repeats, few, none; IDs at
     * both ends of the 64-bit range. */
    const uint64_t ranges[] = { 1, 7, 100, 5000, UINT64_MAX };
    const size_t sizes[] = { 1, 2, 15, 16, 17, 1000, 3001 };
    for (size_t a = 0; a < sizeof(ranges) / sizeof(ranges[0]); a++) {
        for (size_t b = 0; b < sizeof(sizes) / sizeof(sizes[0]); b++) {
            const size_t n = sizes[b];
            uint64_t *ids = malloc(n * sizeof(uint64_t));
            ck_assert_ptr_nonnull(ids);
            for (size_t j = 0; j < n; j++) {
                uint64_t x = cqr_rng_next(&rng);
                ids[j] = ranges[a] == UINT64_MAX ? x : x % ranges[a];
            }
            if (n > 3) {
                ids[1] = UINT64_MAX;
                ids[n - 1] = UINT64_MAX;
                ids[2] = 0;
            }
            dd_t d;
            dd_run(ids, n, &d);
            check_against_reference(ids, n, &d);
            dd_free(&d);
            free(ids);
        }
    }
}
END_TEST

START_TEST(test_dedup_edges)
{
    size_t nuniq = 99;
    ck_assert_int_eq(cqrps_dedup(NULL, 0, NULL, NULL, &nuniq, NULL, 0), 0);
    ck_assert_uint_eq(nuniq, 0);
    uint64_t one = 5, u[4];
    uint32_t inv[4];
    ck_assert_int_eq(cqrps_dedup(&one, 1, NULL, inv, &nuniq, NULL, 0),
                     CQRPS_EINVAL);
    ck_assert_int_eq(cqrps_dedup(&one, 1, u, inv, NULL, NULL, 0),
                     CQRPS_EINVAL);

    /* Without repeats, the batch comes out unchanged. */
    uint64_t seq[4] = { 9, 3, 0, UINT64_MAX };
    ck_assert_int_eq(cqrps_dedup(seq, 4, u, inv, &nuniq, NULL, 0), 0);
    ck_assert_uint_eq(nuniq, 4);
    for (uint32_t j = 0; j < 4; j++) {
        ck_assert_uint_eq(u[j], seq[j]);
        ck_assert_uint_eq(inv[j], j);
    }
    /* All the same. */
    uint64_t same[4] = { 7, 7, 7, 7 };
    /* With a caller's work buffer (dirty: the call clears it). */
    size_t wb = cqrps_dedup_work_bytes(4);
    ck_assert_uint_ge(wb, 8 * sizeof(uint32_t));
    unsigned char *work = malloc(wb);
    ck_assert_ptr_nonnull(work);
    memset(work, 0xab, wb);
    ck_assert_int_eq(cqrps_dedup(same, 4, u, inv, &nuniq, work, wb), 0);
    ck_assert_uint_eq(nuniq, 1);
    ck_assert_int_eq(cqrps_dedup(same, 4, u, inv, &nuniq, work, wb - 1),
                     CQRPS_EINVAL);
    free(work);
    ck_assert_int_eq(cqrps_dedup(same, 4, u, inv, &nuniq, NULL, 0), 0);
    ck_assert_uint_eq(nuniq, 1);
    ck_assert_uint_eq(u[0], 7);
    for (int j = 0; j < 4; j++)
        ck_assert_uint_eq(inv[j], 0);
}
END_TEST

/* Sequential and strided IDs, the shapes a weak hash would cluster. */
START_TEST(test_dedup_structured_ids)
{
    const size_t n = 1 << 16;
    uint64_t *ids = malloc(n * sizeof(uint64_t));
    ck_assert_ptr_nonnull(ids);
    for (size_t j = 0; j < n; j++)
        ids[j] = ((j % (n / 2)) << 20) ^ (1ull << 63);
    dd_t d;
    dd_run(ids, n, &d);
    ck_assert_uint_eq(d.nuniq, n / 2);
    for (size_t j = 0; j < n; j++) {
        ck_assert_uint_eq(d.uniq[d.inverse[j]], ids[j]);
        ck_assert_uint_eq(d.inverse[j], j % (n / 2));
    }
    dd_free(&d);
    free(ids);
}
END_TEST

START_TEST(test_expand_and_sum)
{
    enum { N = 500, DIM = 7 };
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 7);
    uint64_t ids[N];
    for (size_t j = 0; j < N; j++)
        ids[j] = cqr_rng_next(&rng) % 60;
    dd_t d;
    dd_run(ids, N, &d);

    /* expand: every occurrence gets its distinct row. */
    float *rows = malloc(d.nuniq * DIM * sizeof(float));
    float out[N * DIM];
    ck_assert_ptr_nonnull(rows);
    for (size_t i = 0; i < d.nuniq * DIM; i++)
        rows[i] = (float)cqr_rng_double(&rng) - 0.5f;
    ck_assert_int_eq(cqrps_dedup_expand(rows, d.nuniq, DIM, d.inverse, N,
                                        out), 0);
    for (size_t j = 0; j < N; j++)
        ck_assert_int_eq(memcmp(out + j * DIM, rows + d.inverse[j] * DIM,
                                DIM * sizeof(float)), 0);

    /* In place: the distinct rows in the first rows of the output. */
    float *inplace = malloc(N * DIM * sizeof(float));
    ck_assert_ptr_nonnull(inplace);
    memcpy(inplace, rows, d.nuniq * DIM * sizeof(float));
    ck_assert_int_eq(cqrps_dedup_expand(inplace, d.nuniq, DIM, d.inverse, N,
                                        inplace), 0);
    ck_assert_int_eq(memcmp(inplace, out, sizeof(out)), 0);
    uint32_t later[2] = { 1, 0 }; /* row 1 first: not first-occurrence */
    ck_assert_int_eq(cqrps_dedup_expand(inplace, 2, DIM, later, 2, inplace),
                     CQRPS_EINVAL);
    free(inplace);

    /* sum: bit for bit the in-order reference sum. */
    float grads[N * DIM];
    for (size_t i = 0; i < N * DIM; i++)
        grads[i] = (float)cqr_rng_double(&rng) * 3.0f - 1.0f;
    float *want = calloc(d.nuniq * DIM, sizeof(float));
    float *got = malloc(d.nuniq * DIM * sizeof(float));
    ck_assert_ptr_nonnull(want);
    ck_assert_ptr_nonnull(got);
    for (size_t j = 0; j < N; j++)
        for (size_t k = 0; k < DIM; k++)
            want[d.inverse[j] * DIM + k] += grads[j * DIM + k];
    ck_assert_int_eq(cqrps_dedup_sum(grads, N, DIM, d.inverse, d.nuniq, got),
                     0);
    ck_assert_int_eq(memcmp(got, want, d.nuniq * DIM * sizeof(float)), 0);

    /* Bad indices are refused, not followed. */
    uint32_t bad[3] = { 0, 2, 1 }; /* 2 before 1: not first-occurrence */
    ck_assert_int_eq(cqrps_dedup_sum(grads, 3, DIM, bad, 3, got),
                     CQRPS_EINVAL);
    uint32_t gap[3] = { 0, 1, 1 }; /* row 2 never written */
    ck_assert_int_eq(cqrps_dedup_sum(grads, 3, DIM, gap, 3, got),
                     CQRPS_EINVAL);
    uint32_t far[2] = { 0, 9 };
    ck_assert_int_eq(cqrps_dedup_expand(rows, 2, DIM, far, 2, out),
                     CQRPS_EINVAL);
    ck_assert_int_eq(cqrps_dedup_sum(grads, 2, DIM, far, 3, got),
                     CQRPS_EINVAL);
    ck_assert_int_eq(cqrps_dedup_sum(NULL, 0, DIM, NULL, 0, NULL), 0);
    free(rows);
    free(want);
    free(got);
    dd_free(&d);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_dedup");
    TCase *tc = tcase_create("dedup");
    tcase_add_test(tc, test_dedup_matches_reference);
    tcase_add_test(tc, test_dedup_edges);
    tcase_add_test(tc, test_dedup_structured_ids);
    tcase_add_test(tc, test_expand_and_sum);
    suite_add_tcase(s, tc);
    return s;
}
