#include "net/frame.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

void cqr_buf_init(cqr_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->skew = 0;
}

void cqr_buf_free(cqr_buf_t *b)
{
    free(cqr_buf_detach(b));
}

void *cqr_buf_detach(cqr_buf_t *b)
{
    void *mem = b->data != NULL ? b->data - b->skew : NULL;
    cqr_buf_init(b);
    return mem;
}

int cqr_buf_reserve(cqr_buf_t *b, size_t extra)
{
    /* No object may exceed PTRDIFF_MAX; refusing here also keeps a wild
     * size from reaching the allocator. */
    if (extra > (size_t)PTRDIFF_MAX - b->len)
        return CQR_ENOMEM;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > (size_t)PTRDIFF_MAX / 2 ? need : cap * 2;
    if (cap > (size_t)PTRDIFF_MAX - b->skew)
        return CQR_ENOMEM;
    uint8_t *mem = b->data != NULL ? b->data - b->skew : NULL;
    uint8_t *p = realloc(mem, b->skew + cap);
    if (p == NULL)
        return CQR_ENOMEM;
    b->data = p + b->skew;
    b->cap = cap;
    return 0;
}

void cqr_buf_align(cqr_buf_t *b, size_t at, size_t align)
{
    assert(align != 0 && (align & (align - 1)) == 0 &&
           align <= CQR_BUF_ALIGN_MAX);
    if (b->data == NULL)
        return;
    uint8_t *mem = b->data - b->skew;
    /* malloc's result is CQR_BUF_ALIGN_MAX-aligned: choose the skew. */
    assert(((uintptr_t)mem & (CQR_BUF_ALIGN_MAX - 1)) == 0);
    size_t skew = (size_t)(-(uintptr_t)at & (align - 1));
    if (skew == b->skew)
        return;
    assert(b->len <= b->cap + b->skew - skew);
    if (b->len > 0)
        memmove(mem + skew, b->data, b->len);
    b->cap = b->cap + b->skew - skew;
    b->skew = skew;
    b->data = mem + skew;
}

