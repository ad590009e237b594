/* table_config.c -- table configs: defaults, validation, the memory a
 * config will take, and the names of kinds and optimizers (table.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "rows.h"
#include "sketch.h"
#include "table.h"

static const char *const kind_names[] = {"full", "hash", "ce", "cqr"};
static const char *const optim_names[] = {"sgd", "adagrad", "adam"};

/* The index of `name` in names[0..n), or -1. */
static int name_index(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(name, names[i]) == 0)
            return i;
    }
    return -1;
}

const char *cqr_kind_name(cqr_kind_t kind)
{
    return (unsigned)kind < 4 ? kind_names[kind] : "unknown";
}

int cqr_kind_parse(const char *name, cqr_kind_t *out)
{
    int i = name_index(kind_names, 4, name);
    if (i < 0)
        return CQR_EINVAL;
    *out = (cqr_kind_t)i;
    return 0;
}

const char *cqr_optim_name(cqr_optim_kind_t kind)
{
    return (unsigned)kind < 3 ? optim_names[kind] : "unknown";
}

int cqr_optim_parse(const char *name, cqr_optim_kind_t *out)
{
    int i = name_index(optim_names, 3, name);
    if (i < 0)
        return CQR_EINVAL;
    *out = (cqr_optim_kind_t)i;
    return 0;
}

void cqr_table_config_default(cqr_table_config_t *cfg, cqr_kind_t kind,
                              uint32_t dim)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = kind;
    cfg->dim = dim;
    cfg->chunks = 1;
    if (kind == CQR_KIND_CE || kind == CQR_KIND_CQR) {
        cfg->chunks = 4;
        while (cfg->chunks > 1 && dim % cfg->chunks)
            cfg->chunks--;
    }
    cfg->rows = kind == CQR_KIND_FULL ? 0 : 1024;
    /* Measured (README, "Defaults"): +-0.01 beats +-1/sqrt(dim) for
     * every kind on two MovieLens sets, and zeroing the codebooks'
     * optimizer state at each phase helps cqr; other kinds have no phase. */
    cfg->init_scale = CQR_DEFAULT_INIT_SCALE;
    cfg->reset_optimizer = kind == CQR_KIND_CQR;
    cfg->optim.kind = CQR_OPT_ADAM;
    cfg->optim.lr = 1e-3f;
    cfg->optim.beta1 = 0.9f;
    cfg->optim.beta2 = 0.999f;
    cfg->optim.eps = 1e-8f;
    cfg->optim.weight_decay = 0.0f;
    cfg->cluster_iters = 25;
    cfg->cluster_tol = CQR_DEFAULT_CLUSTER_TOL;
    cfg->cluster_sample = 200;
    cfg->cluster_threads = 1;
    cfg->admit_after = 1;
}

/* Writes a one-line reason for a rejected config to why[0..whylen) (if
 * why is non-NULL) and returns CQR_EINVAL. */
