/* export.c -- cqrps_export: asks the server for a serving export and
 * fetches it in chunks (cqrps.h, "Serving exports"). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "cqrps.pb-c.h"
#include "engine/hash.h"

typedef Cqrps__V1__Request req_t;
typedef Cqrps__V1__Response resp_t;

/* Bytes asked per ExportRead (the server's chunk). */
#define CHUNK (1u << 20)

static int send_export(cqrps_client_t *c, const char *table,
                       const cqrps_export_opts_t *o, cqrps_export_info_t *in,
                       uint64_t *checksum)
{
    Cqrps__V1__Export msg = CQRPS__V1__EXPORT__INIT;
    msg.table = (char *)table;
    msg.generation = o ? o->generation : 0;
    msg.since = o ? o->since : 0;
    msg.dtype = (char *)(o && o->dtype ? o->dtype : "");
    req_t req = CQRPS__V1__REQUEST__INIT;
    req.op_case = CQRPS__V1__REQUEST__OP_EXPORT_TABLE;
    req.export_table = &msg;
    cq_op_t *op;
    /* A large export takes a while. */
    int rc = cq_rpc(c, &req, CQ_RPC_UNTIMED, NULL, &op);
    const resp_t *r = rc == 0 ? op->resp[0] : NULL;
    if (rc == 0 && (!r || r->reply_case != CQRPS__V1__RESPONSE__REPLY_EXPORTED ||
                    !r->exported || !r->exported->file))
        rc = cq_fail(&c->net, CQRPS_EPROTO, "export reply lacks its result");
    if (rc == 0) {
        const Cqrps__V1__ExportReply *x = r->exported;
        in->generation = x->generation;
        in->base_generation = x->base_generation;
        in->bytes = x->bytes;
        in->ids = x->ids;
        in->build_seconds = x->seconds;
        snprintf(in->file, sizeof in->file, "%s", x->file);
        *checksum = x->checksum;
    }
    cq_op_free(op);
    return rc;
}

/* Reads one chunk at off into fd; *got gets its bytes. */
static int fetch_chunk(cqrps_client_t *c, const char *file, uint64_t off,
                       uint64_t total, int fd, XXH3_state_t *st, size_t *got)
{
    Cqrps__V1__ExportRead msg = CQRPS__V1__EXPORT_READ__INIT;
    msg.file = (char *)file;
    msg.offset = off;
    msg.max_bytes = CHUNK;
    req_t req = CQRPS__V1__REQUEST__INIT;
    req.op_case = CQRPS__V1__REQUEST__OP_EXPORT_READ;
    req.export_read = &msg;
    cq_op_t *op;
    int rc = cq_rpc(c, &req, CQ_RPC_RETRY, NULL, &op);
    const resp_t *r = rc == 0 ? op->resp[0] : NULL;
    if (rc == 0 &&
        (!r || r->reply_case != CQRPS__V1__RESPONSE__REPLY_EXPORT_CHUNK ||
         !r->export_chunk || r->export_chunk->offset != off ||
         r->export_chunk->total_bytes != total ||
         r->export_chunk->data.len == 0 ||
         r->export_chunk->data.len > total - off))
        rc = cq_fail(&c->net, CQRPS_EPROTO, "export chunk at %llu does not "
                     "fit the file (it changed on the server?)",
                     (unsigned long long)off);
    if (rc == 0) {
        const uint8_t *p = r->export_chunk->data.data;
        size_t n = r->export_chunk->data.len;
        XXH3_64bits_update(st, p, n);
        *got = n;
        while (n && rc == 0) {
            ssize_t w = write(fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                rc = cq_fail(&c->net, CQRPS_EIO, "cannot write the export: "
                             "%s", strerror(errno));
            else {
                p += w;
                n -= (size_t)w;
            }
        }
    }
    cq_op_free(op);
    return rc;
}

static int fetch(cqrps_client_t *c, const cqrps_export_opts_t *opts,
                 const cqrps_export_info_t *in, uint64_t checksum,
                 const char *out_path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", out_path) >= (int)sizeof tmp)
        return cq_fail(&c->net, CQRPS_EINVAL, "output path too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return cq_fail(&c->net, CQRPS_EIO, "cannot create %s: %s", tmp,
                       strerror(errno));
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    int rc = 0;
    for (uint64_t off = 0; rc == 0 && off < in->bytes;) {
        size_t got = 0;
        rc = fetch_chunk(c, in->file, off, in->bytes, fd, &st, &got);
        off += got;
        if (rc == 0 && opts && opts->progress &&
            opts->progress(opts->progress_ud, off, in->bytes))
            rc = cq_fail(&c->net, CQRPS_ECANCELED, "export fetch stopped "
                         "at %llu of %llu bytes",
                         (unsigned long long)off,
                         (unsigned long long)in->bytes);
    }
    if (rc == 0 && XXH3_64bits_digest(&st) != checksum)
        rc = cq_fail(&c->net, CQRPS_ECORRUPT, "the fetched export does not "
                     "match the server's checksum");
    if (rc == 0 && fsync(fd) != 0)
        rc = cq_fail(&c->net, CQRPS_EIO, "cannot sync %s: %s", tmp,
                     strerror(errno));
    if (close(fd) != 0 && rc == 0)
        rc = cq_fail(&c->net, CQRPS_EIO, "cannot close %s", tmp);
    if (rc == 0 && rename(tmp, out_path) != 0)
        rc = cq_fail(&c->net, CQRPS_EIO, "cannot rename %s: %s", tmp,
                     strerror(errno));
    if (rc != 0)
        unlink(tmp);
    return rc;
}

int cqrps_export(cqrps_client_t *c, const char *table,
                 const cqrps_export_opts_t *opts, const char *out_path,
                 cqrps_export_info_t *info)
{
    if (!c || !out_path)
        return CQRPS_EINVAL;
    int rc = cq_check_name(c, table);
    if (rc < 0)
        return rc;
    if (c->net.nconns > 1)
        return cq_fail(&c->net, CQRPS_EUNSUPPORTED, "export one shard at a "
                       "time (a client of that shard's address)");
    cqrps_export_info_t in;
    memset(&in, 0, sizeof in);
    uint64_t checksum = 0;
    rc = send_export(c, table, opts, &in, &checksum);
    if (rc == 0)
        rc = fetch(c, opts, &in, checksum, out_path);
    if (rc == 0 && info)
        *info = in;
    return rc;
}
