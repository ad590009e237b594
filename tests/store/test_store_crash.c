/* The RocksDB checkpoint store under stress: checkpoints taken while
 * pushes and lookups run on other threads hold a consistent state, and a
 * process killed at any moment (SIGKILL) leaves a store that restores
 * exactly what it acknowledged, or the checkpoint in flight if that one
 * committed.
 *
 * The crash test runs this binary again as a child (--crash-child DIR FD)
 * that pushes and checkpoints in a loop, reporting every checkpoint on
 * the pipe FD before ("P gen digest") and after ("A gen digest") the call;
 * the parent kills it at random moments and checks what the reopened
 * store restores. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/persist.h"
#include "engine/table.h"
#include "store/store.h"
#include "check_main.h"
#include "store_util.h"

/* ---- Checkpoints under concurrent pushes and lookups --------------------
 * Same counting invariant as test_persist: pusher k adds exactly 1 to
 * A_k, B_k and a new ID per push, so a consistent generation has
 * v(A_k) = v(B_k) = c_k, 2 + c_k known IDs per pusher, and c_k between
 * the pushes acknowledged before the checkpoint began and those begun
 * before it returned. */
#define PUSHERS 2

typedef struct pusher {
    cqr_table_t *t;
    int k;
    int stop;
    uint64_t started, acked;
} pusher_t;

static void *pusher_main(void *arg)
{
    pusher_t *p = arg;
    float g[12];
    for (int j = 0; j < 12; j++)
        g[j] = -1.0f;
    for (uint64_t i = 0; !__atomic_load_n(&p->stop, __ATOMIC_RELAXED); i++) {
        uint64_t ids[3] = {1000 + 10 * (uint64_t)p->k,
                           (uint64_t)(p->k + 1) << 40 | i,
                           1001 + 10 * (uint64_t)p->k};
        __atomic_store_n(&p->started, i + 1, __ATOMIC_RELEASE);
        ck_assert_int_eq(cqr_table_push(p->t, ids, g, 3), 0);
        __atomic_store_n(&p->acked, i + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

typedef struct looker {
    cqr_table_t *t;
    int stop;
    uint64_t n;
} looker_t;

static void *looker_main(void *arg)
{
    looker_t *l = arg;
    uint64_t ids[4] = {1000, 1001, 1010, 1011};
    float out[16];
    while (!__atomic_load_n(&l->stop, __ATOMIC_RELAXED)) {
        ck_assert_int_eq(cqr_table_lookup(l->t, ids, 4, out), 0);
        l->n++;
    }
    return NULL;
}

START_TEST(test_store_concurrent)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 0);
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 4);
    cfg.init_scale = 0.0f;
    cfg.optim.kind = CQR_OPT_SGD;
    cfg.optim.lr = 1.0f;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    pusher_t p[PUSHERS];
    pthread_t th[PUSHERS + 1];
    looker_t l = {t, 0, 0};
    for (int k = 0; k < PUSHERS; k++) {
        p[k] = (pusher_t){t, k, 0, 0, 0};
        ck_assert_int_eq(pthread_create(&th[k], NULL, pusher_main, &p[k]), 0);
    }
    ck_assert_int_eq(pthread_create(&th[PUSHERS], NULL, looker_main, &l), 0);
    enum { ROUNDS = 8 };
    uint64_t before[ROUNDS + 1][PUSHERS], after[ROUNDS + 1][PUSHERS];
    const char *name = "t";
    for (int r = 1; r <= ROUNDS; r++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        for (int k = 0; k < PUSHERS; k++)
            before[r][k] = __atomic_load_n(&p[k].acked, __ATOMIC_ACQUIRE);
        ck_assert_uint_eq(checkpoint(s, &t, &name, 1, NULL), (uint64_t)r);
        for (int k = 0; k < PUSHERS; k++)
            after[r][k] = __atomic_load_n(&p[k].started, __ATOMIC_ACQUIRE);
    }
    for (int k = 0; k < PUSHERS; k++)
        __atomic_store_n(&p[k].stop, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&l.stop, 1, __ATOMIC_RELAXED);
    for (int k = 0; k <= PUSHERS; k++)
        pthread_join(th[k], NULL);
    for (int r = 1; r <= ROUNDS; r++) {
        tset_t ts;
        cqr_store_load_info_t li;
        ck_assert_int_eq(load(s, (uint64_t)r, &ts, &li), 0);
        cqr_table_stats_t st;
        cqr_table_stats(ts.t[0], &st);
        uint64_t known = 0;
        for (int k = 0; k < PUSHERS; k++) {
            uint64_t ids[2] = {1000 + 10 * (uint64_t)k,
                               1001 + 10 * (uint64_t)k};
            float v[8];
            ck_assert_int_eq(cqr_table_lookup(ts.t[0], ids, 2, v), 0);
            uint64_t c = (uint64_t)v[0];
            ck_assert_msg(v[0] == v[4], "generation %d: torn push", r);
            ck_assert_msg(before[r][k] <= c && c <= after[r][k],
                          "generation %d pusher %d: %llu not in [%llu, %llu]",
                          r, k, (unsigned long long)c,
                          (unsigned long long)before[r][k],
                          (unsigned long long)after[r][k]);
            known += c ? 2 + c : 0;
        }
        ck_assert_uint_eq(st.known_ids, known);
        tset_free(&ts);
    }
    cqr_persist_stats_t ps;
    cqr_persist_stats(t, &ps);
    printf("concurrent: %d checkpoints, max push pause %.3f ms, "
           "%llu lookups meanwhile\n", ROUNDS, ps.max_pause_seconds * 1e3,
           (unsigned long long)l.n);
    cqr_table_destroy(t);
    cqr_store_close(s);
    rmdir_all(dir);
}
END_TEST

