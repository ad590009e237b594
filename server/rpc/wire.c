/* wire.c -- the server's hand codec for Lookup, Push and their replies
 * (see wire.h for why and for the contract). */
#include "rpc/wire.h"

#include <limits.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "proto/varint.h"

/* Protobuf wire types. */
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

#define KEY(field, wt) ((uint32_t)(field) << 3 | (uint32_t)(wt))

/* ---- decoding ---------------------------------------------------------
 * Every helper returns 1 when it read what it expected and 0 to decline.
 * The limits follow protobuf-c 1.4's unpacker wherever it would accept
 * something: varints of at most 10 bytes, keys and lengths of at most 5;
 * whatever it would read differently (a value it truncates, a padded key)
 * is declined rather than imitated. */

/* A cursor over [p, end). */
typedef struct cur {
    const uint8_t *p;
    const uint8_t *end;
} cur_t;

/* A varint of at most max bytes. The tenth byte of a 64-bit varint may
 * only carry bit 63; anything above would be dropped by protobuf-c. */
static int get_varint(cur_t *c, unsigned max, uint64_t *v)
{
    const uint8_t *start = c->p;
    uint64_t x;
    if (!cqr_varint_get(&c->p, c->end, max, &x))
        return 0;
    if (c->p - start == CQR_VARINT_MAX && c->p[-1] > 1)
        return 0;
    *v = x;
    return 1;
}

/* A field key in its minimal encoding. */
static int get_key(cur_t *c, uint32_t *key)
{
    const uint8_t *start = c->p;
    uint64_t k;
    if (!get_varint(c, 5, &k))
        return 0;
    if (c->p - start > 1 && c->p[-1] == 0)
        return 0; /* padded with zero groups */
    if (k > UINT32_MAX)
        return 0;
    *key = (uint32_t)k;
    return 1;
}

/* A length-delimited field's body. */
static int get_len(cur_t *c, const uint8_t **body, size_t *n)
{
    uint64_t v;
    if (!get_varint(c, 5, &v))
        return 0;
    if (v > INT_MAX || v > (uint64_t)(c->end - c->p))
        return 0;
    *body = c->p;
    *n = (size_t)v;
    c->p += v;
    return 1;
}

/* A table name the fast path takes: printable ASCII, so that it needs no
 * UTF-8 check and no NUL can cut it short, and never longer than a valid
 * name. Anything else is an error the fallback reports. */
