/* export.c -- serving exports built from checkpoint generations
 * (export.h). */
#include "store/export.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/model.h"
#include "engine/table_model.h"
#include "ops/log.h"

struct cqr_exporter {
    cqr_server_ctx_t *ctx;  /* whose hooks it installed */
    cqr_store_t *store;     /* borrowed */
    char dir[4096];         /* <data-dir>/exports */
    pthread_mutex_t mu;     /* guards busy */
    pthread_cond_t cv;      /* a build ended */
    int busy;               /* a build is running */
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads table `name` of generation gen (0: newest) privately. */
static int read_gen(cqr_exporter_t *e, const char *name, uint64_t gen,
                    cqr_table_t **t, uint64_t *got, char *why, size_t whylen)
{
    int rc = cqr_store_read_table(e->store, gen, name, t, got);
    if (rc != 0)
        cqr_store_error(e->store, why, whylen);
    return rc;
}

/* Builds, writes and describes one export (the caller owns `busy`). */
static int build_export(cqr_exporter_t *e, const cqr_export_req_t *req,
                        cqr_export_res_t *res, char *why, size_t whylen)
{
    const double t0 = now_mono();
    cqr_log(CQR_LOG_INFO, "export", "export started table=%s generation=%"
            PRIu64 " since=%" PRIu64 " dtype=%s", req->table, req->generation,
            req->since, cqr_dtype_name(req->dtype));
    cqr_table_t *t = NULL, *base = NULL;
    uint64_t gen = 0, bgen = 0;
    uint8_t *img = NULL;
    size_t len = 0;
    int rc = read_gen(e, req->table, req->generation, &t, &gen, why, whylen);
    if (rc == 0 && req->since) {
        if (req->since >= gen) {
            snprintf(why, whylen, "since %" PRIu64 " is not older than the "
                     "generation exported (%" PRIu64 ")", req->since, gen);
            rc = CQR_EINVAL;
        } else {
            rc = read_gen(e, req->table, req->since, &base, &bgen, why,
                          whylen);
        }
    }
    if (rc == 0)
        rc = cqr_table_model(t, base, req->dtype, gen, bgen, &img, &len, why,
                             whylen);
    cqr_table_destroy(t);
    cqr_table_destroy(base);
    if (rc == 0 && mkdir(e->dir, 0755) != 0 && errno != EEXIST) {
        snprintf(why, whylen, "cannot create %s: %s", e->dir, strerror(errno));
        rc = CQR_EIO;
    }
    char path[4096 + 400];
    if (rc == 0) {
        char from[32] = "";
        if (bgen)
            snprintf(from, sizeof from, ".from%" PRIu64, bgen);
        snprintf(res->file, sizeof res->file, "%s.g%" PRIu64 "%s.%s.cqrm",
                 req->table, gen, from, cqr_dtype_name(req->dtype));
        snprintf(path, sizeof path, "%s/%s", e->dir, res->file);
        rc = cqr_model_save_image(img, len, path, why, whylen);
    }
    if (rc == 0) {
        res->generation = gen;
        res->base_generation = bgen;
        res->bytes = len;
        res->checksum = XXH3_64bits(img, len);
        uint64_t nids = 0;
        memcpy(&nids, img + 72, 8); /* model.h: the header's nids */
        res->ids = nids;
        res->seconds = now_mono() - t0;
        cqr_log(CQR_LOG_INFO, "export", "exported table=%s generation=%"
                PRIu64 " since=%" PRIu64 " dtype=%s file=%s bytes=%zu ids=%"
                PRIu64 " seconds=%.3f", req->table, gen, bgen,
                cqr_dtype_name(req->dtype), res->file, len, nids,
                res->seconds);
    } else {
        cqr_log(CQR_LOG_WARN, "export", "export failed table=%s err=%s "
                "detail=\"%s\"", req->table, cqr_errname(rc), why);
    }
    free(img);
    return rc;
}

/* Takes the one build slot (CQR_EBUSY if a build runs). */
static int take_slot(cqr_exporter_t *e, char *why, size_t whylen)
{
    pthread_mutex_lock(&e->mu);
    int rc = e->busy ? CQR_EBUSY : 0;
    e->busy = 1;
    pthread_mutex_unlock(&e->mu);
    if (rc)
        snprintf(why, whylen, "an export is running: retry when it ends");
    return rc;
}

static void give_slot(cqr_exporter_t *e)
{
    pthread_mutex_lock(&e->mu);
    e->busy = 0;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static int hook_build(void *ud, const cqr_export_req_t *req,
                      cqr_export_res_t *res, char *why, size_t whylen)
{
    cqr_exporter_t *e = ud;
    int rc = take_slot(e, why, whylen);
    if (rc)
        return rc;
    rc = build_export(e, req, res, why, whylen);
    give_slot(e);
    return rc;
}

typedef struct job {
    cqr_exporter_t *e;
    cqr_export_req_t req;
    cqr_deferred_t *d;
} job_t;

static void *job_main(void *arg)
{
    job_t *j = arg;
    cqr_export_res_t res;
    memset(&res, 0, sizeof res);
    char why[512] = "";
    int rc = build_export(j->e, &j->req, &res, why, sizeof why);
    cqr_rpc_export_done(j->d, rc, &res, why);
    cqr_exporter_t *e = j->e;
    free(j);
    give_slot(e);
    return NULL;
}

static int hook_build_async(void *ud, const cqr_export_req_t *req,
                            cqr_deferred_t *d)
{
    cqr_exporter_t *e = ud;
    char why[128];
    int rc = take_slot(e, why, sizeof why);
    if (rc)
        return rc;
    job_t *j = malloc(sizeof *j);
    pthread_t tid;
    pthread_attr_t at;
    if (j == NULL || pthread_attr_init(&at) != 0) {
        free(j);
        give_slot(e);
        return CQR_ENOMEM;
    }
    j->e = e;
    j->req = *req;
    j->d = d;
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&tid, &at, job_main, j) == 0 ? 0 : CQR_ENOMEM;
    pthread_attr_destroy(&at);
    if (rc) {
        free(j);
        give_slot(e);
    }
    return rc;
}

/* Export file names: what build_export makes of a table name. */
static int file_name_ok(const char *f)
{
    size_t n = strlen(f);
    if (n < 6 || n >= 320 || strcmp(f + n - 5, ".cqrm") != 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = f[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
              ch == '-'))
            return 0;
    }
    return 1;
}

