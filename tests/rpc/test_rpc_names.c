/* Table names in every request that carries one (issue 14, item 6): the
 * same check everywhere -- 1..CQR_NAME_MAX bytes of [A-Za-z0-9_.-] -- and
 * a NUL byte in any string field refused with INVALID_ARGUMENT instead of
 * cutting the name short (protobuf-c's strings are NUL-terminated, so
 * "nulx\0../evil" used to create, and "nulx\0other" to drop, "nulx"). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "cqrps.pb-c.h"
#include "engine/err.h"
#include "ops/log.h"
#include "tables/registry.h"
#include "rpc/rpc.h"
#include "check_main.h"
#include "rpc_call.h"

static cqr_config_t cfg;
static cqr_server_ctx_t ctx;
static cqr_session_t sess;

static void setup(void)
{
    cqr_log_set_level(CQR_LOG_ERROR);
    cqr_config_defaults(&cfg);
    ck_assert_int_eq(cqr_server_ctx_init(&ctx, &cfg), 0);
    cqr_session_init(&ctx, &sess, "test:1", 0);
}

static void teardown(void) { cqr_server_ctx_free(&ctx); }

/* The operations that name a table, by the Request field that carries
 * each; field 1 of every one of their messages is the name. */
enum { OP_CREATE, OP_DROP, OP_DESCRIBE, OP_LOOKUP, OP_PUSH, OP_CLUSTER,
       OP_CSTATUS, OP_DIGEST, OP_N };

static const char *const op_fields[OP_N] = {
    "create_table", "drop_table", "describe_table", "lookup", "push",
    "cluster", "cluster_status", "digest"};

/* Points the field `name` of msg, if it has that field, at p: a string,
 * a message, the n values of a repeated field, or n bytes. */
static void set_field(ProtobufCMessage *msg, const char *name, void *p,
                      size_t n)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor,
                                                        name);
    if (f == NULL)
        return;
    char *base = (char *)msg;
    if (f->type == PROTOBUF_C_TYPE_BYTES) {
        ProtobufCBinaryData b = {n, p};
        memcpy(base + f->offset, &b, sizeof b);
        return;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        memcpy(base + f->quantifier_offset, &n, sizeof n);
    memcpy(base + f->offset, &p, sizeof p);
}

/* Sends operation op on table `name`, in which every '#' becomes a NUL
 * byte on the wire; returns the reply's status as a CQR_E* code. The
 * other fields are what a valid request of op needs: a hash table's
 * config, one ID, one gradient of 8 floats. */
