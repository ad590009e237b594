/* test_client_concurrency.c -- many clients at once, and a cluster phase
 * under traffic.
 *
 * 1. Sixteen threads, each with its own client, push to and look up their
 *    own IDs of one `full` SGD table while reading others'. Each thread
 *    mirrors its IDs in an engine table of its own: a full table's row
 *    depends only on the seed and that row's pushes, so the mirror gives
 *    the exact expected values whatever the other threads do.
 * 2. A cqr table is clustered while pushers and lookers run. Every
 *    acknowledged push is counted: the server's per-table push counter
 *    and known-ID count must match exactly, lookups must keep being
 *    answered during the phase, and the final table must equal (up to the
 *    summation order of concurrent pushes) an engine that ran the pushes
 *    before the phase, the phase, then the pushes made during it.
 *
 * Threads never call ck_assert (check's longjmp is not thread-safe): they
 * record their first failure and the main thread asserts after join.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "check_main.h"

static cqr_test_server_t srv;

static void setup(void)
{
    /* More I/O threads than the default, to exercise the server's
     * concurrency. */
    static const char *const args[] = { "--threads", "4", NULL };
    tu_server_start(&srv, args);
}

static void teardown(void)
{
    tu_server_stop(&srv);
}

/* ---- 16 concurrent clients --------------------------------------------- */

#define CT_THREADS 16
#define CT_IDS 256     /* IDs owned by each thread */
#define CT_ROUNDS 40
#define CT_BATCH 64
#define CT_DIM 8

typedef struct worker {
    int index;
    const char *addr;
    const cqrps_table_config_t *cfg;
    char err[512];          /* first failure, "" if none */
    uint64_t pushed;        /* IDs acknowledged */
    unsigned char seen[CT_IDS]; /* own IDs pushed at least once */
} worker_t;

static void wfail(worker_t *w, const char *what, cqrps_client_t *c, int rc)
{
    if (!w->err[0])
        snprintf(w->err, sizeof(w->err), "thread %d: %s: %s (%s)", w->index,
                 what, cqrps_errname(rc), c ? cqrps_last_error(c) : "");
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    cqrps_client_t *c = NULL;
    int rc = cqrps_connect(w->addr, NULL, &c);
    if (rc < 0) {
        snprintf(w->err, sizeof(w->err), "thread %d: connect: %s",
                 w->index, cqrps_last_error(NULL));
        return NULL;
    }
    cqr_table_t *m = NULL;
    cqr_table_config_t ec;
    tu_engine_config(w->cfg, &ec);
    if (cqr_table_create(&ec, &m) != 0) {
        snprintf(w->err, sizeof(w->err), "thread %d: mirror", w->index);
        cqrps_close(c);
        return NULL;
    }
    uint64_t st = 1000 + (uint64_t)w->index;
    uint64_t own[CT_IDS], ids[CT_BATCH], other[CT_BATCH];
    float g[CT_BATCH * CT_DIM];
    float a[CT_IDS * CT_DIM], b[CT_IDS * CT_DIM];
    for (int i = 0; i < CT_IDS; i++)
        own[i] = (uint64_t)w->index * 1000003ULL + (uint64_t)i * 7;

    for (int r = 0; r < CT_ROUNDS && !w->err[0]; r++) {
        for (int i = 0; i < CT_BATCH; i++) {
            int k = (int)(tu_rand(&st) % CT_IDS);
            ids[i] = own[k];
            w->seen[k] = 1;
        }
        tu_fill(g, CT_BATCH * CT_DIM, &st);
        if ((rc = cqrps_push(c, "conc.full", ids, g, CT_BATCH)) < 0) {
            wfail(w, "push", c, rc);
            break;
        }
        w->pushed += CT_BATCH;
        cqr_table_push(m, ids, g, CT_BATCH);
        /* Read everyone's IDs (values unchecked: they move). */
        for (int i = 0; i < CT_BATCH; i++)
            other[i] = (tu_rand(&st) % CT_THREADS) * 1000003ULL +
                       (tu_rand(&st) % CT_IDS) * 7;
        if ((rc = cqrps_lookup(c, "conc.full", other, CT_BATCH, a)) < 0) {
            wfail(w, "lookup of others", c, rc);
            break;
        }
        /* Own IDs: exactly what the mirror holds. */
        if ((rc = cqrps_lookup(c, "conc.full", own, CT_IDS, a)) < 0) {
            wfail(w, "lookup", c, rc);
            break;
        }
        cqr_table_lookup(m, own, CT_IDS, b);
        if (memcmp(a, b, sizeof(a)) != 0) {
            snprintf(w->err, sizeof(w->err),
                     "thread %d round %d: values differ from the mirror",
                     w->index, r);
            break;
        }
    }
    cqr_table_destroy(m);
    cqrps_close(c);
    return NULL;
}

