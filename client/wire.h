/* wire.h -- the hand-written part of libcqrps's codec: the hot path.
 *
 * Lookup and Push requests are encoded here, not by protobuf-c, so the IDs
 * and the gradients can go from the caller's arrays straight to writev()
 * without being copied into a message first: the encoder produces only the
 * small headers around them. Responses are scanned here for their id,
 * status and message, and LookupReply / PushReply are decoded in place, so
 * a lookup's vectors are copied once, from the read buffer to the caller.
 * Everything else goes through the protobuf-c code generated from
 * proto/cqrps.proto, which stays the source of truth (a test checks that
 * protobuf-c decodes what this encoder writes and vice versa).
 *
 * Rules: the functions are pure (no allocation, no I/O, no state), so
 * any thread may call them. Decoders never read past the given length and
 * return CQRPS_EPROTO for anything malformed. Varints are proto/varint.h,
 * the codec the server's hand codec uses too. The bottom of the library
 * (the layers are listed in op.h).
 */
#ifndef CQ_WIRE_H
#define CQ_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "proto/varint.h"

/* Field numbers of proto/cqrps.proto used by the hand codec. */
enum {
    CQ_REQ_LOOKUP = 15,    /* Request.lookup */
    CQ_REQ_PUSH = 16,      /* Request.push */
    CQ_RESP_LOOKUP = 13,   /* Response.lookup */
    CQ_RESP_PUSH = 14      /* Response.push */
};

/* A Lookup or Push request, described by its parts. The encoder writes the
 * bytes that surround the two raw arrays (ids, grads) into caller buffers;
 * the caller sends head, ids, mid, grads, tail in that order. */
typedef struct cq_data_req {
    int push;                  /* 0: Lookup, 1: Push */
    uint64_t req_id;           /* Request.id */
    const char *table;         /* table name */
    size_t table_len;          /* its length */
    size_t n;                  /* IDs */
    size_t grads_bytes;        /* Push: bytes of gradients (n or nbags
                                  rows); 0 for Lookup */
    const uint32_t *offsets;   /* pooled: bag starts, or NULL */
    size_t nbags;              /* pooled: number of bags */
    uint32_t offset_base;      /* subtracted from every offset (a
                                  sub-batch starting mid-array) */
    uint32_t pooling;          /* pooled: 0 sum, 1 mean */
} cq_data_req_t;

/* Bytes needed for head and tail (without the table name, which goes in
 * head): upper bounds to size the buffers. */
#define CQ_DATA_HEAD_MAX (4 + 6 * CQR_VARINT_MAX + 8)
size_t cq_data_tail_max(const cq_data_req_t *r);

/* Encodes a frame: head (4-byte length prefix, Request fields, the
 * sub-message header, the table name, the ids field header) into `head`,
 * the grads field header into `mid` (push only), the offsets and pooling
 * fields into `tail`. Returns the frame's total length including the
 * prefix (0 if it would exceed UINT32_MAX) and the three part lengths. */
size_t cq_data_encode(const cq_data_req_t *r, unsigned char *head,
                      size_t *head_len, unsigned char *mid, size_t *mid_len,
                      unsigned char *tail, size_t *tail_len);

/* ---- Multi-table requests --------------------------------------------
 * A Lookup or Push with parts (proto TablePart) is sent as: the request
 * head (cq_multi_head: prefix, Request.id, the sub-message header and,
 * for a push, the header of the gradients, which follow as raw bytes,
 * every part's in part order), then per part its head (cq_mpart_head:
 * key, length, table, ids header), its IDs and its tail (cq_mpart_tail:
 * offsets, pooling), then the bf16 field (cq_multi_trailer). Fields in
 * number order, minimal varints: protobuf-c's own bytes. */

/* One part as the encoder sees it. */
typedef struct cq_mpart_enc {
    const char *table;         /* table name */
    size_t table_len;          /* its length */
    size_t n;                  /* IDs */
    const uint32_t *offsets;   /* pooled: bag starts, or NULL */
    size_t nbags;              /* pooled: number of bags */
    uint32_t offset_base;      /* subtracted from every offset */
    uint32_t pooling;          /* pooled: 0 sum, 1 mean */
} cq_mpart_enc_t;

/* Field numbers of the parts and bf16 in Lookup and Push. */
#define CQ_LOOKUP_PARTS 5
#define CQ_LOOKUP_BF16 6
#define CQ_PUSH_PARTS 6
#define CQ_PUSH_BF16 7

/* Bounds of cq_mpart_head / cq_mpart_tail / cq_multi_head output. */
#define CQ_MPART_HEAD_MAX (4 * CQR_VARINT_MAX)
size_t cq_mpart_tail_max(const cq_mpart_enc_t *p);
#define CQ_MULTI_HEAD_MAX (4 + 6 * CQR_VARINT_MAX)

/* Bytes of the part's TablePart message (its body, IDs included). */
uint64_t cq_mpart_len(const cq_mpart_enc_t *p);
/* Bytes of the part as a field of the request (key and length too). */
uint64_t cq_mpart_field_len(const cq_mpart_enc_t *p);
/* Writes the part's key (field), length, table and ids header; the
 * table name goes in too, so b needs CQ_MPART_HEAD_MAX + table_len. */
size_t cq_mpart_head(unsigned char *b, uint32_t field,
                     const cq_mpart_enc_t *p);
/* Writes the part's offsets and pooling (after its IDs). */
size_t cq_mpart_tail(unsigned char *b, const cq_mpart_enc_t *p);
/* Writes the request head for a sub-message of `sub` bytes (a push:
 * grads_bytes of gradients follow the head); returns its length, and 0
 * when the frame would exceed UINT32_MAX. */
size_t cq_multi_head(unsigned char *b, int push, uint64_t req_id,
                     uint64_t sub, size_t grads_bytes);
/* The bf16 field (2 bytes), 0 without it. */
size_t cq_multi_trailer(unsigned char *b, int push, int bf16);

/* The envelope of a Response body (without the length prefix). */
typedef struct cq_resp_hdr {
    uint64_t id;               /* Response.id */
    uint32_t status;           /* Response.status (0 = OK) */
    const char *msg;           /* Response.message, not NUL-terminated */
    size_t msg_len;
    uint32_t reply_field;      /* field number of the reply set, 0 = none */
    const unsigned char *reply; /* the reply sub-message body */
    size_t reply_len;
} cq_resp_hdr_t;

int cq_resp_scan(const unsigned char *buf, size_t len, cq_resp_hdr_t *h);

/* LookupReply: dim and the raw vectors. */
int cq_lookup_reply_decode(const unsigned char *buf, size_t len,
                           uint32_t *dim, const unsigned char **vec,
                           size_t *vec_len);

/* LookupReply with every field (a multi-table reply's dims, bf16). */
typedef struct cq_lookup_reply {
    uint32_t dim;              /* a single-table reply's dim, or 0 */
    const unsigned char *vec;  /* the vectors, vec_len bytes */
    size_t vec_len;
    const unsigned char *dims; /* packed varints, dims_len bytes */
    size_t dims_len;
    int bf16;                  /* the vectors are bfloat16 */
} cq_lookup_reply_t;
int cq_lookup_reply_scan(const unsigned char *buf, size_t len,
                         cq_lookup_reply_t *r);

/* PushReply: applied. */
int cq_push_reply_decode(const unsigned char *buf, size_t len,
                         uint64_t *applied);

#endif
