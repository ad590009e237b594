/* export.c -- the Export and ExportRead operations: serving exports are
 * built by the persistence side (store/export.h) off the I/O threads and
 * fetched in chunks (proto/cqrps.proto says why). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/model.h"
#include "ops/opstats.h"
#include "rpc/call.h"
#include "rpc/server.h"

#define NO_EXPORT_MSG "exports need a server started with --data-dir " \
                      "(an export is a checkpoint generation)"

/* Chunk bytes of an ExportRead: well under the smallest frame limit. */
#define EXPORT_CHUNK (1u << 20)

void cqr_call_export_reply(Cqrps__V1__ExportReply *r,
                           const cqr_export_res_t *res)
{
    cqrps__v1__export_reply__init(r);
    r->file = (char *)res->file;
    r->generation = res->generation;
    r->base_generation = res->base_generation;
    r->bytes = res->bytes;
    r->ids = res->ids;
    r->seconds = res->seconds;
    r->checksum = res->checksum;
}

static int need_admin(cqr_call_t *c)
{
    if (c->sess->admin)
        return 0;
    return cqr_call_fail(c, CQR_EPERM, "this operation needs the admin token");
}

/* Hands the export to its thread; the connection sends the reply in its
 * place when it finishes (server.h, Deferred replies). */
static int defer_export(cqr_call_t *c, const cqr_export_req_t *req)
{
    cqr_deferred_t *d;
    int rc = cqr_call_defer(
        c, (uint32_t)CQRPS__V1__REQUEST__OP_EXPORT_TABLE - 10u, "export", &d);
    if (rc != 0)
        return rc;
    cqr_server_ctx_t *ctx = c->ctx;
    rc = ctx->exp.build_async(ctx->exp.ud, req, d);
    if (rc != 0)
        cqr_rpc_export_done(d, rc, NULL, "cannot start the export");
    return 0;
}

int cqr_op_export(cqr_call_t *c, const Cqrps__V1__Export *m)
{
    cqr_server_ctx_t *ctx = c->ctx;
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    rc = cqr_call_name(c, m->table);
    if (rc != 0)
        return rc;
    cqr_export_req_t req;
    memset(&req, 0, sizeof req);
    snprintf(req.table, sizeof req.table, "%s", m->table);
    req.generation = m->generation;
    req.since = m->since;
    cqr_dtype_t dt = CQR_DTYPE_F32;
    if (m->dtype && m->dtype[0] && cqr_dtype_parse(m->dtype, &dt) != 0)
        return cqr_call_fail(c, CQR_EINVAL, "dtype must be f32, f16 or int8");
    req.dtype = dt;
    if (req.since && req.generation && req.since >= req.generation)
        return cqr_call_fail(c, CQR_EINVAL, "since must be older than the "
                             "generation exported");
    if (ctx->exp.build == NULL)
        return cqr_call_fail(c, CQR_EUNSUPPORTED, NO_EXPORT_MSG);
    if (ctx->exp.build_async != NULL && c->sess->defer != NULL)
        return defer_export(c, &req);
    cqr_export_res_t *res = calloc(1, sizeof *res);
    if (res == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, res);
    rc = ctx->exp.build(ctx->exp.ud, &req, res, c->msg, sizeof c->msg);
    if (rc != 0)
        return rc;
    cqr_call_export_reply(&c->r.exp, res);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_EXPORTED;
    c->resp.exported = &c->r.exp;
    return 0;
}

int cqr_op_export_read(cqr_call_t *c, const Cqrps__V1__ExportRead *m)
{
    cqr_server_ctx_t *ctx = c->ctx;
    int rc = need_admin(c);
    if (rc != 0)
        return rc;
    if (ctx->exp.read == NULL)
        return cqr_call_fail(c, CQR_EUNSUPPORTED, NO_EXPORT_MSG);
    size_t n = m->max_bytes && m->max_bytes < EXPORT_CHUNK ? m->max_bytes
                                                            : EXPORT_CHUNK;
    uint8_t *buf = malloc(n);
    if (buf == NULL)
        return cqr_call_fail(c, CQR_ENOMEM, "out of memory");
    cqr_call_keep(c, buf);
    uint64_t total = 0;
    rc = ctx->exp.read(ctx->exp.ud, m->file ? m->file : "", m->offset, buf,
                       &n, &total, c->msg, sizeof c->msg);
    if (rc != 0)
        return rc;
    Cqrps__V1__ExportChunk *r = &c->r.chunk;
    cqrps__v1__export_chunk__init(r);
    r->data.data = buf;
    r->data.len = n;
    r->offset = m->offset;
    r->total_bytes = total;
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_EXPORT_CHUNK;
    c->resp.export_chunk = r;
    return 0;
}
