/* store_read.c -- a load: the newest generation that verifies (or a
 * chosen one), every table rebuilt and verified before the first is
 * delivered (store.h: "Verification"). */
#include "store/store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/persist.h"
#include "store/manifest.h"
#include "store/store_impl.h"

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

/* A generation being loaded: its manifest, and its tables and their
 * cursors (index i is the manifest's table i). */
typedef struct loaded {
    cqr_manifest_t g;
    cqr_table_t **tabs;   /* NULL entries were handed over */
    uint32_t *cursors;
} loaded_t;

static void loaded_free(loaded_t *l)
{
    for (uint32_t i = 0; l->tabs && i < l->g.ntables; i++)
        cqr_table_destroy(l->tabs[i]);
    free(l->tabs);
    free(l->cursors);
    cqr_manifest_free(&l->g);
    memset(l, 0, sizeof *l);
}

/* Loads one generation completely into l; nothing delivered yet. */
static int load_gen(cqr_store_t *s, uint64_t gen, ld_prog_t *lp, loaded_t *l,
                    uint64_t *bytes, char *why, size_t whylen)
{
    char w[300];
    cqr_manifest_t *g = &l->g;
    int rc = cqr_store_man_read(s, gen, g, w, sizeof w);
    if (rc) {
        snprintf(why, whylen, "generation %llu: %s", (unsigned long long)gen,
                 w);
        return rc;
    }
    l->tabs = calloc(g->ntables ? g->ntables : 1, sizeof *l->tabs);
    l->cursors = calloc(g->ntables ? g->ntables : 1, sizeof *l->cursors);
    if (!l->tabs || !l->cursors) {
        snprintf(why, whylen, "out of memory");
        return CQR_ENOMEM;
    }
    lp->tables = g->ntables;
    lp->total = cqr_manifest_bytes(g, NULL);
    lp->done = 0;
    for (uint32_t i = 0; i < g->ntables; i++) {
        rc = load_table(s, &g->tables[i], lp, i, &l->tabs[i], &l->cursors[i],
                        bytes, w, sizeof w);
        if (rc) {
            snprintf(why, whylen, "generation %llu: table %s: %s",
                     (unsigned long long)gen, g->tables[i].name, w);
            return rc;
        }
    }
    return 0;
}

/* The generations to try, oldest first: exactly *generation (which must
 * exist), or, for 0, all of them. */
static int load_candidates(cqr_store_t *s, const uint64_t *generation,
                           const uint64_t *gens, size_t ng,
                           const uint64_t **cand, size_t *ncand)
{
    if (*generation == 0) {
        *cand = gens;
        *ncand = ng;
        return 0;
    }
    *ncand = 0;
    for (size_t i = 0; i < ng; i++) {
        if (gens[i] == *generation)
            *ncand = 1;
    }
    *cand = generation;
    if (!*ncand)
        return cqr_store_fail(s, CQR_ENOTFOUND, "no generation %llu",
                              (unsigned long long)*generation);
    return 0;
}

/* Tries the candidates newest first until one loads completely (*found,
 * held in l). Each failure is recorded in li and the next older one is
 * tried, unless `exact` (a chosen generation) or memory ran out. A read
 * error of RocksDB (a damaged or missing SST or blob file: "Corruption",
 * "IO error") belongs to the generation that needed the data, like a
 * checksum mismatch of ours: an older generation may not need it.
 * Generations exist and none loads: CQR_ECORRUPT, never an empty state. */
static int load_newest(cqr_store_t *s, const uint64_t *cand, size_t ncand,
                       int exact, ld_prog_t *lp, loaded_t *l,
                       cqr_store_load_info_t *li, int *found)
{
    int rc = 0;
    for (size_t c = ncand; rc == 0 && c-- > 0;) {
        uint64_t gen = cand[c];
        char why[400];
        uint64_t bytes = 0;
        int lr = load_gen(s, gen, lp, l, &bytes, why, sizeof why);
        li->bytes += bytes;
        if (lr == 0) {
            *found = 1;
            li->generation = gen;
            break;
        }
        if (lr == CQR_ENOMEM) {
            rc = cqr_store_fail(s, lr, "%s", why);
        } else {
            li->skipped++;
            size_t len = strlen(li->why);
            snprintf(li->why + len, sizeof li->why - len, "%s%s",
                     len ? "; " : "", why);
            if (exact)
                rc = cqr_store_fail(s, lr, "%s", why);
        }
        loaded_free(l);
    }
    if (rc == 0 && !*found && ncand)
        rc = cqr_store_fail(s, CQR_ECORRUPT, "no generation verifies: %s",
                            li->why);
    return rc;
}

