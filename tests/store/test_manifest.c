/* The store's keys and manifests (server/store/manifest.c), without
 * RocksDB: the key layout and its order, exact manifest round trips
 * (every field, byte-identical re-encoding), and damaged, truncated and
 * wrong-version manifests refused with the right error and reason and an
 * empty result; the key set of garbage collection. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "engine/err.h"
#include "store/manifest.h"
#include "check_main.h"

/* ---- Helpers ----------------------------------------------------------- */

/* Header offsets of the encoding (manifest.h). */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 4,
    OFF_GEN = 8,
    OFF_NTABLES = 32,
    OFF_TABLE0 = 40, /* the first table's name length */
};

/* A manifest of generation 9 with every field distinct and non-zero:
 * "users" (3 pages: a base, a base and two deltas, a base) and "items"
 * (1 page), then an empty third table "e" (no pages). Every buffer is
 * malloc'd: cqr_manifest_free releases it. */
static void build(cqr_manifest_t *g)
{
    memset(g, 0, sizeof *g);
    g->gen = 9;
    g->unix_ns = 1700000000123456789ull;
    g->bytes_new = 0x0102030405060708ull;
    g->ntables = 3;
    g->tables = calloc(3, sizeof *g->tables);
    ck_assert_ptr_nonnull(g->tables);
    const char *names[3] = {"users", "items", "e"};
    const uint32_t npages[3] = {3, 1, 0};
    for (uint32_t i = 0; i < 3; i++) {
        cqr_mtable_t *t = &g->tables[i];
        t->name = strdup(names[i]);
        t->kind = 1 + i;
        t->dim = 16 + 8 * i;
        t->known_ids = 1000003ull * (i + 1) + (1ull << 40);
        t->phases_done = 7 + i;
        t->npages = npages[i];
        t->pages = calloc(npages[i] ? npages[i] : 1, sizeof *t->pages);
        ck_assert_ptr_nonnull(t->pages);
        for (uint32_t p = 0; p < t->npages; p++) {
            cqr_mpage_t *pg = &t->pages[p];
            pg->type = p < 2 ? 2 : 5; /* sorted by (type, index) */
            pg->index = p < 2 ? 10 * p + 1 : 3;
            pg->nref = p == 1 ? 3 : 1;
            pg->refs = calloc(pg->nref, sizeof *pg->refs);
            ck_assert_ptr_nonnull(pg->refs);
            for (uint32_t r = 0; r < pg->nref; r++) {
                pg->refs[r].gen = 2 + 3 * r + i; /* <= 9 */
                pg->refs[r].len = 4096 + 100 * p + 7 * r + i;
                pg->refs[r].hash =
                    0x9e3779b97f4a7c15ull * (1 + p + 4 * r + 16 * i);
                pg->refs[r].delta = r > 0;
            }
        }
    }
}

static uint8_t *encode(const cqr_manifest_t *g, size_t *len)
{
    uint8_t *b = NULL;
    ck_assert_int_eq(cqr_manifest_encode(g, &b, len), 0);
    ck_assert_ptr_nonnull(b);
    return b;
}

/* Rewrites the trailing checksum, so that a change passes it and reaches
 * the structural checks. */
static void reseal(uint8_t *b, size_t len)
{
    uint64_t h = XXH3_64bits(b, len - 8);
    memcpy(b + len - 8, &h, 8);
}

static void put32(uint8_t *b, size_t at, uint32_t v)
{
    memcpy(b + at, &v, 4);
}

static void assert_empty(const cqr_manifest_t *g)
{
    ck_assert_uint_eq(g->gen, 0);
    ck_assert_uint_eq(g->unix_ns, 0);
    ck_assert_uint_eq(g->bytes_new, 0);
    ck_assert_uint_eq(g->ntables, 0);
    ck_assert_ptr_null(g->tables);
}

/* Decodes b (as generation gen) expecting failure rc with `reason` in
 * the why; the result must be empty. */
static void refused(const uint8_t *b, size_t len, uint64_t gen, int rc,
                    const char *reason)
{
    cqr_manifest_t g;
    char why[200] = "";
    ck_assert_int_eq(cqr_manifest_decode(b, len, gen, &g, why, sizeof why),
                     rc);
    ck_assert_msg(strstr(why, reason) != NULL, "why \"%s\", want \"%s\"", why,
                  reason);
    assert_empty(&g);
}

/* Offset of the first page of table 0 ("users": 5 name bytes). */
static size_t page0(void)
{
    return OFF_TABLE0 + 4 + 5 + 4 + 4 + 8 + 4 + 4;
}

/* ---- Keys ------------------------------------------------------------- */

