/* The intrusive list (server/net/list.h): order, unlinking from any
 * place, the linked flag, pop, and moving a whole list. */
#include <check.h>
#include <stddef.h>

#include "net/list.h"
#include "check_main.h"

typedef struct item {
    int v;
    cqr_list_t link;
} item_t;

static int value(cqr_list_t *l)
{
    return cqr_container_of(l, item_t, link)->v;
}

/* Asserts that h holds exactly want[0..n) in order, both ways. */
static void expect(cqr_list_t *h, const int *want, int n)
{
    int i = 0;
    for (cqr_list_t *l = h->next; l != h; l = l->next, i++) {
        ck_assert_int_lt(i, n);
        ck_assert_int_eq(value(l), want[i]);
    }
    ck_assert_int_eq(i, n);
    for (cqr_list_t *l = h->prev; l != h; l = l->prev)
        ck_assert_int_eq(value(l), want[--i]);
    ck_assert_int_eq(cqr_list_empty(h), n == 0);
}

START_TEST(test_order_and_del)
{
    item_t it[5] = {{0, {0}}, {1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}};
    cqr_list_t h;
    cqr_list_init(&h);
    expect(&h, NULL, 0);
    ck_assert_ptr_null(cqr_list_first(&h));
    ck_assert_ptr_null(cqr_list_pop(&h));
    for (int i = 0; i < 5; i++) {
        ck_assert(!cqr_list_linked(&it[i].link)); /* zeroed: on no list */
        cqr_list_add_tail(&h, &it[i].link);
        ck_assert(cqr_list_linked(&it[i].link));
    }
    expect(&h, (const int[]){0, 1, 2, 3, 4}, 5);
    cqr_list_del(&it[2].link); /* middle */
    ck_assert(!cqr_list_linked(&it[2].link));
    cqr_list_del(&it[0].link); /* head */
    cqr_list_del(&it[4].link); /* tail */
    expect(&h, (const int[]){1, 3}, 2);
    ck_assert_ptr_eq(cqr_list_first(&h), &it[1].link);
    cqr_list_add_tail(&h, &it[2].link);
    expect(&h, (const int[]){1, 3, 2}, 3);
    ck_assert_ptr_eq(cqr_list_pop(&h), &it[1].link);
    ck_assert(!cqr_list_linked(&it[1].link));
    ck_assert_ptr_eq(cqr_list_pop(&h), &it[3].link);
    ck_assert_ptr_eq(cqr_list_pop(&h), &it[2].link);
    ck_assert_ptr_null(cqr_list_pop(&h));
    expect(&h, NULL, 0);
}
END_TEST

START_TEST(test_move)
{
    item_t it[3] = {{7, {0}}, {8, {0}}, {9, {0}}};
    cqr_list_t src, dst;
    cqr_list_init(&src);
    /* An empty source gives an empty destination. */
    cqr_list_move(&dst, &src);
    expect(&dst, NULL, 0);
    for (int i = 0; i < 3; i++)
        cqr_list_add_tail(&src, &it[i].link);
    cqr_list_move(&dst, &src);
    expect(&src, NULL, 0);
    expect(&dst, (const int[]){7, 8, 9}, 3);
    /* The source is usable again, and the moved links unlink from the
     * destination. */
    cqr_list_del(&it[1].link);
    cqr_list_add_tail(&src, &it[1].link);
    expect(&src, (const int[]){8}, 1);
    expect(&dst, (const int[]){7, 9}, 2);
}
END_TEST

/* Unlinking the element a loop stands on, after saving the next link. */
START_TEST(test_delete_while_iterating)
{
    item_t it[6];
    cqr_list_t h;
    cqr_list_init(&h);
    for (int i = 0; i < 6; i++) {
        it[i].v = i;
        it[i].link.next = it[i].link.prev = NULL;
        cqr_list_add_tail(&h, &it[i].link);
    }
    for (cqr_list_t *l = h.next; l != &h;) {
        cqr_list_t *next = l->next;
        if (value(l) % 2 == 0)
            cqr_list_del(l);
        l = next;
    }
    expect(&h, (const int[]){1, 3, 5}, 3);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("list");
    TCase *tc = tcase_create("list");
    tcase_add_test(tc, test_order_and_del);
    tcase_add_test(tc, test_move);
    tcase_add_test(tc, test_delete_while_iterating);
    suite_add_tcase(s, tc);
    return s;
}
