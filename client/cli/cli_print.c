/* cli_print.c -- output of the `cqrps` CLI: JSON objects through cJSON
 * (one per command, for scripts) and the human-readable tables. All of
 * it writes to stdout; see cli_print.h.
 */
#include "cli_print.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON output --------------------------------------------------------
 * cJSON builds and escapes; numbers go in as raw text where cJSON's
 * doubles would round them. */

/* Set when an allocation failed while building the object. */
static int js_failed;

cJSON *js_object(void)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        js_failed = 1;
    return o;
}

void js_add(cJSON *o, const char *k, cJSON *item)
{
    if (!o || !item || !cJSON_AddItemToObject(o, k, item)) {
        js_failed = 1;
        cJSON_Delete(item);
    }
}

void js_str(cJSON *o, const char *k, const char *v)
{
    js_add(o, k, cJSON_CreateString(v ? v : ""));
}

void js_u64(cJSON *o, const char *k, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, v);
    js_add(o, k, cJSON_CreateRaw(buf));
}

void js_i64(cJSON *o, const char *k, int64_t v)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRId64, v);
    js_add(o, k, cJSON_CreateRaw(buf));
}

/* The fewest digits (15 to 17) that read back as the same double:
 * cJSON's own printing stops at 15 digits when the value reads back
 * within a tolerance, which turns 2^53 into 9007199254740990. */
void js_dbl(cJSON *o, const char *k, double v)
{
    if (!isfinite(v)) {
        js_add(o, k, cJSON_CreateNull());
        return;
    }
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    js_add(o, k, cJSON_CreateRaw(buf));
}

/* So 0.001f prints as 0.001, not 0.00100000005. */
void js_flt(cJSON *o, const char *k, float v)
{
    if (!isfinite(v)) {
        js_add(o, k, cJSON_CreateNull());
        return;
    }
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    js_add(o, k, cJSON_CreateRaw(buf));
}

void js_bool(cJSON *o, const char *k, int v)
{
    js_add(o, k, cJSON_CreateBool(v));
}

void js_counter(cJSON *o, const cqrps_counter_t *c)
{
    if (c->is_count)
        js_u64(o, c->name, c->count);
    else
        js_dbl(o, c->name, c->value);
}

cJSON *js_config(const cqrps_table_config_t *c)
{
    cJSON *o = js_object();
    js_str(o, "kind", cqrps_kind_name(c->kind));
    js_u64(o, "dim", c->dim);
    js_u64(o, "chunks", c->chunks);
    js_u64(o, "rows", c->rows);
    js_u64(o, "seed", c->seed);
    js_str(o, "optimizer", cqrps_optimizer_name(c->optimizer));
    js_flt(o, "lr", c->lr);
    js_flt(o, "beta1", c->beta1);
    js_flt(o, "beta2", c->beta2);
    js_flt(o, "eps", c->eps);
    js_flt(o, "weight_decay", c->weight_decay);
    js_flt(o, "init_scale", c->init_scale);
    js_u64(o, "schedule_every", c->schedule_every);
    js_u64(o, "schedule_max_phases", c->schedule_max_phases);
    js_u64(o, "cluster_iters", c->cluster_iters);
    js_u64(o, "cluster_sample", c->cluster_sample);
    js_bool(o, "reset_optimizer", c->reset_optimizer == CQRPS_ON);
    js_flt(o, "cluster_tol", c->cluster_tol);
    js_u64(o, "admit_after", c->admit_after);
    js_u64(o, "evict_after_phases", c->evict_after_phases);
    js_u64(o, "max_ids", c->max_ids);
    js_u64(o, "ttl_seconds", c->ttl_seconds);
    js_bool(o, "compact", c->compact);
    return o;
}

