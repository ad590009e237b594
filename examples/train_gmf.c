/* train_gmf.c -- cqrps-train-gmf: trains a GMF recommender through cqrps.
 *
 * The model is p = sigmoid(<user_emb, item_emb>) with no biases (DESIGN.md
 * section 5). The embeddings live on the server in two tables of the
 * chosen kind and budget; this program holds no parameters. Per batch it
 * looks up the distinct users and items, computes the gradient of the mean
 * BCE with respect to each looked-up row, and pushes it; the server's lazy
 * AdamW steps the rows. For `cqr` tables it runs a cluster phase on both
 * tables after each of the first floor(cluster_frac * epochs) epochs,
 * after that epoch's validation.
 *
 * Output (stdout): one line per epoch, the cluster phases, the tables'
 * memory, and as the last line `best_auc=A best_logloss=L`. Progress goes
 * to stderr. Exit status 0 on success, 1 on any error (the tables are
 * dropped either way unless --keep), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cqrps.h"
#include "gmf.h"
#include "metrics.h"
#include "movielens.h"

typedef struct opts {
    const char *addr;        /* server address list */
    const char *data;        /* u.data, ratings.dat or their directory */
    int synthetic;           /* 1: built-in planted-groups data */
    cqrps_kind_t kind;       /* table kind of both tables */
    uint32_t ppd;            /* parameters per dimension per table */
    uint64_t seed;           /* seeds data shuffles, tables, synthetic data */
    uint32_t epochs;         /* passes over the train rows */
    const char *tsv;         /* per-epoch results file, or NULL */
    uint32_t dim;            /* embedding dimension */
    uint32_t chunks;         /* ce/cqr chunks */
    uint32_t batch;          /* rows per optimizer step */
    float lr;                /* Adam learning rate */
    float weight_decay;      /* decoupled weight decay */
    double cluster_frac;     /* cluster after epochs < floor(frac*epochs) */
    uint32_t cluster_iters;  /* k-means iterations (0 = server default) */
    uint32_t cluster_sample; /* samples per centroid (0 = server default) */
    float cluster_tol;       /* k-means tolerance (0 = server default,
                                < 0 = every iteration) */
    int reset_optimizer;     /* CQRPS_DEFAULT (the server's), CQRPS_ON or
                                CQRPS_OFF */
    int dense;               /* step every row every batch (dense AdamW) */
    float init_scale;        /* initial uniform range (0 = server default) */
    const char *prefix;      /* table name prefix, or NULL for a default */
    const char *token_file;  /* file with the shared secret, or NULL */
    const char *admin_token_file; /* file with the admin secret, or NULL */
    int quiet;               /* no progress, no per-epoch lines */
    int keep;                /* do not drop the tables at the end */
    uint32_t admit_after;    /* cqr: learned pointers at the N-th push */
    uint32_t evict_after;    /* cqr: evict after K phases unpushed */
} opts_t;

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die_usage(const char *fmt, ...) __attribute__((noreturn,
                                                             format(printf, 1, 2)));

static void usage(FILE *f)
{
    fprintf(f,
        "usage: cqrps-train-gmf --addr HOST:PORT (--data PATH | --synthetic)\n"
        "                       --kind full|hash|ce|cqr --ppd P --seed S\n"
        "                       [--epochs 10] [--tsv FILE] [options]\n"
        "\n"
        "Trains GMF, p = sigmoid(<user, item>), on MovieLens u.data or\n"
        "ratings.dat (PATH is the file or its directory, e.g. ml-100k) or on\n"
        "built-in synthetic data,\n"
        "with both embedding tables on a cqrps server.\n"
        "\n"
        "Budget: P parameters per dimension per table: hash has P rows, ce\n"
        "and cqr have P/2 rows in each of their two codebooks, full has one\n"
        "row per ID (P ignored).\n"
        "\n"
        "options:\n"
        "  --dim N              embedding dimension (32)\n"
        "  --chunks N           ce/cqr chunks (4)\n"
        "  --batch N            rows per step (4096)\n"
        "  --lr X               Adam learning rate (1e-3)\n"
        "  --weight-decay X     AdamW decoupled weight decay (0.01)\n"
        "  --cluster-frac X     cqr: cluster after epochs < floor(X*epochs) (0.75)\n"
        "  --cluster-iters N    k-means iterations at most (server default)\n"
        "  --cluster-tol X      k-means tolerance (server default; 0 = every\n"
        "                       iteration)\n"
        "  --cluster-sample N   k-means samples per centroid (server default)\n"
        "  --reset-optimizer    zero the optimizer state at each phase\n"
        "                       (server default: on for cqr)\n"
        "  --no-reset-optimizer keep it across phases (the published code)\n"
        "  --dense              dense AdamW as in PyTorch: every ID's rows step\n"
        "                       every batch (IDs not in the batch push zeros)\n"
        "  --admit-after N      cqr: learned pointers at an ID's N-th push (1)\n"
        "  --evict-after-phases K  cqr: IDs not pushed during the last K\n"
        "                       phases lose them (0 = never)\n"
        "  --init-scale X       initial values uniform in (-X, X) (server default;\n"
        "                       the old default was 1/sqrt(dim))\n"
        "  --table-prefix S     table names S.user and S.item\n"
        "                       (default gmf-KIND-pP-sS-PID)\n"
        "  --token-file F       shared secret for Hello (else $CQRPS_TOKEN)\n"
        "  --admin-token-file F admin secret for cluster and drop\n"
        "                       (else $CQRPS_ADMIN_TOKEN)\n"
        "  --keep               keep the tables at the end\n"
        "  --quiet              only the memory lines and the last line\n"
        "  --help\n");
}

