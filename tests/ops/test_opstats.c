/* The request statistics (server/ops/opstats.c): what a recording adds is
 * exact -- the bucket a latency falls in (bounds inclusive), the sum of
 * latencies, the status counts, the per-thread blocks summed by a read --
 * and so are the checkpoint figures. Concurrent recording from several
 * threads loses nothing (and is TSan-clean). */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ops/opstats.h"
#include "check_main.h"

static const double expected_bounds[CQR_LAT_NBOUNDS] = {CQR_LAT_BOUNDS};

/* Nanoseconds of bound b (the same values the recorder compares). */
static uint64_t bound_ns(uint32_t b)
{
    return (uint64_t)(cqr_opstats_bounds()[b] * 1e9 + 0.5);
}

START_TEST(test_bounds)
{
    const double *b = cqr_opstats_bounds();
    for (uint32_t i = 0; i < CQR_LAT_NBOUNDS; i++) {
        ck_assert(b[i] == expected_bounds[i]);
        if (i > 0)
            ck_assert(b[i] > b[i - 1]);
    }
    ck_assert(b[0] == 5e-6);
    ck_assert(b[CQR_LAT_NBOUNDS - 1] == 30.0);
}
END_TEST

START_TEST(test_empty)
{
    cqr_opstats_t *s;
    ck_assert_int_eq(cqr_opstats_create(2, 3, 4, &s), 0);
    cqr_opstat_snap_t sn;
    memset(&sn, 0xab, sizeof sn);
    cqr_opstats_read(s, 1, &sn);
    ck_assert_uint_eq(sn.count, 0);
    ck_assert_uint_eq(sn.sum_ns, 0);
    for (uint32_t i = 0; i <= CQR_LAT_NBOUNDS; i++)
        ck_assert_uint_eq(sn.bucket[i], 0);
    for (uint32_t i = 0; i < CQR_OPSTATS_MAX_STATUS; i++)
        ck_assert_uint_eq(sn.status[i], 0);
    /* An operation out of range reads as nothing; a NULL table records
     * nothing and reads as nothing. */
    memset(&sn, 0xab, sizeof sn);
    cqr_opstats_read(s, 3, &sn);
    ck_assert_uint_eq(sn.count, 0);
    cqr_opstats_record(NULL, 0, 0, 0, 1);
    memset(&sn, 0xab, sizeof sn);
    cqr_opstats_read(NULL, 0, &sn);
    ck_assert_uint_eq(sn.count, 0);
    cqr_opstats_destroy(s);
    cqr_opstats_destroy(NULL);
}
END_TEST

/* A latency on a bound falls in that bound's bucket, one nanosecond more
 * in the next; past the last bound in the overflow bucket. */
START_TEST(test_buckets_exact)
{
    cqr_opstats_t *s;
    ck_assert_int_eq(cqr_opstats_create(1, 1, 1, &s), 0);
    uint64_t sum = 0;
    cqr_opstats_record(s, 0, 0, 0, 0);
    for (uint32_t b = 0; b < CQR_LAT_NBOUNDS; b++) {
        cqr_opstats_record(s, 0, 0, 0, bound_ns(b));
        cqr_opstats_record(s, 0, 0, 0, bound_ns(b) + 1);
        sum += 2 * bound_ns(b) + 1;
    }
    cqr_opstat_snap_t sn;
    cqr_opstats_read(s, 0, &sn);
    ck_assert_uint_eq(sn.count, 1 + 2 * CQR_LAT_NBOUNDS);
    ck_assert_uint_eq(sn.sum_ns, sum);
    /* Bucket 0: the 0 and its bound; bucket b: bound b-1 plus one and
     * bound b; the overflow bucket: the last bound plus one. */
    ck_assert_uint_eq(sn.bucket[0], 2);
    for (uint32_t b = 1; b < CQR_LAT_NBOUNDS; b++)
        ck_assert_uint_eq(sn.bucket[b], 2);
    ck_assert_uint_eq(sn.bucket[CQR_LAT_NBOUNDS], 1);
    ck_assert_uint_eq(sn.status[0], 1 + 2 * CQR_LAT_NBOUNDS);
    cqr_opstats_destroy(s);
}
END_TEST

