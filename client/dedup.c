/* dedup.c -- de-duplication of a batch of IDs, and the two row moves that
 * go with it (distinct rows out to every occurrence; gradients of every
 * occurrence summed into their distinct row).
 *
 * A trainer's batch repeats IDs (popular items, a user with many
 * examples). Looking each distinct ID up once and pushing its summed
 * gradient once is what nn.Embedding with a sparse optimizer does, and it
 * sends fewer bytes. torch.unique sorts (about 19 ms for 65,536 IDs on the
 * reference machine); a hash pass does not need to: one probe of an
 * open-addressing table per ID, the distinct IDs kept in order of first
 * occurrence. That order has two uses: a batch without repeats comes out
 * unchanged (uniq == ids, inverse == 0..n-1, so a caller can skip both row
 * moves), and the summing pass can copy a distinct row's first
 * occurrence and add only the repeats, with no zeroing pass.
 *
 * No connection, no server, nothing shared: every function here is
 * thread-safe and works on the caller's buffers only. cqrps_dedup's probe
 * table is the caller's work buffer when it gives one (a trainer reuses
 * it every step: fresh pages cost a fault each, about 20 us on the
 * reference VM), else allocated for the call and freed.
 */
#include <stdlib.h>
#include <string.h>

#include "cqrps.h"
#include "engine/hash.h"

/* o += g, row-wise; restrict lets the compiler vectorize it. */
static void add_row(float *restrict o, const float *restrict g, size_t dim)
{
    for (size_t k = 0; k < dim; k++)
        o[k] += g[k];
}

/* Slots per ID: a table at most half full keeps probes short. */
#define DEDUP_LOAD 2u
#define DEDUP_MIN_SLOTS 16u

/* Probe slots for n IDs: a power of two, at least DEDUP_LOAD * n. */
static size_t dedup_slots(size_t n)
{
    size_t slots = DEDUP_MIN_SLOTS;
    while (slots < (size_t)DEDUP_LOAD * n)
        slots <<= 1;
    return slots;
}

size_t cqrps_dedup_work_bytes(size_t n)
{
    if (n > UINT32_MAX - 1)
        return 0;
    return dedup_slots(n) * sizeof(uint32_t);
}

int cqrps_dedup(const uint64_t *ids, size_t n, uint64_t *uniq,
                uint32_t *inverse, size_t *nuniq, void *work,
                size_t work_bytes)
{
    if (!nuniq || (n && (!ids || !uniq || !inverse)))
        return CQRPS_EINVAL;
    *nuniq = 0;
    if (n == 0)
        return 0;
    if (n > UINT32_MAX - 1)
        return CQRPS_EINVAL;
    const size_t slots = dedup_slots(n);
    int shift = 64;
    for (size_t s = slots; s > 1; s >>= 1)
        shift--;
    /* A slot holds 1 + the index in uniq of the ID it stands for; 0 is
     * empty. The ID itself is read back from uniq on a probe. */
    uint32_t *table;
    if (work) {
        if (work_bytes < slots * sizeof(*table))
            return CQRPS_EINVAL;
        table = work;
        memset(table, 0, slots * sizeof(*table));
    } else {
        table = calloc(slots, sizeof(*table));
        if (!table)
            return CQRPS_ENOMEM;
    }
    const size_t mask = slots - 1;
    uint32_t count = 0;
    for (size_t j = 0; j < n; j++) {
        const uint64_t id = ids[j];
        size_t s = (size_t)(cqr_mix64(id) >> shift);
        for (;;) {
            const uint32_t e = table[s];
            if (e == 0) {
                table[s] = count + 1;
                uniq[count] = id;
                inverse[j] = count++;
                break;
            }
            if (uniq[e - 1] == id) {
                inverse[j] = e - 1;
                break;
            }
            s = (s + 1) & mask;
        }
    }
    if (!work)
        free(table);
    *nuniq = count;
    return 0;
}

int cqrps_dedup_expand(const float *rows, size_t nuniq, size_t dim,
                       const uint32_t *inverse, size_t n, float *out)
{
    if (n && (!rows || !inverse || !out || dim == 0))
        return CQRPS_EINVAL;
    if (dim > SIZE_MAX / sizeof(float) / (n ? n : 1))
        return CQRPS_EINVAL;
    const size_t row_bytes = dim * sizeof(float);
    const int in_place = rows == out;
    /* Backwards, so that rows may be out itself: in first-occurrence
     * order r <= j, and when row j is filled only rows above j have been
     * written. */
    for (size_t j = n; j-- > 0;) {
        const uint32_t r = inverse[j];
        if (r >= nuniq || (in_place && r > j))
            return CQRPS_EINVAL;
        if (!(in_place && r == j))
            memcpy(out + j * dim, rows + (size_t)r * dim, row_bytes);
    }
    return 0;
}

int cqrps_dedup_sum(const float *grads, size_t n, size_t dim,
                    const uint32_t *inverse, size_t nuniq, float *out)
{
    if (n && (!grads || !inverse || !out || dim == 0))
        return CQRPS_EINVAL;
    if (nuniq > n)
        return CQRPS_EINVAL;
    const size_t row_bytes = dim * sizeof(float);
    uint32_t next = 0; /* distinct rows written so far */
    for (size_t j = 0; j < n; j++) {
        const uint32_t r = inverse[j];
        const float *g = grads + j * dim;
        float *o = out + (size_t)r * dim;
        if (r == next) { /* first occurrence: the row starts as a copy */
            if (r >= nuniq)
                return CQRPS_EINVAL;
            memcpy(o, g, row_bytes);
            next++;
        } else if (r < next) {
            add_row(o, g, dim);
        } else {
            return CQRPS_EINVAL; /* not in first-occurrence order */
        }
    }
    return next == nuniq ? 0 : CQRPS_EINVAL;
}
