/* bigmem.c -- huge-page-backed zeroed arrays (see bigmem.h). */
#include "bigmem.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)
#define PAGE ((size_t)4096)

static size_t round_up(size_t v, size_t to)
{
    return (v + to - 1) & ~(to - 1);
}

void *cqr_big_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = n * size;
    if (bytes < CQR_BIG_MIN)
        return calloc(n ? n : 1, size ? size : 1);
    size_t len = round_up(bytes, PAGE);
    if (len > SIZE_MAX - HUGE_PAGE)
        return NULL;
    /* Over-map by one huge page and trim, so the array starts on a huge
     * page boundary; fresh anonymous memory is zero. */
    size_t span = len + HUGE_PAGE;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    char *a = (char *)round_up((uintptr_t)p, HUGE_PAGE);
    if (a > p)
        munmap(p, (size_t)(a - p));
    char *end = p + span;
    if (end > a + len)
        munmap(a + len, (size_t)(end - (a + len)));
    (void)madvise(a, len, MADV_HUGEPAGE); /* a hint: EINVAL without THP */
    return a;
}

void cqr_big_free(void *p, size_t n, size_t size)
{
    if (!p)
        return;
    size_t bytes = n * size;
    if (bytes < CQR_BIG_MIN)
        free(p);
    else
        munmap(p, round_up(bytes, PAGE));
}
