/* The static key-less map (packmap.h): every member finds its own slot
 * and value; non-members are told apart by their fingerprints at the
 * documented rate; records come back in slot order; builds are the same
 * bytes with one or two threads; the serialised form reads back and
 * damage is caught; empty, tiny and wide maps; duplicate IDs. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/packmap.h"
#include "check_main.h"

/* The i-th test ID (spread over 64 bits, 0 and UINT64_MAX included). */
static uint64_t tid(uint64_t i)
{
    if (i == 0)
        return 0;
    if (i == 1)
        return UINT64_MAX;
    return cqr_mix64(i * 0x9e3779b97f4a7c15ULL + 17);
}

/* A payload of `bits` bits derived from the ID (bytes LSB first). */
static void payload_of(uint64_t id, uint32_t bits, uint8_t *out,
                       uint32_t bytes)
{
    memset(out, 0, bytes);
    for (uint32_t b = 0; b < bits; b++)
        if (cqr_mix64(id + b) & 1)
            out[b / 8] |= (uint8_t)(1u << (b % 8));
}

/* Builds a map of n test IDs with payloads of vbits - fbits bits and
 * records of rec bytes (payload, then the ID's index as a u32). */
static cqr_pm_builder_t *build_seed(uint64_t n, uint32_t vbits,
                                    uint32_t fbits, uint32_t rec,
                                    unsigned threads, uint64_t seed,
                                    cqr_packmap_t *pm)
{
    cqr_pm_builder_t *b;
    ck_assert_int_eq(cqr_pm_builder_create(n, vbits, fbits, rec, seed, &b),
                     0);
    uint8_t buf[64];
    for (uint64_t i = 0; i < n; i++) {
        uint32_t pb = (vbits - fbits + 7) / 8;
        payload_of(tid(i), vbits - fbits, buf, pb);
        uint32_t idx = (uint32_t)i;
        memcpy(buf + pb, &idx, 4);
        ck_assert_int_eq(cqr_pm_builder_add(b, tid(i), buf), 0);
    }
    ck_assert_int_eq(cqr_pm_builder_build(b, threads, pm), 0);
    ck_assert_uint_eq(pm->n, n);
    return b;
}

static cqr_pm_builder_t *build(uint64_t n, uint32_t vbits, uint32_t fbits,
                               uint32_t rec, unsigned threads,
                               cqr_packmap_t *pm)
{
    return build_seed(n, vbits, fbits, rec, threads, 99, pm);
}

/* Every member: its own slot, fingerprint match, its payload, and its
 * record at that slot. */
static void check_members(const cqr_packmap_t *pm, const cqr_pm_builder_t *b,
                          uint64_t n)
{
    uint8_t *seen = calloc(n ? n : 1, 1);
    ck_assert_ptr_nonnull(seen);
    const uint32_t pbits = pm->vbits - pm->fbits, pb = (pbits + 7) / 8;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t vbit, rid;
        int ok;
        uint64_t s = cqr_packmap_lookup(pm, tid(i), &vbit, &ok);
        ck_assert_int_eq(ok, 1);
        ck_assert_uint_lt(s, n);
        ck_assert_int_eq(seen[s], 0);
        seen[s] = 1;
        uint8_t want[64], got[64] = {0};
        payload_of(tid(i), pbits, want, pb);
        for (uint32_t o = 0; o < pbits; o += 32) {
            uint32_t k = pbits - o < 32 ? pbits - o : 32;
            uint32_t piece =
                (uint32_t)cqr_packmap_bits(pm, vbit + pm->fbits + o, k);
            memcpy(got + o / 8, &piece, (k + 7) / 8);
        }
        ck_assert_mem_eq(got, want, pb);
        const uint8_t *rec = cqr_pm_builder_record(b, s, &rid);
        ck_assert_uint_eq(rid, tid(i));
        uint32_t idx;
        memcpy(&idx, rec + pb, 4);
        ck_assert_uint_eq(idx, i);
    }
    free(seen);
}

