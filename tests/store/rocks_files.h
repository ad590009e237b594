/* rocks_files.h -- the RocksDB files of a data dir, for the store
 * suites that damage one (test_store_faults.c, test_server_faults.c).
 *
 * Each suite includes it once; the function is static to that suite.
 * Checks with check's asserts (the directory must open).
 */
#ifndef CQR_TEST_ROCKS_FILES_H
#define CQR_TEST_ROCKS_FILES_H

#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The RocksDB file with suffix `ext` (".blob", ".sst", ".log") of the
 * highest (newest) or lowest (oldest) number into out; 0 if none. */
static int find_file(const char *dir, const char *ext, int newest,
                     char *out, size_t len)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    long best = -1;
    struct dirent *e;
    size_t el = strlen(ext);
    while ((e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        if (nl <= el || strcmp(e->d_name + nl - el, ext) != 0)
            continue;
        long num = strtol(e->d_name, NULL, 10);
        if (best < 0 || (newest ? num > best : num < best)) {
            best = num;
            snprintf(out, len, "%s/%s", dir, e->d_name);
        }
    }
    closedir(d);
    return best >= 0;
}

#endif