START_TEST(test_sixteen_clients_exact)
{
    cqrps_client_t *c = tu_connect(srv.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_FULL, CQRPS_OPT_SGD, CT_DIM);
    cfg.lr = 0.5f;
    ck_assert_int_eq(cqrps_create_table(c, "conc.full", &cfg, NULL), 0);

    worker_t w[CT_THREADS];
    pthread_t th[CT_THREADS];
    for (int t = 0; t < CT_THREADS; t++) {
        memset(&w[t], 0, sizeof(w[t]));
        w[t].index = t;
        w[t].addr = srv.addr;
        w[t].cfg = &cfg;
        ck_assert_int_eq(pthread_create(&th[t], NULL, worker_main, &w[t]), 0);
    }
    uint64_t pushed = 0, distinct = 0;
    for (int t = 0; t < CT_THREADS; t++) {
        pthread_join(th[t], NULL);
        pushed += w[t].pushed;
        for (int i = 0; i < CT_IDS; i++)
            distinct += w[t].seen[i];
    }
    for (int t = 0; t < CT_THREADS; t++)
        ck_assert_msg(w[t].err[0] == '\0', "%s", w[t].err);
    ck_assert_uint_eq(pushed, (uint64_t)CT_THREADS * CT_ROUNDS * CT_BATCH);

    cqrps_table_info_t info;
    ck_assert_int_eq(cqrps_describe_table(c, "conc.full", &info), 0);
    ck_assert_uint_eq(info.pushes, pushed);
    ck_assert_uint_eq(info.known_ids, distinct);
    ck_assert_int_eq(cqrps_drop_table(c, "conc.full"), 0);
    cqrps_close(c);
}
END_TEST

/* ---- A cluster phase under traffic ------------------------------------- */

/* Sanitizer builds run the engine many times slower: a smaller phase
 * and fewer pushes keep the suite within its time bound there. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define CP_SLOW 1
#else
#define CP_SLOW 0
#endif

#define CP_DIM 16
#define CP_PREPOP (CP_SLOW ? 20000 : 50000) /* known IDs before the phase */
#define CP_PREPOP_BATCH 10000
#define CP_PUSHERS 4
#define CP_LOOKERS 4
#define CP_BATCH 100
/* Per pusher: a bound; the stop flag ends them sooner. */
#define CP_MAX_PUSHES (CP_SLOW ? 300 : 3000)

static atomic_int cp_stop;        /* 1: threads finish */
static atomic_int cp_in_phase;    /* 1 while the main thread sees RUNNING */

typedef struct cp_thread {
    int index;
    const char *addr;
    char err[512];
    uint64_t acked;           /* pushes (batches) acknowledged */
    uint64_t busy;            /* pushes refused with BUSY and retried */
    uint64_t lookups;         /* lookups answered */
    uint64_t lookups_in_phase; /* ... while the phase was running */
    uint64_t max_lookup_ms;   /* slowest lookup */
} cp_thread_t;

/* Batch j of pusher t, the same on every call: the mirror regenerates
 * the pushes instead of logging them. Odd slots push random gradients to
 * IDs known before the phase; even slots push zero gradients to new IDs.
 * A zero SGD step changes no parameter, so the new IDs count as known
 * (and as pushes) without making the values depend on whether the engine
 * gave them hashed pointers (pushed after the commit) or nearest-centroid
 * ones (pushed during the phase, see cluster.c's replay): the expected
 * values then do not depend on when exactly the commit happened. */
