/*
 * test.h: tally's minimal test harness.
 *
 * A test file defines functions `static void name(void)` and lists them with
 * TEST(name) inside `int main(void) { TEST_MAIN_BEGIN; TEST(a); TEST(b); TEST_MAIN_END; }`.
 * CHECK* record a failure with file and line and go on; REQUIRE* stop the current test.
 * Every test that needs a ledger makes a fresh temp directory with test_tmpdir().
 * The run ends with the line "N passed, M failed" that CI reads.
 *
 * The macros are here; the state they share and the temp directories live in test.c
 * (the tally_testlib library), so a test split over several files counts its failures
 * in one place and a REQUIRE in any of them stops the current test.
 */
#ifndef TALLY_TEST_H
#define TALLY_TEST_H

/* Tests include this header before any system header and rely on the GNU extensions. */
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

/* The harness's state, defined once in test.c and shared by every file of a test. */
extern int test_failures_in_current;
extern int test_passed, test_failed;
extern jmp_buf test_abort;

/* Called when a test ends (before its directories are removed), e.g. to close what it
 * left open. */
extern void (*test_end_hook)(void);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);             \
            test_failures_in_current++;                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long test_a_ = (long long)(a), test_b_ = (long long)(b);                              \
        if (test_a_ != test_b_) {                                                                  \
            fprintf(stderr, "  %s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__,          \
                    __LINE__, #a, #b, test_a_, test_b_);                                           \
            test_failures_in_current++;                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                         \
    do {                                                                                           \
        const char *test_a_ = (a), *test_b_ = (b);                                                 \
        if (strcmp(test_a_, test_b_) != 0) {                                                       \
            fprintf(stderr, "  %s:%d: CHECK failed: %s == %s (\"%s\" != \"%s\")\n", __FILE__,      \
                    __LINE__, #a, #b, test_a_, test_b_);                                           \
            test_failures_in_current++;                                                            \
        }                                                                                          \
    } while (0)

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  %s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);           \
            test_failures_in_current++;                                                            \
            longjmp(test_abort, 1);                                                                \
        }                                                                                          \
    } while (0)

/* A fresh empty directory, removed when the test ends (at most 64 per test). */
const char *test_tmpdir(void);

/* Runs test_end_hook, then removes the directories test_tmpdir() made; TEST() calls it. */
void test_cleanup_dirs(void);

#define TEST_MAIN_BEGIN setvbuf(stdout, NULL, _IOLBF, 0)

#define TEST(fn)                                                                                   \
    do {                                                                                           \
        test_failures_in_current = 0;                                                              \
        if (setjmp(test_abort) == 0) {                                                             \
            fn();                                                                                  \
        }                                                                                          \
        test_cleanup_dirs();                                                                       \
        if (test_failures_in_current == 0) {                                                       \
            test_passed++;                                                                         \
            printf("ok   %s\n", #fn);                                                              \
        } else {                                                                                   \
            test_failed++;                                                                         \
            printf("FAIL %s\n", #fn);                                                              \
        }                                                                                          \
    } while (0)

#define TEST_MAIN_END                                                                              \
    printf("%d passed, %d failed\n", test_passed, test_failed);                                    \
    return test_failed == 0 ? 0 : 1

#endif /* TALLY_TEST_H */
