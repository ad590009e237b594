/* powerloss.c -- an LD_PRELOAD library that simulates a power loss under
 * one directory (the data dir of the server it is loaded into).
 *
 * SIGKILL keeps the page cache: every write a killed process made is
 * still there. A power loss keeps only what was made durable. This
 * library interposes the libc calls that write, sync, create, rename and
 * delete files under the directory CQR_PL_DIR, remembers what is not yet
 * durable, and at a chosen sync point throws all of it away and kills the
 * process, leaving on disk exactly what a power loss at that moment may
 * leave (the strictest case the POSIX rules allow):
 *
 * - File contents: what an fsync or fdatasync of the file made durable.
 *   Writes since are undone: a file is cut back to its size at its last
 *   sync, and a file whose synced bytes were overwritten or truncated
 *   since gets them back from a copy taken before the first such change
 *   (appends, what RocksDB does, need no copy). Files that existed before
 *   the process touched them count as durable.
 * - Names in the directory: what an fsync of the directory made durable.
 *   Creates, renames and unlinks since are undone, newest first; an
 *   unlinked or replaced file is kept alive as a hard link in CQR_PL_SHADOW
 *   (same filesystem) until then.
 *
 * Environment (the library does nothing without CQR_PL_DIR):
 *   CQR_PL_DIR       absolute path of the directory (no trailing slash)
 *   CQR_PL_SHADOW    absolute path of an empty scratch directory on the
 *                    same filesystem
 *   CQR_PL_CRASH_AT  N: at the N-th sync point (1-based) drop everything
 *                    not durable and SIGKILL the process instead of
 *                    syncing; 0 or unset: never
 *   CQR_PL_LOG       a file (outside the directory) that gets one line
 *                    per sync point ("sync N file NAME" or "sync N dir")
 *                    and one for the crash ("crash N ...")
 *   CQR_PL_FAIL      a file: while it exists, every write, sync, truncate,
 *                    create, rename and unlink under the directory fails
 *                    with the errno it names (EROFS, EIO or ENOSPC;
 *                    default EIO), as a disk that went read-only or bad
 * A sync point is an fsync or fdatasync of a file under the directory or
 * of the directory itself.
 *
 * Coverage: open/openat/creat (and the 64 variants), write, pwrite,
 * writev, pwritev, ftruncate, truncate, fallocate, posix_fallocate,
 * fsync, fdatasync, sync_file_range (failures only), rename, renameat,
 * unlink, unlinkat and close. Not covered: writes through mmap (RocksDB
 * writes with write(); mmap writes are off in the store's options),
 * stdio (buffered FILE writes go through libc's internal write), O_DIRECT,
 * subdirectories, and links made with link(). Every interposed call that
 * changes something under the directory holds one mutex, so the crash
 * sees no write half done; calls on other descriptors pass straight
 * through.
 *
 * Not a part of the server: it is built for the power-loss test only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define FD_MAX 65536
#define PATH_LEN 1024

/* One inode written under the directory. */
typedef struct rec {
    dev_t dev;
    ino_t ino;
    int fd;             /* our own read-write descriptor of it */
    off_t synced;       /* its size at its last sync */
    int snap;           /* bytes [0, synced) are saved in the shadow dir */
    unsigned id;        /* names its snapshot */
    char name[256];     /* last name under the directory, for the log */
    struct rec *next;
} rec_t;

/* A change of the directory's names since its last fsync. */
enum { OP_CREATE, OP_RENAME, OP_UNLINK };
typedef struct nsop {
    int kind;
    char a[PATH_LEN];     /* created or unlinked name; rename source */
    char b[PATH_LEN];     /* rename target */
    char saved[PATH_LEN]; /* shadow link of the unlinked or replaced
                             file, "" if none */
    struct nsop *prev;
} nsop_t;

