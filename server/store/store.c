/* store.c -- generations of table checkpoints in RocksDB (see store.h). */
#include "store/store.h"

#include <assert.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "engine/err.h"
#include "store/manifest.h"
#include "engine/persist.h"

#define STORE_FORMAT "cqrps-store 1"

/* What the next checkpoint of a table is incremental against: the
 * table object (uid) and its cursor, and the pages as last stored. */
typedef struct base {
    uint64_t uid;
    uint32_t cursor;
    cqr_mtable_t man;
} base_t;

struct cqr_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wo_nowal; /* segments: no WAL, flushed later */
    rocksdb_writeoptions_t *wo_sync;  /* manifests and deletions */
    rocksdb_readoptions_t *ro;        /* verify_checksums */
    rocksdb_flushoptions_t *fo;       /* wait */
    cqr_store_opts_t o;
    pthread_mutex_t mu;  /* serialises every call */
    uint64_t last_gen;   /* highest manifest present */
    base_t *bases;       /* per table name */
    size_t nbases;
    char err[512];       /* last failure (mu) */
};

/* ---- Small helpers ------------------------------------------------------ */

static int fail(cqr_store_t *s, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return rc;
}

/* Takes a RocksDB error string: records it and frees it. */
static int fail_db(cqr_store_t *s, char *dberr, const char *what)
{
    int rc = fail(s, CQR_EIO, "%s: %s", what, dberr ? dberr : "?");
    rocksdb_free(dberr);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static base_t *base_find(cqr_store_t *s, const char *name)
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

/* Reads and decodes manifest `gen`. CQR_ENOTFOUND if absent. */
static int man_read(cqr_store_t *s, uint64_t gen, cqr_manifest_t *g, char *why,
                    size_t whylen)
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

/* Generation numbers of all manifests, ascending. */
static int man_list(cqr_store_t *s, uint64_t **gens, size_t *n)
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
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            uint64_t *ng = realloc(*gens, cap * sizeof *ng);
            if (!ng) {
                rc = CQR_ENOMEM;
                break;
            }
            *gens = ng;
        }
        (*gens)[(*n)++] = cqr_be64_read(k + 1);
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    if (err) {
        rc = fail_db(s, err, "listing generations");
    }
    if (rc) {
        free(*gens);
        *gens = NULL;
        *n = 0;
    }
    return rc;
}

/* ---- Garbage collection ------------------------------------------------- */
/* Deletes the manifests of drop[0..ndrop) and those of their segments
 * that neither the remaining manifests nor the bases reference, in one
 * synced batch. Every segment is referenced by the manifest of the
 * generation that wrote it, so the dropped manifests list every
 * candidate; a dropped manifest that cannot be read is covered by a scan
 * of its generation's key range. If a remaining manifest cannot be read,
 * its references are unknown and segments are left alone (only the
 * manifests go). */
