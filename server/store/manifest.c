/* manifest.c -- the store's keys, manifests and key sets (manifest.h). */
#include "store/manifest.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "engine/err.h"

#define MAN_MAGIC 0x4d525143u /* "CQRM" */
#define MAN_VERSION 1u

static void be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

uint64_t cqr_be64_read(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

size_t cqr_key_manifest(uint8_t *k, uint64_t gen)
{
    k[0] = 'M';
    be64(k + 1, gen);
    return 9;
}

size_t cqr_key_segment(uint8_t *k, const char *name, uint32_t type,
                       uint32_t index, uint64_t gen)
{
    size_t nl = strlen(name);
    assert(nl <= CQR_STORE_NAME_MAX);
    k[0] = 'S';
    be64(k + 1, gen);
    memcpy(k + 9, name, nl);
    k[9 + nl] = 0;
    be32(k + 10 + nl, type);
    be32(k + 14 + nl, index);
    return 18 + nl;
}

size_t cqr_key_segments_from(uint8_t *k, uint64_t gen)
{
    k[0] = 'S';
    be64(k + 1, gen);
    return 9;
}

void cqr_mtable_free(cqr_mtable_t *t)
{
    for (uint32_t p = 0; p < t->npages; p++)
        free(t->pages[p].refs);
    free(t->pages);
    free(t->name);
    memset(t, 0, sizeof *t);
}

void cqr_manifest_free(cqr_manifest_t *g)
{
    for (uint32_t i = 0; i < g->ntables; i++)
        cqr_mtable_free(&g->tables[i]);
    free(g->tables);
    memset(g, 0, sizeof *g);
}

const cqr_mpage_t *cqr_mtable_find(const cqr_mtable_t *t, uint32_t type,
                                   uint32_t index)
{
    size_t lo = 0, hi = t->npages;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const cqr_mpage_t *p = &t->pages[mid];
        if (p->type < type || (p->type == type && p->index < index))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->npages && t->pages[lo].type == type &&
        t->pages[lo].index == index)
        return &t->pages[lo];
    return NULL;
}

/* ---- Manifest encoding -------------------------------------------------- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
    int oom;
} buf_t;

static void bput(buf_t *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void bput32(buf_t *b, uint32_t v) { bput(b, &v, 4); }
static void bput64(buf_t *b, uint64_t v) { bput(b, &v, 8); }

static int man_encode(const cqr_manifest_t *g, buf_t *b)
{
    bput32(b, MAN_MAGIC);
    bput32(b, MAN_VERSION);
    bput64(b, g->gen);
    bput64(b, g->unix_ns);
    bput64(b, g->bytes_new);
    bput32(b, g->ntables);
    bput32(b, 0);
    for (uint32_t i = 0; i < g->ntables; i++) {
        const cqr_mtable_t *t = &g->tables[i];
        uint32_t nl = (uint32_t)strlen(t->name);
        bput32(b, nl);
        bput(b, t->name, nl);
        bput32(b, t->kind);
        bput32(b, t->dim);
        bput64(b, t->known_ids);
        bput32(b, t->phases_done);
        bput32(b, t->npages);
        for (uint32_t p = 0; p < t->npages; p++) {
            const cqr_mpage_t *pg = &t->pages[p];
            bput32(b, pg->type);
            bput32(b, pg->index);
            bput32(b, pg->nref);
            bput32(b, 0);
            for (uint32_t r = 0; r < pg->nref; r++) {
                bput64(b, pg->refs[r].gen);
                bput64(b, pg->refs[r].len);
                bput64(b, pg->refs[r].hash);
                bput32(b, pg->refs[r].delta);
                bput32(b, 0);
            }
        }
    }
    uint64_t h = b->oom ? 0 : XXH3_64bits(b->p, b->len);
    bput64(b, h);
    return b->oom ? CQR_ENOMEM : 0;
}

int cqr_manifest_encode(const cqr_manifest_t *g, uint8_t **out, size_t *len)
{
    buf_t b = {0};
    int rc = man_encode(g, &b);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

typedef struct mrd {
    const uint8_t *p;
    size_t n;
    int bad;
} mrd_t;

static uint32_t mget32(mrd_t *r)
{
    uint32_t v = 0;
    if (r->n < 4) {
        r->bad = 1;
        return 0;
    }
    memcpy(&v, r->p, 4);
    r->p += 4;
    r->n -= 4;
    return v;
}

static uint64_t mget64(mrd_t *r)
{
    uint64_t v = 0;
    if (r->n < 8) {
        r->bad = 1;
        return 0;
    }
    memcpy(&v, r->p, 8);
    r->p += 8;
    r->n -= 8;
    return v;
}

/* One page and its refs. Returns CQR_ENOMEM, or 0 with r->bad set when
 * the bytes do not make a page (no more than the bytes left, a base then
 * deltas, none newer than the manifest, pages in ascending order). */
