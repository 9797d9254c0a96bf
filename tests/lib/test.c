/*
 * test.c: the state of the test harness (tests/lib/test.h) and its temp directories.
 *
 * One definition of the counters, the abort point and the directory list for the whole
 * test executable: every file of a test and every helper of tally_testlib reports into
 * the same test.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw(), mkdtemp() */
#endif

#include "test.h"

#include <ftw.h>

int test_failures_in_current;
int test_passed, test_failed;
jmp_buf test_abort;
void (*test_end_hook)(void);

static char test_dirs[64][256];
static int test_ndirs;

static int test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

const char *test_tmpdir(void)
{
    if (test_ndirs >= 64) {
        fprintf(stderr, "test_tmpdir: too many directories in one test\n");
        abort();
    }
    char *d = test_dirs[test_ndirs];
    snprintf(d, 256, "/tmp/tally-test-XXXXXX");
    if (mkdtemp(d) == NULL) {
        perror("mkdtemp");
        abort();
    }
    test_ndirs++;
    return d;
}

void test_cleanup_dirs(void)
{
    if (test_end_hook != NULL) {
        test_end_hook();
    }
    for (int i = 0; i < test_ndirs; i++) {
        nftw(test_dirs[i], test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    test_ndirs = 0;
}
