/* shard.h -- address lists (never installed; the layers are listed in
 * op.h). The ID-to-shard map itself is public: cqrps_shard_of in cqrps.h.
 *
 * Threading: one thread at a time (the one using the client).
 * Errors: 0 or CQRPS_EINVAL / CQRPS_ENOMEM with a message naming the bad
 * item in net->last_error.
 */
#ifndef CQ_SHARD_H
#define CQ_SHARD_H

#include "conn.h"

/* Splits "h1:p1,h2:p2" (host:port or [v6]:port items, blanks around an
 * item ignored, no duplicates) into one unconnected connection per item,
 * in order: net is set up by cq_net_init and must be freed with
 * cq_net_free even on error. */
int cq_parse_addrs(cq_net_t *net, const char *addrs);

#endif
