/* movielens.h -- ratings data for the GMF trainer: MovieLens u.data, the
 * standard split, and a planted-groups synthetic data set.
 *
 * The split is the one of the published CCE code, reproduced exactly
 * (../shared/reference/README.md):
 *   1. rows in file order (user, item, rating, timestamp);
 *   2. drop rating 3, label = rating >= 4;
 *   3. renumber users and items 0-based by the rank of the original id
 *      among the remaining rows;
 *   4. stable sort by (user, timestamp): ties keep file order;
 *   5. per user, the last 2 rows are validation, the rest train.
 * The synthetic data set is made of raw rows too and goes through the same
 * split, so both paths share every step after loading.
 *
 * Errors: functions return 0 or -1; on -1 a one-line reason is in
 * err[0..errlen) and *out is left zeroed (nothing to free).
 * Ownership: an ml_data_t owns its arrays; release it with ml_data_free.
 */
#ifndef ML_MOVIELENS_H
#define ML_MOVIELENS_H

#include <stddef.h>
#include <stdint.h>

/* One raw rating as read from u.data (or generated). */
typedef struct ml_raw {
    uint64_t user;      /* original user id */
    uint64_t item;      /* original item id */
    int rating;         /* 1..5 */
    int64_t timestamp;  /* seconds; only its order matters */
} ml_raw_t;

/* One example after the split: dense 0-based ids and a 0/1 label. */
typedef struct ml_row {
    uint32_t user;  /* rank of the original user id, 0..nusers-1 */
    uint32_t item;  /* rank of the original item id, 0..nitems-1 */
    float label;    /* 1 if rating >= 4, else 0 */
} ml_row_t;

typedef struct ml_data {
    ml_row_t *train;   /* training rows, in (user, timestamp) order */
    size_t ntrain;     /* rows in train */
    ml_row_t *valid;   /* validation rows: the last 2 of every user */
    size_t nvalid;     /* rows in valid */
    uint32_t nusers;   /* distinct users after dropping rating 3 */
    uint32_t nitems;   /* distinct items after dropping rating 3 */
    size_t nraw;       /* rows read or generated */
    size_t nkept;      /* rows left after dropping rating 3 */
} ml_data_t;

/* Validation rows per user (the protocol's "last 2"). */
#define ML_VALID_PER_USER 2

/* Makes the split of raw[0..n) (file order) into *out. */
int ml_split(const ml_raw_t *raw, size_t n, ml_data_t *out, char *err,
             size_t errlen);

/* Reads a u.data file (tab- or space-separated: user item rating
 * timestamp), or a later release's ratings.dat (the same fields separated
 * by "::"), into a malloc'd array *raw of *n rows. `path` is the file or
 * a directory holding u.data (the ml-100k folder) or ratings.dat. */
int ml_read_udata(const char *path, ml_raw_t **raw, size_t *n, char *err,
                  size_t errlen);

/* ml_read_udata + ml_split. */
int ml_load(const char *path, ml_data_t *out, char *err, size_t errlen);

/* The synthetic data set: users and items each belong to one of `groups`
 * planted taste groups; a random sign matrix says which user group likes
 * which item group, and a rating is a like (5) with probability p_match
 * when the signs agree and p_other otherwise (noise), a dislike (1)
 * otherwise. Item popularity is Zipf-like and users have 20 or more
 * ratings each, with MovieLens-like totals by default. Entirely determined
 * by `seed`. */
typedef struct ml_synth_config {
    uint32_t users;     /* default 1000 */
    uint32_t items;     /* default 1700 */
    uint32_t groups;    /* default 4 */
    uint32_t mean_per_user; /* mean ratings per user; default 74 */
    double p_match;     /* P(like | group likes); default 0.9 */
    double p_other;     /* P(like | group dislikes); default 0.15 */
    double zipf;        /* item popularity exponent; default 0.6 */
} ml_synth_config_t;

void ml_synth_config_default(ml_synth_config_t *cfg);

/* Generates the raw rows (rows of one user have increasing timestamps;
 * the file order interleaves users) into a malloc'd *raw of *n rows. */
int ml_synth_raw(const ml_synth_config_t *cfg, uint64_t seed, ml_raw_t **raw,
                 size_t *n, char *err, size_t errlen);

/* ml_synth_raw + ml_split. */
int ml_synthetic(const ml_synth_config_t *cfg, uint64_t seed, ml_data_t *out,
                 char *err, size_t errlen);

void ml_data_free(ml_data_t *d);

/* A small seeded generator (splitmix64 seeding xoshiro256**), shared by
 * the generator and the trainer's shuffles so a seed means one thing. */
typedef struct ml_rng {
    uint64_t s[4];
} ml_rng_t;

void ml_rng_seed(ml_rng_t *r, uint64_t seed);
uint64_t ml_rng_next(ml_rng_t *r);
/* Uniform in [0, 1). */
double ml_rng_unif(ml_rng_t *r);
/* Uniform in [0, n), n > 0, without modulo bias. */
uint64_t ml_rng_below(ml_rng_t *r, uint64_t n);
/* Fisher-Yates shuffle of rows[0..n). */
void ml_shuffle(ml_row_t *rows, size_t n, ml_rng_t *r);

#endif
