/* keyfile.h -- the IDs of a cqr table's static set, kept on disk.
 *
 * A cqr table's static set (packmap.h) holds no IDs, only what each ID
 * looks up. The IDs themselves are needed only by the operations that
 * walk every known ID: the next rebuild (a cluster phase or a
 * compaction), the digest and a checkpoint. They live in a key file: one
 * record per static slot, in slot order, CQR_KF_REC bytes each (the ID,
 * u64, then the epoch of its last push, u32; little-endian). A key file
 * is written once, by the rebuild that made its static set, and never
 * changes; it is shared (reference counted) between the table's state and
 * whatever still reads it (an export in progress).
 *
 * Where: an unnamed file (O_TMPFILE, or a name unlinked at once) in the
 * directory set with cqr_keyfile_set_dir (the server passes its data
 * directory; default $TMPDIR, else /tmp). It disappears with its last
 * reference and with the process, so a crash leaves nothing behind; the
 * IDs survive restarts in checkpoints, which carry the records.
 * Reads go through pread into the caller's buffers: the file's pages are
 * the kernel's page cache, never the process's resident memory.
 *
 * Threading: create and write belong to the building thread; once
 * finished, any number of threads may read and take references. The
 * directory setting is process-wide (set it before creating tables).
 * Errors: 0 or CQR_EIO (the file system's error) / CQR_ENOMEM.
 */
#ifndef CQR_KEYFILE_H
#define CQR_KEYFILE_H

#include <stddef.h>
#include <stdint.h>

#define CQR_KF_REC 12u  /* bytes per record: u64 ID, u32 last push epoch */

typedef struct cqr_keyfile cqr_keyfile_t;

/* The directory of new key files (copied; NULL = the default). */
void cqr_keyfile_set_dir(const char *dir);

/* A new key file of n records (their bytes undefined until written). */
int cqr_keyfile_create(uint64_t n, cqr_keyfile_t **out);

/* Writes records [first, first + count) from recs (count x CQR_KF_REC
 * bytes). */
int cqr_keyfile_write(cqr_keyfile_t *kf, uint64_t first, const void *recs,
                      uint64_t count);

/* Reads records [first, first + count) into recs. */
int cqr_keyfile_read(const cqr_keyfile_t *kf, uint64_t first, void *recs,
                     uint64_t count);

/* Records held. */
uint64_t cqr_keyfile_count(const cqr_keyfile_t *kf);

/* One more reference; unref drops one and closes the file with the last.
 * NULL is a no-op for both. */
cqr_keyfile_t *cqr_keyfile_ref(cqr_keyfile_t *kf);
void cqr_keyfile_unref(cqr_keyfile_t *kf);

/* A record's fields. */
static inline uint64_t cqr_kf_id(const uint8_t *rec)
{
    uint64_t v;
    __builtin_memcpy(&v, rec, 8);
    return v;
}

static inline uint32_t cqr_kf_epoch(const uint8_t *rec)
{
    uint32_t v;
    __builtin_memcpy(&v, rec + 8, 4);
    return v;
}

static inline void cqr_kf_put(uint8_t *rec, uint64_t id, uint32_t epoch)
{
    __builtin_memcpy(rec, &id, 8);
    __builtin_memcpy(rec + 8, &epoch, 4);
}

#endif
