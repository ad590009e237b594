/* frame.h -- length-prefixed frames: a growable buffer, the writer side
 * and an incremental reader.
 *
 * A frame is a 4-byte big-endian body length followed by the body (one
 * encoded protobuf message). The reader never trusts the declared length:
 * a length over the limit is reported before a single byte is allocated
 * for it, and a frame split over any number of reads is reassembled in
 * one per-connection buffer that is reused between reads (grown only to
 * hold one maximal frame, shrunk back when it empties).
 *
 * Errors: 0 or a negative CQR_E* code (err.h). CQR_ENOMEM leaves the
 * buffer as it was.
 *
 * Threading: none; a buffer or reader belongs to one thread at a time
 * (the connection's loop thread).
 */
#ifndef CQR_FRAME_H
#define CQR_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define CQR_FRAME_HEADER 4u

/* A growable byte buffer. Owns its allocation until cqr_buf_free or
 * until the caller takes it over with cqr_buf_detach. data may sit a few
 * bytes into the allocation (skew, see cqr_buf_align), so the allocation
 * is freed through these functions, never with free(data). */
typedef struct cqr_buf {
    uint8_t *data; /* bytes [0, len) are valid; NULL when cap == 0 */
    size_t len;    /* bytes in use */
    size_t cap;    /* bytes usable from data on */
    size_t skew;   /* data is the allocation + skew (< CQR_BUF_ALIGN_MAX) */
} cqr_buf_t;

/* Largest alignment cqr_buf_align provides: what malloc guarantees. */
#define CQR_BUF_ALIGN_MAX 8u

void cqr_buf_init(cqr_buf_t *b);
void cqr_buf_free(cqr_buf_t *b);

/* Makes room for `extra` more bytes after len (growing geometrically).
 * CQR_ENOMEM if it cannot, or if len + extra overflows. Keeps the skew,
 * so the address of data + i stays the same modulo CQR_BUF_ALIGN_MAX. */
int cqr_buf_reserve(cqr_buf_t *b, size_t extra);

/* Moves bytes [0, len) within the allocation so that data + at is a
 * multiple of align (a power of two <= CQR_BUF_ALIGN_MAX), for a payload
 * that is written there in place (a lookup's floats). Costs a memmove of
 * len bytes when it moves anything; offsets into the buffer stay valid,
 * pointers do not. cap shrinks by at most align - 1: reserve that much
 * more first. Never fails. */
void cqr_buf_align(cqr_buf_t *b, size_t at, size_t align);

/* Hands the allocation over to the caller and resets b: returns the
 * pointer to free() (data was returned skew bytes after it). */
void *cqr_buf_detach(cqr_buf_t *b);

/* Writer side: cqr_frame_begin appends a placeholder header and returns
 * (in *mark) where it starts; append the body; cqr_frame_end writes the
 * body length into the header. Asserts the body fits in 32 bits (callers
 * bound replies by max-frame-bytes first). */
int cqr_frame_begin(cqr_buf_t *b, size_t *mark);
void cqr_frame_end(cqr_buf_t *b, size_t mark);

/* Reads the big-endian length at p[0..4). */
uint32_t cqr_frame_get_len(const uint8_t *p);
void cqr_frame_put_len(uint8_t *p, uint32_t len);

/* Alignment hint: given the first `avail` bytes of the body of a frame
 * that has not fully arrived, the offset within the body of a payload its
 * consumer reads as 4-byte words (a Push's gradients), or SIZE_MAX for
 * none or not known yet. Must not read past avail. */
typedef size_t (*cqr_frame_align_cb)(const uint8_t *body, size_t avail);

/* Incremental reader. Bytes [pos, len) of data are received but not yet
 * handed out as frames. */
typedef struct cqr_frame_reader {
    uint8_t *data;   /* read buffer, reused between reads */
    size_t len;      /* bytes received into data */
    size_t pos;      /* cursor: first byte of the next frame */
    size_t cap;      /* bytes allocated */
    size_t max_body; /* largest body accepted (--max-frame-bytes) */
    size_t min_read; /* room offered per read when no frame is pending;
                        also the size the buffer shrinks back to */
    cqr_frame_align_cb align; /* NULL, or where a partial frame's payload
                                 is: the reader then places the frame so
                                 that the payload lands 4-byte aligned,
                                 when it moves the frame anyway or the
                                 bytes to move are at most half the frame
                                 (never a complete frame), so that the
                                 consumer can use it in place */
} cqr_frame_reader_t;

/* Sets up an empty reader (allocates nothing yet; no align hint). min_read
 * must be >= CQR_FRAME_HEADER. */
void cqr_frame_reader_init(cqr_frame_reader_t *r, size_t max_body,
                           size_t min_read);
void cqr_frame_reader_free(cqr_frame_reader_t *r);

/* Room for the next read (for a libuv alloc callback): moves unparsed
 * bytes to the front (or up to 3 bytes past it, see align), grows the
 * buffer so the pending frame fits whole (never beyond max_body + header
 * + 3, and never for a declared length over the limit), and returns the
 * free tail in *p, *n. Invalidates body pointers returned by
 * cqr_frame_next. CQR_ENOMEM if it cannot grow. */
int cqr_frame_reader_space(cqr_frame_reader_t *r, uint8_t **p, size_t *n);

/* Records that n bytes were written at the pointer the last
 * cqr_frame_reader_space returned (n <= the size it returned). */
void cqr_frame_reader_commit(cqr_frame_reader_t *r, size_t n);

/* Hands out the next complete frame:
 *   1          *body and *len describe it (a zero-length body is valid);
 *              the bytes stay valid until the next reader_space call.
 *   0          no complete frame yet (more bytes needed).
 *   CQR_ELIMIT the next frame declares a length over max_body; *len is
 *              the declared length. The reader is stuck at that frame:
 *              the caller must reject it and drop the connection. */
int cqr_frame_next(cqr_frame_reader_t *r, const uint8_t **body, size_t *len);

/* Bytes received but not yet handed out as frames. */
size_t cqr_frame_reader_pending(const cqr_frame_reader_t *r);

#endif