cJSON *js_info(const cqrps_table_info_t *t)
{
    cJSON *o = js_object();
    js_str(o, "name", t->name);
    js_add(o, "config", js_config(&t->config));
    js_u64(o, "known_ids", t->known_ids);
    js_u64(o, "param_bytes", t->param_bytes);
    js_u64(o, "optimizer_bytes", t->optimizer_bytes);
    js_u64(o, "index_bytes", t->index_bytes);
    js_dbl(o, "bytes_per_known_id", t->bytes_per_known_id);
    js_u64(o, "phases_done", t->phases_done);
    js_bool(o, "phase_running", t->phase_running);
    js_u64(o, "lookups", t->lookups);
    js_u64(o, "pushes", t->pushes);
    js_u64(o, "examples_pushed", t->examples_pushed);
    js_dbl(o, "last_inertia", t->last_inertia);
    js_dbl(o, "last_phase_seconds", t->last_phase_seconds);
    js_u64(o, "ids_admitted", t->ids_admitted);
    js_u64(o, "ids_evicted", t->ids_evicted);
    js_u64(o, "sketch_bytes", t->sketch_bytes);
    js_u64(o, "serving_generation", t->serving_generation);
    js_bool(o, "compacted", t->compacted);
    js_u64(o, "static_ids", t->static_ids);
    js_bool(o, "compacting", t->compacting);
    return o;
}

cJSON *js_phase(const cqrps_phase_status_t *s)
{
    cJSON *o = js_object();
    js_u64(o, "phase_id", s->phase_id);
    js_str(o, "state", cqrps_phase_state_name(s->state));
    js_str(o, "stage", s->stage);
    js_dbl(o, "fraction", s->fraction);
    js_dbl(o, "inertia", s->inertia);
    js_dbl(o, "seconds", s->seconds);
    js_u64(o, "ids_assigned", s->ids_assigned);
    js_u64(o, "replayed_pushes", s->replayed_pushes);
    js_str(o, "error", s->error);
    js_u64(o, "chunk", s->chunk);
    js_u64(o, "chunks", s->chunks);
    js_u64(o, "iter", s->iter);
    js_u64(o, "iters", s->iters);
    js_dbl(o, "eta_seconds", s->eta_seconds);
    js_u64(o, "kmeans_iters", s->kmeans_iters);
    js_bool(o, "cancelled", s->cancelled);
    return o;
}

int js_print(cJSON *o)
{
    char *text = js_failed ? NULL : cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) {
        fprintf(stderr, "cqrps: out of memory writing JSON\n");
        return -1;
    }
    puts(text);
    cJSON_free(text);
    return 0;
}

/* ---- Human output ------------------------------------------------------ */

void counter_text(const cqrps_counter_t *c, char *buf, size_t len)
{
    double v = c->value;
    if (c->is_count)
        snprintf(buf, len, "%" PRIu64, c->count);
    else if (isfinite(v) && v == floor(v) && fabs(v) < 1e300)
        snprintf(buf, len, "%.0f", v); /* every digit of a whole double */
    else
        snprintf(buf, len, "%.6g", v);
}

void human_bytes(uint64_t b, char *buf, size_t len)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double)b;
    int i = 0;
    while (v >= 1024.0 && i < 4) {
        v /= 1024.0;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%" PRIu64 " B", b);
    else
        snprintf(buf, len, "%.1f %s", v, u[i]);
}