static int decode_page(mrd_t *r, cqr_mpage_t *pg, const cqr_mpage_t *prev,
                       uint64_t gen)
{
    pg->type = mget32(r);
    pg->index = mget32(r);
    uint32_t nr = mget32(r);
    (void)mget32(r);
    if (nr == 0 || nr > r->n / 32) {
        r->bad = 1;
        return 0;
    }
    pg->refs = calloc(nr, sizeof *pg->refs);
    if (!pg->refs)
        return CQR_ENOMEM;
    pg->nref = nr;
    for (uint32_t k = 0; k < nr; k++) {
        pg->refs[k].gen = mget64(r);
        pg->refs[k].len = mget64(r);
        pg->refs[k].hash = mget64(r);
        pg->refs[k].delta = mget32(r);
        (void)mget32(r);
        if (pg->refs[k].gen > gen || pg->refs[k].delta != (k > 0))
            r->bad = 1;
    }
    if (prev && (prev->type > pg->type ||
                 (prev->type == pg->type && prev->index >= pg->index)))
        r->bad = 1;
    return 0;
}

/* One table and its pages; CQR_ENOMEM, or 0 with r->bad set when the
 * bytes do not make a table. */
static int decode_table(mrd_t *r, cqr_mtable_t *t, uint64_t gen)
{
    uint32_t nl = mget32(r);
    if (nl == 0 || nl > CQR_STORE_NAME_MAX || nl > r->n) {
        r->bad = 1;
        return 0;
    }
    t->name = malloc(nl + 1);
    if (!t->name)
        return CQR_ENOMEM;
    memcpy(t->name, r->p, nl);
    t->name[nl] = 0;
    r->p += nl;
    r->n -= nl;
    if (memchr(t->name, 0, nl)) {
        r->bad = 1;
        return 0;
    }
    t->kind = mget32(r);
    t->dim = mget32(r);
    t->known_ids = mget64(r);
    t->phases_done = mget32(r);
    uint32_t np = mget32(r);
    if (np > r->n / 16) {
        r->bad = 1;
        return 0;
    }
    t->pages = calloc(np ? np : 1, sizeof *t->pages);
    if (!t->pages)
        return CQR_ENOMEM;
    t->npages = np;
    for (uint32_t p = 0; p < np && !r->bad; p++) {
        int rc = decode_page(r, &t->pages[p], p > 0 ? &t->pages[p - 1] : NULL,
                             gen);
        if (rc)
            return rc;
    }
    return 0;
}

/* Parses and verifies a manifest; counts are checked against the bytes
 * left before anything is allocated. */
int cqr_manifest_decode(const uint8_t *data, size_t len, uint64_t gen,
                      cqr_manifest_t *g, char *why, size_t whylen)
{
    memset(g, 0, sizeof *g);
    if (len < 48) {
        snprintf(why, whylen, "manifest of %zu bytes", len);
        return CQR_ECORRUPT;
    }
    uint64_t want;
    memcpy(&want, data + len - 8, 8);
    if (XXH3_64bits(data, len - 8) != want) {
        snprintf(why, whylen, "manifest checksum mismatch");
        return CQR_ECORRUPT;
    }
    mrd_t r = {data, len - 8, 0};
    uint32_t magic = mget32(&r), version = mget32(&r);
    if (magic != MAN_MAGIC) {
        snprintf(why, whylen, "not a manifest");
        return CQR_ECORRUPT;
    }
    if (version != MAN_VERSION) {
        snprintf(why, whylen, "manifest version %u unknown", version);
        return CQR_EVERSION;
    }
    g->gen = mget64(&r);
    g->unix_ns = mget64(&r);
    g->bytes_new = mget64(&r);
    uint32_t nt = mget32(&r);
    (void)mget32(&r);
    if (g->gen != gen || nt > r.n / 32) {
        memset(g, 0, sizeof *g);
        snprintf(why, whylen, "manifest header disagrees with its key");
        return CQR_ECORRUPT;
    }
    g->tables = calloc(nt ? nt : 1, sizeof *g->tables);
    if (!g->tables)
        return CQR_ENOMEM;
    g->ntables = nt;
    for (uint32_t i = 0; i < nt && !r.bad; i++) {
        if (decode_table(&r, &g->tables[i], gen)) {
            cqr_manifest_free(g);
            return CQR_ENOMEM;
        }
    }
    if (r.bad || r.n != 0) {
        cqr_manifest_free(g);
        snprintf(why, whylen, "manifest structure is damaged");
        return CQR_ECORRUPT;
    }
    return 0;
}

