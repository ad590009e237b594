/* Frame reader and writer: frames split across reads at every byte
 * boundary, many frames in one read, zero-length bodies, lengths over the
 * limit rejected before any allocation, buffer reuse and shrinking, the
 * align hint that places a partial frame for its payload, and
 * cqr_buf_align. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "net/frame.h"
#include "check_main.h"

/* Builds a stream of frames with bodies of the given lengths; body byte j
 * of frame i is (i * 31 + j) & 0xff. */
static cqr_buf_t make_stream(const size_t *lens, size_t n)
{
    cqr_buf_t b;
    cqr_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        size_t mark;
        ck_assert_int_eq(cqr_frame_begin(&b, &mark), 0);
        ck_assert_int_eq(cqr_buf_reserve(&b, lens[i]), 0);
        for (size_t j = 0; j < lens[i]; j++)
            b.data[b.len + j] = (uint8_t)((i * 31 + j) & 0xff);
        b.len += lens[i];
        cqr_frame_end(&b, mark);
    }
    return b;
}

/* Feeds bytes [from, to) of src into r through reader_space/commit in
 * pieces no larger than what space offers. */
static void feed(cqr_frame_reader_t *r, const uint8_t *src, size_t from,
                 size_t to)
{
    while (from < to) {
        uint8_t *p;
        size_t n;
        ck_assert_int_eq(cqr_frame_reader_space(r, &p, &n), 0);
        ck_assert_uint_gt(n, 0);
        size_t k = to - from < n ? to - from : n;
        memcpy(p, src + from, k);
        cqr_frame_reader_commit(r, k);
        from += k;
    }
}

/* Takes every complete frame out of r and checks it against the pattern,
 * starting at frame *next. */
static void drain(cqr_frame_reader_t *r, const size_t *lens, size_t *next)
{
    const uint8_t *body;
    size_t len;
    int rc;
    while ((rc = cqr_frame_next(r, &body, &len)) == 1) {
        size_t i = (*next)++;
        ck_assert_uint_eq(len, lens[i]);
        for (size_t j = 0; j < len; j++)
            ck_assert_uint_eq(body[j], (uint8_t)((i * 31 + j) & 0xff));
    }
    ck_assert_int_eq(rc, 0);
}

START_TEST(test_be_length)
{
    uint8_t h[4];
    cqr_frame_put_len(h, 0x01020304u);
    ck_assert_uint_eq(h[0], 1);
    ck_assert_uint_eq(h[3], 4);
    ck_assert_uint_eq(cqr_frame_get_len(h), 0x01020304u);
    cqr_frame_put_len(h, 0xffffffffu);
    ck_assert_uint_eq(cqr_frame_get_len(h), 0xffffffffu);
}
END_TEST

