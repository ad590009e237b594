/* The store under storage faults (issue 14): damaged RocksDB files, lost
 * WAL files, a full or read-only disk.
 *
 * - A damaged newest generation (a bit flipped in its blob file, or the
 *   file deleted) is skipped with its reason and the previous one loads;
 *   a damaged older SST file does not stop the store from opening when
 *   the newest generation still reads; in random corruption trials the
 *   latest load returns the newest generation that an exact load of a
 *   fresh copy can read, whenever there is one.
 * - An acknowledged checkpoint does not depend on RocksDB's WAL: deleting
 *   or truncating the WAL files after it still restores it.
 * - A full filesystem (tmpfs, as root) fails checkpoints; once it has
 *   room again, the next checkpoint succeeds.
 * Data dirs are temporary directories removed at the end.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <rocksdb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/err.h"
#include "engine/hash.h"
#include "engine/table.h"
#include "store/store.h"
#include "check_main.h"
#include "rocks_files.h"
#include "store_util.h"

/* ---- Files of the data dir -------------------------------------------- */

static long file_size(const char *path)
{
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (long)st.st_size;
}

static void flip_bit(const char *path, long at, int bit)
{
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, at), 1);
    b ^= (unsigned char)(1u << bit);
    ck_assert_int_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void copy_dir(const char *from, const char *to)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", to, from,
             to);
    ck_assert_int_eq(system(cmd), 0);
}

/* Two tables whose pages are large enough for blob files. */
static const char *names2[2] = {"users", "items"};

static void make_two(cqr_table_t **t)
{
    t[0] = make(CQR_KIND_FULL, CQR_OPT_ADAM, 32, 0, 11);
    t[1] = make(CQR_KIND_CQR, CQR_OPT_SGD, 16, 512, 12);
}

static void train_two(cqr_table_t **t, cqr_rng_t *rng)
{
    push_random(t[0], rng, 4, 1024, 0, 50000);
    push_random(t[1], rng, 4, 1024, 0, 50000);
}

static uint64_t digest_two(cqr_table_t **t)
{
    tset_t cur = {2, {(char *)names2[0], (char *)names2[1]}, {t[0], t[1]}};
    return tset_digest(&cur);
}

/* The writer of three_gens(), run as this binary (--gens-child DIR
 * FULL_EVERY FD): RocksDB's thread pool does not survive a plain fork. */
static int gens_child(const char *dir, uint32_t full_every, int fd)
{
    g_child = 1;
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = 0;
    o.full_every = full_every;
    cqr_store_t *s = NULL;
    char why[256];
    REQUIRE(cqr_store_open(dir, &o, &s, why, sizeof why) == 0);
    cqr_table_t *t[2];
    make_two(t);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 99);
    uint64_t dd[4] = {0};
    for (uint64_t g = 1; g <= 3; g++) {
        train_two(t, &rng);
        dd[g] = digest_two(t);
        uint64_t got = 0;
        REQUIRE(cqr_store_checkpoint(s, t, names2, 2, NULL, NULL, &got,
                                     NULL) == 0 && got == g);
    }
    REQUIRE(write(fd, dd, sizeof dd) == (ssize_t)sizeof dd);
    _exit(0);
}

/* Three checkpoints of two trained tables into a new dir; d[g] is the
 * digest of generation g. full_every as in cqr_store_opts_t. A child
 * process writes them and ends with _exit, never closing the store, as a
 * killed server would (a clean close flushes RocksDB's memtables). */
