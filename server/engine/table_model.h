/* table_model.h -- a table's serving export (model.h's format).
 *
 * Builds the export of a table as an image in memory: complete, or the
 * delta from an older state of the same table. The tables are meant to be
 * private copies (restored from checkpoint generations, store.h), so that
 * the export is one consistent generation and training never waits for
 * it; a live table also works (its lock is held shared while it is read,
 * so pushes may land between the rows read).
 *
 * Threading: may run concurrently with any call on the tables but
 * destroy. Errors: 0, CQR_EINVAL (the tables are not two states of one
 * table: kind, shape or seed differ), CQR_EUNSUPPORTED (a full table with
 * admit_after > 1 or ttl_seconds: its fallback and expired rows are not
 * in the format yet), CQR_ENOMEM; with a reason in why.
 */
#ifndef CQR_TABLE_MODEL_H
#define CQR_TABLE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

/* Exports t as generation `generation` in dtype (cqr_dtype_t); with
 * base non-NULL, as the delta from base (generation base_generation).
 * *img is malloc'd (model.h layout), *len its bytes. */
int cqr_table_model(cqr_table_t *t, cqr_table_t *base, uint32_t dtype,
                    uint64_t generation, uint64_t base_generation,
                    uint8_t **img, size_t *len, char *why, size_t whylen);

struct cqr_model;

/* A table that looks up exactly what the full export m looks up (for a
 * float32 export: what the exported table returned), for serving it
 * read-only: the codebooks, seeds and known IDs of the export, decoded
 * to float32, and no optimizer state (plain SGD, never stepped: the
 * table is not meant to be pushed to). CQR_EINVAL for a delta,
 * CQR_ENOMEM; with a reason. */
int cqr_table_from_model(const struct cqr_model *m, cqr_table_t **out,
                         char *why, size_t whylen);

#endif