void print_describe(const cqrps_table_info_t *t)
{
    const cqrps_table_config_t *c = &t->config;
    char pb[32], ob[32], ib[32];
    human_bytes(t->param_bytes, pb, sizeof(pb));
    human_bytes(t->optimizer_bytes, ob, sizeof(ob));
    human_bytes(t->index_bytes, ib, sizeof(ib));
    printf("table:          %s\n", t->name);
    printf("kind:           %s\n", cqrps_kind_name(c->kind));
    printf("dim:            %u\n", c->dim);
    if (c->kind == CQRPS_KIND_CE || c->kind == CQRPS_KIND_CQR)
        printf("chunks:         %u\n", c->chunks);
    if (c->kind != CQRPS_KIND_FULL)
        printf("rows:           %u\n", c->rows);
    printf("seed:           %" PRIu64 "\n", c->seed);
    printf("optimizer:      %s lr=%g", cqrps_optimizer_name(c->optimizer),
           c->lr);
    if (c->optimizer == CQRPS_OPT_ADAM)
        printf(" beta1=%g beta2=%g eps=%g", c->beta1, c->beta2, c->eps);
    else if (c->optimizer == CQRPS_OPT_ADAGRAD)
        printf(" eps=%g", c->eps);
    printf(" weight_decay=%g\n", c->weight_decay);
    printf("init_scale:     %g\n", c->init_scale);
    if (c->kind == CQRPS_KIND_CQR) {
        printf("cluster:        iters=%u tol=%g sample=%u "
               "reset_optimizer=%s\n", c->cluster_iters,
               c->cluster_tol > 0 ? c->cluster_tol : 0.0, c->cluster_sample,
               c->reset_optimizer == CQRPS_ON ? "yes" : "no");
        if (c->schedule_every)
            printf("schedule:       every %" PRIu64 " examples, max %u "
                   "phases\n",
                   c->schedule_every, c->schedule_max_phases);
        else
            printf("schedule:       off\n");
    }
    if (c->kind == CQRPS_KIND_FULL || c->kind == CQRPS_KIND_CQR) {
        printf("admission:      after %u push%s", c->admit_after > 1
               ? c->admit_after : 1, c->admit_after > 1 ? "es" : "");
        if (t->sketch_bytes)
            printf(" (sketch %" PRIu64 " bytes)", t->sketch_bytes);
        printf(", %" PRIu64 " admitted\n", t->ids_admitted);
        printf("eviction:       ");
        const char *sep = "";
        if (c->evict_after_phases) {
            printf("after %u phases unpushed", c->evict_after_phases);
            sep = ", ";
        }
        if (c->max_ids) {
            printf("%smax_ids %" PRIu64, sep, c->max_ids);
            sep = ", ";
        }
        if (c->ttl_seconds) {
            printf("%sttl %u s", sep, c->ttl_seconds);
            sep = ", ";
        }
        if (!*sep)
            printf("off");
        printf(", %" PRIu64 " evicted\n", t->ids_evicted);
    }
    if (c->kind == CQRPS_KIND_CQR)
        printf("compaction:     %s%s, %" PRIu64 " known ids in the static "
               "set, %" PRIu64 " in the map%s\n",
               t->compacted ? "compacted" : "not compacted",
               c->compact ? " (compact on: after the first phase)" : "",
               t->static_ids, t->known_ids - t->static_ids,
               t->compacting ? ", compacting now" : "");
    if (t->serving_generation)
        printf("serving:        export generation %" PRIu64 " (read-only)\n",
               t->serving_generation);
    printf("known_ids:      %" PRIu64 "\n", t->known_ids);
    printf("memory:         params %s, optimizer %s, index %s "
           "(%.1f B/known id)\n",
           pb, ob, ib, t->bytes_per_known_id);
    printf("traffic:        %" PRIu64 " ids looked up, %" PRIu64
           " pushed, %" PRIu64 " examples\n",
           t->lookups, t->pushes, t->examples_pushed);
    if (c->kind == CQRPS_KIND_CQR)
        printf("phases:         %u done%s, last inertia %g in %.3f s\n",
               t->phases_done, t->phase_running ? ", one running" : "",
               t->last_inertia, t->last_phase_seconds);
}

void print_table_rows(const cqrps_table_info_t *t, size_t n)
{
    printf("%-24s %-5s %6s %6s %9s %12s %12s %6s\n", "NAME", "KIND", "DIM",
           "CHUNKS", "ROWS", "KNOWN_IDS", "PARAMS", "PHASES");
    for (size_t i = 0; i < n; i++) {
        const cqrps_table_config_t *c = &t[i].config;
        char pb[32], chunks[16] = "-", rows[16] = "-";
        human_bytes(t[i].param_bytes, pb, sizeof(pb));
        if (c->kind == CQRPS_KIND_CE || c->kind == CQRPS_KIND_CQR)
            snprintf(chunks, sizeof(chunks), "%u", c->chunks);
        if (c->kind != CQRPS_KIND_FULL)
            snprintf(rows, sizeof(rows), "%u", c->rows);
        printf("%-24s %-5s %6u %6s %9s %12" PRIu64 " %12s %6u\n",
               t[i].name, cqrps_kind_name(c->kind), c->dim, chunks, rows,
               t[i].known_ids, pb, t[i].phases_done);
    }
}