static char *three_gens(uint64_t d[4], uint32_t full_every)
{
    char *dir = tmpdir();
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        char fe[16], fd[16];
        snprintf(fe, sizeof fe, "%u", full_every);
        snprintf(fd, sizeof fd, "%d", fds[1]);
        execl("/proc/self/exe", "test_store_faults", "--gens-child", dir, fe,
              fd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    ck_assert_int_eq(read(fds[0], d, 4 * sizeof *d), (ssize_t)(4 * sizeof *d));
    close(fds[0]);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    return dir;
}

/* Opens dir and loads generation gen (0: the latest); returns the rc of
 * the open, or of the load, and the info and digest of what loaded. */
static int open_load(const char *dir, uint64_t gen,
                     cqr_store_load_info_t *li, uint64_t *dg)
{
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = 0;
    o.create = 0;
    cqr_store_t *s = NULL;
    char why[512];
    memset(li, 0, sizeof *li);
    int rc = cqr_store_open(dir, &o, &s, why, sizeof why);
    if (rc) {
        snprintf(li->why, sizeof li->why, "open: %.400s", why);
        return rc;
    }
    tset_t ts;
    rc = load(s, gen, &ts, li);
    if (rc) {
        cqr_store_error(s, why, sizeof why);
        snprintf(li->why, sizeof li->why, "%s", why);
    }
    *dg = rc == 0 && ts.n ? tset_digest(&ts) : 0;
    tset_free(&ts);
    cqr_store_close(s);
    return rc;
}

/* ---- 1. Damaged generations --------------------------------------------- */

/* A bit flipped in the newest generation's blob file, or that file
 * deleted: the latest load skips generation 3 with its reason and loads
 * generation 2 exactly. */
START_TEST(test_damaged_newest_blob)
{
    for (int what = 0; what < 2; what++) {
        uint64_t d[4];
        char *dir = three_gens(d, 0);
        char blob[512];
        ck_assert(find_file(dir, ".blob", 1, blob, sizeof blob));
        if (what == 0)
            flip_bit(blob, file_size(blob) / 2, 3);
        else
            ck_assert_int_eq(unlink(blob), 0);
        cqr_store_load_info_t li;
        uint64_t dg;
        int rc = open_load(dir, 0, &li, &dg);
        ck_assert_msg(rc == 0, "%s: load: %s: %s",
                      what ? "deleted" : "flipped", cqr_strerror(rc), li.why);
        ck_assert_uint_eq(li.generation, 2);
        ck_assert_uint_eq(li.skipped, 1);
        ck_assert_msg(strstr(li.why, "generation 3") != NULL, "why: %s",
                      li.why);
        ck_assert(dg == d[2]);
        /* Asking for generation 3 by number is still a clear error. */
        rc = open_load(dir, 3, &li, &dg);
        ck_assert_int_ne(rc, 0);
        ck_assert_msg(strstr(li.why, "generation 3") != NULL, "why: %s",
                      li.why);
        rmdir_all(dir);
    }
}
END_TEST

/* A checksum error in the oldest SST file (which holds the store's
 * format marker and generation 1's keys) while generation 3 shares
 * nothing with it: the store opens and the latest load returns
 * generation 3. */
START_TEST(test_damaged_older_sst)
{
    uint64_t d[4];
    char *dir = three_gens(d, 1);
    char sst[512];
    ck_assert(find_file(dir, ".sst", 0, sst, sizeof sst));
    flip_bit(sst, 100, 2); /* inside the first data block */
    cqr_store_load_info_t li;
    uint64_t dg;
    int rc = open_load(dir, 0, &li, &dg);
    ck_assert_msg(rc == 0, "load: %s: %s", cqr_strerror(rc), li.why);
    ck_assert_uint_eq(li.generation, 3);
    ck_assert(dg == d[3]);
    rmdir_all(dir);
}
END_TEST

/* Random single-bit damage to the SST and blob files: whenever an exact
 * load of some generation works on a fresh copy, the latest load works
 * and returns the newest such generation, exactly. */
START_TEST(test_corrupt_random)
{
    uint64_t d[4];
    char *base = three_gens(d, 0);
    char *work = tmpdir();
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 2024);
    int trials = 30, some = 0, fell_back = 0;
    for (int trial = 0; trial < trials; trial++) {
        /* A random file among the SST and blob files, a random bit. */
        char files[64][512];
        int nf = 0;
        DIR *dd = opendir(base);
        struct dirent *e;
        while ((e = readdir(dd)) != NULL && nf < 64) {
            if (strstr(e->d_name, ".sst") || strstr(e->d_name, ".blob"))
                snprintf(files[nf++], sizeof files[0], "%s", e->d_name);
        }
        closedir(dd);
        ck_assert_int_gt(nf, 0);
        const char *victim = files[cqr_rng_next(&rng) % (uint64_t)nf];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", work, victim);
        copy_dir(base, work);
        long at = (long)(cqr_rng_next(&rng) % (uint64_t)file_size(path));
        int bit = (int)(cqr_rng_next(&rng) % 8);
        /* The newest generation an exact load can read. */
        uint64_t want = 0, want_d = 0;
        for (uint64_t g = 3; g >= 1 && want == 0; g--) {
            copy_dir(base, work);
            flip_bit(path, at, bit);
            cqr_store_load_info_t li;
            uint64_t dg;
            if (open_load(work, g, &li, &dg) == 0) {
                want = g;
                want_d = dg;
                ck_assert(dg == d[g]);
            }
        }
        copy_dir(base, work);
        flip_bit(path, at, bit);
        cqr_store_load_info_t li;
        uint64_t dg;
        int rc = open_load(work, 0, &li, &dg);
        if (want) {
            ck_assert_msg(rc == 0, "trial %d (%s byte %ld bit %d): "
                          "generation %llu loads but the latest load "
                          "fails: %s", trial, victim, at, bit,
                          (unsigned long long)want, li.why);
            ck_assert_msg(li.generation == want && dg == want_d,
                          "trial %d (%s byte %ld): loaded %llu, newest "
                          "readable %llu", trial, victim, at,
                          (unsigned long long)li.generation,
                          (unsigned long long)want);
            some++;
            fell_back += want < 3;
        } else {
            ck_assert_int_ne(rc, 0);
        }
    }
    printf("corrupt_random: %d trials, %d with a readable generation (%d "
           "of them fell back past a damaged one)\n", trials, some,
           fell_back);
    rmdir_all(work);
    rmdir_all(base);
}
END_TEST

