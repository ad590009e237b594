/* registry.h -- the server's tables by name, reference counted.
 *
 * An entry pairs a name with a table. Whoever uses a table holds a
 * reference to its entry (cqr_registry_get / cqr_entry_ref) and drops it
 * with cqr_entry_unref; the registry itself holds one reference while the
 * name is registered. Dropping a table only unregisters the name: the
 * table is destroyed by the last unref, so a lookup or a cluster phase
 * that is still using it finishes safely.
 *
 * Creating is two-step so that the (possibly large, slow) table
 * allocation runs without the registry lock, while the name, the table
 * count and the memory budget are still claimed atomically:
 * cqr_registry_reserve claims them (the entry is invisible to get and
 * list), then cqr_registry_publish makes it visible or
 * cqr_registry_cancel releases the claim.
 *
 * Memory budget (budget.h): each table's creation-time bytes
 * (cqr_table_config_bytes) count against max_bytes from reserve until the
 * table is destroyed (not merely dropped), so drop-and-recreate while a
 * phase still holds the old table cannot exceed the budget. From publish
 * on, the table also charges its growth (full rows, known-ID maps) to the
 * same budget (cqr_table_set_budget), so pushes of new IDs get
 * CQR_ELIMIT instead of taking the server past max_bytes.
 *
 * Threading: every function is safe from any thread. Lookups by name take
 * a read lock; reserve, publish, cancel and remove take the write lock.
 * cqr_registry_destroy must come after every other call and after every
 * reference other than the registry's own has been released.
 */
#ifndef CQR_REGISTRY_H
#define CQR_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/table.h"

/* Table names: 1..CQR_NAME_MAX bytes of [A-Za-z0-9_.-], so they are safe
 * in logs, file names (checkpoints) and metric labels. */
#define CQR_NAME_MAX 128

typedef struct cqr_registry cqr_registry_t;

typedef struct cqr_entry {
    char name[CQR_NAME_MAX + 1]; /* immutable */
    uint64_t uid;           /* unique for the server's life; a table that
                               is dropped and re-created gets a new one */
    cqr_table_t *table;     /* set by publish; NULL while reserved */
    uint64_t bytes;         /* creation-time bytes charged to the budget */
    atomic_uint refs;       /* references, the registry's included */
    cqr_registry_t *reg;    /* owner, for the budget refund on destroy */
    struct cqr_entry *next; /* hash chain; under the registry lock */
    int visible;            /* published and not removed; under the lock */
    uint64_t serving_generation; /* --serve: the export generation the
                                    table holds (immutable); 0 otherwise */
} cqr_entry_t;

/* A registry of at most max_tables tables and max_bytes of memory; its
 * tables share a pool of engine_threads helpers (par.h) for their large
 * lookups and pushes (0: none). */
int cqr_registry_create(uint32_t max_tables, uint64_t max_bytes,
                        uint32_t engine_threads, cqr_registry_t **out);

/* Unregisters every table and drops the registry's references; asserts
 * that this destroys every table (no reference leaked). */
void cqr_registry_destroy(cqr_registry_t *reg);

/* 0 if `name` is a valid table name, CQR_EINVAL otherwise. */
int cqr_registry_name_check(const char *name);

/* Claims `name`, one table slot and `bytes` of the budget. On success
 * *out is a reserved entry holding one reference for the caller, which
 * must then publish or cancel it. Errors: CQR_EINVAL (bad name), CQR_EEXIST
 * (name taken, also by a reservation in progress), CQR_ELIMIT (table count
 * or memory budget; `why` says which), CQR_ENOMEM. */
int cqr_registry_reserve(cqr_registry_t *reg, const char *name,
                         uint64_t bytes, cqr_entry_t **out, char *why,
                         size_t whylen);

/* Attaches the created table (ownership passes to the entry) and makes the
 * entry visible. The caller keeps its reference. */
void cqr_registry_publish(cqr_registry_t *reg, cqr_entry_t *e,
                          cqr_table_t *table);

/* Abandons a reservation and drops the caller's reference. */
void cqr_registry_cancel(cqr_registry_t *reg, cqr_entry_t *e);

/* The visible entry called `name`, with a new reference for the caller.
 * CQR_ENOTFOUND if there is none. */
int cqr_registry_get(cqr_registry_t *reg, const char *name,
                     cqr_entry_t **out);

/* Unregisters `name` (the table lives on until its last reference).
 * CQR_ENOTFOUND if there is no visible table of that name. */
int cqr_registry_remove(cqr_registry_t *reg, const char *name);

/* Registers `table` (ownership passes) under `name`, replacing in one
 * step the table of that name if there is one: a request finds the old
 * table or the new one, never none; requests holding the old one finish
 * with it and its last reference destroys it. CQR_EINVAL, CQR_EBUSY (a
 * create of that name is in progress), CQR_ELIMIT, CQR_ENOMEM, with a
 * reason; the caller keeps the table on error. serving_generation goes
 * into the new entry (metrics, TableInfo). */
int cqr_registry_replace(cqr_registry_t *reg, const char *name,
                         cqr_table_t *table, uint64_t serving_generation,
                         char *why, size_t whylen);

/* Every visible entry sorted by name, each with a reference for the
 * caller; release with cqr_registry_list_free. *out is NULL when n == 0. */
int cqr_registry_list(cqr_registry_t *reg, cqr_entry_t ***out, size_t *n);
void cqr_registry_list_free(cqr_entry_t **list, size_t n);

/* Bytes charged to the budget (a racy snapshot, for stats). */
uint64_t cqr_registry_bytes(cqr_registry_t *reg);

void cqr_entry_ref(cqr_entry_t *e);
/* Drops a reference; the last one destroys the table and frees e. */
void cqr_entry_unref(cqr_entry_t *e);

#endif