/* Later checkpoints are incremental against what was loaded: its tables
 * become the store's bases. */
static int adopt_loaded(cqr_store_t *s, loaded_t *l)
{
    cqr_store_base_t *nb = calloc(l->g.ntables ? l->g.ntables : 1,
                                  sizeof *nb);
    if (!nb)
        return cqr_store_fail(s, CQR_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < l->g.ntables; i++) {
        nb[i].uid = cqr_table_uid(l->tabs[i]);
        nb[i].cursor = l->cursors[i];
    }
    cqr_store_bases_adopt(s, nb, &l->g, l->g.ntables);
    return 0;
}

/* Hands every table to cb, in the manifest's order, under the names of
 * the bases adopt_loaded() installed; stops at the first refusal (the
 * tables not handed over stay in l). */
static int deliver(cqr_store_t *s, loaded_t *l, cqr_store_table_cb cb,
                   void *ud, ld_prog_t *lp, cqr_store_load_info_t *li)
{
    ld_report(lp, "verify", NULL, l->g.ntables);
    for (uint32_t i = 0; i < l->g.ntables; i++) {
        cqr_table_t *t = l->tabs[i];
        l->tabs[i] = NULL;
        li->tables++;
        int cr = cb(ud, s->bases[i].man.name, t);
        if (cr)
            return cqr_store_fail(s, cr, "the table callback refused %s",
                                  s->bases[i].man.name);
    }
    return 0;
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
    const double t0 = cqr_store_now();
    pthread_mutex_lock(&s->mu);
    uint64_t *gens = NULL;
    size_t ng = 0;
    int rc = cqr_store_ready(s);
    if (rc == 0)
        s->err[0] = 0;
    if (rc == 0)
        rc = cqr_store_man_list(s, 1, &gens, &ng);
    li.newest = ng ? gens[ng - 1] : 0;
    li.acked = s->acked;
    const uint64_t *cand = NULL;
    size_t ncand = 0;
    if (rc == 0)
        rc = load_candidates(s, &generation, gens, ng, &cand, &ncand);
    ld_prog_t lp = {pcb, pud, 0, 0, 0};
    loaded_t l;
    memset(&l, 0, sizeof l);
    int found = 0;
    if (rc == 0)
        rc = load_newest(s, cand, ncand, generation != 0, &lp, &l, &li,
                         &found);
    if (rc == 0 && found)
        rc = adopt_loaded(s, &l);
    if (rc == 0 && found)
        rc = deliver(s, &l, cb, ud, &lp, &li);
    loaded_free(&l);
    free(gens);
    pthread_mutex_unlock(&s->mu);
    li.seconds = cqr_store_now() - t0;
    if (info)
        *info = li;
    return rc;
}

int cqr_store_read_table(cqr_store_t *s, uint64_t generation,
                         const char *name, cqr_table_t **out,
                         uint64_t *gen_out)
{
    if (!s || !name || !out)
        return CQR_EINVAL;
    pthread_mutex_lock(&s->mu);
    int rc = cqr_store_ready(s);
    if (rc == 0)
        s->err[0] = 0;
    uint64_t gen = generation ? generation : s->last_gen;
    cqr_manifest_t g;
    memset(&g, 0, sizeof g);
    char why[400];
    if (rc == 0 && gen == 0)
        rc = cqr_store_fail(s, CQR_ENOTFOUND, "no checkpoint yet: take one "
                            "first (cqrps checkpoint)");
    if (rc == 0) {
        rc = cqr_store_man_read(s, gen, &g, why, sizeof why);
        if (rc)
            rc = cqr_store_fail(s, rc, "generation %llu: %s",
                                (unsigned long long)gen, why);
    }
    const cqr_mtable_t *tm = NULL;
    for (uint32_t i = 0; rc == 0 && i < g.ntables && !tm; i++)
        if (strcmp(g.tables[i].name, name) == 0)
            tm = &g.tables[i];
    if (rc == 0 && !tm)
        rc = cqr_store_fail(s, CQR_ENOTFOUND, "generation %llu has no table "
                            "%s", (unsigned long long)gen, name);
    if (rc == 0) {
        ld_prog_t lp = {NULL, NULL, 1, 0, 0};
        uint32_t cursor = 0;
        uint64_t bytes = 0;
        rc = load_table(s, tm, &lp, 0, out, &cursor, &bytes, why, sizeof why);
        if (rc)
            rc = cqr_store_fail(s, rc, "generation %llu: table %s: %s",
                                (unsigned long long)gen, name, why);
    }
    if (rc == 0 && gen_out)
        *gen_out = gen;
    cqr_manifest_free(&g);
    pthread_mutex_unlock(&s->mu);
    return rc;
}