static void die_usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("cqrps-train-gmf: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(cqrps-train-gmf --help for the options)\n", stderr);
    va_end(ap);
    exit(2);
}

static uint64_t parse_u64(const char *name, const char *s, uint64_t lo,
                          uint64_t hi)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        die_usage("--%s: expected an integer in [%llu, %llu], got '%s'",
                  name, (unsigned long long)lo, (unsigned long long)hi, s);
    return v;
}

static double parse_f(const char *name, const char *s, double lo, double hi)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        die_usage("--%s: expected a number in [%g, %g], got '%s'", name, lo,
                  hi, s);
    return v;
}

/* The options (getopt_long codes past any character). */
enum {
    O_ADDR = 256, O_DATA, O_SYN, O_KIND, O_PPD, O_SEED, O_EPOCHS, O_TSV,
    O_DIM, O_CHUNKS, O_BATCH, O_LR, O_WD, O_CFRAC, O_CITERS, O_CSAMPLE,
    O_RESET, O_NORESET, O_CTOL, O_DENSE, O_INIT, O_PREFIX, O_TOKEN,
    O_ADMIN, O_QUIET, O_KEEP, O_HELP, O_ADMIT, O_EVICT
};
static const struct option long_opts[] = {
    {"addr", required_argument, 0, O_ADDR},
    {"data", required_argument, 0, O_DATA},
    {"synthetic", no_argument, 0, O_SYN},
    {"kind", required_argument, 0, O_KIND},
    {"ppd", required_argument, 0, O_PPD},
    {"seed", required_argument, 0, O_SEED},
    {"epochs", required_argument, 0, O_EPOCHS},
    {"tsv", required_argument, 0, O_TSV},
    {"dim", required_argument, 0, O_DIM},
    {"chunks", required_argument, 0, O_CHUNKS},
    {"batch", required_argument, 0, O_BATCH},
    {"lr", required_argument, 0, O_LR},
    {"weight-decay", required_argument, 0, O_WD},
    {"cluster-frac", required_argument, 0, O_CFRAC},
    {"cluster-iters", required_argument, 0, O_CITERS},
    {"cluster-sample", required_argument, 0, O_CSAMPLE},
    {"reset-optimizer", no_argument, 0, O_RESET},
    {"no-reset-optimizer", no_argument, 0, O_NORESET},
    {"cluster-tol", required_argument, 0, O_CTOL},
    {"dense", no_argument, 0, O_DENSE},
    {"init-scale", required_argument, 0, O_INIT},
    {"table-prefix", required_argument, 0, O_PREFIX},
    {"token-file", required_argument, 0, O_TOKEN},
    {"admin-token-file", required_argument, 0, O_ADMIN},
    {"quiet", no_argument, 0, O_QUIET},
    {"keep", no_argument, 0, O_KEEP},
    {"admit-after", required_argument, 0, O_ADMIT},
    {"evict-after-phases", required_argument, 0, O_EVICT},
    {"help", no_argument, 0, O_HELP},
    {0, 0, 0, 0},
};

/* The required options given so far (set_option's *have). */
enum { HAVE_KIND = 1, HAVE_PPD = 2, HAVE_SEED = 4 };

/* One option from getopt_long into o; exits on a bad value, on --help and
 * on an unknown option. */
