/* The RocksDB checkpoint store: exact restores of every kind, incremental
 * generations, corruption detection and fallback, retention, checkpoints
 * under concurrent traffic, and crash safety under SIGKILL.
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
#include <ftw.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/persist.h"
#include "store/store.h"
#include "engine/table.h"
#include "check_main.h"

/* ---- Helpers ----------------------------------------------------------- */

/* check's asserts talk to the test runner even when they pass, so the
 * crash child (not under the runner) checks with this instead. */
static int g_child;
#define REQUIRE(c)                                                           \
    do {                                                                     \
        if (g_child) {                                                       \
            if (!(c)) {                                                      \
                fprintf(stderr, "crash child: %s failed at line %d\n", #c,  \
                        __LINE__);                                           \
                _exit(3);                                                    \
            }                                                                \
        } else {                                                             \
            ck_assert(c);                                                    \
        }                                                                    \
    } while (0)

static int rm_cb(const char *path, const struct stat *sb, int flag,
                 struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static char *tmpdir(void)
{
    char *d = strdup("/tmp/cqr_store_test_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static void rmdir_all(char *d)
{
    nftw(d, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static cqr_store_t *open_store(const char *dir, uint32_t keep)
{
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = keep;
    cqr_store_t *s = NULL;
    char why[256];
    int rc = cqr_store_open(dir, &o, &s, why, sizeof why);
    ck_assert_msg(rc == 0, "open %s: %s", dir, why);
    return s;
}

static cqr_table_t *make(cqr_kind_t kind, cqr_optim_kind_t opt, uint32_t dim,
                         uint32_t rows, uint64_t seed)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, dim);
    if (kind != CQR_KIND_FULL)
        cfg.rows = rows;
    cfg.seed = seed;
    cfg.optim.kind = opt;
    cfg.optim.lr = 0.02f;
    cfg.cluster_iters = 4;
    cfg.cluster_sample = 10;
    cfg.schedule_every = 5000;
    cqr_table_t *t = NULL;
    REQUIRE(cqr_table_create(&cfg, &t) == 0);
    return t;
}

static uint64_t digest(cqr_table_t *t)
{
    uint64_t d;
    REQUIRE(cqr_table_digest(t, &d) == 0);
    return d;
}

static void push_random(cqr_table_t *t, cqr_rng_t *rng, int n, size_t batch,
                        uint64_t lo, uint64_t span)
{
    uint32_t dim = cqr_table_config(t)->dim;
    uint64_t *ids = malloc(batch * sizeof *ids);
    float *g = malloc(batch * dim * sizeof *g);
    for (int k = 0; k < n; k++) {
        for (size_t j = 0; j < batch; j++)
            ids[j] = lo + cqr_rng_next(rng) % span;
        for (size_t j = 0; j < batch * dim; j++)
            g[j] = cqr_rng_sym(rng, 1.0f);
        REQUIRE(cqr_table_push(t, ids, g, batch) == 0);
    }
    free(ids);
    free(g);
}

/* A set of named tables, as a load delivers them. */
#define MAXT 8
typedef struct tset {
    size_t n;
    char *names[MAXT];
    cqr_table_t *t[MAXT];
} tset_t;

static int collect(void *ud, const char *name, cqr_table_t *t)
{
    tset_t *ts = ud;
    if (ts->n == MAXT) {
        cqr_table_destroy(t);
        return CQR_ELIMIT;
    }
    ts->names[ts->n] = strdup(name);
    ts->t[ts->n++] = t;
    return 0;
}

static cqr_table_t *tset_get(const tset_t *ts, const char *name)
{
    for (size_t i = 0; i < ts->n; i++) {
        if (strcmp(ts->names[i], name) == 0)
            return ts->t[i];
    }
    return NULL;
}

static void tset_free(tset_t *ts)
{
    for (size_t i = 0; i < ts->n; i++) {
        free(ts->names[i]);
        cqr_table_destroy(ts->t[i]);
    }
    memset(ts, 0, sizeof *ts);
}

/* Digest of a set: each table's digest under its name, in name order. */
static uint64_t tset_digest(const tset_t *ts)
{
    size_t order[MAXT];
    for (size_t i = 0; i < ts->n; i++)
        order[i] = i;
    for (size_t i = 1; i < ts->n; i++) {
        for (size_t j = i; j > 0 && strcmp(ts->names[order[j - 1]],
                                           ts->names[order[j]]) > 0; j--) {
            size_t x = order[j];
            order[j] = order[j - 1];
            order[j - 1] = x;
        }
    }
    uint64_t h = 0x1234;
    for (size_t i = 0; i < ts->n; i++) {
        uint64_t d = digest(ts->t[order[i]]);
        h = XXH3_64bits_withSeed(ts->names[order[i]],
                                 strlen(ts->names[order[i]]), h ^ d);
    }
    return h;
}

static int load(cqr_store_t *s, uint64_t gen, tset_t *ts,
                cqr_store_load_info_t *info)
{
    memset(ts, 0, sizeof *ts);
    return cqr_store_load(s, gen, collect, ts, NULL, NULL, info);
}

static uint64_t checkpoint(cqr_store_t *s, cqr_table_t **t, const char **names,
                           size_t n, cqr_store_ckpt_stats_t *st)
{
    uint64_t gen = 0;
    int rc = cqr_store_checkpoint(s, t, names, n, NULL, NULL, &gen, st);
    if (rc) {
        char why[512];
        cqr_store_error(s, why, sizeof why);
        ck_abort_msg("checkpoint: %s: %s", cqr_strerror(rc), why);
    }
    return gen;
}

/* Direct RocksDB access, to damage what the store wrote. */
typedef struct raw {
    rocksdb_t *db;
    rocksdb_options_t *o;
    rocksdb_readoptions_t *ro;
    rocksdb_writeoptions_t *wo;
} raw_t;

static void raw_open(raw_t *r, const char *dir)
{
    r->o = rocksdb_options_create();
    rocksdb_options_set_enable_blob_files(r->o, 1);
    rocksdb_options_set_min_blob_size(r->o, 4096);
    char *err = NULL;
    r->db = rocksdb_open(r->o, dir, &err);
    ck_assert_msg(err == NULL, "raw open: %s", err);
    r->ro = rocksdb_readoptions_create();
    r->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(r->wo, 1);
}

static void raw_close(raw_t *r)
{
    rocksdb_close(r->db);
    rocksdb_options_destroy(r->o);
    rocksdb_readoptions_destroy(r->ro);
    rocksdb_writeoptions_destroy(r->wo);
}

/* Segment keys: "S" gen(8) name "\0" type(4) index(4), big-endian. */
static uint64_t key_gen(const char *k, size_t kl)
{
    uint64_t g = 0;
    for (size_t i = 1; i < 9 && i < kl; i++)
        g = g << 8 | (uint8_t)k[i];
    return g;
}

/* Finds a segment key written by generation gen; with not_in_gen, one
 * whose page generation not_in_gen did not rewrite (so that generation
 * shares it). Returns the key's length, or 0. */
static size_t find_seg(raw_t *r, uint64_t gen, uint64_t not_in_gen,
                       char *out)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator(r->db, r->ro);
    size_t found = 0;
    char keys[4096][64];
    size_t lens[4096], nk = 0;
    for (rocksdb_iter_seek(it, "S", 1); rocksdb_iter_valid(it) && nk < 4096;
         rocksdb_iter_next(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (k[0] != 'S' || kl > 64)
            break;
        memcpy(keys[nk], k, kl);
        lens[nk++] = kl;
    }
    rocksdb_iter_destroy(it);
    for (size_t i = 0; i < nk && !found; i++) {
        if (key_gen(keys[i], lens[i]) != gen)
            continue;
        int clash = 0;
        for (size_t j = 0; not_in_gen && j < nk; j++) {
            if (lens[j] == lens[i] &&
                memcmp(keys[j] + 9, keys[i] + 9, lens[i] - 9) == 0 &&
                key_gen(keys[j], lens[j]) == not_in_gen)
                clash = 1;
        }
        if (!clash) {
            memcpy(out, keys[i], lens[i]);
            found = lens[i];
        }
    }
    return found;
}

static void flip_value(raw_t *r, const char *k, size_t kl, size_t at)
{
    char *err = NULL;
    size_t vl;
    char *v = rocksdb_get(r->db, r->ro, k, kl, &vl, &err);
    ck_assert_ptr_null(err);
    ck_assert_ptr_nonnull(v);
    v[at % vl] ^= 0x04;
    rocksdb_put(r->db, r->wo, k, kl, v, vl, &err);
    ck_assert_ptr_null(err);
    rocksdb_free(v);
}

/* ---- Tests -------------------------------------------------------------- */

static const char *four_names[4] = {"users", "items", "ce_tab", "hash_tab"};

static void make_four(cqr_table_t **t)
{
    t[0] = make(CQR_KIND_FULL, CQR_OPT_ADAM, 16, 0, 1);
    t[1] = make(CQR_KIND_CQR, CQR_OPT_ADAGRAD, 16, 128, 2);
    t[2] = make(CQR_KIND_CE, CQR_OPT_SGD, 8, 300, 3);
    t[3] = make(CQR_KIND_HASH, CQR_OPT_ADAM, 8, 70000, 4);
}

static void train_four(cqr_table_t **t, cqr_rng_t *rng, int phase)
{
    for (int i = 0; i < 4; i++)
        push_random(t[i], rng, 6, 256, 0, 20000);
    if (phase)
        ck_assert_int_eq(cqr_table_cluster(t[1], NULL, NULL, NULL), 0);
}

/* Every kind restores exactly, from the latest and from an older
 * generation, and keeps checkpointing incrementally after a restore. */
START_TEST(test_store_roundtrip)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 0);
    cqr_table_t *t[4];
    make_four(t);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 1);
    train_four(t, &rng, 1);
    cqr_store_ckpt_stats_t st1, st2;
    uint64_t g1 = checkpoint(s, t, four_names, 4, &st1);
    uint64_t d1[4], d2[4];
    for (int i = 0; i < 4; i++)
        d1[i] = digest(t[i]);
    ck_assert_uint_eq(g1, 1);
    ck_assert_uint_eq(st1.tables_full, 4);
    train_four(t, &rng, 1);
    push_random(t[0], &rng, 1, 8, 0, 20000);
    uint64_t g2 = checkpoint(s, t, four_names, 4, &st2);
    ck_assert_uint_eq(g2, 2);
    ck_assert_uint_eq(st2.tables_full, 0);
    for (int i = 0; i < 4; i++)
        d2[i] = digest(t[i]);
    cqr_store_close(s);

    s = open_store(dir, 0);
    cqr_store_gen_t *gens;
    size_t ng;
    ck_assert_int_eq(cqr_store_list(s, &gens, &ng), 0);
    ck_assert_uint_eq(ng, 2);
    ck_assert_uint_eq(gens[0].generation, 2);
    ck_assert_uint_eq(gens[1].generation, 1);
    ck_assert_int_eq(gens[0].ok, 1);
    ck_assert_uint_eq(gens[0].tables, 4);
    ck_assert_uint_eq(gens[0].bytes_new, st2.bytes_written);
    ck_assert_uint_eq(gens[0].bytes, st2.bytes_total);
    ck_assert_uint_gt(gens[0].unix_time, 1600000000);
    free(gens);

    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(li.generation, 2);
    ck_assert_uint_eq(li.skipped, 0);
    ck_assert_uint_eq(ts.n, 4);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(digest(tset_get(&ts, four_names[i])) == d2[i],
                      "%s differs", four_names[i]);
    tset_t t1;
    ck_assert_int_eq(load(s, 1, &t1, &li), 0);
    ck_assert_uint_eq(li.generation, 1);
    for (int i = 0; i < 4; i++)
        ck_assert(digest(tset_get(&t1, four_names[i])) == d1[i]);
    tset_free(&t1);
    ck_assert_int_eq(load(s, 7, &t1, &li), CQR_ENOTFOUND);
    ck_assert_uint_eq(t1.n, 0);

    /* The loaded generation 1 is now the base: continue from the tables
     * restored from generation 2 anyway (uid mismatch -> complete). */
    cqr_table_t *u[4];
    for (int i = 0; i < 4; i++)
        u[i] = tset_get(&ts, four_names[i]);
    train_four(u, &rng, 0);
    cqr_store_ckpt_stats_t st3;
    uint64_t g3 = checkpoint(s, u, four_names, 4, &st3);
    ck_assert_uint_eq(g3, 3);
    ck_assert_uint_eq(st3.tables_full, 4);
    /* After loading generation 3, checkpoints are incremental. */
    uint64_t d3[4];
    for (int i = 0; i < 4; i++)
        d3[i] = digest(u[i]);
    tset_free(&ts);
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(li.generation, 3);
    for (int i = 0; i < 4; i++) {
        u[i] = tset_get(&ts, four_names[i]);
        ck_assert(digest(u[i]) == d3[i]);
    }
    push_random(u[0], &rng, 1, 16, 0, 20000);
    cqr_store_ckpt_stats_t st4;
    checkpoint(s, u, four_names, 4, &st4);
    ck_assert_uint_eq(st4.tables_full, 0);
    ck_assert_uint_lt(st4.bytes_written, st3.bytes_written / 10);
    uint64_t d4 = digest(u[0]);
    tset_free(&ts);
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert(digest(tset_get(&ts, "users")) == d4);
    tset_free(&ts);
    for (int i = 0; i < 4; i++)
        cqr_table_destroy(t[i]);
    cqr_store_close(s);
    rmdir_all(dir);
}
END_TEST

