/* quickstart.c -- the C client library in one file: connect, create a
 * cqr table, look up, push a gradient, run a cluster phase.
 *
 *   cc quickstart.c $(pkg-config --cflags --libs cqrps) -o quickstart
 *   ./quickstart 127.0.0.1:7070
 */
#include <stdio.h>

#include <cqrps.h>

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:7070";
    cqrps_client_t *c;
    if (cqrps_connect(addr, NULL, &c) != 0) {
        fprintf(stderr, "connect: %s\n", cqrps_last_error(NULL));
        return 1;
    }
    cqrps_table_config_t cfg;
    cqrps_table_config_init(&cfg, CQRPS_KIND_CQR, 32);
    cfg.rows = 256;                               /* per codebook */
    int rc = cqrps_create_table(c, "items", &cfg, NULL);
    if (rc != 0 && rc != CQRPS_EEXIST)
        goto fail;

    uint64_t ids[3] = { 17, 4242, 17 };
    float emb[3 * 32], grad[3 * 32];
    if ((rc = cqrps_lookup(c, "items", ids, 3, emb)) != 0) /* 3 x 32 */
        goto fail;
    /* The gradient of your loss; here: pull every embedding towards 0. */
    for (int i = 0; i < 3 * 32; i++)
        grad[i] = emb[i];
    if ((rc = cqrps_push(c, "items", ids, grad, 3)) != 0) /* 17 summed */
        goto fail;

    uint64_t phase;
    if ((rc = cqrps_cluster(c, "items", &phase)) != 0) /* returns at once */
        goto fail;
    cqrps_phase_status_t st;
    if ((rc = cqrps_cluster_wait(c, "items", phase, 0, &st)) != 0)
        goto fail;
    printf("cluster phase %llu done: %llu ids assigned\n",
           (unsigned long long)phase, (unsigned long long)st.ids_assigned);
    cqrps_close(c);
    return 0;

fail:
    fprintf(stderr, "cqrps: %s: %s\n", cqrps_errname(rc),
            cqrps_last_error(c));
    cqrps_close(c);
    return 1;
}