static void set_option(opts_t *o, int c, int *have)
{
    switch (c) {
    case O_ADDR: o->addr = optarg; break;
    case O_DATA: o->data = optarg; break;
    case O_SYN: o->synthetic = 1; break;
    case O_KIND:
        if (cqrps_kind_parse(optarg, &o->kind) != 0)
            die_usage("--kind: expected full, hash, ce or cqr, got '%s'",
                      optarg);
        *have |= HAVE_KIND;
        break;
    case O_PPD:
        o->ppd = (uint32_t)parse_u64("ppd", optarg, 1, 1u << 24);
        *have |= HAVE_PPD;
        break;
    case O_SEED:
        o->seed = parse_u64("seed", optarg, 0, UINT64_MAX);
        *have |= HAVE_SEED;
        break;
    case O_EPOCHS:
        o->epochs = (uint32_t)parse_u64("epochs", optarg, 1, 100000);
        break;
    case O_TSV: o->tsv = optarg; break;
    case O_DIM: o->dim = (uint32_t)parse_u64("dim", optarg, 1, 4096); break;
    case O_CHUNKS:
        o->chunks = (uint32_t)parse_u64("chunks", optarg, 1, 256);
        break;
    case O_BATCH:
        o->batch = (uint32_t)parse_u64("batch", optarg, 1, 1u << 20);
        break;
    case O_LR: o->lr = (float)parse_f("lr", optarg, 1e-9, 10); break;
    case O_WD:
        o->weight_decay = (float)parse_f("weight-decay", optarg, 0, 10);
        break;
    case O_CFRAC:
        o->cluster_frac = parse_f("cluster-frac", optarg, 0, 1);
        break;
    case O_CITERS:
        o->cluster_iters = (uint32_t)parse_u64("cluster-iters", optarg, 1,
                                               100000);
        break;
    case O_CSAMPLE:
        o->cluster_sample = (uint32_t)parse_u64("cluster-sample", optarg,
                                                1, 1000000);
        break;
    case O_RESET: o->reset_optimizer = CQRPS_ON; break;
    case O_NORESET: o->reset_optimizer = CQRPS_OFF; break;
    case O_CTOL:
        o->cluster_tol = (float)parse_f("cluster-tol", optarg, 0, 0.999);
        if (o->cluster_tol == 0)
            o->cluster_tol = -1; /* every iteration, on the wire */
        break;
    case O_DENSE: o->dense = 1; break;
    case O_ADMIT:
        o->admit_after = (uint32_t)parse_u64("admit-after", optarg, 0,
                                             255);
        break;
    case O_EVICT:
        o->evict_after = (uint32_t)parse_u64("evict-after-phases",
                                             optarg, 0, 1000000);
        break;
    case O_INIT:
        o->init_scale = (float)parse_f("init-scale", optarg, 1e-9, 1000);
        break;
    case O_PREFIX: o->prefix = optarg; break;
    case O_TOKEN: o->token_file = optarg; break;
    case O_ADMIN: o->admin_token_file = optarg; break;
    case O_QUIET: o->quiet = 1; break;
    case O_KEEP: o->keep = 1; break;
    case O_HELP: usage(stdout); exit(0);
    default:
        fputs("(cqrps-train-gmf --help for the options)\n", stderr);
        exit(2);
    }
}

/* What the options must say together; exits with the reason if not. */
static void check_opts(const opts_t *o, int argc, char **argv, int have)
{
    if (optind != argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (!o->addr)
        die_usage("--addr is required");
    if (!o->data == !o->synthetic)
        die_usage("give exactly one of --data PATH and --synthetic");
    if (have != (HAVE_KIND | HAVE_PPD | HAVE_SEED))
        die_usage("--kind, --ppd and --seed are required");
    if (o->kind == CQRPS_KIND_CE || o->kind == CQRPS_KIND_CQR) {
        if (o->ppd < 2)
            die_usage("--ppd must be at least 2 for ce and cqr (P/2 rows)");
        if (o->dim % o->chunks)
            die_usage("--chunks must divide --dim");
    }
}

static void parse_args(int argc, char **argv, opts_t *o)
{
    int have = 0, c;

    memset(o, 0, sizeof *o);
    o->epochs = 10;
    o->dim = 32;
    o->chunks = 4;
    o->batch = 4096;
    o->lr = 1e-3f;
    o->weight_decay = 0.01f;
    o->cluster_frac = 0.75;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1)
        set_option(o, c, &have);
    check_opts(o, argc, argv, have);
}

/* A secret from `path`, else from $env (cqrps_secret_load); prints why it
 * failed, or its warning. */
static int read_token(const char *path, const char *env, char **out,
                      size_t *len)
{
    char msg[512];
    int rc = cqrps_secret_load(path, env, out, len, msg, sizeof msg);
    if (msg[0])
        fprintf(stderr, "cqrps-train-gmf: %s\n", msg);
    return rc;
}

/* ---- Progress ----------------------------------------------------------- */

typedef struct progress {
    int enabled;    /* 0 with --quiet */
    int tty;        /* stderr is a terminal: redraw a bar */
    int shown_pct;  /* last quarter printed in plain mode */
    uint32_t epoch; /* 1-based */
    uint32_t epochs;
    double t0;      /* epoch start */
} progress_t;