START_TEST(test_status_and_ops)
{
    cqr_opstats_t *s;
    ck_assert_int_eq(cqr_opstats_create(1, 4, 5, &s), 0);
    cqr_opstats_record(s, 0, 2, 0, 1000);
    cqr_opstats_record(s, 0, 2, 3, 2000);
    cqr_opstats_record(s, 0, 2, 3, 3000);
    /* Statuses past the table count as the last one. */
    cqr_opstats_record(s, 0, 2, 4, 4000);
    cqr_opstats_record(s, 0, 2, 17, 5000);
    cqr_opstats_record(s, 0, 1, 1, 7);
    cqr_opstat_snap_t sn;
    cqr_opstats_read(s, 2, &sn);
    ck_assert_uint_eq(sn.count, 5);
    ck_assert_uint_eq(sn.sum_ns, 15000);
    ck_assert_uint_eq(sn.status[0], 1);
    ck_assert_uint_eq(sn.status[1], 0);
    ck_assert_uint_eq(sn.status[3], 2);
    ck_assert_uint_eq(sn.status[4], 2);
    ck_assert_uint_eq(sn.status[5], 0);
    ck_assert_uint_eq(sn.bucket[0], 5); /* all at most 5 us */
    cqr_opstats_read(s, 1, &sn);
    ck_assert_uint_eq(sn.count, 1);
    ck_assert_uint_eq(sn.sum_ns, 7);
    ck_assert_uint_eq(sn.status[1], 1);
    cqr_opstats_read(s, 0, &sn);
    ck_assert_uint_eq(sn.count, 0);
    cqr_opstats_destroy(s);
}
END_TEST

/* Each thread index records in its own block (taken modulo the blocks);
 * a read sums them all. */
START_TEST(test_threads_summed)
{
    cqr_opstats_t *s;
    ck_assert_int_eq(cqr_opstats_create(3, 2, 2, &s), 0);
    for (uint32_t t = 0; t < 7; t++)
        cqr_opstats_record(s, t, 1, t % 2, 100000 * (uint64_t)(t + 1));
    cqr_opstat_snap_t sn;
    cqr_opstats_read(s, 1, &sn);
    ck_assert_uint_eq(sn.count, 7);
    ck_assert_uint_eq(sn.sum_ns, 100000 * (1 + 2 + 3 + 4 + 5 + 6 + 7));
    ck_assert_uint_eq(sn.status[0], 4);
    ck_assert_uint_eq(sn.status[1], 3);
    /* 100..700 us: bounds 100 us (index 4), 250 us, 500 us, 1 ms. */
    ck_assert_uint_eq(sn.bucket[4], 1);
    ck_assert_uint_eq(sn.bucket[5], 1);
    ck_assert_uint_eq(sn.bucket[6], 3);
    ck_assert_uint_eq(sn.bucket[7], 2);
    uint64_t total = 0;
    for (uint32_t b = 0; b <= CQR_LAT_NBOUNDS; b++)
        total += sn.bucket[b];
    ck_assert_uint_eq(total, sn.count);
    cqr_opstats_destroy(s);
}
END_TEST

typedef struct rec_arg {
    cqr_opstats_t *s;
    uint32_t thread;
} rec_arg_t;

#define PER_THREAD 20000

static void *recorder(void *p)
{
    rec_arg_t *a = p;
    for (uint32_t i = 0; i < PER_THREAD; i++)
        cqr_opstats_record(a->s, a->thread, i % 3, i % 2, i);
    return NULL;
}

/* Four threads record at once, two of them on the same block: every
 * count is exact. */
