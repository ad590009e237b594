/* store.c -- the store's frame: open and close, the shared helpers of
 * store_impl.h, listing, retention and garbage collection. Checkpoints
 * are written by store_write.c and loaded by store_read.c (see store.h
 * for the layout and the guarantees). */
#include "store/store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "store/manifest.h"
#include "store/store_impl.h"

#define STORE_FORMAT "cqrps-store 1"

/* ---- Shared helpers (store_impl.h) -------------------------------------- */

int cqr_store_fail(cqr_store_t *s, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return rc;
}

int cqr_store_fail_db(cqr_store_t *s, char *dberr, const char *what)
{
    int rc = cqr_store_fail(s, CQR_EIO, "%s: %s", what, dberr ? dberr : "?");
    rocksdb_free(dberr);
    return rc;
}

void cqr_store_warn(cqr_store_t *s, const char *fmt, ...)
{
    if (!s->o.warn)
        return;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->o.warn(s->o.warn_ud, msg);
}

double cqr_store_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

cqr_store_base_t *cqr_store_base_find(cqr_store_t *s, const char *name)
{
    for (size_t i = 0; i < s->nbases; i++) {
        if (strcmp(s->bases[i].man.name, name) == 0)
            return &s->bases[i];
    }
    return NULL;
}

static void bases_clear(cqr_store_t *s)
{
    for (size_t i = 0; i < s->nbases; i++)
        cqr_mtable_free(&s->bases[i].man);
    free(s->bases);
    s->bases = NULL;
    s->nbases = 0;
}

void cqr_store_bases_adopt(cqr_store_t *s, cqr_store_base_t *nb,
                           cqr_manifest_t *g, size_t n)
{
    bases_clear(s);
    for (size_t i = 0; i < n; i++) {
        nb[i].man = g->tables[i];
        memset(&g->tables[i], 0, sizeof g->tables[i]);
    }
    s->bases = nb;
    s->nbases = n;
}

int cqr_store_man_read(cqr_store_t *s, uint64_t gen, cqr_manifest_t *g,
                       char *why, size_t whylen)
{
    memset(g, 0, sizeof *g);
    uint8_t k[9];
    size_t kl = cqr_key_manifest(k, gen);
    char *err = NULL;
    size_t vl = 0;
    char *v = rocksdb_get(s->db, s->ro, (const char *)k, kl, &vl, &err);
    if (err) {
        snprintf(why, whylen, "reading the manifest: %s", err);
        rocksdb_free(err);
        return CQR_EIO;
    }
    if (!v) {
        snprintf(why, whylen, "no manifest");
        return CQR_ENOTFOUND;
    }
    int rc = cqr_manifest_decode((const uint8_t *)v, vl, gen, g, why, whylen);
    rocksdb_free(v);
    return rc;
}

/* Appends gen to *gens (growing it); CQR_ENOMEM. */
static int gens_push(uint64_t **gens, size_t *n, size_t *cap, uint64_t gen)
{
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        uint64_t *ng = realloc(*gens, nc * sizeof *ng);
        if (!ng)
            return CQR_ENOMEM;
        *gens = ng;
        *cap = nc;
    }
    (*gens)[(*n)++] = gen;
    return 0;
}

/* 1 if manifest gen exists, 0 if not, -1 if RocksDB cannot tell (a read
 * error on a file whose key range covers it). */
static int man_exists(cqr_store_t *s, uint64_t gen)
{
    uint8_t k[9];
    size_t kl = cqr_key_manifest(k, gen);
    char *err = NULL;
    rocksdb_pinnableslice_t *ps =
        rocksdb_get_pinned(s->db, s->ro, (const char *)k, kl, &err);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    if (!ps)
        return 0;
    rocksdb_pinnableslice_destroy(ps);
    return 1;
}

/* The fallback of a failed scan: the acknowledged generation and its
 * present neighbours, found by point lookups (which read only the files
 * whose key range covers each key, newest first), ascending. */