/* ---- 2. Acknowledged checkpoints without the WAL ------------------------ */

/* After two acknowledged checkpoints the WAL files are deleted (what = 0)
 * or truncated to nothing (what = 1): generation 2 still loads, exactly. */
START_TEST(test_wal_lost_after_ack)
{
    for (int what = 0; what < 2; what++) {
        uint64_t d[4];
        char *dir = three_gens(d, 0);
        DIR *dd = opendir(dir);
        struct dirent *e;
        int nlog = 0;
        while ((e = readdir(dd)) != NULL) {
            size_t nl = strlen(e->d_name);
            if (nl < 4 || strcmp(e->d_name + nl - 4, ".log") != 0)
                continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (what == 0)
                ck_assert_int_eq(unlink(p), 0);
            else
                ck_assert_int_eq(truncate(p, 0), 0);
            nlog++;
        }
        closedir(dd);
        ck_assert_int_gt(nlog, 0);
        cqr_store_load_info_t li;
        uint64_t dg;
        int rc = open_load(dir, 0, &li, &dg);
        ck_assert_msg(rc == 0, "load: %s", li.why);
        ck_assert_msg(li.generation == 3, "%s WAL: loaded generation %llu "
                      "after 3 acknowledged", what ? "truncated" : "deleted",
                      (unsigned long long)li.generation);
        ck_assert_uint_eq(li.skipped, 0);
        ck_assert(dg == d[3]);
        rmdir_all(dir);
    }
}
END_TEST

/* The acknowledgement record: a load reports the last acknowledged
 * generation and the newest present, so that a generation that vanished
 * (here: its manifest deleted) shows; a damaged record is reported and
 * counts as none; a data dir without one (an older build's) loads as
 * before; cqr_store_set_acked rewrites it. */
static void warn_count(void *ud, const char *msg)
{
    (void)msg;
    (*(int *)ud)++;
}