static int gc(cqr_store_t *s, const uint64_t *drop, size_t ndrop,
              uint32_t *gens_deleted, uint64_t *segs_deleted)
{
    uint64_t *gens;
    size_t ng;
    int rc = man_list(s, &gens, &ng);
    if (rc)
        return rc;
    cqr_keyset_t ks = {0};
    int sweep = 1;
    for (size_t i = 0; i < ng; i++) {
        int dropped = 0;
        for (size_t j = 0; j < ndrop; j++)
            dropped |= drop[j] == gens[i];
        if (dropped)
            continue;
        cqr_manifest_t g;
        char why[200];
        if (man_read(s, gens[i], &g, why, sizeof why)) {
            sweep = 0;
            continue;
        }
        for (uint32_t t = 0; t < g.ntables; t++)
            cqr_keyset_add_table(&ks, &g.tables[t]);
        cqr_manifest_free(&g);
    }
    for (size_t i = 0; i < s->nbases; i++)
        cqr_keyset_add_table(&ks, &s->bases[i].man);
    free(gens);
    if (ks.oom) {
        cqr_keyset_free(&ks);
        return fail(s, CQR_ENOMEM, "garbage collection: out of memory");
    }
    cqr_keyset_sort(&ks);

    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    cqr_keyset_t cand = {0}; /* segments the dropped manifests reference */
    uint64_t nseg = 0;
    for (size_t j = 0; j < ndrop && rc == 0; j++) {
        uint8_t k[CQR_STORE_KEY_MAX];
        rocksdb_writebatch_delete(wb, (const char *)k,
                                  cqr_key_manifest(k, drop[j]));
        if (!sweep)
            continue;
        cqr_manifest_t g;
        char why[200];
        int mr = man_read(s, drop[j], &g, why, sizeof why);
        if (mr == 0) {
            for (uint32_t t = 0; t < g.ntables; t++)
                cqr_keyset_add_table(&cand, &g.tables[t]);
            cqr_manifest_free(&g);
            continue;
        }
        if (mr == CQR_EIO || mr == CQR_ENOMEM) {
            rc = fail(s, mr, "garbage collection: %s", why);
            break;
        }
        /* Unreadable: scan the key range of what it wrote. */
        uint8_t lo[9], hi[9];
        size_t ll = cqr_key_segments_from(lo, drop[j]);
        cqr_key_segments_from(hi, drop[j] + 1);
        rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ro);
        for (rocksdb_iter_seek(it, (const char *)lo, ll);
             rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
            size_t kl;
            const uint8_t *key = (const uint8_t *)rocksdb_iter_key(it, &kl);
            if (memcmp(key, hi, kl < 9 ? kl : 9) >= 0)
                break;
            if (!cqr_keyset_has(&ks, key, kl)) {
                rocksdb_writebatch_delete(wb, (const char *)key, kl);
                nseg++;
            }
        }
        char *err = NULL;
        rocksdb_iter_get_error(it, &err);
        rocksdb_iter_destroy(it);
        if (err)
            rc = fail_db(s, err, "garbage collection scan");
    }
    if (cand.oom && rc == 0)
        rc = fail(s, CQR_ENOMEM, "garbage collection: out of memory");
    cqr_keyset_sort(&cand);
    for (size_t i = 0; rc == 0 && i < cand.n; i++) {
        const uint8_t *k;
        size_t kl = cqr_keyset_key(&cand, i, &k);
        const uint8_t *prev;
        if (i > 0 && cqr_keyset_key(&cand, i - 1, &prev) == kl &&
            memcmp(prev, k, kl) == 0)
            continue; /* shared by two dropped generations */
        if (!cqr_keyset_has(&ks, k, kl)) {
            rocksdb_writebatch_delete(wb, (const char *)k, kl);
            nseg++;
        }
    }
    cqr_keyset_free(&cand);
    cqr_keyset_free(&ks);
    if (rc == 0 && ndrop) {
        char *err = NULL;
        rocksdb_write(s->db, s->wo_sync, wb, &err);
        if (err)
            rc = fail_db(s, err, "garbage collection");
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

/* Removes every segment of generations above the last manifest: the
 * orphans of a checkpoint that did not commit. One range delete, synced
 * (a later checkpoint reuses those generation numbers). */
static int drop_orphans(cqr_store_t *s)
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
    return err ? fail_db(s, err, "removing unfinished checkpoints") : 0;
}

