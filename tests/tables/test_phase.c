/* The phase runner (server/tables/phase.c) against real tables, without
 * the RPC layer: a due notice queues a scheduled phase that a worker
 * begins and commits; while a table's phase is queued or running, more
 * notices are dropped and a start gets BUSY; cancel ends queued and
 * running phases without a commit; shutdown cancels every phase (queued,
 * begun or not, and running) and ignores notices; a scheduled phase that
 * cannot begin fails visibly and is counted. The worker is held inside
 * the phase hook where a test needs a phase to stay queued. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/table.h"
#include "ops/log.h"
#include "tables/phase.h"
#include "tables/registry.h"
#include "check_main.h"
#include "phase_hold.h"

static cqr_registry_t *reg;
static cqr_phases_t *pm;
static atomic_uint_fast64_t start_errors;

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_WARN);
    atomic_store(&start_errors, 0);
    ck_assert_int_eq(cqr_registry_create(8, 1ull << 30, 0, &reg), 0);
    ck_assert_int_eq(cqr_phases_create(1, &start_errors, &pm), 0);
    cqr_phases_set_hook(pm, cqr_test_phase_hook, NULL);
}

static void teardown(void)
{
    cqr_test_phase_release();
    cqr_phases_destroy(pm);
    cqr_registry_destroy(reg);
}

/* A published table of `kind` with 300 known IDs; the caller holds one
 * reference (cqr_entry_unref). */
static cqr_entry_t *table(const char *name, cqr_kind_t kind)
{
    cqr_table_config_t c;
    cqr_table_config_default(&c, kind, 8);
    if (kind != CQR_KIND_FULL)
        c.rows = 16;
    c.seed = 3;
    cqr_entry_t *e;
    char why[128];
    ck_assert_int_eq(cqr_registry_reserve(reg, name,
                                          cqr_table_config_bytes(&c), &e,
                                          why, sizeof why), 0);
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&c, &t), 0);
    cqr_registry_publish(reg, e, t);
    uint64_t ids[300];
    float g[300 * 8];
    for (size_t i = 0; i < 300; i++)
        ids[i] = i * 7919 + 1;
    for (size_t i = 0; i < 300 * 8; i++)
        g[i] = (float)(i % 13) * 0.01f - 0.06f;
    ck_assert_int_eq(cqr_table_push(t, ids, g, 300), 0);
    return e;
}

/* The latest phase of e's table, once it reached a final state. */
static cqr_phase_status_t wait_final(const cqr_entry_t *e)
{
    cqr_phase_status_t st;
    for (int i = 0; i < 60000; i++) {
        ck_assert_int_eq(cqr_phases_status(pm, e->uid, 0, &st), 0);
        if (st.state == CQR_PHASE_DONE || st.state == CQR_PHASE_FAILED)
            return st;
        usleep(1000);
    }
    ck_abort_msg("phase of %s did not end", e->name);
    return st;
}

START_TEST(test_due_runs_a_scheduled_phase)
{
    cqr_entry_t *e = table("c", CQR_KIND_CQR);
    cqr_phase_status_t st;
    ck_assert_int_eq(cqr_phases_status(pm, e->uid, 0, &st), CQR_ENOPHASE);
    cqr_phases_due(pm, e);
    /* Visible at once, before any worker took it. */
    ck_assert_int_eq(cqr_phases_status(pm, e->uid, 0, &st), 0);
    ck_assert_int_eq(st.scheduled, 1);
    ck_assert_uint_gt(st.phase_id, 0);
    ck_assert_str_eq(st.table, "c");
    st = wait_final(e);
    ck_assert_int_eq(st.state, CQR_PHASE_DONE);
    ck_assert_uint_eq(st.ids_assigned, 300);
    ck_assert_str_eq(st.error, "");
    cqr_table_stats_t ts;
    cqr_table_stats(e->table, &ts);
    ck_assert_uint_eq(ts.phases_done, 1);
    cqr_phase_counts_t pc;
    cqr_phases_counts(pm, &pc);
    ck_assert_uint_eq(pc.started, 1);
    ck_assert_uint_eq(pc.scheduled, 1);
    ck_assert_uint_eq(pc.done, 1);
    ck_assert_uint_eq(pc.queued + pc.running + pc.failed, 0);
    ck_assert_uint_eq(atomic_load(&start_errors), 0);
    cqr_entry_unref(e);
}
END_TEST

