/* fuzz_frame.c -- libFuzzer target for the frame reader (server/net/frame.c).
 *
 * The input (after two control bytes, fuzz_common.h) is what a connection
 * receives. It is fed to a cqr_frame_reader in reads of pseudo-random
 * sizes, exactly as the connection layer does (reader_space, copy,
 * commit, then cqr_frame_next until it has nothing), and every frame the
 * reader hands out is compared with a plain reference parse of the whole
 * stream: same bodies in the same order, the oversize frame reported at
 * the same place with the declared length, and at the end the same number
 * of unparsed bytes. The reader's buffer must never exceed one maximal
 * frame plus one read. The frames are then written again with the writer
 * (cqr_frame_begin/end) and must reproduce the input's bytes. When byte 1
 * is odd the reader has an align hint (a payload at the body offset that
 * the body's first byte names), so that partial frames are also placed a
 * few bytes off the front.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "net/frame.h"
#include "fuzz_common.h"

/* Small reads make the reader move partial frames around a lot. */
#define MIN_READ 16

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

/* An align hint read from the body itself: its first byte is the
 * payload's offset (values over the body's length are ignored by the
 * reader). */
static size_t fuzz_hint(const uint8_t *body, size_t avail)
{
    return avail > 0 ? (size_t)body[0] : SIZE_MAX;
}

/* xorshift32: the sizes of the reads. */
static uint32_t next_rand(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Appends one frame with body[0..len) to again (the frames written
 * back). */
static void write_back(cqr_buf_t *again, const uint8_t *body, size_t len)
{
    size_t mark;
    if (cqr_frame_begin(again, &mark) != 0 ||
        cqr_buf_reserve(again, len) != 0)
        abort();
    if (len > 0)
        memcpy(again->data + again->len, body, len);
    again->len += len;
    cqr_frame_end(again, mark);
}

/* The reference agrees with the reader on where the stream stopped. */
static void check_stop(const cqr_frame_reader_t *r, const uint8_t *data,
                       size_t size, size_t ref_pos, int ref_oversize,
                       size_t ref_declared, size_t max_body)
{
    if (!ref_oversize) {
        size_t left = size - ref_pos;
        if (left >= CQR_FRAME_HEADER) {
            size_t want = cqr_frame_get_len(data + ref_pos);
            /* An oversize header is reported as soon as it is complete. */
            assert(want <= max_body);
            assert(left - CQR_FRAME_HEADER < want);
        }
        assert(cqr_frame_reader_pending(r) == left);
    } else {
        assert(ref_declared > max_body);
        assert(cqr_frame_reader_pending(r) >= CQR_FRAME_HEADER);
    }
    (void)ref_declared;
    (void)max_body;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const size_t max_body = 16u * ((size_t)data[0] + 1u);
    uint32_t rng = 0x9e3779b9u ^ ((uint32_t)data[1] * 0x01000193u);
    const int hinted = data[1] & 1;
    if (rng == 0)
        rng = 1;
    data += 2;
    size -= 2;

    /* The reference: frames of the whole stream, parsed in one go. */
    size_t ref_pos = 0;     /* start of the next frame */
    int ref_oversize = 0;   /* the stream stops at an oversize frame */
    size_t ref_declared = 0;

    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, max_body, MIN_READ);
    if (hinted)
        r.align = fuzz_hint;
    cqr_buf_t again;        /* the frames written back */
    cqr_buf_init(&again);

    size_t fed = 0;
    int stopped = 0;
    while (!stopped) {
        /* Drain every complete frame. */
        for (;;) {
            const uint8_t *body;
            size_t len;
            int rc = cqr_frame_next(&r, &body, &len);
            if (rc == 0)
                break;
            /* Where the reference says the next frame is. */
            size_t left = size - ref_pos;
            assert(left >= CQR_FRAME_HEADER);
            size_t want = cqr_frame_get_len(data + ref_pos);
            if (rc == CQR_ELIMIT) {
                assert(want > max_body);
                assert(len == want);
                ref_oversize = 1;
                ref_declared = want;
                stopped = 1;
                break;
            }
            assert(rc == 1);
            assert(want <= max_body);
            assert(len == want);
            assert(left - CQR_FRAME_HEADER >= want);
            assert(len == 0 ||
                   memcmp(body, data + ref_pos + CQR_FRAME_HEADER, len) == 0);
            ref_pos += CQR_FRAME_HEADER + len;

            write_back(&again, body, len);
        }
        if (stopped || fed == size)
            break;
        /* One read of 1..256 bytes, never more than offered. */
        uint8_t *p;
        size_t room;
        if (cqr_frame_reader_space(&r, &p, &room) != 0)
            abort(); /* bounded sizes: cannot run out of memory */
        assert(room > 0);
        /* Placing a frame for its payload adds at most 3 bytes. */
        assert(r.cap <= max_body + CQR_FRAME_HEADER + MIN_READ + 3 ||
               r.cap <= 4 * MIN_READ);
        size_t n = 1 + next_rand(&rng) % 256;
        if (n > room)
            n = room;
        if (n > size - fed)
            n = size - fed;
        memcpy(p, data + fed, n);
        cqr_frame_reader_commit(&r, n);
        fed += n;
    }

    check_stop(&r, data, size, ref_pos, ref_oversize, ref_declared,
               max_body);
    /* Written back, the frames are the stream up to where it stopped. */
    assert(again.len == ref_pos);
    assert(ref_pos == 0 || memcmp(again.data, data, ref_pos) == 0);

    cqr_buf_free(&again);
    cqr_frame_reader_free(&r);
    return 0;
}