START_TEST(test_concurrent_exact)
{
    cqr_opstats_t *s;
    ck_assert_int_eq(cqr_opstats_create(3, 3, 2, &s), 0);
    pthread_t th[4];
    rec_arg_t args[4];
    for (uint32_t t = 0; t < 4; t++) {
        args[t].s = s;
        args[t].thread = t; /* 3 shares block 0 with 0 */
        ck_assert_int_eq(pthread_create(&th[t], NULL, recorder, &args[t]),
                         0);
    }
    for (uint32_t t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    uint64_t count = 0, sum = 0;
    for (uint32_t op = 0; op < 3; op++) {
        cqr_opstat_snap_t sn;
        cqr_opstats_read(s, op, &sn);
        count += sn.count;
        sum += sn.sum_ns;
        ck_assert_uint_eq(sn.status[0] + sn.status[1], sn.count);
    }
    ck_assert_uint_eq(count, 4 * PER_THREAD);
    uint64_t per = (uint64_t)PER_THREAD * (PER_THREAD - 1) / 2;
    ck_assert_uint_eq(sum, 4 * per);
    cqr_opstats_destroy(s);
}
END_TEST

START_TEST(test_now_monotonic)
{
    uint64_t a = cqr_opstats_now_ns();
    uint64_t b = cqr_opstats_now_ns();
    ck_assert_uint_ge(b, a);
    ck_assert_uint_gt(a, 0);
}
END_TEST

START_TEST(test_ckpt_stats)
{
    cqr_ckpt_stats_t c;
    memset(&c, 0, sizeof c);
    time_t before = time(NULL);
    cqr_ckpt_stats_record(&c, 1, 7, 4096, 1.5);
    ck_assert_uint_eq(atomic_load(&c.ok), 1);
    ck_assert_uint_eq(atomic_load(&c.failed), 0);
    ck_assert_uint_eq(atomic_load(&c.generation), 7);
    ck_assert_uint_eq(atomic_load(&c.bytes), 4096);
    ck_assert_uint_eq(atomic_load(&c.duration_us), 1500000);
    ck_assert_uint_eq(atomic_load(&c.total_us), 1500000);
    ck_assert_uint_ge(atomic_load(&c.unix_time), (uint64_t)before);
    /* A failure counts and changes no figure. */
    cqr_ckpt_stats_record(&c, 0, 99, 1, 9.0);
    ck_assert_uint_eq(atomic_load(&c.failed), 1);
    ck_assert_uint_eq(atomic_load(&c.ok), 1);
    ck_assert_uint_eq(atomic_load(&c.generation), 7);
    ck_assert_uint_eq(atomic_load(&c.bytes), 4096);
    /* The totals add; the last figures are replaced; a negative duration
     * counts as 0. */
    cqr_ckpt_stats_record(&c, 1, 8, 100, 0.25);
    ck_assert_uint_eq(atomic_load(&c.ok), 2);
    ck_assert_uint_eq(atomic_load(&c.generation), 8);
    ck_assert_uint_eq(atomic_load(&c.bytes), 100);
    ck_assert_uint_eq(atomic_load(&c.duration_us), 250000);
    ck_assert_uint_eq(atomic_load(&c.total_us), 1750000);
    cqr_ckpt_stats_record(&c, 1, 9, 1, -1.0);
    ck_assert_uint_eq(atomic_load(&c.duration_us), 0);
    ck_assert_uint_eq(atomic_load(&c.total_us), 1750000);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("opstats");
    TCase *tc = tcase_create("opstats");
    tcase_add_test(tc, test_bounds);
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_buckets_exact);
    tcase_add_test(tc, test_status_and_ops);
    tcase_add_test(tc, test_threads_summed);
    tcase_add_test(tc, test_concurrent_exact);
    tcase_add_test(tc, test_now_monotonic);
    tcase_add_test(tc, test_ckpt_stats);
    suite_add_tcase(s, tc);
    return s;
}