START_TEST(test_split_every_boundary)
{
    /* Two frames, split into two reads at every possible position, and
     * also fed one byte at a time. */
    const size_t lens[] = {37, 5, 0, 300};
    const size_t n = sizeof lens / sizeof lens[0];
    cqr_buf_t s = make_stream(lens, n);
    for (size_t cut = 0; cut <= s.len; cut++) {
        cqr_frame_reader_t r;
        cqr_frame_reader_init(&r, 1024, 16);
        size_t next = 0;
        feed(&r, s.data, 0, cut);
        drain(&r, lens, &next);
        feed(&r, s.data, cut, s.len);
        drain(&r, lens, &next);
        ck_assert_uint_eq(next, n);
        ck_assert_uint_eq(cqr_frame_reader_pending(&r), 0);
        cqr_frame_reader_free(&r);
    }
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1024, 16);
    size_t next = 0;
    for (size_t i = 0; i < s.len; i++) {
        feed(&r, s.data, i, i + 1);
        drain(&r, lens, &next);
    }
    ck_assert_uint_eq(next, n);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_many_frames_one_read)
{
    size_t lens[200];
    for (size_t i = 0; i < 200; i++)
        lens[i] = i % 17;
    cqr_buf_t s = make_stream(lens, 200);
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1024, 64 * 1024);
    uint8_t *p;
    size_t cap;
    ck_assert_int_eq(cqr_frame_reader_space(&r, &p, &cap), 0);
    ck_assert_uint_ge(cap, s.len);
    memcpy(p, s.data, s.len);
    cqr_frame_reader_commit(&r, s.len);
    size_t next = 0;
    drain(&r, lens, &next);
    ck_assert_uint_eq(next, 200);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_zero_length)
{
    const size_t lens[] = {0, 0, 0};
    cqr_buf_t s = make_stream(lens, 3);
    ck_assert_uint_eq(s.len, 12);
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 0, 16); /* even a limit of 0 takes them */
    feed(&r, s.data, 0, s.len);
    size_t next = 0;
    drain(&r, lens, &next);
    ck_assert_uint_eq(next, 3);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_oversize_before_allocation)
{
    /* A header declaring 4 GiB - 1 against a 1 KiB limit: reported at
     * once, and the buffer never grows past its normal read size. */
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1024, 64);
    uint8_t hdr[4];
    cqr_frame_put_len(hdr, 0xffffffffu);
    feed(&r, hdr, 0, 4);
    const uint8_t *body;
    size_t len = 0;
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), CQR_ELIMIT);
    ck_assert_uint_eq(len, 0xffffffffu);
    uint8_t *p;
    size_t n;
    ck_assert_int_eq(cqr_frame_reader_space(&r, &p, &n), 0);
    ck_assert_uint_le(r.cap, 64 + 4);
    /* Still stuck on the same frame. */
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), CQR_ELIMIT);
    cqr_frame_reader_free(&r);

    /* Exactly at the limit is accepted, one over is not. */
    cqr_frame_reader_init(&r, 1024, 64);
    cqr_frame_put_len(hdr, 1025);
    feed(&r, hdr, 0, 4);
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), CQR_ELIMIT);
    ck_assert_uint_eq(len, 1025);
    cqr_frame_reader_free(&r);

    const size_t lens[] = {1024};
    cqr_buf_t s = make_stream(lens, 1);
    cqr_frame_reader_init(&r, 1024, 64);
    feed(&r, s.data, 0, s.len);
    size_t next = 0;
    drain(&r, lens, &next);
    ck_assert_uint_eq(next, 1);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_oversize_after_good_frames)
{
    /* Good frames before a bad header are all delivered first. */
    const size_t lens[] = {10, 20};
    cqr_buf_t s = make_stream(lens, 2);
    uint8_t hdr[4];
    cqr_frame_put_len(hdr, 5000);
    ck_assert_int_eq(cqr_buf_reserve(&s, 4), 0);
    memcpy(s.data + s.len, hdr, 4);
    s.len += 4;
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 100, 64);
    feed(&r, s.data, 0, s.len);
    const uint8_t *body;
    size_t len;
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), 1);
    ck_assert_uint_eq(len, 10);
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), 1);
    ck_assert_uint_eq(len, 20);
    ck_assert_int_eq(cqr_frame_next(&r, &body, &len), CQR_ELIMIT);
    ck_assert_uint_eq(len, 5000);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_grow_once_and_shrink)
{
    /* A frame larger than the read size makes space() offer room for the
     * whole rest of the frame, and the buffer shrinks back once empty. */
    const size_t lens[] = {100000, 3};
    cqr_buf_t s = make_stream(lens, 2);
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1 << 20, 1024);
    feed(&r, s.data, 0, 10); /* header and a few bytes */
    uint8_t *p;
    size_t n;
    ck_assert_int_eq(cqr_frame_reader_space(&r, &p, &n), 0);
    ck_assert_uint_ge(n, 4 + 100000 - 10);
    ck_assert_uint_le(r.cap, 4 + 100000 + 1024);
    size_t next = 0;
    feed(&r, s.data, 10, 4 + 100000);
    drain(&r, lens, &next);
    ck_assert_uint_eq(next, 1);
    ck_assert_int_eq(cqr_frame_reader_space(&r, &p, &n), 0);
    ck_assert_uint_le(r.cap, 4 * 1024);
    feed(&r, s.data, 4 + 100000, s.len);
    drain(&r, lens, &next);
    ck_assert_uint_eq(next, 2);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_buffer_reused)
{
    /* Steady small frames: the read buffer is never reallocated. */
    const size_t lens[] = {50};
    cqr_buf_t s = make_stream(lens, 1);
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1024, 4096);
    feed(&r, s.data, 0, 1);
    uint8_t *first = r.data;
    for (int k = 0; k < 1000; k++) {
        size_t next = 0;
        feed(&r, s.data, k == 0 ? 1 : 0, s.len);
        drain(&r, lens, &next);
        ck_assert_uint_eq(next, 1);
        ck_assert_ptr_eq(r.data, first);
    }
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

/* An align hint: the payload of frame i starts at body offset 5 + i % 7
 * (body byte 0 is (i * 31) & 0xff, so i % 7 can be read back from it for
 * the frames used here). */
static size_t hint_calls;

static size_t test_hint(const uint8_t *body, size_t avail)
{
    hint_calls++;
    if (avail < 1)
        return SIZE_MAX;
    size_t i = (size_t)body[0] / 31; /* frames 0..8: (i * 31) & 0xff */
    return 5 + i % 7;
}

