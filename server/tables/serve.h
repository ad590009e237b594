/* serve.h -- the read-only serving mode: `cqrps-server --serve FILE,...`
 * or `--serve-dir DIR` answers lookups from exports (engine/model.h).
 *
 * Each export becomes a table of the registry (cqr_table_from_model: the
 * export's codebooks, seeds and known IDs, no optimizer state), so every
 * lookup path of the server (plain, pooled, multi-table, bf16, the engine
 * helpers) serves it unchanged and looks up exactly what the export does.
 * Writes (Push, Create, Drop, Cluster, Checkpoint, UpdateOptimizer,
 * Export) answer READ_ONLY (ctx->read_only, rpc.c).
 *
 * Table names: an exporter's file name `TABLE.gGEN[.fromBASE].DTYPE.cqrm`
 * serves as TABLE; any other `NAME.cqrm` as NAME.
 * --serve FILE,...: the files; a file that changes (size, time, inode:
 *   a new export renamed over it) is loaded again.
 * --serve-dir DIR: per table the newest full export, with every delta
 *   that continues its chain applied (a delta whose base is the
 *   generation reached so far; the newest such first), so dropping a
 *   delta or a newer full export into DIR moves the table on.
 * The directory and files are checked every --serve-poll-ms and at
 * SIGHUP (cqr_serve_reload). A reload builds the new table beside the old
 * one and swaps it into the registry in one step
 * (cqr_registry_replace): requests in flight finish on the old table,
 * which its last reference frees; none fails and no connection drops. A
 * file that does not load (damaged, truncated, half-written) is logged
 * and the table keeps serving what it served.
 *
 * Threading: reloads run on the serve thread, one at a time; open and
 * close on the main thread; cqr_serve_reload from any thread (a signal
 * callback of the main loop). Errors: 0 or a negative CQR_E*; failures
 * are logged ("serve" module).
 */
#ifndef CQR_SERVE_H
#define CQR_SERVE_H

#include "ops/config.h"
#include "rpc/server.h"

typedef struct cqr_serve cqr_serve_t;

/* Loads the exports of cfg->serve / cfg->serve_dir into ctx->reg, marks
 * the server read-only and starts the serve thread. A --serve file that
 * does not load fails the start (CQR_ECORRUPT, CQR_EIO, ...); in
 * --serve-dir a table that does not load is logged and skipped. */
int cqr_serve_open(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                   cqr_serve_t **out);

/* Asks the serve thread to load everything again (SIGHUP). */
void cqr_serve_reload(cqr_serve_t *sv);

/* Stops the serve thread. NULL is a no-op. */
void cqr_serve_close(cqr_serve_t *sv);

#endif
