/* serve.c -- the read-only serving mode (serve.h). */
#include "tables/serve.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/err.h"
#include "engine/model.h"
#include "engine/table_model.h"
#include "ops/log.h"
#include "tables/registry.h"

/* What a table serves, to tell whether its sources changed. */
typedef struct served {
    char name[CQR_NAME_MAX + 1];
    uint64_t generation;
    char sig[1024];           /* the sources' names, sizes and times */
} served_t;

struct cqr_serve {
    cqr_server_ctx_t *ctx;
    char files[4096];         /* --serve: comma-separated paths */
    char dir[4096];           /* --serve-dir */
    uint32_t poll_ms;         /* 0: reload at SIGHUP only */
    served_t *tabs;           /* the serve thread's (open: main's) */
    size_t ntabs, cap;
    pthread_t tid;
    int started;
    pthread_mutex_t mu;       /* guards want and stop */
    pthread_cond_t cv;
    int want;                 /* a reload was asked for */
    int stop;
};

/* An export in the directory. */
typedef struct cand {
    char table[CQR_NAME_MAX + 1];
    char file[320];
    uint64_t gen, from;       /* from 0: a full export */
    char stamp[64];           /* size and modification time */
} cand_t;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "NUMBER" after prefix p at s (p "g" or "from"), into *v. */
static int num_after(const char *s, size_t n, const char *p, uint64_t *v)
{
    size_t pl = strlen(p);
    if (n <= pl || strncmp(s, p, pl) != 0)
        return 0;
    uint64_t x = 0;
    for (size_t i = pl; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || x > UINT64_MAX / 10 - 9)
            return 0;
        x = x * 10 + (uint64_t)(s[i] - '0');
    }
    *v = x;
    return 1;
}

/* The table of a file name: TABLE.gGEN[.fromBASE].DTYPE.cqrm (1, with
 * gen and from) or NAME.cqrm (0, gen and from 0); -1 if not an export. */
static int parse_name(const char *base, char *table, uint64_t *gen,
                      uint64_t *from)
{
    size_t n = strlen(base);
    *gen = *from = 0;
    if (n <= 5 || strcmp(base + n - 5, ".cqrm") != 0 || n - 5 > 319)
        return -1;
    char s[320];
    memcpy(s, base, n - 5);
    s[n - 5] = '\0';
    char *dt = strrchr(s, '.');
    int exporter = 0;
    if (dt && (strcmp(dt + 1, "f32") == 0 || strcmp(dt + 1, "f16") == 0 ||
               strcmp(dt + 1, "int8") == 0)) {
        *dt = '\0';
        char *t = strrchr(s, '.');
        if (t && num_after(t + 1, strlen(t + 1), "from", from)) {
            *t = '\0';
            t = strrchr(s, '.');
        }
        if (t && num_after(t + 1, strlen(t + 1), "g", gen)) {
            *t = '\0';
            exporter = 1;
        } else {
            *from = 0;
            memcpy(s, base, n - 5); /* not the exporter's: the whole stem */
            s[n - 5] = '\0';
        }
    }
    size_t tl = strlen(s);
    if (tl > CQR_NAME_MAX || cqr_registry_name_check(s) != 0)
        return -1;
    memcpy(table, s, tl + 1);
    return exporter;
}

