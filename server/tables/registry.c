#include "tables/registry.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/budget.h"
#include "engine/err.h"
#include "engine/par.h"

struct cqr_registry {
    pthread_rwlock_t lock;    /* guards buckets, chains, count, visible */
    cqr_entry_t **buckets;    /* chained hash map by name */
    size_t nbuckets;          /* power of two, fixed (>= 2 * max_tables) */
    size_t count;             /* entries in the map, reserved included */
    size_t visible;           /* published entries in the map */
    uint32_t max_tables;      /* limit on count */
    cqr_budget_t budget;      /* memory: reserve charges creation bytes
                                 under the write lock, published tables
                                 charge their growth themselves, destroys
                                 refund without the lock */
    atomic_uint_fast64_t next_uid; /* source of entry uids */
    cqr_par_t *par;           /* helpers shared by every table, or NULL */
};

/* FNV-1a: names are short and the map is small; no seed needed because
 * the number of names is bounded by max_tables. */
static uint64_t name_hash(const char *s)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= UINT64_C(1099511628211);
    }
    return h;
}

int cqr_registry_create(uint32_t max_tables, uint64_t max_bytes,
                        uint32_t engine_threads, cqr_registry_t **out)
{
    cqr_registry_t *reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        return CQR_ENOMEM;
    if (engine_threads > 0) {
        int rc = cqr_par_create(engine_threads, &reg->par);
        if (rc != 0) {
            free(reg);
            return rc;
        }
    }
    size_t nb = 16;
    while (nb < 2 * (size_t)max_tables)
        nb *= 2;
    reg->buckets = calloc(nb, sizeof *reg->buckets);
    if (reg->buckets == NULL) {
        cqr_par_destroy(reg->par);
        free(reg);
        return CQR_ENOMEM;
    }
    if (pthread_rwlock_init(&reg->lock, NULL) != 0) {
        cqr_par_destroy(reg->par);
        free(reg->buckets);
        free(reg);
        return CQR_ENOMEM;
    }
    reg->nbuckets = nb;
    reg->max_tables = max_tables;
    cqr_budget_init(&reg->budget, max_bytes);
    atomic_init(&reg->next_uid, 1);
    *out = reg;
    return 0;
}

/* Unlinks e from its chain; caller holds the write lock. */
static void unlink_entry(cqr_registry_t *reg, cqr_entry_t *e)
{
    cqr_entry_t **pp = &reg->buckets[name_hash(e->name) & (reg->nbuckets - 1)];
    while (*pp != e) {
        assert(*pp != NULL);
        pp = &(*pp)->next;
    }
    *pp = e->next;
    e->next = NULL;
    reg->count--;
    if (e->visible) {
        e->visible = 0;
        reg->visible--;
    }
}

void cqr_registry_destroy(cqr_registry_t *reg)
{
    if (reg == NULL)
        return;
    for (size_t b = 0; b < reg->nbuckets; b++) {
        while (reg->buckets[b] != NULL) {
            cqr_entry_t *e = reg->buckets[b];
            /* A reserved entry at destroy means a create is still running:
             * a caller broke the ordering contract. */
            assert(e->visible);
            unlink_entry(reg, e);
            assert(atomic_load(&e->refs) == 1 && "table reference leaked");
            cqr_entry_unref(e);
        }
    }
    assert(reg->count == 0);
    assert(cqr_budget_used(&reg->budget) == 0);
    pthread_rwlock_destroy(&reg->lock);
    /* Every table is gone: no call can use the helpers any more. */
    cqr_par_destroy(reg->par);
    free(reg->buckets);
    free(reg);
}

int cqr_registry_name_check(const char *name)
{
    size_t n = 0;
    for (; name[n] != '\0'; n++) {
        char c = name[n];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
        if (!ok || n >= CQR_NAME_MAX)
            return CQR_EINVAL;
    }
    return n == 0 ? CQR_EINVAL : 0;
}

