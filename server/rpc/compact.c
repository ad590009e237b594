/* compact.c -- the Compact operation (admin): a cqr table's known IDs
 * move from its map into a static set (tables/compact.h), on a thread of
 * their own; the reply is deferred until the compaction is done
 * (server.h, Deferred replies), so lookups and pushes on every
 * connection, this one's earlier requests included, go on meanwhile. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "rpc/call.h"
#include "rpc/server.h"
#include "tables/compact.h"

void cqr_call_compact_reply(Cqrps__V1__CompactReply *r,
                            const cqr_compact_res_t *res)
{
    cqrps__v1__compact_reply__init(r);
    r->moved_ids = res->moved_ids;
    r->known_ids = res->known_ids;
    r->static_ids = res->static_ids;
    r->index_bytes = res->index_bytes;
    r->seconds = res->seconds;
}

/* The compaction thread, at its end: the reply goes out in its place. */
static void compact_done(void *ud, int rc, const cqr_compact_res_t *res,
                         const char *msg)
{
    cqr_rpc_compact_done(ud, rc, res, msg);
}

/* Reserves the reply's place and starts the compaction; from then on
 * every outcome is answered through d. */
static int defer_compact(cqr_call_t *c)
{
    cqr_deferred_t *d;
    int rc = cqr_call_defer(
        c, (uint32_t)CQRPS__V1__REQUEST__OP_COMPACT - 10u, "compaction", &d);
    if (rc != 0)
        return rc;
    char why[256] = "";
    rc = cqr_compacts_start(c->ctx->compacts, c->entry, "request",
                            compact_done, d, why, sizeof why);
    if (rc != 0)
        cqr_rpc_compact_done(d, rc, NULL, why);
    return 0;
}

int cqr_op_compact(cqr_call_t *c, const Cqrps__V1__Compact *m)
{
    if (!c->sess->admin)
        return cqr_call_fail(c, CQR_EPERM, "this operation needs the admin "
                             "token");
    int rc = cqr_call_table(c, m->table);
    if (rc != 0)
        return rc;
    cqr_entry_t *e = c->entry;
    /* The refusals that need no thread are answered at once. */
    rc = cqr_compact_check(e, c->msg, sizeof c->msg);
    if (rc != 0)
        return rc;
    cqr_table_stats_t st;
    cqr_table_stats(e->table, &st);
    if (st.phase_running)
        return cqr_call_fail(c, CQR_EBUSY, "a cluster phase of table '%s' "
                             "is running; compact when it is done",
                             e->name);
    if (c->sess->defer != NULL)
        return defer_compact(c);
    cqr_compact_res_t res;
    rc = cqr_compacts_run(c->ctx->compacts, e, "request", &res, c->msg,
                          sizeof c->msg);
    if (rc != 0)
        return rc;
    cqr_call_compact_reply(&c->r.compact, &res);
    c->resp.reply_case = CQRPS__V1__RESPONSE__REPLY_COMPACTED;
    c->resp.compacted = &c->r.compact;
    return 0;
}