static int name_ok(const uint8_t *p, size_t n)
{
    if (n > CQR_WIRE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return 0;
    return 1;
}

/* Counts packed uint32 varints, each of at most 5 bytes and in range,
 * the last one ending exactly at the end. */
static int count_offsets(const uint8_t *p, size_t len, size_t *n)
{
    cur_t c = {p, p + len};
    size_t k = 0;
    while (c.p < c.end) {
        uint64_t v;
        if (!get_varint(&c, 5, &v) || v > UINT32_MAX)
            return 0;
        k++;
    }
    *n = k;
    return 1;
}

/* The table fields a TablePart and a single-table request share: 1 if
 * key is one of them (f_* are the field numbers in this message; 0 = no
 * such field) and was read into *p, 0 if key is another field (nothing
 * read), -1 to decline. */
static int table_field(cur_t *c, uint32_t key, uint32_t f_offsets,
                       uint32_t f_pooling, cqr_wire_part_t *p)
{
    const uint8_t *b;
    size_t n;
    uint64_t v;
    if (key == KEY(1, WT_LEN)) {
        if (!get_len(c, &b, &n) || !name_ok(b, n))
            return -1;
        p->table = b;
        p->table_len = n;
    } else if (key == KEY(2, WT_LEN)) {
        if (!get_len(c, &b, &n) || n % 8 != 0)
            return -1;
        p->ids = b;
        p->n_ids = n / 8;
    } else if (key == KEY(f_offsets, WT_LEN)) {
        if (!get_len(c, &b, &n) || !count_offsets(b, n, &p->n_offsets))
            return -1;
        p->offsets = b;
        p->offsets_len = n;
    } else if (key == KEY(f_pooling, WT_VARINT)) {
        /* An unknown pooling is an error with its own message. */
        if (!get_varint(c, 10, &v) || v > 1)
            return -1;
        p->pooling = (uint32_t)v;
    } else {
        return 0;
    }
    return 1;
}

/* TablePart {table = 1, ids = 2, offsets = 3, pooling = 4}. */
static int decode_part(const uint8_t *b, size_t len, cqr_wire_part_t *p)
{
    cur_t c = {b, b + len};
    unsigned seen = 0;
    memset(p, 0, sizeof *p);
    while (c.p < c.end) {
        uint32_t key;
        if (!get_key(&c, &key))
            return 0;
        uint32_t f = key >> 3;
        if (f == 0 || f > 4 || (seen & 1u << f) != 0)
            return 0;
        seen |= 1u << f;
        if (table_field(&c, key, 3, 4, p) != 1)
            return 0;
    }
    return 1;
}

/* Lookup {table = 1, ids = 2, offsets = 3, pooling = 4, parts = 5,
 * bf16 = 6} or Push {table = 1, ids = 2, grads = 3, offsets = 4,
 * pooling = 5, parts = 6, bf16 = 7}. The parts must be consecutive. */
static int decode_op(const uint8_t *p, size_t len, int push,
                     cqr_wire_data_t *d)
{
    const uint32_t f_grads = push ? 3 : 0; /* 0: no such field */
    const uint32_t f_offsets = push ? 4 : 3;
    const uint32_t f_pooling = push ? 5 : 4;
    const uint32_t f_parts = push ? 6 : 5;
    const uint32_t f_bf16 = push ? 7 : 6;
    cur_t c = {p, p + len};
    unsigned seen = 0; /* bit f: field f was read */
    uint32_t prev = 0; /* the previous field's number */
    cqr_wire_part_t one = {0};
    while (c.p < c.end) {
        const uint8_t *start = c.p;
        uint32_t key;
        if (!get_key(&c, &key))
            return 0;
        uint32_t f = key >> 3;
        if (f == f_parts && key == KEY(f_parts, WT_LEN)) {
            if (d->n_parts > 0 && prev != f_parts)
                return 0; /* parts apart: protobuf-c decides */
            const uint8_t *b;
            size_t n;
            cqr_wire_part_t part;
            if (!get_len(&c, &b, &n) || !decode_part(b, n, &part))
                return 0;
            if (d->n_parts++ == 0)
                d->parts = start;
            d->parts_len = (size_t)(c.p - d->parts);
            prev = f;
            continue;
        }
        if (f == 0 || f > f_bf16 || (seen & 1u << f) != 0)
            return 0; /* unknown or repeated: protobuf-c decides */
        seen |= 1u << f;
        prev = f;
        int r = table_field(&c, key, f_offsets, f_pooling, &one);
        if (r < 0)
            return 0;
        if (r > 0)
            continue;
        const uint8_t *b;
        size_t n;
        uint64_t v;
        if (key == KEY(f_grads, WT_LEN)) {
            if (!get_len(&c, &b, &n))
                return 0;
            d->grads = b;
            d->grads_len = n;
        } else if (key == KEY(f_bf16, WT_VARINT)) {
            if (!get_varint(&c, 10, &v) || v > 1)
                return 0; /* protobuf-c reads any non-zero as true */
            d->bf16 = (int)v;
        } else {
            return 0; /* a known field with another wire type */
        }
    }
    d->table = one.table;
    d->table_len = one.table_len;
    d->ids = one.ids;
    d->n_ids = one.n_ids;
    d->offsets = one.offsets;
    d->offsets_len = one.offsets_len;
    d->n_offsets = one.n_offsets;
    d->pooling = one.pooling;
    return 1;
}

int cqr_wire_decode_data(const uint8_t *body, size_t len, cqr_wire_data_t *d)
{
    memset(d, 0, sizeof *d);
    if (body == NULL)
        return 0;
    cur_t c = {body, body + len};
    int have_id = 0, have_op = 0;
    const uint8_t *op = NULL;
    size_t op_len = 0;
    while (c.p < c.end) {
        uint32_t key;
        if (!get_key(&c, &key))
            return 0;
        if (key == KEY(1, WT_VARINT) && !have_id) {
            if (!get_varint(&c, 10, &d->id))
                return 0;
            have_id = 1;
        } else if ((key == KEY(CQR_WIRE_LOOKUP, WT_LEN) ||
                    key == KEY(CQR_WIRE_PUSH, WT_LEN)) && !have_op) {
            if (!get_len(&c, &op, &op_len))
                return 0;
            d->op = key >> 3;
            have_op = 1;
        } else {
            return 0; /* another operation, a repeat, an unknown field */
        }
    }
    if (!have_op)
        return 0;
    return decode_op(op, op_len, d->op == CQR_WIRE_PUSH, d);
}

/* Decodes n packed varints, validated by count_offsets. */
static void put_offsets(const uint8_t *p, size_t len, size_t n, uint32_t *out)
{
    cur_t c = {p, p + len};
    for (size_t i = 0; i < n; i++) {
        uint64_t v = 0;
        int ok = get_varint(&c, 5, &v);
        (void)ok; /* validated by count_offsets */
        out[i] = (uint32_t)v;
    }
}

void cqr_wire_offsets(const cqr_wire_data_t *d, uint32_t *out)
{
    put_offsets(d->offsets, d->offsets_len, d->n_offsets, out);
}

void cqr_wire_part_offsets(const cqr_wire_part_t *p, uint32_t *out)
{
    put_offsets(p->offsets, p->offsets_len, p->n_offsets, out);
}

void cqr_wire_part_next(const uint8_t **cur, const uint8_t *end,
                        cqr_wire_part_t *p)
{
    cur_t c = {*cur, end};
    uint32_t key;
    const uint8_t *b = NULL;
    size_t n = 0;
    int ok = get_key(&c, &key) && get_len(&c, &b, &n) &&
             decode_part(b, n, p);
    (void)ok; /* validated by decode_op */
    *cur = c.p;
}

/* Skips the value of a field of wire type wt. */
static int skip_value(cur_t *c, uint32_t wt)
{
    uint64_t v;
    const uint8_t *b;
    size_t n;
    switch (wt) {
    case WT_VARINT:
        return get_varint(c, 10, &v);
    case WT_I64:
    case WT_I32:
        n = wt == WT_I64 ? 8 : 4;
        if ((size_t)(c->end - c->p) < n)
            return 0;
        c->p += n;
        return 1;
    case WT_LEN:
        return get_len(c, &b, &n);
    default:
        return 0;
    }
}

size_t cqr_wire_count_parts(const uint8_t *body, size_t len, uint64_t *id,
                            uint32_t *op)
{
    cur_t c = {body, body + len};
    size_t parts = 0;
    *id = 0;
    *op = 0;
    while (c.p < c.end) {
        uint32_t key;
        if (!get_key(&c, &key))
            return parts;
        uint32_t f = key >> 3;
        uint32_t f_parts = f == CQR_WIRE_LOOKUP ? 5 : f == CQR_WIRE_PUSH ? 6
                                                                         : 0;
        if (key == KEY(1, WT_VARINT)) {
            if (!get_varint(&c, 10, id))
                return parts;
            continue;
        }
        const uint8_t *b;
        size_t n;
        if (!f_parts || (key & 7) != WT_LEN) {
            if (!skip_value(&c, key & 7))
                return parts;
            continue;
        }
        if (!get_len(&c, &b, &n))
            return parts;
        /* Inside a Lookup or Push: count the part fields. */
        *op = f;
        cur_t s = {b, b + n};
        while (s.p < s.end && get_key(&s, &key)) {
            parts += key == KEY(f_parts, WT_LEN);
            if (!skip_value(&s, key & 7))
                break;
        }
    }
    return parts;
}

size_t cqr_wire_align_hint(const uint8_t *body, size_t avail)
{
    cur_t c = {body, body + avail};
    uint32_t key;
    uint64_t v;
    const uint8_t *b;
    size_t n;
    /* Request: an id, then the Push, whose body runs past avail. */
    while (c.p < c.end) {
        if (!get_key(&c, &key))
            return SIZE_MAX;
        if (key == KEY(1, WT_VARINT)) {
            if (!get_varint(&c, 10, &v))
                return SIZE_MAX;
            continue;
        }
        if (key != KEY(CQR_WIRE_PUSH, WT_LEN) || !get_varint(&c, 5, &v))
            return SIZE_MAX;
        /* Push: the fields before grads (table, ids) must be here. */
        while (c.p < c.end) {
            if (!get_key(&c, &key))
                return SIZE_MAX;
            if (key == KEY(3, WT_LEN)) {
                if (!get_varint(&c, 5, &v))
                    return SIZE_MAX;
                return (size_t)(c.p - body);
            }
            if ((key & 7) == WT_LEN) {
                if (!get_len(&c, &b, &n))
                    return SIZE_MAX;
            } else if ((key & 7) != WT_VARINT || !get_varint(&c, 10, &v)) {
                return SIZE_MAX;
            }
        }
        return SIZE_MAX;
    }
    return SIZE_MAX;
}

/* ---- encoding ---------------------------------------------------------
 * protobuf-c packs a message's fields in field-number order, leaves out
 * proto3 fields that hold their default (0, empty), always writes a set
 * oneof member (even an empty message), and writes minimal varints. */

/* Response field numbers (status 2 and message 3 are default in an OK
 * reply, so never written here). */
enum { RESP_ID = 1, RESP_LOOKUP = 13, RESP_PUSH = 14 };

/* LookupReply {dim = 1, vectors = 2, dims = 3, bf16 = 4} without the
 * vectors' bytes and the tail (dims, bf16). */
static size_t lookup_reply_len(uint32_t dim, size_t vec_bytes,
                               size_t tail_len)
{
    size_t n = tail_len;
    if (dim != 0)
        n += 1 + cqr_varint_len(dim);
    if (vec_bytes != 0)
        n += 1 + cqr_varint_len(vec_bytes) + vec_bytes;
    return n;
}

size_t cqr_wire_lookup_head_len(uint64_t id, uint32_t dim, size_t vec_bytes,
                                size_t tail_len)
{
    size_t sub = lookup_reply_len(dim, vec_bytes, tail_len);
    size_t n = id != 0 ? 1 + cqr_varint_len(id) : 0;
    return n + 1 + cqr_varint_len(sub) + sub - vec_bytes - tail_len;
}

size_t cqr_wire_lookup_head(uint8_t *p, uint64_t id, uint32_t dim,
                            size_t vec_bytes, size_t tail_len)
{
    size_t n = 0;
    if (id != 0) {
        p[n++] = KEY(RESP_ID, WT_VARINT);
        n += cqr_varint_put(p + n, id);
    }
    p[n++] = KEY(RESP_LOOKUP, WT_LEN);
    n += cqr_varint_put(p + n, lookup_reply_len(dim, vec_bytes, tail_len));
    if (dim != 0) {
        p[n++] = KEY(1, WT_VARINT);
        n += cqr_varint_put(p + n, dim);
    }
    if (vec_bytes != 0) {
        p[n++] = KEY(2, WT_LEN);
        n += cqr_varint_put(p + n, vec_bytes);
    }
    return n;
}

/* Bytes of the packed dims. */
static size_t dims_len(const uint32_t *dims, size_t ndims)
{
    size_t n = 0;
    for (size_t i = 0; i < ndims; i++)
        n += cqr_varint_len(dims[i]);
    return n;
}

size_t cqr_wire_lookup_tail_len(const uint32_t *dims, size_t ndims, int bf16)
{
    size_t n = bf16 ? 2 : 0;
    if (ndims > 0) {
        size_t dl = dims_len(dims, ndims);
        n += 1 + cqr_varint_len(dl) + dl;
    }
    return n;
}

size_t cqr_wire_lookup_tail(uint8_t *p, const uint32_t *dims, size_t ndims,
                            int bf16)
{
    size_t n = 0;
    if (ndims > 0) {
        p[n++] = KEY(3, WT_LEN);
        n += cqr_varint_put(p + n, dims_len(dims, ndims));
        for (size_t i = 0; i < ndims; i++)
            n += cqr_varint_put(p + n, dims[i]);
    }
    if (bf16) {
        p[n++] = KEY(4, WT_VARINT);
        p[n++] = 1;
    }
    return n;
}

size_t cqr_wire_push_reply(uint8_t *p, uint64_t id, uint64_t applied)
{
    size_t n = 0;
    if (id != 0) {
        p[n++] = KEY(RESP_ID, WT_VARINT);
        n += cqr_varint_put(p + n, id);
    }
    p[n++] = KEY(RESP_PUSH, WT_LEN);
    p[n++] = (uint8_t)(applied != 0 ? 1 + cqr_varint_len(applied) : 0);
    if (applied != 0) {
        p[n++] = KEY(1, WT_VARINT);
        n += cqr_varint_put(p + n, applied);
    }
    return n;
}

/* ---- string fields ------------------------------------------------------
 * Nesting is bounded by the schema (no message of cqrps.proto contains
 * itself); the depth cap only guards against a future one that does. */
#define STRINGS_DEPTH_MAX 16

static int strings_clean(const ProtobufCMessageDescriptor *desc,
                         const uint8_t *p, size_t len, unsigned depth,
                         const char **field)
{
    *field = NULL;
    if (depth > STRINGS_DEPTH_MAX)
        return 0;
    cur_t c = {p, p + len};
    while (c.p < c.end) {
        uint64_t k, v;
        const uint8_t *b;
        size_t n;
        if (!cqr_varint_get(&c.p, c.end, 5, &k) || k > UINT32_MAX)
            return 0;
        switch ((unsigned)(k & 7)) {
        case WT_VARINT:
            if (!cqr_varint_get(&c.p, c.end, CQR_VARINT_MAX, &v))
                return 0;
            break;
        case WT_I64:
        case WT_I32: {
            size_t w = (k & 7) == WT_I64 ? 8 : 4;
            if ((size_t)(c.end - c.p) < w)
                return 0;
            c.p += w;
            break;
        }
        case WT_LEN: {
            if (!get_len(&c, &b, &n))
                return 0;
            const ProtobufCFieldDescriptor *fd =
                protobuf_c_message_descriptor_get_field(desc,
                                                        (unsigned)(k >> 3));
            if (fd == NULL)
                break; /* an unknown field: kept as bytes, never read */
            if (fd->type == PROTOBUF_C_TYPE_STRING &&
                memchr(b, 0, n) != NULL) {
                *field = fd->name;
                return 0;
            }
            if (fd->type == PROTOBUF_C_TYPE_MESSAGE &&
                !strings_clean(fd->descriptor, b, n, depth + 1, field))
                return 0;
            break;
        }
        default:
            return 0; /* groups: protobuf-c declines them anyway */
        }
    }
    return 1;
}

int cqr_wire_strings_clean(const struct ProtobufCMessageDescriptor *desc,
                           const uint8_t *body, size_t len,
                           const char **field)
{
    return strings_clean(desc, body, len, 0, field);
}