/* ---- Crash safety ------------------------------------------------------- */

static const char *crash_names[3] = {"full", "cqr", "hash"};

/* The child: restore (or create), then push and checkpoint forever,
 * reporting each checkpoint before and after. */
static int crash_child(const char *dir, int fd)
{
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = 2;
    cqr_store_t *s;
    char why[256];
    if (cqr_store_open(dir, &o, &s, why, sizeof why)) {
        dprintf(fd, "E open %s\n", why);
        return 2;
    }
    tset_t ts = {0};
    cqr_store_load_info_t li;
    if (cqr_store_load(s, 0, collect, &ts, NULL, NULL, &li)) {
        dprintf(fd, "E load\n");
        return 2;
    }
    cqr_table_t *t[3];
    if (ts.n == 0) {
        t[0] = make(CQR_KIND_FULL, CQR_OPT_ADAM, 16, 0, 1);
        t[1] = make(CQR_KIND_CQR, CQR_OPT_SGD, 16, 256, 2);
        t[2] = make(CQR_KIND_HASH, CQR_OPT_ADAGRAD, 8, 100000, 3);
    } else {
        for (int i = 0; i < 3; i++)
            t[i] = tset_get(&ts, crash_names[i]);
    }
    cqr_rng_t rng;
    cqr_rng_seed(&rng, (uint64_t)getpid() * 7919 + (uint64_t)time(NULL));
    uint64_t gen = li.generation;
    for (int it = 0;; it++) {
        push_random(t[0], &rng, 4, 2048, 0, 300000);
        push_random(t[1], &rng, 4, 2048, 0, 200000);
        push_random(t[2], &rng, 2, 1024, 0, 1u << 30);
        if (it % 3 == 2 &&
            cqr_table_cluster(t[1], NULL, NULL, NULL) != 0) {
            dprintf(fd, "E cluster\n");
            return 2;
        }
        tset_t cur = {3, {(char *)crash_names[0], (char *)crash_names[1],
                          (char *)crash_names[2]}, {t[0], t[1], t[2]}};
        uint64_t d = tset_digest(&cur);
        dprintf(fd, "P %llu %016llx\n", (unsigned long long)gen + 1,
                (unsigned long long)d);
        uint64_t g;
        int rc = cqr_store_checkpoint(s, t, crash_names, 3, NULL, NULL, &g,
                                      NULL);
        if (rc) {
            dprintf(fd, "E checkpoint %d\n", rc);
            return 2;
        }
        gen = g;
        dprintf(fd, "A %llu %016llx\n", (unsigned long long)g,
                (unsigned long long)d);
    }
}

/* Runs this binary as the crash child on dir; *pid is the child, the
 * result reads its reports. */
