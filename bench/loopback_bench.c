/* loopback_bench.c -- the physical limit: raw loopback TCP on this machine.
 *
 * Two threads of one process and one TCP connection on 127.0.0.1, no
 * framing library, no copies beyond the kernel's:
 *   stream  the sender writes payloads of --batch x --dim float32 bytes
 *           back to back; the receiver reads them. Bytes/s is the most a
 *           server could push through one connection.
 *   rpc     request/response shaped like a lookup: the client writes a
 *           4-byte length and --batch x 8 bytes of IDs, the server thread
 *           reads them and writes a 4-byte length and --batch x --dim x 4
 *           bytes back; --depth requests in flight. Gives the best
 *           per-batch latency and embeddings/s a lookup protocol can get.
 *
 * Output like the other benchmarks: progress and a summary on stderr, with
 * --json one JSON line on stdout (emb_per_s counts payload rows).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_common.h"

#define PROG "loopback-bench"

typedef struct opts {
    const char *mode; /* stream or rpc */
    uint32_t dim;     /* floats per row */
    uint32_t batch;   /* rows per payload */
    uint32_t depth;   /* rpc: requests in flight */
    double seconds;   /* duration */
    int json;         /* print a JSON line */
} opts_t;

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* A connected pair of loopback TCP sockets (fds[0] client, fds[1]
 * server). */
static int tcp_pair(int fds[2])
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&a, &al)) {
        close(ls);
        return -1;
    }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) {
        close(ls);
        if (c >= 0)
            close(c);
        return -1;
    }
    int s = accept(ls, NULL, NULL);
    close(ls);
    if (s < 0) {
        close(c);
        return -1;
    }
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fds[0] = c;
    fds[1] = s;
    return 0;
}

typedef struct peer {
    int fd;             /* its socket */
    const opts_t *o;    /* options */
    double t_end;       /* stream sender: stop time */
    uint64_t bytes;     /* bytes moved */
} peer_t;

/* stream: the sender writes payloads until t_end, then closes. */
static void *stream_sender(void *arg)
{
    peer_t *p = arg;
    size_t len = (size_t)p->o->batch * p->o->dim * 4;
    char *buf = calloc(1, len);
    if (!buf)
        return NULL;
    while (bench_now() < p->t_end) {
        if (write_all(p->fd, buf, len))
            break;
        p->bytes += len;
    }
    shutdown(p->fd, SHUT_WR);
    free(buf);
    return NULL;
}

/* rpc: the server thread answers each request with a payload. */
static void *rpc_server(void *arg)
{
    peer_t *p = arg;
    size_t rlen = (size_t)p->o->batch * 8;
    size_t plen = (size_t)p->o->batch * p->o->dim * 4;
    char *req = malloc(rlen);
    char *rep = calloc(1, 4 + plen);
    if (!req || !rep)
        goto out;
    uint32_t nl = htonl((uint32_t)plen);
    memcpy(rep, &nl, 4);
    for (;;) {
        uint32_t hl;
        if (read_all(p->fd, &hl, 4) || ntohl(hl) != rlen ||
            read_all(p->fd, req, rlen))
            break;
        if (write_all(p->fd, rep, 4 + plen))
            break;
        p->bytes += 4 + plen;
    }
out:
    free(req);
    free(rep);
    return NULL;
}

static void report(const opts_t *o, double el, uint64_t bytes,
                   uint64_t batches, bench_lat_t *lat)
{
    double gbs = (double)bytes / el / 1e9;
    double emb = (double)batches * o->batch / el;
    bench_lat_sort(lat);
    double p50 = bench_lat_pct(lat, 0.5), p99 = bench_lat_pct(lat, 0.99),
           p999 = bench_lat_pct(lat, 0.999);
    bench_log(PROG,
              "%s dim=%u batch=%u depth=%u: %.3f GB/s, %.3f M emb/s of "
              "payload, p50 %.1f us p99 %.1f us p999 %.1f us",
              o->mode, o->dim, o->batch, o->depth, gbs, emb / 1e6, p50, p99,
              p999);
    if (o->json)
        printf("{\"bench\":\"loopback\",\"op\":\"%s\",\"dim\":%u,"
               "\"batch\":%u,\"depth\":%u,\"conns\":1,\"seconds\":%.3f,"
               "\"gb_per_s\":%.4f,\"emb_per_s\":%.1f,\"mb_per_s\":%.2f,"
               "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
               "\"blas_core\":\"%s\"}\n",
               o->mode, o->dim, o->batch, o->depth, el, gbs, emb,
               emb * o->dim * 4 / 1e6, p50, p99, p999, bench_blas_core());
}

