/* Serving exports (engine/model*.c, engine/table_model.c): lookups from
 * an export equal the table's, bit for bit, for every kind after phases,
 * plain and pooled, known and never-seen IDs; damaged files are refused;
 * float16 and int8 stay within their bounds; delta chains rebuild the full
 * export byte for byte. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chain.h"
#include "engine/err.h"
#include "engine/hash.h"
#include "engine/model.h"
#include "engine/model_impl.h"
#include "engine/table.h"
#include "engine/table_impl.h"
#include "engine/table_model.h"
#include "check_main.h"

_Static_assert(CQR_MODEL_TAG_FULL_INIT == CQR_TAG_FULL_INIT, "init tag");
_Static_assert(CQR_MODEL_MAX_DIM == CQR_MAX_DIM, "dim limit");
_Static_assert(CQR_MODEL_MAX_CHUNKS == CQR_MAX_CHUNKS, "chunk limit");
_Static_assert(CQR_MODEL_MAX_ROWS == CQR_MAX_ROWS, "row limit");
_Static_assert(CQR_MODEL_KIND_CQR == (int)CQR_KIND_CQR &&
                   CQR_MODEL_KIND_FULL == (int)CQR_KIND_FULL &&
                   CQR_MODEL_KIND_HASH == (int)CQR_KIND_HASH &&
                   CQR_MODEL_KIND_CE == (int)CQR_KIND_CE,
               "kinds");

enum { DIM = 16, SPAN = 3000 };

static cqr_table_t *make(cqr_kind_t kind, uint64_t seed)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, kind, DIM);
    if (kind != CQR_KIND_FULL)
        cfg.rows = 64;
    cfg.seed = seed;
    cfg.optim.kind = CQR_OPT_ADAM;
    cfg.optim.lr = 0.05f;
    cfg.cluster_iters = 5;
    cfg.cluster_sample = 20;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    return t;
}

/* n pushes of 200 IDs from [0, SPAN) (0 included). */
static void push_random(cqr_table_t *t, cqr_rng_t *rng, int n)
{
    enum { B = 200 };
    uint64_t ids[B];
    static float g[B * DIM];
    for (int k = 0; k < n; k++) {
        for (size_t j = 0; j < B; j++)
            ids[j] = cqr_rng_next(rng) % SPAN;
        for (size_t j = 0; j < B * DIM; j++)
            g[j] = cqr_rng_sym(rng, 1.0f);
        ck_assert_int_eq(cqr_table_push(t, ids, g, B), 0);
    }
}

/* A table of `kind` trained with pushes and, for cqr, two phases. */
static cqr_table_t *trained(cqr_kind_t kind)
{
    cqr_table_t *t = make(kind, 42 + kind);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 7);
    push_random(t, &rng, 10);
    if (kind == CQR_KIND_CQR) {
        ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
        push_random(t, &rng, 5);
        ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
        push_random(t, &rng, 3);
    }
    return t;
}

static cqr_model_t *model_of(cqr_table_t *t, cqr_table_t *base, uint32_t dt,
                             uint64_t gen, uint64_t base_gen)
{
    uint8_t *img = NULL;
    size_t len = 0;
    char why[256] = "";
    int rc = cqr_table_model(t, base, dt, gen, base_gen, &img, &len, why,
                             sizeof why);
    ck_assert_msg(rc == 0, "export: %s", why);
    cqr_model_t *m = NULL;
    rc = cqr_model_open_image(img, len, &m, why, sizeof why);
    ck_assert_msg(rc == 0, "open: %s", why);
    return m;
}

/* Known IDs (the first half, 0 included), never-seen ones (the rest). */
enum { N = 512 };
static void probe_ids(uint64_t *ids)
{
    for (int j = 0; j < N; j++)
        ids[j] = j < N / 2 ? (uint64_t)j * 11 % SPAN
                           : cqr_mix64((uint64_t)j) | (1ull << 63);
}