static FILE *spawn_child(const char *dir, pid_t *pid)
{
    int fds[2];
    ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
    *pid = fork();
    ck_assert_int_ge(*pid, 0);
    if (*pid == 0) {
        char fdstr[16];
        snprintf(fdstr, sizeof fdstr, "%d", fds[1]);
        fcntl(fds[1], F_SETFD, 0);
        execl("/proc/self/exe", "test_store_crash", "--crash-child", dir,
              fdstr, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    return fdopen(fds[0], "r");
}

/* After a kill: the reopened store restores exactly the acknowledged
 * generation, or the one in flight (pend_gen, 0 if none) if it had
 * committed; then that one becomes the acknowledged one and the result
 * is 1. */
static int check_restored(const char *dir, int iter, uint64_t pend_gen,
                          uint64_t pend_d, uint64_t *acked_gen,
                          uint64_t *acked_d)
{
    int adopted = 0;
    cqr_store_t *s = open_store(dir, 2);
    tset_t loaded;
    cqr_store_load_info_t li;
    int rc = load(s, 0, &loaded, &li);
    ck_assert_msg(rc == 0, "iteration %d: load: %s", iter,
                  cqr_strerror(rc));
    ck_assert_uint_eq(li.skipped, 0);
    if (li.generation == 0) {
        ck_assert_uint_eq(*acked_gen, 0);
    } else {
        uint64_t d = tset_digest(&loaded);
        if (li.generation == *acked_gen) {
            ck_assert_msg(d == *acked_d, "iteration %d: generation %llu "
                          "differs from what was acknowledged", iter,
                          (unsigned long long)*acked_gen);
        } else {
            /* The checkpoint in flight completed before the kill but
             * was not reported: it must be exactly that state. */
            ck_assert_msg(pend_gen && li.generation == pend_gen &&
                              d == pend_d,
                          "iteration %d: loaded generation %llu, "
                          "acknowledged %llu, in flight %llu", iter,
                          (unsigned long long)li.generation,
                          (unsigned long long)*acked_gen,
                          (unsigned long long)pend_gen);
            *acked_gen = pend_gen;
            *acked_d = pend_d;
            adopted = 1;
        }
    }
    tset_free(&loaded);
    cqr_store_close(s);
    return adopted;
}

START_TEST(test_store_crash)
{
    char *dir = tmpdir();
    uint64_t acked_gen = 0, acked_d = 0;
    int mid = 0, adopted = 0;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, (uint64_t)time(NULL));
    for (int iter = 0; iter < 20; iter++) {
        pid_t pid;
        FILE *f = spawn_child(dir, &pid);
        char line[256];
        uint64_t pend_gen = 0, pend_d = 0;
        int acks = 0;
        /* Kill at a random moment: in even rounds anywhere (during the
         * restore, the pushes, a checkpoint); in odd rounds aimed into a
         * checkpoint: a few ms after the child announced one. */
        long ms;
        if (iter % 2) {
            int want = 1 + (int)(cqr_rng_next(&rng) % 3);
            while (want > 0 && fgets(line, sizeof line, f)) {
                if (line[0] == 'P')
                    want--;
                if (want == 0)
                    break;
                unsigned long long g, d;
                if (sscanf(line, "A %llu %llx", &g, &d) == 2) {
                    acked_gen = g;
                    acked_d = d;
                }
            }
            unsigned long long g, d;
            ck_assert(sscanf(line, "P %llu %llx", &g, &d) == 2);
            pend_gen = g;
            pend_d = d;
            ms = (long)(cqr_rng_next(&rng) % 60);
        } else {
            ms = 30 + (long)(cqr_rng_next(&rng) % 1500);
        }
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        int status;
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                      "child exited by itself (status %d)", status);
        /* What the child acknowledged, and the checkpoint in flight. */
        while (fgets(line, sizeof line, f)) {
            unsigned long long g, d;
            ck_assert_msg(line[0] != 'E', "child: %s", line);
            if (sscanf(line, "P %llu %llx", &g, &d) == 2) {
                pend_gen = g;
                pend_d = d;
            } else if (sscanf(line, "A %llu %llx", &g, &d) == 2) {
                ck_assert_uint_eq(g, pend_gen);
                acked_gen = g;
                acked_d = d;
                pend_gen = 0;
                acks++;
            }
        }
        fclose(f);
        mid += pend_gen != 0;

        (void)acks;
        adopted += check_restored(dir, iter, pend_gen, pend_d, &acked_gen,
                                  &acked_d);
    }
    printf("crash: 20 kills, %d during a checkpoint (%d of those had "
           "committed), last generation %llu\n", mid, adopted,
           (unsigned long long)acked_gen);
    ck_assert_uint_gt(acked_gen, 0);
    rmdir_all(dir);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("store_crash");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_store_concurrent);
    tcase_add_test(tc, test_store_crash);
    suite_add_tcase(s, tc);
    return s;
}

int cqr_test_child(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--crash-child") == 0) {
        g_child = 1;
        return crash_child(argv[2], atoi(argv[3]));
    }
    return -1;
}
