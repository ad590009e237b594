/* wire.h -- the server's hand codec for its two hot messages.
 *
 * A Lookup or Push request carries a large payload (8 bytes per ID, and
 * for a push rows x dim x 4 bytes of gradients), and a LookupReply
 * carries rows x dim x 4 bytes of vectors. protobuf-c would copy each of
 * them once more: unpack copies the IDs and the gradients into malloc'd
 * arrays, and pack copies the vectors from the handler's buffer into the
 * reply. This module lets rpc.c skip those copies:
 *
 *   - cqr_wire_decode_data reads a Request whose operation is Lookup or
 *     Push straight from the frame body and describes its fields in
 *     place. It accepts only the plain encoding a client produces (each
 *     field at most once, the expected wire types, no unknown field, a
 *     table name of printable ASCII of at most CQR_WIRE_NAME_MAX bytes,
 *     values in range) and declines everything else, so that the caller
 *     falls back to protobuf-c, whose behaviour (errors, messages) stays
 *     the reference. Declining is never an error.
 *   - cqr_wire_align_hint tells the frame reader where a Push's gradients
 *     will be, so that it can place the frame for them to land aligned
 *     and be used in place.
 *   - cqr_wire_lookup_head / cqr_wire_push_reply write OK Responses whose
 *     bytes are exactly what protobuf-c's pack produces for the same
 *     Response (same field order, minimal varints, default fields
 *     omitted); the lookup encoder writes only the header, so the engine
 *     can write the vectors where they go.
 *
 * proto/cqrps.proto stays the source of truth: tests/rpc/test_wire.c
 * checks both directions against protobuf-c on random messages, and
 * tests/rpc/test_rpc_fast.c the request path with and without the codec.
 *
 * Ownership: a decoded request points into the body it was decoded from
 * (nothing is copied or allocated); it is valid as long as that body.
 * The encoders write into the caller's buffer.
 *
 * Errors: there are none. Decoding declines (returns 0) whatever it does
 * not take, valid or not, and protobuf-c then decides; the encoders
 * cannot fail given room for CQR_WIRE_HEAD_MAX bytes.
 *
 * Threading: none. The functions are pure: no allocation, no I/O, no
 * shared state, no alignment assumptions (the payload pointers may be
 * unaligned; the caller copies or checks before handing them to the
 * engine). Decoding never reads outside [body, body + len).
 */
#ifndef CQR_WIRE_H
#define CQR_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Request oneof field numbers of the two operations decoded here. */
#define CQR_WIRE_LOOKUP 15u
#define CQR_WIRE_PUSH 16u

/* Longest table name the fast path takes (registry.h's CQR_NAME_MAX:
 * no valid name is longer, so a longer one only ever gets an error). */
#define CQR_WIRE_NAME_MAX 128u

/* Largest encoding cqr_wire_lookup_head and cqr_wire_push_reply write. */
#define CQR_WIRE_HEAD_MAX 40u

/* Most table parts (TablePart) one Lookup or Push may carry. */
#define CQR_WIRE_MAX_PARTS 1024u

/* One TablePart of a multi-table request, pointing into the body. */
typedef struct cqr_wire_part {
    const uint8_t *table;     /* table name, table_len bytes, printable
                                 ASCII, not NUL-terminated */
    size_t table_len;
    const uint8_t *ids;       /* n_ids little-endian uint64, unaligned */
    size_t n_ids;
    const uint8_t *offsets;   /* packed varints, as in cqr_wire_data_t */
    size_t offsets_len;
    size_t n_offsets;
    uint32_t pooling;         /* 0 (SUM) or 1 (MEAN) */
} cqr_wire_part_t;

/* The fields of a Lookup or Push request, pointing into the body. The
 * table fields are the request's own (a single-table request); a
 * multi-table request has its n_parts TableParts in [parts, parts +
 * parts_len) (consecutive fields, keys included: read them with
 * cqr_wire_part_next). */
typedef struct cqr_wire_data {
    uint32_t op;              /* CQR_WIRE_LOOKUP or CQR_WIRE_PUSH */
    uint64_t id;              /* Request.id (0 when absent) */
    const uint8_t *table;     /* table name, table_len bytes, printable
                                 ASCII, not NUL-terminated */
    size_t table_len;
    const uint8_t *ids;       /* n_ids little-endian uint64, unaligned */
    size_t n_ids;
    const uint8_t *offsets;   /* packed varints, offsets_len bytes, each
                                 a uint32 of at most 5 bytes */
    size_t offsets_len;
    size_t n_offsets;         /* values in offsets */
    uint32_t pooling;         /* 0 (SUM) or 1 (MEAN) */
    const uint8_t *grads;     /* Push: grads_len bytes, unaligned; NULL
                                 for Lookup and for an absent field */
    size_t grads_len;
    const uint8_t *parts;     /* the TablePart fields, or NULL */
    size_t parts_len;
    size_t n_parts;
    int bf16;                 /* the bf16 field (0 or 1) */
} cqr_wire_data_t;