START_TEST(test_ack_record)
{
    uint64_t d[4];
    char *dir = three_gens(d, 0);
    cqr_store_load_info_t li;
    uint64_t dg;
    ck_assert_int_eq(open_load(dir, 0, &li, &dg), 0);
    ck_assert_uint_eq(li.generation, 3);
    ck_assert_uint_eq(li.acked, 3);
    ck_assert_uint_eq(li.newest, 3);

    /* Generation 3 vanishes without a trace. */
    rocksdb_options_t *ro = rocksdb_options_create();
    rocksdb_options_set_enable_blob_files(ro, 1);
    char *err = NULL;
    rocksdb_t *db = rocksdb_open(ro, dir, &err);
    ck_assert_ptr_null(err);
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(wo, 1);
    char mk[9] = {'M', 0, 0, 0, 0, 0, 0, 0, 3};
    rocksdb_delete(db, wo, mk, 9, &err);
    ck_assert_ptr_null(err);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_close(db);
    rocksdb_options_destroy(ro);
    ck_assert_int_eq(open_load(dir, 0, &li, &dg), 0);
    ck_assert_uint_eq(li.generation, 2);
    ck_assert_uint_eq(li.skipped, 0);
    ck_assert_uint_eq(li.newest, 2);
    ck_assert_uint_eq(li.acked, 3);
    ck_assert(dg == d[2]);

    /* The operator accepts generation 2. */
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    int warns = 0;
    o.warn = warn_count;
    o.warn_ud = &warns;
    cqr_store_t *s = NULL;
    char why[256];
    ck_assert_int_eq(cqr_store_open(dir, &o, &s, why, sizeof why), 0);
    ck_assert_int_eq(cqr_store_set_acked(s, 2), 0);
    cqr_store_close(s);
    ck_assert_int_eq(warns, 0);
    ck_assert_int_eq(open_load(dir, 0, &li, &dg), 0);
    ck_assert_uint_eq(li.acked, 2);

    /* A damaged record: reported, counts as none. */
    char path[1024];
    snprintf(path, sizeof path, "%s/CQRPS-ACKED", dir);
    flip_bit(path, 20, 1);
    ck_assert_int_eq(cqr_store_open(dir, &o, &s, why, sizeof why), 0);
    tset_t ts;
    ck_assert_int_eq(load(s, 0, &ts, &li), 0);
    tset_free(&ts);
    cqr_store_close(s);
    ck_assert_int_eq(warns, 1);
    ck_assert_uint_eq(li.acked, 0);
    ck_assert_uint_eq(li.generation, 2);

    /* No record at all: an older build's data dir. */
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(open_load(dir, 0, &li, &dg), 0);
    ck_assert_uint_eq(li.acked, 0);
    ck_assert_uint_eq(li.generation, 2);
    ck_assert(dg == d[2]);
    rmdir_all(dir);
}
END_TEST

/* ---- 3. A full disk ----------------------------------------------------- */

/* The tmpfs mounted by the running test, unmounted by the teardown if
 * the test fails before it does. */
static char *g_mnt;

static void unmount_left(void)
{
    if (g_mnt == NULL)
        return;
    umount2(g_mnt, MNT_DETACH);
    rmdir_all(g_mnt);
    g_mnt = NULL;
}

/* Mounts a tmpfs of `size` ("24m") on a new directory; NULL (and a
 * message) when this process may not mount. */
static char *tmpfs_mount(const char *size)
{
    if (geteuid() != 0) {
        printf("SKIP: not root, no tmpfs for the full-disk test\n");
        return NULL;
    }
    char *mnt = tmpdir();
    char opt[64];
    snprintf(opt, sizeof opt, "size=%s,mode=0700", size);
    if (mount("tmpfs", mnt, "tmpfs", 0, opt) != 0) {
        printf("SKIP: cannot mount a tmpfs (%s)\n", strerror(errno));
        rmdir_all(mnt);
        return NULL;
    }
    g_mnt = mnt;
    return mnt;
}

static void tmpfs_resize(const char *mnt, const char *size)
{
    char opt[64];
    snprintf(opt, sizeof opt, "size=%s", size);
    ck_assert_msg(mount(NULL, mnt, NULL, MS_REMOUNT, opt) == 0,
                  "remount %s: %s", opt, strerror(errno));
}

