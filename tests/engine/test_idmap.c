/* The known-ID map (idmap.h): insert, find and grow; many IDs; the IDs 0
 * and UINT64_MAX; iteration; the growth it announces; reserve; the same
 * layout for the same inserts; deletion and the slots it moves. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/idmap.h"
#include "check_main.h"

/* A value derived from the ID, to tell values apart. */
static uint32_t val_of(uint64_t id)
{
    return (uint32_t)cqr_mix64(id ^ 0x5555);
}

static uint32_t get_val(const void *v)
{
    uint32_t x;
    memcpy(&x, v, sizeof x);
    return x;
}

/* An empty map of values of vw bytes and `initial` slots. */
static void map_init(cqr_idmap_t *m, uint32_t vw, size_t initial)
{
    ck_assert_int_eq(cqr_idmap_init(m, vw, initial), 0);
    ck_assert_uint_eq(m->count, 0);
    ck_assert_uint_ge(m->cap, initial);
}

/* Inserts id with val_of(id); returns whether it was new. */
static int put(cqr_idmap_t *m, uint64_t id)
{
    void *v;
    int inserted = -1;
    ck_assert_int_eq(cqr_idmap_insert(m, id, &v, &inserted), 0);
    ck_assert_ptr_nonnull(v);
    if (inserted) {
        ck_assert_uint_eq(get_val(v), 0); /* new values are zero-filled */
        uint32_t x = val_of(id);
        memcpy(v, &x, sizeof x);
    }
    return inserted;
}

START_TEST(test_insert_find)
{
    cqr_idmap_t m;
    map_init(&m, 4, 0);
    ck_assert_ptr_null(cqr_idmap_find(&m, 42));
    ck_assert_int_eq(put(&m, 42), 1);
    void *v = cqr_idmap_find(&m, 42);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(get_val(v), val_of(42));
    /* A second insert finds the same value and changes nothing. */
    void *w;
    int inserted = -1;
    ck_assert_int_eq(cqr_idmap_insert(&m, 42, &w, &inserted), 0);
    ck_assert_int_eq(inserted, 0);
    ck_assert_ptr_eq(w, v);
    ck_assert_uint_eq(m.count, 1);
    ck_assert_ptr_null(cqr_idmap_find(&m, 43));
    cqr_idmap_free(&m);
    ck_assert_ptr_null(m.slots);
}
END_TEST

/* Any 64-bit ID is a key: 0 (kept beside the slots) and UINT64_MAX too. */
START_TEST(test_extreme_ids)
{
    cqr_idmap_t m;
    map_init(&m, 4, 0);
    ck_assert_ptr_null(cqr_idmap_find(&m, 0));
    ck_assert_int_eq(put(&m, 0), 1);
    ck_assert_int_eq(put(&m, UINT64_MAX), 1);
    ck_assert_int_eq(put(&m, 1), 1);
    ck_assert_int_eq(put(&m, 0), 0);
    ck_assert_uint_eq(m.count, 3);
    ck_assert_int_eq(m.has_zero, 1);
    ck_assert_uint_eq(get_val(cqr_idmap_find(&m, 0)), val_of(0));
    ck_assert_uint_eq(get_val(cqr_idmap_find(&m, UINT64_MAX)),
                      val_of(UINT64_MAX));
    ck_assert_uint_eq(get_val(cqr_idmap_find(&m, 1)), val_of(1));
    /* Iteration returns each once, the ID 0 after the slots. */
    size_t pos = 0, seen = 0;
    uint64_t id, last = 1;
    void *v;
    while (cqr_idmap_next(&m, &pos, &id, &v)) {
        ck_assert_uint_eq(get_val(v), val_of(id));
        last = id;
        seen++;
    }
    ck_assert_uint_eq(seen, 3);
    ck_assert_uint_eq(last, 0);
    cqr_idmap_free(&m);
}
END_TEST

/* Many IDs through many rehashes: every one found with its value, the
 * others not, iteration visits each once, load stays at most 85%, and
 * each insert grows the bytes by exactly what grow_bytes announced. */
