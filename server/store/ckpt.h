/* ckpt.h -- persistence in the server: the restore at start, the
 * checkpoint thread, and the triggers that feed it.
 *
 * With --data-dir the server keeps its tables in a checkpoint store
 * (store.h, RocksDB). cqr_ckpt_open opens it and restores a generation
 * into the registry before the server listens: the newest one that
 * loads (damaged newer ones are skipped, each with an error line), or
 * exactly --restore-generation. If generations exist but none loads, the
 * server refuses to start unless --allow-empty-restore says to start
 * empty; it never starts empty silently. The restored generation is
 * checked against the store's acknowledgement record: an acknowledged
 * generation that is present but damaged is an error line (and the
 * server starts from the older one); one that vanished without a trace
 * is an error line and a refusal to start, unless
 * --accept-older-generation (which then rewrites the record). Both set
 * ckpt_stats.restore_missing.
 *
 * A failed checkpoint is retried by the thread itself after 1 s, then
 * after twice as long each time, at most 60 s apart, until one succeeds
 * (the store reopens RocksDB first, store.h); ckpt_stats.failing counts
 * the failures in a row meanwhile (/readyz, metrics). A failed shutdown
 * checkpoint logs how much acknowledged work is not on disk and makes
 * cqr_ckpt_close report it (exit status 1).
 *
 * Checkpoints run on one dedicated thread, one at a time, never on an I/O
 * thread or the main loop. Triggers: the Checkpoint RPC (its reply is
 * deferred until the checkpoint is durable, rpc.h), the periodic timer of
 * main.c (cqr_ckpt_request), every cluster phase (before it runs and
 * after its commit, --checkpoint-on-phase), and the shutdown hook
 * (--checkpoint-on-exit). A request that arrives while a checkpoint runs
 * is queued for the next one, and every request queued meanwhile shares
 * it: a checkpoint that began before a request could miss pushes
 * acknowledged before it, so a request is only ever answered by a
 * checkpoint that started after it arrived, and its generation holds
 * every push acknowledged before the request was sent.
 *
 * Serving goes on during a checkpoint: lookups never wait, pushes to a
 * table wait only for the copy of its changed pages (persist.h). Each
 * checkpoint logs its generation, bytes, duration (export, write, sync,
 * retention) and the push pause of every table, and records itself in
 * ctx->ckpt_stats (Stats, /metrics). Retention (--checkpoint-keep) runs
 * after each checkpoint.
 *
 * Threading: open and close on the main thread, before the listener and
 * after the I/O threads and phases stopped; cqr_ckpt_request and the
 * installed hooks from any thread. The store is used by one thread at a
 * time (open, then the checkpoint thread); waiters are called on the
 * checkpoint thread.
 *
 * Ownership: the checkpointer owns its store and thread; it borrows the
 * server context and the config, which must outlive it (until
 * cqr_ckpt_close returns). Restored tables go into ctx->reg and belong to
 * the registry; a checkpoint holds registry references to the tables only
 * for its own duration.
 *
 * Errors: 0 or a negative CQR_E* code (err.h). Every failure is also
 * logged ("ckpt" module) with its reason; a failed checkpoint leaves the
 * previous generation the latest and is counted in ctx->ckpt_stats.
 */
#ifndef CQR_CKPT_H
#define CQR_CKPT_H

#include "ops/config.h"
#include "rpc/server.h"
#include "tables/registry.h"

typedef struct cqr_ckpt cqr_ckpt_t;

/* Opens cfg->data_dir, restores into ctx->reg (logging what it restored),
 * starts the checkpoint thread and installs ctx->ckpt and the phase hook.
 * Records the restored generation in ctx->ckpt_stats. On failure logs a
 * clear reason, leaves nothing running and returns CQR_EIO, CQR_ECORRUPT,
 * CQR_ENOTFOUND, CQR_EVERSION, CQR_ELIMIT or CQR_ENOMEM (the server must
 * not start). */
int cqr_ckpt_open(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                  cqr_ckpt_t **out);

/* Asks for a checkpoint without waiting for it (the periodic timer).
 * `reason` is a static string for the log. */
void cqr_ckpt_request(cqr_ckpt_t *ck, const char *reason);

/* Removes the hooks, lets a queued checkpoint finish, stops the thread
 * and closes the store. Later requests fail with CQR_ESHUTDOWN. Returns
 * CQR_EIO if the shutdown checkpoint failed (acknowledged work is not on
 * disk: the server's exit status must say so), else 0. NULL is a no-op. */
int cqr_ckpt_close(cqr_ckpt_t *ck);

#endif
