/* keyfile.c -- unnamed on-disk files of static-set records (keyfile.h). */
#define _GNU_SOURCE
#include "keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"

struct cqr_keyfile {
    int fd;          /* the unnamed file, or -1 when n == 0 */
    uint64_t n;      /* records */
    unsigned refs;   /* references (atomic) */
};

static pthread_mutex_t dir_mu = PTHREAD_MUTEX_INITIALIZER;
static char *kf_dir; /* NULL: $TMPDIR or /tmp */

void cqr_keyfile_set_dir(const char *dir)
{
    pthread_mutex_lock(&dir_mu);
    free(kf_dir);
    kf_dir = dir ? strdup(dir) : NULL;
    pthread_mutex_unlock(&dir_mu);
}

/* An unnamed read-write file in the key file directory, or -1. */
static int open_unnamed(void)
{
    pthread_mutex_lock(&dir_mu);
    const char *dir = kf_dir ? kf_dir : getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char path[4096];
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 && snprintf(path, sizeof path, "%s/cqr-keys-XXXXXX", dir) <
                      (int)sizeof path) {
        /* File systems without O_TMPFILE: a name, unlinked at once. */
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    pthread_mutex_unlock(&dir_mu);
    return fd;
}

int cqr_keyfile_create(uint64_t n, cqr_keyfile_t **out)
{
    cqr_keyfile_t *kf = calloc(1, sizeof *kf);
    if (!kf)
        return CQR_ENOMEM;
    kf->n = n;
    kf->refs = 1;
    kf->fd = -1;
    if (n) {
        kf->fd = open_unnamed();
        if (kf->fd < 0 || ftruncate(kf->fd, (off_t)(n * CQR_KF_REC)) != 0) {
            if (kf->fd >= 0)
                close(kf->fd);
            free(kf);
            return CQR_EIO;
        }
    }
    *out = kf;
    return 0;
}

int cqr_keyfile_write(cqr_keyfile_t *kf, uint64_t first, const void *recs,
                      uint64_t count)
{
    if (first > kf->n || count > kf->n - first)
        return CQR_EINVAL;
    const char *p = recs;
    uint64_t left = count * CQR_KF_REC;
    off_t off = (off_t)(first * CQR_KF_REC);
    while (left) {
        ssize_t w = pwrite(kf->fd, p, left, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return CQR_EIO;
        p += w;
        off += w;
        left -= (uint64_t)w;
    }
    return 0;
}

int cqr_keyfile_read(const cqr_keyfile_t *kf, uint64_t first, void *recs,
                     uint64_t count)
{
    if (first > kf->n || count > kf->n - first)
        return CQR_EINVAL;
    char *p = recs;
    uint64_t left = count * CQR_KF_REC;
    off_t off = (off_t)(first * CQR_KF_REC);
    while (left) {
        ssize_t r = pread(kf->fd, p, left, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return CQR_EIO;
        p += r;
        off += r;
        left -= (uint64_t)r;
    }
    return 0;
}

uint64_t cqr_keyfile_count(const cqr_keyfile_t *kf)
{
    return kf ? kf->n : 0;
}

cqr_keyfile_t *cqr_keyfile_ref(cqr_keyfile_t *kf)
{
    if (kf)
        __atomic_add_fetch(&kf->refs, 1, __ATOMIC_RELAXED);
    return kf;
}

void cqr_keyfile_unref(cqr_keyfile_t *kf)
{
    if (!kf || __atomic_sub_fetch(&kf->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (kf->fd >= 0)
        close(kf->fd);
    free(kf);
}
