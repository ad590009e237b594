/* manifest.h -- the store's key layout and generation manifests.
 *
 * Internal to the store (store.c, store_write.c, store_read.c) and its
 * tests; the key layout is described in store.h.
 * A manifest lists, for every table of a generation, every page and the
 * segment versions (a base, then deltas) that rebuild it. Encoded
 * little-endian with a trailing XXH3-64 of everything before it:
 *   u32 magic "CQRM"  u32 version  u64 gen  u64 unix_ns  u64 bytes_new
 *   u32 ntables  u32 0
 *   per table: u32 name length, name, u32 kind, u32 dim, u64 known_ids,
 *              u32 phases_done, u32 npages
 *     per page: u32 type, u32 index, u32 nref, u32 0
 *       per ref: u64 gen, u64 len, u64 hash, u32 delta, u32 0
 *   u64 checksum
 * Decoding checks every count against the bytes left before allocating,
 * so a damaged manifest is an error, never a huge allocation.
 *
 * Threading: no shared state; a manifest or key set is used by one
 * thread at a time (in the store, under its mutex).
 *
 * Ownership: a cqr_manifest_t owns its tables, and each table its name,
 * pages and refs (all malloc'd); cqr_manifest_free / cqr_mtable_free
 * release them and leave the struct zeroed, so freeing twice is safe. The
 * encoder's buffer is malloc'd for the caller. A key set owns copies of
 * its keys (cqr_keyset_free).
 *
 * Errors: the key functions cannot fail (the caller provides
 * CQR_STORE_KEY_MAX bytes; a table name is 1..CQR_STORE_NAME_MAX bytes,
 * asserted). cqr_manifest_encode: 0 or CQR_ENOMEM. cqr_manifest_decode:
 * CQR_ECORRUPT (short, checksum, magic, header or structure), CQR_EVERSION
 * (an unknown manifest version), CQR_ENOMEM. A key set remembers a failed
 * allocation in its `oom` flag instead of returning it.
 */
#ifndef CQR_MANIFEST_H
#define CQR_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#define CQR_STORE_NAME_MAX 255u /* bytes of a table name */
#define CQR_STORE_KEY_MAX (1 + CQR_STORE_NAME_MAX + 1 + 16)

/* One stored segment version of a page. */
typedef struct cqr_mref {
    uint64_t gen;  /* generation that wrote it (part of its key) */
    uint64_t len;  /* its bytes */
    uint64_t hash; /* its checksum (persist.h header) */
    uint32_t delta; /* 1: a delta over the refs before it */
} cqr_mref_t;

/* A page and the segment versions that rebuild it: a base, then deltas. */
typedef struct cqr_mpage {
    uint32_t type, index; /* persist.h page id */
    uint32_t nref;
    cqr_mref_t *refs;
} cqr_mpage_t;

/* One table of a generation. */
typedef struct cqr_mtable {
    char *name;
    uint32_t kind, dim;   /* for listings */
    uint64_t known_ids;
    uint32_t phases_done;
    uint32_t npages;      /* sorted by (type, index) */
    cqr_mpage_t *pages;
} cqr_mtable_t;

/* A generation's manifest. */
typedef struct cqr_manifest {
    uint64_t gen;
    uint64_t unix_ns;
    uint64_t bytes_new;  /* segment bytes its checkpoint wrote */
    uint32_t ntables;
    cqr_mtable_t *tables;
} cqr_manifest_t;

/* Key of generation gen's manifest ("M" gen BE64): 9 bytes at k. */
size_t cqr_key_manifest(uint8_t *k, uint64_t gen);
/* Key of a segment ("S" gen BE64 name "\0" type BE32 index BE32) at k
 * (CQR_STORE_KEY_MAX bytes); returns its length. The generation comes
 * first so that all segments a generation wrote form one key range. */
size_t cqr_key_segment(uint8_t *k, const char *name, uint32_t type,
                       uint32_t index, uint64_t gen);
/* The first possible segment key of generation gen ("S" gen BE64; 9
 * bytes at k): [from(g), from(g + 1)) holds exactly g's segments. */
size_t cqr_key_segments_from(uint8_t *k, uint64_t gen);
uint64_t cqr_be64_read(const uint8_t *p);

void cqr_mtable_free(cqr_mtable_t *t);
void cqr_manifest_free(cqr_manifest_t *g);
/* The page (type, index) of t, or NULL (binary search). */
const cqr_mpage_t *cqr_mtable_find(const cqr_mtable_t *t, uint32_t type,
                                   uint32_t index);
/* Segment bytes a manifest references; *segments (if non-NULL) gets the
 * number of references. */
uint64_t cqr_manifest_bytes(const cqr_manifest_t *g, uint64_t *segments);

/* Encodes g into a malloc'd buffer. CQR_ENOMEM on failure. */
int cqr_manifest_encode(const cqr_manifest_t *g, uint8_t **out, size_t *len);
/* Decodes and verifies the manifest stored under generation gen. On
 * failure (CQR_ECORRUPT, CQR_EVERSION, CQR_ENOMEM) writes a reason to
 * why and leaves g empty. */
int cqr_manifest_decode(const uint8_t *data, size_t len, uint64_t gen,
                        cqr_manifest_t *g, char *why, size_t whylen);

/* A set of segment keys (the ones kept generations reference), for
 * garbage collection: add, sort once, then query. */
typedef struct cqr_keyset {
    uint8_t **k;   /* keys, each prefixed by its 2-byte length */
    size_t n, cap;
    int oom;       /* an add failed: the set is incomplete */
} cqr_keyset_t;

void cqr_keyset_add_table(cqr_keyset_t *ks, const cqr_mtable_t *t);
void cqr_keyset_sort(cqr_keyset_t *ks);
int cqr_keyset_has(const cqr_keyset_t *ks, const uint8_t *k, size_t kl);
/* Key i (in sorted order after cqr_keyset_sort): *k and its length. */
size_t cqr_keyset_key(const cqr_keyset_t *ks, size_t i, const uint8_t **k);
void cqr_keyset_free(cqr_keyset_t *ks);

#endif