START_TEST(test_members)
{
    const uint64_t sizes[] = {1, 2, 3, 100, 50001, 180000};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        cqr_packmap_t pm;
        cqr_pm_builder_t *b = build(sizes[t], 68, 4, 12, 1, &pm);
        check_members(&pm, b, sizes[t]);
        /* About 2 bits an ID beyond the values, at these sizes too. */
        if (sizes[t] >= 50000)
            ck_assert_uint_lt(cqr_packmap_bytes(&pm) * 8,
                              sizes[t] * (68 + 3));
        cqr_pm_builder_destroy(b);
        cqr_packmap_free(&pm);
    }
}
END_TEST

/* Small sets (a partition of a few IDs has few spare positions) build
 * with every seed tried. */
START_TEST(test_small_sets)
{
    for (uint64_t n = 1; n <= 300; n += (n < 40 ? 1 : 13)) {
        for (uint64_t seed = 1; seed <= 4; seed++) {
            cqr_packmap_t pm;
            cqr_pm_builder_t *b = build_seed(n, 24, 16, 5, 1, seed, &pm);
            ck_assert_uint_eq(pm.seed, seed); /* no retry was needed */
            check_members(&pm, b, n);
            cqr_pm_builder_destroy(b);
            cqr_packmap_free(&pm);
        }
    }
}
END_TEST

START_TEST(test_fingerprints)
{
    /* Non-members match a fingerprint of f bits with probability 2^-f:
     * 1/16 for f = 4 (expected 6,250 of 100,000; the bounds are 8
     * standard deviations), about 1/65536 for f = 16. */
    const uint32_t fb[] = {4, 16};
    for (int t = 0; t < 2; t++) {
        cqr_packmap_t pm;
        cqr_pm_builder_t *b = build(60000, 40 + fb[t], fb[t], 8, 2, &pm);
        uint64_t hits = 0;
        for (uint64_t i = 0; i < 100000; i++) {
            uint64_t vbit;
            int ok;
            uint64_t s = cqr_packmap_lookup(&pm, tid(1000000 + i), &vbit, &ok);
            ck_assert_uint_lt(s, 60000);
            hits += (uint64_t)ok;
        }
        if (fb[t] == 4) {
            ck_assert_uint_gt(hits, 5650);
            ck_assert_uint_lt(hits, 6850);
        } else {
            ck_assert_uint_lt(hits, 12);
        }
        cqr_pm_builder_destroy(b);
        cqr_packmap_free(&pm);
    }
}
END_TEST

/* The serialised bytes of a map. */
static uint8_t *serialise(const cqr_packmap_t *pm, size_t *len)
{
    *len = (size_t)cqr_packmap_size(pm);
    uint8_t *buf = malloc(*len);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(cqr_packmap_write(pm, buf), 0);
    return buf;
}

START_TEST(test_deterministic)
{
    cqr_packmap_t a, b;
    cqr_pm_builder_t *ba = build(120000, 68, 4, 12, 1, &a);
    cqr_pm_builder_t *bb = build(120000, 68, 4, 12, 2, &b);
    size_t la, lb;
    uint8_t *sa = serialise(&a, &la), *sb = serialise(&b, &lb);
    ck_assert_uint_eq(la, lb);
    ck_assert_int_eq(memcmp(sa, sb, la), 0);
    free(sa);
    free(sb);
    cqr_pm_builder_destroy(ba);
    cqr_pm_builder_destroy(bb);
    cqr_packmap_free(&a);
    cqr_packmap_free(&b);
}
END_TEST