START_TEST(test_one_phase_per_table)
{
    cqr_entry_t *a = table("a", CQR_KIND_CQR);
    cqr_entry_t *b = table("b", CQR_KIND_CQR);
    cqr_test_phase_hold("a");
    uint64_t ida = 0, id;
    ck_assert_int_eq(cqr_phases_start(pm, a, &ida), 0);
    cqr_test_phase_wait_held(); /* the only worker is busy with a */
    ck_assert_int_eq(cqr_phases_start(pm, a, &id), CQR_EBUSY);
    cqr_phases_due(pm, a); /* dropped: a's phase is running */

    cqr_phases_due(pm, b);
    cqr_phase_status_t st;
    ck_assert_int_eq(cqr_phases_status(pm, b->uid, 0, &st), 0);
    ck_assert_int_eq(st.state, CQR_PHASE_QUEUED);
    ck_assert_int_eq(st.scheduled, 1);
    uint64_t idb = st.phase_id;
    ck_assert_uint_gt(idb, ida);
    cqr_phases_due(pm, b); /* dropped: b's phase is queued */
    ck_assert_int_eq(cqr_phases_start(pm, b, &id), CQR_EBUSY);
    cqr_phase_counts_t pc;
    cqr_phases_counts(pm, &pc);
    ck_assert_uint_eq(pc.started, 2);
    ck_assert_uint_eq(pc.scheduled, 1);
    ck_assert_uint_eq(pc.queued, 1);
    ck_assert_uint_eq(pc.running, 1);

    cqr_test_phase_release();
    ck_assert_int_eq(wait_final(a).state, CQR_PHASE_DONE);
    st = wait_final(b);
    ck_assert_int_eq(st.state, CQR_PHASE_DONE);
    ck_assert_uint_eq(st.phase_id, idb);
    /* Both ended: each table may start again. */
    ck_assert_int_eq(cqr_phases_start(pm, a, &id), 0);
    ck_assert_uint_gt(id, idb);
    wait_final(a);
    cqr_phases_counts(pm, &pc);
    ck_assert_uint_eq(pc.started, 3);
    ck_assert_uint_eq(pc.done, 3);
    cqr_entry_unref(a);
    cqr_entry_unref(b);
}
END_TEST

static void *shutdown_main(void *arg)
{
    cqr_phases_shutdown(arg);
    return NULL;
}

START_TEST(test_shutdown)
{
    cqr_entry_t *a = table("a", CQR_KIND_CQR);
    cqr_entry_t *b = table("b", CQR_KIND_CQR);
    cqr_entry_t *c = table("c", CQR_KIND_CQR);
    cqr_test_phase_hold("a");
    uint64_t id;
    ck_assert_int_eq(cqr_phases_start(pm, a, &id), 0);
    cqr_test_phase_wait_held();
    cqr_phases_due(pm, b);                         /* queued, not begun */
    ck_assert_int_eq(cqr_phases_start(pm, c, &id), 0); /* queued, begun */

    /* Shutdown aborts the queued phases at once and cancels the running
     * one (held here before its run: it never runs). */
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, shutdown_main, pm), 0);
    cqr_phase_status_t sb = wait_final(b), sc = wait_final(c);
    ck_assert_int_eq(sb.state, CQR_PHASE_FAILED);
    ck_assert_str_eq(sb.error, "cancelled: server shutting down");
    ck_assert_int_eq(sb.cancelled, 1);
    ck_assert_int_eq(sc.state, CQR_PHASE_FAILED);
    ck_assert_str_eq(sc.error, "cancelled: server shutting down");
    cqr_test_phase_release();
    pthread_join(th, NULL);
    cqr_phase_status_t sa = wait_final(a);
    ck_assert_int_eq(sa.state, CQR_PHASE_FAILED);
    ck_assert_int_eq(sa.cancelled, 1);
    ck_assert_str_eq(sa.error, "cancelled: server shutting down");

    /* After shutdown: starts fail, notices are ignored. */
    ck_assert_int_eq(cqr_phases_start(pm, a, &id), CQR_ESHUTDOWN);
    cqr_phase_counts_t before, after;
    cqr_phases_counts(pm, &before);
    cqr_phases_due(pm, b);
    cqr_phases_counts(pm, &after);
    ck_assert_uint_eq(after.started, before.started);
    ck_assert_uint_eq(before.done, 0);
    ck_assert_uint_eq(before.failed, 3);
    ck_assert_uint_eq(before.queued + before.running, 0);
    /* The engine kept its live state: nothing committed. */
    cqr_table_stats_t ts;
    cqr_table_stats(c->table, &ts);
    ck_assert_uint_eq(ts.phases_done, 0);
    ck_assert_uint_eq(ts.phase_running, 0);
    cqr_table_stats(a->table, &ts);
    ck_assert_uint_eq(ts.phases_done, 0);
    ck_assert_uint_eq(ts.phase_running, 0);
    cqr_entry_unref(a);
    cqr_entry_unref(b);
    cqr_entry_unref(c);
}
END_TEST

/* Cancel: a queued phase (begun or scheduled) ends at once; a running one
 * (held in the hook before its run) ends when released, uncommitted, with
 * the table's digest unchanged; nothing to cancel is NO_SUCH_PHASE; the
 * table can run a phase again afterwards. */