static int man_probe(cqr_store_t *s, uint64_t **gens, size_t *n)
{
    size_t cap = 0;
    if (s->acked == 0 || man_exists(s, s->acked) != 1)
        return CQR_EIO;
    uint64_t lo = s->acked, hi = s->acked;
    while (lo > 1 && man_exists(s, lo - 1) == 1)
        lo--;
    while (hi < UINT64_MAX && man_exists(s, hi + 1) == 1)
        hi++;
    for (uint64_t g = lo; g <= hi; g++) {
        if (gens_push(gens, n, &cap, g))
            return CQR_ENOMEM;
    }
    return 0;
}

int cqr_store_man_list(cqr_store_t *s, int partial, uint64_t **gens,
                       size_t *n)
{
    *gens = NULL;
    *n = 0;
    size_t cap = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
    const char start = 'M';
    int rc = 0;
    for (rocksdb_iter_seek(it, &start, 1); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        if (kl == 0 || k[0] != 'M')
            break;
        if (kl != 9)
            continue;
        rc = gens_push(gens, n, &cap, cqr_be64_read(k + 1));
        if (rc)
            break;
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err) {
        rc = cqr_store_fail_db(s, err, "listing generations");
        free(*gens);
        *gens = NULL;
        *n = 0;
        if (partial && man_probe(s, gens, n) == 0) {
            cqr_store_warn(s, "%s; found generations %llu..%llu around the "
                           "acknowledged one by lookups (older ones may "
                           "exist)", s->err,
                           (unsigned long long)(*gens)[0],
                           (unsigned long long)(*gens)[*n - 1]);
            s->err[0] = 0;
            rc = 0;
        }
    }
    if (rc) {
        free(*gens);
        *gens = NULL;
        *n = 0;
    }
    return rc;
}

/* ---- Garbage collection ------------------------------------------------- */
/* gc() deletes the manifests of drop[0..ndrop) and those of their
 * segments that neither the remaining manifests nor the bases reference,
 * in one synced batch. Every segment is referenced by the manifest of the
 * generation that wrote it, so the dropped manifests list every
 * candidate; a dropped manifest that cannot be read is covered by a scan
 * of its generation's key range. If a remaining manifest cannot be read,
 * its references are unknown and segments are left alone (only the
 * manifests go). */

/* The segment keys the kept generations and the bases reference, sorted,
 * into ks; *sweep becomes 0 if a kept manifest cannot be read. */
static int gc_kept_keys(cqr_store_t *s, const uint64_t *drop, size_t ndrop,
                        cqr_keyset_t *ks, int *sweep)
{
    uint64_t *gens;
    size_t ng;
    int rc = cqr_store_man_list(s, 0, &gens, &ng);
    if (rc)
        return rc;
    for (size_t i = 0; i < ng; i++) {
        int dropped = 0;
        for (size_t j = 0; j < ndrop; j++)
            dropped |= drop[j] == gens[i];
        if (dropped)
            continue;
        cqr_manifest_t g;
        char why[200];
        if (cqr_store_man_read(s, gens[i], &g, why, sizeof why)) {
            *sweep = 0;
            continue;
        }
        for (uint32_t t = 0; t < g.ntables; t++)
            cqr_keyset_add_table(ks, &g.tables[t]);
        cqr_manifest_free(&g);
    }
    for (size_t i = 0; i < s->nbases; i++)
        cqr_keyset_add_table(ks, &s->bases[i].man);
    free(gens);
    if (ks->oom)
        return cqr_store_fail(s, CQR_ENOMEM,
                              "garbage collection: out of memory");
    cqr_keyset_sort(ks);
    return 0;
}

/* Adds to wb the deletion of every key in generation gen's segment range
 * that ks does not hold (for a dropped manifest that cannot be read). */