static int retain_locked(cqr_store_t *s, uint32_t keep, uint32_t *gdel,
                         uint64_t *sdel)
{
    uint64_t *gens;
    size_t ng;
    int rc = man_list(s, &gens, &ng);
    if (rc)
        return rc;
    size_t ndrop = keep && ng > keep ? ng - keep : 0;
    rc = gc(s, gens, ndrop, gdel, sdel);
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
    pthread_mutex_destroy(&s->mu);
    free(s);
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
    s->wo_nowal = rocksdb_writeoptions_create();
    rocksdb_writeoptions_disable_WAL(s->wo_nowal, 1);
    s->wo_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo_sync, 1);
    s->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(s->ro, 1);
    s->fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(s->fo, 1);

    char *err = NULL;
    int rc = 0;
    s->db = rocksdb_open(s->opts, dir, &err);
    if (!s->db) {
        rc = fail_db(s, err, dir);
        goto out;
    }
    /* The format marker: written once, checked on every open. */
    size_t vl;
    char *v = rocksdb_get(s->db, s->ro, "V", 1, &vl, &err);
    if (err) {
        rc = fail_db(s, err, "reading the store format");
        goto out;
    }
    if (!v) {
        rocksdb_put(s->db, s->wo_sync, "V", 1, STORE_FORMAT,
                    strlen(STORE_FORMAT), &err);
        if (err) {
            rc = fail_db(s, err, "writing the store format");
            goto out;
        }
    } else {
        int same = vl == strlen(STORE_FORMAT) &&
                   memcmp(v, STORE_FORMAT, vl) == 0;
        if (!same)
            rc = fail(s, CQR_EVERSION, "%s: store format \"%.*s\", this "
                      "build reads \"%s\"", dir, (int)(vl < 64 ? vl : 64), v,
                      STORE_FORMAT);
        rocksdb_free(v);
        if (rc)
            goto out;
    }
    uint64_t *gens;
    size_t ng;
    rc = man_list(s, &gens, &ng);
    if (rc)
        goto out;
    s->last_gen = ng ? gens[ng - 1] : 0;
    free(gens);
    /* Orphans of a checkpoint that crashed before its manifest. */
    rc = drop_orphans(s);
out:
    if (rc) {
        if (why)
            snprintf(why, whylen, "%s", s->err);
        cqr_store_close(s);
        return rc;
    }
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

/* ---- Checkpoint --------------------------------------------------------- */

typedef struct fb_ctx {
    const base_t *base;   /* or NULL */
    uint32_t max_chain;
} fb_ctx_t;

/* Base or delta: a page the store has no version of, or whose chain is
 * long or heavy, gets a base. */
static int force_base(void *ud, uint32_t type, uint32_t index)
{
    const fb_ctx_t *f = ud;
    if (!f->base)
        return 1;
    const cqr_mpage_t *pg = cqr_mtable_find(&f->base->man, type, index);
    if (!pg)
        return 1;
    uint64_t dbytes = 0;
    for (uint32_t r = 1; r < pg->nref; r++)
        dbytes += pg->refs[r].len;
    return pg->nref > f->max_chain || dbytes * 2 > pg->refs[0].len;
}

/* The pages of an export as stored: new refs for written segments, the
 * base's refs for unchanged pages. CQR_EINTERNAL when the export and the
 * base disagree (the caller then exports completely). */
static int tman_build(cqr_store_t *s, const char *name, const cqr_export_t *x,
                      const base_t *base, uint64_t gen, cqr_mtable_t *t)
{
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->pages = calloc(x->nseg ? x->nseg : 1, sizeof *t->pages);
    if (!t->name || !t->pages) {
        cqr_mtable_free(t);
        return fail(s, CQR_ENOMEM, "out of memory");
    }
    t->kind = x->kind;
    t->dim = x->dim;
    t->known_ids = x->known_ids;
    t->phases_done = x->phases_done;
    for (size_t i = 0; i < x->nseg; i++) {
        const cqr_segment_t *sg = &x->seg[i];
        cqr_mpage_t *pg = &t->pages[t->npages++];
        pg->type = sg->type;
        pg->index = sg->index;
        const cqr_mpage_t *old = NULL;
        if (sg->kind != CQR_SEG_BASE) {
            old = base ? cqr_mtable_find(&base->man, sg->type, sg->index)
                       : NULL;
            if (!old) {
                cqr_mtable_free(t);
                return fail(s, CQR_EINTERNAL, "%s: %s/%u changed without a "
                            "stored base", name, cqr_page_type_name(sg->type),
                            sg->index);
            }
        }
        uint32_t keep = sg->kind == CQR_SEG_BASE ? 0 : old->nref;
        uint32_t nref = keep + (sg->kind != CQR_SEG_UNCHANGED);
        pg->refs = calloc(nref, sizeof *pg->refs);
        if (!pg->refs) {
            cqr_mtable_free(t);
            return fail(s, CQR_ENOMEM, "out of memory");
        }
        if (keep)
            memcpy(pg->refs, old->refs, keep * sizeof *pg->refs);
        if (sg->kind != CQR_SEG_UNCHANGED)
            pg->refs[keep] = (cqr_mref_t){gen, sg->len, sg->hash,
                                     sg->kind == CQR_SEG_DELTA};
        pg->nref = nref;
    }
    return 0;
}

