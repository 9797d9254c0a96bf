/*
 * test.h: tally's minimal test harness.
 *
 * A test file defines functions `static void name(void)` and lists them with
 * TEST(name) inside `int main(void) { TEST_MAIN_BEGIN; TEST(a); TEST(b); TEST_MAIN_END; }`.
 * CHECK* record a failure with file and line and go on; REQUIRE* stop the current test.
 * Every test that needs a ledger makes a fresh temp directory with test_tmpdir().
 * The run ends with the line "N passed, M failed" that CI reads.
 */
#ifndef TALLY_TEST_H
#define TALLY_TEST_H

/* nftw() and mkdtemp(): include this header before any system header. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <ftw.h>

static int test_failures_in_current;
static int test_passed, test_failed;
static jmp_buf test_abort;
static char test_dirs[64][256];
static int test_ndirs;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);         \
            test_failures_in_current++;                                                        \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                     \
    do {                                                                                       \
        long long test_a_ = (long long)(a), test_b_ = (long long)(b);                          \
        if (test_a_ != test_b_) {                                                              \
            fprintf(stderr, "  %s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__,      \
                    __LINE__, #a, #b, test_a_, test_b_);                                       \
            test_failures_in_current++;                                                        \
        }                                                                                      \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                     \
    do {                                                                                       \
        const char *test_a_ = (a), *test_b_ = (b);                                             \
        if (strcmp(test_a_, test_b_) != 0) {                                                   \
            fprintf(stderr, "  %s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__,  \
                    __LINE__, #a, #b, test_a_, test_b_);                                       \
            test_failures_in_current++;                                                        \
        }                                                                                      \
    } while (0)

#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);       \
            test_failures_in_current++;                                                        \
            longjmp(test_abort, 1);                                                            \
        }                                                                                      \
    } while (0)

static int test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A fresh empty directory, removed when the test ends. */
static inline const char *test_tmpdir(void)
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

/* Called when a test ends (before its directories are removed), e.g. to close what it
 * left open. */
static void (*test_end_hook)(void);

static inline void test_cleanup_dirs(void)
{
    if (test_end_hook != NULL) {
        test_end_hook();
    }
    for (int i = 0; i < test_ndirs; i++) {
        nftw(test_dirs[i], test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    test_ndirs = 0;
}

#define TEST_MAIN_BEGIN setvbuf(stdout, NULL, _IOLBF, 0)

#define TEST(fn)                                                                               \
    do {                                                                                       \
        test_failures_in_current = 0;                                                          \
        if (setjmp(test_abort) == 0) {                                                         \
            fn();                                                                              \
        }                                                                                      \
        test_cleanup_dirs();                                                                   \
        if (test_failures_in_current == 0) {                                                   \
            test_passed++;                                                                     \
            printf("ok   %s\n", #fn);                                                          \
        } else {                                                                               \
            test_failed++;                                                                     \
            printf("FAIL %s\n", #fn);                                                          \
        }                                                                                      \
    } while (0)

#define TEST_MAIN_END                                                                          \
    printf("%d passed, %d failed\n", test_passed, test_failed);                                \
    return test_failed == 0 ? 0 : 1

#endif /* TALLY_TEST_H */
