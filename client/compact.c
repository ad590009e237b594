/* compact.c -- cqrps_compact: asks every shard to compact a cqr table
 * and waits for the replies (cqrps.h, "Compaction"). */
#include <string.h>

#include "client.h"
#include "cqrps.pb-c.h"

int cqrps_compact(cqrps_client_t *c, const char *table,
                  cqrps_compact_info_t *out)
{
    if (!c)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    Cqrps__V1__Compact msg = CQRPS__V1__COMPACT__INIT;
    msg.table = (char *)table;
    Cqrps__V1__Request req = CQRPS__V1__REQUEST__INIT;
    req.op_case = CQRPS__V1__REQUEST__OP_COMPACT;
    req.compact = &msg;
    cq_op_t *op;
    /* A compaction of 1e8 IDs takes about a minute and the server sends
     * nothing meanwhile. Not retried: a second request would only find
     * the table busy or compacted. */
    rc = cq_rpc(c, &req, CQ_RPC_ALL | CQ_RPC_UNTIMED, table, &op);
    cqrps_compact_info_t acc;
    memset(&acc, 0, sizeof acc);
    for (uint32_t s = 0; rc == 0 && s < c->net.nconns; s++) {
        const Cqrps__V1__Response *r = op->resp[s];
        if (!r || r->reply_case != CQRPS__V1__RESPONSE__REPLY_COMPACTED ||
            !r->compacted) {
            rc = cq_fail(&c->net, CQRPS_EPROTO, "reply from %s lacks its "
                         "result", c->net.conns[s].addr);
            break;
        }
        const Cqrps__V1__CompactReply *x = r->compacted;
        acc.moved_ids += x->moved_ids;
        acc.known_ids += x->known_ids;
        acc.static_ids += x->static_ids;
        acc.index_bytes += x->index_bytes;
        if (x->seconds > acc.seconds)
            acc.seconds = x->seconds;
    }
    if (rc == 0 && out)
        *out = acc;
    cq_op_free(op);
    return rc;
}