/* Touching 1% of a large full table writes about 1% of it. */
START_TEST(test_store_incremental_bytes)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 2);
    cqr_table_t *t = make(CQR_KIND_FULL, CQR_OPT_ADAM, 16, 0, 9);
    const size_t n = 200000, batch = 4096;
    uint64_t *ids = malloc(batch * sizeof *ids);
    float *g = malloc(batch * 16 * sizeof *g);
    for (size_t j = 0; j < batch * 16; j++)
        g[j] = 0.25f;
    for (size_t lo = 0; lo < n; lo += batch) {
        size_t m = n - lo < batch ? n - lo : batch;
        for (size_t j = 0; j < m; j++)
            ids[j] = cqr_mix64(lo + j + 1);
        ck_assert_int_eq(cqr_table_push(t, ids, g, m), 0);
    }
    const char *name = "big";
    cqr_store_ckpt_stats_t a, b;
    checkpoint(s, &t, &name, 1, &a);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 4);
    for (size_t j = 0; j < n / 100; j++)
        ids[j] = cqr_mix64(cqr_rng_next(&rng) % n + 1);
    ck_assert_int_eq(cqr_table_push(t, ids, g, n / 100), 0);
    checkpoint(s, &t, &name, 1, &b);
    double ratio = (double)b.bytes_written / a.bytes_written;
    printf("incremental: first %llu bytes, second %llu bytes (%.2f%%), "
           "pause %.3f ms / %.3f ms\n",
           (unsigned long long)a.bytes_written,
           (unsigned long long)b.bytes_written, 100 * ratio,
           a.pause_max_seconds * 1e3, b.pause_max_seconds * 1e3);
    ck_assert_msg(ratio > 0.005 && ratio < 0.015, "ratio %.4f", ratio);
    ck_assert_uint_gt(b.segments_shared, 0);
    ck_assert_uint_ge(b.bytes_total, a.bytes_total);
    uint64_t d = digest(t);
    cqr_store_close(s);
    s = open_store(dir, 2);
    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert(digest(ts.t[0]) == d);
    ck_assert_uint_eq(li.bytes, b.bytes_total);
    tset_free(&ts);
    cqr_store_close(s);
    cqr_table_destroy(t);
    free(ids);
    free(g);
    rmdir_all(dir);
}
END_TEST