START_TEST(test_cancel)
{
    cqr_entry_t *a = table("a", CQR_KIND_CQR);
    cqr_entry_t *b = table("b", CQR_KIND_CQR);
    cqr_entry_t *c = table("c", CQR_KIND_CQR);
    uint64_t da, id, ida;
    ck_assert_int_eq(cqr_table_digest(a->table, &da), 0);
    cqr_phase_status_t st;
    ck_assert_int_eq(cqr_phases_cancel(pm, a->uid, 0, "x", &st),
                     CQR_ENOPHASE);
    cqr_test_phase_hold("a");
    ck_assert_int_eq(cqr_phases_start(pm, a, &ida), 0);
    cqr_test_phase_wait_held();
    cqr_phases_due(pm, b);
    ck_assert_int_eq(cqr_phases_start(pm, c, &id), 0);
    ck_assert_int_eq(cqr_phases_cancel(pm, c->uid, id + 1, "x", &st),
                     CQR_ENOPHASE); /* wrong id */

    ck_assert_int_eq(cqr_phases_cancel(pm, b->uid, 0, "by request", &st),
                     0);
    ck_assert_int_eq(st.state, CQR_PHASE_QUEUED);
    st = wait_final(b);
    ck_assert_int_eq(st.state, CQR_PHASE_FAILED);
    ck_assert_int_eq(st.cancelled, 1);
    ck_assert_str_eq(st.error, "cancelled: by request");
    ck_assert_int_eq(cqr_phases_cancel(pm, c->uid, id, "by request", &st),
                     0);
    ck_assert_int_eq(wait_final(c).cancelled, 1);

    ck_assert_int_eq(cqr_phases_cancel(pm, a->uid, 0, "by request", &st),
                     0);
    ck_assert_int_eq(st.state, CQR_PHASE_RUNNING);
    ck_assert_uint_eq(st.phase_id, ida);
    /* A second request finds it still running and changes nothing. */
    ck_assert_int_eq(cqr_phases_cancel(pm, a->uid, 0, "again", &st), 0);
    cqr_test_phase_release();
    st = wait_final(a);
    ck_assert_int_eq(st.state, CQR_PHASE_FAILED);
    ck_assert_int_eq(st.cancelled, 1);
    ck_assert_str_eq(st.error, "cancelled: by request");
    uint64_t d;
    ck_assert_int_eq(cqr_table_digest(a->table, &d), 0);
    ck_assert_uint_eq(d, da);
    cqr_phase_counts_t pc;
    cqr_phases_counts(pm, &pc);
    ck_assert_uint_eq(pc.failed, 3);
    ck_assert_uint_eq(pc.queued + pc.running, 0);

    /* (the release ended the hold) */
    ck_assert_int_eq(cqr_phases_start(pm, a, &id), 0);
    st = wait_final(a);
    ck_assert_int_eq(st.state, CQR_PHASE_DONE);
    ck_assert_int_eq(st.cancelled, 0);
    ck_assert_uint_eq(st.phase_no, 1);
    ck_assert_uint_eq(st.chunks, 4);
    ck_assert_uint_eq(st.chunk, 4);
    ck_assert_uint_ge(st.kmeans_iters, 1);
    ck_assert(st.eta_seconds == 0);
    cqr_entry_unref(a);
    cqr_entry_unref(b);
    cqr_entry_unref(c);
}
END_TEST

/* A table kind without phases: a start is refused at once; a scheduled
 * phase that cannot begin ends FAILED and is counted. */
START_TEST(test_cannot_begin)
{
    cqr_entry_t *h = table("h", CQR_KIND_HASH);
    uint64_t id;
    ck_assert_int_eq(cqr_phases_start(pm, h, &id), CQR_EUNSUPPORTED);
    cqr_phase_status_t st;
    ck_assert_int_eq(cqr_phases_status(pm, h->uid, 0, &st), CQR_ENOPHASE);
    cqr_phases_due(pm, h);
    st = wait_final(h);
    ck_assert_int_eq(st.state, CQR_PHASE_FAILED);
    ck_assert_int_eq(st.scheduled, 1);
    ck_assert_ptr_nonnull(strstr(st.error, "begin failed: "));
    ck_assert_uint_eq(atomic_load(&start_errors), 1);
    cqr_phase_counts_t pc;
    cqr_phases_counts(pm, &pc);
    ck_assert_uint_eq(pc.failed, 1);
    ck_assert_uint_eq(pc.queued + pc.running, 0);
    cqr_entry_unref(h);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("phase");
    TCase *tc = tcase_create("phase");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_due_runs_a_scheduled_phase);
    tcase_add_test(tc, test_one_phase_per_table);
    tcase_add_test(tc, test_shutdown);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_cannot_begin);
    suite_add_tcase(s, tc);
    return s;
}