static void progress_start(progress_t *p, uint32_t epoch)
{
    p->epoch = epoch;
    p->shown_pct = 0;
    p->t0 = now_s();
    if (p->enabled && !p->tty)
        fprintf(stderr, "epoch %u/%u:", epoch, p->epochs);
}

static void progress_update(progress_t *p, size_t done, size_t total)
{
    int pct = total ? (int)(100 * done / total) : 100;

    if (!p->enabled)
        return;
    if (p->tty) {
        char bar[41];
        int w = pct * 40 / 100;
        double dt = now_s() - p->t0;

        for (int i = 0; i < 40; i++)
            bar[i] = i < w ? '#' : (i == w ? '>' : '.');
        bar[40] = 0;
        fprintf(stderr, "\r  epoch %u/%u [%s] %3d%% %7.0f rows/s", p->epoch,
                p->epochs, bar, pct, dt > 0 ? (double)done / dt : 0.0);
    } else {
        while (p->shown_pct + 25 <= pct) {
            p->shown_pct += 25;
            fprintf(stderr, " %d%%", p->shown_pct);
        }
    }
    fflush(stderr);
}

static void progress_end(progress_t *p)
{
    if (!p->enabled)
        return;
    fputs(p->tty ? "\r\033[K" : "\n", stderr);
    fflush(stderr);
}

/* ---- Batches ------------------------------------------------------------ */

/* Distinct IDs of a batch: slot[j] indexes ids[], ids[] holds each ID once.
 * `mark` maps an ID to (stamp, slot) so building is O(n) with no clearing:
 * an entry is current only if its stamp is this batch's. */
typedef struct dedup {
    uint32_t *stamp; /* per ID: batch stamp that last saw it */
    uint32_t *where; /* per ID: its slot in that batch */
    uint32_t nids;   /* IDs are 0 .. nids-1 */
    uint32_t cur;    /* current stamp, never 0 */
    uint64_t *ids;   /* distinct IDs, first-seen order */
    size_t n;        /* distinct IDs in ids */
} dedup_t;

static int dedup_init(dedup_t *d, uint32_t nids, size_t cap)
{
    memset(d, 0, sizeof *d);
    d->nids = nids;
    d->stamp = calloc(nids ? nids : 1, sizeof *d->stamp);
    d->where = malloc((nids ? nids : 1) * sizeof *d->where);
    d->ids = malloc((cap ? cap : 1) * sizeof *d->ids);
    return d->stamp && d->where && d->ids ? 0 : -1;
}

static void dedup_free(dedup_t *d)
{
    free(d->stamp);
    free(d->where);
    free(d->ids);
}

static void dedup_begin(dedup_t *d)
{
    d->n = 0;
    if (++d->cur == 0) { /* wrapped after 2^32 batches: forget old stamps */
        memset(d->stamp, 0, d->nids * sizeof *d->stamp);
        d->cur = 1;
    }
}

/* Dense mode: appends every ID of [0, nids) the batch did not use, with a
 * zero gradient row in g, so the server steps every row (with g = 0 a row
 * moves by its momentum and decays, as in PyTorch's dense AdamW). */
static void dedup_fill_dense(dedup_t *d, uint32_t nids, float *g,
                             uint32_t dim)
{
    for (uint32_t id = 0; id < nids; id++) {
        if (d->stamp[id] == d->cur)
            continue;
        memset(g + d->n * dim, 0, dim * sizeof *g);
        d->stamp[id] = d->cur;
        d->where[id] = (uint32_t)d->n;
        d->ids[d->n++] = id;
    }
}

static uint32_t dedup_add(dedup_t *d, uint32_t id)
{
    if (d->stamp[id] != d->cur) {
        d->stamp[id] = d->cur;
        d->where[id] = (uint32_t)d->n;
        d->ids[d->n++] = id;
    }
    return d->where[id];
}

/* ---- The run ------------------------------------------------------------ */

typedef struct trainer {
    opts_t *o;
    ml_data_t data;
    cqrps_client_t *c;
    char utab[CQRPS_NAME_MAX + 1]; /* user table name */
    char itab[CQRPS_NAME_MAX + 1]; /* item table name */
    int created_u, created_i;      /* 1 once created: drop at the end */
    FILE *tsv;
    /* Per-batch buffers, sized for the largest batch. */
    dedup_t du, di;
    uint32_t *uslot, *islot;
    float *y, *z, *U, *I, *gU, *gI;
} trainer_t;

static int fail(trainer_t *t, const char *what, int rc)
{
    fprintf(stderr, "cqrps-train-gmf: %s: %s (%s)\n", what,
            cqrps_last_error(t->c), cqrps_errname(rc));
    return -1;
}