START_TEST(test_align_hint)
{
    /* Large frames fed in reads of at most 1000 bytes, some sharing a
     * read with the end of the frame before: every one of them ends up
     * with its payload 4-byte aligned, and every byte is intact. */
    const size_t lens[] = {5000, 4001, 7777, 4002, 12345, 4003, 4444, 9000,
                           4096};
    const size_t n = sizeof lens / sizeof lens[0];
    cqr_buf_t s = make_stream(lens, n);
    for (size_t chunk = 997; chunk <= 1000; chunk++) {
        cqr_frame_reader_t r;
        cqr_frame_reader_init(&r, 1 << 20, 64);
        r.align = test_hint;
        hint_calls = 0;
        size_t next = 0;
        for (size_t at = 0; at < s.len; at += chunk) {
            size_t to = at + chunk < s.len ? at + chunk : s.len;
            feed(&r, s.data, at, to);
            const uint8_t *body;
            size_t len;
            while (cqr_frame_next(&r, &body, &len) == 1) {
                size_t i = next++;
                ck_assert_uint_eq(len, lens[i]);
                for (size_t j = 0; j < len; j++)
                    if (body[j] != (uint8_t)((i * 31 + j) & 0xff))
                        ck_abort_msg("frame %zu byte %zu", i, j);
                if (((uintptr_t)(body + 5 + i % 7) & 3) != 0)
                    ck_abort_msg("chunk %zu frame %zu: payload at %p", chunk, i, (void *)(body + 5 + i % 7));
            }
        }
        ck_assert_uint_eq(next, n);
        ck_assert_uint_gt(hint_calls, 0);
        cqr_frame_reader_free(&r);
    }
    /* A frame that arrives whole is never moved for its payload. */
    cqr_frame_reader_t r;
    cqr_frame_reader_init(&r, 1 << 20, 1 << 16);
    r.align = test_hint;
    hint_calls = 0;
    feed(&r, s.data, 0, 4 + lens[0]);
    ck_assert_uint_eq(hint_calls, 0);
    ck_assert_uint_eq(r.pos, 0);
    cqr_frame_reader_free(&r);
    cqr_buf_free(&s);
}
END_TEST

START_TEST(test_buf_align)
{
    /* cqr_buf_align moves the bytes so that an offset is aligned, keeps
     * them, and the buffer still grows and frees normally. */
    cqr_buf_t b;
    cqr_buf_init(&b);
    for (size_t at = 0; at < 40; at++) {
        ck_assert_int_eq(cqr_buf_reserve(&b, 11 + 3), 0);
        for (size_t i = 0; i < 11; i++)
            b.data[b.len + i] = (uint8_t)(b.len + i);
        b.len += 11;
        cqr_buf_align(&b, at, 4);
        ck_assert_uint_eq((uintptr_t)(b.data + at) & 3, 0);
        ck_assert_uint_ge(b.cap, b.len);
        for (size_t i = 0; i < b.len; i++)
            if (b.data[i] != (uint8_t)i)
                ck_abort_msg("byte %zu moved wrong", i);
    }
    void *mem = cqr_buf_detach(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.len, 0);
    free(mem);
}
END_TEST

START_TEST(test_writer_nested)
{
    cqr_buf_t b;
    cqr_buf_init(&b);
    size_t m1, m2;
    ck_assert_int_eq(cqr_frame_begin(&b, &m1), 0);
    ck_assert_int_eq(cqr_buf_reserve(&b, 3), 0);
    memcpy(b.data + b.len, "abc", 3);
    b.len += 3;
    cqr_frame_end(&b, m1);
    ck_assert_int_eq(cqr_frame_begin(&b, &m2), 0);
    cqr_frame_end(&b, m2);
    ck_assert_uint_eq(b.len, 4 + 3 + 4);
    ck_assert_uint_eq(cqr_frame_get_len(b.data), 3);
    ck_assert_uint_eq(cqr_frame_get_len(b.data + 7), 0);
    cqr_buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_int_eq(cqr_buf_reserve(&b, SIZE_MAX), CQR_ENOMEM);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("frame");
    TCase *tc = tcase_create("frame");
    tcase_add_test(tc, test_be_length);
    tcase_add_test(tc, test_split_every_boundary);
    tcase_add_test(tc, test_many_frames_one_read);
    tcase_add_test(tc, test_zero_length);
    tcase_add_test(tc, test_oversize_before_allocation);
    tcase_add_test(tc, test_oversize_after_good_frames);
    tcase_add_test(tc, test_grow_once_and_shrink);
    tcase_add_test(tc, test_buffer_reused);
    tcase_add_test(tc, test_writer_nested);
    tcase_add_test(tc, test_align_hint);
    tcase_add_test(tc, test_buf_align);
    suite_add_tcase(s, tc);
    return s;
}