/* Caller holds the lock (read or write). */
static cqr_entry_t *find(cqr_registry_t *reg, const char *name)
{
    cqr_entry_t *e = reg->buckets[name_hash(name) & (reg->nbuckets - 1)];
    for (; e != NULL; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

int cqr_registry_reserve(cqr_registry_t *reg, const char *name,
                         uint64_t bytes, cqr_entry_t **out, char *why,
                         size_t whylen)
{
    if (cqr_registry_name_check(name) != 0) {
        snprintf(why, whylen, "table name must be 1-%d characters of "
                 "A-Z a-z 0-9 _ - .", CQR_NAME_MAX);
        return CQR_EINVAL;
    }
    cqr_entry_t *e = calloc(1, sizeof *e);
    if (e == NULL)
        return CQR_ENOMEM;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->bytes = bytes;
    e->reg = reg;
    atomic_init(&e->refs, 2); /* the registry's and the caller's */

    int rc = 0;
    pthread_rwlock_wrlock(&reg->lock);
    if (find(reg, name) != NULL) {
        snprintf(why, whylen, "table '%s' already exists", name);
        rc = CQR_EEXIST;
    } else if (reg->count >= reg->max_tables) {
        snprintf(why, whylen, "server holds its maximum of %" PRIu32
                 " tables (--max-tables)", reg->max_tables);
        rc = CQR_ELIMIT;
    } else if (cqr_budget_charge(&reg->budget, bytes) != 0) {
        snprintf(why, whylen, "table needs %" PRIu64 " bytes but only %"
                 PRIu64 " of %" PRIu64 " are left (--max-table-memory)",
                 bytes, cqr_budget_left(&reg->budget), reg->budget.max);
        rc = CQR_ELIMIT;
    } else {
        e->uid = atomic_fetch_add(&reg->next_uid, 1);
        size_t b = name_hash(name) & (reg->nbuckets - 1);
        e->next = reg->buckets[b];
        reg->buckets[b] = e;
        reg->count++;
    }
    pthread_rwlock_unlock(&reg->lock);
    if (rc != 0) {
        free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void cqr_registry_publish(cqr_registry_t *reg, cqr_entry_t *e,
                          cqr_table_t *table)
{
    /* From now on the table's growth (full rows, known IDs) counts
     * against the same budget as its creation bytes; a restored table's
     * present size is charged here too. */
    cqr_table_set_budget(table, &reg->budget);
    cqr_table_set_par(table, reg->par);
    pthread_rwlock_wrlock(&reg->lock);
    assert(!e->visible && e->table == NULL);
    e->table = table;
    e->visible = 1;
    reg->visible++;
    pthread_rwlock_unlock(&reg->lock);
}

void cqr_registry_cancel(cqr_registry_t *reg, cqr_entry_t *e)
{
    pthread_rwlock_wrlock(&reg->lock);
    assert(!e->visible && e->table == NULL);
    unlink_entry(reg, e);
    pthread_rwlock_unlock(&reg->lock);
    /* Both the registry's reference and the caller's go. */
    cqr_entry_unref(e);
    cqr_entry_unref(e);
}

int cqr_registry_get(cqr_registry_t *reg, const char *name, cqr_entry_t **out)
{
    pthread_rwlock_rdlock(&reg->lock);
    cqr_entry_t *e = find(reg, name);
    if (e != NULL && e->visible)
        cqr_entry_ref(e);
    else
        e = NULL;
    pthread_rwlock_unlock(&reg->lock);
    if (e == NULL)
        return CQR_ENOTFOUND;
    *out = e;
    return 0;
}

int cqr_registry_remove(cqr_registry_t *reg, const char *name)
{
    pthread_rwlock_wrlock(&reg->lock);
    cqr_entry_t *e = find(reg, name);
    if (e == NULL || !e->visible) {
        pthread_rwlock_unlock(&reg->lock);
        return CQR_ENOTFOUND;
    }
    unlink_entry(reg, e);
    pthread_rwlock_unlock(&reg->lock);
    /* Outside the lock: this may destroy a large table. */
    cqr_entry_unref(e);
    return 0;
}

int cqr_registry_replace(cqr_registry_t *reg, const char *name,
                         cqr_table_t *table, uint64_t serving_generation,
                         char *why, size_t whylen)
{
    const uint64_t bytes = cqr_table_config_bytes(cqr_table_config(table));
    cqr_entry_t *e = NULL;
    int rc = cqr_registry_reserve(reg, name, bytes, &e, why, whylen);
    if (rc == CQR_EEXIST) {
        why[0] = '\0';
        /* The name is taken: a fresh entry takes its place in one step. */
        if (cqr_budget_charge(&reg->budget, bytes) != 0) {
            snprintf(why, whylen, "table needs %" PRIu64 " bytes beside the "
                     "one it replaces (--max-table-memory)", bytes);
            return CQR_ELIMIT;
        }
        e = calloc(1, sizeof *e);
        if (e == NULL) {
            cqr_budget_refund(&reg->budget, bytes);
            return CQR_ENOMEM;
        }
        snprintf(e->name, sizeof e->name, "%s", name);
        e->bytes = bytes;
        e->reg = reg;
        atomic_init(&e->refs, 1); /* the registry's */
        e->table = table;
        e->visible = 1;
        e->serving_generation = serving_generation;
        cqr_table_set_budget(table, &reg->budget);
        cqr_table_set_par(table, reg->par);
        pthread_rwlock_wrlock(&reg->lock);
        cqr_entry_t *old = find(reg, name);
        if (old != NULL && !old->visible) {
            pthread_rwlock_unlock(&reg->lock);
            cqr_budget_refund(&reg->budget, bytes);
            free(e);
            snprintf(why, whylen, "table '%s' is being created", name);
            return CQR_EBUSY;
        }
        e->uid = atomic_fetch_add(&reg->next_uid, 1);
        if (old != NULL)
            unlink_entry(reg, old);
        size_t b = name_hash(name) & (reg->nbuckets - 1);
        e->next = reg->buckets[b];
        reg->buckets[b] = e;
        reg->count++;
        reg->visible++;
        pthread_rwlock_unlock(&reg->lock);
        /* Requests that hold the old table finish with it; the last one
         * destroys it. */
        if (old != NULL)
            cqr_entry_unref(old);
        return 0;
    }
    if (rc != 0)
        return rc;
    e->serving_generation = serving_generation; /* not yet visible */
    cqr_registry_publish(reg, e, table);
    cqr_entry_unref(e);
    return 0;
}

static int cmp_entry_name(const void *a, const void *b)
{
    const cqr_entry_t *x = *(const cqr_entry_t *const *)a;
    const cqr_entry_t *y = *(const cqr_entry_t *const *)b;
    return strcmp(x->name, y->name);
}

int cqr_registry_list(cqr_registry_t *reg, cqr_entry_t ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_rwlock_rdlock(&reg->lock);
    size_t cnt = reg->visible;
    cqr_entry_t **list = NULL;
    if (cnt > 0) {
        list = malloc(cnt * sizeof *list);
        if (list == NULL) {
            pthread_rwlock_unlock(&reg->lock);
            return CQR_ENOMEM;
        }
        size_t i = 0;
        for (size_t b = 0; b < reg->nbuckets; b++)
            for (cqr_entry_t *e = reg->buckets[b]; e != NULL; e = e->next)
                if (e->visible) {
                    cqr_entry_ref(e);
                    list[i++] = e;
                }
        assert(i == cnt);
    }
    pthread_rwlock_unlock(&reg->lock);
    if (cnt > 1)
        qsort(list, cnt, sizeof *list, cmp_entry_name);
    *out = list;
    *n = cnt;
    return 0;
}

void cqr_registry_list_free(cqr_entry_t **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cqr_entry_unref(list[i]);
    free(list);
}

uint64_t cqr_registry_bytes(cqr_registry_t *reg)
{
    return cqr_budget_used(&reg->budget);
}

void cqr_entry_ref(cqr_entry_t *e)
{
    unsigned prev = atomic_fetch_add_explicit(&e->refs, 1,
                                              memory_order_relaxed);
    assert(prev > 0 && "ref of a dead entry");
    (void)prev;
}

void cqr_entry_unref(cqr_entry_t *e)
{
    /* acq_rel: every use of the table by other holders happens before the
     * destroy below. */
    unsigned prev = atomic_fetch_sub_explicit(&e->refs, 1,
                                              memory_order_acq_rel);
    assert(prev > 0);
    if (prev != 1)
        return;
    if (e->table != NULL)
        cqr_table_destroy(e->table);
    cqr_budget_refund(&e->reg->budget, e->bytes);
    free(e);
}