static void cp_batch(int t, uint64_t j, uint64_t *ids, float *g)
{
    uint64_t st = ((uint64_t)t << 40) ^ (j * 0x9e3779b97f4a7c15ULL);
    tu_fill(g, CP_BATCH * CP_DIM, &st);
    for (int i = 0; i < CP_BATCH; i++) {
        if (i % 2) {
            ids[i] = tu_rand(&st) % CP_PREPOP;
        } else {
            ids[i] = (1ULL << 40) + (uint64_t)t * 100000 + j % 50 * 100 +
                     (uint64_t)i;
            memset(g + (size_t)i * CP_DIM, 0, CP_DIM * sizeof(float));
        }
    }
}

static void *cp_pusher(void *arg)
{
    cp_thread_t *p = arg;
    cqrps_client_t *c = NULL;
    if (cqrps_connect(p->addr, NULL, &c) < 0) {
        snprintf(p->err, sizeof(p->err), "pusher connect: %s",
                 cqrps_last_error(NULL));
        return NULL;
    }
    uint64_t ids[CP_BATCH];
    float g[CP_BATCH * CP_DIM];
    while (!atomic_load(&cp_stop) && p->acked < CP_MAX_PUSHES) {
        cp_batch(p->index, p->acked, ids, g);
        int rc = cqrps_push(c, "conc.cqr", ids, g, CP_BATCH);
        if (rc == CQRPS_EBUSY) {
            p->busy++; /* the phase's push log is full: retry later */
            tu_sleep_ms(2);
            continue;
        }
        if (rc < 0) {
            snprintf(p->err, sizeof(p->err), "push: %s: %s",
                     cqrps_errname(rc), cqrps_last_error(c));
            break;
        }
        p->acked++;
    }
    cqrps_close(c);
    return NULL;
}

static void *cp_looker(void *arg)
{
    cp_thread_t *p = arg;
    cqrps_client_t *c = NULL;
    if (cqrps_connect(p->addr, NULL, &c) < 0) {
        snprintf(p->err, sizeof(p->err), "looker connect: %s",
                 cqrps_last_error(NULL));
        return NULL;
    }
    uint64_t st = 77 + (uint64_t)p->index, ids[500];
    static _Thread_local float out[500 * CP_DIM];
    while (!atomic_load(&cp_stop)) {
        for (int i = 0; i < 500; i++)
            ids[i] = tu_rand(&st) % CP_PREPOP;
        int before = atomic_load(&cp_in_phase);
        uint64_t t0 = tu_now_ms();
        int rc = cqrps_lookup(c, "conc.cqr", ids, 500, out);
        uint64_t dt = tu_now_ms() - t0;
        if (rc < 0) {
            snprintf(p->err, sizeof(p->err), "lookup: %s: %s",
                     cqrps_errname(rc), cqrps_last_error(c));
            break;
        }
        p->lookups++;
        if (before && atomic_load(&cp_in_phase))
            p->lookups_in_phase++;
        if (dt > p->max_lookup_ms)
            p->max_lookup_ms = dt;
    }
    cqrps_close(c);
    return NULL;
}

/* Waits until phase works past its snapshot and sample (the stages
 * traffic should overlap), failing if it ends first or not by deadline. */
static void wait_phase_working(cqrps_client_t *c, uint64_t phase,
                               uint64_t deadline)
{
    cqrps_phase_status_t ps;
    for (;;) {
        ck_assert_int_eq(cqrps_cluster_status(c, "conc.cqr", phase, &ps), 0);
        ck_assert_msg(ps.state != CQRPS_PHASE_DONE &&
                          ps.state != CQRPS_PHASE_FAILED,
                      "phase ended before traffic could start (%s)",
                      cqrps_phase_state_name(ps.state));
        if (ps.state == CQRPS_PHASE_RUNNING && ps.stage[0] &&
            strcmp(ps.stage, "snapshot") != 0 &&
            strcmp(ps.stage, "sample") != 0)
            break;
        ck_assert_msg(tu_now_ms() < deadline, "phase did not start");
        tu_sleep_ms(1);
    }
}