static served_t *served_find(cqr_serve_t *sv, const char *name, int add)
{
    for (size_t i = 0; i < sv->ntabs; i++)
        if (strcmp(sv->tabs[i].name, name) == 0)
            return &sv->tabs[i];
    if (!add)
        return NULL;
    if (sv->ntabs == sv->cap) {
        size_t cap = sv->cap ? 2 * sv->cap : 8;
        served_t *t = realloc(sv->tabs, cap * sizeof *t);
        if (!t)
            return NULL;
        sv->tabs = t;
        sv->cap = cap;
    }
    served_t *s = &sv->tabs[sv->ntabs++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

/* Opens the export at `full`, applies the deltas, builds the table and
 * swaps it in as `name`. */
static int load_chain(cqr_serve_t *sv, const char *name, const char *full,
                      char (*deltas)[4096 + 320], size_t nd,
                      const char *sig)
{
    const double t0 = now_mono();
    char why[512] = "";
    cqr_model_t *m = NULL;
    int rc = cqr_model_open(full, &m, why, sizeof why);
    for (size_t i = 0; rc == 0 && i < nd; i++) {
        cqr_model_t *d = NULL, *next = NULL;
        rc = cqr_model_open(deltas[i], &d, why, sizeof why);
        if (rc == 0)
            rc = cqr_model_apply_delta(m, d, &next, why, sizeof why);
        cqr_model_close(d);
        if (rc == 0) {
            cqr_model_close(m);
            m = next;
        }
    }
    cqr_table_t *t = NULL;
    uint64_t gen = 0;
    if (rc == 0) {
        gen = cqr_model_info(m)->generation;
        rc = cqr_table_from_model(m, &t, why, sizeof why);
    }
    cqr_model_close(m);
    if (rc == 0) {
        rc = cqr_registry_replace(sv->ctx->reg, name, t, gen, why,
                                  sizeof why);
        if (rc)
            cqr_table_destroy(t);
    }
    if (rc) {
        cqr_log(CQR_LOG_ERROR, "serve", "cannot serve table=%s file=%s "
                "err=%s detail=\"%s\"", name, full, cqr_errname(rc), why);
        return rc;
    }
    served_t *s = served_find(sv, name, 1);
    if (s) {
        s->generation = gen;
        snprintf(s->sig, sizeof s->sig, "%s", sig);
    }
    cqr_log(CQR_LOG_INFO, "serve", "serving table=%s generation=%" PRIu64
            " file=%s deltas=%zu seconds=%.3f", name, gen, full, nd,
            now_mono() - t0);
    return 0;
}

static void stamp_of(const struct stat *sb, char *buf, size_t len)
{
    snprintf(buf, len, "%llu:%llu:%lld.%09ld",
             (unsigned long long)sb->st_ino, (unsigned long long)sb->st_size,
             (long long)sb->st_mtim.tv_sec, sb->st_mtim.tv_nsec);
}

/* --serve FILE,...: (re)loads the files that changed (all with force). */
static int scan_files(cqr_serve_t *sv, int force)
{
    int first = 0;
    char list[4096];
    snprintf(list, sizeof list, "%s", sv->files);
    char *save = NULL;
    for (char *p = strtok_r(list, ",", &save); p;
         p = strtok_r(NULL, ",", &save)) {
        const char *base = strrchr(p, '/') ? strrchr(p, '/') + 1 : p;
        char table[CQR_NAME_MAX + 1];
        uint64_t gen, from;
        struct stat sb;
        int rc = parse_name(base, table, &gen, &from) < 0 ? CQR_EINVAL : 0;
        if (rc)
            cqr_log(CQR_LOG_ERROR, "serve", "not an export name file=%s "
                    "(NAME.cqrm, NAME of A-Z a-z 0-9 _ - .)", p);
        else if (stat(p, &sb) != 0) {
            cqr_log(CQR_LOG_ERROR, "serve", "cannot stat file=%s err=\"%s\"",
                    p, strerror(errno));
            rc = CQR_EIO;
        }
        if (rc == 0) {
            char sig[1024];
            stamp_of(&sb, sig, sizeof sig);
            served_t *s = served_find(sv, table, 0);
            if (force || !s || strcmp(s->sig, sig) != 0)
                rc = load_chain(sv, table, p, NULL, 0, sig);
        }
        if (rc && !first)
            first = rc;
    }
    return first;
}

/* The exports in the directory (*out malloc'd). */
static int list_dir(cqr_serve_t *sv, cand_t **out, size_t *n)
{
    DIR *d = opendir(sv->dir);
    if (!d) {
        cqr_log(CQR_LOG_ERROR, "serve", "cannot open dir=%s err=\"%s\"",
                sv->dir, strerror(errno));
        return CQR_EIO;
    }
    cand_t *c = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        cand_t x;
        if (parse_name(de->d_name, x.table, &x.gen, &x.from) < 0)
            continue;
        snprintf(x.file, sizeof x.file, "%s", de->d_name);
        char path[4096 + 320];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", sv->dir, x.file);
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        stamp_of(&sb, x.stamp, sizeof x.stamp);
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            cand_t *g = realloc(c, cap * sizeof *c);
            if (!g)
                break;
            c = g;
        }
        c[cnt++] = x;
    }
    closedir(d);
    *out = c;
    *n = cnt;
    return 0;
}

enum { MAX_CHAIN = 64 };

/* Table `name` of the directory: its newest full export and the chain
 * of deltas after it; loads it when that differs from what it serves. */
