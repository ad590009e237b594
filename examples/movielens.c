/* movielens.c -- u.data loading, the standard split, synthetic data. */
#include "movielens.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- Random numbers ----------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ml_rng_seed(ml_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;

    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t ml_rng_next(ml_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double ml_rng_unif(ml_rng_t *r)
{
    return (double)(ml_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t ml_rng_below(ml_rng_t *r, uint64_t n)
{
    /* Rejection of the top partial range removes the modulo bias. */
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;

    do
        x = ml_rng_next(r);
    while (x >= lim);
    return x % n;
}

void ml_shuffle(ml_row_t *rows, size_t n, ml_rng_t *r)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)ml_rng_below(r, i);
        ml_row_t t = rows[i - 1];

        rows[i - 1] = rows[j];
        rows[j] = t;
    }
}

/* ---- The split ---------------------------------------------------------- */

/* A kept row during the split: dense ids plus what orders it. */
typedef struct kept {
    uint32_t user;     /* dense user id */
    uint32_t item;     /* dense item id */
    int64_t ts;        /* timestamp */
    size_t pos;        /* position in the file: the tie-breaker */
    float label;       /* 0/1 */
} kept_t;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* (user, timestamp, file position): a total order, so qsort is stable. */
static int cmp_kept(const void *a, const void *b)
{
    const kept_t *x = a, *y = b;

    if (x->user != y->user)
        return x->user < y->user ? -1 : 1;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Sorts and deduplicates v[0..n) in place; returns the distinct count. */
static size_t sort_unique(uint64_t *v, size_t n)
{
    size_t m = 0;

    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    for (size_t i = 1; i < n; i++)
        if (v[i] != v[m])
            v[++m] = v[i];
    return m + 1;
}

static uint32_t rank_of(const uint64_t *sorted, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (sorted[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)lo;
}

/* The validation rows of the kept ratings k (sorted by user, then
 * time): the last ML_VALID_PER_USER of each user's run. */
static size_t valid_rows(const kept_t *k, size_t nk)
{
    size_t nvalid = 0;
    for (size_t a = 0; a < nk;) {
        size_t b = a;

        while (b < nk && k[b].user == k[a].user)
            b++;
        nvalid += b - a < ML_VALID_PER_USER ? b - a : ML_VALID_PER_USER;
        a = b;
    }
    return nvalid;
}

/* Fills out->train and out->valid (sized by valid_rows) from k. */
static void fill_split(const kept_t *k, size_t nk, ml_data_t *out)
{
    size_t it = 0, iv = 0;
    for (size_t a = 0; a < nk;) {
        size_t b = a, cut;

        while (b < nk && k[b].user == k[a].user)
            b++;
        cut = b - a < ML_VALID_PER_USER ? a : b - ML_VALID_PER_USER;
        for (size_t j = a; j < b; j++) {
            ml_row_t r = {k[j].user, k[j].item, k[j].label};

            if (j < cut)
                out->train[it++] = r;
            else
                out->valid[iv++] = r;
        }
        a = b;
    }
    assert(it == out->ntrain && iv == out->nvalid);
}

int ml_split(const ml_raw_t *raw, size_t n, ml_data_t *out, char *err,
             size_t errlen)
{
    uint64_t *users = NULL, *items = NULL;
    kept_t *k = NULL;
    size_t nk = 0, nu, ni;
    int rc = -1;

    memset(out, 0, sizeof *out);
    out->nraw = n;
    if (n == 0) {
        set_err(err, errlen, "no ratings");
        return -1;
    }
    users = malloc(n * sizeof *users);
    items = malloc(n * sizeof *items);
    k = malloc(n * sizeof *k);
    if (!users || !items || !k) {
        set_err(err, errlen, "out of memory for %zu ratings", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (raw[i].rating == 3)
            continue;
        users[nk] = raw[i].user;
        items[nk] = raw[i].item;
        nk++;
    }
    if (nk == 0) {
        set_err(err, errlen, "no ratings left after dropping rating 3");
        goto out;
    }
    nu = sort_unique(users, nk);
    ni = sort_unique(items, nk);
    if (nu > UINT32_MAX || ni > UINT32_MAX) {
        set_err(err, errlen, "too many distinct ids");
        goto out;
    }
    nk = 0;
    for (size_t i = 0; i < n; i++) {
        if (raw[i].rating == 3)
            continue;
        k[nk].user = rank_of(users, nu, raw[i].user);
        k[nk].item = rank_of(items, ni, raw[i].item);
        k[nk].ts = raw[i].timestamp;
        k[nk].pos = i;
        k[nk].label = raw[i].rating >= 4 ? 1.0f : 0.0f;
        nk++;
    }
    qsort(k, nk, sizeof *k, cmp_kept);

    /* Count first, then fill. */
    size_t nvalid = valid_rows(k, nk);
    out->ntrain = nk - nvalid;
    out->nvalid = nvalid;
    out->train = malloc((out->ntrain ? out->ntrain : 1) * sizeof *out->train);
    out->valid = malloc((nvalid ? nvalid : 1) * sizeof *out->valid);
    if (!out->train || !out->valid) {
        set_err(err, errlen, "out of memory for the split");
        goto out;
    }
    fill_split(k, nk, out);
    out->nusers = (uint32_t)nu;
    out->nitems = (uint32_t)ni;
    out->nkept = nk;
    rc = 0;
out:
    if (rc != 0) {
        free(out->train);
        free(out->valid);
        memset(out, 0, sizeof *out);
    }
    free(users);
    free(items);
    free(k);
    return rc;
}

/* ---- u.data ------------------------------------------------------------- */

int ml_read_udata(const char *path, ml_raw_t **raw, size_t *n, char *err,
                  size_t errlen)
{
    char file[4096];
    struct stat st;
    FILE *f;
    ml_raw_t *v = NULL;
    size_t cap = 0, len = 0, lineno = 0;
    char line[512];

    *raw = NULL;
    *n = 0;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* ml-100k has u.data; the later releases have ratings.dat. */
        snprintf(file, sizeof file, "%s/u.data", path);
        if (stat(file, &st) != 0)
            snprintf(file, sizeof file, "%s/ratings.dat", path);
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    f = fopen(file, "r");
    if (!f) {
        set_err(err, errlen, "%s: %s (download MovieLens-100k and pass the "
                "ml-100k directory or its u.data)", file, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        unsigned long long u, it;
        int r;
        long long ts;

        lineno++;
        if (line[0] == '\n' || line[0] == '#')
            continue;
        /* ratings.dat separates its fields with "::" */
        for (char *c = line; *c; c++)
            if (*c == ':')
                *c = ' ';
        if (sscanf(line, "%llu %llu %d %lld", &u, &it, &r, &ts) != 4 ||
            r < 1 || r > 5) {
            set_err(err, errlen, "%s:%zu: expected 'user item rating "
                    "timestamp' with a rating of 1..5", file, lineno);
            goto fail;
        }
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            ml_raw_t *nv = realloc(v, ncap * sizeof *v);

            if (!nv) {
                set_err(err, errlen, "out of memory reading %s", file);
                goto fail;
            }
            v = nv;
            cap = ncap;
        }
        v[len].user = u;
        v[len].item = it;
        v[len].rating = r;
        v[len].timestamp = ts;
        len++;
    }
    if (ferror(f)) {
        set_err(err, errlen, "%s: read error", file);
        goto fail;
    }
    fclose(f);
    *raw = v;
    *n = len;
    return 0;
fail:
    fclose(f);
    free(v);
    return -1;
}

int ml_load(const char *path, ml_data_t *out, char *err, size_t errlen)
{
    ml_raw_t *raw;
    size_t n;
    int rc;

    memset(out, 0, sizeof *out);
    if (ml_read_udata(path, &raw, &n, err, errlen) != 0)
        return -1;
    rc = ml_split(raw, n, out, err, errlen);
    free(raw);
    return rc;
}

/* ---- Synthetic data ----------------------------------------------------- */

void ml_synth_config_default(ml_synth_config_t *cfg)
{
    cfg->users = 1000;
    cfg->items = 1700;
    cfg->groups = 4;
    cfg->mean_per_user = 74;
    cfg->p_match = 0.9;
    cfg->p_other = 0.15;
    cfg->zipf = 0.6;
}

#define SYNTH_MIN_PER_USER 20u

/* The synthetic data's planted structure and its random sequence. */
typedef struct synth {
    const ml_synth_config_t *cfg;
    ml_rng_t rng;
    uint32_t *ugroup;  /* each user's group */
    uint32_t *igroup;  /* each item's group */
    int8_t *likes;     /* groups x groups: user group likes item group */
    double *cdf;       /* item popularity, cumulative */
    double acc;        /* its total */
    uint32_t *seen;    /* u + 1 for the items user u rated */
} synth_t;

static int synth_config_ok(const ml_synth_config_t *cfg)
{
    uint32_t I = cfg->items, G = cfg->groups;
    return cfg->users >= 1 && I >= SYNTH_MIN_PER_USER * 2 && G >= 1 &&
           G <= I && cfg->mean_per_user >= SYNTH_MIN_PER_USER &&
           cfg->mean_per_user <= I / 2 && cfg->p_match >= 0 &&
           cfg->p_match <= 1 && cfg->p_other >= 0 && cfg->p_other <= 1 &&
           cfg->zipf >= 0 && cfg->zipf <= 4;
}

/* Draws the planted structure: a group per user and per item, which user
 * groups like which item groups (a random sign matrix), and Zipf-like
 * popularity over items in index order (groups are drawn independently of
 * it). */
static void synth_plant(synth_t *s)
{
    uint32_t U = s->cfg->users, I = s->cfg->items, G = s->cfg->groups;
    for (uint32_t u = 0; u < U; u++)
        s->ugroup[u] = (uint32_t)ml_rng_below(&s->rng, G);
    for (uint32_t i = 0; i < I; i++)
        s->igroup[i] = (uint32_t)ml_rng_below(&s->rng, G);
    for (size_t g = 0; g < (size_t)G * G; g++)
        s->likes[g] = ml_rng_unif(&s->rng) < 0.5;
    s->acc = 0;
    for (uint32_t i = 0; i < I; i++) {
        s->acc += pow((double)i + 1.0, -s->cfg->zipf);
        s->cdf[i] = s->acc;
    }
}

/* An item drawn by popularity. */
static uint32_t synth_item(synth_t *s)
{
    double x = ml_rng_unif(&s->rng) * s->acc;
    size_t lo = 0, hi = s->cfg->items - 1;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;

        if (s->cdf[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint32_t)lo;
}

/* User u's count ratings, of distinct items, into v. */
static void synth_user(synth_t *s, uint32_t u, uint32_t count, ml_raw_t *v)
{
    int64_t ts = 874000000 + (int64_t)ml_rng_below(&s->rng, 1000000);

    for (uint32_t j = 0; j < count; j++) {
        uint32_t it;

        /* Redraw an item already rated. */
        do {
            it = synth_item(s);
        } while (s->seen[it] == u + 1);
        s->seen[it] = u + 1;

        int like = s->likes[(size_t)s->ugroup[u] * s->cfg->groups +
                            s->igroup[it]];
        double p = like ? s->cfg->p_match : s->cfg->p_other;

        ts += 1 + (int64_t)ml_rng_below(&s->rng, 3600);
        v[j].user = u + 1;
        v[j].item = it + 1;
        v[j].rating = ml_rng_unif(&s->rng) < p ? 5 : 1;
        v[j].timestamp = ts;
    }
}

/* Interleaves users in "file order", as a log of events would. */
static void shuffle_raw(ml_raw_t *v, size_t len, ml_rng_t *rng)
{
    for (size_t i = len; i > 1; i--) {
        size_t j = (size_t)ml_rng_below(rng, i);
        ml_raw_t t = v[i - 1];

        v[i - 1] = v[j];
        v[j] = t;
    }
}

int ml_synth_raw(const ml_synth_config_t *cfg, uint64_t seed, ml_raw_t **raw,
                 size_t *n, char *err, size_t errlen)
{
    uint32_t U = cfg->users, I = cfg->items, G = cfg->groups;
    synth_t s = {.cfg = cfg};
    uint32_t *count = NULL;
    ml_raw_t *v = NULL;
    size_t total = 0;
    int rc = -1;

    *raw = NULL;
    *n = 0;
    if (!synth_config_ok(cfg)) {
        set_err(err, errlen, "bad synthetic config");
        return -1;
    }
    ml_rng_seed(&s.rng, seed ^ 0x5eed5eed5eedull);
    s.ugroup = malloc(U * sizeof *s.ugroup);
    s.igroup = malloc(I * sizeof *s.igroup);
    s.seen = calloc(I, sizeof *s.seen);
    count = malloc(U * sizeof *count);
    s.cdf = malloc(I * sizeof *s.cdf);
    s.likes = malloc((size_t)G * G);
    if (!s.ugroup || !s.igroup || !s.seen || !count || !s.cdf || !s.likes)
        goto nomem;
    synth_plant(&s);
    for (uint32_t u = 0; u < U; u++) {
        double extra = cfg->mean_per_user - SYNTH_MIN_PER_USER;
        double c =
            SYNTH_MIN_PER_USER - log(1.0 - ml_rng_unif(&s.rng)) * extra;

        if (c > I / 2.0)
            c = I / 2.0;
        count[u] = (uint32_t)c;
        total += count[u];
    }
    v = malloc(total * sizeof *v);
    if (!v)
        goto nomem;
    size_t len = 0;
    for (uint32_t u = 0; u < U; u++) {
        synth_user(&s, u, count[u], v + len);
        len += count[u];
    }
    shuffle_raw(v, len, &s.rng);
    *raw = v;
    *n = len;
    v = NULL;
    rc = 0;
    goto out;
nomem:
    set_err(err, errlen, "out of memory generating synthetic data");
out:
    free(v);
    free(s.ugroup);
    free(s.igroup);
    free(s.seen);
    free(count);
    free(s.cdf);
    free(s.likes);
    return rc;
}

int ml_synthetic(const ml_synth_config_t *cfg, uint64_t seed, ml_data_t *out,
                 char *err, size_t errlen)
{
    ml_raw_t *raw;
    size_t n;
    int rc;

    memset(out, 0, sizeof *out);
    if (ml_synth_raw(cfg, seed, &raw, &n, err, errlen) != 0)
        return -1;
    rc = ml_split(raw, n, out, err, errlen);
    free(raw);
    return rc;
}

void ml_data_free(ml_data_t *d)
{
    if (!d)
        return;
    free(d->train);
    free(d->valid);
    memset(d, 0, sizeof *d);
}
