/* testutil.h -- helpers shared by the client integration suites.
 *
 * Every suite starts a real cqrps-server through tests/common/server_proc
 * and mirrors tables in-process with the engine (cqr_engine), so a value
 * read over the network can be compared bit for bit with what the engine
 * computes for the same calls. Helpers fail the running check test
 * (ck_assert) instead of returning errors.
 */
#ifndef CQR_TEST_CLIENT_UTIL_H
#define CQR_TEST_CLIENT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "cqrps.h"
#include "server_proc.h"
#include "engine/table.h"

/* Bounds of every wait in the suites, in ms. */
#define TU_START_MS 10000
#define TU_STOP_MS 10000

/* Starts a server (extra flags in args, may be NULL) or fails the test. */
void tu_server_start(cqr_test_server_t *s, const char *const *args);
/* Stops it (SIGTERM), asserts exit status 0 and a clean sanitizer log,
 * removes the log. */
void tu_server_stop(cqr_test_server_t *s);

/* Starts a server whose --data-dir is <dir>/<sub> (the server makes it),
 * with the flags in extra after it (NULL-terminated, may be NULL), or
 * fails the test. */
void tu_data_server_start(cqr_test_server_t *s, const char *dir,
                          const char *sub, const char *const *extra);
/* Removes dir and everything below it (rm -rf), or fails the test. */
void tu_rmtree(const char *dir);

/* Connects with the default options (or fails the test). */
cqrps_client_t *tu_connect(const char *addr);

/* A table config with every field explicit (no server defaults), so the
 * engine mirror needs no knowledge of the server's defaults. */
void tu_config(cqrps_table_config_t *cfg, cqrps_kind_t kind,
               cqrps_optimizer_t opt, uint32_t dim);
/* Creates table name through c with tu_config(kind, opt, dim) and, when
 * rows is not 0 and the kind has codebooks, rows rows per codebook; cfg
 * (may be NULL) receives that config. Fails the test on an error. */
void tu_create_table(cqrps_client_t *c, const char *name, cqrps_kind_t kind,
                     cqrps_optimizer_t opt, uint32_t dim, uint32_t rows,
                     cqrps_table_config_t *cfg);
/* The engine config the server builds from cfg (server/rpc/rpc.c). */
void tu_engine_config(const cqrps_table_config_t *cfg,
                      cqr_table_config_t *out);
/* Creates the in-process mirror of cfg. */
cqr_table_t *tu_mirror(const cqrps_table_config_t *cfg);

/* Deterministic randomness: splitmix64 (the engine's mixer). */
uint64_t tu_rand(uint64_t *state);
/* A float in [-1, 1) that is a multiple of 1/1024 (exact in float). */
float tu_randf(uint64_t *state);
void tu_fill(float *v, size_t n, uint64_t *state);

/* n pushes to table, each of 256 IDs below span and 256 * dim gradients
 * (tu_fill), all drawn from *state; each must succeed. */
void tu_push_random(cqrps_client_t *c, const char *table, uint64_t *state,
                    int n, uint32_t dim, uint64_t span);

/* Exact comparison of two float arrays; on a difference prints the first
 * mismatch with `what` and returns 0. */
int tu_same(const float *a, const float *b, size_t n, const char *what);
/* Largest |a-b| / max(1, |b|). */
double tu_maxrel(const float *a, const float *b, size_t n);

/* Milliseconds of a monotonic clock. */
uint64_t tu_now_ms(void);
void tu_sleep_ms(unsigned ms);

#endif