uint64_t cqr_manifest_bytes(const cqr_manifest_t *g, uint64_t *segments)
{
    uint64_t b = 0, n = 0;
    for (uint32_t i = 0; i < g->ntables; i++) {
        for (uint32_t p = 0; p < g->tables[i].npages; p++) {
            const cqr_mpage_t *pg = &g->tables[i].pages[p];
            for (uint32_t k = 0; k < pg->nref; k++) {
                b += pg->refs[k].len;
                n++;
            }
        }
    }
    if (segments)
        *segments = n;
    return b;
}

/* ---- Key sets ---------------------------------------------------------- */

static void ks_add(cqr_keyset_t *ks, const uint8_t *k, size_t kl)
{
    if (ks->oom)
        return;
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? 2 * ks->cap : 256;
        uint8_t **nk = realloc(ks->k, cap * sizeof *nk);
        if (!nk) {
            ks->oom = 1;
            return;
        }
        ks->k = nk;
        ks->cap = cap;
    }
    uint8_t *e = malloc(kl + 2);
    if (!e) {
        ks->oom = 1;
        return;
    }
    e[0] = (uint8_t)(kl >> 8);
    e[1] = (uint8_t)kl;
    memcpy(e + 2, k, kl);
    ks->k[ks->n++] = e;
}

static int ks_cmp(const void *a, const void *b)
{
    const uint8_t *x = *(const uint8_t *const *)a;
    const uint8_t *y = *(const uint8_t *const *)b;
    size_t xl = (size_t)x[0] << 8 | x[1], yl = (size_t)y[0] << 8 | y[1];
    int c = memcmp(x + 2, y + 2, xl < yl ? xl : yl);
    return c ? c : (xl > yl) - (xl < yl);
}

int cqr_keyset_has(const cqr_keyset_t *ks, const uint8_t *k, size_t kl)
{
    uint8_t probe[CQR_STORE_KEY_MAX + 2];
    if (kl > CQR_STORE_KEY_MAX)
        return 0;
    probe[0] = (uint8_t)(kl >> 8);
    probe[1] = (uint8_t)kl;
    memcpy(probe + 2, k, kl);
    const uint8_t *pp = probe;
    return bsearch(&pp, ks->k, ks->n, sizeof *ks->k, ks_cmp) != NULL;
}

void cqr_keyset_free(cqr_keyset_t *ks)
{
    for (size_t i = 0; i < ks->n; i++)
        free(ks->k[i]);
    free(ks->k);
}

void cqr_keyset_add_table(cqr_keyset_t *ks, const cqr_mtable_t *t)
{
    uint8_t k[CQR_STORE_KEY_MAX];
    for (uint32_t p = 0; p < t->npages; p++) {
        const cqr_mpage_t *pg = &t->pages[p];
        for (uint32_t r = 0; r < pg->nref; r++)
            ks_add(ks, k, cqr_key_segment(k, t->name, pg->type, pg->index,
                                  pg->refs[r].gen));
    }
}

void cqr_keyset_sort(cqr_keyset_t *ks)
{
    if (ks->n)
        qsort(ks->k, ks->n, sizeof *ks->k, ks_cmp);
}

size_t cqr_keyset_key(const cqr_keyset_t *ks, size_t i, const uint8_t **k)
{
    const uint8_t *e = ks->k[i];
    *k = e + 2;
    return (size_t)e[0] << 8 | e[1];
}