START_TEST(test_roundtrip)
{
    cqr_packmap_t pm, back;
    cqr_pm_builder_t *b = build(70000, 112, 16, 16, 2, &pm);
    size_t len;
    uint8_t *buf = serialise(&pm, &len);
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), 0);
    check_members(&back, b, 70000);
    size_t len2;
    uint8_t *buf2 = serialise(&back, &len2);
    ck_assert_uint_eq(len2, len);
    ck_assert_int_eq(memcmp(buf, buf2, len), 0);
    /* Any range reads as the same bytes (checkpoint pages). */
    for (size_t off = 0; off < len; off += 7777) {
        size_t k = len - off < 5000 ? len - off : 5000;
        memset(buf2, 0xee, k);
        ck_assert_int_eq(cqr_packmap_write_range(&back, off, k, buf2), 0);
        ck_assert_int_eq(memcmp(buf + off, buf2, k), 0);
    }
    free(buf2);
    cqr_packmap_free(&back);
    /* Damage is refused before any lookup can use it. */
    ck_assert_int_eq(cqr_packmap_read(buf, len - 8, &back), CQR_ECORRUPT);
    buf[0] ^= 1;
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), CQR_ECORRUPT);
    buf[0] ^= 1;
    buf[4] = 9; /* format version */
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), CQR_EVERSION);
    buf[4] = 1;
    /* A partition's slot offset (first partition header, at 64). */
    buf[64] ^= 1;
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), CQR_ECORRUPT);
    buf[64] ^= 1;
    /* A remap entry pointing past its partition. */
    size_t remap_at = 64 + (size_t)pm.nparts * 48 +
                      ((pm.npilots + 7) & ~(uint64_t)7);
    uint16_t bad = 65535;
    memcpy(buf + remap_at, &bad, 2);
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), CQR_ECORRUPT);
    free(buf);
    cqr_pm_builder_destroy(b);
    cqr_packmap_free(&pm);
}
END_TEST

START_TEST(test_empty_and_errors)
{
    cqr_packmap_t pm;
    cqr_pm_builder_t *b;
    ck_assert_int_eq(cqr_pm_builder_create(0, 20, 4, 2, 1, &b), 0);
    ck_assert_int_eq(cqr_pm_builder_build(b, 1, &pm), 0);
    ck_assert_uint_eq(pm.n, 0);
    size_t len;
    uint8_t *buf = serialise(&pm, &len);
    cqr_packmap_t back;
    ck_assert_int_eq(cqr_packmap_read(buf, len, &back), 0);
    ck_assert_uint_eq(back.n, 0);
    free(buf);
    cqr_packmap_free(&back);
    cqr_packmap_free(&pm);
    cqr_pm_builder_destroy(b);
    /* Payload wider than the record; more IDs than announced; fewer. */
    ck_assert_int_eq(cqr_pm_builder_create(5, 40, 4, 4, 1, &b), CQR_EINVAL);
    ck_assert_int_eq(cqr_pm_builder_create(1, 20, 4, 2, 1, &b), 0);
    uint8_t rec[2] = {0};
    ck_assert_int_eq(cqr_pm_builder_add(b, 5, rec), 0);
    ck_assert_int_eq(cqr_pm_builder_add(b, 6, rec), CQR_EINVAL);
    cqr_pm_builder_destroy(b);
    ck_assert_int_eq(cqr_pm_builder_create(2, 20, 4, 2, 1, &b), 0);
    ck_assert_int_eq(cqr_pm_builder_add(b, 5, rec), 0);
    ck_assert_int_eq(cqr_pm_builder_build(b, 1, &pm), CQR_EINVAL);
    /* The same ID twice. */
    ck_assert_int_eq(cqr_pm_builder_add(b, 5, rec), 0);
    ck_assert_int_eq(cqr_pm_builder_build(b, 1, &pm), CQR_EINVAL);
    cqr_pm_builder_destroy(b);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("packmap");
    TCase *tc = tcase_create("packmap");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_members);
    tcase_add_test(tc, test_small_sets);
    tcase_add_test(tc, test_fingerprints);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_empty_and_errors);
    suite_add_tcase(s, tc);
    return s;
}