/* Decodes body as a Request carrying a Lookup or a Push. 1: *d describes
 * it. 0: declined (another operation, an encoding this decoder does not
 * take, or invalid bytes); *d is unspecified and the caller must decode
 * body with protobuf-c instead. */
int cqr_wire_decode_data(const uint8_t *body, size_t len,
                         cqr_wire_data_t *d);

/* Writes d's n_offsets offsets to out[0 .. n_offsets). d must come from a
 * successful cqr_wire_decode_data. */
void cqr_wire_offsets(const cqr_wire_data_t *d, uint32_t *out);

/* Reads the TablePart at *cur into *p and moves *cur past it: called
 * d->n_parts times from cur = d->parts, with end = d->parts +
 * d->parts_len, after a successful decode (which checked them all). */
void cqr_wire_part_next(const uint8_t **cur, const uint8_t *end,
                        cqr_wire_part_t *p);

/* The same as cqr_wire_offsets for a part. */
void cqr_wire_part_offsets(const cqr_wire_part_t *p, uint32_t *out);

/* The number of TableParts in the Lookup or Push of a Request body,
 * counted without decoding them: what a decoder would allocate for, so
 * that the caller can refuse more than CQR_WIRE_MAX_PARTS first. 0 for
 * other requests and for bytes it cannot follow. *id gets the Request's
 * id (0 when absent), *op the operation (CQR_WIRE_LOOKUP or
 * CQR_WIRE_PUSH; 0 for others). */
size_t cqr_wire_count_parts(const uint8_t *body, size_t len, uint64_t *id,
                            uint32_t *op);

/* The frame reader's align hint (frame.h) for Push requests: from the
 * first avail bytes of a Request body, the offset within it of a Push's
 * gradients, or SIZE_MAX (another request, or the fields before the
 * gradients have not all arrived). Only a hint: the frame is decoded
 * later as usual, so a wrong answer costs a copy, nothing else. */
size_t cqr_wire_align_hint(const uint8_t *body, size_t avail);

/* Bytes of the encoding of an OK Response {id, lookup {dim, vectors,
 * dims, bf16}} with vec_bytes of vectors and tail_len bytes of the fields
 * after them (cqr_wire_lookup_tail), without the vectors and the tail:
 * the vectors start at that offset, the tail follows them, and the
 * Response is that many plus vec_bytes plus tail_len long. dim 0 leaves
 * the dim field out (a multi-table reply). */
size_t cqr_wire_lookup_head_len(uint64_t id, uint32_t dim, size_t vec_bytes,
                                size_t tail_len);

/* Writes that header to p (cqr_wire_lookup_head_len bytes, at most
 * CQR_WIRE_HEAD_MAX) and returns its length; the caller writes vec_bytes
 * of vectors right after it, then the tail. vec_bytes + tail_len must be
 * below 2^32 minus the header (replies are bounded by --max-frame-bytes
 * first). */
size_t cqr_wire_lookup_head(uint8_t *p, uint64_t id, uint32_t dim,
                            size_t vec_bytes, size_t tail_len);

/* Bytes of the LookupReply fields after the vectors: the packed dims
 * (ndims of them; none for a single-table reply) and bf16. */
size_t cqr_wire_lookup_tail_len(const uint32_t *dims, size_t ndims,
                                int bf16);

/* Writes them to p; returns cqr_wire_lookup_tail_len's value. */
size_t cqr_wire_lookup_tail(uint8_t *p, const uint32_t *dims, size_t ndims,
                            int bf16);

/* Writes an OK Response {id, push {applied}} to p (at most
 * CQR_WIRE_HEAD_MAX bytes) and returns its length. */
size_t cqr_wire_push_reply(uint8_t *p, uint64_t id, uint64_t applied);

/* protobuf-c hands out string fields NUL-terminated, so a NUL byte inside
 * one would silently cut it short ("nulx\0../evil" would read "nulx").
 * Walks body, a message of descriptor `desc` that protobuf-c already
 * decoded, through every nested message the descriptor names. Returns 1
 * when no string field holds a NUL byte. 0 when one does (*field gets its
 * name, static) or when body uses an encoding this walker does not read
 * the way protobuf-c might (a key or length over 5 bytes, groups; *field
 * gets NULL): the caller refuses the request. Pure, like the rest. */
struct ProtobufCMessageDescriptor;
int cqr_wire_strings_clean(const struct ProtobufCMessageDescriptor *desc,
                           const uint8_t *body, size_t len,
                           const char **field);

#endif
