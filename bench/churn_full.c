/* churn_full.c -- a stream with churn on full tables (issue 19).
 *
 * Each of ROUNDS rounds pushes NEW new IDs and the previous round's first
 * NEW/2 once more (pushes of 1,000 IDs, dim 32, Adam, one thread; the
 * table clock moves one second a round). Three tables take the same
 * stream: no options, max_ids 50,000, and admit_after 2 with max_ids
 * 50,000. Per round and table it prints the known IDs, the index and
 * parameter bytes, the bytes grown since creation, the IDs admitted and
 * evicted, and the CPU seconds of the round's pushes. No arguments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "engine/table.h"

enum { DIM = 32, NEW = 20000, ROUNDS = 12 };

static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(void)
{
    const char *name[3] = {"off", "max_ids 50000", "admit 2 + max_ids 50000"};
    cqr_table_t *t[3];
    for (int i = 0; i < 3; i++) {
        cqr_table_config_t cfg;
        cqr_table_config_default(&cfg, CQR_KIND_FULL, DIM);
        cfg.max_ids = i ? 50000 : 0;
        cfg.admit_after = i == 2 ? 2 : 0;
        if (cqr_table_create(&cfg, &t[i]))
            return 1;
        cqr_table_set_clock(t[i], 1000000);
    }
    uint64_t *ids = malloc((NEW + NEW / 2) * sizeof *ids);
    float *g = malloc((size_t)(NEW + NEW / 2) * DIM * sizeof *g);
    for (size_t j = 0; j < (size_t)(NEW + NEW / 2) * DIM; j++)
        g[j] = 0.001f * (float)(j % 7);
    double c[3] = {0};
    for (int r = 0; r < ROUNDS; r++) {
        size_t n = 0;
        for (int j = 0; j < NEW; j++)
            ids[n++] = 1 + (uint64_t)r * NEW + j;
        for (int j = 0; r > 0 && j < NEW / 2; j++)
            ids[n++] = 1 + (uint64_t)(r - 1) * NEW + j;
        for (int i = 0; i < 3; i++) {
            cqr_table_set_clock(t[i], 1000000 + r);
            double t0 = cpu();
            for (size_t b = 0; b < n; b += 1000) {
                size_t m = n - b < 1000 ? n - b : 1000;
                if (cqr_table_push(t[i], ids + b, g + b * DIM, m))
                    return 2;
            }
            c[i] = cpu() - t0;
        }
        for (int i = 0; i < 3; i++) {
            cqr_table_stats_t s;
            cqr_table_stats(t[i], &s);
            printf("round %2d %-24s known %7llu index %8.2f MB params+opt "
                   "%8.2f MB grown %8.2f MB admitted %7llu evicted %7llu "
                   "cpu %.3f s\n",
                   r + 1, name[i], (unsigned long long)s.known_ids,
                   (double)s.index_bytes / 1e6,
                   (double)(s.param_bytes + s.optim_bytes) / 1e6,
                   (double)cqr_table_grown_bytes(t[i]) / 1e6,
                   (unsigned long long)s.ids_admitted,
                   (unsigned long long)s.ids_evicted, c[i]);
        }
    }
    for (int i = 0; i < 3; i++)
        cqr_table_destroy(t[i]);
    free(ids);
    free(g);
    return 0;
}
