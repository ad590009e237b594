/* chain.h -- an in-memory stand-in for the store, for the persist tests:
 * keeps each page's base and deltas the way store.c does, and rebuilds a
 * table from them. */
#ifndef CQR_TEST_CHAIN_H
#define CQR_TEST_CHAIN_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "engine/persist.h"

typedef struct chain_page {
    uint32_t type, index; /* page */
    size_t n;             /* segments: a base, then deltas */
    uint8_t **seg;        /* copies */
    size_t *len;
} chain_page_t;

typedef struct chain {
    size_t np;          /* pages of the last export */
    chain_page_t *p;
    uint32_t cursor;    /* since for the next export */
    uint64_t uid;       /* table the cursor belongs to */
    uint64_t bytes;     /* bytes of the last export applied */
    size_t bases, deltas, unchanged; /* segments of the last export */
} chain_t;

static inline void chain_page_free(chain_page_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->seg[i]);
    free(p->seg);
    free(p->len);
    memset(p, 0, sizeof *p);
}

static inline void chain_free(chain_t *c)
{
    for (size_t i = 0; i < c->np; i++)
        chain_page_free(&c->p[i]);
    free(c->p);
    memset(c, 0, sizeof *c);
}

static inline void chain_push_seg(chain_page_t *p, const cqr_segment_t *s)
{
    p->seg = realloc(p->seg, (p->n + 1) * sizeof *p->seg);
    p->len = realloc(p->len, (p->n + 1) * sizeof *p->len);
    ck_assert_ptr_nonnull(p->seg);
    ck_assert_ptr_nonnull(p->len);
    p->seg[p->n] = malloc(s->len);
    ck_assert_ptr_nonnull(p->seg[p->n]);
    memcpy(p->seg[p->n], s->data, s->len);
    p->len[p->n] = s->len;
    p->n++;
}

/* Applies an export: the page list becomes the export's. */
static inline void chain_apply(chain_t *c, const cqr_export_t *x)
{
    chain_page_t *np = calloc(x->nseg ? x->nseg : 1, sizeof *np);
    ck_assert_ptr_nonnull(np);
    c->bases = c->deltas = c->unchanged = 0;
    for (size_t i = 0; i < x->nseg; i++) {
        const cqr_segment_t *s = &x->seg[i];
        chain_page_t *old = NULL;
        for (size_t j = 0; j < c->np; j++) {
            if (c->p[j].type == s->type && c->p[j].index == s->index)
                old = &c->p[j];
        }
        np[i].type = s->type;
        np[i].index = s->index;
        if (s->kind == CQR_SEG_BASE) {
            chain_push_seg(&np[i], s);
            c->bases++;
            continue;
        }
        ck_assert_msg(old != NULL, "page %u/%u changed without a base",
                      s->type, s->index);
        np[i] = *old;
        memset(old, 0, sizeof *old);
        if (s->kind == CQR_SEG_DELTA) {
            chain_push_seg(&np[i], s);
            c->deltas++;
        } else {
            c->unchanged++;
        }
    }
    for (size_t j = 0; j < c->np; j++)
        chain_page_free(&c->p[j]);
    free(c->p);
    c->p = np;
    c->np = x->nseg;
    c->cursor = x->cursor;
    c->uid = x->uid;
    c->bytes = x->bytes;
}

/* Exports t incrementally against the chain and applies it. */
static inline void chain_export(chain_t *c, cqr_table_t *t)
{
    cqr_export_opts_t o = {0};
    o.since = c->uid == cqr_table_uid(t) ? c->cursor : 0;
    cqr_export_t *x = NULL;
    ck_assert_int_eq(cqr_table_export(t, &o, &x), 0);
    chain_apply(c, x);
    cqr_export_free(x);
}

/* Rebuilds a table from the chain; with adopt, the chain then tracks the
 * new table (as a store does after a load), else it keeps tracking the
 * exported one. */
static inline cqr_table_t *chain_import(chain_t *c, int adopt)
{
    cqr_import_t *im = NULL;
    ck_assert_int_eq(cqr_import_begin(&im), 0);
    for (size_t i = 0; i < c->np; i++) {
        for (size_t j = 0; j < c->p[i].n; j++) {
            int rc = cqr_import_segment(im, c->p[i].seg[j], c->p[i].len[j]);
            ck_assert_msg(rc == 0, "import: %s", cqr_import_error(im));
        }
    }
    cqr_table_t *t = NULL;
    uint32_t cursor = 0;
    ck_assert_int_eq(cqr_import_finish(im, &t, &cursor), 0);
    if (adopt) {
        c->cursor = cursor;
        c->uid = cqr_table_uid(t);
    }
    return t;
}

#endif