static int run_stream(const opts_t *o, int fds[2])
{
    size_t len = (size_t)o->batch * o->dim * 4;
    char *buf = malloc(len);
    if (!buf)
        return -1;
    peer_t snd = {.fd = fds[1], .o = o};
    double t0 = bench_now();
    snd.t_end = t0 + o->seconds;
    pthread_t th;
    pthread_create(&th, NULL, stream_sender, &snd);
    uint64_t bytes = 0;
    bench_lat_t lat = {0};
    /* Receive whole payloads; a "batch latency" here is the time to read
     * one payload's bytes. */
    for (;;) {
        double a = bench_now();
        if (read_all(fds[0], buf, len))
            break;
        bench_lat_add(&lat, (bench_now() - a) * 1e6);
        bytes += len;
    }
    double el = bench_now() - t0;
    pthread_join(th, NULL);
    report(o, el, bytes, bytes / len, &lat);
    bench_lat_free(&lat);
    free(buf);
    return 0;
}

static int run_rpc(const opts_t *o, int fds[2])
{
    size_t rlen = (size_t)o->batch * 8;
    size_t plen = (size_t)o->batch * o->dim * 4;
    char *req = calloc(1, 4 + rlen);
    char *rep = malloc(plen);
    double *sent = calloc(o->depth, sizeof *sent);
    if (!req || !rep || !sent) {
        free(req);
        free(rep);
        free(sent);
        return -1;
    }
    uint32_t nl = htonl((uint32_t)rlen);
    memcpy(req, &nl, 4);
    peer_t srv = {.fd = fds[1], .o = o};
    pthread_t th;
    pthread_create(&th, NULL, rpc_server, &srv);
    bench_lat_t lat = {0};
    uint64_t done = 0, issued = 0;
    double t0 = bench_now(), t_end = t0 + o->seconds;
    int rc = 0;
    /* Keep `depth` requests in flight; replies come back in order. */
    while (issued < o->depth) {
        sent[issued % o->depth] = bench_now();
        if (write_all(fds[0], req, 4 + rlen)) {
            rc = -1;
            break;
        }
        issued++;
    }
    while (!rc && done < issued) {
        uint32_t hl;
        if (read_all(fds[0], &hl, 4) || ntohl(hl) != plen ||
            read_all(fds[0], rep, plen)) {
            rc = -1;
            break;
        }
        double now = bench_now();
        bench_lat_add(&lat, (now - sent[done % o->depth]) * 1e6);
        done++;
        if (now < t_end) {
            sent[issued % o->depth] = now;
            if (write_all(fds[0], req, 4 + rlen)) {
                rc = -1;
                break;
            }
            issued++;
        }
    }
    double el = bench_now() - t0;
    shutdown(fds[0], SHUT_WR);
    pthread_join(th, NULL);
    if (!rc)
        report(o, el, done * (4 + plen), done, &lat);
    bench_lat_free(&lat);
    free(req);
    free(rep);
    free(sent);
    return rc;
}

int main(int argc, char **argv)
{
    opts_t o = {.mode = "stream", .dim = 64, .batch = 1024, .depth = 1,
                .seconds = 3.0};
    static const struct option lo[] = {
        {"mode", 1, 0, 'm'}, {"dim", 1, 0, 'd'}, {"batch", 1, 0, 'b'},
        {"depth", 1, 0, 'p'}, {"seconds", 1, 0, 's'}, {"json", 0, 0, 'j'},
        {0, 0, 0, 0}};
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'm': o.mode = optarg; break;
        case 'd': case 'b': case 'p':
            if (bench_parse_count(optarg, &v) || !v)
                goto usage;
            if (ch == 'd') o.dim = (uint32_t)v;
            if (ch == 'b') o.batch = (uint32_t)v;
            if (ch == 'p') o.depth = (uint32_t)v;
            break;
        case 's': o.seconds = atof(optarg); break;
        case 'j': o.json = 1; break;
        default: goto usage;
        }
    }
    bench_log(PROG, "OpenBLAS core: %s", bench_blas_core());
    int fds[2];
    if (tcp_pair(fds)) {
        bench_log(PROG, "loopback socket pair: %s", strerror(errno));
        return 1;
    }
    bench_log(PROG, "%s: %.1f s, payload %u x %u floats", o.mode, o.seconds,
              o.batch, o.dim);
    int rc;
    if (!strcmp(o.mode, "stream"))
        rc = run_stream(&o, fds);
    else if (!strcmp(o.mode, "rpc"))
        rc = run_rpc(&o, fds);
    else
        goto usage;
    close(fds[0]);
    close(fds[1]);
    fflush(stdout);
    return rc ? 1 : 0;
usage:
    fprintf(stderr, "usage: cqrps-loopback-bench [--mode stream|rpc] [--dim 64] "
                    "[--batch 1024] [--depth 1] [--seconds 3] [--json]\n");
    return 2;
}