/* A damaged segment or manifest is detected; the latest load falls back
 * to the previous generation and says why; an explicit load of the
 * damaged one fails; damage shared by every generation is an error, never
 * an empty state. */
START_TEST(test_store_corrupt_fallback)
{
    for (int what = 0; what < 3; what++) {
        char *dir = tmpdir();
        cqr_store_t *s = open_store(dir, 0);
        cqr_table_t *t[4];
        make_four(t);
        cqr_rng_t rng;
        cqr_rng_seed(&rng, 7);
        train_four(t, &rng, 1);
        checkpoint(s, t, four_names, 4, NULL);
        uint64_t d1[4];
        for (int i = 0; i < 4; i++)
            d1[i] = digest(t[i]);
        push_random(t[0], &rng, 2, 64, 0, 20000);
        push_random(t[3], &rng, 2, 64, 0, 20000);
        checkpoint(s, t, four_names, 4, NULL);
        cqr_store_close(s);

        raw_t r;
        raw_open(&r, dir);
        char k[64];
        if (what == 0) { /* a segment written by generation 2 */
            size_t kl = find_seg(&r, 2, 0, k);
            ck_assert_uint_gt(kl, 0);
            flip_value(&r, k, kl, 1000);
        } else if (what == 1) { /* generation 2's manifest */
            char mk[9] = {'M', 0, 0, 0, 0, 0, 0, 0, 2};
            flip_value(&r, mk, 9, 77);
        } else { /* a segment missing */
            size_t kl = find_seg(&r, 2, 0, k);
            char *err = NULL;
            rocksdb_delete(r.db, r.wo, k, kl, &err);
            ck_assert_ptr_null(err);
        }
        raw_close(&r);

        s = open_store(dir, 0);
        tset_t ts;
        cqr_store_load_info_t li;
        ck_assert_int_eq(load(s, 0, &ts, &li), 0);
        ck_assert_uint_eq(li.generation, 1);
        ck_assert_uint_eq(li.skipped, 1);
        const char *expect = what == 0   ? "checksum"
                             : what == 1 ? "manifest checksum"
                                         : "missing";
        ck_assert_msg(strstr(li.why, expect) && strstr(li.why, "generation 2"),
                      "why: %s", li.why);
        for (int i = 0; i < 4; i++)
            ck_assert(digest(tset_get(&ts, four_names[i])) == d1[i]);
        tset_free(&ts);
        ck_assert_int_eq(load(s, 2, &ts, &li), what == 1 ? CQR_ECORRUPT
                                                         : CQR_ECORRUPT);
        ck_assert_uint_eq(ts.n, 0);
        char why[512];
        cqr_store_error(s, why, sizeof why);
        ck_assert_ptr_nonnull(strstr(why, "generation 2"));
        cqr_store_close(s);

        if (what == 0) {
            /* Damage a segment both generations use: nothing verifies. */
            raw_open(&r, dir);
            size_t kl = find_seg(&r, 1, 2, k);
            ck_assert_uint_gt(kl, 0);
            flip_value(&r, k, kl, 40);
            raw_close(&r);
            s = open_store(dir, 0);
            ck_assert_int_eq(load(s, 0, &ts, &li), CQR_ECORRUPT);
            ck_assert_uint_eq(ts.n, 0);
            ck_assert_uint_eq(li.skipped, 2);
            cqr_store_error(s, why, sizeof why);
            ck_assert_ptr_nonnull(strstr(why, "no generation verifies"));
            cqr_store_close(s);
        }
        for (int i = 0; i < 4; i++)
            cqr_table_destroy(t[i]);
        rmdir_all(dir);
    }
}
END_TEST