START_TEST(test_keys_layout)
{
    uint8_t k[CQR_STORE_KEY_MAX];
    ck_assert_uint_eq(cqr_key_manifest(k, 0x0102030405060708ull), 9);
    const uint8_t man[9] = {'M', 1, 2, 3, 4, 5, 6, 7, 8};
    ck_assert_mem_eq(k, man, 9);
    ck_assert_uint_eq(cqr_be64_read(k + 1), 0x0102030405060708ull);

    ck_assert_uint_eq(cqr_key_segment(k, "ab", 0x0a0b0c0d, 0x01020304, 258),
                      20);
    const uint8_t seg[20] = {'S', 0, 0, 0, 0, 0, 0, 1, 2, 'a', 'b', 0,
                             0x0a, 0x0b, 0x0c, 0x0d, 1, 2, 3, 4};
    ck_assert_mem_eq(k, seg, 20);

    uint8_t from[9];
    ck_assert_uint_eq(cqr_key_segments_from(from, 258), 9);
    ck_assert_mem_eq(from, seg, 9);

    /* A name of the longest length fills the key exactly. */
    char name[CQR_STORE_NAME_MAX + 1];
    memset(name, 'x', CQR_STORE_NAME_MAX);
    name[CQR_STORE_NAME_MAX] = 0;
    ck_assert_uint_eq(cqr_key_segment(k, name, 1, 2, 3), CQR_STORE_KEY_MAX);
}
END_TEST

/* Keys sort by generation first: [from(g), from(g + 1)) holds exactly
 * g's segments, whatever their table name, type and index. */
START_TEST(test_keys_order)
{
    uint8_t lo[9], hi[9], k[CQR_STORE_KEY_MAX];
    cqr_key_segments_from(lo, 300);
    cqr_key_segments_from(hi, 301);
    const char *names[3] = {"a", "zzzz", "\x7f\x7f"};
    for (int i = 0; i < 3; i++) {
        for (uint64_t gen = 299; gen <= 301; gen++) {
            size_t kl = cqr_key_segment(k, names[i], UINT32_MAX, UINT32_MAX,
                                        gen);
            int in = memcmp(k, lo, 9) >= 0 && memcmp(k, hi, 9) < 0;
            ck_assert_int_eq(in, gen == 300);
            ck_assert_uint_gt(kl, 9);
        }
    }
    uint8_t m1[9], m2[9];
    cqr_key_manifest(m1, 255);
    cqr_key_manifest(m2, 256);
    ck_assert_int_lt(memcmp(m1, m2, 9), 0);
}
END_TEST

/* ---- Round trips ------------------------------------------------------ */

/* Every field comes back exactly, and the decoded manifest encodes to the
 * same bytes. */
START_TEST(test_manifest_roundtrip)
{
    cqr_manifest_t g, d;
    build(&g);
    size_t len;
    uint8_t *b = encode(&g, &len);
    char why[200] = "";
    ck_assert_int_eq(cqr_manifest_decode(b, len, 9, &d, why, sizeof why), 0);
    ck_assert_uint_eq(d.gen, g.gen);
    ck_assert_uint_eq(d.unix_ns, g.unix_ns);
    ck_assert_uint_eq(d.bytes_new, g.bytes_new);
    ck_assert_uint_eq(d.ntables, g.ntables);
    for (uint32_t i = 0; i < g.ntables; i++) {
        const cqr_mtable_t *a = &g.tables[i], *t = &d.tables[i];
        ck_assert_str_eq(t->name, a->name);
        ck_assert_uint_eq(t->kind, a->kind);
        ck_assert_uint_eq(t->dim, a->dim);
        ck_assert_uint_eq(t->known_ids, a->known_ids);
        ck_assert_uint_eq(t->phases_done, a->phases_done);
        ck_assert_uint_eq(t->npages, a->npages);
        for (uint32_t p = 0; p < a->npages; p++) {
            const cqr_mpage_t *x = &a->pages[p], *y = &t->pages[p];
            ck_assert_uint_eq(y->type, x->type);
            ck_assert_uint_eq(y->index, x->index);
            ck_assert_uint_eq(y->nref, x->nref);
            for (uint32_t r = 0; r < x->nref; r++) {
                ck_assert_uint_eq(y->refs[r].gen, x->refs[r].gen);
                ck_assert_uint_eq(y->refs[r].len, x->refs[r].len);
                ck_assert_uint_eq(y->refs[r].hash, x->refs[r].hash);
                ck_assert_uint_eq(y->refs[r].delta, x->refs[r].delta);
            }
        }
    }
    size_t len2;
    uint8_t *b2 = encode(&d, &len2);
    ck_assert_uint_eq(len2, len);
    ck_assert_mem_eq(b2, b, len);

    /* What the store derives from it. */
    uint64_t segs = 0;
    ck_assert_uint_eq(cqr_manifest_bytes(&d, &segs),
                      6 * 4096 + (100 + 107 + 114) + 200 + 1);
    ck_assert_uint_eq(segs, 6);
    const cqr_mpage_t *pg = cqr_mtable_find(&d.tables[0], 2, 11);
    ck_assert_ptr_eq(pg, &d.tables[0].pages[1]);
    ck_assert_ptr_eq(cqr_mtable_find(&d.tables[0], 5, 3),
                     &d.tables[0].pages[2]);
    ck_assert_ptr_null(cqr_mtable_find(&d.tables[0], 2, 2));
    ck_assert_ptr_null(cqr_mtable_find(&d.tables[2], 2, 1));

    free(b);
    free(b2);
    cqr_manifest_free(&g);
    cqr_manifest_free(&d);
    assert_empty(&d);
    cqr_manifest_free(&d); /* freeing twice is harmless */
}
END_TEST