static int create_tables(trainer_t *t)
{
    opts_t *o = t->o;
    cqrps_table_config_t cfg;
    cqrps_table_info_t info;
    int rc;

    cqrps_table_config_init(&cfg, o->kind, o->dim);
    cfg.chunks = (o->kind == CQRPS_KIND_CE || o->kind == CQRPS_KIND_CQR)
                     ? o->chunks : 0;
    switch (o->kind) {
    case CQRPS_KIND_HASH: cfg.rows = o->ppd; break;
    case CQRPS_KIND_CE:
    case CQRPS_KIND_CQR: cfg.rows = o->ppd / 2; break;
    default: cfg.rows = 0; break;
    }
    cfg.optimizer = CQRPS_OPT_ADAM;
    cfg.lr = o->lr;
    cfg.beta1 = 0.9f;
    cfg.beta2 = 0.999f;
    cfg.eps = 1e-8f;
    cfg.weight_decay = o->weight_decay;
    cfg.cluster_iters = o->cluster_iters;
    cfg.cluster_sample = o->cluster_sample;
    cfg.reset_optimizer = o->reset_optimizer;
    cfg.init_scale = o->init_scale;
    cfg.cluster_tol = o->cluster_tol;
    cfg.admit_after = o->admit_after;
    cfg.evict_after_phases = o->evict_after;

    /* Different seeds for the two tables: their hashes and initial values
     * must not be the same functions of the ID. */
    cfg.seed = o->seed * 2 + 1;
    rc = cqrps_create_table(t->c, t->utab, &cfg, &info);
    if (rc != 0)
        return fail(t, "create user table", rc);
    t->created_u = 1;
    cfg.seed = o->seed * 2 + 2;
    rc = cqrps_create_table(t->c, t->itab, &cfg, &info);
    if (rc != 0)
        return fail(t, "create item table", rc);
    t->created_i = 1;
    if (!o->quiet)
        printf("tables %s %s kind=%s rows=%u dim=%u chunks=%u init_scale=%g "
               "lr=%g wd=%g reset_optimizer=%d cluster_tol=%g\n", t->utab,
               t->itab, cqrps_kind_name(o->kind), info.config.rows,
               info.config.dim, info.config.chunks,
               (double)info.config.init_scale, (double)info.config.lr,
               (double)info.config.weight_decay,
               info.config.reset_optimizer == CQRPS_ON,
               (double)info.config.cluster_tol);
    return 0;
}

/* Looks up the distinct users and items of rows[0..n) into t->U and t->I
 * (the two requests in flight together) and fills the slots and labels. */
static int lookup_batch(trainer_t *t, const ml_row_t *rows, size_t n)
{
    cqrps_ticket_t tu, ti;
    int rc, rc2;

    dedup_begin(&t->du);
    dedup_begin(&t->di);
    for (size_t j = 0; j < n; j++) {
        t->uslot[j] = dedup_add(&t->du, rows[j].user);
        t->islot[j] = dedup_add(&t->di, rows[j].item);
        t->y[j] = rows[j].label;
    }
    rc = cqrps_lookup_start(t->c, t->utab, t->du.ids, t->du.n, t->U, &tu);
    if (rc != 0)
        return fail(t, "lookup users", rc);
    rc = cqrps_lookup_start(t->c, t->itab, t->di.ids, t->di.n, t->I, &ti);
    if (rc != 0) {
        cqrps_wait(t->c, tu);
        return fail(t, "lookup items", rc);
    }
    rc = cqrps_wait(t->c, tu);
    rc2 = cqrps_wait(t->c, ti);
    if (rc != 0)
        return fail(t, "lookup users", rc);
    if (rc2 != 0)
        return fail(t, "lookup items", rc2);
    return 0;
}

static int push_batch(trainer_t *t)
{
    cqrps_ticket_t tu, ti;
    int rc, rc2;

    rc = cqrps_push_start(t->c, t->utab, t->du.ids, t->gU, t->du.n, &tu);
    if (rc != 0)
        return fail(t, "push users", rc);
    rc = cqrps_push_start(t->c, t->itab, t->di.ids, t->gI, t->di.n, &ti);
    if (rc != 0) {
        cqrps_wait(t->c, tu);
        return fail(t, "push items", rc);
    }
    rc = cqrps_wait(t->c, tu);
    rc2 = cqrps_wait(t->c, ti);
    if (rc != 0)
        return fail(t, "push users", rc);
    if (rc2 != 0)
        return fail(t, "push items", rc2);
    return 0;
}

/* One pass over the (already shuffled) train rows; *loss = mean BCE of the
 * rows, each measured before the step it took part in. */