/* Retention keeps the newest N generations and deletes every segment
 * they do not reference. */
START_TEST(test_store_retention)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 2);
    cqr_table_t *t[4];
    make_four(t);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 3);
    uint64_t d[6][4];
    cqr_store_ckpt_stats_t st;
    for (int g = 1; g <= 5; g++) {
        train_four(t, &rng, g == 3);
        ck_assert_uint_eq(checkpoint(s, t, four_names, 4, &st), (uint64_t)g);
        for (int i = 0; i < 4; i++)
            d[g][i] = digest(t[i]);
        if (g > 2)
            ck_assert_uint_eq(st.generations_deleted, 1);
    }
    ck_assert_uint_gt(st.segments_deleted, 0);
    cqr_store_gen_t *gens;
    size_t ng;
    ck_assert_int_eq(cqr_store_list(s, &gens, &ng), 0);
    ck_assert_uint_eq(ng, 2);
    ck_assert_uint_eq(gens[0].generation, 5);
    ck_assert_uint_eq(gens[1].generation, 4);
    free(gens);
    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 3, &ts, &li), CQR_ENOTFOUND);
    for (int g = 4; g <= 5; g++) {
        ck_assert_int_eq(load(s, (uint64_t)g, &ts, &li), 0);
        for (int i = 0; i < 4; i++)
            ck_assert(digest(tset_get(&ts, four_names[i])) == d[g][i]);
        tset_free(&ts);
    }
    /* Keep one: every remaining segment is referenced by it. */
    uint32_t del = 0;
    ck_assert_int_eq(cqr_store_retain(s, 1, &del), 0);
    ck_assert_uint_eq(del, 1);
    ck_assert_int_eq(cqr_store_list(s, &gens, &ng), 0);
    ck_assert_uint_eq(ng, 1);
    uint64_t segs = 0, bytes = 0;
    ck_assert_int_eq(cqr_store_usage(s, &segs, &bytes), 0);
    ck_assert_uint_eq(segs, gens[0].segments);
    free(gens);
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(li.generation, 5);
    for (int i = 0; i < 4; i++)
        ck_assert(digest(tset_get(&ts, four_names[i])) == d[5][i]);
    tset_free(&ts);
    /* A table left out of a checkpoint is gone from it. */
    cqr_store_ckpt_stats_t st6;
    checkpoint(s, t, four_names, 2, &st6);
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(ts.n, 2);
    ck_assert_ptr_null(tset_get(&ts, "ce_tab"));
    tset_free(&ts);
    for (int i = 0; i < 4; i++)
        cqr_table_destroy(t[i]);
    cqr_store_close(s);
    rmdir_all(dir);
}
END_TEST