static struct {
    int on;
    char dir[PATH_LEN];
    size_t dirlen;
    char shadow[PATH_LEN];
    char fail[PATH_LEN];
    long crash_at;
    int logfd;
    long syncs;
    unsigned next_id;
    rec_t *recs;
    nsop_t *ops;          /* newest first */
    pthread_mutex_t mu;
    rec_t *fdrec[FD_MAX]; /* descriptor -> its inode, if written here */
    unsigned char fddir[FD_MAX]; /* descriptor of the directory itself */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .logfd = -1};

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int (*r_open)(const char *, int, ...);
static int (*r_open64)(const char *, int, ...);
static int (*r_openat)(int, const char *, int, ...);
static int (*r_openat64)(int, const char *, int, ...);
static int (*r_creat)(const char *, mode_t);
static int (*r_creat64)(const char *, mode_t);
static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*r_writev)(int, const struct iovec *, int);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static int (*r_ftruncate)(int, off_t);
static int (*r_ftruncate64)(int, off_t);
static int (*r_truncate)(const char *, off_t);
static int (*r_fallocate)(int, int, off_t, off_t);
static int (*r_fallocate64)(int, int, off_t, off_t);
static int (*r_posix_fallocate)(int, off_t, off_t);
static int (*r_fsync)(int);
static int (*r_fdatasync)(int);
static int (*r_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*r_rename)(const char *, const char *);
static int (*r_renameat)(int, const char *, int, const char *);
static int (*r_unlink)(const char *);
static int (*r_unlinkat)(int, const char *, int);
static int (*r_close)(int);

#define SYM(var, name) var = (__typeof__(var))dlsym(RTLD_NEXT, name)