/* A generation of no tables (an empty server) is a manifest too. */
START_TEST(test_manifest_empty)
{
    cqr_manifest_t g = {.gen = 1, .unix_ns = 5, .bytes_new = 0};
    size_t len;
    uint8_t *b = encode(&g, &len);
    ck_assert_uint_eq(len, 48);
    cqr_manifest_t d;
    char why[200];
    ck_assert_int_eq(cqr_manifest_decode(b, len, 1, &d, why, sizeof why), 0);
    ck_assert_uint_eq(d.gen, 1);
    ck_assert_uint_eq(d.unix_ns, 5);
    ck_assert_uint_eq(d.ntables, 0);
    ck_assert_uint_eq(cqr_manifest_bytes(&d, NULL), 0);
    cqr_manifest_free(&d);
    free(b);
}
END_TEST

/* ---- Refusals --------------------------------------------------------- */

/* Any changed byte fails the checksum, the checksum's own included. */
START_TEST(test_manifest_damaged)
{
    cqr_manifest_t g;
    build(&g);
    size_t len;
    uint8_t *b = encode(&g, &len);
    for (size_t at = 0; at < len; at++) {
        for (int bit = 0; bit < 8; bit += 3) {
            b[at] ^= (uint8_t)(1u << bit);
            refused(b, len, 9, CQR_ECORRUPT, "manifest checksum mismatch");
            b[at] ^= (uint8_t)(1u << bit);
        }
    }
    free(b);
    cqr_manifest_free(&g);
}
END_TEST

/* Every prefix is refused: as too short, by the checksum, and (resealed,
 * as a torn write with a matching checksum would be) by the structure. */
START_TEST(test_manifest_truncated)
{
    cqr_manifest_t g;
    build(&g);
    size_t len;
    uint8_t *b = encode(&g, &len);
    uint8_t *c = malloc(len);
    ck_assert_ptr_nonnull(c);
    for (size_t n = 0; n < len; n++) {
        if (n < 48) {
            char want[40];
            snprintf(want, sizeof want, "manifest of %zu bytes", n);
            refused(b, n, 9, CQR_ECORRUPT, want);
            continue;
        }
        refused(b, n, 9, CQR_ECORRUPT, "manifest checksum mismatch");
        memcpy(c, b, n);
        reseal(c, n);
        cqr_manifest_t d;
        char why[200] = "";
        ck_assert_int_eq(cqr_manifest_decode(c, n, 9, &d, why, sizeof why),
                         CQR_ECORRUPT);
        ck_assert_msg(strstr(why, "structure is damaged") ||
                          strstr(why, "disagrees with its key"),
                      "prefix %zu: %s", n, why);
        assert_empty(&d);
    }
    free(c);
    free(b);
    cqr_manifest_free(&g);
}
END_TEST

START_TEST(test_manifest_wrong_version)
{
    cqr_manifest_t g;
    build(&g);
    size_t len;
    uint8_t *b = encode(&g, &len);
    const uint32_t versions[3] = {0, 2, UINT32_MAX};
    for (int i = 0; i < 3; i++) {
        put32(b, OFF_VERSION, versions[i]);
        reseal(b, len);
        char want[48];
        snprintf(want, sizeof want, "manifest version %u unknown",
                 versions[i]);
        refused(b, len, 9, CQR_EVERSION, want);
    }
    /* Another format altogether. */
    put32(b, OFF_VERSION, 1);
    put32(b, OFF_MAGIC, 0x4d525144u);
    reseal(b, len);
    refused(b, len, 9, CQR_ECORRUPT, "not a manifest");
    free(b);
    cqr_manifest_free(&g);
}
END_TEST

/* Sealed with a matching checksum, yet inconsistent: each is refused by
 * the check that sees it, before any oversized allocation. */