static int serve_dir_table(cqr_serve_t *sv, const cand_t *c, size_t n,
                           const char *name, int force)
{
    const cand_t *full = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(c[i].table, name) == 0 && c[i].from == 0 &&
            (!full || c[i].gen > full->gen))
            full = &c[i];
    if (!full)
        return 0; /* deltas alone: nothing to apply them to yet */
    static char deltas[MAX_CHAIN][4096 + 320];
    char sig[1024];
    int at = snprintf(sig, sizeof sig, "%s@%s", full->file, full->stamp);
    size_t nd = 0;
    for (uint64_t cur = full->gen; nd < MAX_CHAIN;) {
        const cand_t *next = NULL;
        for (size_t i = 0; i < n; i++)
            if (strcmp(c[i].table, name) == 0 && c[i].from == cur &&
                c[i].gen > cur && (!next || c[i].gen > next->gen))
                next = &c[i];
        if (!next)
            break;
        snprintf(deltas[nd++], sizeof deltas[0], "%s/%s", sv->dir,
                 next->file);
        if (at >= 0 && (size_t)at < sizeof sig)
            at += snprintf(sig + at, sizeof sig - (size_t)at, ",%s@%s",
                           next->file, next->stamp);
        cur = next->gen;
    }
    served_t *s = served_find(sv, name, 0);
    if (!force && s && strcmp(s->sig, sig) == 0)
        return 0;
    char path[4096 + 320];
    snprintf(path, sizeof path, "%s/%s", sv->dir, full->file);
    return load_chain(sv, name, path, deltas, nd, sig);
}

static int scan_dir(cqr_serve_t *sv, int force)
{
    cand_t *c = NULL;
    size_t n = 0;
    int rc = list_dir(sv, &c, &n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(c[j].table, c[i].table) == 0;
        if (!seen)
            (void)serve_dir_table(sv, c, n, c[i].table, force);
    }
    free(c);
    return rc;
}

static int scan(cqr_serve_t *sv, int force)
{
    return sv->dir[0] ? scan_dir(sv, force) : scan_files(sv, force);
}

static void *serve_main(void *arg)
{
    cqr_serve_t *sv = arg;
    for (;;) {
        pthread_mutex_lock(&sv->mu);
        if (!sv->want && !sv->stop) {
            if (sv->poll_ms == 0) {
                pthread_cond_wait(&sv->cv, &sv->mu);
            } else {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t ns = (uint64_t)ts.tv_nsec +
                              (uint64_t)sv->poll_ms * 1000000u;
                ts.tv_sec += (time_t)(ns / 1000000000u);
                ts.tv_nsec = (long)(ns % 1000000000u);
                pthread_cond_timedwait(&sv->cv, &sv->mu, &ts);
            }
        }
        int force = sv->want, stop = sv->stop;
        sv->want = 0;
        pthread_mutex_unlock(&sv->mu);
        if (stop)
            break;
        if (force)
            cqr_log(CQR_LOG_INFO, "serve", "reloading (SIGHUP)");
        (void)scan(sv, force);
    }
    return NULL;
}

int cqr_serve_open(cqr_server_ctx_t *ctx, const cqr_config_t *cfg,
                   cqr_serve_t **out)
{
    cqr_serve_t *sv = calloc(1, sizeof *sv);
    if (!sv)
        return CQR_ENOMEM;
    sv->ctx = ctx;
    snprintf(sv->files, sizeof sv->files, "%s", cfg->serve);
    snprintf(sv->dir, sizeof sv->dir, "%s", cfg->serve_dir);
    sv->poll_ms = cfg->serve_poll_ms;
    pthread_mutex_init(&sv->mu, NULL);
    pthread_cond_init(&sv->cv, NULL);
    ctx->read_only = 1;
    int rc = scan(sv, 1);
    if (rc == 0 && pthread_create(&sv->tid, NULL, serve_main, sv) != 0)
        rc = CQR_EINTERNAL;
    if (rc) {
        cqr_serve_close(sv);
        return rc;
    }
    sv->started = 1;
    *out = sv;
    return 0;
}

void cqr_serve_reload(cqr_serve_t *sv)
{
    if (!sv)
        return;
    pthread_mutex_lock(&sv->mu);
    sv->want = 1;
    pthread_cond_signal(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
}

void cqr_serve_close(cqr_serve_t *sv)
{
    if (!sv)
        return;
    pthread_mutex_lock(&sv->mu);
    sv->stop = 1;
    pthread_cond_signal(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
    if (sv->started)
        pthread_join(sv->tid, NULL);
    pthread_cond_destroy(&sv->cv);
    pthread_mutex_destroy(&sv->mu);
    free(sv->tabs);
    free(sv);
}
