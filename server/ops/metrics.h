/* metrics.h -- the operations endpoint: Prometheus metrics, liveness and
 * readiness over HTTP (libmicrohttpd).
 *
 * Routes (GET or HEAD; anything else is 405, unknown paths 404):
 *   /metrics  Prometheus text exposition format 0.0.4 (metric names are
 *             listed in deploy/README.md): requests by operation and
 *             status, latency histograms per operation, bytes, connections,
 *             per-table IDs and memory, cluster phases, checkpoints,
 *             uptime, build info.
 *   /healthz  liveness: 200 "ok" while the main loop turns (and before it
 *             started or after a stop signal: a long restore or shutdown
 *             checkpoint is not a hang), 503 when its heartbeat is older
 *             than CQR_HEALTH_STALL_MS.
 *   /readyz   readiness: 200 "ready" only once the restore finished and
 *             the listener accepts; 503 with the reason before that,
 *             while the server stops (so a load balancer drains it) and
 *             while checkpoints fail (work acknowledged meanwhile is not
 *             on disk).
 *
 * The endpoint runs on libmicrohttpd's own thread, never on an I/O loop:
 * a scrape reads atomics and takes the registry's read lock and each
 * table's stats lock for a moment, like the Stats RPC. It has no
 * authentication and listens on loopback unless --metrics-listen names
 * another host (see config.h).
 *
 * Threading: start and stop from the main thread; the context must
 * outlive the endpoint. cqr_health_now_ms may run on any thread.
 */
#ifndef CQR_METRICS_H
#define CQR_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "ops/config.h"
#include "rpc/server.h"

/* A heartbeat older than this fails /healthz. */
#define CQR_HEALTH_STALL_MS 10000

typedef struct cqr_metrics cqr_metrics_t;

/* Binds addr (port 0 = any free port) and starts serving. On success
 * *out is the endpoint and bound[0..boundlen) the real address
 * ("127.0.0.1:9100"). Errors: CQR_EINVAL (cannot resolve), CQR_EIO
 * (cannot bind or start; logged with the reason). */
int cqr_metrics_start(cqr_server_ctx_t *ctx, const cqr_addr_t *addr,
                      cqr_metrics_t **out, char *bound, size_t boundlen);

/* Stops serving (waits for a running request) and frees m. NULL is a
 * no-op. */
void cqr_metrics_stop(cqr_metrics_t *m);

/* CLOCK_MONOTONIC in milliseconds (the heartbeat's clock). */
uint64_t cqr_health_now_ms(void);

#endif