typedef struct ck_prog {
    cqr_store_progress_cb cb;
    void *ud;
    uint32_t tables;
    uint64_t bytes_done;
} ck_prog_t;

static void ck_report(ck_prog_t *p, const char *stage, const char *table,
                      uint32_t no, double within)
{
    if (!p->cb)
        return;
    cqr_store_progress_t pr = {
        .stage = stage, .table = table, .table_no = no, .tables = p->tables,
        .bytes_done = p->bytes_done, .bytes_total = p->bytes_done,
        .fraction = p->tables ? (no + within) / (p->tables + 1.0) : 0.0};
    if (strcmp(stage, "sync") == 0 || strcmp(stage, "retain") == 0)
        pr.fraction = strcmp(stage, "sync") == 0
                          ? p->tables / (p->tables + 1.0)
                          : (p->tables + 0.5) / (p->tables + 1.0);
    p->cb(p->ud, &pr);
}

/* Writes the segments of one export in batches. */
static int write_segments(cqr_store_t *s, const char *name,
                          const cqr_export_t *x, uint64_t gen, ck_prog_t *pp,
                          uint32_t no, cqr_store_ckpt_stats_t *st)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    size_t pending = 0;
    uint64_t done = 0;
    int rc = 0;
    for (size_t i = 0; i <= x->nseg && rc == 0; i++) {
        const cqr_segment_t *sg = i < x->nseg ? &x->seg[i] : NULL;
        if (sg && sg->kind != CQR_SEG_UNCHANGED) {
            uint8_t k[CQR_STORE_KEY_MAX];
            size_t kl = cqr_key_segment(k, name, sg->type, sg->index, gen);
            rocksdb_writebatch_put(wb, (const char *)k, kl,
                                   (const char *)sg->data, sg->len);
            pending += sg->len;
            st->segments_written++;
            st->bytes_written += sg->len;
        } else if (sg) {
            st->segments_shared++;
        }
        if (pending && (pending >= s->o.batch_bytes || !sg)) {
            char *err = NULL;
            rocksdb_write(s->db, s->wo_nowal, wb, &err);
            if (err)
                rc = fail_db(s, err, "writing segments");
            rocksdb_writebatch_clear(wb);
            done += pending;
            pp->bytes_done += pending;
            pending = 0;
            ck_report(pp, "write", name, no,
                      x->bytes ? 0.5 + 0.5 * (double)done / x->bytes : 1.0);
        }
    }
    rocksdb_writebatch_destroy(wb);
    return rc;
}

static int check_names(const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!names[i])
            return CQR_EINVAL;
        size_t l = strlen(names[i]);
        if (l == 0 || l > CQR_STORE_NAME_MAX)
            return CQR_EINVAL;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(names[i], names[j]) == 0)
                return CQR_EINVAL;
        }
    }
    return 0;
}

