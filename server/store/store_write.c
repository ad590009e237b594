/* store_write.c -- a checkpoint: each table exported incrementally
 * against its base, its segments written, then the manifest committed
 * and retention run (store.h: "Atomicity"). */
#include "store/store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "engine/persist.h"
#include "store/manifest.h"
#include "store/store_impl.h"

typedef struct fb_ctx {
    const cqr_store_base_t *base;   /* or NULL */
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
                      const cqr_store_base_t *base, uint64_t gen,
                      cqr_mtable_t *t)
{
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->pages = calloc(x->nseg ? x->nseg : 1, sizeof *t->pages);
    if (!t->name || !t->pages) {
        cqr_mtable_free(t);
        return cqr_store_fail(s, CQR_ENOMEM, "out of memory");
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
                return cqr_store_fail(s, CQR_EINTERNAL, "%s: %s/%u changed "
                                      "without a stored base", name,
                                      cqr_page_type_name(sg->type),
                                      sg->index);
            }
        }
        uint32_t keep = sg->kind == CQR_SEG_BASE ? 0 : old->nref;
        uint32_t nref = keep + (sg->kind != CQR_SEG_UNCHANGED);
        pg->refs = calloc(nref, sizeof *pg->refs);
        if (!pg->refs) {
            cqr_mtable_free(t);
            return cqr_store_fail(s, CQR_ENOMEM, "out of memory");
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
                rc = cqr_store_fail_db(s, err, "writing segments");
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

/* Exports one table against its base (none: completely), builds its
 * pages as stored into *tm and writes its segments; *nb gets the table's
 * next base (uid, cursor; its pages are *tm). */
static int checkpoint_table(cqr_store_t *s, cqr_table_t *table,
                            const char *name, uint32_t no, uint64_t gen,
                            int full_gen, ck_prog_t *pp,
                            cqr_store_ckpt_stats_t *st, cqr_mtable_t *tm,
                            cqr_store_base_t *nb)
{
    const cqr_store_base_t *base = cqr_store_base_find(s, name);
    if (base && (base->uid != cqr_table_uid(table) || full_gen))
        base = NULL;
    ck_report(pp, "export", name, no, 0.0);
    cqr_export_t *x = NULL;
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        fb_ctx_t fb = {attempt ? NULL : base, s->o.max_chain};
        cqr_export_opts_t eo = {.since = fb.base ? base->cursor : 0,
                                .force_base = force_base, .ud = &fb};
        double e0 = cqr_store_now();
        rc = cqr_table_export(table, &eo, &x);
        st->seconds_export += cqr_store_now() - e0;
        if (rc) {
            cqr_store_fail(s, rc, "%s: export: %s", name, cqr_strerror(rc));
            break;
        }
        rc = tman_build(s, name, x, fb.base, gen, tm);
        if (rc != CQR_EINTERNAL)
            break;
        cqr_export_free(x); /* base and table disagree: all of it */
        x = NULL;
    }
    if (rc) {
        cqr_export_free(x);
        return rc;
    }
    st->tables_full += x->since == 0;
    st->bytes_full += x->full_bytes;
    st->pause_total_seconds += x->pause_seconds;
    if (x->pause_seconds > st->pause_max_seconds)
        st->pause_max_seconds = x->pause_seconds;
    ck_report(pp, "write", name, no, 0.5);
    double w0 = cqr_store_now();
    rc = write_segments(s, name, x, gen, pp, no, st);
    st->seconds_write += cqr_store_now() - w0;
    nb->uid = x->uid;
    nb->cursor = x->cursor;
    cqr_export_free(x);
    return rc;
}

/* The commit: the manifest goes into the memtable after every segment,
 * without the WAL, and one flush makes all of it durable in SST and blob
 * files; RocksDB's MANIFEST record of that flush is the commit point
 * (store.h, "Atomicity"). Until it is durable the generation does not
 * exist. */