static int gc_scan_gen(cqr_store_t *s, uint64_t gen, const cqr_keyset_t *ks,
                       rocksdb_writebatch_t *wb, uint64_t *nseg)
{
    uint8_t lo[9], hi[9];
    size_t ll = cqr_key_segments_from(lo, gen);
    cqr_key_segments_from(hi, gen + 1);
    rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
    for (rocksdb_iter_seek(it, (const char *)lo, ll); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const uint8_t *key = (const uint8_t *)rocksdb_iter_key(it, &kl);
        if (memcmp(key, hi, kl < 9 ? kl : 9) >= 0)
            break;
        if (!cqr_keyset_has(ks, key, kl)) {
            rocksdb_writebatch_delete(wb, (const char *)key, kl);
            (*nseg)++;
        }
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    return err ? cqr_store_fail_db(s, err, "garbage collection scan") : 0;
}

/* Adds to wb the deletion of the dropped manifests and, with sweep, of
 * the segments of unreadable ones that ks does not hold; collects in
 * cand the segments the readable ones reference. */
static int gc_dropped(cqr_store_t *s, const uint64_t *drop, size_t ndrop,
                      int sweep, const cqr_keyset_t *ks, cqr_keyset_t *cand,
                      rocksdb_writebatch_t *wb, uint64_t *nseg)
{
    int rc = 0;
    for (size_t j = 0; j < ndrop && rc == 0; j++) {
        uint8_t k[CQR_STORE_KEY_MAX];
        rocksdb_writebatch_delete(wb, (const char *)k,
                                  cqr_key_manifest(k, drop[j]));
        if (!sweep)
            continue;
        cqr_manifest_t g;
        char why[200];
        int mr = cqr_store_man_read(s, drop[j], &g, why, sizeof why);
        if (mr == 0) {
            for (uint32_t t = 0; t < g.ntables; t++)
                cqr_keyset_add_table(cand, &g.tables[t]);
            cqr_manifest_free(&g);
            continue;
        }
        if (mr == CQR_EIO || mr == CQR_ENOMEM)
            return cqr_store_fail(s, mr, "garbage collection: %s", why);
        /* Unreadable: scan the key range of what it wrote. */
        rc = gc_scan_gen(s, drop[j], ks, wb, nseg);
    }
    return rc;
}

/* Adds to wb the deletion of every candidate that ks does not hold. */
static void gc_unreferenced(cqr_keyset_t *cand, const cqr_keyset_t *ks,
                            rocksdb_writebatch_t *wb, uint64_t *nseg)
{
    cqr_keyset_sort(cand);
    for (size_t i = 0; i < cand->n; i++) {
        const uint8_t *k;
        size_t kl = cqr_keyset_key(cand, i, &k);
        const uint8_t *prev;
        if (i > 0 && cqr_keyset_key(cand, i - 1, &prev) == kl &&
            memcmp(prev, k, kl) == 0)
            continue; /* shared by two dropped generations */
        if (!cqr_keyset_has(ks, k, kl)) {
            rocksdb_writebatch_delete(wb, (const char *)k, kl);
            (*nseg)++;
        }
    }
}

static int gc(cqr_store_t *s, const uint64_t *drop, size_t ndrop,
              uint32_t *gens_deleted, uint64_t *segs_deleted)
{
    cqr_keyset_t ks = {0};
    int sweep = 1;
    int rc = gc_kept_keys(s, drop, ndrop, &ks, &sweep);
    if (rc) {
        cqr_keyset_free(&ks);
        return rc;
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    cqr_keyset_t cand = {0}; /* segments the dropped manifests reference */
    uint64_t nseg = 0;
    rc = gc_dropped(s, drop, ndrop, sweep, &ks, &cand, wb, &nseg);
    if (cand.oom && rc == 0)
        rc = cqr_store_fail(s, CQR_ENOMEM,
                            "garbage collection: out of memory");
    if (rc == 0)
        gc_unreferenced(&cand, &ks, wb, &nseg);
    cqr_keyset_free(&cand);
    cqr_keyset_free(&ks);
    if (rc == 0 && ndrop) {
        char *err = NULL;
        rocksdb_write(s->db, s->wo_sync, wb, &err);
        if (err) {
            s->broken = 1;
            rc = cqr_store_fail_db(s, err, "garbage collection");
        }
    }
    rocksdb_writebatch_destroy(wb);
    if (rc)
        return rc;
    if (gens_deleted)
        *gens_deleted = (uint32_t)ndrop;
    if (segs_deleted)
        *segs_deleted = nseg;
    return 0;
}

/* One range delete, synced (a later checkpoint reuses those generation
 * numbers). */
int cqr_store_drop_orphans(cqr_store_t *s)
{
    uint8_t lo[9], hi[9];
    size_t ll = cqr_key_segments_from(lo, s->last_gen + 1);
    size_t hl = cqr_key_segments_from(hi, UINT64_MAX);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    rocksdb_writebatch_delete_range(wb, (const char *)lo, ll,
                                    (const char *)hi, hl);
    char *err = NULL;
    rocksdb_write(s->db, s->wo_sync, wb, &err);
    rocksdb_writebatch_destroy(wb);
    if (!err)
        return 0;
    s->broken = 1;
    return cqr_store_fail_db(s, err, "removing unfinished checkpoints");
}

int cqr_store_retain_locked(cqr_store_t *s, uint32_t keep,
                            uint32_t *gens_deleted, uint64_t *segs_deleted)
{
    uint64_t *gens;
    size_t ng;
    int rc = cqr_store_man_list(s, 0, &gens, &ng);
    if (rc)
        return rc;
    size_t ndrop = keep && ng > keep ? ng - keep : 0;
    rc = gc(s, gens, ndrop, gens_deleted, segs_deleted);
    free(gens);
    return rc;
}

/* ---- Open / close ----------------------------------------------------- */

void cqr_store_opts_default(cqr_store_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->keep = 3;
    o->max_chain = 8;
    o->full_every = 0;
    o->create = 1;
    o->batch_bytes = 32u << 20;
}

void cqr_store_close(cqr_store_t *s)
{
    if (!s)
        return;
    if (s->db)
        rocksdb_close(s->db);
    if (s->opts)
        rocksdb_options_destroy(s->opts);
    if (s->wo_nowal)
        rocksdb_writeoptions_destroy(s->wo_nowal);
    if (s->wo_sync)
        rocksdb_writeoptions_destroy(s->wo_sync);
    if (s->ro)
        rocksdb_readoptions_destroy(s->ro);
    if (s->fo)
        rocksdb_flushoptions_destroy(s->fo);
    bases_clear(s);
    free(s->dir);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* The format marker: written once, checked on every open. Only a marker
 * that reads and names another format stops the open: one that cannot be
 * read (a damaged SST block) is reported, since every manifest and
 * segment carries its own version as well. */
static int check_format(cqr_store_t *s)
{
    char *err = NULL;
    size_t vl;
    char *v = rocksdb_get(s->db, s->ro, "V", 1, &vl, &err);
    if (err) {
        cqr_store_warn(s, "cannot read the store format marker (%s); "
                       "going on: manifests and segments carry their own "
                       "version", err);
        rocksdb_free(err);
        return 0;
    }
    if (!v) {
        rocksdb_put(s->db, s->wo_sync, "V", 1, STORE_FORMAT,
                    strlen(STORE_FORMAT), &err);
        if (err) {
            cqr_store_warn(s, "cannot write the store format marker (%s)",
                           err);
            rocksdb_free(err);
            s->broken = 1;
        }
        return 0;
    }
    int rc = 0;
    int same = vl == strlen(STORE_FORMAT) && memcmp(v, STORE_FORMAT, vl) == 0;
    if (!same)
        rc = cqr_store_fail(s, CQR_EVERSION, "%s: store format \"%.*s\", "
                            "this build reads \"%s\"", s->dir,
                            (int)(vl < 64 ? vl : 64), v, STORE_FORMAT);
    rocksdb_free(v);
    return rc;
}

/* Opens the database and finds the newest generation. */
static int db_open(cqr_store_t *s)
{
    char *err = NULL;
    s->db = rocksdb_open(s->opts, s->dir, &err);
    if (!s->db)
        return cqr_store_fail_db(s, err, s->dir);
    uint64_t *gens;
    size_t ng;
    int rc = cqr_store_man_list(s, 1, &gens, &ng);
    if (rc)
        return rc;
    s->last_gen = ng ? gens[ng - 1] : 0;
    free(gens);
    return 0;
}

int cqr_store_ready(cqr_store_t *s)
{
    if (s->db && !s->broken)
        return 0;
    char was[sizeof s->err];
    snprintf(was, sizeof was, "%s", s->err[0] ? s->err : "?");
    if (s->db) {
        /* A clean close flushes what it can; what it cannot was never
         * acknowledged. */
        rocksdb_close(s->db);
        s->db = NULL;
    }
    int rc = db_open(s);
    if (rc) {
        if (s->db) {
            rocksdb_close(s->db);
            s->db = NULL;
        }
        char now[sizeof s->err];
        memcpy(now, s->err, sizeof now);
        return cqr_store_fail(s, CQR_EIO, "the database cannot be reopened "
                              "after a failure: %.400s", now);
    }
    s->broken = 0;
    cqr_store_warn(s, "reopened the database after a failure (%s)", was);
    return 0;
}

int cqr_store_open(const char *dir, const cqr_store_opts_t *o,
                   cqr_store_t **out, char *why, size_t whylen)
{
    if (!dir || !out)
        return CQR_EINVAL;
    cqr_store_t *s = calloc(1, sizeof *s);
    if (!s)
        return CQR_ENOMEM;
    pthread_mutex_init(&s->mu, NULL);
    if (o)
        s->o = *o;
    else
        cqr_store_opts_default(&s->o);
    if (s->o.batch_bytes == 0)
        s->o.batch_bytes = 32u << 20;
    s->dir = strdup(dir);
    s->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->opts, s->o.create ? 1 : 0);
    rocksdb_options_set_paranoid_checks(s->opts, 1);
    rocksdb_options_set_compression(s->opts, rocksdb_no_compression);
    rocksdb_options_set_write_buffer_size(s->opts, 64u << 20);
    rocksdb_options_set_max_background_jobs(s->opts, 2);
    /* Segments are large values written once: blob files keep them out
     * of the LSM tree, so compactions move keys, not floats. */
    rocksdb_options_set_enable_blob_files(s->opts, 1);
    rocksdb_options_set_min_blob_size(s->opts, 4096);
    rocksdb_options_set_blob_file_size(s->opts, 256u << 20);
    rocksdb_options_set_enable_blob_gc(s->opts, 1);
    /* Every write goes through write() and every sync through
     * fsync/fdatasync (RocksDB's defaults, stated because the power-loss
     * test's layer, tests/store/powerloss.c, sees only those calls). */
    rocksdb_options_set_allow_mmap_writes(s->opts, 0);
    /* RocksDB's own log (the LOG file) only gets the options at open and
     * fatal errors: Debian's librocksdb keeps its assertions, and after
     * one failed append (a full or read-only disk) the next append to
     * that file aborts the server. The server's log reports every
     * failure with RocksDB's message. */
    rocksdb_options_set_info_log_level(s->opts, 4 /* FATAL_LEVEL */);
    rocksdb_options_set_use_direct_io_for_flush_and_compaction(s->opts, 0);
    s->wo_nowal = rocksdb_writeoptions_create();
    rocksdb_writeoptions_disable_WAL(s->wo_nowal, 1);
    s->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo_sync, 1);
    s->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(s->ro, 1);
    s->fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(s->fo, 1);

    int rc = s->dir ? 0 : cqr_store_fail(s, CQR_ENOMEM, "out of memory");
    if (rc == 0)
        rc = cqr_store_ack_read(s);
    if (rc == 0)
        rc = db_open(s);
    if (rc == 0)
        rc = check_format(s);
    /* Orphans of a checkpoint that crashed before its manifest; they are
     * harmless until the next checkpoint, which removes them first, so a
     * failure here (a database that cannot write) does not stop the
     * loads. */
    if (rc == 0 && !s->broken && cqr_store_drop_orphans(s) != 0)
        cqr_store_warn(s, "%s; the next checkpoint tries again", s->err);
    if (rc) {
        if (why)
            snprintf(why, whylen, "%s", s->err);
        cqr_store_close(s);
        return rc;
    }
    s->err[0] = 0;
    *out = s;
    return 0;
}

void cqr_store_error(cqr_store_t *s, char *buf, size_t len)
{
    if (!len)
        return;
    pthread_mutex_lock(&s->mu);
    snprintf(buf, len, "%s", s->err);
    pthread_mutex_unlock(&s->mu);
}

/* ---- List / retain / usage ---------------------------------------------- */

int cqr_store_list(cqr_store_t *s, cqr_store_gen_t **out, size_t *nout)
{
    if (!s || !out || !nout)
        return CQR_EINVAL;
    *out = NULL;
    *nout = 0;
    pthread_mutex_lock(&s->mu);
    uint64_t *gens = NULL;
    size_t ng = 0;
    int rc = cqr_store_ready(s);
    if (rc == 0)
        rc = cqr_store_man_list(s, 1, &gens, &ng);
    cqr_store_gen_t *v = NULL;
    if (rc == 0 && ng) {
        v = calloc(ng, sizeof *v);
        if (!v)
            rc = cqr_store_fail(s, CQR_ENOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < ng; i++) {
        cqr_store_gen_t *e = &v[i];
        e->generation = gens[ng - 1 - i];
        cqr_manifest_t g;
        char why[200];
        int mr = cqr_store_man_read(s, e->generation, &g, why, sizeof why);
        if (mr == CQR_EIO || mr == CQR_ENOMEM) {
            rc = cqr_store_fail(s, mr, "generation %llu: %s",
                      (unsigned long long)e->generation, why);
            break;
        }
        if (mr)
            continue;
        e->ok = 1;
        e->unix_time = g.unix_ns / 1000000000ull;
        e->tables = g.ntables;
        e->bytes = cqr_manifest_bytes(&g, &e->segments);
        e->bytes_new = g.bytes_new;
        cqr_manifest_free(&g);
    }
    pthread_mutex_unlock(&s->mu);
    free(gens);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *nout = ng;
    return 0;
}

int cqr_store_retain(cqr_store_t *s, uint32_t keep, uint32_t *deleted)
{
    if (!s || keep < 1)
        return CQR_EINVAL;
    pthread_mutex_lock(&s->mu);
    int rc = cqr_store_ready(s);
    if (rc == 0)
        rc = cqr_store_retain_locked(s, keep, deleted, NULL);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int cqr_store_usage(cqr_store_t *s, uint64_t *segments, uint64_t *bytes)
{
    if (!s)
        return CQR_EINVAL;
    pthread_mutex_lock(&s->mu);
    if (cqr_store_ready(s) != 0) {
        pthread_mutex_unlock(&s->mu);
        return CQR_EIO;
    }
    uint64_t n = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
    const char start = 'S';
    for (rocksdb_iter_seek(it, &start, 1); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl == 0 || k[0] != 'S')
            break;
        n++;
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    int rc = err ? cqr_store_fail_db(s, err, "usage scan") : 0;
    uint64_t b = 0;
    const char *props[] = {"rocksdb.live-sst-files-size",
                           "rocksdb.live-blob-file-size"};
    for (int i = 0; i < 2 && rc == 0; i++) {
        char *v = rocksdb_property_value(s->db, props[i]);
        if (v) {
            b += strtoull(v, NULL, 10);
            rocksdb_free(v);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (segments)
        *segments = n;
    if (bytes)
        *bytes = b;
    return rc;
}