START_TEST(test_many_ids)
{
    enum { N = 200000 };
    cqr_idmap_t m;
    map_init(&m, 4, 0);
    size_t rehashes = 0;
    for (uint64_t i = 0; i < N; i++) {
        uint64_t id = cqr_mix64(i + 1); /* distinct, never 0 */
        uint64_t before = cqr_idmap_bytes(&m);
        uint64_t grow = cqr_idmap_grow_bytes(&m);
        size_t cap = m.cap;
        ck_assert_int_eq(put(&m, id), 1);
        ck_assert_uint_eq(cqr_idmap_bytes(&m) - before, grow);
        rehashes += m.cap != cap;
        ck_assert_uint_le(m.count * 20, m.cap * 17); /* at most 85% */
    }
    ck_assert_uint_eq(m.count, N);
    ck_assert_uint_gt(rehashes, 10);
    /* Key and value share a slot of 16 bytes; the ID 0 has one more. */
    ck_assert_uint_eq(m.stride, 16);
    ck_assert_uint_eq(cqr_idmap_bytes(&m), (uint64_t)(m.cap + 1) * 16);
    for (uint64_t i = 0; i < N; i++) {
        uint64_t id = cqr_mix64(i + 1);
        const void *v = cqr_idmap_find(&m, id);
        ck_assert_ptr_nonnull(v);
        ck_assert_uint_eq(get_val(v), val_of(id));
        ck_assert_ptr_null(cqr_idmap_find(&m, cqr_mix64(N + 1 + i)));
    }
    size_t pos = 0, seen = 0;
    uint64_t id, xsum = 0, want = 0;
    void *v;
    while (cqr_idmap_next(&m, &pos, &id, &v)) {
        ck_assert_uint_eq(get_val(v), val_of(id));
        xsum ^= cqr_mix64(id);
        seen++;
    }
    for (uint64_t i = 0; i < N; i++)
        want ^= cqr_mix64(cqr_mix64(i + 1));
    ck_assert_uint_eq(seen, N);
    ck_assert_uint_eq(xsum, want);
    cqr_idmap_free(&m);
}
END_TEST

/* After reserve(n), n IDs go in without a rehash (the arrays stay). */
START_TEST(test_reserve)
{
    enum { N = 5000 };
    cqr_idmap_t m;
    map_init(&m, 8, 0);
    ck_assert_int_eq(cqr_idmap_reserve(&m, N), 0);
    size_t cap = m.cap;
    const uint8_t *slots = m.slots;
    ck_assert_uint_ge(cap * 85, (size_t)N * 100);
    for (uint64_t i = 0; i < N; i++) {
        ck_assert_uint_eq(cqr_idmap_grow_bytes(&m), 0);
        put(&m, i + 1);
    }
    ck_assert_uint_eq(m.cap, cap);
    ck_assert_ptr_eq(m.slots, slots);
    /* Reserving less than there is changes nothing. */
    ck_assert_int_eq(cqr_idmap_reserve(&m, 10), 0);
    ck_assert_uint_eq(m.cap, cap);
    ck_assert_uint_eq(m.count, N);
    cqr_idmap_free(&m);
}
END_TEST

/* The same inserts give the same slots; the same IDs in another order
 * or from another start size give a map with the same contents. */
START_TEST(test_deterministic)
{
    enum { N = 30000 };
    cqr_idmap_t a, b, c;
    map_init(&a, 4, 0);
    map_init(&b, 4, 0);
    map_init(&c, 4, 1000);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 9);
    uint64_t *ids = malloc(N * sizeof *ids);
    for (size_t i = 0; i < N; i++)
        ids[i] = cqr_rng_next(&rng);
    for (size_t i = 0; i < N; i++) {
        put(&a, ids[i]);
        put(&b, ids[i]);
        put(&c, ids[N - 1 - i]);
    }
    ck_assert_uint_eq(a.cap, b.cap);
    ck_assert_mem_eq(a.slots, b.slots, a.cap * a.stride);
    ck_assert_uint_eq(c.count, a.count);
    for (size_t i = 0; i < N; i++)
        ck_assert_uint_eq(get_val(cqr_idmap_find(&c, ids[i])),
                          val_of(ids[i]));
    free(ids);
    cqr_idmap_free(&a);
    cqr_idmap_free(&b);
    cqr_idmap_free(&c);
}
END_TEST