static int send_named(int op, const char *name)
{
    char *nm = strdup(name);
    ck_assert_ptr_nonnull(nm);
    const ProtobufCFieldDescriptor *rf =
        protobuf_c_message_descriptor_get_field_by_name(
            &cqrps__v1__request__descriptor, op_fields[op]);
    ck_assert_ptr_nonnull(rf);
    const ProtobufCMessageDescriptor *md = rf->descriptor;
    ProtobufCMessage *msg = calloc(1, md->sizeof_message);
    ck_assert_ptr_nonnull(msg);
    md->message_init(msg);
    Cqrps__V1__TableConfig tc = CQRPS__V1__TABLE_CONFIG__INIT;
    tc.kind = CQRPS__V1__TABLE_KIND__HASH;
    tc.dim = 8;
    tc.rows = 16;
    uint64_t id = 7;
    float g[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    set_field(msg, protobuf_c_message_descriptor_get_field(md, 1)->name, nm,
              0);
    set_field(msg, "config", &tc, 0);
    set_field(msg, "ids", &id, 1);
    set_field(msg, "grads", g, sizeof g);
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = (Cqrps__V1__Request__OpCase)rf->id; /* the oneof's case */
    memcpy((char *)&q + rf->offset, &msg, sizeof msg);
    q.id = 99;
    size_t n = cqrps__v1__request__get_packed_size(&q);
    uint8_t *buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    cqrps__v1__request__pack(&q, buf);
    /* '#' appears nowhere else in these encodings (no float or ID byte
     * is 0x23). */
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '#')
            buf[i] = 0;
    int rc;
    Response *r = rq_raw(&ctx, &sess, buf, n, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(r->id, 99);
    free(buf);
    free(msg);
    free(nm);
    return rq_status(r);
}

static size_t n_tables(void)
{
    int rc;
    Response *r = rq_simple(&ctx, &sess, CQRPS__V1__REQUEST__OP_LIST_TABLES,
                            &rc);
    size_t n = r->tables->n_tables;
    rq_done(r);
    return n;
}

/* The issue's repro: a NUL cuts the name short in create and drop. */
START_TEST(test_nul_create_drop)
{
    ck_assert_int_eq(send_named(OP_CREATE, "nulx#../evil"), CQR_EINVAL);
    ck_assert_uint_eq(n_tables(), 0);
    ck_assert_int_eq(send_named(OP_CREATE, "nulx"), 0);
    ck_assert_int_eq(send_named(OP_DROP, "nulx#other"), CQR_EINVAL);
    ck_assert_uint_eq(n_tables(), 1);
    ck_assert_int_eq(send_named(OP_DROP, "nulx"), 0);
    ck_assert_uint_eq(n_tables(), 0);
}
END_TEST

/* Every operation that names a table refuses the same bad names with
 * INVALID_ARGUMENT, even when a table of the prefix exists. */
START_TEST(test_every_op)
{
    ck_assert_int_eq(send_named(OP_CREATE, "nulx"), 0);
    char longest[CQR_NAME_MAX + 2];
    memset(longest, 'a', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0'; /* CQR_NAME_MAX + 1 bytes */
    const char *bad[] = {
        "nulx#", "nulx#../evil", "#nulx", "nulx\x01", "nulx\n", "nulx\x7f",
        "nulx/..", "nulx x", "nulx\xc3\xa9", "", longest};
    for (int op = 0; op < OP_N; op++)
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            int st = send_named(op, bad[i]);
            if (st != CQR_EINVAL)
                ck_abort_msg("%s of bad name #%zu: status %d, want %d",
                             op_fields[op], i, st, CQR_EINVAL);
        }
    ck_assert_uint_eq(n_tables(), 1);
    /* The longest valid name works everywhere it should. */
    longest[CQR_NAME_MAX] = '\0';
    ck_assert_int_eq(send_named(OP_CREATE, longest), 0);
    ck_assert_int_eq(send_named(OP_DESCRIBE, longest), 0);
    ck_assert_int_eq(send_named(OP_LOOKUP, longest), 0);
    ck_assert_int_eq(send_named(OP_PUSH, longest), 0);
    ck_assert_int_eq(send_named(OP_DIGEST, longest), 0);
    ck_assert_int_eq(send_named(OP_DROP, longest), 0);
    /* A valid name that does not exist stays NOT_FOUND. */
    ck_assert_int_eq(send_named(OP_DESCRIBE, "nuly"), CQR_ENOTFOUND);
    ck_assert_int_eq(send_named(OP_DROP, "nuly"), CQR_ENOTFOUND);
}
END_TEST

/* A NUL in a string field other than a table name is refused too. */
START_TEST(test_nul_client_name)
{
    int rc;
    Response *r = rq_hello(&ctx, &sess, 1, "ok", NULL, NULL, &rc);
    ck_assert_int_eq(rq_status(r), 0);
    Cqrps__V1__Hello h = CQRPS__V1__HELLO__INIT;
    h.protocol_version = 1;
    h.client_name = (char *)"cli#ent";
    Request q = CQRPS__V1__REQUEST__INIT;
    q.op_case = CQRPS__V1__REQUEST__OP_HELLO;
    q.hello = &h;
    uint8_t buf[64];
    size_t n = cqrps__v1__request__pack(&q, buf);
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '#')
            buf[i] = 0;
    r = rq_raw(&ctx, &sess, buf, n, &rc);
    ck_assert_int_eq(r->status, -CQR_EINVAL);
    ck_assert_ptr_nonnull(strstr(r->message, "client_name"));
    rq_done(r);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("rpc_names");
    TCase *tc = tcase_create("names");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_nul_create_drop);
    tcase_add_test(tc, test_every_op);
    tcase_add_test(tc, test_nul_client_name);
    suite_add_tcase(s, tc);
    return s;
}