/* The phase and the acknowledged pushes of the pushers (th) replayed on
 * the mirror m; c's answers must match it within the tolerance. ids
 * has room for CP_PREPOP_BATCH IDs. */
static void compare_with_engine(cqrps_client_t *c, cqr_table_t *m,
                                const cp_thread_t *th, uint64_t *ids)
{
    /* The same calls in-process: pushes before, the phase, pushes after
     * (in thread order; the server saw them interleaved, hence the
     * tolerance). Compared on the IDs known before the phase. */
    ck_assert_int_eq(cqr_table_cluster(m, NULL, NULL, NULL), 0);
    float bg[CP_BATCH * CP_DIM];
    uint64_t bids[CP_BATCH];
    for (int t = 0; t < CP_PUSHERS; t++)
        for (uint64_t j = 0; j < th[t].acked; j++) {
            cp_batch(t, j, bids, bg);
            ck_assert_int_eq(cqr_table_push(m, bids, bg, CP_BATCH), 0);
        }
    float *a = malloc((size_t)CP_PREPOP_BATCH * CP_DIM * sizeof(float));
    float *b = malloc((size_t)CP_PREPOP_BATCH * CP_DIM * sizeof(float));
    double worst = 0;
    for (int t = 0; t < CP_PUSHERS; t++) {
        for (uint64_t j = 0; j < th[t].acked && j < 50; j++) {
            cp_batch(t, j, bids, bg);
            for (int i = 0; i < CP_BATCH / 2; i++)
                bids[i] = bids[2 * i + 1];
            ck_assert_int_eq(
                cqrps_lookup(c, "conc.cqr", bids, CP_BATCH / 2, a), 0);
            ck_assert_int_eq(cqr_table_lookup(m, bids, CP_BATCH / 2, b), 0);
            double d = tu_maxrel(a, b, CP_BATCH / 2 * CP_DIM);
            worst = d > worst ? d : worst;
        }
    }
    for (int i = 0; i < CP_PREPOP_BATCH; i++)
        ids[i] = (uint64_t)i * (CP_PREPOP / CP_PREPOP_BATCH);
    ck_assert_int_eq(cqrps_lookup(c, "conc.cqr", ids, CP_PREPOP_BATCH, a), 0);
    ck_assert_int_eq(cqr_table_lookup(m, ids, CP_PREPOP_BATCH, b), 0);
    double d = tu_maxrel(a, b, (size_t)CP_PREPOP_BATCH * CP_DIM);
    worst = d > worst ? d : worst;
    fprintf(stderr, "cluster under traffic: max relative difference from "
                    "the in-process engine %.3g\n", worst);
    ck_assert_msg(worst < 1e-4, "server and engine differ by %g", worst);
    free(a);
    free(b);
}