static int commit(cqr_store_t *s, cqr_manifest_t *g,
                  cqr_store_ckpt_stats_t *st)
{
    double s0 = cqr_store_now();
    char *err = NULL;
    g->bytes_new = st->bytes_written;
    uint8_t *mb;
    size_t ml;
    int rc = cqr_manifest_encode(g, &mb, &ml);
    if (rc)
        return cqr_store_fail(s, rc, "out of memory");
    uint8_t k[9];
    rocksdb_put(s->db, s->wo_nowal, (const char *)k,
                cqr_key_manifest(k, g->gen), (const char *)mb, ml, &err);
    free(mb);
    if (err)
        return cqr_store_fail_db(s, err, "writing the manifest");
    rocksdb_flush(s->db, s->fo, &err);
    if (err)
        return cqr_store_fail_db(s, err, "flushing the generation");
    st->seconds_sync = cqr_store_now() - s0;
    return 0;
}

/* Retention after a commit. The generation is committed whatever
 * retention does; its failure is only reported in the store's error. */
static void retain_after(cqr_store_t *s, cqr_store_ckpt_stats_t *st)
{
    double r0 = cqr_store_now();
    if (s->o.keep) {
        if (cqr_store_retain_locked(s, s->o.keep, &st->generations_deleted,
                                    &st->segments_deleted)) {
            char saved[sizeof s->err];
            memcpy(saved, s->err, sizeof saved);
            snprintf(s->err, sizeof s->err, "retention: %.480s", saved);
        }
    }
    st->seconds_retain = cqr_store_now() - r0;
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
    const double t0 = cqr_store_now();
    pthread_mutex_lock(&s->mu);
    /* After a failure on a RocksDB error: reopen first (its message says
     * what failed last). */
    int rc = cqr_store_ready(s);
    if (rc == 0)
        s->err[0] = 0;
    const uint64_t gen = s->last_gen + 1;
    cqr_manifest_t g = {.gen = gen};
    /* A failed checkpoint in this process may have left segments of gen:
     * start from a clean range so that none of them survives unlisted. */
    if (rc == 0)
        rc = cqr_store_drop_orphans(s);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    g.unix_ns = (uint64_t)wall.tv_sec * 1000000000ull + (uint64_t)wall.tv_nsec;
    g.tables = calloc(n ? n : 1, sizeof *g.tables);
    cqr_store_base_t *nb = calloc(n ? n : 1, sizeof *nb);
    ck_prog_t pp = {cb, ud, (uint32_t)n, 0};
    if (rc == 0 && (!g.tables || !nb))
        rc = cqr_store_fail(s, CQR_ENOMEM, "out of memory");
    const int full_gen = s->o.full_every && gen % s->o.full_every == 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        /* Counted before it is built: g's free covers it either way. */
        g.ntables = (uint32_t)i + 1;
        rc = checkpoint_table(s, tables[i], names[i], (uint32_t)i, gen,
                              full_gen, &pp, &st, &g.tables[i], &nb[i]);
    }
    if (rc == 0) {
        ck_report(&pp, "sync", NULL, (uint32_t)n, 0.0);
        rc = commit(s, &g, &st);
    }
    if (rc == 0) {
        s->last_gen = gen;
        st.bytes_total = cqr_manifest_bytes(&g, NULL);
        /* The new generation is the base of the next checkpoint. */
        cqr_store_bases_adopt(s, nb, &g, n);
        nb = NULL;
        /* Durable, then recorded, then returned: the record never names
         * a generation that may not be on disk. */
        rc = cqr_store_ack_write(s, gen);
    }
    if (rc == 0) {
        ck_report(&pp, "retain", NULL, (uint32_t)n, 0.0);
        retain_after(s, &st);
    }
    if (rc == CQR_EIO)
        s->broken = 1; /* RocksDB may hold an error state: reopen */
    cqr_manifest_free(&g);
    free(nb);
    pthread_mutex_unlock(&s->mu);
    st.generation = rc ? 0 : gen;
    st.tables = (uint32_t)n;
    st.seconds = cqr_store_now() - t0;
    if (stats)
        *stats = st;
    if (rc == 0 && generation)
        *generation = gen;
    return rc;
}