static int hook_read(void *ud, const char *file, uint64_t off, uint8_t *buf,
                     size_t *n, uint64_t *total, char *why, size_t whylen)
{
    cqr_exporter_t *e = ud;
    if (!file_name_ok(file)) {
        snprintf(why, whylen, "not an export file name");
        return CQR_EINVAL;
    }
    char path[4096 + 400];
    snprintf(path, sizeof path, "%s/%s", e->dir, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        snprintf(why, whylen, "export %s: %s", file, strerror(err));
        return err == ENOENT ? CQR_ENOTFOUND : CQR_EIO;
    }
    *total = (uint64_t)sb.st_size;
    size_t want = off >= *total ? 0
                  : (uint64_t)*n < *total - off ? *n
                                                : (size_t)(*total - off);
    size_t got = 0;
    while (got < want) {
        ssize_t r = pread(fd, buf + got, want - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != want) {
        snprintf(why, whylen, "export %s: short read", file);
        return CQR_EIO;
    }
    *n = got;
    return 0;
}

int cqr_exporter_create(cqr_server_ctx_t *ctx, cqr_store_t *store,
                        const char *data_dir, cqr_exporter_t **out)
{
    cqr_exporter_t *e = calloc(1, sizeof *e);
    if (e == NULL)
        return CQR_ENOMEM;
    e->ctx = ctx;
    e->store = store;
    snprintf(e->dir, sizeof e->dir, "%s/exports", data_dir);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    ctx->exp.build = hook_build;
    ctx->exp.build_async = hook_build_async;
    ctx->exp.read = hook_read;
    ctx->exp.ud = e;
    *out = e;
    return 0;
}

void cqr_exporter_destroy(cqr_exporter_t *e)
{
    if (e == NULL)
        return;
    memset(&e->ctx->exp, 0, sizeof e->ctx->exp);
    pthread_mutex_lock(&e->mu);
    while (e->busy)
        pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