static void tmpfs_unmount(char *mnt)
{
    ck_assert_int_eq(umount2(mnt, MNT_DETACH), 0);
    rmdir_all(mnt);
    g_mnt = NULL;
}

/* Checkpoints of a ~3 MB table, each complete, on a 24 MB tmpfs until
 * one fails (ENOSPC); it fails again while the disk is full; the tmpfs
 * grows to 256 MB and the next checkpoint succeeds, and that generation
 * loads exactly. */
START_TEST(test_disk_full_recovers)
{
    char *mnt = tmpfs_mount("24m");
    if (!mnt)
        return;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/data", mnt);
    cqr_store_opts_t o;
    cqr_store_opts_default(&o);
    o.keep = 0;
    o.full_every = 1;
    int warns = 0;
    o.warn = warn_count;
    o.warn_ud = &warns;
    cqr_store_t *s = NULL;
    char why[512];
    ck_assert_int_eq(cqr_store_open(dir, &o, &s, why, sizeof why), 0);
    cqr_table_t *t = make(CQR_KIND_FULL, CQR_OPT_SGD, 64, 0, 5);
    cqr_rng_t rng;
    cqr_rng_seed(&rng, 5);
    const char *name = "big";
    int ok = 0, rc = 0;
    for (int i = 0; i < 40 && rc == 0; i++) {
        push_random(t, &rng, 3, 4096, 0, 12000);
        uint64_t gen;
        rc = cqr_store_checkpoint(s, &t, &name, 1, NULL, NULL, &gen, NULL);
        ok += rc == 0;
    }
    ck_assert_int_eq(rc, CQR_EIO);
    ck_assert_int_gt(ok, 0);
    cqr_store_error(s, why, sizeof why);
    printf("disk full after %d checkpoints: %s\n", ok, why);
    /* Still full: still failing, and saying so. */
    uint64_t gen = 0;
    ck_assert_int_eq(cqr_store_checkpoint(s, &t, &name, 1, NULL, NULL, &gen,
                                          NULL), CQR_EIO);
    tmpfs_resize(mnt, "256m");
    push_random(t, &rng, 1, 64, 0, 12000);
    uint64_t want = digest(t);
    rc = cqr_store_checkpoint(s, &t, &name, 1, NULL, NULL, &gen, NULL);
    cqr_store_error(s, why, sizeof why);
    ck_assert_msg(rc == 0, "checkpoint after the disk has room again: %s: "
                  "%s", cqr_strerror(rc), why);
    ck_assert_uint_eq(gen, (uint64_t)ok + 1);
    ck_assert_int_ge(warns, 1); /* "reopened the database ..." */
    cqr_store_close(s);
    cqr_table_destroy(t);
    cqr_store_load_info_t li;
    uint64_t dg;
    ck_assert_int_eq(open_load(dir, 0, &li, &dg), 0);
    ck_assert_uint_eq(li.generation, gen);
    tset_t one;
    memset(&one, 0, sizeof one);
    s = open_store(dir, 0);
    ck_assert_int_eq(load(s, gen, &one, &li), 0);
    ck_assert(digest(one.t[0]) == want);
    tset_free(&one);
    cqr_store_close(s);
    tmpfs_unmount(mnt);
}
END_TEST

Suite *cqr_test_suite(void)
{
    Suite *s = suite_create("store_faults");
    TCase *tc = tcase_create("damage");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, NULL, unmount_left);
    tcase_add_test(tc, test_damaged_newest_blob);
    tcase_add_test(tc, test_damaged_older_sst);
    tcase_add_test(tc, test_corrupt_random);
    tcase_add_test(tc, test_wal_lost_after_ack);
    tcase_add_test(tc, test_ack_record);
    tcase_add_test(tc, test_disk_full_recovers);
    suite_add_tcase(s, tc);
    return s;
}

int cqr_test_child(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--gens-child") == 0)
        return gens_child(argv[2], (uint32_t)atoi(argv[3]), atoi(argv[4]));
    return -1;
}