typedef struct prog_rec {
    int calls;
    double last;
    int bad;
    int stages; /* bit per stage seen */
} prog_rec_t;

static void prog_cb(void *ud, const cqr_store_progress_t *p)
{
    prog_rec_t *r = ud;
    r->calls++;
    if (p->fraction < r->last - 1e-12 || p->fraction > 1.0 + 1e-12)
        r->bad = 1;
    r->last = p->fraction;
    const char *st[] = {"export", "write", "sync", "retain", "read",
                        "verify"};
    for (int i = 0; i < 6; i++) {
        if (strcmp(p->stage, st[i]) == 0)
            r->stages |= 1 << i;
    }
}

static int refuse_second(void *ud, const char *name, cqr_table_t *t)
{
    tset_t *ts = ud;
    if (ts->n == 1) {
        cqr_table_destroy(t);
        return CQR_ELIMIT;
    }
    return collect(ud, name, t);
}

/* Empty stores, bad arguments, progress, replaced tables. */
START_TEST(test_store_edges)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 3);
    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(li.generation, 0);
    ck_assert_uint_eq(ts.n, 0);
    cqr_table_t *t[4];
    make_four(t);
    const char *dup[2] = {"a", "a"};
    ck_assert_int_eq(cqr_store_checkpoint(s, t, dup, 2, NULL, NULL, NULL,
                                          NULL), CQR_EINVAL);
    const char *empty[1] = {""};
    ck_assert_int_eq(cqr_store_checkpoint(s, t, empty, 1, NULL, NULL, NULL,
                                          NULL), CQR_EINVAL);
    /* A checkpoint of no tables is a generation too (an empty server). */
    uint64_t g = 0;
    ck_assert_int_eq(cqr_store_checkpoint(s, NULL, NULL, 0, NULL, NULL, &g,
                                          NULL), 0);
    ck_assert_uint_eq(g, 1);
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    ck_assert_uint_eq(li.generation, 1);
    ck_assert_uint_eq(ts.n, 0);

    cqr_rng_t rng;
    cqr_rng_seed(&rng, 5);
    train_four(t, &rng, 1);
    prog_rec_t pr = {0};
    ck_assert_int_eq(cqr_store_checkpoint(s, t, four_names, 4, prog_cb, &pr,
                                          &g, NULL), 0);
    ck_assert_int_gt(pr.calls, 4);
    ck_assert_int_eq(pr.bad, 0);
    ck_assert_int_eq(pr.stages & 15, 15);
    /* A different table object under a known name is written completely
     * (its cursor means nothing against the stored base). */
    cqr_table_t *old = t[2];
    t[2] = make(CQR_KIND_CE, CQR_OPT_SGD, 8, 300, 33);
    cqr_store_ckpt_stats_t st;
    checkpoint(s, t, four_names, 4, &st);
    ck_assert_uint_eq(st.tables_full, 1);
    cqr_table_destroy(old);

    prog_rec_t lr = {0};
    memset(&ts, 0, sizeof ts);
    ck_assert_int_eq(cqr_store_load(s, 0, collect, &ts, prog_cb, &lr, &li), 0);
    ck_assert_int_eq(lr.bad, 0);
    ck_assert_int_eq(lr.stages & 48, 48);
    ck_assert(lr.last == 1.0);
    ck_assert(digest(tset_get(&ts, "ce_tab")) == digest(t[2]));
    tset_free(&ts);
    /* A callback that refuses stops the load; it owned every table it
     * got, the rest are destroyed (ASan checks the leaks). */
    memset(&ts, 0, sizeof ts);
    ck_assert_int_eq(cqr_store_load(s, 0, refuse_second, &ts, NULL, NULL,
                                    &li), CQR_ELIMIT);
    ck_assert_uint_eq(ts.n, 1);
    tset_free(&ts);
    for (int i = 0; i < 4; i++)
        cqr_table_destroy(t[i]);
    cqr_store_close(s);

    /* A store of another format is refused. */
    raw_t r;
    raw_open(&r, dir);
    char *err = NULL;
    rocksdb_put(r.db, r.wo, "V", 1, "cqrps-store 99", 14, &err);
    ck_assert_ptr_null(err);
    raw_close(&r);
    cqr_store_t *s2 = NULL;
    char why[256];
    ck_assert_int_eq(cqr_store_open(dir, NULL, &s2, why, sizeof why),
                     CQR_EVERSION);
    ck_assert_ptr_nonnull(strstr(why, "cqrps-store 99"));
    rmdir_all(dir);
}
END_TEST

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