static int train_epoch(trainer_t *t, progress_t *pg, double *loss)
{
    const ml_data_t *d = &t->data;
    uint32_t dim = t->o->dim;
    double sum = 0;

    for (size_t a = 0; a < d->ntrain && !g_stop; a += t->o->batch) {
        size_t n = d->ntrain - a < t->o->batch ? d->ntrain - a : t->o->batch;
        double l;

        if (lookup_batch(t, d->train + a, n) != 0)
            return -1;
        l = gmf_batch(t->U, t->I, dim, t->uslot, t->islot, t->y, n, t->du.n,
                      t->di.n, NULL, t->gU, t->gI);
        sum += l * (double)n;
        if (t->o->dense) {
            dedup_fill_dense(&t->du, d->nusers, t->gU, dim);
            dedup_fill_dense(&t->di, d->nitems, t->gI, dim);
        }
        if (push_batch(t) != 0)
            return -1;
        progress_update(pg, a + n, d->ntrain);
    }
    *loss = sum / (double)d->ntrain;
    return g_stop ? -1 : 0;
}

/* Scores the validation rows with the current tables. */
static int validate(trainer_t *t, double *logloss, double *auc)
{
    const ml_data_t *d = &t->data;
    size_t nv = d->nvalid, step = t->o->batch;
    float *z = malloc(nv * sizeof *z), *y = malloc(nv * sizeof *y);
    int rc = -1;

    if (!z || !y) {
        fprintf(stderr, "cqrps-train-gmf: out of memory\n");
        goto out;
    }
    for (size_t a = 0; a < nv; a += step) {
        size_t n = nv - a < step ? nv - a : step;

        if (lookup_batch(t, d->valid + a, n) != 0)
            goto out;
        gmf_batch(t->U, t->I, t->o->dim, t->uslot, t->islot, t->y, n,
                  t->du.n, t->di.n, z + a, NULL, NULL);
        memcpy(y + a, t->y, n * sizeof *y);
    }
    *logloss = metric_logloss(z, y, nv);
    *auc = metric_auc(z, y, nv);
    rc = *auc < 0 ? -1 : 0;
out:
    free(z);
    free(y);
    return rc;
}

/* A cluster phase on both tables: both started, then both waited for, so
 * the server may run them side by side. */
static int cluster_both(trainer_t *t, uint32_t epoch)
{
    const char *names[2] = {t->utab, t->itab};
    uint64_t ph[2];
    int rc;

    for (int k = 0; k < 2; k++) {
        rc = cqrps_cluster(t->c, names[k], &ph[k]);
        if (rc != 0) {
            if (k == 1)
                cqrps_cluster_wait(t->c, names[0], ph[0], 0, NULL);
            return fail(t, "start cluster phase", rc);
        }
    }
    for (int k = 0; k < 2; k++) {
        cqrps_phase_status_t st;

        rc = cqrps_cluster_wait(t->c, names[k], ph[k], 600000, &st);
        if (rc != 0)
            return fail(t, "cluster phase", rc);
        if (!t->o->quiet)
            printf("cluster epoch=%u table=%s phase=%llu seconds=%.3f "
                   "inertia=%.6g ids=%llu kmeans_iters=%u replayed=%llu\n",
                   epoch, names[k], (unsigned long long)st.phase_id,
                   st.seconds, st.inertia,
                   (unsigned long long)st.ids_assigned, st.kmeans_iters,
                   (unsigned long long)st.replayed_pushes);
    }
    fflush(stdout);
    return 0;
}

/* Memory of one table as the server reports it, beside the full table's
 * (one float row per ID) for the same IDs. `bytes` is what the table
 * needs: codebooks plus the known-ID index (pointers) for hash/ce/cqr;
 * for full, one row per known ID plus the index, since the server
 * allocates full rows in large blocks and reports the allocation as
 * param_bytes (printed as alloc_bytes). Optimizer state is training-only
 * and printed apart. */
static int report_memory(trainer_t *t, const char *name, const char *role,
                         uint32_t nids, uint64_t *total)
{
    cqrps_table_info_t info;
    int rc = cqrps_describe_table(t->c, name, &info);
    uint64_t bytes, alloc, full = (uint64_t)nids * t->o->dim * sizeof(float);

    if (rc != 0)
        return fail(t, "describe table", rc);
    alloc = info.param_bytes + info.index_bytes;
    if (info.config.kind == CQRPS_KIND_FULL)
        bytes = info.known_ids * info.config.dim * sizeof(float) +
                info.index_bytes;
    else
        bytes = alloc;
    *total += bytes;
    printf("memory table=%s role=%s kind=%s rows=%u ids=%u known_ids=%llu "
           "param_bytes=%llu index_bytes=%llu optimizer_bytes=%llu "
           "alloc_bytes=%llu bytes=%llu bytes_per_id=%.2f "
           "index_bytes_per_id=%.2f full_bytes=%llu compression=%.2fx "
           "phases=%u admitted=%llu evicted=%llu\n", name, role, cqrps_kind_name(info.config.kind),
           info.config.rows, nids, (unsigned long long)info.known_ids,
           (unsigned long long)info.param_bytes,
           (unsigned long long)info.index_bytes,
           (unsigned long long)info.optimizer_bytes,
           (unsigned long long)alloc, (unsigned long long)bytes,
           nids ? (double)bytes / nids : 0.0,
           nids ? (double)info.index_bytes / nids : 0.0,
           (unsigned long long)full, bytes ? (double)full / bytes : 0.0,
           info.phases_done, (unsigned long long)info.ids_admitted,
           (unsigned long long)info.ids_evicted);
    return 0;
}

