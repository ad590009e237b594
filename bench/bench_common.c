/* bench_common.c -- helpers shared by the cqrps benchmark programs. */
#include "bench_common.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double bench_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double bench_thread_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t bench_id(uint64_t rank)
{
    /* cqr_mix64 is a bijection with cqr_mix64(0) == 0; offsetting the
     * rank keeps the ID 0 out of the vocabulary (it is a special key in
     * many maps, including ours, and we measure the common path). */
    return cqr_mix64(rank + 0x5bd1e995ULL);
}

void bench_rng_seed(bench_rng_t *r, uint64_t seed)
{
    cqr_rng_seed(r, seed * 0x2545f4914f6cdd1dULL + 1);
}

uint64_t bench_rng_next(bench_rng_t *r)
{
    return cqr_rng_next(r);
}

double bench_rng_unit(bench_rng_t *r)
{
    return cqr_rng_double(r);
}

uint64_t bench_rng_below(bench_rng_t *r, uint64_t n)
{
    return cqr_rng_below(r, n);
}

/* Rejection-inversion sampling of Zipf(s) over ranks 1..n (W. Hormann, G.
 * Derflinger, "Rejection-inversion to generate variates from monotone
 * discrete distributions", 1996), as in Apache Commons Math. */
static double zipf_h(double x, double s)
{
    double lx = log(x);
    double e = (1.0 - s) * lx;
    /* (exp(e) - 1) / (1 - s), stable near s == 1. */
    return (fabs(e) > 1e-8 ? expm1(e) / e : 1.0 + e / 2.0) * lx;
}

static double zipf_hinv(double x, double s)
{
    double t = x * (1.0 - s);
    if (t < -1.0)
        t = -1.0;
    double l = fabs(t) > 1e-8 ? log1p(t) / t : 1.0 - t / 2.0;
    return exp(l * x);
}

void bench_ranks_init(bench_ranks_t *z, uint64_t n, double s)
{
    memset(z, 0, sizeof *z);
    z->n = n ? n : 1;
    z->s = s;
    if (s <= 0.0)
        return;
    z->h_x1 = zipf_h(1.5, s) - 1.0;
    z->h_n = zipf_h((double)z->n + 0.5, s);
    z->sconst = 2.0 - zipf_hinv(zipf_h(2.5, s) - exp(-s * log(2.0)), s);
}

uint64_t bench_ranks_draw(bench_ranks_t *z, bench_rng_t *r)
{
    if (z->s <= 0.0)
        return bench_rng_below(r, z->n);
    for (;;) {
        double u = z->h_n + bench_rng_unit(r) * (z->h_x1 - z->h_n);
        double x = zipf_hinv(u, z->s);
        double k = floor(x + 0.5);
        if (k < 1.0)
            k = 1.0;
        else if (k > (double)z->n)
            k = (double)z->n;
        if (k - x <= z->sconst ||
            u >= zipf_h(k + 0.5, z->s) - exp(-z->s * log(k)))
            return (uint64_t)k - 1;
    }
}

void bench_draw_ids(bench_ranks_t *z, bench_rng_t *r, uint64_t *ids,
                    size_t n)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = bench_id(bench_ranks_draw(z, r));
}

void bench_lat_add(bench_lat_t *l, double us)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4096;
        double *p = realloc(l->us, cap * sizeof *p);
        if (!p)
            return; /* drop the sample rather than abort a benchmark */
        l->us = p;
        l->cap = cap;
    }
    l->us[l->n++] = us;
}

void bench_lat_merge(bench_lat_t *dst, const bench_lat_t *src)
{
    for (size_t i = 0; i < src->n; i++)
        bench_lat_add(dst, src->us[i]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void bench_lat_sort(bench_lat_t *l)
{
    if (l->n)
        qsort(l->us, l->n, sizeof *l->us, cmp_double);
}

double bench_lat_pct(const bench_lat_t *l, double p)
{
    if (!l->n)
        return 0.0;
    size_t i = (size_t)ceil(p * (double)l->n);
    if (i > 0)
        i--;
    if (i >= l->n)
        i = l->n - 1;
    return l->us[i];
}

void bench_lat_free(bench_lat_t *l)
{
    free(l->us);
    memset(l, 0, sizeof *l);
}

static uint64_t status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    size_t fl = strlen(field);
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, field, fl) && line[fl] == ':') {
            kb = strtoull(line + fl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

uint64_t bench_rss_bytes(void)
{
    return status_kb("VmRSS");
}

uint64_t bench_peak_rss_bytes(void)
{
    return status_kb("VmHWM");
}

double bench_proc_cpu_seconds(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1.0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* The command name may contain spaces: fields start after the last
     * ')'. utime and stime are fields 14 and 15 (1-based). */
    char *p = strrchr(buf, ')');
    if (!p)
        return -1.0;
    p += 2; /* field 3 */
    unsigned long long ut = 0, st = 0;
    int field = 3;
    while (*p && field < 14) {
        if (*p++ == ' ')
            field++;
    }
    if (sscanf(p, "%llu %llu", &ut, &st) != 2)
        return -1.0;
    long hz = sysconf(_SC_CLK_TCK);
    return (double)(ut + st) / (double)(hz > 0 ? hz : 100);
}

int bench_parse_count(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0)
        return -1;
    switch (*end) {
    case 'k': case 'K': v *= 1e3; end++; break;
    case 'm': case 'M': v *= 1e6; end++; break;
    case 'g': case 'G': v *= 1e9; end++; break;
    default: break;
    }
    if (*end)
        return -1;
    *out = (uint64_t)(v + 0.5);
    return 0;
}

void bench_log(const char *prog, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", prog, msg);
}

/* From OpenBLAS (every benchmark links it, so that each logs the BLAS
 * kernels the machine runs: see DESIGN.md s6). */
char *openblas_get_corename(void);

const char *bench_blas_core(void)
{
    const char *s = openblas_get_corename();
    return s ? s : "unknown";
}
