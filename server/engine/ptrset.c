/* ptrset.c -- a cqr table's static set: building, reading (ptrset.h). */
#include "ptrset.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "bigmem.h"
#include "err.h"

/* Records read or written per key file access. */
#define KF_BLOCK 16384u

uint32_t cqr_ptr_bits(uint32_t k)
{
    return k <= 1 ? 0 : 32 - (uint32_t)__builtin_clz(k - 1);
}

uint32_t cqr_ptrset_fbits(uint32_t c, uint32_t pbits)
{
    uint64_t used = (uint64_t)c * pbits;
    if (used + 16 <= 68)
        return 16;
    if (used + 4 >= 68)
        return 4;
    return (uint32_t)(68 - used);
}

static int marks_alloc(cqr_ptrset_t *ps)
{
    uint64_t n = ps->pm.n;
    ps->nmpage = (n >> CQR_MARK_PAGE_SHIFT) + 1;
    ps->marks = cqr_big_calloc(n / 64 + 1, sizeof(uint64_t));
    ps->mpage = calloc(ps->nmpage, sizeof(uint32_t));
    return ps->marks && ps->mpage ? 0 : CQR_ENOMEM;
}

int cqr_ptrset_init_empty(cqr_ptrset_t *ps, uint32_t c, uint32_t pbits,
                          int with_marks)
{
    memset(ps, 0, sizeof *ps);
    ps->c = c;
    ps->pbits = pbits;
    int rc = cqr_packmap_init_empty(&ps->pm,
                                    cqr_ptrset_fbits(c, pbits) + c * pbits,
                                    cqr_ptrset_fbits(c, pbits));
    if (rc == 0 && with_marks)
        rc = marks_alloc(ps);
    if (rc == 0)
        rc = cqr_keyfile_create(0, &ps->kf);
    if (rc)
        cqr_ptrset_free(ps);
    return rc;
}

void cqr_ptrset_free(cqr_ptrset_t *ps)
{
    if (!ps)
        return;
    cqr_big_free(ps->marks, ps->pm.n / 64 + 1, sizeof(uint64_t));
    free(ps->mpage);
    cqr_packmap_free(&ps->pm);
    cqr_keyfile_unref(ps->kf);
    memset(ps, 0, sizeof *ps);
}

uint64_t cqr_ptrset_bytes(const cqr_ptrset_t *ps)
{
    uint64_t b = cqr_packmap_bytes(&ps->pm);
    if (ps->marks)
        b += (ps->pm.n / 64 + 1) * 8 + ps->nmpage * 4;
    return b;
}

/* ---- Building ------------------------------------------------------------ */

struct cqr_ptrset_builder {
    cqr_pm_builder_t *pb;  /* the packmap's builder */
    uint32_t c, pbits;     /* the set's shape */
    uint32_t pay;          /* payload bytes of a record (pointers) */
    int with_marks;        /* allocate push marks */
    uint8_t *rec;          /* one record being assembled */
};

int cqr_ptrset_builder_create(uint64_t n, uint32_t c, uint32_t pbits,
                              int with_marks, uint64_t seed,
                              cqr_ptrset_builder_t **out)
{
    cqr_ptrset_builder_t *b = calloc(1, sizeof *b);
    if (!b)
        return CQR_ENOMEM;
    b->c = c;
    b->pbits = pbits;
    b->with_marks = with_marks;
    b->pay = (uint32_t)(((uint64_t)c * pbits + 7) / 8);
    b->rec = calloc(1, b->pay + 12);
    const uint32_t fbits = cqr_ptrset_fbits(c, pbits);
    int rc = b->rec ? cqr_pm_builder_create(n, fbits + c * pbits, fbits,
                                            b->pay + 4, seed, &b->pb)
                    : CQR_ENOMEM;
    if (rc) {
        free(b->rec);
        free(b);
        return rc;
    }
    *out = b;
    return 0;
}

void cqr_ptrset_builder_destroy(cqr_ptrset_builder_t *b)
{
    if (!b)
        return;
    cqr_pm_builder_destroy(b->pb);
    free(b->rec);
    free(b);
}