static void init(void)
{
    SYM(r_open, "open");
    SYM(r_open64, "open64");
    SYM(r_openat, "openat");
    SYM(r_openat64, "openat64");
    SYM(r_creat, "creat");
    SYM(r_creat64, "creat64");
    SYM(r_write, "write");
    SYM(r_pwrite, "pwrite");
    SYM(r_pwrite64, "pwrite64");
    SYM(r_writev, "writev");
    SYM(r_pwritev, "pwritev");
    SYM(r_ftruncate, "ftruncate");
    SYM(r_ftruncate64, "ftruncate64");
    SYM(r_truncate, "truncate");
    SYM(r_fallocate, "fallocate");
    SYM(r_fallocate64, "fallocate64");
    SYM(r_posix_fallocate, "posix_fallocate");
    SYM(r_fsync, "fsync");
    SYM(r_fdatasync, "fdatasync");
    SYM(r_sync_file_range, "sync_file_range");
    SYM(r_rename, "rename");
    SYM(r_renameat, "renameat");
    SYM(r_unlink, "unlink");
    SYM(r_unlinkat, "unlinkat");
    SYM(r_close, "close");
    const char *d = getenv("CQR_PL_DIR");
    const char *sh = getenv("CQR_PL_SHADOW");
    if (d == NULL || d[0] != '/' || sh == NULL || sh[0] != '/')
        return;
    snprintf(g.dir, sizeof g.dir, "%s", d);
    g.dirlen = strlen(g.dir);
    while (g.dirlen > 1 && g.dir[g.dirlen - 1] == '/')
        g.dir[--g.dirlen] = '\0';
    snprintf(g.shadow, sizeof g.shadow, "%s", sh);
    const char *f = getenv("CQR_PL_FAIL");
    snprintf(g.fail, sizeof g.fail, "%s", f ? f : "");
    const char *c = getenv("CQR_PL_CRASH_AT");
    g.crash_at = c ? atol(c) : 0;
    const char *lg = getenv("CQR_PL_LOG");
    if (lg != NULL)
        g.logfd = r_open(lg, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    g.on = 1;
}

static void ensure(void)
{
    pthread_once(&g_once, init);
}

/* The failure a test asked for (CQR_PL_FAIL), or 0. */
static int injected(void)
{
    if (g.fail[0] == '\0')
        return 0;
    int fd = r_open(g.fail, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[16] = "";
    ssize_t n = read(fd, buf, sizeof buf - 1);
    r_close(fd);
    buf[n > 0 ? n : 0] = '\0';
    if (strncmp(buf, "EROFS", 5) == 0)
        return EROFS;
    if (strncmp(buf, "ENOSPC", 6) == 0)
        return ENOSPC;
    return EIO;
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    if (g.logfd < 0)
        return;
    char line[PATH_LEN + 64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)!r_write(g.logfd, line, (size_t)n < sizeof line ? (size_t)n
                                                             : sizeof line);
}

static void die(const char *what)
{
    char line[PATH_LEN + 64];
    int n = snprintf(line, sizeof line, "powerloss: %s: %s\n", what,
                     strerror(errno));
    (void)!r_write(2, line, (size_t)n);
    _exit(99);
}

/* Absolute form of path (relative to dirfd, or the cwd); 1 if it is in
 * the directory (directly) or is the directory (*isdir). */
static int ours(int dirfd, const char *path, char *abs, int *isdir)
{
    *isdir = 0;
    if (!g.on || path == NULL)
        return 0;
    if (path[0] == '/') {
        snprintf(abs, PATH_LEN, "%s", path);
    } else {
        char base[PATH_LEN];
        if (dirfd == AT_FDCWD) {
            if (getcwd(base, sizeof base) == NULL)
                return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, base, sizeof base - 1);
            if (n <= 0)
                return 0;
            base[n] = '\0';
        }
        snprintf(abs, PATH_LEN, "%.500s/%.500s", base, path);
    }
    size_t l = strlen(abs);
    while (l > 1 && abs[l - 1] == '/')
        abs[--l] = '\0';
    if (l == g.dirlen && memcmp(abs, g.dir, l) == 0) {
        *isdir = 1;
        return 1;
    }
    return l > g.dirlen + 1 && memcmp(abs, g.dir, g.dirlen) == 0 &&
           abs[g.dirlen] == '/' && strchr(abs + g.dirlen + 1, '/') == NULL;
}

static rec_t *rec_find(dev_t dev, ino_t ino)
{
    for (rec_t *r = g.recs; r != NULL; r = r->next) {
        if (r->dev == dev && r->ino == ino)
            return r;
    }
    return NULL;
}

static rec_t *rec_of_fd(int fd)
{
    if (fd < 0 || fd >= FD_MAX)
        return NULL;
    return __atomic_load_n(&g.fdrec[fd], __ATOMIC_ACQUIRE);
}

/* Starts tracking the file at abs (which exists): its current size is
 * durable. */
static rec_t *rec_add(const char *abs)
{
    struct stat st;
    if (stat(abs, &st) != 0 || !S_ISREG(st.st_mode))
        return NULL;
    rec_t *r = rec_find(st.st_dev, st.st_ino);
    if (r != NULL)
        return r;
    r = calloc(1, sizeof *r);
    if (r == NULL)
        die("out of memory");
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->fd = r_open(abs, O_RDWR | O_CLOEXEC);
    if (r->fd < 0)
        die("cannot reopen a file to track it");
    r->synced = st.st_size;
    r->id = ++g.next_id;
    snprintf(r->name, sizeof r->name, "%s", strrchr(abs, '/') + 1);
    r->next = g.recs;
    g.recs = r;
    return r;
}

/* Copies len bytes from fd `from` to fd `to`, both from offset 0. */
static void copy_fd(int from, int to, off_t len)
{
    char buf[1 << 16];
    for (off_t at = 0; at < len;) {
        size_t want = len - at < (off_t)sizeof buf ? (size_t)(len - at)
                                                    : sizeof buf;
        ssize_t n = pread(from, buf, want, at);
        if (n <= 0)
            die("snapshot read");
        if (r_pwrite(to, buf, (size_t)n, at) != n)
            die("snapshot write");
        at += n;
    }
}

static void snap_path(const rec_t *r, char *p)
{
    snprintf(p, PATH_LEN, "%.900s/snap-%u", g.shadow, r->id);
}

/* Before the synced bytes of r change: save them once per sync. */
static void snapshot(rec_t *r)
{
    if (r->snap || r->synced == 0)
        return;
    char p[PATH_LEN];
    snap_path(r, p);
    int fd = r_open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die("snapshot create");
    copy_fd(r->fd, fd, r->synced);
    r_close(fd);
    r->snap = 1;
}

/* A sync of r succeeded: what it holds now is durable. */
static void synced(rec_t *r)
{
    struct stat st;
    if (fstat(r->fd, &st) == 0)
        r->synced = st.st_size;
    if (r->snap) {
        char p[PATH_LEN];
        snap_path(r, p);
        r_unlink(p);
        r->snap = 0;
    }
}

static void shadow_link(const char *abs, char *saved)
{
    saved[0] = '\0';
    struct stat st;
    if (lstat(abs, &st) != 0)
        return;
    snprintf(saved, PATH_LEN, "%.900s/gone-%u", g.shadow, ++g.next_id);
    if (link(abs, saved) != 0)
        die("link into the shadow dir (same filesystem?)");
}

static void op_push(int kind, const char *a, const char *b,
                    const char *saved)
{
    nsop_t *o = calloc(1, sizeof *o);
    if (o == NULL)
        die("out of memory");
    o->kind = kind;
    snprintf(o->a, sizeof o->a, "%s", a);
    snprintf(o->b, sizeof o->b, "%s", b ? b : "");
    snprintf(o->saved, sizeof o->saved, "%s", saved ? saved : "");
    o->prev = g.ops;
    g.ops = o;
}

/* The directory's names are durable: forget how to undo them. */
static void dir_synced(void)
{
    while (g.ops != NULL) {
        nsop_t *o = g.ops;
        g.ops = o->prev;
        if (o->saved[0] != '\0')
            r_unlink(o->saved);
        free(o);
    }
}

/* The power loss: every file back to its last synced content, every name
 * change since the directory's last fsync undone, then SIGKILL. Runs
 * with g.mu held and never returns: other threads block on it. */
static void crash(const char *what)
{
    logf_("crash %ld %s\n", g.syncs, what);
    for (rec_t *r = g.recs; r != NULL; r = r->next) {
        if (r->snap) {
            char p[PATH_LEN];
            snap_path(r, p);
            int fd = r_open(p, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                die("snapshot open");
            copy_fd(fd, r->fd, r->synced);
            r_close(fd);
        }
        if (r_ftruncate(r->fd, r->synced) != 0)
            die("truncate to the synced size");
    }
    for (nsop_t *o = g.ops; o != NULL; o = o->prev) {
        if (o->kind == OP_CREATE) {
            r_unlink(o->a);
        } else if (o->kind == OP_RENAME) {
            if (r_rename(o->b, o->a) != 0)
                die("undo rename");
            if (o->saved[0] != '\0' && r_rename(o->saved, o->b) != 0)
                die("undo rename: restore the target");
        } else if (o->saved[0] != '\0' && r_rename(o->saved, o->a) != 0) {
            die("undo unlink");
        }
    }
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

/* ---- opening and closing ---------------------------------------------- */

/* Ends an interposed call under the mutex that an injected failure e
 * stopped: unlocks, sets errno, returns -1. */
static int fail_unlocking(int e)
{
    pthread_mutex_unlock(&g.mu);
    errno = e;
    return -1;
}

/* Ends an interposed change under the mutex: returns rc, what the real
 * call returned (-1 when an injected failure e stopped it), with errno as
 * the call left it, or e. */
static ssize_t change_done(ssize_t rc, int e)
{
    int saved_errno = e ? e : errno;
    pthread_mutex_unlock(&g.mu);
    errno = saved_errno;
    return rc;
}

/* The common path of every open: abs is ours (ours() said so). */
static int do_open(int (*real)(const char *, int, ...), int dirfd,
                   const char *path, const char *abs, int isdir, int flags,
                   mode_t mode)
{
    int writes = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC) ||
                 (flags & O_CREAT);
    if (isdir || !writes) {
        int fd = dirfd == AT_FDCWD && real != NULL
                     ? real(path, flags, mode)
                     : r_openat(dirfd, path, flags, mode);
        if (fd >= 0 && fd < FD_MAX && isdir)
            __atomic_store_n(&g.fddir[fd], 1, __ATOMIC_RELEASE);
        return fd;
    }
    pthread_mutex_lock(&g.mu);
    int e = injected();
    if (e)
        return fail_unlocking(e);
    struct stat st;
    int existed = stat(abs, &st) == 0;
    rec_t *r = NULL;
    if (existed && (flags & O_TRUNC) && st.st_size > 0) {
        r = rec_add(abs);
        if (r != NULL)
            snapshot(r);
    }
    int fd = dirfd == AT_FDCWD && real != NULL
                 ? real(path, flags, mode)
                 : r_openat(dirfd, path, flags, mode);
    int saved_errno = errno;
    if (fd >= 0) {
        if (!existed)
            op_push(OP_CREATE, abs, NULL, NULL);
        r = rec_add(abs);
        if (r != NULL && !existed)
            r->synced = 0;
        if (r != NULL && fd < FD_MAX)
            __atomic_store_n(&g.fdrec[fd], r, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g.mu);
    errno = saved_errno;
    return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & __O_TMPFILE) ? va_arg(ap, mode_t)
                                                      : 0;
}

/* What the four open calls share once they have their mode: real is
 * the path call (open, open64), or NULL for the at-calls (real_at); a
 * path outside the directory passes straight through. */
static int open_any(int (*real)(const char *, int, ...),
                    int (*real_at)(int, const char *, int, ...), int dirfd,
                    const char *path, int flags, mode_t mode)
{
    char abs[PATH_LEN];
    int isdir;
    if (!ours(dirfd, path, abs, &isdir))
        return real != NULL ? real(path, flags, mode)
                            : real_at(dirfd, path, flags, mode);
    return do_open(real, dirfd, path, abs, isdir, flags, mode);
}

int open(const char *path, int flags, ...)
{
    ensure();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(r_open, NULL, AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    ensure();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(r_open64, NULL, AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    ensure();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(NULL, r_openat, dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    ensure();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(NULL, r_openat64, dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
    return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int creat64(const char *path, mode_t mode)
{
    return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int close(int fd)
{
    ensure();
    if (fd >= 0 && fd < FD_MAX) {
        __atomic_store_n(&g.fdrec[fd], NULL, __ATOMIC_RELEASE);
        __atomic_store_n(&g.fddir[fd], 0, __ATOMIC_RELEASE);
    }
    return r_close(fd);
}

/* ---- writes ------------------------------------------------------------- */

/* Before a change of r's bytes from offset `at` on: save the synced
 * bytes if the change reaches them; the injected failure, or 0. */
static int before_change(rec_t *r, off_t at)
{
    int e = injected();
    if (e)
        return e;
    if (at < r->synced)
        snapshot(r);
    return 0;
}

/* The offset a write() or writev() on fd changes bytes from. */
static off_t current_offset(int fd)
{
    off_t at = lseek(fd, 0, SEEK_CUR);
    return at < 0 ? 0 : at;
}

ssize_t write(int fd, const void *buf, size_t n)
{
    ensure();
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return r_write(fd, buf, n);
    pthread_mutex_lock(&g.mu);
    int e = before_change(r, current_offset(fd));
    return change_done(e ? -1 : r_write(fd, buf, n), e);
}

static ssize_t do_pwrite(ssize_t (*real)(int, const void *, size_t, off_t),
                         int fd, const void *buf, size_t n, off_t off)
{
    ensure();
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return real(fd, buf, n, off);
    pthread_mutex_lock(&g.mu);
    int e = before_change(r, off);
    return change_done(e ? -1 : real(fd, buf, n, off), e);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    ensure();
    return do_pwrite(r_pwrite, fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    ensure();
    return do_pwrite(r_pwrite64, fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    ensure();
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return r_writev(fd, iov, cnt);
    pthread_mutex_lock(&g.mu);
    int e = before_change(r, current_offset(fd));
    return change_done(e ? -1 : r_writev(fd, iov, cnt), e);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    ensure();
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return r_pwritev(fd, iov, cnt, off);
    pthread_mutex_lock(&g.mu);
    int e = before_change(r, off);
    return change_done(e ? -1 : r_pwritev(fd, iov, cnt, off), e);
}

static int do_ftruncate(int (*real)(int, off_t), int fd, off_t len)
{
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return real(fd, len);
    pthread_mutex_lock(&g.mu);
    int e = before_change(r, len);
    return (int)change_done(e ? -1 : real(fd, len), e);
}

int ftruncate(int fd, off_t len)
{
    ensure();
    return do_ftruncate(r_ftruncate, fd, len);
}

int ftruncate64(int fd, off_t len)
{
    ensure();
    return do_ftruncate(r_ftruncate64, fd, len);
}

int truncate(const char *path, off_t len)
{
    ensure();
    char abs[PATH_LEN];
    int isdir;
    if (!ours(AT_FDCWD, path, abs, &isdir) || isdir)
        return r_truncate(path, len);
    pthread_mutex_lock(&g.mu);
    rec_t *r = rec_add(abs);
    int e = r != NULL ? before_change(r, len) : injected();
    return (int)change_done(e ? -1 : r_truncate(path, len), e);
}

static int do_fallocate(int (*real)(int, int, off_t, off_t), int fd,
                        int mode, off_t off, off_t len)
{
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return real(fd, mode, off, len);
    pthread_mutex_lock(&g.mu);
    /* Plain allocation adds no data; the modes that punch, zero, insert
     * or collapse change bytes from off on. */
    int e = mode & ~FALLOC_FL_KEEP_SIZE ? before_change(r, off) : injected();
    return (int)change_done(e ? -1 : real(fd, mode, off, len), e);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    ensure();
    return do_fallocate(r_fallocate, fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
    ensure();
    return do_fallocate(r_fallocate64, fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len)
{
    ensure();
    rec_t *r = rec_of_fd(fd);
    if (r == NULL)
        return r_posix_fallocate(fd, off, len);
    pthread_mutex_lock(&g.mu);
    int e = injected();
    int rc = e ? e : r_posix_fallocate(fd, off, len);
    pthread_mutex_unlock(&g.mu);
    return rc;
}

/* ---- sync points ------------------------------------------------------- */

static int do_sync(int (*real)(int), int fd)
{
    int isdir = fd >= 0 && fd < FD_MAX &&
                __atomic_load_n(&g.fddir[fd], __ATOMIC_ACQUIRE);
    rec_t *r = rec_of_fd(fd);
    if (r == NULL && !isdir && g.on) {
        /* A descriptor opened read-only can sync a file written through
         * another one. */
        struct stat st;
        pthread_mutex_lock(&g.mu);
        if (fstat(fd, &st) == 0)
            r = rec_find(st.st_dev, st.st_ino);
        pthread_mutex_unlock(&g.mu);
    }
    if (r == NULL && !isdir)
        return real(fd);
    pthread_mutex_lock(&g.mu);
    int e = injected();
    if (e)
        return fail_unlocking(e);
    g.syncs++;
    char what[300];
    snprintf(what, sizeof what, "%s %s", isdir ? "dir" : "file",
             isdir ? "." : r->name);
    if (g.crash_at > 0 && g.syncs == g.crash_at)
        crash(what);
    logf_("sync %ld %s\n", g.syncs, what);
    int rc = real(fd);
    int saved_errno = errno;
    if (rc == 0) {
        if (isdir)
            dir_synced();
        else
            synced(r);
    }
    pthread_mutex_unlock(&g.mu);
    errno = saved_errno;
    return rc;
}

int fsync(int fd)
{
    ensure();
    return do_sync(r_fsync, fd);
}

int fdatasync(int fd)
{
    ensure();
    return do_sync(r_fdatasync, fd);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
    ensure();
    /* Not a durability point (it does not write metadata or flush the
     * device cache); only an injected failure applies. */
    if (rec_of_fd(fd) != NULL) {
        int e = injected();
        if (e) {
            errno = e;
            return -1;
        }
    }
    return r_sync_file_range(fd, off, n, flags);
}

/* ---- names ---------------------------------------------------------------- */

static int do_rename(int ofd, const char *from, int nfd, const char *to)
{
    char a[PATH_LEN], b[PATH_LEN];
    int da, db;
    int oa = ours(ofd, from, a, &da), ob = ours(nfd, to, b, &db);
    if (!oa && !ob)
        return r_renameat(ofd, from, nfd, to);
    pthread_mutex_lock(&g.mu);
    int e = injected();
    if (e)
        return fail_unlocking(e);
    char saved[PATH_LEN] = "";
    if (oa && ob && !da && !db)
        shadow_link(b, saved);
    int rc = r_renameat(ofd, from, nfd, to);
    int saved_errno = errno;
    if (rc == 0 && oa && ob && !da && !db) {
        op_push(OP_RENAME, a, b, saved);
        for (rec_t *r = g.recs; r != NULL; r = r->next) {
            struct stat st;
            if (stat(b, &st) == 0 && r->dev == st.st_dev &&
                r->ino == st.st_ino)
                snprintf(r->name, sizeof r->name, "%s", strrchr(b, '/') + 1);
        }
    } else if (saved[0] != '\0') {
        r_unlink(saved);
    }
    pthread_mutex_unlock(&g.mu);
    errno = saved_errno;
    return rc;
}

int rename(const char *from, const char *to)
{
    ensure();
    return do_rename(AT_FDCWD, from, AT_FDCWD, to);
}

int renameat(int ofd, const char *from, int nfd, const char *to)
{
    ensure();
    return do_rename(ofd, from, nfd, to);
}

static int do_unlink(int dirfd, const char *path, int flags)
{
    char a[PATH_LEN];
    int isdir;
    if (!ours(dirfd, path, a, &isdir) || isdir || (flags & AT_REMOVEDIR))
        return r_unlinkat(dirfd, path, flags);
    pthread_mutex_lock(&g.mu);
    int e = injected();
    if (e)
        return fail_unlocking(e);
    char saved[PATH_LEN];
    shadow_link(a, saved);
    int rc = r_unlinkat(dirfd, path, flags);
    int saved_errno = errno;
    if (rc == 0)
        op_push(OP_UNLINK, a, NULL, saved);
    else if (saved[0] != '\0')
        r_unlink(saved);
    pthread_mutex_unlock(&g.mu);
    errno = saved_errno;
    return rc;
}

int unlink(const char *path)
{
    ensure();
    return do_unlink(AT_FDCWD, path, 0);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    ensure();
    return do_unlink(dirfd, path, flags);
}