static int alloc_buffers(trainer_t *t)
{
    size_t b = t->o->batch, dim = t->o->dim;
    /* Dense mode pushes every ID: size the push side for that. */
    size_t bu = b > t->data.nusers ? b : t->data.nusers;
    size_t bi = b > t->data.nitems ? b : t->data.nitems;

    if (dedup_init(&t->du, t->data.nusers, bu) != 0 ||
        dedup_init(&t->di, t->data.nitems, bi) != 0)
        return -1;
    t->uslot = malloc(b * sizeof *t->uslot);
    t->islot = malloc(b * sizeof *t->islot);
    t->y = malloc(b * sizeof *t->y);
    t->z = malloc(b * sizeof *t->z);
    t->U = malloc(b * dim * sizeof *t->U);
    t->I = malloc(b * dim * sizeof *t->I);
    t->gU = malloc(bu * dim * sizeof *t->gU);
    t->gI = malloc(bi * dim * sizeof *t->gI);
    return t->uslot && t->islot && t->y && t->z && t->U && t->I && t->gU &&
           t->gI ? 0 : -1;
}

static void free_buffers(trainer_t *t)
{
    dedup_free(&t->du);
    dedup_free(&t->di);
    free(t->uslot);
    free(t->islot);
    free(t->y);
    free(t->z);
    free(t->U);
    free(t->I);
    free(t->gU);
    free(t->gI);
}