int cqr_store_checkpoint(cqr_store_t *s, cqr_table_t *const *tables,
                         const char *const *names, size_t n,
                         cqr_store_progress_cb cb, void *ud,
                         uint64_t *generation, cqr_store_ckpt_stats_t *stats)
{
    if (!s || (n && (!tables || !names)) || n > UINT32_MAX)
        return CQR_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!tables[i])
            return CQR_EINVAL;
    }
    if (check_names(names, n))
        return CQR_EINVAL;
    cqr_store_ckpt_stats_t st;
    memset(&st, 0, sizeof st);
    const double t0 = now_s();
    pthread_mutex_lock(&s->mu);
    s->err[0] = 0;
    const uint64_t gen = s->last_gen + 1;
    cqr_manifest_t g = {.gen = gen};
    /* A failed checkpoint in this process may have left segments of gen:
     * start from a clean range so that none of them survives unlisted. */
    int rc = drop_orphans(s);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    g.unix_ns = (uint64_t)wall.tv_sec * 1000000000ull + (uint64_t)wall.tv_nsec;
    g.tables = calloc(n ? n : 1, sizeof *g.tables);
    base_t *nb = calloc(n ? n : 1, sizeof *nb);
    ck_prog_t pp = {cb, ud, (uint32_t)n, 0};
    if (rc == 0 && (!g.tables || !nb))
        rc = fail(s, CQR_ENOMEM, "out of memory");
    const int full_gen = s->o.full_every && gen % s->o.full_every == 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        const base_t *base = base_find(s, names[i]);
        if (base && (base->uid != cqr_table_uid(tables[i]) || full_gen))
            base = NULL;
        ck_report(&pp, "export", names[i], (uint32_t)i, 0.0);
        cqr_export_t *x = NULL;
        for (int attempt = 0; attempt < 2; attempt++) {
            fb_ctx_t fb = {attempt ? NULL : base, s->o.max_chain};
            cqr_export_opts_t eo = {.since = fb.base ? base->cursor : 0,
                                    .force_base = force_base, .ud = &fb};
            double e0 = now_s();
            rc = cqr_table_export(tables[i], &eo, &x);
            st.seconds_export += now_s() - e0;
            if (rc) {
                fail(s, rc, "%s: export: %s", names[i], cqr_strerror(rc));
                break;
            }
            rc = tman_build(s, names[i], x, fb.base, gen, &g.tables[i]);
            if (rc != CQR_EINTERNAL)
                break;
            cqr_export_free(x); /* base and table disagree: all of it */
            x = NULL;
        }
        if (rc)
            break;
        g.ntables++;
        st.tables_full += x->since == 0;
        st.bytes_full += x->full_bytes;
        st.pause_total_seconds += x->pause_seconds;
        if (x->pause_seconds > st.pause_max_seconds)
            st.pause_max_seconds = x->pause_seconds;
        ck_report(&pp, "write", names[i], (uint32_t)i, 0.5);
        double w0 = now_s();
        rc = write_segments(s, names[i], x, gen, &pp, (uint32_t)i, &st);
        st.seconds_write += now_s() - w0;
        nb[i].uid = x->uid;
        nb[i].cursor = x->cursor;
        cqr_export_free(x);
    }
    if (rc)
        goto out;

    /* Commit: segments durable in SST files, then the manifest alone,
     * synced. */
    ck_report(&pp, "sync", NULL, (uint32_t)n, 0.0);
    double s0 = now_s();
    char *err = NULL;
    rocksdb_flush(s->db, s->fo, &err);
    if (err) {
        rc = fail_db(s, err, "flushing segments");
        goto out;
    }
    g.bytes_new = st.bytes_written;
    uint8_t *mb;
    size_t ml;
    rc = cqr_manifest_encode(&g, &mb, &ml);
    if (rc) {
        fail(s, rc, "out of memory");
        goto out;
    }
    uint8_t k[9];
    rocksdb_put(s->db, s->wo_sync, (const char *)k, cqr_key_manifest(k, gen),
                (const char *)mb, ml, &err);
    free(mb);
    if (err) {
        rc = fail_db(s, err, "writing the manifest");
        goto out;
    }
    st.seconds_sync = now_s() - s0;
    s->last_gen = gen;
    st.bytes_total = cqr_manifest_bytes(&g, NULL);

    /* The new generation is the base of the next checkpoint. */
    bases_clear(s);
    for (size_t i = 0; i < n; i++) {
        nb[i].man = g.tables[i];
        memset(&g.tables[i], 0, sizeof g.tables[i]);
    }
    s->bases = nb;
    s->nbases = n;
    nb = NULL;

    ck_report(&pp, "retain", NULL, (uint32_t)n, 0.0);
    double r0 = now_s();
    if (s->o.keep) {
        /* The generation is committed whatever retention does; its
         * failure is only reported in the store's error. */
        if (retain_locked(s, s->o.keep, &st.generations_deleted,
                          &st.segments_deleted)) {
            char saved[sizeof s->err];
            memcpy(saved, s->err, sizeof saved);
            snprintf(s->err, sizeof s->err, "retention: %.480s", saved);
        }
    }
    st.seconds_retain = now_s() - r0;