START_TEST(test_store_crash)
{
    char *dir = tmpdir();
    uint64_t acked_gen = 0, acked_d = 0;
    int mid = 0, adopted = 0;
    cqr_rng_t rng;
    cqr_rng_seed(&rng, (uint64_t)time(NULL));
    for (int iter = 0; iter < 20; iter++) {
        int fds[2];
        ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            char fdstr[16];
            snprintf(fdstr, sizeof fdstr, "%d", fds[1]);
            fcntl(fds[1], F_SETFD, 0);
            execl("/proc/self/exe", "test_persist_store", "--crash-child",
                  dir, fdstr, (char *)NULL);
            _exit(127);
        }
        close(fds[1]);
        FILE *f = fdopen(fds[0], "r");
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

        cqr_store_t *s = open_store(dir, 2);
        tset_t loaded;
        cqr_store_load_info_t li;
        int rc = load(s, 0, &loaded, &li);
        ck_assert_msg(rc == 0, "iteration %d: load: %s", iter,
                      cqr_strerror(rc));
        ck_assert_uint_eq(li.skipped, 0);
        if (li.generation == 0) {
            ck_assert_uint_eq(acked_gen, 0);
        } else {
            uint64_t d = tset_digest(&loaded);
            if (li.generation == acked_gen) {
                ck_assert_msg(d == acked_d, "iteration %d: generation %llu "
                              "differs from what was acknowledged", iter,
                              (unsigned long long)acked_gen);
            } else {
                /* The checkpoint in flight completed before the kill but
                 * was not reported: it must be exactly that state. */
                ck_assert_msg(pend_gen && li.generation == pend_gen &&
                                  d == pend_d,
                              "iteration %d: loaded generation %llu, "
                              "acknowledged %llu, in flight %llu", iter,
                              (unsigned long long)li.generation,
                              (unsigned long long)acked_gen,
                              (unsigned long long)pend_gen);
                acked_gen = pend_gen;
                acked_d = pend_d;
                adopted++;
            }
        }
        (void)acks;
        tset_free(&loaded);
        cqr_store_close(s);
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
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_store_roundtrip);
    tcase_add_test(tc, test_store_incremental_bytes);
    tcase_add_test(tc, test_store_corrupt_fallback);
    tcase_add_test(tc, test_store_retention);
    tcase_add_test(tc, test_store_edges);
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