static int reject(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int reject(char *why, size_t whylen, const char *fmt, ...)
{
    if (why) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return CQR_EINVAL;
}

/* The admission and eviction options (issue 19). */
static int memory_check(const cqr_table_config_t *cfg, char *why,
                        size_t whylen)
{
    const int tracks = cfg->kind == CQR_KIND_FULL ||
                       cfg->kind == CQR_KIND_CQR;
    if (cfg->admit_after > CQR_MAX_ADMIT_AFTER)
        return reject(why, whylen, "admit_after %u out of range 0..%u",
                      cfg->admit_after, CQR_MAX_ADMIT_AFTER);
    if (cfg->admit_after > 1 && !tracks)
        return reject(why, whylen, "admit_after applies to full and cqr "
                      "tables only");
    if (cfg->evict_after_phases && cfg->kind != CQR_KIND_CQR)
        return reject(why, whylen, "evict_after_phases applies to cqr "
                      "tables only");
    if (cfg->evict_after_phases > 1000000)
        return reject(why, whylen, "evict_after_phases %u out of range "
                      "0..1000000", cfg->evict_after_phases);
    if ((cfg->max_ids || cfg->ttl_seconds) && cfg->kind != CQR_KIND_FULL)
        return reject(why, whylen, "max_ids and ttl_seconds apply to full "
                      "tables only");
    if (cfg->max_ids >= UINT32_MAX)
        return reject(why, whylen, "max_ids must be below 2^32");
    if (cfg->compact > 1)
        return reject(why, whylen, "compact must be 0 or 1");
    if (cfg->compact && cfg->kind != CQR_KIND_CQR)
        return reject(why, whylen, "compact applies to cqr tables only");
    if (cfg->compact && cfg->evict_after_phases)
        return reject(why, whylen, "compact and evict_after_phases "
                      "exclude each other (eviction needs the map "
                      "layout)");
    return 0;
}

int cqr_table_config_check(const cqr_table_config_t *cfg, char *why,
                           size_t whylen)
{
    if ((unsigned)cfg->kind > CQR_KIND_CQR)
        return reject(why, whylen, "unknown table kind %d", (int)cfg->kind);
    if (cfg->dim < 1 || cfg->dim > CQR_MAX_DIM)
        return reject(why, whylen, "dim %u out of range 1..%u", cfg->dim,
                      CQR_MAX_DIM);
    int chunked = cfg->kind == CQR_KIND_CE || cfg->kind == CQR_KIND_CQR;
    if (chunked) {
        if (cfg->chunks < 1 || cfg->chunks > CQR_MAX_CHUNKS)
            return reject(why, whylen, "chunks %u out of range 1..%u",
                          cfg->chunks, CQR_MAX_CHUNKS);
        if (cfg->dim % cfg->chunks)
            return reject(why, whylen, "dim %u is not divisible by chunks %u",
                          cfg->dim, cfg->chunks);
    } else if (cfg->chunks != 1) {
        return reject(why, whylen, "chunks must be 1 for kind %s",
                      cqr_kind_name(cfg->kind));
    }
    if (cfg->kind == CQR_KIND_FULL) {
        if (cfg->rows != 0)
            return reject(why, whylen, "rows must be 0 for kind full");
    } else if (cfg->rows < 1 || cfg->rows > CQR_MAX_ROWS) {
        return reject(why, whylen, "rows %u out of range 1..%u", cfg->rows,
                      CQR_MAX_ROWS);
    }
    if (!(cfg->init_scale >= 0.0f && cfg->init_scale <= 1e3f))
        return reject(why, whylen, "init_scale must be in [0, 1000]");
    const cqr_optim_config_t *o = &cfg->optim;
    if ((unsigned)o->kind > CQR_OPT_ADAM)
        return reject(why, whylen, "unknown optimizer %d", (int)o->kind);
    if (!(o->lr > 0.0f && o->lr <= 1e6f))
        return reject(why, whylen, "learning rate must be in (0, 1e6]");
    if (!(o->weight_decay >= 0.0f && o->weight_decay * o->lr < 1.0f))
        return reject(why, whylen,
                      "weight_decay must be >= 0 and lr * weight_decay < 1");
    if (o->kind == CQR_OPT_ADAM &&
        !(o->beta1 >= 0.0f && o->beta1 < 1.0f && o->beta2 >= 0.0f &&
          o->beta2 < 1.0f))
        return reject(why, whylen, "Adam betas must be in [0, 1)");
    if (o->kind != CQR_OPT_SGD && !(o->eps > 0.0f && o->eps < 1.0f))
        return reject(why, whylen, "eps must be in (0, 1)");
    if (cfg->cluster_iters < 1 || cfg->cluster_iters > 10000)
        return reject(why, whylen,
                      "cluster iterations %u out of range 1..10000",
                      cfg->cluster_iters);
    if (!(cfg->cluster_tol >= 0.0f && cfg->cluster_tol < 1.0f))
        return reject(why, whylen, "cluster tolerance must be in [0, 1)");
    if (cfg->cluster_sample < 1 || cfg->cluster_sample > 100000)
        return reject(why, whylen,
                      "cluster sample per centroid %u out of range "
                      "1..100000",
                      cfg->cluster_sample);
    if (cfg->cluster_threads < 1 || cfg->cluster_threads > 256)
        return reject(why, whylen, "cluster threads %u out of range 1..256",
                      cfg->cluster_threads);
    if (cfg->reset_optimizer > 1)
        return reject(why, whylen, "reset_optimizer must be 0 or 1");
    return memory_check(cfg, why, whylen);
}

uint64_t cqr_table_config_bytes(const cqr_table_config_t *cfg)
{
    uint64_t sketch = cfg->admit_after > 1 ? CQR_SKETCH_BYTES : 0;
    if (cfg->kind == CQR_KIND_FULL) {
        if (cfg->admit_after <= 1)
            return 0;
        uint64_t per_row = cfg->dim * 4 + 4 +
                           (uint64_t)cqr_optim_state_floats(cfg->optim.kind,
                                                            cfg->dim) * 4 +
                           (cfg->optim.kind == CQR_OPT_ADAM ? 4 : 0);
        return sketch + CQR_FALLBACK_ROWS * per_row;
    }
    uint64_t ncb = cfg->kind == CQR_KIND_HASH ? 1 : 2;
    uint64_t c = cfg->chunks ? cfg->chunks : 1;
    uint64_t w = cfg->dim / c;
    uint64_t per_row = w * 4 + 4 +
                       (uint64_t)cqr_optim_state_floats(cfg->optim.kind,
                                                        (uint32_t)w) * 4 +
                       (cfg->optim.kind == CQR_OPT_ADAM ? 4 : 0);
    return sketch + ncb * c * cfg->rows * per_row;
}