START_TEST(test_manifest_inconsistent)
{
    cqr_manifest_t g;
    build(&g);
    size_t len;
    uint8_t *orig = encode(&g, &len);
    uint8_t *b = malloc(len + 8);
    ck_assert_ptr_nonnull(b);
    const size_t pg0 = page0();     /* type, index, nref, 0 */
    const size_t ref0 = pg0 + 16;   /* gen, len, hash, delta, 0 */
    const size_t pg1 = ref0 + 32;
    struct {
        size_t at;
        uint32_t v;
        const char *reason;
    } cases[] = {
        {OFF_NTABLES, UINT32_MAX, "disagrees with its key"},
        {OFF_TABLE0, 0, "structure is damaged"},          /* no name */
        {OFF_TABLE0, CQR_STORE_NAME_MAX + 1, "structure is damaged"},
        {pg0 - 4, UINT32_MAX, "structure is damaged"},    /* npages */
        {pg0 + 8, 0, "structure is damaged"},             /* no refs */
        {pg0 + 8, UINT32_MAX, "structure is damaged"},
        {ref0, 10, "structure is damaged"},               /* gen > 9 */
        {ref0 + 24, 1, "structure is damaged"},           /* base as delta */
        {pg1 + 4, 0, "structure is damaged"},             /* page order */
        {pg1, 1, "structure is damaged"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(b, orig, len);
        put32(b, cases[i].at, cases[i].v);
        reseal(b, len);
        refused(b, len, 9, CQR_ECORRUPT, cases[i].reason);
    }
    /* A NUL inside a table name. */
    memcpy(b, orig, len);
    b[OFF_TABLE0 + 4 + 2] = 0;
    reseal(b, len);
    refused(b, len, 9, CQR_ECORRUPT, "structure is damaged");
    /* Generation 9's manifest stored under another key. */
    refused(orig, len, 8, CQR_ECORRUPT, "disagrees with its key");
    refused(orig, len, 10, CQR_ECORRUPT, "disagrees with its key");
    /* Bytes after the last table. */
    memcpy(b, orig, len - 8);
    memset(b + len - 8, 0, 8);
    reseal(b, len + 8);
    refused(b, len + 8, 9, CQR_ECORRUPT, "structure is damaged");
    free(b);
    free(orig);
    cqr_manifest_free(&g);
}
END_TEST

/* ---- Key sets --------------------------------------------------------- */

START_TEST(test_keyset)
{
    cqr_manifest_t g;
    build(&g);
    cqr_keyset_t ks = {0};
    for (uint32_t i = 0; i < g.ntables; i++)
        cqr_keyset_add_table(&ks, &g.tables[i]);
    cqr_keyset_add_table(&ks, &g.tables[0]); /* duplicates are kept */
    cqr_keyset_sort(&ks);
    ck_assert_int_eq(ks.oom, 0);
    ck_assert_uint_eq(ks.n, 6 + 5);
    uint8_t k[CQR_STORE_KEY_MAX];
    for (uint32_t i = 0; i < g.ntables; i++) {
        const cqr_mtable_t *t = &g.tables[i];
        for (uint32_t p = 0; p < t->npages; p++) {
            const cqr_mpage_t *pg = &t->pages[p];
            for (uint32_t r = 0; r < pg->nref; r++) {
                size_t kl = cqr_key_segment(k, t->name, pg->type, pg->index,
                                            pg->refs[r].gen);
                ck_assert(cqr_keyset_has(&ks, k, kl));
                ck_assert(!cqr_keyset_has(&ks, k, kl - 1));
            }
        }
    }
    size_t kl = cqr_key_segment(k, "users", 2, 1, 99);
    ck_assert(!cqr_keyset_has(&ks, k, kl));
    ck_assert(!cqr_keyset_has(&ks, k, CQR_STORE_KEY_MAX + 1));
    /* Sorted order is the keys' byte order, shorter first on a tie. */
    for (size_t i = 1; i < ks.n; i++) {
        const uint8_t *a, *b;
        size_t al = cqr_keyset_key(&ks, i - 1, &a);
        size_t bl = cqr_keyset_key(&ks, i, &b);
        int c = memcmp(a, b, al < bl ? al : bl);
        ck_assert(c < 0 || (c == 0 && al <= bl));
    }
    cqr_keyset_free(&ks);
    cqr_manifest_free(&g);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("manifest");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_keys_layout);
    tcase_add_test(tc, test_keys_order);
    tcase_add_test(tc, test_manifest_roundtrip);
    tcase_add_test(tc, test_manifest_empty);
    tcase_add_test(tc, test_manifest_damaged);
    tcase_add_test(tc, test_manifest_truncated);
    tcase_add_test(tc, test_manifest_wrong_version);
    tcase_add_test(tc, test_manifest_inconsistent);
    tcase_add_test(tc, test_keyset);
    suite_add_tcase(s, tc);
    return s;
}