int cqr_ptrset_builder_add(cqr_ptrset_builder_t *b, uint64_t id,
                           const uint32_t *ptrs, uint32_t last_epoch)
{
    /* Pointers packed LSB first; rec has 8 bytes of slack for the
     * word-wide ORs. */
    memset(b->rec, 0, b->pay + 8);
    const uint32_t mask = b->pbits ? (uint32_t)((1ULL << b->pbits) - 1) : 0;
    for (uint32_t i = 0; i < b->c; i++) {
        uint64_t bit = (uint64_t)i * b->pbits, w;
        memcpy(&w, b->rec + (bit >> 3), 8);
        w |= (uint64_t)(ptrs[i] & mask) << (bit & 7);
        memcpy(b->rec + (bit >> 3), &w, 8);
    }
    memcpy(b->rec + b->pay, &last_epoch, 4);
    return cqr_pm_builder_add(b->pb, id, b->rec);
}

/* Writes the key file from the builder's records, in slot order. */
static int write_keys(const cqr_ptrset_builder_t *b, cqr_keyfile_t *kf,
                      uint64_t n)
{
    uint8_t *buf = malloc((size_t)KF_BLOCK * CQR_KF_REC);
    if (!buf)
        return CQR_ENOMEM;
    int rc = 0;
    for (uint64_t s0 = 0; s0 < n && rc == 0; s0 += KF_BLOCK) {
        uint64_t cnt = n - s0 < KF_BLOCK ? n - s0 : KF_BLOCK;
        for (uint64_t j = 0; j < cnt; j++) {
            uint64_t id;
            const uint8_t *r = cqr_pm_builder_record(b->pb, s0 + j, &id);
            uint32_t e;
            memcpy(&e, r + b->pay, 4);
            cqr_kf_put(buf + j * CQR_KF_REC, id, e);
        }
        rc = cqr_keyfile_write(kf, s0, buf, cnt);
    }
    free(buf);
    return rc;
}

int cqr_ptrset_builder_finish(cqr_ptrset_builder_t *b, unsigned threads,
                              cqr_ptrset_t *out)
{
    memset(out, 0, sizeof *out);
    out->c = b->c;
    out->pbits = b->pbits;
    int rc = cqr_pm_builder_build(b->pb, threads, &out->pm);
    if (rc == 0)
        rc = cqr_keyfile_create(out->pm.n, &out->kf);
    if (rc == 0)
        rc = write_keys(b, out->kf, out->pm.n);
    if (rc == 0 && b->with_marks)
        rc = marks_alloc(out);
    cqr_ptrset_builder_destroy(b);
    if (rc)
        cqr_ptrset_free(out);
    return rc;
}

/* ---- Reading ------------------------------------------------------------- */

int cqr_ptrset_reader_init(cqr_ptrset_reader_t *r, const cqr_ptrset_t *ps)
{
    memset(r, 0, sizeof *r);
    r->ps = ps;
    r->buf = malloc((size_t)KF_BLOCK * CQR_KF_REC);
    return r->buf ? 0 : CQR_ENOMEM;
}

void cqr_ptrset_reader_free(cqr_ptrset_reader_t *r)
{
    free(r->buf);
    r->buf = NULL;
}

int cqr_ptrset_reader_next(cqr_ptrset_reader_t *r, cqr_ptrset_item_t *it,
                           uint32_t *ptrs)
{
    const cqr_ptrset_t *ps = r->ps;
    const cqr_packmap_t *pm = &ps->pm;
    if (r->err || r->next >= pm->n)
        return 0;
    if (r->next >= r->buf0 + r->nbuf) {
        r->buf0 = r->next;
        r->nbuf = pm->n - r->next < KF_BLOCK ? pm->n - r->next : KF_BLOCK;
        r->err = cqr_keyfile_read(ps->kf, r->buf0, r->buf, r->nbuf);
        if (r->err)
            return 0;
    }
    while (r->next >= pm->parts[r->q].slot0 + pm->parts[r->q].n)
        r->q++;
    const cqr_pm_part_t *q = &pm->parts[r->q];
    const uint8_t *rec = r->buf + (r->next - r->buf0) * CQR_KF_REC;
    it->id = cqr_kf_id(rec);
    it->last_epoch = cqr_kf_epoch(rec);
    it->slot = r->next;
    uint64_t vbit = q->vbit0 + (r->next - q->slot0) * pm->vbits;
    for (uint32_t i = 0; i < ps->c; i++)
        ptrs[i] = cqr_ptrset_ptr(ps, vbit, i);
    r->next++;
    return 1;
}
