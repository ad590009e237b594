/* export.h -- serving exports in the server: Export builds a table of a
 * checkpoint generation (or the delta between two) as a model.h file in
 * <data-dir>/exports/, ExportRead hands it out in chunks.
 *
 * Why from the store: an export must be one consistent generation and
 * must not stop training. Reading the generation's segments into a
 * private table (cqr_store_read_table) gives exactly that: the live
 * tables are not touched (lookups and pushes go on; only a checkpoint
 * waits for the store's mutex while the segments are read), and
 * `--since G` is a delta between two generations the store keeps. The
 * cost is memory: the table being exported exists once more (twice for a
 * delta) while it is built.
 *
 * Why a file in the data dir fetched in chunks: a remote operator gets
 * the file through the RPC (`cqrps export --out`), an operator on the
 * host (or --serve-dir) can use it in place, and a fetch interrupted
 * half-way can start again without building the export again.
 *
 * Threading: builds run one at a time on a thread of their own (a second
 * Export meanwhile gets CQR_EBUSY); reads run on the I/O thread that asks
 * (a pread of at most a chunk). Ownership: the exporter borrows the store
 * and the context; cqr_exporter_destroy waits for a running build.
 * Errors: 0 or a negative CQR_E* code with a one-line reason.
 */
#ifndef CQR_EXPORT_H
#define CQR_EXPORT_H

#include "rpc/server.h"
#include "store/store.h"

typedef struct cqr_exporter cqr_exporter_t;

/* Creates the exporter for the store of data_dir and installs ctx->exp.
 * CQR_ENOMEM. */
int cqr_exporter_create(cqr_server_ctx_t *ctx, cqr_store_t *store,
                        const char *data_dir, cqr_exporter_t **out);

/* Removes ctx->exp, waits for a running build, frees. NULL is a no-op. */
void cqr_exporter_destroy(cqr_exporter_t *e);

#endif
