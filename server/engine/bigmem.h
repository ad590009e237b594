/* bigmem.h -- zeroed allocations for the engine's large random-access
 * arrays (the known-ID map, full-table rows), backed by huge pages where
 * the kernel offers them.
 *
 * A lookup touches a random slot of a map of tens of megabytes: with 4 KiB
 * pages almost every probe also misses the TLB, and the page walk holds
 * the very fill buffers that the batch's prefetches need. Arrays of at
 * least CQR_BIG_MIN bytes are therefore mapped on a 2 MiB boundary and
 * marked MADV_HUGEPAGE (honoured when transparent huge pages are
 * "madvise" or "always"; a no-op otherwise). Smaller ones come from
 * calloc. Memory is still committed only as it is touched.
 *
 * Threading: like calloc and free, safe from any thread.
 * Ownership: the caller owns an array until it passes it, with the same
 * n and size, to cqr_big_free (the size picks munmap or free).
 * Errors: NULL when out of memory or when n x size overflows; the engine
 * turns that into CQR_ENOMEM.
 */
#ifndef CQR_BIGMEM_H
#define CQR_BIGMEM_H

#include <stddef.h>

#define CQR_BIG_MIN ((size_t)2 << 20)

/* n x size zeroed bytes, or NULL (also on overflow). */
void *cqr_big_calloc(size_t n, size_t size);

/* Frees p from cqr_big_calloc(n, size) with the same n and size. */
void cqr_big_free(void *p, size_t n, size_t size);

#endif