static FILE *open_tsv(const char *path)
{
    FILE *f = fopen(path, "a");

    if (!f) {
        fprintf(stderr, "cqrps-train-gmf: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (ftell(f) == 0)
        fputs("kind\tppd\tseed\tepoch\ttrain_loss\tval_logloss\tval_auc\t"
              "seconds\n", f);
    fflush(f);
    return f;
}

static double pos_rate(const ml_row_t *rows, size_t n)
{
    double s = 0;

    for (size_t j = 0; j < n; j++)
        s += rows[j].label;
    return n ? s / (double)n : 0.0;
}

static int run(trainer_t *t)
{
    opts_t *o = t->o;
    ml_data_t *d = &t->data;
    ml_rng_t rng;
    progress_t pg = {0};
    double best_auc = 0, best_ll = INFINITY;
    uint32_t ncluster = 0;
    uint64_t total_bytes = 0;

    if (o->kind == CQRPS_KIND_CQR)
        ncluster = (uint32_t)floor(o->cluster_frac * o->epochs + 1e-9);
    if (!o->quiet)
        printf("data %s users=%u items=%u train=%zu valid=%zu "
               "train_pos=%.4f valid_pos=%.4f\n",
               o->synthetic ? "synthetic" : o->data, d->nusers, d->nitems,
               d->ntrain, d->nvalid, pos_rate(d->train, d->ntrain),
               pos_rate(d->valid, d->nvalid));
    if (create_tables(t) != 0)
        return -1;
    pg.enabled = !o->quiet;
    pg.tty = isatty(STDERR_FILENO);
    pg.epochs = o->epochs;
    ml_rng_seed(&rng, o->seed ^ 0x7261696eull);
    for (uint32_t e = 0; e < o->epochs; e++) {
        double t0 = now_s(), loss, ll, auc, secs;

        ml_shuffle(d->train, d->ntrain, &rng);
        progress_start(&pg, e + 1);
        if (train_epoch(t, &pg, &loss) != 0) {
            progress_end(&pg);
            if (g_stop)
                fprintf(stderr, "cqrps-train-gmf: interrupted\n");
            return -1;
        }
        progress_end(&pg);
        if (validate(t, &ll, &auc) != 0)
            return -1;
        secs = now_s() - t0;
        if (auc > best_auc)
            best_auc = auc;
        if (ll < best_ll)
            best_ll = ll;
        if (!o->quiet)
            printf("epoch=%u/%u train_loss=%.4f val_logloss=%.4f "
                   "val_auc=%.4f seconds=%.2f\n", e + 1, o->epochs, loss, ll,
                   auc, secs);
        fflush(stdout);
        if (t->tsv) {
            fprintf(t->tsv, "%s\t%u\t%llu\t%u\t%.6f\t%.6f\t%.6f\t%.3f\n",
                    cqrps_kind_name(o->kind), o->ppd,
                    (unsigned long long)o->seed, e + 1, loss, ll, auc, secs);
            fflush(t->tsv);
        }
        if (e < ncluster && cluster_both(t, e + 1) != 0)
            return -1;
    }
    if (report_memory(t, t->utab, "user", d->nusers, &total_bytes) != 0 ||
        report_memory(t, t->itab, "item", d->nitems, &total_bytes) != 0)
        return -1;
    uint64_t full = ((uint64_t)d->nusers + d->nitems) * o->dim * 4;
    printf("memory_total kind=%s ppd=%u bytes=%llu bytes_per_id=%.2f "
           "full_bytes=%llu compression=%.2fx\n", cqrps_kind_name(o->kind),
           o->ppd, (unsigned long long)total_bytes,
           (double)total_bytes / (d->nusers + d->nitems),
           (unsigned long long)full,
           total_bytes ? (double)full / total_bytes : 0.0);
    printf("best_auc=%.6f best_logloss=%.6f\n", best_auc, best_ll);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    trainer_t t;
    cqrps_options_t copt;
    char err[512], *tok = NULL, *atok = NULL;
    size_t toklen = 0, atoklen = 0;
    struct sigaction sa;
    int rc, status = 1;

    parse_args(argc, argv, &o);
    memset(&t, 0, sizeof t);
    t.o = &o;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (o.synthetic) {
        ml_synth_config_t sc;

        ml_synth_config_default(&sc);
        rc = ml_synthetic(&sc, o.seed, &t.data, err, sizeof err);
    } else {
        rc = ml_load(o.data, &t.data, err, sizeof err);
    }
    if (rc != 0) {
        fprintf(stderr, "cqrps-train-gmf: %s\n", err);
        return 1;
    }
    if (t.data.ntrain == 0 || t.data.nvalid == 0) {
        fprintf(stderr, "cqrps-train-gmf: empty train or validation set\n");
        goto out;
    }
    if (alloc_buffers(&t) != 0) {
        fprintf(stderr, "cqrps-train-gmf: out of memory\n");
        goto out;
    }
    if (o.prefix)
        snprintf(err, sizeof err, "%s", o.prefix);
    else
        snprintf(err, sizeof err, "gmf-%s-p%u-s%llu-%ld",
                 cqrps_kind_name(o.kind), o.ppd,
                 (unsigned long long)o.seed, (long)getpid());
    if (strlen(err) + 5 > CQRPS_NAME_MAX) {
        fprintf(stderr, "cqrps-train-gmf: --table-prefix too long\n");
        goto out;
    }
    snprintf(t.utab, sizeof t.utab, "%s.user", err);
    snprintf(t.itab, sizeof t.itab, "%s.item", err);

    cqrps_options_init(&copt);
    copt.client_name = "cqrps-train-gmf";
    if (read_token(o.token_file, "CQRPS_TOKEN", &tok, &toklen) != 0 ||
        read_token(o.admin_token_file, "CQRPS_ADMIN_TOKEN", &atok,
                   &atoklen) != 0)
        goto out;
    copt.token = tok;
    copt.token_len = toklen;
    copt.admin_token = atok;
    copt.admin_token_len = atoklen;
    rc = cqrps_connect(o.addr, &copt, &t.c);
    if (rc != 0) {
        fprintf(stderr, "cqrps-train-gmf: connect %s: %s\n", o.addr,
                cqrps_last_error(NULL));
        goto out;
    }
    if (o.tsv && !(t.tsv = open_tsv(o.tsv)))
        goto out;
    status = run(&t) == 0 ? 0 : 1;
out:
    if (t.c && !o.keep) {
        /* Clean up even after an error or an interrupt. */
        if (t.created_u && (rc = cqrps_drop_table(t.c, t.utab)) != 0)
            fprintf(stderr, "cqrps-train-gmf: drop %s: %s\n", t.utab,
                    cqrps_last_error(t.c));
        if (t.created_i && (rc = cqrps_drop_table(t.c, t.itab)) != 0)
            fprintf(stderr, "cqrps-train-gmf: drop %s: %s\n", t.itab,
                    cqrps_last_error(t.c));
    }
    if (t.tsv)
        fclose(t.tsv);
    cqrps_close(t.c);
    free_buffers(&t);
    ml_data_free(&t.data);
    cqrps_secret_free(tok, toklen);
    cqrps_secret_free(atok, atoklen);
    return status;
}