static void assert_exact(cqr_table_t *t, const cqr_model_t *m)
{
    static uint64_t ids[N];
    static float x[N * DIM], y[N * DIM];
    probe_ids(ids);
    ck_assert_int_eq(cqr_table_lookup(t, ids, N, x), 0);
    ck_assert_int_eq(cqr_model_lookup(m, ids, N, y), 0);
    ck_assert_mem_eq(x, y, sizeof x);
    /* Pooled: bags of 0..6 IDs, sum and mean, an empty bag included. */
    uint32_t off[200];
    size_t nb = 0, at = 0;
    while (at < N && nb < 200) {
        off[nb++] = (uint32_t)at;
        at += nb % 7;
    }
    if (at > N)
        at = N; /* the last bag ends with the IDs */
    for (int pool = 0; pool < 2; pool++) {
        memset(x, 0xff, sizeof x);
        memset(y, 0, sizeof y);
        ck_assert_int_eq(cqr_table_lookup_pooled(t, ids, at, off, nb,
                                                 (cqr_pooling_t)pool, x),
                         0);
        ck_assert_int_eq(cqr_model_lookup_pooled(m, ids, at, off, nb, pool,
                                                 y),
                         0);
        ck_assert_mem_eq(x, y, nb * DIM * sizeof(float));
    }
}

START_TEST(exact_every_kind)
{
    for (int kind = 0; kind <= CQR_KIND_CQR; kind++) {
        cqr_table_t *t = trained((cqr_kind_t)kind);
        cqr_model_t *m = model_of(t, NULL, CQR_DTYPE_F32, 5, 0);
        const cqr_model_info_t *h = cqr_model_info(m);
        ck_assert_uint_eq(h->kind, (uint32_t)kind);
        ck_assert_uint_eq(h->generation, 5);
        cqr_table_stats_t st;
        cqr_table_stats(t, &st);
        ck_assert_uint_eq(cqr_model_nids(m), st.known_ids);
        assert_exact(t, m);
        cqr_model_close(m);
        cqr_table_destroy(t);
    }
}
END_TEST

/* The largest |value| of the table's codebooks (or full rows). */
static float table_max(cqr_table_t *t)
{
    float mx = 0;
    if (t->cfg.kind == CQR_KIND_FULL) {
        for (size_t b = 0; b < t->nblocks; b++)
            for (size_t j = 0; j < (size_t)t->blocks[b].n * DIM; j++)
                mx = fmaxf(mx, fabsf(t->blocks[b].param[j]));
        return fmaxf(mx, t->cfg.init_scale);
    }
    for (size_t b = 0; b < (size_t)t->ncb * t->c; b++)
        for (size_t j = 0; j < (size_t)t->k * t->w; j++)
            mx = fmaxf(mx, fabsf(t->st->cb[b].param[j]));
    return mx;
}

START_TEST(quantized_within_bounds)
{
    for (int kind = 0; kind <= CQR_KIND_CQR; kind++) {
        cqr_table_t *t = trained((cqr_kind_t)kind);
        static uint64_t ids[N];
        static float x[N * DIM], y[N * DIM];
        probe_ids(ids);
        ck_assert_int_eq(cqr_table_lookup(t, ids, N, x), 0);
        const float M = table_max(t);
        const float parts = t->ncb == 2 ? 2.0f : 1.0f;
        for (uint32_t dt = CQR_DTYPE_F16; dt <= CQR_DTYPE_INT8; dt++) {
            cqr_model_t *m = model_of(t, NULL, dt, 1, 0);
            ck_assert_int_eq(cqr_model_lookup(m, ids, N, y), 0);
            /* f16: 2^-11 relative per stored value (2^-25 absolute
             * below the normal range); int8: half a step, max|row|/254.
             * A ce/cqr lookup adds two stored values. Unknown full IDs
             * are computed, not stored: exact. */
            float bound = dt == CQR_DTYPE_F16
                              ? parts * (M * 0x1p-11f + 0x1p-25f)
                              : parts * M / 254.0f;
            bound *= 1.0001f;
            for (size_t j = 0; j < N * DIM; j++)
                ck_assert_msg(fabsf(x[j] - y[j]) <= bound,
                              "kind %d %s: |%g - %g| > %g", kind,
                              cqr_dtype_name(dt), x[j], y[j], bound);
            cqr_model_close(m);
        }
        cqr_table_destroy(t);
    }
}
END_TEST

