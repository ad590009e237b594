/* list.h -- the one intrusive doubly-linked list of the daemon.
 *
 * A list is a sentinel head (cqr_list_t) and links embedded in the
 * elements; cqr_container_of turns a link back into its element. Nothing
 * is allocated here: the element owns its link, and whoever owns the head
 * decides who may touch the list (the connections of a loop thread belong
 * to that thread; the jobs of the phase runner to its mutex).
 *
 * It lives in net/ because the connections are its main users (every
 * connection of a loop thread, the ones ready to run, the deferred reply
 * slots, the sockets handed over); it holds no networking and no libuv,
 * so tables/phase.c uses it too instead of a list of its own.
 *
 * A link that is on no list has next == NULL (cqr_list_del sets it, and
 * a zeroed element starts that way), so cqr_list_linked tells whether an
 * element is queued. Iterate with plain loops over l->next until the
 * head; save l->next first when the loop may unlink l.
 *
 * Errors: none; the functions cannot fail.
 *
 * Threading: none; callers lock around a shared list.
 */
#ifndef CQR_LIST_H
#define CQR_LIST_H

#include <stddef.h>

typedef struct cqr_list {
    struct cqr_list *prev; /* previous link, or the head */
    struct cqr_list *next; /* next link, or the head; NULL: on no list */
} cqr_list_t;

/* The element of type `type` whose member `member` is the link p. */
#define cqr_container_of(p, type, member) \
    ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* Makes h an empty list (a head links to itself). */
static inline void cqr_list_init(cqr_list_t *h)
{
    h->prev = h->next = h;
}

static inline int cqr_list_empty(const cqr_list_t *h)
{
    return h->next == h;
}

/* 1 when the link l is on a list. */
static inline int cqr_list_linked(const cqr_list_t *l)
{
    return l->next != NULL;
}

/* Appends l (on no list) at the tail of h. */
static inline void cqr_list_add_tail(cqr_list_t *h, cqr_list_t *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}

/* Unlinks l from its list; l is then on no list. */
static inline void cqr_list_del(cqr_list_t *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

/* The first link of h, or NULL when h is empty. */
static inline cqr_list_t *cqr_list_first(const cqr_list_t *h)
{
    return h->next == h ? NULL : h->next;
}

/* Unlinks and returns the first link of h, or NULL when h is empty. */
static inline cqr_list_t *cqr_list_pop(cqr_list_t *h)
{
    cqr_list_t *l = cqr_list_first(h);
    if (l != NULL)
        cqr_list_del(l);
    return l;
}

/* Moves every link of src, in order, to the empty list dst; src is then
 * empty. */
static inline void cqr_list_move(cqr_list_t *dst, cqr_list_t *src)
{
    cqr_list_init(dst);
    if (cqr_list_empty(src))
        return;
    dst->next = src->next;
    dst->prev = src->prev;
    dst->next->prev = dst;
    dst->prev->next = dst;
    cqr_list_init(src);
}

#endif