out:
    cqr_manifest_free(&g);
    free(nb);
    pthread_mutex_unlock(&s->mu);
    st.generation = rc ? 0 : gen;
    st.tables = (uint32_t)n;
    st.seconds = now_s() - t0;
    if (stats)
        *stats = st;
    if (rc == 0 && generation)
        *generation = gen;
    return rc;
}

/* ---- List / retain / usage ---------------------------------------------- */

int cqr_store_list(cqr_store_t *s, cqr_store_gen_t **out, size_t *nout)
{
    if (!s || !out || !nout)
        return CQR_EINVAL;
    *out = NULL;
    *nout = 0;
    pthread_mutex_lock(&s->mu);
    uint64_t *gens;
    size_t ng;
    int rc = man_list(s, &gens, &ng);
    cqr_store_gen_t *v = NULL;
    if (rc == 0 && ng) {
        v = calloc(ng, sizeof *v);
        if (!v)
            rc = fail(s, CQR_ENOMEM, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < ng; i++) {
        cqr_store_gen_t *e = &v[i];
        e->generation = gens[ng - 1 - i];
        cqr_manifest_t g;
        char why[200];
        int mr = man_read(s, e->generation, &g, why, sizeof why);
        if (mr == CQR_EIO || mr == CQR_ENOMEM) {
            rc = fail(s, mr, "generation %llu: %s",
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
    int rc = retain_locked(s, keep, deleted, NULL);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int cqr_store_usage(cqr_store_t *s, uint64_t *segments, uint64_t *bytes)
{
    if (!s)
        return CQR_EINVAL;
    pthread_mutex_lock(&s->mu);
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
    int rc = err ? fail_db(s, err, "usage scan") : 0;
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

/* ---- Load --------------------------------------------------------------- */

typedef struct ld_prog {
    cqr_store_progress_cb cb;
    void *ud;
    uint32_t tables;
    uint64_t done, total;
} ld_prog_t;

static void ld_report(ld_prog_t *p, const char *stage, const char *table,
                      uint32_t no)
{
    if (!p->cb)
        return;
    cqr_store_progress_t pr = {
        .stage = stage, .table = table, .table_no = no, .tables = p->tables,
        .bytes_done = p->done, .bytes_total = p->total,
        .fraction = p->total ? (double)p->done / p->total : 1.0};
    p->cb(p->ud, &pr);
}

/* Rebuilds one table of a generation; reads and verifies every segment.
 * On failure writes the reason to why. */
static int load_table(cqr_store_t *s, const cqr_mtable_t *tm, ld_prog_t *lp,
                      uint32_t no, cqr_table_t **out, uint32_t *cursor,
                      uint64_t *bytes, char *why, size_t whylen)
{
    cqr_import_t *im;
    int rc = cqr_import_begin(&im);
    if (rc) {
        snprintf(why, whylen, "out of memory");
        return rc;
    }
    /* cfg and meta first (they sort first), then every page's chain. */
    for (uint32_t p = 0; p < tm->npages && rc == 0; p++) {
        const cqr_mpage_t *pg = &tm->pages[p];
        for (uint32_t r = 0; r < pg->nref && rc == 0; r++) {
            const cqr_mref_t *ref = &pg->refs[r];
            uint8_t k[CQR_STORE_KEY_MAX];
            size_t kl =
                cqr_key_segment(k, tm->name, pg->type, pg->index, ref->gen);
            char *err = NULL;
            rocksdb_pinnableslice_t *ps =
                rocksdb_get_pinned(s->db, s->ro, (const char *)k, kl, &err);
            if (err) {
                snprintf(why, whylen, "%s/%u@%llu: %s",
                         cqr_page_type_name(pg->type), pg->index,
                         (unsigned long long)ref->gen, err);
                rocksdb_free(err);
                rc = CQR_EIO;
                break;
            }
            if (!ps) {
                snprintf(why, whylen, "%s/%u@%llu: segment missing",
                         cqr_page_type_name(pg->type), pg->index,
                         (unsigned long long)ref->gen);
                rc = CQR_ECORRUPT;
                break;
            }
            size_t vl;
            const uint8_t *v =
                (const uint8_t *)rocksdb_pinnableslice_value(ps, &vl);
            uint32_t type = 0, index = 0;
            cqr_seg_kind_t kind = CQR_SEG_BASE;
            uint64_t hash = 0;
            if (vl >= CQR_SEGMENT_HEADER)
                memcpy(&hash, v + 24, 8);
            if (vl != ref->len || hash != ref->hash ||
                cqr_segment_peek(v, vl, &type, &index, &kind) ||
                type != pg->type || index != pg->index ||
                (kind == CQR_SEG_DELTA) != (ref->delta != 0)) {
                snprintf(why, whylen, "%s/%u@%llu: segment does not match "
                         "the manifest (checksum or length)",
                         cqr_page_type_name(pg->type), pg->index,
                         (unsigned long long)ref->gen);
                rc = CQR_ECORRUPT;
            } else {
                /* Verifies the checksum, which the manifest vouched for. */
                rc = cqr_import_segment(im, v, vl);
                if (rc)
                    snprintf(why, whylen, "%s", cqr_import_error(im));
            }
            rocksdb_pinnableslice_destroy(ps);
            *bytes += vl;
            lp->done += vl;
        }
        if (p % 16 == 15 || p + 1 == tm->npages)
            ld_report(lp, "read", tm->name, no);
    }
    if (rc) {
        cqr_import_abort(im);
        return rc;
    }
    rc = cqr_import_finish(im, out, cursor);
    if (rc)
        snprintf(why, whylen, "%s", "incomplete or inconsistent table");
    return rc;
}

/* Loads one generation completely: on success tabs[0..ntables) and the
 * new bases; nothing delivered yet. */
static int load_gen(cqr_store_t *s, uint64_t gen, ld_prog_t *lp,
                    cqr_manifest_t *g, cqr_table_t ***tabs, uint32_t **cursors,
                    uint64_t *bytes, char *why, size_t whylen)
{
    char w[300];
    int rc = man_read(s, gen, g, w, sizeof w);
    if (rc) {
        snprintf(why, whylen, "generation %llu: %s", (unsigned long long)gen,
                 w);
        return rc;
    }
    *tabs = calloc(g->ntables ? g->ntables : 1, sizeof **tabs);
    *cursors = calloc(g->ntables ? g->ntables : 1, sizeof **cursors);
    if (!*tabs || !*cursors) {
        snprintf(why, whylen, "out of memory");
        return CQR_ENOMEM;
    }
    lp->tables = g->ntables;
    lp->total = cqr_manifest_bytes(g, NULL);
    lp->done = 0;
    for (uint32_t i = 0; i < g->ntables; i++) {
        rc = load_table(s, &g->tables[i], lp, i, &(*tabs)[i], &(*cursors)[i],
                        bytes, w, sizeof w);
        if (rc) {
            snprintf(why, whylen, "generation %llu: table %s: %s",
                     (unsigned long long)gen, g->tables[i].name, w);
            return rc;
        }
    }
    return 0;
}

static void tabs_free(cqr_table_t **tabs, uint32_t n)
{
    for (uint32_t i = 0; tabs && i < n; i++)
        cqr_table_destroy(tabs[i]);
    free(tabs);
}

int cqr_store_load(cqr_store_t *s, uint64_t generation,
                   cqr_store_table_cb cb, void *ud,
                   cqr_store_progress_cb pcb, void *pud,
                   cqr_store_load_info_t *info)
{
    if (!s || !cb)
        return CQR_EINVAL;
    cqr_store_load_info_t li;
    memset(&li, 0, sizeof li);
    const double t0 = now_s();
    pthread_mutex_lock(&s->mu);
    s->err[0] = 0;
    uint64_t *gens = NULL;
    size_t ng = 0;
    int rc = man_list(s, &gens, &ng);
    size_t ncand = 0;
    uint64_t *cand = NULL;
    if (rc == 0) {
        if (generation) {
            for (size_t i = 0; i < ng; i++) {
                if (gens[i] == generation)
                    ncand = 1;
            }
            if (!ncand)
                rc = fail(s, CQR_ENOTFOUND, "no generation %llu",
                          (unsigned long long)generation);
            cand = &generation;
        } else {
            cand = gens;
            ncand = ng;
        }
    }
    ld_prog_t lp = {pcb, pud, 0, 0, 0};
    cqr_manifest_t g = {0};
    cqr_table_t **tabs = NULL;
    uint32_t *cursors = NULL;
    int found = 0;
    /* Newest first; each failure is recorded and the next older one is
     * tried (only when loading the latest). */
    for (size_t c = ncand; rc == 0 && c-- > 0;) {
        uint64_t gen = cand[c];
        char why[400];
        uint64_t bytes = 0;
        int lr = load_gen(s, gen, &lp, &g, &tabs, &cursors, &bytes, why,
                          sizeof why);
        li.bytes += bytes;
        if (lr == 0) {
            found = 1;
            li.generation = gen;
            break;
        }
        if (lr == CQR_ENOMEM || lr == CQR_EIO) {
            rc = fail(s, lr, "%s", why);
        } else {
            li.skipped++;
            size_t l = strlen(li.why);
            snprintf(li.why + l, sizeof li.why - l, "%s%s", l ? "; " : "",
                     why);
            if (generation)
                rc = fail(s, lr, "%s", why);
        }
        tabs_free(tabs, g.ntables);
        free(cursors);
        tabs = NULL;
        cursors = NULL;
        cqr_manifest_free(&g);
    }
    if (rc == 0 && !found && ncand) {
        /* Generations exist and none verifies: never an empty state. */
        rc = fail(s, CQR_ECORRUPT, "no generation verifies: %s", li.why);
    }
    if (rc == 0 && found) {
        /* Later checkpoints are incremental against what was loaded. */
        base_t *nb = calloc(g.ntables ? g.ntables : 1, sizeof *nb);
        if (!nb) {
            rc = fail(s, CQR_ENOMEM, "out of memory");
        } else {
            bases_clear(s);
            for (uint32_t i = 0; i < g.ntables; i++) {
                nb[i].uid = cqr_table_uid(tabs[i]);
                nb[i].cursor = cursors[i];
                nb[i].man = g.tables[i];
                memset(&g.tables[i], 0, sizeof g.tables[i]);
            }
            s->bases = nb;
            s->nbases = g.ntables;
        }
    }
    if (rc == 0 && found) {
        ld_report(&lp, "verify", NULL, g.ntables);
        for (uint32_t i = 0; i < g.ntables; i++) {
            cqr_table_t *t = tabs[i];
            tabs[i] = NULL;
            li.tables++;
            int cr = cb(ud, s->bases[i].man.name, t);
            if (cr) {
                rc = fail(s, cr, "the table callback refused %s",
                          s->bases[i].man.name);
                break;
            }
        }
    }
    tabs_free(tabs, g.ntables);
    free(cursors);
    cqr_manifest_free(&g);
    free(gens);
    pthread_mutex_unlock(&s->mu);
    li.seconds = now_s() - t0;
    if (info)
        *info = li;
    return rc;
}