uint32_t cqr_frame_get_len(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

void cqr_frame_put_len(uint8_t *p, uint32_t len)
{
    p[0] = (uint8_t)(len >> 24);
    p[1] = (uint8_t)(len >> 16);
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
}

int cqr_frame_begin(cqr_buf_t *b, size_t *mark)
{
    int rc = cqr_buf_reserve(b, CQR_FRAME_HEADER);
    if (rc != 0)
        return rc;
    *mark = b->len;
    memset(b->data + b->len, 0, CQR_FRAME_HEADER);
    b->len += CQR_FRAME_HEADER;
    return 0;
}

void cqr_frame_end(cqr_buf_t *b, size_t mark)
{
    assert(mark + CQR_FRAME_HEADER <= b->len);
    size_t body = b->len - mark - CQR_FRAME_HEADER;
    assert(body <= UINT32_MAX);
    cqr_frame_put_len(b->data + mark, (uint32_t)body);
}

void cqr_frame_reader_init(cqr_frame_reader_t *r, size_t max_body,
                           size_t min_read)
{
    assert(min_read >= CQR_FRAME_HEADER);
    memset(r, 0, sizeof *r);
    r->max_body = max_body;
    r->min_read = min_read;
    r->align = NULL;
}

void cqr_frame_reader_free(cqr_frame_reader_t *r)
{
    free(r->data);
    r->data = NULL;
    r->len = r->pos = r->cap = 0;
}

size_t cqr_frame_reader_pending(const cqr_frame_reader_t *r)
{
    return r->len - r->pos;
}

/* Where the partial frame at pos should start so that the payload the
 * align hint names lands 4-byte aligned (0..3, relative to data, which
 * malloc aligns), or SIZE_MAX: no hint, no payload, a complete or
 * rejected frame. */
static size_t aligned_start(const cqr_frame_reader_t *r, size_t unparsed)
{
    if (r->align == NULL || unparsed <= CQR_FRAME_HEADER)
        return SIZE_MAX;
    size_t body = cqr_frame_get_len(r->data + r->pos);
    if (body > r->max_body || unparsed - CQR_FRAME_HEADER >= body)
        return SIZE_MAX;
    size_t off = r->align(r->data + r->pos + CQR_FRAME_HEADER,
                          unparsed - CQR_FRAME_HEADER);
    if (off > body)
        return SIZE_MAX;
    return ((size_t)0 - (CQR_FRAME_HEADER + off)) & 3u;
}

int cqr_frame_reader_space(cqr_frame_reader_t *r, uint8_t **p, size_t *n)
{
    size_t unparsed = r->len - r->pos;

    /* Where the partial frame goes. To the front, so the buffer never
     * creeps (usually few bytes: a large frame is moved at most once,
     * because after the move it stays put until it completes) -- or up to
     * 3 bytes past it when the align hint asks, which is honoured when the
     * frame moves anyway, or when it has arrived for at most half (the
     * consumer would copy the whole payload otherwise). A pos of at most
     * 3 is such a placement (a frame is at least 4 bytes, so no frame was
     * consumed before it): the frame stays there. */
    const size_t slack = 3;
    size_t to = r->pos > slack ? 0 : SIZE_MAX;
    size_t at = aligned_start(r, unparsed);
    if (at != SIZE_MAX && at != r->pos) {
        size_t frame = CQR_FRAME_HEADER +
                       (size_t)cqr_frame_get_len(r->data + r->pos);
        if (r->pos > slack || unparsed <= frame / 2)
            to = at;
    }
    size_t start = to != SIZE_MAX ? to : r->pos;

    /* An empty buffer that an earlier big frame grew goes back to its
     * normal size, so an idle connection holds min_read bytes at most. */
    if (unparsed == 0) {
        r->pos = r->len = 0;
        start = 0;
        to = SIZE_MAX;
        if (r->cap > 4 * r->min_read) {
            free(r->data);
            r->data = NULL;
            r->cap = 0;
        }
    }

    /* Capacity wanted: the whole pending frame if its header is here and
     * its length is acceptable (so it arrives in as few reads as the
     * socket allows), and never less than a normal read. Whatever is
     * free beyond the unparsed bytes is offered; the buffer is only
     * reallocated when it is too small, so steady traffic reuses it. */
    size_t want = r->min_read;
    if (unparsed >= CQR_FRAME_HEADER) {
        size_t body = cqr_frame_get_len(r->data + r->pos);
        if (body <= r->max_body && CQR_FRAME_HEADER + body > want)
            want = CQR_FRAME_HEADER + body;
    }
    size_t need = start + want;
    size_t end = start + unparsed; /* len once placed */
    if (r->cap == end && end >= need)
        need = end + r->min_read; /* full of complete frames: room */
    if (r->cap < need) {
        uint8_t *np = realloc(r->data, need);
        if (np == NULL)
            return CQR_ENOMEM;
        r->data = np;
        r->cap = need;
    }
    if (to != SIZE_MAX) {
        if (unparsed > 0)
            memmove(r->data + to, r->data + r->pos, unparsed);
        r->pos = to;
        r->len = to + unparsed;
    }
    *p = r->data + r->len;
    *n = r->cap - r->len;
    return 0;
}

void cqr_frame_reader_commit(cqr_frame_reader_t *r, size_t n)
{
    assert(n <= r->cap - r->len);
    r->len += n;
}

int cqr_frame_next(cqr_frame_reader_t *r, const uint8_t **body, size_t *len)
{
    size_t unparsed = r->len - r->pos;
    if (unparsed < CQR_FRAME_HEADER)
        return 0;
    size_t blen = cqr_frame_get_len(r->data + r->pos);
    if (blen > r->max_body) {
        *len = blen;
        return CQR_ELIMIT;
    }
    if (unparsed - CQR_FRAME_HEADER < blen)
        return 0;
    *body = r->data + r->pos + CQR_FRAME_HEADER;
    *len = blen;
    r->pos += CQR_FRAME_HEADER + blen;
    return 1;
}