/* Values of any width are kept whole (a cqr table stores c pointers of
 * pw bytes each). */
START_TEST(test_wide_values)
{
    cqr_idmap_t m;
    map_init(&m, 13, 0);
    for (uint64_t id = 0; id < 2000; id++) {
        void *v;
        int inserted;
        ck_assert_int_eq(cqr_idmap_insert(&m, id * 7919, &v, &inserted), 0);
        ck_assert_int_eq(inserted, 1);
        memset(v, (int)(id & 0xff), 13);
    }
    for (uint64_t id = 0; id < 2000; id++) {
        const uint8_t *v = cqr_idmap_find(&m, id * 7919);
        ck_assert_ptr_nonnull(v);
        for (int b = 0; b < 13; b++)
            ck_assert_uint_eq(v[b], id & 0xff);
    }
    cqr_idmap_free(&m);
}
END_TEST

/* Counts the slots a delete reports changed. */
static void count_moved(void *ud, size_t slot)
{
    (void)slot;
    (*(size_t *)ud)++;
}

/* Deleting half of the IDs in a scrambled order: the rest stay with their
 * values, the deleted are gone (and can come back), every probe run stays
 * intact, and each delete reports at least the slot it emptied. */
START_TEST(test_delete)
{
    enum { N = 60000 };
    cqr_idmap_t m;
    map_init(&m, 4, 0);
    for (uint64_t i = 0; i < N; i++)
        put(&m, i);                 /* the ID 0 included */
    size_t moved = 0;
    for (uint64_t i = 0; i < N; i += 2) {
        /* 7919 is prime to N: every even index once, scrambled. */
        uint64_t id = (i * 7919) % N;
        size_t before = moved;
        ck_assert_int_eq(cqr_idmap_delete(&m, id, count_moved, &moved), 1);
        ck_assert_uint_gt(moved, before);
        ck_assert_int_eq(cqr_idmap_delete(&m, id, count_moved, &moved), 0);
    }
    ck_assert_uint_eq(m.count, N / 2);
    ck_assert_int_eq(m.has_zero, 0);
    for (uint64_t i = 0; i < N; i++) {
        void *v = cqr_idmap_find(&m, i);
        if (i & 1) {
            ck_assert_ptr_nonnull(v);
            ck_assert_uint_eq(get_val(v), val_of(i));
        } else {
            ck_assert_ptr_null(v);
        }
    }
    size_t pos = 0, seen = 0;
    uint64_t id;
    void *v;
    while (cqr_idmap_next(&m, &pos, &id, &v)) {
        ck_assert_uint_eq(id & 1, 1);
        seen++;
    }
    ck_assert_uint_eq(seen, N / 2);
    for (uint64_t i = 0; i < N; i += 2)
        ck_assert_int_eq(put(&m, i), 1);
    ck_assert_uint_eq(m.count, N);
    for (uint64_t i = 0; i < N; i++)
        ck_assert_uint_eq(get_val(cqr_idmap_find(&m, i)), val_of(i));
    cqr_idmap_free(&m);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("idmap");
    TCase *tc = tcase_create("idmap");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_insert_find);
    tcase_add_test(tc, test_extreme_ids);
    tcase_add_test(tc, test_many_ids);
    tcase_add_test(tc, test_reserve);
    tcase_add_test(tc, test_deterministic);
    tcase_add_test(tc, test_wide_values);
    tcase_add_test(tc, test_delete);
    suite_add_tcase(s, tc);
    return s;
}