/* A private copy of t's state (what a checkpoint generation restores). */
static cqr_table_t *snapshot(cqr_table_t *t)
{
    chain_t c = {0};
    chain_export(&c, t);
    cqr_table_t *s = chain_import(&c, 0);
    chain_free(&c);
    return s;
}

static int same_image(const cqr_model_t *a, const cqr_model_t *b)
{
    size_t la, lb;
    const uint8_t *x = cqr_model_image(a, &la), *y = cqr_model_image(b, &lb);
    return la == lb && memcmp(x, y, la) == 0;
}

START_TEST(delta_chain_equals_full)
{
    for (int kind = 0; kind <= CQR_KIND_CQR; kind++) {
        cqr_table_t *t = make((cqr_kind_t)kind, 9);
        cqr_rng_t rng;
        cqr_rng_seed(&rng, 3);
        push_random(t, &rng, 4);
        cqr_table_t *g1 = snapshot(t);
        push_random(t, &rng, 2);
        if (kind == CQR_KIND_CQR)
            ck_assert_int_eq(cqr_table_cluster(t, NULL, NULL, NULL), 0);
        cqr_table_t *g2 = snapshot(t);
        /* New IDs beyond SPAN too. */
        uint64_t nid[3] = {SPAN + 1, SPAN + 2, 1ull << 62};
        float g[3 * DIM];
        for (int j = 0; j < 3 * DIM; j++)
            g[j] = 0.5f;
        ck_assert_int_eq(cqr_table_push(t, nid, g, 3), 0);
        cqr_table_t *g3 = snapshot(t);
        for (uint32_t dt = 0; dt <= CQR_DTYPE_INT8; dt++) {
            cqr_model_t *f1 = model_of(g1, NULL, dt, 1, 0);
            cqr_model_t *d12 = model_of(g2, g1, dt, 2, 1);
            cqr_model_t *d23 = model_of(g3, g2, dt, 3, 2);
            cqr_model_t *f3 = model_of(g3, NULL, dt, 3, 0);
            ck_assert_uint_eq(cqr_model_info(d12)->flags, CQR_MODEL_DELTA);
            if (kind == CQR_KIND_FULL || kind == CQR_KIND_CQR)
                ck_assert_uint_lt(cqr_model_nids(d23), cqr_model_nids(f3));
            cqr_model_t *f2 = NULL, *r3 = NULL, *bad = NULL;
            char why[256];
            ck_assert_int_eq(cqr_model_apply_delta(f1, d12, &f2, why,
                                                   sizeof why), 0);
            ck_assert_int_eq(cqr_model_apply_delta(f2, d23, &r3, why,
                                                   sizeof why), 0);
            ck_assert(same_image(r3, f3));
            if (dt == CQR_DTYPE_F32)
                assert_exact(g3, r3);
            /* A delta on the wrong base is refused. */
            ck_assert_int_eq(cqr_model_apply_delta(f1, d23, &bad, why,
                                                   sizeof why), CQR_EINVAL);
            ck_assert_ptr_nonnull(strstr(why, "generation 2"));
            ck_assert_int_eq(cqr_model_lookup(d12, nid, 1, g), CQR_EINVAL);
            cqr_model_close(f1);
            cqr_model_close(d12);
            cqr_model_close(d23);
            cqr_model_close(f3);
            cqr_model_close(f2);
            cqr_model_close(r3);
        }
        cqr_table_destroy(g1);
        cqr_table_destroy(g2);
        cqr_table_destroy(g3);
        cqr_table_destroy(t);
    }
}
END_TEST

/* Removed IDs: a delta that drops IDs (eviction) gives the export
 * without them. Built from content directly. */