START_TEST(test_cluster_under_traffic_loses_nothing)
{
    cqrps_client_t *c = tu_connect(srv.addr);
    cqrps_table_config_t cfg;
    tu_config(&cfg, CQRPS_KIND_CQR, CQRPS_OPT_SGD, CP_DIM);
    /* A phase of a second or so in a release build (much longer under
     * sanitizers): long enough for traffic to overlap it. */
    cfg.rows = CP_SLOW ? 64 : 128;
    cfg.cluster_iters = 10;
    cfg.cluster_sample = 100;
    ck_assert_int_eq(cqrps_create_table(c, "conc.cqr", &cfg, NULL), 0);
    cqr_table_t *m = tu_mirror(&cfg);

    /* Known IDs before the phase, in pushes the mirror repeats. */
    uint64_t *ids = malloc(CP_PREPOP_BATCH * sizeof(*ids));
    float *g = malloc((size_t)CP_PREPOP_BATCH * CP_DIM * sizeof(float));
    uint64_t st = 3;
    for (uint64_t s = 0; s < CP_PREPOP; s += CP_PREPOP_BATCH) {
        for (int i = 0; i < CP_PREPOP_BATCH; i++)
            ids[i] = s + (uint64_t)i;
        tu_fill(g, (size_t)CP_PREPOP_BATCH * CP_DIM, &st);
        ck_assert_int_eq(cqrps_push(c, "conc.cqr", ids, g, CP_PREPOP_BATCH),
                         0);
        ck_assert_int_eq(cqr_table_push(m, ids, g, CP_PREPOP_BATCH), 0);
    }

    /* Start the phase, and the traffic once it works on its snapshot. */
    uint64_t phase;
    ck_assert_int_eq(cqrps_cluster(c, "conc.cqr", &phase), 0);
    cqrps_phase_status_t ps;
    uint64_t deadline = tu_now_ms() + 60000;
    wait_phase_working(c, phase, deadline);
    atomic_store(&cp_stop, 0);
    atomic_store(&cp_in_phase, 1);
    cp_thread_t th[CP_PUSHERS + CP_LOOKERS];
    pthread_t tid[CP_PUSHERS + CP_LOOKERS];
    for (int t = 0; t < CP_PUSHERS + CP_LOOKERS; t++) {
        memset(&th[t], 0, sizeof(th[t]));
        th[t].index = t;
        th[t].addr = srv.addr;
        ck_assert_int_eq(pthread_create(&tid[t], NULL,
                                        t < CP_PUSHERS ? cp_pusher
                                                       : cp_looker,
                                        &th[t]),
                         0);
    }
    for (;;) {
        ck_assert_int_eq(cqrps_cluster_status(c, "conc.cqr", phase, &ps), 0);
        if (ps.state == CQRPS_PHASE_DONE || ps.state == CQRPS_PHASE_FAILED)
            break;
        ck_assert_msg(tu_now_ms() < deadline, "phase did not finish");
        tu_sleep_ms(5);
    }
    atomic_store(&cp_in_phase, 0);
    tu_sleep_ms(200); /* traffic after the commit too */
    atomic_store(&cp_stop, 1);
    uint64_t acked = 0, in_phase = 0, lookups = 0, maxms = 0, busy = 0;
    for (int t = 0; t < CP_PUSHERS + CP_LOOKERS; t++) {
        pthread_join(tid[t], NULL);
        acked += th[t].acked;
        busy += th[t].busy;
        lookups += th[t].lookups;
        in_phase += th[t].lookups_in_phase;
        if (th[t].max_lookup_ms > maxms)
            maxms = th[t].max_lookup_ms;
    }
    for (int t = 0; t < CP_PUSHERS + CP_LOOKERS; t++)
        ck_assert_msg(th[t].err[0] == '\0', "%s", th[t].err);
    ck_assert_msg(ps.state == CQRPS_PHASE_DONE, "phase failed: %s", ps.error);
    fprintf(stderr,
            "cluster under traffic: phase %.3f s, %llu pushes acked (%llu "
            "BUSY retries), %llu replayed, %llu lookups (%llu during the "
            "phase, slowest %llu ms)\n",
            ps.seconds, (unsigned long long)acked, (unsigned long long)busy,
            (unsigned long long)ps.replayed_pushes,
            (unsigned long long)lookups, (unsigned long long)in_phase,
            (unsigned long long)maxms);
    ck_assert_msg(in_phase > 0, "no lookup answered during the phase");
    ck_assert_msg(acked > 0, "no push during the phase");

    /* Nothing lost: the counters match what was acknowledged. */
    cqrps_table_info_t info;
    ck_assert_int_eq(cqrps_describe_table(c, "conc.cqr", &info), 0);
    ck_assert_uint_eq(info.pushes, CP_PREPOP + acked * CP_BATCH);
    uint64_t new_ids = 0;
    for (int t = 0; t < CP_PUSHERS; t++)
        new_ids += (th[t].acked < 50 ? th[t].acked : 50) * (CP_BATCH / 2);
    ck_assert_uint_eq(info.known_ids, CP_PREPOP + new_ids);
    ck_assert_uint_eq(info.phases_done, 1);

    compare_with_engine(c, m, th, ids);

    ck_assert_int_eq(cqrps_drop_table(c, "conc.cqr"), 0);
    cqr_table_destroy(m);
    free(ids);
    free(g);
    cqrps_close(c);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("client_concurrency");
    TCase *tc = tcase_create("concurrency");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sixteen_clients_exact);
    tcase_add_test(tc, test_cluster_under_traffic_loses_nothing);
    suite_add_tcase(s, tc);
    return s;
}
