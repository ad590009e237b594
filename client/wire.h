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

/* PushReply: applied. */
int cq_push_reply_decode(const unsigned char *buf, size_t len,
                         uint64_t *applied);

#endif