START_TEST(delta_removes_ids)
{
    cqr_model_info_t h = {.kind = CQR_MODEL_KIND_FULL, .dim = 4, .chunks = 1,
                          .dtype = CQR_DTYPE_F32, .init_scale = 0.01f,
                          .seed = 5, .generation = 1};
    uint64_t ids[5] = {10, 0, 99, 7, 1ull << 40};
    float rows[5 * 4];
    for (int j = 0; j < 20; j++)
        rows[j] = (float)j;
    cqr_model_content_t mc = {.h = h, .nids = 5, .ids = ids,
                              .vals = (const uint8_t *)rows};
    uint8_t *img;
    size_t len;
    char why[256];
    ck_assert_int_eq(cqr_model_write(&mc, &img, &len, why, sizeof why), 0);
    cqr_model_t *base;
    ck_assert_int_eq(cqr_model_open_image(img, len, &base, why, sizeof why),
                     0);
    /* Delta: 7 and 0 removed, 99 changed. */
    uint64_t rm[2] = {7, 0}, ch[1] = {99};
    float nr[4] = {-1, -2, -3, -4};
    cqr_model_content_t dc = {.h = h, .nids = 1, .ids = ch,
                              .vals = (const uint8_t *)nr, .nremoved = 2,
                              .removed = rm};
    dc.h.flags = CQR_MODEL_DELTA;
    dc.h.generation = 2;
    dc.h.base_generation = 1;
    cqr_model_t *d, *r;
    ck_assert_int_eq(cqr_model_write(&dc, &img, &len, why, sizeof why), 0);
    ck_assert_int_eq(cqr_model_open_image(img, len, &d, why, sizeof why), 0);
    ck_assert_int_eq(cqr_model_apply_delta(base, d, &r, why, sizeof why), 0);
    ck_assert_uint_eq(cqr_model_nids(r), 3);
    uint64_t q[3] = {99, 10, 7};
    float out[12], init[4];
    ck_assert_int_eq(cqr_model_lookup(r, q, 3, out), 0);
    ck_assert_mem_eq(out, nr, sizeof nr);
    ck_assert_mem_eq(out + 4, rows, 4 * sizeof(float));
    /* A removed ID looks up its initial row again. */
    ck_assert_int_eq(cqr_model_lookup(base, q + 2, 1, init), 0);
    ck_assert_mem_ne(out + 8, init, sizeof init);
    /* A repeated ID is refused by the writer. */
    ids[1] = 10;
    ck_assert_int_eq(cqr_model_write(&mc, &img, &len, why, sizeof why),
                     CQR_EINVAL);
    cqr_model_close(base);
    cqr_model_close(d);
    cqr_model_close(r);
}
END_TEST

static int open_damaged(const uint8_t *img, size_t len, const char *path,
                        char *why, size_t whylen)
{
    ck_assert_int_eq(cqr_model_save_image(img, len, path, why, whylen), 0);
    cqr_model_t *m = NULL;
    int rc = cqr_model_open(path, &m, why, whylen);
    cqr_model_close(m);
    return rc;
}

START_TEST(damaged_files_refused)
{
    cqr_table_t *t = trained(CQR_KIND_CQR);
    uint8_t *img;
    size_t len;
    char why[256];
    ck_assert_int_eq(cqr_table_model(t, NULL, CQR_DTYPE_F32, 3, 0, &img,
                                     &len, why, sizeof why), 0);
    char path[] = "/tmp/cqr_test_model_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(open_damaged(img, len, path, why, sizeof why), 0);
    uint8_t *bad = malloc(len);
    /* A bit flipped anywhere: header, section table, every section. */
    for (size_t at = 0; at < len; at += len / 97 + 1) {
        if (at >= 288 && at < 296)
            continue; /* reserved bytes are covered by the header sum */
        memcpy(bad, img, len);
        bad[at] ^= 0x10;
        int rc = open_damaged(bad, len, path, why, sizeof why);
        ck_assert_msg(rc == CQR_ECORRUPT || (at >= 8 && at < 12 &&
                                             rc == CQR_EVERSION),
                      "flip at %zu: rc %d", at, rc);
        ck_assert(why[0] != '\0');
    }
    /* Truncated, wrong magic, another version. */
    ck_assert_int_eq(open_damaged(img, len - 1, path, why, sizeof why),
                     CQR_ECORRUPT);
    ck_assert_int_eq(open_damaged(img, 100, path, why, sizeof why),
                     CQR_ECORRUPT);
    memcpy(bad, img, len);
    bad[0] = 'X';
    ck_assert_int_eq(open_damaged(bad, len, path, why, sizeof why),
                     CQR_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(why, "magic"));
    memcpy(bad, img, len);
    bad[8] = 2;
    ck_assert_int_eq(open_damaged(bad, len, path, why, sizeof why),
                     CQR_EVERSION);
    ck_assert_ptr_nonnull(strstr(why, "version 2"));
    unlink(path);
    free(bad);
    free(img);
    cqr_table_destroy(t);
}
END_TEST

