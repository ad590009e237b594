/* store_ack.c -- the acknowledgement record: the number of the last
 * generation a checkpoint returned to its caller, kept beside RocksDB's
 * files so that a restore can tell a generation that vanished from one
 * that was never acknowledged (store.h, "Acknowledgement record").
 *
 * The file CQRPS-ACKED holds one line:
 *   cqrps-acked 1 generation=G unix=T check=XXXXXXXXXXXXXXXX
 * where check is the XXH3-64 (hex) of everything before " check=". It is
 * replaced atomically: written to CQRPS-ACKED.tmp, fsynced, renamed over
 * the record, and the directory fsynced, so a crash leaves the old record
 * or the new one. RocksDB ignores files it did not name.
 */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "engine/err.h"
#include "store/store_impl.h"

#define ACK_NAME "CQRPS-ACKED"
#define ACK_TMP "CQRPS-ACKED.tmp"
#define ACK_MAGIC "cqrps-acked 1"

static void ack_path(const cqr_store_t *s, const char *name, char *buf,
                     size_t len)
{
    snprintf(buf, len, "%s/%s", s->dir, name);
}

int cqr_store_ack_read(cqr_store_t *s)
{
    s->acked = 0;
    char path[4096];
    ack_path(s, ACK_NAME, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno != ENOENT)
            cqr_store_warn(s, "cannot read the acknowledgement record %s "
                           "(%s); a lost generation cannot be detected",
                           path, strerror(errno));
        return 0;
    }
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    unsigned long long gen = 0, unix_s = 0, check = 0;
    char *cp = strstr(buf, " check=");
    int ok = n > 0 && strncmp(buf, ACK_MAGIC " ", strlen(ACK_MAGIC) + 1) == 0
             && cp != NULL &&
             sscanf(buf, ACK_MAGIC " generation=%llu unix=%llu check=%llx",
                    &gen, &unix_s, &check) == 3 &&
             XXH3_64bits(buf, (size_t)(cp - buf)) == check;
    if (!ok) {
        cqr_store_warn(s, "the acknowledgement record %s is damaged; a "
                       "lost generation cannot be detected until the next "
                       "checkpoint rewrites it", path);
        return 0;
    }
    s->acked = gen;
    return 0;
}

/* Writes all of buf to fd; 0 or an errno. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int cqr_store_ack_write(cqr_store_t *s, uint64_t gen)
{
    char line[160];
    int l = snprintf(line, sizeof line, ACK_MAGIC " generation=%llu unix=%llu",
                     (unsigned long long)gen,
                     (unsigned long long)time(NULL));
    snprintf(line + l, sizeof line - (size_t)l, " check=%016llx\n",
             (unsigned long long)XXH3_64bits(line, (size_t)l));
    char tmp[4096], fin[4096];
    ack_path(s, ACK_TMP, tmp, sizeof tmp);
    ack_path(s, ACK_NAME, fin, sizeof fin);
    const char *step = "create";
    int e = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        e = errno;
    } else {
        step = "write";
        e = write_all(fd, line, strlen(line));
        if (e == 0) {
            step = "fsync";
            e = fsync(fd) ? errno : 0;
        }
        if (close(fd) && e == 0) {
            step = "close";
            e = errno;
        }
    }
    if (e == 0) {
        step = "rename";
        e = rename(tmp, fin) ? errno : 0;
    }
    if (e == 0) {
        step = "fsync of the directory";
        int dfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        e = dfd < 0 ? errno : (fsync(dfd) ? errno : 0);
        if (dfd >= 0)
            close(dfd);
    }
    if (e)
        return cqr_store_fail(s, CQR_EIO, "acknowledgement record %s: %s: "
                              "%s", fin, step, strerror(e));
    s->acked = gen;
    return 0;
}

int cqr_store_set_acked(cqr_store_t *s, uint64_t generation)
{
    if (!s)
        return CQR_EINVAL;
    pthread_mutex_lock(&s->mu);
    int rc = cqr_store_ack_write(s, generation);
    pthread_mutex_unlock(&s->mu);
    return rc;
}