/* A latency as "12.3us", "4.56ms" or "1.2s". */
static void human_secs(double s, char *buf, size_t len)
{
    if (s < 1e-3)
        snprintf(buf, len, "%.1fus", s * 1e6);
    else if (s < 1.0)
        snprintf(buf, len, "%.2fms", s * 1e3);
    else
        snprintf(buf, len, "%.2fs", s);
}

typedef struct lat_bucket {
    double le;   /* upper bound, seconds */
    double cum;  /* requests at or below it (summed over shards) */
} lat_bucket_t;

static int lat_cmp(const void *a, const void *b)
{
    double x = ((const lat_bucket_t *)a)->le;
    double y = ((const lat_bucket_t *)b)->le;
    return x < y ? -1 : x > y;
}

/* Quantile q of cumulative buckets b[0..n) holding `count` requests,
 * interpolated inside the bucket (as Prometheus does). */
static double lat_quantile(const lat_bucket_t *b, size_t n, double count,
                           double q)
{
    double rank = q * count, prev_le = 0, prev_cum = 0;
    for (size_t i = 0; i < n; i++) {
        if (b[i].cum >= rank && b[i].cum > prev_cum)
            return prev_le + (b[i].le - prev_le) *
                                 (rank - prev_cum) / (b[i].cum - prev_cum);
        prev_le = b[i].le;
        prev_cum = b[i].cum;
    }
    return n ? b[n - 1].le : 0; /* beyond the last bound */
}

/* The server's per-operation latency histograms ("latency.OP.count",
 * ".sum_seconds", ".le.BOUND" counters, summed over shards) as one line
 * per operation with quantiles. */
void print_latency(const cqrps_stats_t *st)
{
    int header = 0;
    for (size_t i = 0; i < st->ncounters; i++) {
        const char *k = st->counters[i].name;
        size_t kl = strlen(k);
        if (strncmp(k, "latency.", 8) != 0 || kl < 14 ||
            strcmp(k + kl - 6, ".count") != 0 || st->counters[i].value <= 0)
            continue;
        char op[64];
        snprintf(op, sizeof(op), "%.*s", (int)(kl - 14), k + 8);
        char prefix[96];
        int pl = snprintf(prefix, sizeof(prefix), "latency.%s.le.", op);
        char sumkey[96];
        snprintf(sumkey, sizeof(sumkey), "latency.%s.sum_seconds", op);
        lat_bucket_t b[64];
        size_t nb = 0;
        double sum = 0, count = st->counters[i].value;
        for (size_t j = 0; j < st->ncounters; j++) {
            const char *kj = st->counters[j].name;
            if (strcmp(kj, sumkey) == 0)
                sum = st->counters[j].value;
            else if (strncmp(kj, prefix, (size_t)pl) == 0 && nb < 64) {
                b[nb].le = strtod(kj + pl, NULL);
                b[nb++].cum = st->counters[j].value;
            }
        }
        qsort(b, nb, sizeof(b[0]), lat_cmp);
        char mean[24], p50[24], p90[24], p99[24];
        human_secs(sum / count, mean, sizeof(mean));
        human_secs(lat_quantile(b, nb, count, 0.50), p50, sizeof(p50));
        human_secs(lat_quantile(b, nb, count, 0.90), p90, sizeof(p90));
        human_secs(lat_quantile(b, nb, count, 0.99), p99, sizeof(p99));
        char cnt[32];
        counter_text(&st->counters[i], cnt, sizeof(cnt));
        if (!header) {
            printf("latency:     %-18s %10s %10s %10s %10s %10s\n", "op",
                   "count", "mean", "p50", "p90", "p99");
            header = 1;
        }
        printf("             %-18s %10s %10s %10s %10s %10s\n", op, cnt,
               mean, p50, p90, p99);
    }
}