/* A table rebuilt from an export (what --serve serves) looks up exactly
 * what the export does, for every kind and dtype. */
START_TEST(table_from_model_exact)
{
    for (int kind = 0; kind <= CQR_KIND_CQR; kind++) {
        cqr_table_t *t = trained((cqr_kind_t)kind);
        for (uint32_t dt = 0; dt <= CQR_DTYPE_INT8; dt++) {
            cqr_model_t *m = model_of(t, NULL, dt, 4, 0);
            cqr_table_t *s = NULL;
            char why[200];
            ck_assert_int_eq(cqr_table_from_model(m, &s, why, sizeof why), 0);
            assert_exact(s, m);
            if (dt == CQR_DTYPE_F32) {
                cqr_model_t *again = model_of(s, NULL, dt, 4, 0);
                ck_assert(same_image(m, again));
                cqr_model_close(again);
            }
            cqr_table_destroy(s);
            cqr_model_close(m);
        }
        cqr_table_destroy(t);
    }
}
END_TEST

/* n pushes of each of ids [lo, hi) at clock `now`. */
static void push_span(cqr_table_t *t, uint64_t lo, uint64_t hi, int n,
                      uint32_t now, cqr_rng_t *rng)
{
    enum { B = 512 };
    uint64_t ids[B];
    static float g[B * DIM];
    cqr_table_set_clock(t, now);
    for (int k = 0; k < n; k++)
        for (uint64_t at = lo; at < hi; at += B) {
            size_t m = hi - at < B ? (size_t)(hi - at) : B;
            for (size_t j = 0; j < m; j++)
                ids[j] = at + j;
            for (size_t j = 0; j < m * DIM; j++)
                g[j] = cqr_rng_sym(rng, 1.0f);
            ck_assert_int_eq(cqr_table_push(t, ids, g, m), 0);
        }
}

/* The table's and the model's lookups of IDs 0..999 (pushed, admitted or
 * not, expired or not) and of never-seen ones, bit for bit. */
static void assert_exact_span(cqr_table_t *t, const cqr_model_t *m)
{
    enum { P = 1100 };
    static uint64_t ids[P];
    static float x[P * DIM], y[P * DIM];
    for (int j = 0; j < P; j++)
        ids[j] = j < 1000 ? (uint64_t)j : cqr_mix64((uint64_t)j) | 1;
    ck_assert_int_eq(cqr_table_lookup(t, ids, P, x), 0);
    ck_assert_int_eq(cqr_model_lookup(m, ids, P, y), 0);
    ck_assert_mem_eq(x, y, sizeof x);
    assert_exact(t, m);
}

/* A full table with admission and a TTL exports exactly what it looks
 * up: IDs below admit_after pushes get their fallback row (carried as
 * the export's one codebook), rows expired at export time are left out
 * (their IDs look up their fallback row again), and deltas and tables
 * rebuilt from the export agree, for every dtype. */
