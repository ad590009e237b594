/* multi.c -- multi-table lookups and pushes (cqrps.h, "Several tables in
 * one request").
 *
 * FIRST VERSION: one single-table call per part, so that the API can be
 * built upon while the multi-part protocol is being written; bfloat16 is
 * emulated by rounding on the client. The same layer as data.c.
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "proto/bf16.h"

static int check_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                       size_t nparts, unsigned flags)
{
    if (!c)
        return CQRPS_EINVAL;
    if (flags & ~CQRPS_BF16)
        return cq_fail(&c->net, CQRPS_EINVAL, "unknown flags 0x%x",
                       flags & ~CQRPS_BF16);
    if (nparts && !parts)
        return cq_fail(&c->net, CQRPS_EINVAL, "parts is NULL");
    return 0;
}

static int part_dim(cqrps_client_t *c, const cqrps_part_t *p, uint32_t *dim)
{
    return cqrps_table_dim(c, p->table, dim);
}

static int lookup_loop(cqrps_client_t *c, const cqrps_part_t *parts,
                       size_t nparts, unsigned flags)
{
    int rc = check_multi(c, parts, nparts, flags);
    for (size_t i = 0; rc == 0 && i < nparts; i++) {
        const cqrps_part_t *p = &parts[i];
        if (p->offsets)
            rc = cqrps_lookup_pooled(c, p->table, p->ids, p->n, p->offsets,
                                     p->nbags, p->pooling, p->out);
        else
            rc = cqrps_lookup(c, p->table, p->ids, p->n, p->out);
        size_t rows = p->offsets ? p->nbags : p->n;
        uint32_t dim = 0;
        if (rc == 0 && (flags & CQRPS_BF16) && rows)
            rc = part_dim(c, p, &dim);
        if (rc == 0 && (flags & CQRPS_BF16) && rows)
            cqr_bf16_round(p->out, rows * dim);
    }
    return rc;
}

static int push_loop(cqrps_client_t *c, const cqrps_part_t *parts,
                     size_t nparts, unsigned flags)
{
    int rc = check_multi(c, parts, nparts, flags);
    for (size_t i = 0; rc == 0 && i < nparts; i++) {
        const cqrps_part_t *p = &parts[i];
        size_t rows = p->offsets ? p->nbags : p->n;
        const float *g = p->grads;
        float *copy = NULL;
        uint32_t dim = 0;
        if ((flags & CQRPS_BF16) && rows && g) {
            rc = part_dim(c, p, &dim);
            if (rc < 0)
                break;
            copy = malloc(rows * dim * sizeof(float));
            if (!copy)
                return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
            memcpy(copy, g, rows * dim * sizeof(float));
            cqr_bf16_round(copy, rows * dim);
            g = copy;
        }
        if (p->offsets)
            rc = cqrps_push_pooled(c, p->table, p->ids, p->n, p->offsets,
                                   p->nbags, p->pooling, g);
        else
            rc = cqrps_push(c, p->table, p->ids, g, p->n);
        free(copy);
    }
    return rc;
}

int cqrps_lookup_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                       size_t nparts, unsigned flags)
{
    return lookup_loop(c, parts, nparts, flags);
}

int cqrps_push_multi(cqrps_client_t *c, const cqrps_part_t *parts,
                     size_t nparts, unsigned flags)
{
    return push_loop(c, parts, nparts, flags);
}

/* The first version runs the call at once; the ticket only carries its
 * result to cqrps_wait. */
static int done_ticket(cqrps_client_t *c, int rc, cqrps_ticket_t *ticket)
{
    if (!c || !ticket)
        return CQRPS_EINVAL;
    *ticket = 0;
    cq_op_t *op = cq_op_new(CQ_O_DATA, NULL, c->net.nconns);
    if (!op)
        return cq_fail(&c->net, CQRPS_ENOMEM, "out of memory");
    if (rc < 0)
        cq_op_error(op, rc, "%s", c->net.last_error);
    op->ticket = c->next_ticket++;
    op->next = c->tickets;
    c->tickets = op;
    *ticket = op->ticket;
    return 0;
}

int cqrps_lookup_multi_start(cqrps_client_t *c, const cqrps_part_t *parts,
                             size_t nparts, unsigned flags,
                             cqrps_ticket_t *ticket)
{
    if (!c || !ticket)
        return CQRPS_EINVAL;
    return done_ticket(c, lookup_loop(c, parts, nparts, flags), ticket);
}

int cqrps_push_multi_start(cqrps_client_t *c, const cqrps_part_t *parts,
                           size_t nparts, unsigned flags,
                           cqrps_ticket_t *ticket)
{
    if (!c || !ticket)
        return CQRPS_EINVAL;
    return done_ticket(c, push_loop(c, parts, nparts, flags), ticket);
}
