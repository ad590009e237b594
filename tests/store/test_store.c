/* The RocksDB checkpoint store: exact restores of every kind, incremental
 * generations, corruption detection and fallback, retention, progress and
 * edge cases. Checkpoints under concurrent traffic and crash safety under
 * SIGKILL are in test_store_crash.c; the manifest codec in
 * test_manifest.c. */
#define _GNU_SOURCE
#include <check.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "store/store.h"
#include "check_main.h"
#include "store_util.h"

/* ---- Helpers ----------------------------------------------------------- */

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

/* Admission and eviction state (issue 19: the options, the sketch, the
 * stamps, the counters) restores exactly: the restored table digests
 * alike and stays alike under the same further calls. */
START_TEST(test_store_admit_evict)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 0);
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_CQR, 8);
    cfg.rows = 64;
    cfg.admit_after = 2;
    cfg.evict_after_phases = 1;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    const char *names[1] = {"adm"};
    cqr_rng_t rng, rng2;
    cqr_rng_seed(&rng, 9);
    for (int r = 0; r < 3; r++) {
        push_random(t, &rng, 4, 128, 0, 300 + 100 * r);
        ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    }
    push_random(t, &rng, 2, 64, 0, 500);
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_gt(st.ids_evicted, 0);
    ck_assert_uint_gt(st.ids_admitted, st.known_ids);
    checkpoint(s, &t, names, 1, NULL);
    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    cqr_table_t *u = tset_get(&ts, "adm");
    ck_assert_uint_eq(digest(u), digest(t));
    cqr_table_stats_t su;
    cqr_table_stats(u, &su);
    ck_assert_uint_eq(su.ids_admitted, st.ids_admitted);
    ck_assert_uint_eq(su.ids_evicted, st.ids_evicted);
    rng2 = rng;
    push_random(t, &rng, 2, 64, 0, 600);
    push_random(u, &rng2, 2, 64, 0, 600);
    ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
    ck_assert_int_eq(cqr_table_cluster(u, NULL, NULL, NULL), 0);
    ck_assert_uint_eq(digest(u), digest(t));
    tset_free(&ts);
    cqr_table_destroy(t);
    cqr_store_close(s);
    rmdir_all(dir);
}
END_TEST

/* The same for a full table with admission, max_ids and a TTL (the
 * fallback rows, the stamps, the free rows, the sweep's hand), on the
 * table clock the test sets: two checkpoints (a base, then deltas), the
 * restored table digests alike and goes on alike. */
START_TEST(test_store_admit_evict_full)
{
    char *dir = tmpdir();
    cqr_store_t *s = open_store(dir, 0);
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, 8);
    cfg.admit_after = 2;
    cfg.max_ids = 300;
    cfg.ttl_seconds = 5;
    cqr_table_t *t;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    const char *names[1] = {"admf"};
    cqr_rng_t rng, rng2;
    cqr_rng_seed(&rng, 17);
    for (int r = 0; r < 6; r++) {
        cqr_table_set_clock(t, 7000 + 2 * (uint32_t)r);
        push_random(t, &rng, 3, 128, 100 * (uint64_t)r, 600);
        if (r == 2)
            checkpoint(s, &t, names, 1, NULL);
    }
    cqr_table_stats_t st;
    cqr_table_stats(t, &st);
    ck_assert_uint_gt(st.ids_evicted, 0);
    ck_assert_uint_le(st.known_ids, 300);
    checkpoint(s, &t, names, 1, NULL);
    tset_t ts;
    cqr_store_load_info_t li;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    cqr_table_t *u = tset_get(&ts, "admf");
    ck_assert_uint_eq(digest(u), digest(t));
    cqr_table_stats_t su;
    cqr_table_stats(u, &su);
    ck_assert_uint_eq(su.ids_admitted, st.ids_admitted);
    ck_assert_uint_eq(su.ids_evicted, st.ids_evicted);
    ck_assert_uint_eq(su.known_ids, st.known_ids);
    rng2 = rng;
    cqr_table_set_clock(t, 7020);
    cqr_table_set_clock(u, 7020);
    push_random(t, &rng, 2, 128, 0, 1200);
    push_random(u, &rng2, 2, 128, 0, 1200);
    ck_assert_uint_eq(digest(u), digest(t));
    tset_free(&ts);
    cqr_table_destroy(t);
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

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_store_roundtrip);
    tcase_add_test(tc, test_store_admit_evict);
    tcase_add_test(tc, test_store_admit_evict_full);
    tcase_add_test(tc, test_store_incremental_bytes);
    tcase_add_test(tc, test_store_corrupt_fallback);
    tcase_add_test(tc, test_store_retention);
    tcase_add_test(tc, test_store_edges);
    suite_add_tcase(s, tc);
    return s;
}