START_TEST(full_admission_ttl_exact)
{
    cqr_table_config_t cfg;
    cqr_table_config_default(&cfg, CQR_KIND_FULL, DIM);
    cfg.seed = 21;
    cfg.optim.kind = CQR_OPT_ADAM;
    cfg.optim.lr = 0.05f;
    cfg.admit_after = 3;
    cfg.ttl_seconds = 100;
    cqr_table_t *t = NULL;
    ck_assert_int_eq(cqr_table_create(&cfg, &t), 0);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 4);
    push_span(t, 0, 400, 2, 1000, &rng);   /* not admitted: fallback */
    push_span(t, 400, 700, 3, 1000, &rng); /* admitted at 1000 */
    push_span(t, 700, 900, 3, 1050, &rng); /* admitted at 1050 */
    cqr_table_t *g1 = snapshot(t);
    cqr_table_set_clock(g1, 1050);
    push_span(t, 900, 950, 4, 1120, &rng); /* at 1120 the 1000s expired */
    push_span(t, 0, 100, 1, 1120, &rng);   /* admitted now */
    cqr_table_set_clock(t, 1120);
    for (uint32_t dt = 0; dt <= CQR_DTYPE_INT8; dt++) {
        cqr_model_t *f1 = model_of(g1, NULL, dt, 1, 0);
        cqr_model_t *f2 = model_of(t, NULL, dt, 2, 0);
        cqr_model_t *d12 = model_of(t, g1, dt, 2, 1);
        ck_assert_uint_eq(cqr_model_info(f2)->flags, CQR_MODEL_FALLBACK);
        ck_assert_uint_eq(cqr_model_info(d12)->flags,
                          CQR_MODEL_FALLBACK | CQR_MODEL_DELTA);
        /* 500 admitted at 1050 and 1120; the 300 of 1000 expired. */
        ck_assert_uint_eq(cqr_model_nids(f1), 500);
        ck_assert_uint_eq(cqr_model_nids(f2), 350);
        cqr_model_t *r2 = NULL;
        char why[256];
        ck_assert_int_eq(cqr_model_apply_delta(f1, d12, &r2, why, sizeof why),
                         0);
        ck_assert(same_image(r2, f2));
        if (dt == CQR_DTYPE_F32) {
            assert_exact_span(g1, f1);
            assert_exact_span(t, f2);
            cqr_table_t *s = NULL;
            ck_assert_int_eq(cqr_table_from_model(f2, &s, why, sizeof why),
                             0);
            assert_exact_span(s, f2);
            cqr_table_destroy(s);
        }
        cqr_model_close(f1);
        cqr_model_close(f2);
        cqr_model_close(d12);
        cqr_model_close(r2);
    }
    cqr_table_destroy(g1);
    cqr_table_destroy(t);
}
END_TEST

/* Building a table from a large export stays linear: the export lists
 * its IDs in the order of their hash, and inserting them in that order
 * into a map that grows as it goes piles them into ever longer probe runs
 * (a 1e7-ID full export took over 10 minutes to serve). Counted as the
 * slots every placement stepped over, which a map at most 85% full keeps
 * to a few per ID. */
START_TEST(table_from_model_linear)
{
    enum { NIDS = 100000, B = 4096 };
    static uint64_t ids[B];
    static float g[B * DIM];
    for (int kind = 0; kind <= CQR_KIND_CQR; kind += CQR_KIND_CQR) {
        cqr_table_t *t = make((cqr_kind_t)kind, 5);
        for (uint64_t at = 0; at < NIDS; at += B) {
            size_t n = NIDS - at < B ? NIDS - at : B;
            for (size_t j = 0; j < n; j++)
                ids[j] = cqr_mix64(at + j + 1);
            ck_assert_int_eq(cqr_table_push(t, ids, g, n), 0);
        }
        cqr_model_t *m = model_of(t, NULL, CQR_DTYPE_F32, 1, 0);
        cqr_table_t *s = NULL;
        char why[200];
        ck_assert_int_eq(cqr_table_from_model(m, &s, why, sizeof why), 0);
        const cqr_idmap_t *map =
            kind == CQR_KIND_FULL ? &s->rowmap : &s->st->ids;
        ck_assert_uint_eq(map->count, NIDS);
        ck_assert_msg(map->steps < 8 * (uint64_t)NIDS,
                      "kind %d: %llu probe steps for %d IDs", kind,
                      (unsigned long long)map->steps, NIDS);
        assert_exact(s, m);
        cqr_table_destroy(s);
        cqr_model_close(m);
        cqr_table_destroy(t);
    }
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exact_every_kind);
    tcase_add_test(tc, quantized_within_bounds);
    tcase_add_test(tc, delta_chain_equals_full);
    tcase_add_test(tc, delta_removes_ids);
    tcase_add_test(tc, damaged_files_refused);
    tcase_add_test(tc, table_from_model_exact);
    tcase_add_test(tc, table_from_model_linear);
    tcase_add_test(tc, full_admission_ttl_exact);
    suite_add_tcase(s, tc);
    return s;
}
