/* fuzz_common.h -- what the fuzz targets and the corpus generator agree on.
 *
 * fuzz_frame input:  byte 0 picks the frame limit (16 * (b0 + 1) bytes),
 *                    byte 1 seeds how the rest is cut into reads; the rest
 *                    is the byte stream a connection would receive.
 * fuzz_rpc input:    byte 0 picks the server's authentication mode (low
 *                    two bits, FUZZ_AUTH_*); the rest is the byte stream
 *                    of one connection: frames, each one request body.
 *
 * The harnesses (fuzz_frame.c, fuzz_rpc.c) build either as libFuzzer
 * targets (-DCQR_FUZZ=ON, clang) or, in every other build, as replay tools
 * that run the checked-in corpus once (replay_main.c): the corpus is then a
 * regression suite under ASan/UBSan too.
 */
#ifndef CQR_FUZZ_COMMON_H
#define CQR_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* fuzz_rpc authentication modes (input byte 0 & 3). */
enum {
    FUZZ_AUTH_NONE = 0,  /* no tokens: every session is admin */
    FUZZ_AUTH_BOTH = 1,  /* data token and admin token required */
    FUZZ_AUTH_ADMIN = 2, /* admin token only: the data plane is open */
    FUZZ_AUTH_DATA = 3   /* data token only: authenticated = admin */
};

#define FUZZ_TOKEN "fuzz-data-token"
#define FUZZ_ADMIN "fuzz-admin-token"

/* The libFuzzer entry points, also called by replay_main.c. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
