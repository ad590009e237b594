/* shard.c -- address lists and the ID-to-shard map.
 *
 * IDs go to shards by jump consistent hash (Lamping and Veach, 2014) of a
 * 64-bit mix of the ID: uniform, no table to keep, and when a shard is
 * added at the end of the list only 1/n of the IDs move. The mix
 * (splitmix64's finaliser) matters because hashed feature IDs are often
 * small or sequential, and jump hash's LCG mixes low-entropy keys poorly
 * in its first steps. It is the engine's one mixer (cqr_mix64 in
 * server/engine/hash.h, header-only), so placement and the server's
 * hashing share one definition.
 */
#include "shard.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "engine/hash.h"

uint32_t cqrps_shard_of(uint64_t id, uint32_t nshards)
{
    if (nshards <= 1)
        return 0;
    uint64_t key = cqr_mix64(id);
    int64_t b = -1, j = 0;
    while (j < (int64_t)nshards) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) *
                      ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (uint32_t)b;
}

/* Parses one "host:port" / "[v6]:port" item of length len into conn. */
static int parse_one(cq_net_t *net, const char *s, size_t len,
                     cq_conn_t *conn)
{
    while (len && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0)
        return cq_fail(net, CQRPS_EINVAL, "empty address in the list");
    if (len >= sizeof(conn->addr))
        return cq_fail(net, CQRPS_EINVAL, "address too long: %.40s...", s);
    memcpy(conn->addr, s, len);
    conn->addr[len] = '\0';

    const char *host, *colon;
    size_t hlen;
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (!rb || rb + 1 >= s + len || rb[1] != ':')
            return cq_fail(net, CQRPS_EINVAL,
                           "bad address '%s': expected [v6addr]:port",
                           conn->addr);
        host = s + 1;
        hlen = (size_t)(rb - host);
        colon = rb + 1;
    } else {
        colon = NULL;
        for (const char *p = s; p < s + len; p++)
            if (*p == ':')
                colon = p;
        if (!colon)
            return cq_fail(net, CQRPS_EINVAL,
                           "bad address '%s': expected host:port", conn->addr);
        host = s;
        hlen = (size_t)(colon - s);
        if (memchr(host, ':', hlen))
            return cq_fail(net, CQRPS_EINVAL,
                           "bad address '%s': put an IPv6 address in "
                           "brackets", conn->addr);
    }
    if (hlen == 0 || hlen >= sizeof(conn->host))
        return cq_fail(net, CQRPS_EINVAL, "bad address '%s': no host",
                       conn->addr);
    memcpy(conn->host, host, hlen);
    conn->host[hlen] = '\0';

    const char *port = colon + 1;
    size_t plen = (size_t)(s + len - port);
    unsigned long v = 0;
    if (plen == 0 || plen > 5)
        goto bad_port;
    for (size_t i = 0; i < plen; i++) {
        if (!isdigit((unsigned char)port[i]))
            goto bad_port;
        v = v * 10 + (unsigned long)(port[i] - '0');
    }
    if (v == 0 || v > 65535)
        goto bad_port;
    snprintf(conn->port, sizeof(conn->port), "%lu", v);
    return 0;
bad_port:
    return cq_fail(net, CQRPS_EINVAL,
                   "bad address '%s': port must be 1..65535", conn->addr);
}

int cq_parse_addrs(cq_net_t *net, const char *addrs)
{
    if (!addrs || !*addrs)
        return cq_fail(net, CQRPS_EINVAL, "no server address given");
    uint32_t n = 1;
    for (const char *p = addrs; *p; p++)
        if (*p == ',')
            n++;
    if (n > 4096)
        return cq_fail(net, CQRPS_EINVAL, "too many addresses (%u)", n);
    int rc = cq_net_init(net, n);
    if (rc < 0)
        return rc;
    const char *p = addrs;
    for (uint32_t i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        rc = parse_one(net, p, len, &net->conns[i]);
        if (rc < 0)
            return rc;
        for (uint32_t k = 0; k < i; k++)
            if (strcmp(net->conns[k].addr, net->conns[i].addr) == 0)
                return cq_fail(net, CQRPS_EINVAL,
                               "address %s appears twice in the list",
                               net->conns[i].addr);
        p = end ? end + 1 : p + len;
    }
    return 0;
}
