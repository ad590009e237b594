/* shard.c -- address lists and the ID-to-shard map.
 *
 * IDs go to shards by jump consistent hash (Lamping and Veach, 2014) of a
 * 64-bit mix of the ID: uniform, no table to keep, and when a shard is
 * added at the end of the list only 1/n of the IDs move. The mix
 * (splitmix64's finaliser) matters because hashed feature IDs are often
 * small or sequential, and jump hash's LCG mixes low-entropy keys poorly
 * in its first steps.
 */
#include <ctype.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint32_t cqrps_shard_of(uint64_t id, uint32_t nshards)
{
    if (nshards <= 1)
        return 0;
    uint64_t key = mix64(id);
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
static int parse_one(cqrps_client_t *c, const char *s, size_t len,
                     cq_conn_t *conn)
{
    while (len && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0)
        return cq_fail(c, CQRPS_EINVAL, "empty address in the list");
    if (len >= sizeof(conn->addr))
        return cq_fail(c, CQRPS_EINVAL, "address too long: %.40s...", s);
    memcpy(conn->addr, s, len);
    conn->addr[len] = '\0';

    const char *host, *colon;
    size_t hlen;
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (!rb || rb + 1 >= s + len || rb[1] != ':')
            return cq_fail(c, CQRPS_EINVAL,
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
            return cq_fail(c, CQRPS_EINVAL,
                           "bad address '%s': expected host:port", conn->addr);
        host = s;
        hlen = (size_t)(colon - s);
        if (memchr(host, ':', hlen))
            return cq_fail(c, CQRPS_EINVAL,
                           "bad address '%s': put an IPv6 address in "
                           "brackets", conn->addr);
    }
    if (hlen == 0 || hlen >= sizeof(conn->host))
        return cq_fail(c, CQRPS_EINVAL, "bad address '%s': no host",
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
    return cq_fail(c, CQRPS_EINVAL, "bad address '%s': port must be 1..65535",
                   conn->addr);
}

int cq_parse_addrs(cqrps_client_t *c, const char *addrs)
{
    if (!addrs || !*addrs)
        return cq_fail(c, CQRPS_EINVAL, "no server address given");
    uint32_t n = 1;
    for (const char *p = addrs; *p; p++)
        if (*p == ',')
            n++;
    if (n > 4096)
        return cq_fail(c, CQRPS_EINVAL, "too many addresses (%u)", n);
    c->conns = calloc(n, sizeof(*c->conns));
    c->pfds = calloc(n, sizeof(*c->pfds));
    c->pconns = calloc(n, sizeof(*c->pconns));
    if (!c->conns || !c->pfds || !c->pconns)
        return cq_fail(c, CQRPS_ENOMEM, "out of memory");
    c->nconns = n;
    for (uint32_t i = 0; i < n; i++)
        cq_conn_init(&c->conns[i], i);
    const char *p = addrs;
    for (uint32_t i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int rc = parse_one(c, p, len, &c->conns[i]);
        if (rc < 0)
            return rc;
        for (uint32_t k = 0; k < i; k++)
            if (strcmp(c->conns[k].addr, c->conns[i].addr) == 0)
                return cq_fail(c, CQRPS_EINVAL,
                               "address %s appears twice in the list",
                               c->conns[i].addr);
        p = end ? end + 1 : p + len;
    }
    return 0;
}
